"""The cells of CELLS.md as fused engine ops: one module per cell kind, registered here.

Each module exports ``CELL`` (a :class:`lstm_infer.cells.base.CellDef`): how the cell's
state_dict reads into a graph node, the node's checks, and its compiled form (an
``lstm_infer._engine.RCell`` run by src_c/cell_*.c). ``lstm_infer.ops.cells`` makes each an op
of the registry; ``lstm_infer.cells.load`` builds a model from a state_dict holding one.
"""

from __future__ import annotations

from lstm_infer.cells import (
    attention_decoder,
    clockwork_rnn,
    depth_gated_lstm,
    grid_lstm,
    layer_norm_lstm,
)
from lstm_infer.cells.base import CellDef

_KINDS = (layer_norm_lstm, depth_gated_lstm, grid_lstm, clockwork_rnn, attention_decoder)
CELLS: dict[str, CellDef] = {kind.CELL.op: kind.CELL for kind in _KINDS}

__all__ = ["CELLS", "CellDef"]
