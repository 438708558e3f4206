"""The depth-gated LSTM on the engine (src_c/cell_depth_gated_lstm.c) beyond the generic cases
of test_cells_engine.py: every kernel table, both projection paths (packed matvec for few
rows, sgemm for many) and several chunks, initial and final states against the torch module
in float64, the one-layer module loading as the plain LSTM it is, and hostile state_dicts
refused with the key named."""

from __future__ import annotations

import numpy as np
import pytest
from cell_references import depth_gated_reference, params
from conftest import require

torch = require("torch")
import lstm_infer  # noqa: E402
from lstm_infer import nn as cells  # noqa: E402
from lstm_infer.errors import ModelFormatError  # noqa: E402

TOL = 1e-5


def _module(input_size: int, hidden: int, layers: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    module = cells.DepthGatedLSTM(input_size, hidden, layers).double()
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.6, 0.6)
    return module.eval()


def _state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.float().numpy().copy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize(
    ("hidden", "layers", "steps", "batch"),
    [(20, 3, 11, 3), (33, 2, 300, 9), (17, 2, 5, 1), (16, 4, 40, 12)],
)
def test_every_table_equals_the_module(rng, isa: str, hidden, layers, steps, batch) -> None:
    """Few rows (packed matvec, W and D as two calls) and many (one sgemm over 5 groups),
    one chunk and several (300 steps of 9 rows), H on and off the 16-unit blocks."""
    module = _module(5, hidden, layers)
    x = rng.standard_normal((steps, batch, 5)).astype(np.float32)
    want, _, _ = depth_gated_reference(params(module), x.astype(np.float64), layers, hidden)
    got = lstm_infer.load(module).run({"input": x})["output"]
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)


def test_initial_and_final_states_are_the_modules(rng) -> None:
    module = _module(4, 21, 3)
    x = rng.standard_normal((7, 2, 4))
    h0, c0 = rng.standard_normal((2, 3, 2, 21)) * 0.5
    with torch.no_grad():
        want, (h_t, c_t) = module(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    stream = lstm_infer.load(module).stream()
    stream.feed(x[:1].astype(np.float32))  # a stream has a state from its first step on
    stream.state = {"cell/h": h0.astype(np.float32), "cell/c": c0.astype(np.float32)}
    got = stream.feed(x.astype(np.float32), chunk=3)
    np.testing.assert_allclose(got, want.numpy(), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(stream.state["cell/h"], h_t.numpy(), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(stream.state["cell/c"], c_t.numpy(), rtol=TOL, atol=TOL)


def test_one_layer_is_the_plain_lstm_it_is(rng) -> None:
    """One layer has nn.LSTM's keys exactly (no depth gate): it loads as today's LSTM stack and
    equals both the module and nn.LSTM with the same weights."""
    module = _module(6, 24, 1)
    state = _state(module)
    lstm = torch.nn.LSTM(6, 24).double()
    lstm.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in state.items()})
    x = rng.standard_normal((9, 2, 6)).astype(np.float32)
    model = lstm_infer.load(state)
    assert isinstance(model, lstm_infer.Model)  # the recurrent stack, not a cell graph
    got = model.run({"input": x})["output"]
    with torch.no_grad():
        want, _ = module(torch.from_numpy(x.astype(np.float64)))
        plain, _ = lstm(torch.from_numpy(x.astype(np.float64)))
    np.testing.assert_allclose(got, want.numpy(), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(got, plain.numpy(), rtol=TOL, atol=TOL)


@pytest.mark.parametrize(
    ("key", "cut"),
    [
        ("depth_weight_l1", (slice(None), slice(0, -1))),
        ("depth_cell_l2", (slice(0, -1),)),
        ("depth_lower_l1", (slice(0, -1),)),
        ("depth_bias_l2", (slice(0, -1),)),
        ("bias_hh_l1", (slice(0, -1),)),
    ],
)
def test_a_wrong_key_shape_is_named(key: str, cut: tuple) -> None:
    state = _state(_module(5, 12, 3))
    state[key] = state[key][cut]
    with pytest.raises(ModelFormatError, match=key):
        lstm_infer.load(state)


def test_inconsistent_layer_sizes_are_refused() -> None:
    """A layer above of another width than the one below, and a missing depth key."""
    narrow = _state(_module(5, 12, 2))
    wide = _state(_module(5, 16, 2))
    mixed = {k: (wide[k] if k.endswith("_l1") else v) for k, v in narrow.items()}
    with pytest.raises(ModelFormatError, match="_l1"):
        lstm_infer.load(mixed)
    state = _state(_module(5, 12, 3))
    state["weight_ih_l2"] = np.zeros((48, 5), np.float32)  # the input width, not H
    with pytest.raises(ModelFormatError, match="weight_ih_l2"):
        lstm_infer.load(state)
    del state["weight_ih_l2"]
    with pytest.raises(ModelFormatError):
        lstm_infer.load(state)
    state = _state(_module(5, 12, 3))
    del state["depth_weight_l2"]
    with pytest.raises(ModelFormatError, match="depth_weight_l2"):
        lstm_infer.load(state)


def test_integer_weights_are_refused() -> None:
    state = _state(_module(5, 12, 2))
    state["depth_lower_l1"] = np.zeros(12, np.int64)
    with pytest.raises(ModelFormatError, match="depth_lower_l1|int64"):
        lstm_infer.load(state)
