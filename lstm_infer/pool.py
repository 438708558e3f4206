"""StreamPool: the state of many independent streams in one slab, stepped as one batch.

A service with many live sessions (one audio stream, one chat, one sensor each) that steps
them one by one reads the model's weights once per session per step. The pool keeps every
session's recurrent state as one row of per-layer arrays ``(capacity, state)`` and advances
any subset of sessions with one kernel call at batch = the number stepped: the rows are
gathered into a contiguous batch, stepped by the same compiled stack step a
:class:`~lstm_infer.Stream` runs, and scattered back, all in C without the GIL
(``li_stack_step_rows``). Sessions left out of a step keep their state untouched.

    pool = lstm_infer.StreamPool(model)
    a, b = pool.open(), pool.open()
    ys = pool.step({a: x_a, b: x_b})        # {a: y_a, b: y_b}, one batch-2 step
    await pool.submit(a, x_a)               # or batched across coroutines / threads

Every method is thread-safe (the kernel runs with the GIL released; ``open`` and ``close``
never wait for a running step). A call that fails leaves every session's state as it was.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from lstm_infer import _engine
from lstm_infer.batching import BatchingFrontEnd
from lstm_infer.dense_head import apply_head
from lstm_infer.errors import InputError, InputTypeError, SessionError, StreamError

__all__ = ["StreamPool"]

# Rows of a growing pool's first slab; it doubles whenever every row is taken.
_FIRST_CAPACITY = 8
_FLOAT32 = np.dtype(np.float32)


class StreamPool(BatchingFrontEnd):
    """Many independent streams of one model, stepped together.

    Parameters
    ----------
    model : Model or GraphModel
        A model that streams (``model.stream()`` works): unidirectional layers, weights
        not fed at run time. A GraphModel that takes and returns its state gives a
        :class:`~lstm_infer.graph_pool.GraphStreamPool` (same methods; its sessions' state is
        the graph's own state inputs).
    capacity : int, optional
        The most sessions open at once. By default the slab starts small and doubles as
        sessions open (rows are reused after ``close``; the slab never shrinks).
    max_batch : int
        :meth:`submit` runs a batch as soon as this many steps wait.
    max_wait_us : float
        The most latency batching may add to a step: :meth:`submit` runs the waiting
        steps at the latest this long after the first of them arrived, less the running
        estimate of what a batch costs from its start to its results being handed back
        (or at once when every open session has a step waiting).

    Notes
    -----
    A session is an ``int`` id from :meth:`open`; ids are never reused, so a closed id stays
    invalid. A step input is one timestep of one session: ``(input_size,)`` or
    ``(1, input_size)`` (a token id, scalar or ``(1,)``, for a model with an embedding),
    converted to float32 as :meth:`Stream.step` converts it (NaN and Inf propagate, as in a
    stream). Its output is ``(features,)``. Snapshots (:meth:`state`, :meth:`set_state`) have
    the structure of ``Stream.state`` for a batch-1 stream, so they move freely between a
    pool session and a ``model.stream()``.
    """

    def __new__(cls, model: Any = None, *args: Any, **kwargs: Any) -> Any:
        from lstm_infer.graph_model import GraphModel

        if isinstance(model, GraphModel):  # a graph's sessions: lstm_infer.graph_pool
            from lstm_infer.graph_pool import GraphStreamPool, TimeAxisPool
            from lstm_infer.graph_stream import find_state_pairs

            if kwargs.get("state_map") is None and not find_state_pairs(model):
                kwargs.pop("state_map", None)
                return TimeAxisPool(model, *args, **kwargs)
            return GraphStreamPool(model, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        model: Any,
        capacity: int | None = None,
        *,
        max_batch: int = 64,
        max_wait_us: float = 500.0,
    ) -> None:
        if capacity is not None and (
            not isinstance(capacity, (int, np.integer))
            or isinstance(capacity, bool)
            or capacity < 1
        ):
            raise ValueError(f"capacity must be a positive int or None, got {capacity!r}")
        if not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        if not max_wait_us >= 0:
            raise ValueError(f"max_wait_us must be >= 0, got {max_wait_us!r}")
        # A batch-1 stream checks and converts inputs, initial states and snapshots exactly
        # as a stream does (it refuses models that cannot stream); its state is staging only.
        self._probe = model.stream(1)
        self._model = model
        self._fixed = capacity is not None
        self._capacity = int(capacity) if capacity is not None else _FIRST_CAPACITY
        self._plans = list(self._probe._core.plans)
        self._core = _engine.StackStepper(self._plans, self._capacity)
        self._head = model._head
        self._takes_tokens = model.spec.embedding is not None
        self._input_size = self._probe._core.input_size
        self._step_shape = (self._input_size,)
        core_out = self._probe._core.output_size
        self._output_size = (
            apply_head(np.zeros((1, core_out), np.float32), self._head).shape[1]
            if self._head
            else core_out
        )
        self._default = self._probe.state  # the model's initial state, one row
        self._rows: dict[int, int] = {}  # session id -> slab row
        self._free = list(range(self._capacity - 1, -1, -1))  # a stack: low rows first
        # Rows of sessions closed since the last step began: a running step may still write
        # them, so they are free only once no step runs (_reclaim).
        self._closing: list[int] = []
        self._ids = itertools.count(1)
        # _lock: the slab. Held by a step (its kernel runs with the GIL released), by a slab's
        # growth and by every access to an open session's row. _rows_lock: _rows, _free,
        # _closing and writing a free row; taken inside _lock, never the other way round, so
        # open and close need not wait for a running step.
        self._lock = threading.Lock()
        self._rows_lock = threading.Lock()
        self.max_batch = int(max_batch)
        self.max_wait_us = float(max_wait_us)
        self._batcher: Any = None

    # ---- description ---------------------------------------------------------------------

    @property
    def model(self) -> Any:
        return self._model

    @property
    def capacity(self) -> int:
        """Rows of the slab now (the limit when the pool was made with a capacity)."""
        return self._capacity

    @property
    def input_size(self) -> int:
        """Features of one step's input (1 for a model that takes token ids)."""
        return 1 if self._takes_tokens else self._input_size

    @property
    def takes_tokens(self) -> bool:
        """Whether a step input is a token id instead of a feature vector."""
        return self._takes_tokens

    @property
    def output_size(self) -> int:
        """Features of one step's output."""
        return self._output_size

    def sessions(self) -> list[int]:
        """The ids of the open sessions, oldest first."""
        with self._rows_lock:
            return list(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, sid: object) -> bool:
        return sid in self._rows

    # ---- sessions ------------------------------------------------------------------------

    def open(self, initial: Mapping[str, Any] | None = None) -> int:
        """Open a session at the model's initial state (or ``initial``, as in
        :meth:`reset`); returns its id. Does not wait for a running step unless the slab
        has to grow (or ``initial`` is given)."""
        if not initial:
            with self._rows_lock:
                if self._free:  # no step touches a free row
                    return self._publish(self._free.pop(), self._default)
        with self._lock:
            state = self._initial(initial)
            with self._rows_lock:
                self._reclaim()
                return self._publish(self._take_row(), state)

    def close(self, sid: int) -> None:
        """Close a session; its row is reused by a later :meth:`open`. Does not wait for a
        running step."""
        with self._rows_lock:
            row = self._row(sid)
            del self._rows[sid]
            self._closing.append(row)
        batcher = self._batcher
        if batcher is not None:  # the steps waiting for this session's may now run
            batcher.poke()

    def fork(self, sid: int) -> int:
        """Open a new session whose state is a copy of ``sid``'s (e.g. a beam's branch)."""
        with self._lock:
            state = self._read_row(self._row(sid))
            with self._rows_lock:
                self._reclaim()
                return self._publish(self._take_row(), state)

    def reset(self, sid: int, initial: Mapping[str, Any] | None = None) -> None:
        """Return a session to the model's initial state, or to the one ``initial`` gives.

        Parameters
        ----------
        sid : int
        initial : mapping of name -> array, optional
            The model's state inputs by its own names, for a batch of one (as
            ``model.stream(1).reset(initial)`` takes them, e.g. ``{"h0": (layers, 1, H)}``).
        """
        with self._lock:
            row = self._row(sid)
            self._write_row(row, self._initial(initial))

    def state(self, sid: int) -> dict[str, list[np.ndarray | None]]:
        """A copy of the session's state: ``{"h": [per layer (1, Hr)], "c": [...]}`` (``c``
        None for the layers without a cell state), as ``Stream.state`` of a batch-1 stream."""
        with self._lock:
            return self._read_row(self._row(sid))

    def set_state(self, sid: int, snap: Mapping[str, Any]) -> None:
        """Restore a session from a :meth:`state` (or batch-1 ``Stream.state``) snapshot.
        Shapes are checked; nothing changes on error."""
        with self._lock:
            row = self._row(sid)
            self._probe.state = snap  # checks and converts, or raises
            self._write_row(row, self._probe.state)

    # ---- stepping ------------------------------------------------------------------------

    def step(self, inputs: Mapping[int, Any]) -> dict[int, np.ndarray]:
        """Advance the sessions in ``inputs`` by one timestep, as one batch.

        Parameters
        ----------
        inputs : mapping of session id -> one timestep's input
            Any subset of the open sessions; the others keep their state.

        Returns
        -------
        dict of session id -> float32 ``(features,)``
            Each session's output, in the order of ``inputs`` (rows of one new array).

        Raises
        ------
        SessionError
            A session id is not open.
        InputError, InputTypeError
            An input has the wrong shape or dtype (the message names the session). Nothing
            is stepped then: every session keeps its state.
        """
        if not isinstance(inputs, Mapping):
            raise InputTypeError(
                f"step takes a dict of session id -> input, got {type(inputs).__name__}"
            )
        sids = list(inputs)
        with self._lock:
            staged = [self._stage(sid, inputs[sid]) for sid in sids]
            out = self._step_staged(sids, staged)
        return dict(zip(sids, out))

    def _stage(self, sid: int, x_t: Any) -> np.ndarray:
        """One session's input in the kernel's form: float32 (input_size,) or an int64 id
        (or its embedding row when the model embeds tokens itself), possibly a view of
        ``x_t``. Reads no session state, so it needs no lock (the batching front end checks
        inputs while a step runs)."""
        if type(sid) is not int or sid not in self._rows:
            self._row(sid)  # raises unless an open id of another integer type
        if self._takes_tokens:
            try:
                return self._probe._step_input(np.reshape(x_t, (-1,)))[0]
            except (InputError, InputTypeError) as exc:
                raise type(exc)(f"step input of session {sid}: {exc}") from None
        x = x_t if type(x_t) is np.ndarray else np.asarray(x_t)
        size = self._input_size
        if x.dtype is not _FLOAT32:
            if x.dtype.kind not in "fiub":
                raise InputTypeError(
                    f"step input of session {sid} must be numeric, got dtype {x.dtype}"
                )
            x = x.astype(np.float32)
        if x.shape != self._step_shape:
            if x.shape != (1, size):
                raise InputError(
                    f"step input of session {sid} must have shape ({size},) or (1, {size}), "
                    f"got {tuple(x.shape)}"
                )
            x = x.reshape(size)
        return x

    def _step_batch_locked(self, sids: list[int], x: np.ndarray) -> np.ndarray:
        """``_step_rows`` under the lock (for the batching front end)."""
        with self._lock:
            return self._step_rows(sids, x)

    def _step_staged(self, sids: list[int], staged: list[np.ndarray]) -> list[np.ndarray]:
        """Step sessions whose inputs went through ``_stage``; the caller holds the lock."""
        if not sids:
            return []
        return list(self._step_rows(sids, np.stack(staged)))

    def _step_rows(self, sids: list[int], x: np.ndarray) -> np.ndarray:
        """Step sessions from their staged inputs stacked, C-contiguous ``(n, ...)``;
        returns their outputs ``(n, features)``. The caller holds the lock."""
        with self._rows_lock:
            self._reclaim()  # no step runs now
            try:
                rows = np.array([self._rows[sid] for sid in sids], np.int32)
            except (KeyError, TypeError):  # the error names the first session not open
                for sid in sids:
                    self._row(sid)
                raise  # pragma: no cover - an id open under another integer type
        if len(set(sids)) != len(sids):
            raise InputError("a session appears twice in one step")
        out = np.empty((len(sids), self._core.output_size), np.float32)
        try:
            self._core.step_rows(rows, x, out)
        except ValueError as exc:  # a token id out of range: nothing was written
            raise InputError(str(exc)) from None
        return apply_head(out, self._head) if self._head else out

    # ---- rows ----------------------------------------------------------------------------

    def _row(self, sid: Any) -> int:
        is_id = isinstance(sid, (int, np.integer)) and not isinstance(sid, bool)
        row = self._rows.get(sid) if is_id else None
        if row is None:
            raise SessionError(f"session {sid!r} is not open in this pool")
        return row

    def _reclaim(self) -> None:
        """Free the rows of closed sessions; the caller holds both locks."""
        self._free.extend(self._closing)
        self._closing.clear()

    def _publish(self, row: int, state: Mapping[str, list[Any]]) -> int:
        """Write a free row and open a session on it; the caller holds _rows_lock (which
        growth holds too, so the write cannot land in a slab being replaced)."""
        self._write_row(row, state)
        sid = next(self._ids)
        self._rows[sid] = row
        return sid

    def _take_row(self) -> int:
        """A free row, growing the slab if needed; the caller holds both locks."""
        if not self._free:
            if self._fixed:
                raise StreamError(f"the pool is full ({self._capacity} sessions open)")
            self._grow(2 * self._capacity)
        return self._free.pop()

    def _grow(self, capacity: int) -> None:
        """A slab of ``capacity`` rows holding the current rows (only in a growing pool)."""
        core = _engine.StackStepper(self._plans, capacity)
        for new, old in zip(core.h + core.c, self._core.h + self._core.c):
            if new is not None:
                new[: self._capacity] = old
        self._free = list(range(capacity - 1, self._capacity - 1, -1)) + self._free
        self._core, self._capacity = core, capacity

    def _initial(self, initial: Mapping[str, Any] | None) -> dict[str, list[Any]]:
        if not initial:
            return self._default
        self._probe.reset(initial)  # checks and converts, or raises
        return self._probe.state

    def _read_row(self, row: int) -> dict[str, list[np.ndarray | None]]:
        return {
            "h": [h[row : row + 1].copy() for h in self._core.h],
            "c": [None if c is None else c[row : row + 1].copy() for c in self._core.c],
        }

    def _write_row(self, row: int, state: Mapping[str, list[Any]]) -> None:
        for dst, src in zip(self._core.h, state["h"]):
            dst[row] = src[0]
        for dst, src in zip(self._core.c, state["c"]):
            if dst is not None:
                dst[row] = src[0]
