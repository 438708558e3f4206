"""Where the steps of an unrolled cell read their inputs: timesteps of one sequence.

An exporter takes timestep t of a 3-D sequence by ``Gather``, or ``Slice`` / ``Split`` then
``Squeeze``, on one axis; :func:`time_slice` reads those back as (sequence, axis, t). A
sequence's shape is known when declared, recorded by an earlier rewrite, or carried from one
through shape-keeping ops (:func:`declared_shape`). A step may also add a timestep of an input
already projected over the whole sequence (torchaudio's ``x2g(input)`` before its loop):
:func:`through_projection` rewrites the step's gates onto the projection's own input.
Used by :mod:`lstm_infer.passes.reroll_cells`.
"""

from __future__ import annotations

import numpy as np

from lstm_infer.graph import Node
from lstm_infer.passes.cell_algebra import Affine, CellAlgebra
from lstm_infer.passes.cell_steps import CellStep


def time_slice(alg: CellAlgebra, name: str) -> tuple[str, int, int] | None:
    """(sequence, axis, index) if ``name`` is one timestep of a 3-D sequence."""
    if name in alg.time_slices:
        return alg.time_slices[name]
    node = alg.producer.get(name)
    if node is None:
        return None
    if node.op == "Gather":
        index = alg.constant(node.inputs[1])
        if index is None or index.ndim != 0 or index.dtype.kind not in "iu":
            return None
        seq, axis, at = node.inputs[0], int(node.attrs.get("axis", 0)), int(index)
    elif node.op == "Squeeze" and len(node.inputs) == 2:
        axes = alg.constant(node.inputs[1])
        inner = alg.producer.get(node.inputs[0])
        if axes is None or axes.size != 1 or inner is None or not alg.single_use(inner.outputs[0]):
            return None
        axis = int(axes.reshape(-1)[0])
        found = _unit_piece(alg, inner, node.inputs[0])
        if found is None:
            return None
        seq, piece_axis, at = found
        if norm_axis(piece_axis) != norm_axis(axis):
            return None
    else:
        return None
    if seq_rank(alg, seq, name) != 3:
        return None
    return seq, norm_axis(axis), at


def norm_axis(axis: int) -> int:
    return axis % 3 if -3 <= axis < 3 else -1


def _unit_piece(alg: CellAlgebra, node: Node, name: str) -> tuple[str, int, int] | None:
    """(sequence, axis, index) if ``name`` is a length-1 piece of a sequence on one axis."""
    if node.op == "Slice":
        ins = node.inputs + [""] * (5 - len(node.inputs))
        vals = [alg.constant(n) if n else None for n in ins[1:5]]
        starts, ends, axes, steps = vals
        if starts is None or ends is None or axes is None or starts.size != 1 or axes.size != 1:
            return None
        if steps is not None and int(steps.reshape(-1)[0]) != 1:
            return None
        start, end = int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])
        if end != start + 1 or (start < 0 <= end):
            return None
        return node.inputs[0], int(axes.reshape(-1)[0]), start
    if node.op == "Split":
        n = len(node.outputs)
        if len(node.inputs) > 1 and node.inputs[1]:
            sizes = alg.constant(node.inputs[1])
            if sizes is None or sizes.size != n or np.any(sizes != 1):
                return None
        elif int(node.attrs.get("num_outputs", n)) != n:
            return None
        length = seq_length(alg, node.inputs[0], int(node.attrs.get("axis", 0)))
        if length != n and not (len(node.inputs) > 1 and node.inputs[1]):
            return None
        return node.inputs[0], int(node.attrs.get("axis", 0)), node.outputs.index(name)
    return None


# Ops whose output has the shape of their (first) input, and Concat: the time length of a
# sequence passes through them.
_SHAPE_KEEPING = ("Identity", "Dropout", "Relu", "Tanh", "Sigmoid", "Add", "Sub", "Mul")


def declared_shape(alg: CellAlgebra, name: str, depth: int = 0) -> tuple | None:
    """What is known of ``name``'s shape: declared, recorded by a rewrite, or carried through
    shape-keeping ops, Concat and a MatMul by a constant from their inputs."""
    for v in alg.graph.inputs:
        if v.name == name:
            return v.type.shape
    t = alg.types.get(name) or alg.graph.value_types.get(name)
    if t is not None or depth > 8:
        return None if t is None else t.shape
    node = alg.producer.get(name)
    if node is None or not node.inputs:
        return None
    if node.op in _SHAPE_KEEPING:
        first = node.inputs[0]
        if len(node.inputs) == 2 and alg.constant(first) is not None:
            # (a constant first, ``bias + x @ W``: its shape broadcasts to the other's)
            shape = declared_shape(alg, node.inputs[1], depth + 1)
            bias = alg.constant(first)
            if shape is None or bias.ndim > len(shape):
                return None
            ok = all(b in (1, d) for b, d in zip(bias.shape[::-1], shape[::-1]))
            return shape if ok else None
        return declared_shape(alg, first, depth + 1)
    if node.op == "MatMul":  # over the features by a constant matrix (a projection)
        weight = alg.constant(node.inputs[1])
        shape = declared_shape(alg, node.inputs[0], depth + 1)
        if weight is None or weight.ndim != 2 or shape is None or len(shape) < 2:
            return None
        return (*shape[:-1], int(weight.shape[1]))
    if node.op != "Concat":
        return None
    shapes = [declared_shape(alg, n, depth + 1) for n in node.inputs]
    if any(sh is None or len(sh) != len(shapes[0]) for sh in shapes):
        return None
    axis = int(node.attrs.get("axis", 0)) % len(shapes[0])
    dims = list(shapes[0])
    dims[axis] = None
    for k in range(len(dims)):
        if k != axis and any(sh[k] != dims[k] for sh in shapes):
            dims[k] = None
    return tuple(dims)


def seq_rank(alg: CellAlgebra, seq: str, step_input: str) -> int | None:
    shape = declared_shape(alg, seq)
    if shape is not None:
        return len(shape)
    return 3 if step_input in alg.gemm_leaves else None


def seq_length(alg: CellAlgebra, seq: str, axis: int) -> int | None:
    shape = declared_shape(alg, seq)
    if shape is None or len(shape) != 3:
        return None
    dim = shape[norm_axis(axis)]
    return dim if isinstance(dim, int) else None


def _projection(alg: CellAlgebra, seq: str) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(X, C, c) if ``seq`` is ``X @ C + c`` over a 3-D sequence X on its features (a
    ``Linear`` applied to the whole sequence before the loop), C and c constants."""
    node = alg.producer.get(seq)
    bias = None
    if node is not None and node.op == "Add" and len(node.inputs) == 2:
        for k in (0, 1):
            value = alg.constant(node.inputs[1 - k])
            inner = alg.producer.get(node.inputs[k])
            if value is not None and inner is not None and inner.op == "MatMul":
                bias, node = value, inner
                break
    if node is None or node.op != "MatMul":
        return None
    weight = alg.constant(node.inputs[1])
    if weight is None or weight.ndim != 2 or weight.dtype.kind != "f":
        return None
    if alg.constant(node.inputs[0]) is not None or seq_rank(alg, node.inputs[0], "") != 3:
        return None
    width = weight.shape[1]
    if bias is None:
        bias = np.zeros(width)
    if bias.dtype.kind != "f" or bias.size not in (1, width) or bias.ndim > 1:
        return None
    return node.inputs[0], weight.astype(np.float64), np.broadcast_to(bias, (width,))


def through_projection(
    alg: CellAlgebra, step: CellStep, where: tuple[str, int, int]
) -> tuple[str, int, int] | None:
    """The step's gates over the projected sequence's own timestep (x_t = X_t C + c, so a
    term x_t M becomes X_t (C M) + c M; the leaf keeps its name); the slice of X, or None."""
    seq, axis, index = where
    found = _projection(alg, seq)
    if found is None or axis == 2:  # (a projection acts on the last axis)
        return None
    source, weight, bias = found
    gates = {}
    for key, a in step.gates.items():
        m = a.terms.get(step.x)
        if m is None:
            gates[key] = a
            continue
        if m.shape[0] != weight.shape[1]:
            return None  # the identity term's width is not the projection's
        terms = dict(a.terms)
        terms[step.x] = weight @ m
        gates[key] = Affine(terms, a.bias + bias @ m)
    step.gates = gates
    return source, axis, index
