"""silero-VAD's ``silero_vad_op18_ifless.onnx`` chunk step (``model.stream()``, 16 kHz,
512-sample chunks), one thread: its single unrolled LSTM step as one LSTM node (how it loads
now) against the same file with the cell left unrolled (Gemm x2, Sigmoid x3, Tanh x2: how it
loaded before the step was re-rolled after the If is inlined) and onnxruntime fed its state
back by hand.

Outputs are checked to agree first. Engines interleaved round-robin (compare.py's
``time_interleaved``), medians of ``--repeat`` blocks, ratios within the run.

    python bench/one_step_cell.py [--repeat 21] [--block-ms 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from unittest import mock

import numpy as np

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from compare import time_interleaved, write_results  # noqa: E402

import lstm_infer  # noqa: E402
from lstm_infer.compile import program  # noqa: E402


def _ort(path: str):  # noqa: ANN202
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def main() -> int:
    import silero_vad

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--block-ms", type=float, default=40.0)
    ap.add_argument("--output", type=Path)
    args = ap.parse_args()
    path = str(Path(silero_vad.__file__).parent / "data" / "silero_vad_op18_ifless.onnx")
    model = lstm_infer.load(path, fixed_inputs={"sr": 16000})
    with mock.patch.object(program, "reroll_cells", lambda graph: graph):
        unrolled = lstm_infer.load(path, fixed_inputs={"sr": 16000})
    ops = [n.op for n in model.graph.nodes]
    before = [n.op for n in unrolled.graph.nodes]
    assert "LSTM" in ops and "LSTM" not in before and "Gemm" in before, (ops, before)
    rng = np.random.default_rng(0)
    chunks = (rng.standard_normal((64, 1, 512)) * 0.1).astype(np.float32)
    ours, old, sess = model.stream(), unrolled.stream(), _ort(path)
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(16000, np.int64)
    for c in chunks[:8]:  # agreement first
        want, state = sess.run(None, {"input": c, "state": state, "sr": sr})
        np.testing.assert_allclose(ours.step(c), want, atol=1e-4)
        np.testing.assert_allclose(old.step(c), want, atol=1e-4)
    assert ours.compiled and old.compiled, (ours.compile_error, old.compile_error)
    box = {"state": state}

    def loop(stream):  # noqa: ANN001, ANN202
        def run(n: int) -> None:
            for i in range(n):
                stream.step(chunks[i % 64])

        return run

    def loop_ort(n: int) -> None:
        s = box["state"]
        for i in range(n):
            _, s = sess.run(None, {"input": chunks[i % 64], "state": s, "sr": sr})
        box["state"] = s

    engines = {"lstm_infer (LSTM node)": loop(ours), "lstm_infer (unrolled cell)": loop(old),
               "onnxruntime": loop_ort}  # fmt: skip
    t = time_interleaved(engines, args.repeat, args.block_ms / 1e3)
    med = {k: statistics.median(v) * 1e6 for k, v in t.items()}
    print(f"silero op18_ifless chunk step (512 samples), us, median of {args.repeat}:")
    for k, v in med.items():
        print(f"  {k:<28}{v:9.1f}   ({v / med['onnxruntime']:.2f}x onnxruntime)")
    rows = [{"bench": "silero_ifless_step", "engine": k, "median_us": v, "samples_s": t[k]}
            for k, v in med.items()]  # fmt: skip
    write_results("one_step_cell", rows, 1, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
