"""Streams of graphs that take and return their own state (state-carrying sessions).

Exported streaming models carry their recurrent state through the graph: silero-VAD takes
``state`` and returns ``stateN``, an exported LSTM takes ``h0`` / ``c0`` and returns ``hn`` /
``cn``. With onnxruntime the caller feeds the outputs back by hand on every call; a
:class:`GraphStream` pairs the state inputs with the state outputs once and carries them from
one ``step`` to the next, so a step takes only the model's other inputs (one chunk of audio,
one frame) and returns only its other outputs.

Pairs are found by name and shape (``x`` -> ``xN`` / ``xn`` / ``x_out`` / ``next_x``;
``x_in`` -> ``x_out``; ``h0`` / ``c0`` -> ``hn`` / ``cn``; the declared static dims must
agree) or given as ``state_map={"state": "stateN"}``. The initial state is zeros of the state
input's declared shape, its one unnamed or symbolic dim (if any) set to ``batch_size``; or
what ``reset(initial)`` gives.

Each step is one C call: on the first step at a new set of input shapes the graph's program,
specialised to them, is compiled into a step program (``lstm_infer.compile.step_program``: a
flat array of C records over one preallocated arena, the state copies included) and every
later step at those shapes copies its inputs in, runs it with the GIL released and reads the
outputs. A graph holding an op the step compiler does not lower runs op by op instead (the
same results, slower): ``stream.compiled`` says which, ``stream.compile_error`` why.
A graph without state inputs streams along its time axis instead
(:mod:`lstm_infer.time_stream`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lstm_infer.compile.step_program import CompiledStep, TraceFailed, compile_step
from lstm_infer.errors import InputError, LstmInferError, StreamError
from lstm_infer.time_stream import fast_hit, step_results

# Step programs kept per stream, one per set of step input shapes (oldest dropped first).
MAX_COMPILED_SHAPES = 4


def _candidates(name: str) -> list[str]:
    out = [f"{name}N", f"{name}n", f"{name}_out", f"next_{name}", f"{name}_next", f"new_{name}"]
    for suffix in ("_in", "_input"):
        if name.endswith(suffix):
            out.append(name[: -len(suffix)] + "_out")
    if name.endswith("0"):
        out.append(name[:-1] + "n")
        out.append(name[:-1] + "N")
    if name.startswith("initial_"):  # ONNX's own names: initial_h -> Y_h
        out.append("Y_" + name[len("initial_") :])
    return out


def _shapes_agree(a: tuple | None, b: tuple | None) -> bool:
    if a is None or b is None:
        return True
    if len(a) != len(b):
        return False
    return all(not (isinstance(x, int) and isinstance(y, int)) or x == y for x, y in zip(a, b))


def find_state_pairs(model: Any) -> dict[str, str]:
    """State input -> state output pairs found by name and shape ({} when none)."""
    inputs = {t.name: t for t in model.inputs}
    outputs = {t.name: t for t in model.outputs}
    pairs: dict[str, str] = {}
    for name, t in inputs.items():
        for cand in _candidates(name):
            out = outputs.get(cand)
            if out is not None and cand not in pairs.values() and _shapes_agree(t.shape, out.shape):
                pairs[name] = cand
                break
    return pairs


def pair_states(model: Any, state_map: Mapping[str, str] | None) -> dict[str, str]:
    """State input name -> state output name, given or found by convention."""
    inputs = {t.name: t for t in model.inputs}
    outputs = {t.name: t for t in model.outputs}
    if state_map is not None:
        if not isinstance(state_map, Mapping) or not state_map:
            raise StreamError("state_map must be a non-empty dict of state input -> output")
        for i, o in state_map.items():
            if i not in inputs:
                raise StreamError(f"state_map: {i!r} is not an input ({sorted(inputs)})")
            if o not in outputs:
                raise StreamError(f"state_map: {o!r} is not an output ({sorted(outputs)})")
        if len(set(state_map.values())) != len(state_map):
            raise StreamError("state_map: two state inputs map to one output")
        return dict(state_map)
    pairs = find_state_pairs(model)
    if not pairs:
        raise StreamError(
            "this graph takes no state input that pairs with an output by name (state -> "
            "stateN, h0 -> hn, ...): pass state_map={'input': 'output'}"
        )
    if len(pairs) == len(inputs):
        raise StreamError("every input of this graph pairs with an output: nothing to step with")
    return pairs


class GraphStream:
    """A session over a graph model that carries its state outputs into the next step.

    Build one with ``GraphModel.stream(batch_size=1, state_map=None)``. Not thread-safe (a
    stream is one session; use one per thread).
    """

    def __init__(
        self,
        model: Any,
        batch_size: int = 1,
        state_map: Mapping | None = None,
        compile: bool = True,
    ):
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool):
            raise TypeError(f"batch_size must be an int, got {batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._model = model
        self.batch_size = int(batch_size)
        self.state_map = pair_states(model, state_map)
        declared = {t.name: t for t in model.inputs}
        self._state_types = {i: declared[i] for i in self.state_map}
        self.step_inputs = [n for n in declared if n not in self.state_map]
        state_outputs = set(self.state_map.values())
        self.step_outputs = [t.name for t in model.outputs if t.name not in state_outputs]
        self._state: dict[str, np.ndarray] = {}
        self._compile = bool(compile)
        # Compiled steps by the shapes of the step inputs (None: that shape runs op by op).
        self._steps: dict[tuple, CompiledStep | None] = {}
        self._errors: dict[tuple, str] = {}
        # The compiled step whose arena holds the current state (None: self._state does).
        self._owner: CompiledStep | None = None
        self._last: CompiledStep | None = None
        self._last_key: tuple | None = None
        # (shape, compiled step, its input view, the one output's name or None) of the last
        # array step: the next step of that shape skips the checks
        self._fast: tuple | None = None
        self._views: dict[int, tuple] = {}
        # scalar control inputs among the step inputs (silero's sr): a program per value
        self._controls = bool(set(getattr(model, "control_inputs", ())) & set(self.step_inputs))
        self.reset()

    @property
    def compiled(self) -> bool:
        """True when the last step ran as one C step program (False: op by op, or no step
        yet)."""
        return self._last is not None

    @property
    def compile_error(self) -> str | None:
        """Why the last step's shapes could not be compiled (None when they were)."""
        return self._errors.get(self._last_key) if self._last is None else None

    def _release(self) -> None:
        """Move the current state out of a compiled step's arena into self._state."""
        if self._owner is not None:
            self._state = {k: self._owner.inputs[k].copy() for k in self.state_map}
            self._owner = None

    def _zeros(self, name: str) -> np.ndarray:
        t = self._state_types[name]
        shape = list(t.shape)
        free = [i for i, d in enumerate(shape) if not isinstance(d, int)]
        if len(free) > 1:
            raise StreamError(
                f"state input {name!r} has shape {t.shape} with {len(free)} free dims: give "
                "its initial value with reset({...})"
            )
        for i in free:
            shape[i] = self.batch_size
        return np.zeros(shape, dtype=t.dtype)

    def reset(self, initial: Mapping[str, Any] | None = None) -> None:
        """Start over: every state zeros (see the module doc), or ``initial``'s values for the
        state inputs it names (the others zeros)."""
        initial = dict(initial or {})
        unknown = sorted(set(initial) - set(self.state_map))
        if unknown:
            raise InputError(f"reset: {unknown} are not state inputs ({sorted(self.state_map)})")
        state = {}
        for name in self.state_map:
            if name in initial:
                state[name] = self._checked_state(name, initial[name])
            else:
                state[name] = self._zeros(name)
        self._owner = None
        self._state = state

    def _checked_state(self, name: str, value: Any) -> np.ndarray:
        t = self._state_types[name]
        arr = np.array(value, dtype=t.dtype)
        if not _shapes_agree(tuple(t.shape), arr.shape) or arr.ndim != len(t.shape):
            raise InputError(f"state {name!r} must have shape {t.shape}, got {arr.shape}")
        return arr

    @property
    def state(self) -> dict[str, np.ndarray]:
        """A copy of the current state (state input name -> array); assign to restore."""
        if self._owner is not None:
            return {k: self._owner.inputs[k].copy() for k in self.state_map}
        return {k: v.copy() for k, v in self._state.items()}

    @state.setter
    def state(self, snapshot: Mapping[str, Any]) -> None:
        if not isinstance(snapshot, Mapping) or set(snapshot) != set(self.state_map):
            raise InputError(f"a state snapshot holds exactly {sorted(self.state_map)}")
        state = {k: self._checked_state(k, v) for k, v in snapshot.items()}
        self._owner = None
        self._state = state

    def step(self, x: Any, out: Any = None) -> Any:
        """One call: ``x`` is the model's one non-state input (an array) or a dict of its
        non-state inputs. Returns the non-state output (an array) or a dict of them; with
        ``out`` (an array, or a dict of arrays) they are written there instead (compiled
        steps then allocate nothing). On an error nothing changes (the state stays what it
        was)."""
        fast = self._fast
        if fast_hit(fast, self._owner, x):  # the last step's shape again: nothing to check
            step = fast[1]
            np.copyto(fast[2], x)
            step.run()
            return step_results(self._step_outputs_of(step), fast[3], out)
        if isinstance(x, Mapping):
            feeds = dict(x)
            clash = sorted(set(feeds) & set(self.state_map))
            if clash:
                raise InputError(f"{clash} are carried by the stream; do not feed them")
            unknown = sorted(set(feeds) - set(self.step_inputs))
            if unknown:
                raise InputError(f"unknown input(s) {unknown}; a step takes {self.step_inputs}")
            missing = [n for n in self.step_inputs if feeds.get(n) is None]
            if missing:
                raise InputError(f"missing step input(s) {missing}")
        elif len(self.step_inputs) == 1:
            feeds = {self.step_inputs[0]: x}
        else:
            raise InputError(
                f"this model takes {self.step_inputs} at each step: pass a dict of them"
            )
        declared = {t.name: t for t in self._model.graph.inputs}
        arrays = {n: self._model._feed(n, v, declared[n].type) for n, v in feeds.items()}
        key: tuple = tuple(arrays[n].shape for n in self.step_inputs)
        spec = None
        if self._compile and self._controls:
            spec = self._model._value_spec(arrays)
            key = (key, None if spec is None else spec.key)
        self._last_key = key
        step = self._step_for(key, arrays, spec) if self._compile else None
        self._last = step
        if step is None:
            return self._step_by_ops(arrays, out)
        if self._owner is not step:
            current = self.state
            for k in self.state_map:
                np.copyto(step.inputs[k], current[k])
            self._owner = step
        for name, value in arrays.items():
            if spec is None or name not in spec.values:  # (a specialised value: a constant)
                np.copyto(step.inputs[name], value)
        single = self.step_outputs[0] if len(self.step_outputs) == 1 else None
        if len(self.step_inputs) == 1 and not isinstance(x, Mapping):
            name = self.step_inputs[0]
            self._fast = (arrays[name].shape, step, step.inputs[name], single)
        step.run()
        return step_results(self._step_outputs_of(step), single, out)

    def _step_outputs_of(self, step: CompiledStep) -> dict[str, np.ndarray]:
        views = self._views.get(id(step))
        if views is None or views[0] is not step:
            views = (step, {n: step.outputs[n] for n in self.step_outputs})
            self._views[id(step)] = views
        return views[1]

    def _step_for(
        self, key: tuple, arrays: dict[str, np.ndarray], spec: Any = None
    ) -> CompiledStep | None:
        if key in self._steps:
            return self._steps[key]
        state = self.state
        if any(v.dtype != np.float32 for v in state.values()):
            step, why = None, "a state that is not float32"
        else:
            feeds = {**(arrays if spec is None else spec.rest(arrays)), **state}
            try:
                program = self._model._program_for(feeds, spec)
                step, why = compile_step(program, feeds, self.state_map)
            except TraceFailed:
                return None  # bad inputs: the op-by-op run says what is wrong
            except InputError:
                return None  # the same: these inputs do not run
            except LstmInferError as exc:  # cannot specialise: this shape runs op by op
                step, why = None, str(exc)
        if len(self._steps) >= MAX_COMPILED_SHAPES:
            self._steps.pop(next(iter(self._steps)))
        self._steps[key] = step
        if why is not None:
            self._errors[key] = why
        return step

    def _step_by_ops(self, arrays: dict[str, np.ndarray], out: Any = None) -> Any:
        self._release()
        result = self._model.run({**arrays, **self._state})
        self._state = {i: np.asarray(result[o]) for i, o in self.state_map.items()}
        single = self.step_outputs[0] if len(self.step_outputs) == 1 else None
        if out is not None:
            return step_results({n: result[n] for n in self.step_outputs}, single, out)
        return result[single] if single is not None else {n: result[n] for n in self.step_outputs}

    def feed(self, xs: Any) -> list[Any]:
        """``step`` over each entry of ``xs`` in order (chunks along its first axis, or a list
        of dicts); the list of what each step returned."""
        return [self.step(x) for x in xs]
