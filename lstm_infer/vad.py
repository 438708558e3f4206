"""Real-time voice activity detection: silero-VAD's ONNX model streamed chunk by chunk.

``lstm-infer vad AUDIO.wav [--model PATH]`` reads a 16 or 8 kHz mono 16-bit PCM wav (the
stdlib ``wave`` module: no audio library needed), streams it through the model in chunks of
512 (16 kHz) or 256 (8 kHz) samples (each after the previous chunk's last 64 / 32 samples,
as silero's own wrapper feeds it) with the state carried by a :class:`GraphStream`, and
prints the speech segments, the per-chunk latency and the real-time factor; with
onnxruntime installed, the same stream through onnxruntime fed its state back by hand,
side by side (same probabilities, both timings). ``--plot out.png`` draws the probability
over the waveform (needs matplotlib).

Segments follow silero's own rule in its simplest form: speech starts at the first chunk whose
probability reaches ``threshold`` and ends once it has stayed below ``threshold - 0.15`` for
``min_silence_ms``; segments shorter than ``min_speech_ms`` are dropped.
"""

from __future__ import annotations

import importlib.util
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lstm_infer.errors import InputError

CHUNK = {16000: 512, 8000: 256}
# silero-VAD (v5) reads each chunk after the last samples of the one before (its own wrapper
# prepends them): 64 at 16 kHz, 32 at 8 kHz; the first chunk after zeros.
CONTEXT = {16000: 64, 8000: 32}


def chunks_with_context(audio: np.ndarray, rate: int) -> np.ndarray:
    """(n, context + chunk) model inputs: every whole chunk with the samples before it."""
    chunk, ctx = CHUNK[rate], CONTEXT[rate]
    n = len(audio) // chunk
    padded = np.concatenate([np.zeros(ctx, np.float32), audio[: n * chunk]])
    idx = np.arange(n)[:, None] * chunk + np.arange(ctx + chunk)[None, :]
    return padded[idx]


def default_model_path() -> Path:
    """silero-vad's ``silero_vad.onnx`` from the ``silero-vad`` package, if installed."""
    spec = importlib.util.find_spec("silero_vad")  # not imported: its __init__ needs torch
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no --model given and the silero-vad package is not installed "
            "(pip install silero-vad, or pass --model silero_vad.onnx)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1) and the sample rate of a 16-bit PCM wav file."""
    with wave.open(str(path), "rb") as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        if width != 2:
            raise InputError(f"{path}: {8 * width}-bit samples; 16-bit PCM is supported")
        if rate not in CHUNK:
            raise InputError(f"{path}: {rate} Hz; silero-VAD takes 16000 or 8000 Hz")
        frames = w.getnframes()
        if frames > rate * 60 * 60 * 4:
            raise InputError(f"{path}: longer than 4 hours ({frames} frames)")
        data = np.frombuffer(w.readframes(frames), dtype="<i2")
    audio = data.reshape(-1, channels).mean(axis=1) / 32768.0
    return audio.astype(np.float32), rate


@dataclass
class VadResult:
    probs: np.ndarray  # one speech probability per chunk
    latency_us: np.ndarray  # wall time of each chunk's step
    rate: int
    chunk: int
    compiled: bool = False  # every step ran as one C step program (False: op by op)

    @property
    def audio_seconds(self) -> float:
        return len(self.probs) * self.chunk / self.rate

    @property
    def real_time_factor(self) -> float:
        """Processing time / audio time (below 1: faster than real time)."""
        return float(self.latency_us.sum()) / 1e6 / max(self.audio_seconds, 1e-12)


def stream_probs(model, audio: np.ndarray, rate: int) -> VadResult:  # noqa: ANN001
    """Speech probability of every chunk, the state carried by ``model.stream()``."""
    inputs = chunks_with_context(audio, rate)
    n = len(inputs)
    stream = model.stream()
    probs = np.empty(n, np.float32)
    lat = np.empty(n)
    for i in range(n):
        x = inputs[i : i + 1]
        t = time.perf_counter()
        probs[i] = float(np.asarray(stream.step(x)).reshape(-1)[0])
        lat[i] = (time.perf_counter() - t) * 1e6
    return VadResult(probs, lat, rate, CHUNK[rate], bool(getattr(stream, "compiled", False)))


def stream_probs_onnxruntime(path: str | Path, audio: np.ndarray, rate: int) -> VadResult:
    """The same with onnxruntime, the state fed back by hand (one thread)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    inputs = chunks_with_context(audio, rate)
    n = len(inputs)
    state = np.zeros((2, 1, 128), np.float32)
    sr = {"sr": np.array(rate, np.int64)} if "sr" in names else {}
    probs = np.empty(n, np.float32)
    lat = np.empty(n)
    for i in range(n):
        x = inputs[i : i + 1]
        t = time.perf_counter()
        out, state = sess.run(None, {"input": x, "state": state, **sr})
        lat[i] = (time.perf_counter() - t) * 1e6
        probs[i] = float(out.reshape(-1)[0])
    return VadResult(probs, lat, rate, CHUNK[rate])


def segments(
    r: VadResult, threshold: float = 0.5, min_silence_ms: float = 100, min_speech_ms: float = 250
) -> list[tuple[float, float]]:
    """Speech segments (start, end) in seconds from per-chunk probabilities."""
    chunk_s = r.chunk / r.rate
    quiet_needed = max(1, round(min_silence_ms / 1000 / chunk_s))
    out, start, quiet = [], None, 0
    for i, p in enumerate(r.probs):
        if start is None:
            if p >= threshold:
                start, quiet = i, 0
        elif p < threshold - 0.15:
            quiet += 1
            if quiet >= quiet_needed:
                out.append((start, i - quiet + 1))
                start = None
        else:
            quiet = 0
    if start is not None:
        out.append((start, len(r.probs)))
    return [(a * chunk_s, b * chunk_s) for a, b in out if (b - a) * chunk_s * 1000 >= min_speech_ms]


def plot(path: str | Path, audio: np.ndarray, r: VadResult, threshold: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--plot needs matplotlib (pip install matplotlib)") from None
    t_audio = np.arange(len(audio)) / r.rate
    t_probs = (np.arange(len(r.probs)) + 0.5) * r.chunk / r.rate
    fig, ax = plt.subplots(figsize=(12, 3.5))
    ax.plot(t_audio, audio, color="0.7", linewidth=0.5, label="audio")
    ax.plot(t_probs, r.probs, color="C0", label="speech probability")
    ax.axhline(threshold, color="C3", linestyle="--", linewidth=0.8, label="threshold")
    ax.set_xlabel("seconds")
    ax.set_ylim(-1.05, 1.05)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)
    plt.close(fig)
