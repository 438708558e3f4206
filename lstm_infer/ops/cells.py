"""The cells of CELLS.md (lstm_infer.cells) as graph ops: ``LayerNormLSTM``, ...

Inputs: X, the time-major sequence (T, B, I), then optionally each initial state in the cell's
order (zeros when omitted). Outputs: Y (T, B, H), the top layer's output at every step, then
optionally each final state. Attributes: the cell's sizes and its weights under CELLS.md's
state_dict keys (lstm_infer.cells.base). Whole sequences and stream steps run the same fused
C function (src_c/li_cells.h).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer import _engine
from lstm_infer.cells import CELLS, CellDef
from lstm_infer.errors import InputError, ModelFormatError
from lstm_infer.ops.base import OpDef, RunContext, op, shape_of, typed
from lstm_infer.tensor_type import Dim, TensorType


def cell_of(node: Any) -> CellDef:
    return CELLS[node.op]


def _check(node: Any) -> None:
    cell_of(node).check(node.attrs, node.label)


def _prepare(node: Any, consts: dict[int, np.ndarray]) -> Any:
    return cell_of(node).compile(node.attrs)


def initial_states(node: Any, ins: list, batch: int) -> list[np.ndarray]:
    """The initial states of a run: the inputs given (checked), zeros for the others."""
    cell = cell_of(node)
    out = []
    for s, (name, shape) in enumerate(zip(cell.states, cell.state_shapes(node.attrs, batch))):
        given = ins[1 + s] if 1 + s < len(ins) else None
        if given is None:
            out.append(np.zeros(shape, np.float32))
            continue
        if np.shape(given) != shape:
            raise InputError(
                f"{node.label}: initial {name} has shape {np.shape(given)}, expected {shape}"
            )
        out.append(np.array(given, np.float32, order="C"))
    return out


def _run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    own = getattr(cell_of(node), "run", None)  # a kind with inputs beyond X and states
    if own is not None:
        return own(ctx, node, ins, state)
    x = ins[0]
    width = node.attrs["input_size"]
    if np.ndim(x) != 3 or np.shape(x)[2] != width:
        raise InputError(f"{node.label}: X must be (time, batch, {width}), got shape {np.shape(x)}")
    x = np.ascontiguousarray(x, np.float32)
    states = initial_states(node, ins, x.shape[1])
    y = np.empty((x.shape[0], x.shape[1], state.output_size), np.float32)
    _engine.run_rcell(state, x, states, y)
    results = [y, *states]
    return [results[i] if name else np.zeros(0, np.float32) for i, name in enumerate(node.outputs)]


# Stand-ins for the batch and memory length in a cell's state shapes (sizes are positive).
_BATCH, _POSITIONS = -1, -2


def _infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    """Y (T, B, output size) and each final state in the cell's state shapes."""
    cell = cell_of(node)
    a = node.attrs
    sx = shape_of(types[0])
    if sx is not None and len(sx) != 3:
        raise ModelFormatError(f"{node.label}: X must be (time, batch, features), got {sx}")
    steps, batch = (None, None) if sx is None else (sx[0], sx[1])
    width: int = a["hidden_size"]
    if node.op == "AttentionDecoder":
        width += a["memory_size"]
        sm = shape_of(types[1]) if len(types) > 1 else None
        positions = sm[0] if sm is not None and len(sm) == 3 else None
        states = cell.state_shapes(a, _BATCH, _POSITIONS)
    else:
        positions = None
        states = cell.state_shapes(a, _BATCH)
    stand_in: dict[int, Dim] = {_BATCH: batch, _POSITIONS: positions}
    outs = [TensorType("float32", typed(node, "float32", (steps, batch, width)).shape, 0)]
    for shape in states:
        outs.append(typed(node, "float32", [stand_in.get(d, d) for d in shape]))
    return outs[: len(node.outputs)]


OPS: dict[str, OpDef] = {
    name: op(
        name,
        _run,
        inputs=getattr(cell, "inputs", (1, 1 + len(cell.states))),
        outputs=getattr(cell, "outputs", (1, 1 + len(cell.states))),
        check=_check,
        prepare=_prepare,
        infer=_infer,
        foldable=False,
        doc=cell.doc,
    )
    for name, cell in CELLS.items()
}
