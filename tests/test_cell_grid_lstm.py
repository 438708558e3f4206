"""The grid LSTM on the engine (src_c/cell_grid_lstm.c) beyond the generic cases of
test_cells_engine.py: every kernel table, both projection paths (packed matvec for few rows,
sgemm for many) and several chunks, initial and final states against the torch module in
float64 and the numpy reference, and hostile state_dicts refused with the key named."""

from __future__ import annotations

import numpy as np
import pytest
from cell_references import grid_reference, params
from conftest import require

torch = require("torch")
import lstm_infer  # noqa: E402
from lstm_infer import nn as cells  # noqa: E402
from lstm_infer.errors import ModelFormatError  # noqa: E402

TOL = 1e-5


def _module(input_size: int, hidden: int, layers: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    module = cells.GridLSTM(input_size, hidden, layers).double()
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.6, 0.6)
    return module.eval()


def _state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.float().numpy().copy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize(
    ("hidden", "layers", "steps", "batch"),
    [(20, 3, 11, 3), (33, 2, 300, 9), (17, 1, 5, 1), (16, 4, 40, 12)],
)
def test_every_table_equals_the_reference(rng, isa: str, hidden, layers, steps, batch) -> None:
    """Few rows (packed matvec) and many (sgemm), one chunk and several (300 steps of 9
    rows), H on and off the 16-unit blocks; outputs and final states."""
    module = _module(5, hidden, layers)
    x = rng.standard_normal((steps, batch, 5)).astype(np.float32)
    want, h_t, m_t = grid_reference(params(module), x.astype(np.float64), layers, hidden)
    stream = lstm_infer.load(module).stream()
    got = stream.feed(x, chunk=steps)
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(stream.state["cell/h"], h_t, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(stream.state["cell/m"], m_t, rtol=TOL, atol=TOL)


def test_initial_states_are_the_modules(rng) -> None:
    module = _module(4, 21, 3)
    x = rng.standard_normal((7, 2, 4))
    h0, m0 = rng.standard_normal((2, 3, 2, 21)) * 0.5
    with torch.no_grad():
        want, (h_t, m_t) = module(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(m0)))
    stream = lstm_infer.load(module).stream()
    stream.feed(x[:1].astype(np.float32))  # a stream has a state from its first step on
    stream.state = {"cell/h": h0.astype(np.float32), "cell/m": m0.astype(np.float32)}
    got = stream.feed(x.astype(np.float32), chunk=3)
    np.testing.assert_allclose(got, want.numpy(), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(stream.state["cell/h"], h_t.numpy(), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(stream.state["cell/m"], m_t.numpy(), rtol=TOL, atol=TOL)


@pytest.mark.parametrize(
    ("key", "cut"),
    [
        ("input_proj", (slice(0, -1),)),
        ("time_weight_l1", (slice(None), slice(0, -1))),
        ("depth_weight_l0", (slice(0, -1),)),
        ("time_bias_l2", (slice(0, -1),)),
        ("depth_bias_l1", (slice(0, -1),)),
    ],
)
def test_a_wrong_key_shape_is_named(key: str, cut: tuple) -> None:
    state = _state(_module(5, 12, 3))
    state[key] = state[key][cut]
    with pytest.raises(ModelFormatError, match=key):
        lstm_infer.load(state)


def test_inconsistent_layer_sizes_are_refused() -> None:
    """A layer of another width than input_proj's, a layer without its depth block, a stray
    key."""
    narrow = _state(_module(5, 12, 2))
    wide = _state(_module(5, 16, 2))
    mixed = {k: (wide[k] if k.endswith("_l1") else v) for k, v in narrow.items()}
    with pytest.raises(ModelFormatError, match="_l1"):
        lstm_infer.load(mixed)
    state = _state(_module(5, 12, 3))
    del state["depth_weight_l2"], state["depth_bias_l2"]
    with pytest.raises(ModelFormatError, match="depth_weight_l2"):
        lstm_infer.load(state)
    state = _state(_module(5, 12, 2))
    with pytest.raises(ModelFormatError, match="time_bias_l7"):
        lstm_infer.load({**state, "time_bias_l7": np.zeros(48, np.float32)})
    del state["time_weight_l0"]
    with pytest.raises(ModelFormatError, match="time_weight_l0"):
        lstm_infer.load(state)
