"""torch.onnx exports of CELLS.md's cells that load as the engine's native ops again
(lstm_infer.passes.reroll_cells, norm_cells, depth_cells).

The layer-normalised LSTM (lstm_infer.nn.LayerNormLSTM, torchaudio's RNN-T predictor layer, a
hand-written one) becomes ``LayerNormLSTM`` nodes, one per layer, whichever exporter and
whichever spelling of LayerNorm (the opset-17 op or, at opset 16, ReduceMean / Sub / Pow /
Sqrt / Div); the depth-gated LSTM (lstm_infer.nn.DepthGatedLSTM) one ``DepthGatedLSTM`` node
for its whole stack. Each equals onnxruntime on the exported graph at the traced T and
PyTorch in float64 at other lengths (which the unrolled graph itself cannot take), and a
stream's steps equal the whole run. Near misses (eps outside the root, no norm on the cell,
another activation, two eps; a depth gate blind to the lower cell or fed its stale one) stay
unrolled and still equal onnxruntime."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
from conftest import require

torch = require("torch")
ort = require("onnxruntime")
require("onnx")

import cell_export_models as m  # noqa: E402

import lstm_infer  # noqa: E402
from lstm_infer import nn as cells  # noqa: E402

ORT_TOL = 1e-4
TORCH_TOL = 1e-5  # fp32 engine vs the float64 module
EXPORTED_T = 5
OTHER_T = (1, 3, 9)
BATCH, INP, HIDDEN = 2, 4, 6
UNROLLED = {"MatMul", "Gemm", "Sigmoid", "LayerNormalization", "ReduceMean"}
# (dynamo, opset): the TorchScript exporter at its default opset (LayerNormalization) and at
# 16 (LayerNorm decomposed), the dynamo exporter (LayerNormalization).
EXPORTERS = [(False, None), (False, 16), (True, None)]


def export(module: torch.nn.Module, x: np.ndarray, dynamo: bool, opset: int | None) -> bytes:
    buf = io.BytesIO()
    kw = {} if opset is None else {"opset_version": opset}
    with torch.no_grad():
        torch.onnx.export(module, (torch.from_numpy(x),), buf, input_names=["x"],
                          dynamo=dynamo, **kw)  # fmt: skip
    return buf.getvalue()


def ort_run(model: bytes, x: np.ndarray) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def torch_f64(module: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    twin = copy.deepcopy(module).double()
    with torch.no_grad():
        out = twin(torch.from_numpy(x.astype(np.float64)))
    flat: list = []
    for o in out if isinstance(out, tuple) else (out,):
        flat += list(o) if isinstance(o, tuple) else [o]
    return [o.numpy() for o in flat]


def randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (norm gains away from 1, biases away from 0)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.6, 0.6)
    return module.eval()


def ops_of(model: lstm_infer.GraphModel) -> set[str]:
    return {n.op for n in model.graph.nodes}


def close(got: dict[str, np.ndarray], want: list[np.ndarray], tol: float, what: str) -> None:
    assert len(got) == len(want), what
    for (name, value), expected in zip(got.items(), want):
        np.testing.assert_allclose(value, expected, rtol=tol, atol=tol, err_msg=f"{name} {what}")


def sequence(steps: int, rng: np.random.Generator, batch_first: bool = False) -> np.ndarray:
    shape = (BATCH, steps, INP) if batch_first else (steps, BATCH, INP)
    return rng.standard_normal(shape).astype(np.float32)


def check_native(module: torch.nn.Module, dynamo: bool, opset: int | None, layers: int,
                 rng: np.random.Generator, batch_first: bool = False
                 ) -> lstm_infer.GraphModel:  # fmt: skip
    """Export at EXPORTED_T: one native node per layer and no per-step op left; equal to
    onnxruntime there and to float64 torch there and at OTHER_T."""
    x = sequence(EXPORTED_T, rng, batch_first)
    exported = export(module, x, dynamo, opset)
    model = lstm_infer.load(exported)
    ops = ops_of(model)
    assert not ops & UNROLLED, ops
    assert [n.op for n in model.graph.nodes].count("LayerNormLSTM") == layers
    close(model.run({"x": x}), ort_run(exported, x), ORT_TOL, "vs onnxruntime")
    for steps in (EXPORTED_T, *OTHER_T):
        other = sequence(steps, rng, batch_first)
        close(model.run({"x": other}), torch_f64(module, other), TORCH_TOL, f"at T={steps}")
    return model


@pytest.mark.parametrize(("dynamo", "opset"), EXPORTERS)
@pytest.mark.parametrize("layers", [1, 2])
def test_layer_norm_lstm_exports_become_the_native_cell(dynamo, opset, layers, rng) -> None:
    module = randomised(cells.LayerNormLSTM(INP, HIDDEN, layers))
    model = check_native(module, dynamo, opset, layers, rng)
    assert next(i for i in model.inputs if i.name == "x").shape[0] == "time"
    (node, *_) = [n for n in model.graph.nodes if n.op == "LayerNormLSTM"]
    # the graph's eps (a float32 attribute of the export, or its decomposed constant)
    assert node.attrs["eps"] == pytest.approx(1e-5, rel=1e-6)


@pytest.mark.parametrize(("dynamo", "opset"), EXPORTERS)
def test_a_stream_of_the_export_equals_its_run(dynamo, opset, rng) -> None:
    """Step by step (the final states are outputs too: the state after each step)."""
    module = randomised(cells.LayerNormLSTM(INP, HIDDEN, 2))
    model = check_native(module, dynamo, opset, 2, rng)
    x = sequence(7, rng)
    whole = model.run({"x": x})
    stream = model.stream(batch_size=BATCH)
    names = list(whole)
    steps = [stream.step(x[t : t + 1]) for t in range(len(x))]
    y = np.concatenate([s[names[0]] for s in steps])
    np.testing.assert_allclose(y, whole[names[0]], rtol=1e-6, atol=1e-6)
    for name in names[1:]:  # the final h and c
        np.testing.assert_allclose(steps[-1][name], whole[name], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("dynamo", "opset"), EXPORTERS)
@pytest.mark.parametrize("layer_norm", [True, False])
def test_torchaudio_style_predictor_stack(dynamo, opset, layer_norm, rng) -> None:
    """torchaudio's layer (input projected over the whole sequence before its loop), two of
    them stacked; without layer norm it is a plain LSTM and becomes ONNX LSTM nodes."""
    module = randomised(m.TorchaudioStack(INP, HIDDEN, 2, layer_norm))
    if layer_norm:
        check_native(module, dynamo, opset, 2, rng)
        return
    x = sequence(EXPORTED_T, rng)
    exported = export(module, x, dynamo, opset)
    model = lstm_infer.load(exported)
    assert [n.op for n in model.graph.nodes].count("LSTM") == 2
    assert not ops_of(model) & UNROLLED
    close(model.run({"x": x}), ort_run(exported, x), ORT_TOL, "vs onnxruntime")
    for steps in OTHER_T:
        other = sequence(steps, rng)
        close(model.run({"x": other}), torch_f64(module, other), TORCH_TOL, f"at T={steps}")


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("order", ["ifgo", "ofig"])
def test_hand_written_norms_in_any_gate_order(dynamo, order, rng) -> None:
    """LayerNorm written out (d * d for the square), batch-first, gates chunked in
    ``order``: the native cell with its rows permuted into i, f, g, o."""
    module = randomised(m.HandNormLSTM(INP, HIDDEN, "exact", order))
    check_native(module, dynamo, None, 1, rng, batch_first=True)


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("variant", ["eps_outside", "no_cell_norm", "relu_candidate", "two_eps"])
def test_near_misses_stay_unrolled(dynamo, variant, rng) -> None:
    module = randomised(m.HandNormLSTM(INP, HIDDEN, variant))
    x = sequence(EXPORTED_T, rng, batch_first=True)
    exported = export(module, x, dynamo, None)
    model = lstm_infer.load(exported)
    ops = ops_of(model)
    assert "LayerNormLSTM" not in ops and "LSTM" not in ops and "Sigmoid" in ops, ops
    assert next(i for i in model.inputs if i.name == "x").shape[1] == EXPORTED_T
    close(model.run({"x": x}), ort_run(exported, x), ORT_TOL, "vs onnxruntime")


def test_the_rerolled_export_saves_and_loads(tmp_path, rng) -> None:
    module = randomised(cells.LayerNormLSTM(INP, HIDDEN, 2))
    model = lstm_infer.load(export(module, sequence(EXPORTED_T, rng), False, None))
    model.save(tmp_path / "m.lstm")
    again = lstm_infer.load(tmp_path / "m.lstm")
    assert "LayerNormLSTM" in ops_of(again)
    x = sequence(8, rng)
    close(again.run({"x": x}), torch_f64(module, x), TORCH_TOL, "reloaded")


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("layers", [2, 3])
def test_depth_gated_lstm_exports_become_the_native_cell(dynamo, layers, rng) -> None:
    """The whole stack (layer 0 a plain LSTM, each layer above gated on the new cell below)
    is one node; it streams step by step as it runs."""
    module = randomised(cells.DepthGatedLSTM(INP, HIDDEN, layers))
    x = sequence(EXPORTED_T, rng)
    exported = export(module, x, dynamo, None)
    model = lstm_infer.load(exported)
    ops = ops_of(model)
    assert not ops & UNROLLED and "LSTM" not in ops, ops
    assert [n.op for n in model.graph.nodes].count("DepthGatedLSTM") == 1
    (node,) = [n for n in model.graph.nodes if n.op == "DepthGatedLSTM"]
    assert node.attrs["num_layers"] == layers
    close(model.run({"x": x}), ort_run(exported, x), ORT_TOL, "vs onnxruntime")
    for steps in (EXPORTED_T, *OTHER_T):
        other = sequence(steps, rng)
        close(model.run({"x": other}), torch_f64(module, other), TORCH_TOL, f"at T={steps}")
    x = sequence(7, rng)
    whole = model.run({"x": x})
    stream = model.stream(batch_size=BATCH)
    steps = [stream.step(x[t : t + 1]) for t in range(len(x))]
    first = next(iter(whole))
    y = np.concatenate([s[first] for s in steps])
    np.testing.assert_allclose(y, whole[first], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("variant", ["no_lower", "stale_lower"])
def test_depth_gated_near_misses_stay_unrolled(dynamo, variant, rng) -> None:
    module = randomised(m.DepthGatedMiss(INP, HIDDEN, variant))
    x = sequence(EXPORTED_T, rng)
    exported = export(module, x, dynamo, None)
    model = lstm_infer.load(exported)
    ops = ops_of(model)
    assert "DepthGatedLSTM" not in ops and "Sigmoid" in ops, ops
    close(model.run({"x": x}), ort_run(exported, x), ORT_TOL, "vs onnxruntime")
