"""Load an ONNX model as the fastest thing that runs it.

The proto is lowered node for node into a model graph (``lower``). A pass then recognises a
graph that is a recurrent stack (embedding, layers, layout glue, a dense head): it becomes a
:class:`~lstm_infer.model.Model` on the fused path (``lstm_infer.onnx_import.stack_spec``);
any other graph a :class:`~lstm_infer.graph_model.GraphModel`, node for node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lstm_infer.errors import ModelFormatError
from lstm_infer.graph import Graph
from lstm_infer.graph_model import GraphModel
from lstm_infer.importers.onnx.lower import graph_from_onnx
from lstm_infer.importers.onnx.proto import load_onnx_proto
from lstm_infer.model import Model
from lstm_infer.onnx_import import stack_spec


def load_onnx(source: Any, fixed_inputs: Mapping[str, Any] | None = None) -> Model | GraphModel:
    """A Model or GraphModel from an ONNX path, bytes or ModelProto (external data from the
    model's folder only).

    ``fixed_inputs`` (name -> value) makes those graph inputs constants: they leave
    ``model.inputs``, and what they decide (silero-VAD's ``sr == 16000`` branch) is resolved
    at load. A graph with fixed inputs always loads node for node.

    Raises ModelFormatError (UnsupportedModelError for what neither path runs) naming the node,
    its op type and why; ValueError for a fixed input the graph does not have or a value that
    does not fit its declared type.
    """
    graph = graph_from_onnx(load_onnx_proto(source))
    if fixed_inputs:
        return GraphModel(fix_inputs(graph, fixed_inputs), source="onnx")
    try:
        return Model(stack_spec(graph))
    except ModelFormatError as as_stack:
        # The stack pass reads a graph as one chain; where that reading fails the graph
        # may still run node for node (and the graph path checks every node itself).
        try:
            return GraphModel(graph, source="onnx")
        except ModelFormatError as as_graph:
            raise type(as_graph)(
                f"{as_graph} (read as a recurrent stack instead: {as_stack})"
            ) from as_graph


def fix_inputs(graph: Graph, values: Mapping[str, Any]) -> Graph:
    """``graph`` with the inputs named in ``values`` turned into constants of their declared
    dtype (checked against the declared static dims)."""
    declared = {v.name: v.type for v in graph.inputs}
    fixed: dict[str, np.ndarray] = {}
    for name, value in values.items():
        if name not in declared:
            raise ValueError(
                f"fixed_inputs: the graph has no input {name!r} (inputs: {sorted(declared)})"
            )
        t = declared[name]
        try:
            arr = np.array(value, dtype=np.dtype(t.dtype))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"fixed_inputs[{name!r}]: not a {t.dtype} value: {exc}") from None
        if t.shape is not None:
            fits = arr.ndim == len(t.shape) and all(
                not isinstance(d, int) or d == n for d, n in zip(t.shape, arr.shape)
            )
            if not fits:
                raise ValueError(
                    f"fixed_inputs[{name!r}]: shape {arr.shape} does not fit the declared "
                    f"{tuple(t.shape)}"
                )
        fixed[name] = arr
    return graph.with_constants(fixed)
