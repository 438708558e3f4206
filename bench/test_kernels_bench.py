"""pytest-benchmark microbenchmarks of lstm_infer alone (run by hand: ``pytest bench/``).

Not part of the default ``pytest`` run (``testpaths = ["tests"]``). The BLAS thread count is
limited to one for every benchmark, as in ``compare.py``; set ``LSTM_INFER_BENCH_THREADS``
to change it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pytest_benchmark")
pytest.importorskip("onnx")
threadpoolctl = pytest.importorskip("threadpoolctl")

import compare  # noqa: E402  (bench/ is on sys.path under pytest's default import mode)

THREADS = int(os.environ.get("LSTM_INFER_BENCH_THREADS", "1"))


@pytest.fixture(autouse=True, scope="module")
def _blas_threads() -> Iterator[None]:
    with threadpoolctl.threadpool_limits(limits=THREADS):
        yield


def _model(cell: str, hidden: int) -> Any:
    w = compare.random_weights(cell, hidden)
    return compare.lstm_infer.load(compare.build_onnx(w, stateful=False))


@pytest.mark.parametrize("hidden", [8, 64, 256])
def test_stream_step_lstm(benchmark: Any, hidden: int) -> None:
    """One LSTM timestep at batch 1, returning a new (1, H) array."""
    benchmark.group = f"stream.step LSTM H={hidden}"
    stream = _model("LSTM", hidden).stream(batch_size=1)
    x = np.random.default_rng(0).uniform(-1, 1, (1, hidden)).astype(np.float32)
    y = benchmark(stream.step, x)
    assert y.shape == (1, hidden)


@pytest.mark.parametrize("hidden", [8, 64, 256])
def test_stream_step_out_lstm(benchmark: Any, hidden: int) -> None:
    """One LSTM timestep at batch 1 into a reused output buffer."""
    benchmark.group = f"stream.step LSTM H={hidden}"
    stream = _model("LSTM", hidden).stream(batch_size=1)
    x = np.random.default_rng(0).uniform(-1, 1, (1, hidden)).astype(np.float32)
    buf = np.empty((1, hidden), np.float32)
    y = benchmark(stream.step, x, out=buf)
    assert y is buf


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("hidden", [64, 256])
def test_run_seq_batch16(benchmark: Any, cell: str, hidden: int) -> None:
    """A whole sequence, T=100, batch 16, in one ``model.run``."""
    benchmark.group = f"run T=100 B=16 H={hidden}"
    model = _model(cell, hidden)
    x = np.random.default_rng(0).uniform(-1, 1, (compare.SEQ_LEN, 16, hidden))
    feeds = {"X": x.astype(np.float32)}
    outs = benchmark(model.run, feeds)
    assert outs["Y"].shape == (compare.SEQ_LEN, 1, 16, hidden)
