"""Loop and Scan (issue 14): bodies built with onnx.helper in the shapes exporters write, each
against onnxruntime; hostile loops (absurd trip counts, scan outputs that change shape,
nesting past the limit, scanned inputs of different lengths) end with a clear error in
bounded time."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from conftest import require

import lstm_infer
from lstm_infer.errors import InputError, ModelFormatError

onnx = require("onnx")
ort = require("onnxruntime")
from graph_builders import assert_like_onnxruntime as _assert_like_onnxruntime  # noqa: E402
from graph_builders import model_bytes as _model_bytes  # noqa: E402
from graph_builders import onnxruntime_run, vi  # noqa: E402
from onnx import TensorProto as TP  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

OPSET = 17


def model_bytes(nodes: list, inputs: list, outputs: list, inits: dict | None = None) -> bytes:
    return _model_bytes(nodes, inputs, outputs, inits, OPSET)


def assert_like_onnxruntime(data: bytes, feeds: dict, atol: float = 1e-5) -> dict:
    return _assert_like_onnxruntime(data, feeds, atol)


def counting_loop() -> bytes:
    """A for-loop: acc += x (x read from the outer graph), scan output acc * i."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["acc_in", "x"], ["acc_out"]),
            helper.make_node("Cast", ["i"], ["fi"], to=TP.FLOAT),
            helper.make_node("Mul", ["acc_out", "fi"], ["scan"]),
            helper.make_node("Identity", ["c_in"], ["c_out"]),
        ],
        "body",
        [vi("i", TP.INT64, []), vi("c_in", TP.BOOL, []), vi("acc_in", TP.FLOAT, [3])],
        [vi("c_out", TP.BOOL, []), vi("acc_out", TP.FLOAT, [3]), vi("scan", TP.FLOAT, [3])],
    )
    return model_bytes(
        [helper.make_node("Loop", ["M", "", "a0"], ["acc", "scans"], body=body)],
        [vi("M", TP.INT64, []), vi("a0", TP.FLOAT, [3]), vi("x", TP.FLOAT, [3])],
        [vi("acc", TP.FLOAT, [3]), vi("scans", TP.FLOAT, [None, 3])],
    )


@pytest.mark.parametrize("trips", [0, 1, 4, 9])
def test_for_loop_with_scan_output(trips: int) -> None:
    feeds = {
        "M": np.array(trips, np.int64),
        "a0": np.array([1.0, -2.0, 0.5], np.float32),
        "x": np.array([0.25, 1.0, -3.0], np.float32),
    }
    assert_like_onnxruntime(counting_loop(), feeds)


def test_while_loop_stops_on_its_condition() -> None:
    """No trip count: the body computes the next condition (i + 1 < limit, limit an outer
    input); h = 0.5 h + 1 carried; the iteration count carried as int64 too."""
    body = helper.make_graph(
        [
            helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array(1))),
            helper.make_node("Add", ["i", "one"], ["next_i"]),
            helper.make_node("Less", ["next_i", "limit"], ["c_out"]),
            helper.make_node("Constant", [], ["half"], value_float=0.5),
            helper.make_node("Mul", ["h_in", "half"], ["hh"]),
            helper.make_node("Constant", [], ["onef"], value_float=1.0),
            helper.make_node("Add", ["hh", "onef"], ["h_out"]),
            helper.make_node("Identity", ["next_i"], ["n_out"]),
        ],
        "body",
        [
            vi("i", TP.INT64, []),
            vi("c_in", TP.BOOL, []),
            vi("h_in", TP.FLOAT, [2, 2]),
            vi("n_in", TP.INT64, []),
        ],
        [vi("c_out", TP.BOOL, []), vi("h_out", TP.FLOAT, [2, 2]), vi("n_out", TP.INT64, [])],
    )
    data = model_bytes(
        [helper.make_node("Loop", ["", "go", "h0", "n0"], ["h", "n"], body=body)],
        [
            vi("go", TP.BOOL, []),
            vi("h0", TP.FLOAT, [2, 2]),
            vi("n0", TP.INT64, []),
            vi("limit", TP.INT64, []),
        ],
        [vi("h", TP.FLOAT, [2, 2]), vi("n", TP.INT64, [])],
    )
    h0 = np.arange(4, dtype=np.float32).reshape(2, 2)
    for limit, go in ((5, True), (1, True), (7, False)):
        feeds = {"go": np.array(go), "h0": h0, "n0": np.array(0), "limit": np.array(limit)}
        got = assert_like_onnxruntime(data, feeds)
        assert int(got["n"]) == (limit if go else 0)


def rnn_loop(I: int, H: int, rng: np.random.Generator) -> tuple[bytes, dict]:
    """The shape tf2onnx gives a Keras SimpleRNN: M = the sequence length (Shape, Gather), the
    body gathers step i of the outer input and carries h; scan output: every h."""
    W = rng.uniform(-0.5, 0.5, (I, H)).astype(np.float32)
    R = rng.uniform(-0.5, 0.5, (H, H)).astype(np.float32)
    b = rng.uniform(-0.1, 0.1, (H,)).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("Gather", ["X", "i"], ["x_t"], axis=0),
            helper.make_node("MatMul", ["x_t", "W"], ["xw"]),
            helper.make_node("MatMul", ["h_in", "R"], ["hr"]),
            helper.make_node("Add", ["xw", "hr"], ["s"]),
            helper.make_node("Add", ["s", "b"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["h_out"]),
            helper.make_node("Identity", ["h_out"], ["y_t"]),
            helper.make_node("Identity", ["c_in"], ["c_out"]),
        ],
        "rnn_body",
        [vi("i", TP.INT64, []), vi("c_in", TP.BOOL, []), vi("h_in", TP.FLOAT, ["B", H])],
        [vi("c_out", TP.BOOL, []), vi("h_out", TP.FLOAT, ["B", H]), vi("y_t", TP.FLOAT, ["B", H])],
    )
    nodes = [
        helper.make_node("Shape", ["X"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["T"], axis=0),
        helper.make_node("Loop", ["T", "", "h0"], ["h", "Y"], body=body),
    ]
    data = model_bytes(
        nodes,
        [vi("X", TP.FLOAT, ["T", "B", I]), vi("h0", TP.FLOAT, ["B", H])],
        [vi("h", TP.FLOAT, ["B", H]), vi("Y", TP.FLOAT, ["T", "B", H])],
        {"W": W, "R": R, "b": b, "zero": np.array(0, np.int64)},
    )
    return data, {"W": W, "R": R, "b": b}


@pytest.mark.parametrize("T", [1, 3, 11])
def test_rnn_written_as_a_loop_runs_at_any_length(T: int, rng: np.random.Generator) -> None:
    data, w = rnn_loop(5, 7, rng)
    x = rng.standard_normal((T, 2, 5)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (2, 7)).astype(np.float32)
    got = assert_like_onnxruntime(data, {"X": x, "h0": h0})
    h = h0.astype(np.float64)  # and against float64 numpy, independently of both engines
    for t in range(T):
        h = np.tanh(x[t] @ w["W"] + h @ w["R"] + w["b"])
    np.testing.assert_allclose(got["h"], h, atol=1e-5)


def nested_loops() -> bytes:
    """A loop in a loop's body: the inner body reads the outer body's carried value."""
    inner = helper.make_graph(
        [
            helper.make_node("Add", ["v_in", "step"], ["v_out"]),
            helper.make_node("Identity", ["c2_in"], ["c2_out"]),
        ],
        "inner",
        [vi("j", TP.INT64, []), vi("c2_in", TP.BOOL, []), vi("v_in", TP.FLOAT, [2])],
        [vi("c2_out", TP.BOOL, []), vi("v_out", TP.FLOAT, [2])],
    )
    outer = helper.make_graph(
        [
            helper.make_node("Mul", ["s_in", "two"], ["step"]),
            helper.make_node("Loop", ["K", "", "s_in"], ["s_out"], body=inner),
            helper.make_node("Identity", ["c_in"], ["c_out"]),
        ],
        "outer",
        [vi("i", TP.INT64, []), vi("c_in", TP.BOOL, []), vi("s_in", TP.FLOAT, [2])],
        [vi("c_out", TP.BOOL, []), vi("s_out", TP.FLOAT, [2])],
    )
    return model_bytes(
        [helper.make_node("Loop", ["M", "", "s0"], ["s"], body=outer)],
        [vi("M", TP.INT64, []), vi("K", TP.INT64, []), vi("s0", TP.FLOAT, [2])],
        [vi("s", TP.FLOAT, [2])],
        {"two": np.array([2.0, 0.5], np.float32)},
    )


def test_nested_loops() -> None:
    feeds = {"M": np.array(3), "K": np.array(2), "s0": np.array([1.0, -1.0], np.float32)}
    assert_like_onnxruntime(nested_loops(), feeds)


def test_nested_loops_share_the_outermost_iteration_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """30 outer x 30 inner trips are 930 body runs, past a bound of 300 that each loop alone
    stays under: refused (each loop counted alone, two nested loops of 100,000 trips would
    run 10**10 bodies). Within the bound the same model equals onnxruntime, and runs again
    after a refusal (the count starts afresh each run)."""
    from lstm_infer.ops import control

    monkeypatch.setattr(control, "LOOP_MAX_ITERATIONS", 300)
    data = nested_loops()
    model = lstm_infer.load(data)
    s0 = np.array([1.0, -1.0], np.float32)
    with pytest.raises(InputError, match=r"more than 300 loop iterations.*nested loops"):
        model.run({"M": np.array(30), "K": np.array(30), "s0": s0})
    small = {"M": np.array(10), "K": np.array(10), "s0": s0}  # 110 body runs
    np.testing.assert_allclose(model.run(small)["s"], onnxruntime_run(data, small)[0], rtol=1e-5)


def test_carried_values_growing_without_bound_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body doubling its carried value (Concat(v, v)) is stopped by the carried-bytes bound
    after a few iterations, naming the node, instead of growing to the 8 GB one tensor may
    hold; a few doublings under the bound equal onnxruntime."""
    from lstm_infer.ops import control

    monkeypatch.setattr(control, "LOOP_MAX_CARRIED_BYTES", 1 << 16)
    body = helper.make_graph(
        [
            helper.make_node("Concat", ["v_in", "v_in"], ["v_out"], axis=0),
            helper.make_node("Identity", ["c_in"], ["c_out"]),
        ],
        "double",
        [vi("i", TP.INT64, []), vi("c_in", TP.BOOL, []), vi("v_in", TP.FLOAT, [None])],
        [vi("c_out", TP.BOOL, []), vi("v_out", TP.FLOAT, [None])],
    )
    data = model_bytes(
        [helper.make_node("Loop", ["M", "", "v0"], ["v"], body=body, name="grow")],
        [vi("M", TP.INT64, []), vi("v0", TP.FLOAT, [None])],
        [vi("v", TP.FLOAT, [None])],
    )
    model = lstm_infer.load(data)
    v0 = np.arange(4, dtype=np.float32)
    with pytest.raises(InputError, match=r"grow.*carried values hold \d+ bytes"):
        model.run({"M": np.array(2**40), "v0": v0})
    few = {"M": np.array(5), "v0": v0}
    np.testing.assert_array_equal(model.run(few)["v"], onnxruntime_run(data, few)[0])


def test_a_carried_sequence_counts_its_tensors_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body appending a (64,) float32 (256 bytes) to a carried sequence is stopped by the
    carried-bytes bound once the sequence holds 4 of them (1024 bytes > 1000), long before
    the sequence's own bound (1 GB): the bound counts the bytes of the sequence's tensors,
    not those of an array wrapping the sequence object. Under the bound it equals
    onnxruntime."""
    from lstm_infer.ops import control, sequence

    monkeypatch.setattr(control, "LOOP_MAX_CARRIED_BYTES", 1000)
    assert sequence.MAX_SEQUENCE_BYTES >= 1 << 20  # not the bound that stops this loop
    seq = helper.make_tensor_sequence_value_info
    body = helper.make_graph(
        [
            helper.make_node("SequenceInsert", ["s_in", "x"], ["s_out"]),
            helper.make_node("Identity", ["c_in"], ["c_out"]),
        ],
        "append",
        [vi("i", TP.INT64, []), vi("c_in", TP.BOOL, []), seq("s_in", TP.FLOAT, None)],
        [vi("c_out", TP.BOOL, []), seq("s_out", TP.FLOAT, None)],
    )
    # ConcatFromSequence without a new axis: the list stays a carried sequence (stacked on
    # a new axis 0, lstm_infer.passes.loop_lists would make it a scan output)
    data = model_bytes(
        [
            helper.make_node("SequenceEmpty", [], ["empty"], dtype=TP.FLOAT),
            helper.make_node("Loop", ["M", "", "empty"], ["s"], body=body, name="grow"),
            helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=0),
        ],
        [vi("M", TP.INT64, []), vi("x", TP.FLOAT, [64])],
        [vi("y", TP.FLOAT, [None])],
    )
    model = lstm_infer.load(data)
    loop = next(n for n in model.graph.nodes if n.op == "Loop")
    assert any(v.type.sequence for v in loop.attrs["body"].inputs)
    x = np.arange(64, dtype=np.float32)
    with pytest.raises(
        InputError, match=r"'grow' \(Loop\).*carried values hold 1024 bytes after iteration 3"
    ):
        model.run({"M": np.array(1000), "x": x})
    few = {"M": np.array(3), "x": x}
    np.testing.assert_array_equal(model.run(few)["y"], onnxruntime_run(data, few)[0])


def test_loop_saves_and_loads_natively(tmp_path: Any, rng: np.random.Generator) -> None:
    data, _ = rnn_loop(3, 4, rng)
    model = lstm_infer.load(data)
    path = tmp_path / "loop.safetensors"
    model.save(path)
    again = lstm_infer.load(path)
    feeds = {"X": rng.standard_normal((4, 2, 3)).astype(np.float32), "h0": np.zeros((2, 4))}
    feeds["h0"] = feeds["h0"].astype(np.float32)
    for name, value in model.run(feeds).items():
        np.testing.assert_array_equal(again.run(feeds)[name], value)


# ---- hostile loops ----------------------------------------------------------------------------


def test_absurd_trip_count_stops_with_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from lstm_infer.ops import control

    monkeypatch.setattr(control, "LOOP_MAX_ITERATIONS", 2000)
    start = time.perf_counter()
    model = lstm_infer.load(counting_loop())  # loads at once: loops never run at load
    feeds = {"M": np.array(2**62), "a0": np.zeros(3, np.float32), "x": np.ones(3, np.float32)}
    with pytest.raises(InputError, match=r"Loop.*more than 2000 iterations"):
        model.run(feeds)
    assert time.perf_counter() - start < 60


def test_default_iteration_bound_is_a_few_seconds_of_work() -> None:
    from lstm_infer.ops import control

    assert control.LOOP_MAX_ITERATIONS <= 100_000
    assert control.LOOP_MAX_SCAN_BYTES <= 1 << 30


def test_loop_over_constants_is_not_run_at_load() -> None:
    """Regression guard: a Loop of 2**62 trips over constants must not run while loading."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Neg", ["v"], ["w"])],
        "b",
        [vi("i", TP.INT64, []), vi("c_in", TP.BOOL, []), vi("v", TP.FLOAT, [2])],
        [vi("c_out", TP.BOOL, []), vi("w", TP.FLOAT, [2])],
    )
    data = model_bytes(
        [
            helper.make_node("Loop", ["M", "T", "v0"], ["v"], body=body),
            helper.make_node("Add", ["v", "x"], ["y"]),
        ],
        [vi("x", TP.FLOAT, [2])],
        [vi("y", TP.FLOAT, [2])],
        {"M": np.array(2**62), "T": np.array(True), "v0": np.ones(2, np.float32)},
    )
    start = time.perf_counter()
    model = lstm_infer.load(data)
    assert time.perf_counter() - start < 10
    assert [t.name for t in model.inputs] == ["x"]


def test_scan_output_that_changes_shape_is_refused() -> None:
    """The carried value grows by one element per iteration (allowed: onnxruntime runs it) and
    is also scanned, which cannot be stacked: a clear error naming the output."""
    body = helper.make_graph(
        [
            helper.make_node("Concat", ["v_in", "one"], ["v_out"], axis=0),
            helper.make_node("Identity", ["v_out"], ["scan"]),
            helper.make_node("Identity", ["c_in"], ["c_out"]),
        ],
        "grow",
        [vi("i", TP.INT64, []), vi("c_in", TP.BOOL, []), vi("v_in", TP.FLOAT, [None])],
        [vi("c_out", TP.BOOL, []), vi("v_out", TP.FLOAT, [None]), vi("scan", TP.FLOAT, [None])],
    )
    grow_only = helper.make_graph(
        [
            helper.make_node("Concat", ["v_in", "one"], ["v_out"], axis=0),
            helper.make_node("Identity", ["c_in"], ["c_out"]),
        ],
        "grow_only",
        [vi("i", TP.INT64, []), vi("c_in", TP.BOOL, []), vi("v_in", TP.FLOAT, [None])],
        [vi("c_out", TP.BOOL, []), vi("v_out", TP.FLOAT, [None])],
    )
    inputs = [vi("M", TP.INT64, []), vi("v0", TP.FLOAT, [None])]
    inits = {"one": np.ones(1, np.float32)}
    feeds = {"M": np.array(3), "v0": np.zeros(2, np.float32)}
    carried_only = model_bytes(
        [helper.make_node("Loop", ["M", "", "v0"], ["v"], body=grow_only)],
        inputs,
        [vi("v", TP.FLOAT, [None])],
        inits,
    )
    assert assert_like_onnxruntime(carried_only, feeds)["v"].shape == (5,)
    scanned = model_bytes(
        [helper.make_node("Loop", ["M", "", "v0"], ["v", "s"], body=body)],
        inputs,
        [vi("v", TP.FLOAT, [None]), vi("s", TP.FLOAT, [None, None])],
        inits,
    )
    with pytest.raises(InputError, match="scan output 'scan' changed shape"):
        lstm_infer.load(scanned).run(feeds)


def test_loop_body_arity_mismatch_is_a_format_error() -> None:
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"])],
        "b",
        [vi("i", TP.INT64, []), vi("c_in", TP.BOOL, [])],  # no carried input for v0
        [vi("c_out", TP.BOOL, [])],
    )
    g = helper.make_graph(
        [helper.make_node("Loop", ["M", "", "v0"], ["v"], body=body)],
        "g",
        [vi("M", TP.INT64, []), vi("v0", TP.FLOAT, [2])],
        [vi("v", TP.FLOAT, [2])],
    )
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]).SerializeToString()
    with pytest.raises(ModelFormatError, match="Loop.*body declares 2 inputs"):
        lstm_infer.load(data)


def test_loops_nested_past_the_limit_are_refused() -> None:
    from lstm_infer.importers.onnx.lower import MAX_SUBGRAPH_DEPTH

    def wrap(inner_nodes: list) -> Any:
        return helper.make_graph(
            [*inner_nodes, helper.make_node("Identity", ["c_in"], ["c_out"])],
            "b",
            [vi("i", TP.INT64, []), vi("c_in", TP.BOOL, []), vi("v", TP.FLOAT, [1])],
            [vi("c_out", TP.BOOL, []), vi("w", TP.FLOAT, [1])],
        )

    body = wrap([helper.make_node("Identity", ["v"], ["w"])])
    for _ in range(MAX_SUBGRAPH_DEPTH + 1):
        body = wrap([helper.make_node("Loop", ["M", "", "v"], ["w"], body=body)])
    g = helper.make_graph(
        [helper.make_node("Loop", ["M", "", "v0"], ["v"], body=body)],
        "g",
        [vi("M", TP.INT64, []), vi("v0", TP.FLOAT, [1])],
        [vi("v", TP.FLOAT, [1])],
    )
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]).SerializeToString()
    start = time.perf_counter()
    with pytest.raises(ModelFormatError, match="nest deeper"):
        lstm_infer.load(data)
    assert time.perf_counter() - start < 30


# ---- Scan -------------------------------------------------------------------------------------


def cumsum_scan(**attrs: Any) -> bytes:
    """Scan with one state (running sum), two scanned inputs (x, and w read elementwise), an
    outer tensor (scale) and two scan outputs (the running sum, and x * w * scale)."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["sum_in", "x_t"], ["sum_out"]),
            helper.make_node("Mul", ["x_t", "w_t"], ["xw"]),
            helper.make_node("Mul", ["xw", "scale"], ["y_t"]),
            helper.make_node("Identity", ["sum_out"], ["s_t"]),
        ],
        "scan_body",
        [vi("sum_in", TP.FLOAT, [3]), vi("x_t", TP.FLOAT, [3]), vi("w_t", TP.FLOAT, [3])],
        [vi("sum_out", TP.FLOAT, [3]), vi("s_t", TP.FLOAT, [3]), vi("y_t", TP.FLOAT, [3])],
    )
    x_shape = [3, "T"] if attrs.get("scan_input_axes", [0])[0] == 1 else ["T", 3]
    return model_bytes(
        [
            helper.make_node(
                "Scan", ["s0", "x", "w"], ["s", "sums", "ys"], body=body, num_scan_inputs=2, **attrs
            )
        ],  # fmt: skip
        [vi("s0", TP.FLOAT, [3]), vi("x", TP.FLOAT, x_shape), vi("w", TP.FLOAT, ["T", 3])],
        [
            vi("s", TP.FLOAT, [3]),
            vi("sums", TP.FLOAT, [None, None]),
            vi("ys", TP.FLOAT, [None, None]),
        ],  # fmt: skip
        {"scale": np.array([1.0, -2.0, 0.5], np.float32)},
    )


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"scan_input_directions": [1, 0]},
        {"scan_output_directions": [0, 1]},
        {"scan_input_axes": [1, 0]},
        {"scan_output_axes": [1, -1]},
        {"scan_input_directions": [1, 1], "scan_output_axes": [0, 1]},
    ],
)
def test_scan_axes_and_directions(attrs: dict, rng: np.random.Generator) -> None:
    T = 5
    x = rng.standard_normal((3, T) if attrs.get("scan_input_axes") else (T, 3))
    feeds = {
        "s0": rng.standard_normal(3).astype(np.float32),
        "x": x.astype(np.float32),
        "w": rng.standard_normal((T, 3)).astype(np.float32),
    }
    assert_like_onnxruntime(cumsum_scan(**attrs), feeds)


def test_scan_gru_like_cell_over_a_sequence(rng: np.random.Generator) -> None:
    """A recurrent cell as a Scan body (h carried, one scanned input, batch inside)."""
    I, H = 4, 6
    W = rng.uniform(-0.5, 0.5, (I, 2 * H)).astype(np.float32)
    R = rng.uniform(-0.5, 0.5, (H, 2 * H)).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["x_t", "W"], ["xw"]),
            helper.make_node("MatMul", ["h_in", "R"], ["hr"]),
            helper.make_node("Add", ["xw", "hr"], ["pre"]),
            helper.make_node("Split", ["pre", "halves"], ["zp", "np_"], axis=1),
            helper.make_node("Sigmoid", ["zp"], ["z"]),
            helper.make_node("Tanh", ["np_"], ["cand"]),
            helper.make_node("Sub", ["h_in", "cand"], ["d"]),
            helper.make_node("Mul", ["z", "d"], ["zd"]),
            helper.make_node("Add", ["cand", "zd"], ["h_out"]),
            helper.make_node("Identity", ["h_out"], ["y_t"]),
        ],
        "cell",
        [vi("h_in", TP.FLOAT, [2, H]), vi("x_t", TP.FLOAT, [2, I])],
        [vi("h_out", TP.FLOAT, [2, H]), vi("y_t", TP.FLOAT, [2, H])],
    )
    data = model_bytes(
        [helper.make_node("Scan", ["h0", "X"], ["h", "Y"], body=body, num_scan_inputs=1)],
        [vi("h0", TP.FLOAT, [2, H]), vi("X", TP.FLOAT, ["T", 2, I])],
        [vi("h", TP.FLOAT, [2, H]), vi("Y", TP.FLOAT, ["T", 2, H])],
        {"W": W, "R": R, "halves": np.array([H, H], np.int64)},
    )
    for T in (1, 6):
        x = rng.standard_normal((T, 2, I)).astype(np.float32)
        assert_like_onnxruntime(data, {"h0": np.zeros((2, H), np.float32), "X": x})


def test_scan_inputs_of_different_lengths_are_refused(rng: np.random.Generator) -> None:
    feeds = {
        "s0": np.zeros(3, np.float32),
        "x": np.zeros((4, 3), np.float32),
        "w": np.zeros((5, 3), np.float32),
    }
    model = lstm_infer.load(cumsum_scan())
    with pytest.raises(InputError, match="Scan.*different lengths"):
        model.run(feeds)


def test_scan_of_an_empty_sequence_returns_the_initial_state() -> None:
    feeds = {
        "s0": np.array([1.0, 2.0, 3.0], np.float32),
        "x": np.zeros((0, 3), np.float32),
        "w": np.zeros((0, 3), np.float32),
    }
    got = lstm_infer.load(cumsum_scan()).run(feeds)
    np.testing.assert_array_equal(got["s"], feeds["s0"])
    assert got["sums"].shape[0] == 0


@pytest.mark.parametrize("op", ["Loop", "If"])
def test_a_cycle_inside_a_subgraph_is_a_format_error(op: str) -> None:
    """Two nodes of a body (or branch) feeding each other: refused at load, naming a cycle."""
    cyclic = [
        helper.make_node("Neg", ["b2"], ["a2"]),
        helper.make_node("Neg", ["a2"], ["b2"]),
        helper.make_node("Identity", ["a2"], ["w"]),
    ]
    if op == "Loop":
        body = helper.make_graph(
            [*cyclic, helper.make_node("Identity", ["c_in"], ["c_out"])],
            "b",
            [vi("i", TP.INT64, []), vi("c_in", TP.BOOL, []), vi("v", TP.FLOAT, [1])],
            [vi("c_out", TP.BOOL, []), vi("w", TP.FLOAT, [1])],
        )
        node = helper.make_node("Loop", ["M", "", "v0"], ["out"], body=body)
        inputs = [vi("M", TP.INT64, []), vi("v0", TP.FLOAT, [1])]
    else:
        branch = helper.make_graph(cyclic, "br", [], [vi("w", TP.FLOAT, [1])])
        node = helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=branch)
        inputs = [vi("c", TP.BOOL, [])]
    g = helper.make_graph([node], "g", inputs, [vi("out", TP.FLOAT, [1])])
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]).SerializeToString()
    with pytest.raises(ModelFormatError, match="cycle"):
        lstm_infer.load(data)
