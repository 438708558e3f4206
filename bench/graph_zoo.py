"""Whole models around a recurrent core (GraphModel), against onnxruntime in one run.

The zoo of issue 13, exported by torch.onnx (legacy exporter): a CRNN (2-D conv front end ->
BiLSTM -> CTC head), a VAD shape (STFT as Conv1d -> LSTM -> Conv1d(k=1) head -> 1-D output),
LSTM -> LayerNorm -> residual Add -> Linear, and a last-timestep classifier. Whole-sequence
``run``, one thread per engine, outputs checked against PyTorch to 1e-4 first; engines
interleaved round-robin (bench/compare.py's ``time_interleaved``), medians, ours / ORT.

    python bench/graph_zoo.py [--repeat 15] [--threads 1] [--models crnn vad ...]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from compare import time_interleaved, write_results  # noqa: E402

import lstm_infer  # noqa: E402


def _models() -> dict[str, Callable[[], tuple[Any, tuple, list[str]]]]:
    import torch
    from torch import nn

    class Crnn(nn.Module):
        """(N, 1, 32, W) images -> conv/pool x2 -> (W/4, N, 64*8) -> BiLSTM-128 -> 80 classes."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            )  # fmt: skip
            self.rnn = nn.LSTM(64 * 8, 128, bidirectional=True)
            self.fc = nn.Linear(256, 80)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.conv(x)  # (N, 64, 8, W/4)
            n, c, h, w = f.shape
            seq = f.permute(3, 0, 1, 2).reshape(w, n, c * h)
            return torch.log_softmax(self.fc(self.rnn(seq)[0]), -1)

    class Vad(nn.Module):
        """(N, samples) audio -> STFT as a strided Conv1d -> magnitude -> LSTM -> Conv1d(k=1)."""

        def __init__(self) -> None:
            super().__init__()
            self.stft = nn.Conv1d(1, 2 * 129, 256, stride=128, bias=False)
            self.enc = nn.Conv1d(129, 64, 3, padding=1)
            self.rnn = nn.LSTM(64, 64, batch_first=True)
            self.head = nn.Conv1d(64, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.stft(x[:, None])  # (N, 258, frames)
            mag = torch.sqrt(s[:, :129] ** 2 + s[:, 129:] ** 2)
            e = torch.relu(self.enc(mag))  # (N, 64, frames)
            y = self.rnn(e.transpose(1, 2))[0]  # (N, frames, 64)
            return torch.sigmoid(self.head(y.transpose(1, 2))).squeeze(1).mean(-1)  # (N,)

    class NormResidual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(128, 256)
            self.norm = nn.LayerNorm(256)
            self.fc = nn.Linear(256, 32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.rnn(x)[0]
            return self.fc(self.norm(y) + y)

    class LastStep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(64, 256, batch_first=True, num_layers=2)
            self.fc = nn.Linear(256, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.fc(self.rnn(x)[0][:, -1]), -1)

    return {
        "crnn": lambda: (Crnn(), (torch.randn(4, 1, 32, 128),), ["image"]),
        "vad": lambda: (Vad(), (torch.randn(2, 16000),), ["audio"]),
        "norm_residual": lambda: (NormResidual(), (torch.randn(100, 8, 128),), ["x"]),
        "last_step": lambda: (LastStep(), (torch.randn(8, 100, 64),), ["x"]),
    }


def bench_model(name: str, make: Callable, repeat: int, target_s: float, threads: int) -> dict:
    import onnxruntime as ort
    import torch

    torch.manual_seed(0)
    module, args, names = make()
    module.eval()
    buf = io.BytesIO()
    torch.onnx.export(module, args, buf, input_names=names, output_names=["y"], dynamo=False)
    data = buf.getvalue()
    ours = lstm_infer.load(data)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    with torch.no_grad():
        ref = module(*args).numpy()
    err = {
        "ours": float(np.abs(ours.run(feeds, threads=threads)["y"] - ref).max()),
        "onnxruntime": float(np.abs(sess.run(None, feeds)[0] - ref).max()),
    }
    if not all(v <= 1e-4 for v in err.values()):
        raise SystemExit(f"{name}: engines disagree with torch: {err}")

    def ours_loop(n: int) -> None:
        for _ in range(n):
            ours.run(feeds, threads=threads)

    def ort_loop(n: int) -> None:
        for _ in range(n):
            sess.run(None, feeds)

    samples = time_interleaved({"ours": ours_loop, "onnxruntime": ort_loop}, repeat, target_s)
    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    return {
        "model": name,
        "kind": type(ours).__name__,
        "median_ms": med,
        "ours_over_onnxruntime": med["ours"] / med["onnxruntime"],
        "max_abs_error_vs_torch": err,
    }


def main(argv: Sequence[str] | None = None) -> int:
    models = _models()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--block-ms", type=float, default=50.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", nargs="+", default=list(models), choices=list(models))
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    rows = []
    for name in args.models:
        row = bench_model(name, models[name], args.repeat, args.block_ms / 1e3, args.threads)
        rows.append(row)
        m = row["median_ms"]
        print(
            f"{name:14s} {row['kind']:10s} ours {m['ours']:8.2f} ms  ort {m['onnxruntime']:8.2f} "
            f"ms  ours/ort {row['ours_over_onnxruntime']:.2f}",
            flush=True,
        )
    write_results("graph_zoo", rows, args.threads, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
