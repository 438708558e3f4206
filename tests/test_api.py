"""Public API: model description, feeds validation and the error messages users see."""

from __future__ import annotations

import numpy as np
import pytest

import lstm_infer
from lstm_infer.errors import InputError, InputTypeError, ModelFormatError


@pytest.fixture
def lstm_model(rng):
    W = rng.uniform(-0.3, 0.3, (2, 24, 4)).astype(np.float32)
    R = rng.uniform(-0.3, 0.3, (2, 24, 6)).astype(np.float32)
    return lstm_infer.Model.from_onnx_weights("lstm", W, R, direction="bidirectional")


def test_inputs_and_outputs_describe_the_operator(lstm_model):
    ins = {i.name: i for i in lstm_model.inputs}
    outs = {o.name: o for o in lstm_model.outputs}
    assert ins["X"].shape == ("seq_len", "batch", 4) and ins["X"].dtype == "float32"
    assert ins["initial_h"].shape == (2, "batch", 6)
    assert outs["Y"].shape == ("seq_len", 2, "batch", 6)
    assert outs["Y_c"].shape == (2, "batch", 6)
    assert set(lstm_infer.available_isas()) >= {"scalar"}
    assert lstm_infer.isa() in lstm_infer.available_isas()


def test_output_shapes_and_subset(lstm_model, rng):
    x = rng.standard_normal((5, 3, 4))  # float64: converted
    outs = lstm_model.run({"X": x}, output_names=["Y_h"])
    assert list(outs) == ["Y_h"] and outs["Y_h"].shape == (2, 3, 6)
    full = lstm_model.run({"X": x[:, :, ::-1].copy()[:, :, ::-1]})  # non-contiguous source
    assert full["Y"].shape == (5, 2, 3, 6) and full["Y"].dtype == np.float32
    np.testing.assert_array_equal(full["Y_h"], outs["Y_h"])


def test_feed_errors_name_the_input(lstm_model, rng):
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    with pytest.raises(InputError, match="missing input 'X'"):
        lstm_model.run({})
    with pytest.raises(InputError, match="unknown input name"):
        lstm_model.run({"X": x, "x2": x})
    with pytest.raises(InputError, match=r"'X'.*rank 3"):
        lstm_model.run({"X": x[0]})
    with pytest.raises(InputError, match=r"input_size=4, got \(5, 3, 5\)"):
        lstm_model.run({"X": np.zeros((5, 3, 5), np.float32)})
    with pytest.raises(InputTypeError, match="'X' must be numeric"):
        lstm_model.run({"X": np.full((5, 3, 4), "a")})
    with pytest.raises(InputError, match=r"'sequence_lens'.*\[0, 5\]"):
        lstm_model.run({"X": x, "sequence_lens": np.array([1, 6, 2], np.int32)})
    with pytest.raises(InputError, match=r"'initial_h' must have shape \(2, 3, 6\)"):
        lstm_model.run({"X": x, "initial_h": np.zeros((1, 3, 6), np.float32)})
    with pytest.raises(InputError, match="unknown output"):
        lstm_model.run({"X": x}, output_names=["nope"])


def test_constructor_errors_name_the_argument(rng):
    W = np.zeros((1, 12, 4), np.float32)
    with pytest.raises(ModelFormatError, match=r"hidden_size=4: W must be \(1, 16, input_size\)"):
        lstm_infer.Model.from_onnx_weights("lstm", W, np.zeros((1, 12, 4), np.float32))
    R = np.zeros((1, 12, 3), np.float32)
    with pytest.raises(ModelFormatError, match=r"B must have shape \(1, 24\)"):
        lstm_infer.Model.from_onnx_weights("lstm", W, R, np.zeros((1, 12), np.float32))
    with pytest.raises(ModelFormatError, match="activation 'Swish'"):
        lstm_infer.Model.from_onnx_weights("lstm", W, R, activations=["Swish", "Tanh", "Tanh"])
    with pytest.raises(ModelFormatError, match="cell must be"):
        lstm_infer.Model.from_onnx_weights("transformer", W, R)
    with pytest.raises(ModelFormatError, match="peepholes"):
        lstm_infer.Model.from_onnx_weights(
            "gru", np.zeros((1, 9, 4)), np.zeros((1, 9, 3)), P=np.zeros((1, 9))
        )


def test_empty_sequence_and_nan_propagation(lstm_model):
    out = lstm_model.run({"X": np.zeros((0, 2, 4), np.float32)})
    assert out["Y"].shape == (0, 2, 2, 6)
    np.testing.assert_array_equal(out["Y_h"], 0.0)
    x = np.zeros((3, 2, 4), np.float32)
    x[1, 0, 0] = np.nan
    y = lstm_model.run({"X": x})["Y"]
    assert np.isnan(y[1:, 0, 0]).all()  # forward direction, row 0, from t=1 on
    assert np.isfinite(y[:, :, 1]).all()  # row 1 is untouched


@pytest.mark.parametrize("threads", [2, 4])  # 4: both directions, each over two batch slices
def test_threads_split_directions_and_batch_rows(rng, threads, monkeypatch):
    from lstm_infer import model as model_module

    # Small runs stay on one thread; this one is made to split the batch too.
    monkeypatch.setattr(model_module, "_BATCH_SPLIT_MIN_WORK", 0)
    W = rng.uniform(-0.1, 0.1, (2, 288, 64)).astype(np.float32)
    R = rng.uniform(-0.1, 0.1, (2, 288, 96)).astype(np.float32)
    model = lstm_infer.Model.from_onnx_weights("gru", W, R, direction="bidirectional")
    x = rng.standard_normal((50, 17, 64)).astype(np.float32)
    lens = rng.integers(0, 51, 17).astype(np.int32)
    one = model.run({"X": x, "sequence_lens": lens})
    many = model.run({"X": x, "sequence_lens": lens}, threads=threads)
    model.threads = threads
    default = model.run({"X": x, "sequence_lens": lens})
    for name in one:
        np.testing.assert_allclose(many[name], one[name], atol=1e-6, rtol=0)
        np.testing.assert_array_equal(default[name], many[name])
    with pytest.raises(ValueError, match="threads"):
        model.threads = 0
    with pytest.raises(ValueError, match="threads"):
        model.run({"X": x}, threads=-1)


@pytest.mark.parametrize(
    "forced", ["", "scalar", "avx2", "avx512vnni", "avx512bf16", "amx", "bogus"]
)
def test_isa_at_import(tmp_path, forced):
    """LSTM_INFER_ISA picks the best usable table at or below the named one; unset, the best
    usable table that is not opt-in (avx512bf16: slower than widening, see _engine.pyx)."""
    import os
    import subprocess
    import sys

    from lstm_infer import _engine

    env = {k: v for k, v in os.environ.items() if k != "LSTM_INFER_ISA"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if forced:
        env["LSTM_INFER_ISA"] = forced
    res = subprocess.run(
        [sys.executable, "-c", "import lstm_infer; print(lstm_infer.isa())"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if forced == "bogus":
        assert res.returncode != 0 and "LSTM_INFER_ISA='bogus'" in res.stderr
        return
    assert res.returncode == 0, res.stderr
    avail = lstm_infer.available_isas()
    if not forced:
        want = _engine.default_isa()
        # Intel keeps widening for streaming bf16 (faster on Sapphire Rapids); AMD takes the
        # VDPBF16PS table (faster on Zen 4). Both measured with bench/quantized.py --isas.
        vendor = _engine.cpu_vendor()
        if vendor == "amd" and "avx512bf16" in avail:
            assert want == "avx512bf16"
        elif vendor != "amd":
            assert want != "avx512bf16"
    else:
        names = _engine.ISA_NAMES
        want = [
            n
            for n in avail
            if names.index(n) <= names.index(forced)
            and (n == forced or n not in _engine.OPT_IN_ISAS)
        ][-1]
    assert res.stdout.strip() == want
