"""A graph's step compiled into one C call (src_c/step_program.h).

A stream calls its graph once per chunk with the same shapes every time. :class:`CompiledStep`
takes the graph's program specialised to those shapes, runs it once op by op (the trace: the
shape and dtype of every tensor, and reference values), lowers every node to C records
(:mod:`lstm_infer.compile.step_lower`) over one preallocated arena, and appends the copies
that carry state outputs into the state inputs for the next call. A step is then: copy the
inputs into the arena, one C call with the GIL released (no Python per op, no allocation),
read the outputs.

Before it is used, the compiled step is run on the traced inputs and must reproduce the
traced outputs (a mismatch is a lowering bug: the stream then runs op by op and says why).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lstm_infer import _engine
from lstm_infer.compile.program import GraphProgram
from lstm_infer.compile.step_buffers import KIND, Buf, NotCompiled, StepBuilder, StepContext
from lstm_infer.compile.step_lower import LOWERINGS
from lstm_infer.errors import LstmInferError
from lstm_infer.ops import RunContext
from lstm_infer.ops.sequence import OPS as SEQUENCE_OPS
from lstm_infer.ops.sequence import is_sequence
from lstm_infer.runtime.threads import blas_threads

# A compiled step's arena bound unless the caller gives one (streams step small chunks).
DEFAULT_MAX_ARENA_BYTES = 256 << 20
# Intermediates a trace keeps by value (larger ones by shape only).
TRACE_KEEP_ELEMENTS = 1 << 16
# The product size from which OpenBLAS threads a GEMM (its SMP threshold, M*N*K).
BLAS_THREADED = 1 << 18
# How far the compiled step may stray from the op-by-op trace in the self-check (the C
# records use libm and their own summation order; float32 rounding differences only).
SELF_CHECK_RTOL = 1e-3
SELF_CHECK_ATOL = 1e-4


def _may_thread_blas(record: dict[str, Any]) -> bool:
    """Whether a record may call a GEMM OpenBLAS would thread: a large GEMM record, or a
    recurrent layer or cell over enough rows for an sgemm input projection (few rows take
    the packed matvec)."""
    if record["kind"] == KIND["gemm"]:
        return record["n"][0] * record["n"][1] * record["n"][2] >= BLAS_THREADED
    if record["kind"] == KIND["recurrent"]:
        spec = record["recurrent"]
        rows = spec["T"] * spec["B"]
        plan = spec["cells"][0]
        return rows >= 16 and rows * 4 * plan.hidden_size * plan.input_size >= BLAS_THREADED
    if record["kind"] == KIND["cell"]:  # the cells' sgemm starts beyond 48 rows (li_cells.h)
        spec = record["cell"]
        return spec["T"] * spec["B"] > 48
    return False


def _stand_in(value: np.ndarray) -> np.ndarray:
    """A zero-strided array of ``value``'s shape and dtype: its shape, none of its memory."""
    return np.lib.stride_tricks.as_strided(
        np.zeros(1, value.dtype), value.shape, (0,) * value.ndim, writeable=False
    )


def trace(program: GraphProgram, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor of one op-by-op run of ``program``: the graph's outputs, constants and
    feeds, and intermediates of at most TRACE_KEEP_ELEMENTS, by value; larger intermediates
    only by shape and dtype (zero-strided stand-ins once their last reader ran), so a trace
    holds no more than the run itself would. Raises TraceFailed when the run fails."""
    env: dict[str, np.ndarray] = dict(program.constants)
    env.update(feeds)
    keep = set(program.graph.output_names) | set(program.constants) | set(feeds)
    ctx = RunContext()
    with blas_threads(1):
        for step in program.steps:
            node = step.node
            try:
                ins = [env[n] if n else None for n in node.inputs]
                outs = step.op.run(ctx, node, ins, step.state)
            except LstmInferError as exc:
                raise TraceFailed(f"the trace run failed: {exc}") from exc
            except (ValueError, TypeError, IndexError, MemoryError) as exc:
                raise TraceFailed(f"the trace run failed at {node.label}: {exc}") from exc
            for name, value in zip(node.outputs, outs):
                if name:  # (a sequence stays one: the lowering refuses its node)
                    env[name] = value if is_sequence(value) else np.asarray(value)
            for name in step.free_after:
                value = env.get(name)
                if (
                    name not in keep
                    and isinstance(value, np.ndarray)
                    and value.size > TRACE_KEEP_ELEMENTS
                ):
                    env[name] = _stand_in(value)
    return env


class TraceFailed(NotCompiled):
    """The op-by-op trace itself failed (bad inputs): nothing to say about compiling."""


class CompiledStep:
    """One step of ``program`` at the shapes of ``feeds``, as a C step program.

    Parameters
    ----------
    program : GraphProgram
        The graph's program specialised to the step's input shapes.
    feeds : mapping of input name -> array
        Example inputs of the step's shapes (values used only by the self-check).
    state_map : mapping of state input -> state output
        The state the step carries: after each call the outputs are copied into the inputs.
    carry_state : bool
        Recurrent layers and causal convolutions keep their own state between calls
        (time-axis streams); ``time_axes`` then gives each tensor's time axis.

    Raises NotCompiled naming the first node (or tensor) the step compiler cannot handle.
    """

    def __init__(
        self,
        program: GraphProgram,
        feeds: Mapping[str, np.ndarray],
        state_map: Mapping[str, str],
        carry_state: bool = False,
        time_axes: Mapping[str, int | None] | None = None,
        max_arena_bytes: int | None = DEFAULT_MAX_ARENA_BYTES,
    ) -> None:
        # The program's guards (shapes a specialisation assumed) hold here by construction:
        # every lowered node's non-data inputs are constants, so each shape is a function of
        # the input shapes alone, which are fixed.
        for step in program.steps:
            if step.node.op in SEQUENCE_OPS:
                raise NotCompiled(
                    f"{step.node.label}: sequences of tensors are not compiled into step "
                    "programs (the graph runs op by op)"
                )
        env = trace(program, feeds)
        shapes = {n: tuple(np.shape(v)) for n, v in env.items()}
        dtypes = {n: np.asarray(v).dtype for n, v in env.items()}
        b = StepBuilder(max_arena_bytes)
        for name, value in feeds.items():
            if value.dtype != np.float32:
                raise NotCompiled(f"input {name!r} is {value.dtype} (the step program is float32)")
            b.values[name] = b.region(value.shape)
        ctx = StepContext(b, shapes, dtypes, program.constants)
        ctx.carry_state = carry_state
        ctx.time_axes = dict(time_axes or {})
        ctx.graph_outputs = set(program.graph.output_names)
        for step in program.steps:
            for name in step.node.inputs:
                if name:
                    ctx.readers.setdefault(name, []).append(step.node)
        for step in program.steps:
            if id(step.node) in ctx.lowered:
                continue  # its records came with the node before (a fused pair)
            lower = LOWERINGS.get(step.node.op)
            if lower is None:
                raise NotCompiled(f"{step.node.label}: no step lowering for {step.node.op}")
            lower(ctx, step.node, step.state)
        outputs = {}
        for name in program.graph.output_names:
            if name in b.values:
                outputs[name] = b.values[name]
            elif name in program.constants:
                outputs[name] = ctx.buf(None, name)
            else:
                raise NotCompiled(f"output {name!r} has no value")
        self._carry(b, state_map, outputs)
        # OpenBLAS runs a product of M*N*K >= 2**18 on every core it has (2 here), which on a
        # busy machine costs milliseconds of waiting: such steps hold the BLAS at one thread.
        self._one_blas_thread = any(_may_thread_blas(r) for r in b.records)
        self.program, self.arena = b.finish()
        self.inputs = {n: b.view(buf) for n, buf in b.values.items() if n in feeds}
        self.outputs = {n: b.view(buf) for n, buf in outputs.items()}
        # key -> (view, reset value) of each carried region
        self.carried = {key: (b.view(buf), start) for key, buf, start in b.carried}
        self.records = len(self.program)
        self._self_check(feeds, env, state_map)

    @staticmethod
    def _carry(b: StepBuilder, state_map: Mapping[str, str], outputs: dict[str, Buf]) -> None:
        """Copies of the state outputs into the state inputs, last in the program.

        Those copies overwrite the state inputs, so whatever still reads one afterwards gets
        a region of its own first: every graph output that overlaps a state input (``y =
        Identity(h)`` must give the old h), and every state output that overlaps a state
        input other than its own destination (two states that swap). An output already in
        its own destination needs no copy.
        """
        targets = {i: b.values[i] for i in state_map}
        own = {o: i for i, o in state_map.items()}
        for name, buf in list(outputs.items()):
            dst = targets.get(own.get(name, ""))
            exact = dst is not None and buf.base is dst.base and buf.offset == dst.offset
            clash = any(buf.overlaps(t) for i, t in targets.items() if t is not dst)
            if (
                clash
                or (dst is not None and not exact and buf.overlaps(dst))
                or (name not in own and any(buf.overlaps(t) for t in targets.values()))
            ):
                stage = b.region(buf.shape)
                b.copy_whole(stage, buf)
                outputs[name] = stage
        for state_in, state_out in state_map.items():
            src, dst = outputs[state_out], targets[state_in]
            if src.size != dst.size:
                raise NotCompiled(
                    f"state {state_in!r} has shape {dst.shape}, its output {state_out!r} "
                    f"{src.shape}"
                )
            b.copy_whole(dst, src)

    def _self_check(
        self, feeds: Mapping[str, np.ndarray], env: dict[str, np.ndarray], state_map: Mapping
    ) -> None:
        self.reset_carried()
        for name, value in feeds.items():
            np.copyto(self.inputs[name], value)
        try:
            self.run()
        except RuntimeError as exc:  # a record refused its arguments: not this program
            raise NotCompiled(f"self-check: {exc}") from exc
        for name, view in self.outputs.items():
            want = env[name]
            if name in state_map.values():
                continue  # already copied into its input: compared there
            self._compare(name, view, want)
        for state_in, state_out in state_map.items():
            self._compare(state_out, self.inputs[state_in], env[state_out])
        self.reset_carried()

    @staticmethod
    def _compare(name: str, got: np.ndarray, want: np.ndarray) -> None:
        want = np.asarray(want, np.float32).reshape(got.shape)
        if not np.allclose(got, want, rtol=SELF_CHECK_RTOL, atol=SELF_CHECK_ATOL, equal_nan=True):
            err = float(np.nanmax(np.abs(got - want))) if got.size else 0.0
            raise NotCompiled(f"self-check: output {name!r} differs from the op-by-op run by {err}")

    def reset_carried(self) -> None:
        """The carried regions (time-axis recurrent state) back to their initial values."""
        for view, start in self.carried.values():
            view[...] = start

    @property
    def runner(self) -> Any:
        """The callable that runs one step (the program's own when no BLAS thread limit is
        needed: one call less on the per-step path)."""
        return self.run if self._one_blas_thread else self.program.run

    def io(self, input_name: str, output_name: str) -> Any:
        """The one-call path of a step with one input and one output (_engine.StepIO:
        ``io.step(x, out)`` copies x in, runs, copies the output out), or None when the step
        needs the BLAS held at one thread around its run or a view is not a C-contiguous
        float32 array (then ``run`` is the path)."""
        if self._one_blas_thread:
            return None
        try:
            return _engine.StepIO(self.program, self.inputs[input_name],
                                  self.outputs[output_name])  # fmt: skip
        except ValueError:  # a view that is not a plain float32 region of the arena
            return None

    def run(self) -> None:
        """One step over what the input views hold."""
        if self._one_blas_thread:
            with blas_threads(1):
                self.program.run()
        else:
            self.program.run()

    def profile(self, repeat: int = 10) -> list[tuple[str, float]]:
        """(record kind, median seconds) of every record over ``repeat`` runs of the step on
        what the input views hold: where a step's time goes. Runs the step ``repeat`` times
        (carried state advances)."""
        return list(zip(self.program.kinds(), self.program.profile(repeat)))

    def __repr__(self) -> str:
        return f"CompiledStep({self.records} records, {self.arena.size * 4} arena bytes)"


def compile_step(
    program: GraphProgram,
    feeds: Mapping[str, np.ndarray],
    state_map: Mapping[str, str],
    carry_state: bool = False,
    time_axes: Mapping[str, int | None] | None = None,
    max_arena_bytes: int | None = None,
) -> tuple[CompiledStep | None, str | None]:
    """(the compiled step, None), or (None, why not). Raises TraceFailed when the inputs
    themselves do not run (the caller's op-by-op run then reports them)."""
    try:
        limit = DEFAULT_MAX_ARENA_BYTES if max_arena_bytes is None else max_arena_bytes
        return CompiledStep(program, feeds, state_map, carry_state, time_axes, limit), None
    except TraceFailed:
        raise
    except NotCompiled as exc:
        return None, str(exc)


class CompiledRuns:
    """Whole ``run`` calls of a graph as step programs, per set of input shapes.

    A shape set seen a second time is compiled (one-off calls never pay for it) when its
    program lowers completely and its arena stays under ``max_arena_bytes``; later calls at
    those shapes are one C call. At most ``cache_size`` shape sets and ``max_total_bytes``
    of arenas are kept (the oldest dropped first: a model run at many sequence lengths
    keeps the recent ones). Each compiled step has one arena: a call finding it busy
    (another thread inside) runs op by op instead, so ``run`` stays thread-safe.
    """

    def __init__(
        self, max_arena_bytes: int = 64 << 20, cache_size: int = 8, max_total_bytes: int = 128 << 20
    ) -> None:
        self.enabled = True
        self.max_arena_bytes = max_arena_bytes
        self.max_total_bytes = max_total_bytes
        self.cache_size = cache_size
        self._seen: dict[tuple, int] = {}
        self._steps: dict[tuple, tuple[CompiledStep, threading.Lock] | None] = {}
        self._errors: dict[tuple, str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(feeds: Mapping[str, np.ndarray]) -> tuple:
        return tuple((n, a.shape, a.dtype.str) for n, a in feeds.items())

    def error(self, feeds: Mapping[str, np.ndarray]) -> str | None:
        """Why the shapes of ``feeds`` run op by op (None: compiled, or not tried yet)."""
        return self._errors.get(self.key(feeds))

    def run(
        self, program_for: Any, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray] | None:
        """The outputs from the compiled step, or None (the caller runs op by op)."""
        if not self.enabled:
            return None
        key = self.key(feeds)
        with self._lock:
            entry = self._steps.get(key, False)
            if entry is False:
                if len(self._seen) >= 256:  # shapes seen once, bounded
                    self._seen.clear()
                self._seen[key] = self._seen.get(key, 0) + 1
                if self._seen[key] < 2:
                    return None
        if entry is False:
            entry = self._compile(key, program_for(feeds), feeds)
        if entry is None or not entry[1].acquire(blocking=False):
            return None
        step = entry[0]
        try:
            for name, value in feeds.items():
                np.copyto(step.inputs[name], value)
            step.run()
            return {n: step.outputs[n].copy() for n in outputs}
        finally:
            entry[1].release()

    def _arena_bytes(self) -> int:
        return sum(e[0].arena.nbytes for e in self._steps.values() if e is not None)

    def _compile(self, key: tuple, program: GraphProgram, feeds: Mapping) -> tuple | None:
        try:
            step, why = compile_step(program, feeds, {}, max_arena_bytes=self.max_arena_bytes)
        except TraceFailed:
            return None
        entry = None if step is None else (step, threading.Lock())
        with self._lock:
            self._steps[key] = entry
            while len(self._steps) > self.cache_size or (
                len(self._steps) > 1 and self._arena_bytes() > self.max_total_bytes
            ):
                self._steps.pop(next(iter(self._steps)))
            self._seen.pop(key, None)
            if why is not None:
                if len(self._errors) >= 64:
                    self._errors.clear()
                self._errors[key] = why
        return entry


__all__: list[Any] = [
    "CompiledRuns",
    "CompiledStep",
    "NotCompiled",
    "TraceFailed",
    "compile_step",
    "trace",
]
