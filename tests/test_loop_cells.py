"""Loops and Scans whose body is one recurrent cell step become the native LSTM / GRU / RNN
node (lstm_infer.passes.loop_cells); anything not proven a cell stays a Loop. Every model is
checked against onnxruntime on the same file (at 1e-4), at several sequence lengths and batch
sizes, and streamed step by step where it streams: the Keras fixtures tf2onnx converted
(tests/fixtures/keras, made by make_keras_fixtures.py there), bodies built with onnx.helper
in tf2onnx's and hand-written shapes (loop_cell_builders), and torch.jit.script cell loops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import require

import lstm_infer

onnx = require("onnx")
ort = require("onnxruntime")
from loop_cell_builders import cell_loop, one_step_loop  # noqa: E402

TOL = 1e-4
KERAS = Path(__file__).resolve().parent / "fixtures" / "keras"
LOOPS = {"Loop", "Scan"}

# Keras fixture -> (the form tf2onnx gave it, the op lstm_infer runs it as). tf2onnx writes
# every plain Keras LSTM (stateful or not, any return_sequences, go_backwards) as a native
# ONNX LSTM itself;
# GRU and SimpleRNN come as Loops, which become native nodes here. An LSTM whose recurrent
# activation is hard_sigmoid is a Loop tf2onnx cannot turn into an LSTM node, and neither do
# we (the gates are not sigmoids): it stays a Loop.
MANIFEST = {
    "gru_reset_after": ("Loop", "GRU"),
    "gru_reset_before": ("Loop", "GRU"),
    "gru_last": ("Loop", "GRU"),
    "simple_rnn_tanh": ("Loop", "RNN"),
    "simple_rnn_relu": ("Loop", "RNN"),
    "stacked_gru_rnn": ("Loop", "GRU+RNN"),
    "gru_go_backwards": ("Loop", "GRU"),  # the Loop over a ReverseSequence of the input
    "bidirectional_gru": ("Loop", "GRU"),  # two Loops, one over the reversed input
    "lstm_go_backwards": ("LSTM", "LSTM"),
    "lstm_sequences": ("LSTM", "LSTM"),
    "lstm_last": ("LSTM", "LSTM"),
    "lstm_stateful": ("LSTM", "LSTM"),
    "lstm_hard_sigmoid": ("Loop", "Loop"),
}


def ort_run(data: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def ops_of(model: object) -> set[str]:
    graph = getattr(model, "graph", None)
    return {n.op for n in graph.nodes} if graph is not None else {"<recurrent stack>"}


def assert_matches(model: object, data: bytes, feeds: dict[str, np.ndarray]) -> dict:
    got = model.run(feeds)
    want = ort_run(data, feeds)
    assert len(got) == len(want)
    for (name, g), w in zip(got.items(), want):
        assert g.shape == w.shape, (name, g.shape, w.shape)
        np.testing.assert_allclose(g, w, rtol=TOL, atol=TOL, err_msg=name)
    return got


# ---- Keras models tf2onnx converted ----------------------------------------------------------


def test_manifest_lists_every_fixture() -> None:
    assert {p.stem for p in KERAS.glob("*.onnx")} == set(MANIFEST)


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_keras_fixture(name: str, rng: np.random.Generator) -> None:
    data = (KERAS / f"{name}.onnx").read_bytes()
    exported, runs_as = MANIFEST[name]
    proto_ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
    assert exported in proto_ops, proto_ops
    model = lstm_infer.load(data)
    ops = ops_of(model)
    if runs_as == "Loop":
        assert "Loop" in ops, ops
    elif exported == "Loop":
        assert not ops & LOOPS and set(runs_as.split("+")) <= ops, ops
        loops = sum(n.op_type == "Loop" for n in onnx.load_from_string(data).graph.node)
        assert sum(n.op in ("LSTM", "GRU", "RNN") for n in model.graph.nodes) == loops
    (inp,) = model.inputs
    features = inp.shape[2]
    fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
    for batch, steps in ((fixed_batch or 1, 1), (fixed_batch or 3, 6), (fixed_batch or 2, 11)):
        x = rng.standard_normal((batch, steps, features)).astype(np.float32)
        assert_matches(model, data, {inp.name: x})


@pytest.mark.parametrize("name", ["gru_reset_after", "simple_rnn_relu", "stacked_gru_rnn"])
def test_keras_fixture_streams_frame_by_frame(name: str, rng: np.random.Generator) -> None:
    """The native node streams along the time axis: frame by frame equals onnxruntime on
    the whole sequence (the Loop itself could not stream)."""
    data = (KERAS / f"{name}.onnx").read_bytes()
    model = lstm_infer.load(data)
    x = rng.standard_normal((2, 7, model.inputs[0].shape[2])).astype(np.float32)
    stream = model.stream(batch_size=2, time_axis=1)
    frames = [stream.step(x[:, t : t + 1]) for t in range(x.shape[1])]
    (want,) = ort_run(data, {"x": x})
    np.testing.assert_allclose(np.concatenate(frames, axis=1), want, rtol=TOL, atol=TOL)


# ---- bodies built with onnx.helper -----------------------------------------------------------

CELL_OP = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}


def feeds_for(cell: str, I: int, H: int, T: int, B: int, rng: np.random.Generator,
              batch_first: bool = False) -> dict[str, np.ndarray]:  # fmt: skip
    shape = (B, T, I) if batch_first else (T, B, I)
    feeds = {"X": rng.standard_normal(shape).astype(np.float32)}
    feeds["h0"] = rng.uniform(-1, 1, (B, H)).astype(np.float32)
    if cell == "lstm":
        feeds["c0"] = rng.uniform(-1, 1, (B, H)).astype(np.float32)
    return feeds


def check(data: bytes, cell: str, native: bool, rng: np.random.Generator,
          batch_first: bool = False, extra: dict | None = None) -> object:  # fmt: skip
    model = lstm_infer.load(data)
    ops = ops_of(model)
    if native:
        assert CELL_OP[cell] in ops and not ops & LOOPS, ops
    else:
        assert ops & LOOPS and CELL_OP[cell] not in ops, ops
    for T, B in ((1, 1), (5, 2), (9, 3)):
        feeds = feeds_for(cell, 4, 6, T, B, rng, batch_first)
        feeds.update(extra or {})
        if "M" in model.input_names:
            feeds["M"] = np.array(T, np.int64)
        assert_matches(model, data, feeds)
    return model


CASES = [
    ("rnn", "loop", {}),
    ("rnn", "loop", {"activation": "Relu"}),
    ("rnn", "tf2onnx", {"activation": "Sigmoid"}),
    ("gru", "loop", {}),
    ("gru", "loop", {"reset_after": False}),
    ("gru", "tf2onnx", {"two_axes": True}),
    ("gru", "tf2onnx", {"reset_after": False, "two_axes": True}),
    ("lstm", "loop", {}),
    ("lstm", "tf2onnx", {"two_axes": True}),
    ("gru", "loop", {"batch_first": True}),
    ("lstm", "scan", {}),
    ("gru", "scan", {"reverse": True}),
    ("lstm", "scan", {"batch_first": True, "reverse": True}),
    ("rnn", "scan", {"out_axis": 1}),
]


@pytest.mark.parametrize(("cell", "form", "opts"), CASES)
def test_cell_body_becomes_the_native_node(cell: str, form: str, opts: dict,
                                           rng: np.random.Generator) -> None:  # fmt: skip
    data, _ = cell_loop(cell, 4, 6, rng, form, **opts)
    check(data, cell, True, rng, opts.get("batch_first", False))


def test_rnn_loop_equals_float64_numpy(rng: np.random.Generator) -> None:
    """Independently of both engines: the re-written loop is h = tanh(x W + h R + b)."""
    data, w = cell_loop("rnn", 4, 6, rng, "tf2onnx")
    feeds = feeds_for("rnn", 4, 6, 7, 2, rng)
    got = lstm_infer.load(data).run(feeds)
    h = feeds["h0"].astype(np.float64)
    ys = []
    for x_t in feeds["X"].astype(np.float64):
        h = np.tanh(x_t @ w["W"] + w["bx"] + h @ w["R"] + w["bh"])
        ys.append(h)
    np.testing.assert_allclose(got["h"], h, atol=1e-5)
    np.testing.assert_allclose(got["Y"], np.stack(ys), atol=1e-5)


NEGATIVE = [
    ("rnn", "loop", {"activation": "Softsign"}),  # not an RNN activation we read
    ("rnn", "loop", {"activation": "LeakyRelu"}),
    ("gru", "loop", {"not_fed_back": True}),  # the step reads h0 every time, not its state
    ("lstm", "loop", {"not_fed_back": True}),
    ("rnn", "loop", {"extra_scan": True}),  # a scan output that is not the hidden state
    ("gru", "scan", {"extra_scan": True}),
    ("gru", "loop", {"trips_input": True}),  # a trip count not proven to be the length
    ("lstm", "loop", {"data_cond": True}),  # a condition computed from the data
    ("gru", "scan", {"out_reverse": True}),  # stacked against the reading order
]


@pytest.mark.parametrize(("cell", "form", "opts"), NEGATIVE)
def test_look_alike_stays_a_loop(cell: str, form: str, opts: dict,
                                 rng: np.random.Generator) -> None:  # fmt: skip
    data, _ = cell_loop(cell, 4, 6, rng, form, **opts)
    check(data, cell, False, rng)


ONE_STEP = [
    ("LSTM", {}, True),
    ("GRU", {"linear_before_reset": 1}, True),
    ("GRU", {}, True),
    ("RNN", {"activations": ["Relu"]}, True),
    ("LSTM", {"direction": "reverse"}, False),  # one reversed step is forward; T of them not
    ("LSTM", {"clip": 0.3, "input_forget": 1}, True),  # attributes carried over
]


@pytest.mark.parametrize(("op", "attrs", "native"), ONE_STEP)
def test_one_step_node_body(op: str, attrs: dict, native: bool, rng: np.random.Generator) -> None:
    data = one_step_loop(op, 4, 6, rng, **attrs)
    check(data, op.lower(), native, rng)


def test_counter_read_outside_keeps_the_loop(rng: np.random.Generator) -> None:
    """tf2onnx's time counter is dropped with the Loop only when nothing reads it."""
    data, _ = cell_loop("gru", 4, 6, rng, "tf2onnx")
    proto = onnx.load_from_string(data)
    proto.graph.output.append(onnx.helper.make_tensor_value_info("unused_0", 6, []))
    data = proto.SerializeToString()
    check(data, "gru", False, rng)


def test_go_backwards_refuses_to_stream_naming_the_node() -> None:
    """ReverseSequence needs the whole sequence: a time-axis stream is refused, naming it."""
    model = lstm_infer.load((KERAS / "gru_go_backwards.onnx").read_bytes())
    with pytest.raises(lstm_infer.errors.StreamError, match="ReverseSequence"):
        model.stream(batch_size=2, time_axis=1).step(np.zeros((2, 1, 4), np.float32))


# ---- ReverseSequence (how tf2onnx writes go_backwards) ---------------------------------------


def reverse_sequence_model(batch_axis: int, time_axis: int) -> bytes:
    from graph_builders import model_bytes, vi
    from onnx import TensorProto as TP

    node = onnx.helper.make_node("ReverseSequence", ["x", "lens"], ["y"], name="rev",
                                 batch_axis=batch_axis, time_axis=time_axis)  # fmt: skip
    shape = ["T", "B", 3] if time_axis == 0 else ["B", "T", 3]
    return model_bytes([node], [vi("x", TP.FLOAT, shape), vi("lens", TP.INT64, ["B"])],
                       [vi("y", TP.FLOAT, shape)], {}, 17)  # fmt: skip


@pytest.mark.parametrize(("batch_axis", "time_axis"), [(1, 0), (0, 1)])
def test_reverse_sequence(batch_axis: int, time_axis: int, rng: np.random.Generator) -> None:
    data = reverse_sequence_model(batch_axis, time_axis)
    model = lstm_infer.load(data)
    for lens in ([5, 5, 5], [5, 0, 2], [1, 4, 3]):
        x = rng.standard_normal((5, 3, 3) if time_axis == 0 else (3, 5, 3)).astype(np.float32)
        feeds = {"x": x, "lens": np.array(lens, np.int64)}
        np.testing.assert_array_equal(model.run(feeds)["y"], ort_run(data, feeds)[0])


def test_reverse_sequence_bad_lengths_name_the_node() -> None:
    model = lstm_infer.load(reverse_sequence_model(1, 0))
    x = np.zeros((4, 2, 3), np.float32)
    with pytest.raises(lstm_infer.errors.InputError, match="'rev'.*sequence_lens must be in"):
        model.run({"x": x, "lens": np.array([5, 1], np.int64)})
    with pytest.raises(lstm_infer.errors.InputError, match="'rev'.*sequence_lens must be 2"):
        model.run({"x": x, "lens": np.array([1, 1, 1], np.int64)})


def test_reverse_sequence_with_one_axis_for_both_is_refused_at_load() -> None:
    with pytest.raises(lstm_infer.errors.ModelFormatError, match="'rev'.*batch_axis and time"):
        lstm_infer.load(reverse_sequence_model(0, 0))
