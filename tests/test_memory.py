"""No memory growth: 100k stream steps, 1k load/unload cycles, many whole-sequence runs.

Two independent measures, each with a generous bound so allocator noise cannot fail CI:
``tracemalloc`` (Python and numpy allocations, including the C buffers the Cython layer gets
from ``PyMem_Malloc``) and the process RSS from ``/proc/self/statm`` (anything else, e.g. a
leak inside the C kernels; Linux only). A real leak of even 16 bytes per step would be
1.6 MB over 100k steps, far above the tracemalloc bound.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import lstm_infer

TRACED_GROWTH_BOUND = 256 * 1024  # bytes still allocated after the loop, beyond warm-up
RSS_GROWTH_BOUND = 8 * 1024 * 1024


def rss_bytes() -> int | None:
    """Resident set size of this process, or None where /proc is unavailable."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
    except OSError:
        return None
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def tracing() -> Iterator[None]:
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        yield
    finally:
        if not was_tracing:
            tracemalloc.stop()


def assert_no_growth(body: Callable[[int], None], iterations: int, warmup: int) -> None:
    """Run ``body`` ``warmup`` times, measure, run it ``iterations`` times, measure again."""
    for i in range(warmup):
        body(i)
    gc.collect()
    traced_before = tracemalloc.get_traced_memory()[0]
    rss_before = rss_bytes()
    for i in range(iterations):
        body(i)
    gc.collect()
    traced_growth = tracemalloc.get_traced_memory()[0] - traced_before
    assert traced_growth < TRACED_GROWTH_BOUND, f"traced memory grew by {traced_growth} bytes"
    if rss_before is not None:
        rss_after = rss_bytes()
        assert rss_after is not None
        rss_growth = rss_after - rss_before
        assert rss_growth < RSS_GROWTH_BOUND, f"RSS grew by {rss_growth} bytes"


def tiny_model(cell: str) -> lstm_infer.Model:
    rng = np.random.default_rng(0)
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    W = rng.uniform(-0.3, 0.3, (1, G * 4, 2)).astype(np.float32)
    R = rng.uniform(-0.3, 0.3, (1, G * 4, 4)).astype(np.float32)
    return lstm_infer.Model.from_onnx_weights(cell, W, R)


@pytest.mark.usefixtures("tracing")
def test_100k_steps_do_not_grow_memory() -> None:
    stream = tiny_model("lstm").stream(batch_size=1)
    x = np.full((1, 2), 0.5, np.float32)
    out = np.empty((1, 4), np.float32)

    def step(i: int) -> None:
        if i % 2:
            stream.step(x, out=out)
        else:
            stream.step(x)  # returns a new array each time

    assert_no_growth(step, iterations=100_000, warmup=2_000)
    assert np.isfinite(out).all()


@pytest.mark.usefixtures("tracing")
def test_1k_load_unload_cycles_do_not_grow_memory(tmp_path: Path) -> None:
    blobs = []
    for cell in ("lstm", "gru", "rnn"):
        path = tmp_path / f"{cell}.safetensors"
        tiny_model(cell).save(path)
        blobs.append(path.read_bytes())
    x = np.ones((1, 2), np.float32)

    def cycle(i: int) -> None:
        model = lstm_infer.load(blobs[i % len(blobs)])
        stream = model.stream(batch_size=1)
        stream.step(x)
        model.run({"X": x[None]})
        del stream, model

    assert_no_growth(cycle, iterations=1_000, warmup=30)


@pytest.mark.usefixtures("tracing")
def test_repeated_runs_and_failed_calls_do_not_grow_memory() -> None:
    model = tiny_model("gru")
    stream = model.stream(batch_size=2)
    x = np.ones((5, 2, 2), np.float32)
    lens = np.array([5, 2], np.int32)
    bad = np.ones((5, 2, 3), np.float32)

    def body(i: int) -> None:
        model.run({"X": x, "sequence_lens": lens})
        stream.feed(x)
        # Error paths must not leak either (exceptions hold tracebacks and frames).
        with pytest.raises(lstm_infer.errors.InputError):
            model.run({"X": bad})
        with pytest.raises(lstm_infer.errors.InputError):
            stream.step(bad[0])

    assert_no_growth(body, iterations=1_000, warmup=50)
