"""A single LSTM / GRU step on its own (a model run once per chunk, its state passed in and
returned) becomes one native node over a 1-step sequence: silero's ``op18_ifless`` file,
whose cell is inside the If that ``fixed_inputs={"sr": 16000}`` inlines, chunk by chunk and as
a stream against onnxruntime."""

from __future__ import annotations

import numpy as np
from conftest import require

ort = require("onnxruntime")
require("onnx")

from test_silero_vad import _audio, _session, silero_file  # noqa: E402

import lstm_infer  # noqa: E402


def _ops(model: lstm_infer.GraphModel) -> list[str]:
    return [n.op for n in model.graph.nodes]


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
        np.testing.assert_allclose(stream.state["state"], state, rtol=1e-3, atol=1e-4)
