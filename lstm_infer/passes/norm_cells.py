"""Layer normalisation read out of a graph, and one step of an unrolled layer-normalised LSTM.

The cell is CELLS.md's ``LayerNormLSTM`` (torchaudio's RNN-T predictor cell)::

    gates = LN_g(W x + b + R h)         LN over all 4H values
    c'    = LN_c(f * c + i * g)         the normalised cell is the state carried on
    h'    = o * tanh(c')

An exporter writes each LN either as one ``LayerNormalization`` node (opset 17 on) or
decomposed (torch.onnx before opset 17)::

    m = ReduceMean(v, [-1]);  d = v - m;  var = ReduceMean(d ^ 2, [-1])
    y = d / Sqrt(var + eps) * weight + bias

:func:`read_layer_norm` accepts exactly these two spellings (anything else, an eps outside
the square root say, is not a layer norm here). A step is found from ``tanh(c')`` like a plain
LSTM's (:mod:`lstm_infer.passes.cell_steps`): the gates are the four column blocks of one gate
LN's output, told apart by where they enter the cell's equations; LN's statistics over the 4H
values do not depend on their order, so the blocks may sit in any order in the graph and the
weights are permuted once into the native op's ``i, f, g, o``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lstm_infer.cells import CELLS
from lstm_infer.graph import Node
from lstm_infer.passes.cell_algebra import CellAlgebra
from lstm_infer.passes.cell_steps import CellStep, lstm_cell_terms, output_gate, resolve

LN_LSTM = "ln_lstm"  # CellStep.cell of a layer-normalised LSTM step
NATIVE_OP = "LayerNormLSTM"
NATIVE_GATES = ("i", "f", "g", "o")  # the native op's (PyTorch's) gate order


@dataclass
class Norm:
    """``y = (v - mean(v)) / sqrt(var(v) + eps) * weight + bias`` over the last axis."""

    source: str  # v
    eps: float
    weight: np.ndarray | None  # float64 [width] or [1]; None: 1
    bias: np.ndarray | None  # None: 0
    nodes: set[int]

    def vector(self, which: str, width: int) -> np.ndarray | None:
        """The weight or bias as a [width] float64 vector (a scalar broadcast), else None."""
        value = self.weight if which == "weight" else self.bias
        if value is None:
            return np.full(width, 1.0 if which == "weight" else 0.0)
        if value.size == 1:
            return np.full(width, float(value[0]))
        return value if value.size == width else None


def _float_vector(alg: CellAlgebra, name: str) -> np.ndarray | None:
    value = alg.constant(name)
    if value is None or value.dtype.kind != "f" or value.ndim > 1:
        return None
    return value.reshape(-1).astype(np.float64)


def _last_axis(alg: CellAlgebra, node: Node) -> bool:
    """A ReduceMean over the last axis, dims kept (the axes an attribute or, opset 18 on, an
    input)."""
    if int(node.attrs.get("keepdims", 1)) != 1 or node.attrs.get("noop_with_empty_axes", 0):
        return False
    if len(node.inputs) > 1 and node.inputs[1]:
        axes = alg.constant(node.inputs[1])
        axes = None if axes is None else [int(a) for a in axes.reshape(-1)]
    else:
        axes = node.attrs.get("axes")
    # Step tensors are 2-D (batch, features): axis 1 is the last one too.
    return axes is not None and list(axes) in ([-1], [1])


def _operands(alg: CellAlgebra, node: Node | None, op: str) -> tuple[str, str] | None:
    """(tensor, constant) of a binary ``op`` node with one constant operand, either order."""
    if node is None or node.op != op or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if alg.constant(b) is not None and alg.constant(a) is None:
        return a, b
    if op in ("Add", "Mul") and alg.constant(a) is not None and alg.constant(b) is None:
        return b, a
    return None


def read_layer_norm(alg: CellAlgebra, name: str) -> Norm | None:
    """``name`` as a layer norm over its last axis (its nodes in ``Norm.nodes``), or None.

    Every intermediate must be read only inside the norm, so the nodes can be replaced.
    """
    node = alg.producer.get(name)
    if node is None:
        return None
    if node.op == "LayerNormalization":
        return _fused(alg, node)
    nodes: set[int] = set()
    weight = bias = None
    found = _operands(alg, node, "Add")
    if found is not None and alg.single_use(found[0]):
        bias = _float_vector(alg, found[1])
        if bias is None:
            return None
        nodes.add(id(node))
        node = alg.producer.get(found[0])
    found = _operands(alg, node, "Mul")
    if found is not None and alg.single_use(found[0]):
        weight = _float_vector(alg, found[1])
        if weight is None:
            return None
        nodes.add(id(node))
        node = alg.producer.get(found[0])
    core = _decomposed(alg, node)
    if core is None:
        return None
    source, eps, core_nodes = core
    return Norm(source, eps, weight, bias, nodes | core_nodes)


def _fused(alg: CellAlgebra, node: Node) -> Norm | None:
    axis = int(node.attrs.get("axis", -1))
    if axis not in (-1, 1) or int(node.attrs.get("stash_type", 1)) != 1:
        return None
    if any(o for o in node.outputs[1:]):  # the mean / inverse std read elsewhere
        return None
    weight = _float_vector(alg, node.inputs[1])
    bias = _float_vector(alg, node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if weight is None or (len(node.inputs) > 2 and node.inputs[2] and bias is None):
        return None
    eps = float(node.attrs.get("epsilon", 1e-5))
    return Norm(node.inputs[0], eps, weight, bias, {id(node)})


def _decomposed(alg: CellAlgebra, div: Node | None) -> tuple[str, float, set[int]] | None:
    """(v, eps, nodes) of ``(v - mean(v)) / Sqrt(mean((v - mean(v))^2) + eps)``."""
    if div is None or div.op != "Div" or len(div.inputs) != 2:
        return None
    centred, root = div.inputs
    sub, sqrt = alg.producer.get(centred), alg.producer.get(root)
    if sub is None or sub.op != "Sub" or sqrt is None or sqrt.op != "Sqrt":
        return None
    source, mean = sub.inputs
    first = alg.producer.get(mean)
    if first is None or first.op != "ReduceMean" or first.inputs[0] != source:
        return None
    shifted = _operands(alg, alg.producer.get(sqrt.inputs[0]), "Add")
    if shifted is None:
        return None
    eps = alg.scalar(shifted[1])
    second = alg.producer.get(shifted[0])
    if eps is None or eps < 0 or second is None or second.op != "ReduceMean":
        return None
    square = alg.producer.get(second.inputs[0])
    if square is None or not _is_square_of(alg, square, centred):
        return None
    if not (_last_axis(alg, first) and _last_axis(alg, second)):
        return None
    chain = [first, sub, square, second, alg.producer[sqrt.inputs[0]], sqrt]
    # d is read by the square and the division, every other intermediate once.
    if {id(r) for r in alg.consumers.get(centred, [])} != {id(square), id(div)}:
        return None
    if centred in alg.graph.output_names:
        return None
    for n in chain:
        if n is not sub and not alg.single_use(n.outputs[0]):
            return None
    return source, eps, {id(n) for n in chain} | {id(div)}


def _is_square_of(alg: CellAlgebra, node: Node, name: str) -> bool:
    if node.op == "Pow" and len(node.inputs) == 2 and node.inputs[0] == name:
        return alg.scalar(node.inputs[1]) == 2.0
    return node.op == "Mul" and list(node.inputs) == [name, name]


def register_norm_widths(alg: CellAlgebra) -> None:
    """Record in ``alg.widths`` the width of every layer norm over an affine map (torch's
    ``chunk`` of it reads the width through ``Shape``), before anything evaluates those reads
    (the algebra caches what it could not evaluate)."""
    for node in alg.graph.nodes:
        if node.op == "LayerNormalization":
            name = node.outputs[0]
        elif node.op == "Div":
            name = _norm_output(alg, node.outputs[0])
        else:
            continue
        norm = read_layer_norm(alg, name)
        if norm is None:
            continue
        pre = alg.affine(norm.source, set())
        if pre is not None:
            alg.widths[name] = pre.width


def _norm_output(alg: CellAlgebra, name: str) -> str:
    """The end of the gain / bias a decomposed norm's division may be followed by."""
    for op in ("Mul", "Add"):
        readers = alg.consumers.get(name, [])
        if len(readers) == 1 and _operands(alg, readers[0], op) is not None:
            name = readers[0].outputs[0]
    return name


def _block(alg: CellAlgebra, name: str) -> tuple[str, int, int, Node] | None:
    """(source, start, stop, node) if ``name`` is a column block of a tensor of known width
    (``alg.widths``), by ``Split`` or ``Slice`` on the last axis."""
    node = alg.producer.get(name)
    if node is None or node.op not in ("Split", "Slice"):
        return None
    width = alg.widths.get(node.inputs[0])
    if width is None:
        return None
    if node.op == "Split":
        if node.attrs.get("axis", 0) not in (1, -1):
            return None
        n = len(node.outputs)
        if len(node.inputs) > 1 and node.inputs[1]:
            sizes = alg.constant(node.inputs[1])
            if sizes is None or sizes.dtype.kind not in "iu" or sizes.size != n:
                return None
            sizes = [int(s) for s in sizes.reshape(-1)]
        elif int(node.attrs.get("num_outputs", n)) == n and width % n == 0:
            sizes = [width // n] * n
        else:
            return None
        if sum(sizes) != width or min(sizes) < 1:
            return None
        k = node.outputs.index(name)
        return node.inputs[0], sum(sizes[:k]), sum(sizes[: k + 1]), node
    ins = node.inputs + [""] * (5 - len(node.inputs))
    axes = alg.constant(ins[3]) if ins[3] else np.array([0])
    steps = alg.constant(ins[4]) if ins[4] else np.array([1])
    starts, ends = alg.constant(ins[1]), alg.constant(ins[2])
    if any(v is None or v.size != 1 for v in (axes, steps, starts, ends)):
        return None
    if int(axes.reshape(-1)[0]) not in (1, -1) or int(steps.reshape(-1)[0]) != 1:
        return None
    start, stop, _ = slice(int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])).indices(width)
    return (node.inputs[0], start, stop, node) if stop > start else None


def match_ln_lstm(alg: CellAlgebra, tanh_node: Node) -> CellStep | None:
    """The layer-normalised LSTM step whose ``tanh(c')`` is ``tanh_node``, or None."""
    head = output_gate(alg, tanh_node)
    if head is None:
        return None
    h, o, nodes = head
    c_new = tanh_node.inputs[0]
    cell_norm = read_layer_norm(alg, c_new)
    if cell_norm is None:
        return None
    pc = alg.poly(cell_norm.source, nodes)
    terms = None if pc is None else lstm_cell_terms(alg, pc)
    if terms is None:
        return None
    i, g, f, c_prev = terms
    blocks: dict[str, tuple[int, int]] = {}
    source = None
    for key, act in zip(NATIVE_GATES, (i, f, g, o)):
        block = _block(alg, alg.producer[act].inputs[0])
        if block is None or (source is not None and block[0] != source):
            return None
        source = block[0]
        blocks[key] = block[1:3]
        nodes.add(id(block[3]))
    gate_norm = read_layer_norm(alg, source or "")
    if gate_norm is None:
        return None
    pre = alg.affine(gate_norm.source, nodes)
    if pre is None or pre.width % 4:
        return None
    hidden = pre.width // 4
    spans = sorted(blocks.values())
    if spans != [(k * hidden, (k + 1) * hidden) for k in range(4)]:
        return None  # the four gates must be the four disjoint quarters of the norm
    nodes |= cell_norm.nodes | gate_norm.nodes
    step = CellStep(LN_LSTM, h, {"pre": pre}, nodes, c_out=c_new, c_prev=c_prev)
    step.extra = {"blocks": blocks, "gate_norm": gate_norm, "cell_norm": cell_norm}
    return step


def ln_lstm_weights(
    alg: CellAlgebra, step: CellStep, x: str, h: str
) -> tuple[np.ndarray, ...] | None:
    """The native op's weights of the step, in the order of :data:`WEIGHT_KEYS` (float32, rows
    in ``i, f, g, o``; the last one eps as a [1] array), or None when the gate
    pre-activation reads anything but ``x`` and ``h``, or the two norms' eps differ."""
    pre = step.gates["pre"]
    hidden = pre.width // 4
    pre = resolve(alg, pre, h, hidden)
    gate_norm: Norm = step.extra["gate_norm"]  # type: ignore[assignment]
    cell_norm: Norm = step.extra["cell_norm"]  # type: ignore[assignment]
    if pre is None or set(pre.terms) != {x, h} or pre.terms[h].shape[0] != hidden:
        return None
    if gate_norm.eps != cell_norm.eps:  # the native cell has one eps for both
        return None
    blocks: dict[str, tuple[int, int]] = step.extra["blocks"]  # type: ignore[assignment]
    rows = np.concatenate([np.arange(*blocks[k]) for k in NATIVE_GATES])
    gate_w, gate_b = gate_norm.vector("weight", 4 * hidden), gate_norm.vector("bias", 4 * hidden)
    cell_w, cell_b = cell_norm.vector("weight", hidden), cell_norm.vector("bias", hidden)
    if any(v is None for v in (gate_w, gate_b, cell_w, cell_b)):
        return None
    arrays = [pre.terms[x].T[rows], pre.bias[rows], pre.terms[h].T[rows], gate_w[rows],
              gate_b[rows], cell_w, cell_b]  # fmt: skip
    out = tuple(np.ascontiguousarray(a, np.float32) for a in arrays)
    return (*out, np.array([gate_norm.eps], np.float64))


WEIGHT_KEYS = ("weight_ih_l0", "bias_ih_l0", "weight_hh_l0", "gate_norm_l0.weight",
               "gate_norm_l0.bias", "cell_norm_l0.weight", "cell_norm_l0.bias", "eps")  # fmt: skip


def ln_lstm_attrs(weights: tuple[np.ndarray, ...], where: str) -> dict[str, object]:
    """The native node's attributes, read and checked as a state_dict of one layer is."""
    attrs = CELLS[NATIVE_OP].read(dict(zip(WEIGHT_KEYS, weights)))
    CELLS[NATIVE_OP].check(attrs, where)
    return attrs
