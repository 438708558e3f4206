"""Recurrent cells torch.onnx.export unrolled over T steps become one LSTM / GRU node again
(lstm_infer.passes.reroll_cells): each model equals onnxruntime on the exported graph at the
traced T, and PyTorch in float64 at other lengths (which the unrolled graph itself cannot
take). Graphs that only look like a cell stay unrolled and still equal onnxruntime."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import require

torch = require("torch")
ort = require("onnxruntime")
onnx = require("onnx")

import unrolled_cell_models as m  # noqa: E402

import lstm_infer  # noqa: E402

TOL = 1e-4
EXPORTED_T = 5
OTHER_T = (3, 9)
BATCH, INP, HIDDEN = 2, 4, 6


def export(module: torch.nn.Module, args: tuple, names: list[str], dynamo: bool) -> bytes:
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, args, buf, input_names=names, dynamo=dynamo)
    return buf.getvalue()


def ort_run(model: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def torch_f64(module: torch.nn.Module, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The module's outputs in float64 (a copy of it; ``module`` stays float32)."""
    import copy

    twin = copy.deepcopy(module).double()
    with torch.no_grad():
        out = twin(*(torch.from_numpy(v.astype(np.float64)) for v in feeds.values()))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def ops_of(model: object) -> set[str]:
    return {n.op for n in model.graph.nodes}


def check_rerolled(module: torch.nn.Module, make_feeds, dynamo: bool, cell: str,
                   rng: np.random.Generator,
                   exported_t: int = EXPORTED_T) -> lstm_infer.GraphModel:  # fmt: skip
    """Export at ``exported_t``; the model must hold ``cell`` nodes and no per-step products,
    equal onnxruntime at ``exported_t`` and float64 torch at OTHER_T."""
    module = module.eval()
    feeds = make_feeds(exported_t, rng)
    exported = export(module, tuple(torch.from_numpy(v) for v in feeds.values()),
                      list(feeds), dynamo)  # fmt: skip
    model = lstm_infer.load(exported)
    ops = ops_of(model)
    assert cell in ops and not ops & {"Gemm", "MatMul", "Sigmoid"}, ops
    got = model.run(feeds)
    want = ort_run(exported, feeds)
    assert len(got) == len(want)
    for name, expected in zip(got, want):
        np.testing.assert_allclose(got[name], expected, rtol=TOL, atol=TOL, err_msg=name)
    for steps in OTHER_T:
        other = make_feeds(steps, rng)
        got = model.run(other)
        for name, expected in zip(got, torch_f64(module, other)):
            np.testing.assert_allclose(got[name], expected, rtol=TOL, atol=TOL,
                                       err_msg=f"{name} at T={steps}")  # fmt: skip
    return model


def seq_feeds(batch_first: bool = True, states: int = 0):
    def make(steps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        shape = (BATCH, steps, INP) if batch_first else (steps, BATCH, INP)
        feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
        for k in range(states):
            feeds[f"s{k}"] = rng.standard_normal((BATCH, HIDDEN)).astype(np.float32)
        return feeds

    return make


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cell_loops_become_one_recurrent_node(cell: str, dynamo: bool, rng) -> None:
    model = check_rerolled(m.CellLoop(cell, INP, HIDDEN), seq_feeds(), dynamo, cell.upper(), rng)
    x = next(i for i in model.inputs if i.name == "x")
    assert x.shape[1] == "time"  # the traced length is no longer required


@pytest.mark.parametrize("exported_t", [2, 13])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_loops_traced_at_other_lengths_reroll_too(cell: str, exported_t: int, rng) -> None:
    """The traced length is not special: exports of 2 and 13 steps re-roll and run at 3 / 9."""
    check_rerolled(m.CellLoop(cell, INP, HIDDEN), seq_feeds(), False, cell.upper(), rng, exported_t)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_time_first_reverse_loops(cell: str, rng) -> None:
    module = m.CellLoop(cell, INP, HIDDEN, batch_first=False, reverse=True)
    model = check_rerolled(module, seq_feeds(batch_first=False), False, cell.upper(), rng)
    (node,) = [n for n in model.graph.nodes if n.op == cell.upper()]
    assert node.attrs["direction"] == "reverse"


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fed_initial_states(cell: str, dynamo: bool, rng) -> None:
    module = m.CellLoop(cell, INP, HIDDEN, fed=True)
    states = 2 if cell == "lstm" else 1
    check_rerolled(module, seq_feeds(states=states), dynamo, cell.upper(), rng)


@pytest.mark.parametrize("order", ["ifgo", "iofc", "ifco"])
def test_hand_written_lstm_over_concat_in_any_gate_order(order: str, rng) -> None:
    check_rerolled(m.FusedLSTM(INP, HIDDEN, order), seq_feeds(), False, "LSTM", rng)


@pytest.mark.parametrize("dynamo", [False, True])
def test_keras_style_gru_reset_before(dynamo: bool, rng) -> None:
    model = check_rerolled(m.KerasGRU(INP, HIDDEN), seq_feeds(), dynamo, "GRU", rng)
    (node,) = [n for n in model.graph.nodes if n.op == "GRU"]
    assert node.attrs["linear_before_reset"] == 0


def test_two_layer_bidirectional_stack(rng) -> None:
    """A CRNN's BiLSTM written as LSTMCell loops: four chains over two layers."""
    model = check_rerolled(m.BiStack(INP, HIDDEN), seq_feeds(batch_first=False), False,
                           "LSTM", rng)  # fmt: skip
    directions = sorted(n.attrs["direction"] for n in model.graph.nodes if n.op == "LSTM")
    assert directions == ["forward", "forward", "reverse", "reverse"]


@pytest.mark.parametrize("kind", ["weights", "activation", "leak"])
def test_what_is_not_one_layer_stays_unrolled(kind: str, rng) -> None:
    module = m.Mismatch(INP, HIDDEN, kind).eval()
    feeds = seq_feeds()(EXPORTED_T, rng)
    exported = export(module, (torch.from_numpy(feeds["x"]),), ["x"], False)
    model = lstm_infer.load(exported)
    assert "LSTM" not in ops_of(model)
    x = next(i for i in model.inputs if i.name == "x")
    assert x.shape[1] == EXPORTED_T
    got = model.run(feeds)
    for name, expected in zip(got, ort_run(exported, feeds)):
        np.testing.assert_allclose(got[name], expected, rtol=TOL, atol=TOL, err_msg=name)


def test_a_prefix_of_matching_steps_is_rerolled_over_a_fixed_slice(rng) -> None:
    """Steps 0..T-2 are one LSTM (over x[:, :T-1]); the last, with a ReLU, stays unrolled and
    reads that LSTM's final states; the traced length stays required."""
    module = m.Mismatch(INP, HIDDEN, "odd_last").eval()
    feeds = seq_feeds()(EXPORTED_T, rng)
    exported = export(module, (torch.from_numpy(feeds["x"]),), ["x"], False)
    model = lstm_infer.load(exported)
    assert {"LSTM", "Relu", "Slice"} <= ops_of(model)
    assert next(i for i in model.inputs if i.name == "x").shape[1] == EXPORTED_T
    got = model.run(feeds)
    for name, expected in zip(got, ort_run(exported, feeds)):
        np.testing.assert_allclose(got[name], expected, rtol=TOL, atol=TOL, err_msg=name)


def test_rerolled_graph_saves_and_loads(tmp_path, rng) -> None:
    module = m.CellLoop("lstm", INP, HIDDEN).eval()
    feeds = seq_feeds()(EXPORTED_T, rng)
    model = lstm_infer.load(export(module, (torch.from_numpy(feeds["x"]),), ["x"], False))
    model.save(tmp_path / "m.lstm")
    again = lstm_infer.load(tmp_path / "m.lstm")
    longer = seq_feeds()(7, rng)
    for a, b in zip(model.run(longer).values(), again.run(longer).values()):
        np.testing.assert_array_equal(a, b)
