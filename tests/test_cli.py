"""The lstm-infer command line, run in subprocesses: exit codes and key output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import OUTSIDE, require

import lstm_infer


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m lstm_infer ARGS`` run from a scratch folder: ``-m`` puts the working
    directory first on sys.path, and a source checkout there would shadow the installed
    package (whose compiled extension the checkout lacks)."""
    return subprocess.run(
        [sys.executable, "-m", "lstm_infer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        cwd=OUTSIDE,
    )


@pytest.fixture
def gru_file(tmp_path: Path, rng: np.random.Generator) -> Path:
    W = rng.uniform(-0.3, 0.3, (1, 18, 4)).astype(np.float32)
    R = rng.uniform(-0.3, 0.3, (1, 18, 6)).astype(np.float32)
    path = tmp_path / "gru.safetensors"
    lstm_infer.Model.from_onnx_weights("gru", W, R, linear_before_reset=1).save(path)
    return path


def test_info_lists_layers_parameters_and_io(gru_file: Path) -> None:
    res = run_cli("info", str(gru_file))
    assert res.returncode == 0, res.stderr
    assert "GRU  4 -> 6 forward" in res.stdout
    # W 18*4 + R 18*6 + folded bias 18 + recurrent n-gate bias 6
    assert "parameters:     204 " in res.stdout
    assert "X " in res.stdout and "Y_h" in res.stdout


def test_convert_writes_a_native_file_that_loads(tmp_path: Path) -> None:
    torch = require("torch")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5, num_layers=2, batch_first=True)
    src = tmp_path / "ckpt.pt"
    torch.save({"model": lstm.state_dict(), "epoch": 1}, src)
    out = tmp_path / "out.safetensors"
    res = run_cli("convert", str(src), "-o", str(out), "--batch-first")
    assert res.returncode == 0, res.stderr
    x = torch.randn(2, 4, 3)
    with torch.inference_mode():
        y, _ = lstm(x)
    got = lstm_infer.load(out).run({"input": x.numpy()})["output"]
    np.testing.assert_allclose(got, y.numpy(), atol=1e-5)


def test_bench_prints_stream_and_sequence_timings(gru_file: Path) -> None:
    res = run_cli("bench", str(gru_file), "--steps", "200", "--runs", "5", "--seq-len", "20")
    assert res.returncode == 0, res.stderr
    assert "stream step" in res.stdout and "sequence run" in res.stdout
    assert "median us" in res.stdout
    assert "[###" in res.stderr  # the progress bar


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    res = run_cli("info", str(tmp_path / "missing.onnx"))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"lstm-infer info: error: no such model file: '{tmp_path / 'missing.onnx'}'"
    ]
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x01\x02 this is not a model")
    res = run_cli("info", str(garbage))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = run_cli("--debug", "info", str(garbage))
    assert res.returncode != 0 and "Traceback" in res.stderr
    res = run_cli("bench", str(garbage), "--steps", "not-a-number")
    assert res.returncode == 2 and "invalid int value" in res.stderr


def test_console_script_is_installed() -> None:
    exe = shutil.which("lstm-infer")
    if exe is None:
        pytest.skip("package not installed with its console script (in-place build)")
    res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "demo" in res.stdout


def _ort_greedy(onnx_path: Path, prompt_ids: list[int], length: int) -> list[int]:
    """Greedy generation with onnxruntime alone: the independent side of the comparison."""
    ort = require("onnxruntime")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[1].shape]
    h = np.zeros(shape, np.float32)
    c = np.zeros(shape, np.float32)
    logits = None
    for tok in prompt_ids:
        logits, h, c = sess.run(None, {"tokens": np.array([[tok]]), "h0": h, "c0": c})
    out = []
    for _ in range(length):
        tok = int(np.argmax(logits[0, 0]))
        out.append(tok)
        logits, h, c = sess.run(None, {"tokens": np.array([[tok]]), "h0": h, "c0": c})
    return out


def test_demo_greedy_text_equals_onnxruntime_greedy() -> None:
    from lstm_infer.bundled import char_lm_card, model_path

    vocab = char_lm_card()["vocab"]
    prompt = "import os\ndef "
    res = run_cli("demo", "--prompt", prompt, "--length", "120", "--temperature", "0")
    assert res.returncode == 0, res.stderr
    assert "median us/step" in res.stdout and "tokens/s" in res.stdout
    assert "onnxruntime" in res.stdout and "same text: True" in res.stdout
    index = {ch: i for i, ch in enumerate(vocab)}
    expected = _ort_greedy(model_path("char_lm.onnx"), [index[ch] for ch in prompt], 120)
    text = "".join(vocab[t] for t in expected)
    assert prompt + text in res.stdout


def test_convert_quantize_writes_a_quantized_native_file(gru_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.safetensors"
    res = run_cli("convert", str(gru_file), "-o", str(out), "--quantize", "int8")
    assert res.returncode == 0, res.stderr
    assert "int8 weights" in res.stdout
    model = lstm_infer.load(out)
    assert model.layers[0].weight_format == "int8"
    res = run_cli("info", str(out))
    assert "int8 weights" in res.stdout
    res = run_cli("convert", str(gru_file), "-o", str(out), "--quantize", "int4")
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_validate_passes_on_the_bundled_onnx_model_and_fails_on_garbage(tmp_path: Path) -> None:
    require("onnxruntime")
    from lstm_infer.bundled import model_path

    res = run_cli("validate", str(model_path("char_lm.onnx")), "--seq-len", "8", "--trials", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "logits" in res.stdout and "PASSED" in res.stdout
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    res = run_cli("validate", str(garbage))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
