"""MatMul and Gemm.

A product by a constant 2-D weight (a Linear layer, a CTC head, a 1x1 convolution lowered to
MatMul) is compiled once into the engine's dense layer (``lstm_infer.dense_head``): all rows
of the input, whatever its leading dims, in one product (packed matvec for few rows, sgemm
for many) under the call's thread budget. Anything else (both operands computed, integer
operands, broadcasting batched weights) goes through numpy's matmul.

A bias Add after such a MatMul is folded into it at load (``lstm_infer.passes.fuse_bias``):
the fused MatMul takes the bias as a third input and carries the internal attribute
``lstm_infer_bias = 1`` (kept by the native format); its product starts from the bias
instead of adding it in a second pass over the output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer._spec import DenseLayer
from lstm_infer.dense_head import CompiledDense, apply_head
from lstm_infer.errors import InputError, ModelFormatError
from lstm_infer.ops.base import (
    OpDef,
    RunContext,
    allowed_attrs,
    attr_float,
    attr_int,
    broadcast,
    dtype_of,
    merge_dim,
    op,
    shape_of,
    typed,
    unknown,
)
from lstm_infer.tensor_type import TensorType

Ins = list[np.ndarray | None]
# A bias folded into the MatMul before it by lstm_infer.passes.fuse_bias (internal attribute).
BIAS_ATTR = "lstm_infer_bias"


def _check_matmul(node: Any) -> None:
    allowed_attrs(BIAS_ATTR)(node)
    fused = BIAS_ATTR in node.attrs
    if fused and attr_int(node, BIAS_ATTR, 0) != 1:
        raise ModelFormatError(f"{node.label}: {BIAS_ATTR} must be 1")
    has_bias = len(node.inputs) > 2 and bool(node.inputs[2])
    if has_bias != fused:
        raise ModelFormatError(
            f"{node.label}: MatMul takes a third input (a bias) only with {BIAS_ATTR} = 1"
        )


def _bias_of(node: Any, b: np.ndarray, c: np.ndarray | None) -> np.ndarray | None:
    """The fused bias ``c`` checked against the weight ``b`` (a vector of its columns)."""
    if c is None:
        return None
    if c.ndim != 1 or b.ndim < 1 or c.shape[0] != b.shape[-1]:
        raise InputError(
            f"{node.label}: the fused bias has shape {c.shape}, expected ({b.shape[-1]},)"
        )
    return c


def _matmul_prepare(node: Any, consts: dict[int, np.ndarray]) -> CompiledDense | None:
    b = consts.get(1)
    if b is None or b.ndim != 2 or b.dtype != np.float32 or 0 in b.shape:
        return None
    bias = None
    if len(node.inputs) > 2 and node.inputs[2]:
        c = consts.get(2)
        if c is None or c.dtype != np.float32:
            return None  # a computed or other-typed bias: the numpy path
        try:
            bias = _bias_of(node, b, c)
        except InputError as exc:  # both constants: the file's fault
            raise ModelFormatError(str(exc)) from None
    return CompiledDense.of(DenseLayer(np.ascontiguousarray(b.T), bias, None))


def _matmul(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    if state is not None and a.dtype == np.float32 and a.ndim >= 1:
        if a.shape[-1] != state.weight.shape[1]:
            raise InputError(
                f"{node.label}: input has {a.shape[-1]} features, the weight takes "
                f"{state.weight.shape[1]}"
            )
        if a.ndim == 1:
            return [apply_head(a[None], [state], ctx.threads)[0]]
        return [apply_head(a, [state], ctx.threads)]
    if a.ndim == 0 or b.ndim == 0:
        raise InputError(f"{node.label}: MatMul needs operands of rank >= 1")
    c = _bias_of(node, b, c)
    try:
        y = np.matmul(a, b)
    except ValueError as exc:
        raise InputError(f"{node.label}: shapes {a.shape} @ {b.shape}: {exc}") from None
    return [y if c is None else (y + c).astype(y.dtype, copy=False)]


def _gemm_prepare(node: Any, consts: dict[int, np.ndarray]) -> CompiledDense | None:
    b, c = consts.get(1), consts.get(2)
    if b is None or b.ndim != 2 or b.dtype != np.float32 or attr_int(node, "transA", 0):
        return None
    alpha, beta = attr_float(node, "alpha", 1.0), attr_float(node, "beta", 1.0)
    weight = b if attr_int(node, "transB", 0) else b.T  # (N, K)
    n = weight.shape[0]
    bias = None
    if len(node.inputs) > 2 and node.inputs[2]:
        if c is None or c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1) or c.ndim > 2:
            return None  # a computed or 2-D C: the numpy path
        bias = np.broadcast_to(c.reshape(-1), (n,)).astype(np.float32) * np.float32(beta)
    w = np.ascontiguousarray(weight * np.float32(alpha), np.float32)
    return CompiledDense.of(DenseLayer(w, bias, None))


def _gemm(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    if a.ndim != 2 or b.ndim != 2:
        raise InputError(f"{node.label}: Gemm takes 2-D A and B, got {a.shape} and {b.shape}")
    if state is not None and a.dtype == np.float32:
        if a.shape[1] != state.weight.shape[1]:
            raise InputError(
                f"{node.label}: A has {a.shape[1]} columns, B takes {state.weight.shape[1]}"
            )
        return [apply_head(a, [state], ctx.threads)]
    if attr_int(node, "transA", 0):
        a = a.T
    if attr_int(node, "transB", 0):
        b = b.T
    if a.shape[1] != b.shape[0]:
        raise InputError(f"{node.label}: A' {a.shape} and B' {b.shape} do not multiply")
    y = a @ b
    alpha, beta = attr_float(node, "alpha", 1.0), attr_float(node, "beta", 1.0)
    if alpha != 1.0:
        y = y * y.dtype.type(alpha)
    if c is not None:
        try:
            y = y + c.astype(y.dtype) * y.dtype.type(beta)
        except ValueError:
            raise InputError(f"{node.label}: C {c.shape} does not broadcast to {y.shape}") from None
    return [np.asarray(y, dtype=a.dtype)]


def matmul_type(node: Any, a: TensorType | None, b: TensorType | None, dtype: str) -> TensorType:
    """numpy matmul's result type of symbolic shapes (1-D operands promoted and dropped)."""
    sa, sb = shape_of(a), shape_of(b)
    if sa is None or sb is None:
        return unknown(dtype)
    if not sa or not sb:
        raise ModelFormatError(f"{node.label}: MatMul needs operands of rank >= 1")
    xa = (1, *sa) if len(sa) == 1 else sa
    xb = (*sb, 1) if len(sb) == 1 else sb
    merge_dim(node, [xa[-1], xb[-2]], "contracted dims")
    batch = broadcast(node, [xa[:-2], xb[:-2]])
    out = (*batch, *((xa[-2],) if len(sa) > 1 else ()), *((xb[-1],) if len(sb) > 1 else ()))
    return typed(node, dtype, out)


def _matmul_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    return [matmul_type(node, types[0], types[1], dtype_of(types[0]))]


def _gemm_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    sa, sb = shape_of(types[0]), shape_of(types[1])
    dtype = dtype_of(types[0])
    if sa is None or sb is None:
        return [typed(node, dtype, (None, None))]
    if len(sa) != 2 or len(sb) != 2:
        raise ModelFormatError(f"{node.label}: Gemm takes 2-D A and B, got {sa} and {sb}")
    if attr_int(node, "transA", 0):
        sa = sa[::-1]
    if attr_int(node, "transB", 0):
        sb = sb[::-1]
    merge_dim(node, [sa[1], sb[0]], "contracted dims")
    return [typed(node, dtype, (sa[0], sb[1]))]


OPS: dict[str, OpDef] = {
    "MatMul": op(
        "MatMul",
        _matmul,
        inputs=(2, 3),
        check=_check_matmul,
        prepare=_matmul_prepare,
        infer=_matmul_infer,
    ),
    "Gemm": op(
        "Gemm",
        _gemm,
        inputs=(2, 3),
        check=allowed_attrs("alpha", "beta", "transA", "transB"),
        prepare=_gemm_prepare,
        infer=_gemm_infer,
    ),
}
