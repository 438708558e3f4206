"""What the stack lowering knows about each tensor: symbolic dims, axis roles, plan stages and
abstract values, with the small helpers every op family uses on them.

The stack lowering (:mod:`lstm_infer.importers.onnx.stack`) interprets an ONNX graph once,
abstractly; this module holds the vocabulary of that interpretation and nothing that walks
the graph:

- :class:`Dim`: a dimension unknown at load time (a product of named sizes);
- :class:`Roles`: what each axis means (time, batch, features, directions...);
- the stages of the plan (:class:`InputStage`, :class:`EmbeddingStage`, :class:`DenseStage`,
  :class:`LayerStage`, and :class:`UnrolledCell` for an RNN unrolled over time);
- the abstract values (:class:`Const`, :class:`Fill`, :class:`Tokens`, :class:`Seq`, the pieces
  of an unrolled RNN and final states);
- ``_Unsupported``, raised by a handler and reported by the walker with the node's name.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lstm_infer._spec import DirectionWeights, RecurrentLayer

# Constant subgraphs are evaluated at load time; none in a recurrent model is anywhere near
# this big (a shape vector, a zero state), so a larger one is refused before it is allocated.
MAX_CONSTANT_ELEMENTS = 1 << 24


class _Unsupported(Exception):
    """Raised inside an op handler; the walker adds the node's name and op type."""


# ---- symbolic dimensions -------------------------------------------------------------------


class Dim:
    """A dimension unknown at load time: ``coef * s1 * s2 * ...`` over named sizes.

    Exporters compute reshape targets and zero-state shapes from ``Shape`` of tensors whose
    batch and sequence sizes are symbolic; products of those are all that the glue needs.
    """

    __slots__ = ("coef", "syms")

    def __init__(self, coef: int, syms: Iterable[str]) -> None:
        self.coef = int(coef)
        self.syms = tuple(sorted(syms))

    @staticmethod
    def named(name: str) -> Dim:
        return Dim(1, (name,))

    def __mul__(self, other: Any) -> Any:
        if isinstance(other, Dim):
            return _norm_dim(Dim(self.coef * other.coef, self.syms + other.syms))
        if isinstance(other, (int, np.integer)):
            return _norm_dim(Dim(self.coef * int(other), self.syms))
        return NotImplemented

    __rmul__ = __mul__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dim) and (self.coef, self.syms) == (other.coef, other.syms)

    def __hash__(self) -> int:
        return hash((self.coef, self.syms))

    def __repr__(self) -> str:
        parts = ([str(self.coef)] if self.coef != 1 else []) + list(self.syms)
        return "*".join(parts)


def _norm_dim(d: Any) -> Any:
    if isinstance(d, Dim):
        if d.coef == 0:
            return 0
        return d if d.syms else d.coef
    return int(d)


def _dim_div(a: Any, b: Any) -> Any:
    """Exact a / b for dims, or None when not exact."""
    a, b = _norm_dim(a), _norm_dim(b)
    if isinstance(b, int):
        if b == 0:
            return None
        if isinstance(a, int):
            return a // b if a % b == 0 else None
        return Dim(a.coef // b, a.syms) if a.coef % b == 0 else None
    if isinstance(a, int):
        return None
    rest = list(a.syms)
    for s in b.syms:
        if s not in rest:
            return None
        rest.remove(s)
    if a.coef % b.coef:
        return None
    return _norm_dim(Dim(a.coef // b.coef, rest))


def _dim_prod(dims: Iterable[Any]) -> Any:
    out: Any = 1
    for d in dims:
        out = _norm_dim(out * d)
    return out


def _is_one(d: Any) -> bool:
    return isinstance(d, (int, np.integer)) and int(d) == 1


# ---- roles: what each axis of a tensor means -------------------------------------------------


class Roles:
    """Axis roles with their sizes; input axes are bound to time/batch when first consumed.

    A role is a string; kinds: ``time``/``batch`` (the canonical roles "T" and "B"), ``axis``
    (an input axis not bound yet), ``feat`` (features of a stage), ``dir`` (directions of a
    recurrent output), ``state`` (the layers*directions axis of a state), ``unit`` (a size-1
    axis made by Unsqueeze).
    """

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.size: dict[str, Any] = {}
        self.kind: dict[str, str] = {"T": "time", "B": "batch"}
        self._count = itertools.count()

    def new(self, kind: str, size: Any, hint: str = "") -> str:
        name = f"{kind}{next(self._count)}{':' + hint if hint else ''}"
        self.kind[name] = kind
        self.size[name] = _norm_dim(size)
        return name

    def find(self, role: str) -> str:
        while role in self.parent:
            role = self.parent[role]
        return role

    def size_of(self, role: str) -> Any:
        return self.size.get(self.find(role), self.size.get(role))

    def kind_of(self, role: str) -> str:
        return self.kind[self.find(role)]

    def bind(self, role: str, canonical: str) -> None:
        """Declare that ``role`` is the time ("T") or batch ("B") axis."""
        root = self.find(role)
        if root == canonical:
            return
        if root in ("T", "B"):
            raise _Unsupported(
                f"an axis used as {'time' if root == 'T' else 'batch'} is also used as "
                f"{'time' if canonical == 'T' else 'batch'}"
            )
        if self.kind[root] not in ("axis", "unit"):
            raise _Unsupported(
                f"a {self.kind[root]} axis is used as the "
                f"{'time' if canonical == 'T' else 'batch'} axis"
            )
        self.parent[root] = canonical
        if self.size.get(canonical) is None or (
            not isinstance(self.size[canonical], int) and isinstance(self.size.get(root), int)
        ):
            self.size[canonical] = self.size.get(root)

    def droppable(self, role: str) -> bool:
        """A size-1 axis that carries no meaning (one direction, an unsqueezed axis)."""
        return self.kind_of(role) in ("dir", "unit") and _is_one(self.size_of(role))

    def same(self, a: Sequence[str], b: Sequence[str]) -> bool:
        """Role sequences equal once meaningless size-1 roles are dropped."""
        ka = [self.find(r) for r in a if not self.droppable(r)]
        kb = [self.find(r) for r in b if not self.droppable(r)]
        return ka == kb


# ---- stages of the plan ----------------------------------------------------------------------


@dataclass(eq=False)
class Stage:
    """A step of the plan; ``features`` are the roles of its output's feature axis."""

    parent: Stage | None
    features: tuple[str, ...]


@dataclass(eq=False)
class InputStage(Stage):
    """A float graph input: the sequence ``x`` or a state, decided by how it is used."""

    name: str = ""
    usage: str = ""  # "", "sequence" or "state"


@dataclass(eq=False)
class EmbeddingStage(Stage):
    table: np.ndarray | None = None
    tokens: str = ""


@dataclass(eq=False)
class DenseStage(Stage):
    """y = act(x W^T + b); ``weight`` None is the identity (a bias or activation alone)."""

    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    activation: str | None = None
    node: str = ""  # the node that made it, as errors name it


@dataclass(eq=False)
class Cell:
    """One direction of one recurrent layer, with where its initial state comes from.

    ``init_h``/``init_c``: None (zeros), ("input", graph input name, index on its first
    axis) or ("const", (batch, size) array).
    """

    cell: str
    weights: DirectionWeights
    reverse: bool
    init_h: tuple | None = None
    init_c: tuple | None = None


@dataclass(eq=False)
class LayerStage(Stage):
    layer: RecurrentLayer | None = None
    cells: list[Cell] = field(default_factory=list)
    node: str = ""
    layout: int = 0  # the recurrent node's layout attribute (its X, Y and state tensors)


@dataclass(eq=False)
class UnrolledCell:
    """An RNN direction the dynamo exporter unrolled into per-step MatMul/Add/Tanh nodes."""

    proj: DenseStage
    reverse: bool
    activation: str
    steps: int  # the graph's (static) sequence length
    time_role: str
    recurrent: np.ndarray | None = None  # (H, H), out x in
    rec_bias: np.ndarray | None = None
    init_const: np.ndarray | None = None  # step 0 folded h0 @ R^T + b (zero state)
    init_h: tuple | None = None
    seen: int = 0  # steps interpreted so far
    cell: Cell | None = None
    stage: LayerStage | None = None


# ---- abstract values -------------------------------------------------------------------------


@dataclass(eq=False)
class Const:
    value: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.value, np.ndarray):
            # numpy hands back scalars (or a Dim) from object-array indexing.
            if isinstance(self.value, Dim):
                arr = np.empty((), dtype=object)
                arr[()] = self.value
                self.value = arr
            else:
                self.value = np.asarray(self.value)


@dataclass(eq=False)
class Fill:
    value: float
    dims: tuple[Any, ...]


@dataclass(eq=False)
class Window:
    """A [start, stop) selection on a role, made while the tensor was at ``stage``."""

    role: str
    start: int
    stop: int
    stage: Stage


@dataclass(eq=False)
class Tokens:
    name: str
    axes: tuple[tuple[str, ...], ...]


@dataclass(eq=False)
class Seq:
    stage: Stage
    axes: tuple[tuple[str, ...], ...]
    windows: tuple[Window, ...] = ()
    flipped: str | None = None  # role reversed by a Slice with step -1


@dataclass(eq=False)
class RecProd:
    """h @ R^T (+ b) for an unrolled RNN; ``prev`` the Hidden or ("input", name, index)."""

    prev: Any
    weight: np.ndarray
    bias: np.ndarray | None
    axes: tuple[tuple[str, ...], ...]


@dataclass(eq=False)
class PreAct:
    """x_t W^T + b + (h_{t-1} R^T + b_h): the argument of an unrolled RNN's activation."""

    step: Seq
    rec: RecProd | Const
    axes: tuple[tuple[str, ...], ...]


@dataclass(eq=False)
class Hidden:
    cell: UnrolledCell
    step: int
    axes: tuple[tuple[str, ...], ...]


@dataclass(eq=False)
class FinalState:
    """The last h (or c) of ``cells``, stacked on the first axis as (cells, batch, size)."""

    cells: tuple[Any, ...]  # Cell or UnrolledCell
    kind: str
    axes: tuple[tuple[str, ...], ...]


Data = (Tokens, Seq, RecProd, PreAct, Hidden, FinalState)


# ---- small helpers -----------------------------------------------------------------------------


def _is_symbolic(arr: np.ndarray) -> bool:
    return arr.dtype == object


def _ints(value: Any, what: str) -> list[Any]:
    """A Const's entries as ints (or symbolic dims)."""
    if not isinstance(value, Const):
        raise _Unsupported(f"{what} must be a constant (computable at load time)")
    arr = value.value
    if arr.dtype.kind not in "iuO":
        raise _Unsupported(f"{what} must be integer, got {arr.dtype}")
    return [_norm_dim(v) for v in arr.reshape(-1).tolist()]


def _static_ints(value: Any, what: str) -> list[int]:
    vals = _ints(value, what)
    if any(isinstance(v, Dim) for v in vals):
        raise _Unsupported(f"{what} depends on the batch or sequence size ({vals})")
    return vals


def _scalar_float(arr: np.ndarray) -> float | None:
    """The value of a tensor whose elements are all equal, else None."""
    if arr.size == 0 or _is_symbolic(arr):
        return None
    flat = arr.reshape(-1)
    return float(flat[0]) if bool(np.all(flat == flat[0])) else None


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise _Unsupported(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


# ---- helpers shared by the op families ---------------------------------------------------------


def _label(node: Any) -> str:
    """How errors name a node: ``node 'name' (OpType)``."""
    return f"node {node.name!r} ({node.op})"


def _shape_elements(dims: Sequence[Any]) -> int:
    """Elements of a static shape (Python ints: no overflow)."""
    total = 1
    for d in dims:
        total *= max(int(d), 0)
    return total


def _check_elements(count: int, what: str) -> None:
    if count > MAX_CONSTANT_ELEMENTS:
        raise _Unsupported(
            f"{what} would have {count} elements; constants of more than "
            f"{MAX_CONSTANT_ELEMENTS} are refused"
        )


def _shape_array(dims: Sequence[Any]) -> np.ndarray:
    """A shape vector: int64 when static, an object array holding Dims otherwise."""
    dims = [_norm_dim(d) for d in dims]
    if all(isinstance(d, int) for d in dims):
        return np.asarray(dims, dtype=np.int64)
    arr = np.empty(len(dims), dtype=object)
    arr[:] = dims
    return arr
