"""Quantization ops: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger,
ConvInteger.

What onnxruntime's quantization tools write around the layers they quantize: QDQ pairs
(``quantize_static``: QuantizeLinear -> DequantizeLinear before each float op) and dynamic
chains (``quantize_dynamic``: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul). Each
runs on whole tensors with the ONNX formulas: rounding half to even, saturation to the
integer type, per-tensor or per-axis scales and zero points. MatMulInteger sums exactly:
its products are formed in float64 (BLAS), exact while K * 255 * 255 < 2^53, then stored as
int32 (the ONNX output type; a sum past int32 wraps). ConvInteger is Conv (the same window
code) on the zero-point-shifted codes in float64, equally exact. Blocked quantization
(``block_size``) and float8 types are refused. (com.microsoft.DynamicQuantizeLSTM is lowered
by the ONNX importer into an LSTM node on the engine's int8 weights.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer.errors import InputError, UnsupportedModelError
from lstm_infer.ops.base import (
    OpDef,
    RunContext,
    allowed_attrs,
    attr_int,
    dtype_of,
    op,
    shape_of,
    typed,
)
from lstm_infer.ops.conv import check_window_conv, conv_type, conv_values
from lstm_infer.ops.dense import matmul_type
from lstm_infer.tensor_type import TensorType

# Integer types a QuantizeLinear may produce, and their ranges.
_RANGES = {
    np.dtype(np.uint8): (0, 255),
    np.dtype(np.int8): (-128, 127),
    np.dtype(np.int16): (-32768, 32767),
}
# ONNX TensorProto codes of output_dtype (opset 21) for the same types.
_OUTPUT_DTYPES = {2: np.dtype(np.uint8), 3: np.dtype(np.int8), 5: np.dtype(np.int16)}


def _check_quantize(node: Any) -> None:
    allowed_attrs("axis", "saturate", "block_size", "output_dtype")(node)
    _check_unblocked(node)
    code = attr_int(node, "output_dtype", 0)
    if code and code not in _OUTPUT_DTYPES:
        raise UnsupportedModelError(f"{node.label}: output_dtype {code} is not supported")


def _check_dequantize(node: Any) -> None:
    allowed_attrs("axis", "block_size")(node)
    _check_unblocked(node)


def _check_unblocked(node: Any) -> None:
    if attr_int(node, "block_size", 0) != 0:
        raise UnsupportedModelError(f"{node.label}: blocked quantization is not supported")


def _per_axis(node: Any, param: np.ndarray, x: np.ndarray, what: str) -> np.ndarray:
    """A scale or zero point shaped to broadcast against x: a scalar (or one element), or one
    value per index of ``axis``."""
    if param.size == 1 and param.ndim <= 1:
        return param.reshape(())
    if param.ndim != 1:
        raise InputError(f"{node.label}: {what} must be a scalar or 1-D, got shape {param.shape}")
    axis = attr_int(node, "axis", 1)
    if not -x.ndim <= axis < x.ndim:
        raise InputError(f"{node.label}: axis {axis} is outside the input's rank {x.ndim}")
    axis %= x.ndim
    if param.shape[0] != x.shape[axis]:
        raise InputError(
            f"{node.label}: {what} has {param.shape[0]} values for axis {axis} of size "
            f"{x.shape[axis]}"
        )
    shape = [1] * x.ndim
    shape[axis] = param.shape[0]
    return param.reshape(shape)


def _quantize(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    x, scale, zero = ins[0], ins[1], ins[2] if len(ins) > 2 else None
    if x.dtype.kind != "f" or scale.dtype.kind != "f":
        raise InputError(f"{node.label}: x and y_scale must be floating point")
    code = attr_int(node, "output_dtype", 0)
    dtype = zero.dtype if zero is not None else _OUTPUT_DTYPES.get(code, np.dtype(np.uint8))
    if dtype not in _RANGES:
        raise InputError(f"{node.label}: quantizing to {dtype} is not supported")
    lo, hi = _RANGES[dtype]
    s = _per_axis(node, scale, x, "y_scale").astype(np.float32)
    q = np.rint(x.astype(np.float32) / s)  # round half to even, as ONNX asks
    if zero is not None:
        q = q + _per_axis(node, zero, x, "y_zero_point").astype(np.float32)
    return [np.clip(q, lo, hi).astype(dtype)]


def _dequantize(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    x, scale, zero = ins[0], ins[1], ins[2] if len(ins) > 2 else None
    if x.dtype.kind not in "iu" or scale.dtype.kind != "f":
        raise InputError(f"{node.label}: x must be an integer tensor and x_scale floating point")
    v = x.astype(np.int32) if x.dtype.itemsize < 4 else x.astype(np.int64)
    if zero is not None:
        v = v - _per_axis(node, zero, x, "x_zero_point").astype(v.dtype)
    s = _per_axis(node, scale, x, "x_scale")
    return [(v.astype(np.float32) * s.astype(np.float32)).astype(scale.dtype)]


def _dynamic_quantize(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    """uint8 with scale = (max(0, max x) - min(0, min x)) / 255 and the zero point that puts
    0.0 on an integer (the ONNX formula); an all-zero input gets scale 0 and zero codes."""
    x = ins[0]
    if x.dtype != np.float32:
        raise InputError(f"{node.label}: x must be float32, got {x.dtype}")
    if x.size and not np.isfinite(x).all():
        raise InputError(f"{node.label}: x holds NaN or infinity (no scale can be chosen)")
    lo = min(0.0, float(x.min())) if x.size else 0.0
    hi = max(0.0, float(x.max())) if x.size else 0.0
    scale = np.float32((np.float32(hi) - np.float32(lo)) / np.float32(255))
    if scale == 0:
        return [np.zeros(x.shape, np.uint8), np.array(scale), np.array(0, np.uint8)]
    zero = np.uint8(np.clip(np.rint(np.float32(0) - np.float32(lo) / scale), 0, 255))
    q = np.clip(np.rint(x / scale) + np.float32(zero), 0, 255).astype(np.uint8)
    return [q, np.array(scale, np.float32), np.array(zero, np.uint8)]


def _shifted_codes(
    node: Any, codes: np.ndarray, zero: np.ndarray | None, axis: int | None, what: str
) -> np.ndarray:
    """Integer codes minus their zero point, in float64 (exact): a scalar zero point, or (axis
    not None) one per index of that axis of ``codes``."""
    v = codes.astype(np.float64)
    if zero is None:
        return v
    z = zero.astype(np.float64)
    if z.size == 1:
        return v - z.reshape(())
    fits = (
        axis is not None
        and z.ndim == 1
        and codes.ndim >= (-axis if axis < 0 else axis + 1)
        and z.shape[0] == codes.shape[axis]
    )
    if not fits:
        raise InputError(f"{node.label}: {what} of shape {z.shape} for shape {codes.shape}")
    shape = [1] * codes.ndim
    shape[axis] = z.shape[0]
    return v - z.reshape(shape)


def _matmul_integer(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    a, b = ins[0], ins[1]
    if a.dtype not in (np.uint8, np.int8) or b.dtype not in (np.uint8, np.int8):
        raise InputError(f"{node.label}: A and B must be uint8 or int8, got {a.dtype}, {b.dtype}")
    if a.ndim < 1 or b.ndim < 1:
        raise InputError(f"{node.label}: MatMulInteger needs operands of rank >= 1")
    # Zero points: scalars, or one per row of A (its second-to-last axis) / column of B.
    av = _shifted_codes(node, a, ins[2] if len(ins) > 2 else None, -2, "a_zero_point")
    bv = _shifted_codes(node, b, ins[3] if len(ins) > 3 else None, -1, "b_zero_point")
    try:
        product = np.matmul(av, bv)
    except ValueError as e:
        raise InputError(f"{node.label}: shapes {a.shape} and {b.shape} do not multiply") from e
    return [product.astype(np.int64).astype(np.int32)]


def _conv_integer(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    x, w = ins[0], ins[1]
    if x.dtype not in (np.uint8, np.int8) or w.dtype not in (np.uint8, np.int8):
        raise InputError(f"{node.label}: x and w must be uint8 or int8, got {x.dtype}, {w.dtype}")
    # Padding with the zero point is padding the shifted codes with 0. x's zero point is a
    # scalar; w's a scalar or one per output channel.
    xv = _shifted_codes(node, x, ins[2] if len(ins) > 2 else None, None, "x_zero_point")
    wv = _shifted_codes(node, w, ins[3] if len(ins) > 3 else None, 0, "w_zero_point")
    return [conv_values(ctx, node, xv, wv).astype(np.int64).astype(np.int32)]


def _quantize_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    zero = types[2] if len(types) > 2 else None
    if zero is not None:
        dtype = dtype_of(zero)
    else:
        dtype = str(_OUTPUT_DTYPES.get(attr_int(node, "output_dtype", 0), np.dtype(np.uint8)))
    return [typed(node, dtype, shape_of(types[0]))]


def _dequantize_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    return [typed(node, dtype_of(types[1]), shape_of(types[0]))]


def _dynamic_quantize_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    return [
        typed(node, "uint8", shape_of(types[0])),
        typed(node, "float32", ()),
        typed(node, "uint8", ()),
    ]


def _matmul_integer_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    return [matmul_type(node, types[0], types[1], "int32")]


def _conv_integer_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    return [conv_type(node, types, "int32")]


OPS: dict[str, OpDef] = {
    "QuantizeLinear": op(
        "QuantizeLinear", _quantize, inputs=(2, 3), check=_check_quantize, infer=_quantize_infer
    ),
    "DequantizeLinear": op(
        "DequantizeLinear",
        _dequantize,
        inputs=(2, 3),
        check=_check_dequantize,
        infer=_dequantize_infer,
    ),
    "DynamicQuantizeLinear": op(
        "DynamicQuantizeLinear",
        _dynamic_quantize,
        inputs=(1, 1),
        outputs=(3, 3),
        check=allowed_attrs(),
        infer=_dynamic_quantize_infer,
    ),
    "MatMulInteger": op(
        "MatMulInteger",
        _matmul_integer,
        inputs=(2, 4),
        check=allowed_attrs(),
        infer=_matmul_integer_infer,
    ),
    "ConvInteger": op(
        "ConvInteger",
        _conv_integer,
        inputs=(2, 4),
        check=check_window_conv,
        infer=_conv_integer_infer,
    ),
}
