"""Quantization ops: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger,
ConvInteger.

What onnxruntime's quantization tools write around the layers they quantize: QDQ pairs
(``quantize_static``: QuantizeLinear -> DequantizeLinear before each float op) and dynamic
chains (``quantize_dynamic``: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul). Each
runs on whole tensors with the ONNX formulas: rounding half to even, saturation to the
integer type, per-tensor or per-axis scales and zero points. MatMulInteger sums exactly:
the zero-point-shifted codes (within +-255) are multiplied in float32 on sgemm, exact while
every partial sum stays below 2^24, so the reduced axis is cut into ranges whose weight
magnitudes times 255 keep to that bound (one range for every shipped model seen: a 1024-deep
product of weights averaging 30 sums to 8e6), and the ranges' results add in int32 (the ONNX
output type; a sum past int32 wraps, as int32 accumulation does). ConvInteger is Conv (the
same window code, the direct kernel included) on the shifted codes, cut by input channels
alike. Constant weights are shifted, cut and packed once, when the graph is compiled.
Blocked quantization (``block_size``) and float8 types are refused.
(com.microsoft.DynamicQuantizeLSTM is lowered by the ONNX importer into an LSTM node on the
engine's int8 weights.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_infer._spec import DenseLayer
from lstm_infer.dense_head import CompiledDense
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
from lstm_infer.ops.conv import check_window_conv, conv_type, conv_values, conv_weights
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


# float32 holds every integer up to 2**24 exactly, so a product of integer-valued operands
# whose every partial sum stays within it is exact in sgemm, whatever order (or FMA) the BLAS
# adds in. 8-bit codes minus their zero point lie within +-255.
_F32_EXACT = 1 << 24
_CODE_SPAN = 255


@dataclass(frozen=True)
class _IntWeights:
    """Zero-point-shifted integer weights as float32 and the ranges of the reduced axis
    (K of MatMulInteger, input channels per group of ConvInteger) whose partial sums stay
    exact in float32 against any 8-bit codes; ``parts`` holds each range prepared for its
    product (a 2-D B as the dense layer's CompiledDense, a convolution weight as Conv's)."""

    values: np.ndarray
    chunks: tuple[tuple[int, int], ...]
    parts: tuple[Any, ...] = ()


def _exact_chunks(bounds: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Consecutive ranges of the reduced axis over which ``_CODE_SPAN * sum(bounds)`` stays
    within _F32_EXACT; bounds[k] is the largest sum of |weight| index k contributes to one
    output (over kernel taps for a convolution). One range in the common case."""
    bounds = bounds.astype(np.int64)
    limit = _F32_EXACT // _CODE_SPAN
    if int(bounds.sum()) <= limit:
        return ((0, len(bounds)),)
    chunks, start, total = [], 0, 0
    for k, v in enumerate(bounds.tolist()):
        if total + v > limit and k > start:
            chunks.append((start, k))
            start, total = k, 0
        total += v
    chunks.append((start, len(bounds)))
    return tuple(chunks)


def _shifted_codes(
    node: Any, codes: np.ndarray, zero: np.ndarray | None, axis: int | None, what: str
) -> np.ndarray:
    """Integer codes minus their zero point, in float32 (exact: within +-255): a scalar zero
    point, or (axis not None) one per index of that axis of ``codes``."""
    v = codes.astype(np.float32)
    if zero is None:
        return v
    if zero.dtype != codes.dtype:
        raise InputError(f"{node.label}: {what} is {zero.dtype}, its codes {codes.dtype}")
    z = zero.astype(np.float32)
    if z.size == 1:
        v -= z.reshape(())
        return v
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
    v -= z.reshape(shape)
    return v


def _check_codes(node: Any, a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.dtype not in (np.uint8, np.int8) or b.dtype not in (np.uint8, np.int8):
        raise InputError(f"{node.label}: {names} must be uint8 or int8, got {a.dtype}, {b.dtype}")


def _matmul_weights(node: Any, b: np.ndarray, zero: np.ndarray | None) -> _IntWeights:
    """B (..., K, N) shifted by its zero point (scalar or one per column), with its K
    chunks."""
    if b.ndim < 1:
        raise InputError(f"{node.label}: MatMulInteger needs operands of rank >= 1")
    bv = _shifted_codes(node, b, zero, -1, "b_zero_point")
    mags = np.abs(bv)
    # bounds[k]: the largest |b[..., k, n]| over every column and batch entry
    others = tuple(i for i in range(b.ndim) if i != b.ndim - 2)
    bounds = mags if b.ndim == 1 else mags.max(axis=others)
    chunks = _exact_chunks(bounds)
    if b.ndim != 2 or 0 in b.shape:
        return _IntWeights(bv, chunks)
    # (N, K) rows per range: the dense layer's products (the packed matvec for few rows of
    # A, sgemm for many), exact alike: they only reorder the float32 sums.
    dense = tuple(
        CompiledDense.of(DenseLayer(np.ascontiguousarray(bv[k0:k1].T), None, None))
        for k0, k1 in chunks
    )
    return _IntWeights(bv, chunks, dense)


def _prepared_weights(make: Any) -> Any:
    """A prepare function for MatMulInteger / ConvInteger: ``make(node, codes, zero)`` on the
    constant 8-bit weight (input 1) and its zero point (input 3, when given), once; None
    (prepared per call instead) when either is computed at run time."""

    def prepare(node: Any, consts: dict[int, np.ndarray]) -> _IntWeights | None:
        w = consts.get(1)
        has_zero = len(node.inputs) > 3 and bool(node.inputs[3])
        if w is None or w.dtype not in (np.uint8, np.int8) or (has_zero and 3 not in consts):
            return None
        return make(node, w, consts.get(3) if has_zero else None)

    return prepare


def _accumulate(total: np.ndarray | None, part: np.ndarray) -> np.ndarray:
    """int32 sum of exact float32 partial products (wrapping past int32, as int32
    accumulation does)."""
    if total is None:
        return part.astype(np.int32)
    total += part.astype(np.int32)
    return total


def _matmul_integer(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    a, b = ins[0], ins[1]
    _check_codes(node, a, b, "A and B")
    if a.ndim < 1 or b.ndim < 1:
        raise InputError(f"{node.label}: MatMulInteger needs operands of rank >= 1")
    iw: _IntWeights = state or _matmul_weights(node, b, ins[3] if len(ins) > 3 else None)
    # A's zero point: a scalar, or one per row of A (its second-to-last axis).
    av = _shifted_codes(node, a, ins[2] if len(ins) > 2 else None, -2, "a_zero_point")
    bv = iw.values
    k = bv.shape[-2] if bv.ndim > 1 else bv.shape[0]
    if av.shape[-1] != k:
        raise InputError(f"{node.label}: shapes {a.shape} and {b.shape} do not multiply")
    total = None
    if iw.parts and a.ndim >= 2:
        # every row of A against one weight: one dense product per range
        rows = av.reshape(-1, k)
        for (k0, k1), dense in zip(iw.chunks, iw.parts):
            part_rows = rows if len(iw.chunks) == 1 else np.ascontiguousarray(rows[:, k0:k1])
            total = _accumulate(total, dense.forward(part_rows, ctx.threads))
        return [total.reshape(*a.shape[:-1], bv.shape[1])]
    for k0, k1 in iw.chunks:
        try:
            part = np.matmul(av[..., k0:k1], bv[..., k0:k1, :] if bv.ndim > 1 else bv[k0:k1])
        except ValueError as e:
            raise InputError(f"{node.label}: shapes {a.shape} and {b.shape} do not multiply") from e
        total = _accumulate(total, part)
    return [np.asarray(total, np.int32)]


def _conv_integer_weights(node: Any, w: np.ndarray, zero: np.ndarray | None) -> _IntWeights:
    """W (M, C/group, *kernel) shifted by its zero point (scalar or one per output channel),
    chunked by input channels, each chunk prepared as a float32 Conv weight."""
    if w.ndim < 3:
        raise InputError(f"{node.label}: W must be (M, C/group, *kernel), got shape {w.shape}")
    wv = _shifted_codes(node, w, zero, 0, "w_zero_point")
    per_channel = np.abs(wv).reshape(w.shape[0], w.shape[1], -1).sum(axis=2)  # (M, C/group)
    chunks = _exact_chunks(per_channel.max(axis=0))
    conv = tuple(conv_weights(node, np.ascontiguousarray(wv[:, c0:c1])) for c0, c1 in chunks)
    return _IntWeights(wv, chunks, conv)


def _conv_integer(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    x, w = ins[0], ins[1]
    _check_codes(node, x, w, "x and w")
    if x.ndim < 3:
        raise InputError(f"{node.label}: X must be (N, C, *spatial), got shape {x.shape}")
    iw: _IntWeights = state or _conv_integer_weights(node, w, ins[3] if len(ins) > 3 else None)
    # Padding with the zero point is padding the shifted codes with 0. x's zero point is a
    # scalar; w's a scalar or one per output channel.
    xv = _shifted_codes(node, x, ins[2] if len(ins) > 2 else None, None, "x_zero_point")
    if len(iw.chunks) == 1:
        return [conv_values(ctx, node, xv, iw.parts[0].w, iw.parts[0]).astype(np.int32)]
    group = attr_int(node, "group", 1)
    cg = iw.values.shape[1]
    if x.shape[1] != cg * group:
        raise InputError(
            f"{node.label}: X has {x.shape[1]} channels, W {cg} per group x {group} groups"
        )
    by_group = xv.reshape(x.shape[0], group, cg, *x.shape[2:])
    total = None
    for (c0, c1), cw in zip(iw.chunks, iw.parts):
        part_x = by_group[:, :, c0:c1].reshape(x.shape[0], group * (c1 - c0), *x.shape[2:])
        total = _accumulate(total, conv_values(ctx, node, part_x, cw.w, cw))
    return [total]


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
        prepare=_prepared_weights(_matmul_weights),
        infer=_matmul_integer_infer,
    ),
    "ConvInteger": op(
        "ConvInteger",
        _conv_integer,
        inputs=(2, 4),
        check=check_window_conv,
        prepare=_prepared_weights(_conv_integer_weights),
        infer=_conv_integer_infer,
    ),
}
