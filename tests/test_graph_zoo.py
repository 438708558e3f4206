"""Whole models around a recurrent core, exported by torch (both exporters) or built with
onnx.helper in the shapes other converters write, each against PyTorch and onnxruntime.

Every model here is one the fused recurrent-stack path refuses; it loads as a GraphModel and
runs node for node.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import require

torch = require("torch")
onnx = require("onnx")
ort = require("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lstm_infer  # noqa: E402

nn = torch.nn
TOL = 1e-4


def export(module: nn.Module, args: tuple, names: list[str], outs: list[str], dynamo: bool,
           dynamic: dict | None = None) -> bytes:  # fmt: skip
    buf = io.BytesIO()
    kwargs = {"dynamic_axes": dynamic} if dynamic and not dynamo else {}
    torch.onnx.export(
        module, args, buf, input_names=names, output_names=outs, dynamo=dynamo, **kwargs
    )
    return buf.getvalue()


def ort_run(model: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def check(model_bytes: bytes, feeds: dict[str, np.ndarray], torch_out: list[np.ndarray]) -> None:
    model = lstm_infer.load(model_bytes)
    assert isinstance(model, lstm_infer.GraphModel), "expected the graph path"
    got = model.run(feeds)
    got_list = [got[o.name] for o in model.outputs]
    for g, t, o in zip(got_list, torch_out, ort_run(model_bytes, feeds)):
        np.testing.assert_allclose(g, t, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(g, o, rtol=TOL, atol=TOL)


class LastStepClassifier(nn.Module):
    """Keras return_sequences=False: y[:, -1] of a batch-first LSTM, then a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(6, 12, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(self.rnn(x)[0][:, -1]), -1)


class PackedState(nn.Module):
    """One (2, B, H) state tensor split into h and c, returned packed again (VAD style)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(5, 8)
        self.out = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, (h, c) = self.rnn(x, (state[:1], state[1:]))
        return torch.sigmoid(self.out(y)).squeeze(-1), torch.cat([h, c], 0)


class ResidualTanhHead(nn.Module):
    """GRU -> tanh(Linear) + residual -> Linear: a head the fused path cannot fold."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(7, 10)
        self.mid = nn.Linear(10, 10)
        self.fc = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rnn(x)[0]
        return self.fc(torch.tanh(self.mid(y)) + y)


@pytest.mark.parametrize("dynamo", [False, True])
def test_last_timestep_classifier(dynamo: bool, rng) -> None:
    torch.manual_seed(0)
    net = LastStepClassifier().eval()
    x = rng.standard_normal((2, 9, 6)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    check(export(net, (torch.from_numpy(x),), ["x"], ["p"], dynamo), {"x": x}, [want])


@pytest.mark.parametrize("dynamo", [False, True])
def test_packed_state_tensor(dynamo: bool, rng) -> None:
    torch.manual_seed(1)
    net = PackedState().eval()
    x = rng.standard_normal((6, 2, 5)).astype(np.float32)
    s = rng.standard_normal((2, 2, 8)).astype(np.float32)
    with torch.no_grad():
        want = [t.numpy() for t in net(torch.from_numpy(x), torch.from_numpy(s))]
    model = export(net, (torch.from_numpy(x), torch.from_numpy(s)), ["x", "state"],
                   ["prob", "stateN"], dynamo)  # fmt: skip
    check(model, {"x": x, "state": s}, want)


@pytest.mark.parametrize("dynamo", [False, True])
def test_residual_tanh_head(dynamo: bool, rng) -> None:
    torch.manual_seed(2)
    net = ResidualTanhHead().eval()
    x = rng.standard_normal((5, 3, 7)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    check(export(net, (torch.from_numpy(x),), ["x"], ["y"], dynamo), {"x": x}, [want])


def test_keras_style_bidirectional_concat(rng) -> None:
    """tf2onnx's Bidirectional: a forward and a reverse LSTM node, each Squeezed, Concat on
    features, then a Dense (MatMul + Add) and a Softmax, batch-major."""
    T, B, I, H, C = 7, 2, 4, 6, 3
    w = {d: rng.standard_normal((1, 4 * H, I)).astype(np.float32) * 0.3 for d in ("f", "r")}
    r = {d: rng.standard_normal((1, 4 * H, H)).astype(np.float32) * 0.3 for d in ("f", "r")}
    b = {d: rng.standard_normal((1, 8 * H)).astype(np.float32) * 0.1 for d in ("f", "r")}
    dense = rng.standard_normal((2 * H, C)).astype(np.float32)
    bias = rng.standard_normal(C).astype(np.float32)
    inits = [numpy_helper.from_array(dense, "dense"), numpy_helper.from_array(bias, "bias")]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2], name="to_time")]
    for d, direction in (("f", "forward"), ("r", "reverse")):
        inits += [numpy_helper.from_array(w[d], f"W{d}"), numpy_helper.from_array(r[d], f"R{d}"),
                  numpy_helper.from_array(b[d], f"B{d}")]  # fmt: skip
        nodes += [
            helper.make_node(
                "LSTM",
                ["xt", f"W{d}", f"R{d}", f"B{d}"],
                [f"y{d}"],
                hidden_size=H,
                direction=direction,
                name=f"lstm_{d}",
            ),  # fmt: skip
            helper.make_node("Squeeze", [f"y{d}", "axis1"], [f"s{d}"], name=f"sq_{d}"),
        ]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    nodes += [
        helper.make_node("Concat", ["sf", "sr"], ["cat"], axis=-1, name="concat"),
        helper.make_node("Transpose", ["cat"], ["bt"], perm=[1, 0, 2], name="to_batch"),
        helper.make_node("MatMul", ["bt", "dense"], ["logits0"], name="dense"),
        helper.make_node("Add", ["logits0", "bias"], ["logits"], name="bias"),
        helper.make_node("Softmax", ["logits"], ["p"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "keras_bidirectional",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, I])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", T, C])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 15)]
    ).SerializeToString()
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    # PyTorch reference: the same weights in a bidirectional nn.LSTM (iofc -> ifgo).
    ref = nn.LSTM(I, H, bidirectional=True)
    order = [0, 2, 3, 1]
    with torch.no_grad():
        for d, suffix in (("f", ""), ("r", "_reverse")):

            def gates(m: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(np.concatenate([m[g * H : (g + 1) * H] for g in order], 0))

            getattr(ref, f"weight_ih_l0{suffix}").copy_(gates(w[d][0]))
            getattr(ref, f"weight_hh_l0{suffix}").copy_(gates(r[d][0]))
            getattr(ref, f"bias_ih_l0{suffix}").copy_(gates(b[d][0, : 4 * H]))
            getattr(ref, f"bias_hh_l0{suffix}").copy_(gates(b[d][0, 4 * H :]))
        y = ref(torch.from_numpy(x).transpose(0, 1))[0].transpose(0, 1).numpy()
    want = y @ dense + bias
    want = np.exp(want - want.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    check(model, {"x": x}, [want])


def test_graph_model_api(rng) -> None:
    torch.manual_seed(3)
    net = ResidualTanhHead().eval()
    x = rng.standard_normal((5, 3, 7)).astype(np.float32)
    model = lstm_infer.load(
        export(net, (torch.from_numpy(x),), ["x"], ["y"], False, {"x": {0: "T", 1: "B"}})
    )
    assert [i.name for i in model.inputs] == ["x"] and model.inputs[0].shape == ("T", "B", 7)
    assert model.outputs[0].name == "y"
    longer = rng.standard_normal((11, 4, 7)).astype(np.float32)  # other T and batch
    with torch.no_grad():
        want = net(torch.from_numpy(longer)).numpy()
    for threads in (1, 2):
        np.testing.assert_allclose(model.run({"x": longer}, threads=threads)["y"], want,
                                   rtol=TOL, atol=TOL)  # fmt: skip
    stream = model.stream()  # no state inputs: it streams along its time axis
    np.testing.assert_allclose(stream.feed(longer, chunk=3), want, rtol=TOL, atol=TOL)
    assert stream.time_axis == 0
    with pytest.raises(lstm_infer.errors.InputError, match="size 7 on axis 2"):
        model.run({"x": np.zeros((5, 3, 6), np.float32)})


def test_live_module_with_example_inputs_exports_and_runs(rng) -> None:
    """load(module, example_inputs=...) exports with torch.onnx; any T and batch run."""
    torch.manual_seed(4)
    net = ResidualTanhHead()
    net.train()  # load must export in eval mode and give the module back as it was
    x = torch.from_numpy(rng.standard_normal((4, 2, 7)).astype(np.float32))
    model = lstm_infer.load(net, example_inputs=(x,), input_names=["frames"])
    assert net.training
    assert [i.name for i in model.inputs] == ["frames"]
    longer = rng.standard_normal((13, 3, 7)).astype(np.float32)
    with torch.no_grad():
        want = net.eval()(torch.from_numpy(longer)).numpy()
    got = model.run({"frames": longer})
    np.testing.assert_allclose(next(iter(got.values())), want, rtol=TOL, atol=TOL)


class Crnn(nn.Module):
    """An OCR CRNN: (N, 1, 16, W) images -> conv/BN/ReLU/pool x2 -> BiLSTM -> CTC log-probs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d((2, 1)),
        )  # fmt: skip
        self.rnn = nn.LSTM(16 * 4, 24, bidirectional=True)
        self.fc = nn.Linear(48, 11)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x)  # (N, 16, 4, W/2)
        n, c, h, w = f.shape
        seq = f.permute(3, 0, 1, 2).reshape(w, n, c * h)
        return torch.log_softmax(self.fc(self.rnn(seq)[0]), -1)


class VadShape(nn.Module):
    """(N, samples) -> STFT as a strided Conv1d -> magnitude -> Conv1d -> LSTM -> Conv1d(k=1)
    -> a 1-D speech probability per recording."""

    def __init__(self) -> None:
        super().__init__()
        self.stft = nn.Conv1d(1, 2 * 33, 64, stride=32, bias=False)
        self.enc = nn.Conv1d(33, 16, 3, padding=1)
        self.rnn = nn.LSTM(16, 16, batch_first=True)
        self.head = nn.Conv1d(16, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stft(x[:, None])
        mag = torch.sqrt(s[:, :33] ** 2 + s[:, 33:] ** 2 + 1e-6)
        e = torch.relu(self.enc(mag))
        y = self.rnn(e.transpose(1, 2))[0]
        return torch.sigmoid(self.head(y.transpose(1, 2))).squeeze(1).mean(-1)


class NormResidual(nn.Module):
    """LSTM -> LayerNorm -> residual Add -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(12, 20)
        self.norm = nn.LayerNorm(20)
        self.fc = nn.Linear(20, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rnn(x)[0]
        return self.fc(self.norm(y) + y)


def _randomised(net: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics (fresh ones are the identity)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return net.eval()


ZOO = {
    "crnn": (Crnn, (3, 1, 16, 20)),
    "vad": (VadShape, (2, 1600)),
    "norm_residual": (NormResidual, (9, 3, 12)),
}


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_front_ends_and_heads_around_the_recurrence(name: str, dynamo: bool, rng) -> None:
    torch.manual_seed(3)
    make, shape = ZOO[name]
    net = _randomised(make())
    x = rng.standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    check(export(net, (torch.from_numpy(x),), ["x"], ["y"], dynamo), {"x": x}, [want])
