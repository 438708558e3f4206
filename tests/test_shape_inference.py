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
from typing import Any

import numpy as np
import pytest
from _pytest.mark.structures import ParameterSet
from conftest import require

onnx = require("onnx")
ort = require("onnxruntime")
import test_graph_ops  # noqa: E402
import test_graph_ops_window  # noqa: E402

import lstm_infer  # noqa: E402
from lstm_infer.ops import REGISTRY  # noqa: E402

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
        if computed or not all(t.static for t in ins):
            exempt.update(o for o in node.outputs if o)
            continue
        for name in node.outputs:
            if name:
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
    getattr(module, name)(**kwargs, rng=rng)


def test_every_registered_op_has_shape_inference() -> None:
    missing = sorted(name for name, op in REGISTRY.items() if op.infer is None)
    assert not missing
    assert len(REGISTRY) >= 111
