"""The cells of CELLS.md as fused engine ops: one module per cell kind, registered here.

Each module exports ``CELL`` (a :class:`lstm_infer.cells.base.CellDef`): how the cell's
state_dict reads into a graph node, the node's checks, and its compiled form (an
``lstm_infer._engine.RCell`` run by src_c/cell_*.c). ``lstm_infer.ops.cells`` makes each an op
of the registry; ``lstm_infer.cells.load`` builds a model from a state_dict holding one.
"""

from __future__ import annotations

from lstm_infer.cells import attention_decoder, layer_norm_lstm
from lstm_infer.cells.base import CellDef

CELLS: dict[str, CellDef] = {
    cell.op: cell for cell in (layer_norm_lstm.CELL, attention_decoder.CELL)
}

__all__ = ["CELLS", "CellDef"]
