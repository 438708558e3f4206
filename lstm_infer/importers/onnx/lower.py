"""An ONNX ModelProto as a model graph, node for node.

The proto is loaded and checked by :func:`lstm_infer.importers.onnx.proto.load_onnx_proto`
(external data read only from the model's folder, sizes checked before reading). Initializers
and Constant nodes become the graph's constants; every other node becomes a graph node of the
same op, its attributes decoded to Python values and its older-opset forms rewritten once into
the newest opset's (attributes that became inputs, Softmax's old flattening axis), so the op
registry implements one semantics per op. If's branches and the bodies of Loop and Scan are
lowered the same way, as graphs of their own. Anything the registry does not know, or a node
of another domain, raises UnsupportedModelError naming the node, before anything is
compiled.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer.errors import ModelFormatError, UnsupportedModelError
from lstm_infer.graph import Graph, Node, TensorType, ValueInfo, topological_order
from lstm_infer.importers.onnx.proto import listed_constant, tensor_to_numpy, used_tensor_names
from lstm_infer.ops import get_op

# ONNX TensorProto element types -> numpy dtype names of the graph.
ELEM_TYPES = {
    1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
    10: "float16", 11: "float64", 16: "float32",  # bfloat16 tensors are read as float32
}  # fmt: skip


def _tensor_type(value_info: Any) -> TensorType:
    """The declared type of a graph value: a tensor's, or (``sequence=True``) the tensors' of
    a sequence of tensors."""
    t = value_info.type
    sequence = t.HasField("sequence_type")
    if sequence:
        t = t.sequence_type.elem_type
        if not t.HasField("tensor_type") and t.WhichOneof("value") is None:
            return TensorType("undefined", None, sequence=True)  # elements not declared
    if not t.HasField("tensor_type"):
        raise UnsupportedModelError(
            f"graph value {value_info.name!r} is not a tensor or a sequence of tensors (maps, "
            "optionals and nested sequences are not supported)"
        )
    tt = t.tensor_type
    dtype = "undefined" if tt.elem_type == 0 and not tt.HasField("shape") else None
    dtype = dtype or ELEM_TYPES.get(tt.elem_type)
    if dtype is None:
        raise UnsupportedModelError(
            f"graph value {value_info.name!r} has unsupported element type {tt.elem_type}"
        )
    if not tt.HasField("shape"):
        return TensorType(dtype, None, sequence=sequence)
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(str(d.dim_param))
        else:
            dims.append(None)
    return TensorType(dtype, tuple(dims), sequence=sequence)


def _attributes(node: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The node's attributes as Python values (``skip``: names lowered by the caller)."""
    from onnx import AttributeProto, helper

    out: dict[str, Any] = {}
    for a in node.attribute:
        if a.name in skip:
            continue
        if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            raise UnsupportedModelError(
                f"node {node.name or '<unnamed>'!r} ({node.op_type}): subgraph attribute "
                f"{a.name!r} (control flow is not supported yet)"
            )
        if a.type == AttributeProto.TENSOR:
            out[a.name] = tensor_to_numpy(a.t, keep_float_types=True)
            continue
        try:
            v = helper.get_attribute_value(a)
        except Exception as exc:  # an attribute whose type field says nothing it holds
            raise ModelFormatError(
                f"node {node.name or '<unnamed>'!r} ({node.op_type}): attribute {a.name!r} "
                f"cannot be read: {exc}"
            ) from None
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, list):
            v = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


class _Rewriter:
    """Older-opset forms -> the newest opset's, adding constant inputs where attributes moved."""

    def __init__(self, opset: int, consts: dict[str, np.ndarray]) -> None:
        self.opset = opset
        self.consts = consts
        self.count = 0

    def const(self, node: Node, value: Any, dtype: Any = np.int64) -> str:
        self.count += 1
        name = f"__lstm_infer_{node.name or node.op}_{self.count}"
        self.consts[name] = np.asarray(value, dtype=dtype)
        return name

    def attr_to_input(self, node: Node, key: str, pos: int, dtype: Any = np.int64) -> None:
        if key in node.attrs:
            value = node.attrs.pop(key)
            while len(node.inputs) < pos:
                node.inputs.append("")
            node.inputs.insert(pos, self.const(node, value, dtype))

    def rewrite(self, node: Node) -> list[Node]:
        op, v = node.op, self.opset
        if op in ("Squeeze", "Unsqueeze") and v < 13:
            self.attr_to_input(node, "axes", 1)
        elif op == "Split" and v < 13:
            self.attr_to_input(node, "split", 1)
        elif op.startswith("Reduce") and v < 18:  # (ReduceSum moved axes at 13, the rest at 18)
            self.attr_to_input(node, "axes", 1)
        elif op == "Slice" and v < 10:
            starts = node.attrs.pop("starts", None)
            ends = node.attrs.pop("ends", None)
            axes = node.attrs.pop("axes", None)
            if starts is None or ends is None:
                raise ModelFormatError(f"{node.label}: opset {v} Slice needs starts and ends")
            node.inputs = [node.inputs[0], self.const(node, starts), self.const(node, ends)]
            if axes is not None:
                node.inputs.append(self.const(node, axes))
        elif op == "Pad" and v < 11:
            pads = node.attrs.pop("pads", node.attrs.pop("paddings", None))
            value = node.attrs.pop("value", 0.0)
            node.inputs = [node.inputs[0], self.const(node, pads)]
            node.inputs.append(self.const(node, value, np.float32))
        elif op == "Clip" and v < 11:
            lo, hi = node.attrs.pop("min", None), node.attrs.pop("max", None)
            node.inputs = [
                node.inputs[0],
                "" if lo is None else self.const(node, lo, np.float32),
                "" if hi is None else self.const(node, hi, np.float32),
            ]
        elif op in ("Softmax", "LogSoftmax", "Hardmax") and v < 13:
            return self._legacy_softmax(node)
        elif op == "Dropout":
            node.attrs.pop("ratio", None)
            node.attrs.pop("is_test", None)
        elif op in ("BatchNormalization",) and v < 9:
            node.attrs.pop("spatial", None)
            node.attrs.pop("is_test", None)
            node.attrs.pop("consumed_inputs", None)
        elif op == "Upsample":
            raise UnsupportedModelError(f"{node.label}: Upsample is not supported")
        return [node]

    def _legacy_softmax(self, node: Node) -> list[Node]:
        """Opset < 13: softmax over the flattened trailing dims from ``axis`` (default 1):
        Flatten(axis) -> op(axis=-1) -> Reshape back to the input's shape."""
        axis = node.attrs.pop("axis", 1)
        x, y = node.inputs[0], node.outputs[0]
        flat, soft, shape = (f"__lstm_infer_{node.name or node.op}_{s}" for s in "fsh")
        return [
            Node("Flatten", [x], [flat], {"axis": axis}, name=f"{node.name}/flatten"),
            Node(node.op, [flat], [soft], {"axis": -1}, name=node.name),
            Node("Shape", [x], [shape], {}, name=f"{node.name}/shape"),
            Node("Reshape", [soft, shape], [y], {}, name=f"{node.name}/reshape"),
        ]


# How deeply If branches may nest (silero-vad's files nest four levels).
MAX_SUBGRAPH_DEPTH = 16


def graph_from_onnx(model: Any) -> Graph:
    """The model graph of a loaded, checked ONNX ModelProto.

    The model's local functions (which exporters write for submodules) are inlined first.

    Raises UnsupportedModelError (naming the node, its op type and why) for anything the op
    registry cannot run, ModelFormatError for malformed graphs (cycles, undefined tensors).
    """
    if len(model.functions):
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    used = used_tensor_names(g)
    consts: dict[str, np.ndarray] = {
        t.name: tensor_to_numpy(t, keep_float_types=True) for t in g.initializer if t.name in used
    }
    nodes = _lower_nodes(g, opset, consts, 0)
    inputs = [ValueInfo(v.name, _tensor_type(v)) for v in g.input if v.name not in consts]
    for v in inputs:
        if v.type.dtype == "undefined" and not v.type.sequence:  # (GraphModel refuses those)
            raise UnsupportedModelError(f"graph input {v.name!r} declares no element type")
    outputs = [ValueInfo(v.name, _tensor_type(v)) for v in g.output]
    ordered = topological_order(nodes, [v.name for v in inputs] + list(consts))
    value_types = {}
    for v in g.value_info:
        try:
            t = _tensor_type(v)
        except UnsupportedModelError:
            continue
        if not t.sequence:  # (the passes read these as tensor shapes; sequences are inferred)
            value_types[v.name] = t
    if not outputs:
        raise ModelFormatError("the ONNX graph has no outputs (an empty or truncated model?)")
    graph = Graph(inputs, outputs, ordered, consts, value_types)
    graph.validate()
    return graph


def _lower_nodes(g: Any, opset: int, consts: dict[str, np.ndarray], depth: int) -> list[Node]:
    """The nodes of ONNX graph ``g`` (Constant nodes go into ``consts``)."""
    rewriter = _Rewriter(opset, consts)
    nodes: list[Node] = []
    for i, n in enumerate(g.node):
        label = f"node {n.name or f'#{i}'!r} ({n.op_type})"
        if n.domain == "com.microsoft" and n.op_type == "DynamicQuantizeLSTM":
            node = _lower_dynamic_quantize_lstm(n, label, consts, name=n.name or f"#{i}")
        elif n.domain not in ("", "ai.onnx"):
            raise UnsupportedModelError(f"{label}: domain {n.domain!r} is not supported")
        elif n.op_type == "If":
            node = _lower_if(n, label, opset, depth, name=n.name or f"#{i}")
        elif n.op_type == "Loop":
            node = _lower_loop(n, label, opset, depth, name=n.name or f"#{i}")
        elif n.op_type == "Scan":
            node = _lower_scan(n, label, opset, depth, name=n.name or f"#{i}")
        else:
            attrs = _attributes(n)
            if n.op_type == "Constant":
                consts[n.output[0]] = _constant_value(label, attrs)
                continue
            node = Node(n.op_type, list(n.input), list(n.output), attrs, name=n.name or f"#{i}")
        get_op(node.op, node)  # refuse unknown ops before any work
        nodes.extend(rewriter.rewrite(node))
    return nodes


def _lower_if(n: Any, label: str, opset: int, depth: int, name: str) -> Node:
    """An If node: both branches lowered, their outer tensors listed after ``cond`` in one
    order both branches declare as their inputs (see lstm_infer.ops.control)."""
    from onnx import AttributeProto

    branches: dict[str, Graph] = {}
    for a in n.attribute:
        if a.name not in ("then_branch", "else_branch") or a.type != AttributeProto.GRAPH:
            raise ModelFormatError(f"{label}: unexpected attribute {a.name!r}")
        branches[a.name] = _lower_subgraph(a.g, opset, depth + 1, f"{label} {a.name}")
    if len(branches) != 2 or len(n.input) != 1:
        raise ModelFormatError(f"{label}: If takes one cond input and both branches")
    outer: list[str] = []
    for branch in branches.values():
        outer += [v.name for v in branch.inputs if v.name not in outer]
    for branch in branches.values():
        branch.inputs = [ValueInfo(o, TensorType("undefined")) for o in outer]
    return Node("If", [n.input[0], *outer], list(n.output), dict(branches), name=name)


def _dequantized_gates(
    label: str, role: str, q: Any, scale: Any, zero: Any, directions: int
) -> np.ndarray:
    """DynamicQuantizeLSTM's [D, K, 4H] integer W or R as the LSTM operator's [D, 4H, K] float32
    weights: (q - zero) * scale per direction, or per direction and column."""
    if q is None or scale is None:
        raise UnsupportedModelError(f"{label}: {role} and its scale must be constants")
    q = np.asarray(q)
    if q.dtype not in (np.int8, np.uint8) or q.ndim != 3 or q.shape[0] != directions:
        raise ModelFormatError(f"{label}: {role} must be int8/uint8 [D, K, 4H], got {q.dtype} "
                               f"{q.shape}")  # fmt: skip
    cols = q.shape[2]

    def per(v: Any, what: str) -> np.ndarray:
        v = np.asarray(v, np.float32)
        if v.size == directions:
            return v.reshape(directions, 1, 1)
        if v.shape == (directions, cols):
            return v.reshape(directions, 1, cols)
        raise ModelFormatError(f"{label}: {what} of shape {v.shape} for {role} {q.shape}")

    s = per(scale, f"{role}_scale")
    z = per(zero, f"{role}_zero_point") if zero is not None else np.float32(0)
    w = (q.astype(np.float32) - z) * s
    return np.ascontiguousarray(w.transpose(0, 2, 1))


def _lower_dynamic_quantize_lstm(n: Any, label: str, consts: dict, name: str) -> Node:
    """com.microsoft.DynamicQuantizeLSTM (what onnxruntime's quantize_dynamic makes of an
    LSTM): its integer weights dequantized once into an LSTM node, which runs on the engine's
    int8 weights (re-quantized per output row: the same codes where onnxruntime's scales are
    per column, finer ones where one scale covers the tensor)."""
    ins = list(n.input) + [""] * (12 - len(n.input))
    if len(n.input) > 12:
        raise ModelFormatError(f"{label}: {len(n.input)} inputs, at most 12")
    attrs = _attributes(n)
    directions = 2 if attrs.get("direction") == "bidirectional" else 1

    def const(pos: int) -> Any:
        return consts.get(ins[pos]) if ins[pos] else None

    w_name, r_name = f"{name}/W_dequantized", f"{name}/R_dequantized"
    consts[w_name] = _dequantized_gates(label, "W", const(1), const(8), const(9), directions)
    consts[r_name] = _dequantized_gates(label, "R", const(2), const(10), const(11), directions)
    lstm_in = [ins[0], w_name, r_name, *ins[3:8]]
    while lstm_in and not lstm_in[-1]:
        lstm_in.pop()
    attrs["lstm_infer_weight_format"] = "int8"
    return Node("LSTM", lstm_in, list(n.output), attrs, name=name)


def _lower_loop(n: Any, label: str, opset: int, depth: int, name: str) -> Node:
    """A Loop node: its body lowered as a graph whose inputs are the body's own (iteration
    number, condition, the N loop-carried values) then the outer tensors it reads, which the
    node lists after its own inputs; ``lstm_infer_own_inputs`` = 2 + N (see
    lstm_infer.ops.control)."""
    from onnx import AttributeProto

    if len(n.attribute) != 1 or n.attribute[0].name != "body":
        raise ModelFormatError(f"{label}: Loop takes exactly one attribute, the 'body' graph")
    if n.attribute[0].type != AttributeProto.GRAPH:
        raise ModelFormatError(f"{label}: attribute 'body' must be a graph")
    g = n.attribute[0].g
    if len(n.input) < 2:
        raise ModelFormatError(f"{label}: Loop takes M and cond (either may be empty) first")
    carried = len(n.input) - 2
    if len(g.input) != 2 + carried:
        raise ModelFormatError(
            f"{label}: the body declares {len(g.input)} inputs; with {carried} loop-carried "
            f"values it takes {2 + carried} (iteration number, condition, the carried values)"
        )
    if len(g.output) != 1 + len(n.output) or len(n.output) < carried:
        raise ModelFormatError(
            f"{label}: the body has {len(g.output)} outputs and the node {len(n.output)}; the "
            f"body returns the condition, the {carried} carried values, then the scan outputs"
        )
    body = _lower_subgraph(g, opset, depth + 1, f"{label} body", declared=list(g.input))
    outer = [v.name for v in body.inputs[2 + carried :]]
    attrs = {"body": body, "lstm_infer_own_inputs": len(n.input)}
    return Node("Loop", [*n.input, *outer], list(n.output), attrs, name=name)


def _lower_scan(n: Any, label: str, opset: int, depth: int, name: str) -> Node:
    """A Scan node (opset 9+): its body lowered as a graph whose inputs are the body's own
    (the N state values, then one slice of each of the M scanned inputs) then the outer
    tensors it reads, which the node lists after its own inputs; ``lstm_infer_own_inputs`` =
    N + M (see lstm_infer.ops.control)."""
    from onnx import AttributeProto

    if opset < 9:
        raise UnsupportedModelError(f"{label}: Scan before opset 9 (with sequence_lens)")
    attrs: dict[str, Any] = {}
    body_attr = None
    for a in n.attribute:
        if a.name == "body":
            if a.type != AttributeProto.GRAPH:
                raise ModelFormatError(f"{label}: attribute 'body' must be a graph")
            body_attr = a.g
        elif a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            raise ModelFormatError(f"{label}: unexpected graph attribute {a.name!r}")
    if body_attr is None:
        raise ModelFormatError(f"{label}: Scan needs its 'body' graph")
    attrs.update(_attributes(n, skip=("body",)))
    if len(g_in := body_attr.input) != len(n.input):
        raise ModelFormatError(
            f"{label}: the body declares {len(g_in)} inputs, the node has {len(n.input)} "
            "(the state values, then the scanned inputs)"
        )
    body = _lower_subgraph(body_attr, opset, depth + 1, f"{label} body", declared=list(g_in))
    outer = [v.name for v in body.inputs[len(n.input) :]]
    attrs.update(body=body, lstm_infer_own_inputs=len(n.input))
    return Node("Scan", [*n.input, *outer], list(n.output), attrs, name=name)


def _lower_subgraph(
    g: Any, opset: int, depth: int, label: str, declared: list | None = None
) -> Graph:
    """A branch or loop body as a graph whose inputs are its ``declared`` inputs (a Loop
    body's own; none for an If branch) then the outer tensors it reads (in order of first
    use)."""
    if depth > MAX_SUBGRAPH_DEPTH:
        raise ModelFormatError(f"{label}: subgraphs nest deeper than {MAX_SUBGRAPH_DEPTH} levels")
    consts = {t.name: tensor_to_numpy(t, keep_float_types=True) for t in g.initializer}
    nodes = _lower_nodes(g, opset, consts, depth)
    own = []
    for v in declared or []:
        try:
            own.append(ValueInfo(v.name, _tensor_type(v)))
        except UnsupportedModelError:
            own.append(ValueInfo(v.name, TensorType("undefined")))
    local = {o for node in nodes for o in node.outputs if o} | set(consts) | {v.name for v in own}
    outer: list[str] = []
    for name in [i for node in nodes for i in node.inputs] + [v.name for v in g.output]:
        if name and name not in local and name not in outer:
            outer.append(name)
    outputs = []
    for v in g.output:
        try:
            outputs.append(ValueInfo(v.name, _tensor_type(v)))
        except UnsupportedModelError:
            outputs.append(ValueInfo(v.name, TensorType("undefined")))
    if not outputs:
        raise ModelFormatError(f"{label}: the branch has no outputs")
    ordered = topological_order(nodes, [v.name for v in own] + outer + list(consts))
    inputs = own + [ValueInfo(o, TensorType("undefined")) for o in outer]
    return Graph(inputs, outputs, ordered, consts)


def _constant_value(label: str, attrs: dict[str, Any]) -> np.ndarray:
    if "value" in attrs:
        if not isinstance(attrs["value"], np.ndarray):
            raise ModelFormatError(f"{label}: Constant 'value' is not a tensor")
        return attrs["value"]
    value = listed_constant(attrs)
    if value is None:
        raise UnsupportedModelError(f"{label}: Constant with attributes {sorted(attrs)}")
    return value
