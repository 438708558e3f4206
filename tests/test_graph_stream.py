"""State-carrying streams of graph models against onnxruntime fed its state back by hand.

silero-VAD's files (state -> stateN), an exported LSTM with h0/c0 -> hn/cn, explicit
state_map, snapshots, and the refusals (no pairable state, bad names, bad steps leaving the
state untouched).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require

ort = require("onnxruntime")
torch = require("torch")

from test_graph_zoo import PackedState, ResidualTanhHead, export, ort_run  # noqa: E402
from test_silero_vad import _audio, _session, silero_file  # noqa: E402

import lstm_infer  # noqa: E402
from lstm_infer.errors import InputError, StreamError  # noqa: E402


@pytest.mark.parametrize(
    ("name", "width", "fixed"),
    [("silero_vad_openvino_16k.onnx", 576, None), ("silero_vad.onnx", 512, {"sr": 16000})],
)
def test_silero_stream_equals_onnxruntime_fed_by_hand(name, width, fixed, rng) -> None:
    path = silero_file(name)
    ref = _session(path)
    model = lstm_infer.load(path, fixed_inputs=fixed) if fixed else lstm_infer.load(path)
    stream = model.stream()
    assert stream.state_map == {"state": "stateN"}
    state = np.zeros((2, 1, 128), np.float32)
    extra = {"sr": np.array(16000, np.int64)} if fixed else {}
    for chunk in _audio(rng, 10, width):
        prob = stream.step(chunk[None])
        assert stream.compiled, stream.compile_error
        want, state = ref.run(None, {"input": chunk[None], "state": state, **extra})
        np.testing.assert_allclose(prob, want, atol=1e-4)
        np.testing.assert_allclose(stream.state["state"], state, rtol=1e-3, atol=1e-4)


def test_packed_state_graph_streams_with_a_state_map(rng) -> None:
    torch.manual_seed(7)
    net = PackedState().eval()
    x = rng.standard_normal((1, 2, 5)).astype(np.float32)
    s0 = np.zeros((2, 2, 8), np.float32)
    data = export(net, (torch.from_numpy(x), torch.from_numpy(s0)), ["x", "state"],
                  ["prob", "stateN"], False)  # fmt: skip
    model = lstm_infer.load(data)
    stream = model.stream(batch_size=2, state_map={"state": "stateN"})
    state = s0
    for _ in range(6):
        x = rng.standard_normal((1, 2, 5)).astype(np.float32)
        got = stream.step({"x": x})
        want, state = ort_run(data, {"x": x, "state": state})
        np.testing.assert_allclose(got, want, atol=1e-5)
    snap = stream.state
    a = stream.step(x)
    stream.state = snap
    np.testing.assert_array_equal(stream.step(x), a)  # restoring a snapshot replays exactly
    stream.reset()
    np.testing.assert_allclose(stream.step(x), ort_run(data, {"x": x, "state": s0})[0],
                               atol=1e-5)  # fmt: skip


def test_refusals_and_bad_steps(rng) -> None:
    torch.manual_seed(8)
    net = ResidualTanhHead().eval()
    x = rng.standard_normal((5, 3, 7)).astype(np.float32)
    model = lstm_infer.load(export(net, (torch.from_numpy(x),), ["x"], ["y"], False))
    with pytest.raises(StreamError, match="time-axis stream runs only"):
        model.stream(compile=False)  # no state to carry: only a time-axis stream
    vad = lstm_infer.load(silero_file("silero_vad_openvino_16k.onnx"))
    with pytest.raises(StreamError, match="not an input"):
        vad.stream(state_map={"h": "stateN"})
    with pytest.raises(StreamError, match="not an output"):
        vad.stream(state_map={"state": "hn"})
    stream = vad.stream()
    before = stream.state
    with pytest.raises(InputError):
        stream.step(np.zeros((1, 100), np.float32))  # the wrong chunk size
    with pytest.raises(InputError, match="carried by the stream"):
        stream.step({"input": np.zeros((1, 576), np.float32), "state": before["state"]})
    np.testing.assert_array_equal(stream.state["state"], before["state"])
    with pytest.raises(InputError, match="shape"):
        stream.reset({"state": np.zeros((3, 1, 128), np.float32)})
