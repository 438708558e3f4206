"""Time ``model.run`` with threads=2 against threads=1, both ways of splitting a layer.

For each cell, hidden size and batch (T = 100, one unidirectional layer, input = hidden) this
prints the median time of threads=1 and the ratio threads=2 / threads=1 with the batch split
forced and with the unit split forced (and with the default choice). Runs are interleaved
and repeated; OpenBLAS is pinned to one thread. The machine should have two free cores.

    python bench/unit_split.py [--repeat 7] [--cells lstm,gru,rnn] [--hidden 64,256,1024]

Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402  (after pinning OpenBLAS)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lstm_infer  # noqa: E402
from lstm_infer import model as model_module  # noqa: E402

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _timed(model: lstm_infer.Model, feeds: dict, threads: int) -> float:
    t = time.perf_counter()
    model.run(feeds, threads=threads)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--hidden", default="64,256,1024")
    ap.add_argument("--batch", default="1,16,64")
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    default_rule = model_module._prefer_unit_split
    modes = {
        "batch": lambda *a: False,
        "units": lambda *a: True,
        "default": default_rule,
    }
    print(f"{'cell':5} {'H':>5} {'B':>3} {'t1 ms':>8} " + " ".join(f"{m:>8}" for m in modes))
    for cell in args.cells.split(","):
        for H in map(int, args.hidden.split(",")):
            G = GATES[cell]
            W = rng.uniform(-0.1, 0.1, (1, G * H, H)).astype(np.float32)
            R = rng.uniform(-0.1, 0.1, (1, G * H, H)).astype(np.float32)
            model = lstm_infer.Model.from_onnx_weights(cell, W, R)
            for B in map(int, args.batch.split(",")):
                x = rng.standard_normal((args.steps, B, H)).astype(np.float32)
                feeds = {"X": x}
                times: dict[str, list[float]] = {"one": [], **{m: [] for m in modes}}
                model.run(feeds)
                for _ in range(args.repeat):
                    times["one"].append(_timed(model, feeds, 1))
                    for mode, rule in modes.items():
                        model_module._prefer_unit_split = rule
                        times[mode].append(_timed(model, feeds, 2))
                    model_module._prefer_unit_split = default_rule
                one = statistics.median(times["one"])
                ratios = " ".join(f"{statistics.median(times[m]) / one:8.2f}" for m in modes)
                print(f"{cell:5} {H:5d} {B:3d} {one * 1e3:8.2f} {ratios}", flush=True)


if __name__ == "__main__":
    main()
