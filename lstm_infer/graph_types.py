"""Static types of every tensor of a graph: each op's shape inference, in graph order.

:func:`infer_types` walks the nodes from the graph's declared input types and its constants
and gives each tensor a :class:`~lstm_infer.tensor_type.TensorType`: concrete dims where they
are known, the inputs' symbolic names where ops carry them through (``Relu`` keeps
``("T", "B", 64)``, an LSTM keeps its time axis), None where nothing can say. One pass, O(nodes)
calls; no tensor is ever allocated from an inferred shape.

A type the source declares for an intermediate (ONNX value_info) fills only what inference
leaves unknown: exporters write stale value_info, so an inferred concrete dim wins (the
disagreement is recorded, never an error). Inference never blocks loading: an op whose
inference raises gets unknown output types and the failure is recorded
(:attr:`InferredTypes.failures`); ``strict=True`` raises instead (tests, hostile graphs).

Subgraphs (If branches, Loop and Scan bodies) are inferred from the node's input types, each
time the node is met; one top-level call visits at most ``MAX_VISITS`` nodes in all, so
If-in-If nesting cannot make inference exponential (past it, subgraph outputs are unknown
and the node's failure says why).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from lstm_infer.errors import LstmInferError, ModelFormatError
from lstm_infer.graph import DTYPES, Graph, TensorType
from lstm_infer.ops import REGISTRY
from lstm_infer.ops.base import MAX_VALUE_ELEMENTS, with_value


@dataclass
class InferredTypes:
    """types: tensor name -> type (graph inputs, the constants nodes read or the graph
    returns, every node output).
    failures: node label -> why its inference failed (its outputs are then unknown).
    stale: tensor names whose declared type disagrees with an inferred concrete dim."""

    types: dict[str, TensorType] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)


UNDEFINED = TensorType("undefined")
_DTYPE_NAMES = {np.dtype(d): d for d in DTYPES if d != "undefined"}
# Node inferences one top-level infer_types call may make, subgraphs included.
MAX_VISITS = 200_000
_BUDGET = threading.local()


def constant_type(value: np.ndarray) -> TensorType:
    """A constant's type; a small integer one carries its values (a subgraph reading it
    through an input then still knows a shape it builds from it)."""
    dtype = _DTYPE_NAMES.get(value.dtype, "undefined")
    t = TensorType(dtype, tuple(value.shape))
    if dtype in ("int64", "int32") and value.size <= MAX_VALUE_ELEMENTS:
        t = with_value(t, [int(v) for v in value.reshape(-1)])
    return t


def _type_of(
    name: str, types: dict[str, TensorType], consts: Mapping[str, np.ndarray]
) -> TensorType:
    """A tensor's type so far; a constant's is made on its first read."""
    t = types.get(name)
    if t is None:
        value = consts.get(name)
        if value is None:
            return UNDEFINED
        # One type per constant array in a top-level call (subgraphs met many times read
        # the same arrays); the array is held so its id stays its own.
        seen = _BUDGET.constants
        hit = seen.get(id(value))
        if hit is None or hit[0] is not value:
            hit = seen[id(value)] = (value, constant_type(np.asarray(value)))
        t = types[name] = hit[1]
    return t


def merge_declared(inferred: TensorType, declared: TensorType | None) -> tuple[TensorType, bool]:
    """``inferred`` with what it leaves unknown taken from ``declared``, and whether the two
    disagree on a concrete dim or the rank (the inferred one is kept)."""
    if declared is None:
        return inferred, False
    dtype = inferred.dtype if inferred.dtype != "undefined" else declared.dtype
    time_axis = inferred.time_axis if inferred.time_axis is not None else declared.time_axis
    if inferred.shape is None:
        return replace(inferred, dtype=dtype, shape=declared.shape, time_axis=time_axis), False
    if declared.shape is None or len(declared.shape) != len(inferred.shape):
        return replace(inferred, dtype=dtype, time_axis=time_axis), declared.shape is not None
    shape, stale = [], False
    for mine, theirs in zip(inferred.shape, declared.shape):
        if mine is None:
            shape.append(theirs)
        else:
            stale |= isinstance(mine, int) and isinstance(theirs, int) and mine != theirs
            shape.append(mine)
    return replace(inferred, dtype=dtype, shape=tuple(shape), time_axis=time_axis), stale


def infer_types(
    graph: Graph,
    input_types: Mapping[str, TensorType] | None = None,
    *,
    strict: bool = False,
) -> InferredTypes:
    """The type of every tensor of ``graph`` (nodes in the graph's execution order).

    Parameters
    ----------
    graph : Graph
    input_types : mapping, optional
        Types to use instead of the declared ones for some inputs (concrete shapes of a call).
    strict : bool
        Raise the first op's inference error (ModelFormatError naming the node) instead of
        recording it and going on with unknown outputs.
    """
    outer = getattr(_BUDGET, "left", None)
    if outer is None:
        _BUDGET.left = MAX_VISITS
        _BUDGET.constants = {}
    try:
        return _infer(graph, input_types, strict)
    finally:
        if outer is None:
            del _BUDGET.left, _BUDGET.constants


def _infer(
    graph: Graph, input_types: Mapping[str, TensorType] | None, strict: bool
) -> InferredTypes:
    _BUDGET.left -= len(graph.nodes)
    if _BUDGET.left < 0:
        raise ModelFormatError(
            f"shape inference visited more than {MAX_VISITS} nodes (subgraphs nested too deeply)"
        )
    result = InferredTypes()
    types = result.types
    for v in graph.inputs:
        types[v.name] = (input_types or {}).get(v.name, v.type)
    consts = graph.initializers
    declared = dict(graph.value_types)
    declared.update((v.name, v.type) for v in graph.outputs)
    for node in graph.nodes:
        op = REGISTRY.get(node.op)
        ins = [_type_of(n, types, consts) if n else None for n in node.inputs]
        node_consts = {i: consts[n] for i, n in enumerate(node.inputs) if n and n in consts}
        try:
            if op is None or op.infer is None:
                raise ModelFormatError(f"{node.label}: no shape inference for {node.op!r}")
            outs = op.infer(node, ins, node_consts)
            if len(outs) != len(node.outputs) or not all(isinstance(t, TensorType) for t in outs):
                raise ModelFormatError(
                    f"{node.label}: inference gave {len(outs)} types for "
                    f"{len(node.outputs)} outputs"
                )
        except Exception as exc:  # noqa: BLE001 (recorded: inference never blocks a load)
            if strict:
                if isinstance(exc, ModelFormatError) and node.label in str(exc):
                    raise
                if isinstance(exc, LstmInferError):
                    why = str(exc) if node.label in str(exc) else f"{node.label}: {exc}"
                    raise ModelFormatError(why) from exc
                raise ModelFormatError(f"{node.label}: shape inference failed: {exc!r}") from exc
            result.failures[node.label] = f"{type(exc).__name__}: {exc}"
            outs = [UNDEFINED] * len(node.outputs)
        for name, t in zip(node.outputs, outs):
            if name:
                t, stale = merge_declared(t, declared.get(name))
                if stale:
                    result.stale.append(name)
                types[name] = t
    for v in graph.outputs:  # (an output may be a constant or an input)
        _type_of(v.name, types, consts)
    return result
