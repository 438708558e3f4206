"""Reductions over axes: the Reduce* family, ArgMax / ArgMin, Softmax / LogSoftmax / Hardmax.

Newest-opset semantics: Reduce* take ``axes`` as an optional input (importers move older
opsets' attribute there), ``keepdims`` (default 1) and ``noop_with_empty_axes`` (no axes: all
of them, or the identity when set). A reduction over no elements gives the operator's identity
(0 for sums, 1 for products, -inf / +inf for max / min, as the spec says; the integer extremes
for integer inputs); ArgMax / ArgMin over an empty axis are refused.

Softmax and LogSoftmax of float32 run through the engine's one-kernel-per-row softmax
(``_engine.softmax_rows``) after moving the axis last; other float dtypes through numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer import _engine
from lstm_infer.errors import InputError, ModelFormatError
from lstm_infer.ops.base import (
    OpDef,
    RunContext,
    allowed_attrs,
    attr_int,
    const_ints,
    dtype_of,
    infer_axis,
    int_values,
    normalize_axis,
    op,
    same_as_input,
    shape_of,
    typed,
    unknown,
    vector_length,
)
from lstm_infer.tensor_type import TensorType

Ins = list[np.ndarray | None]


def _reduce_axes(node: Any, x: np.ndarray, ins: Ins) -> tuple[int, ...] | None:
    """The reduced axes; None for the identity (no axes with noop_with_empty_axes)."""
    axes = int_values(node, ins[1] if len(ins) > 1 else None, "axes")
    if not axes:
        return None if attr_int(node, "noop_with_empty_axes", 0) else tuple(range(x.ndim))
    norm = tuple(sorted({normalize_axis(node, a, x.ndim) for a in axes}))
    if len(norm) != len(axes):
        raise InputError(f"{node.label}: axes {axes} repeat an axis")
    return norm


def _extreme(x: np.ndarray, low: bool) -> Any:
    if x.dtype.kind == "f":
        return -np.inf if low else np.inf
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        return info.min if low else info.max
    return not low  # bool: max over nothing is False, min is True


def _reduction(kind: str):  # noqa: ANN202
    def run(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
        x = ins[0]
        if x.dtype.kind not in "fiub" or (x.dtype.kind == "b" and kind not in ("max", "min")):
            raise InputError(f"{node.label}: needs a numeric input, got {x.dtype}")
        axes = _reduce_axes(node, x, ins)
        if axes is None:
            return [x.copy()]
        keep = bool(attr_int(node, "keepdims", 1))
        empty = any(x.shape[a] == 0 for a in axes)
        if kind in ("max", "min") and empty:
            shape = [1 if a in axes else d for a, d in enumerate(x.shape)]
            y = np.full(shape, _extreme(x, kind == "max"), x.dtype)
            return [y if keep else y.reshape([d for a, d in enumerate(x.shape) if a not in axes])]
        if kind == "max":
            y = x.max(axis=axes, keepdims=keep)
        elif kind == "min":
            y = x.min(axis=axes, keepdims=keep)
        elif kind == "sum":
            y = x.sum(axis=axes, keepdims=keep, dtype=x.dtype)
        elif kind == "mean":
            if x.dtype.kind != "f":
                y = (x.sum(axis=axes, keepdims=keep) // max(1, _count(x, axes))).astype(x.dtype)
            else:
                y = x.mean(axis=axes, keepdims=keep, dtype=x.dtype)
        elif kind == "prod":
            y = x.prod(axis=axes, keepdims=keep, dtype=x.dtype)
        elif kind == "sum_square":
            y = (x * x).sum(axis=axes, keepdims=keep, dtype=x.dtype)
        elif kind == "l1":
            y = np.abs(x).sum(axis=axes, keepdims=keep, dtype=x.dtype)
        elif kind == "l2":
            y = np.sqrt((x * x).sum(axis=axes, keepdims=keep, dtype=x.dtype))
        elif kind == "log_sum":
            y = np.log(x.sum(axis=axes, keepdims=keep, dtype=x.dtype))
        else:  # log_sum_exp, shifted by the max so large inputs do not overflow
            if empty:
                y = np.log(x.sum(axis=axes, keepdims=keep, dtype=x.dtype))
            else:
                m = x.max(axis=axes, keepdims=True)
                m = np.where(np.isfinite(m), m, 0).astype(x.dtype)
                s = np.exp(x - m).sum(axis=axes, keepdims=True, dtype=x.dtype)
                y = np.log(s) + m
                if not keep:
                    y = y.reshape([d for a, d in enumerate(x.shape) if a not in axes])
        return [np.asarray(y, dtype=x.dtype)]

    return run


def _count(x: np.ndarray, axes: tuple[int, ...]) -> int:
    n = 1
    for a in axes:
        n *= x.shape[a]
    return n


def _arg(kind: str):  # noqa: ANN202
    def run(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
        x = ins[0]
        if x.dtype.kind not in "fiub":
            raise InputError(f"{node.label}: needs a numeric input, got {x.dtype}")
        if x.ndim == 0:
            return [np.zeros((), np.int64)]
        axis = normalize_axis(node, attr_int(node, "axis", 0), x.ndim)
        if x.shape[axis] == 0:
            raise InputError(f"{node.label}: {kind} over an empty axis")
        pick = np.argmax if kind == "ArgMax" else np.argmin
        if attr_int(node, "select_last_index", 0):
            flipped = np.flip(x, axis)
            idx = x.shape[axis] - 1 - pick(flipped, axis=axis)
        else:
            idx = pick(x, axis=axis)
        idx = idx.astype(np.int64)
        if attr_int(node, "keepdims", 1):
            idx = np.expand_dims(idx, axis)
        return [idx]

    return run


def _hardmax(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x = ins[0]
    if x.dtype.kind != "f":
        raise InputError(f"{node.label}: needs a floating-point input, got {x.dtype}")
    if x.ndim == 0:
        return [np.ones_like(x)]
    axis = normalize_axis(node, attr_int(node, "axis", -1), x.ndim)
    y = np.zeros_like(x)
    if x.shape[axis]:
        idx = np.expand_dims(np.argmax(x, axis=axis), axis)
        np.put_along_axis(y, idx, 1, axis=axis)
    return [y]


_REDUCE_KINDS = {
    "ReduceMax": "max", "ReduceMin": "min", "ReduceSum": "sum", "ReduceMean": "mean",
    "ReduceProd": "prod", "ReduceSumSquare": "sum_square", "ReduceL1": "l1", "ReduceL2": "l2",
    "ReduceLogSum": "log_sum", "ReduceLogSumExp": "log_sum_exp",
}  # fmt: skip


def _softmax(log: bool):  # noqa: ANN202
    def run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
        x = ins[0]
        if x.dtype.kind != "f":
            raise InputError(f"{node.label}: needs a floating-point input, got {x.dtype}")
        if x.ndim == 0:
            return [np.zeros_like(x) if log else np.ones_like(x)]
        axis = normalize_axis(node, attr_int(node, "axis", -1), x.ndim)
        moved = np.moveaxis(x, axis, -1)
        if x.dtype == np.float32:
            y = np.array(moved, dtype=np.float32, order="C")
            _engine.softmax_rows(y, log)
        else:
            m = moved.max(axis=-1, keepdims=True)
            shifted = moved - m
            lse = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
            y = shifted - lse if log else np.exp(shifted - lse)
        return [np.ascontiguousarray(np.moveaxis(y, -1, axis))]

    return run


def _reduce_infer(node: Any, types: Ins, consts: dict) -> list[TensorType]:
    dtype, shape = dtype_of(types[0]), shape_of(types[0])
    keep = bool(attr_int(node, "keepdims", 1))
    has_axes = len(node.inputs) > 1 and bool(node.inputs[1])
    axes = const_ints(node, consts, 1, "axes") if has_axes else []
    if shape is None:
        return [unknown(dtype)]
    if axes is None:  # computed axes: the rank alone, where it is known
        n = vector_length(types[1])
        if n == 0 and attr_int(node, "noop_with_empty_axes", 0):
            return [typed(node, dtype, shape)]
        if keep:
            return [typed(node, dtype, (None,) * len(shape))]
        return [typed(node, dtype, None if n in (None, 0) else (None,) * (len(shape) - n))]
    if not axes:
        if attr_int(node, "noop_with_empty_axes", 0):
            return [typed(node, dtype, shape)]
        cut = set(range(len(shape)))
    else:
        cut = {infer_axis(node, a, len(shape)) for a in axes}
        if len(cut) != len(axes):
            raise ModelFormatError(f"{node.label}: axes {axes} repeat an axis")
    out = [1 if i in cut else d for i, d in enumerate(shape) if keep or i not in cut]
    return [typed(node, dtype, out)]


def _arg_infer(node: Any, types: Ins, consts: dict) -> list[TensorType]:
    shape = shape_of(types[0])
    if shape is None:
        return [unknown("int64")]
    if not shape:
        return [typed(node, "int64", ())]
    axis = infer_axis(node, attr_int(node, "axis", 0), len(shape))
    keep = attr_int(node, "keepdims", 1)
    out = [1 if i == axis else d for i, d in enumerate(shape) if keep or i != axis]
    return [typed(node, "int64", out)]


OPS: dict[str, OpDef] = {
    **{
        name: op(
            name,
            _reduction(kind),
            inputs=(1, 2),
            check=allowed_attrs("keepdims", "noop_with_empty_axes"),
            infer=_reduce_infer,
        )
        for name, kind in _REDUCE_KINDS.items()
    },
    "ArgMax": op(
        "ArgMax",
        _arg("ArgMax"),
        check=allowed_attrs("axis", "keepdims", "select_last_index"),
        infer=_arg_infer,
    ),
    "ArgMin": op(
        "ArgMin",
        _arg("ArgMin"),
        check=allowed_attrs("axis", "keepdims", "select_last_index"),
        infer=_arg_infer,
    ),
    "Hardmax": op("Hardmax", _hardmax, check=allowed_attrs("axis"), infer=same_as_input()),
    "Softmax": op("Softmax", _softmax(False), check=allowed_attrs("axis"), infer=same_as_input()),
    "LogSoftmax": op(
        "LogSoftmax", _softmax(True), check=allowed_attrs("axis"), infer=same_as_input()
    ),
}
