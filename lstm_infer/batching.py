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
        # session id -> (staged input, waiter, time submitted), in arrival order; a waiter is
        # a concurrent.futures.Future (threads) or an asyncio.Future (coroutines)
        self._pending: dict[int, tuple[np.ndarray, Any, float]] = {}
        self._stopping = False
        self.stats = BatchStats()
        self._worker = threading.Thread(target=self._run, name="lstm-infer-batcher", daemon=True)
        self._worker.start()

    def submit(self, sid: int, x_t: Any) -> Future:
        """Queue one step of ``sid`` for a thread; the future gets its output ``(features,)``.

        Raises at once (nothing queued) for a bad input, a session not open, a session
        that already has a step waiting, or a stopped batcher.
        """
        future: Future = Future()
        self._queue(sid, x_t, future)
        return future

    async def submit_async(self, sid: int, x_t: Any) -> np.ndarray:
        """:meth:`submit` for a coroutine: the results of a batch reach each event loop in
        one call (one wake-up per batch, not per step). A cancelled await may still have
        been stepped."""
        import asyncio

        future = asyncio.get_running_loop().create_future()
        self._queue(sid, x_t, future)
        return await future

    def _queue(self, sid: int, x_t: Any, waiter: Any) -> None:
        # Reads no state, so no lock; a copy: the caller may reuse its array meanwhile.
        staged = np.array(self._pool._stage(sid, x_t))
        with self._cond:
            if self._stopping:
                raise StreamError("this pool's batching front end has been shut down")
            if sid in self._pending:
                raise StreamError(
                    f"session {sid} already has a step in flight; wait for its result "
                    "before submitting the next"
                )
            self._pending[sid] = (staged, waiter, time.perf_counter())
            # Wake the worker only to start the wait (first step) or when a batch is ready.
            if len(self._pending) == 1 or self._ready():
                self._cond.notify()

    def poke(self) -> None:
        """Wake the worker if the waiting steps became a batch (a session was closed)."""
        with self._cond:
            if self._pending and self._ready():
                self._cond.notify()

    def stop(self) -> None:
        """Run what is waiting, then end the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._worker.join()

    def _ready(self) -> bool:
        """Whether the waiting steps should run now (called with the condition held)."""
        n = len(self._pending)
        return n >= self._max_batch or n >= len(self._pool._rows) or self._stopping

    def _take(self) -> list[tuple[int, np.ndarray, Any, float]] | None:
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
            # A step whose awaiter gave up (e.g. a client gone) is dropped, not stepped.
            batch = [item for item in batch if _still_wanted(item[2])]
            if batch:
                self._deliver(batch, self._step(batch))

    def _step(self, batch: list[tuple[int, np.ndarray, Any, float]]) -> list[Any]:
        """Each item's output, or the exception to raise to its submitter."""
        try:
            outs = self._pool._step_staged_locked([b[0] for b in batch], [b[1] for b in batch])
        except LstmInferError:
            # Only a session closed while it waited can fail here (inputs were checked at
            # submit): step the others one by one so each gets its own result or error.
            return [self._step_one(item) for item in batch]
        except BaseException as exc:  # pragma: no cover - a bug: report it to every caller
            return [exc] * len(batch)
        done = time.perf_counter()
        self.stats.record(len(batch), [done - b[3] for b in batch])
        return outs

    def _step_one(self, item: tuple[int, np.ndarray, Any, float]) -> Any:
        sid, staged, _, t0 = item
        try:
            (y,) = self._pool._step_staged_locked([sid], [staged])
        except BaseException as exc:
            return exc
        self.stats.record(1, [time.perf_counter() - t0])
        return y

    def _deliver(self, batch: list[tuple[int, np.ndarray, Any, float]], outs: list[Any]) -> None:
        """Hand out the results: thread futures directly, asyncio ones per event loop."""
        by_loop: dict[Any, list[tuple[Any, Any]]] = {}
        for item, out in zip(batch, outs):
            waiter = item[2]
            if isinstance(waiter, Future):
                if isinstance(out, BaseException):
                    waiter.set_exception(out)
                else:
                    waiter.set_result(out)
            else:
                by_loop.setdefault(waiter.get_loop(), []).append((waiter, out))
        for loop, pairs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, pairs)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass


def _still_wanted(waiter: Any) -> bool:
    if isinstance(waiter, Future):
        return waiter.set_running_or_notify_cancel()
    return not waiter.done()  # an asyncio future, read from the worker: a benign race


def _resolve(pairs: list[tuple[Any, Any]]) -> None:
    """Set asyncio futures' results (runs in their event loop)."""
    for future, out in pairs:
        if future.done():
            continue
        if isinstance(out, BaseException):
            future.set_exception(out)
        else:
            future.set_result(out)


class BatchingFrontEnd:
    """``submit`` / ``submit_blocking`` / ``stats`` / ``shutdown`` of a pool, on a
    :class:`StepBatcher`. The pool provides ``_lock`` (its step lock), ``_batcher`` (None
    until the first submit), ``max_batch``, ``max_wait_us``, and the batcher's hooks:
    ``_rows`` (the open sessions), ``_stage(sid, x_t)`` and ``_step_staged_locked``.
    """

    async def submit(self, sid: int, x_t: Any) -> np.ndarray:
        """Step one session, batched with the steps other coroutines and threads submit.

        The waiting steps run as one :meth:`step` when ``max_batch`` of them wait, when
        every open session has one waiting, or ``max_wait_us`` after the first arrived;
        the kernel runs on a worker thread, so the event loop goes on meanwhile. A bad input
        raises here, at once, and never fails the others' batch.

        Raises
        ------
        StreamError
            ``sid`` already has a step in flight (one session steps one step at a time;
            await the first before submitting the next).
        """
        return await self._get_batcher().submit_async(sid, x_t)

    def submit_blocking(self, sid: int, x_t: Any, timeout: float | None = None) -> np.ndarray:
        """:meth:`submit` for threads: blocks until the session's step ran (batched with
        the other threads' and coroutines' steps); same errors."""
        return self._get_batcher().submit(sid, x_t).result(timeout)

    def _get_batcher(self) -> Any:
        batcher = self._batcher  # no lock on this path: a step may be holding it
        if batcher is not None:
            return batcher
        with self._lock:
            if self._batcher is None:
                self._batcher = StepBatcher(self, self.max_batch, self.max_wait_us)
            return self._batcher

    @property
    def stats(self) -> Any:
        """Counters of the batching front end (:class:`lstm_infer.batching.BatchStats`), or
        None before the first :meth:`submit`."""
        return None if self._batcher is None else self._batcher.stats

    def shutdown(self) -> None:
        """Stop the batching worker thread (steps waiting are run first). Sessions stay open
        and :meth:`step` keeps working; a later :meth:`submit` starts a new worker."""
        with self._lock:
            batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.stop()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
