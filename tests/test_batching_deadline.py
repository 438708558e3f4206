"""The batching front end's deadline: ``max_wait_us`` bounds the latency batching adds to a
step, so a waiting batch starts early by the running estimate of its own cost (kernel and
hand-back). Outputs are checked against a solo ``model.stream()``; nothing here asserts a
time (the bounds below only keep a broken deadline from hanging the suite)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

import lstm_infer
from lstm_infer.batching import LEAD_WEIGHT, StepBatcher

I, H = 5, 8


@pytest.fixture
def model(rng: np.random.Generator) -> lstm_infer.Model:
    s = 1 / np.sqrt(H)
    W = rng.uniform(-s, s, (1, 4 * H, I)).astype(np.float32)
    R = rng.uniform(-s, s, (1, 4 * H, H)).astype(np.float32)
    B = rng.uniform(-s, s, (1, 8 * H)).astype(np.float32)
    return lstm_infer.Model.from_onnx_weights("lstm", W, R, B)


def test_the_estimate_follows_recent_batches_and_stays_within_max_wait(model) -> None:
    """Each batch moves the estimate by LEAD_WEIGHT of the gap; a batch slower than
    max_wait counts as max_wait (the wait never goes below zero)."""
    pool = lstm_infer.StreamPool(model, max_wait_us=1000)
    batcher = StepBatcher(pool, max_batch=8, max_wait_us=1000)
    try:
        assert batcher._lead == 0.0
        now = time.perf_counter
        batcher._handed_back(now() - 400e-6)  # a batch that took (at least) 400 us
        assert 400e-6 * LEAD_WEIGHT <= batcher._lead < 400e-6
        for _ in range(200):  # batches slower than max_wait: the estimate tends to 1 ms
            batcher._handed_back(now() - 5.0)
        assert batcher._lead == pytest.approx(1e-3, rel=1e-6)
    finally:
        batcher.stop()


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
