"""bf16 and int8 weights for the cells of CELLS.md (GraphModel.quantize, issue 17): every cell
in bf16 against its lstm_infer.nn module run in float64 torch on the bf16-rounded weights,
int8 against an independent float64 reference with the same per-row codes (the layer-norm
LSTM, teacher-forced from the stream's own state) and within a bound of fp32 for every cell,
stream steps equal to runs, native save / load keeping the format, and bad formats refused."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from cell_references import _ln, _sig
from conftest import require
from test_quantize import bf16_reference, int8_activations, int8_reference

torch = require("torch")
import lstm_infer  # noqa: E402
from lstm_infer import nn as cells  # noqa: E402
from lstm_infer.cells.base import WEIGHT_FORMAT  # noqa: E402
from lstm_infer.errors import ModelFormatError  # noqa: E402
from lstm_infer.graph_model import GraphModel  # noqa: E402

# Weights the cells multiply in the quantized format: their matrices. The vectors (biases,
# norms, the energy vector) and the location filter stay float32.
NOT_QUANTIZED = {"energy.weight", "location_dense.weight", "location_conv.weight"}

CASES: dict[str, Callable[[], torch.nn.Module]] = {
    "layer_norm_lstm": lambda: cells.LayerNormLSTM(6, 20, 2),
    "clockwork_rnn": lambda: cells.ClockworkRNN(5, 32, (1, 2, 4, 8)),
    "depth_gated_lstm": lambda: cells.DepthGatedLSTM(6, 20, 3),
    "grid_lstm": lambda: cells.GridLSTM(6, 20, 2),
    **{
        f"attention_{kind}": (
            lambda kind=kind: cells.AttentionDecoder(
                5,
                20,
                20 if kind == "dot" else 13,
                kind,
                attention_size=7,
                location_filters=3,
                location_kernel=5,
            )
        )
        for kind in ("additive", "general", "dot", "location")
    },
}


def _module(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    module = CASES[name]().double()
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.6, 0.6)
    return module.eval()


def _rounded(module: torch.nn.Module) -> torch.nn.Module:
    """The module with every quantized matrix rounded to bfloat16 (ml_dtypes, independent of
    the engine's rounding), still float64."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 2 and name not in NOT_QUANTIZED:
                p.copy_(torch.from_numpy(bf16_reference(p.numpy().astype(np.float32))))
    return module


def _feeds(rng, name: str, module, steps: int, batch: int) -> dict[str, np.ndarray]:
    if name.startswith("attention"):
        return {
            "input": rng.standard_normal((steps, batch, 5)).astype(np.float32),
            "memory": rng.standard_normal((9, batch, module.memory_size)).astype(np.float32),
            "memory_lengths": rng.integers(1, 10, batch).astype(np.int64),
        }
    first = {"clockwork_rnn": "weight_ih", "grid_lstm": "input_proj"}.get(name, "weight_ih_l0")
    size = module.state_dict()[first].shape[1]
    return {"input": rng.standard_normal((steps, batch, size)).astype(np.float32)}


def _torch(module, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        args = [torch.from_numpy(feeds["input"].astype(np.float64))]
        if name.startswith("attention"):
            args.append(torch.from_numpy(feeds["memory"].astype(np.float64)))
            args.append(torch.from_numpy(feeds["memory_lengths"]))
        return module(*args)[0].numpy()


def _stepped(model, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    stream = model.stream()
    if name.startswith("attention"):
        stream.reset({k: feeds[k] for k in ("memory", "memory_lengths")})
    return np.concatenate([stream.step(x[None]) for x in feeds["input"]])


@pytest.fixture(params=sorted(CASES))
def name(request) -> str:
    return request.param


@pytest.mark.parametrize(("steps", "batch"), [(7, 3), (40, 40)])  # packed rows; sgemm rows
def test_bf16_cells_compute_the_rounded_model(quant_isa, rng, name, steps, batch) -> None:
    module = _module(name)
    model = lstm_infer.load(module).quantize("bf16")
    feeds = _feeds(rng, name, module, steps, batch)
    want = _torch(_rounded(module), name, feeds)
    # VDPBF16PS / AMX products carry activations to ~16 significant bits (two bf16 halves).
    tol = 3e-5 if quant_isa in ("avx512bf16", "amx") else 1e-5
    # A cell that amplifies rounding (the general attention score feeds h back through a
    # softmax) is as far from float64 in float32 arithmetic on any weights: allow 4x the
    # fp32 engine's own error against float64 torch on the same feeds.
    fp32_err = np.abs(lstm_infer.load(module).run(feeds)["output"] - _torch(module, name, feeds))
    tol = max(tol, 4 * float(fp32_err.max()))
    if name == "attention_general" and quant_isa in ("avx512bf16", "amx"):
        tol = 1.5e-4  # the ~16-bit activations of the split products, amplified the same way
    got = model.run(feeds)["output"]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(_stepped(model, name, feeds), want, rtol=tol, atol=tol)


def test_int8_cells_stay_close_to_fp32_and_steps_equal_runs(quant_isa, rng, name) -> None:
    """int8 weights (each row its own scale) and per-row activation codes: the outputs move
    from fp32 by about the codes' resolution, not more, and a stream steps as the run."""
    module = _module(name)
    fp32 = lstm_infer.load(module)
    model = fp32.quantize("int8")
    feeds = _feeds(rng, name, module, 12, 3)
    want = fp32.run(feeds)["output"]
    got = model.run(feeds)["output"]
    err = np.abs(got - want).max()
    # Quantized (not float32 weights), and only by the codes: the clockwork RNN's tanh units
    # move by up to ~0.075 on some draws, the same on every table (scalar included).
    assert 1e-5 < err < 0.1, err
    np.testing.assert_allclose(_stepped(model, name, feeds), got, rtol=1e-5, atol=1e-5)


def _ln_lstm_int8_step(p: dict, x, h, c, eps: float):
    """One layer-norm LSTM step on int8 weights, the input and the state quantized per row
    (two products, as the cell computes them), float64."""
    w, r = (int8_reference(p[k]).astype(np.float64) for k in ("weight_ih_l0", "weight_hh_l0"))
    pre = int8_activations(x) @ w.T + p["bias_ih_l0"] + int8_activations(h) @ r.T
    gates = _ln(pre, p["gate_norm_l0.weight"], p["gate_norm_l0.bias"], eps)
    i, f, g, o = np.split(gates, 4, axis=-1)
    c = _ln(
        _sig(f) * c + _sig(i) * np.tanh(g), p["cell_norm_l0.weight"], p["cell_norm_l0.bias"], eps
    )
    return _sig(o) * np.tanh(c), c


@pytest.mark.parametrize("hidden", [20, 33])
def test_int8_layer_norm_lstm_computes_the_quantized_model(quant_isa, rng, hidden) -> None:
    """Each step against the float64 reference with the same codes, from the engine's own
    state (a code one off would show as ~1e-3)."""
    torch.manual_seed(1)
    module = cells.LayerNormLSTM(7, hidden, 1).double()
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.6, 0.6)
    p = {k: v.numpy() for k, v in module.state_dict().items()}
    for k in ("weight_ih_l0", "weight_hh_l0"):
        p[k] = p[k].astype(np.float32)  # the engine quantizes the float32 weights
    stream = lstm_infer.load(module).quantize("int8").stream(batch_size=4)
    x = rng.standard_normal((8, 4, 7)).astype(np.float32)
    for x_t in x:
        before = stream.state  # empty before the first step: zeros
        zero = np.zeros((1, 4, hidden))
        h, c = (before.get(k, zero)[0].astype(np.float64) for k in ("cell/h", "cell/c"))
        want, _ = _ln_lstm_int8_step(p, x_t, h, c, float(p["eps"]))
        np.testing.assert_allclose(stream.step(x_t[None])[0], want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("fmt", ["bf16", "int8"])
def test_a_quantized_cell_saves_and_loads_exactly(tmp_path, rng, fmt: str) -> None:
    module = _module("layer_norm_lstm")
    model = lstm_infer.load(module).quantize(fmt)
    feeds = _feeds(rng, "layer_norm_lstm", module, 9, 2)
    want = model.run(feeds)["output"]
    model.save(tmp_path / "cell.lstm_infer")
    again = lstm_infer.load(tmp_path / "cell.lstm_infer")
    np.testing.assert_array_equal(again.run(feeds)["output"], want)
    back = again.quantize("fp32")  # the float32 weights were kept
    np.testing.assert_allclose(
        back.run(feeds)["output"], _torch(module, "layer_norm_lstm", feeds), rtol=1e-5, atol=1e-5
    )


def test_quantize_marks_lstm_nodes_as_model_quantize_does(rng) -> None:
    """A graph of an LSTM and a layer norm, quantized by GraphModel.quantize, equals the
    stack's own Model.quantize under the same head (the same kernels, the same weights)."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(6, 24, 2)
    stack = lstm_infer.load(lstm.state_dict())
    graph = lstm_infer.load(_lstm_onnx(lstm))
    assert isinstance(graph, GraphModel)
    x = rng.standard_normal((10, 3, 6)).astype(np.float32)
    for fmt in ("bf16", "int8"):
        y = stack.quantize(fmt).run({"input": x})["output"].astype(np.float64)
        want = _ln(y, np.ones(24), np.zeros(24), 1e-5)
        got = graph.quantize(fmt).run({"X": x})["Y"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert np.abs(got - graph.run({"X": x})["Y"]).max() > 1e-5  # not float32


def _lstm_onnx(lstm: torch.nn.Module) -> bytes:
    import io

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = lstm

        def forward(self, x):
            return torch.nn.functional.layer_norm(self.lstm(x)[0], (24,))  # not a bare stack

    buf = io.BytesIO()
    torch.onnx.export(Wrap(), torch.zeros(10, 3, 6), buf, input_names=["X"], output_names=["Y"],
                      dynamo=False, dynamic_axes={"X": {0: "T", 1: "B"}})  # fmt: skip
    return buf.getvalue()


def test_bad_formats_are_refused(tmp_path) -> None:
    model = lstm_infer.load(_module("layer_norm_lstm"))
    with pytest.raises((ValueError, ModelFormatError), match="float16|format"):
        model.quantize("float16")
    graph = model._graph
    node = next(n for n in graph.nodes if n.op == "LayerNormLSTM")
    node.attrs[WEIGHT_FORMAT] = "float16"
    with pytest.raises(ModelFormatError, match="weight format 'float16'"):
        type(model)(graph, model.source).run({"input": np.zeros((2, 1, 6), np.float32)})


def test_a_graph_without_recurrent_layers_has_nothing_to_quantize() -> None:
    helper = require("onnx").helper
    tensor = helper.make_tensor_value_info("x", 1, ["n", 4])
    out = helper.make_tensor_value_info("y", 1, ["n", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [tensor], [out])
    model = lstm_infer.load(helper.make_model(graph).SerializeToString())
    with pytest.raises(ModelFormatError, match="no recurrent layer or cell"):
        model.quantize("int8")
