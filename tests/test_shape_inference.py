"""Static type and shape inference (lstm_infer.graph_types, each op's ``OpDef.infer``).

* Every graph case the op tests build (tests/test_graph_ops.py, tests/test_graph_ops_window.py:
  each ``compare(model, feeds)`` call) is replayed with ``compare`` swapped for a check that
  the loaded model's inferred output types equal the dtype and shape onnxruntime returns on
  those feeds, and that no op fell back to unknown where its inputs were fully known.
* The zoo's graphs (tests/test_graph_zoo.py), exported with dynamic batch / time axes: the
  symbols are carried through, checked against onnx.shape_inference and onnxruntime's outputs
  at two sizes.
* Hostile graphs: clear errors naming the node, nothing allocated from an inferred shape.
* Every op of the registry has an infer function.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from _pytest.mark.structures import ParameterSet
from conftest import require

onnx = require("onnx")
ort = require("onnxruntime")
import test_graph_ops  # noqa: E402
import test_graph_ops_window  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lstm_infer  # noqa: E402
from lstm_infer.errors import InputError, ModelFormatError  # noqa: E402
from lstm_infer.graph import Graph, Node, TensorType, ValueInfo  # noqa: E402
from lstm_infer.graph_types import infer_types  # noqa: E402
from lstm_infer.ops import REGISTRY  # noqa: E402
from lstm_infer.ops.base import MAX_RANK  # noqa: E402

# Ops whose output shape is an input's values, by the positions of those inputs: with such an
# input computed at run time, unknown dims are the right answer.
VALUE_INPUTS = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4),
    "ConstantOfShape": (0,), "Range": (0, 1, 2), "Pad": (1, 3), "Squeeze": (1,),
    "Unsqueeze": (1,), "Split": (1,), "Loop": (0, 1),
    **{op: (1,) for op in REGISTRY if op.startswith("Reduce")},
}  # fmt: skip


def ort_outputs(model: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_no_fallback(model: lstm_infer.GraphModel) -> set[str]:
    """No op's inference failed, and none left a dim unknown where all its inputs were
    fully known (value-dependent ops excepted when the value input is computed). Returns the
    tensors that may rightly have unknown dims (those ops' outputs)."""
    result = model.type_inference
    assert not result.failures, result.failures
    consts = model.graph.initializers
    exempt: set[str] = set()
    for node in model.graph.nodes:
        ins = [result.types[n] for n in node.inputs if n]
        computed = [
            i for i in VALUE_INPUTS.get(node.op, ())
            if i < len(node.inputs) and node.inputs[i] and node.inputs[i] not in consts
        ]  # fmt: skip
        # (a sequence's length is never known statically, so neither is what it stacks to)
        if computed or not all(t.static and not t.sequence for t in ins):
            exempt.update(o for o in node.outputs if o)
            continue
        for name in node.outputs:
            if name and not result.types[name].sequence:  # (a sequence's elements may vary)
                assert result.types[name].static, (node.label, name, result.types[name])
    return exempt


def compatible(shape: tuple | None, concrete: tuple) -> bool:
    """Whether an inferred shape admits ``concrete`` (its ints equal, names and None free)."""
    if shape is None:
        return True
    return len(shape) == len(concrete) and all(
        not isinstance(d, int) or d == c for d, c in zip(shape, concrete)
    )


def check_types(model_bytes: bytes, feeds: dict[str, np.ndarray], tol: float = 1e-5) -> None:
    """The replacement for graph_cases.compare: inferred output types == onnxruntime's."""
    want = ort_outputs(model_bytes, feeds)
    model = lstm_infer.load(model_bytes)
    assert isinstance(model, lstm_infer.GraphModel)
    exempt = assert_no_fallback(model)
    for out, w in zip(model.outputs, want):
        t = model.tensor_types[out.name]
        if out.name in exempt:
            assert t.dtype == str(w.dtype) and compatible(t.shape, w.shape), (out.name, t, w.shape)
        else:
            assert (t.dtype, t.shape) == (str(w.dtype), w.shape), (out.name, t, w.dtype, w.shape)


def _combos(fn: Any) -> list[dict[str, Any]]:
    """Every argument set pytest's parametrize marks give ``fn`` (the rng fixture aside)."""
    combos: list[dict[str, Any]] = [{}]
    for mark in getattr(fn, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names, values = mark.args[0], mark.args[1]
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        grown = []
        for combo in combos:
            for v in values:
                vals = v.values if isinstance(v, ParameterSet) else v if len(names) > 1 else (v,)
                grown.append({**combo, **dict(zip(names, vals))})
        combos = grown
    return combos


def _op_cases() -> list[Any]:
    cases = []
    for module in (test_graph_ops, test_graph_ops_window):
        for name, fn in vars(module).items():
            if not name.startswith("test_") or "compare(" not in inspect.getsource(fn):
                continue
            for i, kwargs in enumerate(_combos(fn)):
                cases.append(pytest.param(module, name, kwargs, id=f"{name}-{i}"))
    return cases


OP_CASES = _op_cases()


def test_the_op_cases_are_found() -> None:
    assert len(OP_CASES) > 100


@pytest.mark.parametrize(("module", "name", "kwargs"), OP_CASES)
def test_inferred_types_match_onnxruntime(module: Any, name: str, kwargs: dict, monkeypatch,
                                          rng) -> None:  # fmt: skip
    monkeypatch.setattr(module, "compare", check_types)
    fn = getattr(module, name)
    if "rng" in inspect.signature(fn).parameters:  # op tests that draw random inputs
        kwargs = {**kwargs, "rng": rng}
    fn(**kwargs)


def test_every_registered_op_has_shape_inference() -> None:
    missing = sorted(name for name, op in REGISTRY.items() if op.infer is None)
    assert not missing
    assert len(REGISTRY) >= 111


# ---- symbolic shapes through the zoo's graphs ------------------------------------------------

torch = require("torch")
import test_graph_zoo as zoo  # noqa: E402

# name -> (module, an input shape, its dynamic axes, a second input shape, the LSTM node's
# expected Y type (T, D, B, H): symbols carried through)
SYMBOLIC_ZOO = {
    "crnn": (zoo.Crnn, (3, 1, 16, 20), {0: "N", 3: "W"}, (2, 1, 16, 28), (None, 2, "N", 24)),
    "vad": (zoo.VadShape, (2, 1600), {0: "N", 1: "S"}, (3, 2400), (None, 1, "N", 16)),
    "norm_residual": (zoo.NormResidual, (9, 3, 12), {0: "T", 1: "B"}, (5, 2, 12),
                      ("T", 1, "B", 20)),
    "last_step": (zoo.LastStepClassifier, (2, 9, 6), {0: "N", 1: "T"}, (4, 3, 6),
                  ("T", 1, "N", 12)),
}  # fmt: skip


def _exported(name: str) -> bytes:
    make, shape, axes, _, _ = SYMBOLIC_ZOO[name]
    torch.manual_seed(0)
    net = zoo._randomised(make())
    return zoo.export(net, (torch.zeros(shape),), ["x"], ["y"], False, {"x": axes})


def _undeclared(graph: Graph) -> Graph:
    """``graph`` without any declared output or intermediate type: inference alone."""
    outputs = [ValueInfo(v.name, TensorType("undefined")) for v in graph.outputs]
    return Graph(list(graph.inputs), outputs, list(graph.nodes), dict(graph.initializers))


def _onnx_output_dims(model_bytes: bytes) -> list[list[int | str | None]]:
    inferred = onnx.shape_inference.infer_shapes(onnx.load_from_string(model_bytes))
    return [
        [d.dim_value if d.HasField("dim_value") else d.dim_param or None
         for d in v.type.tensor_type.shape.dim]
        for v in inferred.graph.output
    ]  # fmt: skip


@pytest.mark.parametrize("name", sorted(SYMBOLIC_ZOO))
def test_symbols_are_carried_through_the_zoo(name: str, rng) -> None:
    _, shape, axes, shape2, lstm_y = SYMBOLIC_ZOO[name]
    data = _exported(name)
    model = lstm_infer.load(data)
    assert not model.type_inference.failures
    result = infer_types(_undeclared(model.graph), strict=True)
    lstm = next(n for n in model.graph.nodes if n.op == "LSTM")
    assert result.types[lstm.outputs[0]].shape == lstm_y
    symbols = set(axes.values())
    for out, onnx_dims in zip(model.graph.outputs, _onnx_output_dims(data)):
        ours = result.types[out.name].shape
        assert ours is not None and len(ours) == len(onnx_dims), (ours, onnx_dims)
        for mine, theirs in zip(ours, onnx_dims):
            if isinstance(theirs, int):
                assert mine == theirs, (ours, onnx_dims)
            elif theirs in symbols:
                assert mine == theirs, (ours, onnx_dims)
    # Two concrete sizes: each symbol stands for the size of the input axis it names, and
    # with concrete input types every output is static and onnxruntime's shape.
    for s in (shape, shape2):
        x = rng.standard_normal(s).astype(np.float32)
        sizes = {axes[a]: s[a] for a in axes}
        want = ort_outputs(data, {"x": x})
        concrete = infer_types(
            _undeclared(model.graph), {"x": TensorType("float32", s)}, strict=True
        )
        for out, w in zip(model.graph.outputs, want):
            ours = result.types[out.name].shape
            assert len(ours) == w.ndim
            for mine, got in zip(ours, w.shape):
                assert mine is None or sizes.get(mine, mine) == got, (ours, w.shape, sizes)
            assert concrete.types[out.name].shape == w.shape
            assert concrete.types[out.name].dtype == str(w.dtype)


def test_stale_value_info_keeps_the_inferred_dim(rng) -> None:
    """An exporter's stale value_info (a wrong concrete dim) loads; the inferred dim wins."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y])
    graph.value_info.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["B", 7]))
    model = lstm_infer.load(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    assert model.tensor_types["r"].shape == ("B", 4)
    assert model.type_inference.stale == ["r"]
    feed = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(model.run({"x": feed})["y"], -np.maximum(feed, 0))


# ---- hostile graphs ---------------------------------------------------------------------------


def _graph(nodes: list[Node], inputs: dict[str, TensorType], consts: dict | None = None,
           outputs: tuple[str, ...] = ("y",)) -> Graph:  # fmt: skip
    return Graph(
        [ValueInfo(k, t) for k, t in inputs.items()],
        [ValueInfo(o, TensorType("undefined")) for o in outputs],
        nodes,
        consts or {},
    )


def test_rank_40_broadcast_is_refused_naming_the_node() -> None:
    big = TensorType("float32", (1,) * 40)
    g = _graph([Node("Add", ["a", "b"], ["y"], name="wide")],
               {"a": big, "b": TensorType("float32", (3,))})  # fmt: skip
    with pytest.raises(ModelFormatError, match=rf"'wide'.*rank 40 exceeds {MAX_RANK}"):
        infer_types(g, strict=True)
    relaxed = infer_types(g)  # at load: recorded, the output unknown, nothing raised
    assert "wide" in next(iter(relaxed.failures)) and relaxed.types["y"].shape is None
    # Unsqueeze past the rank limit, and an ONNX file declaring a rank-40 input: refused cleanly.
    g = _graph([Node("Unsqueeze", ["x", "axes"], ["y"], name="tall")],
               {"x": TensorType("float32", (2,) * 30)}, {"axes": np.arange(5)})  # fmt: skip
    with pytest.raises(ModelFormatError, match="'tall'.*rank 35"):
        infer_types(g, strict=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1] * 40)
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Add", ["x", "b"], ["y"], name="wide")], "g",
                              [x, b], [y])  # fmt: skip
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        model = lstm_infer.load(data.SerializeToString())
    except ModelFormatError:
        return  # refused at load: clean
    assert model.tensor_types["y"].shape is None and model.type_inference.failures
    with pytest.raises(InputError):
        model.run({"x": np.zeros((1,) * 40, np.float32), "b": np.zeros(3, np.float32)})


def test_expand_to_2_40_infers_without_allocating_and_the_run_refuses() -> None:
    shape = np.array([1 << 20, 1 << 20], np.int64)
    g = _graph([Node("Expand", ["x", "s"], ["y"], name="bomb")],
               {"x": TensorType("float32", (1, 1))}, {"s": shape})  # fmt: skip
    assert infer_types(g, strict=True).types["y"].shape == (1 << 20, 1 << 20)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Expand", ["x", "s"], ["y"], name="bomb")], "g",
                              [x], [y], [numpy_helper.from_array(shape, "s")])  # fmt: skip
    model = lstm_infer.load(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    assert model.tensor_types["y"].shape == (1 << 20, 1 << 20)
    with pytest.raises(InputError, match="bomb"):
        model.run({"x": np.ones((1, 1), np.float32)})
    # Dims past what any shape can be, and negative ones: clear errors naming the node.
    for bad in ([(1 << 63) - 1, 1], [-3, 2]):
        g = _graph([Node("ConstantOfShape", ["s"], ["y"], name="fill")], {},
                   {"s": np.array(bad, np.int64)})  # fmt: skip
        with pytest.raises(ModelFormatError, match="'fill'"):
            infer_types(g, strict=True)


@pytest.mark.parametrize(
    "attrs",
    [
        {"strides": [1 << 30]},
        {"dilations": [1 << 21]},
        {"pads": [-1, 0]},
        {"kernel_shape": [0]},
        {"dilations": [1 << 20], "kernel_shape": [1 << 20]},
    ],  # fmt: skip
    ids=str,
)
def test_absurd_conv_attributes_are_clear_errors(attrs: dict) -> None:
    kernel = attrs.get("kernel_shape", [3])
    w = TensorType("float32", (4, 2, *kernel))
    huge_window = "dilations" in attrs and "kernel_shape" in attrs
    for op in ("Conv", "ConvInteger", "ConvTranspose"):
        if op == "ConvTranspose":  # W is (C, M / group, *kernel)
            w = TensorType("float32", (2, 4, *kernel))
        g = _graph([Node(op, ["x", "w"], ["y"], dict(attrs), name="absurd")],
                   {"x": TensorType("float32", (1, 2, 50)), "w": w})  # fmt: skip
        if op == "ConvTranspose" and huge_window:
            # A valid (if absurd) geometry: a 2**40 output inferred, never allocated.
            span = (kernel[0] - 1) * attrs["dilations"][0] + 1
            assert infer_types(g, strict=True).types["y"].shape == (1, 4, 49 + span)
            continue
        with pytest.raises(ModelFormatError, match="'absurd'"):
            infer_types(g, strict=True)
    g = _graph([Node("MaxPool", ["x"], ["y"], {"kernel_shape": [3], **attrs}, name="absurd")],
               {"x": TensorType("float32", (1, 2, 50))})  # fmt: skip
    with pytest.raises(ModelFormatError, match="'absurd'"):
        infer_types(g, strict=True)


def test_inference_bugs_never_block_loading(monkeypatch, rng) -> None:
    """An op whose inference raises anything: the model still loads and runs, the failure is
    recorded and its outputs are unknown."""
    from dataclasses import replace

    import lstm_infer.graph_types as graph_types

    def broken(node: Any, types: list, consts: dict) -> list:
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(graph_types.REGISTRY, "Relu", replace(REGISTRY["Relu"], infer=broken))
    model = lstm_infer.load(test_graph_ops.one_node("Relu", {"x": np.zeros((2, 3), np.float32)}))
    assert "ZeroDivisionError" in next(iter(model.type_inference.failures.values()))
    x = rng.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.run({"x": x})["y0"], np.maximum(x, 0))
    with pytest.raises(ModelFormatError, match="shape inference failed"):
        infer_types(model.graph, strict=True)


# ---- the rest of the graph test corpus -----------------------------------------------------

import test_cell_attention_decoder  # noqa: E402
import test_cells_engine  # noqa: E402
import test_graph_control  # noqa: E402
import test_graph_loop  # noqa: E402
import test_graph_quant  # noqa: E402
import test_graph_sequence  # noqa: E402
import test_loop_cells  # noqa: E402
import test_onnx_graphs  # noqa: E402
import test_silero_vad  # noqa: E402

CORPUS = (test_graph_control, test_graph_loop, test_graph_quant, test_graph_sequence, zoo,
          test_onnx_graphs,
          test_silero_vad, test_cells_engine, test_cell_attention_decoder,
          test_loop_cells)  # fmt: skip
# Refusal tests that take long and never run a model.
_SLOW_REFUSALS = {
    "test_nesting_past_the_limit_is_refused",
    "test_loops_nested_past_the_limit_are_refused",
    # Not a refusal, a known gap: a Loop of no iterations whose body declares no shape for a
    # scan output stacks to (0,) at run time, while inference knows the element shape from
    # the body's ops and says (None, 2, 3).
    "test_a_list_stacked_after_no_iterations",
}


def check_run_types(model: lstm_infer.GraphModel, feeds: Any, got: dict) -> None:
    """What a successful run returned has the inferred types: dtype, rank, every concrete
    dim, and each input symbol the size the feeds gave it."""
    assert_no_fallback(model)
    sizes: dict[str, int] = {}
    for v in model.graph.inputs:
        if v.type.shape is not None and v.name in feeds:
            for d, n in zip(v.type.shape, np.shape(feeds[v.name])):
                if isinstance(d, str):
                    sizes.setdefault(d, n)
    for name, value in got.items():
        t = model.tensor_types[name]
        assert t.dtype == str(value.dtype), (name, t, value.dtype)
        assert t.shape is None or len(t.shape) == value.ndim, (name, t, value.shape)
        for d, n in zip(t.shape or (), value.shape):
            assert d is None or sizes.get(d, d) == n or (isinstance(d, str) and d not in sizes), (
                name, t, value.shape, sizes)  # fmt: skip


_FIXTURES = ("rng", "tmp_path", "monkeypatch")


def _with_fixture_params(module: Any, param: str, combos: list[dict]) -> list[dict]:
    """``combos`` times each value of a parametrised fixture of ``module`` named ``param``
    (test_cells_engine's ``case``, the attention decoder's ``kind``)."""
    fixture = getattr(module, param, None)
    marker = getattr(fixture, "_fixture_function_marker", None)
    if marker is None or not marker.params or any(param in c for c in combos):
        return combos
    make = fixture._fixture_function
    values = [make(SimpleNamespace(param=p)) for p in marker.params]
    return [{**c, param: v} for c in combos for v in values]


def _corpus_cases() -> list[Any]:
    cases = []
    for module in CORPUS:
        for name, fn in vars(module).items():
            if not name.startswith("test_") or not callable(fn) or name in _SLOW_REFUSALS:
                continue
            if getattr(fn, "__module__", "") != module.__name__:
                continue  # imported from another module
            combos = _combos(fn)
            params = inspect.signature(fn).parameters
            for param in params:
                combos = _with_fixture_params(module, param, combos)
            if any(p not in _FIXTURES and p not in combos[0] for p in params):
                continue  # a fixture this replay does not give (conftest's isa)
            for i, kwargs in enumerate(combos):
                cases.append(pytest.param(module, name, kwargs, id=f"{module.__name__}.{name}-{i}"))
    return cases


@pytest.mark.parametrize(("module", "name", "kwargs"), _corpus_cases())
def test_corpus_runs_have_their_inferred_types(module: Any, name: str, kwargs: dict,
                                               monkeypatch, tmp_path, rng) -> None:  # fmt: skip
    run = lstm_infer.GraphModel.run

    def checked(self: Any, feeds: Any, output_names: Any = None, **kw: Any) -> dict:
        got = run(self, feeds, output_names, **kw)
        check_run_types(self, feeds, got)
        return got

    monkeypatch.setattr(lstm_infer.GraphModel, "run", checked)
    fn = getattr(module, name)
    fixtures = {"rng": rng, "tmp_path": tmp_path, "monkeypatch": monkeypatch}
    wanted = inspect.signature(fn).parameters
    fn(**kwargs, **{k: v for k, v in fixtures.items() if k in wanted and k not in kwargs})


def test_inference_of_odd_types_never_crashes() -> None:
    """Every op whose attributes pass its check, on unknown, rank-0, symbolic, empty and
    undefined input types and odd constants: types or a ModelFormatError, never anything
    else (an IndexError, a KeyError, an allocation)."""
    patterns = [
        TensorType("float32"), TensorType("float32", ()), TensorType("int64", (3,)),
        TensorType("float32", ("a", 2, None)), TensorType("float32", (1,) * 5),
        TensorType("undefined"), TensorType("bool", (0, 4)),
    ]  # fmt: skip
    attr_sets = [{}, {"axis": 1}, {"axis": -7}, {"to": 1}, {"kernel_shape": [2]}, {"perm": [1, 0]}]
    const_sets = [{}, {1: np.array([1, -1])}, {1: np.array([0])}, {1: np.array([1 << 40])}]
    tried = 0
    for name, op in REGISTRY.items():
        n_in = max(op.min_inputs, op.max_inputs, 1)
        n_out = max(op.min_outputs, 1)
        for attrs in attr_sets:
            node = Node(name, [f"i{k}" for k in range(n_in)], [f"o{k}" for k in range(n_out)],
                        dict(attrs), name="odd")  # fmt: skip
            try:
                op.check_arity(node)
            except lstm_infer.errors.LstmInferError:
                continue
            for first in patterns:
                for second in patterns:
                    types = [first, second, *[patterns[2]] * (n_in - 2)][:n_in]
                    for consts in const_sets:
                        tried += 1
                        try:
                            out = op.infer(node, types, consts)
                        except ModelFormatError:
                            continue
                        assert len(out) == n_out and all(isinstance(t, TensorType) for t in out)
    assert tried > 10_000


def test_counts_from_attributes_or_types_are_checked_before_any_list_is_made() -> None:
    x = {"x": TensorType("float32", (4, 6))}
    g = _graph([Node("Split", ["x"], ["y"], {"num_outputs": 10**12, "axis": 1}, name="sp")], x)
    with pytest.raises(ModelFormatError, match="'sp'.*num_outputs"):
        infer_types(g, strict=True)
    # A computed shape tensor whose type says 2**40 entries: the output rank is refused.
    g = _graph([Node("Reshape", ["x", "s"], ["y"], name="rs")],
               {**x, "s": TensorType("int64", (1 << 40,))})  # fmt: skip
    with pytest.raises(ModelFormatError, match="'rs'.*rank"):
        infer_types(g, strict=True)
