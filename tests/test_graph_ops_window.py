"""Convolution, pooling, normalisation, Pad and reduction ops against onnxruntime.

One node per model (``graph_cases.one_node``), each run by lstm_infer and by onnxruntime on
the same random inputs; geometry cases cover strides, dilations, explicit pads, every
auto_pad, ceil_mode, groups (depthwise included), 1-, 2- and 3-D. Hostile attributes are
refused at load, impossible shapes at run time, both naming the node.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require

onnx = require("onnx")
ort = require("onnxruntime")

from graph_cases import compare, one_node  # noqa: E402

import lstm_infer  # noqa: E402
from lstm_infer.errors import InputError, ModelFormatError, UnsupportedModelError  # noqa: E402


def f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# ---- Conv --------------------------------------------------------------------------------

CONV_1D = [
    dict(),
    dict(strides=[2]),
    dict(dilations=[2]),
    dict(pads=[2, 1]),
    dict(strides=[3], dilations=[2], pads=[0, 4]),
    dict(auto_pad="SAME_UPPER", strides=[2]),
    dict(auto_pad="SAME_LOWER", strides=[2]),
    dict(auto_pad="SAME_UPPER"),
    dict(auto_pad="VALID", strides=[2]),
]


@pytest.mark.parametrize("attrs", CONV_1D, ids=lambda a: str(a) or "plain")
@pytest.mark.parametrize("bias", [True, False])
def test_conv1d_geometry(attrs: dict, bias: bool, rng) -> None:
    x = f32(rng, 2, 3, 20)
    consts = {"w": f32(rng, 4, 3, 5)}
    if bias:
        consts["b"] = f32(rng, 4)
    compare(one_node("Conv", {"x": x}, consts, **attrs), {"x": x})


@pytest.mark.parametrize(("c", "m", "group"), [(6, 4, 2), (6, 6, 3), (4, 4, 4), (4, 8, 4)])
def test_conv1d_groups_and_depthwise(c: int, m: int, group: int, rng) -> None:
    x = f32(rng, 2, c, 17)
    consts = {"w": f32(rng, m, c // group, 3), "b": f32(rng, m)}
    compare(one_node("Conv", {"x": x}, consts, group=group, pads=[1, 1], strides=[2]), {"x": x})


CONV_2D = [
    dict(),
    dict(strides=[2, 1], dilations=[1, 2], pads=[1, 0, 1, 2]),
    dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(auto_pad="SAME_LOWER", strides=[1, 2]),
    dict(group=3),
    dict(group=3, pads=[1, 1, 1, 1], dilations=[2, 2]),
]


@pytest.mark.parametrize("attrs", CONV_2D, ids=lambda a: str(a) or "plain")
def test_conv2d_geometry(attrs: dict, rng) -> None:
    x = f32(rng, 2, 3, 9, 11)
    group = attrs.get("group", 1)
    consts = {"w": f32(rng, 6, 3 // group, 3, 3), "b": f32(rng, 6)}
    compare(one_node("Conv", {"x": x}, consts, **attrs), {"x": x})


def test_conv_pointwise_3d_and_large_kernel(rng) -> None:
    x = f32(rng, 2, 8, 5, 7)
    compare(one_node("Conv", {"x": x}, {"w": f32(rng, 16, 8, 1, 1)}), {"x": x})
    x3 = f32(rng, 1, 2, 5, 6, 7)
    compare(
        one_node("Conv", {"x": x3}, {"w": f32(rng, 3, 2, 2, 3, 2)}, pads=[1, 0, 1, 0, 1, 1]),
        {"x": x3},
    )
    # An STFT written as a strided Conv1d (a VAD's front end); blocks of the im2col copy span
    # many GEMMs here (a long input).
    audio = f32(rng, 1, 1, 16000)
    compare(
        one_node("Conv", {"x": audio}, {"w": f32(rng, 66, 1, 256)}, strides=[64]),
        {"x": audio},
        tol=1e-4,
    )
    # 2-D with many output rows: several im2col blocks along the first spatial dim.
    img = f32(rng, 1, 16, 64, 80)
    compare(one_node("Conv", {"x": img}, {"w": f32(rng, 8, 16, 3, 3)}, pads=[1] * 4), {"x": img})


def test_conv_computed_weight_and_float64(rng) -> None:
    x, w, b = f32(rng, 2, 3, 12), f32(rng, 5, 3, 3), f32(rng, 5)
    compare(one_node("Conv", {"x": x, "w": w, "b": b}), {"x": x, "w": w, "b": b})
    x64 = x.astype(np.float64)
    got = lstm_infer.load(one_node("Conv", {"x": x64}, {"w": w.astype(np.float64)})).run(
        {"x": x64}
    )["y0"]
    want = np.stack(
        [
            np.stack([np.sum(w[m] * x64[n, :, t : t + 3]) for t in range(10)])
            for n in range(2)
            for m in range(5)
        ]
    ).reshape(2, 5, 10)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# ---- ConvTranspose -----------------------------------------------------------------------

CONV_T_1D = [
    dict(),
    dict(strides=[2]),
    dict(strides=[2], pads=[1, 1], output_padding=[1]),
    dict(strides=[3], dilations=[2], pads=[2, 0]),
    dict(strides=[2], output_shape=[15]),
    dict(strides=[2], auto_pad="SAME_UPPER"),
    dict(strides=[2], auto_pad="SAME_LOWER"),
    dict(group=2, strides=[2]),
]


@pytest.mark.parametrize("attrs", CONV_T_1D, ids=lambda a: str(a) or "plain")
def test_conv_transpose_1d(attrs: dict, rng) -> None:
    x = f32(rng, 2, 4, 7)
    consts = {"w": f32(rng, 4, 3, 4), "b": f32(rng, 3 * attrs.get("group", 1))}
    compare(one_node("ConvTranspose", {"x": x}, consts, **attrs), {"x": x})


def test_conv_transpose_2d(rng) -> None:
    x = f32(rng, 1, 3, 5, 6)
    consts = {"w": f32(rng, 3, 2, 3, 2)}
    compare(
        one_node("ConvTranspose", {"x": x}, consts, strides=[2, 1], pads=[1, 0, 0, 1]), {"x": x}
    )


# ---- pooling -----------------------------------------------------------------------------

POOL = [
    dict(kernel_shape=[3]),
    dict(kernel_shape=[3], strides=[2], pads=[1, 1]),
    dict(kernel_shape=[2], strides=[2], ceil_mode=1),
    dict(kernel_shape=[3], strides=[2], pads=[1, 0], ceil_mode=1),
    dict(kernel_shape=[3], auto_pad="SAME_UPPER", strides=[2]),
    dict(kernel_shape=[3], auto_pad="SAME_LOWER"),
    dict(kernel_shape=[2, 3], strides=[2, 2], pads=[0, 1, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[2, 2], strides=[2, 2]),  # MaxPool2d(2): the vector kernel, odd tails
    dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 2], strides=[1, 2], dilations=[2, 1]),
]


@pytest.mark.parametrize("attrs", POOL, ids=str)
@pytest.mark.parametrize("name", ["MaxPool", "AveragePool", "AveragePool+pad"])
def test_pools(attrs: dict, name: str, rng) -> None:
    n_sp = len(attrs["kernel_shape"])
    x = f32(rng, 2, 3, *([11, 9][:n_sp]))
    if name == "AveragePool+pad":
        name, attrs = "AveragePool", {**attrs, "count_include_pad": 1}
    compare(one_node(name, {"x": x}, **attrs), {"x": x})


def test_max_pool_dilations_and_integers(rng) -> None:
    x = f32(rng, 1, 2, 15)
    compare(one_node("MaxPool", {"x": x}, kernel_shape=[3], dilations=[2], pads=[2, 2]), {"x": x})
    xi = rng.integers(-100, 100, (1, 2, 12)).astype(np.int64)
    got = lstm_infer.load(one_node("MaxPool", {"x": xi}, kernel_shape=[2], pads=[1, 1])).run(
        {"x": xi}
    )["y0"]
    padded = np.pad(xi, [(0, 0), (0, 0), (1, 1)], constant_values=np.iinfo(np.int64).min)
    np.testing.assert_array_equal(got, np.maximum(padded[:, :, :-1], padded[:, :, 1:]))


@pytest.mark.parametrize("isa", lstm_infer.available_isas())
@pytest.mark.parametrize(
    ("k", "s", "d"), [((2, 2), (2, 2), (1, 1)), ((3, 2), (2, 3), (1, 2)), ((1, 4), (1, 1), (1, 1))]
)
def test_pool2d_kernel_against_numpy(isa: str, k: tuple, s: tuple, d: tuple, rng) -> None:
    """The engine's pooling kernel on every kernel table, against a float64 numpy window loop:
    strided views in (plane and row strides), NaN winning a max window, every output width
    around the vector width (tails)."""
    from lstm_infer import _engine

    for ow in (1, 7, 8, 9, 16, 23, 40):
        w = (ow - 1) * s[1] + (k[1] - 1) * d[1] + 1
        oh = 3
        h = (oh - 1) * s[0] + (k[0] - 1) * d[0] + 1
        big = rng.standard_normal((5, 2 * h + 1, w + 3)).astype(np.float32)
        x = big[::2, 1 : 1 + 2 * h : 2, 2 : 2 + w]  # a view: plane and row strides, not unit
        x[1, 0, 0] = np.nan
        win = np.stack(
            [
                x[:, i * d[0] : i * d[0] + s[0] * (oh - 1) + 1 : s[0],
                  j * d[1] : j * d[1] + s[1] * (ow - 1) + 1 : s[1]].astype(np.float64)
                for i in range(k[0])
                for j in range(k[1])
            ]
        )  # fmt: skip
        for is_sum, ref in ((False, np.max(win, axis=0)), (True, np.sum(win, axis=0))):
            y = np.full((x.shape[0], oh, ow), -7.0, np.float32)
            _engine.pool2d(x, *k, *s, *d, y, is_sum, isa_name=isa)
            np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-5, equal_nan=True)
            assert np.isnan(y[1, 0, 0]) and not np.isnan(y[0]).any()


def test_pool2d_refuses_bad_arguments() -> None:
    from lstm_infer import _engine

    x = np.zeros((2, 4, 4), np.float32)
    y = np.zeros((2, 2, 2), np.float32)
    with pytest.raises(ValueError, match="reach past"):
        _engine.pool2d(x, 3, 3, 2, 2, 1, 1, y)
    with pytest.raises(ValueError, match="planes"):
        _engine.pool2d(x, 2, 2, 2, 2, 1, 1, np.zeros((3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="positive"):
        _engine.pool2d(x, 0, 2, 2, 2, 1, 1, y)
    with pytest.raises(ValueError, match="unit-stride"):
        _engine.pool2d(x[:, :, ::2], 1, 1, 1, 1, 1, 1, y)
    with pytest.raises(ValueError, match="writable"):
        _engine.pool2d(x, 2, 2, 2, 2, 1, 1, y.astype(np.float64))
    with pytest.raises(ValueError, match="overlap"):
        _engine.pool2d(x, 1, 1, 1, 1, 1, 1, x)


@pytest.mark.parametrize("name", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 4, 5)])
def test_global_pools(name: str, shape: tuple, rng) -> None:
    x = f32(rng, *shape)
    compare(one_node(name, {"x": x}), {"x": x})


# ---- normalisation -----------------------------------------------------------------------


def test_batchnorm(rng) -> None:
    x = f32(rng, 2, 3, 5, 4)
    stats = {
        "s": f32(rng, 3),
        "b": f32(rng, 3),
        "m": f32(rng, 3),
        "v": np.abs(f32(rng, 3)) + 0.1,
    }
    compare(one_node("BatchNormalization", {"x": x}, stats, epsilon=1e-3), {"x": x})
    x2 = f32(rng, 4, 3)  # (N, C) after a Gemm
    compare(one_node("BatchNormalization", {"x": x2}, stats), {"x": x2})
    feeds = {"x": x, **stats}  # statistics fed at run time
    compare(one_node("BatchNormalization", feeds), feeds)


@pytest.mark.parametrize("axis", [-1, -2, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm(axis: int, bias: bool, rng) -> None:
    x = f32(rng, 2, 5, 6) * 3 + 1
    norm_shape = x.shape[axis:]
    consts = {"s": f32(rng, *norm_shape)}
    if bias:
        consts["b"] = f32(rng, *norm_shape)
    compare(one_node("LayerNormalization", {"x": x}, consts, n_out=3, axis=axis), {"x": x})
    # Y alone: the engine's row kernel (float32 statistics)
    compare(one_node("LayerNormalization", {"x": x}, consts, axis=axis), {"x": x})


@pytest.mark.parametrize("width", [1, 7, 8, 17, 256, 1000])
def test_layernorm_row_kernel(width: int, rng) -> None:
    """Y alone (the row kernel) against onnxruntime: widths around the vector widths, Scale
    broadcast from fewer dims, Scale and B fed at run time, a large common offset."""
    x = (f32(rng, 3, 4, width) + 10.0).astype(np.float32)
    consts = {"s": f32(rng, width), "b": f32(rng, width)}
    compare(one_node("LayerNormalization", {"x": x}, consts, epsilon=1e-3), {"x": x})
    feeds = {"x": x, "s": f32(rng, 1, width)}
    compare(one_node("LayerNormalization", feeds, axis=1), feeds)


@pytest.mark.parametrize("isa", lstm_infer.available_isas())
def test_layernorm_rows_kernel_against_float64(isa: str, rng) -> None:
    from lstm_infer import _engine

    for n in (1, 3, 8, 15, 16, 33, 255, 4096):
        x = (rng.standard_normal((5, n)) * 2 + 50).astype(np.float32)
        x[1] = 7.0  # a constant row: variance 0, y = bias
        s, b = f32(rng, n), f32(rng, n)
        x64 = x.astype(np.float64)
        mean = x64.mean(-1, keepdims=True)
        ref = (x64 - mean) / np.sqrt(((x64 - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
        y = _engine.layernorm_rows(x, np.empty_like(x), 1e-5, s, b, isa_name=isa)
        np.testing.assert_allclose(y, ref * s + b, rtol=1e-5, atol=2e-5)
        inplace = x.copy()
        _engine.layernorm_rows(inplace, inplace, 1e-5, isa_name=isa)
        np.testing.assert_allclose(inplace, ref, rtol=1e-5, atol=2e-5)
    with pytest.raises(ValueError, match="scale"):
        _engine.layernorm_rows(x, np.empty_like(x), 1e-5, s[:-1])
    flat = np.zeros(41, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        _engine.layernorm_rows(flat[:40].reshape(5, 8), flat[1:].reshape(5, 8), 1e-5)


def test_instancenorm(rng) -> None:
    x = f32(rng, 2, 3, 7, 4) * 2 + 0.5
    consts = {"s": f32(rng, 3), "b": f32(rng, 3)}
    compare(one_node("InstanceNormalization", {"x": x}, consts, epsilon=1e-4), {"x": x})


# ---- Pad ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads", [[0, 2, 1, 3], [1, 0, 0, 2], [0, -1, 2, 1]])
def test_pad(mode: str, pads: list, rng) -> None:
    x = f32(rng, 4, 5)
    consts = {"p": np.array(pads, np.int64)}
    if mode == "constant":
        consts["v"] = np.array(1.5, np.float32)
    compare(one_node("Pad", {"x": x}, consts, mode=mode), {"x": x})


def test_pad_axes_and_old_opset(rng) -> None:
    x = f32(rng, 2, 3, 4)
    consts = {"p": np.array([1, 1, 3, 0], np.int64), "v": np.array(0.0, np.float32)}
    consts["a"] = np.array([2, 0], np.int64)
    compare(one_node("Pad", {"x": x}, consts, opset=18, mode="reflect"), {"x": x})
    compare(one_node("Pad", {"x": x}, opset=10, pads=[0, 1, 0, 0, 2, 1], value=-2.0), {"x": x})


# ---- reductions --------------------------------------------------------------------------

REDUCE = ["ReduceMax", "ReduceMin", "ReduceSum", "ReduceMean", "ReduceProd", "ReduceSumSquare",
          "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp"]  # fmt: skip


@pytest.mark.parametrize("name", REDUCE)
@pytest.mark.parametrize("axes", [None, [1], [0, -1]])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reductions(name: str, axes: list | None, keepdims: int, rng) -> None:
    x = rng.uniform(0.5, 1.5, (3, 4, 5)).astype(np.float32)
    consts = {} if axes is None else {"axes": np.array(axes, np.int64)}
    compare(one_node(name, {"x": x}, consts, keepdims=keepdims), {"x": x}, tol=2e-5)


def test_reduction_forms(rng) -> None:
    x = f32(rng, 3, 4)
    # opset 13: axes an attribute except for ReduceSum; noop_with_empty_axes
    compare(one_node("ReduceMean", {"x": x}, opset=13, axes=[1]), {"x": x})
    compare(one_node("ReduceSum", {"x": x}, {"a": np.array([0], np.int64)}, opset=13), {"x": x})
    compare(one_node("ReduceSum", {"x": x}, opset=18, noop_with_empty_axes=1), {"x": x})
    xi = rng.integers(-5, 5, (3, 4)).astype(np.int64)
    compare(one_node("ReduceSum", {"x": xi}, {"a": np.array([1], np.int64)}), {"x": xi})
    compare(one_node("ReduceMax", {"x": xi}, {"a": np.array([0], np.int64)}), {"x": xi})
    big = f32(rng, 2, 6) * 50 + 80  # would overflow exp without the max shift
    compare(one_node("ReduceLogSumExp", {"x": big}, {"a": np.array([1], np.int64)}), {"x": big})


@pytest.mark.parametrize("name", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("last", [0, 1])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_arg_reductions(name: str, last: int, keepdims: int, rng) -> None:
    x = rng.integers(0, 3, (4, 6)).astype(np.float32)  # ties everywhere
    for axis in (0, 1, -1):
        attrs = dict(axis=axis, keepdims=keepdims, select_last_index=last)
        compare(one_node(name, {"x": x}, **attrs), {"x": x})


def test_hardmax(rng) -> None:
    x = rng.integers(0, 3, (3, 5)).astype(np.float32)
    compare(one_node("Hardmax", {"x": x}, axis=1), {"x": x})


# ---- refusals ----------------------------------------------------------------------------

LOAD_REFUSALS = [
    ("Conv", dict(strides=[0]), ModelFormatError, "strides"),
    ("Conv", dict(pads=[-1, 0]), ModelFormatError, "pads"),
    ("Conv", dict(kernel_shape=[1 << 30]), ModelFormatError, "kernel_shape"),
    ("Conv", dict(auto_pad="SOMETIMES"), ModelFormatError, "auto_pad"),
    ("Conv", dict(pads=[1, 1, 1]), ModelFormatError, "pads"),
    ("Conv", dict(group=0), ModelFormatError, "group"),
    ("Conv", dict(strides=[1, 1, 1, 1]), UnsupportedModelError, "spatial"),
    ("Conv", dict(fancy=1), UnsupportedModelError, "fancy"),
]


@pytest.mark.parametrize(("name", "attrs", "exc", "word"), LOAD_REFUSALS)
def test_hostile_window_attributes_refused_at_load(
    name: str, attrs: dict, exc: type, word: str, rng
) -> None:
    model = one_node(name, {"x": f32(rng, 1, 2, 8)}, {"w": f32(rng, 3, 2, 3)}, **attrs)
    with pytest.raises(exc, match=word):
        lstm_infer.load(model)


def test_other_refusals(rng) -> None:
    x = f32(rng, 1, 2, 8)
    with pytest.raises(UnsupportedModelError, match="Indices"):
        lstm_infer.load(one_node("MaxPool", {"x": x}, n_out=2, kernel_shape=[2]))
    stats = {k: np.ones(2, np.float32) for k in "sbmv"}
    with pytest.raises(UnsupportedModelError, match="training"):
        lstm_infer.load(one_node("BatchNormalization", {"x": x}, stats, training_mode=1))
    with pytest.raises(ModelFormatError, match="mode"):
        lstm_infer.load(one_node("Pad", {"x": x}, {"p": np.zeros(6, np.int64)}, mode="mirror"))


def test_impossible_shapes_are_input_errors(rng) -> None:
    short = f32(rng, 1, 2, 3)
    m = lstm_infer.load(one_node("Conv", {"x": short}, {"w": f32(rng, 3, 2, 5)}))
    with pytest.raises(InputError, match="smaller than the window"):
        m.run({"x": short})
    wide = f32(rng, 1, 4, 8)
    m = lstm_infer.load(one_node("Conv", {"x": wide}, {"w": f32(rng, 3, 2, 5)}))
    with pytest.raises(InputError, match="channels"):
        m.run({"x": wide})
    # Pads large enough to ask for more than MAX_ELEMENTS output values: refused before any
    # allocation.
    bomb = one_node("Pad", {"x": f32(rng, 2, 2)}, {"p": np.array([0, 0, 1 << 40, 0], np.int64)})
    with pytest.raises(InputError, match="more than"):
        lstm_infer.load(bomb).run({"x": f32(rng, 2, 2)})
    many = np.zeros((1 << 12, 1 << 4, 4), np.float32)
    pool = lstm_infer.load(
        one_node("MaxPool", {"x": many}, kernel_shape=[3], pads=[1 << 19, 1 << 19])
    )
    with pytest.raises(InputError, match="more than"):
        pool.run({"x": many})


# ---- BatchNormalization folded into the op before it --------------------------------------


def _conv_bn_model(rng, producer: str, second_reader: bool = False) -> tuple[bytes, dict]:
    from onnx import TensorProto, helper, numpy_helper

    if producer == "Gemm":
        x = f32(rng, 4, 6)
        w = f32(rng, 5, 6)
        prod = helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1, beta=0.5)
        ch = 5
    else:
        x = f32(rng, 2, 4, 9)
        w = f32(rng, 6, 2, 3) if producer == "Conv" else f32(rng, 4, 3, 3)
        attrs = {"group": 2}
        prod = helper.make_node(producer, ["x", "w", "b"], ["h"], **attrs)
        ch = 6
    stats = [f32(rng, ch), f32(rng, ch), f32(rng, ch), np.abs(f32(rng, ch)) + 0.5]
    nodes = [prod, helper.make_node("BatchNormalization", ["h", "s", "c", "m", "v"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if second_reader:
        nodes.append(helper.make_node("Relu", ["h"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    inits = [numpy_helper.from_array(v, k) for k, v in
             zip("wbscmv", [w, f32(rng, ch), *stats])]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    model = onnx.shape_inference.infer_shapes(model)
    return model.SerializeToString(), {"x": x}


@pytest.mark.parametrize("producer", ["Conv", "ConvTranspose", "Gemm"])
@pytest.mark.parametrize("second_reader", [False, True])
def test_batchnorm_folds_into_the_op_before(producer: str, second_reader: bool, rng) -> None:
    model, feeds = _conv_bn_model(rng, producer, second_reader)
    compare(model, feeds, tol=1e-4)
    ops = [n.op for n in lstm_infer.load(model)._program.graph.nodes]
    assert ("BatchNormalization" in ops) == second_reader, ops


# ---- the direct convolution kernel on every kernel table ---------------------------------

from lstm_infer import _engine  # noqa: E402
from lstm_infer.ops.conv import _pack_direct  # noqa: E402


@pytest.mark.parametrize("isa", _engine.available_isas())
@pytest.mark.parametrize(
    ("c", "kh", "kw", "sh", "dh", "dw", "oh", "ow", "m"),
    [
        (3, 3, 3, 1, 1, 1, 5, 70, 7),
        (4, 1, 3, 1, 1, 2, 1, 125, 13),
        (2, 2, 3, 2, 2, 1, 3, 17, 5),
        (3, 1, 3, 1, 1, 1, 2, 124, 8),  # the last span overlaps the one before
        (2, 1, 1, 1, 1, 1, 1, 48, 6),  # whole vectors, short of a span
    ],
)
def test_direct_conv_kernel_every_table(isa, c, kh, kw, sh, dh, dw, oh, ow, m, rng) -> None:
    hp, wp = (oh - 1) * sh + (kh - 1) * dh + 1, ow + (kw - 1) * dw
    x = f32(rng, c, hp, wp)
    w, b = f32(rng, m, c, kh, kw), f32(rng, m)
    y = np.full((m, oh * ow), np.nan, np.float32)
    _engine.conv2d(
        x, _pack_direct(w.reshape(m, -1)), m, kh, kw, sh, dh, dw, oh, ow, b, y, isa_name=isa
    )
    x64 = x.astype(np.float64)
    want = np.zeros((m, oh, ow)) + b[:, None, None]
    for i in range(kh):
        for j in range(kw):
            plane = x64[:, i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + ow]
            want += np.einsum("mc,chw->mhw", w[:, :, i, j].astype(np.float64), plane)
    np.testing.assert_allclose(y.reshape(m, oh, ow), want, rtol=1e-5, atol=1e-5)


def test_direct_conv_kernel_refuses_windows_past_the_input(rng) -> None:
    x = f32(rng, 2, 3, 10)
    y = np.empty((4, 8), np.float32)
    with pytest.raises(ValueError, match="past the padded input"):
        _engine.conv2d(x, _pack_direct(f32(rng, 4, 18)), 4, 3, 3, 1, 1, 1, 1, 9, None, y)
    with pytest.raises(ValueError, match="wpack"):
        _engine.conv2d(x, f32(rng, 1, 18, 4), 4, 3, 3, 1, 1, 1, 1, 8, None, y)


def _conv_relu_model(rng, shape: tuple, w_shape: tuple, second_reader: bool, **attrs) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["h"], **attrs),
        helper.make_node("Relu", ["h"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if second_reader:
        nodes.append(helper.make_node("Neg", ["h"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    inits = [numpy_helper.from_array(f32(rng, *w_shape), "w"),
             numpy_helper.from_array(f32(rng, w_shape[0]), "b")]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return onnx.shape_inference.infer_shapes(model).SerializeToString()


@pytest.mark.parametrize(
    ("shape", "w_shape", "attrs"),
    [
        ((2, 3, 9, 11), (5, 3, 3, 3), {"pads": [1, 1, 1, 1]}),  # the direct kernel
        ((2, 4, 30), (6, 4, 4), {"strides": [2]}),  # im2col by position
        ((1, 6, 10), (6, 1, 3), {"group": 6}),  # depthwise
    ],
)
@pytest.mark.parametrize("second_reader", [False, True])
def test_relu_fuses_into_conv(shape, w_shape, attrs, second_reader: bool, rng) -> None:
    model = _conv_relu_model(rng, shape, w_shape, second_reader, **attrs)
    x = f32(rng, *shape)
    x[0, 0, 0] = np.nan  # NaN stays NaN through the fused clamp, as through Relu
    compare(model, {"x": x})
    ops = [n.op for n in lstm_infer.load(model)._program.graph.nodes]
    assert ("Relu" in ops) == second_reader, ops


def test_conv_float16_keeps_its_dtype(rng) -> None:
    x, w = f32(rng, 1, 3, 8, 8), f32(rng, 4, 3, 3, 3)
    got = lstm_infer.load(
        one_node("Conv", {"x": x.astype(np.float16)}, {"w": w.astype(np.float16)})
    ).run({"x": x.astype(np.float16)})["y0"]
    want = lstm_infer.load(one_node("Conv", {"x": x}, {"w": w})).run({"x": x})["y0"]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-2, atol=2e-2)
