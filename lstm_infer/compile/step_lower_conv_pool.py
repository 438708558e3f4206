"""Two convolution lowerings of their own.

A direct convolution whose only reader is a MaxPool, lowered as one unit: per batch entry,
group and band of output channels, one CONV record into a small shared region and one POOL
record from it into the pool's output.

Why: a CNN front end's first convolution writes planes far larger than its pool's output
(the zoo's CRNN: 4 x 32 channels x 32 x 128 floats, 2 MB, past a core's L2), and the pool
then reads them all back from L3. A band of channels small enough to stay in L2 is pooled
while it is still there; the convolution's full output never exists. The records and
kernels are the unfused ones (same values, same NaN propagation), only their order and
extents change. Measured on Zen 5 (zoo crnn, batch 4, per-record profile): first conv +
pool 0.22 -> 0.10 ms, second 0.75 -> 0.68 ms.

A grouped convolution with few taps per output (depthwise above all: silero v4's 258 groups
of one channel, k = 5) as one GROUPED_CONV record per batch entry over every group:
multiply-adds per tap along the output rows, instead of one GEMM or direct-kernel record
per group of a handful of values each.
"""

from __future__ import annotations

from typing import Any

from lstm_infer import _engine
from lstm_infer.compile.step_buffers import Buf, StepContext, check_reach
from lstm_infer.ops.window import resolve, window_attrs

# The band's convolution output is kept under this many bytes: it must stay in L2 (1 MB per
# core on Zen 4 / 5, 2 MB on Sapphire Rapids) beside the input rows and weights it reads.
BAND_BYTES = 192 << 10
# A depthwise convolution (one input channel a group), or one of over 64 groups, with at
# most this many taps per output (C/group * KH * KW) is one GROUPED_CONV record (every group
# at once); other grouped ones are one GEMM or CONV record per group (at most 64 groups).
GROUPED_MAX_TAPS = 64


def fusable_pool(ctx: StepContext, node: Any, out_shape: tuple) -> tuple | None:
    """The MaxPool node reading ``node``'s output and its window (kh, kw, sh, sw, dh, dw,
    oh, ow), when it is the output's only reader, the output is no graph output, the pool
    has no padding, no Indices output, and every window lies inside the convolution's
    output; else None (the two lower on their own)."""
    name = node.outputs[0]
    readers = ctx.readers.get(name, [])
    if len(readers) != 1 or name in ctx.graph_outputs or ctx.carry_state:
        return None
    pool = readers[0]
    if pool.op != "MaxPool" or pool.inputs[0] != name or len(out_shape) not in (3, 4):
        return None
    if len(pool.outputs) > 1 and pool.outputs[1]:
        return None
    w = window_attrs(pool, ceil_mode_allowed=True)
    r = resolve(pool, w, out_shape[2:], w.kernel)
    if any(r.begin) or any(r.end):
        return None
    two_d = len(out_shape) == 4
    kh, kw = r.kernel if two_d else (1, r.kernel[0])
    sh, sw = r.strides if two_d else (1, r.strides[0])
    dh, dw = r.dilations if two_d else (1, r.dilations[0])
    oh, ow = r.out if two_d else (1, r.out[0])
    ih, iw = out_shape[2:] if two_d else (1, out_shape[2])
    if (oh - 1) * sh + (kh - 1) * dh >= ih or (ow - 1) * sw + (kw - 1) * dw >= iw:
        return None
    return pool, (kh, kw, sh, sw, dh, dw, oh, ow)


def lower_conv_pool(
    ctx: StepContext,
    state: Any,
    xp: Buf,
    dims: tuple,
    conv_window: tuple,
    relu: bool,
    bias: Buf | None,
    pooled: tuple,
) -> None:
    """The records of the fused pair (``pooled`` from :func:`fusable_pool`); the pool node
    is marked lowered."""
    batch, c, hp, wp, m, group = dims
    kh, kw, sh, dh, dw, oh, ow = conv_window
    pool, (pkh, pkw, psh, psw, pdh, pdw, poh, pow_) = pooled
    mg, cg = m // group, c // group
    k = cg * kh * kw
    mr = _engine.CONV_MR
    plane = oh * ow
    band = max(1, BAND_BYTES // (4 * plane * mr)) * mr
    band = min(band, -(-mg // mr) * mr)
    scratch = ctx.b.region((band, plane))
    y = ctx.out(pool)
    for e in range(batch):
        for g in range(group):
            wpack = ctx.b.constant(state.packed[g])
            for m0 in range(0, mg, band):
                mb = min(band, mg - m0)
                first = g * mg + m0  # the band's first channel of the layer
                record = ctx.b.emit(
                    "conv", n=[cg, kh, kw, oh, ow, mb, int(relu)],
                    shape=[sh, dh, dw], sa=[hp * wp, wp], sy=[plane],
                    a=(xp, (e * c + g * cg) * hp * wp), b=(wpack, (m0 // mr) * k * mr),
                    y=(scratch, 0), aux=None if bias is None else (bias, first),
                )  # fmt: skip
                ctx.b.scratch(2 * k, record, "aux2")  # k row pointers
                ctx.b.emit(
                    "pool", op=0, n=[mb, pkh, pkw, poh, pow_], shape=[psh, psw, pdh, pdw],
                    sa=[plane, ow], a=(scratch, 0), y=(y, (e * m + first) * poh * pow_),
                )  # fmt: skip
    ctx.lowered.add(id(pool))


def lower_conv_grouped(
    ctx: StepContext,
    xp: Buf,
    y: Buf,
    w: Buf,
    bias: Buf | None,
    relu: bool,
    dims: tuple,
    window: tuple,
) -> None:
    """The GROUPED_CONV records of a convolution over the padded input ``xp`` (batch, C, HP,
    WP) into ``y``: ``w`` its (M, C/group * KH * KW) weight rows, ``dims`` (batch, C, HP,
    WP, M, group), ``window`` (kh, kw, sh, sw, dh, dw, oh, ow)."""
    batch, c, hp, wp, m, group = dims
    kh, kw, sh, sw, dh, dw, oh, ow = window
    plane = hp * wp
    for e in range(batch):
        a_off, y_off = e * c * plane, e * m * oh * ow
        check_reach(xp, a_off, (c, oh, kh, ow, kw), (plane, sh * wp, dh * wp, sw, dw))
        check_reach(y, y_off, (m * oh * ow,), (1,))
        ctx.b.emit(
            "grouped_conv", n=[group, kh, kw, oh, ow, m // group, int(relu)],
            shape=[sh, sw, dh, dw, c // group], sa=[plane, wp], a=(xp, a_off), b=(w, 0),
            y=(y, y_off), aux=None if bias is None else (bias, 0),
        )  # fmt: skip
