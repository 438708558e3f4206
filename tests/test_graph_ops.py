"""Graph ops (elementwise, layout, dense) against onnxruntime, one node per model.

Each case is a one-node ONNX model built with onnx.helper at opset 21 (and older opsets
where the form changed), loaded by ``lstm_infer.load`` (a GraphModel: no recurrent stack)
and run next to onnxruntime on the same random inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require

onnx = require("onnx")
ort = require("onnxruntime")
from graph_cases import compare, one_node  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

import lstm_infer  # noqa: E402
from lstm_infer.errors import InputError, ModelFormatError, UnsupportedModelError  # noqa: E402

UNARY = [
    "Abs", "Neg", "Sqrt", "Exp", "Log", "Reciprocal", "Relu", "LeakyRelu", "Elu", "Selu",
    "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Softsign", "Erf", "Floor",
    "Ceil", "Round", "Sign", "Sin", "Cos",
]  # fmt: skip


@pytest.mark.parametrize("name", UNARY)
def test_unary(name: str, rng) -> None:
    x = (rng.standard_normal((3, 4, 5)) * 3).astype(np.float32)
    if name in ("Sqrt", "Log"):
        x = np.abs(x) + 0.1
    if name == "Round":
        x[0, 0, :3] = [0.5, 1.5, -2.5]  # ties to even
    compare(one_node(name, {"x": x}), {"x": x})


@pytest.mark.parametrize(
    ("name", "attrs"),
    [("LeakyRelu", {"alpha": 0.3}), ("Elu", {"alpha": 0.7}), ("HardSigmoid", {"alpha": 0.1})],
)
def test_unary_attributes(name: str, attrs: dict, rng) -> None:
    x = (rng.standard_normal((2, 7)) * 4).astype(np.float32)
    compare(one_node(name, {"x": x}, **attrs), {"x": x})


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate: str, rng) -> None:
    x = (rng.standard_normal((4, 9)) * 3).astype(np.float32)
    compare(one_node("Gelu", {"x": x}, opset=20, approximate=approximate), {"x": x})


def test_logic_and_nan_tests(rng) -> None:
    b = rng.random((3, 4)) > 0.5
    compare(one_node("Not", {"b": b}), {"b": b})
    x = rng.standard_normal((3, 4)).astype(np.float32)
    x[0, 0], x[1, 1], x[2, 2] = np.nan, np.inf, -np.inf
    compare(one_node("IsNaN", {"x": x}), {"x": x})
    compare(one_node("IsInf", {"x": x}), {"x": x})


BINARY = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Less", "LessOrEqual",
          "Greater", "GreaterOrEqual"]  # fmt: skip


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize(("sa", "sb"), [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 5))])
def test_binary_broadcasting(name: str, sa: tuple, sb: tuple, rng) -> None:
    a = rng.standard_normal(sa).astype(np.float32)
    b = rng.standard_normal(sb).astype(np.float32)
    if name == "Pow":
        a = np.abs(a) + 0.5
    compare(one_node(name, {"a": a, "b": b}), {"a": a, "b": b})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("b_shape", [(), (1,), (1, 1, 1)])
def test_pow_by_two(dtype: type, b_shape: tuple, rng) -> None:
    """x ** 2 by a constant exponent (a squared magnitude; the op squares): the values of pow,
    inf / NaN / signed zeros included, and the broadcast shape of a (1, 1, 1) exponent."""
    a = rng.standard_normal((2, 3, 4)).astype(dtype)
    a.flat[:5] = [np.inf, -np.inf, np.nan, -0.0, 3e200 if dtype == np.float64 else 3e30]
    two = np.full(b_shape, 2, dtype)
    compare(one_node("Pow", {"a": a}, {"b": two}), {"a": a})
    if b_shape == (1, 1, 1):  # a rank past the base's: the result takes the exponent's rank
        a2 = a[0]
        compare(one_node("Pow", {"a": a2}, {"b": two}), {"a": a2})


def test_integer_and_bool_binary(rng) -> None:
    a = rng.integers(-20, 20, (4, 5)).astype(np.int64)
    b = rng.integers(1, 7, (4, 5)).astype(np.int64)
    for name in ("Add", "Sub", "Mul", "Div"):
        compare(one_node(name, {"a": a, "b": b}), {"a": a, "b": b})
    compare(one_node("Mod", {"a": a, "b": b}), {"a": a, "b": b})
    compare(one_node("Mod", {"a": a, "b": b}, fmod=1), {"a": a, "b": b})
    p, q = rng.random((4, 5)) > 0.5, rng.random((4, 5)) > 0.5
    for name in ("And", "Or", "Xor"):
        compare(one_node(name, {"p": p, "q": q}), {"p": p, "q": q})


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float32, np.float64])
def test_mod_signs_and_broadcasting(fmod: int, dtype: type) -> None:
    """Every sign of dividend and divisor, broadcast (6, 1) x (1, 4), against Python's own
    arithmetic: fmod=0 is floor modulo (``%``, the sign of the divisor), fmod=1 truncated
    (``math.fmod``, the sign of the dividend); and against onnxruntime, which refuses a
    float fmod=0 before opset 28 (the opset that defines it as ``A - floor(A / B) * B``)."""
    import math

    a = np.array([[-7], [7], [-6], [6], [0], [-1]], dtype)
    b = np.array([[3, -3, 4, -4]], dtype)
    fn = math.fmod if fmod else (lambda x, y: x % y)
    want = np.array([[fn(x, y) for y in b[0].tolist()] for x in a[:, 0].tolist()], dtype)
    model = one_node("Mod", {"a": a, "b": b}, fmod=fmod)
    got = lstm_infer.load(model).run({"a": a, "b": b})["y0"]
    assert got.dtype == want.dtype and got.shape == want.shape == (6, 4)
    np.testing.assert_array_equal(got, want)
    if fmod or np.dtype(dtype).kind == "i":
        compare(model, {"a": a, "b": b})


def test_float_mod_where_clip(rng) -> None:
    a = (rng.standard_normal((3, 4)) * 5).astype(np.float32)
    b = (np.abs(rng.standard_normal((3, 4))) + 0.5).astype(np.float32)
    compare(one_node("Mod", {"a": a, "b": b}, fmod=1), {"a": a, "b": b})
    c = rng.random((3, 1)) > 0.5
    compare(one_node("Where", {"c": c, "a": a, "b": b}), {"c": c, "a": a, "b": b})
    lo, hi = np.array(-1.0, np.float32), np.array(2.0, np.float32)
    compare(one_node("Clip", {"a": a}, {"lo": lo, "hi": hi}), {"a": a})
    compare(one_node("Clip", {"a": a}, opset=6, min=-0.5, max=0.5), {"a": a})


def test_variadic(rng) -> None:
    xs = {k: rng.standard_normal(s).astype(np.float32) for k, s in (("a", (3, 4)), ("b", (4,)),
                                                                    ("c", (1, 4)))}  # fmt: skip
    for name in ("Max", "Min", "Sum", "Mean"):
        compare(one_node(name, xs), xs)


@pytest.mark.parametrize("to", [TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL,
                                TensorProto.FLOAT])  # fmt: skip
def test_cast(to: int, rng) -> None:
    x = (rng.standard_normal((3, 5)) * 4).astype(np.float32)
    compare(one_node("Cast", {"x": x}, to=to), {"x": x})


# ---- layout ops --------------------------------------------------------------------------


def test_concat_split_slice(rng) -> None:
    a = rng.standard_normal((2, 3, 4)).astype(np.float32)
    b = rng.standard_normal((2, 5, 4)).astype(np.float32)
    compare(one_node("Concat", {"a": a, "b": b}, axis=1), {"a": a, "b": b})
    compare(one_node("Concat", {"a": a, "b": b}, axis=-2), {"a": a, "b": b})
    x = rng.standard_normal((4, 6)).astype(np.float32)
    compare(one_node("Split", {"x": x}, {"s": np.array([2, 4])}, n_out=2, axis=1), {"x": x})
    compare(one_node("Split", {"x": x}, n_out=3, axis=1, num_outputs=3), {"x": x})
    compare(one_node("Split", {"x": x}, n_out=2, opset=11, axis=0, split=[1, 3]), {"x": x})
    for starts, ends, axes, steps in [
        ([1], [3], [1], [1]),
        ([-1], [-(2**62)], [0], [-1]),  # reverse, open-ended
        ([0, 5], [2**62, 0], [0, 1], [2, -2]),
        ([-3], [2**62], [-1], [1]),
    ]:
        consts = {"s": np.array(starts), "e": np.array(ends), "a": np.array(axes),
                  "t": np.array(steps)}  # fmt: skip
        compare(one_node("Slice", {"x": x}, consts), {"x": x})
    compare(one_node("Slice", {"x": x}, opset=9, starts=[1], ends=[3], axes=[1]), {"x": x})


def test_gather_and_gather_elements(rng) -> None:
    table = rng.standard_normal((10, 4)).astype(np.float32)
    ids = rng.integers(-10, 10, (3, 5)).astype(np.int64)
    compare(one_node("Gather", {"ids": ids}, {"table": table}, inputs=["table", "ids"]),
            {"ids": ids})  # fmt: skip
    x = rng.standard_normal((3, 4)).astype(np.float32)
    idx = rng.integers(0, 3, (2, 4)).astype(np.int64)
    compare(one_node("GatherElements", {"x": x, "i": idx}, axis=0), {"x": x, "i": idx})
    last = np.array(-1, np.int64)  # y[:, -1]: the last-timestep pick
    seq = rng.standard_normal((2, 7, 3)).astype(np.float32)
    compare(one_node("Gather", {"s": seq}, {"k": last}, axis=1), {"s": seq})


def test_reshape_flatten_transpose_squeeze(rng) -> None:
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    for shape in ([4, 6], [0, -1], [-1], [2, 0, 2, 2]):
        compare(one_node("Reshape", {"x": x}, {"s": np.array(shape)}), {"x": x})
    for axis in (0, 1, 2, -1):
        compare(one_node("Flatten", {"x": x}, axis=axis), {"x": x})
    compare(one_node("Transpose", {"x": x}, perm=[1, 0, 2]), {"x": x})
    compare(one_node("Transpose", {"x": x}), {"x": x})
    y = rng.standard_normal((1, 3, 1, 4)).astype(np.float32)
    compare(one_node("Squeeze", {"y": y}, {"a": np.array([0, 2])}), {"y": y})
    compare(one_node("Squeeze", {"y": y}), {"y": y})
    compare(one_node("Squeeze", {"y": y}, opset=11, axes=[-2]), {"y": y})
    compare(one_node("Unsqueeze", {"x": x}, {"a": np.array([0, -1])}), {"x": x})
    compare(one_node("Unsqueeze", {"x": x}, opset=11, axes=[1]), {"x": x})


def test_shape_makers(rng) -> None:
    x = rng.standard_normal((3, 1)).astype(np.float32)
    compare(one_node("Expand", {"x": x}, {"s": np.array([2, 3, 4])}), {"x": x})
    compare(one_node("Tile", {"x": x}, {"r": np.array([2, 3])}), {"x": x})
    compare(one_node("Shape", {"x": x}), {"x": x})
    compare(one_node("Shape", {"x": x}, start=-1), {"x": x})
    compare(one_node("Size", {"x": x}), {"x": x})
    shape = np.array([2, 3], np.int64)
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.5])
    compare(one_node("ConstantOfShape", {"s": shape}, value=value), {"s": shape})
    start, limit, delta = (np.array(v, np.int64) for v in (1, 10, 3))
    compare(one_node("Range", {"a": start, "b": limit, "c": delta}),
            {"a": start, "b": limit, "c": delta})  # fmt: skip
    for exclusive in (0, 1):
        for reverse in (0, 1):
            x2 = rng.standard_normal((3, 4)).astype(np.float32)
            compare(
                one_node(
                    "CumSum", {"x": x2}, {"ax": np.array(1)}, exclusive=exclusive, reverse=reverse
                ),  # fmt: skip
                {"x": x2},
            )


def test_identity_dropout(rng) -> None:
    x = rng.standard_normal((3, 4)).astype(np.float32)
    compare(one_node("Identity", {"x": x}), {"x": x})
    compare(one_node("Dropout", {"x": x}), {"x": x})


# ---- dense -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (7, 5), (3, 7, 5), (2, 3, 7, 5)])
def test_matmul_constant_weight_any_rank(shape: tuple, rng) -> None:
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((5, 70)).astype(np.float32)
    compare(one_node("MatMul", {"x": x}, {"w": w}), {"x": x}, tol=1e-4)


def test_matmul_batched_operands(rng) -> None:
    a = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    b = rng.standard_normal((3, 5, 6)).astype(np.float32)
    compare(one_node("MatMul", {"a": a, "b": b}), {"a": a, "b": b}, tol=1e-4)


def _matmul_add(rng, x_shape: tuple, bias_shape: tuple, bias_first: bool, also_out: bool):
    """x @ w + bias (a Linear as torch.onnx writes it), optionally the product an output."""
    from onnx import numpy_helper

    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((x_shape[-1], 6)).astype(np.float32)
    c = rng.standard_normal(bias_shape).astype(np.float32)
    add_in = ["c", "p"] if bias_first else ["p", "c"]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if also_out:
        outs.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", add_in, ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        outs,
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return onnx.shape_inference.infer_shapes(model).SerializeToString(), {"x": x}


@pytest.mark.parametrize(
    ("x_shape", "bias_shape", "bias_first", "also_out", "fused"),
    [
        ((3, 7, 5), (6,), False, False, True),
        ((100, 5), (6,), True, False, True),  # many rows: the sgemm path starts from the bias
        ((5,), (6,), False, False, True),
        ((3, 7, 5), (6,), False, True, False),  # the product is an output too
        ((3, 7, 5), (7, 1), False, False, False),  # broadcast along another axis
        ((3, 7, 5), (1, 6), False, False, False),  # a 2-D bias (could add a leading dim)
    ],
)
def test_matmul_bias_add_fuses(x_shape, bias_shape, bias_first, also_out, fused, rng):
    """MatMul -> Add(bias) folds into the MatMul (passes.fuse_bias) only where the bias is a
    vector of the weight's columns and the product has no other reader; the fused graph
    matches onnxruntime."""
    model, feeds = _matmul_add(rng, x_shape, bias_shape, bias_first, also_out)
    compare(model, feeds, tol=1e-4)
    ops = [n.op for n in lstm_infer.load(model)._program.graph.nodes]
    assert ("Add" not in ops) == fused, ops


def test_fused_matmul_bias_survives_native_save(rng, tmp_path) -> None:
    """The fused MatMul (three inputs, lstm_infer_bias) saved natively loads and runs as
    onnxruntime runs the original."""
    model, feeds = _matmul_add(rng, (3, 7, 5), (6,), False, False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    want = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, feeds)
    ours = lstm_infer.load(model)
    assert any(len(n.inputs) == 3 for n in ours._program.graph.nodes if n.op == "MatMul")
    ours.save(tmp_path / "m.lstm")
    got = lstm_infer.load(tmp_path / "m.lstm").run(feeds)
    np.testing.assert_allclose(got["y"], want[0], rtol=1e-4, atol=1e-4)


def test_matmul_third_input_needs_the_fused_form(rng) -> None:
    x = rng.standard_normal((2, 5)).astype(np.float32)
    consts = {"w": rng.standard_normal((5, 6)).astype(np.float32)}
    consts["c"] = rng.standard_normal(6).astype(np.float32)
    with pytest.raises(ModelFormatError, match="'n' \\(MatMul\\).*third input"):
        lstm_infer.load(one_node("MatMul", {"x": x}, consts))
    with pytest.raises(ModelFormatError, match="lstm_infer_bias must be 1"):
        lstm_infer.load(one_node("MatMul", {"x": x}, consts, lstm_infer_bias=2))
    consts["c"] = rng.standard_normal(5).astype(np.float32)  # not the weight's columns
    with pytest.raises(ModelFormatError, match="fused bias has shape"):
        lstm_infer.load(one_node("MatMul", {"x": x}, consts, lstm_infer_bias=1))
    feeds = {"x": x, "c": consts.pop("c")}  # a bias fed at run time: checked there
    model = lstm_infer.load(one_node("MatMul", feeds, consts, inputs=["x", "w", "c"],
                                     lstm_infer_bias=1))  # fmt: skip
    with pytest.raises(InputError, match="fused bias has shape"):
        model.run(feeds)


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (6,), (1, 6), (4, 6), ()])
def test_gemm(trans_a: int, trans_b: int, c_shape: tuple | None, rng) -> None:
    a = rng.standard_normal((5, 4) if trans_a else (4, 5)).astype(np.float32)
    b = rng.standard_normal((6, 5) if trans_b else (5, 6)).astype(np.float32)
    consts = {"b": b}
    if c_shape is not None:
        consts["c"] = rng.standard_normal(c_shape).astype(np.float32)
    compare(
        one_node("Gemm", {"a": a}, consts, alpha=0.5, beta=2.0, transA=trans_a, transB=trans_b),
        {"a": a},
        tol=1e-4,
    )


# ---- refusals ----------------------------------------------------------------------------


def test_bad_inputs_name_the_node_or_input(rng) -> None:
    x = rng.standard_normal((3, 4)).astype(np.float32)
    model = lstm_infer.load(one_node("Reshape", {"x": x}, {"s": np.array([5, -1])}))
    with pytest.raises(InputError, match=r"node 'n' \(Reshape\): cannot reshape"):
        model.run({"x": x})
    with pytest.raises(InputError, match="input 'x' must have size 3 on axis 0"):
        model.run({"x": np.zeros((4, 4), np.float32)})
    with pytest.raises(InputError, match="unknown input"):
        model.run({"x": x, "z": x})
    gather = lstm_infer.load(
        one_node("Gather", {"i": np.zeros(2, np.int64)}, {"t": x}, inputs=["t", "i"])
    )
    with pytest.raises(InputError, match=r"\(Gather\): an index is outside"):
        gather.run({"i": np.array([0, 3], np.int64)})


def test_unknown_attribute_and_op_are_refused_at_load(rng) -> None:
    x = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(UnsupportedModelError, match=r"\(Relu\): unsupported attribute"):
        lstm_infer.load(one_node("Relu", {"x": x}, bogus=1))
    with pytest.raises(UnsupportedModelError, match=r"'Acosh' is not supported"):
        lstm_infer.load(one_node("Acosh", {"x": x}))


def test_runtime_shape_bombs_are_refused_before_allocating() -> None:
    s = np.array([1 << 20, 1 << 20, 1 << 10], np.int64)
    x = np.ones((1,), np.float32)
    for model in (
        one_node("Expand", {"x": x, "s": s}),
        one_node("Tile", {"x": np.ones((1, 1, 1), np.float32), "s": s}),
        one_node("ConstantOfShape", {"s": s}),
    ):
        with pytest.raises(InputError, match="more than"):
            lstm_infer.load(model).run(
                {"x": x, "s": s} if b"Expand" in model else
                {"x": np.ones((1, 1, 1), np.float32), "s": s} if b"Tile" in model else {"s": s}
            )  # fmt: skip


def test_cycles_are_refused() -> None:
    nodes = [
        helper.make_node("Relu", ["x", ], ["a"], name="r"),
        helper.make_node("Add", ["a", "c"], ["b"], name="add"),
        helper.make_node("Neg", ["b"], ["c"], name="neg"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(ModelFormatError, match="never produced|cycle"):
        lstm_infer.load(model.SerializeToString())


@pytest.mark.parametrize("name", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_any_axis(name: str, axis: int, rng) -> None:
    x = (rng.standard_normal((3, 4, 5)) * 4).astype(np.float32)
    compare(one_node(name, {"x": x}, axis=axis), {"x": x})
    compare(one_node(name, {"x": x}, opset=11, axis=1), {"x": x})  # the old flattening form
