"""A single LSTM / GRU step on its own (a model run once per chunk, its state passed in and
returned) becomes one native node over a 1-step sequence (lstm_infer.passes.one_step_cells):
torch modules calling ``nn.LSTMCell`` / ``nn.GRUCell`` once on a 2-D input, with the states
separate or packed in one (2, B, H) tensor as silero-vad does, against onnxruntime and float64
torch; silero's ``op18_ifless`` file chunk by chunk and as a stream against onnxruntime.
Look-alikes (other gate activations, weights that are inputs) stay unrolled."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require

torch = require("torch")
ort = require("onnxruntime")
onnx = require("onnx")

from test_reroll_cells import export, ort_run, torch_f64  # noqa: E402
from test_silero_vad import _audio, _session, silero_file  # noqa: E402

import lstm_infer  # noqa: E402

nn = torch.nn
BATCH, INP, HIDDEN = 3, 5, 7


class OneStep(nn.Module):
    """``cell`` (lstm / gru) once on x (B, I) from a Linear encoder; the states passed in
    and returned (``packed``: one (2, B, H) / (1, B, H) state tensor, split and stacked)."""

    def __init__(self, cell: str, packed: bool = False, inp: int = INP) -> None:
        super().__init__()
        self.kind, self.packed = cell, packed
        self.enc = nn.Linear(inp, inp)
        self.cell = nn.LSTMCell(inp, HIDDEN) if cell == "lstm" else nn.GRUCell(inp, HIDDEN)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = torch.relu(self.enc(x))
        if self.packed:
            (s,) = state
            state = (s[0], s[1]) if self.kind == "lstm" else (s[0],)
        if self.kind == "lstm":
            h, c = self.cell(x, state)
            new = (h, c)
        else:
            h = self.cell(x, state[0])
            new = (h,)
        prob = torch.sigmoid(self.head(h))
        return (prob, torch.stack(new, 0)) if self.packed else (prob, *new)


class OddGate(nn.Module):
    """One LSTM step written by hand whose candidate (or whose forget gate) uses another
    activation: not an LSTM."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.cell, self.where = nn.LSTMCell(INP, HIDDEN), where

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple:
        gates = x @ self.cell.weight_ih.T + self.cell.bias_ih + h @ self.cell.weight_hh.T
        i, f, g, o = (gates + self.cell.bias_hh).chunk(4, 1)
        act = torch.relu if self.where == "candidate" else torch.tanh
        gate = torch.nn.functional.hardsigmoid if self.where == "forget" else torch.sigmoid
        c = gate(f) * c + torch.sigmoid(i) * act(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class BatchOfVectors(nn.Module):
    """The LSTMCell's equations over a 3-D (N, B, I) input by MatMul: broadcast, not a step."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(INP, HIDDEN)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple:
        w, r = self.cell.weight_ih, self.cell.weight_hh
        gates = torch.matmul(x, w.T) + torch.matmul(h, r.T) + self.cell.bias_ih
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class InputWeights(nn.Module):
    """One LSTM step whose weight matrices are inputs of the graph (not constants)."""

    def forward(self, x, h, c, w_ih, w_hh):  # noqa: ANN001, ANN201
        i, f, g, o = (x @ w_ih + h @ w_hh).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


def _feeds(cell: str, packed: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {"x": rng.standard_normal((BATCH, INP)).astype(np.float32)}
    states = 2 if cell == "lstm" else 1
    if packed:
        feeds["state"] = rng.standard_normal((states, BATCH, HIDDEN)).astype(np.float32)
    else:
        for k in range(states):
            feeds[f"s{k}"] = rng.standard_normal((BATCH, HIDDEN)).astype(np.float32)
    return feeds


def _check(module: nn.Module, feeds: dict[str, np.ndarray], dynamo: bool) -> lstm_infer.GraphModel:
    module = module.eval()
    data = export(module, tuple(torch.from_numpy(v) for v in feeds.values()), list(feeds), dynamo)
    model = lstm_infer.load(data)
    got = model.run(feeds)
    want = ort_run(data, feeds)
    assert len(got) == len(want)
    for (name, value), ref, ref64 in zip(got.items(), want, torch_f64(module, feeds)):
        np.testing.assert_allclose(value, ref, rtol=1e-4, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(value, ref64, rtol=1e-5, atol=1e-5, err_msg=name)
    return model


def _ops(model: lstm_infer.GraphModel) -> list[str]:
    return [n.op for n in model.graph.nodes]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_one_cell_step_becomes_one_node(cell: str, dynamo: bool, packed: bool, rng) -> None:
    torch.manual_seed(3)
    model = _check(OneStep(cell, packed), _feeds(cell, packed, rng), dynamo)
    ops = _ops(model)
    assert ops.count(cell.upper()) == 1, ops
    # (the encoder and the head are Gemms of their own: the cell's are gone)
    assert ops.count("Gemm") + ops.count("MatMul") <= 2 and "Tanh" not in ops, ops
    assert ops.count("Sigmoid") <= 1, ops


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_bare_cell_step_has_no_products_left(cell: str, rng) -> None:
    """The input and state widths equal (which leaf is the state cannot be told by shape)."""

    class Bare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            kind = nn.LSTMCell if cell == "lstm" else nn.GRUCell
            self.cell = kind(HIDDEN, HIDDEN)

        def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple:
            out = self.cell(x, state if cell == "lstm" else state[0])
            return out if cell == "lstm" else (out,)

    torch.manual_seed(5)
    feeds = {"x": rng.standard_normal((BATCH, HIDDEN)).astype(np.float32)}
    for k in range(2 if cell == "lstm" else 1):
        feeds[f"s{k}"] = rng.standard_normal((BATCH, HIDDEN)).astype(np.float32)
    for dynamo in (False, True):
        ops = set(_ops(_check(Bare(), feeds, dynamo)))
        assert cell.upper() in ops and not ops & {"Gemm", "MatMul", "Sigmoid", "Tanh"}, ops


@pytest.mark.parametrize("where", ["candidate", "forget"])
def test_a_step_with_other_activations_stays_unrolled(where: str, rng) -> None:
    torch.manual_seed(1)
    feeds = {"x": rng.standard_normal((BATCH, INP)).astype(np.float32)}
    feeds |= {n: rng.standard_normal((BATCH, HIDDEN)).astype(np.float32) for n in ("h", "c")}
    model = _check(OddGate(where), feeds, False)
    assert "LSTM" not in _ops(model)


def test_a_step_over_a_3d_batch_stays_unrolled(rng) -> None:
    feeds = {"x": rng.standard_normal((2, BATCH, INP)).astype(np.float32)}
    feeds |= {n: rng.standard_normal((2, BATCH, HIDDEN)).astype(np.float32) for n in ("h", "c")}
    model = _check(BatchOfVectors(), feeds, False)
    assert "LSTM" not in _ops(model)


def test_a_one_step_loop_over_a_sequence_is_still_a_chain(rng) -> None:
    """A cell loop traced at T = 1 reads x[:, 0] of a sequence: the chain rule takes it (and
    frees the time axis), not the one-step rule."""
    import unrolled_cell_models as m

    module = m.CellLoop("lstm", INP, HIDDEN).eval()
    x = rng.standard_normal((BATCH, 1, INP)).astype(np.float32)
    model = lstm_infer.load(export(module, (torch.from_numpy(x),), ["x"], False))
    assert "LSTM" in _ops(model) and "Gemm" not in _ops(model)
    assert next(i for i in model.inputs if i.name == "x").shape[1] == "time"
    longer = {"x": rng.standard_normal((BATCH, 6, INP)).astype(np.float32)}
    for got, want in zip(model.run(longer).values(), torch_f64(module, longer)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_step_whose_weights_are_inputs_stays_unrolled(rng) -> None:
    feeds = {"x": rng.standard_normal((BATCH, INP)).astype(np.float32)}
    feeds |= {n: rng.standard_normal((BATCH, HIDDEN)).astype(np.float32) for n in ("h", "c")}
    feeds["w_ih"] = rng.standard_normal((INP, 4 * HIDDEN)).astype(np.float32)
    feeds["w_hh"] = rng.standard_normal((HIDDEN, 4 * HIDDEN)).astype(np.float32)
    model = _check(InputWeights(), feeds, False)
    assert "LSTM" not in _ops(model)


# ---- silero-vad's op18_ifless file ---------------------------------------------------------

IFLESS = "silero_vad_op18_ifless.onnx"


def test_silero_ifless_cell_is_one_lstm_chunk_by_chunk(rng) -> None:
    path = silero_file(IFLESS)
    ref, ours = _session(path), lstm_infer.load(path, fixed_inputs={"sr": 16000})
    ops = _ops(ours)
    assert ops.count("LSTM") == 1 and not {"Gemm", "MatMul", "Tanh"} & set(ops), ops
    state_o = state_r = np.zeros((2, 1, 128), np.float32)
    sr = np.array(16000, np.int64)
    for chunk in _audio(rng, 12, 512):
        x = chunk[None]
        got = ours.run({"input": x, "state": state_o})
        want = ref.run(None, {"input": x, "state": state_r, "sr": sr})
        np.testing.assert_allclose(got["output"], want[0], atol=1e-4)
        # (the state grows with the chunks: compared relative to its size, as in
        # test_graph_control's silero tests)
        np.testing.assert_allclose(got["stateN"], want[1], rtol=1e-3, atol=1e-4)
        state_o, state_r = got["stateN"], want[1]


def test_silero_ifless_stream_compiles_and_equals_onnxruntime(rng) -> None:
    path = silero_file(IFLESS)
    ref = _session(path)
    stream = lstm_infer.load(path, fixed_inputs={"sr": 16000}).stream()
    assert stream.state_map == {"state": "stateN"}
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(16000, np.int64)
    for chunk in _audio(rng, 10, 512):
        prob = stream.step(chunk[None])
        assert stream.compiled, stream.compile_error
        want, state = ref.run(None, {"input": chunk[None], "state": state, "sr": sr})
        np.testing.assert_allclose(prob, want, atol=1e-4)
        # This input drives the gate pre-activations to |z| ~ 1.4e4, where one float32 ulp of
        # z is 1e-3: a gate in its transition moves c by ~1e-4 in any float32 engine (chunk 8
        # of this seed, against onnx's reference evaluator in float64: ours 1.9e-4 off on
        # the avx2 table, 2.1e-4 on scalar, onnxruntime 3.9e-5). So the state is compared
        # relative to |c|, which grows by one per chunk; a wiring or gate-order error is off
        # by O(1).
        scale = max(1.0, float(np.abs(state).max()))
        np.testing.assert_allclose(stream.state["state"], state, rtol=1e-3, atol=1e-4 * scale)


def test_a_step_whose_inputs_declare_no_shape_is_still_one_node(rng) -> None:
    """x and h declared with no shape at all (only c has one): the pass reads them as 2-D
    because the Gemms of the step take them, which forward shape inference cannot know (the
    reason ``one_step_cells.rank`` keeps its own rule instead of the graph's inference)."""
    torch.manual_seed(3)
    module = OneStep("lstm").eval()
    feeds = _feeds("lstm", False, rng)
    data = export(module, tuple(torch.from_numpy(v) for v in feeds.values()), list(feeds), False)
    proto = onnx.load_from_string(data)
    stripped = 0
    for value in proto.graph.input:
        if value.name in ("x", "s0"):
            value.type.tensor_type.ClearField("shape")
            stripped += 1
    assert stripped == 2
    data = proto.SerializeToString()
    model = lstm_infer.load(data)
    assert _ops(model).count("LSTM") == 1, _ops(model)
    for got, want in zip(model.run(feeds).values(), ort_run(data, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
