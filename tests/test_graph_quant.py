"""Quantization ops (issue 14): QuantizeLinear / DequantizeLinear (per tensor and per axis),
DynamicQuantizeLinear, MatMulInteger, each against onnxruntime; and whole models as
onnxruntime's quantize_dynamic and quantize_static write them (dynamic MatMul chains, QDQ
pairs around a MatMul), against onnxruntime's own int8 result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import require

import lstm_infer
from lstm_infer.errors import InputError, UnsupportedModelError

onnx = require("onnx")
ort = require("onnxruntime")
from graph_builders import model_bytes as _model_bytes  # noqa: E402
from graph_builders import onnxruntime_run, vi  # noqa: E402
from onnx import TensorProto as TP  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

OPSET = 19


def model_bytes(nodes: list, inputs: list, outputs: list, inits: dict | None = None) -> bytes:
    return _model_bytes(nodes, inputs, outputs, inits, OPSET)


def assert_like_onnxruntime(data: bytes | str, feeds: dict, atol: float = 0.0) -> dict:
    model = lstm_infer.load(data)
    got = model.run(feeds)
    for (name, g), w in zip(got.items(), onnxruntime_run(data, feeds)):
        assert g.shape == w.shape and g.dtype == w.dtype, (name, g.shape, g.dtype, w.dtype)
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), atol=atol,
                                   rtol=0, err_msg=name)  # fmt: skip
    return got


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("per_axis", [False, True])
def test_quantize_and_dequantize_linear(
    dtype: Any, per_axis: bool, rng: np.random.Generator
) -> None:
    elem = TP.UINT8 if dtype == np.uint8 else TP.INT8
    if per_axis:
        scale = np.array([0.02, 0.05, 0.1], np.float32)
        zero = np.array([3, 0, 7] if dtype == np.uint8 else [-3, 0, 5], dtype)
    else:
        scale, zero = np.array(0.04, np.float32), np.array(9 if dtype == np.uint8 else -2, dtype)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1),
    ]
    data = model_bytes(
        nodes,
        [vi("x", TP.FLOAT, [4, 3, 5])],
        [vi("q", elem, [4, 3, 5]), vi("y", TP.FLOAT, [4, 3, 5])],
        {"s": scale, "z": zero},
    )
    x = rng.standard_normal((4, 3, 5)).astype(np.float32) * 6  # saturates at both ends
    x[0, 0, :3] = np.array([0.5, 1.5, -2.5], np.float32) * scale.reshape(-1)[0]  # ties to even
    assert_like_onnxruntime(data, {"x": x})


def test_quantize_linear_without_zero_point_is_uint8(rng: np.random.Generator) -> None:
    data = model_bytes(
        [helper.make_node("QuantizeLinear", ["x", "s"], ["q"])],
        [vi("x", TP.FLOAT, [7])],
        [vi("q", TP.UINT8, [7])],
        {"s": np.array(0.1, np.float32)},
    )
    assert_like_onnxruntime(data, {"x": rng.uniform(-5, 30, 7).astype(np.float32)})


@pytest.mark.parametrize("case", ["mixed", "positive", "negative", "zeros"])
def test_dynamic_quantize_linear(case: str, rng: np.random.Generator) -> None:
    x = {
        "mixed": rng.standard_normal((6, 9)),
        "positive": rng.uniform(0.5, 3, (6, 9)),
        "negative": -rng.uniform(0.5, 3, (6, 9)),
        "zeros": np.zeros((6, 9)),
    }[case].astype(np.float32)
    data = model_bytes(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])],
        [vi("x", TP.FLOAT, [6, 9])],
        [vi("q", TP.UINT8, [6, 9]), vi("s", TP.FLOAT, []), vi("z", TP.UINT8, [])],
    )
    if case == "zeros":  # onnxruntime divides by its zero scale here; ours gives zero codes
        got = lstm_infer.load(data).run({"x": x})
        assert not got["q"].any() and got["s"] == 0 and got["z"] == 0
        return
    got = lstm_infer.load(data).run({"x": x})
    want = onnxruntime_run(data, {"x": x})
    assert got["s"] == want[1] and got["z"] == want[2]
    np.testing.assert_array_equal(got["q"], want[0])  # (200 random tensors measured: exact)


@pytest.mark.parametrize(
    ("a_type", "b_type", "zeros"),
    [
        (np.uint8, np.int8, "none"),
        (np.uint8, np.uint8, "scalar"),
        (np.int8, np.int8, "scalar"),
        (np.uint8, np.int8, "per_row_col"),
    ],
)
def test_matmul_integer(a_type: Any, b_type: Any, zeros: str, rng: np.random.Generator) -> None:
    code = {np.dtype(np.uint8): TP.UINT8, np.dtype(np.int8): TP.INT8}
    info = np.iinfo
    a = rng.integers(info(a_type).min, info(a_type).max + 1, (2, 5, 40)).astype(a_type)
    b = rng.integers(info(b_type).min, info(b_type).max + 1, (40, 7)).astype(b_type)
    names, inits = ["a", "b"], {"b": b}
    if zeros == "scalar":
        inits |= {"az": np.array(3, a_type), "bz": np.array(-1 if b_type == np.int8 else 4, b_type)}
        names += ["az", "bz"]
    elif zeros == "per_row_col":
        a = a[0]  # per-row zero points need A of rank 2
        inits |= {"az": rng.integers(0, 9, 5).astype(a_type), "bz": np.zeros(7, b_type)}
        names += ["az", "bz"]
    shape = list(a.shape[:-1]) + [7]
    data = model_bytes(
        [helper.make_node("MatMulInteger", names, ["y"])],
        [vi("a", code[np.dtype(a_type)], list(a.shape))],
        [vi("y", TP.INT32, shape)],
        inits,
    )
    got = lstm_infer.load(data).run({"a": a})
    az = inits.get("az", np.array(0)).astype(np.int64)
    if az.ndim == 1:
        az = az[:, None]
    bz = inits.get("bz", np.array(0)).astype(np.int64)
    want = np.matmul(a.astype(np.int64) - az, b.astype(np.int64) - bz)  # exact integers
    np.testing.assert_array_equal(got["y"], want)
    if zeros != "per_row_col":  # onnxruntime takes only scalar zero points here
        (ort_y,) = onnxruntime_run(data, {"a": a})
        assert ort_y.dtype == got["y"].dtype and ort_y.shape == got["y"].shape
        # MatMulInteger is exact int32 arithmetic; onnxruntime's uint8 x int8 kernel on CPUs
        # without VNNI (VPMADDUBSW) saturates pairs of products at int16 for full-range
        # values, so only there may it differ from the exact result (and so from us).
        if not (a_type == np.uint8 and b_type == np.int8) or _ort_uint8_int8_is_exact():
            np.testing.assert_array_equal(ort_y, want)


def _ort_uint8_int8_is_exact() -> bool:
    """Whether onnxruntime's uint8 x int8 MatMulInteger is exact on this CPU (without VNNI
    its VPMADDUBSW kernel saturates pairs of full-range products at int16)."""
    a = np.full((1, 64), 255, np.uint8)
    b = np.full((64, 16), 127, np.int8)
    data = model_bytes(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        [vi("a", TP.UINT8, [1, 64])],
        [vi("y", TP.INT32, [1, 16])],
        {"b": b},
    )
    (y,) = onnxruntime_run(data, {"a": a})
    return bool(np.all(y == 255 * 127 * 64))


def _float_mlp(path: Path, rng: np.random.Generator) -> None:
    W1 = rng.uniform(-0.5, 0.5, (16, 32)).astype(np.float32)
    W2 = rng.uniform(-0.5, 0.5, (32, 8)).astype(np.float32)
    b1 = rng.uniform(-0.1, 0.1, 32).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "W2"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "mlp",
        [vi("x", TP.FLOAT, ["N", 16])],
        [vi("y", TP.FLOAT, ["N", 8])],
        [numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (W2, "W2"), (b1, "b1"))],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(path))


def test_quantize_dynamic_model_matches_onnxruntime(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """onnxruntime.quantization.quantize_dynamic's MatMul chains (DynamicQuantizeLinear ->
    MatMulInteger -> Cast -> Mul) against onnxruntime running the same int8 file."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = tmp_path / "mlp.onnx", tmp_path / "mlp_int8.onnx"
    _float_mlp(src, rng)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops, ops
    x = rng.standard_normal((5, 16)).astype(np.float32)
    got = lstm_infer.load(str(dst)).run({"x": x})["y"]
    want = onnxruntime_run(str(dst), {"x": x})[0]
    float_y = onnxruntime_run(str(src), {"x": x})[0]
    assert np.abs(got - float_y).max() < 0.1 * np.abs(float_y).max()
    if _ort_uint8_int8_is_exact():
        # Same codes up to a rounding tie in x / scale (one code moves a product by one scale).
        np.testing.assert_allclose(got, want, atol=2e-2 * np.abs(float_y).max())
    else:  # onnxruntime saturates here: we must be at least as close to the float model
        assert np.abs(got - float_y).max() <= np.abs(want - float_y).max() + 1e-6


def test_qdq_model_matches_onnxruntime(rng: np.random.Generator) -> None:
    """QDQ pairs around a MatMul, as quantize_static writes them."""
    W = rng.uniform(-1, 1, (12, 6)).astype(np.float32)
    w_scale = (np.abs(W).max(axis=0) / 127).astype(np.float32)
    Wq = np.clip(np.rint(W / w_scale), -127, 127).astype(np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["Wq", "ws"], ["Wd"], axis=1),
        helper.make_node("MatMul", ["xd", "Wd"], ["y"]),
    ]
    data = model_bytes(
        nodes,
        [vi("x", TP.FLOAT, [3, 12])],
        [vi("y", TP.FLOAT, [3, 6])],
        {"xs": np.array(0.02, np.float32), "xz": np.array(128, np.uint8), "Wq": Wq, "ws": w_scale},
    )
    x = rng.uniform(-2, 2, (3, 12)).astype(np.float32)
    # float64 reference on the codes as the ONNX spec makes them (float32 x / scale, ties to even)
    xq = np.clip(np.rint(x / np.float32(0.02)).astype(np.float64) + 128, 0, 255)
    want = ((xq - 128) * np.float32(0.02)) @ (Wq.astype(np.float64) * w_scale)
    got = lstm_infer.load(data).run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    if _ort_uint8_int8_is_exact():  # else its u8 x s8 kernel saturates int16 pairs here
        assert_like_onnxruntime(data, {"x": x}, atol=1e-5)


def test_blocked_quantization_is_refused() -> None:
    g = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["q", "s"], ["y"], axis=0, block_size=2)],
        "g",
        [vi("q", TP.INT8, [4])],
        [vi("y", TP.FLOAT, [4])],
        [numpy_helper.from_array(np.ones(2, np.float32), "s")],
    )
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]).SerializeToString()
    with pytest.raises(UnsupportedModelError, match="blocked quantization"):
        lstm_infer.load(data)


def test_bad_scale_shape_names_the_node() -> None:
    data = model_bytes(
        [helper.make_node("DequantizeLinear", ["q", "s"], ["y"], axis=1)],
        [vi("q", TP.INT8, [2, 3])],
        [vi("y", TP.FLOAT, [2, 3])],
        {"s": np.ones(4, np.float32)},
    )
    with pytest.raises(InputError, match="DequantizeLinear.*x_scale has 4 values"):
        lstm_infer.load(data).run({"q": np.zeros((2, 3), np.int8)})


def _float_lstm(path: Path, rng: np.random.Generator, direction: str, I: int, H: int) -> None:
    D = 2 if direction == "bidirectional" else 1
    s = 1 / np.sqrt(H)
    W = rng.uniform(-s, s, (D, 4 * H, I)).astype(np.float32)
    R = rng.uniform(-s, s, (D, 4 * H, H)).astype(np.float32)
    B = rng.uniform(-s, s, (D, 8 * H)).astype(np.float32)
    g = helper.make_graph(
        [
            helper.make_node(
                "LSTM",
                ["X", "W", "R", "B"],
                ["Y", "Y_h", "Y_c"],
                hidden_size=H,
                direction=direction,
            )
        ],  # fmt: skip
        "lstm",
        [vi("X", TP.FLOAT, ["T", "N", I])],
        [
            vi("Y", TP.FLOAT, ["T", D, "N", H]),
            vi("Y_h", TP.FLOAT, [D, "N", H]),
            vi("Y_c", TP.FLOAT, [D, "N", H]),
        ],  # fmt: skip
        [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (B, "B"))],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)]), str(path))


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_dynamic_quantize_lstm_runs_as_our_int8_lstm(
    tmp_path: Path, rng: np.random.Generator, per_channel: bool, direction: str
) -> None:
    """onnxruntime's quantize_dynamic turns an LSTM into com.microsoft.DynamicQuantizeLSTM:
    it loads as our int8 LSTM, and its outputs are as close to the float model as
    onnxruntime's own int8 run (both quantize weights and activations, differently)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = tmp_path / "lstm.onnx", tmp_path / "lstm_int8.onnx"
    _float_lstm(src, rng, direction, 24, 32)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel)
    assert "DynamicQuantizeLSTM" in {n.op_type for n in onnx.load(str(dst)).graph.node}
    model = lstm_infer.load(str(dst))
    x = rng.standard_normal((12, 3, 24)).astype(np.float32)
    got = model.run({"X": x})
    ort_int8 = onnxruntime_run(str(dst), {"X": x})
    ort_float = onnxruntime_run(str(src), {"X": x})
    for name, want_q, want_f in zip(("Y", "Y_h", "Y_c"), ort_int8, ort_float):
        ours_err = np.abs(got[name] - want_f).max()
        ort_err = np.abs(want_q - want_f).max()
        assert got[name].shape == want_q.shape, name
        assert ours_err <= 2 * ort_err + 1e-3, (name, ours_err, ort_err)
        assert np.abs(got[name] - want_q).max() <= 3 * ort_err + 1e-3, name
    # and it really is the int8 engine: the same as our own quantization of the float model
    ours_q = lstm_infer.load(str(src)).quantize("int8").run({"X": x})
    if per_channel:  # per-column scales: re-quantizing per row recovers onnxruntime's codes
        np.testing.assert_allclose(got["Y"], ours_q["Y"], atol=1e-6)  # (measured: equal)


@pytest.mark.parametrize(
    ("attrs", "w_zero"),
    [
        ({}, "scalar"),
        ({"pads": [1, 2, 1, 0], "strides": [2, 1]}, "none"),
        ({"group": 2, "dilations": [1, 2]}, "per_channel"),
        ({"auto_pad": "SAME_UPPER"}, "scalar"),
    ],
)
def test_conv_integer(attrs: dict, w_zero: str, rng: np.random.Generator) -> None:
    x = rng.integers(0, 256, (2, 4, 9, 11)).astype(np.uint8)
    cin = 4 // attrs.get("group", 1)
    w = rng.integers(-128, 128, (6, cin, 3, 3)).astype(np.int8)
    inits: dict = {"w": w, "xz": np.array(117, np.uint8)}
    names = ["x", "w", "xz"]
    if w_zero == "scalar":
        inits["wz"] = np.array(3, np.int8)
        names.append("wz")
    elif w_zero == "per_channel":
        inits["wz"] = rng.integers(-5, 5, 6).astype(np.int8)
        names.append("wz")
    data = model_bytes(
        [helper.make_node("ConvInteger", names, ["y"], kernel_shape=[3, 3], **attrs)],
        [vi("x", TP.UINT8, [2, 4, 9, 11])],
        [vi("y", TP.INT32, [None, None, None, None])],
        inits,
    )
    if w_zero == "per_channel":  # onnxruntime's ConvInteger takes scalar zero points only
        got = lstm_infer.load(data).run({"x": x})["y"]
        shifted = data_with(data, "wz", np.zeros(6, np.int8))
        base = lstm_infer.load(shifted).run({"x": x})["y"].astype(np.int64)
        # y(w - z) = y(w) - z * (window sums of x - xz): check against the same op with z = 0
        ones = data_with(data_with(data, "w", np.ones_like(w)), "wz", np.zeros(6, np.int8))
        window = lstm_infer.load(ones).run({"x": x})["y"].astype(np.int64)
        want = base - inits["wz"].astype(np.int64)[None, :, None, None] * window
        np.testing.assert_array_equal(got, want)
        return
    assert_like_onnxruntime(data, {"x": x})


def data_with(data: bytes, name: str, value: np.ndarray) -> bytes:
    m = onnx.load_from_string(data)
    for i, t in enumerate(m.graph.initializer):
        if t.name == name:
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
    return m.SerializeToString()


@pytest.mark.parametrize("dynamo", [False])
def test_quantize_dynamic_crnn_matches_onnxruntime(tmp_path: Path, dynamo: bool) -> None:
    """The zoo's OCR CRNN (conv front end, BiLSTM, CTC head) through quantize_dynamic: its
    ConvInteger, DynamicQuantizeLSTM and MatMulInteger nodes run, and the log-probabilities
    are as close to the float model as onnxruntime's own int8 run is."""
    torch = require("torch")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from test_graph_zoo import Crnn, _randomised, export

    torch.manual_seed(5)
    net = _randomised(Crnn()).eval()
    image = torch.randn(2, 1, 16, 20)
    src, dst = tmp_path / "crnn.onnx", tmp_path / "crnn_int8.onnx"
    src.write_bytes(export(net, (image,), ["image"], ["logp"], dynamo,
                           {"image": {0: "N", 3: "W"}, "logp": {0: "T", 1: "N"}}))  # fmt: skip
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["Conv", "LSTM", "MatMul", "Gemm"])  # fmt: skip
    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert {"ConvInteger", "DynamicQuantizeLSTM"} <= ops, ops
    x = np.random.default_rng(6).standard_normal((2, 1, 16, 24)).astype(np.float32)
    got = lstm_infer.load(str(dst)).run({"image": x})["logp"]
    want = onnxruntime_run(str(dst), {"image": x})[0]
    float_y = onnxruntime_run(str(src), {"image": x})[0]
    ort_err = np.abs(want - float_y).max()
    assert got.shape == want.shape
    assert np.abs(got - float_y).max() <= 2 * ort_err + 1e-3, (np.abs(got - float_y).max(), ort_err)
    # the float model's best path (greedy CTC) on as many frames as onnxruntime's int8 run
    # (which on CPUs without VNNI saturates some uint8 x int8 sums and strays further)
    ours_path = (got.argmax(-1) == float_y.argmax(-1)).mean()
    ort_path = (want.argmax(-1) == float_y.argmax(-1)).mean()
    assert ours_path >= min(ort_path, 0.9), (ours_path, ort_path)


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("name", ["vad", "norm_residual", "last_step"])
def test_quantize_dynamic_zoo_models_match_onnxruntime(
    tmp_path: Path, name: str, dynamo: bool
) -> None:
    """The other zoo models through quantize_dynamic (both torch exporters): what it writes
    (DynamicQuantizeLSTM, ConvInteger, MatMulInteger chains, or none of them where the export
    has nothing it quantizes) runs, as close to the float model as onnxruntime's int8 run."""
    torch = require("torch")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from test_graph_zoo import ZOO, LastStepClassifier, _randomised, export

    torch.manual_seed(8)
    make, shape = (LastStepClassifier, (3, 9, 6)) if name == "last_step" else ZOO[name]
    net = _randomised(make()).eval()
    x = np.random.default_rng(9).standard_normal(shape).astype(np.float32)
    src, dst = tmp_path / f"{name}.onnx", tmp_path / f"{name}_int8.onnx"
    src.write_bytes(export(net, (torch.from_numpy(x),), ["x"], ["y"], dynamo))
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["Conv", "LSTM", "GRU", "MatMul", "Gemm"])  # fmt: skip
    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert ops & {"DynamicQuantizeLSTM", "ConvInteger", "MatMulInteger"}, ops
    got = lstm_infer.load(str(dst)).run({"x": x})["y"]
    want = onnxruntime_run(str(dst), {"x": x})[0]
    float_y = onnxruntime_run(str(src), {"x": x})[0]
    ort_err = np.abs(want - float_y).max()
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.abs(got - float_y).max() <= 2 * ort_err + 1e-3, (np.abs(got - float_y).max(), ort_err)


def _past_float32(rng: np.random.Generator, shape: tuple, dtype: Any) -> np.ndarray:
    """8-bit codes mostly at the ends of their range: products of such codes summed over a
    few hundred terms pass 2**24, where float32 stops holding every integer."""
    info = np.iinfo(dtype)
    ends = rng.choice(np.array([info.min, info.max, info.max - 1]), shape, p=[0.1, 0.45, 0.45])
    return np.where(rng.random(shape) < 0.8, ends, rng.integers(info.min, info.max, shape)).astype(
        dtype
    )


@pytest.mark.parametrize("weights", ["constant", "input"])
@pytest.mark.parametrize("b_type", [np.uint8, np.int8])
def test_matmul_integer_exact_past_float32(
    weights: str, b_type: Any, rng: np.random.Generator
) -> None:
    """Sums of up to 1100 products of full-range codes (|sum| past 2**24, odd values there):
    bit-exact against int64 arithmetic and onnxruntime, with the weight prepared at compile
    time (cut into ranges that float32 sums exactly) or given at run time."""
    code = {np.dtype(np.uint8): TP.UINT8, np.dtype(np.int8): TP.INT8}
    a = _past_float32(rng, (3, 7, 1100), np.uint8)
    b = _past_float32(rng, (1100, 19), b_type)
    bz = np.array(0 if b_type == np.int8 else 1, b_type)
    names, inits = ["a", "b", "az", "bz"], {"az": np.array(0, np.uint8), "bz": bz}
    inputs = [vi("a", TP.UINT8, [3, None, 1100])]
    feeds = {"a": a}
    if weights == "constant":
        inits["b"] = b
    else:
        inputs.append(vi("b", code[np.dtype(b_type)], list(b.shape)))
        feeds["b"] = b
    data = model_bytes(
        [helper.make_node("MatMulInteger", names, ["y"])],
        inputs,
        [vi("y", TP.INT32, [3, None, 19])],
        inits,
    )
    want = np.matmul(a.astype(np.int64), b.astype(np.int64) - int(bz))
    assert np.any((np.abs(want) > 1 << 24) & (want % 2 == 1))  # not float32 numbers
    got = lstm_infer.load(data).run(feeds)["y"]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    if b_type == np.uint8 or _ort_uint8_int8_is_exact():
        np.testing.assert_array_equal(got, onnxruntime_run(data, feeds)[0])
    # few rows (the packed product) and many rows (sgemm) alike
    feeds["a"] = many = _past_float32(rng, (3, 100, 1100), np.uint8)
    want = np.matmul(many.astype(np.int64), b.astype(np.int64) - int(bz))
    np.testing.assert_array_equal(lstm_infer.load(data).run(feeds)["y"], want)


@pytest.mark.parametrize(
    ("group", "weights", "width"),
    [(1, "constant", 20), (2, "constant", 20), (1, "input", 20), (1, "constant", 5)],
)
def test_conv_integer_exact_past_float32(
    group: int, weights: str, width: int, rng: np.random.Generator
) -> None:
    """A 3x3 ConvInteger over 160 input channels of full-range codes (window sums past
    2**24): bit-exact against onnxruntime, the channels cut into ranges float32 sums
    exactly; grouped, weights given at run time, and a row too narrow for the direct
    kernel (im2col) too."""
    x = _past_float32(rng, (2, 160, 6, width), np.uint8)
    w = _past_float32(rng, (8, 160 // group, 3, 3), np.uint8)
    inits: dict = {"xz": np.array(0, np.uint8), "wz": np.array(2, np.uint8)}
    inputs = [vi("x", TP.UINT8, list(x.shape))]
    feeds = {"x": x}
    if weights == "constant":
        inits["w"] = w
    else:
        inputs.append(vi("w", TP.UINT8, list(w.shape)))
        feeds["w"] = w
    data = model_bytes(
        [
            helper.make_node(
                "ConvInteger", ["x", "w", "xz", "wz"], ["y"], kernel_shape=[3, 3], pads=[1] * 4,
                group=group,
            )
        ],
        inputs,
        [vi("y", TP.INT32, [None, None, None, None])],
        inits,
    )  # fmt: skip
    got = assert_like_onnxruntime(data, feeds)["y"]
    assert np.any((np.abs(got.astype(np.int64)) > 1 << 24) & (got % 2 == 1))
