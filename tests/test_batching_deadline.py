"""The batching front end's timing rules: a step that is a whole batch by itself runs in
the submitter's thread (no hand-off), and ``max_wait_us`` bounds the latency batching adds
to a step, so a waiting batch starts early by the running estimate of its own cost (the
worker's wake-up, the kernel, the hand-back). Outputs are checked against a solo
``model.stream()``; nothing here asserts a time (the timeouts only keep a broken deadline
from hanging the suite)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

import lstm_infer
from lstm_infer.batching import LEAD_FALL, LEAD_RISE, StepBatcher

I, H = 5, 8


@pytest.fixture
def model(rng: np.random.Generator) -> lstm_infer.Model:
    s = 1 / np.sqrt(H)
    W = rng.uniform(-s, s, (1, 4 * H, I)).astype(np.float32)
    R = rng.uniform(-s, s, (1, 4 * H, H)).astype(np.float32)
    B = rng.uniform(-s, s, (1, 8 * H)).astype(np.float32)
    return lstm_infer.Model.from_onnx_weights("lstm", W, R, B)


def test_the_estimate_rises_fast_falls_slowly_and_stays_within_max_wait(model) -> None:
    """A batch slower than the estimate moves it by LEAD_RISE of the gap, a faster one by
    LEAD_FALL; a batch slower than max_wait counts as max_wait (the wait never goes below
    zero)."""
    pool = lstm_infer.StreamPool(model, max_wait_us=1000)
    batcher = StepBatcher(pool, max_batch=8, max_wait_us=1000)
    now = time.perf_counter
    try:
        assert batcher._lead == 0.0
        batcher._handed_back(now() - 400e-6)  # a batch that took (at least) 400 us
        assert 400e-6 * LEAD_RISE <= batcher._lead < 400e-6 * LEAD_RISE + 100e-6
        for _ in range(200):  # batches slower than max_wait: the estimate tends to 1 ms
            batcher._handed_back(now() - 5.0)
        assert batcher._lead == pytest.approx(1e-3, rel=1e-6)
        batcher._handed_back(now())  # one quick batch: down by LEAD_FALL of the gap only
        assert 1e-3 * (1 - LEAD_FALL) <= batcher._lead < 1e-3
    finally:
        batcher.stop()


def test_a_lone_sessions_step_runs_in_the_submitters_thread(rng, model) -> None:
    """One open session: its step is a whole batch the moment it arrives, so it runs in
    the submitting thread (event loop or plain thread) instead of the worker's; with two
    sessions open a lone step waits, and the worker runs it."""
    x = rng.standard_normal(I).astype(np.float32)
    want = model.stream(1).step(x[None])[0]
    ran_in: list[str] = []

    with lstm_infer.StreamPool(model, max_wait_us=1000) as pool:
        step = pool._step_batch_locked

        def recorded(sids: list[int], xs: np.ndarray) -> object:
            ran_in.append(threading.current_thread().name)
            return step(sids, xs)

        pool._step_batch_locked = recorded
        a = pool.open()

        async def main() -> np.ndarray:
            return await asyncio.wait_for(pool.submit(a, x), timeout=30)

        me = threading.current_thread()
        name, me.name = me.name, "submitter"
        try:
            ya = asyncio.run(main())
            pool.reset(a)
            yb = pool.submit_blocking(a, x, timeout=30)
            pool.reset(a)
            pool.open()  # now a lone step waits for the other session (or max_wait)
            yc = pool.submit_blocking(a, x, timeout=30)
        finally:
            me.name = name
    for y in (ya, yb, yc):
        np.testing.assert_allclose(y, want, atol=1e-6)
    assert ran_in == ["submitter", "submitter", "lstm-infer-batcher"]


def test_a_lone_step_runs_once_its_batch_cost_fills_the_wait(rng, model) -> None:
    """Two sessions open, one submits: with max_wait_us far away it would wait for the
    other; once the estimated batch cost reaches max_wait, it runs at once (and equals a
    solo stream's step)."""
    x = rng.standard_normal(I).astype(np.float32)

    async def main(pool: lstm_infer.StreamPool) -> np.ndarray:
        a, _b = pool.open(), pool.open()
        return await asyncio.wait_for(pool.submit(a, x), timeout=30)

    with lstm_infer.StreamPool(model, max_wait_us=60e6) as pool:
        batcher = pool._get_batcher()
        batcher._lead = batcher._max_wait  # as if every recent batch took a minute
        y = asyncio.run(main(pool))
    np.testing.assert_allclose(y, model.stream(1).step(x[None])[0], atol=1e-6)


def test_paced_sessions_equal_solo_streams(rng, model) -> None:
    """Sessions submitting at their own pace (a sleep between frames, so batches are
    partial and start on the deadline) get a solo stream's outputs, in order."""
    n, T = 6, 8
    xs = rng.standard_normal((n, T, I)).astype(np.float32)

    async def session(pool: lstm_infer.StreamPool, k: int) -> list[np.ndarray]:
        sid = pool.open()
        out = []
        for t in range(T):
            await asyncio.sleep(0.0005 * ((k + t) % 3))
            out.append(await pool.submit(sid, xs[k, t]))
        return out

    async def main(pool: lstm_infer.StreamPool) -> list[list[np.ndarray]]:
        return await asyncio.wait_for(
            asyncio.gather(*(session(pool, k) for k in range(n))), timeout=60
        )

    with lstm_infer.StreamPool(model, max_wait_us=300) as pool:
        outs = asyncio.run(main(pool))
        assert 0.0 < pool._batcher._lead <= 300e-6
    for k in range(n):
        solo = model.stream(1)
        ref = [solo.step(xs[k, t][None])[0] for t in range(T)]
        np.testing.assert_allclose(outs[k], ref, atol=1e-6)
