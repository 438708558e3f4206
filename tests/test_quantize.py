"""bf16 and int8 weights: exact kernel numerics, bounded error against fp32, save/load, and
next-token agreement on the bundled language model."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from reference import gru_ref, lstm_ref, rnn_ref

import lstm_infer
from lstm_infer._onnx_weights import ONNX_GATE_ORDER

ml_dtypes = require("ml_dtypes")  # an independent bfloat16 rounding for the reference

REFS = {"lstm": lstm_ref, "gru": gru_ref, "rnn": rnn_ref}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def bf16_reference(m: np.ndarray) -> np.ndarray:
    return m.astype(ml_dtypes.bfloat16).astype(np.float32)


def int8_reference(m: np.ndarray) -> np.ndarray:
    """Per output row symmetric int8 of an ONNX (D, G*H, K) weight tensor."""
    peak = np.abs(m).max(axis=-1, keepdims=True)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    return (np.clip(np.round(m / scale), -127, 127) * scale).astype(np.float32)


def random_onnx_weights(rng, cell, I, H):
    g = GATES[cell]
    s = 1.0 / np.sqrt(H)
    W = rng.uniform(-s, s, (1, g * H, I)).astype(np.float32)
    R = rng.uniform(-s, s, (1, g * H, H)).astype(np.float32)
    B = rng.uniform(-s, s, (1, 2 * g * H)).astype(np.float32)
    return W, R, B


CASES = [("lstm", 7, 33), ("gru", 16, 17), ("rnn", 300, 100), ("lstm", 1, 257)]


@pytest.mark.parametrize("fmt", ["bf16", "int8"])
@pytest.mark.parametrize(("cell", "I", "H"), CASES)
def test_quantized_kernels_compute_the_dequantized_model(isa, rng, fmt, cell, I, H):
    """Every ISA's quantized kernels == the fp32 reference run on the rounded weights."""
    W, R, B = random_onnx_weights(rng, cell, I, H)
    attrs = {"linear_before_reset": 1} if cell == "gru" else {}
    model = lstm_infer.Model.from_onnx_weights(cell, W, R, B, **attrs).quantize(fmt)
    rounding = bf16_reference if fmt == "bf16" else int8_reference
    x = rng.standard_normal((9, 5, I)).astype(np.float32)
    expected = REFS[cell](x, rounding(W), rounding(R), B, **attrs)[0]
    got = model.run({"X": x})["Y"]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    stream = model.stream(batch_size=5)
    steps = np.stack([stream.step(x[t]) for t in range(9)])
    np.testing.assert_allclose(steps, expected[:, 0], atol=1e-5, rtol=0)


def test_internal_rounding_matches_the_independent_one(rng):
    from lstm_infer.quantize import dequantize

    m = rng.standard_normal((64, 33)).astype(np.float32) * 3
    m[3] = 0.0  # an all-zero row
    np.testing.assert_array_equal(dequantize(m, "bfloat16"), bf16_reference(m))
    np.testing.assert_allclose(dequantize(m, "int8"), int8_reference(m[None])[0], rtol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_error_against_fp32_is_bounded(rng, cell):
    """Measured on random well-scaled models: bf16 ~1e-3, int8 ~5e-3 max abs on the outputs."""
    W, R, B = random_onnx_weights(rng, cell, 64, 64)
    model = lstm_infer.Model.from_onnx_weights(cell, W, R, B)
    x = rng.standard_normal((50, 4, 64)).astype(np.float32)
    y = model.run({"X": x})["Y"]
    errors = {}
    for fmt, bound in (("bf16", 0.01), ("int8", 0.04)):
        yq = model.quantize(fmt).run({"X": x})["Y"]
        errors[fmt] = float(np.abs(yq - y).max())
        assert errors[fmt] <= bound, (fmt, errors[fmt])
    assert errors["bf16"] < errors["int8"]


def test_quantized_model_saves_and_loads_exactly(tmp_path, rng):
    W, R, B = random_onnx_weights(rng, "lstm", 10, 20)
    for fmt in ("bf16", "int8"):
        q = lstm_infer.Model.from_onnx_weights("lstm", W, R, B).quantize(fmt)
        q.save(tmp_path / f"{fmt}.safetensors")
        again = lstm_infer.load(tmp_path / f"{fmt}.safetensors")
        assert again.layers[0].weight_format == q.layers[0].weight_format
        x = rng.standard_normal((6, 2, 10)).astype(np.float32)
        np.testing.assert_array_equal(again.run({"X": x})["Y"], q.run({"X": x})["Y"])
    with pytest.raises(ValueError, match="bf16"):
        q.quantize("int4")


def test_gate_order_is_preserved(rng):
    """Per-row scales follow the internal gate reordering (a wrong row order would show)."""
    W, R, B = random_onnx_weights(rng, "lstm", 5, 8)
    W[0, :8] *= 40  # ONNX gate i much larger than the others
    model = lstm_infer.Model.from_onnx_weights("lstm", W, R, B).quantize("int8")
    assert ONNX_GATE_ORDER["lstm"][0] == 0
    x = rng.standard_normal((4, 1, 5)).astype(np.float32)
    expected = lstm_ref(x, int8_reference(W), int8_reference(R), B)[0]
    np.testing.assert_allclose(model.run({"X": x})["Y"], expected, atol=1e-5)


def _held_text(limit: int) -> str:
    """Held-out text: validation files of the bundled model's corpus (the stdlib)."""
    from lstm_infer.bundled import char_lm_card

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = ""
    for name in char_lm_card()["corpus"]["val_files"]:
        path = stdlib / name
        if path.is_file():
            text += path.read_text(encoding="utf-8", errors="ignore")
        if len(text) >= limit:
            break
    if len(text) < limit:
        pytest.skip("the standard library's validation files are not on this machine")
    return text[:limit]


def test_bundled_model_next_token_agreement():
    from lstm_infer.bundled import char_lm_card, model_path

    vocab = char_lm_card()["vocab"]
    index = {ch: i for i, ch in enumerate(vocab)}
    text = _held_text(200_001)
    ids = np.array([index.get(ch, 0) for ch in text], np.int64)
    model = lstm_infer.load(model_path("char_lm.safetensors"))
    tokens = ids[:-1].reshape(200, 1000)  # 200 sequences of 1000 characters
    targets = ids[1:].reshape(200, 1000)

    def predict(m):
        logits = m.run({"tokens": tokens})["logits"].astype(np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                               keepdims=True)) - logits.max(-1, keepdims=True)  # fmt: skip
        loss = -np.take_along_axis(logp, targets[..., None], -1).mean()
        return logits.argmax(-1), loss

    top1, loss = predict(model)
    # The targets (measured: bf16 99.92%, int8 99.6%; README "bf16 and int8 weights").
    for fmt, agreement in (("bf16", 0.999), ("int8", 0.99)):
        q_top1, q_loss = predict(model.quantize(fmt))
        agree = float((q_top1 == top1).mean())
        assert agree >= agreement, (fmt, agree)
        assert abs(q_loss - loss) / loss <= 0.01, (fmt, loss, q_loss)
