"""Lower the ONNX graphs that exporters write into the engine's plan (a ModelSpec).

``torch.onnx.export`` surrounds its recurrent nodes with glue: an embedding ``Gather``,
``Transpose``/``Reshape``/``Squeeze`` between layers, ``Slice`` of the initial state per layer,
``Shape``-driven arithmetic that builds zero states and reshape targets, ``MatMul``/``Add``
for a ``Linear`` head and an activation. The dynamo exporter (``dynamo=True``) emits the same
LSTM/GRU nodes, but unrolls ``nn.RNN`` over time into per-step ``MatMul``/``Add``/``Tanh``.

Lowering is an abstract interpretation of the graph, once, at load time. Nodes are visited in
topological order (only those the graph outputs depend on) and every tensor gets an abstract
value saying what it is:

- ``Const``: a known array (initializers, folded constant subgraphs, shape vectors whose
  entries may be symbolic :class:`Dim` such as the batch size);
- ``Fill``: a tensor filled with one value, of possibly symbolic shape (a zero state);
- ``Tokens`` / ``Seq``: the token input, or a sequence at some stage of the plan (the float
  input, embedding, recurrent layer k, dense layer), whose axes carry *roles* (time, batch,
  directions, features...) so layout ops just move roles around;
- the pieces of an unrolled RNN (``RecProd``, ``PreAct``, ``Hidden``) and final states.

The graph outputs then name a chain of stages that becomes the plan: embedding -> recurrent
layers -> dense head (+ activation). Anything the interpreter cannot place raises
:class:`~lstm_infer.errors.UnsupportedModelError` naming the node, its op type and why.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lstm_infer._onnx_weights import (
    RECURRENT_ATTRIBUTES,
    RECURRENT_OPS,
    layer_from_node_attributes,
)
from lstm_infer._spec import (
    Activation,
    DenseLayer,
    DirectionWeights,
    ModelSpec,
    RecurrentLayer,
    Signature,
    state_role,
)
from lstm_infer.errors import ModelFormatError, UnsupportedModelError

__all__ = ["lower_graph"]

MIN_OPSET = 7
# Constant subgraphs are evaluated at load time; none in a recurrent model is anywhere near
# this big (a shape vector, a zero state), so a larger one is refused before it is allocated.
MAX_CONSTANT_ELEMENTS = 1 << 24
# Inputs each handled operator needs (opset-dependent ones at their newest arity).
MIN_INPUTS = {
    **dict.fromkeys(
        ("Identity", "Dropout", "Cast", "Shape", "Size", "ConstantOfShape", "Transpose"), 1
    ),
    **dict.fromkeys(("Squeeze", "Flatten", "Concat", "Split", "Relu", "Tanh", "Sigmoid"), 1),
    **dict.fromkeys(("Softmax", "LogSoftmax"), 1),
    **dict.fromkeys(("Expand", "Reshape", "Gather", "Add", "Sub", "Mul", "Div"), 2),
    **dict.fromkeys(("MatMul", "Gemm"), 2),
    **dict.fromkeys(("RNN", "LSTM", "GRU"), 3),
}
REQUIRED_ATTRIBUTES = {"Cast": ("to",), "Concat": ("axis",)}
# Constant operators whose output size depends on input values: sized before evaluation.
_VALUE_SIZED = {"Range", "Tile", "Pad", "OneHot", "Resize", "Upsample", "ConstantOfShape"}
# Slice ends at or beyond this mean "to the end" (exporters write INT64_MAX or INT32_MAX).
_HUGE = 1 << 30


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


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list):
            v = [s.decode() if isinstance(s, bytes) else s for s in v]
        out[a.name] = v
    return out


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


# ---- the interpreter -------------------------------------------------------------------------


class GraphLowering:
    """Interpret one ONNX graph and assemble its ModelSpec (see the module docstring)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.graph = model.graph
        self.opset = 0
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                self.opset = int(imp.version)
        self.roles = Roles()
        self.values: dict[str, Any] = {}
        self.producer: dict[str, Any] = {}
        self.input_stages: dict[str, InputStage] = {}
        self.unused_inputs: list[str] = []  # graph inputs no output depends on

    # ---- entry -----------------------------------------------------------------------------

    def lower(self) -> ModelSpec:
        from lstm_infer.onnx_import import tensor_to_numpy

        if not self.opset:
            raise ModelFormatError("the model imports no opset of the default ONNX domain")
        if self.opset < MIN_OPSET:
            raise UnsupportedModelError(
                f"opset {self.opset} is older than the oldest supported ({MIN_OPSET})"
            )
        needed = self._needed_nodes()
        wanted = {i for n in needed for i in n.input} | {o.name for o in self.graph.output}
        for t in self.graph.initializer:
            if t.name in wanted:  # others are never decoded (nor read from side files)
                self.values[t.name] = Const(tensor_to_numpy(t))
        used_inputs = {i for n in needed for i in n.input if i}
        used_inputs |= {o.name for o in self.graph.output}
        for vi in self.graph.input:
            if vi.name in self.values:
                continue
            if vi.name not in used_inputs:
                self.unused_inputs.append(vi.name)
                continue
            self.values[vi.name] = self._input_value(vi)
        for node in needed:
            self._visit(node)
        return self._assemble()

    def _needed_nodes(self) -> list[Any]:
        """Nodes the graph outputs depend on, in topological order."""
        by_output = {}
        for node in self.graph.node:
            for o in node.output:
                if o:
                    by_output[o] = node
        needed: dict[int, Any] = {}
        stack = [o.name for o in self.graph.output]
        seen: set[str] = set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            node = by_output.get(name)
            if node is None or id(node) in needed:
                continue
            needed[id(node)] = node
            stack.extend(i for i in node.input if i)
        # Kahn's algorithm, keeping the file's order among ready nodes.
        available = {t.name for t in self.graph.initializer} | {i.name for i in self.graph.input}
        nodes = [n for n in self.graph.node if id(n) in needed]
        waiting: dict[int, int] = {}
        consumers: dict[str, list[int]] = {}
        for k, n in enumerate(nodes):
            missing = {i for i in n.input if i and i not in available}
            waiting[k] = len(missing)
            for i in missing:
                consumers.setdefault(i, []).append(k)
        ready = [k for k, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        order: list[Any] = []
        while ready:
            k = heapq.heappop(ready)
            order.append(nodes[k])
            for o in nodes[k].output:
                for j in consumers.pop(o, []) if o else []:
                    waiting[j] -= 1
                    if waiting[j] == 0:
                        heapq.heappush(ready, j)
        if len(order) != len(nodes):
            done = {id(n) for n in order}
            n = next(n for n in nodes if id(n) not in done)
            produced = {o for m in order for o in m.output}
            missing = [i for i in n.input if i and i not in available and i not in produced]
            raise ModelFormatError(
                f"node {n.name!r} ({n.op_type}): input(s) {missing} are produced by no node "
                "(or the graph has a cycle)"
            )
        return order

    def _input_value(self, vi: Any) -> Any:
        from onnx import helper

        ttype = vi.type.tensor_type
        dims: list[Any] = []
        for k, d in enumerate(ttype.shape.dim):
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(Dim.named(d.dim_param or f"{vi.name}:{k}"))
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        except Exception:  # noqa: BLE001 - unknown element types are reported below
            dtype = np.dtype(object)
        where = f"graph input {vi.name!r}"
        if dtype.kind in "iu":
            if len(dims) != 2:
                raise UnsupportedModelError(
                    f"{where}: integer inputs are token ids of shape (seq, batch) or (batch, "
                    f"seq); this one has rank {len(dims)}"
                )
            axes = tuple((self.roles.new("axis", d, vi.name),) for d in dims)
            return Tokens(vi.name, axes)
        if dtype.kind != "f":
            raise UnsupportedModelError(f"{where}: element type {dtype} is not supported")
        if len(dims) != 3:
            raise UnsupportedModelError(
                f"{where}: float inputs are sequences (seq, batch, features) or states "
                f"(layers, batch, hidden); this one has rank {len(dims)}"
            )
        stage = InputStage(None, (), name=vi.name)
        self.input_stages[vi.name] = stage
        axes = (
            (self.roles.new("axis", dims[0], vi.name),),
            (self.roles.new("axis", dims[1], vi.name),),
            (self.roles.new("feat", dims[2], vi.name),),
        )
        return Seq(stage, axes)

    def _input_axis(self, stage: InputStage, k: int) -> str:
        """The role of axis ``k`` of a float graph input, as first created."""
        return self.values[stage.name].axes[k][0]

    def _visit(self, node: Any) -> None:
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedModelError(
                f"node {node.name!r} ({node.op_type}): operators of domain {node.domain!r} are "
                "not supported"
            )
        handler = getattr(self, f"_op_{node.op_type}", None)
        ins = [self.values[i] if i else None for i in node.input]
        label = f"node {node.name!r} ({node.op_type})"
        self._check_arity(node, ins, label)
        try:
            if handler is None:
                if (
                    ins
                    and all(v is None or isinstance(v, Const) for v in ins)
                    and not any(v is not None and _is_symbolic(v.value) for v in ins)
                ):
                    outs = self._fold_with_reference(node, ins)
                else:
                    raise _Unsupported(
                        "this operator is not supported on the data path of a recurrent model"
                    )
            else:
                outs = handler(node, ins, _attrs(node))
        except _Unsupported as exc:
            raise UnsupportedModelError(f"{label}: {exc}") from None
        except ModelFormatError as exc:
            raise type(exc)(f"{label}: {exc}") from exc
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            # A node that contradicts its operator's definition (out-of-range indices,
            # inconsistent shapes...): the file is malformed.
            raise ModelFormatError(
                f"{label}: malformed node ({type(exc).__name__}: {exc})"
            ) from exc
        if not isinstance(outs, list):
            outs = [outs]
        for name, value in zip(node.output, outs):
            if name:
                self.values[name] = value
                self.producer[name] = node
        for name in node.output[len(outs) :]:
            if name:
                self.values[name] = None
                self.producer[name] = node

    def _check_arity(self, node: Any, ins: list[Any], label: str) -> None:
        """Refuse a node missing the inputs or attributes its operator requires."""
        need = MIN_INPUTS.get(node.op_type, 0)
        if node.op_type == "Slice" and self.opset >= 10:
            need = 3
        if node.op_type == "Unsqueeze" and self.opset >= 13:
            need = 2
        present = [v for v in ins[:need] if v is not None]
        if len(present) < need:
            raise ModelFormatError(f"{label}: takes at least {need} input(s), got {len(present)}")
        names = {a.name for a in node.attribute}
        required = REQUIRED_ATTRIBUTES.get(node.op_type, ())
        if node.op_type == "Slice" and self.opset < 10:
            required = ("starts", "ends")
        missing = [a for a in required if a not in names]
        if missing:
            raise ModelFormatError(f"{label}: lacks the required attribute(s) {missing}")
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            raise UnsupportedModelError(
                f"{label}: control flow (subgraphs) is not supported in a recurrent model"
            )

    def _fold_with_reference(self, node: Any, ins: list[Any]) -> list[Const]:
        """Evaluate a node of constants with onnx's reference implementation."""
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        if node.op_type in _VALUE_SIZED:
            _check_elements(self._value_sized_elements(node, ins), f"its {node.op_type} output")
        names = [f"in{k}" if v is not None else "" for k, v in enumerate(ins)]
        outs = [f"out{k}" for k in range(len(node.output))]
        one = helper.make_node(node.op_type, names, outs, domain=node.domain)
        one.attribute.extend(node.attribute)
        try:
            ev = ReferenceEvaluator(one, opsets={"": self.opset})
            res = ev.run(None, {n: v.value for n, v in zip(names, ins) if n})
        except Exception as exc:  # noqa: BLE001 - reported as the node's error
            raise _Unsupported(f"cannot evaluate it on constants: {exc}") from exc
        outs = [Const(np.asarray(r)) for r in res]
        for out in outs:
            _check_elements(out.value.size, "its output")
        return outs

    def _value_sized_elements(self, node: Any, ins: list[Any]) -> int:
        """How many elements a Range/Tile/... of constants would make (before making them)."""
        values = [None if v is None else v.value for v in ins]
        if node.op_type == "Range" and len(values) >= 3 and None not in values[:3]:
            start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in values[:3])
            if delta == 0 or not np.isfinite([start, limit, delta]).all():
                raise _Unsupported("Range with a zero or non-finite step")
            return max(0, int(np.ceil((limit - start) / delta)))
        if node.op_type == "Tile" and len(values) >= 2 and None not in values[:2]:
            reps = [int(r) for r in np.asarray(values[1]).reshape(-1)]
            return int(np.asarray(values[0]).size) * int(np.prod([max(r, 0) for r in reps]))
        if node.op_type == "ConstantOfShape" and values and values[0] is not None:
            return _shape_elements(np.asarray(values[0]).reshape(-1).tolist())
        raise _Unsupported(f"{node.op_type} is not supported on constants")

    # ---- shapes ----------------------------------------------------------------------------

    def _role_size(self, v: Any, role: str) -> Any:
        for w in getattr(v, "windows", ()):
            if w.role == role:
                return w.stop - w.start
        size = self.roles.size_of(role)
        if size is None:
            raise _Unsupported(f"the size of axis role {role!r} is unknown")
        return size

    def _dims(self, v: Any) -> list[Any]:
        if isinstance(v, Const):
            return list(v.value.shape)
        if isinstance(v, Fill):
            return list(v.dims)
        if isinstance(v, Data):
            return [_dim_prod(self._role_size(v, r) for r in ax) for ax in v.axes]
        raise _Unsupported(f"cannot take the shape of {type(v).__name__}")

    def _with_axes(self, v: Any, axes: Sequence[tuple[str, ...]]) -> Any:
        axes = tuple(tuple(a) for a in axes)
        if isinstance(v, Seq):
            return Seq(v.stage, axes, v.windows, v.flipped)
        if isinstance(v, Tokens):
            return Tokens(v.name, axes)
        if isinstance(v, Hidden):
            return Hidden(v.cell, v.step, axes)
        if isinstance(v, RecProd):
            return RecProd(v.prev, v.weight, v.bias, axes)
        if isinstance(v, FinalState):
            return FinalState(v.cells, v.kind, axes)
        raise _Unsupported(f"cannot change the layout of {type(v).__name__}")

    def _unit_axis(self) -> tuple[str, ...]:
        return (self.roles.new("unit", 1),)

    # ---- constants and layout ops -------------------------------------------------------------

    def _op_Constant(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Const:
        from lstm_infer.onnx_import import tensor_to_numpy

        if "value" in attrs:
            return Const(tensor_to_numpy(attrs["value"]))
        for key, dtype in (
            ("value_float", np.float32),
            ("value_floats", np.float32),
            ("value_int", np.int64),
            ("value_ints", np.int64),
        ):
            if key in attrs:
                return Const(np.asarray(attrs[key], dtype=dtype))
        raise _Unsupported(f"attributes {sorted(attrs)} are not supported")

    def _op_Identity(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return ins[0]

    def _op_Dropout(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        if len(ins) > 2 and ins[2] is not None:
            mode = ins[2]
            if not (isinstance(mode, Const) and not bool(np.any(mode.value))):
                raise _Unsupported("training_mode must be a constant false at inference")
        if len(node.output) > 1 and node.output[1]:
            return [ins[0], Fill(1.0, tuple(self._dims(ins[0])))]
        return ins[0]

    def _op_Cast(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        from onnx import helper

        v = ins[0]
        to = np.dtype(helper.tensor_dtype_to_np_dtype(int(attrs["to"])))
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
        from lstm_infer.onnx_import import tensor_to_numpy

        dims = _ints(ins[0], "the shape")
        value = tensor_to_numpy(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
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
        if self.opset >= 13:
            return _static_ints(ins[1], "axes") if len(ins) > 1 and ins[1] is not None else None
        return list(attrs["axes"]) if "axes" in attrs else None

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
        elif "split" in attrs:
            sizes = list(attrs["split"])
        else:
            n = int(attrs.get("num_outputs", len(node.output)))
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
        if self.opset < 10:
            starts, ends = list(attrs["starts"]), list(attrs["ends"])
            axes = list(attrs.get("axes", range(len(starts))))
            steps = [1] * len(starts)
        else:
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

    # ---- arithmetic ----------------------------------------------------------------------------

    def _binary_consts(self, op: str, a: Any, b: Any) -> Const:
        x, y = a.value, b.value
        _check_elements(_shape_elements(np.broadcast_shapes(x.shape, y.shape)), "the result")
        if op == "Add":
            r = x + y
        elif op == "Sub":
            r = x - y
        elif op == "Mul":
            r = x * y
        else:
            if _is_symbolic(x) or _is_symbolic(y):
                flat = [_dim_div(p, q) for p, q in np.broadcast(x, y)]
                if any(d is None for d in flat):
                    raise _Unsupported("inexact division of symbolic sizes")
                r = _shape_array(flat).reshape(np.broadcast(x, y).shape)
            elif x.dtype.kind in "iu" and y.dtype.kind in "iu":
                r = np.floor_divide(x, y)  # ONNX integer Div truncates; sizes are >= 0
            else:
                r = x / y
        if _is_symbolic(np.asarray(r)) and op in ("Add", "Sub"):
            if any(isinstance(d, Dim) for d in np.asarray(r).reshape(-1)):
                raise _Unsupported("adds symbolic sizes")
        arr = np.asarray(r)
        if not _is_symbolic(x) and not _is_symbolic(y):
            arr = arr.astype(np.result_type(x, y))
        return Const(arr)

    def _op_Add(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._arith("Add", node, ins)

    def _op_Sub(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._arith("Sub", node, ins)

    def _op_Mul(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._arith("Mul", node, ins)

    def _op_Div(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._arith("Div", node, ins)

    def _arith(self, op: str, node: Any, ins: list[Any]) -> Any:
        a, b = ins[0], ins[1]
        if isinstance(a, Const) and isinstance(b, Const):
            return self._binary_consts(op, a, b)
        if op == "Add":
            step_sum = self._unrolled_sum(a, b)
            if step_sum is not None:
                return step_sum
        if isinstance(a, Const) and op in ("Add", "Mul"):
            a, b = b, a
        if not isinstance(b, Const):
            raise _Unsupported(
                f"{op} of {type(a).__name__} and {type(b).__name__} is not an affine map of "
                "one sequence"
            )
        c = np.asarray(b.value, dtype=np.float32)
        if isinstance(a, RecProd):
            if op != "Add":
                raise _Unsupported(f"{op} inside an unrolled recurrence")
            bias = _as_vector(c, a.weight.shape[0], len(a.axes))
            if bias is None:
                raise _Unsupported(f"a bias of shape {c.shape} does not broadcast on the features")
            total = bias if a.bias is None else a.bias + bias
            return RecProd(a.prev, a.weight, total, a.axes)
        if not isinstance(a, Seq):
            raise _Unsupported(f"{op} on {type(a).__name__} is not supported")
        return self._affine(a, op, c, node)

    def _affine(self, v: Seq, op: str, c: np.ndarray, node: Any) -> Seq:
        """Fold Add/Sub/Mul/Div by a per-feature constant into a dense stage."""
        if v.flipped or any(w.stage is v.stage for w in v.windows):
            # (A slice taken before this dense stage, as of one layer's rows of a state input,
            # is fine: the bias of h0[k] R^T + b.)
            raise _Unsupported(f"{op} on a slice of a sequence")
        width = self._feature_width(v)
        vec = _as_vector(c, width, len(v.axes))
        if vec is None:
            raise _Unsupported(
                f"the constant of shape {c.shape} must broadcast along the last (feature) axis "
                f"of size {width}"
            )
        stage = v.stage
        if isinstance(stage, DenseStage) and stage.activation is None:
            weight, bias, parent, feats = stage.weight, stage.bias, stage.parent, stage.features
        else:
            weight, bias, parent, feats = None, None, stage, stage.features
        if op in ("Add", "Sub"):
            delta = vec if op == "Add" else -vec
            bias = delta if bias is None else bias + delta
        else:
            scale = vec if op == "Mul" else 1.0 / vec
            base = np.eye(width, dtype=np.float32) if weight is None else weight
            weight = (base * scale[:, None]).astype(np.float32)
            bias = None if bias is None else (bias * scale).astype(np.float32)
        new = DenseStage(parent, feats, weight=weight, bias=bias, node=_label(node))
        windows = tuple(
            Window(w.role, w.start, w.stop, new) if w.stage is stage else w for w in v.windows
        )
        return Seq(new, v.axes, windows)

    def _feature_width(self, v: Seq) -> int:
        width = _dim_prod(self._role_size(v, r) for r in v.axes[-1])
        if not isinstance(width, int):
            raise _Unsupported("the last axis has a symbolic size; it must be the features")
        if not self._is_feature_axis(v, v.axes[-1]):
            raise _Unsupported("the last axis is not the features of the sequence")
        return width

    def _is_feature_axis(self, v: Seq, axis: tuple[str, ...]) -> bool:
        stage = v.stage
        if isinstance(stage, InputStage) and not stage.features:
            return len(axis) == 1 and self.roles.kind_of(axis[0]) == "feat"
        return self.roles.same(axis, stage.features)

    def _op_MatMul(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        a, b = ins[0], ins[1]
        if isinstance(a, Const) and isinstance(b, Const):
            rows = a.value.size // max(1, a.value.shape[-1]) if a.value.ndim else 1
            _check_elements(rows * (b.value.shape[-1] if b.value.ndim else 1), "the product")
            return Const(np.matmul(a.value, b.value))
        if not isinstance(b, Const) or b.value.ndim != 2:
            raise _Unsupported(
                "only x @ W with a constant 2-D W is supported (a dense layer), got "
                f"{type(a).__name__} @ {type(b).__name__}"
            )
        return self._dense(node, a, np.asarray(b.value, np.float32).T, None)

    def _op_Gemm(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        a, b = ins[0], ins[1]
        c = ins[2] if len(ins) > 2 else None
        if all(isinstance(v, Const) or v is None for v in ins):
            return self._fold_with_reference(node, ins)[0]
        if attrs.get("transA", 0):
            raise _Unsupported("transA=1 on sequence data")
        if not isinstance(b, Const) or (c is not None and not isinstance(c, Const)):
            raise _Unsupported("B and C must be constants")
        w = np.asarray(b.value, np.float32)
        w = w if attrs.get("transB", 0) else w.T  # (out, in)
        w = w * np.float32(attrs.get("alpha", 1.0))
        bias = None
        if c is not None:
            bias = _as_vector(np.asarray(c.value, np.float32), w.shape[0], 2)
            if bias is None:
                raise _Unsupported(f"C of shape {c.value.shape} is not a per-output bias")
            bias = bias * np.float32(attrs.get("beta", 1.0))
        return self._dense(node, a, w, bias)

    def _dense(self, node: Any, a: Any, weight: np.ndarray, bias: np.ndarray | None) -> Any:
        """x W^T (+ b) on a sequence, or the recurrent product of an unrolled RNN."""
        if isinstance(a, Hidden) and a.cell.steps == 1:
            a = self._single_step_sequence(a)  # the next layer's input, not a recurrence
        if isinstance(a, Hidden):
            if a.axes and self.roles.size_of(a.axes[-1][-1]) != weight.shape[1]:
                raise _Unsupported(
                    f"W has {weight.shape[1]} inputs but the hidden state has "
                    f"{self.roles.size_of(a.axes[-1][-1])}"
                )
            feat = self.roles.new("feat", weight.shape[0], "rec")
            return RecProd(a, weight, bias, (*a.axes[:-1], (feat,)))
        if not isinstance(a, Seq):
            raise _Unsupported(f"a dense layer on {type(a).__name__}")
        if a.flipped:
            raise _Unsupported("a dense layer on a time-reversed sequence")
        width = _dim_prod(self._role_size(a, r) for r in a.axes[-1])
        if width != weight.shape[1]:
            raise _Unsupported(
                f"the weight has shape {weight.shape[::-1]} but the input's last axis has "
                f"{width} features"
            )
        stage = a.stage
        if isinstance(stage, InputStage) and not stage.features:
            if len(a.axes[-1]) != 1:
                raise _Unsupported("the input's last axis must be its features")
        elif not self._is_feature_axis(a, a.axes[-1]):
            raise _Unsupported("the last axis is not the features of the sequence")
        feat = self.roles.new("feat", weight.shape[0], "dense")
        new = DenseStage(
            stage, (feat,), weight=np.ascontiguousarray(weight), bias=bias, node=_label(node)
        )
        return Seq(new, (*a.axes[:-1], (feat,)), a.windows)

    def _activation(self, node: Any, v: Any, act: str) -> Any:
        if isinstance(v, PreAct):
            return self._unrolled_step(node, v, act)
        if not isinstance(v, Seq):
            raise _Unsupported(f"activation on {type(v).__name__}")
        if v.windows or v.flipped:
            raise _Unsupported("activation on a slice of a sequence")
        self._feature_width(v)
        stage = v.stage
        if isinstance(stage, DenseStage) and stage.activation is None:
            new = DenseStage(
                stage.parent,
                stage.features,
                weight=stage.weight,
                bias=stage.bias,
                activation=act,
                node=_label(node),
            )
        else:
            new = DenseStage(stage, stage.features, activation=act, node=_label(node))
        return Seq(new, v.axes)

    def _op_Relu(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._activation(node, ins[0], "relu")

    def _op_Tanh(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._activation(node, ins[0], "tanh")

    def _op_Sigmoid(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._activation(node, ins[0], "sigmoid")

    def _softmax(self, node: Any, ins: list[Any], attrs: dict[str, Any], act: str) -> Any:
        v = ins[0]
        if isinstance(v, Const):
            return self._fold_with_reference(node, ins)[0]
        rank = len(self._dims(v))
        axis = attrs.get("axis", -1 if self.opset >= 13 else 1)
        if _axis(axis, rank) != rank - 1:
            raise _Unsupported(f"axis {axis} is not the last (feature) axis of a rank-{rank} input")
        return self._activation(node, v, act)

    def _op_Softmax(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._softmax(node, ins, attrs, "softmax")

    def _op_LogSoftmax(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._softmax(node, ins, attrs, "log_softmax")

    # ---- recurrent nodes -----------------------------------------------------------------------

    def _op_RNN(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
        return self._recurrent(node, ins, attrs)

    _op_LSTM = _op_RNN
    _op_GRU = _op_RNN

    def _recurrent(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
        cell = RECURRENT_OPS[node.op_type]
        unknown = set(attrs) - RECURRENT_ATTRIBUTES
        if unknown:
            raise _Unsupported(f"unsupported attribute(s) {sorted(unknown)}")
        ins = ins + [None] * (8 - len(ins))
        x, w, r, b, lens, h0, c0, p = ins[:8]
        for label, v in (("W", w), ("R", r), ("B", b), ("P", p)):
            if v is not None and not isinstance(v, Const):
                raise _Unsupported(f"{label} must be an initializer or a constant")
        if w is None or r is None:
            raise _Unsupported("W and R are required")
        if lens is not None:
            raise _Unsupported("sequence_lens inside a multi-node graph is not supported")
        layer = layer_from_node_attributes(
            cell,
            w.value,
            r.value,
            None if b is None else b.value,
            None if p is None else p.value,
            attrs,
        )
        layout = int(attrs.get("layout", 0))
        if not isinstance(x, Seq):
            raise _Unsupported(f"X is {type(x).__name__}, not a sequence")
        if x.windows or x.flipped:
            raise _Unsupported("X is a slice of a sequence")
        parent = self._bind_sequence(x, layout, layer.input_size)
        D, H = layer.num_directions, layer.hidden_size
        cells = [
            Cell(cell, dw, reverse=(layer.direction == "reverse" or d == 1))
            for d, dw in enumerate(layer.directions)
        ]
        for kind, value in (("h", h0), ("c", c0)):
            sources = self._state_sources(value, D, layer.state_size if kind == "h" else H, layout)
            for c_, src in zip(cells, sources):
                setattr(c_, f"init_{kind}", src)
        d_role = self.roles.new("dir", D)
        h_role = self.roles.new("feat", layer.state_size, "h")
        stage = LayerStage(
            parent, (d_role, h_role), layer=layer, cells=cells, node=_label(node), layout=layout
        )
        if layout == 0:
            y_axes = (("T",), (d_role,), ("B",), (h_role,))
        else:
            y_axes = (("B",), ("T",), (d_role,), (h_role,))
        outs: list[Any] = [Seq(stage, y_axes)]
        for kind, size in (("h", layer.state_size), ("c", H)):
            s_role = self.roles.new("state", D)
            f_role = self.roles.new("feat", size, kind)
            axes = ((s_role,), ("B",), (f_role,)) if layout == 0 else (("B",), (s_role,), (f_role,))
            outs.append(FinalState(tuple(cells), kind, axes))
        return outs[: 3 if cell == "lstm" else 2]

    def _bind_sequence(self, x: Seq, layout: int, input_size: int) -> Stage:
        """Check that ``x`` is (T, B, features) (layout 0) or (B, T, features); bind roles."""
        axes = [ax for ax in x.axes if not all(self.roles.droppable(r) for r in ax)]
        if len(axes) != 3:
            raise _Unsupported(f"X must have 3 axes, got {len(axes)}")
        t_ax, b_ax = (axes[0], axes[1]) if layout == 0 else (axes[1], axes[0])
        for ax, canonical in ((t_ax, "T"), (b_ax, "B")):
            core = [r for r in ax if not self.roles.droppable(r)]
            if len(core) != 1:
                raise _Unsupported(f"X's {'time' if canonical == 'T' else 'batch'} axis is merged")
            self.roles.bind(core[0], canonical)
        stage = x.stage
        if isinstance(stage, InputStage):
            if stage.usage == "state":
                raise _Unsupported(f"graph input {stage.name!r} is used as a state and as X")
            stage.usage = "sequence"
            core = [r for r in axes[2] if not self.roles.droppable(r)]
            if len(core) != 1:
                raise _Unsupported("X's feature axis is merged")
            stage.features = tuple(core)
        elif not self.roles.same(axes[2], stage.features):
            raise _Unsupported("X's last axis is not the feature axis of the sequence")
        width = _dim_prod(self._role_size(x, r) for r in axes[2])
        if width != input_size:
            raise _Unsupported(f"X has {width} features but W expects input_size={input_size}")
        return stage

    def _state_sources(self, value: Any, D: int, size: int, layout: int) -> list[tuple | None]:
        """Where each direction's initial state comes from (see :class:`Cell`)."""
        if value is None:
            return [None] * D
        if isinstance(value, Fill):
            if value.value != 0.0:
                raise _Unsupported("an initial state filled with a non-zero value")
            return [None] * D
        if isinstance(value, Const):
            arr = np.asarray(value.value, np.float32)
            if arr.ndim != 3:
                raise _Unsupported(f"a constant initial state of shape {arr.shape}")
            if layout == 1:
                arr = arr.transpose(1, 0, 2)
            if arr.shape[0] != D or arr.shape[2] != size:
                raise _Unsupported(f"a constant initial state of shape {value.value.shape}")
            if not arr.any():
                return [None] * D
            return [("const", np.ascontiguousarray(arr[d])) for d in range(D)]
        if isinstance(value, Seq) and isinstance(value.stage, InputStage):
            start, count = self._bind_state(value, layout)
            if count != D:
                raise _Unsupported(f"the initial state holds {count} directions; the layer has {D}")
            return [("input", value.stage.name, start + d) for d in range(D)]
        raise _Unsupported(f"initial state is {type(value).__name__}, not a graph input or zeros")

    def _bind_state(self, value: Seq, layout: int) -> tuple[int, int]:
        """Bind a state input's roles; its [start, start+count) range on the layers axis."""
        stage = value.stage
        assert isinstance(stage, InputStage)
        if stage.usage == "sequence":
            raise _Unsupported(f"graph input {stage.name!r} is used as X and as a state")
        stage.usage = "state"
        axes = list(value.axes)
        if len(axes) != 3 or any(len(ax) != 1 for ax in axes):
            raise _Unsupported("the initial state must be a (layers, batch, hidden) input")
        s_ax, b_ax = (axes[0][0], axes[1][0]) if layout == 0 else (axes[1][0], axes[0][0])
        if (s_ax, b_ax) != (self._input_axis(stage, 0), self._input_axis(stage, 1)):
            raise _Unsupported(
                f"graph input {stage.name!r} must be used as (layers, batch, hidden), unpermuted"
            )
        self.roles.bind(b_ax, "B")
        return self._state_window(value, s_ax)

    def _state_window(self, value: Seq, s_role: str) -> tuple[int, int]:
        windows = [w for w in value.windows if w.role == s_role]
        others = [w for w in value.windows if w.role != s_role]
        if others:
            raise _Unsupported("the state input is sliced on an axis other than the first")
        if windows:
            return windows[0].start, windows[0].stop - windows[0].start
        size = self.roles.size_of(s_role)
        if not isinstance(size, int):
            raise _Unsupported("the state input's first axis has a symbolic size")
        return 0, size

    # ---- unrolled RNNs (dynamo exporter) ------------------------------------------------------

    def _as_step(self, v: Any) -> tuple[Window, DenseStage] | None:
        """(window, projection) if ``v`` is one timestep of an input projection x W^T + b."""
        if not isinstance(v, Seq) or len(v.windows) != 1:
            return None
        stage, w = v.stage, v.windows[0]
        if not (isinstance(stage, DenseStage) and stage.weight is not None):
            return None
        if stage.activation is not None or w.stage is not stage or w.stop - w.start != 1:
            return None
        if isinstance(stage.parent, InputStage) and stage.parent.usage == "state":
            return None
        return w, stage

    def _as_state_projection(self, v: Any) -> RecProd | None:
        """h0[k] W^T + b on a state input, as the recurrent product of an unrolled step 0."""
        if not isinstance(v, Seq) or len(v.windows) > 1:
            return None
        stage = v.stage
        if not (isinstance(stage, DenseStage) and stage.weight is not None):
            return None
        parent = stage.parent
        if stage.activation is not None or not isinstance(parent, InputStage):
            return None
        if parent.usage == "sequence":
            return None
        rows = self._input_axis(parent, 0)
        if v.windows:
            w = v.windows[0]
            if w.stage is not parent or w.stop - w.start != 1 or w.role != rows:
                return None
            index = w.start
        elif _is_one(self.roles.size_of(rows)) and all(rows not in ax for ax in v.axes):
            index = 0  # a one-row state input, squeezed
        else:
            return None
        parent.usage = "state"
        self.roles.bind(self._input_axis(parent, 1), "B")
        return RecProd(("input", parent.name, index), stage.weight, stage.bias, v.axes)

    def _unrolled_sum(self, a: Any, b: Any) -> PreAct | None:
        """x_t W^T + b_x + (h R^T + b_h), in either order, else None."""
        for step, other in ((a, b), (b, a)):
            found = self._as_step(step)
            if found is None:
                continue
            rec = other
            if isinstance(other, Seq):
                rec = self._as_state_projection(other)
            if isinstance(rec, (RecProd, Const)):
                axes = _broadcast_axes(self, step.axes, getattr(rec, "axes", None), rec)
                return PreAct(step, rec, axes)
        return None

    def _unrolled_step(self, node: Any, pre: PreAct, act: str) -> Hidden:
        if act not in ("tanh", "relu"):
            raise _Unsupported(f"{act} of an unrolled recurrence (only RNN tanh/relu unroll)")
        window, proj = self._as_step(pre.step)  # type: ignore[misc]
        reverse = pre.step.flipped == window.role
        rec = pre.rec
        if isinstance(rec, RecProd) and isinstance(rec.prev, Hidden):
            cell = rec.prev.cell
            if cell.proj is not proj or cell.reverse != reverse:
                raise _Unsupported("the recurrence mixes two different input projections")
            if rec.prev.step != cell.seen - 1:
                raise _Unsupported("the unrolled steps are not consecutive")
        else:
            steps = self.roles.size_of(window.role)
            if not isinstance(steps, int):
                raise _Unsupported("an unrolled recurrence over a symbolic number of steps")
            cell = UnrolledCell(proj, reverse, act, steps, window.role)
            self.roles.bind(window.role, "T")
            others = [
                r
                for ax in pre.step.axes
                for r in ax
                if r != window.role and self.roles.kind_of(r) == "axis"
            ]
            for r in others:
                self.roles.bind(r, "B")
            if isinstance(rec, Const):
                cell.init_const = np.asarray(rec.value, np.float32)
            else:
                cell.init_h = rec.prev
        if window.start != cell.seen:
            raise _Unsupported(
                f"step {cell.seen} of the unrolled recurrence reads timestep {window.start}"
            )
        if act != cell.activation:
            raise _Unsupported("the unrolled recurrence changes its activation")
        if isinstance(rec, RecProd):
            if cell.recurrent is None:
                cell.recurrent, cell.rec_bias = rec.weight, rec.bias
                self._check_folded_zero_state(cell)
            elif not (
                np.array_equal(cell.recurrent, rec.weight)
                and _same_optional(cell.rec_bias, rec.bias)
            ):
                raise _Unsupported("the unrolled recurrence changes its recurrent weights")
        elif cell.seen:
            raise _Unsupported("a constant replaces the recurrent term after step 0")
        cell.seen += 1
        return Hidden(cell, cell.seen - 1, pre.axes)

    def _check_folded_zero_state(self, cell: UnrolledCell) -> None:
        """Step 0 of a zero state is folded to the constant b_h; check it is exactly that."""
        if cell.init_const is None:
            return
        H = cell.recurrent.shape[0]
        bias = np.zeros(H, np.float32) if cell.rec_bias is None else cell.rec_bias
        const = cell.init_const.reshape(-1, H) if cell.init_const.size % H == 0 else None
        if const is None or not np.allclose(const, bias[None, :], rtol=1e-6, atol=1e-7):
            raise _Unsupported(
                "step 0 adds a constant that is not the recurrent bias: the graph bakes in a "
                "non-zero initial state"
            )

    def _finish_cell(self, cell: UnrolledCell) -> Cell:
        if cell.cell is not None:
            return cell.cell
        if cell.seen != cell.steps:
            raise _Unsupported(f"the unrolled recurrence has {cell.seen} of its {cell.steps} steps")
        if cell.recurrent is None:
            raise _Unsupported(
                "the graph unrolls a single timestep, so its recurrent weights are not in it"
            )
        proj = cell.proj
        H = proj.weight.shape[0]
        bias = np.zeros(H, np.float32) if proj.bias is None else proj.bias.astype(np.float32)
        if cell.rec_bias is not None:
            bias = bias + cell.rec_bias
        dw = DirectionWeights(
            w=np.ascontiguousarray(proj.weight, np.float32),
            r=np.ascontiguousarray(cell.recurrent, np.float32),
            bias=bias.astype(np.float32),
            activations=(Activation.make("Relu" if cell.activation == "relu" else "Tanh"),),
        )
        cell.cell = Cell("rnn", dw, cell.reverse, init_h=cell.init_h)
        return cell.cell

    def _hidden_sequence(self, parts: list[Hidden], axis: int) -> Seq:
        """Concatenated per-step outputs of one unrolled direction: its output sequence."""
        cell = parts[0].cell
        order = [h.step for h in parts]
        want = list(range(cell.steps))
        if cell.reverse:
            want = want[::-1]
        if order != want:
            raise _Unsupported(f"concatenates steps {order} of an unrolled recurrence")
        ax = parts[0].axes[axis]
        if not all(_is_one(self.roles.size_of(r)) for r in ax):
            raise _Unsupported("the steps are not concatenated on their unit time axis")
        rnn = self._finish_cell(cell)
        if cell.stage is None:
            H = rnn.weights.w.shape[0]
            layer = RecurrentLayer(
                "rnn",
                int(rnn.weights.w.shape[1]),
                int(H),
                "reverse" if cell.reverse else "forward",
                [rnn.weights],
            )
            layer.validate()
            feat = self.roles.new("feat", H, "h")
            cell.stage = LayerStage(cell.proj.parent, (feat,), layer=layer, cells=[rnn])
            self._check_projection_input(cell)
        feat_role = cell.stage.features[0]
        axes = list(parts[0].axes)
        axes[axis] = ("T",)
        axes[-1] = (feat_role,)
        return Seq(cell.stage, tuple(axes))

    def _single_step_sequence(self, h: Hidden) -> Seq:
        """The output sequence of a direction unrolled over one step: its only Hidden."""
        units = [
            k for k, ax in enumerate(h.axes) if all(_is_one(self.roles.size_of(r)) for r in ax)
        ]
        if len(h.axes) != 3 or 0 not in units:
            raise _Unsupported("the single unrolled step is not shaped (1, batch, hidden)")
        return self._hidden_sequence([h], 0)

    def _check_projection_input(self, cell: UnrolledCell) -> None:
        parent = cell.proj.parent
        if isinstance(parent, InputStage):
            if parent.usage == "state":
                raise _Unsupported(f"graph input {parent.name!r} is used as a state and as X")
            parent.usage = "sequence"
            if not parent.features:
                parent.features = (self._input_axis(parent, 2),)

    def _concat_directions(self, fwd: Seq, bwd: Seq, axis: int) -> Seq:
        """[forward ; reverse] outputs of two unrolled directions: one bidirectional layer."""
        a, b = fwd.stage, bwd.stage
        ok = (
            isinstance(a, LayerStage)
            and isinstance(b, LayerStage)
            and a.parent is b.parent
            and a.layer.direction == "forward"
            and b.layer.direction == "reverse"
            and a.layer.hidden_size == b.layer.hidden_size
            and axis == len(fwd.axes) - 1
            and not fwd.windows
            and not bwd.windows
        )
        if not ok:
            raise _Unsupported(
                "only [forward; reverse] outputs of one layer concatenated on the features form "
                "a bidirectional layer"
            )
        if len(fwd.axes) != len(bwd.axes) or not all(
            self.roles.same(p, q) for p, q in zip(fwd.axes[:-1], bwd.axes[:-1])
        ):
            raise _Unsupported("the two directions have different layouts")
        H = a.layer.hidden_size
        layer = RecurrentLayer(
            "rnn",
            a.layer.input_size,
            H,
            "bidirectional",
            [a.layer.directions[0], b.layer.directions[0]],
        )
        layer.validate()
        d_role, h_role = self.roles.new("dir", 2), self.roles.new("feat", H, "h")
        stage = LayerStage(a.parent, (d_role, h_role), layer=layer, cells=[*a.cells, *b.cells])
        return Seq(stage, (*fwd.axes[:-1], (d_role, h_role)))

    def _as_final_state(self, v: Any) -> FinalState:
        if isinstance(v, FinalState):
            return v
        if not isinstance(v, Hidden):
            raise _Unsupported(f"{type(v).__name__} is not a final state")
        cell = v.cell
        if v.step != cell.steps - 1:
            raise _Unsupported(f"step {v.step} of {cell.steps} is used as the final state")
        rnn = self._finish_cell(cell)
        if len(v.axes) != 3 or not all(_is_one(self.roles.size_of(r)) for r in v.axes[0]):
            raise _Unsupported("the final state must be (1, batch, hidden)")
        s_role = self.roles.new("state", 1)
        return FinalState((rnn,), "h", ((s_role,), *v.axes[1:]))

    def _concat_states(self, parts: list[FinalState], axis: int) -> FinalState:
        if axis != 0 or any(
            self.roles.kind_of(p.axes[0][0]) != "state" or len(p.axes[0]) != 1 for p in parts
        ):
            raise _Unsupported("final states are concatenated on their first axis only")
        kinds = {p.kind for p in parts}
        if len(kinds) != 1:
            raise _Unsupported("concatenates h and c states")
        cells = tuple(c for p in parts for c in p.cells)
        s_role = self.roles.new("state", len(cells))
        return FinalState(cells, parts[0].kind, ((s_role,), *parts[0].axes[1:]))

    # ---- assembly ------------------------------------------------------------------------------

    def _assemble(self) -> ModelSpec:
        seq_out: tuple[str, Seq] | None = None
        state_outs: list[tuple[str, FinalState]] = []
        for k, vi in enumerate(self.graph.output):
            v = self.values.get(vi.name)
            where = self._where(vi.name)
            try:
                if isinstance(v, Hidden) and k == 0 and v.cell.steps == 1:
                    # Unrolled over one step, the output sequence and the final state are
                    # the same tensor; exporters list the sequence first.
                    v = self._single_step_sequence(v)
                elif isinstance(v, Hidden):
                    v = self._as_final_state(v)
            except _Unsupported as exc:
                raise UnsupportedModelError(f"{where}: {exc}") from None
            if isinstance(v, FinalState):
                state_outs.append((vi.name, v))
            elif isinstance(v, Seq):
                if seq_out is not None:
                    raise UnsupportedModelError(
                        f"{where}: a second sequence output (after {seq_out[0]!r}); one "
                        "sequence output is supported"
                    )
                seq_out = (vi.name, v)
            else:
                raise UnsupportedModelError(
                    f"{where}: is {type(v).__name__ if v is not None else 'an unused tensor'}, "
                    "not the model's output sequence or a final state"
                )
        if seq_out is not None:
            final = seq_out[1].stage
        elif state_outs:
            final = self._last_layer_stage(state_outs)
        else:
            raise UnsupportedModelError("the graph has no outputs")
        chain: list[Stage] = []
        st: Stage | None = final
        while st is not None:
            chain.append(st)
            st = st.parent
        chain.reverse()
        root = chain[0]
        embedding = None
        if isinstance(root, EmbeddingStage):
            embedding = root.table
            x_name = root.tokens
            x_value = self.values[x_name]
        elif isinstance(root, InputStage):
            x_name = root.name
            x_value = self.values[x_name]
        else:  # pragma: no cover - every chain starts at an input
            raise UnsupportedModelError("the output does not depend on a graph input")
        layers, layer_stages, head = self._plan(chain)
        if not layers:
            raise UnsupportedModelError(
                f"{self._where(seq_out[0]) if seq_out else 'the graph'}: no recurrent layer "
                "between the input and the output"
            )
        layout = self._layout_of(x_value.axes, f"graph input {x_name!r}")
        outputs: dict[str, str] = {}
        style = "sequence"
        if seq_out is not None and self._is_node_y(seq_out[1], chain):
            # One node whose own Y is the output (through layout-neutral glue): the
            # operator's signature, with its layout.
            style = "onnx_node"
            if layout != layer_stages[0].layout:
                raise UnsupportedModelError(
                    f"{self._where(seq_out[0])}: the node's layout-{layer_stages[0].layout} Y "
                    f"is the output but its X comes in layout {layout}"
                )
        elif seq_out is not None:
            name, v = seq_out
            out_layout = self._check_output_sequence(name, v)
            if out_layout != layout:
                raise UnsupportedModelError(
                    f"{self._where(name)}: the input is "
                    f"{'batch' if layout else 'time'}-first but the output is "
                    f"{'batch' if out_layout else 'time'}-first"
                )
        self._check_state_layouts(layer_stages, state_outs, layout if style == "onnx_node" else 0)
        cells = {id(c): (li, d) for li, s in enumerate(layer_stages) for d, c in enumerate(s.cells)}
        inputs, constants, groups, state_roles = self._states(layer_stages, cells, state_outs)
        if style == "onnx_node" and layout == 1:
            constants = {
                k: np.ascontiguousarray(v.transpose(1, 0, 2)) for k, v in constants.items()
            }
        graph_inputs = [vi.name for vi in self.graph.input if vi.name not in self._initializers()]
        ordered_inputs: dict[str, str] = {}
        for name in graph_inputs:
            if name == x_name:
                ordered_inputs["x"] = name
            elif name in inputs:
                ordered_inputs[inputs[name]] = name
            elif name in self.unused_inputs:
                ordered_inputs[f"unused:{name}"] = name
            else:
                raise UnsupportedModelError(
                    f"graph input {name!r} is neither the model's input sequence nor an "
                    "initial state of its recurrent layers"
                )
        for vi in self.graph.output:
            if seq_out is not None and vi.name == seq_out[0]:
                outputs["y"] = vi.name
            else:
                outputs[state_roles[vi.name]] = vi.name
        sig = Signature(
            style,
            layout,
            ordered_inputs,
            outputs,
            constants,
            state_groups=groups if len(groups) > 1 else [],
            declared=self._declared(),
        )
        spec = ModelSpec(layers, sig, embedding=embedding, head=head, source="onnx")
        try:
            spec.validate()
        except ModelFormatError as exc:
            raise ModelFormatError(f"the lowered graph is inconsistent: {exc}") from exc
        return spec

    def _initializers(self) -> set[str]:
        return {t.name for t in self.graph.initializer}

    def _where(self, tensor: str) -> str:
        node = self.producer.get(tensor)
        if node is None:
            return f"graph output {tensor!r}"
        return f"graph output {tensor!r} (node {node.name!r} ({node.op_type}))"

    def _last_layer_stage(self, state_outs: list[tuple[str, FinalState]]) -> Stage:
        stages = []
        for name, fs in state_outs:
            for c in fs.cells:
                owner = self._stage_of_cell(c)
                if owner is None:
                    raise UnsupportedModelError(
                        f"{self._where(name)}: the state of an unrolled recurrence whose "
                        "output sequence the graph does not use"
                    )
                stages.append(owner)
        last = stages[0]
        for s in stages:
            if _depth(s) > _depth(last):
                last = s
        return last

    def _stage_of_cell(self, c: Any) -> LayerStage | None:
        for s in self._all_layer_stages():
            if any(x is c for x in s.cells):
                return s
        return None

    def _all_layer_stages(self) -> list[LayerStage]:
        out: list[LayerStage] = []
        for v in self.values.values():
            st = getattr(v, "stage", None)
            while st is not None:
                if isinstance(st, LayerStage) and all(st is not o for o in out):
                    out.append(st)
                st = st.parent
        return out

    def _plan(
        self, chain: list[Stage]
    ) -> tuple[list[RecurrentLayer], list[LayerStage], list[DenseLayer]]:
        """Turn the chain of stages into layers (dense maps before a layer folded in) + head."""
        layers: list[RecurrentLayer] = []
        layer_stages: list[LayerStage] = []
        after: list[DenseStage] = []  # dense stages since the input or the last layer
        for st in chain[1:]:
            if isinstance(st, LayerStage):
                with_act = [d for d in after if d.activation is not None]
                if with_act:
                    raise UnsupportedModelError(
                        f"{with_act[0].node}: a dense layer with activation "
                        f"{with_act[0].activation!r} before a recurrent layer is not supported"
                    )
                layers.append(_fold_dense(st.layer, after) if after else st.layer)
                layer_stages.append(st)
                after = []
            elif isinstance(st, DenseStage):
                after.append(st)
            else:  # pragma: no cover - input stages only start chains
                raise UnsupportedModelError(f"unexpected stage {type(st).__name__}")
        # Dense maps after the last layer are the head; an activation right after a layer (or
        # after another activation) becomes an identity dense layer with that activation.
        head = []
        for st in after:
            width = _stage_width(self, st)
            weight = np.eye(width, dtype=np.float32) if st.weight is None else st.weight
            head.append(
                DenseLayer(np.ascontiguousarray(weight, np.float32), st.bias, st.activation)
            )
        for i, (a, b) in enumerate(zip(layers, layers[1:])):
            if b.input_size != a.output_size:
                raise UnsupportedModelError(
                    f"{layer_stages[i + 1].node or 'a recurrent layer'}: input_size "
                    f"{b.input_size} does not match the previous layer's output {a.output_size}"
                )
        return layers, layer_stages, head

    def _layout_of(self, axes: tuple[tuple[str, ...], ...], where: str) -> int:
        first = [self.roles.find(r) for r in axes[0] if not self.roles.droppable(r)]
        second = [self.roles.find(r) for r in axes[1] if not self.roles.droppable(r)]
        if first == ["T"] and second == ["B"]:
            return 0
        if first == ["B"] and second == ["T"]:
            return 1
        raise UnsupportedModelError(f"{where}: cannot tell its time and batch axes apart")

    def _check_output_sequence(self, name: str, v: Seq) -> int:
        where = self._where(name)
        if v.windows or v.flipped:
            raise UnsupportedModelError(f"{where}: a slice of a sequence is not supported")
        if len(v.axes) != 3:
            raise UnsupportedModelError(
                f"{where}: a sequence output must be (time, batch, features) or (batch, time, "
                f"features); this one has {len(v.axes)} axes (the recurrent node's own 4-D Y "
                "is supported only as the output of a one-layer graph without a head)"
            )
        axes = list(v.axes)
        if not self.roles.same(axes[2], v.stage.features):
            raise UnsupportedModelError(f"{where}: its last axis is not the features")
        return self._layout_of(tuple(axes), where)

    def _is_node_y(self, v: Seq, chain: list[Stage]) -> bool:
        """Whether ``v`` is the raw 4-D Y of the only (node) layer, straight from its input."""
        stage = v.stage
        if not (isinstance(stage, LayerStage) and len(chain) == 2 and len(v.axes) == 4):
            return False
        if not isinstance(chain[0], InputStage) or v.windows or v.flipped:
            return False
        d_role, h_role = stage.features if len(stage.features) == 2 else (None, None)
        want = ("T", d_role, "B", h_role) if stage.layout == 0 else ("B", "T", d_role, h_role)
        got = tuple(self.roles.find(ax[0]) if len(ax) == 1 else None for ax in v.axes)
        return got == want

    def _check_state_layouts(
        self,
        stages: list[LayerStage],
        state_outs: list[tuple[str, FinalState]],
        layout: int,
    ) -> None:
        """States are (rows, batch, size), or (batch, rows, size) for a layout-1 node model."""
        for name, fs in state_outs:
            roles = [self.roles.kind_of(ax[0]) if len(ax) == 1 else "" for ax in fs.axes]
            want = ["state", "batch", "feat"] if layout == 0 else ["batch", "state", "feat"]
            if roles != want:
                shape = "(layers * directions, batch, hidden)"
                if layout == 1:
                    shape = "(batch, directions, hidden)"
                raise UnsupportedModelError(
                    f"{self._where(name)}: a final state output must be shaped {shape}"
                )
        for st in stages:
            uses_inputs = any(
                src is not None and src[0] == "input"
                for c in st.cells
                for src in (c.init_h, c.init_c)
            )
            if uses_inputs and st.layout != layout:
                raise UnsupportedModelError(
                    f"{st.node}: a layout-{st.layout} node takes (batch, directions, hidden) "
                    "states; a multi-node graph's state inputs must be (layers * directions, "
                    "batch, hidden)"
                )

    def _states(
        self,
        stages: list[LayerStage],
        cells: dict[int, tuple[int, int]],
        state_outs: list[tuple[str, FinalState]],
    ) -> tuple[dict[str, str], dict[str, np.ndarray], list[int], dict[str, str]]:
        """State groups and the signature roles of state inputs, outputs and constants."""
        L = len(stages)
        # For each state tensor: ("in"/"out", kind) and the layers it covers.
        covers: dict[str, tuple[str, str, list[int]]] = {}
        for li, st in enumerate(stages):
            for d, c in enumerate(st.cells):
                for kind in ("h", "c"):
                    src = getattr(c, f"init_{kind}")
                    if src is not None and src[0] == "input":
                        name = src[1]
                        entry = covers.setdefault(name, ("in", kind, []))
                        if entry[1] != kind:
                            raise UnsupportedModelError(
                                f"graph input {name!r} is used as both an h and a c state"
                            )
                        entry[2].append((li, d, src[2]))
        for name, fs in state_outs:
            where = self._where(name)
            entries = []
            for c in fs.cells:
                if id(c) not in cells:
                    raise UnsupportedModelError(
                        f"{where}: the state of a layer that is not on the path to the output"
                    )
                entries.append((*cells[id(c)], len(entries)))
            covers[name] = ("out", fs.kind, entries)
        bounds = {0, L}
        for name, (io, kind, entries) in covers.items():
            where = self._where(name) if io == "out" else f"graph input {name!r}"
            entries.sort(key=lambda e: e[2])
            pairs = [(li, d) for li, d, _ in entries]
            if [e[2] for e in entries] != list(range(len(entries))):
                raise UnsupportedModelError(
                    f"{where}: the recurrent layers use its rows {[e[2] for e in entries]}; "
                    "each row must belong to exactly one layer direction, in order"
                )
            lo, hi = pairs[0][0], pairs[-1][0] + 1
            expected = [
                (li, d)
                for li in range(lo, hi)
                if kind == "h" or stages[li].layer.cell == "lstm"
                for d in range(stages[li].layer.num_directions)
            ]
            if pairs != expected:
                raise UnsupportedModelError(
                    f"{where}: its rows must stack the layers' directions in order "
                    f"(layer, direction) {expected}, got {pairs}"
                )
            if io == "in":
                declared = self.roles.size_of(self._input_axis(self.input_stages[name], 0))
                if isinstance(declared, int) and declared != len(pairs):
                    raise UnsupportedModelError(
                        f"{where}: declares {declared} rows; the layers use {len(pairs)}"
                    )
            bounds.update((lo, hi))
        edges = sorted(bounds)
        groups = [(a, b) for a, b in zip(edges, edges[1:])]
        group_of = {li: g for g, (a, b) in enumerate(groups) for li in range(a, b)}
        inputs: dict[str, str] = {}
        roles: dict[str, str] = {}
        for name, (io, kind, entries) in covers.items():
            g = group_of[entries[0][0]]
            if (
                group_of[entries[-1][0]] != g
                or entries[0][0] != groups[g][0]
                or (entries[-1][0] != groups[g][1] - 1)
            ):
                where = self._where(name) if io == "out" else f"graph input {name!r}"
                raise UnsupportedModelError(
                    f"{where}: covers layers that other state tensors split differently"
                )
            base = ("initial_" if io == "in" else "y_") + kind
            role = state_role(base, g)
            if io == "in":
                if role in inputs.values():
                    raise UnsupportedModelError(
                        f"two graph inputs are the {base} of layers {groups[g]}"
                    )
                inputs[name] = role
            else:
                roles[name] = role
        constants: dict[str, np.ndarray] = {}
        for g, (a, b) in enumerate(groups):
            for kind in ("h", "c"):
                srcs = [
                    getattr(c, f"init_{kind}")
                    for st in stages[a:b]
                    if kind == "h" or st.layer.cell == "lstm"
                    for c in st.cells
                ]
                kinds = {None if s is None else s[0] for s in srcs}
                if "input" in kinds and kinds != {"input"}:
                    raise UnsupportedModelError(
                        f"layers {a}..{b - 1} take their initial {kind} partly from a graph input "
                        "and partly from constants"
                    )
                if "const" in kinds:
                    batch = next(s[1].shape[0] for s in srcs if s is not None)
                    rows = [s[1] if s is not None else None for s in srcs]
                    size = next(r.shape[1] for r in rows if r is not None)
                    stacked = np.stack(
                        [r if r is not None else np.zeros((batch, size), np.float32) for r in rows]
                    )
                    constants[state_role(f"initial_{kind}", g)] = stacked
        return inputs, constants, [b - a for a, b in groups], roles

    def _declared(self) -> dict[str, tuple[tuple[int | str, ...], str]]:
        from onnx import helper

        out: dict[str, tuple[tuple[int | str, ...], str]] = {}
        inits = self._initializers()
        for vi in [*self.graph.input, *self.graph.output]:
            if vi.name in inits or not vi.type.HasField("tensor_type"):
                continue
            t = vi.type.tensor_type
            if not t.HasField("shape"):
                continue
            dims: list[int | str] = []
            for k, d in enumerate(t.shape.dim):
                if d.HasField("dim_value"):
                    dims.append(int(d.dim_value))
                else:
                    dims.append(d.dim_param or f"{vi.name}_dim{k}")
            try:
                dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name
            except Exception:  # noqa: BLE001
                dtype = "float32"
            out[vi.name] = (tuple(dims), dtype)
        return out


# ---- helpers used by the interpreter -----------------------------------------------------------


def _label(node: Any) -> str:
    """How errors name a node: ``node 'name' (OpType)``."""
    return f"node {node.name!r} ({node.op_type})"


def _depth(stage: Stage) -> int:
    n = 0
    while stage.parent is not None:
        stage = stage.parent
        n += 1
    return n


def _stage_width(low: GraphLowering, st: DenseStage) -> int:
    if st.weight is not None:
        return int(st.weight.shape[0])
    return int(_dim_prod(low.roles.size_of(r) for r in st.features))


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


def _as_vector(c: np.ndarray, width: int, rank: int) -> np.ndarray | None:
    """A constant that broadcasts only along the last axis, as a (width,) vector."""
    if c.ndim > rank or any(d != 1 for d in c.shape[:-1]):
        return None
    if c.ndim == 0 or c.shape[-1] == 1:
        return np.full(width, float(c.reshape(-1)[0]), np.float32)
    if c.shape[-1] != width:
        return None
    return np.ascontiguousarray(c.reshape(width), np.float32)


def _same_optional(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(a, b))


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


def _broadcast_axes(
    low: GraphLowering,
    step_axes: tuple[tuple[str, ...], ...],
    rec_axes: tuple[tuple[str, ...], ...] | None,
    rec: Any,
) -> tuple[tuple[str, ...], ...]:
    """Axes of step + rec under numpy broadcasting (the step's roles win)."""
    if rec_axes is None:  # a Const
        shape = list(np.shape(rec.value))
        rec_axes = tuple((low.roles.new("unit", 1),) if d == 1 else ("?",) for d in shape)
    rank = max(len(step_axes), len(rec_axes))
    a = [None] * (rank - len(step_axes)) + list(step_axes)
    b = [None] * (rank - len(rec_axes)) + list(rec_axes)
    out = []
    for x, y in zip(a, b):
        if x is None:
            out.append(y if y != ("?",) else (low.roles.new("unit", 1),))
        elif y is None or y == ("?",):
            out.append(x)
        elif all(_is_one(low.roles.size_of(r)) for r in x):
            out.append(y)
        else:
            out.append(x)
    return tuple(out)


def _fold_dense(layer: RecurrentLayer, pending: list[DenseStage]) -> RecurrentLayer:
    """A layer whose input first goes through affine maps: fold them into W and the bias."""
    A: np.ndarray | None = None
    a: np.ndarray | None = None
    for st in pending:
        W = st.weight
        b = st.bias
        if W is None:
            width = (A.shape[0] if A is not None else None) or (len(b) if b is not None else 0)
            W = np.eye(width, dtype=np.float32)
        A = W if A is None else W @ A
        a = W @ a if a is not None else None
        if b is not None:
            a = b if a is None else a + b
    assert A is not None
    dirs = []
    for dw in layer.directions:
        bias = dw.bias + (dw.w @ a if a is not None else 0.0)
        dirs.append(
            DirectionWeights(
                w=np.ascontiguousarray(dw.w @ A, np.float32),
                r=dw.r,
                bias=np.asarray(bias, np.float32),
                activations=dw.activations,
                bias_rn=dw.bias_rn,
                peephole=dw.peephole,
                proj=dw.proj,
            )
        )
    folded = RecurrentLayer(
        layer.cell,
        int(A.shape[1]),
        layer.hidden_size,
        layer.direction,
        dirs,
        proj_size=layer.proj_size,
        clip=layer.clip,
        input_forget=layer.input_forget,
        linear_before_reset=layer.linear_before_reset,
    )
    folded.validate()
    return folded


def lower_graph(model: Any) -> ModelSpec:
    """Lower an exported ONNX graph (a ModelProto, external data already loaded).

    Raises
    ------
    UnsupportedModelError
        Naming the node, its op type and why, when part of the graph has no place in the plan.
    ModelFormatError
        When the graph is malformed (e.g. a wrong-shaped initializer).
    """
    if len(model.functions):
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    return GraphLowering(model).lower()
