"""Stream: a recurrent-stack Model run one timestep (or chunk) at a time, keeping its state.

The streaming path of :class:`lstm_infer.model.Model` (``model.stream(batch_size)``): the
compiled stack step of the C engine over state arrays the stream owns. Graph models stream
through :mod:`lstm_infer.graph_stream` and :mod:`lstm_infer.time_stream`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lstm_infer import _engine
from lstm_infer._spec import parse_state_role
from lstm_infer.dense_head import apply_head
from lstm_infer.errors import InputError, InputTypeError, StreamError
from lstm_infer.runtime.threads import blas_threads

if TYPE_CHECKING:  # the Model a stream runs (model.py imports this module)
    from lstm_infer.model import Model

__all__ = ["Stream", "as_float_input", "check_rank"]


def as_float_input(name: str, value: Any) -> np.ndarray:
    """float32 C-contiguous copy/view of a feed; clear errors for non-numeric data."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise InputTypeError(f"input {name!r} must be numeric, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_rank(name: str, arr: np.ndarray, rank: int, what: str) -> None:
    if arr.ndim != rank:
        raise InputError(
            f"input {name!r} must have rank {rank} {what}, got shape {tuple(arr.shape)}"
        )


class Stream:
    """Runs a unidirectional model one timestep (or chunk) at a time, keeping the state.

    ``step(x_t)`` takes one timestep ``(batch, input_size)`` (or token ids ``(batch,)`` for a
    model with an embedding) and returns that step's output ``(batch, features)``: for an ONNX
    operator model the ``Y`` slice of that timestep, after any dense head otherwise.
    ``feed(x_chunk)`` takes several timesteps in the model's layout and returns their outputs.
    A failed call leaves the state unchanged. A stream must not be used by two threads at once:
    that raises :class:`~lstm_infer.errors.StreamError`.
    """

    def __init__(self, model: Model, batch_size: int = 1) -> None:
        if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if model.spec.signature.weight_inputs:
            raise StreamError(
                "this model takes its weights as run-time inputs; freeze them into "
                "initializers to stream it"
            )
        bidir = [i for i, layer in enumerate(model.layers) if layer.num_directions != 1]
        if bidir:
            raise StreamError(
                f"layer {bidir[0]} is bidirectional: its backward direction needs the whole "
                "sequence, so it cannot be streamed; use model.run on whole sequences"
            )
        self._model = model
        self._batch = int(batch_size)
        self._plans = [plans[0] for plans in model._plans]
        self._core = _engine.StackStepper(self._plans, self._batch)
        self._out = np.empty((self._batch, self._core.output_size), np.float32)
        self._head = model._head
        # The compiled step can take the caller's array as is unless the model embeds tokens
        # itself (a vocabulary too large for a token table): then ids go through _step_input.
        self._fast = model.spec.embedding is None or model._takes_tokens
        self._lock = threading.Lock()
        self.reset()

    @property
    def batch_size(self) -> int:
        return self._batch

    def reset(self, initial: Mapping[str, Any] | None = None) -> None:
        """Return to the model's initial state, or to the one ``initial`` gives.

        Parameters
        ----------
        initial : mapping of name -> array, optional
            Values for the model's state inputs, by the model's own names and shapes (those
            ``run`` takes, e.g. ``{"h0": (layers, batch, hidden)}``); states not given start
            from the model's default (zeros, or its baked-in initial state). Nothing changes
            when a value is rejected.
        """
        feeds = dict(initial or {})
        sig = self._model.spec.signature
        allowed = {
            name
            for role, name in sig.inputs.items()
            if parse_state_role(role)[0] in ("initial_h", "initial_c")
        }
        unknown = sorted(set(feeds) - allowed)
        if unknown:
            raise InputError(
                f"unknown state input(s) {unknown}; this model's state inputs are {sorted(allowed)}"
            )
        staged = []
        for role, bufs in (("initial_h", self._core.h), ("initial_c", self._core.c)):
            # Per layer (1, batch, size): the given value, the model's constant, or zeros.
            initial_states = self._model._initial_states(feeds, role, self._batch)
            for buf, init in zip(bufs, initial_states):
                if buf is not None:
                    staged.append((buf, init[0]))
        self._commit(staged)

    def _commit(self, staged: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Write validated state values, unless another thread is inside step/feed."""
        if not self._lock.acquire(blocking=False):
            raise StreamError("this stream is being stepped by another thread")
        try:
            for buf, value in staged:
                buf[...] = value
        finally:
            self._lock.release()

    def state_outputs(self) -> dict[str, np.ndarray]:
        """The current state as the model's state outputs, by the model's own names.

        After stepping through a sequence this equals what ``run`` returns for those outputs
        (e.g. ``{"hn": ..., "cn": ...}``, or ``Y_h``/``Y_c`` for an ONNX-operator model).
        """
        sig = self._model.spec.signature
        h = [buf[None].copy() for buf in self._core.h]
        c = [None if buf is None else buf[None].copy() for buf in self._core.c]
        return {
            name: self._model._format_state(h, c, role)
            for role, name in sig.outputs.items()
            if role != "y"
        }

    @property
    def state(self) -> dict[str, list[np.ndarray]]:
        """Copies of the recurrent state: {"h": [per layer (batch, Hr)], "c": [...]}.

        ``c`` lists only the LSTM layers' cell states (None for other layers). Assign a dict
        of the same structure to restore; shapes are checked and nothing changes on error.
        """
        return {
            "h": [h.copy() for h in self._core.h],
            "c": [None if c is None else c.copy() for c in self._core.c],
        }

    @state.setter
    def state(self, value: Mapping[str, Sequence[np.ndarray | None]]) -> None:
        if not isinstance(value, Mapping) or "h" not in value:
            raise InputError("state must be a dict with keys 'h' (and 'c' for LSTM layers)")
        staged = []
        for key, bufs in (("h", self._core.h), ("c", self._core.c)):
            given = value.get(key)
            if given is None:
                if any(b is not None for b in bufs):
                    raise InputError(f"state[{key!r}] is required for this model")
                continue
            if len(given) != len(bufs):
                raise InputError(f"state[{key!r}] must list {len(bufs)} layer(s), got {len(given)}")
            for i, (buf, g) in enumerate(zip(bufs, given)):
                if buf is None:
                    continue
                arr = as_float_input(f"state[{key!r}][{i}]", g)
                if arr.shape != buf.shape:
                    raise InputError(
                        f"state[{key!r}][{i}] must have shape {buf.shape}, got {arr.shape}"
                    )
                staged.append((buf, arr))
        self._commit(staged)

    def _step_input(self, x_t: Any) -> np.ndarray:
        emb = self._model.spec.embedding
        if emb is not None:
            tokens = np.asarray(x_t)
            if tokens.dtype.kind not in "iu":
                raise InputTypeError(f"token ids must be integers, got dtype {tokens.dtype}")
            tokens = tokens.reshape(-1) if tokens.ndim <= 1 else tokens
            if tokens.shape != (self._batch,):
                raise InputError(
                    f"step input must be {self._batch} token id(s), got shape {tokens.shape}"
                )
            if tokens.min() < 0 or tokens.max() >= emb.shape[0]:
                raise InputError(f"token ids must be in [0, {emb.shape[0]}), got {tokens}")
            if self._model._takes_tokens:
                return np.ascontiguousarray(tokens, dtype=np.int64)
            return np.ascontiguousarray(emb[tokens])
        x = np.asarray(x_t)
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            x = as_float_input("x_t", x)
        size = self._core.input_size
        if x.ndim == 1 and self._batch == 1:
            x = x.reshape(1, -1)
        if x.shape != (self._batch, size):
            raise InputError(
                f"step input must have shape ({self._batch}, {size}), got {tuple(x.shape)}"
            )
        return x

    def step(self, x_t: Any, out: np.ndarray | None = None) -> np.ndarray:
        """Advance one timestep and return its output ``(batch, features)``.

        ``out`` (float32, C-contiguous, the output's shape) is filled and returned instead of
        a new array, for models without a dense head.
        """
        head = self._head
        if not self._lock.acquire(blocking=False):
            raise StreamError("this stream is being stepped by another thread")
        try:
            target = out if out is not None and not head else None
            if target is None:
                target = self._out if head else np.empty_like(self._out)
            try:
                # Fast path: an input already in the kernel's form (C-contiguous, aligned,
                # native-order float32 (batch, input_size), or int64 token ids) goes straight
                # in; the compiled step checks it before touching any state.
                if not self._fast:
                    raise TypeError
                self._core.step(x_t, target)
            except (TypeError, ValueError):
                # Anything else is converted, or refused with a message naming the problem.
                self._core.step(self._step_input(x_t), target)
            return apply_head(target, head) if head else target
        finally:
            self._lock.release()

    def feed(self, x_chunk: Any) -> np.ndarray:
        """Advance over several timesteps; returns their outputs.

        ``x_chunk`` is ``(T, batch, input_size)`` for a time-major model and
        ``(batch, T, input_size)`` for a batch-first one (token ids without the last axis);
        the result has the same leading layout with the output features last.
        """
        sig = self._model.spec.signature
        name = sig.inputs["x"]
        x = self._model._sequence_input({name: x_chunk})
        if x.shape[1] != self._batch:
            raise InputError(
                f"input {name!r} has batch {x.shape[1]}, this stream's batch is {self._batch}"
            )
        if not self._lock.acquire(blocking=False):
            raise StreamError("this stream is being used by another thread")
        try:
            T = x.shape[0]
            # Work on copies so a failure leaves the stream's state untouched.
            h = [hb.copy() for hb in self._core.h]
            c = [None if cb is None else cb.copy() for cb in self._core.c]
            with blas_threads(1):  # a stream runs on its caller's thread only
                for plan, hl, cl in zip(self._plans, h, c):
                    y = np.empty((T, self._batch, plan.state_size), np.float32)
                    _engine.run_direction(plan, x, None, False, hl, cl, y)
                    x = y
            for dst, src in zip(self._core.h, h):
                dst[...] = src
            for dst, src in zip(self._core.c, c):
                if dst is not None:
                    dst[...] = src
        finally:
            self._lock.release()
        y = apply_head(x, self._head) if self._head else x
        return np.ascontiguousarray(y if sig.layout == 0 else y.transpose(1, 0, 2))
