"""silero-vad's shipped ONNX files (from the ``silero-vad`` package of the test extra) against
onnxruntime, chunk by chunk with the state fed back as its users do.

The files with ``If`` (silero_vad.onnx, silero_vad_16k_op15.onnx, silero_vad_half.onnx,
silero_vad_op18_ifless.onnx) are tested in test_graph_control.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from conftest import require

ort = require("onnxruntime")
require("onnx")

import lstm_infer  # noqa: E402


def silero_file(name: str) -> Path:
    spec = importlib.util.find_spec("silero_vad")  # not imported: its __init__ needs torch
    if spec is None or not spec.submodule_search_locations:
        require("silero_vad")  # skips, or fails under LSTM_INFER_REQUIRE_ALL=1
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    assert path.is_file(), f"silero-vad ships no {name}"
    return path


def _audio(rng: np.random.Generator, chunks: int, width: int) -> np.ndarray:
    """A chirp with noise bursts: something with both speech-like and silent stretches."""
    t = np.arange(chunks * width) / 16000.0
    x = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) * (np.sin(2 * np.pi * 0.7 * t) > 0)
    x += 0.02 * rng.standard_normal(t.shape)
    return x.astype(np.float32).reshape(chunks, width)


def _session(path: Path):  # noqa: ANN202
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def test_openvino_16k_chunks_with_state_fed_back(rng) -> None:
    path = silero_file("silero_vad_openvino_16k.onnx")
    ours, ref = lstm_infer.load(path), _session(path)
    state_o = state_r = np.zeros((2, 1, 128), np.float32)
    for chunk in _audio(rng, 40, 576):
        x = chunk[None]
        got = ours.run({"input": x, "state": state_o})
        names = [o.name for o in ref.get_outputs()]
        want = dict(zip(names, ref.run(None, {"input": x, "state": state_r})))
        np.testing.assert_allclose(got["output"], want["output"], atol=1e-4)
        np.testing.assert_allclose(got["stateN"], want["stateN"], atol=1e-4)
        state_o, state_r = got["stateN"], want["stateN"]


def test_16k_sequence_whole_recording(rng) -> None:
    path = silero_file("silero_vad_16k_sequence.onnx")
    ours, ref = lstm_infer.load(path), _session(path)
    x = _audio(rng, 60, 576)
    h = c = np.zeros((1, 1, 128), np.float32)
    got = ours.run({"input": x, "h": h, "c": c})
    names = [o.name for o in ref.get_outputs()]
    want = dict(zip(names, ref.run(None, {"input": x, "h": h, "c": c})))
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, atol=1e-4, err_msg=name)
