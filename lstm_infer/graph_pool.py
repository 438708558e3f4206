"""StreamPools of graph models: graphs that take and return their state (silero-VAD and the
like, :class:`GraphStreamPool`) and graphs streamed along their time axis
(:class:`TimeAxisPool`).

``lstm_infer.StreamPool(graph_model)`` gives this pool. Every session's state is one row of a
slab per state input (the slab's batch axis is the state input's one symbolic dim: silero's
``state (2, N, 128)`` has its sessions on axis 1). A step of n sessions gathers their rows,
runs the graph's step program compiled at batch n (the same compiled step a
``model.stream()`` runs, :mod:`lstm_infer.compile.step_program`) with the state copies as its
last records, and scatters the new state back; sessions left out keep theirs. Batch sizes are
rounded up to a power of two (the padding rows' inputs are zeros and their results dropped),
so at most log2(capacity) + 1 programs are ever compiled. A graph with a node the step
compiler does not lower steps op by op at the same batch, with the same results.

A session's step input is the model's one step input with batch 1 on axis 0 (silero: a
``(1, 576)`` chunk, or ``(576,)``); all sessions of one pool step chunks of one shape, set
by ``step_shape`` or by the first step. Outputs are per session, batch axis dropped. The
graph must keep its batch rows independent (as every per-session model does): a graph that
normalises or reduces over the batch axis would mix the sessions stepped together.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from lstm_infer.batching import BatchingFrontEnd
from lstm_infer.compile.step_program import CompiledStep, TraceFailed, compile_step
from lstm_infer.errors import InputError, InputTypeError, LstmInferError, SessionError, StreamError

__all__ = ["GraphStreamPool", "TimeAxisPool"]

_FIRST_CAPACITY = 8


def _check_settings(capacity: Any, max_batch: Any, max_wait_us: Any) -> None:
    if capacity is not None and (not isinstance(capacity, int) or capacity < 1):
        raise ValueError(f"capacity must be a positive int or None, got {capacity!r}")
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
    if not max_wait_us >= 0:
        raise ValueError(f"max_wait_us must be >= 0, got {max_wait_us!r}")


def _bucket(n: int) -> int:
    """The batch a step of n sessions runs at: n rounded up to a power of two."""
    return 1 << (n - 1).bit_length()


class GraphStreamPool(BatchingFrontEnd):
    """Many sessions of one state-carrying graph model, stepped as one batch.

    Parameters
    ----------
    model : GraphModel
        A graph whose ``stream()`` carries state (state inputs paired with outputs).
    capacity : int, optional
        The most sessions open at once; by default the slab doubles as sessions open.
    state_map : mapping, optional
        State input -> state output, as ``model.stream(state_map=...)`` takes it.
    step_shape : tuple of int, optional
        One session's step input shape without its batch axis (silero: ``(576,)``). By
        default the input's declared dims when they are static, else the first step's.
    max_batch, max_wait_us
        The batching front end's settings (see :meth:`submit`).
    """

    def __init__(
        self,
        model: Any,
        capacity: int | None = None,
        *,
        state_map: Mapping[str, str] | None = None,
        step_shape: tuple[int, ...] | None = None,
        max_batch: int = 64,
        max_wait_us: float = 500.0,
    ) -> None:
        from lstm_infer.graph_stream import GraphStream

        _check_settings(capacity, max_batch, max_wait_us)
        probe = model.stream(1, state_map=state_map)
        if not isinstance(probe, GraphStream):
            raise StreamError("internal: a time-axis graph's pool is a TimeAxisPool")
        if len(probe.step_inputs) != 1:
            raise StreamError(f"a pooled graph takes one step input, this one {probe.step_inputs}")
        self._model = model
        self._probe = probe
        self._input = probe.step_inputs[0]
        self._outputs = list(probe.step_outputs)
        self.state_map = dict(probe.state_map)
        declared = {t.name: t for t in model.inputs}
        self._axes = {}
        for name in self.state_map:
            free = [i for i, d in enumerate(declared[name].shape) if not isinstance(d, int)]
            if len(free) != 1:
                raise StreamError(
                    f"state input {name!r} of shape {declared[name].shape} needs exactly one "
                    "symbolic dim (its batch axis) to be pooled"
                )
            self._axes[name] = free[0]
        self._default = probe.state  # batch-1 initial state
        dims = declared[self._input].shape[1:]
        if step_shape is None and all(isinstance(d, int) for d in dims):
            step_shape = tuple(dims)
        self._step_shape = None if step_shape is None else tuple(int(d) for d in step_shape)
        if self._step_shape is not None:  # one probe step: the output's size, for describe()
            first = probe.step(np.zeros((1, *self._step_shape), np.float32))
            first = first[probe.step_outputs[0]] if isinstance(first, dict) else first
            self._output_size = int(np.prod(np.shape(first)[1:]))
            probe.reset()
        self._start(capacity, max_batch, max_wait_us)

    def _start(self, capacity: int | None, max_batch: int, max_wait_us: float) -> None:
        """The sessions' bookkeeping, once ``_default`` and ``_axes`` are known."""
        self._fixed = capacity is not None
        self._capacity = capacity or _FIRST_CAPACITY
        self._slabs = {n: self._slab(n, self._capacity) for n in self._default}
        self._rows: dict[int, int] = {}
        self._free = list(range(self._capacity - 1, -1, -1))
        self._ids = itertools.count(1)
        self._programs: dict[int, CompiledStep | None] = {}
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self.max_batch = int(max_batch)
        self.max_wait_us = float(max_wait_us)
        self._batcher: Any = None

    # ---- description ---------------------------------------------------------------------

    @property
    def model(self) -> Any:
        return self._model

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def takes_tokens(self) -> bool:
        return False

    @property
    def input_size(self) -> int:
        """Values of one session's step input (0 until the step shape is known)."""
        return int(np.prod(self._step_shape)) if self._step_shape is not None else 0

    @property
    def output_size(self) -> int:
        """Values of one session's first step output (0 until the first step)."""
        return getattr(self, "_output_size", 0)

    def sessions(self) -> list[int]:
        with self._lock:
            return list(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, sid: object) -> bool:
        return sid in self._rows

    # ---- sessions ------------------------------------------------------------------------

    def open(self, initial: Mapping[str, Any] | None = None) -> int:
        """Open a session at the graph's initial state (zeros) or ``initial``'s values (as
        ``stream.reset(initial)`` takes them for a batch of one); returns its id."""
        state = self._checked(initial)
        with self._lock:
            if not self._free:
                if self._fixed:
                    raise StreamError(f"the pool is full ({self._capacity} sessions open)")
                self._grow(2 * self._capacity)
            row = self._free.pop()
            self._write(row, state)
            sid = next(self._ids)
            self._rows[sid] = row
            return sid

    def close(self, sid: int) -> None:
        with self._lock:
            self._free.append(self._row(sid))
            del self._rows[sid]
        batcher = self._batcher
        if batcher is not None:
            batcher.poke()

    def fork(self, sid: int) -> int:
        """A new session whose state is a copy of ``sid``'s."""
        with self._lock:
            state = self._read(self._row(sid))
        return self.open(state)

    def reset(self, sid: int, initial: Mapping[str, Any] | None = None) -> None:
        state = self._checked(initial)
        with self._lock:
            self._write(self._row(sid), state)

    def state(self, sid: int) -> dict[str, np.ndarray]:
        """A copy of the session's state, as a batch-1 ``stream.state``."""
        with self._lock:
            return self._read(self._row(sid))

    def set_state(self, sid: int, snap: Mapping[str, Any]) -> None:
        if not isinstance(snap, Mapping) or set(snap) != set(self._default):
            raise InputError(f"a state snapshot holds exactly {sorted(self._default)}")
        state = self._checked(snap)
        with self._lock:
            self._write(self._row(sid), state)

    # ---- stepping ------------------------------------------------------------------------

    def step(self, inputs: Mapping[int, Any]) -> dict[int, Any]:
        """Advance the sessions in ``inputs`` (session id -> step input) as one batch;
        returns session id -> its output (a dict of outputs for several). Nothing changes on
        an error (the message names the session)."""
        if not isinstance(inputs, Mapping):
            raise InputTypeError(
                f"step takes a dict of session id -> input, got {type(inputs).__name__}"
            )
        sids = list(inputs)
        staged = [self._stage(sid, inputs[sid]) for sid in sids]
        return dict(zip(sids, self._step_staged_locked(sids, staged)))

    def _stage(self, sid: int, x_t: Any) -> np.ndarray:
        """One session's step input as float32 of the step shape (no state read)."""
        self._row(sid)
        x = np.asarray(x_t)
        if x.dtype.kind not in "fiub":
            raise InputTypeError(f"step input of session {sid} must be numeric, got {x.dtype}")
        shape = self._step_shape
        if shape is None:
            shape = x.shape[1:] if x.ndim >= 1 and x.shape[:1] == (1,) else x.shape
        if x.ndim == 1 and len(shape) > 1 and x.size == int(np.prod(shape)):
            x = x.reshape(shape)  # a flat frame of the step's values (a binary WebSocket frame)
        if x.shape != shape and x.shape != (1, *shape):
            raise InputError(
                f"step input of session {sid} must have shape {shape} or {(1, *shape)}, "
                f"got {tuple(x.shape)}"
            )
        return x.reshape(shape).astype(np.float32, copy=False)

    def _step_staged_locked(self, sids: list[int], staged: list[np.ndarray]) -> list[Any]:
        if not sids:
            return []
        shapes = {s.shape for s in staged}
        if len(shapes) != 1:
            raise InputError(f"one pool steps chunks of one shape, got {sorted(shapes)}")
        return self._step_batch_locked(sids, np.stack(staged))

    def _step_batch_locked(self, sids: list[int], staged: np.ndarray) -> list[Any]:
        """Step the sessions from their staged inputs stacked ``(n, *step shape)``; returns
        their outputs."""
        if len(set(sids)) != len(sids):
            raise InputError("a session appears twice in one step")
        shape = staged.shape[1:]
        if self._step_shape is not None and shape != self._step_shape:
            raise InputError(
                f"one pool steps chunks of one shape, got {shape} (the pool's is "
                f"{self._step_shape})"
            )
        with self._lock:
            rows = [self._row(sid) for sid in sids]
            n, batch = len(sids), _bucket(len(sids))
            x = np.zeros((batch, *shape), np.float32)
            x[:n] = staged
            states = {}
            for name, slab in self._slabs.items():
                axis = self._axes[name]
                part = np.take(slab, rows, axis=axis)
                if batch > n:
                    pad = [(0, 0)] * part.ndim
                    pad[axis] = (0, batch - n)
                    part = np.pad(part, pad)
                states[name] = part
            outs, new_states = self._run(x, states)
            for name, slab in self._slabs.items():
                axis = self._axes[name]
                index = [slice(None)] * slab.ndim
                index[axis] = rows
                slab[tuple(index)] = np.take(new_states[name], range(n), axis=axis)
            if self._step_shape is None:
                self._step_shape = shape
            # Copies inside the lock: the outputs are views of the step's arena, which the
            # next step (another thread's) overwrites.
            first = outs[self._outputs[0]]
            self._output_size = int(np.prod(first.shape[1:]))
            if len(self._outputs) == 1:
                return [first[i].copy() for i in range(n)]
            return [{k: v[i].copy() for k, v in outs.items()} for i in range(n)]

    def _run(self, x: np.ndarray, states: dict[str, np.ndarray]) -> tuple[dict, dict]:
        """The step's outputs and new states at batch len(x) (compiled when it lowers)."""
        batch = len(x)
        feeds = {self._input: x, **states}
        if batch not in self._programs:
            try:
                program = self._model._program_for(feeds)
                step, _why = compile_step(program, feeds, self.state_map)
            except TraceFailed:
                step = None
            except LstmInferError as exc:
                raise InputError(f"a pool step at batch {batch} does not run: {exc}") from exc
            self._programs[batch] = step
        step = self._programs[batch]
        if step is None:
            result = self._model.run(feeds)
            return ({k: result[k] for k in self._outputs},
                    {i: result[o] for i, o in self.state_map.items()})  # fmt: skip
        for name, value in feeds.items():
            np.copyto(step.inputs[name], value)
        step.run()
        return ({k: step.outputs[k] for k in self._outputs},
                {i: step.inputs[i] for i in self.state_map})  # fmt: skip

    # ---- rows ----------------------------------------------------------------------------

    def _row(self, sid: Any) -> int:
        is_id = isinstance(sid, (int, np.integer)) and not isinstance(sid, bool)
        row = self._rows.get(sid) if is_id else None
        if row is None:
            raise SessionError(f"session {sid!r} is not open in this pool")
        return row

    def _slab(self, name: str, rows: int) -> np.ndarray:
        one = self._default[name]
        shape = list(one.shape)
        shape[self._axes[name]] = rows
        return np.zeros(shape, one.dtype)

    def _grow(self, capacity: int) -> None:
        for name, old in list(self._slabs.items()):
            new = self._slab(name, capacity)
            index = [slice(None)] * new.ndim
            index[self._axes[name]] = slice(0, self._capacity)
            new[tuple(index)] = old
            self._slabs[name] = new
        self._free = list(range(capacity - 1, self._capacity - 1, -1)) + self._free
        self._capacity = capacity

    def _checked(self, initial: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
        """A batch-1 state from ``initial`` (zeros for what it leaves out), checked as a
        stream's reset checks it."""
        if not initial:
            return self._default
        with self._probe_lock:  # one probe stream checks every caller's state
            self._probe.reset(dict(initial))
            state = self._probe.state
        for name, value in state.items():
            if value.shape[self._axes[name]] != 1:
                raise InputError(
                    f"state {name!r} of one session has 1 on axis {self._axes[name]}, "
                    f"got shape {value.shape}"
                )
        return state

    def _read(self, row: int) -> dict[str, np.ndarray]:
        return {n: np.take(s, [row], axis=self._axes[n]).copy() for n, s in self._slabs.items()}

    def _write(self, row: int, state: Mapping[str, np.ndarray]) -> None:
        for name, slab in self._slabs.items():
            index = [slice(None)] * slab.ndim
            index[self._axes[name]] = row
            slab[tuple(index)] = np.take(state[name], 0, axis=self._axes[name])


def _input_batch_axis(model: Any, batch_axis: int | None, rank: int) -> int:
    """The pooled input's batch axis: as given, else 1 for an input declaring time on axis 0,
    else 0."""
    if batch_axis is None:
        declared = model.graph.inputs[0].type.time_axis
        return 1 if declared == 0 and rank > 1 else 0
    if (
        isinstance(batch_axis, bool)
        or not isinstance(batch_axis, int)
        or not 0 <= batch_axis < rank
    ):
        raise ValueError(f"batch_axis must be an axis of the input's {rank}, got {batch_axis!r}")
    return batch_axis


def _batch_axis_of(what: str, one: tuple[int, ...], two: tuple[int, ...]) -> int:
    """The one axis along which a tensor of the batch-1 program grows to batch 2."""
    diff = [i for i, (a, b) in enumerate(zip(one, two)) if a != b]
    if len(one) != len(two) or len(diff) != 1 or (one[diff[0]], two[diff[0]]) != (1, 2):
        raise StreamError(f"{what} has no single batch axis ({one} at batch 1, {two} at 2)")
    return diff[0]


class TimeAxisPool(GraphStreamPool):
    """Many sessions of a graph that streams along its time axis (no state inputs: a causal
    conv front end -> LSTM -> head), stepped as one batch.

    A session's state is what its time-axis stream carries: the recurrent layers' states and
    the causal convolutions' last frames (:mod:`lstm_infer.time_stream`), one slab per
    carried region along its batch axis. A step input is one session's chunk without the
    batch axis, of ``step_shape`` (required: e.g. ``(channels, frames)`` for a (B, C, T)
    input, ``(frames, features)`` for (T, B, F) or (B, T, F)). The input's batch axis is
    ``batch_axis``: by default 1 when the input declares time on axis 0 (a time-major graph,
    as the cells of CELLS.md load), else 0; each output's is found from the batch-1 and
    batch-2 programs, and outputs are per session, batch axis dropped. Snapshots are dicts of
    the carried regions by node and role, for a batch of one.
    """

    def __init__(
        self,
        model: Any,
        capacity: int | None = None,
        *,
        step_shape: tuple[int, ...] | None = None,
        time_axis: int | None = None,
        batch_axis: int | None = None,
        max_batch: int = 64,
        max_wait_us: float = 500.0,
    ) -> None:
        from lstm_infer.time_stream import TimeStream

        _check_settings(capacity, max_batch, max_wait_us)
        if step_shape is None:
            raise StreamError(
                "a pool of a time-axis graph needs one session's chunk shape: step_shape="
                "(channels, frames) for a (B, C, T) input, (frames, features) for (B, T, F)"
            )
        self._model = model
        self._stream = TimeStream(model, time_axis)
        self._input = model.input_names[0]
        self._outputs = list(model.output_names)
        self._step_shape = tuple(int(d) for d in step_shape)
        self._batch_axis = _input_batch_axis(model, batch_axis, len(self._step_shape) + 1)
        one = self._compiled(1)
        two = self._compiled(2)
        if self._stream.time_axis == self._batch_axis:
            raise StreamError(f"the input's batch axis {self._batch_axis} is its time axis")
        self._axes = {
            key: _batch_axis_of(f"carried state {key!r}", view.shape, two.carried[key][0].shape)
            for key, (view, _start) in one.carried.items()
        }
        self._out_axes = {
            name: _batch_axis_of(f"output {name!r}", one.outputs[name].shape,
                                 two.outputs[name].shape)
            for name in self._outputs
        }  # fmt: skip
        self._default = {k: np.array(start) for k, (_v, start) in one.carried.items()}
        self.state_map: dict[str, str] = {}
        first = one.outputs[self._outputs[0]]
        self._output_size = first.size
        self._start(capacity, max_batch, max_wait_us)
        self._programs = {1: one, 2: two}

    def _compiled(self, batch: int) -> CompiledStep:
        shape = list(self._step_shape)
        shape.insert(self._batch_axis, batch)
        x = np.zeros(shape, np.float32)
        try:
            return self._stream._compile(x)
        except InputError as exc:
            raise InputError(f"a chunk of shape {self._step_shape} does not run: {exc}") from exc

    def _run(self, x: np.ndarray, states: dict[str, np.ndarray]) -> tuple[dict, dict]:
        batch = len(x)
        step = self._programs.get(batch)
        if step is None:
            step = self._programs[batch] = self._compiled(batch)
        for key, value in states.items():
            np.copyto(step.carried[key][0], value)
        np.copyto(step.inputs[self._input], np.moveaxis(x, 0, self._batch_axis))
        step.run()
        outs = {k: np.moveaxis(step.outputs[k], self._out_axes[k], 0) for k in self._outputs}
        return outs, {k: v for k, (v, _s) in step.carried.items()}

    def _checked(self, initial: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
        if not initial:
            return self._default
        if not isinstance(initial, Mapping) or not set(initial) <= set(self._default):
            raise InputError(f"a state holds some of {sorted(self._default)}")
        state = dict(self._default)
        for key, value in initial.items():
            arr = np.asarray(value, np.float32)
            if arr.shape != self._default[key].shape:
                raise InputError(
                    f"state {key!r} of one session must have shape {self._default[key].shape}"
                )
            state[key] = arr
        return state
