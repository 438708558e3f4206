"""Reading per-step recurrent cells out of a model graph: affine maps and gate polynomials.

An exporter that traces a cell over T steps writes each step as products and elementwise
ops, in many shapes: one ``Gemm`` over ``concat(x_t, h)`` or one per operand, a ``Split`` or
``Slice`` into gate blocks (or a product per gate), biases in the ``Gemm`` or added after.
:class:`CellAlgebra` reads such a subgraph by what it computes, not by how it is spelled:

* :meth:`CellAlgebra.affine` gives a tensor as an affine map ``sum_k v_k M_k + b`` of
  *leaves* ``v_k`` (the non-constant operands of the products), through Gemm, MatMul,
  Add/Sub, Split, Slice, Identity and a Concat of leaves on the features;
* :meth:`CellAlgebra.poly` gives an elementwise expression (Add, Sub, Mul, Neg) as a
  polynomial over *atoms*: Sigmoid and Tanh outputs, affine maps, constants and other tensors
  (a state from the step before). Scalar constants become coefficients.

Two spellings of one cell then give the same polynomial, whatever the operand order, and the
gates are told apart by where they enter the cell's equations, not by their position in a
weight matrix. Every node the reading absorbs is recorded (``visited``), so a caller can check
that nothing outside uses an intermediate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lstm_infer.errors import LstmInferError
from lstm_infer.graph import Graph, Node, TensorType
from lstm_infer.ops import get_op, run_on_constants

# The largest constant the reader evaluates from a subgraph of constants (elements).
MAX_CONST_ELEMENTS = 1 << 22
# A polynomial of a cell step has a handful of terms; past these bounds it is not a cell.
MAX_TERMS = 12
MAX_DEGREE = 3
ELEMENTWISE = ("Add", "Sub", "Mul", "Neg")
ZERO = "<zero state>"  # the name every all-zero constant state is read as
ACTIVATIONS = ("Sigmoid", "Tanh")

Monomial = tuple[str, ...]  # sorted atom names
Poly = dict[Monomial, float]


@dataclass
class Affine:
    """``sum_k leaf_k @ terms[leaf_k] + bias``: terms [in_k, width], bias [width], float64."""

    terms: dict[str, np.ndarray]
    bias: np.ndarray

    @property
    def width(self) -> int:
        return int(self.bias.shape[0])

    def columns(self, start: int, stop: int) -> Affine:
        return Affine({k: m[:, start:stop] for k, m in self.terms.items()}, self.bias[start:stop])

    def scaled(self, factor: float) -> Affine:
        return Affine({k: m * factor for k, m in self.terms.items()}, self.bias * factor)

    def plus(self, other: Affine) -> Affine | None:
        if other.width != self.width:
            return None
        terms = dict(self.terms)
        for k, m in other.terms.items():
            if k in terms:
                if terms[k].shape != m.shape:
                    return None
                terms[k] = terms[k] + m
            else:
                terms[k] = m
        return Affine(terms, self.bias + other.bias)


@dataclass
class CellAlgebra:
    """The readers over one graph (its consumers, producers and constants indexed once)."""

    graph: Graph
    # Types of tensors an earlier rewrite made (3-D sequences with a known time length).
    types: dict[str, TensorType] = field(default_factory=dict)
    producer: dict[str, Node] = field(init=False)
    consumers: dict[str, list[Node]] = field(init=False)
    # Tensors that are Concat outputs read as a leaf: their parts, in order.
    concat_parts: dict[str, list[str]] = field(default_factory=dict)
    # Leaves read by a Gemm (so they are 2-D).
    gemm_leaves: set[str] = field(default_factory=set)
    # Widths of tensors that are not affine maps, known to a caller (a layer norm's output
    # has its input's): what ``Gather(Shape(t), 1)`` of them reads.
    widths: dict[str, int] = field(default_factory=dict)
    # Tensors an earlier rewrite made that are one timestep of a sequence it made (a re-rolled
    # chain's last hidden state): (sequence, time axis, index).
    time_slices: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    # Leaves added to an affine map as they are (an identity term): a timestep of an input
    # projected over the whole sequence at once (torchaudio's ``x2g(input)`` before its
    # loop). Valid only where the caller finds the projection and its width (reroll_cells).
    bare_leaves: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.producer = self.graph.producers()
        self.consumers = {}
        for node in self.graph.nodes:
            for name in node.inputs:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self._outputs = set(self.graph.output_names)
        self._consts: dict[str, np.ndarray | None] = {}
        self._affine: dict[str, tuple[Affine | None, frozenset[int]]] = {}

    # ---- constants ---------------------------------------------------------------------------

    def constant(self, name: str, depth: int = 0) -> np.ndarray | None:
        """The value of ``name`` if it is a constant or computed from constants only."""
        if not name:
            return None
        if name in self.graph.initializers:
            return self.graph.initializers[name]
        if name in self._consts:
            return self._consts[name]
        self._consts[name] = None
        node = self.producer.get(name)
        if node is None or depth > 16 or node.op in ("If", "Loop", "Scan"):
            return None
        width = self._width_read(node)
        if width is not None:
            self._consts[name] = width
            return width
        op = get_op(node.op, node)
        if not op.foldable or not node.outputs:
            return None
        ins = [self.constant(n, depth + 1) if n else None for n in node.inputs]
        if any(v is None for n, v in zip(node.inputs, ins) if n):
            return None
        try:
            outs = run_on_constants(node, ins, MAX_CONST_ELEMENTS)
        except (LstmInferError, ValueError, TypeError, IndexError, MemoryError):
            return None
        for out, value in zip(node.outputs, outs):
            if out:
                self._consts[out] = np.asarray(value)
        return self._consts[name]

    def _width_read(self, node: Node) -> np.ndarray | None:
        """``Gather(Shape(a), 1)`` of an affine map ``a``, or of a tensor of known width
        (torch's ``chunk`` reads its input's width so): the width, a constant."""
        shape = self.producer.get(node.inputs[0]) if node.op == "Gather" else None
        if shape is None or shape.op != "Shape" or shape.attrs or int(node.attrs.get("axis", 0)):
            return None
        index = self.constant(node.inputs[1])
        if index is None or index.size != 1 or int(index.reshape(-1)[0]) not in (1, -1):
            return None
        a = self.affine(shape.inputs[0], set())
        width = a.width if a is not None else self.widths.get(shape.inputs[0])
        if width is None:
            return None
        return np.array(width if index.ndim == 0 else [width], np.int64)

    def state_name(self, name: str) -> str:
        """``name``, or ZERO for a constant of zeros (every zero state is the same one, however
        many constants the exporter wrote for it)."""
        value = self.constant(name)
        if value is not None and value.dtype.kind == "f" and value.size > 1 and not value.any():
            return ZERO
        return name

    def scalar(self, name: str) -> float | None:
        value = self.constant(name)
        if value is None or value.size != 1 or value.dtype.kind != "f":
            return None
        return float(value.reshape(-1)[0])

    def single_use(self, name: str) -> bool:
        return len(self.consumers.get(name, ())) == 1 and name not in self._outputs

    # ---- affine maps -------------------------------------------------------------------------

    def affine(self, name: str, visited: set[int]) -> Affine | None:
        """``name`` as an affine map of leaves (nodes absorbed added to ``visited``)."""
        if name in self._affine:
            value, nodes = self._affine[name]
            if value is not None:
                visited.update(nodes)
            return value
        nodes: set[int] = set()
        value = self._affine_of(name, nodes)
        self._affine[name] = (value, frozenset(nodes))
        if value is not None:
            visited.update(nodes)
        return value

    def _bias(self, name: str, width: int | None) -> np.ndarray | None:
        value = self.constant(name)
        if value is None or value.dtype.kind != "f" or value.ndim > 2:
            return None
        if value.ndim == 2 and value.shape[0] != 1:
            return None
        flat = value.reshape(-1).astype(np.float64)
        if width is None:
            return flat if flat.size > 1 else None
        if flat.size == 1:
            return np.full(width, flat[0])
        return flat if flat.size == width else None

    def _affine_of(self, name: str, nodes: set[int]) -> Affine | None:
        node = self.producer.get(name)
        if node is None:
            return None
        op, ins = node.op, node.inputs
        if op in ("Gemm", "MatMul"):
            result = self._product(node, nodes)
        elif op == "Identity":
            result = self.affine(ins[0], nodes)
        elif op in ("Add", "Sub"):
            result = self._sum(node, nodes)
        elif op == "Split":
            result = self._split(node, name, nodes)
        elif op == "Slice":
            result = self._slice(node, nodes)
        else:
            return None
        if result is not None:
            nodes.add(id(node))
        return result

    def _product(self, node: Node, nodes: set[int]) -> Affine | None:
        ins = node.inputs
        weight = self.constant(ins[1])
        if weight is None or weight.ndim != 2 or weight.dtype.kind != "f":
            return None
        m = weight.astype(np.float64)
        bias = np.zeros(m.shape[1])
        if node.op == "Gemm":
            if node.attrs.get("transA", 0):
                return None
            if node.attrs.get("transB", 0):
                m = m.T
            m = m * float(node.attrs.get("alpha", 1.0))
            bias = np.zeros(m.shape[1])
            if len(ins) > 2 and ins[2]:
                b = self._bias(ins[2], m.shape[1])
                if b is None:
                    return None
                bias = b * float(node.attrs.get("beta", 1.0))
            self.gemm_leaves.add(ins[0])
        leaf = self.state_name(ins[0])
        concat = self.producer.get(leaf)
        if (
            concat is not None
            and concat.op == "Concat"
            and len(concat.inputs) == 2
            and concat.attrs.get("axis") in (1, -1)
        ):
            self.concat_parts[leaf] = list(concat.inputs)
            nodes.add(id(concat))
            if node.op == "Gemm":
                self.gemm_leaves.update(concat.inputs)
        return Affine({leaf: m}, bias)

    def _sum(self, node: Node, nodes: set[int]) -> Affine | None:
        a_name, b_name = node.inputs
        sign = -1.0 if node.op == "Sub" else 1.0
        a = self.affine(a_name, nodes)
        b = self.affine(b_name, nodes)
        if a is not None and b is not None:
            return a.plus(b.scaled(sign))
        if a is not None:
            bias = self._bias(b_name, a.width)
            if bias is None:
                bare = self._bare(b_name, a.width)
                return None if bare is None else a.plus(bare.scaled(sign))
            return Affine(a.terms, a.bias + sign * bias)
        if b is not None:
            bias = self._bias(a_name, b.width)
            if bias is None:
                bare = self._bare(a_name, b.width)
                return None if bare is None else bare.plus(b.scaled(sign))
            return Affine(b.terms, b.bias + bias) if node.op == "Add" else None
        return None

    def _bare(self, name: str, width: int) -> Affine | None:
        """``name`` as an identity term of an affine map of ``width``, when it is taken from a
        sequence (Gather / Squeeze: one timestep; see ``bare_leaves``)."""
        node = self.producer.get(name)
        if node is None or node.op not in ("Gather", "Squeeze") or self.constant(name) is not None:
            return None
        self.bare_leaves.add(name)
        return Affine({name: np.eye(width)}, np.zeros(width))

    def _split(self, node: Node, name: str, nodes: set[int]) -> Affine | None:
        if node.attrs.get("axis", 0) not in (1, -1):
            return None
        whole = self.affine(node.inputs[0], nodes)
        if whole is None:
            return None
        n = len(node.outputs)
        if len(node.inputs) > 1 and node.inputs[1]:
            sizes = self.constant(node.inputs[1])
            if sizes is None or sizes.dtype.kind not in "iu" or sizes.size != n:
                return None
            sizes = [int(s) for s in sizes.reshape(-1)]
        else:
            parts = int(node.attrs.get("num_outputs", n))
            if parts != n or whole.width % n:
                return None
            sizes = [whole.width // n] * n
        if sum(sizes) != whole.width or min(sizes) < 1:
            return None
        k = node.outputs.index(name)
        start = sum(sizes[:k])
        return whole.columns(start, start + sizes[k])

    def _slice(self, node: Node, nodes: set[int]) -> Affine | None:
        ins = node.inputs + [""] * (5 - len(node.inputs))
        axes = self.constant(ins[3]) if ins[3] else np.array([0])
        steps = self.constant(ins[4]) if ins[4] else np.array([1])
        starts, ends = self.constant(ins[1]), self.constant(ins[2])
        if any(v is None or v.size != 1 for v in (axes, steps, starts, ends)):
            return None
        if int(axes.reshape(-1)[0]) not in (1, -1) or int(steps.reshape(-1)[0]) != 1:
            return None
        whole = self.affine(ins[0], nodes)
        if whole is None:
            return None
        start, stop, _ = slice(int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])).indices(
            whole.width
        )
        return whole.columns(start, stop) if stop > start else None

    # ---- polynomials -------------------------------------------------------------------------

    def atom_kind(self, name: str) -> str:
        """The atom's kind: "sigmoid" / "tanh" (an activation's output), "affine",
        "const" or "leaf"."""
        if name == ZERO:
            return "leaf"
        node = self.producer.get(name)
        if node is not None and node.op in ACTIVATIONS and len(node.inputs) == 1:
            return node.op.lower()
        if self.affine(name, set()) is not None:
            return "affine"
        if self.constant(name) is not None:
            return "const"
        return "leaf"

    def poly(self, name: str, visited: set[int], root: bool = True) -> Poly | None:
        """``name`` as a polynomial over atoms (None past the size bounds). Elementwise nodes
        are expanded at the root and wherever their output has one reader; any other tensor
        is an atom (an activation's node is added to ``visited``)."""
        value = self.scalar(name)
        if value is not None:
            return {(): value}
        node = self.producer.get(name)
        if (
            node is not None
            and node.op in ELEMENTWISE
            and (root or self.single_use(name))
            and len(node.inputs) == (1 if node.op == "Neg" else 2)
        ):
            parts = [self.poly(n, visited, root=False) for n in node.inputs]
            if any(p is None for p in parts):
                return None
            visited.add(id(node))
            if node.op == "Neg":
                return _scale(parts[0], -1.0)
            if node.op == "Add":
                return _add(parts[0], parts[1])
            if node.op == "Sub":
                return _add(parts[0], _scale(parts[1], -1.0))
            return _mul(parts[0], parts[1])
        if node is not None and node.op in ACTIVATIONS:
            visited.add(id(node))
        elif self.affine(name, set()) is None and self.state_name(name) == ZERO:
            return {(ZERO,): 1.0}  # (a product of a zero state stays an affine map)
        return {(name,): 1.0}

    def linear(self, name: str, visited: set[int]) -> Affine | None:
        """An activation's argument as one affine map: a polynomial of degree <= 1 whose
        atoms are affine maps or bias constants."""
        p = self.poly(name, visited)
        return None if p is None else self.linear_poly(p, visited)

    def linear_poly(self, p: Poly, visited: set[int]) -> Affine | None:
        """A polynomial of degree <= 1 over affine maps and bias constants as one map."""
        total: Affine | None = None
        bias_terms: list[tuple[str | None, float]] = []
        for mono, coef in p.items():
            if not mono:
                bias_terms.append((None, coef))
                continue
            if len(mono) != 1:
                return None
            kind = self.atom_kind(mono[0])
            if kind == "affine":
                term = self.affine(mono[0], visited)
                assert term is not None
                term = term.scaled(coef)
                total = term if total is None else total.plus(term)
                if total is None:
                    return None
            elif kind == "const":
                bias_terms.append((mono[0], coef))
            else:
                return None
        if total is None:
            return None
        bias = total.bias.copy()
        for const, coef in bias_terms:
            b = np.full(total.width, 1.0) if const is None else self._bias(const, total.width)
            if b is None:
                return None
            bias += coef * b
        return Affine(total.terms, bias)


def _add(a: Poly, b: Poly) -> Poly | None:
    out = dict(a)
    for mono, coef in b.items():
        out[mono] = out.get(mono, 0.0) + coef
    out = {m: c for m, c in out.items() if c != 0.0}
    return out if len(out) <= MAX_TERMS else None


def _scale(a: Poly, factor: float) -> Poly:
    return {m: c * factor for m, c in a.items()} if factor else {}


def _mul(a: Poly, b: Poly) -> Poly | None:
    out: Poly = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            mono = tuple(sorted(ma + mb))
            if len(mono) > MAX_DEGREE:
                return None
            out[mono] = out.get(mono, 0.0) + ca * cb
    out = {m: c for m, c in out.items() if c != 0.0}
    return out if len(out) <= MAX_TERMS else None
