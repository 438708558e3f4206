"""Streaming: step/feed equal run on the whole sequence; state copy, restore and reset."""

from __future__ import annotations

import numpy as np
import pytest
from reference import gru_ref, lstm_proj_ref, lstm_ref, rnn_ref

import lstm_infer
from lstm_infer._onnx_weights import layer_from_onnx
from lstm_infer._spec import DirectionWeights, ModelSpec, RecurrentLayer, Signature
from lstm_infer.errors import InputError, StreamError


def onnx_weights(rng, cell, I, H, D=1, peep=False):
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    s = 1 / np.sqrt(H)
    W = rng.uniform(-s, s, (D, G * H, I)).astype(np.float32)
    R = rng.uniform(-s, s, (D, G * H, H)).astype(np.float32)
    B = rng.uniform(-s, s, (D, 2 * G * H)).astype(np.float32)
    P = rng.uniform(-s, s, (D, 3 * H)).astype(np.float32) if peep else None
    return W, R, B, P


CASES = [
    ("lstm", {}, 5, 17, 3),
    ("lstm", {"clip": 0.8, "input_forget": 1}, 3, 33, 1),
    ("gru", {"linear_before_reset": 1}, 7, 16, 2),
    ("gru", {"linear_before_reset": 0}, 1, 100, 5),
    ("rnn", {"activations": ["Relu"]}, 4, 7, 16),
    ("rnn", {}, 9, 1, 1),
]


@pytest.mark.parametrize(("cell", "attrs", "I", "H", "B"), CASES)
def test_step_and_feed_equal_run(isa, rng, cell, attrs, I, H, B):
    W, R, Bias, P = onnx_weights(rng, cell, I, H, peep=cell == "lstm")
    model = lstm_infer.Model.from_onnx_weights(cell, W, R, Bias, P, **attrs)
    T = 12
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    Y = model.run({"X": x})["Y"][:, 0]
    stream = model.stream(batch_size=B)
    steps = np.stack([stream.step(x[t]) for t in range(T)])
    np.testing.assert_allclose(steps, Y, atol=1e-6, rtol=0)
    stream.reset()
    chunks = np.concatenate([stream.feed(x[:5]), stream.feed(x[5:6]), stream.feed(x[6:])])
    np.testing.assert_allclose(chunks, Y, atol=1e-6, rtol=0)
    # Both against the independent reference too.
    ref = {"lstm": lstm_ref, "gru": gru_ref, "rnn": rnn_ref}[cell]
    kwargs = {k: v for k, v in attrs.items()}
    args = (x, W, R, Bias) if cell != "lstm" else (x, W, R, Bias, None, None, None, P)
    np.testing.assert_allclose(steps, ref(*args, **kwargs)[0][:, 0], atol=1e-5, rtol=0)


def test_state_snapshot_restore_and_reset(rng):
    W, R, B, _ = onnx_weights(rng, "lstm", 4, 9)
    model = lstm_infer.Model.from_onnx_weights("lstm", W, R, B)
    x = rng.standard_normal((10, 2, 4)).astype(np.float32)
    s = model.stream(batch_size=2)
    for t in range(4):
        s.step(x[t])
    snap = s.state
    tail = np.stack([s.step(x[t]) for t in range(4, 10)])
    s.state = snap
    again = np.stack([s.step(x[t]) for t in range(4, 10)])
    np.testing.assert_array_equal(tail, again)
    # Snapshots are copies: stepping did not change the one we hold.
    s.state = snap
    np.testing.assert_array_equal(s.state["h"][0], snap["h"][0])
    s.reset()
    fresh = model.stream(batch_size=2)
    np.testing.assert_array_equal(s.step(x[0]), fresh.step(x[0]))


def test_state_assignment_checks_shapes_and_keeps_state_on_error(rng):
    W, R, B, _ = onnx_weights(rng, "lstm", 4, 9)
    s = lstm_infer.Model.from_onnx_weights("lstm", W, R, B).stream(batch_size=2)
    s.step(rng.standard_normal((2, 4)).astype(np.float32))
    before = s.state
    bad = {"h": [np.zeros((2, 9), np.float32)], "c": [np.zeros((3, 9), np.float32)]}
    with pytest.raises(InputError, match=r"state\['c'\]\[0\]"):
        s.state = bad
    np.testing.assert_array_equal(s.state["h"][0], before["h"][0])
    with pytest.raises(InputError, match="shape"):
        s.step(np.zeros((2, 5), np.float32))
    np.testing.assert_array_equal(s.state["c"][0], before["c"][0])


def test_bidirectional_stream_is_refused(rng):
    W, R, B, _ = onnx_weights(rng, "gru", 3, 4, D=2)
    model = lstm_infer.Model.from_onnx_weights("gru", W, R, B, direction="bidirectional")
    with pytest.raises(StreamError, match="bidirectional"):
        model.stream()


def stack_model(rng, cells, sizes, I):
    layers = []
    for cell, H in zip(cells, sizes):
        W, R, B, _ = onnx_weights(rng, cell, I, H)
        layers.append(layer_from_onnx(cell, W, R, B))
        I = H
    n = len(layers)
    sig = Signature("sequence", 0, {"x": "x"}, {"y": "y", "y_h": "h_n"})
    return lstm_infer.Model(ModelSpec(layers, sig)), layers, n


def test_stack_of_layers_runs_and_streams(isa, rng):
    model, layers, _ = stack_model(rng, ["lstm", "gru", "rnn"], [8, 8, 8], I=5)
    x = rng.standard_normal((7, 3, 5)).astype(np.float32)
    out = model.run({"x": x})
    # Reference: chain the single-layer references.
    h = x
    finals = []
    for layer in layers:
        dw = layer.directions[0]
        from lstm_infer._onnx_weights import ONNX_GATE_ORDER

        H, G = layer.hidden_size, {"rnn": 1, "lstm": 4, "gru": 3}[layer.cell]
        inv = np.argsort(ONNX_GATE_ORDER[layer.cell])
        W = np.concatenate([dw.w[k * H : (k + 1) * H] for k in inv])[None]
        R = np.concatenate([dw.r[k * H : (k + 1) * H] for k in inv])[None]
        B = np.concatenate(
            [np.concatenate([dw.bias[k * H : (k + 1) * H] for k in inv]), np.zeros(G * H)]
        )[None]
        ref = {"lstm": lstm_ref, "gru": gru_ref, "rnn": rnn_ref}[layer.cell]
        y, yh = ref(h, W, R, B)[:2]
        h = y[:, 0].astype(np.float32)
        finals.append(yh[0])
    np.testing.assert_allclose(out["y"], h, atol=1e-5)
    np.testing.assert_allclose(out["h_n"], np.stack(finals), atol=1e-5)
    stream = model.stream(batch_size=3)
    steps = np.stack([stream.step(x[t]) for t in range(7)])
    np.testing.assert_allclose(steps, out["y"], atol=1e-6)


def test_projection_lstm_matches_reference(isa, rng):
    I, H, P, T, B = 6, 20, 7, 9, 2
    s = 1 / np.sqrt(H)
    w_ih = rng.uniform(-s, s, (4 * H, I)).astype(np.float32)
    w_hh = rng.uniform(-s, s, (4 * H, P)).astype(np.float32)
    b = rng.uniform(-s, s, 4 * H).astype(np.float32)
    w_hr = rng.uniform(-s, s, (P, H)).astype(np.float32)
    # PyTorch order i, f, g, o is the internal order: no reordering needed.
    dw = DirectionWeights(
        w=w_ih, r=w_hh, bias=b, proj=w_hr, activations=lstm_infer._spec.default_activations("lstm")
    )
    layer = RecurrentLayer("lstm", I, H, "forward", [dw], proj_size=P)
    sig = Signature("sequence", 0, {"x": "x"}, {"y": "y", "y_h": "h", "y_c": "c"})
    model = lstm_infer.Model(ModelSpec([layer], sig))
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    out = model.run({"x": x})
    y, h, c = lstm_proj_ref(x, w_ih, w_hh, b, None, w_hr)
    np.testing.assert_allclose(out["y"], y, atol=1e-5)
    np.testing.assert_allclose(out["h"][0], h, atol=1e-5)
    np.testing.assert_allclose(out["c"][0], c, atol=1e-5)
    stream = model.stream(batch_size=B)
    np.testing.assert_allclose(np.stack([stream.step(x[t]) for t in range(T)]), y, atol=1e-5)


def test_stream_batch_and_input_errors(rng):
    W, R, B, _ = onnx_weights(rng, "rnn", 3, 5)
    model = lstm_infer.Model.from_onnx_weights("rnn", W, R, B)
    with pytest.raises(ValueError, match="batch_size"):
        model.stream(batch_size=0)
    s = model.stream(batch_size=2)
    with pytest.raises(InputError, match=r"\(2, 3\)"):
        s.step(np.zeros((1, 3), np.float32))
    with pytest.raises(TypeError, match="numeric"):
        s.step(np.array([["a", "b", "c"]] * 2))
    # float64 and non-contiguous inputs are converted.
    x = rng.standard_normal((3, 2)).T
    np.testing.assert_allclose(s.step(x), model.stream(2).step(x.astype(np.float32)), atol=1e-7)


def test_step_reads_non_native_byte_order_correctly(rng):
    """A big-endian float32 array is converted, not read as if it were native."""
    W = rng.uniform(-0.5, 0.5, (1, 16, 4)).astype(np.float32)
    R = rng.uniform(-0.5, 0.5, (1, 16, 4)).astype(np.float32)
    model = lstm_infer.Model.from_onnx_weights("lstm", W, R)
    a, b = model.stream(2), model.stream(2)
    for _ in range(3):
        x = rng.standard_normal((2, 4)).astype(np.float32)
        np.testing.assert_array_equal(a.step(x.astype(">f4")), b.step(x))
