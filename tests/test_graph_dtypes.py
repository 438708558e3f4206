"""Graph inputs and outputs of every dtype the model graph takes (float32/16/64, int32/64,
bool) and of ranks 0 to 5, each against onnxruntime on the same feeds (dtype and shape of
every output included): arithmetic and logic, activations, reductions, layout, MatMul and
Cast between them. float16 runs at its own precision on both engines (onnxruntime's float16
kernels compute in float32 and round, as ours do), so it is compared at 2e-3."""

from __future__ import annotations

import numpy as np
import pytest
from graph_cases import compare, one_node
from onnx import TensorProto

DTYPES = ["float32", "float16", "float64", "int32", "int64", "bool"]
SHAPES = [(), (3,), (2, 1, 3), (2, 1, 3, 1, 2)]
TOL = {"float16": 2e-3, "float32": 1e-5, "float64": 1e-12}


def _values(
    rng: np.random.Generator, dtype: str, shape: tuple[int, ...], shift: float
) -> np.ndarray:
    if dtype == "bool":
        return np.asarray(rng.random(shape) > 0.5)
    return np.asarray((rng.standard_normal(shape) * 3 + shift).astype(dtype))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"rank{len(s)}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_and_where_keep_every_dtype_and_rank(rng, dtype: str, shape) -> None:
    a, b = _values(rng, dtype, shape, 0.0), _values(rng, dtype, shape, 10.0)
    ops = ["And", "Or", "Xor"] if dtype == "bool" else ["Add", "Mul", "Max", "Less"]
    for op in ops:
        compare(one_node(op, {"a": a, "b": b}), {"a": a, "b": b}, tol=TOL.get(dtype, 0))
    if dtype != "bool":  # onnxruntime has no Where over bool values
        c = np.asarray(rng.random(shape) > 0.5)
        compare(one_node("Where", {"c": c, "a": a, "b": b}), {"c": c, "a": a, "b": b})


@pytest.mark.parametrize("dtype", ["float16", "float64"])
@pytest.mark.parametrize(
    ("op", "attrs"),
    [
        ("Tanh", {}),
        ("Sigmoid", {}),
        ("Exp", {}),
        ("Relu", {}),
        ("Softmax", {"axis": 1}),
        ("ReduceMean", {"keepdims": 0}),
        ("Transpose", {"perm": [2, 0, 1]}),
    ],
)
def test_float16_and_float64_graphs_keep_their_dtype(rng, dtype: str, op: str, attrs) -> None:
    x = rng.standard_normal((2, 3, 4)).astype(dtype)
    compare(one_node(op, {"x": x}, **attrs), {"x": x}, tol=TOL[dtype])


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_matmul_in_float16_and_float64(rng, dtype: str) -> None:
    x = rng.standard_normal((2, 3, 4)).astype(dtype)
    w = rng.standard_normal((4, 5)).astype(dtype)
    compare(one_node("MatMul", {"x": x}, {"w": w}), {"x": x}, tol=TOL[dtype] * 4)


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_inputs_index_and_reduce(rng, dtype: str) -> None:
    idx = rng.integers(-3, 3, (2, 4)).astype(dtype)
    table = rng.standard_normal((3, 5)).astype(np.float32)
    compare(one_node("Gather", {"i": idx}, {"t": table}, inputs=["t", "i"]), {"i": idx})
    x = rng.integers(-50, 50, (3, 4)).astype(dtype)
    for op in ("ReduceSum", "ReduceMax", "ArgMax"):
        compare(one_node(op, {"x": x}, keepdims=0), {"x": x})


@pytest.mark.parametrize(
    "to",
    [
        TensorProto.INT32,
        TensorProto.INT64,
        TensorProto.FLOAT16,
        TensorProto.DOUBLE,
        TensorProto.BOOL,
    ],
)
@pytest.mark.parametrize("source", ["float32", "int64", "bool"])
def test_cast_between_the_dtypes(rng, source: str, to: int) -> None:
    x = _values(rng, source, (3, 4), 0.0)
    compare(one_node("Cast", {"x": x}, to=to), {"x": x})
