"""Graph nodes lowered to step program records, one function per op family.

:data:`LOWERINGS` maps an op name to ``lower(ctx, node, state)``: it reads the node's input
buffers and the traced shapes from ``ctx`` (:class:`StepContext`), emits records and binds
its outputs to buffers. A node it cannot lower raises :class:`NotCompiled` naming the node
and why (the stream then runs op by op).

Layout ops (Slice, Transpose, Gather by constant indices, Pad, Expand, Tile, Split,
Squeeze, ...) are lowered by running the op itself once on an array of element indices: the
result says where each output element comes from, and becomes an alias (a contiguous
selection: no work at all), a strided COPY, or a GATHER by an index table. So every layout op
means here exactly what it means in the graph, with no second implementation of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from lstm_infer.cells import CELLS
from lstm_infer.compile.step_buffers import (
    MAX_GATHER,
    MAX_INDEXED,
    MAX_RANK,
    Buf,
    NotCompiled,
    StepContext,
    collapse,
)
from lstm_infer.compile.step_lower_layers import (
    cell,
    conv,
    dense,
    gemm,
    global_pool,
    pool,
    recurrent,
)
from lstm_infer.ops import RunContext, get_op
from lstm_infer.ops.base import attr_float, attr_int, attr_str

UNARY_CODES = {
    "Relu": 1,
    "Sigmoid": 2,
    "Tanh": 3,
    "Exp": 4,
    "Log": 5,
    "Sqrt": 6,
    "Abs": 7,
    "Neg": 8,
    "Reciprocal": 10,
    "LeakyRelu": 11,
    "Elu": 12,
    "Selu": 13,
    "Softplus": 14,
    "HardSigmoid": 15,
    "Erf": 17,
    "Floor": 20,
    "Ceil": 21,
    "Round": 22,
    "Softsign": 24,
}
UNARY_NONE, UNARY_SQUARE, UNARY_CLIP, UNARY_GELU, UNARY_GELU_TANH, UNARY_POW = 0, 9, 16, 18, 19, 23
BINARY_CODES = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3, "Max": 4, "Min": 5, "Pow": 6}
REDUCE_CODES = {
    "ReduceSum": 0,
    "ReduceMean": 1,
    "ReduceMax": 2,
    "ReduceMin": 3,
    "ReduceProd": 4,
    "ReduceL1": 5,
    "ReduceL2": 6,
    "ReduceSumSquare": 7,
    "ReduceLogSumExp": 8,
}
# Ops whose output is a selection of their first input's elements (lowered by indices).
LAYOUT_OPS = (
    "Slice", "Transpose", "Gather", "Pad", "Expand", "Tile", "Split", "Squeeze", "Unsqueeze",
    "Reshape", "Flatten", "GatherElements", "DepthToSpace", "SpaceToDepth",
)  # fmt: skip
_UNARY_PARAMS = {
    "LeakyRelu": lambda n: [attr_float(n, "alpha", 0.01)],
    "Elu": lambda n: [attr_float(n, "alpha", 1.0)],
    "Selu": lambda n: [
        attr_float(n, "alpha", 1.6732632423543772),
        attr_float(n, "gamma", 1.0507009873554805),
    ],
    "HardSigmoid": lambda n: [attr_float(n, "alpha", 0.2), attr_float(n, "beta", 0.5)],
}


# ---- layout: the op run on element indices ---------------------------------------------------


def _place(ctx: StepContext, node: Any, i: int, src: Buf, index: np.ndarray, fill: float) -> None:
    """Output i takes element index[j] of ``src`` (-1: ``fill``): alias, COPY or GATHER."""
    out_shape = tuple(index.shape)
    flat = index.reshape(-1)
    n = flat.size
    if n == 0:
        ctx.out(node, i)
        return
    if flat.min() >= 0:
        start = int(flat[0])
        if np.array_equal(flat, np.arange(start, start + n)):
            ctx.bind(node, i, src.at(start, out_shape))
            return
        strides = _affine_strides(index)
        if strides is not None:
            y = ctx.out(node, i)
            ctx.b.copy(y, src, out_shape, y.strides(), strides, 0, start)
            return
    if n > MAX_GATHER:
        raise NotCompiled(f"{node.label}: a gather of {n} elements")
    y = ctx.out(node, i)
    table = ctx.b.int_table(flat)
    ctx.b.emit("gather", n=[n], f=[float(fill)], a=(src, 0), y=(y, 0), aux=(table, 0))


def _affine_strides(index: np.ndarray) -> tuple[int, ...] | None:
    """Strides s with index[i] == index[0] + sum_d i_d s_d everywhere, if there are such."""
    base = int(index.reshape(-1)[0])
    strides = []
    for d, size in enumerate(index.shape):
        if size == 1:
            strides.append(0)
            continue
        at = [0] * index.ndim
        at[d] = 1
        strides.append(int(index[tuple(at)]) - base)
    if any(s < 0 for s in strides):
        return None
    grid = np.full(index.shape, base, np.int64)
    for d, s in enumerate(strides):
        shape = [1] * index.ndim
        shape[d] = index.shape[d]
        grid = grid + np.arange(index.shape[d], dtype=np.int64).reshape(shape) * s
    return tuple(strides) if np.array_equal(grid, index) else None


def _by_indices(ctx: StepContext, node: Any, state: Any) -> None:
    """A layout op whose first input is the data and whose other inputs are constants."""
    data = node.inputs[0]
    src = ctx.buf(node, data)
    if src.size > MAX_INDEXED:
        raise NotCompiled(f"{node.label}: a layout of {src.size} elements")
    others = []
    for name in node.inputs[1:]:
        if name and ctx.const(name) is None:
            raise NotCompiled(f"{node.label}: input {name!r} is computed at run time")
        others.append(ctx.const(name))
    fill = 0.0
    shift = 0
    if node.op == "Pad" and attr_str(node, "mode", "constant") == "constant":
        # Padded positions come out as 0 - 1 = -1 (the fill), every element index shifted by 1.
        value = others[1] if len(others) > 1 else None
        fill = float(np.asarray(value).reshape(-1)[0]) if value is not None and value.size else 0.0
        if len(others) > 1:
            others[1] = None
        shift = 1
    index = np.arange(shift, src.size + shift, dtype=np.int64).reshape(src.shape)
    outs = get_op(node.op, node).run(RunContext(), node, [index, *others], state)
    for i, (name, value) in enumerate(zip(node.outputs, outs)):
        if name:
            _place(ctx, node, i, src, np.asarray(value, np.int64) - shift, fill)


def _alias(ctx: StepContext, node: Any, state: Any) -> None:
    ctx.bind(node, 0, ctx.buf(node, node.inputs[0]))


def _cast(ctx: StepContext, node: Any, state: Any) -> None:
    if (
        ctx.dtypes.get(node.inputs[0]) != np.float32
        or ctx.dtypes.get(node.outputs[0]) != np.float32
    ):
        raise NotCompiled(f"{node.label}: a cast between types")
    _alias(ctx, node, state)


def _dropout(ctx: StepContext, node: Any, state: Any) -> None:
    if len(node.outputs) > 1 and node.outputs[1]:
        raise NotCompiled(f"{node.label}: Dropout's mask output")
    _alias(ctx, node, state)


def _concat(ctx: StepContext, node: Any, state: Any) -> None:
    y = ctx.out(node)
    axis = attr_int(node, "axis")
    rank = len(y.shape)
    axis %= max(rank, 1)
    outer = math.prod(y.shape[:axis])
    inner = math.prod(y.shape[axis + 1 :])
    total = y.shape[axis] if rank else 1
    start = 0
    for name in node.inputs:
        if not name:
            continue
        x = ctx.buf(node, name)
        width = x.shape[axis] if x.shape else 1
        ctx.b.copy(
            y, x, (outer, width * inner), (total * inner, 1), (width * inner, 1), start * inner, 0
        )
        start += width


# ---- elementwise ---------------------------------------------------------------------------


def _unary(ctx: StepContext, node: Any, code: int, params: list[float]) -> None:
    x = ctx.buf(node, node.inputs[0])
    y = ctx.out(node)
    ctx.b.emit("unary", op=code, n=[y.size], f=params, a=(x, 0), y=(y, 0))


def _lower_unary(ctx: StepContext, node: Any, state: Any) -> None:
    params = _UNARY_PARAMS.get(node.op, lambda n: [])(node)
    _unary(ctx, node, UNARY_CODES[node.op], params)


def _gelu(ctx: StepContext, node: Any, state: Any) -> None:
    approx = attr_str(node, "approximate", "none")
    _unary(ctx, node, UNARY_GELU_TANH if approx == "tanh" else UNARY_GELU, [])


def _clip(ctx: StepContext, node: Any, state: Any) -> None:
    bounds = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        name = node.inputs[i] if len(node.inputs) > i else ""
        if name and ctx.const(name) is None:
            raise NotCompiled(f"{node.label}: a bound computed at run time")
        bounds.append(float(np.asarray(ctx.const(name)).reshape(())) if name else default)
    _unary(ctx, node, UNARY_CLIP, bounds)


def _broadcast_strides(shape: tuple[int, ...], out: tuple[int, ...]) -> tuple[int, ...]:
    padded = (1,) * (len(out) - len(shape)) + tuple(shape)
    strides = Buf(None, 0, padded).strides()
    return tuple(0 if d == 1 and o != 1 else s for d, o, s in zip(padded, out, strides))


def _binary(ctx: StepContext, node: Any, state: Any) -> None:
    a_name, b_name = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else ""
    if node.op in ("Max", "Min") and len([n for n in node.inputs if n]) != 2:
        raise NotCompiled(f"{node.label}: {node.op} of other than two inputs")
    exponent = ctx.const(b_name) if node.op == "Pow" else None
    if exponent is not None and exponent.size == 1 and node.inputs[0] not in ctx.consts:
        e = float(exponent.reshape(-1)[0])
        if ctx.shapes[node.outputs[0]] == ctx.shapes.get(a_name):
            code = {2.0: UNARY_SQUARE, 0.5: UNARY_CODES["Sqrt"], 1.0: UNARY_NONE}.get(e, UNARY_POW)
            _unary(ctx, node, code, [e])
            return
    a, b = ctx.buf(node, a_name), ctx.buf(node, b_name)
    y = ctx.out(node)
    sa = _broadcast_strides(a.shape, y.shape)
    sb = _broadcast_strides(b.shape, y.shape)
    shape, (sy, sa, sb) = collapse(y.shape or (1,), y.strides() or (1,), sa or (0,), sb or (0,))
    if len(shape) > MAX_RANK:
        raise NotCompiled(f"{node.label}: broadcasting over {len(shape)} dims")
    ctx.b.emit(
        "binary",
        op=BINARY_CODES[node.op],
        shape=shape,
        sy=sy,
        sa=sa,
        sb=sb,
        a=(a, 0),
        b=(b, 0),
        y=(y, 0),
    )


# ---- normalisation and reductions ----------------------------------------------------------


def _layernorm(ctx: StepContext, node: Any, state: Any) -> None:
    if len([o for o in node.outputs if o]) > 1:
        raise NotCompiled(f"{node.label}: LayerNormalization's Mean / InvStdDev outputs")
    x = ctx.buf(node, node.inputs[0])
    axis = attr_int(node, "axis", -1) % len(x.shape)
    n = math.prod(x.shape[axis:])
    params = []
    for i in (1, 2):
        name = node.inputs[i] if len(node.inputs) > i else ""
        value = ctx.const(name)
        if name and value is None:
            raise NotCompiled(f"{node.label}: scale or bias computed at run time")
        if value is not None:
            value = np.broadcast_to(value.astype(np.float32), x.shape[axis:]).reshape(-1)
        params.append(None if value is None else (ctx.b.constant(value), 0))
    y = ctx.out(node)
    ctx.b.emit(
        "layernorm",
        n=[x.size // max(n, 1), n],
        f=[attr_float(node, "epsilon", 1e-5)],
        a=(x, 0),
        y=(y, 0),
        aux=params[0],
        aux2=params[1],
    )


def _batchnorm(ctx: StepContext, node: Any, state: Any) -> None:
    """A BatchNormalization left unfolded: y = x * a + c per channel (two BINARY records)."""
    if state is None or len([o for o in node.outputs if o]) > 1:
        raise NotCompiled(f"{node.label}: statistics computed at run time")
    x = ctx.buf(node, node.inputs[0])
    a, c = state
    shape = (1, a.shape[0]) + (1,) * (len(x.shape) - 2)
    y = ctx.out(node)
    for code, v, src in ((BINARY_CODES["Mul"], a, x), (BINARY_CODES["Add"], c, y)):
        vb = ctx.b.constant(np.asarray(v, np.float32).reshape(shape))
        shape_c, (sy, sa, sb) = collapse(
            y.shape, y.strides(), src.strides(), _broadcast_strides(vb.shape, y.shape)
        )
        ctx.b.emit(
            "binary", op=code, shape=shape_c, sy=sy, sa=sa, sb=sb, a=(src, 0), b=(vb, 0), y=(y, 0)
        )


def _reduce(ctx: StepContext, node: Any, state: Any) -> None:
    x = ctx.buf(node, node.inputs[0])
    name = node.inputs[1] if len(node.inputs) > 1 else ""
    if name and ctx.const(name) is None:
        raise NotCompiled(f"{node.label}: axes computed at run time")
    rank = len(x.shape)
    axes_v = ctx.const(name)
    if axes_v is None or axes_v.size == 0:
        if attr_int(node, "noop_with_empty_axes", 0):
            ctx.bind(node, 0, x)
            return
        axes = list(range(rank))
    else:
        axes = sorted({int(a) % rank for a in axes_v.reshape(-1)})
    if axes and axes != list(range(axes[0], axes[-1] + 1)):
        raise NotCompiled(f"{node.label}: reduces over axes {axes} that are not adjacent")
    lo, hi = (axes[0], axes[-1] + 1) if axes else (0, 0)
    outer, n, inner = math.prod(x.shape[:lo]), math.prod(x.shape[lo:hi]), math.prod(x.shape[hi:])
    y = ctx.out(node)
    ctx.b.emit("reduce", op=REDUCE_CODES[node.op], n=[outer, n, inner], a=(x, 0), y=(y, 0))


def _softmax(ctx: StepContext, node: Any, state: Any) -> None:
    x = ctx.buf(node, node.inputs[0])
    rank = len(x.shape)
    if rank == 0 or attr_int(node, "axis", -1) % rank != rank - 1:
        raise NotCompiled(f"{node.label}: a softmax over another axis than the last")
    y = ctx.out(node)
    n = x.shape[-1]
    ctx.b.emit(
        "softmax", op=int(node.op == "LogSoftmax"), n=[x.size // max(n, 1), n], a=(x, 0), y=(y, 0)
    )


# lower(ctx, node, state): the node's records and its outputs' buffers (the module doc).
Lowering = Callable[[StepContext, Any, Any], None]

LOWERINGS: dict[str, Lowering] = {
    **{name: _lower_unary for name in UNARY_CODES},
    **{name: _binary for name in BINARY_CODES},
    **{name: _reduce for name in REDUCE_CODES},
    **{name: _by_indices for name in LAYOUT_OPS},
    "Identity": _alias,
    "Cast": _cast,
    "Dropout": _dropout,
    "Concat": _concat,
    "Gelu": _gelu,
    "Clip": _clip,
    "MatMul": dense,
    "Gemm": gemm,
    "Conv": conv,
    "MaxPool": pool,
    "AveragePool": pool,
    "GlobalAveragePool": global_pool,
    "GlobalMaxPool": global_pool,
    "LayerNormalization": _layernorm,
    "BatchNormalization": _batchnorm,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "RNN": recurrent,
    "LSTM": recurrent,
    "GRU": recurrent,
    **{name: cell for name, kind in CELLS.items() if getattr(kind, "run", None) is None},
}
