"""One step of an unrolled LSTM or GRU cell, recognised by its equations.

A step is found from its output and read back with :class:`CellAlgebra`:

* LSTM: ``h_t = sigmoid(A_o) * tanh(c_t)`` and ``c_t = sigmoid(A_f) * c_prev + sigmoid(A_i) *
  tanh(A_g)``. The gate that multiplies the state is the forget gate, the one next to the tanh
  the input gate, whatever order the weight matrix holds them in (PyTorch ifgo, ONNX iofc,
  Keras ifco, a product per gate).
* GRU: ``h_t = (1 - z) * n + z * h_prev`` (any spelling: PyTorch's ``(h - n) * z + n``, or with
  ``u = 1 - z`` the update gate, read as ``z = sigmoid(-A_u)``), with ``n = tanh(A_nx + r *
  A_nh)`` (linear_before_reset = 1, PyTorch's GRUCell) or ``n = tanh(A_nx + (r * h_prev) R_n)``
  (linear_before_reset = 0), ``r = sigmoid(A_r)``, ``z = sigmoid(A_z)``.

The affine maps ``A`` are over two leaves, the step's input ``x_t`` and its previous hidden
state (an operand of a Concat on the features counts as a leaf too). Which leaf is which is
decided when the steps are chained (:mod:`lstm_infer.passes.reroll_cells`).
:func:`region_closed` gives the nodes a chain of steps (or one step) would replace, if nothing
outside reads an intermediate of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lstm_infer.graph import Node
from lstm_infer.passes.cell_algebra import ZERO, Affine, CellAlgebra, Poly

LSTM_GATES = ("i", "o", "f", "c")  # the ONNX LSTM operator's order
GRU_GATES = ("z", "r", "nx", "nh")


@dataclass
class CellStep:
    """One recognised step; ``h_prev`` is None (an LSTM step) until the chain decides it."""

    cell: str  # "lstm" or "gru"
    h_out: str
    gates: dict[str, Affine]
    nodes: set[int]
    h_prev: str | None = None
    c_out: str | None = None
    c_prev: str | None = None
    linear_before_reset: int = 0
    x: str | None = None
    # The replacing node's weights (ONNX LSTM / GRU: W, R, B); equal in every step of a chain.
    weights: tuple[np.ndarray, ...] | None = None
    leaves: set[str] = field(default_factory=set)
    # What a cell kind's own matcher records for its weights (lstm_infer.passes.norm_cells).
    extra: dict[str, object] = field(default_factory=dict)


def _other(mono: tuple[str, ...], atom: str) -> str | None:
    if len(mono) != 2 or atom not in mono:
        return None
    return mono[1] if mono[0] == atom else mono[0]


def _argument(alg: CellAlgebra, activation: str) -> str:
    return alg.producer[activation].inputs[0]


def output_gate(alg: CellAlgebra, tanh_node: Node) -> tuple[str, str, set[int]] | None:
    """``(h, o, nodes)`` when the one reader of ``tanh_node``'s output is the LSTM-style
    output ``h = o * tanh(c)`` with ``o`` a sigmoid atom (``nodes``: those read so far), else
    None. Shared by every LSTM-like cell's matcher (plain, layer-normalised, depth-gated)."""
    tanh_c = tanh_node.outputs[0]
    readers = alg.consumers.get(tanh_c, [])
    if len(readers) != 1 or readers[0].op != "Mul" or not alg.single_use(tanh_c):
        return None
    h = readers[0].outputs[0]
    nodes: set[int] = set()
    ph = alg.poly(h, nodes)
    if ph is None or len(ph) != 1:
        return None
    ((mono, coef),) = ph.items()
    o = _other(mono, tanh_c)
    if coef != 1.0 or o is None or alg.atom_kind(o) != "sigmoid":
        return None
    return h, o, nodes


def match_lstm(alg: CellAlgebra, tanh_node: Node) -> CellStep | None:
    """The LSTM step whose ``tanh(c_t)`` is ``tanh_node``, or None."""
    head = output_gate(alg, tanh_node)
    if head is None:
        return None
    h, o, nodes = head
    c = tanh_node.inputs[0]
    pc = alg.poly(c, nodes)
    terms = None if pc is None else lstm_cell_terms(alg, pc)
    if terms is None:
        return None
    i, g, f, c_prev = terms
    gates = {}
    for key, act in zip(LSTM_GATES, (i, o, f, g)):
        a = alg.linear(_argument(alg, act), nodes)
        if a is None:
            return None
        gates[key] = a
    step = CellStep("lstm", h, gates, nodes, c_out=c, c_prev=c_prev)
    return step if _same_width(step) else None


def lstm_cell_terms(alg: CellAlgebra, pc: Poly) -> tuple[str, str, str, str] | None:
    """(i, g, f, c_prev) if ``pc`` is ``f * c_prev + i * g`` with i, f sigmoid and g tanh
    atoms, else None."""
    if len(pc) != 2 or any(v != 1.0 or len(m) != 2 for m, v in pc.items()):
        return None
    i = g = f = c_prev = None
    for m in pc:
        kinds = {a: alg.atom_kind(a) for a in m}
        sig = [a for a, k in kinds.items() if k == "sigmoid"]
        tanh = [a for a, k in kinds.items() if k == "tanh"]
        if len(sig) == 1 and len(tanh) == 1 and i is None:
            i, g = sig[0], tanh[0]
        elif len(sig) == 1 and not tanh and f is None:
            f, c_prev = sig[0], _other(m, sig[0])
        else:
            return None
    if i is None or g is None or f is None or c_prev is None:
        return None
    return i, g, f, c_prev


def match_gru(alg: CellAlgebra, node: Node) -> CellStep | None:
    """The GRU step whose new hidden state is ``node``'s output, or None."""
    h = node.outputs[0]
    nodes: set[int] = set()
    p = alg.poly(h, nodes)
    if p is None or len(p) not in (2, 3):
        return None
    linear = [m for m in p if len(m) == 1]
    if len(linear) != 1 or p[linear[0]] != 1.0 or any(len(m) != 2 for m in p if m != linear[0]):
        return None
    (first,) = linear[0]
    pairs = [m for m in p if len(m) == 2]
    kind = alg.atom_kind(first)
    if kind == "tanh":  # n + z h - z n: z is ONNX's update gate
        n, negate = first, False
        zn = [m for m in pairs if n in m and p[m] == -1.0]
        if len(zn) != 1:
            return None
        z = _other(zn[0], n)
        zh = [m for m in pairs if m != zn[0] and z in m and p[m] == 1.0]
        h_prev = _other(zh[0], z) if len(zh) == 1 else None
        if len(p) == 2:  # z h vanished: a scalar zero state (read from the products)
            h_prev = ZERO
    elif kind in ("leaf", "const") and len(p) == 3:  # h - u h + u n: u = 1 - z
        h_prev, negate = first, True
        uh = [m for m in pairs if h_prev in m and p[m] == -1.0]
        if len(uh) != 1:
            return None
        z = _other(uh[0], h_prev)
        un = [m for m in pairs if m != uh[0] and z in m and p[m] == 1.0]
        n = _other(un[0], z) if len(un) == 1 else None
    else:
        return None
    if z is None or h_prev is None or n is None or h_prev in (z, n):
        return None
    if alg.atom_kind(z) != "sigmoid" or alg.atom_kind(n) != "tanh":
        return None
    if h_prev != ZERO and alg.atom_kind(h_prev) not in ("leaf", "const"):
        return None
    gates = _gru_candidate(alg, _argument(alg, n), h_prev, nodes)
    if gates is None:
        return None
    lbr, gates, r, h_prev = gates
    for key, act in (("z", z), ("r", r)):
        a = alg.linear(_argument(alg, act), nodes)
        if a is None:
            return None
        gates[key] = a.scaled(-1.0) if negate and key == "z" else a
    step = CellStep("gru", h, gates, nodes, h_prev=h_prev, linear_before_reset=lbr)
    return step if _same_width(step) else None


def _gru_candidate(
    alg: CellAlgebra, n_arg: str, h_prev: str, nodes: set[int]
) -> tuple[int, dict[str, Affine], str, str] | None:
    """(linear_before_reset, {"nx", "nh"}, the reset gate, the state) from the candidate's
    argument."""
    pn: Poly | None = alg.poly(n_arg, nodes)
    if pn is None:
        return None
    products = [m for m in pn if len(m) == 2]
    if len(products) == 1:  # A_nx + r * A_nh
        (mono,) = products
        if pn[mono] != 1.0:
            return None
        kinds = {a: alg.atom_kind(a) for a in mono}
        r = next((a for a, k in kinds.items() if k == "sigmoid"), None)
        a_h = _other(mono, r) if r is not None else None
        if a_h is None or kinds[a_h] != "affine":
            return None
        nh = alg.affine(a_h, nodes)
        nx = alg.linear_poly({m: v for m, v in pn.items() if m != mono}, nodes)
        if nh is None or nx is None or len(nh.terms) != 1:
            return None
        (leaf,) = nh.terms
        if leaf != h_prev:
            return None
        return 1, {"nx": nx, "nh": nh}, r, leaf
    if products:
        return None
    both = alg.linear_poly(pn, nodes)  # A_nx + (r * h_prev) R_n
    if both is None or len(both.terms) != 2:
        return None
    for leaf in both.terms:
        reader = alg.producer.get(leaf)
        if reader is None or reader.op != "Mul" or not alg.single_use(leaf):
            continue
        sub: set[int] = set()
        pr = alg.poly(leaf, sub)
        if pr is None or len(pr) != 1:
            continue
        ((mono, coef),) = pr.items()
        r = _other(mono, h_prev)
        if coef != 1.0 or r is None or alg.atom_kind(r) != "sigmoid":
            continue
        nodes.update(sub)
        (x_leaf,) = set(both.terms) - {leaf}
        width = both.width
        nx = Affine({x_leaf: both.terms[x_leaf]}, both.bias)
        nh = Affine({h_prev: both.terms[leaf]}, np.zeros(width))
        return 0, {"nx": nx, "nh": nh}, r, h_prev
    return None


def _same_width(step: CellStep) -> bool:
    widths = {a.width for a in step.gates.values()}
    return len(widths) == 1 and widths.pop() > 0


def resolve(alg: CellAlgebra, a: Affine, h: str, hidden: int) -> Affine | None:
    """``a`` with each Concat leaf split into its parts (the hidden state has ``hidden``
    rows); None when a Concat does not hold ``h``."""
    terms: dict[str, np.ndarray] = {}
    for leaf, m in a.terms.items():
        parts = alg.concat_parts.get(leaf)
        if parts is None:
            pieces = [(leaf, m)]
        elif parts[0] == h and m.shape[0] > hidden:
            pieces = [(parts[0], m[:hidden]), (parts[1], m[hidden:])]
        elif parts[1] == h and m.shape[0] > hidden:
            pieces = [(parts[0], m[:-hidden]), (parts[1], m[-hidden:])]
        else:
            return None
        for name, piece in pieces:
            if name in terms:
                if terms[name].shape != piece.shape:
                    return None
                terms[name] = terms[name] + piece
            else:
                terms[name] = piece
    return Affine(terms, a.bias)


def leaf_candidates(alg: CellAlgebra, step: CellStep) -> set[str]:
    """The step's leaves with Concat leaves replaced by their parts."""
    out: set[str] = set()
    for a in step.gates.values():
        for leaf in a.terms:
            out.update(alg.concat_parts.get(leaf, [leaf]))
    return out


def onnx_weights(
    alg: CellAlgebra, step: CellStep, x: str, h: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The ONNX operator's W [1, G*H, I], R [1, G*H, H] and B [1, 2*G*H] of the step (x and h
    its two leaves), or None when a gate reads anything else."""
    hidden = next(iter(step.gates.values())).width
    w_rows, r_rows, wb, rb = [], [], [], []
    if step.cell == "lstm":
        blocks = [(step.gates[k], step.gates[k], True) for k in LSTM_GATES]
    else:
        g = step.gates
        blocks = [(g["z"], g["z"], True), (g["r"], g["r"], True), (g["nx"], g["nh"], False)]
    for x_map, h_map, joint in blocks:
        x_map = resolve(alg, x_map, h, hidden)
        h_map = resolve(alg, h_map, h, hidden) if not joint else x_map
        if x_map is None or h_map is None:
            return None
        if joint and set(x_map.terms) != {x, h}:
            return None
        if not joint and (set(x_map.terms) != {x} or set(h_map.terms) != {h}):
            return None
        if h_map.terms[h].shape[0] != hidden:
            return None
        w_rows.append(x_map.terms[x].T)
        r_rows.append(h_map.terms[h].T)
        wb.append(x_map.bias)
        rb.append(np.zeros(hidden) if joint else h_map.bias)
    if len({m.shape[1] for m in w_rows}) != 1:
        return None
    w = np.concatenate(w_rows)[None].astype(np.float32)
    r = np.concatenate(r_rows)[None].astype(np.float32)
    b = np.concatenate(wb + rb)[None].astype(np.float32)
    return w, r, b


def region_closed(
    alg: CellAlgebra,
    steps: list[CellStep],
    exposed: set[str | None] | None = None,
    keep: set[str | None] | None = None,
) -> set[int] | None:
    """The chain's nodes if every tensor they make is read only inside the chain, except
    ``exposed`` (default: the hidden states and the last cell state), and no node belongs to
    two steps; else None. ``keep``: the chain's inputs (default: the first step's states and
    every step's x)."""
    region: set[int] = set()
    for s in steps:
        if region & s.nodes:
            return None
        region |= s.nodes
    if exposed is None:
        exposed = {s.h_out for s in steps} | {steps[-1].c_out}
    if keep is None:
        keep = {steps[0].h_prev, steps[0].c_prev} | {s.x for s in steps}
    outputs = set(alg.graph.output_names)
    absorb_side_reads(alg, keep, region, outputs)
    for node in alg.graph.nodes:
        if id(node) not in region:
            continue
        for out in node.outputs:
            if not out or out in exposed:
                continue
            if out in outputs or any(id(r) not in region for r in alg.consumers.get(out, [])):
                return None
    return region


def absorb_side_reads(
    alg: CellAlgebra, keep: set[str | None], region: set[int], outputs: set[str]
) -> None:
    """Add to ``region`` the nodes only it reads (the Shape arithmetic of torch's ``chunk``,
    the steps' input slices), except those making the chain's inputs ``keep``."""
    changed = True
    while changed:
        changed = False
        for node in reversed(alg.graph.nodes):
            if id(node) in region or any(o in keep or o in outputs for o in node.outputs):
                continue
            readers = [r for o in node.outputs if o for r in alg.consumers.get(o, [])]
            if readers and all(id(r) in region for r in readers):
                region.add(id(node))
                changed = True
