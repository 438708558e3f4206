"""Programs specialised to input shapes: the shape glue folded, the same numbers.

Against onnxruntime: a torch export full of Shape/Gather/Concat/Reshape chains run at
alternating shapes (the cache), silero-VAD's If-on-batch-size file, and a graph whose shapes
depend on an input's values (the guard sends those calls back to the general program).
"""

from __future__ import annotations

import numpy as np
from conftest import require

onnx = require("onnx")
ort = require("onnxruntime")
torch = require("torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from test_graph_zoo import Crnn, _randomised, export, ort_run  # noqa: E402

import lstm_infer  # noqa: E402


def test_shape_glue_folds_and_alternating_shapes_match(rng) -> None:
    torch.manual_seed(5)
    net = _randomised(Crnn())
    x = rng.standard_normal((3, 1, 16, 20)).astype(np.float32)
    data = export(net, (torch.from_numpy(x),), ["x"], ["y"], False,
                  {"x": {0: "n", 3: "w"}, "y": {0: "t", 1: "n"}})  # fmt: skip
    model = lstm_infer.load(data)
    general = len(model._program.steps)
    for shape in [(3, 1, 16, 20), (1, 1, 16, 12), (3, 1, 16, 20), (2, 1, 16, 8)]:
        xs = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(
            model.run({"x": xs})["y"], ort_run(data, {"x": xs})[0], rtol=1e-4, atol=1e-4
        )
    specialised = model._runner.specialized()
    assert len(specialised) == 3
    assert all(len(p.steps) < general for p in specialised)
    assert not any(s.node.op == "Shape" for p in specialised for s in p.steps)
    model.specialize_shapes = False  # the general program gives the same numbers
    np.testing.assert_allclose(model.run({"x": xs})["y"], ort_run(data, {"x": xs})[0],
                               rtol=1e-4, atol=1e-4)  # fmt: skip


def test_shapes_from_values_fall_back_to_the_general_program(rng) -> None:
    # y = sum(x) + size(ConstantOfShape(n)): the same input shapes, a value-dependent shape.
    nodes = [
        helper.make_node("ConstantOfShape", ["n"], ["z"]),
        helper.make_node("Shape", ["z"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["x"], ["t"], keepdims=0),
        helper.make_node("Add", ["sf", "t"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model_proto.ir_version = 9
    data = model_proto.SerializeToString()
    model = lstm_infer.load(data)
    x = rng.standard_normal(4).astype(np.float32)
    for n in (3, 5, 3, 7):
        feeds = {"x": x, "n": np.array([n], np.int64)}
        np.testing.assert_allclose(model.run(feeds)["y"], ort_run(data, feeds)[0], rtol=1e-6)
    assert model._runner.specialized() == []  # the guard failed once: general


def test_silero_batch_checks_fold(rng) -> None:
    from test_silero_vad import _audio, _session, silero_file

    path = silero_file("silero_vad.onnx")
    ref = _session(path)
    model = lstm_infer.load(path, fixed_inputs={"sr": 16000})
    state_o = state_r = np.zeros((2, 1, 128), np.float32)
    for chunk in _audio(rng, 6, 512):
        got = model.run({"input": chunk[None], "state": state_o})
        want = ref.run(None, {"input": chunk[None], "state": state_r, "sr": np.array(16000)})
        np.testing.assert_allclose(got["output"], want[0], atol=1e-4)
        state_o, state_r = got["stateN"], want[1]
    (program,) = model._runner.specialized()
    assert not any(s.node.op == "If" for s in program.steps)


def _model(nodes, inputs, outputs, inits=()) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 9
    return model.SerializeToString()


def test_specialising_never_edits_the_general_program(rng) -> None:
    """Regression (review): the specialised compile fused Conv+Relu in the shared nodes, so
    the general program then lacked 'c' and a new input length failed."""
    w = numpy_helper.from_array(rng.standard_normal((2, 1, 3)).astype(np.float32), "W")
    data = _model(
        [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Relu", ["c"], ["y"]),
         helper.make_node("Shape", ["c"], ["s"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("s", TensorProto.INT64, None)], [w],
    )  # fmt: skip
    model = lstm_infer.load(data)
    for n in (10, 12, 10, 7):
        x = rng.standard_normal((1, 1, n)).astype(np.float32)
        got, want = model.run({"x": x}), ort_run(data, {"x": x})
        np.testing.assert_allclose(got["y"], want[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got["s"], want[1])


def _pad_model() -> bytes:
    """y = Pad(x (2, 3), pads p (4,))."""
    return _model(
        [helper.make_node("Pad", ["x", "p"], ["y"], mode="constant")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("p", TensorProto.INT64, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip


def test_integer_feeds_changed_in_place_are_read_again(rng) -> None:
    """Regression (review): converted integer inputs were cached by array identity, so a
    caller reusing its pads buffer got the old pads."""
    data = _pad_model()
    model = lstm_infer.load(data)
    x, p = np.ones((2, 3), np.float32), np.zeros(4, np.int64)
    assert model.run({"x": x, "p": p})["y"].shape == (2, 3)
    p[:] = [1, 1, 1, 1]
    assert model.run({"x": x, "p": p})["y"].shape == (4, 5)


def test_the_callers_constant_arrays_stay_writeable() -> None:
    """Compiled programs keep read-only views of their constants (int_values caches what it
    read from them): the arrays of a graph built by hand stay writeable (they were made
    read-only in place before), and fixed_inputs are copied at load."""
    from lstm_infer.graph import Graph, Node, TensorType, ValueInfo
    from lstm_infer.graph_model import GraphModel

    pads = np.array([1, 0, 1, 0], np.int64)
    graph = Graph(
        [ValueInfo("x", TensorType("float32", (2, 3)))],
        [ValueInfo("y", TensorType("float32"))],
        [Node("Pad", ["x", "p"], ["y"], {"mode": "constant"}, name="pad")],
        {"p": pads},
    )
    model = GraphModel(graph)
    assert model.run({"x": np.ones((2, 3), np.float32)})["y"].shape == (4, 3)
    assert pads.flags.writeable
    data = _pad_model()
    fixed = lstm_infer.load(data, fixed_inputs={"p": pads})
    pads[:] = 0  # the caller's buffer is its own again: the model keeps what it was given
    assert fixed.run({"x": np.ones((2, 3), np.float32)})["y"].shape == (4, 3)
