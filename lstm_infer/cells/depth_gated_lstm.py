"""The depth-gated LSTM of CELLS.md (Yao et al. 2015). Layer 0 is a plain LSTM; every layer
l >= 1 (input x = h^{l-1}_t) adds a depth gate over the lower layer's new cell:

    gates = W_l x + b_ih_l + R_l h_prev + b_hh_l              (i, f, g, o)
    d     = sigmoid(D_l x + e_l + p_l * c_prev + q_l * c_lower)
    c     = d * c_lower + f * c_prev + i * g,   h = o * tanh(c)

Keys, layer l: ``weight_ih_l{l}`` (4H, I_l), ``weight_hh_l{l}`` (4H, H), ``bias_ih_l{l}``,
``bias_hh_l{l}`` (4H); l >= 1 also ``depth_weight_l{l}`` (H, H), ``depth_bias_l{l}``,
``depth_cell_l{l}`` (p), ``depth_lower_l{l}`` (q) (H). State: h, c of shape (L, B, H). Runs on
src_c/cell_depth_gated_lstm.c, whose input projection of layers l >= 1 is one product over
the 5 row groups of [W_l; D_l].

The marker is ``depth_cell_l1``, a key no other cell has (``depth_weight_l1`` is also the grid
LSTM's). A one-layer depth-gated LSTM has exactly ``nn.LSTM``'s keys and is a plain LSTM: it
has no marker and keeps loading as one (lstm_infer.torch_import), with the same outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lstm_infer.cells.base import (
    CellDef,
    Shape,
    f32,
    float_weights,
    gate_rows_padded,
    gate_vector_padded,
    input_weights,
    layer_count,
    matrix,
    packed,
    rcell,
    weight_format,
)

WHAT = "DepthGatedLSTM"


def read(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    layers = layer_count(state, "weight_ih_l{}", WHAT)
    w0 = matrix(state, "weight_ih_l0", WHAT)
    hidden = matrix(state, "weight_hh_l0", WHAT).shape[1]
    return {
        "input_size": int(w0.shape[1]),
        "hidden_size": int(hidden),
        "num_layers": layers,
        **float_weights(state),
    }


def expected(a: Mapping[str, Any]) -> dict[str, Shape]:
    h, i = a["hidden_size"], a["input_size"]
    out: dict[str, Shape] = {}
    for layer in range(a["num_layers"]):
        out[f"weight_ih_l{layer}"] = (4 * h, i if layer == 0 else h)
        out[f"weight_hh_l{layer}"] = (4 * h, h)
        out[f"bias_ih_l{layer}"] = (4 * h,)
        out[f"bias_hh_l{layer}"] = (4 * h,)
        if layer:
            out[f"depth_weight_l{layer}"] = (h, h)
            for key in ("depth_bias", "depth_cell", "depth_lower"):
                out[f"{key}_l{layer}"] = (h,)
    return out


def state_shapes(a: Mapping[str, Any], batch: int) -> list[Shape]:
    shape = (a["num_layers"], batch, a["hidden_size"])
    return [shape, shape]


def _bias(a: Mapping[str, Any], layer: int) -> np.ndarray:
    """b_ih + b_hh, summed in float64 and rounded once."""
    total = np.asarray(a[f"bias_ih_l{layer}"], np.float64) + a[f"bias_hh_l{layer}"]
    return total.astype(np.float32)


def compile_cell(a: Mapping[str, Any]) -> Any:
    """The arrays of src_c/cell_depth_gated_lstm.c's layout, layer by layer."""
    w0, fmt = a["weight_ih_l0"], weight_format(a)
    arrays = [*input_weights(w0, 4, _bias(a, 0), fmt), packed(a["weight_hh_l0"], 4, fmt)]
    for layer in range(1, a["num_layers"]):
        w, d = a[f"weight_ih_l{layer}"], a[f"depth_weight_l{layer}"]
        arrays += [
            gate_rows_padded(np.concatenate([w, d]), 5, fmt),
            packed(w, 4, fmt),
            packed(d, 1, fmt),
            gate_vector_padded(np.concatenate([_bias(a, layer), a[f"depth_bias_l{layer}"]]), 5),
            packed(a[f"weight_hh_l{layer}"], 4, fmt),
            f32(a[f"depth_cell_l{layer}"]),
            f32(a[f"depth_lower_l{layer}"]),
        ]
    return rcell("depth_gated_lstm", a, arrays)


CELL = CellDef(
    op="DepthGatedLSTM",
    kind="depth_gated_lstm",
    states=("h", "c"),
    marker="depth_cell_l1",
    sizes=("input_size", "hidden_size", "num_layers"),
    read=read,
    expected=expected,
    state_shapes=state_shapes,
    compile=compile_cell,
    doc="depth-gated LSTM (a gate lets each lower layer's new cell into the layer above)",
)
