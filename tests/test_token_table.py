"""A first layer after an embedding reads a precomputed token table (W emb[v] + b) instead of
multiplying the embedded token by W. Checked against the numpy reference (ONNX equations on
the embedded inputs) and against the same model with the table switched off."""

from __future__ import annotations

import numpy as np
import pytest
from reference import gru_ref, lstm_ref, rnn_ref

import lstm_infer
from lstm_infer import _spec
from lstm_infer._onnx_weights import ONNX_GATE_ORDER
from lstm_infer._spec import (
    GATES,
    DirectionWeights,
    ModelSpec,
    RecurrentLayer,
    Signature,
    default_activations,
)

VOCAB, I, H = 13, 6, 20
REFERENCES = {"lstm": lstm_ref, "gru": gru_ref, "rnn": rnn_ref}


def _to_onnx_order(m: np.ndarray, cell: str) -> np.ndarray:
    """Internal gate order -> ONNX's (inverse of the importer's reordering)."""
    blocks = np.split(m, GATES[cell], axis=0)
    onnx = [None] * GATES[cell]
    for k, g in enumerate(ONNX_GATE_ORDER[cell]):
        onnx[g] = blocks[k]
    return np.concatenate(onnx, axis=0)


def _model(cell: str, direction: str, seed: int = 0) -> tuple[lstm_infer.Model, dict]:
    """Embedding -> one recurrent layer, plus the ONNX-order weights for the reference."""
    rng = np.random.default_rng(seed)
    G = GATES[cell]
    D = 2 if direction == "bidirectional" else 1
    dirs, onnx = [], {"W": [], "R": [], "B": []}
    for _ in range(D):
        w = rng.uniform(-0.6, 0.6, (G * H, I)).astype(np.float32)
        r = rng.uniform(-0.4, 0.4, (G * H, H)).astype(np.float32)
        b = rng.uniform(-0.3, 0.3, G * H).astype(np.float32)
        dirs.append(DirectionWeights(w=w, r=r, bias=b, activations=default_activations(cell)))
        onnx["W"].append(_to_onnx_order(w, cell))
        onnx["R"].append(_to_onnx_order(r, cell))
        onnx["B"].append(np.concatenate([_to_onnx_order(b, cell), np.zeros(G * H, np.float32)]))
    layer = RecurrentLayer(cell, I, H, direction, dirs)
    sig = Signature("sequence", 0, {"x": "tokens"}, {"y": "y", "y_h": "h_n"})
    emb = rng.standard_normal((VOCAB, I)).astype(np.float32)
    model = lstm_infer.Model(ModelSpec([layer], sig, embedding=emb))
    return model, {k: np.stack(v) for k, v in onnx.items()} | {"emb": emb}


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_token_table_run_matches_reference(isa, cell, direction):
    model, ref = _model(cell, direction)
    assert model._takes_tokens
    tokens = np.random.default_rng(1).integers(0, VOCAB, (9, 4))
    got = model.run({"tokens": tokens})
    x = ref["emb"][tokens]
    Y, Y_h = REFERENCES[cell](x, ref["W"], ref["R"], ref["B"], direction=direction)[:2]
    D = Y.shape[1]
    np.testing.assert_allclose(got["y"], Y.transpose(0, 2, 1, 3).reshape(9, 4, D * H), atol=2e-5)
    np.testing.assert_allclose(got["h_n"], Y_h, atol=2e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_token_table_equals_the_matvec_path(monkeypatch, cell):
    """Same outputs with the table as without it (a vocabulary too large to fold)."""
    folded, _ = _model(cell, "forward", seed=3)
    monkeypatch.setattr(_spec, "TOKEN_TABLE_MAX_BYTES", 0)
    plain = lstm_infer.Model(folded.spec)
    assert folded._takes_tokens and not plain._takes_tokens
    tokens = np.random.default_rng(2).integers(0, VOCAB, (30, 3))
    for threads in (1, 2):
        np.testing.assert_allclose(
            folded.run({"tokens": tokens}, threads=threads)["y"],
            plain.run({"tokens": tokens}, threads=threads)["y"],
            atol=1e-5,
        )
    a, b = folded.stream(3), plain.stream(3)
    for t in range(10):
        np.testing.assert_allclose(a.step(tokens[t]), b.step(tokens[t]), atol=1e-5)
    np.testing.assert_allclose(a.feed(tokens[10:]), b.feed(tokens[10:]), atol=1e-5)


def test_quantized_first_layer_keeps_float_input_weights(monkeypatch):
    """With a token table the step never reads layer 0's W, so quantizing leaves it float32;
    without one it is quantized like every other matrix."""
    model, _ = _model("lstm", "forward")
    w = model.spec.layers[0].directions[0].w
    q = model.quantize("int8")
    np.testing.assert_array_equal(q.spec.layers[0].directions[0].w, w)
    r = model.spec.layers[0].directions[0].r
    assert not np.array_equal(q.spec.layers[0].directions[0].r, r)
    monkeypatch.setattr(_spec, "TOKEN_TABLE_MAX_BYTES", 0)
    q_plain = model.quantize("int8")
    assert not np.array_equal(q_plain.spec.layers[0].directions[0].w, w)


def test_bad_token_ids_are_refused_before_the_state_changes():
    model, _ = _model("gru", "forward")
    stream = model.stream(2)
    stream.step(np.array([1, 2]))
    before = stream.state
    for bad in (np.array([0, VOCAB]), np.array([-1, 0])):
        with pytest.raises(lstm_infer.errors.InputError, match="token ids"):
            stream.step(bad)
    for key in ("h",):
        np.testing.assert_array_equal(stream.state[key][0], before[key][0])
    with pytest.raises(lstm_infer.errors.InputError, match="token ids"):
        model.run({"tokens": np.full((3, 2), VOCAB)})


def test_unfolded_embedding_stream_refuses_float_inputs(monkeypatch):
    """Without a token table the stream embeds ids itself: a float row is not a token."""
    monkeypatch.setattr(_spec, "TOKEN_TABLE_MAX_BYTES", 0)
    model, _ = _model("lstm", "forward")
    assert not model._takes_tokens
    stream = model.stream(1)
    for bad in (np.ones((1, I), np.float32), np.ones((1, I))):
        with pytest.raises(lstm_infer.errors.InputTypeError, match="token ids"):
            stream.step(bad)
    np.testing.assert_array_equal(stream.state["h"][0], 0.0)
