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

from typing import Any

import numpy as np

from lstm_infer._spec import ModelSpec
from lstm_infer.errors import ModelFormatError, UnsupportedModelError
from lstm_infer.graph import Graph, Node, ValueInfo, live_nodes
from lstm_infer.importers.onnx import ops_dense, ops_layout, ops_recurrent
from lstm_infer.importers.onnx.assemble import Assembly
from lstm_infer.importers.onnx.base import Handler
from lstm_infer.importers.onnx.ops_dense import DenseOps
from lstm_infer.importers.onnx.ops_layout import LayoutOps
from lstm_infer.importers.onnx.ops_recurrent import RecurrentOps
from lstm_infer.importers.onnx.values import (
    Const,
    Dim,
    InputStage,
    Roles,
    Seq,
    Tokens,
    _is_symbolic,
    _label,
    _Unsupported,
)
from lstm_infer.ops.recurrent import WEIGHT_FORMAT_ATTR

__all__ = ["OPS", "GraphLowering", "lower_graph"]

# Ops with subgraphs: a recurrent stack has none (the graph runs them node for node).
CONTROL_FLOW = ("If", "Loop", "Scan")
# Inputs each handled operator needs (the graph's ops have the newest opset's forms: the ONNX
# lowering rewrote older ones once, so no handler looks at an opset).
MIN_INPUTS = {
    **dict.fromkeys(
        ("Identity", "Dropout", "Cast", "Shape", "Size", "ConstantOfShape", "Transpose"), 1
    ),
    **dict.fromkeys(("Squeeze", "Flatten", "Concat", "Split", "Relu", "Tanh", "Sigmoid"), 1),
    **dict.fromkeys(("Softmax", "LogSoftmax"), 1),
    **dict.fromkeys(("Expand", "Reshape", "Gather", "Add", "Sub", "Mul", "Div"), 2),
    **dict.fromkeys(("MatMul", "Gemm"), 2),
    **dict.fromkeys(("RNN", "LSTM", "GRU", "Slice"), 3),
    "Unsqueeze": 2,
}
REQUIRED_ATTRIBUTES = {"Cast": ("to",), "Concat": ("axis",)}
# Every op the lowering interprets, by op type: the op families' tables merged. Any other op
# is evaluated when all its inputs are constants, and refused otherwise.
OPS: dict[str, Handler] = {**ops_layout.OPS, **ops_dense.OPS, **ops_recurrent.OPS}


class GraphLowering(LayoutOps, DenseOps, RecurrentOps, Assembly):
    """Interpret one model graph and assemble its ModelSpec (see the module docstring)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.roles = Roles()
        self.values: dict[str, Any] = {}
        self.producer: dict[str, Any] = {}
        self.input_stages: dict[str, InputStage] = {}
        self.unused_inputs: list[str] = []  # graph inputs no output depends on

    # ---- entry -----------------------------------------------------------------------------

    def lower(self) -> ModelSpec:
        needed = live_nodes(self.graph.nodes, self.graph.output_names)
        wanted = {i for n in needed for i in n.inputs} | set(self.graph.output_names)
        for name, value in self.graph.initializers.items():
            if name in wanted:
                self.values[name] = Const(value)
        for vi in self.graph.inputs:
            if vi.name not in wanted:
                self.unused_inputs.append(vi.name)
                continue
            self.values[vi.name] = self._input_value(vi)
        for node in needed:
            self._visit(node)
        return self._assemble()

    def _input_value(self, vi: ValueInfo) -> Any:
        shape = vi.type.shape or ()
        dims: list[Any] = [
            d if isinstance(d, int) else Dim.named(d if d is not None else f"{vi.name}:{k}")
            for k, d in enumerate(shape)
        ]
        try:
            dtype = np.dtype(vi.type.dtype)
        except TypeError:  # "undefined" and other names numpy does not know: reported below
            dtype = np.dtype(object)
        where = f"graph input {vi.name!r}"
        if vi.type.sequence:
            raise UnsupportedModelError(f"{where}: is a sequence of tensors")
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

    def _visit(self, node: Node) -> None:
        handler = OPS.get(node.op)
        ins = [self.values[i] if i else None for i in node.inputs]
        label = _label(node)
        self._check_arity(node, ins, label)
        try:
            if node.attrs.get(WEIGHT_FORMAT_ATTR):
                raise _Unsupported(
                    "quantized recurrent weights run node for node, not on the stack's path"
                )
            if handler is None:
                if (
                    ins
                    and all(v is None or isinstance(v, Const) for v in ins)
                    and not any(v is not None and _is_symbolic(v.value) for v in ins)
                ):
                    outs = self._fold(node, ins)
                else:
                    raise _Unsupported(
                        "this operator is not supported on the data path of a recurrent model"
                    )
            else:
                outs = handler(self, node, ins, node.attrs)
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
        for name, value in zip(node.outputs, outs):
            if name:
                self.values[name] = value
                self.producer[name] = node
        for name in node.outputs[len(outs) :]:
            if name:
                self.values[name] = None
                self.producer[name] = node

    def _check_arity(self, node: Node, ins: list[Any], label: str) -> None:
        """Refuse a node missing the inputs or attributes its operator requires."""
        if node.op in CONTROL_FLOW:
            raise UnsupportedModelError(
                f"{label}: control flow (subgraphs) is not supported in a recurrent model"
            )
        need = MIN_INPUTS.get(node.op, 0)
        present = [v for v in ins[:need] if v is not None]
        if len(present) < need:
            raise ModelFormatError(f"{label}: takes at least {need} input(s), got {len(present)}")
        missing = [a for a in REQUIRED_ATTRIBUTES.get(node.op, ()) if a not in node.attrs]
        if missing:
            raise ModelFormatError(f"{label}: lacks the required attribute(s) {missing}")


def lower_graph(graph: Graph) -> ModelSpec:
    """The ModelSpec of a model graph that is a recurrent stack (the fused path's pass).

    Parameters
    ----------
    graph : Graph
        A graph as an importer produced it (before the compiler's passes), e.g. by
        :func:`~lstm_infer.importers.onnx.lower.graph_from_onnx`.

    Returns
    -------
    ModelSpec
        The plan: embedding, recurrent layers, dense head, and the signature naming the graph's
        inputs and outputs.

    Raises
    ------
    UnsupportedModelError
        Naming the node, its op type and why, when part of the graph has no place in the plan
        (the graph then runs node for node).
    ModelFormatError
        When the graph is malformed (e.g. a wrong-shaped initializer).
    """
    return GraphLowering(graph).lower()
