"""Graphs written by ``torch.onnx.export`` (both exporters) lower into the engine's plan.

Each case is exported at test time and run three ways: PyTorch's own forward, onnxruntime on
the exported graph, and lstm_infer; all agree to 1e-4. CI runs a pairwise-covering subset of
the option matrix (every pair of option values appears at least once); set
``LSTM_INFER_FULL_MATRIX=1`` to run every combination (slow: the dynamo exporter takes
seconds per model).
"""

from __future__ import annotations

import io
import itertools
import os
from typing import Any

import numpy as np
import pytest
from conftest import require

torch = require("torch")
onnx = require("onnx")
require("onnxruntime")

import torch_graph_models as tg  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lstm_infer  # noqa: E402
from lstm_infer.errors import (  # noqa: E402
    InputError,
    ModelFormatError,
    UnsupportedModelError,
)

ATOL = 1e-4
FULL_MATRIX = os.environ.get("LSTM_INFER_FULL_MATRIX", "") == "1"
CASES = tg.all_cases() if FULL_MATRIX else tg.pairwise_cases()


def _close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str) -> None:
    assert set(want) <= set(got), (sorted(got), sorted(want))
    for name, ref in want.items():
        assert got[name].shape == ref.shape, (what, name, got[name].shape, ref.shape)
        np.testing.assert_allclose(got[name], ref, atol=ATOL, rtol=0, err_msg=f"{what}: {name}")


def _time_major(case: tg.GraphCase, a: np.ndarray) -> np.ndarray:
    return a.swapaxes(0, 1) if case.batch_first else a


def _check_stream(model: lstm_infer.Model, case: tg.GraphCase, feeds: dict, outs: dict) -> None:
    """step() reproduces run() timestep by timestep; the state maps onto hn/cn."""
    x = _time_major(case, feeds[case.input_names[0]])
    T, B = x.shape[:2]
    stream = model.stream(batch_size=B)
    stream.reset({n: feeds[n] for n in case.input_names[1:]})
    y = _time_major(case, outs["y"])
    for t in range(T):
        np.testing.assert_allclose(stream.step(x[t]), y[t], atol=1e-5, rtol=0)
    _close(stream.state_outputs(), {n: outs[n] for n in case.output_names[1:]}, "stream")
    # feed() over the whole sequence from the same start gives the same outputs.
    stream.reset({n: feeds[n] for n in case.input_names[1:]})
    np.testing.assert_allclose(stream.feed(feeds[case.input_names[0]]), outs["y"], atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=tg.GraphCase.id)
def test_exported_graph_matches_torch_and_onnxruntime(case: tg.GraphCase) -> None:
    rng = np.random.default_rng(case.seed)
    net = tg.build_net(case)
    seq_len = 3 + case.seed % 3
    feeds = tg.example_inputs(case, 2, seq_len, rng)
    exported = tg.export(net, case, feeds)
    model = lstm_infer.load(exported)

    assert [i.name for i in model.inputs] == case.input_names
    assert [o.name for o in model.outputs] == case.output_names
    outs = model.run(feeds)
    _close(outs, tg.torch_forward(net, case, feeds), "torch")
    _close(outs, tg.ort_run(exported, feeds), "onnxruntime")

    if not case.dynamo:
        # Symbolic batch and sequence axes: other sizes run too (the dynamo exporter fixes
        # nn.RNN's length when it unrolls it, and we keep its other exports static-shaped).
        other = tg.example_inputs(case, 3, seq_len + 2, rng)
        other_outs = model.run(other)
        _close(other_outs, tg.torch_forward(net, case, other), "torch, other sizes")
        _close(other_outs, tg.ort_run(exported, other), "onnxruntime, other sizes")
    if not case.bidirectional:
        _check_stream(model, case, feeds, outs)


def test_the_ci_subset_covers_every_pair_of_options() -> None:
    keys = list(tg.FULL_MATRIX)
    chosen = {tuple(getattr(c, k) for k in keys) for c in tg.pairwise_cases()}
    for i, j in itertools.combinations(range(len(keys)), 2):
        for a, b in itertools.product(tg.FULL_MATRIX[keys[i]], tg.FULL_MATRIX[keys[j]]):
            assert any(row[i] == a and row[j] == b for row in chosen), (keys[i], a, keys[j], b)
    assert len(chosen) < len(tg.all_cases()) // 20


def test_dynamo_unrolled_rnn_lowers_to_one_rnn_layer() -> None:
    """dynamo writes nn.RNN as per-step MatMul/Add/Tanh; it becomes RNN layers again."""
    case = tg.GraphCase(cell="rnn_tanh", layers=2, bidirectional=True, state=True, dynamo=True)
    net = tg.build_net(case)
    feeds = tg.example_inputs(case, 2, 4, np.random.default_rng(1))
    exported = tg.export(net, case, feeds)
    ops = {n.op_type for n in onnx.load_from_string(exported).graph.node}
    assert "RNN" not in ops and "Tanh" in ops  # really unrolled
    model = lstm_infer.load(exported)
    assert [(la.cell, la.direction) for la in model.layers] == [("rnn", "bidirectional")] * 2
    outs = model.run(feeds)
    _close(outs, tg.torch_forward(net, case, feeds), "torch")
    # The lowered model is not tied to the unrolled length.
    longer = tg.example_inputs(case, 3, 9, np.random.default_rng(2))
    _close(model.run(longer), tg.torch_forward(net, case, longer), "torch, longer")


class TwoModules(torch.nn.Module):
    """Two recurrent modules in sequence, each with its own state input and output."""

    def __init__(self, first: str, second: str, batch_first: bool) -> None:
        super().__init__()
        self.kinds = (first, second)
        self.a = getattr(torch.nn, first)(8, 16, batch_first=batch_first)
        self.b = getattr(torch.nn, second)(16, 12, batch_first=batch_first)

    def forward(self, x: Any, *states: Any) -> Any:
        state_a, state_b = _split_states(self.kinds, states)
        y, final_a = self.a(x, state_a)
        y, final_b = self.b(y, state_b)
        return (y, *_flat(final_a), *_flat(final_b))


def _split_states(kinds: tuple[str, str], states: tuple[Any, ...]) -> tuple[Any, Any]:
    out, k = [], 0
    for kind in kinds:
        if kind == "LSTM":
            out.append((states[k], states[k + 1]))
            k += 2
        else:
            out.append(states[k])
            k += 1
    return out[0], out[1]


def _flat(state: Any) -> tuple[Any, ...]:
    return tuple(state) if isinstance(state, tuple) else (state,)


def _two_module_names(kinds: tuple[str, str]) -> tuple[list[str], list[str]]:
    ins, outs = ["x"], ["y"]
    for k, kind in enumerate(kinds):
        ins += [f"h{k}", f"c{k}"] if kind == "LSTM" else [f"h{k}"]
        outs += [f"h{k}n", f"c{k}n"] if kind == "LSTM" else [f"h{k}n"]
    return ins, outs


@pytest.mark.parametrize(
    ("first", "second", "dynamo"),
    [("LSTM", "LSTM", False), ("LSTM", "LSTM", True), ("GRU", "LSTM", False)],
)
def test_two_recurrent_modules_in_sequence(
    tmp_path: Any, first: str, second: str, dynamo: bool
) -> None:
    torch.manual_seed(3)
    net = TwoModules(first, second, batch_first=True).eval()
    rng = np.random.default_rng(3)
    B, T = 2, 5
    ins, outs = _two_module_names((first, second))
    feeds = {"x": rng.standard_normal((B, T, 8)).astype(np.float32)}
    for name in ins[1:]:
        size = 16 if name[1] == "0" else 12
        feeds[name] = rng.standard_normal((1, B, size)).astype(np.float32)
    args = tuple(torch.from_numpy(feeds[n]) for n in ins)
    path = tmp_path / "two.onnx"
    torch.onnx.export(net, args, str(path), input_names=ins, output_names=outs, dynamo=dynamo)
    model = lstm_infer.load(path)
    assert [(la.input_size, la.hidden_size) for la in model.layers] == [(8, 16), (16, 12)]
    assert [i.name for i in model.inputs] == ins
    assert [o.name for o in model.outputs] == outs
    got = model.run(feeds)
    with torch.no_grad():
        want = dict(zip(outs, (t.numpy() for t in net(*args))))
    _close(got, want, "torch")
    _close(got, tg.ort_run(str(path), feeds), "onnxruntime")

    # Each module's state is its own stream state group.
    stream = model.stream(batch_size=B)
    stream.reset({n: feeds[n] for n in ins[1:]})
    for t in range(T):
        np.testing.assert_allclose(stream.step(feeds["x"][:, t]), got["y"][:, t], atol=1e-5)
    _close(stream.state_outputs(), {n: got[n] for n in outs[1:]}, "stream")

    # The native format keeps the groups and the declared names and shapes exactly.
    model.save(tmp_path / "two.safetensors")
    again = lstm_infer.load(tmp_path / "two.safetensors")
    assert again.inputs == model.inputs and again.outputs == model.outputs
    for name, value in again.run(feeds).items():
        np.testing.assert_array_equal(value, got[name])


class GemmHead(torch.nn.Module):
    """y flattened to (T*B, F) for a 2-D Linear (exported as Gemm), then reshaped back."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.GRU(4, 6, num_layers=2)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x: Any) -> Any:
        y, _ = self.rnn(x)
        T, B, F = y.shape
        return torch.tanh(self.head(y.reshape(T * B, F)).reshape(T, B, 3))


def test_flattened_gemm_head_and_shape_arithmetic() -> None:
    torch.manual_seed(0)
    net = GemmHead().eval()
    x = np.random.default_rng(0).standard_normal((5, 2, 4)).astype(np.float32)
    buf = _export_bytes(net, (torch.from_numpy(x),), dynamic_axes={"x": {0: "seq", 1: "batch"}})
    assert "Gemm" in {n.op_type for n in onnx.load_from_string(buf).graph.node}
    model = lstm_infer.load(buf)
    # Gemm (flattened) + Reshape back + Tanh: one dense layer with its activation.
    assert [(d.weight.shape, d.activation) for d in model.spec.head] == [((3, 6), "tanh")]
    for xs in (x, x[:3, :1]):
        with torch.no_grad():
            want = net(torch.from_numpy(np.ascontiguousarray(xs))).numpy()
        np.testing.assert_allclose(model.run({"x": xs})["y"], want, atol=ATOL)


def _export_bytes(net: Any, args: tuple, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(net, args, buf, input_names=["x"], output_names=["y"], dynamo=False, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("opset", [7, 9, 11])
def test_older_opsets(opset: int) -> None:
    case = tg.GraphCase(
        cell="lstm",
        layers=2,
        bidirectional=True,
        batch_first=True,
        embedding=True,
        head=True,
        state=True,
        seed=3,
    )
    net = tg.build_net(case)
    feeds = tg.example_inputs(case, 2, 4, np.random.default_rng(0))
    exported = tg.export(net, case, feeds, opset=opset)
    assert onnx.load_from_string(exported).opset_import[0].version == opset
    model = lstm_infer.load(exported)
    _close(model.run(feeds), tg.torch_forward(net, case, feeds), "torch")


def test_static_shapes_are_reported_as_declared() -> None:
    case = tg.GraphCase(cell="gru", layers=1, batch_first=True, head=True, state=True, seed=1)
    net = tg.build_net(case)
    feeds = tg.example_inputs(case, 2, 4, np.random.default_rng(0))
    model = lstm_infer.load(tg.export(net, case, feeds, dynamic=False))
    assert [i.shape for i in model.inputs] == [(2, 4, tg.INPUT), (1, 2, tg.HIDDEN)]
    assert [o.shape for o in model.outputs] == [(2, 4, tg.OUT), (1, 2, tg.HIDDEN)]
    # The plan itself is not tied to the traced sizes.
    other = tg.example_inputs(case, 3, 6, np.random.default_rng(1))
    _close(model.run(other), tg.torch_forward(net, case, other), "torch, other sizes")


def _retyped(model: Any, dtype: int) -> Any:
    """``model`` with every float tensor (initializers, constants, I/O, casts) of ``dtype``."""
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    g = out.graph
    for k, t in enumerate(g.initializer):
        if t.data_type in floats:
            arr = numpy_helper.to_array(t).astype(np_dtype)
            g.initializer[k].CopyFrom(numpy_helper.from_array(arr, t.name))
    for node in g.node:
        for a in node.attribute:
            if a.name == "value" and a.t.data_type in floats:
                arr = numpy_helper.to_array(a.t).astype(np_dtype)
                a.t.CopyFrom(numpy_helper.from_array(arr, a.t.name))
            if node.op_type == "Cast" and a.name == "to" and a.i in floats:
                a.i = dtype
    for vi in [*g.input, *g.output]:
        if vi.type.tensor_type.elem_type in floats:
            vi.type.tensor_type.elem_type = dtype
    del g.value_info[:]
    return out


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.DOUBLE])
def test_float16_and_float64_initializers_load_as_float32(dtype: int) -> None:
    case = tg.GraphCase(cell="lstm", layers=2, embedding=True, head=True, state=True, seed=4)
    net = tg.build_net(case)
    feeds = tg.example_inputs(case, 2, 4, np.random.default_rng(0))
    original = onnx.load_from_string(tg.export(net, case, feeds))
    retyped = _retyped(original, dtype)
    onnx.checker.check_model(retyped)
    model = lstm_infer.load(retyped)
    # Reference: the float32 graph with its weights rounded through ``dtype`` exactly as the
    # loader converts them.
    rounded = _retyped(_retyped(original, dtype), TensorProto.FLOAT)
    want = tg.ort_run(rounded.SerializeToString(), feeds)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    typed = {k: v.astype(np_dtype) if v.dtype == np.float32 else v for k, v in feeds.items()}
    got = model.run(typed)
    assert all(v.dtype == np.float32 for v in got.values())
    tol = 1e-3 if dtype == TensorProto.FLOAT16 else ATOL  # float16 inputs are rounded too
    for name, ref in want.items():
        np.testing.assert_allclose(got[name], ref, atol=tol, err_msg=name)
    assert model.inputs[1].dtype == np.dtype(np_dtype).name


def _lstm_export(seed: int = 0) -> tuple[tg.GraphCase, Any, dict, bytes]:
    case = tg.GraphCase(cell="lstm", layers=2, head=True, state=True, seed=seed)
    net = tg.build_net(case)
    feeds = tg.example_inputs(case, 2, 4, np.random.default_rng(seed))
    return case, net, feeds, tg.export(net, case, feeds)


def test_external_data(tmp_path: Any) -> None:
    case, net, feeds, exported = _lstm_export()
    proto = onnx.load_from_string(exported)
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save_model(
        proto, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    assert (folder / "weights.bin").stat().st_size > 0
    model = lstm_infer.load(path)
    _close(model.run(feeds), tg.torch_forward(net, case, feeds), "torch")
    report = lstm_infer.validate(path, seq_len=5, trials=1)
    assert report.passed, str(report)

    # A location outside the model's folder is refused, whatever file is there.
    moved = onnx.load(str(path), load_external_data=False)
    (tmp_path / "weights.bin").write_bytes((folder / "weights.bin").read_bytes())
    for t in moved.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    onnx.save_model(moved, str(folder / "outside.onnx"))
    with pytest.raises(ModelFormatError, match=r"points outside the model's folder"):
        lstm_infer.load(folder / "outside.onnx")

    # Missing side file: a clear error naming the initializer and the file.
    (folder / "weights.bin").unlink()
    with pytest.raises(ModelFormatError, match=r"external data file 'weights.bin' is missing"):
        lstm_infer.load(path)


class CosAfterRnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(4, 5)

    def forward(self, x: Any) -> Any:
        return torch.cos(self.rnn(x)[0])


def test_op_around_the_stack_runs_as_a_graph_and_unknown_ops_name_the_node() -> None:
    """Cos after the RNN is no stack the fused path knows: it runs as a GraphModel, node for
    node, equal to torch; an operator the registry lacks is refused naming its node."""
    net = CosAfterRnn().eval()
    x = torch.randn(3, 2, 4)
    exported = _export_bytes(net, (x,))
    model = lstm_infer.load(exported)
    assert isinstance(model, lstm_infer.GraphModel)
    with torch.no_grad():
        np.testing.assert_allclose(model.run({"x": x.numpy()})["y"], net(x).numpy(), atol=ATOL)
    proto = onnx.load_from_string(exported)
    cos = next(n for n in proto.graph.node if n.op_type == "Cos")
    cos.op_type = "Acosh"
    with pytest.raises(
        UnsupportedModelError, match=rf"node '{cos.name}' \(Acosh\): .*not supported"
    ):
        lstm_infer.load(proto)


def test_wrong_shaped_initializer_names_the_node() -> None:
    *_, exported = _lstm_export()
    proto = onnx.load_from_string(exported)
    lstm = next(n for n in proto.graph.node if n.op_type == "LSTM")
    w = next(t for t in proto.graph.initializer if t.name == lstm.input[1])
    arr = numpy_helper.to_array(w)
    w.CopyFrom(numpy_helper.from_array(arr[:, :-1], w.name))
    with pytest.raises(ModelFormatError, match=rf"node '{lstm.name}' \(LSTM\): .*W must be"):
        lstm_infer.load(proto)

    proto = onnx.load_from_string(exported)
    matmul = next(n for n in proto.graph.node if n.op_type == "MatMul")
    w = next(t for t in proto.graph.initializer if t.name == matmul.input[1])
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w)[:-1], w.name))
    # Not the fused stack any more; as a graph the mismatch is found when the node runs.
    model = lstm_infer.load(proto)
    with pytest.raises(InputError, match=rf"node '{matmul.name}' \(MatMul\): "):
        model.run(
            {
                i.name: np.zeros([d if isinstance(d, int) else 2 for d in i.shape], np.float32)
                for i in model.inputs
            }
        )


def _glue_graph() -> tuple[Any, dict[str, np.ndarray]]:
    """A hand-written graph using glue ops exporters emit less often."""
    rng = np.random.default_rng(5)
    I, H, O = 3, 4, 2
    W = rng.uniform(-0.5, 0.5, (1, 3 * H, I)).astype(np.float32)
    R = rng.uniform(-0.5, 0.5, (1, 3 * H, H)).astype(np.float32)
    Bias = rng.uniform(-0.5, 0.5, (1, 6 * H)).astype(np.float32)
    Wd = rng.uniform(-0.5, 0.5, (O, H)).astype(np.float32)
    bd = rng.uniform(-0.5, 0.5, (O,)).astype(np.float32)
    inits = [
        numpy_helper.from_array(W, "W"),
        numpy_helper.from_array(R, "R"),
        numpy_helper.from_array(Bias, "B"),
        numpy_helper.from_array(Wd, "Wd"),
        numpy_helper.from_array(bd, "bd"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([-1, H], np.int64), "flat"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    mk = helper.make_node
    nodes = [
        mk("Identity", ["x"], ["x1"], name="id"),
        mk("Transpose", ["x1"], ["xt"], perm=[1, 0, 2], name="to_time_major"),
        mk("Cast", ["xt"], ["xc"], to=TensorProto.FLOAT, name="cast"),
        mk("Shape", ["xc"], ["shape"], name="shape"),
        mk("Gather", ["shape", "one"], ["batch"], axis=0, name="batch_of"),
        mk(
            "Constant",
            [],
            ["flat_h"],
            value=numpy_helper.from_array(np.array([H], np.int64)),
            name="h_size",
        ),
        mk("Concat", ["one", "batch", "flat_h"], ["h_shape"], axis=0, name="h_shape"),
        mk("ConstantOfShape", ["h_shape"], ["h0"], name="zeros"),
        mk(
            "GRU",
            ["xc", "W", "R", "B", "", "h0"],
            ["y4", "hn"],
            hidden_size=H,
            linear_before_reset=1,
            name="gru",
        ),
        mk("Squeeze", ["y4", "one"], ["y3"], name="squeeze_dir"),
        mk("Dropout", ["y3"], ["yd"], name="dropout"),
        mk("Flatten", ["yd"], ["y2"], axis=2, name="flatten"),
        mk("Gemm", ["y2", "Wd", "bd"], ["z2"], transB=1, name="gemm"),
        mk("Mul", ["z2", "two"], ["z2s"], name="scale"),
        mk("Shape", ["y3"], ["y_shape"], name="y_shape"),
        mk(
            "Constant",
            [],
            ["flat_two"],
            value=numpy_helper.from_array(np.array([2], np.int64)),
            name="two_i",
        ),
        mk("Slice", ["y_shape", "zero", "flat_two"], ["tb"], name="tb"),
        mk(
            "Constant",
            [],
            ["minus_one"],
            value=numpy_helper.from_array(np.array([-1], np.int64)),
            name="m1",
        ),
        mk("Concat", ["tb", "minus_one"], ["z_shape"], axis=0, name="z_shape"),
        mk("Reshape", ["z2s", "z_shape"], ["z3"], name="unflatten"),
        mk("Transpose", ["z3"], ["zt"], perm=[1, 0, 2], name="to_batch_first"),
        mk("Softmax", ["zt"], ["y"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "glue",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", I]),
            # An input no output depends on: accepted and ignored, as onnxruntime does.
            helper.make_tensor_value_info("unused", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", O])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {
        "x": rng.standard_normal((2, 5, I)).astype(np.float32),
        "unused": np.ones(1, np.float32),
    }
    return model, feeds


def test_hand_written_glue_graph_matches_onnxruntime() -> None:
    model, feeds = _glue_graph()
    onnx.checker.check_model(model)
    ours = lstm_infer.load(model)
    assert ours.spec.signature.layout == 1 and [d.activation for d in ours.spec.head] == ["softmax"]
    assert [(i.name, i.shape) for i in ours.inputs] == [
        ("x", ("batch", "seq", 3)),
        ("unused", (1,)),
    ]
    want = tg.ort_run(model.SerializeToString(), feeds)
    _close(ours.run(feeds), want, "onnxruntime")
    _close(ours.run({"x": feeds["x"]}), want, "without the unused input")
    report = lstm_infer.validate(model, batch=3, seq_len=7)
    assert report.passed, str(report)


def test_bidirectional_graph_cannot_stream_but_unidirectional_state_maps() -> None:
    case, net, feeds, exported = _lstm_export(seed=2)
    model = lstm_infer.load(exported)
    stream = model.stream(batch_size=2)
    with pytest.raises(InputError, match=r"unknown state input\(s\) \['x'\]"):
        stream.reset({"x": feeds["x"]})
    with pytest.raises(InputError, match=r"'h0' must have shape \(2, 2, 5\)"):
        stream.reset({"h0": feeds["h0"][:1]})
    stream.reset({"h0": feeds["h0"]})  # c0 not given: zeros, as run() without c0
    outs = model.run({"x": feeds["x"], "h0": feeds["h0"]})
    for t in range(feeds["x"].shape[0]):
        np.testing.assert_allclose(stream.step(feeds["x"][t]), outs["y"][t], atol=1e-5)
    _close(stream.state_outputs(), {"hn": outs["hn"], "cn": outs["cn"]}, "stream")

    bi = tg.GraphCase(cell="gru", bidirectional=True)
    bi_feeds = tg.example_inputs(bi, 2, 3, np.random.default_rng(0))
    bi_model = lstm_infer.load(tg.export(tg.build_net(bi), bi, bi_feeds))
    with pytest.raises(lstm_infer.errors.StreamError, match="bidirectional"):
        bi_model.stream()


def test_imported_graph_native_round_trip_is_exact(tmp_path: Any) -> None:
    case = tg.GraphCase(
        cell="gru",
        layers=2,
        bidirectional=True,
        batch_first=True,
        embedding=True,
        head=True,
        state=True,
        seed=1,
    )
    net = tg.build_net(case)
    feeds = tg.example_inputs(case, 2, 4, np.random.default_rng(0))
    model = lstm_infer.load(tg.export(net, case, feeds))
    model.save(tmp_path / "m.safetensors")
    again = lstm_infer.load(tmp_path / "m.safetensors")
    assert again.inputs == model.inputs and again.outputs == model.outputs
    for key in ("style", "layout", "inputs", "outputs", "state_groups", "declared"):
        assert getattr(again.spec.signature, key) == getattr(model.spec.signature, key), key
    expected = model.run(feeds)
    got = again.run(feeds)
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


class LinearBeforeLstm(torch.nn.Module):
    """Linear -> (optional tanh) -> scaled -> LSTM without bias -> Linear, divided by 3."""

    def __init__(self, activation: bool) -> None:
        super().__init__()
        self.pre = torch.nn.Linear(4, 6)
        self.rnn = torch.nn.LSTM(6, 5, bias=False)
        self.post = torch.nn.Linear(5, 2, bias=False)
        self.activation = activation

    def forward(self, x: Any) -> Any:
        z = self.pre(x)
        if self.activation:
            z = torch.tanh(z)
        return self.post(self.rnn(z * 0.5)[0]) / 3.0


@pytest.mark.parametrize("dynamo", [False, True])
def test_affine_maps_before_a_layer_fold_into_it(dynamo: bool) -> None:
    torch.manual_seed(0)
    net = LinearBeforeLstm(activation=False).eval()
    x = torch.randn(3, 2, 4)
    buf = io.BytesIO()
    torch.onnx.export(net, (x,), buf, input_names=["x"], output_names=["y"], dynamo=dynamo)
    model = lstm_infer.load(buf.getvalue())
    assert [(la.input_size, la.hidden_size) for la in model.layers] == [(4, 5)]
    with torch.no_grad():
        np.testing.assert_allclose(model.run({"x": x.numpy()})["y"], net(x).numpy(), atol=ATOL)

    # A Tanh between the Linear and the LSTM cannot fold into W: a graph, node for node.
    net = LinearBeforeLstm(activation=True).eval()
    buf = io.BytesIO()
    torch.onnx.export(net, (x,), buf, input_names=["x"], output_names=["y"], dynamo=dynamo)
    model = lstm_infer.load(buf.getvalue())
    assert isinstance(model, lstm_infer.GraphModel)
    with torch.no_grad():
        np.testing.assert_allclose(model.run({"x": x.numpy()})["y"], net(x).numpy(), atol=ATOL)
