"""Import ONNX models: one RNN/LSTM/GRU node, or the graphs exporters write around them.

A graph of one recurrent node: the node's weights (initializers, or Constant nodes) are
converted once into the internal model description; the node's optional inputs that are graph
inputs stay inputs of ``run``, and those that are initializers are baked in. Any other graph is
lowered into the same description by :mod:`lstm_infer.onnx_graph`. Output names are the
graph's own. External data (weights in side files) is read from the model's folder only.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lstm_infer._onnx_weights import (
    RECURRENT_ATTRIBUTES,
    RECURRENT_OPS,
    layer_from_node_attributes,
)
from lstm_infer._spec import ModelSpec, Signature
from lstm_infer.errors import MissingDependencyError, ModelFormatError, UnsupportedModelError

# Positions of the ONNX operator inputs.
INPUT_ROLES = {
    "rnn": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
    "lstm": ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"),
    "gru": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
}
OUTPUT_ROLES = {"rnn": ("y", "y_h"), "lstm": ("y", "y_h", "y_c"), "gru": ("y", "y_h")}
# The largest hidden size a layer may have (RecurrentLayer.validate's bound), checked on the
# node attributes before any weight is read or allocated.
MAX_HIDDEN_SIZE = 1 << 20
MAX_INPUT_SIZE = 1 << 20
# Weights fed at run time get a placeholder of their declared shape at load; bounded.
MAX_PLACEHOLDER_ELEMENTS = 1 << 28
# No tensor of a recurrent model comes near this; a larger external one is not read.
MAX_EXTERNAL_TENSOR_BYTES = 1 << 32
GATE_COUNT = {"rnn": 1, "lstm": 4, "gru": 3}


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - exercised only without onnx installed
        raise MissingDependencyError(
            "loading ONNX files needs the 'onnx' package: pip install 'lstm_infer[onnx]'"
        ) from exc
    return onnx


def load_onnx_proto(source: Any, base_dir: str | None = None) -> Any:
    """A ModelProto from a path, bytes or ModelProto; external data resolved safely."""
    onnx = _require_onnx()
    if isinstance(source, onnx.ModelProto):
        check_recurrent_attributes(source)
        # No folder to resolve side files against: refused if the proto still references
        # external data (rather than read relative to the working directory).
        _load_external_data(source, None)
        return source
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            model = onnx.load_model_from_string(bytes(source))
        else:
            path = os.fspath(source)
            model = onnx.load(path, load_external_data=False)
            base_dir = os.path.dirname(os.path.abspath(path))
    except (OSError, ValueError):
        raise
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelFormatError(f"not a valid ONNX model: {exc}") from exc
    check_recurrent_attributes(model)
    _load_external_data(model, base_dir)
    return model


def check_recurrent_attributes(model: Any) -> None:
    """Refuse absurd sizes on the recurrent nodes before any weight is read or allocated.

    Checks ``hidden_size`` and the declared dims of the W/R/B/P initializers kept in side
    files (the engine's bounds: hidden and input sizes up to 2**20), so that a side file of
    matching length is never read for an impossible layer. Initializers held in the model
    itself are checked, with the same rules, when the layer is built.
    """
    from onnx import helper
    from onnx.external_data_helper import uses_external_data

    inits = {t.name: t for t in model.graph.initializer if uses_external_data(t)}
    for node in model.graph.node:
        if node.op_type not in RECURRENT_OPS:
            continue
        label = f"node {node.name!r} ({node.op_type})"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        hidden = attrs.get("hidden_size")
        if hidden is not None and (
            not isinstance(hidden, int) or not 0 < hidden <= MAX_HIDDEN_SIZE
        ):
            raise ModelFormatError(
                f"{label}: hidden_size must be an int in [1, {MAX_HIDDEN_SIZE}], got {hidden!r}"
            )
        weights = {
            role: inits.get(node.input[pos]) if len(node.input) > pos else None
            for role, pos in (("W", 1), ("R", 2), ("B", 3), ("P", 7))
        }
        w = weights["W"]
        if w is not None and len(w.dims) == 3 and not 0 < w.dims[2] <= MAX_INPUT_SIZE:
            raise ModelFormatError(
                f"{label}: W has shape {list(w.dims)}; input_size must be in [1, {MAX_INPUT_SIZE}]"
            )
        if hidden is None:
            r = weights["R"]
            hidden = int(r.dims[-1]) if r is not None and len(r.dims) == 3 else None
            if hidden is not None and not 0 < hidden <= MAX_HIDDEN_SIZE:
                raise ModelFormatError(f"{label}: R has shape {list(r.dims)}")
        if hidden is None:
            continue
        direction = attrs.get("direction", b"forward")
        D = 2 if direction in (b"bidirectional", "bidirectional") else 1
        G = GATE_COUNT[RECURRENT_OPS[node.op_type]]
        expected = {
            "W": (D, G * hidden, w.dims[2] if w is not None and len(w.dims) == 3 else None),
            "R": (D, G * hidden, hidden),
            "B": (D, 2 * G * hidden),
            "P": (D, 3 * hidden),
        }
        for role, tensor in weights.items():
            if tensor is None:
                continue
            want = expected[role]
            if tuple(tensor.dims) != tuple(want):
                raise ModelFormatError(
                    f"{label}: {role} initializer {tensor.name!r} has shape "
                    f"{list(tensor.dims)}; hidden_size={hidden} needs {list(want)}"
                )


def _load_external_data(model: Any, base_dir: str | None) -> None:
    """Read initializers stored in side files, refusing locations outside base_dir."""
    onnx = _require_onnx()
    from onnx.external_data_helper import uses_external_data

    # Initializers no node reads are never read (nor decoded later).
    used = used_tensor_names(model.graph)
    tensors = [
        t
        for t in _all_initializers(model.graph)
        if uses_external_data(t) and (t.name in used or not t.name)
    ]
    if not tensors:
        return
    if base_dir is None:
        raise ModelFormatError(
            "this model keeps weights in external data files; load it from its path so the "
            "files can be found"
        )
    root = os.path.realpath(base_dir)
    for t in tensors:
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        full = os.path.realpath(os.path.join(root, location))
        if os.path.isabs(location) or os.path.commonpath([root, full]) != root:
            raise ModelFormatError(
                f"initializer {t.name!r}: external data location {location!r} points outside "
                "the model's folder; refused"
            )
        if not os.path.isfile(full):
            raise ModelFormatError(
                f"initializer {t.name!r}: external data file {location!r} is missing"
            )
        offset = int(info.get("offset", 0) or 0)
        length = info.get("length")
        size = os.path.getsize(full)
        n = size - offset if length is None else int(length)
        if offset < 0 or n < 0 or offset + n > size:
            raise ModelFormatError(
                f"initializer {t.name!r}: external data range [{offset}, {offset + n}) exceeds "
                f"the {size}-byte file {location!r}"
            )
        if n > MAX_EXTERNAL_TENSOR_BYTES:
            raise ModelFormatError(
                f"initializer {t.name!r}: {n} bytes of external data; tensors over "
                f"{MAX_EXTERNAL_TENSOR_BYTES} bytes are refused"
            )
        expected = _tensor_bytes(t)
        if expected is not None and n != expected:
            raise ModelFormatError(
                f"initializer {t.name!r}: external data holds {n} bytes; its shape "
                f"{list(t.dims)} needs {expected}"
            )
        with open(full, "rb") as fh:
            fh.seek(offset)
            t.raw_data = fh.read(n)
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def _tensor_bytes(tensor: Any) -> int | None:
    """Bytes a tensor's dims and type need, or None for types without a fixed size."""
    from onnx import helper

    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # noqa: BLE001 - string, 4-bit and unknown types: not checked
        return None
    count = 1
    for d in tensor.dims:
        count *= int(d)
    return count * itemsize


def used_tensor_names(graph: Any, depth: int = 0) -> set[str]:
    """Names some node reads (in subgraphs too: a branch may read the outer initializers),
    or the graph outputs or declares as an input."""
    names = {i for node in graph.node for i in node.input if i}
    names |= {o.name for o in graph.output} | {i.name for i in graph.input}
    if depth < 16:
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    names |= used_tensor_names(attr.g, depth + 1)
    return names


def _all_initializers(graph: Any) -> list[Any]:
    out = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                out.append(attr.t)
    return out


def tensor_to_numpy(tensor: Any, keep_float_types: bool = False) -> np.ndarray:
    """An ONNX TensorProto as a numpy array; floating types become float32 (the recurrent
    stack's weights), or with ``keep_float_types`` only bfloat16 does (a graph computes in
    its tensors' own float16/float64)."""
    from onnx import TensorProto, numpy_helper

    if not isinstance(tensor, TensorProto):
        raise ModelFormatError(f"expected a tensor, got {type(tensor).__name__}")
    try:
        arr = numpy_helper.to_array(tensor)
    except Exception as exc:
        raise ModelFormatError(f"tensor {tensor.name!r} cannot be decoded: {exc}") from exc
    if arr.dtype.name == "bfloat16" or (arr.dtype.kind == "f" and not keep_float_types):
        arr = arr.astype(np.float32)
    return arr


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
    """Lower a graph made of one RNN/LSTM/GRU node (plus Constants) to a ModelSpec."""
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
    """Whether the graph is one RNN/LSTM/GRU node (plus Constant nodes) and nothing else."""
    nodes = [n for n in model.graph.node if n.op_type != "Constant"]
    return len(nodes) == 1 and nodes[0].op_type in RECURRENT_OPS


def import_onnx(source: Any) -> ModelSpec:
    """Load and lower an ONNX model (path, bytes or ModelProto).

    A graph of one recurrent node maps onto the operator's own tensors ("onnx_node"
    signature); any other graph (what exporters write: embedding, stacked layers, layout
    glue, a dense head) is lowered by :func:`lstm_infer.onnx_graph.lower_graph`.
    """
    model = load_onnx_proto(source)
    if is_single_node(model):
        return import_single_node(model)
    from lstm_infer.onnx_graph import lower_graph

    return lower_graph(model)
