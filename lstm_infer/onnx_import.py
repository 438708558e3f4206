"""The fused path's pass: a model graph that is a recurrent stack as a ModelSpec.

Every ONNX model is first lowered node for node into a model graph
(:func:`~lstm_infer.importers.onnx.lower.graph_from_onnx`, which keeps every check of the
importer). :func:`stack_spec` then recognises the graphs that are recurrent stacks, which run
on the fused path (:class:`~lstm_infer.model.Model`: stream steps, pooled sessions, quantized
weights) instead of node for node. A graph of one recurrent node: the node's weights
(initializers) are converted once into the internal model description; the node's optional
inputs that are graph inputs stay inputs of ``run``, and those that are initializers are baked
in. Any other graph is read into the same description by
:mod:`lstm_infer.importers.onnx.stack`. Output names are the graph's own. Loading the proto
(external data read from the model's folder only) and decoding its tensors is
:mod:`lstm_infer.importers.onnx.proto`; its names are re-exported here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer._onnx_weights import (
    RECURRENT_ATTRIBUTES,
    RECURRENT_OPS,
    layer_from_node_attributes,
)
from lstm_infer._spec import ModelSpec, Signature
from lstm_infer.errors import ModelFormatError, UnsupportedModelError
from lstm_infer.graph import Graph, Node
from lstm_infer.importers.onnx.lower import graph_from_onnx
from lstm_infer.importers.onnx.proto import (
    GATE_COUNT,
    MAX_EXTERNAL_TENSOR_BYTES,
    MAX_HIDDEN_SIZE,
    MAX_INPUT_SIZE,
    check_recurrent_attributes,
    load_onnx_proto,
    tensor_to_numpy,
    used_tensor_names,
)
from lstm_infer.importers.onnx.stack import lower_graph

__all__ = [
    "GATE_COUNT",
    "INPUT_ROLES",
    "MAX_EXTERNAL_TENSOR_BYTES",
    "MAX_HIDDEN_SIZE",
    "MAX_INPUT_SIZE",
    "MAX_PLACEHOLDER_ELEMENTS",
    "OUTPUT_ROLES",
    "check_recurrent_attributes",
    "import_onnx",
    "import_single_node",
    "is_single_node",
    "load_onnx_proto",
    "lower_graph",
    "stack_spec",
    "tensor_to_numpy",
    "used_tensor_names",
]

# Positions of the ONNX operator inputs.
INPUT_ROLES = {
    "rnn": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
    "lstm": ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"),
    "gru": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
}
OUTPUT_ROLES = {"rnn": ("y", "y_h"), "lstm": ("y", "y_h", "y_c"), "gru": ("y", "y_h")}
# Weights fed at run time get a placeholder of their declared shape at load; bounded.
MAX_PLACEHOLDER_ELEMENTS = 1 << 28


def import_single_node(graph: Graph) -> ModelSpec:
    """The ModelSpec of a graph made of one RNN/LSTM/GRU node.

    Parameters
    ----------
    graph : Graph
        The model graph (:func:`~lstm_infer.importers.onnx.lower.graph_from_onnx`; see
        :func:`is_single_node`).

    Returns
    -------
    ModelSpec
        One layer, with the operator's own signature ("onnx_node"): its optional inputs that
        are graph inputs stay inputs of ``run``, weights fed at run time included.

    Raises
    ------
    UnsupportedModelError
        For another kind of graph, another domain or an unsupported attribute.
    ModelFormatError
        For a malformed node (missing W/R/X, wrong shapes, an input that is nothing).
    """
    consts = graph.initializers
    nodes = graph.nodes
    if not is_single_node(graph):
        kinds = [n.label for n in nodes]
        raise UnsupportedModelError(
            f"expected a graph with one RNN/LSTM/GRU node, found nodes: {kinds}"
        )
    node = nodes[0]
    cell = RECURRENT_OPS[node.op]
    attrs = node.attrs
    unknown = set(attrs) - RECURRENT_ATTRIBUTES
    if unknown:
        raise UnsupportedModelError(f"{node.label}: unsupported attribute(s) {sorted(unknown)}")
    graph_inputs = set(graph.input_names)
    roles = INPUT_ROLES[cell]
    named: dict[str, str] = {}
    for pos, name in enumerate(node.inputs):
        if name:
            if pos >= len(roles):
                raise ModelFormatError(
                    f"{node.label} has {len(node.inputs)} inputs; at most {len(roles)}"
                )
            named[roles[pos]] = name

    weight_inputs: dict[str, str] = {}

    def const(role: str) -> np.ndarray | None:
        name = named.get(role)
        if name is None:
            return None
        if name in consts:
            return consts[name]
        if name in graph_inputs:
            # Weights fed at run time: compile a placeholder of the declared shape now; run()
            # rebuilds the layer from the fed values.
            weight_inputs[role] = name
            return np.zeros(_static_shape(graph, name, node), np.float32)
        raise ModelFormatError(
            f"{node.label}: {role} ({name!r}) is neither an initializer, a Constant nor a "
            "graph input"
        )

    for role in ("W", "R"):
        if role not in named:
            raise ModelFormatError(f"{node.label} has no {role} input")

    try:
        layer = layer_from_node_attributes(
            cell, const("W"), const("R"), const("B"), const("P"), attrs
        )
    except ModelFormatError as exc:
        raise type(exc)(f"{node.label}: {exc}") from exc
    layout = int(attrs.get("layout", 0))
    if layout not in (0, 1):
        raise ModelFormatError(f"node {node.name!r}: layout must be 0 or 1, got {layout}")

    inputs: dict[str, str] = {}
    constants: dict[str, np.ndarray] = {}
    for role in ("X", "sequence_lens", "initial_h", "initial_c"):
        name = named.get(role)
        if name is None:
            continue
        key = "x" if role == "X" else role
        if name in consts:
            if role == "X":
                raise UnsupportedModelError(f"node {node.name!r}: X is a constant")
            constants[key] = consts[name]
        elif name in graph_inputs:
            inputs[key] = name
        else:
            raise ModelFormatError(
                f"node {node.name!r}: input {name!r} is neither a graph input nor a constant"
            )
    if "x" not in inputs:
        raise ModelFormatError(f"node {node.name!r} has no X input")
    graph_outputs = set(graph.output_names)
    outputs: dict[str, str] = {}
    for role, name in zip(OUTPUT_ROLES[cell], node.outputs):
        if name and name in graph_outputs:
            outputs[role] = name
    if not outputs:
        raise ModelFormatError(f"node {node.name!r}: none of its outputs is a graph output")
    for role, name in weight_inputs.items():
        inputs[role] = name
    node_attributes = {
        "cell": cell,
        "hidden_size": attrs.get("hidden_size"),
        "direction": attrs.get("direction") or "forward",
        "activations": attrs.get("activations"),
        "activation_alpha": attrs.get("activation_alpha"),
        "activation_beta": attrs.get("activation_beta"),
        "clip": attrs.get("clip"),
        "input_forget": attrs.get("input_forget", 0),
        "linear_before_reset": attrs.get("linear_before_reset", 0),
    }
    sig = Signature(
        "onnx_node",
        layout,
        inputs,
        outputs,
        constants,
        weight_inputs=weight_inputs,
        node_attributes=node_attributes if weight_inputs else {},
    )
    return ModelSpec([layer], sig, source="onnx")


def _static_shape(graph: Graph, name: str, node: Node) -> tuple[int, ...]:
    """The fully static declared shape of graph input ``name``."""
    declared = {v.name: v.type.shape for v in graph.inputs}.get(name)
    if declared and all(isinstance(d, int) for d in declared):
        shape = tuple(int(d) for d in declared)
        count = 1
        for d in shape:
            count *= d
        if count > MAX_PLACEHOLDER_ELEMENTS:
            raise UnsupportedModelError(
                f"{node.label}: weight input {name!r} declares shape {shape} ({count} "
                f"elements; at most {MAX_PLACEHOLDER_ELEMENTS})"
            )
        return shape
    raise UnsupportedModelError(
        f"{node.label}: weight input {name!r} is fed at run time but its declared shape is "
        "not fully static"
    )


def is_single_node(graph: Graph) -> bool:
    """Whether the graph is one RNN/LSTM/GRU node and nothing else.

    Parameters
    ----------
    graph : Graph

    Returns
    -------
    bool
    """
    nodes = graph.nodes
    return len(nodes) == 1 and nodes[0].op in RECURRENT_OPS


def stack_spec(graph: Graph) -> ModelSpec:
    """The pass that recognises a recurrent stack in a model graph: its ModelSpec, which runs
    on the fused path (:class:`~lstm_infer.model.Model`).

    A graph of one recurrent node maps onto the operator's own tensors ("onnx_node"
    signature: its optional inputs that are graph inputs stay inputs of ``run``, weights fed
    at run time included); any other graph (what exporters write: embedding, stacked layers,
    layout glue, a dense head) is read by
    :func:`lstm_infer.importers.onnx.stack.lower_graph`.

    Parameters
    ----------
    graph : Graph
        As the importer produced it, before the compiler's passes.

    Returns
    -------
    ModelSpec

    Raises
    ------
    UnsupportedModelError
        Naming the node, its op type and why, for what is no recurrent stack (the graph then
        runs node for node, :class:`~lstm_infer.graph_model.GraphModel`).
    ModelFormatError
        For a malformed model.
    """
    if is_single_node(graph):
        return import_single_node(graph)
    return lower_graph(graph)


def import_onnx(source: Any) -> ModelSpec:
    """The ModelSpec of an ONNX model (path, bytes or ModelProto) that is a recurrent stack:
    the model graph (:func:`~lstm_infer.importers.onnx.lower.graph_from_onnx`) read by
    :func:`stack_spec`.

    Raises UnsupportedModelError naming the node, its op type and why for what is no
    recurrent stack, ModelFormatError for a malformed model.
    """
    return stack_spec(graph_from_onnx(load_onnx_proto(source)))
