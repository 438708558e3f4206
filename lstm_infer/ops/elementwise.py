"""Elementwise ops: unary math and activations, broadcasting binary ops, comparisons, logic,
Where, Clip, Cast, Identity, Dropout (inference: identity).

All of numpy's broadcasting (ONNX's multidirectional broadcasting is numpy's). float32 stays
float32: scalars never promote (np.float32 arithmetic on arrays keeps the array's dtype).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lstm_infer.errors import InputError, UnsupportedModelError
from lstm_infer.ops.base import (
    OpDef,
    RunContext,
    allowed_attrs,
    attr_float,
    attr_int,
    broadcast,
    broadcast_shape,
    dim_arith,
    dtype_of,
    op,
    same_as_input,
    shape_of,
    typed,
    values_of,
    with_value,
)
from lstm_infer.tensor_type import TensorType

ONNX_DTYPES = {
    1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
    10: "float16", 11: "float64",
}  # fmt: skip


def _float_only(node: Any, x: np.ndarray) -> None:
    if x.dtype.kind != "f":
        raise InputError(f"{node.label}: needs a floating-point input, got {x.dtype}")


def _unary(
    name: str, fn: Callable[[Any, np.ndarray], np.ndarray], attrs: tuple[str, ...] = ()
) -> OpDef:
    def run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
        x = ins[0]
        with np.errstate(all="ignore"):  # inf/nan follow IEEE as onnxruntime's do
            y = fn(node, x)
        return [np.asarray(y, dtype=x.dtype) if name not in ("Not", "IsNaN", "IsInf") else y]

    logical = name in ("Not", "IsNaN", "IsInf")
    return op(
        name, run, check=allowed_attrs(*attrs), infer=same_as_input("bool" if logical else None)
    )


def _broadcast_infer(keep: bool, dtype_pos: int = 0):  # noqa: ANN202
    """Infer of a broadcasting op: the broadcast of every given input's shape, the dtype of
    input ``dtype_pos`` (keep) or bool."""

    def infer(node: Any, types: list, consts: dict) -> list[TensorType]:
        given = [t for t in types if t is not None]
        dtype = dtype_of(types[dtype_pos]) if keep else "bool"
        result = typed(node, dtype, broadcast(node, [shape_of(t) for t in given]))
        if node.op in ("Add", "Sub", "Mul", "Div") and len(types) == 2:
            a, b = values_of(node, types, consts, 0), values_of(node, types, consts, 1)
            if a is not None and b is not None and (len(a) == len(b) or 1 in (len(a), len(b))):
                n = max(len(a), len(b))
                a, b = (v * n if len(v) == 1 else v for v in (a, b))
                result = with_value(result, [dim_arith(node.op, x, y) for x, y in zip(a, b)])
        return [result]

    return infer


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(x)


def _gelu(node: Any, x: np.ndarray) -> np.ndarray:
    approx = node.attrs.get("approximate", "none")
    if isinstance(approx, bytes):
        approx = approx.decode()
    if approx == "tanh":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi).astype(x.dtype) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + _erf(x / np.sqrt(2).astype(x.dtype)))


def _sigmoid(node: Any, x: np.ndarray) -> np.ndarray:
    _float_only(node, x)
    return 1.0 / (1.0 + np.exp(-x))


def _round(node: Any, x: np.ndarray) -> np.ndarray:
    return np.round(x)  # numpy rounds half to even, as ONNX Round does


def _dt(node: Any, x: np.ndarray, v: float) -> Any:
    return x.dtype.type(v)


def _leaky_relu(x: np.ndarray, alpha: Any) -> np.ndarray:
    """x where x >= 0, alpha * x elsewhere. For a positive alpha that is max(x, alpha * x)
    (min past 1): one product and one in-place pass, where np.where's mask and temporaries
    took 11x longer over a (48, 1000, 160) map (AECMOS: 38 against 3.3 ms). NaN stays NaN
    in both; alpha <= 0 (where 0 * inf would differ) keeps the mask."""
    if x.dtype.kind != "f" or not alpha > 0:
        return np.where(x >= 0, x, x * alpha)
    y = np.multiply(x, alpha)
    return (np.maximum if alpha <= 1 else np.minimum)(x, y, out=y)


UNARY: dict[str, tuple[Callable[[Any, np.ndarray], np.ndarray], tuple[str, ...]]] = {
    "Abs": (lambda n, x: np.abs(x), ()),
    "Neg": (lambda n, x: np.negative(x), ()),
    "Sqrt": (lambda n, x: np.sqrt(x), ()),
    "Exp": (lambda n, x: np.exp(x), ()),
    "Log": (lambda n, x: np.log(x), ()),
    "Reciprocal": (lambda n, x: np.reciprocal(x), ()),
    "Relu": (lambda n, x: np.maximum(x, _dt(n, x, 0)), ()),
    "LeakyRelu": (lambda n, x: _leaky_relu(x, _dt(n, x, attr_float(n, "alpha", 0.01))), ("alpha",)),
    "Elu": (
        lambda n, x: np.where(x >= 0, x, _dt(n, x, attr_float(n, "alpha", 1.0)) * np.expm1(x)),
        ("alpha",),
    ),
    "Selu": (
        lambda n, x: (
            _dt(n, x, attr_float(n, "gamma", 1.0507009873554805))
            * np.where(
                x > 0, x, _dt(n, x, attr_float(n, "alpha", 1.6732632423543772)) * np.expm1(x)
            )
        ),
        ("alpha", "gamma"),
    ),
    "Sigmoid": (_sigmoid, ()),
    "HardSigmoid": (
        lambda n, x: np.clip(
            _dt(n, x, attr_float(n, "alpha", 0.2)) * x + _dt(n, x, attr_float(n, "beta", 0.5)),
            0,
            1,
        ),
        ("alpha", "beta"),
    ),
    "HardSwish": (lambda n, x: x * np.clip(x / _dt(n, x, 6) + _dt(n, x, 0.5), 0, 1), ()),
    "Tanh": (lambda n, x: np.tanh(x), ()),
    "Softplus": (lambda n, x: np.logaddexp(_dt(n, x, 0), x), ()),
    "Softsign": (lambda n, x: x / (1 + np.abs(x)), ()),
    "Erf": (lambda n, x: _erf(x), ()),
    "Gelu": (_gelu, ("approximate",)),
    "Floor": (lambda n, x: np.floor(x), ()),
    "Ceil": (lambda n, x: np.ceil(x), ()),
    "Round": (_round, ()),
    "Sign": (lambda n, x: np.sign(x), ()),
    "Sin": (lambda n, x: np.sin(x), ()),
    "Cos": (lambda n, x: np.cos(x), ()),
    "Not": (lambda n, x: np.logical_not(x), ()),
    "IsNaN": (lambda n, x: np.isnan(x), ()),
    "IsInf": (
        lambda n, x: (
            (np.isposinf(x) & bool(attr_int(n, "detect_positive", 1)))
            | (np.isneginf(x) & bool(attr_int(n, "detect_negative", 1)))
        ),
        ("detect_positive", "detect_negative"),
    ),
}


def _binary(name: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], keep: bool) -> OpDef:
    """keep: the result has the inputs' dtype (arithmetic); else bool (comparisons, logic)."""

    def run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
        a, b = ins
        broadcast_shape(node, a.shape, b.shape)
        if keep and a.dtype != b.dtype:
            raise InputError(f"{node.label}: input dtypes differ ({a.dtype}, {b.dtype})")
        with np.errstate(all="ignore"):
            y = fn(a, b)
        return [np.asarray(y, dtype=a.dtype) if keep else np.asarray(y)]

    return op(name, run, inputs=(2, 2), check=allowed_attrs(), infer=_broadcast_infer(keep))


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        if np.any(b == 0):
            raise InputError("Div: integer division by zero")
        return np.trunc(a / b).astype(a.dtype)  # ONNX integer Div truncates toward zero
    return a / b


def _mod_run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    a, b = ins
    # Before the zero test and np.mod: two inputs broadcasting to an absurd shape are refused
    # here, naming the node, instead of numpy allocating the result first.
    broadcast_shape(node, a.shape, b.shape)
    fmod = attr_int(node, "fmod", 0)
    if a.dtype.kind in "iu" and np.any(b == 0):
        raise InputError(f"{node.label}: integer modulo by zero")
    with np.errstate(all="ignore"):
        y = np.fmod(a, b) if fmod else np.mod(a, b)
    return [np.asarray(y, dtype=a.dtype)]


def _pow_run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    a, b = ins
    broadcast_shape(node, a.shape, b.shape)
    if a.dtype.kind == "f" and b.size == 1 and b.ndim <= a.ndim and b.reshape(()) == 2:
        # x ** 2 (a magnitude, a variance): one multiply, the value pow gives (x * x rounded
        # once), 4x faster than numpy's pow loop on the zoo's STFT magnitudes
        with np.errstate(all="ignore"):
            return [np.square(a)]
    with np.errstate(all="ignore"):
        if a.dtype.kind == "f":
            y = np.power(a, b.astype(a.dtype))
        else:
            y = np.power(a.astype(np.float64), b.astype(np.float64))
    return [np.asarray(y, dtype=a.dtype)]


def _variadic(name: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> OpDef:
    def run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
        arrays = [x for x in ins if x is not None]
        shape = broadcast_shape(node, *(x.shape for x in arrays))
        y = arrays[0]
        for x in arrays[1:]:
            y = fn(y, x)
        if name == "Mean":
            y = y / np.asarray(len(arrays), dtype=arrays[0].dtype)
        return [np.broadcast_to(np.asarray(y, dtype=arrays[0].dtype), shape).copy()]

    return op(name, run, inputs=(1, -1), check=allowed_attrs(), infer=_broadcast_infer(True))


def _where_run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    c, a, b = ins
    if c.dtype != np.bool_:
        raise InputError(f"{node.label}: condition must be bool, got {c.dtype}")
    broadcast_shape(node, c.shape, a.shape, b.shape)
    return [np.where(c, a, b).astype(a.dtype, copy=False)]


def _clip_run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    x = ins[0]
    lo = ins[1] if len(ins) > 1 else None
    hi = ins[2] if len(ins) > 2 else None
    y = x
    if lo is not None:
        y = np.maximum(y, lo.astype(x.dtype).reshape(()))
    if hi is not None:
        y = np.minimum(y, hi.astype(x.dtype).reshape(()))
    return [np.asarray(y, dtype=x.dtype)]


def _cast_check(node: Any) -> None:
    allowed_attrs("saturate", required=("to",))(node)
    to = attr_int(node, "to")
    if to not in ONNX_DTYPES:
        raise UnsupportedModelError(f"{node.label}: cast to ONNX type {to} is not supported")


def _cast_run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    to = ONNX_DTYPES[attr_int(node, "to")]
    x = ins[0]
    if x.dtype.kind == "f" and np.dtype(to).kind in "iu":
        with np.errstate(invalid="ignore"):
            return [np.trunc(x).astype(to)]  # toward zero, as onnxruntime casts
    return [x.astype(to)]


def _cast_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    result = typed(node, ONNX_DTYPES[attr_int(node, "to")], shape_of(types[0]))
    return [with_value(result, values_of(node, types, consts, 0))]


def _identity_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    return [types[0] if types[0] is not None else typed(node, "undefined", None)]


def _dropout_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    shape = shape_of(types[0])
    return [typed(node, dtype_of(types[0]), shape), typed(node, "bool", shape)][: len(node.outputs)]


def _identity_run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    return [ins[0]]


def _dropout_run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    # Inference: training_mode (input 2) must be false or absent; then Dropout is identity.
    if len(ins) > 2 and ins[2] is not None and bool(np.asarray(ins[2]).reshape(-1)[0]):
        raise InputError(f"{node.label}: training_mode=true is not supported")
    outs = [ins[0]]
    if len(node.outputs) > 1:
        outs.append(np.ones(ins[0].shape, dtype=np.bool_))
    return outs


OPS: dict[str, OpDef] = {name: _unary(name, fn, attrs) for name, (fn, attrs) in UNARY.items()}
OPS.update(
    {
        "Add": _binary("Add", np.add, True),
        "Sub": _binary("Sub", np.subtract, True),
        "Mul": _binary("Mul", np.multiply, True),
        "Div": _binary("Div", _div, True),
        "Pow": op(
            "Pow", _pow_run, inputs=(2, 2), check=allowed_attrs(), infer=_broadcast_infer(True)
        ),
        "Mod": op(
            "Mod",
            _mod_run,
            inputs=(2, 2),
            check=allowed_attrs("fmod"),
            infer=_broadcast_infer(True),
        ),
        "Equal": _binary("Equal", np.equal, False),
        "Less": _binary("Less", np.less, False),
        "LessOrEqual": _binary("LessOrEqual", np.less_equal, False),
        "Greater": _binary("Greater", np.greater, False),
        "GreaterOrEqual": _binary("GreaterOrEqual", np.greater_equal, False),
        "And": _binary("And", np.logical_and, False),
        "Or": _binary("Or", np.logical_or, False),
        "Xor": _binary("Xor", np.logical_xor, False),
        "Max": _variadic("Max", np.maximum),
        "Min": _variadic("Min", np.minimum),
        "Sum": _variadic("Sum", np.add),
        "Mean": _variadic("Mean", np.add),
        "Where": op(
            "Where",
            _where_run,
            inputs=(3, 3),
            check=allowed_attrs(),
            infer=_broadcast_infer(True, 1),
        ),
        "Clip": op("Clip", _clip_run, inputs=(1, 3), check=allowed_attrs(), infer=same_as_input()),
        "Cast": op("Cast", _cast_run, check=_cast_check, infer=_cast_infer),
        "Identity": op("Identity", _identity_run, check=allowed_attrs(), infer=_identity_infer),
        "Dropout": op(
            "Dropout",
            _dropout_run,
            inputs=(1, 3),
            outputs=(1, 2),
            check=allowed_attrs("seed"),
            infer=_dropout_infer,
        ),
    }
)
