"""The state of one stack lowering, and what every op family asks of it.

:class:`LoweringBase` declares what :class:`~lstm_infer.importers.onnx.stack.GraphLowering`
holds while it walks a graph (the abstract value of every tensor, the axis roles, the graph
inputs' stages) and answers the questions every op family asks: the dims of an abstract value,
the size of an axis role, the same value with its axes moved, and the evaluation of a node of
constants with onnx's reference implementation. The op families (``ops_*.py``), the unrolled
RNN recognition and the assembly are mixins over it; ``Handler`` is the type of the entries of
their ``OPS`` tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lstm_infer.importers.onnx.values import (
    Const,
    Data,
    Fill,
    FinalState,
    Hidden,
    InputStage,
    RecProd,
    Roles,
    Seq,
    Tokens,
    _check_elements,
    _dim_prod,
    _shape_elements,
    _Unsupported,
)

# An op handler: (lowering, node, abstract input values, decoded attributes) -> the abstract
# value of the node's output, or a list of them (one per output).
Handler = Callable[[Any, Any, list[Any], dict[str, Any]], Any]

# Constant operators whose output size depends on input values: sized before evaluation.
_VALUE_SIZED = {"Range", "Tile", "Pad", "OneHot", "Resize", "Upsample", "ConstantOfShape"}


class LoweringBase:
    """The lowering's state (set by ``GraphLowering.__init__``) and the queries on it."""

    model: Any
    graph: Any
    opset: int
    roles: Roles
    values: dict[str, Any]  # tensor name -> abstract value
    producer: dict[str, Any]  # tensor name -> the node that made it
    input_stages: dict[str, InputStage]
    unused_inputs: list[str]  # graph inputs no output depends on

    def _input_axis(self, stage: InputStage, k: int) -> str:
        """The role of axis ``k`` of a float graph input, as first created."""
        return self.values[stage.name].axes[k][0]

    # ---- constant folding ----------------------------------------------------------------------

    def _fold_with_reference(self, node: Any, ins: list[Any]) -> list[Const]:
        """Evaluate a node of constants with onnx's reference implementation."""
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        if node.op_type in _VALUE_SIZED:
            _check_elements(self._value_sized_elements(node, ins), f"its {node.op_type} output")
        names = [f"in{k}" if v is not None else "" for k, v in enumerate(ins)]
        outs = [f"out{k}" for k in range(len(node.output))]
        one = helper.make_node(node.op_type, names, outs, domain=node.domain)
        one.attribute.extend(node.attribute)
        try:
            ev = ReferenceEvaluator(one, opsets={"": self.opset})
            res = ev.run(None, {n: v.value for n, v in zip(names, ins) if n})
        except Exception as exc:  # noqa: BLE001 - reported as the node's error
            raise _Unsupported(f"cannot evaluate it on constants: {exc}") from exc
        outs = [Const(np.asarray(r)) for r in res]
        for out in outs:
            _check_elements(out.value.size, "its output")
        return outs

    def _value_sized_elements(self, node: Any, ins: list[Any]) -> int:
        """How many elements a Range/Tile/... of constants would make (before making them)."""
        values = [None if v is None else v.value for v in ins]
        if node.op_type == "Range" and len(values) >= 3 and None not in values[:3]:
            start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in values[:3])
            if delta == 0 or not np.isfinite([start, limit, delta]).all():
                raise _Unsupported("Range with a zero or non-finite step")
            return max(0, int(np.ceil((limit - start) / delta)))
        if node.op_type == "Tile" and len(values) >= 2 and None not in values[:2]:
            reps = [int(r) for r in np.asarray(values[1]).reshape(-1)]
            return int(np.asarray(values[0]).size) * int(np.prod([max(r, 0) for r in reps]))
        if node.op_type == "ConstantOfShape" and values and values[0] is not None:
            return _shape_elements(np.asarray(values[0]).reshape(-1).tolist())
        raise _Unsupported(f"{node.op_type} is not supported on constants")

    # ---- shapes ----------------------------------------------------------------------------

    def _role_size(self, v: Any, role: str) -> Any:
        for w in getattr(v, "windows", ()):
            if w.role == role:
                return w.stop - w.start
        size = self.roles.size_of(role)
        if size is None:
            raise _Unsupported(f"the size of axis role {role!r} is unknown")
        return size

    def _dims(self, v: Any) -> list[Any]:
        if isinstance(v, Const):
            return list(v.value.shape)
        if isinstance(v, Fill):
            return list(v.dims)
        if isinstance(v, Data):
            return [_dim_prod(self._role_size(v, r) for r in ax) for ax in v.axes]
        raise _Unsupported(f"cannot take the shape of {type(v).__name__}")

    def _with_axes(self, v: Any, axes: Sequence[tuple[str, ...]]) -> Any:
        axes = tuple(tuple(a) for a in axes)
        if isinstance(v, Seq):
            return Seq(v.stage, axes, v.windows, v.flipped)
        if isinstance(v, Tokens):
            return Tokens(v.name, axes)
        if isinstance(v, Hidden):
            return Hidden(v.cell, v.step, axes)
        if isinstance(v, RecProd):
            return RecProd(v.prev, v.weight, v.bias, axes)
        if isinstance(v, FinalState):
            return FinalState(v.cells, v.kind, axes)
        raise _Unsupported(f"cannot change the layout of {type(v).__name__}")

    def _unit_axis(self) -> tuple[str, ...]:
        return (self.roles.new("unit", 1),)
