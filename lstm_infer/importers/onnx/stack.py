"""Lower the ONNX graphs that exporters write into the engine's plan (a ModelSpec).

``torch.onnx.export`` surrounds its recurrent nodes with glue: an embedding ``Gather``,
``Transpose``/``Reshape``/``Squeeze`` between layers, ``Slice`` of the initial state per layer,
``Shape``-driven arithmetic that builds zero states and reshape targets, ``MatMul``/``Add``
for a ``Linear`` head and an activation. The dynamo exporter (``dynamo=True``) emits the same
LSTM/GRU nodes, but unrolls ``nn.RNN`` over time into per-step ``MatMul``/``Add``/``Tanh``.

Lowering is an abstract interpretation of the graph, once, at load time. Nodes are visited in
topological order (only those the graph outputs depend on) and every tensor gets an abstract
value saying what it is:

- ``Const``: a known array (initializers, folded constant subgraphs, shape vectors whose
  entries may be symbolic :class:`Dim` such as the batch size);
- ``Fill``: a tensor filled with one value, of possibly symbolic shape (a zero state);
- ``Tokens`` / ``Seq``: the token input, or a sequence at some stage of the plan (the float
  input, embedding, recurrent layer k, dense layer), whose axes carry *roles* (time, batch,
  directions, features...) so layout ops just move roles around;
- the pieces of an unrolled RNN (``RecProd``, ``PreAct``, ``Hidden``) and final states.

The graph outputs then name a chain of stages that becomes the plan: embedding -> recurrent
layers -> dense head (+ activation). Anything the interpreter cannot place raises
:class:`~lstm_infer.errors.UnsupportedModelError` naming the node, its op type and why.

The walker is :class:`GraphLowering` (this module: visiting nodes in order, graph inputs,
arity checks). It is composed of one mixin per concern, each in its own module: the op
families :mod:`~lstm_infer.importers.onnx.ops_layout`, :mod:`~lstm_infer.importers.onnx.ops_dense`
and :mod:`~lstm_infer.importers.onnx.ops_recurrent` (each with an ``OPS`` table: op type ->
handler, merged here into :data:`OPS`, through which nodes are dispatched), the unrolled-RNN
recognition (:mod:`~lstm_infer.importers.onnx.unrolled`) and the assembly of the ModelSpec
(:mod:`~lstm_infer.importers.onnx.assemble`); the values they share are in
:mod:`~lstm_infer.importers.onnx.values` and the lowering's state in
:mod:`~lstm_infer.importers.onnx.base`.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

from lstm_infer._spec import ModelSpec
from lstm_infer.errors import ModelFormatError, UnsupportedModelError
from lstm_infer.importers.onnx import ops_dense, ops_layout, ops_recurrent
from lstm_infer.importers.onnx.assemble import Assembly
from lstm_infer.importers.onnx.base import Handler
from lstm_infer.importers.onnx.ops_dense import DenseOps
from lstm_infer.importers.onnx.ops_layout import LayoutOps
from lstm_infer.importers.onnx.ops_recurrent import RecurrentOps
from lstm_infer.importers.onnx.proto import tensor_to_numpy
from lstm_infer.importers.onnx.values import (
    Const,
    Dim,
    InputStage,
    Roles,
    Seq,
    Tokens,
    _attrs,
    _is_symbolic,
    _Unsupported,
)

__all__ = ["MIN_OPSET", "OPS", "GraphLowering", "lower_graph"]

MIN_OPSET = 7
# Inputs each handled operator needs (opset-dependent ones at their newest arity).
MIN_INPUTS = {
    **dict.fromkeys(
        ("Identity", "Dropout", "Cast", "Shape", "Size", "ConstantOfShape", "Transpose"), 1
    ),
    **dict.fromkeys(("Squeeze", "Flatten", "Concat", "Split", "Relu", "Tanh", "Sigmoid"), 1),
    **dict.fromkeys(("Softmax", "LogSoftmax"), 1),
    **dict.fromkeys(("Expand", "Reshape", "Gather", "Add", "Sub", "Mul", "Div"), 2),
    **dict.fromkeys(("MatMul", "Gemm"), 2),
    **dict.fromkeys(("RNN", "LSTM", "GRU"), 3),
}
REQUIRED_ATTRIBUTES = {"Cast": ("to",), "Concat": ("axis",)}
# Every op the lowering interprets, by op type: the op families' tables merged. Any other op
# is evaluated when all its inputs are constants, and refused otherwise.
OPS: dict[str, Handler] = {**ops_layout.OPS, **ops_dense.OPS, **ops_recurrent.OPS}


class GraphLowering(LayoutOps, DenseOps, RecurrentOps, Assembly):
    """Interpret one ONNX graph and assemble its ModelSpec (see the module docstring)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.graph = model.graph
        self.opset = 0
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                self.opset = int(imp.version)
        self.roles = Roles()
        self.values: dict[str, Any] = {}
        self.producer: dict[str, Any] = {}
        self.input_stages: dict[str, InputStage] = {}
        self.unused_inputs: list[str] = []  # graph inputs no output depends on

    # ---- entry -----------------------------------------------------------------------------

    def lower(self) -> ModelSpec:
        if not self.opset:
            raise ModelFormatError("the model imports no opset of the default ONNX domain")
        if self.opset < MIN_OPSET:
            raise UnsupportedModelError(
                f"opset {self.opset} is older than the oldest supported ({MIN_OPSET})"
            )
        needed = self._needed_nodes()
        wanted = {i for n in needed for i in n.input} | {o.name for o in self.graph.output}
        for t in self.graph.initializer:
            if t.name in wanted:  # others are never decoded (nor read from side files)
                self.values[t.name] = Const(tensor_to_numpy(t))
        used_inputs = {i for n in needed for i in n.input if i}
        used_inputs |= {o.name for o in self.graph.output}
        for vi in self.graph.input:
            if vi.name in self.values:
                continue
            if vi.name not in used_inputs:
                self.unused_inputs.append(vi.name)
                continue
            self.values[vi.name] = self._input_value(vi)
        for node in needed:
            self._visit(node)
        return self._assemble()

    def _needed_nodes(self) -> list[Any]:
        """Nodes the graph outputs depend on, in topological order."""
        by_output = {}
        for node in self.graph.node:
            for o in node.output:
                if o:
                    by_output[o] = node
        needed: dict[int, Any] = {}
        stack = [o.name for o in self.graph.output]
        seen: set[str] = set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            node = by_output.get(name)
            if node is None or id(node) in needed:
                continue
            needed[id(node)] = node
            stack.extend(i for i in node.input if i)
        # Kahn's algorithm, keeping the file's order among ready nodes.
        available = {t.name for t in self.graph.initializer} | {i.name for i in self.graph.input}
        nodes = [n for n in self.graph.node if id(n) in needed]
        waiting: dict[int, int] = {}
        consumers: dict[str, list[int]] = {}
        for k, n in enumerate(nodes):
            missing = {i for i in n.input if i and i not in available}
            waiting[k] = len(missing)
            for i in missing:
                consumers.setdefault(i, []).append(k)
        ready = [k for k, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        order: list[Any] = []
        while ready:
            k = heapq.heappop(ready)
            order.append(nodes[k])
            for o in nodes[k].output:
                for j in consumers.pop(o, []) if o else []:
                    waiting[j] -= 1
                    if waiting[j] == 0:
                        heapq.heappush(ready, j)
        if len(order) != len(nodes):
            done = {id(n) for n in order}
            n = next(n for n in nodes if id(n) not in done)
            produced = {o for m in order for o in m.output}
            missing = [i for i in n.input if i and i not in available and i not in produced]
            raise ModelFormatError(
                f"node {n.name!r} ({n.op_type}): input(s) {missing} are produced by no node "
                "(or the graph has a cycle)"
            )
        return order

    def _input_value(self, vi: Any) -> Any:
        from onnx import helper

        ttype = vi.type.tensor_type
        dims: list[Any] = []
        for k, d in enumerate(ttype.shape.dim):
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(Dim.named(d.dim_param or f"{vi.name}:{k}"))
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        except Exception:  # noqa: BLE001 - unknown element types are reported below
            dtype = np.dtype(object)
        where = f"graph input {vi.name!r}"
        if dtype.kind in "iu":
            if len(dims) != 2:
                raise UnsupportedModelError(
                    f"{where}: integer inputs are token ids of shape (seq, batch) or (batch, "
                    f"seq); this one has rank {len(dims)}"
                )
            axes = tuple((self.roles.new("axis", d, vi.name),) for d in dims)
            return Tokens(vi.name, axes)
        if dtype.kind != "f":
            raise UnsupportedModelError(f"{where}: element type {dtype} is not supported")
        if len(dims) != 3:
            raise UnsupportedModelError(
                f"{where}: float inputs are sequences (seq, batch, features) or states "
                f"(layers, batch, hidden); this one has rank {len(dims)}"
            )
        stage = InputStage(None, (), name=vi.name)
        self.input_stages[vi.name] = stage
        axes = (
            (self.roles.new("axis", dims[0], vi.name),),
            (self.roles.new("axis", dims[1], vi.name),),
            (self.roles.new("feat", dims[2], vi.name),),
        )
        return Seq(stage, axes)

    def _visit(self, node: Any) -> None:
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedModelError(
                f"node {node.name!r} ({node.op_type}): operators of domain {node.domain!r} are "
                "not supported"
            )
        handler = OPS.get(node.op_type)
        ins = [self.values[i] if i else None for i in node.input]
        label = f"node {node.name!r} ({node.op_type})"
        self._check_arity(node, ins, label)
        try:
            if handler is None:
                if (
                    ins
                    and all(v is None or isinstance(v, Const) for v in ins)
                    and not any(v is not None and _is_symbolic(v.value) for v in ins)
                ):
                    outs = self._fold_with_reference(node, ins)
                else:
                    raise _Unsupported(
                        "this operator is not supported on the data path of a recurrent model"
                    )
            else:
                outs = handler(self, node, ins, _attrs(node))
        except _Unsupported as exc:
            raise UnsupportedModelError(f"{label}: {exc}") from None
        except ModelFormatError as exc:
            raise type(exc)(f"{label}: {exc}") from exc
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            # A node that contradicts its operator's definition (out-of-range indices,
            # inconsistent shapes...): the file is malformed.
            raise ModelFormatError(
                f"{label}: malformed node ({type(exc).__name__}: {exc})"
            ) from exc
        if not isinstance(outs, list):
            outs = [outs]
        for name, value in zip(node.output, outs):
            if name:
                self.values[name] = value
                self.producer[name] = node
        for name in node.output[len(outs) :]:
            if name:
                self.values[name] = None
                self.producer[name] = node

    def _check_arity(self, node: Any, ins: list[Any], label: str) -> None:
        """Refuse a node missing the inputs or attributes its operator requires."""
        need = MIN_INPUTS.get(node.op_type, 0)
        if node.op_type == "Slice" and self.opset >= 10:
            need = 3
        if node.op_type == "Unsqueeze" and self.opset >= 13:
            need = 2
        present = [v for v in ins[:need] if v is not None]
        if len(present) < need:
            raise ModelFormatError(f"{label}: takes at least {need} input(s), got {len(present)}")
        names = {a.name for a in node.attribute}
        required = REQUIRED_ATTRIBUTES.get(node.op_type, ())
        if node.op_type == "Slice" and self.opset < 10:
            required = ("starts", "ends")
        missing = [a for a in required if a not in names]
        if missing:
            raise ModelFormatError(f"{label}: lacks the required attribute(s) {missing}")
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            raise UnsupportedModelError(
                f"{label}: control flow (subgraphs) is not supported in a recurrent model"
            )


def lower_graph(model: Any) -> ModelSpec:
    """Lower an exported ONNX graph (a ModelProto, external data already loaded).

    Parameters
    ----------
    model : onnx.ModelProto
        The model, loaded by :func:`~lstm_infer.importers.onnx.proto.load_onnx_proto`; its
        local functions are inlined first.

    Returns
    -------
    ModelSpec
        The plan: embedding, recurrent layers, dense head, and the signature naming the graph's
        inputs and outputs.

    Raises
    ------
    UnsupportedModelError
        Naming the node, its op type and why, when part of the graph has no place in the plan.
    ModelFormatError
        When the graph is malformed (e.g. a wrong-shaped initializer).
    """
    if len(model.functions):
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    return GraphLowering(model).lower()
