"""Sliding-window geometry shared by convolution and pooling (channels-first, any rank).

ONNX describes a window op over the spatial dims of an (N, C, D1, ..., Dk) tensor by
``kernel_shape``, ``strides``, ``dilations``, ``pads`` (all begins, then all ends) or
``auto_pad``, and for pooling ``ceil_mode``. This module checks those attributes once at load
(:func:`window_attrs`), resolves them against an input's sizes (:func:`resolve`), and gives
the windows of a padded input as one strided view (:func:`window_view`) that im2col copies
and pooling reduces, so no op loops over output positions in Python.

Output size per dim, with ``span = (k - 1) * dilation + 1``::

    NOTSET  out = floor((in + pad_begin + pad_end - span) / stride) + 1   (ceil with ceil_mode,
            dropping a last window that would start past the input and its begin padding)
    VALID   out = floor((in - span) / stride) + 1                         (no padding)
    SAME_*  out = ceil(in / stride), total pad = max(0, (out - 1) * stride + span - in),
            the odd element at the end (SAME_UPPER) or the beginning (SAME_LOWER)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_infer.errors import InputError, ModelFormatError, UnsupportedModelError
from lstm_infer.ops.base import attr_int, attr_ints, attr_str
from lstm_infer.tensor_type import Dim

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
# Kernel sizes, strides, dilations and pads past this are no real model's (and would make the
# strided views' extents overflow long before any allocation was checked).
MAX_WINDOW = 1 << 20


@dataclass(frozen=True)
class Window:
    """A window op's attributes, checked; ``kernel`` may be None (a Conv takes it from W)."""

    kernel: tuple[int, ...] | None
    strides: tuple[int, ...] | None
    dilations: tuple[int, ...] | None
    pads: tuple[int, ...] | None  # begins then ends, as ONNX writes them
    auto_pad: str
    ceil_mode: bool


def _positive(node: Any, key: str, values: list[int] | None, low: int = 1) -> tuple | None:
    if values is None:
        return None
    for v in values:
        if not low <= v <= MAX_WINDOW:
            raise ModelFormatError(f"{node.label}: {key} holds {v}, outside [{low}, {MAX_WINDOW}]")
    return tuple(values)


def window_attrs(node: Any, *, ceil_mode_allowed: bool = False) -> Window:
    """The window attributes of ``node``, each checked for range (load time)."""
    auto_pad = attr_str(node, "auto_pad", "NOTSET") or "NOTSET"
    if auto_pad not in AUTO_PADS:
        raise ModelFormatError(f"{node.label}: auto_pad {auto_pad!r} is not one of {AUTO_PADS}")
    kernel = _positive(node, "kernel_shape", attr_ints(node, "kernel_shape"))
    strides = _positive(node, "strides", attr_ints(node, "strides"))
    dilations = _positive(node, "dilations", attr_ints(node, "dilations"))
    pads = _positive(node, "pads", attr_ints(node, "pads"), low=0)
    if pads is not None and auto_pad != "NOTSET" and any(pads):
        raise ModelFormatError(f"{node.label}: pads and auto_pad={auto_pad} both given")
    if pads is not None and len(pads) % 2:
        raise ModelFormatError(f"{node.label}: pads has {len(pads)} entries, not 2 per dim")
    ceil_mode = bool(attr_int(node, "ceil_mode", 0)) if ceil_mode_allowed else False
    ranks = {len(v) // (2 if key == "pads" else 1) for key, v in
             (("kernel", kernel), ("strides", strides), ("dilations", dilations), ("pads", pads))
             if v is not None}  # fmt: skip
    if len(ranks) > 1:
        raise ModelFormatError(
            f"{node.label}: kernel_shape, strides, dilations and pads disagree on the number "
            f"of spatial dims ({sorted(ranks)})"
        )
    if ranks and not 1 <= ranks.pop() <= 3:
        raise UnsupportedModelError(f"{node.label}: only 1, 2 or 3 spatial dims are supported")
    return Window(kernel, strides, dilations, pads, auto_pad, ceil_mode)


@dataclass(frozen=True)
class Resolved:
    """A window resolved against one input: per spatial dim the kernel, stride, dilation,
    begin and end padding (end includes any ceil_mode extension) and output size."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    begin: tuple[int, ...]
    end: tuple[int, ...]
    out: tuple[int, ...]
    end_declared: tuple[int, ...]  # the end padding before the ceil_mode extension


def _per_dim(node: Any, key: str, values: tuple | None, n: int, default: int) -> tuple:
    if values is None:
        return (default,) * n
    if len(values) != n:
        raise InputError(f"{node.label}: {key} has {len(values)} entries for {n} spatial dims")
    return values


def resolve(node: Any, w: Window, sizes: Sequence[int], kernel: Sequence[int]) -> Resolved:
    """Pads and output sizes of window ``w`` over spatial ``sizes`` with ``kernel``."""
    n = len(sizes)
    if not 1 <= n <= 3:
        raise InputError(f"{node.label}: input has {n} spatial dims, 1 to 3 are supported")
    kernel = _per_dim(node, "kernel_shape", tuple(kernel), n, 1)
    if w.kernel is not None and tuple(w.kernel) != tuple(kernel):
        raise InputError(f"{node.label}: kernel_shape {w.kernel} but the weight's is {kernel}")
    strides = _per_dim(node, "strides", w.strides, n, 1)
    dilations = _per_dim(node, "dilations", w.dilations, n, 1)
    pads = _per_dim(node, "pads", w.pads, 2 * n, 0)
    begin, end, declared, out = [], [], [], []
    for i, size in enumerate(sizes):
        k, s, d = kernel[i], strides[i], dilations[i]
        span = (k - 1) * d + 1
        if w.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = -(-size // s)
            total = max(0, (o - 1) * s + span - size)
            small = total // 2
            pb, pe = (
                (small, total - small) if w.auto_pad == "SAME_UPPER" else (total - small, small)
            )
        else:
            pb, pe = (0, 0) if w.auto_pad == "VALID" else (pads[i], pads[n + i])
            room = size + pb + pe - span
            if room < 0:
                raise InputError(
                    f"{node.label}: spatial dim {i} of size {size} (padded {size + pb + pe}) is "
                    f"smaller than the window span {span}"
                )
            o = (-(-room // s) if w.ceil_mode else room // s) + 1
            if w.ceil_mode and (o - 1) * s >= size + pb:
                o -= 1  # the last window would start in the end padding
        begin.append(pb)
        declared.append(pe)
        end.append(max(pe, (o - 1) * s + span - size - pb))
        out.append(o)
    return Resolved(
        tuple(kernel), strides, dilations, tuple(begin), tuple(end), tuple(out), tuple(declared)
    )


def padded(x: np.ndarray, r: Resolved, fill: float = 0.0) -> np.ndarray:
    """``x`` (N, C, *spatial) with ``r``'s begin/end padding of ``fill`` (no copy without)."""
    if not any(r.begin) and not any(r.end):
        return x
    # One fill and one interior copy (np.pad's general machinery costs more than the copy on
    # the small tensors of a streaming front end).
    shape = (*x.shape[:2], *(d + b + e for d, b, e in zip(x.shape[2:], r.begin, r.end)))
    out = np.full(shape, fill, x.dtype)
    out[(slice(None), slice(None), *(slice(b, b + d) for b, d in zip(r.begin, x.shape[2:])))] = x
    return out


def window_view(xp: np.ndarray, r: Resolved) -> np.ndarray:
    """The windows of padded ``xp`` (N, C, *P) as a read-only view (N, C, *out, *kernel)."""
    n_sp = len(r.out)
    sp_strides = xp.strides[2:]
    shape = (*xp.shape[:2], *r.out, *r.kernel)
    strides = (
        *xp.strides[:2],
        *(sp_strides[i] * r.strides[i] for i in range(n_sp)),
        *(sp_strides[i] * r.dilations[i] for i in range(n_sp)),
    )
    return np.lib.stride_tricks.as_strided(xp, shape, strides, writeable=False)


# ---- shape inference -------------------------------------------------------------------------

# Stand-ins for symbolic spatial sizes: far above any window span (MAX_WINDOW dilated), so the
# geometry's formulas run on them as on real sizes; Python ints, never allocated.
_PROBE = (1 << 45, (1 << 45) + 7)


def infer_spatial(
    node: Any, sizes: Sequence[Dim], geometry: Callable[[tuple[int, ...]], Sequence[int]]
) -> tuple[Dim, ...]:
    """The output sizes of a window op over symbolic spatial ``sizes``: ``geometry`` (the
    run's own formula over int sizes) on the known ones; a name carried through where the
    output equals the input size (stride 1, 'same' padding), else unknown.

    Geometry errors (a window larger than its padded input) are ModelFormatErrors naming the
    node."""
    try:
        if all(isinstance(d, int) for d in sizes):
            return tuple(int(v) for v in geometry(tuple(sizes)))  # type: ignore[arg-type]
        probes = [tuple(d if isinstance(d, int) else p for d in sizes) for p in _PROBE]
        a, b = (geometry(p) for p in probes)
    except InputError as exc:
        raise ModelFormatError(str(exc)) from None
    out: list[Dim] = []
    for i, d in enumerate(sizes):
        if isinstance(d, int):
            out.append(int(a[i]))
        elif d is not None and (a[i], b[i]) == _PROBE:
            out.append(d)
        else:
            out.append(None)
    return tuple(out)
