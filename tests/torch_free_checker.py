"""Run by tests/test_torch_import.py in a fresh interpreter where ``import torch`` fails.

Loads every checkpoint listed in a manifest with lstm_infer, runs it (and steps it), compares
with the outputs PyTorch produced in the parent process, and prints one JSON line of results.
"""

from __future__ import annotations

import importlib.abc
import json
import sys
from pathlib import Path

import numpy as np


class _BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this interpreter")
        return None


def main(manifest_path: str) -> None:
    sys.meta_path.insert(0, _BlockTorch())
    try:
        import torch  # noqa: F401

        raise SystemExit("torch import was not blocked")
    except ImportError:
        pass
    import lstm_infer

    manifest = json.loads(Path(manifest_path).read_text())
    results = []
    for case in manifest:
        folder = Path(case["folder"])
        x = np.load(folder / "x.npy")
        expected = np.load(folder / "y.npy")
        for fname, extra in case["files"]:
            model = lstm_infer.load(folder / fname, **case["options"], **extra)
            out = model.run({"input": x})
            err = float(np.abs(out["output"] - expected).max())
            step_err = None
            if (folder / "y_steps.npy").exists():
                steps = np.load(folder / "y_steps.npy")
                batch = x.shape[0] if case["options"].get("batch_first") else x.shape[1]
                stream = model.stream(batch_size=batch)
                seq = np.swapaxes(x, 0, 1) if case["options"].get("batch_first") else x
                got = np.stack([stream.step(seq[t]) for t in range(seq.shape[0])])
                step_err = float(np.abs(got - steps).max())
            results.append({"case": case["name"], "file": fname, "err": err, "step_err": step_err})
    print(json.dumps({"torch_loaded": "torch" in sys.modules, "results": results}))


if __name__ == "__main__":
    main(sys.argv[1])
