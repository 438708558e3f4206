"""Shape inference of the layout ops (lstm_infer.ops.layout): Concat, Split, Slice, Gather,
Reshape, ..., one function per op, collected in :data:`INFER`.

Ops whose output shape is an input's values (Reshape's shape, Expand's, Tile's repeats,
Slice's starts and ends, Pad's pads, Squeeze's and Unsqueeze's axes, ConstantOfShape,
Range) read them from ``consts`` when that input is a constant, or from the value inference
followed for a computed shape tensor (``TensorType.value``: Shape, Gather, Concat, Slice,
Squeeze, Unsqueeze and Reshape carry it); otherwise they give what the types alone say (the
rank where it is known, unknown dims). Nothing here allocates from an inferred shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer.errors import ModelFormatError
from lstm_infer.ops.base import (
    MAX_RANK,
    InferFn,
    attr_int,
    attr_ints,
    const_ints,
    dim_from_product,
    dim_product,
    dtype_of,
    infer_axis,
    merge_dim,
    same_as_input,
    shape_of,
    typed,
    unknown,
    values_of,
    vector_length,
    with_value,
)
from lstm_infer.ops.base import broadcast as broadcast_shapes
from lstm_infer.tensor_type import Dim, TensorType

Types = list[TensorType | None]
Consts = dict[int, np.ndarray]
# Slice ends past this are "to the end" (ONNX writes INT64_MAX); the run clamps the same way.
_BIG = 1 << 62


def _unknown_dims(n: int | None) -> tuple[Dim, ...] | None:
    if n is None:
        return None
    if not 0 <= n <= MAX_RANK:
        raise ModelFormatError(f"rank {n} is outside [0, {MAX_RANK}]")
    return (None,) * n


def _concat(node: Any, types: Types, consts: Consts) -> list[TensorType]:
    given = [t for t in types if t is not None]
    dtype = dtype_of(given[0])
    shapes = [shape_of(t) for t in given]
    known = [s for s in shapes if s is not None]
    if not known:
        return [unknown(dtype)]
    rank = len(known[0])
    if any(len(s) != rank for s in known):
        raise ModelFormatError(f"{node.label}: inputs of ranks {sorted({len(s) for s in known})}")
    axis = infer_axis(node, attr_int(node, "axis"), rank)
    out: list[Dim] = []
    for d in range(rank):
        if d == axis:
            if len(known) < len(shapes):
                out.append(None)
                continue
            parts = [s[d] for s in known]
            if all(isinstance(p, int) for p in parts):
                out.append(sum(parts))
            elif len(parts) == 1:
                out.append(parts[0])
            else:
                out.append(None)
        else:
            out.append(merge_dim(node, [s[d] for s in known], f"dims on axis {d}"))
    result = typed(node, dtype, out)
    if rank == 1:
        parts = [values_of(node, types, consts, i) for i, t in enumerate(types) if t is not None]
        if all(p is not None for p in parts):
            result = with_value(result, [v for p in parts for v in p])  # type: ignore[union-attr]
    return [result]


def _split(node: Any, types: Types, consts: Consts) -> list[TensorType]:
    t = types[0]
    dtype, shape = dtype_of(t), shape_of(t)
    n_out = len(node.outputs)
    if shape is None:
        return [unknown(dtype)] * n_out
    axis = infer_axis(node, attr_int(node, "axis", 0), len(shape))
    has_split = len(node.inputs) > 1 and bool(node.inputs[1])
    sizes: list[Dim] | None = const_ints(node, consts, 1, "split") if has_split else None
    size = shape[axis]
    if sizes is None and not has_split:
        parts = attr_int(node, "num_outputs", n_out)
        if parts != n_out:  # (checked before any list of that length is made)
            raise ModelFormatError(f"{node.label}: num_outputs {parts} but {n_out} outputs")
        if isinstance(size, int):
            step = -(-size // max(parts, 1))
            sizes = [min(step, max(0, size - i * step)) for i in range(parts)]
        elif n_out == 1:
            sizes = [size]
    if sizes is None:
        sizes = [None] * n_out
    if len(sizes) != n_out:
        raise ModelFormatError(f"{node.label}: {len(sizes)} split sizes for {n_out} outputs")
    if isinstance(size, int) and all(isinstance(s, int) for s in sizes) and sum(sizes) != size:
        raise ModelFormatError(f"{node.label}: split sizes {sizes} do not cover {size}")
    return [typed(node, dtype, shape[:axis] + (s,) + shape[axis + 1 :]) for s in sizes]


def _slice_length(d: Dim, start: int, end: int, step: int) -> Dim:
    if isinstance(d, int):
        sl = slice(max(-_BIG, min(_BIG, start)), max(-_BIG, min(_BIG, end)), step)
        return len(range(*sl.indices(d)))
    if start == 0 and end >= _BIG // 2 and step == 1:
        return d  # the whole axis
    return None


def _slice(node: Any, types: Types, consts: Consts) -> list[TensorType]:
    t = types[0]
    dtype, shape = dtype_of(t), shape_of(t)
    if shape is None:
        return [unknown(dtype)]
    rank = len(shape)

    def given(pos: int) -> bool:
        return len(node.inputs) > pos and bool(node.inputs[pos])

    starts, ends = const_ints(node, consts, 1, "starts"), const_ints(node, consts, 2, "ends")
    axes = const_ints(node, consts, 3, "axes") if given(3) else None
    steps = const_ints(node, consts, 4, "steps") if given(4) else None
    if (
        starts is None
        or ends is None
        or (given(3) and axes is None)
        or (given(4) and steps is None)
    ):
        if given(3) and axes is not None:
            cut = {infer_axis(node, a, rank) for a in axes}
            return [typed(node, dtype, [None if i in cut else d for i, d in enumerate(shape)])]
        return [typed(node, dtype, _unknown_dims(rank))]
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ModelFormatError(f"{node.label}: starts, ends, axes and steps differ in length")
    out = list(shape)
    seen: set[int] = set()
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = infer_axis(node, a, rank)
        if a in seen or st == 0:
            raise ModelFormatError(f"{node.label}: axis {a} repeated or step 0")
        seen.add(a)
        out[a] = _slice_length(shape[a], s, e, st)
    result = typed(node, dtype, out)
    value = values_of(node, types, consts, 0)
    if rank == 1 and value is not None:
        s, e, st = starts[0], ends[0], steps[0]
        result = with_value(result, value[max(-_BIG, min(_BIG, s)) : max(-_BIG, min(_BIG, e)) : st])
    return [result]


def _gather(node: Any, types: Types, consts: Consts) -> list[TensorType]:
    x, idx = types[0], types[1]
    shape, ishape = shape_of(x), shape_of(idx)
    if shape is None or ishape is None:
        return [unknown(dtype_of(x))]
    axis = infer_axis(node, attr_int(node, "axis", 0), len(shape))
    result = typed(node, dtype_of(x), shape[:axis] + ishape + shape[axis + 1 :])
    value, picks = values_of(node, types, consts, 0), values_of(node, types, consts, 1)
    if len(shape) == 1 and value is not None and picks is not None:
        n = len(value)
        if all(isinstance(i, int) and -n <= i < n for i in picks):
            result = with_value(result, [value[i] for i in picks])  # type: ignore[index]
    return [result]


def _gather_elements(node: Any, types: Types, consts: Consts) -> list[TensorType]:
    return [typed(node, dtype_of(types[0]), shape_of(types[1]))]


def _reshape(node: Any, types: Types, consts: Consts) -> list[TensorType]:
    x = types[0]
    dtype, shape = dtype_of(x), shape_of(x)
    target = values_of(node, types, consts, 1)
    if target is None:
        return [typed(node, dtype, _unknown_dims(vector_length(types[1])))]
    allowzero = attr_int(node, "allowzero", 0)
    out: list[Dim] = []
    for i, d in enumerate(target):
        if not isinstance(d, int):
            out.append(d)  # a name, or unknown (neither may be 0 or -1 there: then unknown)
            continue
        if d == 0 and not allowzero:
            if shape is None:
                out.append(None)
                continue
            if i >= len(shape):
                raise ModelFormatError(f"{node.label}: shape {target} copies dim {i} of rank "
                                       f"{len(shape)}")  # fmt: skip
            out.append(shape[i])
        elif d < -1:
            raise ModelFormatError(f"{node.label}: invalid shape {target}")
        else:
            out.append(d)
    if target.count(-1) > 1:
        raise ModelFormatError(f"{node.label}: invalid shape {target}")
    total = None if shape is None else dim_product(shape)
    if None in target:
        # An unknown entry might be 0 (copy) or -1 (the rest): a name elsewhere still holds.
        out = [d if isinstance(d, str) or (isinstance(t, int) and t > 0) else None
               for d, t in zip(out, target)]  # fmt: skip
    elif -1 in target:
        i = target.index(-1)
        rest = dim_product([d for j, d in enumerate(out) if j != i])
        out[i] = _quotient(node, total, rest, target)
    elif total is not None and not total[1]:
        have = dim_product(out)
        if have is not None and not have[1] and have[0] != total[0]:
            raise ModelFormatError(f"{node.label}: cannot reshape {shape} to {target}")
    result = typed(node, dtype, out)
    if len(out) <= 1:
        result = with_value(result, values_of(node, types, consts, 0))
    return [result]


def _quotient(node: Any, total: Any, rest: Any, target: list[int]) -> Dim:
    """total / rest as one dim (products as dim_product gives them), None if unknown."""
    if total is None or rest is None:
        return None
    names = list(total[1])
    for n in rest[1]:
        if n not in names:
            return None
        names.remove(n)
    if rest[0] == 0:
        if not names and total[0] == 0:
            raise ModelFormatError(f"{node.label}: -1 in {target} with a zero dim")
        return None
    if total[0] % rest[0]:
        if not names:
            raise ModelFormatError(f"{node.label}: cannot reshape to {target}")
        return None
    return dim_from_product((total[0] // rest[0], tuple(names)))


def _flatten(node: Any, types: Types, consts: Consts) -> list[TensorType]:
    x = types[0]
    shape = shape_of(x)
    if shape is None:
        return [typed(node, dtype_of(x), (None, None))]
    axis = attr_int(node, "axis", 1)
    if not -len(shape) <= axis <= len(shape):
        raise ModelFormatError(f"{node.label}: axis {axis} out of range for rank {len(shape)}")
    if axis < 0:
        axis += len(shape)
    outer = dim_from_product(dim_product(shape[:axis]))
    inner = dim_from_product(dim_product(shape[axis:]))
    return [typed(node, dtype_of(x), (outer, inner))]


def _transpose(node: Any, types: Types, consts: Consts) -> list[TensorType]:
    x = types[0]
    shape = shape_of(x)
    perm = attr_ints(node, "perm")
    if shape is None:
        return [typed(node, dtype_of(x), _unknown_dims(None if perm is None else len(perm)))]
    if perm is None:
        perm = list(range(len(shape)))[::-1]
    if sorted(perm) != list(range(len(shape))):
        raise ModelFormatError(f"{node.label}: perm {perm} is not a permutation of rank "
                               f"{len(shape)}")  # fmt: skip
    return [typed(node, dtype_of(x), [shape[p] for p in perm])]


def _squeeze(node: Any, types: Types, consts: Consts) -> list[TensorType]:
    x = types[0]
    dtype, shape = dtype_of(x), shape_of(x)
    has_axes = len(node.inputs) > 1 and bool(node.inputs[1])
    if shape is None:
        return [unknown(dtype)]
    if not has_axes:
        if all(isinstance(d, int) for d in shape):
            return [typed(node, dtype, [d for d in shape if d != 1])]
        return [unknown(dtype)]  # a name might be 1
    axes = const_ints(node, consts, 1, "axes")
    if axes is None:
        n = vector_length(types[1])
        return [typed(node, dtype, _unknown_dims(None if n is None else len(shape) - n))]
    cut = {infer_axis(node, a, len(shape)) for a in axes}
    for a in cut:
        if isinstance(shape[a], int) and shape[a] != 1:
            raise ModelFormatError(f"{node.label}: cannot squeeze axis {a} of shape {shape}")
    result = typed(node, dtype, [d for i, d in enumerate(shape) if i not in cut])
    return [with_value(result, values_of(node, types, consts, 0))]


def _unsqueeze(node: Any, types: Types, consts: Consts) -> list[TensorType]:
    x = types[0]
    dtype, shape = dtype_of(x), shape_of(x)
    axes = const_ints(node, consts, 1, "axes")
    if shape is None:
        return [unknown(dtype)]
    if axes is None:
        n = vector_length(types[1])
        return [typed(node, dtype, _unknown_dims(None if n is None else len(shape) + n))]
    rank = len(shape) + len(axes)
    if rank > MAX_RANK:
        raise ModelFormatError(f"{node.label}: output rank {rank} exceeds {MAX_RANK}")
    norm = sorted(infer_axis(node, a, rank) for a in axes)
    if len(set(norm)) != len(norm):
        raise ModelFormatError(f"{node.label}: repeated axes {axes}")
    out: list[Dim] = list(shape)
    for a in norm:
        out.insert(a, 1)
    return [with_value(typed(node, dtype, out), values_of(node, types, consts, 0))]


def _expand(node: Any, types: Types, consts: Consts) -> list[TensorType]:
    x = types[0]
    dtype, shape = dtype_of(x), shape_of(x)
    target = values_of(node, types, consts, 1)
    if target is None:
        target = _unknown_dims(vector_length(types[1]))
        if target is None:
            return [unknown(dtype)]
    if any(isinstance(d, int) and d < 0 for d in target):
        raise ModelFormatError(f"{node.label}: shape {target} has a negative dim")
    if shape is None:
        return [unknown(dtype)]
    return [typed(node, dtype, broadcast_shapes(node, [shape, tuple(target)]))]


def _tile(node: Any, types: Types, consts: Consts) -> list[TensorType]:
    x = types[0]
    dtype, shape = dtype_of(x), shape_of(x)
    reps = values_of(node, types, consts, 1)
    if shape is None:
        return [unknown(dtype)]
    if reps is None:
        return [typed(node, dtype, _unknown_dims(len(shape)))]
    if len(reps) != len(shape) or any(isinstance(r, int) and r < 0 for r in reps):
        raise ModelFormatError(f"{node.label}: repeats {reps} for rank {len(shape)}")
    out = [_times(d, r) for d, r in zip(shape, reps)]
    return [typed(node, dtype, out)]


def _times(d: Dim, r: Dim) -> Dim:
    if isinstance(d, int) and isinstance(r, int):
        return d * r
    if d == 1 or r == 1:
        return r if d == 1 else d
    return None


def _pad(node: Any, types: Types, consts: Consts) -> list[TensorType]:
    x = types[0]
    dtype, shape = dtype_of(x), shape_of(x)
    if shape is None:
        return [unknown(dtype)]
    rank = len(shape)
    pads = const_ints(node, consts, 1, "pads")
    has_axes = len(node.inputs) > 3 and bool(node.inputs[3])
    axes = const_ints(node, consts, 3, "axes") if has_axes else list(range(rank))
    if pads is None or axes is None:
        return [typed(node, dtype, _unknown_dims(rank))]
    axes = [infer_axis(node, a, rank) for a in axes]
    if len(set(axes)) != len(axes) or len(pads) != 2 * len(axes):
        raise ModelFormatError(f"{node.label}: {len(pads)} pads for {len(axes)} distinct axes")
    out = list(shape)
    for i, a in enumerate(axes):
        grow = pads[i] + pads[len(axes) + i]
        d = shape[a]
        out[a] = d + grow if isinstance(d, int) else d if grow == 0 else None
        if isinstance(out[a], int) and out[a] < 0:
            raise ModelFormatError(f"{node.label}: pads {pads} crop axis {a} of size {d} below 0")
    return [typed(node, dtype, out)]


def _shape(node: Any, types: Types, consts: Consts) -> list[TensorType]:
    shape = shape_of(types[0])
    if shape is None:
        return [typed(node, "int64", (None,))]
    rank = len(shape)
    start = attr_int(node, "start", 0)
    end = attr_int(node, "end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return [with_value(typed(node, "int64", (max(end - start, 0),)), shape[start:end])]


def _size(node: Any, types: Types, consts: Consts) -> list[TensorType]:
    shape = shape_of(types[0])
    size = None if shape is None else dim_from_product(dim_product(shape))
    return [with_value(typed(node, "int64", ()), None if size is None else [size])]


def _constant_of_shape(node: Any, types: Types, consts: Consts) -> list[TensorType]:
    value = node.attrs.get("value")
    dtype = "float32" if value is None else str(np.asarray(value).dtype)
    target = values_of(node, types, consts, 0)
    if target is None:
        return [typed(node, dtype, _unknown_dims(vector_length(types[0])))]
    if any(isinstance(d, int) and d < 0 for d in target):
        raise ModelFormatError(f"{node.label}: shape {target} has a negative dim")
    return [typed(node, dtype, target)]


def _range(node: Any, types: Types, consts: Consts) -> list[TensorType]:
    dtype = dtype_of(types[0])
    if not all(i in consts for i in range(3)):
        return [typed(node, dtype, (None,))]
    start, limit, delta = (float(np.asarray(consts[i]).reshape(-1)[0]) for i in range(3))
    if delta == 0 or not all(np.isfinite((start, limit, delta))):
        raise ModelFormatError(f"{node.label}: range({start}, {limit}, {delta})")
    count = max(int(np.ceil((limit - start) / delta)), 0)
    return [typed(node, dtype, (count,))]


INFER: dict[str, InferFn] = {
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Expand": _expand,
    "Tile": _tile,
    "Pad": _pad,
    "Shape": _shape,
    "Size": _size,
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "CumSum": same_as_input(),
    "ReverseSequence": same_as_input(),
}
