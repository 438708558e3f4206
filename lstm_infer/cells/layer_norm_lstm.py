"""The layer-normalised LSTM of CELLS.md (torchaudio's RNN-T predictor cell):

    gates = LN_g(W x + b + R h)         LN over all 4H values
    c'    = LN_c(f * c + i * g)         the normalised cell is the state carried on
    h'    = o * tanh(c')

Keys, layer l: ``weight_ih_l{l}`` (4H, I_l), ``bias_ih_l{l}`` (4H), ``weight_hh_l{l}`` (4H, H),
``gate_norm_l{l}.weight/.bias`` (4H), ``cell_norm_l{l}.weight/.bias`` (H); ``eps`` (a float64
scalar buffer, an attribute here). State: h, c of shape (L, B, H). Runs on
src_c/cell_layer_norm_lstm.c.
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
    input_weights,
    layer_count,
    matrix,
    packed,
    rcell,
    weight_format,
)
from lstm_infer.errors import ModelFormatError

WHAT = "LayerNormLSTM"


def read(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    layers = layer_count(state, "weight_ih_l{}", WHAT)
    w0 = matrix(state, "weight_ih_l0", WHAT)
    hidden = matrix(state, "weight_hh_l0", WHAT).shape[1]
    if "eps" not in state or np.size(state["eps"]) != 1:
        raise ModelFormatError(f"{WHAT}: the eps buffer (a scalar) is missing")
    eps = float(np.asarray(state["eps"], np.float64).reshape(()))
    return {
        "input_size": int(w0.shape[1]),
        "hidden_size": int(hidden),
        "num_layers": layers,
        "eps": eps,
        **float_weights(state, skip=("eps",)),
    }


def expected(a: Mapping[str, Any]) -> dict[str, Shape]:
    h, i = a["hidden_size"], a["input_size"]
    out: dict[str, Shape] = {}
    for layer in range(a["num_layers"]):
        out[f"weight_ih_l{layer}"] = (4 * h, i if layer == 0 else h)
        out[f"bias_ih_l{layer}"] = (4 * h,)
        out[f"weight_hh_l{layer}"] = (4 * h, h)
        out[f"gate_norm_l{layer}.weight"] = (4 * h,)
        out[f"gate_norm_l{layer}.bias"] = (4 * h,)
        out[f"cell_norm_l{layer}.weight"] = (h,)
        out[f"cell_norm_l{layer}.bias"] = (h,)
    return out


def state_shapes(a: Mapping[str, Any], batch: int) -> list[Shape]:
    shape = (a["num_layers"], batch, a["hidden_size"])
    return [shape, shape]


def compile_cell(a: Mapping[str, Any]) -> Any:
    arrays: list[np.ndarray] = []
    fmt = weight_format(a)
    for layer in range(a["num_layers"]):
        arrays += input_weights(a[f"weight_ih_l{layer}"], 4, a[f"bias_ih_l{layer}"], fmt)
        r = a[f"weight_hh_l{layer}"]
        arrays += [gate_rows_padded(r, 4, fmt), packed(r, 4, fmt)]
        for key in ("gate_norm", "cell_norm"):
            arrays += [f32(a[f"{key}_l{layer}.weight"]), f32(a[f"{key}_l{layer}.bias"])]
    return rcell("layer_norm_lstm", a, arrays, eps=float(a["eps"]))


CELL = CellDef(
    op="LayerNormLSTM",
    kind="layer_norm_lstm",
    states=("h", "c"),
    marker="gate_norm_l0.weight",
    sizes=("input_size", "hidden_size", "num_layers", "eps"),
    read=read,
    expected=expected,
    state_shapes=state_shapes,
    compile=compile_cell,
    doc="layer-normalised LSTM (gates and cell normalised; torchaudio's RNN-T predictor)",
)
