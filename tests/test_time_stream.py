"""Time-axis streams of whole graphs against torch on the whole sequence.

Graphs exported by torch (a causal Conv1d front end written as F.pad + Conv1d, an LSTM,
LayerNorm, a Linear head; time-major and batch-first layouts) stream frame by frame and in
chunks of several sizes, and the joined outputs equal the module's output on the whole
sequence; causal convolution state crosses chunk boundaries; snapshots restore; graphs that
need the future are refused with the node named.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import require

torch = require("torch")
nn = torch.nn

import lstm_infer  # noqa: E402
from lstm_infer.errors import InputError, StreamError  # noqa: E402


class ConvLstmHead(nn.Module):
    """(B, C, T) -> causal conv (k=3, dilation 2) -> ReLU -> LSTM -> LayerNorm -> Linear."""

    def __init__(self, causal: bool = True, bidirectional: bool = False) -> None:
        super().__init__()
        self.left, self.right = (4, 0) if causal else (2, 2)
        self.conv = nn.Conv1d(6, 12, 3, dilation=2)
        self.lstm = nn.LSTM(12, 16, batch_first=True, bidirectional=bidirectional)
        self.norm = nn.LayerNorm(16 * (2 if bidirectional else 1))
        self.head = nn.Linear(16 * (2 if bidirectional else 1), 4)

    def forward(self, x):  # noqa: ANN001, ANN201
        h = torch.relu(self.conv(nn.functional.pad(x, (self.left, self.right))))
        y, _ = self.lstm(h.transpose(1, 2))
        return self.head(self.norm(y))


class NormHead(nn.Module):
    """(T, B, I) time-major: LSTM -> LayerNorm -> Linear (the issue's streamed head)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(10, 24)
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, 3)

    def forward(self, x):  # noqa: ANN001, ANN201
        y, _ = self.lstm(x)
        return self.head(self.norm(y))


def _export(net: nn.Module, x: np.ndarray, time_axis: int) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(
        net, (torch.from_numpy(x),), buf, input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {time_axis: "T"}, "y": {1 if time_axis == 2 else 0: "T"}},
        dynamo=False,
    )  # fmt: skip
    return buf.getvalue()


def _torch(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("chunk", [1, 2, 5, 23])
def test_causal_conv_lstm_head_streams_in_chunks_equal_to_the_whole_run(chunk: int, rng) -> None:
    torch.manual_seed(3)
    net = ConvLstmHead().eval()
    x = rng.standard_normal((2, 6, 23)).astype(np.float32)
    model = lstm_infer.load(_export(net, x[:, :, :9], 2))
    stream = model.stream()
    got = stream.feed(x, chunk=chunk)
    assert stream.time_axis == 2 and stream.compiled
    np.testing.assert_allclose(got, _torch(net, x), atol=1e-5)


def test_chunks_of_changing_sizes_carry_the_conv_history(rng) -> None:
    torch.manual_seed(4)
    net = ConvLstmHead().eval()
    x = rng.standard_normal((1, 6, 20)).astype(np.float32)
    stream = lstm_infer.load(_export(net, x, 2)).stream()
    parts, start = [], 0
    for size in (1, 3, 1, 7, 2, 6):
        parts.append(stream.step(x[:, :, start : start + size]))
        start += size
    np.testing.assert_allclose(np.concatenate(parts, axis=1), _torch(net, x), atol=1e-5)


def test_lstm_layernorm_linear_frame_by_frame_time_major(rng) -> None:
    torch.manual_seed(5)
    net = NormHead().eval()
    x = rng.standard_normal((30, 3, 10)).astype(np.float32)
    stream = lstm_infer.load(_export(net, x[:4], 0)).stream()
    frames = [stream.step(x[t : t + 1]) for t in range(30)]
    assert stream.time_axis == 0
    np.testing.assert_allclose(np.concatenate(frames), _torch(net, x), atol=1e-5)


def test_snapshot_restore_and_reset(rng) -> None:
    torch.manual_seed(6)
    net = ConvLstmHead().eval()
    x = rng.standard_normal((1, 6, 12)).astype(np.float32)
    stream = lstm_infer.load(_export(net, x, 2)).stream()
    first = stream.feed(x[:, :, :6], chunk=2)
    snap = stream.state
    assert any(k.endswith("/history") for k in snap) and any("initial_c" in k for k in snap)
    rest = stream.feed(x[:, :, 6:], chunk=3)
    stream.state = snap
    np.testing.assert_array_equal(stream.feed(x[:, :, 6:], chunk=3), rest)
    stream.reset()
    np.testing.assert_array_equal(stream.feed(x[:, :, :6], chunk=2), first)
    with pytest.raises(InputError, match="snapshot"):
        stream.state = {"nope": np.zeros(1)}


@pytest.mark.parametrize(
    ("net", "match"),
    [
        (ConvLstmHead(causal=False), "Conv.*pads \\(2, 2\\) along time"),
        (ConvLstmHead(bidirectional=True), "LSTM.*needs the future"),
    ],
)
def test_graphs_needing_the_future_are_refused_naming_the_node(net, match, rng) -> None:
    x = rng.standard_normal((1, 6, 10)).astype(np.float32)
    model = lstm_infer.load(_export(net.eval(), x, 2))
    stream = model.stream()
    with pytest.raises(StreamError, match=match):
        stream.step(x[:, :, :1])


class WideHead(nn.Module):
    """LSTM -> LayerNorm -> Linear to 4096 outputs: a step's output is 16 KB, so allocating
    it shows."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 4096)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.head(self.norm(self.lstm(x)[0]))


def _peak_bytes_of(body, steps: int) -> int:  # noqa: ANN001
    import tracemalloc

    tracemalloc.start()
    try:
        body()  # warm: anything cached on first use
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(steps):
            body()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_a_step_with_out_allocates_nothing(rng) -> None:
    torch.manual_seed(9)
    net = WideHead().eval()
    x = rng.standard_normal((5, 1, 8)).astype(np.float32)
    stream = lstm_infer.load(_export(net, x, 0)).stream()
    frame = x[:1]
    out = np.empty((1, 1, 4096), np.float32)
    stream.step(frame, out=out)
    with_out = _peak_bytes_of(lambda: stream.step(frame, out=out), 500)
    without = _peak_bytes_of(lambda: stream.step(frame), 500)
    assert without >= 4096 * 4  # the fresh output array each step (the measure sees it)
    assert with_out < 2048, with_out  # nothing per step beyond interpreter small objects
    stream.reset()
    np.testing.assert_allclose(
        np.concatenate([stream.step(x[t : t + 1]) for t in range(5)]), _torch(net, x), atol=1e-5
    )
    with pytest.raises(InputError, match="out must be"):
        stream.step(frame, out=np.empty((2, 4096), np.float32))


ZOO_EXPECTED = {  # zoo graph -> (its time axis, None when it streams or the refusal)
    "norm_residual": (0, None),
    "crnn": (3, "(MaxPool|Conv).*cannot stream along time"),
    "vad": (1, "cannot stream along time"),
}


@pytest.mark.parametrize("name", sorted(ZOO_EXPECTED))
def test_zoo_graphs_stream_frame_by_frame_or_are_refused(name: str, rng) -> None:
    from test_graph_zoo import ZOO, _randomised, export

    torch.manual_seed(3)
    make, shape = ZOO[name]
    axis, refusal = ZOO_EXPECTED[name]
    net = _randomised(make())
    x = rng.standard_normal(shape).astype(np.float32)
    data = export(net, (torch.from_numpy(x),), ["x"], ["y"], False, {"x": {axis: "T"}})
    model = lstm_infer.load(data)
    stream = model.stream()
    if refusal is None:
        frames = np.concatenate([stream.step(x[t : t + 1]) for t in range(shape[0])])
        np.testing.assert_allclose(frames, _torch(net, x), atol=1e-5)
        stream.reset()
        np.testing.assert_allclose(stream.feed(x, chunk=4), _torch(net, x), atol=1e-5)
    else:
        with pytest.raises(StreamError, match=refusal):
            stream.step(x)


def test_values_computed_from_the_sequence_length_are_refused(rng) -> None:
    """x + pe[:T] (a positional table sliced to the input's length) would add the chunk's
    first rows to every chunk: refused, naming the node."""

    class Positional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("pe", torch.arange(64 * 6, dtype=torch.float32).reshape(64, 1, 6))
            self.lstm = nn.LSTM(6, 5)
            self.norm = nn.LayerNorm(5)

        def forward(self, x):  # noqa: ANN001, ANN201
            return self.norm(self.lstm(x + self.pe[: x.shape[0]])[0])

    x = rng.standard_normal((8, 1, 6)).astype(np.float32)
    model = lstm_infer.load(_export(Positional().eval(), x, 0))
    with pytest.raises(StreamError, match="sequence length"):
        model.stream().feed(x, chunk=2)


class FreqPool(nn.Module):
    """(B, 1, F, T) spectrogram -> conv over (freq, causal time) -> max pool over freq only
    -> LSTM over time."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, (3, 2))
        self.pool = nn.MaxPool2d((2, 1))
        self.lstm = nn.LSTM(4 * 3, 6, batch_first=True)

    def forward(self, x):  # noqa: ANN001, ANN201
        f = self.pool(torch.relu(self.conv(nn.functional.pad(x, (1, 0, 1, 1)))))
        b, c, h, w = f.shape
        return self.lstm(f.reshape(b, c * h, w).transpose(1, 2))[0]


def test_pooling_over_frequency_streams(rng) -> None:
    torch.manual_seed(11)
    net = FreqPool().eval()
    x = rng.standard_normal((2, 1, 6, 15)).astype(np.float32)
    stream = lstm_infer.load(_export(net, x, 3)).stream()
    np.testing.assert_allclose(stream.feed(x, chunk=4), _torch(net, x), atol=1e-5)


class PerFrameConv(nn.Module):
    """BeatNet's shape: (B, T, F) features, each frame reshaped to (1, F) and convolved and
    pooled on its own (time folded into the conv's batch), then a Linear and an LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 5)
        self.pool = nn.MaxPool1d(2)
        self.fc = nn.Linear(2 * 10, 8)
        self.lstm = nn.LSTM(8, 6, batch_first=True)

    def forward(self, x):  # noqa: ANN001, ANN201
        b, t, f = x.shape
        y = self.pool(torch.relu(self.conv(x.reshape(-1, 1, f))))
        return self.lstm(self.fc(y.reshape(b, t, -1)))[0]


@pytest.mark.parametrize("chunk", [1, 4])
def test_a_per_frame_conv_with_time_folded_into_its_batch_streams(chunk: int, rng) -> None:
    """Regression (BeatNet's online mode): the conv's batch axis carries time, which the
    analysis refused as "time is not its last spatial axis"."""
    torch.manual_seed(12)
    net = PerFrameConv().eval()
    x = rng.standard_normal((1, 11, 24)).astype(np.float32)
    stream = lstm_infer.load(_export(net, x, 1)).stream()
    np.testing.assert_allclose(stream.feed(x, chunk=chunk), _torch(net, x), atol=1e-5)
    assert stream.time_axis == 1 and stream.compiled
