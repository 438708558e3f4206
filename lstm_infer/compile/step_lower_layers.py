"""Dense, convolution and recurrent layers lowered to step program records (the heavy
records of a step: sgemm and the engine's recurrent driver). Registered in
:data:`lstm_infer.compile.step_lower.LOWERINGS`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lstm_infer import _engine
from lstm_infer.compile.step_buffers import Buf, NotCompiled, StepContext
from lstm_infer.compile.step_lower_conv_pool import (
    GROUPED_MAX_TAPS,
    fusable_pool,
    lower_conv_grouped,
    lower_conv_pool,
)
from lstm_infer.ops.base import attr_int, attr_str
from lstm_infer.ops.conv import ACTIVATION_ATTR, DIRECT_ROW_MIN_WIDTH
from lstm_infer.ops.pool import window_counts
from lstm_infer.ops.window import resolve, window_attrs

# enum li_step_unary (src_c/step_program.h): GEMM records' fused activations.
UNARY_NONE, UNARY_RELU = 0, 1
# enum li_step_reduce and li_step_binary codes the pools use.
REDUCE_MEAN, REDUCE_MAX, BINARY_DIV = 1, 2, 3
# A stride-1 convolution runs on the direct kernel row by row from ops/conv.py's
# DIRECT_ROW_MIN_WIDTH output positions on; narrower rows leave most of its register tile
# (64 positions with AVX-512) idle: 3x3 convolutions 40 positions wide ran 2-3x slower there
# (Zen 4: 48 -> 192 channels over 16 x 40, 3.0 ms against 1.1 ms as below) than their windows
# copied into (C*KH*KW, positions) rows and run as one row of every position
# (_conv_strided_direct).
# Positions from which any convolution runs on the direct kernel at all.
DIRECT_MIN_WIDTH = 16


# ---- dense and convolution -----------------------------------------------------------------


def _gemm_record(
    ctx: StepContext,
    y: Buf,
    a: Buf,
    b: Buf,
    rows: int,
    cols: int,
    k: int,
    lda: int,
    ldb: int,
    ldy: int,
    trans_a: bool,
    trans_b: bool,
    bias_col: Buf | None = None,
    bias_row: Buf | None = None,
    act: int = 0,
    a_offset: int = 0,
    b_offset: int = 0,
    y_offset: int = 0,
) -> None:
    ctx.b.emit(
        "gemm",
        op=act,
        flags=int(trans_a) | 2 * int(trans_b),
        n=[rows, cols, k, 1, 0, 0, 0],
        sa=[lda],
        sb=[ldb],
        sy=[ldy],
        f=[1.0, 0.0, 0.0],
        a=(a, a_offset),
        b=(b, b_offset),
        y=(y, y_offset),
        aux=None if bias_col is None else (bias_col, 0),
        aux2=None if bias_row is None else (bias_row, 0),
    )


def dense(ctx: StepContext, node: Any, state: Any) -> None:
    """MatMul / Gemm by a constant weight (the op's prepared CompiledDense)."""
    if state is None or getattr(state, "activation", None):
        raise NotCompiled(f"{node.label}: a product of two computed operands")
    x = ctx.buf(node, node.inputs[0])
    if not x.shape:
        raise NotCompiled(f"{node.label}: a scalar operand")
    n, k = state.weight.shape
    if x.shape[-1] != k:
        raise NotCompiled(f"{node.label}: {x.shape[-1]} features for a weight taking {k}")
    rows = x.size // k
    y = ctx.out(node)
    if 0 < rows and state.uses_packed(rows) and k > 0:
        _packed_dense(ctx, y, x, state, rows)
        return
    w = ctx.b.constant(state.weight)
    bias = None if state.bias is None else ctx.b.constant(state.bias)
    _gemm_record(ctx, y, x, w, rows, n, k, k, k, n, False, True, bias_col=bias)


def _packed_dense(ctx: StepContext, y: Buf, x: Buf, state: Any, rows: int) -> None:
    """A MATVEC record on the weight's packed blocks (what the op itself runs for few rows:
    a 20-row 1024 -> 8210 CTC head 3x faster than sgemm), into a region of whole blocks
    when the output width is not a multiple of them, then a COPY of the real columns."""
    packed, n, k = state.packed, state.out_features, state.weight.shape[1]
    width = state.bias_padded.shape[0]  # gates * blocks * 16 floats per row
    gates, blocks = packed.shape[2], packed.shape[0]
    if packed.shape[1] != k or gates * blocks * _engine.BLOCK != width or x.size < rows * k:
        raise NotCompiled("internal: a packed dense weight of unexpected layout")
    dest = y if width == n else ctx.b.region((rows, width))
    bias = None if state.bias is None else ctx.b.constant(state.bias_padded)
    ctx.b.emit(
        "matvec",
        n=[rows, k, gates, blocks, 0, 0, 0],
        sa=[k],
        sy=[width],
        a=(x, 0),
        b=(ctx.b.constant(packed), 0),
        y=(dest, 0),
        aux=None if bias is None else (bias, 0),
    )
    if dest is not y:
        ctx.b.copy(y, dest, (rows, n), (n, 1), (width, 1))


def gemm(ctx: StepContext, node: Any, state: Any) -> None:
    if attr_int(node, "transA", 0):
        raise NotCompiled(f"{node.label}: Gemm with transA")
    dense(ctx, node, state)


def conv(ctx: StepContext, node: Any, state: Any) -> None:
    """Conv 1-D / 2-D: the padded input in the arena, its windows (im2col) as one strided
    COPY, one GEMM per batch entry and group. A strided 1-D window over one channel per group
    whose windows do not overlap is read in place: its windows are rows ``stride`` floats
    apart (BLAS refuses a leading dimension below the row length, so overlapping windows, an
    STFT as Conv1d, are copied). Depthwise convolutions, and those of over 64 groups, of few
    taps are one GROUPED_CONV record per batch entry (:func:`lower_conv_grouped`)."""
    if state is None or state.w.dtype != np.float32:
        raise NotCompiled(f"{node.label}: weights computed at run time")
    x = ctx.buf(node, node.inputs[0])
    if len(x.shape) not in (3, 4):
        raise NotCompiled(f"{node.label}: a {len(x.shape) - 2}-D convolution")
    two_d = len(x.shape) == 4
    group = attr_int(node, "group", 1)
    r = resolve(node, window_attrs(node), x.shape[2:], state.w.shape[2:])
    batch, c = x.shape[:2]
    m, cg = state.w.shape[:2]
    kh, kw = r.kernel if two_d else (1, r.kernel[0])
    # depthwise (one input channel a group), or more groups than records per group allow
    grouped = ((cg == 1 and group > 1) or group > 64) and cg * kh * kw <= GROUPED_MAX_TAPS
    if group > 64 and not grouped:
        raise NotCompiled(f"{node.label}: {group} groups of {cg * kh * kw} taps")
    sh, sw = r.strides if two_d else (1, r.strides[0])
    dh, dw = r.dilations if two_d else (1, r.dilations[0])
    oh, ow = r.out if two_d else (1, r.out[0])
    ih, iw = x.shape[2:] if two_d else (1, x.shape[2])
    (pt, pl), (pb, pr) = (r.begin, r.end) if two_d else ((0, r.begin[0]), (0, r.end[0]))
    hp, wp = ih + pt + pb, iw + pl + pr
    act = UNARY_RELU if attr_str(node, ACTIVATION_ATTR) == "Relu" else UNARY_NONE
    w = ctx.b.constant(state.rows)
    bias = None if state.bias is None else ctx.b.constant(state.bias)
    direct = not grouped and state.packed is not None and sw == 1 and ow >= DIRECT_MIN_WIDTH
    pooled = fusable_pool(ctx, node, ctx.shapes[node.outputs[0]]) if direct else None
    # narrow rows stay on the row-by-row kernel only where a max pool fuses into it
    direct = direct and (ow >= DIRECT_ROW_MIN_WIDTH or pooled is not None)
    # A causal convolution in a time-axis stream: its left padding holds the last pl input
    # frames of the previous chunk (zeros after a reset), carried in a region of their own.
    causal = ctx.carry_state and ctx.time_axes.get(node.inputs[0]) == len(x.shape) - 1 and pl
    if any((pt, pl, pb, pr)):
        # The arena starts zeroed and nothing else writes this region's padding: only the
        # interior (and a causal history) is written each step.
        xp = ctx.b.region((batch, c, hp, wp))
        ctx.b.copy(xp, x, (batch * c, ih, iw), (hp * wp, wp, 1), (ih * iw, iw, 1), pt * wp + pl, 0)
    else:
        xp = x
    if pooled is not None:  # causal convolutions never fuse (streams carry no pool)
        lower_conv_pool(ctx, state, xp, (batch, c, hp, wp, m, group),
                        (kh, kw, sh, dh, dw, oh, ow), act == UNARY_RELU, bias, pooled)  # fmt: skip
        return
    y = ctx.out(node)
    if causal:
        rows = batch * c * hp
        history = ctx.b.region((batch, c * hp, pl))  # batch first: a pool gathers sessions
        ctx.b.carried.append(
            (
                f"{node.name or node.outputs[0]}/history",
                history,
                np.zeros(history.shape, np.float32),
            )
        )
        ctx.b.copy(xp, history, (rows, pl), (wp, 1), (pl, 1))
    window = (kh, kw, sh, sw, dh, dw, oh, ow)
    if grouped:
        lower_conv_grouped(
            ctx, xp, y, w, bias, act == UNARY_RELU, (batch, c, hp, wp, m, group), window
        )
    elif direct:
        _conv_direct(ctx, node, state, xp, y, (batch, c, hp, wp, m, group), r, act, bias)
    elif (
        state.packed is not None
        and oh * ow >= DIRECT_MIN_WIDTH
        and not _reads_in_place(c // group, hp, window)
    ):
        _conv_strided_direct(ctx, state, xp, y, (batch, c, hp, wp, m, group), window, act, bias)
    else:
        _conv_by_gemm(ctx, xp, y, w, bias, act, (batch, c, hp, wp, m, cg, group), window)
    if causal:  # the last pl frames of this chunk's padded input become the next history
        ctx.b.copy(history, xp, (rows, pl), (pl, 1), (wp, 1), 0, iw)


def _conv_direct(
    ctx: StepContext,
    node: Any,
    state: Any,
    xp: Buf,
    y: Buf,
    dims: tuple,
    r: Any,
    act: int,
    bias: Buf | None,
) -> None:
    """Per batch entry and group one CONV record on the table's direct kernel (an indirect
    GEMM over the padded input's rows, Relu fused into the stores)."""
    batch, c, hp, wp, m, group = dims
    two_d = len(r.out) == 2
    kh, kw = r.kernel if two_d else (1, r.kernel[0])
    sh, dh = (r.strides[0], r.dilations[0]) if two_d else (1, 1)
    oh, ow = r.out if two_d else (1, r.out[0])
    mg, cg = m // group, c // group
    k = cg * kh * kw
    for g in range(group):
        wpack = ctx.b.constant(state.packed[g])
        for e in range(batch):
            record = ctx.b.emit(
                "conv", n=[cg, kh, kw, oh, ow, mg, int(act == UNARY_RELU)],
                shape=[sh, dh, r.dilations[-1]], sa=[hp * wp, wp], sy=[oh * ow],
                a=(xp, (e * c + g * cg) * hp * wp), b=(wpack, 0),
                y=(y, (e * m + g * mg) * oh * ow),
                aux=None if bias is None else (bias, g * mg),
            )  # fmt: skip
            ctx.b.scratch(2 * k, record, "aux2")  # k row pointers


def _reads_in_place(cg: int, hp: int, window: tuple) -> bool:
    """Whether a GEMM reads the convolution's windows straight from the input: one channel
    per group, 1-D, windows ``sw`` apart that do not overlap (rows of a strided matrix)."""
    kh, kw, sh, sw, dh, dw, oh, ow = window
    return not (kh > 1 or hp > 1) and cg == 1 and dw == 1 and sw >= kw


def _conv_strided_direct(
    ctx: StepContext,
    state: Any,
    xp: Buf,
    y: Buf,
    dims: tuple,
    window: tuple,
    act: int,
    bias: Buf | None,
) -> None:
    """A convolution strided along its last dim (an STFT as Conv1d) on the direct kernel:
    per batch entry and group, its windows copied into (C*KH*KW, OH*OW) rows (im2col, one
    strided COPY), then one CONV record reading them as a 1 x 1 convolution of C*KH*KW
    channels over one row of OH*OW positions, into y directly. The rows' order (c, kh, kw)
    is the packed weights' order. Measured on Zen 5 (the zoo's STFT, 258 x 256 taps x 124
    frames): 2x faster than sgemm over the (positions, taps) windows, and no copy of the
    product."""
    batch, c, hp, wp, m, group = dims
    kh, kw, sh, sw, dh, dw, oh, ow = window
    mg, cg = m // group, c // group
    k, positions = cg * kh * kw, oh * ow
    # a pointwise convolution without padding already holds its rows: no copy
    pointwise = k == cg and sh == sw == 1 and (oh, ow) == (hp, wp)
    cols = None if pointwise else ctx.b.region((k, positions))
    for g in range(group):
        wpack = ctx.b.constant(state.packed[g])
        for e in range(batch):
            if cols is None:
                record = ctx.b.emit(
                    "conv", n=[k, 1, 1, 1, positions, mg, int(act == UNARY_RELU)],
                    shape=[1, 1, 1], sa=[positions, positions], sy=[positions],
                    a=(xp, (e * c + g * cg) * positions), b=(wpack, 0),
                    y=(y, (e * m + g * mg) * positions),
                    aux=None if bias is None else (bias, g * mg),
                )  # fmt: skip
                ctx.b.scratch(2 * k, record, "aux2")
                continue
            ctx.b.copy(
                cols, xp, (cg, kh, kw, oh, ow),
                (kh * kw * positions, kw * positions, positions, ow, 1),
                (hp * wp, dh * wp, dw, sh * wp, sw), 0, (e * c + g * cg) * hp * wp,
            )  # fmt: skip
            record = ctx.b.emit(
                "conv", n=[k, 1, 1, 1, positions, mg, int(act == UNARY_RELU)],
                shape=[1, 1, 1], sa=[positions, positions], sy=[positions],
                a=(cols, 0), b=(wpack, 0), y=(y, (e * m + g * mg) * positions),
                aux=None if bias is None else (bias, g * mg),
            )  # fmt: skip
            ctx.b.scratch(2 * k, record, "aux2")  # k row pointers


def _conv_by_gemm(
    ctx: StepContext,
    xp: Buf,
    y: Buf,
    w: Buf,
    bias: Buf | None,
    act: int,
    dims: tuple,
    window: tuple,
) -> None:
    """im2col as one strided COPY (or the input read in place), one GEMM per batch entry and
    group."""
    batch, c, hp, wp, m, cg, group = dims
    kh, kw, sh, sw, dh, dw, oh, ow = window
    mg = m // group
    k = cg * kh * kw
    positions = oh * ow
    in_place = _reads_in_place(cg, hp, window)
    pointwise = k == cg and sh == sw == 1 and (oh, ow) == (hp, wp)
    if batch > 1 and group == 1:
        _conv_batched(ctx, xp, y, w, bias, act, dims, window, pointwise)
        return
    for e in range(batch):
        for g in range(group):
            x_off = (e * c + g * cg) * hp * wp
            y_off = (e * m + g * mg) * positions
            bias_g = None if bias is None else bias.at(g * mg, (mg,))
            w_off = g * mg * k
            if pointwise:  # y = W (mg, cg) @ x (cg, positions)
                _gemm_record(
                    ctx,
                    y,
                    w,
                    xp,
                    mg,
                    positions,
                    k,
                    k,
                    positions,
                    positions,
                    False,
                    False,
                    bias_row=bias_g,
                    act=act,
                    a_offset=w_off,
                    b_offset=x_off,
                    y_offset=y_off,
                )
                continue
            if in_place:  # windows of one channel: rows sw apart, kw long
                cols, c_off, ldb = xp, x_off, sw
                if (ow - 1) * sw + kw > wp:
                    raise NotCompiled("convolution windows past the input (internal)")
            else:
                cols = ctx.b.region((positions, k))
                ctx.b.copy(
                    cols,
                    xp,
                    (oh, ow, cg, kh, kw),
                    (ow * k, k, kh * kw, kw, 1),
                    (sh * wp, sw, hp * wp, dh * wp, dw),
                    0,
                    x_off,
                )
                c_off, ldb = 0, k
            _gemm_record(
                ctx,
                y,
                w,
                cols,
                mg,
                positions,
                k,
                k,
                ldb,
                positions,
                False,
                True,
                bias_row=bias_g,
                act=act,
                a_offset=w_off,
                b_offset=c_off,
                y_offset=y_off,
            )


def _conv_batched(
    ctx: StepContext,
    xp: Buf,
    y: Buf,
    w: Buf,
    bias: Buf | None,
    act: int,
    dims: tuple,
    window: tuple,
    pointwise: bool,
) -> None:
    """One GEMM for every batch entry (a pool's sessions, a batch of recordings): the
    windows of all entries as rows of one matrix, then the (M, batch, positions) product
    moved into y's (batch, M, positions). Per-entry GEMMs of a few positions each (a
    streamed chunk) would leave the product's columns nearly empty."""
    batch, c, hp, wp, m, _cg, _group = dims
    kh, kw, sh, sw, dh, dw, oh, ow = window
    k = c * kh * kw
    positions = oh * ow
    if pointwise and positions == 1:  # y (batch, M) = x (batch, C) W^T: no copies at all
        _gemm_record(ctx, y, xp, w, batch, m, k, k, k, m, False, True, bias_col=bias, act=act)
        return
    cols = ctx.b.region((batch * positions, k))
    if pointwise:
        ctx.b.copy(cols, xp, (batch, positions, c), (positions * k, k, 1),
                   (c * positions, 1, positions))  # fmt: skip
    else:
        ctx.b.copy(
            cols, xp, (batch, oh, ow, c, kh, kw),
            (positions * k, ow * k, k, kh * kw, kw, 1),
            (c * hp * wp, sh * wp, sw, hp * wp, dh * wp, dw),
        )  # fmt: skip
    product = ctx.b.region((m, batch * positions))
    _gemm_record(ctx, product, w, cols, m, batch * positions, k, k, k, batch * positions,
                 False, True, bias_row=bias, act=act)  # fmt: skip
    ctx.b.copy(y, product, (batch, m, positions), (m * positions, positions, 1),
               (positions, batch * positions, 1))  # fmt: skip


# ---- pooling ------------------------------------------------------------------------------


def pool(ctx: StepContext, node: Any, state: Any) -> None:
    """MaxPool / AveragePool: the input padded (-inf / 0, written once: nothing else writes
    the padding), one POOL record over every window (max, or sum then divided by each
    window's count, as the op does)."""
    if len(node.outputs) > 1 and node.outputs[1]:
        raise NotCompiled(f"{node.label}: MaxPool's Indices output")
    x = ctx.buf(node, node.inputs[0])
    if len(x.shape) not in (3, 4):
        raise NotCompiled(f"{node.label}: a {len(x.shape) - 2}-D pool")
    w = window_attrs(node, ceil_mode_allowed=True)
    r = resolve(node, w, x.shape[2:], w.kernel)
    two_d = len(x.shape) == 4
    kh, kw = r.kernel if two_d else (1, r.kernel[0])
    sh, sw = r.strides if two_d else (1, r.strides[0])
    dh, dw = r.dilations if two_d else (1, r.dilations[0])
    oh, ow = r.out if two_d else (1, r.out[0])
    ih, iw = x.shape[2:] if two_d else (1, x.shape[2])
    (pt, pl), (pb, pr) = (r.begin, r.end) if two_d else ((0, r.begin[0]), (0, r.end[0]))
    hp, wp = ih + pt + pb, iw + pl + pr
    planes = x.shape[0] * x.shape[1]
    is_max = node.op == "MaxPool"
    if any((pt, pl, pb, pr)):
        xp = ctx.b.region((planes, hp, wp))
        if is_max:
            ctx.b.preset.append((xp, -np.inf))
        ctx.b.copy(xp, x, (planes, ih, iw), (hp * wp, wp, 1), (ih * iw, iw, 1), pt * wp + pl)
    else:
        xp = x
    y = ctx.out(node)
    ctx.b.emit("pool", op=0 if is_max else 1, n=[planes, kh, kw, oh, ow],
               shape=[sh, sw, dh, dw], sa=[hp * wp, wp], a=(xp, 0), y=(y, 0))  # fmt: skip
    _check_windows(xp, planes, hp, wp, (kh, kw, sh, sw, dh, dw, oh, ow))
    if is_max:
        return
    include_pad = bool(attr_int(node, "count_include_pad", 0))
    counts = (
        np.maximum(window_counts(r, x.shape[2:], include_pad), 1).astype(np.float32).reshape(-1)
    )
    divisor = ctx.b.constant(counts)
    ctx.b.emit("binary", op=BINARY_DIV, shape=[planes, oh * ow], sy=[oh * ow, 1],
               sa=[oh * ow, 1], sb=[0, 1], a=(y, 0), b=(divisor, 0), y=(y, 0))  # fmt: skip


def _check_windows(xp: Buf, planes: int, hp: int, wp: int, window: tuple) -> None:
    """Every window a POOL record reads lies inside the padded input."""
    kh, kw, sh, sw, dh, dw, oh, ow = window
    if (oh - 1) * sh + (kh - 1) * dh >= hp or (ow - 1) * sw + (kw - 1) * dw >= wp:
        raise NotCompiled("pool windows past the padded input (internal)")
    if planes * hp * wp > xp.size:
        raise NotCompiled("pool planes past the input (internal)")


def global_pool(ctx: StepContext, node: Any, state: Any) -> None:
    x = ctx.buf(node, node.inputs[0])
    if len(x.shape) < 3:
        raise NotCompiled(f"{node.label}: X of rank {len(x.shape)}")
    planes, spatial = x.shape[0] * x.shape[1], x.size // max(1, x.shape[0] * x.shape[1])
    y = ctx.out(node)
    code = REDUCE_MEAN if node.op == "GlobalAveragePool" else REDUCE_MAX
    ctx.b.emit("reduce", op=code, n=[planes, spatial, 1], a=(x, 0), y=(y, 0))


# ---- recurrent layers ----------------------------------------------------------------------


def recurrent(ctx: StepContext, node: Any, state: Any) -> None:
    """RNN / LSTM / GRU on the engine's whole-sequence driver, one record for both
    directions. The state starts from initial_h / initial_c (or zeros) on every step, unless
    the stream carries it (``ctx.carry_state``, time-axis streaming): then it lives in the
    arena from one step to the next, reset to those initial values."""
    model, feeds, _outs = state
    roles = {role: node.inputs[i] for role, i in feeds}
    if "sequence_lens" in roles:
        raise NotCompiled(f"{node.label}: sequence_lens in a step")
    layer, plans = model._spec.layers[0], model._plans[0]
    d_count, hr, hidden = layer.num_directions, layer.state_size, layer.hidden_size
    lstm = layer.cell == "lstm"
    layout = attr_int(node, "layout", 0)
    x = ctx.buf(node, roles["X"])
    if len(x.shape) != 3:
        raise NotCompiled(f"{node.label}: X of shape {x.shape}")
    t_steps, batch = (x.shape[0], x.shape[1]) if layout == 0 else (x.shape[1], x.shape[0])
    width = x.shape[2]
    if t_steps == 0 or batch == 0:
        raise NotCompiled(f"{node.label}: a recurrent layer over {t_steps} steps of {batch} rows")
    if layout == 1:  # the driver reads time-major rows
        xt = ctx.b.region((t_steps, batch, width))
        ctx.b.copy(
            xt, x, (t_steps, batch, width), (batch * width, width, 1), (width, t_steps * width, 1)
        )
        x = xt
    states = {}
    for role, size in (("initial_h", hr), ("initial_c", hidden)):
        if role == "initial_c" and not lstm:
            continue
        name = roles.get(role)
        shape = (d_count, batch, size)
        if ctx.carry_state and (not name or ctx.const(name) is not None):
            start = np.zeros(shape, np.float32)
            if name:
                start[...] = _time_major_state(ctx.const(name), layout)
            buf = ctx.b.region(shape)
            ctx.b.carried.append((f"{node.name or node.outputs[0]}/{role}", buf, start))
        else:
            buf = ctx.b.region(shape)
            if name:
                src = ctx.buf(node, name)
                sa = (batch * size, size, 1) if layout == 0 else (size, d_count * size, 1)
                ctx.b.copy(buf, src, shape, (batch * size, size, 1), sa)
            else:
                ctx.b.fill(buf, 0.0)
        states[role] = buf
    h, c = states["initial_h"], states.get("initial_c")
    outputs = dict(zip(("Y", "Y_h", "Y_c"), node.outputs))
    y = ctx.out(node, 0) if outputs.get("Y") else None
    if layout == 0:
        y_ts, y_bs, y_ds = d_count * batch * hr, hr, batch * hr
    else:
        y_ts, y_bs, y_ds = d_count * hr, t_steps * d_count * hr, hr
    spec = {
        "cells": list(plans),
        "reverse": [int(layer.direction == "reverse"), 1][:d_count],
        "T": t_steps,
        "B": batch,
        "x": (x, 0),
        "ldx": width,
        "h": [(h, d * batch * hr) for d in range(d_count)],
        "c": [None if c is None else (c, d * batch * hidden) for d in range(d_count)],
        "y": None if y is None else (y, 0),
        "y_ts": y_ts,
        "y_bs": y_bs,
        "y_ds": y_ds,
        "scratch": None,
    }
    scratch = max(_engine.recurrent_scratch_floats(p, t_steps, batch) for p in plans)
    ctx.b.emit("recurrent", recurrent=spec)
    ctx.b.scratch(scratch, spec, "scratch")
    for i, (role, buf, size) in enumerate((("Y_h", h, hr), ("Y_c", c, hidden))):
        if not outputs.get(role):
            continue
        if layout == 0:
            ctx.bind(node, i + 1, buf)
        else:
            out = ctx.out(node, i + 1)
            ctx.b.copy(
                out, buf, (d_count, batch, size), (size, d_count * size, 1), (batch * size, size, 1)
            )


def cell(ctx: StepContext, node: Any, state: Any) -> None:
    """One of CELLS.md's cells (lstm_infer.ops.cells) on its fused C function, one record.
    Its states start from the node's initial-state inputs (or zeros) on every step, unless
    the stream carries them (``ctx.carry_state``): then they live in the arena from one step
    to the next, reset to those initial values."""
    from lstm_infer.cells import CELLS

    kind = CELLS[node.op]
    x = ctx.buf(node, node.inputs[0])
    if len(x.shape) != 3 or x.shape[2] != state.input_size:
        raise NotCompiled(f"{node.label}: X of shape {x.shape}")
    t_steps, batch, width = x.shape
    if t_steps == 0 or batch == 0:
        raise NotCompiled(f"{node.label}: a cell over {t_steps} steps of {batch} rows")
    shapes = kind.state_shapes(node.attrs, batch)
    bufs = []
    for s, (role, shape) in enumerate(zip(kind.states, shapes)):
        if math.prod(shape) != state.state_floats(s, batch):
            raise NotCompiled(f"internal: {node.label} state {role} of {shape}")
        name = node.inputs[1 + s] if 1 + s < len(node.inputs) else ""
        buf = ctx.b.region(shape)
        if ctx.carry_state and (not name or ctx.const(name) is not None):
            start = np.zeros(shape, np.float32)
            if name:
                start[...] = ctx.const(name)
            ctx.b.carried.append((f"{node.name or node.outputs[0]}/{role}", buf, start))
        elif name:
            ctx.b.copy_whole(buf, ctx.buf(node, name))
        else:
            ctx.b.fill(buf, 0.0)
        bufs.append(buf)
    y = ctx.out(node, 0) if node.outputs[0] else None
    if y is not None and y.shape != (t_steps, batch, state.output_size):
        raise NotCompiled(f"internal: {node.label} output of {y.shape}")
    spec = {
        "rcell": state,
        "T": t_steps,
        "B": batch,
        "x": (x, 0),
        "ldx": width,
        "y": None if y is None else (y, 0),
        "y_ts": batch * state.output_size,
        "y_bs": state.output_size,
        "states": [(b, 0) for b in bufs],
        "scratch": None,
    }
    ctx.b.emit("cell", cell=spec)
    ctx.b.scratch(state.scratch_floats(t_steps, batch), spec, "scratch")
    for s, buf in enumerate(bufs):
        if 1 + s < len(node.outputs) and node.outputs[1 + s]:
            ctx.bind(node, 1 + s, buf)


def _time_major_state(value: np.ndarray, layout: int) -> np.ndarray:
    return value if layout == 0 else np.swapaxes(value, 0, 1)
