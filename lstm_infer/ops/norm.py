"""Normalisation: BatchNormalization (inference), LayerNormalization, InstanceNormalization.

``BatchNormalization``: ``y = (x - mean) / sqrt(var + eps) * scale + B`` over channel axis 1,
with the running statistics as inputs. At load it becomes one multiply-add per channel
(``y = x * a + c``) and, after a Conv or Gemm with constant weights, disappears into them
(``lstm_infer.passes.fold_batchnorm``). ``training_mode=1`` is refused: inference only.

``LayerNormalization``: over the axes from ``axis`` on, ``y = (x - mean) / sqrt(var + eps)
* Scale + B`` (biased variance); the optional Mean and InvStdDev outputs are the statistics
with the normalised axes kept as size 1. ``InstanceNormalization``: the same over the spatial
axes of each (n, c), with per-channel scale and bias. float16 and float32 inputs are
normalised in float32 (float64 in float64): one pass for the mean, one for the centred
variance, as onnxruntime does. A float32 LayerNormalization whose statistics are not asked
for runs on the engine's row kernel (``lstm_infer._engine.layernorm_rows``, the step
programs' too): numpy's passes took 4x onnxruntime's time on a (100, 8, 256) input.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lstm_infer import _engine
from lstm_infer.errors import InputError, ModelFormatError, UnsupportedModelError
from lstm_infer.ops.base import (
    OpDef,
    RunContext,
    allowed_attrs,
    attr_float,
    attr_int,
    dtype_of,
    infer_axis,
    normalize_axis,
    op,
    same_as_input,
    shape_of,
    typed,
)
from lstm_infer.tensor_type import TensorType

Ins = list[np.ndarray | None]


def _float_input(node: Any, x: np.ndarray) -> None:
    if x.dtype.kind != "f":
        raise InputError(f"{node.label}: needs a floating-point input, got {x.dtype}")


def _channel_vector(node: Any, name: str, v: np.ndarray, c: int) -> np.ndarray:
    if v.shape != (c,):
        raise InputError(f"{node.label}: {name} has shape {v.shape}, expected ({c},)")
    return v


# ---- BatchNormalization ------------------------------------------------------------------


def _check_batchnorm(node: Any) -> None:
    allowed_attrs("epsilon", "momentum", "training_mode")(node)
    if attr_int(node, "training_mode", 0):
        raise UnsupportedModelError(f"{node.label}: training_mode=1 (inference only)")
    if len([o for o in node.outputs if o]) > 1:
        raise UnsupportedModelError(f"{node.label}: running-statistics outputs (training)")
    if attr_float(node, "epsilon", 1e-5) < 0:
        raise ModelFormatError(f"{node.label}: epsilon must be >= 0")


def batchnorm_affine(
    node: Any, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel (a, c) of ``y = x * a + c`` in float64 (folding rounds once)."""
    c = scale.shape[0] if scale.ndim == 1 else -1
    for name, v in (("scale", scale), ("B", bias), ("mean", mean), ("var", var)):
        _channel_vector(node, name, v, c)
    eps = attr_float(node, "epsilon", 1e-5)
    a = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    return a, bias.astype(np.float64) - mean.astype(np.float64) * a


def _batchnorm_prepare(node: Any, consts: dict[int, np.ndarray]) -> Any:
    if not all(i in consts for i in (1, 2, 3, 4)):
        return None
    return batchnorm_affine(node, *(consts[i] for i in (1, 2, 3, 4)))


def _batchnorm(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x = ins[0]
    _float_input(node, x)
    if x.ndim < 2:
        raise InputError(f"{node.label}: X must be (N, C, ...), got shape {x.shape}")
    a, c = state if state is not None else batchnorm_affine(node, *ins[1:5])
    if a.shape != (x.shape[1],):
        raise InputError(f"{node.label}: {a.shape[0]} channels of statistics, X has {x.shape[1]}")
    shape = (x.shape[1], *([1] * (x.ndim - 2)))
    y = x * a.astype(x.dtype).reshape(shape)
    y += c.astype(x.dtype).reshape(shape)
    return [y]


# ---- LayerNormalization / InstanceNormalization ------------------------------------------


def _normalise(x: np.ndarray, axes: tuple[int, ...], eps: float) -> tuple[np.ndarray, ...]:
    """(x - mean) * inv_std, mean and inv_std (kept dims) over the trailing ``axes``, in
    float32 (float64 for float64).

    Two passes over the input: numpy's pairwise mean, then the centred squares summed by one
    contraction (float32 error ~1e-6 relative for rows of thousands of features, far below
    the tests' 1e-5; the float64 statistics measured 10x slower on a (100, 8, 256) input).
    """
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    x = x.astype(dtype, copy=False)
    mean = x.mean(axis=axes, keepdims=True, dtype=dtype)
    centred = x - mean
    count = 1
    for a in axes:
        count *= x.shape[a]
    # The normalised axes are always the trailing ones (LayerNorm's from ``axis``,
    # InstanceNorm's spatial ones): each row's squares are one contiguous contraction.
    flat = centred.reshape(*centred.shape[: axes[0]], -1)
    sq = np.einsum("...i,...i->...", flat, flat).reshape(mean.shape)
    inv_std = (1.0 / np.sqrt(sq / dtype(max(count, 1)) + dtype(eps))).astype(dtype)
    centred *= inv_std
    return centred, mean, inv_std


def _check_layernorm(node: Any) -> None:
    allowed_attrs("axis", "epsilon", "stash_type")(node)
    if attr_int(node, "stash_type", 1) not in (1,):
        raise UnsupportedModelError(f"{node.label}: stash_type other than 1 (float32)")


def _row_vector(v: np.ndarray | None, dims: tuple[int, ...]) -> np.ndarray | None:
    """Scale or B broadcast to the normalised dims, as one contiguous float32 row."""
    if v is None:
        return None
    return np.ascontiguousarray(np.broadcast_to(v, dims), np.float32).reshape(-1)


def _layernorm(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    _float_input(node, x)
    if x.ndim == 0:
        raise InputError(f"{node.label}: X must have rank >= 1")
    axis = normalize_axis(node, attr_int(node, "axis", -1), x.ndim)
    axes = tuple(range(axis, x.ndim))
    dims = x.shape[axis:]
    for name, v in (("Scale", scale), ("B", bias)):
        if v is not None:
            try:
                np.broadcast_shapes(v.shape, dims)
            except (ValueError, RuntimeError):  # RuntimeError: a rank past numpy's 32
                raise InputError(
                    f"{node.label}: {name} of shape {v.shape} does not broadcast to the "
                    f"normalised dims {dims}"
                ) from None
            if len(v.shape) > x.ndim - axis:
                raise InputError(f"{node.label}: {name} has more dims than the normalised axes")
    wants_stats = any(node.outputs[1:])
    if x.dtype == np.float32 and not wants_stats and x.size:
        rows = state.get(dims) if state is not None else None
        if rows is None:
            rows = (_row_vector(scale, dims), _row_vector(bias, dims))
            if state is not None and len(state) < _MAX_ROW_VECTORS:
                state[dims] = rows
        flat = np.ascontiguousarray(x).reshape(-1, math.prod(dims))
        y = np.empty_like(flat)
        _engine.layernorm_rows(flat, y, attr_float(node, "epsilon", 1e-5), *rows)
        return [y.reshape(x.shape)]
    norm, mean, inv_std = _normalise(x, axes, attr_float(node, "epsilon", 1e-5))
    norm *= scale.astype(norm.dtype, copy=False)
    if bias is not None:
        norm += bias.astype(norm.dtype, copy=False)
    outs = [norm.astype(x.dtype, copy=False)]
    stat_dtype = np.float32 if x.dtype != np.float64 else np.float64
    outs += [mean.astype(stat_dtype), inv_std.astype(stat_dtype)]
    return outs[: len(node.outputs)]


# Scale / B rows kept per normalised shape (constants only: prepared at load).
_MAX_ROW_VECTORS = 8


def _layernorm_prepare(node: Any, consts: dict[int, np.ndarray]) -> dict | None:
    """A cache of Scale / B broadcast rows, where both are constants (a stream's calls all
    normalise the same dims; broadcasting them costs as much as a small layer norm)."""
    has_bias = len(node.inputs) > 2 and bool(node.inputs[2])
    if 1 not in consts or (has_bias and 2 not in consts):
        return None
    return {}


def _instancenorm(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x, scale, bias = ins
    _float_input(node, x)
    if x.ndim < 3:
        raise InputError(f"{node.label}: X must be (N, C, *spatial), got shape {x.shape}")
    c = x.shape[1]
    _channel_vector(node, "scale", scale, c)
    _channel_vector(node, "B", bias, c)
    norm, _, _ = _normalise(x, tuple(range(2, x.ndim)), attr_float(node, "epsilon", 1e-5))
    shape = (c, *([1] * (x.ndim - 2)))
    y = norm * scale.reshape(shape) + bias.reshape(shape)
    return [y.astype(x.dtype)]


def _batchnorm_infer(node: Any, types: Ins, consts: dict) -> list[TensorType]:
    y = typed(node, dtype_of(types[0]), shape_of(types[0]))
    stat = typed(node, dtype_of(types[3]), shape_of(types[3]))
    return [y, stat, stat][: len(node.outputs)]


def _layernorm_infer(node: Any, types: Ins, consts: dict) -> list[TensorType]:
    dtype, shape = dtype_of(types[0]), shape_of(types[0])
    stat_dtype = "float64" if dtype == "float64" else "float32"
    if shape is None:
        stats = [typed(node, stat_dtype, None)] * 2
    else:
        if not shape:
            raise ModelFormatError(f"{node.label}: X must have rank >= 1")
        axis = infer_axis(node, attr_int(node, "axis", -1), len(shape))
        stats = [typed(node, stat_dtype, (*shape[:axis], *([1] * (len(shape) - axis))))] * 2
    return [typed(node, dtype, shape), *stats][: len(node.outputs)]


OPS: dict[str, OpDef] = {
    "BatchNormalization": op(
        "BatchNormalization",
        _batchnorm,
        inputs=(5, 5),
        outputs=(1, 3),
        check=_check_batchnorm,
        prepare=_batchnorm_prepare,
        infer=_batchnorm_infer,
    ),
    "LayerNormalization": op(
        "LayerNormalization",
        _layernorm,
        inputs=(2, 3),
        outputs=(1, 3),
        check=_check_layernorm,
        infer=_layernorm_infer,
        prepare=_layernorm_prepare,
    ),
    "InstanceNormalization": op(
        "InstanceNormalization",
        _instancenorm,
        inputs=(3, 3),
        check=allowed_attrs("epsilon"),
        infer=same_as_input(),
    ),
}
