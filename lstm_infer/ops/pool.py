"""Pooling: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool (channels-first).

float32 windowed pools over 1-D and 2-D maps run in C (``lstm_infer._engine.pool2d``: one
pass over each output row per kernel tap, MaxPool2d(2) on the kernel table's vector kernel;
numpy's strided slices took 4x its time on the CRNN's front end). Other dtypes and ranks
reduce one spatial dim at a time (a box's max or sum is the max or sum over each dim in
turn): per dim, one whole-tensor maximum / add per kernel tap of that dim over strided
slices, ``sum(kernel)`` passes in all instead of ``prod(kernel)``, never a loop over output
positions.
MaxPool pads with -inf (the integer minimum for integer inputs), so padding never wins;
AveragePool pads with zeros and divides by the window's count: every tap inside the input and
its declared padding with ``count_include_pad=1``, only taps inside the input without (taps in
a ``ceil_mode`` extension never count). The count is a product of per-dim counts, as windows
are boxes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer import _engine
from lstm_infer.errors import InputError, ModelFormatError, UnsupportedModelError
from lstm_infer.ops.base import (
    OpDef,
    RunContext,
    allowed_attrs,
    attr_int,
    check_elements,
    dtype_of,
    op,
    shape_of,
    typed,
    unknown,
)
from lstm_infer.ops.window import Resolved, infer_spatial, padded, resolve, window_attrs
from lstm_infer.tensor_type import TensorType

Ins = list[np.ndarray | None]
_WINDOW_ATTRS = ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides")


def _check_pool(*extra: str):  # noqa: ANN202
    def check(node: Any) -> None:
        allowed_attrs(*_WINDOW_ATTRS, *extra, required=("kernel_shape",))(node)
        w = window_attrs(node, ceil_mode_allowed=True)
        if w.kernel is None or not w.kernel:
            raise ModelFormatError(f"{node.label}: kernel_shape is required")
        if node.op == "MaxPool":
            if attr_int(node, "storage_order", 0) not in (0, 1):
                raise ModelFormatError(f"{node.label}: storage_order must be 0 or 1")
            if len(node.outputs) > 1 and node.outputs[1]:
                raise UnsupportedModelError(f"{node.label}: MaxPool's Indices output")
        if node.op == "AveragePool" and attr_int(node, "count_include_pad", 0) not in (0, 1):
            raise ModelFormatError(f"{node.label}: count_include_pad must be 0 or 1")

    return check


# Geometries resolved per node and input spatial shape (a stream or a service calls with a
# few shapes; resolving the attributes costs about as much as pooling a small map).
_MAX_RESOLVED = 64


def _pool_prepare(node: Any, consts: dict[int, np.ndarray]) -> dict[tuple, Resolved]:
    return {}


def _pooled(
    node: Any, x: np.ndarray, fill: float, combine: Any, resolved: dict | None
) -> tuple[np.ndarray, Resolved]:
    """``x`` padded with ``fill`` and reduced over every window by ``combine`` (np.maximum or
    np.add, applied in place), dim by dim. ``resolved``: the node's geometry cache or None."""
    if x.ndim < 3:
        raise InputError(f"{node.label}: X must be (N, C, *spatial), got shape {x.shape}")
    r = resolved.get(x.shape[2:]) if resolved is not None else None
    if r is None:
        w = window_attrs(node, ceil_mode_allowed=True)
        r = resolve(node, w, x.shape[2:], w.kernel)
        if resolved is not None and len(resolved) < _MAX_RESOLVED:
            resolved[x.shape[2:]] = r
    check_elements(node, (*x.shape[:2], *r.out))
    cur = padded(x, r, fill)
    if cur.dtype == np.float32 and len(r.out) in (1, 2):
        return _pooled_in_c(cur, r, combine is np.add), r
    for d in range(len(r.out)):
        axis, k, s, dil, o = 2 + d, r.kernel[d], r.strides[d], r.dilations[d], r.out[d]
        res = None
        for j in range(k):
            index = [slice(None)] * cur.ndim
            index[axis] = slice(j * dil, j * dil + s * (o - 1) + 1, s)
            plane = cur[tuple(index)]
            if res is None:
                res = np.array(plane)
            else:
                combine(res, plane, out=res)
        cur = res
    return cur, r


def _pooled_in_c(xp: np.ndarray, r: Resolved, is_sum: bool) -> np.ndarray:
    """The pool of padded float32 ``xp`` (N, C, *spatial), 1-D or 2-D, by the engine's kernel."""
    n, c = xp.shape[:2]
    two_d = len(r.out) == 2
    kh, kw = r.kernel if two_d else (1, r.kernel[0])
    sh, sw = r.strides if two_d else (1, r.strides[0])
    dh, dw = r.dilations if two_d else (1, r.dilations[0])
    oh, ow = r.out if two_d else (1, r.out[0])
    y = np.empty((n, c, *r.out), np.float32)
    if y.size == 0:
        return y
    planes = np.ascontiguousarray(xp).reshape(n * c, *xp.shape[2:])
    if not two_d:
        planes = planes[:, None, :]
    _engine.pool2d(planes, kh, kw, sh, sw, dh, dw, y.reshape(n * c, oh, ow), is_sum)
    return y


def _max_pool(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x = ins[0]
    if x.dtype.kind == "f":
        fill = -np.inf
    elif x.dtype.kind in "iu":
        fill = np.iinfo(x.dtype).min
    else:
        raise InputError(f"{node.label}: MaxPool needs a numeric input, got {x.dtype}")
    y, _ = _pooled(node, x, fill, np.maximum, state)
    return [y]


def window_counts(r: Resolved, sizes: tuple, include_pad: bool) -> np.ndarray:
    """Per output position, how many taps the average divides by (outer product over dims)."""
    total = np.ones((), np.int64)
    for i, size in enumerate(sizes):
        lo, hi = (-r.begin[i], size + r.end_declared[i]) if include_pad else (0, size)
        starts = np.arange(r.out[i]) * r.strides[i] - r.begin[i]
        pos = starts[:, None] + np.arange(r.kernel[i])[None, :] * r.dilations[i]
        per_dim = ((pos >= lo) & (pos < hi)).sum(axis=1)
        total = np.multiply.outer(total, per_dim)
    return total


def _average_pool(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x = ins[0]
    if x.dtype.kind != "f":
        raise InputError(f"{node.label}: AveragePool needs a floating-point input, got {x.dtype}")
    y, r = _pooled(node, x, 0.0, np.add, state)
    counts = window_counts(r, x.shape[2:], bool(attr_int(node, "count_include_pad", 0)))
    # A window wholly in the padding (possible with large pads) averages nothing: 0, not NaN.
    y /= np.maximum(counts, 1).astype(x.dtype)
    return [y]


def _global(reduce: str):  # noqa: ANN202
    def run(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
        x = ins[0]
        if x.ndim < 3:
            raise InputError(f"{node.label}: X must be (N, C, *spatial), got shape {x.shape}")
        axes = tuple(range(2, x.ndim))
        if 0 in x.shape[2:]:
            raise InputError(f"{node.label}: an empty spatial dim has no {reduce}")
        if reduce == "mean":
            if x.dtype.kind != "f":
                raise InputError(f"{node.label}: needs a floating-point input, got {x.dtype}")
            return [x.mean(axis=axes, keepdims=True, dtype=x.dtype)]
        return [x.max(axis=axes, keepdims=True)]

    return run


def _pool_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    shape, dtype = shape_of(types[0]), dtype_of(types[0])
    if shape is None:
        return [unknown(dtype)] + [unknown("int64")] * (len(node.outputs) - 1)
    if len(shape) < 3:
        raise ModelFormatError(f"{node.label}: X must be (N, C, *spatial), got shape {shape}")
    w = window_attrs(node, ceil_mode_allowed=True)
    out = infer_spatial(node, shape[2:], lambda sizes: resolve(node, w, sizes, w.kernel).out)
    y = (*shape[:2], *out)
    return [typed(node, dtype, y)] + [typed(node, "int64", y)] * (len(node.outputs) - 1)


def _global_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    shape, dtype = shape_of(types[0]), dtype_of(types[0])
    if shape is None:
        return [unknown(dtype)]
    if len(shape) < 3:
        raise ModelFormatError(f"{node.label}: X must be (N, C, *spatial), got shape {shape}")
    return [typed(node, dtype, (*shape[:2], *([1] * (len(shape) - 2))))]


OPS: dict[str, OpDef] = {
    "MaxPool": op(
        "MaxPool",
        _max_pool,
        outputs=(1, 2),
        check=_check_pool("storage_order"),
        infer=_pool_infer,
        prepare=_pool_prepare,
    ),
    "AveragePool": op(
        "AveragePool",
        _average_pool,
        check=_check_pool("count_include_pad"),
        infer=_pool_infer,
        prepare=_pool_prepare,
    ),
    "GlobalAveragePool": op(
        "GlobalAveragePool", _global("mean"), check=allowed_attrs(), infer=_global_infer
    ),
    "GlobalMaxPool": op(
        "GlobalMaxPool", _global("max"), check=allowed_attrs(), infer=_global_infer
    ),
}
