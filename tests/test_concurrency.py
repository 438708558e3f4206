"""Threads: one model shared by many threads, and one stream misused by two.

A model is immutable after loading (packed weights, no per-call state), so any number of
threads may ``run`` it and step their own streams at once and must get exactly the
sequential results. A single stream used by two threads at once must be detected
(:class:`~lstm_infer.errors.StreamError`) or serialized, and never left corrupted. The kernels
release the GIL, so these threads really do overlap (``bench/threads_parallel.py`` shows the
speed-up; it is not timed here).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

import lstm_infer
from lstm_infer.errors import StreamError

I, H, T, B = 24, 96, 12, 3
N_THREADS = 8


def make_model(cell: str, *, seed: int = 0, hidden: int = H) -> lstm_infer.Model:
    rng = np.random.default_rng(seed)
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    s = 1 / np.sqrt(hidden)
    W = rng.uniform(-s, s, (1, G * hidden, I)).astype(np.float32)
    R = rng.uniform(-s, s, (1, G * hidden, hidden)).astype(np.float32)
    Bias = rng.uniform(-s, s, (1, 2 * G * hidden)).astype(np.float32)
    return lstm_infer.Model.from_onnx_weights(cell, W, R, Bias)


def _work(model: lstm_infer.Model, seed: int) -> dict[str, np.ndarray]:
    """One thread's job: a whole-sequence run, a stepped stream and a fed stream."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lens = rng.integers(0, T + 1, B).astype(np.int32)
    out = model.run({"X": x, "sequence_lens": lens})
    stream = model.stream(batch_size=B)
    steps = np.stack([stream.step(x[t]) for t in range(T)])
    fed = model.stream(batch_size=B)
    chunks = np.concatenate([fed.feed(x[:5]), fed.feed(x[5:])])
    return {"Y": out["Y"], "Y_h": out["Y_h"], "steps": steps, "fed": chunks}


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_shared_model_gives_the_sequential_results(isa: str, cell: str) -> None:
    model = make_model(cell)
    seeds = list(range(3 * N_THREADS))
    expected = {seed: _work(model, seed) for seed in seeds}
    barrier = threading.Barrier(N_THREADS)

    def job(seed: int) -> dict[str, np.ndarray]:
        if seed < N_THREADS:
            barrier.wait(timeout=30)  # the first wave starts together
        return _work(model, seed)

    with ThreadPoolExecutor(N_THREADS) as pool:
        results = dict(zip(seeds, pool.map(job, seeds)))
    for seed in seeds:
        for name, want in expected[seed].items():
            np.testing.assert_array_equal(results[seed][name], want, err_msg=f"{seed} {name}")


def test_one_stream_hammered_by_two_threads_is_never_corrupted() -> None:
    """Each concurrent call either runs or raises StreamError; the final state equals a
    stream that took exactly the successful steps one after another."""
    model = make_model("lstm", hidden=256)
    x = np.random.default_rng(1).standard_normal((B, I)).astype(np.float32)
    chunk = np.stack([x, x])
    stream = model.stream(batch_size=B)
    done = {"step": 0, "feed": 0, "refused": 0}
    count_lock = threading.Lock()
    barrier = threading.Barrier(2)

    def hammer(offset: int) -> None:
        barrier.wait(timeout=30)
        for i in range(80):
            kind = ("step", "feed")[(i + offset) % 2]
            try:
                if kind == "step":
                    stream.step(x)
                else:
                    stream.feed(chunk)
            except StreamError:
                with count_lock:
                    done["refused"] += 1
            else:
                with count_lock:
                    done[kind] += 1

    threads = [threading.Thread(target=hammer, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    reference = model.stream(batch_size=B)
    # All inputs are equal, so only the number of successful timesteps matters.
    for _ in range(done["step"] + 2 * done["feed"]):
        reference.step(x)
    for key in ("h", "c"):
        for got, want in zip(stream.state[key], reference.state[key]):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert done["step"] + done["feed"] + done["refused"] == 160
    assert done["step"] + done["feed"] > 0


class _BlockingCore:
    """Wraps a stream's stepper so that ``step`` parks inside the kernel call until released."""

    def __init__(self, core: Any) -> None:
        self._core = core
        self.entered = threading.Event()
        self.release = threading.Event()

    def step(self, x: np.ndarray, out: np.ndarray) -> None:
        self.entered.set()
        self.release.wait(timeout=30)
        self._core.step(x, out)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)


def _mutators(stream: lstm_infer.Stream) -> dict[str, Callable[[], object]]:
    snap = stream.state
    return {"reset": stream.reset, "set_state": lambda: setattr(stream, "state", snap)}


@pytest.mark.parametrize("mutator", ["reset", "set_state"])
def test_state_changes_during_a_step_are_detected_or_serialized(mutator: str) -> None:
    model = make_model("lstm")
    stream = model.stream(batch_size=B)
    blocking = _BlockingCore(stream._core)
    stream._core = blocking  # type: ignore[assignment]
    stepper = threading.Thread(target=stream.step, args=(np.ones((B, I), np.float32),))
    stepper.start()
    try:
        assert blocking.entered.wait(timeout=30)
        outcome: dict[str, object] = {}

        def mutate() -> None:
            try:
                _mutators(stream)[mutator]()
                outcome["result"] = "done"
            except StreamError as exc:
                outcome["result"] = exc

        other = threading.Thread(target=mutate)
        other.start()
        other.join(timeout=0.5)
        # Acceptable: refused with StreamError, or still waiting for the step to finish.
        finished_unsafely = not other.is_alive() and outcome.get("result") == "done"
        assert not finished_unsafely, f"{mutator} ran while a step was in progress"
    finally:
        blocking.release.set()
        stepper.join(timeout=30)
