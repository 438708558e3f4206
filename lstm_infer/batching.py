"""The batching front end of a StreamPool: steps submitted one by one, run as one batch.

Coroutines (``await pool.submit``) and threads (``pool.submit_blocking``) hand their step to
one worker thread, which waits until ``max_batch`` steps are waiting, every open session
has one waiting, or ``max_wait_us`` has passed since the first of them arrived, and then
runs them as one :meth:`StreamPool.step`. The kernel runs on that thread with the GIL
released, so an event loop goes on serving meanwhile.

Each input is checked when it is submitted (a bad one raises to its submitter, never to
the batch); a session closed while its step waited gets a SessionError of its own.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lstm_infer.errors import LstmInferError, StreamError

__all__ = ["BatchStats", "StepBatcher"]

# Upper bounds of the batch-size histogram's buckets (Prometheus "le" labels).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Latencies kept for the quantiles (the most recent ones).
LATENCY_WINDOW = 10_000


@dataclass
class BatchStats:
    """Counters of a batcher, read by ``/metrics`` and the bench.

    ``batch_sizes`` keeps the size of the most recent batches; ``latencies_s`` the
    submit-to-result time of the most recent steps (``latency_sum`` of all of them).
    """

    steps: int = 0
    batches: int = 0
    latency_sum: float = 0.0
    bucket_counts: list[int] = field(default_factory=lambda: [0] * len(BATCH_BUCKETS))
    batch_sizes: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    latencies_s: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, size: int, latencies: list[float]) -> None:
        with self.lock:
            self.steps += size
            self.batches += 1
            self.batch_sizes.append(size)
            i = bisect.bisect_left(BATCH_BUCKETS, size)
            if i < len(self.bucket_counts):
                self.bucket_counts[i] += 1
            self.latencies_s.extend(latencies)
            self.latency_sum += sum(latencies)

    def latency_quantiles(self, qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[float, float]:
        """Quantiles of the recent submit-to-result latencies, in seconds (empty: none)."""
        with self.lock:
            lat = np.fromiter(self.latencies_s, np.float64, len(self.latencies_s))
        if lat.size == 0:
            return {}
        return {q: float(v) for q, v in zip(qs, np.quantile(lat, qs))}


class StepBatcher:
    """Collects single-session steps for a pool and runs them in batches on a worker thread.

    Parameters
    ----------
    pool : StreamPool
    max_batch : int
        Most steps run together.
    max_wait_us : float
        Longest a step waits for others before its batch runs.
    """

    def __init__(self, pool: Any, max_batch: int, max_wait_us: float) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._max_wait = max_wait_us * 1e-6
        self._cond = threading.Condition()
        # session id -> (staged input, future, time submitted), in arrival order
        self._pending: dict[int, tuple[np.ndarray, Future, float]] = {}
        self._stopping = False
        self.stats = BatchStats()
        self._worker = threading.Thread(target=self._run, name="lstm-infer-batcher", daemon=True)
        self._worker.start()

    def submit(self, sid: int, x_t: Any) -> Future:
        """Queue one step of ``sid``; the future gets its output ``(features,)``.

        Raises at once (nothing queued) for a bad input, a session not open, a session
        that already has a step waiting, or a stopped batcher.
        """
        staged = self._pool._stage_checked(sid, x_t)
        future: Future = Future()
        with self._cond:
            if self._stopping:
                raise StreamError("this pool's batching front end has been shut down")
            if sid in self._pending:
                raise StreamError(
                    f"session {sid} already has a step in flight; wait for its result "
                    "before submitting the next"
                )
            self._pending[sid] = (staged, future, time.perf_counter())
            self._cond.notify()
        return future

    def stop(self) -> None:
        """Run what is waiting, then end the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._worker.join()

    def _ready(self) -> bool:
        """Whether the waiting steps should run now (called with the condition held)."""
        n = len(self._pending)
        return n >= self._max_batch or n >= len(self._pool) or self._stopping

    def _take(self) -> list[tuple[int, np.ndarray, Future, float]] | None:
        """Wait for a batch and take it; None when stopping with nothing left."""
        with self._cond:
            while not self._pending:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = next(iter(self._pending.values()))[2] + self._max_wait
            while not self._ready():
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            sids = list(self._pending)[: self._max_batch]
            return [(sid, *self._pending.pop(sid)) for sid in sids]

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            # A future cancelled by its awaiter (e.g. a client gone) is dropped, not stepped.
            batch = [item for item in batch if item[2].set_running_or_notify_cancel()]
            if batch:
                self._step(batch)

    def _step(self, batch: list[tuple[int, np.ndarray, Future, float]]) -> None:
        try:
            outs = self._pool._step_staged_locked([b[0] for b in batch], [b[1] for b in batch])
        except LstmInferError:
            # Only a session closed while it waited can fail here (inputs were checked at
            # submit): step the others one by one so each gets its own result or error.
            for item in batch:
                self._step_one(item)
            return
        except BaseException as exc:  # pragma: no cover - a bug: report it to every caller
            for item in batch:
                item[2].set_exception(exc)
            return
        done = time.perf_counter()
        self.stats.record(len(batch), [done - b[3] for b in batch])
        for item, y in zip(batch, outs):
            item[2].set_result(y)

    def _step_one(self, item: tuple[int, np.ndarray, Future, float]) -> None:
        sid, staged, future, t0 = item
        try:
            (y,) = self._pool._step_staged_locked([sid], [staged])
        except BaseException as exc:
            future.set_exception(exc)
            return
        self.stats.record(1, [time.perf_counter() - t0])
        future.set_result(y)
