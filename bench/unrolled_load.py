"""Loading unrolled recurrent graphs: torch ``nn.LSTMCell`` / ``nn.GRUCell`` loops traced over
T steps (torch.onnx, dynamo=False: one cell's ops per step, ~15 nodes each), loaded by
lstm_infer (which re-rolls them into one LSTM / GRU node) and by onnxruntime, then one run
of the whole sequence each. Load times are one measurement each (seconds, so noise matters
little); runs are medians of ``--repeat``.

    python bench/unrolled_load.py [--steps 20 100 400 1000] [--cells lstm gru] [--repeat 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from compare import ort_session, write_results  # noqa: E402

import lstm_infer  # noqa: E402

INPUT, HIDDEN, BATCH = 16, 32, 2


def cell_loop(kind: str) -> Any:
    """A module stepping one cell over the first axis of its input (zero initial state)."""
    import torch

    class Loop(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            make = torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell
            self.cell = make(INPUT, HIDDEN)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.zeros(x.shape[1], HIDDEN)
            c = torch.zeros(x.shape[1], HIDDEN)
            ys = []
            for t in range(x.shape[0]):
                if kind == "lstm":
                    h, c = self.cell(x[t], (h, c))
                else:
                    h = self.cell(x[t], h)
                ys.append(h)
            return torch.stack(ys)

    torch.manual_seed(0)
    return Loop().eval()


def row(kind: str, steps: int, repeat: int) -> dict[str, Any]:
    import torch

    module = cell_loop(kind)
    x = torch.randn(steps, BATCH, INPUT)
    buf = io.BytesIO()
    torch.onnx.export(module, (x,), buf, input_names=["x"], output_names=["y"],
                      dynamo=False, opset_version=17)  # fmt: skip
    data = buf.getvalue()
    t0 = time.perf_counter()
    model = lstm_infer.load(data)
    ours_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    sess = ort_session(data, 1)
    ort_load = time.perf_counter() - t0
    feeds = {"x": x.numpy()}
    want = module(x).detach().numpy()
    got = model.run(feeds)["y"]
    err = float(np.abs(got - want).max())
    ops = sorted({n.op for n in model.graph.nodes})

    def median_s(fn: Any) -> float:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    ours_run = median_s(lambda: model.run(feeds))
    ort_run = median_s(lambda: sess.run(None, feeds))
    return {
        "cell": kind,
        "steps": steps,
        "onnx_bytes": len(data),
        "onnx_nodes": _node_count(data),
        "ops_after_load": ops,
        "ours_load_s": ours_load,
        "ort_load_s": ort_load,
        "ours_run_ms": ours_run * 1e3,
        "ort_run_ms": ort_run * 1e3,
        "max_err_vs_torch": err,
    }


def _node_count(data: bytes) -> int:
    import onnx

    return len(onnx.load_from_string(data).graph.node)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, nargs="+", default=[20, 100, 400, 1000])
    p.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru"])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    rows = []
    print("| cell | T | ONNX nodes | ops after our load | load ours / ort (s) | run ours / ort "
          "(ms) | max err vs torch |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind in args.cells:
        for steps in args.steps:
            r = row(kind, steps, args.repeat)
            rows.append(r)
            print(f"| {kind} | {steps} | {r['onnx_nodes']} | {', '.join(r['ops_after_load'])} | "
                  f"{r['ours_load_s']:.2f} / {r['ort_load_s']:.2f} | {r['ours_run_ms']:.3f} / "
                  f"{r['ort_run_ms']:.3f} | {r['max_err_vs_torch']:.1e} |", flush=True)  # fmt: skip
    write_results("unrolled_load", rows, 1, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
