"""Control flow: If, Loop and Scan.

``If(cond)`` runs one of two subgraphs (``then_branch`` / ``else_branch``, graphs of their own
ops, each compiled once at load) and returns its outputs. A branch may read any tensor of the
graphs around it: the importer lists those outer tensors after ``cond`` as the node's inputs,
and both branch graphs declare one input per outer tensor, by position (``inputs[1 + i]``
feeds the branches' ``inputs[i]``, whatever either side calls it). So the dataflow stays
explicit, renaming the outer graph never reaches into a branch, and a branch compiles like
any graph, the outer constants it reads becoming its own. A
condition known at load (a constant, or computed from inputs fixed with ``fixed_inputs=``) is
resolved there instead: the chosen branch is inlined (``lstm_infer.passes.inline_if``) and
the other never compiled.

``Loop(M, cond, v_initial...)`` runs its ``body`` (compiled once) while the iteration number
is below the trip count ``M`` (if given) and the condition holds (if given); the body takes
the iteration number, the condition and the N loop-carried values, returns the next
condition, the next carried values and K scan outputs; the node returns the final carried
values and each scan output stacked over the iterations (axis 0). Like If's branches the body
reads outer tensors through extra node inputs after the ONNX ones, declared after its own
inputs; ``lstm_infer_own_inputs`` holds how many node inputs are the ONNX node's own (2 + N).
Each iteration runs the body program from Python, so a loop costs per iteration what its
body costs as a graph; loops are never folded at load
(their work is unbounded), stop with an error past ``LOOP_MAX_ITERATIONS`` iterations (loops
nested in a loop count against the outermost one's), ``LOOP_MAX_SCAN_BYTES`` of scan outputs
or ``LOOP_MAX_CARRIED_BYTES`` of carried values, and refuse a scan output whose shape changes
between iterations. A Loop or Scan proven to run one recurrent cell step over a sequence never gets
here: :mod:`lstm_infer.passes.loop_cells` replaces it by the native LSTM / GRU / RNN node.

``Scan(state..., scanned...)`` (opset 9+) runs its ``body`` once per slice of the M scanned
inputs along their axes (``scan_input_axes``, each forward or reversed by
``scan_input_directions``), carrying the N state values; the node returns the final states
and the K scan outputs stacked along ``scan_output_axes`` (reversed where
``scan_output_directions`` says 1). Outer tensors come in as for Loop;
``lstm_infer_own_inputs`` holds N + M. Its length is bounded by its inputs' sizes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from lstm_infer.errors import InputError, ModelFormatError
from lstm_infer.ops.base import (
    OpDef,
    RunContext,
    allowed_attrs,
    attr_int,
    infer_axis,
    op,
    shape_of,
    typed,
    unknown,
)
from lstm_infer.ops.sequence import is_sequence
from lstm_infer.tensor_type import Dim, TensorType

BRANCHES = ("then_branch", "else_branch")


def branch_graph(node: Any, key: str) -> Any:
    from lstm_infer.graph import Graph  # graph imports the registry; ops never import graph

    g = node.attrs.get(key)
    if not isinstance(g, Graph):
        raise ModelFormatError(f"{node.label}: attribute {key!r} must be a graph")
    return g


def _check_if(node: Any) -> None:
    allowed_attrs(required=BRANCHES)(node)
    for key in BRANCHES:
        g = branch_graph(node, key)
        if len(g.outputs) != len(node.outputs):
            raise ModelFormatError(
                f"{node.label}: {key} has {len(g.outputs)} outputs, the node {len(node.outputs)}"
            )
        if len(g.inputs) != len(node.inputs) - 1:
            raise ModelFormatError(
                f"{node.label}: {key} declares {len(g.inputs)} outer tensors, the node lists "
                f"{len(node.inputs) - 1}"
            )
        g.validate()


def _compiled(graph: Any, fixed: dict[str, np.ndarray]) -> Any:
    """A subgraph compiled once, the constants among its outer tensors fixed in: its batch-size
    checks fold per input shapes like the outer graph's (ShapeSpecializer)."""
    from lstm_infer.compile.program import GraphProgram  # the compiler runs the ops
    from lstm_infer.compile.specialize import ShapeSpecializer

    return ShapeSpecializer(GraphProgram(graph.with_constants(fixed)))


def _if_prepare(node: Any, consts: dict[int, np.ndarray]) -> tuple[Any, Any]:
    runners = []
    for key in BRANCHES:
        g = branch_graph(node, key)
        fixed = {g.inputs[i - 1].name: v for i, v in consts.items() if i > 0}
        runners.append(_compiled(g, fixed))
    return runners[0], runners[1]


def _if_run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    cond = ins[0]
    if cond.size != 1 or cond.dtype.kind not in "biuf":
        raise InputError(f"{node.label}: cond must hold one boolean, got {cond.dtype} {cond.shape}")
    if state is None:  # (only while folding constants, where prepare has not run)
        state = _if_prepare(node, dict(enumerate(ins)))
    taken = bool(cond.reshape(()))
    runner = state[0] if taken else state[1]
    declared = branch_graph(node, BRANCHES[0 if taken else 1]).input_names
    given = dict(zip(declared, ins[1:]))
    names = runner.program.graph.output_names
    feeds = {n: given[n] for n in runner.program.graph.input_names}
    result = runner.run(feeds, names, ctx.threads)
    return [result[n] for n in names]


# Bounds on one Loop call: its iterations (a per-iteration Python cost of ~20-100 us makes
# this a few seconds at most), the bytes its scan outputs accumulate and the bytes its
# carried values hold after an iteration (a value doubled by every iteration is refused at
# 1 GB, not at the 8 GB one tensor may hold).
LOOP_MAX_ITERATIONS = 100_000
LOOP_MAX_SCAN_BYTES = 1 << 30
LOOP_MAX_CARRIED_BYTES = 1 << 30

# Body runs left to the outermost Loop / Scan running on this thread: loops nested in it
# share its LOOP_MAX_ITERATIONS (else two nested loops of 100,000 would run 10**10 bodies).
# The outermost Scan's own steps are bounded by its inputs and do not count; every body run
# nested in another loop does.
_budget = threading.local()


@contextmanager
def _iteration_budget() -> Iterator[bool]:
    """Open the thread's budget if no loop is running yet; yields whether this is the
    outermost loop."""
    if getattr(_budget, "left", None) is not None:
        yield False
        return
    _budget.left = LOOP_MAX_ITERATIONS
    try:
        yield True
    finally:
        _budget.left = None


def _spend(node: Any) -> None:
    """Count one body run against the budget of the outermost loop."""
    _budget.left -= 1
    if _budget.left < 0:
        raise InputError(
            f"{node.label}: more than {LOOP_MAX_ITERATIONS} loop iterations in one run, "
            "nested loops counted together: refused as unbounded"
        )


def _check_carried(node: Any, carried: list[Any], i: int) -> None:
    """Refuse a Loop's or Scan's carried values past ``LOOP_MAX_CARRIED_BYTES`` in all.

    Parameters
    ----------
    node : Node
        The Loop or Scan node (named in the error).
    carried : list
        The carried values after an iteration: arrays or :class:`TensorSequence` values.
    i : int
        The iteration just run.

    Raises
    ------
    InputError
        If the values hold more than ``LOOP_MAX_CARRIED_BYTES`` bytes.
    """
    # A sequence counts the bytes of its tensors: np.asarray would wrap it in a 0-d object
    # array of 8 bytes, leaving a loop that grows a carried list unbounded by this check.
    total = sum(v.nbytes if is_sequence(v) else np.asarray(v).nbytes for v in carried)
    if total > LOOP_MAX_CARRIED_BYTES:
        raise InputError(
            f"{node.label}: the loop-carried values hold {total} bytes after iteration {i} "
            f"(at most {LOOP_MAX_CARRIED_BYTES}): refused as unbounded growth"
        )


OWN_INPUTS = "lstm_infer_own_inputs"


def _own_inputs(node: Any) -> int:
    """How many of a Loop's or Scan's inputs are the ONNX node's own (the outer tensors its
    body reads follow them)."""
    n = node.attrs.get(OWN_INPUTS)
    if (
        isinstance(n, bool)
        or not isinstance(n, (int, np.integer))
        or not 0 <= n <= len(node.inputs)
    ):
        raise ModelFormatError(
            f"{node.label}: attribute {OWN_INPUTS!r} must be an int in [0, {len(node.inputs)}]"
        )
    return int(n)


def _carried(node: Any) -> int:
    """A Loop's loop-carried values: its own inputs after M and cond."""
    n = _own_inputs(node) - 2
    if n < 0:
        raise ModelFormatError(f"{node.label}: Loop takes M and cond (either may be empty) first")
    return n


def _body_prepare(node: Any, consts: dict[int, np.ndarray]) -> Any:
    """Loop's and Scan's body compiled once: its inputs are the node's inputs position by
    position, the constant outer tensors fixed in."""
    body = branch_graph(node, "body")
    first_outer = _own_inputs(node)
    return _compiled(body, {body.inputs[i].name: v for i, v in consts.items() if i >= first_outer})


def _check_loop(node: Any) -> None:
    allowed_attrs(OWN_INPUTS, required=("body",))(node)
    body = branch_graph(node, "body")
    n = _carried(node)
    if len(node.outputs) < n or len(body.outputs) != 1 + len(node.outputs):
        raise ModelFormatError(
            f"{node.label}: the body has {len(body.outputs)} outputs and the node "
            f"{len(node.outputs)} with {n} loop-carried values"
        )
    if len(body.inputs) != len(node.inputs) or len(node.inputs) < 2 + n:
        raise ModelFormatError(
            f"{node.label}: the body declares {len(body.inputs)} inputs, the node lists "
            f"{len(node.inputs)} (M, cond, {n} carried values, then outer tensors)"
        )
    body.validate()


def _scalar(node: Any, what: str, value: np.ndarray, kinds: str) -> Any:
    if value.size != 1 or value.dtype.kind not in kinds:
        raise InputError(f"{node.label}: {what} must hold one value, got {value.dtype} "
                         f"{value.shape}")  # fmt: skip
    return value.reshape(()).item()


def _empty_scan(out: Any) -> np.ndarray:
    """A scan output of no iterations: (0, *shape) when the body declares its shape."""
    t = out.type
    dtype = np.float32 if t.dtype == "undefined" else np.dtype(t.dtype)
    if t.shape is not None and all(isinstance(d, int) for d in t.shape):
        return np.zeros((0, *t.shape), dtype)
    return np.zeros((0,), dtype)


def _collect_scans(
    node: Any, result: dict, keys: list[str], scans: list[list[np.ndarray]], total: int
) -> int:
    """Append one iteration's scan outputs (copies: the body may reuse its buffers); refuse
    a shape change or more than LOOP_MAX_SCAN_BYTES in all. Returns the new byte total."""
    for k, key in enumerate(keys):
        if is_sequence(result[key]):
            raise InputError(f"{node.label}: scan output {key!r} is a sequence, not a tensor")
        value = np.array(result[key])
        if scans[k] and value.shape != scans[k][0].shape:
            raise InputError(
                f"{node.label}: scan output {key!r} changed shape between iterations "
                f"({scans[k][0].shape} then {value.shape})"
            )
        total += value.nbytes
        if total > LOOP_MAX_SCAN_BYTES:
            raise InputError(
                f"{node.label}: scan outputs past {LOOP_MAX_SCAN_BYTES} bytes after "
                f"{len(scans[k]) + 1} iterations: refused"
            )
        scans[k].append(value)
    return total


def _value(v: Any) -> Any:
    """A carried value as the node returns it: a sequence as it is, anything else an array."""
    return v if is_sequence(v) else np.asarray(v)


def _loop_run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    if state is None:  # (only while folding constants, where prepare has not run)
        state = _body_prepare(node, dict(enumerate(ins)))
    body = branch_graph(node, "body")
    n = _carried(node)
    trips = None if ins[0] is None else _scalar(node, "the trip count M", ins[0], "iu")
    go = True if ins[1] is None else bool(_scalar(node, "cond", ins[1], "biuf"))
    names = [v.name for v in body.inputs]
    given = {names[i]: v for i, v in enumerate(ins) if i >= 2 + n}
    carried = list(ins[2 : 2 + n])
    for i, v in enumerate(carried):
        if v is None:
            raise InputError(f"{node.label}: loop-carried value {i} is missing")
    wanted = state.program.graph.input_names
    out_names = [v.name for v in body.outputs]
    scans: list[list[np.ndarray]] = [[] for _ in range(len(out_names) - 1 - n)]
    scan_bytes = 0
    i = 0
    with _iteration_budget():
        while go and (trips is None or i < trips):
            if i >= LOOP_MAX_ITERATIONS:
                raise InputError(
                    f"{node.label}: more than {LOOP_MAX_ITERATIONS} iterations (trip count "
                    f"{trips if trips is not None else 'none'}): refused as unbounded"
                )
            _spend(node)
            feeds = {names[0]: np.array(i, np.int64), names[1]: np.array(go), **given}
            feeds.update(zip(names[2 : 2 + n], carried))
            result = state.run({k: feeds[k] for k in wanted}, out_names, ctx.threads)
            go = bool(_scalar(node, "the body's condition output", result[out_names[0]], "biuf"))
            carried = [result[k] for k in out_names[1 : 1 + n]]
            _check_carried(node, carried, i)
            scan_bytes = _collect_scans(node, result, out_names[1 + n :], scans, scan_bytes)
            i += 1
    stacked = [
        np.stack(s) if s else _empty_scan(body.outputs[1 + n + k]) for k, s in enumerate(scans)
    ]
    return [_value(v) for v in carried] + stacked


SCAN_ATTRS = ("num_scan_inputs", "scan_input_axes", "scan_input_directions",
              "scan_output_axes", "scan_output_directions")  # fmt: skip


def _scan_layout(node: Any) -> tuple[int, int, list[int], list[int], list[int], list[int]]:
    """N, M and the four per-input / per-output axis and direction lists, checked."""
    declared = _own_inputs(node)
    m = attr_int(node, "num_scan_inputs")
    n = int(declared) - m
    if m < 1 or n < 0:
        raise ModelFormatError(
            f"{node.label}: num_scan_inputs = {m} with {declared} state and scanned inputs"
        )
    k = len(node.outputs) - n
    if k < 0:
        raise ModelFormatError(f"{node.label}: {len(node.outputs)} outputs for {n} states")

    def ints(key: str, count: int) -> list[int]:
        v = node.attrs.get(key)
        if v is None:
            return [0] * count
        v = list(np.asarray(v, np.int64).reshape(-1))
        if len(v) != count:
            raise ModelFormatError(f"{node.label}: {key} has {len(v)} entries, expected {count}")
        return [int(a) for a in v]

    dirs_in, dirs_out = ints("scan_input_directions", m), ints("scan_output_directions", k)
    if any(d not in (0, 1) for d in dirs_in + dirs_out):
        raise ModelFormatError(f"{node.label}: scan directions must be 0 or 1")
    return n, m, ints("scan_input_axes", m), dirs_in, ints("scan_output_axes", k), dirs_out


def _check_scan(node: Any) -> None:
    allowed_attrs(*SCAN_ATTRS, OWN_INPUTS, required=("body", "num_scan_inputs"))(node)
    body = branch_graph(node, "body")
    n, m, *_ = _scan_layout(node)
    if len(body.inputs) != len(node.inputs) or len(node.inputs) < n + m:
        raise ModelFormatError(
            f"{node.label}: the body declares {len(body.inputs)} inputs, the node lists "
            f"{len(node.inputs)}"
        )
    if len(body.outputs) != len(node.outputs):
        raise ModelFormatError(
            f"{node.label}: the body has {len(body.outputs)} outputs, the node {len(node.outputs)}"
        )
    body.validate()


def _axis(node: Any, what: str, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise InputError(f"{node.label}: {what} axis {axis} is outside rank {rank}")
    return axis % rank


def _scan_run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    if state is None:  # (only while folding constants, where prepare has not run)
        state = _body_prepare(node, dict(enumerate(ins)))
    body = branch_graph(node, "body")
    n, m, in_axes, in_dirs, out_axes, out_dirs = _scan_layout(node)
    if any(v is None for v in ins[: n + m]):
        raise InputError(f"{node.label}: every state and scanned input is required")
    scanned = [np.asarray(v) for v in ins[n : n + m]]
    axes = [_axis(node, "scan input", a, max(v.ndim, 1)) for a, v in zip(in_axes, scanned)]
    if any(v.ndim == 0 for v in scanned):
        raise InputError(f"{node.label}: a scanned input must have at least one dimension")
    lengths = {v.shape[a] for v, a in zip(scanned, axes)}
    if len(lengths) != 1:
        raise InputError(f"{node.label}: the scanned inputs have different lengths {lengths}")
    steps = lengths.pop()
    names = [v.name for v in body.inputs]
    out_names = [v.name for v in body.outputs]
    given = {names[i]: v for i, v in enumerate(ins) if i >= n + m}
    wanted = state.program.graph.input_names
    carried = list(ins[:n])
    scans: list[list[np.ndarray]] = [[] for _ in range(len(out_names) - n)]
    scan_bytes = 0
    with _iteration_budget() as outermost:
        for t in range(steps):
            if not outermost:
                _spend(node)
            feeds = dict(given)
            feeds.update(zip(names[:n], carried))
            for j, (v, a, d) in enumerate(zip(scanned, axes, in_dirs)):
                feeds[names[n + j]] = np.take(v, steps - 1 - t if d else t, axis=a)
            result = state.run({key: feeds[key] for key in wanted}, out_names, ctx.threads)
            carried = [result[key] for key in out_names[:n]]
            _check_carried(node, carried, t)
            scan_bytes = _collect_scans(node, result, out_names[n:], scans, scan_bytes)
    outs = []
    for k, s in enumerate(scans):
        if not s:
            outs.append(_empty_scan(body.outputs[n + k]))
            continue
        if out_dirs[k]:
            s = s[::-1]
        axis = _axis(node, "scan output", out_axes[k], s[0].ndim + 1)
        outs.append(np.stack(s, axis=axis))
    return [_value(v) for v in carried] + outs


# ---- shape inference: the bodies' own, from the node's input types ------------------------


def _body_types(node: Any, key: str, feeds: list[TensorType | None]) -> list[TensorType]:
    """The output types of subgraph ``key`` given its inputs' types by position (None: the
    body's declaration); an op failing inside it fails the node's inference."""
    from lstm_infer.graph_types import infer_types, merge_declared  # graph_types runs ops

    body = branch_graph(node, key)
    given = {}
    for v, t in zip(body.inputs, feeds):
        given[v.name] = v.type if t is None else merge_declared(t, v.type)[0]
    result = infer_types(body, given)
    if result.failures:
        where, why = next(iter(result.failures.items()))
        raise ModelFormatError(f"{node.label}: {key}: {where}: {why}")
    return [result.types[v.name] for v in body.outputs]


def _joined(a: TensorType, b: TensorType) -> TensorType:
    """A type both ``a`` and ``b`` are (dims kept where they agree)."""
    dtype = a.dtype if a.dtype == b.dtype or b.dtype == "undefined" else b.dtype
    if a.dtype == "undefined":
        dtype = b.dtype
    seq = a.sequence or b.sequence  # (a loop-carried list, or an If returning one)
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return TensorType(dtype, sequence=seq)
    shape = tuple(x if x == y else None for x, y in zip(a.shape, b.shape))
    return TensorType(dtype, shape, sequence=seq)


def _if_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    then = _body_types(node, "then_branch", types[1:])
    other = _body_types(node, "else_branch", types[1:])
    return [_joined(a, b) for a, b in zip(then, other)]


def _stacked(node: Any, t: TensorType, length: Dim, axis: int = 0) -> TensorType:
    if t.shape is None:
        return unknown(t.dtype)
    shape = list(t.shape)
    shape.insert(infer_axis(node, axis, len(shape) + 1), length)
    return typed(node, t.dtype, shape)


def _loop_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    n = _carried(node)
    feeds = [TensorType("int64", ()), TensorType("bool", ()), *types[2:]]
    outs = _body_types(node, "body", feeds)
    carried = [_joined(t, o) if t is not None else o for t, o in zip(types[2 : 2 + n], outs[1:])]
    scans = [_stacked(node, o, None) for o in outs[1 + n :]]
    return carried + scans


def _scan_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    n, m, in_axes, _, out_axes, _ = _scan_layout(node)
    feeds: list[TensorType | None] = list(types[:n])
    lengths: list[Dim] = []
    for t, a in zip(types[n : n + m], in_axes):
        shape = shape_of(t)
        if t is None or shape is None:
            feeds.append(None if t is None else unknown(t.dtype))
            lengths.append(None)
            continue
        a = infer_axis(node, a, len(shape))
        feeds.append(typed(node, t.dtype, shape[:a] + shape[a + 1 :]))
        lengths.append(shape[a])
    feeds += types[n + m :]
    outs = _body_types(node, "body", feeds)
    known = {d for d in lengths if d is not None}
    length = known.pop() if len(known) == 1 else None
    carried = [_joined(t, o) if t is not None else o for t, o in zip(types[:n], outs[:n])]
    scans = [_stacked(node, o, length, out_axes[k]) for k, o in enumerate(outs[n:])]
    return carried + scans


OPS: dict[str, OpDef] = {
    "If": op(
        "If",
        _if_run,
        inputs=(1, -1),
        outputs=(1, -1),
        check=_check_if,
        prepare=_if_prepare,
        infer=_if_infer,
    ),
    "Loop": op(
        "Loop",
        _loop_run,
        inputs=(0, -1),  # M and cond may be empty; _check_loop counts the rest
        outputs=(1, -1),
        check=_check_loop,
        prepare=_body_prepare,
        infer=_loop_infer,
        foldable=False,
    ),
    "Scan": op(
        "Scan",
        _scan_run,
        inputs=(1, -1),
        outputs=(1, -1),
        check=_check_scan,
        prepare=_body_prepare,
        infer=_scan_infer,
        foldable=False,
    ),
}
