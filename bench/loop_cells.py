"""Recurrent cells written as an ONNX Loop (tf2onnx's form of a Keras GRU / SimpleRNN): our
Loop executor (the body run once per timestep, as before lstm_infer.passes.loop_cells) against
the native node the pass makes of it, and onnxruntime running the Loop, in one run, one thread.

The models are tests/loop_cell_builders.py's ``"tf2onnx"`` form (a carried time counter and
length, the weights carried through the body, Slices over two axes for the gate blocks) at
input = hidden = ``--hidden`` (weights U(-1/sqrt(H), 1/sqrt(H))), batch ``--batch``,
``--steps`` timesteps. Outputs are checked to agree first (1e-4); engines interleaved
round-robin (compare.py's ``time_interleaved``), medians of ``--repeat`` blocks, ratios
within the run. Results in bench/results/loop_cells-*.

    python bench/loop_cells.py [--repeat 11] [--hidden 128] [--batch 16] [--steps 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from unittest import mock

import numpy as np

BENCH = Path(__file__).resolve().parent
for path in (BENCH, BENCH.parent / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from compare import ort_session, time_interleaved, write_results  # noqa: E402
from loop_cell_builders import cell_loop  # noqa: E402

import lstm_infer  # noqa: E402
import lstm_infer.compile.program as program  # noqa: E402

CASES = {
    "GRU (Keras reset_after=True)": ("gru", {"two_axes": True}),
    "GRU (Keras reset_after=False)": ("gru", {"two_axes": True, "reset_after": False}),
    "SimpleRNN (tanh)": ("rnn", {}),
    "LSTM (a Keras LSTM tf2onnx left a Loop)": ("lstm", {"two_axes": True}),
}


def _ort(data: bytes):  # noqa: ANN202
    return ort_session(data, 1)  # one thread, like every engine here


def row(label: str, cell: str, opts: dict, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(0)
    H, B, T = args.hidden, args.batch, args.steps
    data, _ = cell_loop(cell, H, H, rng, "tf2onnx", scale=H**-0.5, **opts)
    with mock.patch.object(program, "loop_cells", lambda graph: graph):
        before = lstm_infer.load(data)  # the Loop executor, as before the pass
    after = lstm_infer.load(data)
    assert "Loop" in {n.op for n in before.graph.nodes}
    assert "Loop" not in {n.op for n in after.graph.nodes}
    session = _ort(data)
    feeds = {"X": rng.standard_normal((T, B, H)).astype(np.float32)}
    feeds["h0"] = np.zeros((B, H), np.float32)
    if cell == "lstm":
        feeds["c0"] = np.zeros((B, H), np.float32)
    want = session.run(None, feeds)
    for model in (before, after):
        for got, w in zip(model.run(feeds).values(), want):
            np.testing.assert_allclose(got, w, atol=1e-4)

    def run(engine) -> object:  # noqa: ANN001
        def loop(n: int) -> None:
            for _ in range(n):
                engine(feeds)

        return loop

    samples = time_interleaved(
        {
            "loop_executor": run(lambda f: before.run(f, threads=1)),
            "native": run(lambda f: after.run(f, threads=1)),
            "onnxruntime_loop": run(lambda f: session.run(None, f)),
        },
        args.repeat,
        args.block_ms / 1e3,
    )
    med = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
    return {
        "case": label,
        "cell": cell,
        "hidden": H,
        "batch": B,
        "steps": T,
        "median_us": med,
        "native_vs_loop_executor": med["loop_executor"] / med["native"],
        "native_vs_onnxruntime_loop": med["onnxruntime_loop"] / med["native"],
        "samples_us": {k: [s * 1e6 for s in v] for k, v in samples.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=11)
    p.add_argument("--block-ms", type=float, default=200.0)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    rows = [row(label, cell, opts, args) for label, (cell, opts) in CASES.items()]
    print(f"H={args.hidden} batch={args.batch} T={args.steps}, one thread; median ms per run")
    print(f"{'case':42} {'Loop executor':>14} {'native':>8} {'ORT Loop':>9} {'x exec':>7} "
          f"{'x ORT':>6}")  # fmt: skip
    for r in rows:
        m = r["median_us"]
        print(
            f"{r['case']:42} {m['loop_executor'] / 1e3:14.2f} {m['native'] / 1e3:8.2f} "
            f"{m['onnxruntime_loop'] / 1e3:9.2f} {r['native_vs_loop_executor']:7.1f} "
            f"{r['native_vs_onnxruntime_loop']:6.1f}"
        )
    write_results("loop_cells", rows, 1, args.output)


if __name__ == "__main__":
    main()
