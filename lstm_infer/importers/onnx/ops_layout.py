"""Constants and layout ops of the stack lowering: what exporters put between the layers.

Identity, Dropout, Cast, Shape, Size, ConstantOfShape, Expand, Transpose, Squeeze,
Unsqueeze, Reshape, Flatten, Concat, Split, Slice and Gather. On constants (shape vectors whose
entries may be symbolic :class:`~lstm_infer.importers.onnx.values.Dim`) they compute; on
sequences they only move axis roles around, window an axis (Slice, Split) or reverse it; a
Gather of a float table by the token input is the embedding. Concatenated steps of an unrolled
RNN are handed to :mod:`lstm_infer.importers.onnx.unrolled`. ``OPS`` maps each op type to its
handler.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer.errors import ModelFormatError
from lstm_infer.importers.onnx.base import Handler
from lstm_infer.importers.onnx.unrolled import UnrolledCells
from lstm_infer.importers.onnx.values import (
    Const,
    Data,
    Dim,
    EmbeddingStage,
    Fill,
    FinalState,
    Hidden,
    Seq,
    Tokens,
    Window,
    _axis,
    _check_elements,
    _dim_div,
    _dim_prod,
    _ints,
    _is_one,
    _is_symbolic,
    _norm_dim,
    _scalar_float,
    _shape_array,
    _shape_elements,
    _static_ints,
    _Unsupported,
)
from lstm_infer.ops.elementwise import ONNX_DTYPES

# Slice ends at or beyond this mean "to the end" (exporters write INT64_MAX or INT32_MAX).
_HUGE = 1 << 30


class LayoutOps(UnrolledCells):
    """Handlers of the constant and layout ops (a mixin of ``GraphLowering``)."""

    def _op_Identity(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return ins[0]

    def _op_Dropout(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        if len(ins) > 2 and ins[2] is not None:
            mode = ins[2]
            if not (isinstance(mode, Const) and not bool(np.any(mode.value))):
                raise _Unsupported("training_mode must be a constant false at inference")
        if len(node.outputs) > 1 and node.outputs[1]:
            return [ins[0], Fill(1.0, tuple(self._dims(ins[0])))]
        return ins[0]

    def _op_Cast(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        v = ins[0]
        to = np.dtype(ONNX_DTYPES[int(attrs["to"])])
        if isinstance(v, Const):
            if _is_symbolic(v.value):
                if to.kind not in "iu":
                    raise _Unsupported("a shape cast to a non-integer type")
                return v
            return Const(v.value.astype(to))
        if isinstance(v, Fill):
            return v
        if isinstance(v, Tokens):
            if to.kind not in "iu":
                raise _Unsupported("token ids cast to a non-integer type")
            return v
        if to.kind != "f":
            raise _Unsupported(f"float data cast to {to}")
        return v  # the engine computes in float32 whatever the graph's float type

    def _op_Shape(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Const:
        dims = self._dims(ins[0])
        start = attrs.get("start", 0)
        end = attrs.get("end", len(dims))
        return Const(_shape_array(dims[slice(start, end)]))

    def _op_Size(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Const:
        return Const(_shape_array([_dim_prod(self._dims(ins[0]))]).reshape(()))

    def _op_ConstantOfShape(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        dims = _ints(ins[0], "the shape")
        value = np.asarray(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
        if value.size != 1:
            raise ModelFormatError(f"'value' must hold one element, got shape {value.shape}")
        if any(isinstance(d, int) and d < 0 for d in dims):
            raise ModelFormatError(f"negative dims in shape {dims}")
        if any(isinstance(d, Dim) for d in dims):
            return Fill(float(value.reshape(-1)[0]), tuple(dims))
        _check_elements(_shape_elements(dims), "the constant")
        return Const(np.full(dims, value.reshape(-1)[0], dtype=value.dtype))

    def _op_Expand(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        v = ins[0]
        dims = _ints(ins[1], "the target shape")
        src = self._dims(v)
        rank = max(len(src), len(dims))
        src = [1] * (rank - len(src)) + src
        dims = [1] * (rank - len(dims)) + dims
        out = [d if _is_one(s) else s for s, d in zip(src, dims)]
        if any(isinstance(d, int) and d < 0 for d in out):
            raise ModelFormatError(f"negative dims in the target shape {dims}")
        if isinstance(v, Const) and not _is_symbolic(v.value):
            if not any(isinstance(d, Dim) for d in out):
                _check_elements(_shape_elements(out), "the expanded constant")
                return Const(np.broadcast_to(v.value, out).copy())
            scalar = _scalar_float(v.value)
            if scalar is None:
                raise _Unsupported("expands a non-uniform constant to a symbolic shape")
            return Fill(scalar, tuple(out))
        if isinstance(v, Fill):
            return Fill(v.value, tuple(out))
        if isinstance(v, Data) and all(_is_one(d) or d == s for s, d in zip(src, dims)):
            return v
        raise _Unsupported("Expand that broadcasts sequence data is not supported")

    def _op_Transpose(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        v = ins[0]
        rank = len(self._dims(v))
        perm = list(attrs.get("perm", range(rank - 1, -1, -1)))
        if sorted(perm) != list(range(rank)):
            raise _Unsupported(f"perm {perm} is not a permutation of {rank} axes")
        if isinstance(v, Const):
            return Const(np.transpose(v.value, perm))
        if isinstance(v, Fill):
            return Fill(v.value, tuple(v.dims[p] for p in perm))
        if isinstance(v, FinalState) and perm != list(range(rank)):
            raise _Unsupported("transposing a final recurrent state is not supported")
        if isinstance(v, Hidden) and v.cell.steps == 1:
            v = self._single_step_sequence(v)  # to batch-first: it is the output sequence
        return self._with_axes(v, [v.axes[p] for p in perm])

    def _squeeze_axes(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[int] | None:
        return _static_ints(ins[1], "axes") if len(ins) > 1 and ins[1] is not None else None

    def _op_Squeeze(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        v = ins[0]
        dims = self._dims(v)
        axes = self._squeeze_axes(node, ins, attrs)
        if axes is None:
            axes = [k for k, d in enumerate(dims) if _is_one(d)]
        axes = sorted({_axis(a, len(dims)) for a in axes})
        for a in axes:
            if not _is_one(dims[a]):
                raise _Unsupported(f"squeezes axis {a} of size {dims[a]}")
        keep = [k for k in range(len(dims)) if k not in axes]
        if isinstance(v, Const):
            return Const(np.squeeze(v.value, axis=tuple(axes)))
        if isinstance(v, Fill):
            return Fill(v.value, tuple(dims[k] for k in keep))
        if isinstance(v, FinalState):
            raise _Unsupported("squeezing a final recurrent state is not supported")
        for a in axes:
            for r in v.axes[a]:
                if self.roles.kind_of(r) in ("time", "batch") and not any(
                    w.role == r for w in getattr(v, "windows", ())
                ):
                    raise _Unsupported(
                        "squeezes away the time or batch axis (a graph exported with a fixed "
                        "batch or sequence length of 1?)"
                    )
        return self._with_axes(v, [v.axes[k] for k in keep])

    def _op_Unsqueeze(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        v = ins[0]
        axes = self._squeeze_axes(node, ins, attrs)
        if axes is None:
            raise _Unsupported("Unsqueeze without axes")
        rank = len(self._dims(v)) + len(axes)
        axes = sorted(_axis(a, rank) for a in axes)
        if isinstance(v, Const):
            return Const(np.expand_dims(v.value, tuple(axes)))
        if isinstance(v, Fill):
            dims = list(v.dims)
            for a in axes:
                dims.insert(a, 1)
            return Fill(v.value, tuple(dims))
        new = list(v.axes)
        for a in axes:
            new.insert(a, self._unit_axis())
        return self._with_axes(v, new)

    def _op_Reshape(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        v = ins[0]
        target = _ints(ins[1], "the target shape")
        return self._reshape(v, target, bool(attrs.get("allowzero", 0)))

    def _op_Flatten(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        v = ins[0]
        dims = self._dims(v)
        axis = _axis(attrs.get("axis", 1), len(dims) + 1) if dims else 0
        return self._reshape(v, [_dim_prod(dims[:axis]), _dim_prod(dims[axis:])], False)

    def _reshape(self, v: Any, target: list[Any], allowzero: bool) -> Any:
        dims = self._dims(v)
        resolved = list(target)
        for k, d in enumerate(resolved):
            if d == 0 and not allowzero:
                if k >= len(dims):
                    raise _Unsupported(f"target dim {k} copies a missing input dim")
                resolved[k] = dims[k]
        if sum(1 for d in resolved if d == -1) > 1:
            raise _Unsupported(f"target shape {target} has several -1")
        if isinstance(v, FinalState):
            if resolved == dims:
                return v
            raise _Unsupported("reshaping a final recurrent state is not supported")
        if isinstance(v, Data):
            groups = self._regroup(v, resolved)
            if groups is None:
                raise _Unsupported(
                    f"cannot follow the reshape of {dims} to {resolved} (axes would mix the "
                    "batch, time and feature dimensions)"
                )
            return self._with_axes(v, groups)
        if -1 in resolved:
            k = resolved.index(-1)
            known = _dim_prod(d for d in resolved if d != -1)
            inferred = _dim_div(_dim_prod(dims), known)
            if inferred is None:
                raise _Unsupported(f"cannot infer the -1 of {target} from shape {dims}")
            resolved[k] = inferred
        if isinstance(v, Const):
            if any(isinstance(d, Dim) for d in resolved):
                raise _Unsupported("reshapes a constant to a symbolic shape")
            return Const(v.value.reshape(resolved))
        return Fill(v.value, tuple(resolved))

    def _regroup(self, v: Any, target: list[Any]) -> list[tuple[str, ...]] | None:
        """Split the row-major role sequence of ``v`` into consecutive groups of ``target``.

        Dims before a -1 are matched from the front, those after it from the back, and the
        -1 takes the roles in between. A static target dim matched against one symbolic size
        (an exporter that fixed the sequence length in a reshape) is accepted as that size.
        """
        flat = [r for ax in v.axes for r in ax]
        sizes = [self._role_size(v, r) for r in flat]
        k = target.index(-1) if -1 in target else len(target)
        front = self._match_dims(flat, sizes, target[:k])
        if front is None:
            return None
        used = sum(len(g) for g in front)
        back_dims = target[k + 1 :]
        back = self._match_dims(flat[used:][::-1], sizes[used:][::-1], back_dims[::-1])
        if back is None:
            return None
        back = [g[::-1] for g in back[::-1]]
        rest_end = len(flat) - sum(len(g) for g in back)
        middle = flat[used:rest_end]
        if k < len(target):
            groups = [*front, tuple(middle) or self._unit_axis(), *back]
        else:
            if any(not _is_one(sz) for sz in sizes[used:]) or back:
                return None
            groups = list(front)
            if middle:
                if not groups:
                    return None
                groups[-1] = groups[-1] + tuple(middle)
        return groups

    def _match_dims(
        self, flat: list[str], sizes: list[Any], dims: list[Any]
    ) -> list[tuple[str, ...]] | None:
        i, out = 0, []
        for d in dims:
            group: list[str] = []
            if _is_one(d):
                if i < len(flat) and _is_one(sizes[i]):
                    group.append(flat[i])
                    i += 1
                else:
                    group.append(self._unit_axis()[0])
                out.append(tuple(group))
                continue
            prod: Any = 1
            while not self._dims_match(prod, d):
                if i >= len(flat):
                    return None
                group.append(flat[i])
                prod = _norm_dim(prod * sizes[i])
                i += 1
                if isinstance(prod, int) and isinstance(d, int) and prod > d:
                    return None
            out.append(tuple(group))
        return out

    def _dims_match(self, have: Any, want: Any) -> bool:
        if have == want:
            return True
        if isinstance(have, Dim) and isinstance(want, int) and len(have.syms) == 1:
            return want > 1 and want % have.coef == 0
        return False

    def _op_Concat(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        parts = [v for v in ins if v is not None]
        rank = len(self._dims(parts[0]))
        axis = _axis(int(attrs["axis"]), rank)
        if all(isinstance(v, Const) for v in parts):
            return Const(np.concatenate([v.value for v in parts], axis=axis))
        if all(isinstance(v, (Const, Fill)) for v in parts):
            values = {v.value if isinstance(v, Fill) else _scalar_float(v.value) for v in parts}
            if len(values) != 1 or None in values:
                raise _Unsupported("concatenates constants of different values")
            dims = list(self._dims(parts[0]))
            lengths = [self._dims(v)[axis] for v in parts]
            if not all(isinstance(n, int) for n in lengths):
                raise _Unsupported("concatenates constants along a symbolic axis")
            dims[axis] = sum(lengths)
            return Fill(values.pop(), tuple(dims))
        if all(isinstance(v, Hidden) for v in parts):
            cells = {id(v.cell) for v in parts}
            if len(cells) == 1 and (len(parts) > 1 or parts[0].cell.steps == 1):
                return self._hidden_sequence(parts, axis)
            if len(parts) == 2 and axis == rank - 1 and all(v.cell.steps == 1 for v in parts):
                # Unrolled over one step, the two directions' outputs are their last steps.
                parts = [self._single_step_sequence(v) for v in parts]
            else:
                parts = [self._as_final_state(v) for v in parts]
        if all(isinstance(v, (Hidden, FinalState)) for v in parts):
            return self._concat_states([self._as_final_state(v) for v in parts], axis)
        if all(isinstance(v, Seq) for v in parts) and len(parts) == 2:
            return self._concat_directions(parts[0], parts[1], axis)
        kinds = sorted({type(v).__name__ for v in parts})
        raise _Unsupported(f"cannot concatenate {kinds} on axis {axis}")

    def _op_Split(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
        v = ins[0]
        dims = self._dims(v)
        axis = _axis(int(attrs.get("axis", 0)), len(dims))
        if len(ins) > 1 and ins[1] is not None:
            sizes = _static_ints(ins[1], "split")
        else:
            n = int(attrs.get("num_outputs", len(node.outputs)))
            total = dims[axis]
            if not isinstance(total, int):
                raise _Unsupported("splits a symbolic axis")
            sizes = [-(-total // n)] * (n - 1)
            sizes.append(total - sum(sizes))
        bounds = np.cumsum([0, *sizes]).tolist()
        outs = []
        for lo, hi in zip(bounds, bounds[1:]):
            outs.append(self._slice(v, {axis: (lo, hi, 1)}))
        return outs

    def _op_Slice(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        v = ins[0]
        rank = len(self._dims(v))
        starts = _ints(ins[1], "starts")
        ends = _ints(ins[2], "ends")
        axes = (
            _static_ints(ins[3], "axes")
            if len(ins) > 3 and ins[3] is not None
            else list(range(len(starts)))
        )
        steps = (
            _static_ints(ins[4], "steps")
            if len(ins) > 4 and ins[4] is not None
            else [1] * len(starts)
        )
        spec = {}
        for s, e, a, st in zip(starts, ends, axes, steps):
            spec[_axis(a, rank)] = (s, e, st)
        return self._slice(v, spec)

    def _slice(self, v: Any, spec: dict[int, tuple[Any, Any, int]]) -> Any:
        if isinstance(v, Const):
            index = [slice(None)] * v.value.ndim
            for a, (s, e, st) in spec.items():
                if isinstance(s, Dim) or isinstance(e, Dim):
                    n = v.value.shape[a]
                    s = n if isinstance(s, Dim) else s
                    e = n if isinstance(e, Dim) else e
                index[a] = slice(s, e, st)
            return Const(v.value[tuple(index)])
        dims = self._dims(v)
        if isinstance(v, Fill):
            out = list(dims)
            for a, (s, e, st) in spec.items():
                out[a] = _slice_length(dims[a], s, e, st)
            return Fill(v.value, tuple(out))
        if not isinstance(v, Seq):
            raise _Unsupported(f"slicing {type(v).__name__} is not supported")
        windows = list(v.windows)
        flipped = v.flipped
        for a, (s, e, st) in spec.items():
            size = dims[a]
            roles = [r for r in v.axes[a] if not _is_one(self._role_size(v, r))]
            if len(v.axes[a]) == 1:
                roles = list(v.axes[a])
            # [0:1] of a one-long input axis is still one timestep (an RNN unrolled over a
            # single step) or one state row; other slices keeping the whole axis do nothing.
            row = (
                len(roles) == 1
                and _is_one(size)
                and (s, e) == (0, 1)
                and self.roles.kind_of(roles[0]) in ("axis", "time")
            )
            if st == 1 and _covers(size, s, e) and not row:
                continue
            if len(roles) != 1 or len(v.axes[a]) != 1:
                raise _Unsupported(f"slices axis {a} that merges several dimensions")
            role = roles[0]
            if any(w.role == role for w in windows):
                raise _Unsupported("slices an axis that is already sliced")
            if st == -1 and _is_reverse(size, s, e):
                if flipped is not None:
                    raise _Unsupported("reverses two axes")
                flipped = role
                continue
            if st != 1:
                raise _Unsupported(f"slices with step {st}")
            lo, hi = _window_bounds(size, s, e)
            if lo is None:
                raise _Unsupported(f"slice [{s}:{e}] of an axis of symbolic size {size}")
            windows.append(Window(role, lo, hi, v.stage))
        return Seq(v.stage, v.axes, tuple(windows), flipped)

    def _op_Gather(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        data, idx = ins[0], ins[1]
        axis = int(attrs.get("axis", 0))
        if isinstance(data, Const) and isinstance(idx, Const):
            return Const(np.take(data.value, idx.value.astype(np.int64), axis=axis))
        if isinstance(data, Const) and isinstance(idx, Tokens):
            table = data.value
            if axis != 0 or table.ndim != 2 or table.dtype.kind != "f":
                raise _Unsupported(
                    "an embedding lookup needs a 2-D float table gathered on axis 0, got "
                    f"shape {table.shape} ({table.dtype}), axis {axis}"
                )
            feat = self.roles.new("feat", table.shape[1], "emb")
            stage = EmbeddingStage(
                None, (feat,), table=np.ascontiguousarray(table, np.float32), tokens=idx.name
            )
            return Seq(stage, (*idx.axes, (feat,)))
        if isinstance(idx, Const) and idx.value.ndim == 0 and isinstance(data, (Seq, Fill)):
            k = int(idx.value)
            rank = len(self._dims(data))
            a = _axis(axis, rank)
            sliced = self._slice(data, {a: (k, k + 1 if k != -1 else _HUGE, 1)})
            keep = [j for j in range(rank) if j != a]
            if isinstance(sliced, Fill):
                return Fill(sliced.value, tuple(sliced.dims[j] for j in keep))
            return self._with_axes(sliced, [sliced.axes[j] for j in keep])
        raise _Unsupported(
            f"Gather of {type(data).__name__} by {type(idx).__name__} is not an embedding lookup"
        )


OPS: dict[str, Handler] = {
    "Identity": LayoutOps._op_Identity,
    "Dropout": LayoutOps._op_Dropout,
    "Cast": LayoutOps._op_Cast,
    "Shape": LayoutOps._op_Shape,
    "Size": LayoutOps._op_Size,
    "ConstantOfShape": LayoutOps._op_ConstantOfShape,
    "Expand": LayoutOps._op_Expand,
    "Transpose": LayoutOps._op_Transpose,
    "Squeeze": LayoutOps._op_Squeeze,
    "Unsqueeze": LayoutOps._op_Unsqueeze,
    "Reshape": LayoutOps._op_Reshape,
    "Flatten": LayoutOps._op_Flatten,
    "Concat": LayoutOps._op_Concat,
    "Split": LayoutOps._op_Split,
    "Slice": LayoutOps._op_Slice,
    "Gather": LayoutOps._op_Gather,
}


def _covers(size: Any, s: Any, e: Any) -> bool:
    """Whether [s:e] (step 1) keeps the whole axis."""
    if s != 0:
        return False
    if isinstance(e, Dim):
        return e == size
    return e >= _HUGE or (isinstance(size, int) and e >= size)


def _is_reverse(size: Any, s: Any, e: Any) -> bool:
    """Whether [s:e:-1] reverses the whole axis."""
    if isinstance(s, Dim) or isinstance(e, Dim):
        return False
    start_ok = s == -1 or s >= _HUGE or (isinstance(size, int) and s >= size - 1)
    end_ok = e <= -_HUGE or (isinstance(size, int) and e < -size)
    return start_ok and end_ok


def _window_bounds(size: Any, s: Any, e: Any) -> tuple[int | None, int | None]:
    if isinstance(s, Dim) or isinstance(e, Dim):
        return None, None
    if isinstance(size, int):
        lo, hi, _ = slice(s, e).indices(size)
        return lo, max(lo, hi)
    if s >= 0 and 0 <= e < _HUGE:
        return s, max(s, e)
    return None, None


def _slice_length(size: Any, s: Any, e: Any, st: int) -> Any:
    if isinstance(size, int) and not isinstance(s, Dim) and not isinstance(e, Dim):
        return len(range(*slice(s, e, st).indices(size)))
    if st == 1 and _covers(size, s, e):
        return size
    lo, hi = _window_bounds(size, s, e)
    if lo is None or st != 1:
        raise _Unsupported(f"slice [{s}:{e}:{st}] of a symbolic axis of size {size}")
    return hi - lo
