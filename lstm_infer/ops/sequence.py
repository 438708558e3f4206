"""Sequences of tensors: SequenceEmpty, SequenceConstruct, SequenceInsert, SequenceAt,
SequenceLength, SequenceErase, ConcatFromSequence and SplitToSequence.

What torch.jit.script makes of a loop that appends to a Python list and then stacks it:
``SequenceEmpty`` before a ``Loop`` that carries the list, ``SequenceInsert`` in its body,
``ConcatFromSequence(new_axis=1)`` after it (a list stacked on axis 0 never gets here:
:mod:`lstm_infer.passes.loop_lists` makes it the Loop's scan output). A sequence value is a
:class:`TensorSequence` (ONNX ``seq(tensor(D))``: tensors of one dtype, shapes free); it
lives only inside a graph call. Sequence ops are never folded at load (a constant is a
tensor), a graph's own inputs and outputs are tensors (a model taking or returning a list is
refused at load), and step programs do not lower them (a graph holding one runs op by op).

A sequence holds at most ``MAX_SEQUENCE_LENGTH`` tensors and ``MAX_SEQUENCE_BYTES`` bytes:
a loop appending without end stops with an error naming the node long before memory runs
out. Appending to the end of a sequence nothing else has appended to shares its storage
(the old value still sees its own prefix), so a loop collecting T steps costs O(T), not
O(T^2); any other insertion or erasure copies the list of tensors (never their data).

:func:`sequence_names` infers which tensors of a graph are sequences (the shape and type
inference of this family) and :func:`check_sequence_use` refuses, at load, a tensor op fed
a sequence or a sequence op fed a tensor, naming the node.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from lstm_infer.errors import InputError, ModelFormatError
from lstm_infer.ops.base import (
    OpDef,
    RunContext,
    allowed_attrs,
    attr_int,
    check_elements,
    dtype_of,
    infer_axis,
    normalize_axis,
    op,
    shape_of,
    typed,
)
from lstm_infer.ops.elementwise import ONNX_DTYPES
from lstm_infer.tensor_type import TensorType

# Bounds on one sequence: far above the steps of any recurrent model's collected outputs,
# and the bytes a Loop's scan outputs may hold (lstm_infer.ops.control.LOOP_MAX_SCAN_BYTES).
MAX_SEQUENCE_LENGTH = 1 << 16
MAX_SEQUENCE_BYTES = 1 << 30


class TensorSequence:
    """An immutable sequence of tensors of one dtype (ONNX ``seq(tensor(dtype))``).

    The tensors are kept in a list shared with the sequences it was appended from: this value
    is its first ``length`` entries (``_bytes[k]`` is the bytes of the first k). Not an array
    and deliberately not iterable: numpy never mistakes it for nested data.
    """

    __slots__ = ("dtype", "length", "_items", "_bytes")

    def __init__(
        self, dtype: Any, items: list[np.ndarray], sizes: list[int] | None = None, n: int = -1
    ) -> None:
        self.dtype = np.dtype(dtype)
        self._items = items
        self._bytes = sizes if sizes is not None else _prefix_bytes(items)
        self.length = len(items) if n < 0 else n

    @property
    def nbytes(self) -> int:
        return self._bytes[self.length]

    def tensors(self) -> list[np.ndarray]:
        """The tensors, in order (a new list; the arrays are shared and read-only)."""
        return self._items[: self.length]

    def at(self, node: Any, position: int) -> np.ndarray:
        return self._items[_position(node, position, self.length, False)]

    def inserted(self, node: Any, value: np.ndarray, position: int | None) -> TensorSequence:
        """This sequence with ``value`` at ``position`` (None: appended)."""
        value = _element(node, value, self.dtype)
        n = self.length
        at = n if position is None else _position(node, position, n, True)
        _check_bounds(node, n + 1, self.nbytes + value.nbytes)
        if at == n and len(self._items) == n:  # the shared list ends here: append in place
            self._items.append(value)
            self._bytes.append(self._bytes[-1] + value.nbytes)
            return TensorSequence(self.dtype, self._items, self._bytes, n + 1)
        items = self.tensors()
        items.insert(at, value)
        return TensorSequence(self.dtype, items)

    def erased(self, node: Any, position: int | None) -> TensorSequence:
        """This sequence without the tensor at ``position`` (None: the last)."""
        n = self.length
        if n == 0:
            raise InputError(f"{node.label}: cannot erase from an empty sequence")
        at = n - 1 if position is None else _position(node, position, n, False)
        if at == n - 1:  # a prefix of the same storage
            return TensorSequence(self.dtype, self._items, self._bytes, n - 1)
        items = self.tensors()
        del items[at]
        return TensorSequence(self.dtype, items)

    def __repr__(self) -> str:
        return f"TensorSequence({self.dtype}, {self.length} tensors, {self.nbytes} bytes)"


def _prefix_bytes(items: list[np.ndarray]) -> list[int]:
    out = [0]
    for a in items:
        out.append(out[-1] + a.nbytes)
    return out


def _check_bounds(node: Any, length: int, nbytes: int) -> None:
    if length > MAX_SEQUENCE_LENGTH:
        raise InputError(
            f"{node.label}: a sequence of more than {MAX_SEQUENCE_LENGTH} tensors: refused"
        )
    if nbytes > MAX_SEQUENCE_BYTES:
        raise InputError(
            f"{node.label}: a sequence of {nbytes} bytes, past {MAX_SEQUENCE_BYTES}: refused"
        )


def _element(node: Any, value: Any, dtype: np.dtype | None) -> np.ndarray:
    """A tensor as a sequence keeps it: a read-only copy (a loop body may reuse the buffer
    it computed it in) of the sequence's dtype."""
    if not isinstance(value, np.ndarray):
        raise InputError(f"{node.label}: a sequence holds tensors, got {type(value).__name__}")
    if dtype is not None and value.dtype != dtype:
        raise InputError(
            f"{node.label}: a {value.dtype} tensor cannot join a sequence of {dtype} tensors"
        )
    value = np.array(value)
    value.flags.writeable = False
    return value


def _position(node: Any, position: int, n: int, inserting: bool) -> int:
    """A position in [-n, n) (inserting: [-n, n]) as an index."""
    hi = n if inserting else n - 1
    if not -n <= position <= hi:
        raise InputError(
            f"{node.label}: position {position} is outside [{-n}, {hi}] for a sequence of "
            f"{n} tensors"
        )
    return position + n if position < 0 else position


def _sequence(node: Any, value: Any) -> TensorSequence:
    if not isinstance(value, TensorSequence):
        raise InputError(f"{node.label}: input 0 must be a sequence of tensors, got a tensor")
    return value


def _position_input(node: Any, value: np.ndarray | None) -> int | None:
    if value is None:
        return None
    if (
        not isinstance(value, np.ndarray)
        or value.dtype.kind not in "iu"
        or value.size != 1
        or value.ndim > 1
    ):
        raise InputError(
            f"{node.label}: position must be one int32 / int64 value, got "
            f"{getattr(value, 'dtype', type(value).__name__)} {np.shape(value)}"
        )
    return int(value.reshape(()))


Ins = list[Any]


def _empty_check(node: Any) -> None:
    allowed_attrs("dtype")(node)
    code = attr_int(node, "dtype", 1)
    if code not in ONNX_DTYPES:
        raise ModelFormatError(f"{node.label}: unsupported sequence element type {code}")


def _empty(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[Any]:
    return [TensorSequence(ONNX_DTYPES[attr_int(node, "dtype", 1)], [])]


def _construct(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[Any]:
    if any(x is None for x in ins):
        raise InputError(f"{node.label}: every input is required")
    first = ins[0].dtype if isinstance(ins[0], np.ndarray) else None
    items = [_element(node, x, first) for x in ins]
    seq = TensorSequence(first, items)
    _check_bounds(node, seq.length, seq.nbytes)
    return [seq]


def _insert(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[Any]:
    seq = _sequence(node, ins[0])
    position = _position_input(node, ins[2] if len(ins) > 2 else None)
    return [seq.inserted(node, ins[1], position)]


def _at(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[Any]:
    seq = _sequence(node, ins[0])
    position = _position_input(node, ins[1])
    if position is None:
        raise InputError(f"{node.label}: position is required")
    return [seq.at(node, position)]


def _length(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[Any]:
    return [np.array(_sequence(node, ins[0]).length, np.int64)]


def _erase(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[Any]:
    seq = _sequence(node, ins[0])
    return [seq.erased(node, _position_input(node, ins[1] if len(ins) > 1 else None))]


def _concat_check(node: Any) -> None:
    allowed_attrs("new_axis", required=("axis",))(node)
    if attr_int(node, "new_axis", 0) not in (0, 1):
        raise ModelFormatError(f"{node.label}: new_axis must be 0 or 1")


def _concat(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[Any]:
    seq = _sequence(node, ins[0])
    arrays = seq.tensors()
    if not arrays:
        # onnxruntime refuses too: an empty sequence has no shape to give the result.
        raise InputError(f"{node.label}: cannot concatenate an empty sequence")
    new_axis = attr_int(node, "new_axis", 0)
    rank = arrays[0].ndim
    if rank == 0 and not new_axis:
        raise InputError(f"{node.label}: cannot concatenate scalars without new_axis=1")
    axis = normalize_axis(node, attr_int(node, "axis"), rank + new_axis)
    first = arrays[0].shape
    rest = first[:axis] + first[axis + 1 :]
    for a in arrays:
        if (
            a.shape != first
            if new_axis
            else (a.ndim != rank or a.shape[:axis] + a.shape[axis + 1 :] != rest)
        ):
            raise InputError(
                f"{node.label}: cannot {'stack' if new_axis else 'concatenate'} tensors of "
                f"shapes {first} and {a.shape} on axis {axis}"
            )
    if new_axis:
        check_elements(node, (len(arrays), *first))
        return [np.stack(arrays, axis=axis)]
    return [np.concatenate(arrays, axis=axis)]


def _split_check(node: Any) -> None:
    allowed_attrs("axis", "keepdims")(node)
    if attr_int(node, "keepdims", 1) not in (0, 1):
        raise ModelFormatError(f"{node.label}: keepdims must be 0 or 1")


def _split(ctx: RunContext, node: Any, ins: Ins, state: Any) -> list[Any]:
    x = ins[0]
    if not isinstance(x, np.ndarray) or x.ndim == 0:
        raise InputError(f"{node.label}: input must be a tensor of rank >= 1")
    axis = normalize_axis(node, attr_int(node, "axis", 0), x.ndim)
    size = x.shape[axis]
    split = ins[1] if len(ins) > 1 else None
    if split is None:
        _check_bounds(node, size, x.nbytes)
        parts = np.split(x, size, axis=axis) if size else []
        if not attr_int(node, "keepdims", 1):
            parts = [p.squeeze(axis) for p in parts]
        return [TensorSequence(x.dtype, [_element(node, p, None) for p in parts])]
    if not isinstance(split, np.ndarray) or split.dtype.kind not in "iu" or split.ndim > 1:
        raise InputError(f"{node.label}: split must be an int32 / int64 scalar or 1-D tensor")
    if split.ndim == 0:
        step = int(split)
        if step <= 0:
            raise InputError(f"{node.label}: split {step} must be positive")
        _check_bounds(node, -(-size // step), x.nbytes)
        sizes = [min(step, size - start) for start in range(0, size, step)]
    else:
        sizes = [int(s) for s in split]
        if any(s < 0 for s in sizes) or sum(sizes) != size:
            raise InputError(
                f"{node.label}: split sizes {sizes[:8]} do not cover axis {axis} of size {size}"
            )
        _check_bounds(node, len(sizes), x.nbytes)
    edges = np.cumsum([0, *sizes])
    cut = [slice(None)] * x.ndim
    parts = []
    for a, b in zip(edges[:-1], edges[1:]):
        cut[axis] = slice(int(a), int(b))
        parts.append(_element(node, x[tuple(cut)], None))
    return [TensorSequence(x.dtype, parts)]


# ---- shape inference: a sequence's type is its tensors' dtype and, when known to be shared,
# their shape (TensorType(..., sequence=True)); lengths are never known statically.


def _seq_type(dtype: str, shape: Any) -> TensorType:
    return TensorType(dtype, None if shape is None else tuple(shape), sequence=True)


def _common(shapes: list[Any]) -> Any:
    """The one shape every tensor has, None when any is unknown or they differ."""
    if not shapes or any(s is None for s in shapes) or len(set(shapes)) != 1:
        return None
    return shapes[0]


def _empty_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    return [_seq_type(ONNX_DTYPES[attr_int(node, "dtype", 1)], None)]


def _construct_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    return [_seq_type(dtype_of(types[0]), _common([shape_of(t) for t in types]))]


def _insert_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    seq, tensor = types[0], types[1]
    dtype = dtype_of(seq) if dtype_of(seq) != "undefined" else dtype_of(tensor)
    return [_seq_type(dtype, _common([shape_of(seq), shape_of(tensor)]))]


def _element_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    return [typed(node, dtype_of(types[0]), shape_of(types[0]))]


def _length_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    return [TensorType("int64", ())]


def _erase_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    return [_seq_type(dtype_of(types[0]), shape_of(types[0]))]


def _concat_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    shape = shape_of(types[0])
    if shape is None:
        return [typed(node, dtype_of(types[0]), None)]
    new_axis = attr_int(node, "new_axis", 0)
    out = list(shape)
    axis = infer_axis(node, attr_int(node, "axis"), len(out) + new_axis)
    if new_axis:
        out.insert(axis, None)  # the sequence's length
    else:
        out[axis] = None  # the sum over the tensors
    return [typed(node, dtype_of(types[0]), out)]


def _split_infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    shape = shape_of(types[0])
    dtype = dtype_of(types[0])
    if shape is None or not shape:
        return [_seq_type(dtype, None)]
    axis = infer_axis(node, attr_int(node, "axis", 0), len(shape))
    if len(types) > 1 and types[1] is not None:  # parts of the given sizes
        out = list(shape)
        out[axis] = None
        return [_seq_type(dtype, out)]
    if attr_int(node, "keepdims", 1):
        return [_seq_type(dtype, [*shape[:axis], 1, *shape[axis + 1 :]])]
    return [_seq_type(dtype, [*shape[:axis], *shape[axis + 1 :]])]


_INFER = {
    "SequenceEmpty": _empty_infer,
    "SequenceConstruct": _construct_infer,
    "SequenceInsert": _insert_infer,
    "SequenceAt": _element_infer,
    "SequenceLength": _length_infer,
    "SequenceErase": _erase_infer,
    "ConcatFromSequence": _concat_infer,
    "SplitToSequence": _split_infer,
}


def _seq_op(name: str, run: Any, inputs: tuple[int, int], check: Any, doc: str) -> OpDef:
    return op(name, run, inputs=inputs, check=check, foldable=False, doc=doc, infer=_INFER[name])


OPS: dict[str, OpDef] = {
    "SequenceEmpty": _seq_op("SequenceEmpty", _empty, (0, 0), _empty_check, "an empty sequence"),
    "SequenceConstruct": _seq_op(
        "SequenceConstruct", _construct, (1, -1), allowed_attrs(), "a sequence of its inputs"
    ),
    "SequenceInsert": _seq_op(
        "SequenceInsert", _insert, (2, 3), allowed_attrs(), "insert (default: append)"
    ),
    "SequenceAt": _seq_op("SequenceAt", _at, (2, 2), allowed_attrs(), "the tensor at a position"),
    "SequenceLength": _seq_op(
        "SequenceLength", _length, (1, 1), allowed_attrs(), "how many tensors"
    ),
    "SequenceErase": _seq_op(
        "SequenceErase", _erase, (1, 2), allowed_attrs(), "remove one (default: the last)"
    ),
    "ConcatFromSequence": _seq_op(
        "ConcatFromSequence", _concat, (1, 1), _concat_check, "concatenate or stack"
    ),
    "SplitToSequence": _seq_op(
        "SplitToSequence", _split, (1, 2), _split_check, "split into a sequence"
    ),
}

# ---- which tensors are sequences (this family's type inference) ------------------------------

# The inputs each op needs to be a sequence, and the ops whose output 0 is one.
SEQUENCE_INPUTS = {
    "SequenceInsert": (0,), "SequenceAt": (0,), "SequenceLength": (0,), "SequenceErase": (0,),
    "ConcatFromSequence": (0,),
}  # fmt: skip
MAKES_SEQUENCE = frozenset(
    {"SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceErase", "SplitToSequence"}
)
# Ops that carry a value of either kind (Identity passes it on, control flow hands it to its
# subgraphs and back).
PASS_THROUGH = frozenset({"Identity", "If", "Loop", "Scan"})


def is_sequence(value: Any) -> bool:
    return isinstance(value, TensorSequence)


def _subgraphs(node: Any, seqs: set[str]) -> list[tuple[Any, set[str]]]:
    """A control-flow node's subgraphs, each with the names of its inputs the node feeds
    sequences (an If branch's input i is the node's input 1 + i; a body's is its input i)."""
    first = 1 if node.op == "If" else 0
    out = []
    for g in node.attrs.values():
        if hasattr(g, "nodes") and hasattr(g, "inputs"):
            fed = {
                v.name
                for i, v in enumerate(g.inputs)
                if first + i < len(node.inputs) and node.inputs[first + i] in seqs
            }
            out.append((g, fed))
    return out


def sequence_names(graph: Any, outer: Iterable[str] = ()) -> set[str]:
    """The tensors of ``graph`` that are sequences: its inputs declared or known (``outer``:
    names of its inputs fed sequences) to be, every output of a node that makes one, and a
    control-flow node's outputs where its subgraphs return one."""
    seqs = set(outer) | {v.name for v in graph.inputs if getattr(v.type, "sequence", False)}
    seqs |= {n for n, t in graph.value_types.items() if getattr(t, "sequence", False)}
    for node in graph.nodes:
        if node.op in MAKES_SEQUENCE:
            seqs.update(node.outputs[:1])
        elif node.op == "Identity" and node.inputs and node.inputs[0] in seqs:
            seqs.update(node.outputs[:1])
        elif node.op in ("If", "Loop"):
            skip = 1 if node.op == "Loop" else 0  # a Loop body's output 0 is its condition
            for g, fed in _subgraphs(node, seqs):
                inner = sequence_names(g, fed)
                for out, v in zip(node.outputs, g.outputs[skip:]):
                    if out and v.name in inner:
                        seqs.add(out)
    return seqs


def check_sequence_use(graph: Any, outer: Iterable[str] = (), depth: int = 0) -> None:
    """Refuse a tensor op reading a sequence, or a sequence op reading a tensor (a constant,
    an input declared a tensor, or what a tensor op computed): ModelFormatError naming the
    node. Inputs of unknown kind (an If branch's outer tensors) pass, checked when they run.
    Subgraphs are checked with what the node feeds them."""
    seqs = sequence_names(graph, outer)
    producers = {o: n for n in graph.nodes for o in n.outputs if o}
    tensors = set(graph.initializers) | {
        v.name
        for v in graph.inputs
        if v.type.dtype != "undefined" and not getattr(v.type, "sequence", False)
    }
    for node in graph.nodes:
        wants = SEQUENCE_INPUTS.get(node.op, ())
        for i, name in enumerate(node.inputs):
            if not name:
                continue
            if i in wants:
                src = producers.get(name)
                computed = src is not None and src.op not in MAKES_SEQUENCE | PASS_THROUGH
                if name not in seqs and (name in tensors or computed):
                    raise ModelFormatError(
                        f"{node.label}: input {name!r} is a tensor; {node.op} reads a sequence"
                    )
            elif name in seqs and node.op not in PASS_THROUGH:
                raise ModelFormatError(
                    f"{node.label}: input {name!r} is a sequence of tensors; {node.op} reads "
                    "tensors"
                )
        if node.op in PASS_THROUGH and node.op != "Identity" and depth < 16:
            for g, fed in _subgraphs(node, seqs):
                check_sequence_use(g, fed, depth + 1)
