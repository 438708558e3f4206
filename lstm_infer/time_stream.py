"""Streams of graphs along their input's time axis (a graph with no state inputs of its own).

A conv front end -> LSTM -> LayerNorm -> Linear graph streams frame by frame (or a chunk of
frames at a time) with the same results as one run over the whole sequence: the graph's
program at the chunk's shape is compiled into one C step program
(:mod:`lstm_infer.compile.step_program`) in which every recurrent layer keeps its state and
every causal convolution its last input frames from one chunk to the next. The graph must be
streamable along time (:mod:`lstm_infer.compile.time_axis`): a node that needs future frames
(a bidirectional layer, symmetric padding, pooling over time) makes ``model.stream()`` raise
StreamError naming it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer.compile.step_program import CompiledStep, compile_step, trace
from lstm_infer.compile.time_axis import check_streamable, chunk_dependent, time_axes
from lstm_infer.errors import InputError, LstmInferError, StreamError

# Compiled steps kept per stream, one per chunk shape (oldest dropped first).
MAX_COMPILED_SHAPES = 4


class TimeStream:
    """A session over a graph model stepping along its input's time axis.

    Build one with ``GraphModel.stream()`` on a graph without state inputs. ``step(chunk)``
    takes the model's input with any number of frames on its time axis and returns the
    outputs for those frames; ``feed`` runs a whole sequence chunk by chunk; ``reset``,
    ``state`` (a snapshot) and assigning ``state`` cover every carried state. Not
    thread-safe (one stream is one session).

    Parameters
    ----------
    model : GraphModel
    time_axis : int, optional
        The input's time axis; by default the first of its symbolic dims along which the
        graph streams.
    """

    def __init__(self, model: Any, time_axis: int | None = None) -> None:
        if len(model.inputs) != 1:
            raise StreamError(
                f"a time-axis stream takes one input; this graph takes {model.input_names} "
                "(a graph that takes and returns its state streams with state_map=...)"
            )
        self._model = model
        self._input = model.inputs[0]
        rank = len(self._input.shape)
        if time_axis is not None:
            if not isinstance(time_axis, int) or not -rank <= time_axis < rank:
                raise ValueError(
                    f"time_axis must be an axis of the input's {rank}, got {time_axis!r}"
                )
            time_axis %= rank
        self._axis = time_axis
        self._steps: dict[tuple, CompiledStep] = {}
        self._owner: CompiledStep | None = None
        self._state: dict[str, np.ndarray] | None = None  # carried values when no owner
        self._output_axes: dict[str, int | None] = {}
        # (shape, compiled step, its input view) of the last step: the next step of that
        # shape skips the checks a new shape needs.
        self._fast: tuple | None = None
        # the last step's one-call path (CompiledStep.io), set with _fast and only while its
        # step holds the state
        self._io: Any = None
        outputs = model.output_names
        self._single = outputs[0] if len(outputs) == 1 else None

    @property
    def time_axis(self) -> int | None:
        """The input's time axis (None until the first step when it is inferred)."""
        return self._axis

    @property
    def compiled(self) -> bool:
        """Always True once stepped: a time-axis stream runs only as a step program."""
        return self._owner is not None

    def _candidates(self) -> list[int]:
        if self._axis is not None:
            return [self._axis]
        return [i for i, d in enumerate(self._input.shape) if not isinstance(d, int)]

    def _analysed(self, x: np.ndarray, axis: int) -> tuple[Any, dict]:
        """The program at x's shape and every tensor's time axis, x's time on ``axis``;
        StreamError when the graph cannot stream along it."""
        name = self._input.name
        longer = np.concatenate([x, np.zeros_like(x.take([0], axis=axis))], axis=axis)
        try:
            short_p = self._model._program_for({name: x})
            long_p = self._model._program_for({name: longer})
            short = trace(short_p, {name: x})
            axes = time_axes(short, trace(long_p, {name: longer}))
        except StreamError:
            raise
        except LstmInferError as exc:
            raise InputError(f"a chunk of shape {x.shape} does not run: {exc}") from exc
        axes[name] = axis
        check_streamable(short_p, axes, short, chunk_dependent(short_p, long_p))
        return short_p, axes

    def _infer_axis(self, x: np.ndarray) -> int:
        """The first candidate axis the graph streams along, tried on ``x`` itself (the time
        axis, set)."""
        why = "its input has no symbolic dim to stream along"
        bad_input: InputError | None = None
        for axis in self._candidates():
            if x.shape[axis] < 1:
                continue
            try:
                self._analysed(x, axis)
            except StreamError as exc:
                why, bad_input = str(exc), None
                continue
            except InputError as exc:  # this axis as time does not run at all
                bad_input = bad_input or exc
                continue
            self._axis = axis
            return axis
        if bad_input is not None:
            raise bad_input
        raise StreamError(f"this graph cannot stream along time: {why}")

    def _compile(self, x: np.ndarray) -> CompiledStep:
        axis = self._axis if self._axis is not None else self._infer_axis(x)
        program, axes = self._analysed(x, axis)
        step, failed = compile_step(program, {self._input.name: x}, {}, True, axes)
        if step is None:
            raise StreamError(f"this graph streams along axis {axis}, but {failed}")
        self._output_axes = {n: axes.get(n) for n in self._model.output_names}
        return step

    def _step_for(self, x: np.ndarray) -> CompiledStep:
        step = self._steps.get(x.shape)
        if step is None:
            step = self._compile(x)
            if len(self._steps) >= MAX_COMPILED_SHAPES:
                dropped = self._steps.pop(next(iter(self._steps)))
                if dropped is self._owner:
                    self._release()
            self._steps[x.shape] = step
        if self._owner is not step:
            current = self.state
            self._owner = step
            for key, (view, _start) in step.carried.items():
                if key in current:
                    view[...] = current[key]
                else:
                    view[...] = _start
        return step

    def _release(self) -> None:
        if self._owner is not None:
            self._state = {k: v.copy() for k, (v, _) in self._owner.carried.items()}
            self._owner = None

    def step(self, x: Any, out: Any = None) -> Any:
        """One chunk (the input with one or more frames on its time axis) in; the outputs of
        those frames out (an array, or a dict for several outputs). The state carries on.
        ``out``: an array (a dict of arrays for several outputs) of the outputs' shapes to
        write into instead of new arrays (then a step allocates nothing)."""
        io = self._io
        if io is not None:
            # the last step's shape again, x and out plain float32 arrays of the input's and
            # output's shapes: copy in, run, copy out in one C call (None: not such arrays)
            y = io.step(x, out)
            if y is not None:
                return y
        fast = self._fast
        if (  # the last step's shape again: no checks to redo (inlined: ~1 us of a step)
            fast is not None
            and type(x) is np.ndarray
            and x.shape == fast[0]
            and x.dtype == np.float32
            and self._owner is fast[1]
        ):
            step = fast[1]
        else:  # checked and converted; a new shape compiles (or switches) its step
            t = self._model.graph.inputs[0].type
            x = self._model._feed(self._input.name, x, t)
            if x.dtype != np.float32:
                raise InputError(f"a time-axis stream takes float32 input, got {x.dtype}")
            self._io = None  # until the step that holds the state is known again
            step = self._step_for(x)
            name, single = self._input.name, self._single
            fast = self._fast = (x.shape, step, step.inputs[name], step.runner)
            self._io = None if single is None else step.io(name, single)
        fast[2][...] = x  # (a third of np.copyto's cost on these small arrays)
        fast[3]()
        if self._single is not None and type(out) is np.ndarray:
            y = step.outputs[self._single]
            if out.shape == y.shape:
                out[...] = y
                return out
        return step_results(step.outputs, self._single, out)

    def feed(self, xs: Any, chunk: int = 1) -> Any:
        """Step through ``xs`` (a whole sequence) ``chunk`` frames at a time (the last chunk
        may be shorter); the outputs joined along their time axes (outputs without one, such
        as a final state: the last chunk's)."""
        if not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a positive int, got {chunk!r}")
        t = self._model.graph.inputs[0].type
        xs = self._model._feed(self._input.name, xs, t)
        axis = self._axis if self._axis is not None else self._infer_axis(xs)
        results = [self.step(xs.take(range(i, min(i + chunk, xs.shape[axis])), axis=axis))
                   for i in range(0, xs.shape[axis], chunk)]  # fmt: skip
        if not results:
            raise InputError("feed: the sequence has no frames")
        if not isinstance(results[0], dict):
            return self._joined(self._model.output_names[0], results)
        return {n: self._joined(n, [r[n] for r in results]) for n in results[0]}

    def _joined(self, name: str, parts: list[np.ndarray]) -> np.ndarray:
        axis = self._output_axes.get(name)
        return parts[-1] if axis is None or axis < 0 else np.concatenate(parts, axis=axis)

    def reset(self) -> None:
        """Every carried state (recurrent states, convolution histories) back to zeros or the
        graph's own initial values."""
        self._state = None
        if self._owner is not None:
            self._owner.reset_carried()

    @property
    def state(self) -> dict[str, np.ndarray]:
        """A copy of every carried state by node and role; assign to restore."""
        if self._owner is not None:
            return {k: v.copy() for k, (v, _) in self._owner.carried.items()}
        return {k: v.copy() for k, v in (self._state or {}).items()}

    @state.setter
    def state(self, snapshot: dict[str, Any]) -> None:
        if self._owner is None:
            raise StreamError("a time-axis stream has no state before its first step")
        carried = self._owner.carried
        if not isinstance(snapshot, dict) or set(snapshot) != set(carried):
            raise InputError(f"a state snapshot holds exactly {sorted(carried)}")
        arrays = {}
        for key, value in snapshot.items():
            arr = np.asarray(value, np.float32)
            if arr.shape != carried[key][0].shape:
                raise InputError(f"state {key!r} must have shape {carried[key][0].shape}")
            arrays[key] = arr
        for key, arr in arrays.items():
            carried[key][0][...] = arr


def fast_hit(fast: tuple | None, owner: Any, x: Any) -> bool:
    """Whether ``x`` steps the stream's last compiled step again as it is: a float32 array
    of the last step's shape, and that step still holds the state (``fast`` is (shape,
    step, ...) or None)."""
    return (
        fast is not None
        and type(x) is np.ndarray
        and x.shape == fast[0]
        and x.dtype == np.float32
        and owner is fast[1]
    )


def step_results(outputs: dict[str, np.ndarray], single: str | None, out: Any) -> Any:
    """The step's outputs as fresh arrays, or written into ``out`` (returned)."""
    if out is None:
        return (
            outputs[single].copy()
            if single is not None
            else {n: v.copy() for n, v in outputs.items()}
        )
    if single is not None:
        if not isinstance(out, np.ndarray) or out.shape != outputs[single].shape:
            raise InputError(f"out must be an array of shape {outputs[single].shape}")
        out[...] = outputs[single]
        return out
    if not isinstance(out, dict) or set(out) != set(outputs):
        raise InputError(f"out must be a dict of arrays for {sorted(outputs)}")
    for n, v in outputs.items():
        if np.shape(out[n]) != v.shape:
            raise InputError(f"out[{n!r}] must have shape {v.shape}")
    for n, v in outputs.items():
        np.copyto(out[n], v)
    return out
