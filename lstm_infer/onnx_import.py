"""Import ONNX models: one RNN/LSTM/GRU node, or the graphs exporters write around them.

A graph of one recurrent node: the node's weights (initializers, or Constant nodes) are
converted once into the internal model description; the node's optional inputs that are graph
inputs stay inputs of ``run``, and those that are initializers are baked in. Any other graph is
lowered into the same description by :mod:`lstm_infer.importers.onnx.stack`. Output names are
the graph's own. Loading the proto (external data read from the model's folder only) and
decoding its tensors is :mod:`lstm_infer.importers.onnx.proto`; its names are re-exported here.
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


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constants(graph: Any) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs by name."""
    used = used_tensor_names(graph)
    values = {t.name: tensor_to_numpy(t) for t in graph.initializer if t.name in used}
    for node in graph.node:
        if node.op_type == "Constant":
            attrs = _attributes(node)
            if "value" not in attrs:
                raise UnsupportedModelError(
                    f"Constant node {node.name!r}: only the 'value' attribute is supported"
                )
            try:
                values[node.output[0]] = tensor_to_numpy(attrs["value"])
            except ModelFormatError as exc:
                raise ModelFormatError(f"Constant node {node.name!r}: 'value': {exc}") from exc
    return values


def import_single_node(model: Any) -> ModelSpec:
    """Lower a graph made of one RNN/LSTM/GRU node (plus Constants) to a ModelSpec.

    Parameters
    ----------
    model : onnx.ModelProto
        The model, loaded by :func:`load_onnx_proto` (see :func:`is_single_node`).

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
    graph = model.graph
    consts = _constants(graph)
    nodes = [n for n in graph.node if n.op_type != "Constant"]
    rec = [n for n in nodes if n.op_type in RECURRENT_OPS]
    if len(nodes) != 1 or len(rec) != 1:
        kinds = [f"{n.op_type} ({n.name or 'unnamed'})" for n in nodes]
        raise UnsupportedModelError(
            f"expected a graph with one RNN/LSTM/GRU node, found nodes: {kinds}"
        )
    node = rec[0]
    if node.domain not in ("", "ai.onnx"):
        raise UnsupportedModelError(f"node {node.name!r}: domain {node.domain!r} not supported")
    cell = RECURRENT_OPS[node.op_type]
    attrs = _attributes(node)
    unknown = set(attrs) - RECURRENT_ATTRIBUTES
    if unknown:
        raise UnsupportedModelError(
            f"node {node.name!r} ({node.op_type}): unsupported attribute(s) {sorted(unknown)}"
        )
    graph_inputs = {i.name for i in graph.input} - set(consts)
    roles = INPUT_ROLES[cell]
    named: dict[str, str] = {}
    for pos, name in enumerate(node.input):
        if name:
            if pos >= len(roles):
                raise ModelFormatError(
                    f"node {node.name!r} ({node.op_type}) has {len(node.input)} inputs; "
                    f"at most {len(roles)}"
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
            f"node {node.name!r} ({node.op_type}): {role} ({name!r}) is neither an "
            "initializer, a Constant nor a graph input"
        )

    for role in ("W", "R"):
        if role not in named:
            raise ModelFormatError(f"node {node.name!r} ({node.op_type}) has no {role} input")

    def decoded(key: str) -> Any:
        v = attrs.get(key)
        if isinstance(v, bytes):
            return v.decode()
        if isinstance(v, list):
            return [s.decode() if isinstance(s, bytes) else s for s in v]
        return v

    try:
        layer = layer_from_node_attributes(
            cell, const("W"), const("R"), const("B"), const("P"), attrs
        )
    except ModelFormatError as exc:
        raise type(exc)(f"node {node.name!r} ({node.op_type}): {exc}") from exc
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
    graph_outputs = {o.name for o in graph.output}
    outputs: dict[str, str] = {}
    for role, name in zip(OUTPUT_ROLES[cell], node.output):
        if name and name in graph_outputs:
            outputs[role] = name
    if not outputs:
        raise ModelFormatError(f"node {node.name!r}: none of its outputs is a graph output")
    for role, name in weight_inputs.items():
        inputs[role] = name
    node_attributes = {
        "cell": cell,
        "hidden_size": attrs.get("hidden_size"),
        "direction": decoded("direction") or "forward",
        "activations": decoded("activations"),
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


def _static_shape(graph: Any, name: str, node: Any) -> tuple[int, ...]:
    """The fully static declared shape of graph input ``name``."""
    for vi in graph.input:
        if vi.name == name:
            dims = vi.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                shape = tuple(int(d.dim_value) for d in dims)
                count = 1
                for d in shape:
                    count *= d
                if count > MAX_PLACEHOLDER_ELEMENTS:
                    raise UnsupportedModelError(
                        f"node {node.name!r} ({node.op_type}): weight input {name!r} declares "
                        f"shape {shape} ({count} elements; at most {MAX_PLACEHOLDER_ELEMENTS})"
                    )
                return shape
            break
    raise UnsupportedModelError(
        f"node {node.name!r} ({node.op_type}): weight input {name!r} is fed at run time but "
        "its declared shape is not fully static"
    )


def is_single_node(model: Any) -> bool:
    """Whether the graph is one RNN/LSTM/GRU node (plus Constant nodes) and nothing else.

    Parameters
    ----------
    model : onnx.ModelProto

    Returns
    -------
    bool
    """
    nodes = [n for n in model.graph.node if n.op_type != "Constant"]
    return len(nodes) == 1 and nodes[0].op_type in RECURRENT_OPS


def import_onnx(source: Any) -> ModelSpec:
    """Load and lower an ONNX model (path, bytes or ModelProto).

    A graph of one recurrent node maps onto the operator's own tensors ("onnx_node"
    signature); any other graph (what exporters write: embedding, stacked layers, layout
    glue, a dense head) is lowered by :func:`lstm_infer.importers.onnx.stack.lower_graph`.

    Parameters
    ----------
    source : str, os.PathLike, bytes or onnx.ModelProto
        The model (see :func:`load_onnx_proto`).

    Returns
    -------
    ModelSpec

    Raises
    ------
    UnsupportedModelError
        Naming the node, its op type and why, for what the recurrent stack cannot run.
    ModelFormatError
        For a malformed model.
    """
    model = load_onnx_proto(source)
    if is_single_node(model):
        return import_single_node(model)
    return lower_graph(model)
