"""Step programs (one C call per step) against onnxruntime, node kind by node kind.

Each graph is compiled into a step program at its input shapes (lstm_infer.compile.
step_program.CompiledStep), run, and compared with onnxruntime on the same inputs; the
graphs cover every lowering (layout ops through element indices, elementwise with
broadcasting, dense, convolution, normalisation, reductions, recurrent layers). Streams of
silero-VAD and of exported state-carrying graphs must run compiled and equal onnxruntime fed
its state back; graphs with an op the compiler does not lower fall back and still agree.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require

ort = require("onnxruntime")
onnx = require("onnx")

from graph_builders import onnxruntime_run, vi  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lstm_infer  # noqa: E402
from lstm_infer.compile.step_program import CompiledStep  # noqa: E402
from lstm_infer.graph_model import GraphModel  # noqa: E402
from lstm_infer.importers.onnx.load import graph_from_onnx  # noqa: E402
from lstm_infer.onnx_import import load_onnx_proto  # noqa: E402

F = TensorProto.FLOAT


def model_bytes(nodes, inputs, outputs, inits=None, opset=17) -> bytes:
    """graph_builders.model_bytes without the checker, which wants every output's shape
    (these leave them to onnxruntime's inference)."""
    initializers = [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()]
    g = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def graph_model(data: bytes) -> GraphModel:
    """The graph read node for node (lstm_infer.load reads pure recurrent stacks as one fused
    Model, which streams on its own path)."""
    return GraphModel(graph_from_onnx(load_onnx_proto(data)))


def _compiled_outputs(data: bytes, feeds: dict) -> tuple[list[np.ndarray], CompiledStep]:
    model = graph_model(data)
    arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in feeds.items()}
    step = CompiledStep(model._program_for(arrays), arrays, {})
    for name, value in arrays.items():
        np.copyto(step.inputs[name], value)
    step.run()
    return [step.outputs[n].copy() for n in model.output_names], step


def _check(nodes, inputs, outputs, feeds, inits=None, opset=17, atol=1e-5) -> CompiledStep:
    data = model_bytes(nodes, inputs, outputs, inits, opset)
    got, step = _compiled_outputs(data, feeds)
    want = onnxruntime_run(data, feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=atol)
    return step


def _i64(*v: int) -> np.ndarray:
    return np.array(v, np.int64)


LAYOUT_CASES = {
    "slice_steps": (
        [helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])],
        {"s": _i64(1, -1), "e": _i64(5, 0), "a": _i64(1, 2), "st": _i64(2, -2)},
    ),
    "slice_contiguous_alias": (
        [helper.make_node("Slice", ["x", "s", "e", "a"], ["y"])],
        {"s": _i64(1), "e": _i64(2), "a": _i64(0)},
    ),
    "transpose": ([helper.make_node("Transpose", ["x"], ["y"], perm=[2, 0, 1])], {}),
    "pad_reflect": (
        [helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect")],
        {"p": _i64(0, 0, 2, 0, 0, 3)},
    ),
    "pad_edge": (
        [helper.make_node("Pad", ["x", "p"], ["y"], mode="edge")],
        {"p": _i64(0, 1, 1, 0, 2, 0)},
    ),
    "pad_constant": (
        [helper.make_node("Pad", ["x", "p", "v"], ["y"])],
        {"p": _i64(1, 0, 1, 0, 1, 1), "v": np.array(2.5, np.float32)},
    ),
    "gather_axis1": (
        [helper.make_node("Gather", ["x", "i"], ["y"], axis=1)],
        {"i": _i64(3, 0, -1)},
    ),
    "expand_tile": (
        [
            helper.make_node("Slice", ["x", "s", "e", "a"], ["x1"]),
            helper.make_node("Expand", ["x1", "shp"], ["x2"]),
            helper.make_node("Tile", ["x2", "rep"], ["y"]),
        ],
        {"s": _i64(0), "e": _i64(1), "a": _i64(1), "shp": _i64(2, 3, 6), "rep": _i64(1, 2, 1)},
    ),
    "reshape_squeeze_flatten": (
        [
            helper.make_node("Reshape", ["x", "shp"], ["r"]),
            helper.make_node("Unsqueeze", ["r", "ax"], ["u"]),
            helper.make_node("Squeeze", ["u", "ax"], ["q"]),
            helper.make_node("Flatten", ["q"], ["y"], axis=2),
        ],
        {"shp": _i64(3, -1, 2), "ax": _i64(0)},
    ),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_layout_ops_through_element_indices(case: str, rng) -> None:
    nodes, inits = LAYOUT_CASES[case]
    x = rng.standard_normal((2, 5, 6)).astype(np.float32)
    step = _check(nodes, [vi("x", F, x.shape)], [vi("y", F, None)], {"x": x}, inits)
    if case == "slice_contiguous_alias":  # a contiguous selection costs no record at all
        assert len(step.program) == 0


def test_concat_and_split(rng) -> None:
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    z = rng.standard_normal((2, 2, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Concat", ["x", "z", "x"], ["c"], axis=1),
        helper.make_node("Split", ["c", "sp"], ["a", "b"], axis=2),
        helper.make_node("Concat", ["b", "a"], ["y"], axis=-1),
    ]
    _check(
        nodes,
        [vi("x", F, x.shape), vi("z", F, z.shape)],
        [vi("y", F, None), vi("c", F, None)],
        {"x": x, "z": z},
        {"sp": _i64(1, 3)},
    )


UNARY = [
    "Relu",
    "Sigmoid",
    "Tanh",
    "Exp",
    "Abs",
    "Neg",
    "Softplus",
    "Softsign",
    "Erf",
    "Floor",
    "Ceil",
    "Round",
    "Reciprocal",
    "LeakyRelu",
    "Elu",
    "Selu",
    "HardSigmoid",
]


@pytest.mark.parametrize("op", UNARY)
def test_unary(op: str, rng) -> None:
    x = (rng.standard_normal((3, 7)) * 3).astype(np.float32)
    x[0, :3] = [0.5, -2.5, 1.5]  # Round's halves go to even
    _check(
        [helper.make_node(op, ["x"], ["y"])],
        [vi("x", F, x.shape)],
        [vi("y", F, None)],
        {"x": x},
        atol=1e-5,
    )


def test_log_sqrt_pow_clip_gelu(rng) -> None:
    x = (rng.random((4, 5)) + 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Log", ["x"], ["a"]),
        helper.make_node("Sqrt", ["x"], ["b"]),
        helper.make_node("Pow", ["x", "two"], ["c"]),
        helper.make_node("Pow", ["x", "x"], ["d"]),
        helper.make_node("Clip", ["a", "lo", "hi"], ["e"]),
        helper.make_node("Gelu", ["a"], ["f"]),
        helper.make_node("Gelu", ["a"], ["g"], approximate="tanh"),
    ]
    outs = [vi(n, F, None) for n in "abcdefg"]
    inits = {
        "two": np.array(2.0, np.float32),
        "lo": np.array(-0.5, np.float32),
        "hi": np.array(0.25, np.float32),
    }
    _check(nodes, [vi("x", F, x.shape)], outs, {"x": x}, inits, opset=20)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"])
def test_binary_broadcasting(op: str, rng) -> None:
    a = (rng.random((2, 3, 4)) + 0.5).astype(np.float32)
    b = (rng.random((3, 1)) + 0.5).astype(np.float32)
    c = (rng.random((1, 1, 4)) + 0.5).astype(np.float32)
    nodes = [
        helper.make_node(op, ["a", "b"], ["y1"]),
        helper.make_node(op, ["c", "a"], ["y2"]),
        helper.make_node(op, ["a", "k"], ["y3"]),
        helper.make_node(op, ["b", "c"], ["y4"]),
    ]
    _check(
        nodes,
        [vi("a", F, a.shape), vi("b", F, b.shape), vi("c", F, c.shape)],
        [vi(f"y{i}", F, None) for i in range(1, 5)],
        {"a": a, "b": b, "c": c},
        {"k": np.array([[1.5, 0.75, 2.0, 1.25]], np.float32)},
    )


def test_matmul_gemm_batchnorm(rng) -> None:
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    inits = {
        "w": rng.standard_normal((8, 5)).astype(np.float32),
        "gw": rng.standard_normal((6, 5)).astype(np.float32),
        "gb": rng.standard_normal(6).astype(np.float32),
        "sc": rng.random(3).astype(np.float32) + 0.5,
        "bi": rng.standard_normal(3).astype(np.float32),
        "mu": rng.standard_normal(3).astype(np.float32),
        "va": rng.random(3).astype(np.float32) + 0.1,
        "shp": _i64(6, 5),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("BatchNormalization", ["m", "sc", "bi", "mu", "va"], ["bn"]),
        helper.make_node("Reshape", ["bn", "shp"], ["r"]),
        helper.make_node("Gemm", ["r", "gw", "gb"], ["y"], transB=1, alpha=0.5, beta=2.0),
    ]
    _check(
        nodes,
        [vi("x", F, x.shape)],
        [vi("y", F, None), vi("bn", F, None)],
        {"x": x},
        inits,
        atol=1e-4,
    )


@pytest.mark.parametrize(("rows", "n", "bias"), [(3, 70, True), (20, 128, False), (300, 70, True)])
def test_dense_by_constant_weight(rows: int, n: int, bias: bool, rng) -> None:
    """Gemm by a constant weight: few rows on the packed matvec (MATVEC records, a width
    that is not whole blocks copied out of a padded region), many on sgemm (GEMM)."""
    x = rng.standard_normal((rows, 40)).astype(np.float32)
    inits = {"w": rng.standard_normal((n, 40)).astype(np.float32)}
    names = ["x", "w"]
    if bias:
        inits["b"] = rng.standard_normal(n).astype(np.float32)
        names.append("b")
    nodes = [
        helper.make_node("Gemm", names, ["g"], transB=1),
        helper.make_node("Relu", ["g"], ["y"]),
    ]
    step = _check(nodes, [vi("x", F, x.shape)], [vi("y", F, None)], {"x": x}, inits, atol=1e-4)
    kinds = set(step.program.kinds())
    assert ("matvec" in kinds) == (rows <= 48) and ("gemm" in kinds) == (rows > 48), kinds


CONV_CASES = {  # widths of 16 outputs and more run on the direct kernel (CONV records)
    "1d_direct_dilated": ((2, 4, 40), (6, 4, 3), dict(pads=[2, 2], dilations=[2])),
    "2d_direct": ((1, 3, 6, 20), (8, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    "2d_direct_groups_row_stride": (
        (2, 4, 7, 24),
        (6, 2, 3, 3),
        dict(group=2, strides=[2, 1], pads=[0, 1, 1, 1]),
    ),
    "1d_pad_stride_dilation": (
        (2, 4, 19),
        (6, 4, 3),
        dict(pads=[2, 1], strides=[2], dilations=[2]),
    ),
    "1d_groups": ((1, 6, 11), (9, 2, 3), dict(group=3, pads=[1, 1])),
    "1d_pointwise": ((2, 5, 7), (3, 5, 1), {}),
    # rows narrower than the kernel's tile: windows copied, one row of every position (and a
    # pointwise conv read in place)
    "2d_narrow_rows": ((2, 5, 6, 40), (7, 5, 3, 3), dict(pads=[1, 1, 1, 1])),
    "2d_narrow_pointwise": ((2, 9, 6, 40), (7, 9, 1, 1), {}),
    "2d_narrow_pointwise_groups": ((1, 6, 4, 20), (4, 3, 1, 1), dict(group=2)),
    "1d_pointwise_one_position_batched": ((3, 5, 1), (4, 5, 1), {}),
    "1d_batched_strided": ((4, 3, 12), (5, 3, 4), dict(strides=[4], pads=[1, 0])),
    "1d_strided_windows": ((1, 1, 64), (10, 1, 16), dict(strides=[16])),
    "1d_stft_like": ((1, 1, 80), (12, 1, 32), dict(strides=[8])),
    "2d_same_upper": ((1, 3, 7, 9), (4, 3, 3, 3), dict(auto_pad="SAME_UPPER", strides=[1, 2])),
    "2d_groups_dilation": (
        (2, 4, 8, 8),
        (4, 2, 2, 3),
        dict(group=2, dilations=[2, 1], pads=[1, 0, 0, 2]),
    ),
    "depthwise": ((1, 3, 9), (3, 1, 3), dict(group=3, pads=[1, 1])),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv(case: str, rng) -> None:
    xs, ws, attrs = CONV_CASES[case]
    x = rng.standard_normal(xs).astype(np.float32)
    inits = {
        "w": rng.standard_normal(ws).astype(np.float32),
        "b": rng.standard_normal(ws[0]).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    step = _check(nodes, [vi("x", F, xs)], [vi("y", F, None)], {"x": x}, inits, atol=1e-4)
    if case.startswith("2d_narrow"):
        kinds = step.program.kinds()
        assert "gemm" not in kinds and kinds.count("conv") == xs[0] * attrs.get("group", 1)
        assert ("copy" in kinds[: kinds.index("conv")]) == (ws[2] > 1), kinds


def test_layernorm_softmax_reductions(rng) -> None:
    x = rng.standard_normal((2, 3, 6)).astype(np.float32)
    inits = {
        "g": rng.standard_normal(6).astype(np.float32),
        "b": rng.standard_normal(6).astype(np.float32),
        "ax1": _i64(1),
        "ax12": _i64(1, 2),
        "ax0": _i64(0),
    }
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["ln"], epsilon=1e-3),
        helper.make_node("Softmax", ["ln"], ["sm"]),
        helper.make_node("LogSoftmax", ["x"], ["lsm"], axis=2),
        helper.make_node("ReduceMean", ["x", "ax1"], ["rm"]),
        helper.make_node("ReduceSum", ["x", "ax12"], ["rs"], keepdims=0),
        helper.make_node("ReduceMax", ["x", "ax0"], ["rx"]),
        helper.make_node("ReduceL2", ["x", "ax1"], ["rl"]),
        helper.make_node("ReduceLogSumExp", ["x"], ["rlse"], keepdims=0),
    ]
    outs = [vi(n, F, None) for n in ("ln", "sm", "lsm", "rm", "rs", "rx", "rl", "rlse")]
    _check(nodes, [vi("x", F, x.shape)], outs, {"x": x}, inits, opset=18, atol=1e-5)


def _recurrent_weights(rng, op: str, d: int, h: int, i: int) -> dict:
    g = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    return {
        "W": (rng.standard_normal((d, g * h, i)) * 0.3).astype(np.float32),
        "R": (rng.standard_normal((d, g * h, h)) * 0.3).astype(np.float32),
        "B": (rng.standard_normal((d, 2 * g * h)) * 0.1).astype(np.float32),
    }


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_recurrent_layers(op: str, direction: str, layout: int, rng) -> None:
    d, h, i, t, b = 2 if direction == "bidirectional" else 1, 5, 3, 4, 2
    inits = _recurrent_weights(rng, op, d, h, i)
    x = rng.standard_normal((t, b, i) if layout == 0 else (b, t, i)).astype(np.float32)
    state_shape = (d, b, h) if layout == 0 else (b, d, h)
    h0 = rng.standard_normal(state_shape).astype(np.float32)
    ins = ["x", "W", "R", "B", "", "h0"]
    feeds = {"x": x, "h0": h0}
    inputs = [vi("x", F, x.shape), vi("h0", F, state_shape)]
    outs = ["y", "yh"]
    if op == "LSTM":
        ins.append("c0")
        feeds["c0"] = rng.standard_normal(state_shape).astype(np.float32)
        inputs.append(vi("c0", F, state_shape))
        outs.append("yc")
    attrs = dict(hidden_size=h, direction=direction, layout=layout)
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    nodes = [helper.make_node(op, ins, outs, **attrs)]
    data = model_bytes(nodes, inputs, [vi(n, F, None) for n in outs], inits, 14)
    got, _ = _compiled_outputs(data, feeds)
    if layout == 0:
        want = onnxruntime_run(data, feeds)
    else:  # onnxruntime has no layout 1: its layout-0 graph on the transposed tensors
        attrs["layout"] = 0
        nodes0 = [helper.make_node(op, ins, outs, **attrs)]
        t_inputs = [vi(v.name, F, None) for v in inputs]
        data0 = model_bytes(nodes0, t_inputs, [vi(n, F, None) for n in outs], inits, 14)
        feeds0 = {k: np.ascontiguousarray(np.swapaxes(v, 0, 1)) for k, v in feeds.items()}
        y, *finals = onnxruntime_run(data0, feeds0)
        want = [y.transpose(2, 0, 1, 3), *(np.swapaxes(f, 0, 1) for f in finals)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_lstm_without_initial_state_and_only_final_outputs(rng) -> None:
    inits = _recurrent_weights(rng, "LSTM", 1, 7, 4)
    x = rng.standard_normal((6, 3, 4)).astype(np.float32)
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R", "B"], ["", "yh"], hidden_size=7),
        helper.make_node("Squeeze", ["yh", "ax"], ["y"]),
    ]
    inits["ax"] = _i64(0)
    _check(nodes, [vi("x", F, x.shape)], [vi("y", F, None)], {"x": x}, inits, opset=14)


# ---- streams ---------------------------------------------------------------------------------


def _state_graph(rng, extra_op: str | None = None) -> bytes:
    """x (1, 2, 3) and state (1, 2, 4) -> LSTM step -> a head on y; stateN the new h (c kept
    zero: a GRU-like carried state)."""
    inits = _recurrent_weights(rng, "GRU", 1, 4, 3)
    inits["hw"] = rng.standard_normal((4, 2)).astype(np.float32)
    nodes = [
        helper.make_node("GRU", ["x", "W", "R", "B", "", "state"], ["y", "stateN"], hidden_size=4),
        helper.make_node("Squeeze", ["y", "one"], ["ys"]),
        helper.make_node("MatMul", ["ys", "hw"], ["m"]),
        helper.make_node(extra_op or "Tanh", ["m"], ["out"]),
    ]
    inits["one"] = _i64(1)
    return model_bytes(
        nodes,
        [vi("x", F, (1, 2, 3)), vi("state", F, (1, 2, 4))],
        [vi("out", F, None), vi("stateN", F, (1, 2, 4))],
        inits,
        opset=14,
    )


def test_state_carrying_stream_runs_compiled_and_equals_onnxruntime(rng) -> None:
    data = _state_graph(rng)
    stream = graph_model(data).stream(batch_size=2)
    state = np.zeros((1, 2, 4), np.float32)
    for _ in range(5):
        x = rng.standard_normal((1, 2, 3)).astype(np.float32)
        got = stream.step(x)
        assert stream.compiled, stream.compile_error
        want, state = onnxruntime_run(data, {"x": x, "state": state})
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(stream.state["state"], state, atol=1e-5)
    snap = stream.state
    a = stream.step(x)
    stream.state = snap
    np.testing.assert_array_equal(stream.step(x), a)
    stream.reset()
    np.testing.assert_allclose(
        stream.step(x),
        onnxruntime_run(data, {"x": x, "state": np.zeros((1, 2, 4), np.float32)})[0],
        atol=1e-5,
    )


def test_an_op_without_lowering_falls_back_with_its_reason(rng) -> None:
    data = _state_graph(rng, "Sin")
    compiled = graph_model(data).stream(batch_size=2)
    by_ops = graph_model(data).stream(batch_size=2, compile=False)
    for _ in range(3):
        x = rng.standard_normal((1, 2, 3)).astype(np.float32)
        np.testing.assert_allclose(compiled.step(x), by_ops.step(x), atol=1e-6)
    assert not compiled.compiled
    assert "Sin" in compiled.compile_error
    assert not by_ops.compiled


def test_switching_chunk_shapes_keeps_the_state(rng) -> None:
    inits = _recurrent_weights(rng, "LSTM", 1, 4, 3)
    nodes = [
        helper.make_node(
            "LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["y", "hn", "cn"], hidden_size=4
        )
    ]
    data = model_bytes(
        nodes,
        [vi("x", F, ("T", 1, 3)), vi("h0", F, (1, 1, 4)), vi("c0", F, (1, 1, 4))],
        [vi("y", F, None), vi("hn", F, (1, 1, 4)), vi("cn", F, (1, 1, 4))],
        inits,
        opset=14,
    )
    stream = graph_model(data).stream()
    assert stream.state_map == {"h0": "hn", "c0": "cn"}
    h = c = np.zeros((1, 1, 4), np.float32)
    for t in (3, 1, 3, 2, 1):
        x = rng.standard_normal((t, 1, 3)).astype(np.float32)
        got = stream.step(x)
        assert stream.compiled, stream.compile_error
        want, h, c = onnxruntime_run(data, {"x": x, "h0": h, "c0": c})
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(stream.state["h0"], h, atol=1e-5)


def test_bad_steps_leave_a_compiled_stream_unchanged(rng) -> None:
    data = _state_graph(rng)
    stream = graph_model(data).stream(batch_size=2)
    stream.step(rng.standard_normal((1, 2, 3)).astype(np.float32))
    assert stream.compiled
    before = stream.state
    with pytest.raises(lstm_infer.errors.InputError):
        stream.step(np.zeros((1, 2, 5), np.float32))
    with pytest.raises(lstm_infer.errors.InputTypeError):
        stream.step(np.array([["a"]]))
    np.testing.assert_array_equal(stream.state["state"], before["state"])


POOL_CASES = {
    "max_2d_pads_ceil": ("MaxPool", (1, 3, 7, 9), dict(kernel_shape=[3, 2], strides=[2, 2],
                                                        pads=[1, 0, 1, 1], ceil_mode=1)),
    "max_2d_dilated": ("MaxPool", (2, 2, 8, 8), dict(kernel_shape=[2, 2], dilations=[2, 1])),
    "max_1d": ("MaxPool", (2, 3, 11), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    "avg_2d_exclude_pad": ("AveragePool", (1, 2, 6, 7), dict(kernel_shape=[3, 3],
                                                              pads=[1, 1, 1, 1])),
    "avg_2d_include_pad": ("AveragePool", (1, 2, 6, 7), dict(kernel_shape=[3, 3],
                                                              pads=[1, 1, 1, 1],
                                                              count_include_pad=1)),
    "avg_1d_ceil": ("AveragePool", (1, 4, 10), dict(kernel_shape=[3], strides=[2],
                                                     ceil_mode=1)),
    "global_avg": ("GlobalAveragePool", (2, 3, 4, 5), {}),
    "global_max": ("GlobalMaxPool", (2, 3, 7), {}),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pools(case: str, rng) -> None:
    op, shape, attrs = POOL_CASES[case]
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 0, 0] = -50.0  # a padded max must never pick the padding
    _check([helper.make_node(op, ["x"], ["y"], **attrs)], [vi("x", F, shape)],
           [vi("y", F, None)], {"x": x}, opset=19)  # fmt: skip


def test_runs_at_a_repeated_shape_compile_and_agree(rng) -> None:
    """GraphModel.run executes a shape seen before as one step program (CompiledRuns)."""
    x = rng.standard_normal((2, 3, 16, 20)).astype(np.float32)
    inits = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "b": rng.standard_normal(4).astype(np.float32)}  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    data = model_bytes(nodes, [vi("x", F, ("N", 3, 16, 20))], [vi("y", F, None)], inits)
    model = graph_model(data)
    want = onnxruntime_run(data, {"x": x})[0]
    first = model.run({"x": x})["y"]  # op by op (first sight of the shape)
    assert not model._compiled._steps
    second = model.run({"x": x})["y"]  # compiled now
    (entry,) = model._compiled._steps.values()
    assert entry is not None
    kinds = [k for k, _ in entry[0].profile(2)]
    assert "conv" in kinds and "pool" in kinds
    third = model.run({"x": x})["y"]
    for got in (first, second, third):
        np.testing.assert_allclose(got, want, atol=1e-5)
    model.compile_runs = False
    np.testing.assert_allclose(model.run({"x": x})["y"], want, atol=1e-5)


# ---- regressions found in review -------------------------------------------------------------


def test_an_output_aliasing_a_state_input_reads_the_old_state() -> None:
    """y = Identity(h) must give the state before the step, not after the state copies."""
    nodes = [
        helper.make_node("Identity", ["h"], ["y"]),
        helper.make_node("Add", ["h", "x"], ["hn"]),
    ]
    data = model_bytes(nodes, [vi("x", F, (1, 4)), vi("h", F, (1, 4))],
                       [vi("y", F, (1, 4)), vi("hn", F, (1, 4))])  # fmt: skip
    xs = [np.zeros((1, 4), np.float32)] + [np.ones((1, 4), np.float32)] * 3
    for compile_ in (True, False):
        stream = graph_model(data).stream(state_map={"h": "hn"}, compile=compile_)
        got = [float(stream.step(x)[0, 0]) for x in xs]
        assert stream.compiled == compile_
        assert got == [0.0, 0.0, 1.0, 2.0]


def test_two_states_that_swap() -> None:
    nodes = [helper.make_node("Identity", ["b"], ["an"]),
             helper.make_node("Identity", ["a"], ["bn"]),
             helper.make_node("Add", ["a", "x"], ["y"])]  # fmt: skip
    shape = (1, 2)
    data = model_bytes(nodes, [vi(n, F, shape) for n in "xab"],
                       [vi(n, F, shape) for n in ("y", "an", "bn")])  # fmt: skip
    x = np.zeros(shape, np.float32)
    stream = graph_model(data).stream(state_map={"a": "an", "b": "bn"})
    stream.step(x)  # compiles (on zeros, where a swap looks right either way)
    assert stream.compiled
    stream.state = {"a": np.full(shape, 1, np.float32), "b": np.full(shape, 2, np.float32)}
    assert [float(stream.step(x)[0, 0]) for _ in range(4)] == [1.0, 2.0, 1.0, 2.0]


def test_runs_at_an_empty_batch_and_failing_runs_keep_their_error_type(rng) -> None:
    inits = _recurrent_weights(rng, "LSTM", 1, 3, 4)
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "yh"], hidden_size=3),
             helper.make_node("Tanh", ["y"], ["t"])]  # fmt: skip
    data = model_bytes(nodes, [vi("x", F, ("T", "N", 4))], [vi("t", F, None), vi("yh", F, None)],
                       inits, 14)  # fmt: skip
    model = graph_model(data)
    for _ in range(3):  # the second call would compile: an empty batch runs op by op
        out = model.run({"x": np.zeros((3, 0, 4), np.float32)})
        assert out["t"].shape == (3, 1, 0, 3)
    clip = model_bytes([helper.make_node("Clip", ["x", "lo"], ["y"])], [vi("x", F, (2, 3))],
                       [vi("y", F, None)], {"lo": np.zeros(2, np.float32)})  # fmt: skip
    bad = graph_model(clip)
    for _ in range(3):  # one error type on every call, compiled or not
        with pytest.raises(lstm_infer.errors.InputError):
            bad.run({"x": np.zeros((2, 3), np.float32)})


def test_hard_sigmoid_and_clip_keep_nan_compiled() -> None:
    nodes = [helper.make_node("HardSigmoid", ["x"], ["y"]),
             helper.make_node("Clip", ["x", "lo", "hi"], ["z"])]  # fmt: skip
    inits = {"lo": np.array(-1.0, np.float32), "hi": np.array(1.0, np.float32)}
    data = model_bytes(nodes, [vi("x", F, (1, 3))], [vi("y", F, None), vi("z", F, None)], inits)
    x = np.array([[np.nan, 0.0, 9.0]], np.float32)
    model = graph_model(data)
    want = onnxruntime_run(data, {"x": x})
    for _ in range(3):
        got = model.run({"x": x})
        np.testing.assert_allclose(got["y"], want[0])
        np.testing.assert_allclose(got["z"], want[1])


def test_a_run_too_large_to_compile_is_refused_before_allocating(rng) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["y"])]
    data = model_bytes(nodes, [vi("x", F, (64, 1024))], [vi("y", F, None)])
    model = graph_model(data)
    model._compiled.max_arena_bytes = 256 * 1024  # less than the two 256 KB tensors
    x = rng.standard_normal((64, 1024)).astype(np.float32)
    for _ in range(3):
        np.testing.assert_array_equal(model.run({"x": x})["y"], -np.maximum(x, 0))
    assert "exceed" in model._compiled.error({"x": x})
