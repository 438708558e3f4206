"""The batching front end of a StreamPool: steps submitted one by one, run as one batch.

Coroutines (``await pool.submit``) and threads (``pool.submit_blocking``) hand their step to
one worker thread, which waits until ``max_batch`` steps are waiting, every open session
has one waiting, or the first of them has waited as long as ``max_wait_us`` allows, and
then runs them as one :meth:`StreamPool.step`. The kernel runs on that thread with the GIL
released, so an event loop goes on serving meanwhile.

A step that is a whole batch by itself the moment it arrives (the only open session, or
``max_batch`` 1) while the worker is idle runs at once in the submitter's own thread: a lone
session steps like a solo stream, without the two thread hand-offs (the worker's wake-up,
then the event loop's), which on a virtual machine cost a hundred microseconds or more
each. Larger batches always run on the worker, so an event loop never blocks on them.

``max_wait_us`` bounds the latency that batching adds to a step, not only its time in the
queue: a batch the worker runs on its deadline also costs the worker's wake-up, the kernel
call and the hand-back to the submitter. The worker keeps a running estimate of that cost
(from the batch being due to its results arriving, over recent batches, quick to rise and
slow to fall) and starts a waiting batch that much earlier, so under a paced load (live
streams, one frame each every few milliseconds) the first step of a batch gets its result
about ``max_wait_us`` after it was submitted, not that plus the batch's own time.

Each input is checked when it is submitted (a bad one raises to its submitter, never to
the batch) and copied straight into its batch's input array; a session closed while its
step waited gets a SessionError of its own. The results of a batch reach each event loop
in one ``call_soon_threadsafe``, and the worker is woken only to start a wait or to run a
batch, so a step costs its submitter a few microseconds of Python besides the kernel.
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lstm_infer.errors import InputError, LstmInferError, StreamError

__all__ = ["BatchStats", "StepBatcher"]

# Upper bounds of the batch-size histogram's buckets (Prometheus "le" labels).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Latencies kept for the quantiles (the most recent ones).
LATENCY_WINDOW = 10_000
# Weights of the newest batch in the running estimate of a batch's cost from being due to
# its results being handed back: a batch slower than the estimate moves it by half of the
# gap, a faster one by 1/1024, so the estimate rides at the upper end of the recent costs
# (what the p99 of a step's latency sees) rather than their mean. Measured under a paced
# load on a 2-core VM: falling by 1/32 gave a p99 ~80 us above 1/256 (Zen 5); 1/2 and
# 1/1024 against 1/4 and 1/256 (Zen 4, two interleaved rounds): p99 550/477 vs 596/577 us
# at 16 sessions, 532/560 vs 650/579 at 64, 748/842 vs 1343/1232 at 256, at mean batches
# of 3.3 instead of 3.4 (64 sessions).
LEAD_RISE = 0.5
LEAD_FALL = 1 / 1024


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


class _Batch:
    """Steps that will run together, in arrival order: their sessions, waiters, arrival
    times, and their inputs already staged into one array (the batch's gather buffer).

    ``loops`` maps each event loop to the indices of its futures, ``threads`` lists the
    indices of the threads' futures, so the results are handed out per loop in one call.
    """

    __slots__ = ("sids", "waiters", "times", "x", "row_shape", "loops", "threads")

    def __init__(self) -> None:
        self.sids: list[int] = []
        self.waiters: list[Any] = []
        self.times: list[float] = []
        self.x: np.ndarray | None = None  # (rows, *row_shape); the first len(sids) filled
        self.row_shape: tuple[int, ...] = ()
        self.loops: dict[Any, list[int]] = {}
        self.threads: list[int] = []

    def put(self, i: int, sid: int, staged: np.ndarray, pool: Any, max_batch: int) -> None:
        """Copy step ``i``'s staged input into the buffer (made as long as the pool has open
        sessions, at most ``max_batch``, for the first step; doubled when full)."""
        x = self.x
        if x is None:
            self.row_shape = staged.shape
            rows = min(max_batch, max(len(pool._rows), 1))
            self.x = x = np.empty((rows, *staged.shape), staged.dtype)
        elif staged.shape != self.row_shape:
            raise InputError(
                f"step input of session {sid} has shape {staged.shape}, but the steps "
                f"waiting to run with it have shape {self.row_shape} (a batch steps inputs "
                "of one shape)"
            )
        elif i == len(x):
            self.x = x = np.concatenate([x, np.empty_like(x)])
        x[i] = staged


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
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # The batches waiting, oldest first; only the last one takes new steps (the others
        # are full). _waiting: the sessions with a step in them; _count: their steps.
        self._batches: deque[_Batch] = deque()
        self._waiting: set[int] = set()
        self._count = 0
        self._stopping = False
        # A batch is running (on the worker or inline in a submitter): a batch that becomes
        # ready meanwhile is left to the worker.
        self._busy = False
        # Seconds from a batch being due to its results reaching their submitters, estimated
        # over recent batches; a waiting batch starts this much before max_wait is up.
        self._lead = 0.0
        self.stats = BatchStats()
        self._worker = threading.Thread(target=self._run, name="lstm-infer-batcher", daemon=True)
        self._worker.start()

    def submit(self, sid: int, x_t: Any) -> Future:
        """Queue one step of ``sid`` for a thread; the future gets its output ``(features,)``.

        Raises at once (nothing queued) for a bad input, a session not open, a session
        that already has a step waiting, or a stopped batcher.
        """
        future: Future = Future()
        self._queue(sid, x_t, future, None)
        return future

    def submit_future(self, sid: int, x_t: Any) -> Any:
        """:meth:`submit` for a coroutine: an ``asyncio.Future`` of the running event loop.
        The results of a batch reach each event loop in one call (one wake-up per batch, not
        per step). A cancelled future's step may still have run."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue(sid, x_t, future, loop)
        return future

    async def submit_async(self, sid: int, x_t: Any) -> np.ndarray:
        """Await :meth:`submit_future`."""
        return await self.submit_future(sid, x_t)

    def _queue(self, sid: int, x_t: Any, waiter: Any, loop: Any) -> None:
        staged = self._pool._stage(sid, x_t)  # reads no session state: no lock
        with self._lock:  # the condition's lock (a plain one: cheaper to enter)
            if self._stopping:
                raise StreamError("this pool's batching front end has been shut down")
            if sid in self._waiting:
                raise StreamError(
                    f"session {sid} already has a step in flight; wait for its result "
                    "before submitting the next"
                )
            batches = self._batches
            batch = batches[-1] if batches else None
            if batch is None or len(batch.sids) >= self._max_batch:
                batch = _Batch()
            i = len(batch.sids)
            # A copy: the caller may reuse its array before the step runs.
            batch.put(i, sid, staged, self._pool, self._max_batch)
            if i == 0:
                batches.append(batch)
            batch.sids.append(sid)
            batch.waiters.append(waiter)
            batch.times.append(time.perf_counter())
            if loop is None:
                batch.threads.append(i)
            else:
                mine = batch.loops.get(loop)
                if mine is None:
                    batch.loops[loop] = mine = []
                mine.append(i)
            self._waiting.add(sid)
            count = self._count = self._count + 1
            # _ready, inlined: this runs once per step.
            ready = count >= len(self._pool._rows) or len(batches[0].sids) >= self._max_batch
            inline = None
            if ready and not self._busy and len(batches) == 1 and i == 0:
                # A batch of this one step: run it here, without a thread hand-off.
                inline = self._pop()
                self._busy = True
            elif count == 1 or ready:  # wake the worker to start the wait or run a batch
                self._cond.notify()
        if inline is not None:
            try:
                self._run_batch(inline, time.perf_counter(), loop)
            finally:
                with self._cond:
                    self._busy = False
                    if self._batches or self._stopping:  # arrived meanwhile: the worker's
                        self._cond.notify()

    def _pop(self) -> _Batch:
        """Take the oldest batch off the queue (called with the condition held)."""
        batch = self._batches.popleft()
        self._waiting.difference_update(batch.sids)
        self._count -= len(batch.sids)
        return batch

    def poke(self) -> None:
        """Wake the worker if the waiting steps became a batch (a session was closed)."""
        with self._cond:
            if self._count and self._ready():
                self._cond.notify()

    def stop(self) -> None:
        """Run what is waiting, then end the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._worker.join()

    def _ready(self) -> bool:
        """Whether the oldest batch should run now (called with the condition held)."""
        return (
            len(self._batches[0].sids) >= self._max_batch
            or self._count >= len(self._pool._rows)
            or self._stopping
        )

    def _take(self) -> tuple[_Batch, float] | None:
        """Wait for a batch and take it, with the time it became due (its deadline, or now
        when it was ready before); None when stopping with nothing left. Marks the batcher
        busy."""
        with self._cond:
            while True:
                while not self._batches or self._busy:
                    if self._stopping and not self._batches and not self._busy:
                        return None
                    self._cond.wait()
                first = self._batches[0]
                deadline = first.times[0] + max(self._max_wait - self._lead, 0.0)
                due = None
                while self._batches and self._batches[0] is first and not self._busy:
                    if self._ready():
                        due = time.perf_counter()
                        break
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        due = deadline
                        break
                    self._cond.wait(remaining)
                if due is not None:  # else a submitter ran it meanwhile: wait again
                    self._busy = True
                    return self._pop(), due

    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            try:
                self._run_batch(*taken, None)
            finally:
                with self._cond:
                    self._busy = False

    def _run_batch(self, batch: _Batch, due: float, here: Any) -> None:
        """Step a batch and hand out its results; ``here``: the event loop of the calling
        thread, whose futures are resolved directly (None on the worker)."""
        n = len(batch.sids)
        # A step whose awaiter gave up (e.g. a client gone) is dropped, not stepped.
        waiters = batch.waiters
        gone = [i for i in batch.threads if not waiters[i].set_running_or_notify_cancel()]
        for mine in batch.loops.values():  # read from another thread: a benign race
            gone += [i for i in mine if waiters[i].done()]
        if not gone:
            outs = self._step(batch.sids, batch.x[:n], batch.times)
        elif len(gone) < n:
            keep = sorted(set(range(n)).difference(gone))
            part = self._step(
                [batch.sids[i] for i in keep], batch.x[keep], [batch.times[i] for i in keep]
            )
            outs = [_DROPPED] * n
            for i, out in zip(keep, part):
                outs[i] = out
        else:
            return
        self._deliver(batch, outs, due, here)

    def _handed_back(self, due: float) -> None:
        """Fold one batch's due-to-result time into the running estimate (called where the
        results arrive: a benign race between event loops, each write one float)."""
        gap = min(time.perf_counter() - due, self._max_wait) - self._lead
        self._lead += (LEAD_RISE if gap > 0 else LEAD_FALL) * gap

    def _step(self, sids: list[int], x: np.ndarray, times: list[float]) -> Any:
        """Each step's output (a sequence indexed like ``sids``), or the exception to raise
        to its submitter."""
        try:
            outs = self._pool._step_batch_locked(sids, x)
        except LstmInferError:
            # Inputs were checked at submit: a session closed while it waited is the one
            # failure expected here. Those get their SessionError, the others a step.
            return self._step_apart(sids, x, times)
        except BaseException as exc:  # pragma: no cover - a bug: report it to every caller
            return [exc] * len(sids)
        done = time.perf_counter()
        self.stats.record(len(sids), [done - t for t in times])
        return outs

    def _step_apart(self, sids: list[int], x: np.ndarray, times: list[float]) -> list[Any]:
        outs: list[Any] = [None] * len(sids)
        rest = []
        for i, sid in enumerate(sids):
            try:
                self._pool._row(sid)
            except LstmInferError as exc:
                outs[i] = exc
            else:
                rest.append(i)
        if rest and len(rest) < len(sids):  # step the open sessions together again
            part = self._step([sids[i] for i in rest], x[rest], [times[i] for i in rest])
            for i, out in zip(rest, part):
                outs[i] = out
        else:  # none closed (another error): one by one, so only its own step fails
            for i in rest:
                try:
                    (outs[i],) = self._pool._step_batch_locked([sids[i]], x[i : i + 1])
                except BaseException as exc:
                    outs[i] = exc
                else:
                    self.stats.record(1, [time.perf_counter() - times[i]])
        return outs

    def _deliver(self, batch: _Batch, outs: Any, due: float, here: Any) -> None:
        """Hand out the results: thread futures and those of ``here`` (the calling
        thread's event loop) directly, other loops' in one call per loop (the first of
        those calls to run measures the batch's lead)."""
        waiters = batch.waiters
        for i in batch.threads:
            out = outs[i]
            if out is _DROPPED:
                continue
            if isinstance(out, BaseException):
                waiters[i].set_exception(out)
            else:
                waiters[i].set_result(out)
        if not batch.loops:
            self._handed_back(due)
            return
        timed = [False]
        for loop, mine in batch.loops.items():
            if loop is here:
                _resolve(waiters, outs, mine, self, due, timed)
                continue
            try:
                loop.call_soon_threadsafe(_resolve, waiters, outs, mine, self, due, timed)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass


_DROPPED = object()  # the output of a step not run (its waiter was cancelled)


def _resolve(
    waiters: list[Any],
    outs: Any,
    mine: list[int],
    batcher: StepBatcher,
    due: float,
    timed: list[bool],
) -> None:
    """Set the results of one event loop's futures of a batch (runs in that loop); the
    first loop to get there times the batch's hand-back."""
    if not timed[0]:
        timed[0] = True
        batcher._handed_back(due)
    for i in mine:
        future = waiters[i]
        if future.done():  # cancelled meanwhile (or before: then it was not stepped)
            continue
        out = outs[i]
        if isinstance(out, BaseException):
            future.set_exception(out)
        else:
            future.set_result(out)


class BatchingFrontEnd:
    """``submit`` / ``submit_blocking`` / ``stats`` / ``shutdown`` of a pool, on a
    :class:`StepBatcher`. The pool provides ``_lock`` (its step lock), ``_batcher`` (None
    until the first submit), ``max_batch``, ``max_wait_us``, and the batcher's hooks:
    ``_rows`` (the open sessions), ``_row(sid)`` (raises SessionError for a session not
    open), ``_stage(sid, x_t)`` (checks one input without a lock, returns it in the kernel's
    form, possibly a view of the caller's array) and ``_step_batch_locked(sids, x)`` (steps
    the sessions from the staged inputs stacked as ``x``, taking the pool's lock; returns
    their outputs as a sequence).
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
        batcher = self._batcher
        if batcher is None:
            batcher = self._get_batcher()
        future = batcher.submit_future(sid, x_t)
        if future.done():  # ran here, inline: still let the other coroutines in once, so
            await asyncio.sleep(0)  # a session alone in the pool cannot starve the loop
        return await future

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
