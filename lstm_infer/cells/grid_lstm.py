"""The grid LSTM of CELLS.md, time x depth (Kalchbrenner et al. 2015):

    u_{-1,t} = P x_t,  n_{-1,t} = 0
    h_{l,t}, m_{l,t} = LSTM(T_l [h_{l,t-1}; u_{l-1,t}] + a_l ; cell m_{l,t-1})   time block
    u_{l,t}, n_{l,t} = LSTM(E_l [h_{l,t}; u_{l-1,t}] + b_l ; cell n_{l-1,t})     depth block
    output = u_{L-1,t}

Keys: ``input_proj`` (H, I) = P; per layer ``time_weight_l{l}`` (4H, 2H), ``time_bias_l{l}``
(4H), ``depth_weight_l{l}`` (4H, 2H), ``depth_bias_l{l}`` (4H). State: h, m of shape
(L, B, H) (the depth pair u, n lives within a step). Runs on src_c/cell_grid_lstm.c: only
the time block recurs, so a chunk of steps is one product for P x, then per layer one for
the time block's inputs, the recurrence, and one for the depth block's gates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lstm_infer.cells.base import (
    CellDef,
    Shape,
    float_weights,
    gate_rows_padded,
    input_weights,
    layer_count,
    matrix,
    packed,
    rcell,
    weight_format,
)

WHAT = "GridLSTM"


def read(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    proj = matrix(state, "input_proj", WHAT)
    layers = layer_count(state, "time_weight_l{}", WHAT)
    # H from the first time block (4H rows), so a wrong input_proj is the key named
    hidden = matrix(state, "time_weight_l0", WHAT).shape[0] // 4
    return {
        "input_size": int(proj.shape[1]),
        "hidden_size": int(hidden),
        "num_layers": layers,
        **float_weights(state),
    }


def expected(a: Mapping[str, Any]) -> dict[str, Shape]:
    h = a["hidden_size"]
    out: dict[str, Shape] = {"input_proj": (h, a["input_size"])}
    for layer in range(a["num_layers"]):
        for block in ("time", "depth"):
            out[f"{block}_weight_l{layer}"] = (4 * h, 2 * h)
            out[f"{block}_bias_l{layer}"] = (4 * h,)
    return out


def state_shapes(a: Mapping[str, Any], batch: int) -> list[Shape]:
    shape = (a["num_layers"], batch, a["hidden_size"])
    return [shape, shape]


def compile_cell(a: Mapping[str, Any]) -> Any:
    """The arrays of src_c/cell_grid_lstm.c's layout."""
    h = a["hidden_size"]
    proj, fmt = a["input_proj"], weight_format(a)
    arrays = [gate_rows_padded(proj, 1, fmt), packed(proj, 1, fmt)]
    for layer in range(a["num_layers"]):
        time = a[f"time_weight_l{layer}"]
        arrays += input_weights(np.ascontiguousarray(time[:, h:]), 4, a[f"time_bias_l{layer}"], fmt)
        arrays.append(packed(time[:, :h], 4, fmt))
        arrays += input_weights(a[f"depth_weight_l{layer}"], 4, a[f"depth_bias_l{layer}"], fmt)
    return rcell("grid_lstm", a, arrays)


CELL = CellDef(
    op="GridLSTM",
    kind="grid_lstm",
    states=("h", "m"),
    marker="input_proj",
    sizes=("input_size", "hidden_size", "num_layers"),
    read=read,
    expected=expected,
    state_shapes=state_shapes,
    compile=compile_cell,
    doc="grid LSTM over time x depth (a time and a depth LSTM block per layer)",
)
