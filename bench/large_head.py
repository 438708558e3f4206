"""A large dense head after a recurrent core, against onnxruntime and PyTorch in one run.

The recurrent core of a CTC OCR model: BiLSTM(512) -> Linear(1024 -> 8210), optionally with
log_softmax, exported by torch.onnx; whole sequences of T=20 at batch 1 (and a few more
shapes), one thread per engine. lstm_infer runs the ONNX file itself (``lstm_infer.load``);
every engine's output must agree with PyTorch to 1e-4 before anything is timed. Engines are
interleaved round-robin within every repetition (bench/compare.py's ``time_interleaved``) and
medians reported, with ours / onnxruntime and ours / torch.

    python bench/large_head.py [--repeat 15] [--threads 1] [--output PATH]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from compare import ort_session, time_interleaved, write_results  # noqa: E402

import lstm_infer  # noqa: E402

# (name, input features, hidden, classes, T, batch, log_softmax)
CASES = [
    ("ctc_head_T20_b1", 512, 512, 8210, 20, 1, False),
    ("ctc_head_logsoftmax_T20_b1", 512, 512, 8210, 20, 1, True),
    ("ctc_head_T100_b1", 512, 512, 8210, 100, 1, False),
    ("ctc_head_T20_b8", 512, 512, 8210, 20, 8, True),
    ("small_head_T100_b16", 128, 256, 96, 100, 16, True),
]


def build(features: int, hidden: int, classes: int, log_softmax: bool) -> tuple[Any, bytes]:
    """The torch module (float32, eval) and its ONNX export (legacy exporter, dynamic T, B)."""
    import torch

    class Core(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.LSTM(features, hidden, bidirectional=True)
            self.fc = torch.nn.Linear(2 * hidden, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(self.rnn(x)[0])
            return torch.log_softmax(y, -1) if log_softmax else y

    torch.manual_seed(0)
    module = Core().eval()
    buf = io.BytesIO()
    torch.onnx.export(
        module,
        (torch.zeros(3, 1, features),),
        buf,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "T", 1: "B"}, "y": {0: "T", 1: "B"}},
        dynamo=False,
    )
    return module, buf.getvalue()


def bench_case(case: tuple, repeat: int, target_s: float, threads: int) -> dict[str, Any]:
    import torch

    name, features, hidden, classes, T, batch, log_softmax = case
    module, onnx_bytes = build(features, hidden, classes, log_softmax)
    ours = lstm_infer.load(onnx_bytes)
    import onnx

    ort = ort_session(onnx.load_from_string(onnx_bytes), threads)
    x = np.random.default_rng(1).standard_normal((T, batch, features)).astype(np.float32)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        ref = module(xt).numpy()
    errors = {
        "ours": float(np.abs(ours.run({"x": x}, threads=threads)["y"] - ref).max()),
        "onnxruntime": float(np.abs(ort.run(None, {"x": x})[0] - ref).max()),
    }
    bad = {k: v for k, v in errors.items() if not v <= 1e-4}
    if bad:
        raise SystemExit(f"{name}: engines disagree with torch: {bad}")

    def ours_loop(n: int) -> None:
        for _ in range(n):
            ours.run({"x": x}, threads=threads)

    def ort_loop(n: int) -> None:
        for _ in range(n):
            ort.run(None, {"x": x})

    def torch_loop(n: int) -> None:
        with torch.no_grad():
            for _ in range(n):
                module(xt)

    torch.set_num_threads(threads)
    samples = time_interleaved(
        {"ours": ours_loop, "onnxruntime": ort_loop, "torch": torch_loop}, repeat, target_s
    )
    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    return {
        "case": name,
        "T": T,
        "batch": batch,
        "features": features,
        "hidden": hidden,
        "classes": classes,
        "log_softmax": log_softmax,
        "median_ms": med,
        "ours_over_onnxruntime": med["ours"] / med["onnxruntime"],
        "ours_over_torch": med["ours"] / med["torch"],
        "max_abs_error_vs_torch": errors,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=15, help="samples per engine")
    p.add_argument("--block-ms", type=float, default=50.0, help="one timed block")
    p.add_argument("--threads", type=int, default=1, help="threads for every engine")
    p.add_argument("--cases", nargs="+", default=[c[0] for c in CASES])
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    rows = []
    for case in CASES:
        if case[0] in args.cases:
            row = bench_case(case, args.repeat, args.block_ms / 1e3, args.threads)
            rows.append(row)
            m = row["median_ms"]
            print(
                f"{row['case']:28s} ours {m['ours']:8.2f} ms  ort {m['onnxruntime']:8.2f} ms  "
                f"torch {m['torch']:8.2f} ms  ours/ort {row['ours_over_onnxruntime']:.2f}  "
                f"ours/torch {row['ours_over_torch']:.2f}",
                flush=True,
            )
    write_results("large_head", rows, args.threads, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
