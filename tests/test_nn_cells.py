"""lstm_infer.nn (issue 17): the PyTorch reference modules of CELLS.md against float64 numpy
implementations of the equations written there, their exact state_dict keys, state carried
across calls, batch_first, training, and the import error without torch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import import_without, require, run_python

torch = require("torch")
from cell_references import (  # noqa: E402
    attention_reference,
    clockwork_reference,
    depth_gated_reference,
    grid_reference,
    layer_norm_reference,
    params,
)

from lstm_infer import nn as cells  # noqa: E402


@pytest.mark.parametrize("layers", [1, 3])
def test_grid_lstm_is_the_pinned_equations(rng, layers: int) -> None:
    torch.manual_seed(6)
    mod = cells.GridLSTM(4, 6, layers).double()
    x = rng.standard_normal((5, 2, 4))
    y, (h, m) = mod(torch.from_numpy(x))
    want_y, want_h, want_m = grid_reference(params(mod), x, layers, 6)
    np.testing.assert_allclose(y.detach().numpy(), want_y, atol=1e-12)
    np.testing.assert_allclose(h.detach().numpy(), want_h, atol=1e-12)
    np.testing.assert_allclose(m.detach().numpy(), want_m, atol=1e-12)


def test_grid_lstm_keys() -> None:
    sd = cells.GridLSTM(4, 6, 2).state_dict()
    blocks = {
        f"{b}_{k}_l{i}" for b in ("time", "depth") for k in ("weight", "bias") for i in (0, 1)
    }
    assert set(sd) == {"input_proj"} | blocks
    assert sd["input_proj"].shape == (6, 4) and sd["depth_weight_l1"].shape == (24, 12)


def _randomise_norms(module) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.3, 0.3)


@pytest.mark.parametrize("layers", [1, 3])
def test_depth_gated_lstm_is_the_pinned_equations(rng, layers: int) -> None:
    torch.manual_seed(1)
    m = cells.DepthGatedLSTM(5, 8, layers).double()
    x = rng.standard_normal((7, 3, 5))
    y, (h, c) = m(torch.from_numpy(x))
    want_y, want_h, want_c = depth_gated_reference(params(m), x, layers, 8)
    np.testing.assert_allclose(y.detach().numpy(), want_y, atol=1e-12)
    np.testing.assert_allclose(h.detach().numpy(), want_h, atol=1e-12)
    np.testing.assert_allclose(c.detach().numpy(), want_c, atol=1e-12)


def test_depth_gated_lstm_keys() -> None:
    keys = set(cells.DepthGatedLSTM(5, 8, 2).state_dict())
    base = {f"{k}_l{i}" for i in (0, 1) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    depth = {f"{k}_l1" for k in ("depth_weight", "depth_bias", "depth_cell", "depth_lower")}
    assert keys == base | depth
    sd = cells.DepthGatedLSTM(5, 8, 2).state_dict()
    assert sd["weight_ih_l1"].shape == (32, 8) and sd["depth_weight_l1"].shape == (8, 8)


@pytest.mark.parametrize("periods", [(1, 2, 4, 8), (1, 3), (2, 5, 7)])
def test_clockwork_rnn_is_the_pinned_equations(rng, periods) -> None:
    torch.manual_seed(2)
    H = 4 * len(periods)
    m = cells.ClockworkRNN(3, H, periods).double()
    x = rng.standard_normal((11, 2, 3))
    y, (h, t) = m(torch.from_numpy(x))
    want_y, want_h = clockwork_reference(params(m), x, H)
    np.testing.assert_allclose(y.detach().numpy(), want_y, atol=1e-12)
    np.testing.assert_allclose(h[0].detach().numpy(), want_h, atol=1e-12)
    assert int(t) == 11
    # entries of weight_hh below the block diagonal are ignored
    with torch.no_grad():
        k = H // len(periods)
        m.weight_hh[k:, :k] += 5.0
    np.testing.assert_allclose(m(torch.from_numpy(x))[0].detach().numpy(), want_y, atol=1e-12)


def test_clockwork_state_carries_the_step_counter(rng) -> None:
    """Two calls with the state passed on == one call over the whole sequence (module
    activity depends on the absolute step index)."""
    torch.manual_seed(3)
    m = cells.ClockworkRNN(3, 8, (1, 4)).double()
    x = torch.from_numpy(rng.standard_normal((9, 2, 3)))
    whole, _ = m(x)
    first, state = m(x[:5])
    second, (_, t) = m(x[5:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole)
    assert int(t) == 9


def test_clockwork_rnn_keys_and_refusals() -> None:
    sd = cells.ClockworkRNN(3, 8, (1, 2)).state_dict()
    assert set(sd) == {"weight_ih", "weight_hh", "bias", "periods"}
    assert sd["periods"].dtype == torch.int64 and sd["periods"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="ascending"):
        cells.ClockworkRNN(3, 8, (2, 1))
    with pytest.raises(ValueError, match="divisible"):
        cells.ClockworkRNN(3, 9, (1, 2))


@pytest.mark.parametrize("layers", [1, 2])
def test_layer_norm_lstm_is_the_pinned_equations(rng, layers: int) -> None:
    torch.manual_seed(4)
    m = cells.LayerNormLSTM(6, 5, layers, eps=1e-3).double()
    _randomise_norms(m)
    x = rng.standard_normal((6, 2, 6))
    y, (h, c) = m(torch.from_numpy(x))
    want_y, want_h, want_c = layer_norm_reference(params(m), x, layers, 5)
    np.testing.assert_allclose(y.detach().numpy(), want_y, atol=1e-12)
    np.testing.assert_allclose(h.detach().numpy(), want_h, atol=1e-12)
    np.testing.assert_allclose(c.detach().numpy(), want_c, atol=1e-12)


def test_layer_norm_lstm_keys() -> None:
    sd = cells.LayerNormLSTM(6, 5, 2, eps=1e-3).state_dict()
    weights = {f"{k}_l{i}" for i in (0, 1) for k in ("weight_ih", "bias_ih", "weight_hh")}
    norms = {
        f"{n}_l{i}.{p}"
        for i in (0, 1)
        for n in ("gate_norm", "cell_norm")
        for p in ("weight", "bias")
    }
    want = {"eps"} | weights | norms
    assert set(sd) == want
    assert sd["eps"].dtype == torch.float64 and float(sd["eps"]) == pytest.approx(1e-3)
    assert sd["weight_hh_l1"].shape == (20, 5) and sd["cell_norm_l0.weight"].shape == (5,)


@pytest.mark.parametrize("make", [
    lambda bf: cells.DepthGatedLSTM(4, 6, 2, batch_first=bf),
    lambda bf: cells.ClockworkRNN(4, 6, (1, 3), batch_first=bf),
    lambda bf: cells.LayerNormLSTM(4, 6, 2, batch_first=bf),
    lambda bf: cells.GridLSTM(4, 6, 2, batch_first=bf),
])  # fmt: skip
def test_batch_first_state_and_training(rng, make) -> None:
    torch.manual_seed(5)
    tm, bm = make(False).double(), make(True).double()
    bm.load_state_dict(tm.state_dict())
    x = torch.from_numpy(rng.standard_normal((5, 3, 4)))
    y_t, s_t = tm(x)
    y_b, s_b = bm(x.transpose(0, 1))
    torch.testing.assert_close(y_b.transpose(0, 1), y_t)
    for a, b in zip(s_t, s_b):
        torch.testing.assert_close(a, b)
    # state passed on: two halves == the whole
    first, state = tm(x[:2])
    second, _ = tm(x[2:], state)
    torch.testing.assert_close(torch.cat([first, second]), y_t)
    # trainable: every parameter gets a gradient
    y_t.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in tm.parameters())


def test_importing_lstm_infer_nn_without_torch_names_it() -> None:
    result = import_without("torch", "lstm_infer.nn")
    assert "MissingDependencyError" in result.stdout and "torch" in result.stdout, (
        result.stdout + result.stderr
    )


def test_the_runtime_never_imports_lstm_infer_nn() -> None:
    result = run_python("import sys, lstm_infer\nprint('lstm_infer.nn' in sys.modules)")
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize("kind", ["additive", "general", "dot", "location"])
def test_attention_decoder_is_the_pinned_equations(rng, kind: str) -> None:
    torch.manual_seed(7)
    H = 6
    mod = cells.AttentionDecoder(3, H, H if kind == "dot" else 5, kind, attention_size=4,
                                 location_filters=3, location_kernel=5).double()  # fmt: skip
    with torch.no_grad():
        for prm in mod.parameters():
            prm.uniform_(-0.6, 0.6)
    M = rng.standard_normal((7, 2, mod.memory_size))
    y = rng.standard_normal((4, 2, 3))
    lengths = np.array([7, 4])
    out, (_, _, _, alpha, cum) = mod(torch.from_numpy(y), torch.from_numpy(M),
                                     torch.from_numpy(lengths))  # fmt: skip
    want, want_alpha, want_cum = attention_reference(params(mod), kind, y, M, lengths, 5)
    np.testing.assert_allclose(out.detach().numpy(), want, atol=1e-12)
    np.testing.assert_allclose(alpha.detach().numpy(), want_alpha, atol=1e-12)
    np.testing.assert_allclose(cum.detach().numpy(), want_cum, atol=1e-12)
    assert float(alpha[1, 4:].detach().abs().max()) == 0.0  # masked positions get no weight


def test_attention_decoder_keys_and_refusals() -> None:
    cell = {"cell.weight_ih", "cell.weight_hh", "cell.bias_ih", "cell.bias_hh"}
    additive = {"query.weight", "memory.weight", "energy.weight", "energy_bias"}
    for kind, extra in (
        ("additive", additive),
        ("location", additive | {"location_conv.weight", "location_dense.weight"}),
        ("general", {"score.weight"}),
        ("dot", set()),
    ):
        mod = cells.AttentionDecoder(3, 6, 6, kind, attention_size=4, location_filters=2,
                                     location_kernel=3)  # fmt: skip
        assert set(mod.state_dict()) == cell | extra, kind
    sd = cells.AttentionDecoder(3, 6, 5, "location", attention_size=4, location_filters=2,
                                location_kernel=3).state_dict()  # fmt: skip
    assert sd["location_conv.weight"].shape == (2, 2, 3) and sd["energy.weight"].shape == (1, 4)
    assert sd["cell.weight_ih"].shape == (24, 8) and sd["memory.weight"].shape == (4, 5)
    with pytest.raises(ValueError, match="dot attention"):
        cells.AttentionDecoder(3, 6, 5, "dot")
    with pytest.raises(ValueError, match="odd"):
        cells.AttentionDecoder(3, 6, 5, "location", location_kernel=4)
    with pytest.raises(ValueError, match="attention must be"):
        cells.AttentionDecoder(3, 6, 5, "luong")
    mod = cells.AttentionDecoder(3, 6, 5, "additive")
    with pytest.raises(ValueError, match="memory_lengths"):
        mod(torch.zeros(2, 1, 3), torch.zeros(4, 1, 5), torch.tensor([5]))


def test_attention_decoder_state_batch_first_and_training(rng) -> None:
    torch.manual_seed(8)
    tm = cells.AttentionDecoder(3, 6, 5, "location", location_filters=2, location_kernel=3)
    bm = cells.AttentionDecoder(3, 6, 5, "location", location_filters=2, location_kernel=3,
                                batch_first=True)  # fmt: skip
    tm, bm = tm.double(), bm.double()
    bm.load_state_dict(tm.state_dict())
    y = torch.from_numpy(rng.standard_normal((5, 2, 3)))
    M = torch.from_numpy(rng.standard_normal((6, 2, 5)))
    out, _ = tm(y, M)
    out_b, _ = bm(y.transpose(0, 1), M.transpose(0, 1))
    torch.testing.assert_close(out_b.transpose(0, 1), out)
    first, state = tm(y[:2], M)
    second, _ = tm(y[2:], M, state=state)
    torch.testing.assert_close(torch.cat([first, second]), out)
    out.square().sum().backward()
    assert all(p.grad is not None for p in tm.parameters())
