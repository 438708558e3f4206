"""Conv and ConvTranspose (1-D, 2-D, 3-D; groups, strides, dilations, pads, auto_pad).

Conv: ``y[n, m, o] = b[m] + sum_{c in group(m), j} w[m, c, j] * xpad[n, c, o * s + j * d]``.
It runs as im2col + GEMM: the windows of each batch entry (a strided view, no copy) are
copied a block of output positions at a time into a matrix of ``C/group * prod(kernel)``
values per position, and one sgemm per block and group multiplies the (M, C/group * K)
weight by it straight into the channels-first output (the product's rows are the output's
channel rows: no transpose afterwards).
A 1x1 convolution without stride or padding skips the copy (its input already is the
matrix). Depthwise convolutions (one input channel per group) are a few shifted
multiply-adds per kernel tap instead of ``C`` tiny products. BatchNormalization after a
Conv is folded into its weights at load (``lstm_infer.passes.fold_batchnorm``).

ConvTranspose: every input position scatters ``w[c, m, j] * x[n, c, i]`` to output position
``i * s + j * d - pad_begin``. One GEMM per group gives all (position, tap) products, then a
loop over the kernel taps (not over positions) adds each tap's plane into the output at its
stride.

float32 runs on the engine's BLAS (``lstm_infer._blas``, governed by ``threads=``);
float16 computes in float32 and rounds once; float64 goes through numpy in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lstm_infer import _blas, _engine
from lstm_infer.errors import InputError, ModelFormatError, UnsupportedModelError
from lstm_infer.ops.base import (
    OpDef,
    RunContext,
    allowed_attrs,
    attr_int,
    attr_ints,
    attr_str,
    check_elements,
    dtype_of,
    merge_dim,
    op,
    shape_of,
    typed,
    unknown,
)
from lstm_infer.ops.window import (
    Resolved,
    infer_spatial,
    padded,
    resolve,
    window_attrs,
    window_view,
)
from lstm_infer.tensor_type import TensorType

Ins = list[np.ndarray | None]
_WINDOW_ATTRS = ("auto_pad", "dilations", "kernel_shape", "pads", "strides")
# An activation fused into the Conv by lstm_infer.passes.fuse_activation (internal attribute).
ACTIVATION_ATTR = "lstm_infer_activation"
# The im2col block by position: about this many floats of copied windows per GEMM (1 MB),
# so the block is still in cache when the product reads it. By tap: batch entries are
# copied together (one batched product) up to this many floats (16 MB).
_BLOCK_FLOATS = 1 << 18
_BATCH_FLOATS = 1 << 22
# The direct kernel's register tile spans 64 (AVX-512) or 16 (AVX2) positions of an output
# row; rows narrower than this waste most of it (a (1, 129, 4) silero conv took 195 us
# direct against ~10 us as one small sgemm; on Zen 4 a 48 -> 192 channel 3x3 over 16 x 40
# 3.0 ms against 1.2 ms), so they go through im2col + sgemm.
DIRECT_ROW_MIN_WIDTH = 64  # (step programs lower by the same rule)


def _check_conv(node: Any) -> None:
    allowed_attrs(*_WINDOW_ATTRS, "group", ACTIVATION_ATTR)(node)
    window_attrs(node)
    fused = attr_str(node, ACTIVATION_ATTR)
    if fused is not None and fused != "Relu":
        raise UnsupportedModelError(f"{node.label}: fused activation {fused!r}")
    if attr_int(node, "group", 1) < 1:
        raise ModelFormatError(f"{node.label}: group must be >= 1")


def check_window_conv(node: Any) -> None:
    """Conv's window attributes (kernel_shape, strides, dilations, pads, auto_pad, group)
    checked for another op that takes them (ConvInteger)."""
    allowed_attrs(*_WINDOW_ATTRS, "group")(node)
    window_attrs(node)
    if attr_int(node, "group", 1) < 1:
        raise ModelFormatError(f"{node.label}: group must be >= 1")


def conv_values(
    ctx: RunContext, node: Any, x: np.ndarray, w: np.ndarray, weights: Any = None
) -> np.ndarray:
    """Conv of float x by float w (no bias) with node's window attributes: the op's own
    computation, for ops defined in its terms (ConvInteger). ``weights``: w prepared by
    :func:`conv_weights` (its packing and resolved geometry reused)."""
    return _conv(ctx, node, [x, w], weights)[0]


def conv_weights(node: Any, w: np.ndarray) -> Any:
    """A float32 weight (M, C/group, *kernel) prepared as Conv's prepare does (im2col rows,
    the direct kernel's packing), for :func:`conv_values`."""
    return _conv_weights(node, w, None, np.float32)


def _compute_dtype(node: Any, x: np.ndarray, w: np.ndarray) -> np.dtype:
    if x.dtype.kind != "f" or x.dtype != w.dtype:
        raise InputError(f"{node.label}: X ({x.dtype}) and W ({w.dtype}) must be one float type")
    return np.dtype(np.float64) if x.dtype == np.float64 else np.dtype(np.float32)


def _product(a: np.ndarray, b: np.ndarray, out: np.ndarray, trans_b: bool = False) -> None:
    """out = a @ op(b) in out's dtype (float32 on the engine's BLAS)."""
    if out.dtype == np.float32:
        _blas.gemm(a, b, out, False, trans_b)
    else:
        np.matmul(a, b.T if trans_b else b, out=out)


# ---- Conv ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ConvWeights:
    """A constant weight (and bias) in the compute dtype, as (M, C/group * K) rows."""

    w: np.ndarray  # (M, Cg, *kernel)
    rows: np.ndarray  # (M, Cg * K)
    bias: np.ndarray | None  # (M,)
    packed: list[np.ndarray] | None = None  # per group, the direct kernel's layout (float32)
    # The geometry resolved per input shape: a stream or a service calls with the same few
    # shapes, and resolving the attributes costs more than a small convolution (~40 us).
    resolved: dict[tuple[int, ...], Resolved] = field(default_factory=dict)


def _conv_weights(node: Any, w: np.ndarray, b: np.ndarray | None, dtype: Any) -> _ConvWeights:
    if w.ndim < 3:
        raise InputError(f"{node.label}: W must be (M, C/group, *kernel), got shape {w.shape}")
    w = np.ascontiguousarray(w, dtype=dtype)
    if b is not None:
        if b.shape != (w.shape[0],):
            raise InputError(f"{node.label}: B has shape {b.shape}, expected ({w.shape[0]},)")
        b = np.ascontiguousarray(b, dtype=dtype)
    rows = w.reshape(w.shape[0], -1)
    packed = None
    group = attr_int(node, "group", 1)
    if dtype == np.float32 and w.ndim in (3, 4) and w.shape[0] % group == 0:
        mg = w.shape[0] // group
        packed = [_pack_direct(rows[g * mg : (g + 1) * mg]) for g in range(group)]
    return _ConvWeights(w, rows, b, packed)


def _pack_direct(rows: np.ndarray) -> np.ndarray:
    """(M, K) weight rows in the direct kernel's layout [ceil(M/MR)][K][MR], zero past M."""
    m, k = rows.shape
    mr = _engine.CONV_MR
    tiles = -(-m // mr)
    padded_rows = np.zeros((tiles * mr, k), np.float32)
    padded_rows[:m] = rows
    return np.ascontiguousarray(padded_rows.reshape(tiles, mr, k).transpose(0, 2, 1))


def _conv_prepare(node: Any, consts: dict[int, np.ndarray]) -> _ConvWeights | None:
    w = consts.get(1)
    has_bias = len(node.inputs) > 2 and bool(node.inputs[2])
    if w is None or w.dtype.kind != "f" or (has_bias and 2 not in consts):
        return None
    dtype = np.float64 if w.dtype == np.float64 else np.float32
    return _conv_weights(node, w, consts.get(2) if has_bias else None, dtype)


def _conv(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    if x.ndim < 3:
        raise InputError(f"{node.label}: X must be (N, C, *spatial), got shape {x.shape}")
    dtype = _compute_dtype(node, x, w)
    cw: _ConvWeights = state if state is not None else _conv_weights(node, w, b, dtype)
    if cw.w.ndim != x.ndim:
        raise InputError(f"{node.label}: X is {x.ndim}-D but W is {cw.w.ndim}-D")
    group = attr_int(node, "group", 1)
    relu = attr_str(node, ACTIVATION_ATTR) == "Relu"
    n, c = x.shape[:2]
    m, cg = cw.w.shape[:2]
    if c != cg * group or m % group:
        raise InputError(
            f"{node.label}: X has {c} channels, W {cg} per group x {group} groups and {m} outputs"
        )
    r = cw.resolved.get(x.shape)
    if r is None:
        r = resolve(node, window_attrs(node), x.shape[2:], cw.w.shape[2:])
        if state is not None and len(cw.resolved) < 64:
            cw.resolved[x.shape] = r
    check_elements(node, (n, m, *r.out))
    out_dtype = x.dtype
    x = np.asarray(x, dtype=dtype)
    y = np.empty((n, m, *r.out), dtype)
    taps = math.prod(r.kernel)
    if group == c and cg == 1 and group > 1:
        _depthwise(padded(x, r), r, cw.w, y)
    elif taps == 1 and all(s == 1 for s in r.strides) and x.shape[2:] == r.out:
        # A pointwise conv: the input's (C, L) rows already are the matrix, y[n] = W @ x[n].
        _grouped_product(cw.rows, np.ascontiguousarray(x).reshape(n, c, -1), y, group, False)
    elif (
        cw.packed is not None
        and r.strides[-1] == 1
        and len(r.out) in (1, 2)
        and r.out[-1] >= DIRECT_ROW_MIN_WIDTH
    ):
        _conv_direct(padded(x, r), r, cw, group, y, relu)  # adds the bias, clamps itself
        return [y.astype(out_dtype, copy=False)]
    elif r.strides[-1] != 1 or r.kernel[-1] >= r.out[-1]:
        _conv_by_position(padded(x, r), r, cw, group, y)
    else:
        _conv_by_tap(x, r, cw, group, y)
    if cw.bias is not None:
        y += cw.bias.reshape(m, *([1] * len(r.out)))
    if relu:
        np.maximum(y, 0, out=y)
    return [y.astype(out_dtype, copy=False)]


def _grouped_product(
    rows: np.ndarray, cols: np.ndarray, y: np.ndarray, group: int, by_position: bool
) -> None:
    """y[n, group g] = rows[g] @ cols[n, g] (cols (N, C*K, L)), or @ cols[n, :, g].T with
    ``by_position`` (cols (N, L, C*K)): one batched product per group."""
    n, m = y.shape[:2]
    mg = m // group
    width = cols.shape[2] if by_position else cols.shape[1]
    per_group = width // group
    out = y.reshape(n, m, -1)
    for g in range(group):
        part = slice(g * per_group, (g + 1) * per_group)
        b = cols[:, :, part] if by_position else cols[:, part]
        dest = out[:, g * mg : (g + 1) * mg]
        if y.dtype == np.float32:
            _blas.gemm(rows[g * mg : (g + 1) * mg], b, dest, False, by_position)
        else:
            np.matmul(rows[g * mg : (g + 1) * mg], b.transpose(0, 2, 1) if by_position else b,
                      out=dest)  # fmt: skip


def _conv_direct(
    xp: np.ndarray, r: Resolved, cw: _ConvWeights, group: int, y: np.ndarray, relu: bool
) -> None:
    """The engine's direct kernel (``_engine.conv2d``: an indirect GEMM over the padded input's
    rows, no im2col copy), one call per batch entry and group."""
    n, c = xp.shape[:2]
    m = y.shape[1]
    mg, cg = m // group, c // group
    two_d = len(r.out) == 2
    kh, kw = r.kernel if two_d else (1, r.kernel[0])
    sh, dh = (r.strides[0], r.dilations[0]) if two_d else (1, 1)
    oh, ow = r.out if two_d else (1, r.out[0])
    for i in range(n):
        for g in range(group):
            xg = xp[i, g * cg : (g + 1) * cg]
            _engine.conv2d(
                xg if two_d else xg[:, None, :], cw.packed[g], mg, kh, kw, sh, dh,
                r.dilations[-1], oh, ow, None if cw.bias is None else cw.bias[g * mg:(g + 1) * mg],
                y[i, g * mg : (g + 1) * mg].reshape(mg, -1), relu,
            )  # fmt: skip


def _conv_by_tap(x: np.ndarray, r: Resolved, cw: _ConvWeights, group: int, y: np.ndarray) -> None:
    """im2col as (N, C, *kernel, *out): per kernel tap one strided slice of the unpadded input
    copied into the output positions it reaches (padding stays the zeros it was allocated
    as), so every copy walks the input contiguously along the last dim (stride 1)."""
    n, c = x.shape[:2]
    n_sp = len(r.out)
    has_pad = any(r.begin) or any(r.end)
    batch = max(1, _BATCH_FLOATS // max(1, c * math.prod(r.kernel) * math.prod(r.out)))
    for n0 in range(0, n, batch):
        xs = x[n0 : n0 + batch]
        cols = (np.zeros if has_pad else np.empty)((len(xs), c, *r.kernel, *r.out), x.dtype)
        for tap in np.ndindex(*r.kernel):
            dest, src = [], []
            for d in range(n_sp):
                s, off, size, o = (
                    r.strides[d],
                    tap[d] * r.dilations[d] - r.begin[d],
                    x.shape[2 + d],
                    r.out[d],
                )
                lo = max(0, -(off // s)) if off < 0 else 0
                hi = min(o, (size - 1 - off) // s + 1) if size - 1 - off >= 0 else 0
                if hi <= lo:
                    break
                dest.append(slice(lo, hi))
                start = lo * s + off
                src.append(slice(start, start + (hi - lo - 1) * s + 1, s))
            else:
                cols[(slice(None), slice(None), *tap, *dest)] = xs[(slice(None), slice(None), *src)]
        _grouped_product(cw.rows, cols.reshape(len(xs), -1, math.prod(r.out)),
                         y[n0 : n0 + batch], group, False)  # fmt: skip


def _conv_by_position(
    xp: np.ndarray, r: Resolved, cw: _ConvWeights, group: int, y: np.ndarray
) -> None:
    """im2col as (positions, C*K) rows from the padded input's window view, a block of
    positions at a time: each row copies whole kernel spans (a long strided kernel, an STFT
    as Conv1d, walks the input contiguously this way)."""
    n, c = xp.shape[:2]
    m = y.shape[1]
    mg = m // group
    n_sp = len(r.out)
    length = math.prod(r.out)
    width = c * math.prod(r.kernel)
    inner = length // r.out[0]  # output positions per step of the first spatial dim
    step = max(1, _BLOCK_FLOATS // max(1, width * inner))
    view = window_view(xp, r)  # (N, C, *out, *kernel) -> (N, *out, C, *kernel)
    windows = view.transpose(0, *range(2, 2 + n_sp), 1, *range(2 + n_sp, 2 + 2 * n_sp))
    per_group = width // group
    for i in range(n):
        yi = y[i].reshape(m, length)
        for o0 in range(0, r.out[0], step):
            o1 = min(r.out[0], o0 + step)
            cols = np.ascontiguousarray(windows[i, o0:o1]).reshape(-1, width)
            for g in range(group):
                _product(
                    cw.rows[g * mg:(g + 1) * mg], cols[:, g * per_group:(g + 1) * per_group],
                    yi[g * mg:(g + 1) * mg, o0 * inner:o1 * inner], trans_b=True,
                )  # fmt: skip


def _depthwise(xp: np.ndarray, r: Resolved, w: np.ndarray, y: np.ndarray) -> None:
    """One input channel per group: per kernel tap, y[:, g*mg + k] += w * shifted x[:, g]."""
    n, c = xp.shape[:2]
    m = w.shape[0]
    mg = m // c
    view = window_view(xp, r)  # (N, C, *out, *kernel)
    n_sp = len(r.out)
    y5 = y.reshape(n, c, mg, *r.out)
    y5[...] = 0
    for tap in np.ndindex(*r.kernel):
        plane = view[(slice(None), slice(None), *([slice(None)] * n_sp), *tap)]  # (N, C, *out)
        wt = w[(slice(None), 0, *tap)].reshape(c, mg, *([1] * n_sp))
        y5 += wt * plane[:, :, None]


# ---- ConvTranspose -------------------------------------------------------------------------


def _check_conv_transpose(node: Any) -> None:
    allowed_attrs(*_WINDOW_ATTRS, "group", "output_padding", "output_shape")(node)
    window_attrs(node)
    if attr_int(node, "group", 1) < 1:
        raise ModelFormatError(f"{node.label}: group must be >= 1")
    for key in ("output_padding", "output_shape"):
        values = attr_ints(node, key)
        if values is not None and any(v < 0 or v > 1 << 40 for v in values):
            raise ModelFormatError(f"{node.label}: {key} holds a negative or absurd value")


def _transpose_geometry(node: Any, in_sizes: tuple, kernel: tuple) -> tuple[tuple, tuple, tuple]:
    """(begin pads, output sizes, strides/dilations) of a ConvTranspose over ``in_sizes``."""
    win = window_attrs(node)
    n = len(in_sizes)
    strides = win.strides or (1,) * n
    dil = win.dilations or (1,) * n
    out_pad = tuple(attr_ints(node, "output_padding") or (0,) * n)
    pads = win.pads or (0,) * (2 * n)
    if len(strides) != n or len(dil) != n or len(out_pad) != n or len(pads) != 2 * n:
        raise InputError(f"{node.label}: window attributes do not match {n} spatial dims")
    if win.kernel is not None and tuple(win.kernel) != tuple(kernel):
        raise InputError(f"{node.label}: kernel_shape {win.kernel} but the weight's is {kernel}")
    full = [
        s * (i - 1) + op_ + (k - 1) * d + 1
        for i, k, s, d, op_ in zip(in_sizes, kernel, strides, dil, out_pad)
    ]
    shape = attr_ints(node, "output_shape")
    if shape is not None:
        shape = tuple(shape[-n:])
        if len(shape) != n:
            raise InputError(f"{node.label}: output_shape has {len(shape)} spatial dims, not {n}")
    if shape is not None or win.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = shape or tuple(i * s for i, s in zip(in_sizes, strides))
        totals = [f - t for f, t in zip(full, target)]
        if any(t < 0 for t in totals):
            raise InputError(f"{node.label}: output_shape {target} is larger than {tuple(full)}")
        # The spec's split: the odd element at the end only for SAME_UPPER.
        upper = win.auto_pad == "SAME_UPPER"
        begin = tuple(t // 2 if upper else t - t // 2 for t in totals)
        return begin, target, (strides, dil)
    if win.auto_pad == "VALID":
        pads = (0,) * (2 * n)
    out = tuple(f - pads[i] - pads[n + i] for i, f in enumerate(full))
    if any(o < 1 for o in out):
        raise InputError(f"{node.label}: pads leave an empty output ({out})")
    return tuple(pads[:n]), out, (strides, dil)


def _conv_transpose(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    if x.ndim < 3 or w.ndim != x.ndim:
        raise InputError(
            f"{node.label}: X (N, C, *spatial) and W (C, M/group, *kernel) of one rank, "
            f"got {x.shape} and {w.shape}"
        )
    dtype = _compute_dtype(node, x, w)
    group = attr_int(node, "group", 1)
    n, c = x.shape[:2]
    if w.shape[0] != c or c % group:
        raise InputError(f"{node.label}: X has {c} channels, W has {w.shape[0]} (group {group})")
    mg, kernel = w.shape[1], tuple(w.shape[2:])
    m, cg = mg * group, c // group
    if b is not None and b.shape != (m,):
        raise InputError(f"{node.label}: B has shape {b.shape}, expected ({m},)")
    in_sizes = tuple(x.shape[2:])
    begin, out, (strides, dil) = _transpose_geometry(node, in_sizes, kernel)
    full = tuple(
        s * (i - 1) + (k - 1) * d + 1 for i, k, s, d in zip(in_sizes, kernel, strides, dil)
    )
    check_elements(node, (n, m, *full))
    check_elements(node, (n, m, *out))
    taps, length = math.prod(kernel), math.prod(in_sizes)
    check_elements(node, (n, taps * mg, length), "column buffer")
    xs = np.ascontiguousarray(x, dtype=dtype).reshape(n, c, length)
    wd = np.ascontiguousarray(w, dtype=dtype).reshape(c, mg * taps)
    # Full (uncropped) output, at least as large as the cropped one plus output_padding.
    ext = tuple(max(f, bg + o) for f, bg, o in zip(full, begin, out))
    acc = np.zeros((n, m, *ext), dtype)
    cols = np.empty((group, mg * taps, length), dtype)
    n_sp = len(kernel)
    for i in range(n):
        for g in range(group):
            # (Mg*K, L) = W_g^T (Mg*K, Cg) @ x_g (Cg, L)
            a = wd[g * cg : (g + 1) * cg]
            if dtype == np.float32:
                _blas.gemm(a, xs[i, g * cg : (g + 1) * cg], cols[g], True, False)
            else:
                np.matmul(a.T, xs[i, g * cg : (g + 1) * cg], out=cols[g])
        planes = cols.reshape(m, *kernel, *in_sizes)
        for tap in np.ndindex(*kernel):
            dest = tuple(
                slice(t * d, t * d + s * (size - 1) + 1, s)
                for t, d, s, size in zip(tap, dil, strides, in_sizes)
            )
            acc[(i, slice(None), *dest)] += planes[(slice(None), *tap)]
    crop = tuple(slice(bg, bg + o) for bg, o in zip(begin, out))
    y = np.ascontiguousarray(acc[(slice(None), slice(None), *crop)])
    if b is not None:
        y += b.astype(dtype).reshape(m, *([1] * n_sp))
    return [y.astype(x.dtype, copy=False)]


# ---- shape inference -----------------------------------------------------------------------


def _kernel_of(node: Any, w_shape: tuple | None, n: int) -> tuple | None:
    """The kernel's spatial sizes: W's where its type says them, else kernel_shape."""
    win = window_attrs(node)
    if w_shape is not None and all(isinstance(d, int) for d in w_shape[2:]):
        return tuple(w_shape[2:])
    return win.kernel if win.kernel is not None and len(win.kernel) == n else None


def conv_type(node: Any, types: list, dtype: str) -> TensorType:
    """Conv's (and ConvInteger's) output type: (N, M, *out) with W (M, C/group, *kernel)."""
    sx, sw = shape_of(types[0]), shape_of(types[1])
    if sx is None:
        return unknown(dtype)
    if len(sx) < 3 or (sw is not None and len(sw) != len(sx)):
        raise ModelFormatError(f"{node.label}: X {sx} and W {sw} are not (N, C, *spatial) and "
                               "(M, C/group, *kernel) of one rank")  # fmt: skip
    group = attr_int(node, "group", 1)
    m = None if sw is None else sw[0]
    if sw is not None and isinstance(sw[1], int) and isinstance(sx[1], int):
        merge_dim(node, [sx[1], sw[1] * group], "input channels (X's, W's times group)")
    kernel = _kernel_of(node, sw, len(sx) - 2)
    if kernel is None:
        return typed(node, dtype, (sx[0], m, *([None] * (len(sx) - 2))))
    win = window_attrs(node)
    out = infer_spatial(node, sx[2:], lambda sizes: resolve(node, win, sizes, kernel).out)
    return typed(node, dtype, (sx[0], m, *out))


def _conv_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    return [conv_type(node, types, dtype_of(types[0]))]


def _conv_transpose_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    sx, sw = shape_of(types[0]), shape_of(types[1])
    dtype = dtype_of(types[0])
    if sx is None:
        return [unknown(dtype)]
    if len(sx) < 3 or (sw is not None and len(sw) != len(sx)):
        raise ModelFormatError(f"{node.label}: X {sx} and W {sw} are not (N, C, *spatial) and "
                               "(C, M/group, *kernel) of one rank")  # fmt: skip
    group = attr_int(node, "group", 1)
    if sw is not None:
        merge_dim(node, [sx[1], sw[0]], "input channels (X's, W's)")
    m = sw[1] * group if sw is not None and isinstance(sw[1], int) else None
    kernel = _kernel_of(node, sw, len(sx) - 2)
    if kernel is None:
        return [typed(node, dtype, (sx[0], m, *([None] * (len(sx) - 2))))]
    out = infer_spatial(node, sx[2:], lambda sizes: _transpose_geometry(node, sizes, kernel)[1])
    return [typed(node, dtype, (sx[0], m, *out))]


OPS: dict[str, OpDef] = {
    "Conv": op(
        "Conv",
        _conv,
        inputs=(2, 3),
        check=_check_conv,
        prepare=_conv_prepare,
        infer=_conv_infer,
    ),
    "ConvTranspose": op(
        "ConvTranspose",
        _conv_transpose,
        inputs=(2, 3),
        check=_check_conv_transpose,
        infer=_conv_transpose_infer,
    ),
}
