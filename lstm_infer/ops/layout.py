"""Ops that move, pick or make tensors without arithmetic: Concat, Split, Slice, Gather,
GatherElements, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Expand, Tile, Pad, Shape,
Size, ConstantOfShape, Range, CumSum, ReverseSequence.

Shapes computed from run-time values are checked against ``MAX_ELEMENTS`` before anything is
allocated, so a hostile graph cannot ask for a terabyte through a shape tensor.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from lstm_infer.errors import InputError, ModelFormatError
from lstm_infer.ops.base import (
    OpDef,
    RunContext,
    allowed_attrs,
    attr_int,
    attr_ints,
    attr_str,
    broadcast_shape,
    check_elements,
    int_values,
    normalize_axis,
    op,
)
from lstm_infer.ops.layout_infer import INFER

Ins = list[np.ndarray | None]


def _concat(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    arrays = [x for x in ins if x is not None]
    rank = arrays[0].ndim
    axis = normalize_axis(node, attr_int(node, "axis"), rank)
    for x in arrays:
        if x.ndim != rank or x.shape[:axis] + x.shape[axis + 1 :] != (
            arrays[0].shape[:axis] + arrays[0].shape[axis + 1 :]
        ):
            raise InputError(
                f"{node.label}: cannot concatenate shapes {[a.shape for a in arrays]} on axis "
                f"{axis}"
            )
    return [np.concatenate(arrays, axis=axis)]


def _split(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x = ins[0]
    axis = normalize_axis(node, attr_int(node, "axis", 0), x.ndim)
    n_out = len(node.outputs)
    sizes = int_values(node, ins[1] if len(ins) > 1 else None, "split")
    size = x.shape[axis]
    if sizes is None:
        parts = attr_int(node, "num_outputs", n_out)
        if parts != n_out or parts <= 0:
            raise InputError(f"{node.label}: num_outputs {parts} but {n_out} outputs")
        step = -(-size // parts)  # the last part may be smaller (opset 18)
        sizes = [min(step, max(0, size - i * step)) for i in range(parts)]
    if len(sizes) != n_out or any(s < 0 for s in sizes) or sum(sizes) != size:
        raise InputError(
            f"{node.label}: split sizes {sizes} do not cover axis {axis} of size {size} in "
            f"{n_out} parts"
        )
    edges = np.cumsum([0, *sizes])
    sl = [slice(None)] * x.ndim
    outs = []
    for a, b in zip(edges[:-1], edges[1:]):
        sl[axis] = slice(int(a), int(b))
        outs.append(x[tuple(sl)])
    return outs


def _slice(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x = ins[0]
    starts = int_values(node, ins[1], "starts")
    ends = int_values(node, ins[2], "ends")
    axes = int_values(node, ins[3] if len(ins) > 3 else None, "axes")
    steps = int_values(node, ins[4] if len(ins) > 4 else None, "steps")
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise InputError(f"{node.label}: starts, ends, axes and steps differ in length")
    sl = [slice(None)] * x.ndim
    seen = set()
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = normalize_axis(node, a, x.ndim)
        if a in seen:
            raise InputError(f"{node.label}: axis {a} repeated")
        seen.add(a)
        if st == 0:
            raise InputError(f"{node.label}: slice step 0")
        # Python slicing clamps exactly as ONNX specifies (INT_MAX / INT_MIN ends included).
        big = 1 << 62
        sl[a] = slice(max(-big, min(big, s)), max(-big, min(big, e)), st)
    return [x[tuple(sl)]]


def _gather(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x, idx = ins
    axis = normalize_axis(node, attr_int(node, "axis", 0), x.ndim)
    if idx.dtype.kind not in "iu":
        raise InputError(f"{node.label}: indices must be integers, got {idx.dtype}")
    n = x.shape[axis]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise InputError(
            f"{node.label}: an index is outside [-{n}, {n}) (axis {axis} of shape {x.shape})"
        )
    check_elements(node, x.shape[:axis] + idx.shape + x.shape[axis + 1 :])
    return [np.take(x, idx.astype(np.int64), axis=axis)]


def _gather_elements(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x, idx = ins
    axis = normalize_axis(node, attr_int(node, "axis", 0), x.ndim)
    if idx.ndim != x.ndim or idx.dtype.kind not in "iu":
        raise InputError(f"{node.label}: indices must be integers of the data's rank")
    n = x.shape[axis]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise InputError(f"{node.label}: an index is outside [-{n}, {n})")
    for d in range(x.ndim):
        if d != axis and idx.shape[d] > x.shape[d]:
            raise InputError(f"{node.label}: indices shape {idx.shape} exceeds data {x.shape}")
    sl = tuple(slice(0, s) if d != axis else slice(None) for d, s in enumerate(idx.shape))
    return [np.take_along_axis(x[sl], np.where(idx < 0, idx + n, idx).astype(np.int64), axis)]


def _reshape(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x = ins[0]
    shape = int_values(node, ins[1], "shape")
    allowzero = attr_int(node, "allowzero", 0)
    out = []
    for i, d in enumerate(shape):
        if d == 0 and not allowzero:
            if i >= x.ndim:
                raise InputError(f"{node.label}: shape {shape} copies dim {i} of rank {x.ndim}")
            d = x.shape[i]
        out.append(d)
    if out.count(-1) > 1 or any(d < -1 for d in out):
        raise InputError(f"{node.label}: invalid shape {shape}")
    if -1 in out:
        rest = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        if rest == 0 or x.size % rest:
            raise InputError(f"{node.label}: cannot reshape {x.shape} to {shape}")
        out[out.index(-1)] = x.size // rest
    if int(np.prod(out, dtype=object)) != x.size:
        raise InputError(f"{node.label}: cannot reshape {x.shape} ({x.size} elements) to {out}")
    return [x.reshape(out)]


def _flatten(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x = ins[0]
    axis = attr_int(node, "axis", 1)
    if not -x.ndim <= axis <= x.ndim:
        raise InputError(f"{node.label}: axis {axis} out of range for rank {x.ndim}")
    if axis < 0:
        axis += x.ndim
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    return [x.reshape(outer, -1 if outer else int(np.prod(x.shape[axis:], dtype=np.int64)))]


def _transpose(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x = ins[0]
    perm = attr_ints(node, "perm")
    if perm is None:
        perm = list(range(x.ndim))[::-1]
    if sorted(perm) != list(range(x.ndim)):
        raise InputError(f"{node.label}: perm {perm} is not a permutation of rank {x.ndim}")
    return [np.ascontiguousarray(x.transpose(perm))]


def _axes_input(node: Any, ins: Ins, pos: int) -> list[int] | None:
    return int_values(node, ins[pos] if len(ins) > pos else None, "axes")


def _squeeze(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x = ins[0]
    axes = _axes_input(node, ins, 1)
    if axes is None:
        return [x.reshape([d for d in x.shape if d != 1])]
    axes = sorted({normalize_axis(node, a, x.ndim) for a in axes})
    if any(x.shape[a] != 1 for a in axes):
        raise InputError(f"{node.label}: cannot squeeze axes {axes} of shape {x.shape}")
    return [x.reshape([d for i, d in enumerate(x.shape) if i not in axes])]


def _unsqueeze(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x = ins[0]
    axes = _axes_input(node, ins, 1)
    if not axes:
        raise InputError(f"{node.label}: needs axes")
    rank = x.ndim + len(axes)
    norm = sorted(normalize_axis(node, a, rank) for a in axes)
    if len(set(norm)) != len(norm):
        raise InputError(f"{node.label}: repeated axes {axes}")
    shape = list(x.shape)
    for a in norm:
        shape.insert(a, 1)
    return [x.reshape(shape)]


def _expand(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x = ins[0]
    shape = int_values(node, ins[1], "shape")
    out = broadcast_shape(node, x.shape, tuple(shape))
    return [np.broadcast_to(x, out).copy()]


def _tile(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x = ins[0]
    reps = int_values(node, ins[1], "repeats")
    if len(reps) != x.ndim or any(r < 0 for r in reps):
        raise InputError(f"{node.label}: repeats {reps} for rank {x.ndim}")
    check_elements(node, [d * r for d, r in zip(x.shape, reps)])
    return [np.tile(x, reps)]


_PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _check_pad(node: Any) -> None:
    allowed_attrs("mode")(node)
    mode = attr_str(node, "mode", "constant")
    if mode not in _PAD_MODES:
        raise ModelFormatError(f"{node.label}: mode {mode!r} is not one of {_PAD_MODES}")


def _pad(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    """Pad (newest form: pads, constant_value and axes are inputs); negative pads crop."""
    x = ins[0]
    pads = int_values(node, ins[1], "pads")
    axes = int_values(node, ins[3] if len(ins) > 3 else None, "axes")
    axes = list(range(x.ndim)) if axes is None else [normalize_axis(node, a, x.ndim) for a in axes]
    if len(set(axes)) != len(axes) or len(pads) != 2 * len(axes):
        raise InputError(f"{node.label}: {len(pads)} pads for {len(axes)} distinct axes")
    mode = attr_str(node, "mode", "constant")
    widths = [[0, 0] for _ in range(x.ndim)]
    for i, a in enumerate(axes):
        widths[a] = [pads[i], pads[len(axes) + i]]
    out_shape = [d + b + e for d, (b, e) in zip(x.shape, widths)]
    check_elements(node, out_shape)
    crop = tuple(slice(max(0, -b), d - max(0, -e)) for d, (b, e) in zip(x.shape, widths))
    x = x[crop]
    grow = [(max(0, b), max(0, e)) for b, e in widths]
    if mode == "constant":
        value = ins[2] if len(ins) > 2 and ins[2] is not None else None
        if value is not None and value.size != 1:
            raise InputError(f"{node.label}: constant_value must hold one value, got {value.size}")
        fill = value.reshape(()).astype(x.dtype) if value is not None else x.dtype.type(0)
        return [np.pad(x, grow, mode="constant", constant_values=fill)]
    for (b, e), d in zip(grow, x.shape):
        if (b or e) and d == 0:
            raise InputError(f"{node.label}: mode {mode!r} cannot pad an empty axis")
        if mode == "reflect" and max(b, e) >= d:
            raise InputError(
                f"{node.label}: reflect pads {(b, e)} must be smaller than the axis ({d})"
            )
    return [np.pad(x, grow, mode={"edge": "edge", "reflect": "reflect", "wrap": "wrap"}[mode])]


def _shape(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x = ins[0]
    rank = x.ndim
    start = attr_int(node, "start", 0)
    end = attr_int(node, "end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return [np.array(x.shape[start:end], dtype=np.int64)]


def _size(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    return [np.array(ins[0].size, dtype=np.int64)]


def _constant_of_shape(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    shape = int_values(node, ins[0], "shape")
    check_elements(node, shape)
    value = node.attrs.get("value")
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    if fill.size != 1:
        raise ModelFormatError(f"{node.label}: value must hold one element")
    return [np.full(shape, fill[0], dtype=fill.dtype)]


def _range(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    start, limit, delta = (np.asarray(v).reshape(()) for v in ins)
    if delta == 0:
        raise InputError(f"{node.label}: delta is 0")
    count = max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)
    check_elements(node, [count])
    return [(start + np.arange(count, dtype=start.dtype) * delta).astype(start.dtype)]


def _cumsum(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    x, axis_t = ins
    axis = normalize_axis(node, int(np.asarray(axis_t).reshape(-1)[0]), x.ndim)
    exclusive, reverse = attr_int(node, "exclusive", 0), attr_int(node, "reverse", 0)
    y = np.flip(x, axis) if reverse else x
    c = np.cumsum(y, axis=axis, dtype=x.dtype)
    if exclusive:
        c = np.concatenate(
            [np.zeros_like(np.take(c, [0], axis=axis)), np.take(c, range(c.shape[axis] - 1), axis)],
            axis=axis,
        )
    return [np.ascontiguousarray(np.flip(c, axis) if reverse else c)]


def _check_reverse_sequence(node: Any) -> None:
    allowed_attrs("batch_axis", "time_axis")(node)
    axes = (attr_int(node, "batch_axis", 1), attr_int(node, "time_axis", 0))
    if sorted(axes) != [0, 1]:
        raise ModelFormatError(
            f"{node.label}: batch_axis and time_axis must be 0 and 1 (either way), got {axes}"
        )


def _reverse_sequence(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[np.ndarray]:
    """out[t, b] = x[L_b - 1 - t, b] for t < L_b, x[t, b] after (time_axis 0; Keras writes
    ``go_backwards`` so)."""
    x, lengths = ins
    batch_axis, time_axis = attr_int(node, "batch_axis", 1), attr_int(node, "time_axis", 0)
    if x.ndim < 2:
        raise InputError(f"{node.label}: input must have rank >= 2, got shape {x.shape}")
    steps, batch = x.shape[time_axis], x.shape[batch_axis]
    if lengths.dtype.kind not in "iu" or lengths.shape != (batch,):
        raise InputError(
            f"{node.label}: sequence_lens must be {batch} integers, got {lengths.dtype} "
            f"{lengths.shape}"
        )
    lens = lengths.astype(np.int64)
    if np.any(lens < 0) or np.any(lens > steps):
        raise InputError(f"{node.label}: sequence_lens must be in [0, {steps}], got {lens}")
    t = np.arange(steps)[:, None]
    index = np.where(t < lens[None, :], lens[None, :] - 1 - t, t)  # [T, B]
    if time_axis == 1:
        index = index.T
    index = index.reshape(index.shape + (1,) * (x.ndim - 2))
    return [np.take_along_axis(x, np.broadcast_to(index, x.shape), axis=time_axis)]


_OPS: dict[str, OpDef] = {
    "Concat": op("Concat", _concat, inputs=(1, -1), check=allowed_attrs(required=("axis",))),
    "Split": op(
        "Split", _split, inputs=(1, 2), outputs=(1, -1), check=allowed_attrs("axis", "num_outputs")
    ),
    "Slice": op("Slice", _slice, inputs=(3, 5), check=allowed_attrs()),
    "Gather": op("Gather", _gather, inputs=(2, 2), check=allowed_attrs("axis")),
    "GatherElements": op(
        "GatherElements", _gather_elements, inputs=(2, 2), check=allowed_attrs("axis")
    ),
    "Reshape": op("Reshape", _reshape, inputs=(2, 2), check=allowed_attrs("allowzero")),
    "Flatten": op("Flatten", _flatten, check=allowed_attrs("axis")),
    "Transpose": op("Transpose", _transpose, check=allowed_attrs("perm")),
    "Squeeze": op("Squeeze", _squeeze, inputs=(1, 2), check=allowed_attrs()),
    "Unsqueeze": op("Unsqueeze", _unsqueeze, inputs=(2, 2), check=allowed_attrs()),
    "Expand": op("Expand", _expand, inputs=(2, 2), check=allowed_attrs()),
    "Tile": op("Tile", _tile, inputs=(2, 2), check=allowed_attrs()),
    "Pad": op("Pad", _pad, inputs=(2, 4), check=_check_pad),
    "Shape": op("Shape", _shape, check=allowed_attrs("start", "end")),
    "Size": op("Size", _size, check=allowed_attrs()),
    "ConstantOfShape": op("ConstantOfShape", _constant_of_shape, check=allowed_attrs("value")),
    "Range": op("Range", _range, inputs=(3, 3), check=allowed_attrs()),
    "CumSum": op("CumSum", _cumsum, inputs=(2, 2), check=allowed_attrs("exclusive", "reverse")),
    "ReverseSequence": op(
        "ReverseSequence", _reverse_sequence, inputs=(2, 2), check=_check_reverse_sequence
    ),
}
# Each op's shape inference lives in lstm_infer.ops.layout_infer (this module would pass 600
# lines with it).
OPS: dict[str, OpDef] = {name: replace(o, infer=INFER[name]) for name, o in _OPS.items()}
