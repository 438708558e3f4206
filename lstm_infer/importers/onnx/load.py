"""Load an ONNX model as the fastest thing that runs it.

A graph that is a recurrent stack (embedding, layers, layout glue, a dense head) becomes a
:class:`~lstm_infer.model.Model` on the fused path (``lstm_infer.onnx_import``); any other
graph a :class:`~lstm_infer.graph_model.GraphModel`, node for node (``lower``).
"""

from __future__ import annotations

from typing import Any

from lstm_infer.errors import ModelFormatError
from lstm_infer.graph_model import GraphModel
from lstm_infer.importers.onnx.lower import graph_from_onnx
from lstm_infer.model import Model
from lstm_infer.onnx_import import import_onnx, load_onnx_proto


def load_onnx(source: Any) -> Model | GraphModel:
    """A Model or GraphModel from an ONNX path, bytes or ModelProto (external data from the
    model's folder only).

    Raises ModelFormatError (UnsupportedModelError for what neither path runs) naming the node,
    its op type and why.
    """
    proto = load_onnx_proto(source)
    try:
        return Model(import_onnx(proto))
    except ModelFormatError as as_stack:
        # The stack lowering reads a graph as one chain; where that reading fails the graph
        # may still be valid node for node (and the graph path checks every node itself).
        try:
            return GraphModel(graph_from_onnx(proto), source="onnx")
        except ModelFormatError as as_graph:
            raise type(as_graph)(
                f"{as_graph} (read as a recurrent stack instead: {as_stack})"
            ) from as_graph
