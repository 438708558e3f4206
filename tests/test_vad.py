"""``lstm-infer vad``: silero-VAD streamed over a wav, against onnxruntime fed its state.

A real speech recording (tests/fixtures/speech_16k.wav: espeak-ng, made by
tests/fixtures/make_speech_wav.py; a second of silence before, between and after two
sentences) and wavs made here with the stdlib ``wave`` module; the probabilities of our
stream must equal onnxruntime's chunk by chunk, and the speech segments must be the same.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import require

require("onnxruntime")
require("onnx")

from test_silero_vad import silero_file  # noqa: E402

import lstm_infer  # noqa: E402
from lstm_infer import cli, vad  # noqa: E402


def write_wav(path, rate: int, seconds: float, rng, width: int = 2) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    voiced = (np.sin(2 * np.pi * 0.5 * t) > 0.2).astype(float)
    x = 0.4 * voiced * np.sin(2 * np.pi * (180 + 40 * np.sin(2 * np.pi * 3 * t)) * t)
    x += 0.01 * rng.standard_normal(t.shape)
    pcm = np.clip(x * 32767, -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes() if width == 2 else np.repeat(pcm, 2).tobytes())
    return pcm


SPEECH = Path(__file__).parent / "fixtures" / "speech_16k.wav"


class _OpByOp:
    """A model whose streams run op by op (the general path the step program replaces)."""

    def __init__(self, model) -> None:  # noqa: ANN001
        self.model = model

    def stream(self):  # noqa: ANN201
        return self.model.stream(compile=False)


def test_real_speech_probabilities_and_segments_equal_onnxruntime() -> None:
    audio, rate = vad.read_wav(SPEECH)
    model_path = silero_file("silero_vad.onnx")
    model = lstm_infer.load(model_path, fixed_inputs={"sr": rate})
    ours = vad.stream_probs(model, audio, rate)
    assert ours.compiled  # every chunk one C step program
    ref = vad.stream_probs_onnxruntime(model_path, audio, rate)
    np.testing.assert_allclose(ours.probs, ref.probs, atol=1e-4)
    by_ops = vad.stream_probs(_OpByOp(model), audio, rate)
    np.testing.assert_allclose(by_ops.probs, ref.probs, atol=1e-4)
    assert not by_ops.compiled
    found = vad.segments(ours)
    assert found == vad.segments(ref)
    # The recording's layout: speech starts after its first second of silence and ends
    # before its last one.
    assert found and 0.8 <= found[0][0] <= 1.3 and found[-1][1] <= len(audio) / rate - 0.8


@pytest.mark.parametrize("rate", [16000, 8000])
def test_stream_probabilities_equal_onnxruntime(rate: int, tmp_path, rng) -> None:
    path = tmp_path / "a.wav"
    write_wav(path, rate, 3.0, rng)
    audio, got_rate = vad.read_wav(path)
    assert got_rate == rate
    model_path = silero_file("silero_vad.onnx")
    model = lstm_infer.load(model_path, fixed_inputs={"sr": rate})
    ours = vad.stream_probs(model, audio, rate)
    assert ours.compiled
    ref = vad.stream_probs_onnxruntime(model_path, audio, rate)
    assert len(ours.probs) == len(audio) // vad.CHUNK[rate]
    # each model input is the chunk after the previous chunk's last samples
    inputs = vad.chunks_with_context(audio, rate)
    c, k = vad.CONTEXT[rate], vad.CHUNK[rate]
    np.testing.assert_array_equal(inputs[1, :c], audio[k - c : k])
    np.testing.assert_array_equal(inputs[1, c:], audio[k : 2 * k])
    np.testing.assert_allclose(ours.probs, ref.probs, atol=1e-4)
    assert vad.segments(ours) == vad.segments(ref)


def test_cli_prints_segments_and_timings(capsys) -> None:
    assert cli.main(["vad", str(SPEECH), "--model", str(silero_file("silero_vad.onnx"))]) == 0
    out = capsys.readouterr().out
    assert "speech segments" in out and "real-time factor" in out
    assert "onnxruntime" in out and "max |probability difference|" in out


def test_segments_rule() -> None:
    probs = np.array([0.1, 0.9, 0.9, 0.9, 0.2, 0.9, 0.1, 0.1, 0.1, 0.1, 0.95, 0.1], np.float32)
    r = vad.VadResult(probs, np.zeros(len(probs)), 16000, 1600)  # 0.1 s per chunk
    # min silence 0.2 s = 2 chunks: the single quiet chunk at 4 does not end the segment
    assert vad.segments(r, 0.5, min_silence_ms=200, min_speech_ms=250) == [
        pytest.approx((0.1, 0.6))
    ]


def test_unsupported_wavs_are_named(tmp_path, rng) -> None:
    path = tmp_path / "b.wav"
    write_wav(path, 44100, 0.5, rng)
    with pytest.raises(lstm_infer.errors.InputError, match="44100 Hz"):
        vad.read_wav(path)
    assert cli.main(["vad", str(path), "--model", str(silero_file("silero_vad.onnx"))]) != 0
