"""What every op family builds on: the OpDef record, the run context, attribute helpers, the
shared shape-inference helpers and the size limits that keep a hostile graph from allocating
without bound."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lstm_infer.errors import InputError, ModelFormatError, UnsupportedModelError
from lstm_infer.tensor_type import Dim, TensorType

# The most elements one tensor an op creates may hold (2**31 floats = 8 GB): shapes computed
# at run time (Expand, Tile, ConstantOfShape, Range, Reshape bombs) are checked against it
# before anything is allocated.
MAX_ELEMENTS = 1 << 31
# The highest rank an op accepts (numpy's own limit is 64).
MAX_RANK = 32


@dataclass
class RunContext:
    """Per-call settings an op may use: the thread budget of the call."""

    threads: int = 1


# run(ctx, node, inputs, state) -> outputs. inputs[i] is None for an omitted optional input;
# state is what prepare returned (None without prepare).
RunFn = Callable[[RunContext, Any, list[np.ndarray | None], Any], list[np.ndarray]]
# prepare(node, consts) -> state: once per node when the graph is compiled; consts holds the
# node's inputs that are constants (initializers or folded), by position.
PrepareFn = Callable[[Any, dict[int, np.ndarray]], Any]
# check(node): attribute checks at load time (UnsupportedModelError / ModelFormatError).
CheckFn = Callable[[Any], None]
# infer(node, input_types, consts) -> output types: static type and shape inference, one
# TensorType per node output. input_types[i] is None for an omitted optional input; consts
# holds the node's constant inputs by position (shape, axes, pads, ...). Never allocates
# from an inferred shape; dims it cannot know are None, a rank it cannot know a None shape.
InferFn = Callable[[Any, list[TensorType | None], dict[int, np.ndarray]], list[TensorType]]


@dataclass(frozen=True)
class OpDef:
    """One op kind: arity, attribute check, shape inference, compile-time preparation and
    execution."""

    name: str
    run: RunFn
    min_inputs: int = 1
    max_inputs: int = 1  # -1: any number (Concat, Max, ...)
    min_outputs: int = 1
    max_outputs: int = 1  # -1: any number (Split)
    check: CheckFn | None = None
    prepare: PrepareFn | None = None
    infer: InferFn | None = None
    # Folded at load when every input is constant (False for ops with state or randomness).
    foldable: bool = True
    doc: str = ""

    def check_arity(self, node: Any) -> None:
        n_in, n_out = len(node.inputs), len(node.outputs)
        if n_in < self.min_inputs or (self.max_inputs >= 0 and n_in > self.max_inputs):
            most = "any" if self.max_inputs < 0 else str(self.max_inputs)
            raise ModelFormatError(
                f"{node.label}: {n_in} inputs, expected {self.min_inputs} to {most}"
            )
        if n_out < self.min_outputs or (self.max_outputs >= 0 and n_out > self.max_outputs):
            raise ModelFormatError(
                f"{node.label}: {n_out} outputs, expected {self.min_outputs}"
                f"{'' if self.max_outputs == self.min_outputs else '+'}"
            )
        for i in range(self.min_inputs):
            if not node.inputs[i]:
                raise ModelFormatError(f"{node.label}: required input {i} is missing")
        if self.check is not None:
            self.check(node)


def op(
    name: str,
    run: RunFn,
    inputs: tuple[int, int] = (1, 1),
    outputs: tuple[int, int] = (1, 1),
    **kw: Any,
) -> OpDef:
    """Shorthand for OpDef with (min, max) arities."""
    return OpDef(name, run, inputs[0], inputs[1], outputs[0], outputs[1], **kw)


# ---- attribute helpers -----------------------------------------------------------------------


def attr_int(node: Any, key: str, default: int | None = None) -> int:
    v = node.attrs.get(key, default)
    if v is None:
        raise ModelFormatError(f"{node.label}: attribute {key!r} is required")
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ModelFormatError(f"{node.label}: attribute {key!r} must be an int, got {v!r}")
    if not -(1 << 62) <= int(v) <= 1 << 62:
        raise ModelFormatError(f"{node.label}: attribute {key!r} = {v} is out of range")
    return int(v)


def attr_float(node: Any, key: str, default: float | None = None) -> float:
    v = node.attrs.get(key, default)
    if v is None:
        raise ModelFormatError(f"{node.label}: attribute {key!r} is required")
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ModelFormatError(f"{node.label}: attribute {key!r} must be a number, got {v!r}")
    return float(v)


def attr_ints(node: Any, key: str, default: Sequence[int] | None = None) -> list[int] | None:
    v = node.attrs.get(key, default)
    if v is None:
        return None
    if not isinstance(v, (list, tuple)) or len(v) > 1 << 16:
        raise ModelFormatError(f"{node.label}: attribute {key!r} must be a list of ints")
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or abs(int(x)) > 1 << 62:
            raise ModelFormatError(f"{node.label}: attribute {key!r} holds {x!r}, not an int")
        out.append(int(x))
    return out


def attr_str(node: Any, key: str, default: str | None = None) -> str | None:
    v = node.attrs.get(key, default)
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if v is not None and not isinstance(v, str):
        raise ModelFormatError(f"{node.label}: attribute {key!r} must be a string, got {v!r}")
    return v


def allowed_attrs(*names: str, required: Sequence[str] = ()) -> CheckFn:
    """A check refusing attributes outside ``names`` (an unknown one may change meaning) and
    missing ``required`` ones."""
    known = frozenset(names) | frozenset(required)

    def check(node: Any) -> None:
        unknown = sorted(set(node.attrs) - known)
        if unknown:
            raise UnsupportedModelError(f"{node.label}: unsupported attribute(s) {unknown}")
        missing = [k for k in required if k not in node.attrs]
        if missing:
            raise ModelFormatError(f"{node.label}: required attribute(s) {missing} missing")

    return check


def normalize_axis(node: Any, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise InputError(f"{node.label}: axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def int_values(node: Any, arr: np.ndarray | None, what: str) -> list[int] | None:
    """A 0-D/1-D integer tensor input (axes, shape, pads, ...) as Python ints.

    Those inputs are almost always the graph's constants, read on every call: the converted
    values of read-only arrays (compiled programs make their constants read-only) are kept
    per node and array object (a few entries; the array is held, so its id cannot be reused
    while cached). Feeds and computed tensors are writable: converted on every call.
    """
    if arr is None:
        return None
    if getattr(arr, "flags", None) is None or arr.flags.writeable:
        return _int_values(node, arr, what)
    cache = node.__dict__.setdefault("_int_values", {}) if hasattr(node, "__dict__") else {}
    hit = cache.get((id(arr), what))
    if hit is not None and hit[0] is arr:
        return list(hit[1])
    values = _int_values(node, arr, what)
    if len(cache) < 16:
        cache[(id(arr), what)] = (arr, tuple(values))
    return values


def _int_values(node: Any, arr: np.ndarray, what: str) -> list[int]:
    a = np.asarray(arr)
    if a.dtype.kind not in "iu" or a.ndim > 1:
        raise InputError(
            f"{node.label}: {what} must be a 1-D integer tensor, got {a.dtype} {a.shape}"
        )
    if a.size > 1 << 16:
        raise InputError(f"{node.label}: {what} has {a.size} entries")
    return [int(v) for v in a.reshape(-1)]


_LIMIT = threading.local()


@contextmanager
def element_limit(limit: int) -> Iterator[None]:
    """Lower the element limit of check_elements on this thread inside the block (constant
    folding at load allows far less than a run)."""
    previous = getattr(_LIMIT, "value", MAX_ELEMENTS)
    _LIMIT.value = min(previous, limit)
    try:
        yield
    finally:
        _LIMIT.value = previous


def check_elements(node: Any, shape: Sequence[int], what: str = "output") -> None:
    """Refuse before allocating a tensor of more than MAX_ELEMENTS (or a negative dim)."""
    if len(shape) > MAX_RANK:
        raise InputError(f"{node.label}: {what} rank {len(shape)} exceeds {MAX_RANK}")
    limit = getattr(_LIMIT, "value", MAX_ELEMENTS)
    n = 1
    for d in shape:
        if d < 0:
            raise InputError(f"{node.label}: {what} shape {tuple(shape)} has a negative dim")
        n *= d
        if n > limit:
            raise InputError(
                f"{node.label}: {what} of shape {tuple(shape)} would hold more than "
                f"{limit} elements"
            )


def broadcast_shape(node: Any, *shapes: Sequence[int], what: str = "output") -> tuple[int, ...]:
    """The broadcast of ``shapes``, checked like :func:`check_elements`: InputError naming
    the node for shapes that do not broadcast, ranks past MAX_RANK (numpy itself raises a
    bare RuntimeError past 32) or too many elements."""
    for shape in shapes:
        if len(shape) > MAX_RANK:
            raise InputError(
                f"{node.label}: an input of rank {len(shape)}: at most {MAX_RANK} dimensions "
                "are supported"
            )
    try:
        out = np.broadcast_shapes(*(tuple(shape) for shape in shapes))
    except ValueError:
        listed = " and ".join(str(tuple(shape)) for shape in shapes)
        raise InputError(f"{node.label}: shapes {listed} do not broadcast") from None
    check_elements(node, out, what)
    return out


def float_like(arr: np.ndarray) -> bool:
    return arr.dtype.kind == "f"


# ---- shape inference helpers ---------------------------------------------------------------

# The largest dim inference accepts (a Python int, never allocated: a 2**40 Expand infers,
# the run refuses it by MAX_ELEMENTS); past it, or negative, a shape is malformed.
MAX_DIM = 1 << 62

Shape = tuple[Dim, ...]


def unknown(dtype: str) -> TensorType:
    """A tensor of ``dtype`` whose rank is not known."""
    return TensorType(dtype)


def typed(node: Any, dtype: str, shape: Sequence[Dim] | None) -> TensorType:
    """TensorType(dtype, shape) after checking the shape's rank and dims (a hostile graph's
    rank-40 or negative results are refused here, naming the node)."""
    if shape is None:
        return TensorType(dtype)
    shape = tuple(shape)
    if len(shape) > MAX_RANK:
        raise ModelFormatError(f"{node.label}: output rank {len(shape)} exceeds {MAX_RANK}")
    for d in shape:
        if isinstance(d, bool) or not (d is None or isinstance(d, (int, str))):
            raise ModelFormatError(f"{node.label}: inferred dim {d!r} is not an int or a name")
        if isinstance(d, int) and not 0 <= d <= MAX_DIM:
            raise ModelFormatError(f"{node.label}: inferred shape {shape} has dim {d}")
    return TensorType(dtype, shape)


def dtype_of(t: TensorType | None) -> str:
    return "undefined" if t is None else t.dtype


def shape_of(t: TensorType | None) -> Shape | None:
    """The shape of an input type, None when its rank is unknown (or the input omitted)."""
    return None if t is None else t.shape


def dims_equal(a: Dim, b: Dim) -> bool | None:
    """True or False when two dims are known equal or different, None when it cannot be
    known (an unknown dim, or a name against an int or another name)."""
    if a is None or b is None:
        return None
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if a == b:
        return True
    return None


def broadcast_dim(node: Any, dims: Sequence[Dim]) -> Dim:
    """One dim of a multidirectional broadcast: 1 gives way to anything; equal ints or names
    give themselves; two different ints are an error; a name against an int other than 1
    gives the int (the name must be that size or 1); otherwise unknown."""
    rest = [d for d in dims if d != 1]
    if not rest:
        return 1
    ints = {d for d in rest if isinstance(d, int)}
    if len(ints) > 1:
        raise ModelFormatError(f"{node.label}: dims {sorted(ints)} do not broadcast")
    if ints:
        return ints.pop()
    if any(d is None for d in rest):
        return None
    names = set(rest)
    return names.pop() if len(names) == 1 else None


def broadcast(node: Any, shapes: Sequence[Shape | None]) -> Shape | None:
    """The multidirectional (numpy) broadcast of symbolic shapes; None if any rank is
    unknown."""
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)
    if rank > MAX_RANK:
        raise ModelFormatError(f"{node.label}: broadcast to rank {rank} exceeds {MAX_RANK}")
    padded_shapes = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    return tuple(broadcast_dim(node, dims) for dims in zip(*padded_shapes))


def dim_product(dims: Sequence[Dim]) -> tuple[int, tuple[str, ...]] | None:
    """A product of dims as (int factor, sorted names), None if a dim is unknown."""
    factor, names = 1, []
    for d in dims:
        if d is None:
            return None
        if isinstance(d, int):
            factor *= d
        else:
            names.append(d)
    return factor, tuple(sorted(names))


def dim_from_product(p: tuple[int, tuple[str, ...]] | None) -> Dim:
    """A product as one dim: an int without names, a lone name times 1, else unknown."""
    if p is None:
        return None
    factor, names = p
    if not names:
        return factor
    if len(names) == 1 and factor == 1:
        return names[0]
    return None


def infer_axis(node: Any, axis: int, rank: int) -> int:
    """``axis`` normalised against ``rank`` (ModelFormatError naming the node if outside;
    a rank-0 tensor has no axis)."""
    if not -rank <= axis < rank:
        raise ModelFormatError(f"{node.label}: axis {axis} is out of range for rank {rank}")
    return axis % rank


def const_ints(node: Any, consts: dict[int, np.ndarray], pos: int, what: str) -> list[int] | None:
    """A constant integer input (shape, axes, pads, repeats) as ints; None when the input is
    not constant or not given."""
    arr = consts.get(pos)
    if arr is None:
        return None
    try:
        return _int_values(node, arr, what)
    except InputError as exc:
        raise ModelFormatError(str(exc)) from None


def same_as_input(dtype: str | None = None, pos: int = 0) -> InferFn:
    """Infer: one output of input ``pos``'s shape (and dtype, or ``dtype``)."""

    def infer(node: Any, types: list[TensorType | None], consts: dict) -> list[TensorType]:
        t = types[pos]
        return [typed(node, dtype or dtype_of(t), shape_of(t))]

    return infer


def merge_dim(node: Any, dims: Sequence[Dim], what: str = "dims") -> Dim:
    """Dims that must be equal as one: an int where any is known (two different ints are an
    error), the name where all are one name, else unknown."""
    ints = {d for d in dims if isinstance(d, int)}
    if len(ints) > 1:
        raise ModelFormatError(f"{node.label}: {what} {sorted(ints)} must be equal")
    if ints:
        return ints.pop()
    names = set(dims)
    return names.pop() if len(names) == 1 else None


def vector_length(t: TensorType | None) -> int | None:
    """The length of a 1-D input (a shape, axes or repeats tensor) when its type says it."""
    shape = shape_of(t)
    if shape is not None and len(shape) == 1 and isinstance(shape[0], int):
        return shape[0]
    return None


# ---- values of shape tensors ---------------------------------------------------------------

# The most elements a tensor's inferred value may hold (shape arithmetic only; past it the
# value is not followed).
MAX_VALUE_ELEMENTS = 64


def values_of(node: Any, types: list, consts: dict[int, np.ndarray], pos: int) -> list[Dim] | None:
    """Input ``pos``'s elements as dims, flattened: a constant integer tensor's ints, or the
    value inference followed (ints, names, None); None when neither is known."""
    if pos >= len(types):
        return None
    arr = consts.get(pos)
    if arr is not None:
        a = np.asarray(arr)
        if a.dtype.kind not in "iu" or a.size > MAX_VALUE_ELEMENTS:
            return None
        return [int(v) for v in a.reshape(-1)]
    t = types[pos]
    return None if t is None or t.value is None else list(t.value)


def with_value(t: TensorType, value: Sequence[Dim] | None) -> TensorType:
    """``t`` carrying ``value`` (when it is a small integer tensor whose element count its
    shape says)."""
    if value is None or t.dtype not in ("int64", "int32") or len(value) > MAX_VALUE_ELEMENTS:
        return t
    if t.shape is None or not all(isinstance(d, int) for d in t.shape):
        return t
    n = 1
    for d in t.shape:
        n *= d  # type: ignore[operator]
    if n != len(value):
        return t
    return replace(t, value=tuple(value))  # (every other field as it was)


def dim_arith(op_name: str, a: Dim, b: Dim) -> Dim:
    """One element of Add / Sub / Mul / Div on shape values (ONNX integer Div truncates)."""
    if isinstance(a, int) and isinstance(b, int):
        if op_name == "Add":
            return a + b
        if op_name == "Sub":
            return a - b
        if op_name == "Mul":
            return a * b
        if op_name == "Div" and b:
            return abs(a) // abs(b) * (1 if (a >= 0) == (b > 0) else -1)
        return None
    if op_name == "Mul" and (a == 1 or b == 1):
        return b if a == 1 else a
    if op_name in ("Add", "Sub") and b == 0:
        return a
    if op_name == "Add" and a == 0:
        return b
    if op_name == "Div" and b == 1:
        return a
    return None
