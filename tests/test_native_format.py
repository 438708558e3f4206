"""Native format: save/load is exact; malformed files raise ModelFormatError."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import lstm_infer
from lstm_infer.errors import ModelFormatError


def _model(rng, cell, direction="forward", **attrs):
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    D = 2 if direction == "bidirectional" else 1
    I, H = 5, 11
    W = rng.uniform(-0.4, 0.4, (D, G * H, I)).astype(np.float32)
    R = rng.uniform(-0.4, 0.4, (D, G * H, H)).astype(np.float32)
    B = rng.uniform(-0.4, 0.4, (D, 2 * G * H)).astype(np.float32)
    P = rng.uniform(-0.4, 0.4, (D, 3 * H)).astype(np.float32) if cell == "lstm" else None
    return lstm_infer.Model.from_onnx_weights(cell, W, R, B, P, direction=direction, **attrs)


@pytest.mark.parametrize(
    ("cell", "direction", "attrs"),
    [
        ("lstm", "bidirectional", {"clip": 2.0, "input_forget": 1, "layout": 1}),
        ("gru", "reverse", {"linear_before_reset": 1, "activations": ["HardSigmoid", "Elu"]}),
        ("rnn", "forward", {"activations": ["LeakyRelu"], "activation_alpha": [0.3]}),
    ],
)
def test_save_load_round_trip_is_exact(tmp_path, rng, cell, direction, attrs):
    model = _model(rng, cell, direction, **attrs)
    path = tmp_path / "m.safetensors"
    model.save(path)
    again = lstm_infer.load(path)
    from_bytes = lstm_infer.load(path.read_bytes())
    x = rng.standard_normal((6, 3, 5)).astype(np.float32)
    if attrs.get("layout") == 1:
        x = x.transpose(1, 0, 2).copy()
    expected = model.run({"X": x})
    for loaded in (again, from_bytes):
        got = loaded.run({"X": x})
        assert got.keys() == expected.keys()
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])
        assert [i.name for i in loaded.inputs] == [i.name for i in model.inputs]
        assert [o.shape for o in loaded.outputs] == [o.shape for o in model.outputs]


def test_constant_initial_state_survives_round_trip(tmp_path, rng):
    W = rng.uniform(-0.5, 0.5, (1, 12, 2)).astype(np.float32)
    R = rng.uniform(-0.5, 0.5, (1, 12, 3)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (1, 2, 3)).astype(np.float32)
    c0 = rng.uniform(-1, 1, (1, 2, 3)).astype(np.float32)
    model = lstm_infer.Model.from_onnx_weights("lstm", W, R, initial_h=h0, initial_c=c0)
    model.save(tmp_path / "m.safetensors")
    again = lstm_infer.load(tmp_path / "m.safetensors")
    x = rng.standard_normal((4, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(again.run({"X": x})["Y"], model.run({"X": x})["Y"])
    # The constant state is the stream's initial state too.
    s = again.stream(batch_size=2)
    np.testing.assert_allclose(s.step(x[0]), model.run({"X": x})["Y"][0, 0], atol=1e-6)


def _write_raw(path, header: bytes, body: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + body)


def test_malformed_native_files(tmp_path, rng):
    good = tmp_path / "good.safetensors"
    _model(rng, "gru").save(good)
    data = good.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "header_too_long": struct.pack("<Q", 1 << 40) + data[8:],
        "not_json": struct.pack("<Q", 4) + b"{abc" + data[12:],
    }
    for name, blob in cases.items():
        with pytest.raises(ModelFormatError):
            lstm_infer.load(blob)
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(blob)
        with pytest.raises(ModelFormatError):
            lstm_infer.load(p)
    # A valid safetensors file whose metadata lies about the shapes.
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["lstm_infer"])
    meta["layers"][0]["hidden_size"] = 12
    header["__metadata__"]["lstm_infer"] = json.dumps(meta)
    bad = tmp_path / "lying.safetensors"
    _write_raw(bad, json.dumps(header).encode(), data[8 + n :])
    with pytest.raises(ModelFormatError, match="shape"):
        lstm_infer.load(bad)
    # Data offsets past the end of the file.
    header = json.loads(data[8 : 8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"] = [0, 10**12]
    _write_raw(bad, json.dumps(header).encode(), data[8 + n :])
    with pytest.raises(ModelFormatError, match="truncated"):
        lstm_infer.load(bad)


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        lstm_infer.load(tmp_path / "nope.onnx")
    with pytest.raises(ModelFormatError, match="cannot load"):
        lstm_infer.load(12345)
