"""The op registry: every op kind a model graph may hold, one module per family.

Each family module exports ``OPS``, a dict of op name -> :class:`OpDef`; this module merges
them into :data:`REGISTRY`, the one list of supported operators (the README's table is
generated from it). An op's semantics are the ONNX operator's at its newest opset, attributes
and inputs alike (importers convert older opsets' forms once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

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
from lstm_infer.ops.base import OpDef, RunContext, element_limit

__all__ = ["REGISTRY", "OpDef", "RunContext", "get_op", "run_on_constants"]

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


def run_on_constants(
    node: Any, values: Sequence[np.ndarray | None], max_elements: int
) -> list[Any]:
    """Evaluate ``node`` on constant inputs (one array, or None where absent, per input) as
    constant folding does: its op's prepare then run, every tensor it would make refused past
    ``max_elements`` before it is allocated. The caller checks the op is foldable; the op's
    LstmInferError (a refused size, a bad attribute) propagates."""
    op = get_op(node.op, node)
    consts = {i: v for i, v in enumerate(values) if v is not None}
    with element_limit(max_elements):
        state = op.prepare(node, consts) if op.prepare else None
        return op.run(RunContext(), node, list(values), state)
