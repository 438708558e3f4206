"""The op registry: every op kind a model graph may hold, one module per family.

Each family module exports ``OPS``, a dict of op name -> :class:`OpDef`; this module merges
them into :data:`REGISTRY`, the one list of supported operators (the README's table is
generated from it). An op's semantics are the ONNX operator's at its newest opset, attributes
and inputs alike (importers convert older opsets' forms once).
"""

from __future__ import annotations

from lstm_infer.errors import UnsupportedModelError
from lstm_infer.ops import (
    cells,
    control,
    conv,
    dense,
    elementwise,
    layout,
    norm,
    pool,
    quant,
    recurrent,
    reduce,
    sequence,
)
from lstm_infer.ops.base import OpDef, RunContext

__all__ = ["REGISTRY", "OpDef", "RunContext", "get_op"]

_FAMILIES = (
    elementwise, layout, dense, conv, pool, norm, recurrent, cells, reduce, quant, control,
    sequence,
)  # fmt: skip


def _merge() -> dict[str, OpDef]:
    table: dict[str, OpDef] = {}
    for family in _FAMILIES:
        for name, op in family.OPS.items():
            if name in table:
                raise AssertionError(f"op {name!r} registered twice")
            table[name] = op
    return dict(sorted(table.items()))


REGISTRY: dict[str, OpDef] = _merge()


def get_op(name: str, node: object = None) -> OpDef:
    """The OpDef of ``name``; UnsupportedModelError naming the node when there is none."""
    op = REGISTRY.get(name)
    if op is None:
        where = getattr(node, "label", f"op {name!r}")
        raise UnsupportedModelError(
            f"{where}: operator {name!r} is not supported ({len(REGISTRY)} operators are: "
            "lstm_infer.ops.REGISTRY, the README's operator table)"
        )
    return op
