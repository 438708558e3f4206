"""The state of one stack lowering, and what every op family asks of it.

:class:`LoweringBase` declares what :class:`~lstm_infer.importers.onnx.stack.GraphLowering`
holds while it walks a graph (the abstract value of every tensor, the axis roles, the graph
inputs' stages) and answers the questions every op family asks: the dims of an abstract value,
the size of an axis role, the same value with its axes moved, and the evaluation of a node of
constants by its op of the registry. The op families (``ops_*.py``), the unrolled
RNN recognition and the assembly are mixins over it; ``Handler`` is the type of the entries of
their ``OPS`` tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lstm_infer.errors import LstmInferError
from lstm_infer.importers.onnx.values import (
    MAX_CONSTANT_ELEMENTS,
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
    _Unsupported,
)
from lstm_infer.ops import get_op, run_on_constants
from lstm_infer.ops.sequence import is_sequence

# An op handler: (lowering, node, abstract input values, decoded attributes) -> the abstract
# value of the node's output, or a list of them (one per output).
Handler = Callable[[Any, Any, list[Any], dict[str, Any]], Any]


class LoweringBase:
    """The lowering's state (set by ``GraphLowering.__init__``) and the queries on it."""

    graph: Any  # lstm_infer.graph.Graph
    roles: Roles
    values: dict[str, Any]  # tensor name -> abstract value
    producer: dict[str, Any]  # tensor name -> the node that made it
    input_stages: dict[str, InputStage]
    unused_inputs: list[str]  # graph inputs no output depends on

    def _input_axis(self, stage: InputStage, k: int) -> str:
        """The role of axis ``k`` of a float graph input, as first created."""
        return self.values[stage.name].axes[k][0]

    # ---- constant folding ----------------------------------------------------------------------

    def _fold(self, node: Any, ins: list[Any]) -> list[Const]:
        """Evaluate a node of constants with its op of the registry (what the compiler's own
        constant folding runs), every output refused past MAX_CONSTANT_ELEMENTS before it is
        allocated."""
        if not get_op(node.op, node).foldable:
            raise _Unsupported("this operator is not evaluated on constants")
        values = [None if v is None else v.value for v in ins]
        try:
            res = run_on_constants(node, values, MAX_CONSTANT_ELEMENTS)
        except LstmInferError as exc:
            raise _Unsupported(f"cannot evaluate it on constants: {exc}") from exc
        if any(is_sequence(r) for r in res):
            raise _Unsupported("a sequence of tensors has no place in a recurrent stack")
        outs = [Const(np.asarray(r)) for r in res]
        for out in outs:
            _check_elements(out.value.size, "its output")
        return outs

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
