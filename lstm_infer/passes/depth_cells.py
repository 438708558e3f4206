"""One step of an unrolled depth-gated LSTM layer, and the stacks such layers form.

CELLS.md's ``DepthGatedLSTM`` (Yao et al. 2015): layer 0 a plain LSTM; every layer l >= 1,
with input x = h^{l-1}_t, adds a depth gate over the lower layer's new cell::

    d     = sigmoid(D x + e + p * c_prev + q * c_lower)
    c     = d * c_lower + f * c_prev + i * g,      h = o * tanh(c)

A layer's step is found from ``tanh(c)`` like a plain LSTM's (lstm_infer.passes.cell_steps):
``c`` is three products; the input gate is the sigmoid next to a tanh, the forget gate the
sigmoid whose argument is affine, the depth gate the one whose argument also holds the two
cells scaled by constant vectors. The engine's op holds every layer, so a stack is re-rolled
whole: a plain LSTM chain at the bottom, each chain above reading, at every step, the h and
the new c of the same step of the chain below (:func:`stack_chains`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer.cells import CELLS
from lstm_infer.graph import Node
from lstm_infer.passes.cell_algebra import CellAlgebra, Poly
from lstm_infer.passes.cell_steps import LSTM_GATES, CellStep, output_gate, resolve

DG_LSTM = "dg_lstm"  # CellStep.cell of a depth-gated layer's step
NATIVE_OP = "DepthGatedLSTM"
PYTORCH_GATES = ("i", "f", "c", "o")  # LSTM_GATES keys in the native op's i, f, g, o order


def _kinds(alg: CellAlgebra, mono: tuple[str, ...]) -> dict[str, str]:
    return {a: alg.atom_kind(a) for a in mono}


def match_dg_lstm(alg: CellAlgebra, tanh_node: Node) -> CellStep | None:
    """The depth-gated layer's step whose ``tanh(c)`` is ``tanh_node``, or None."""
    head = output_gate(alg, tanh_node)
    if head is None:
        return None
    h, o, nodes = head
    c = tanh_node.inputs[0]
    pc = alg.poly(c, nodes)
    if pc is None or len(pc) != 3 or any(v != 1.0 or len(m) != 2 for m, v in pc.items()):
        return None
    i = g = None
    scaled: list[tuple[str, str]] = []  # (sigmoid, the cell it scales)
    for m in pc:
        kinds = _kinds(alg, m)
        sig = [a for a, k in kinds.items() if k == "sigmoid"]
        tanh = [a for a, k in kinds.items() if k == "tanh"]
        if len(sig) == 1 and len(tanh) == 1 and i is None:
            i, g = sig[0], tanh[0]
        elif len(sig) == 1 and not tanh and len(kinds) == 2:
            scaled.append((sig[0], next(a for a in m if a != sig[0])))
        else:
            return None
    if i is None or g is None or len(scaled) != 2:
        return None
    linear = [alg.linear(alg.producer[s].inputs[0], set()) is not None for s, _ in scaled]
    if sorted(linear) != [False, True]:
        return None
    (f, c_prev), (d, c_lower) = scaled if linear[0] else scaled[::-1]
    gates = {}
    for key, act in zip(LSTM_GATES, (i, o, f, g)):
        a = alg.linear(alg.producer[act].inputs[0], nodes)
        if a is None:
            return None
        gates[key] = a
    depth = _depth_gate(alg, alg.producer[d].inputs[0], c_prev, c_lower, nodes)
    if depth is None or c_prev == c_lower:
        return None
    step = CellStep(DG_LSTM, h, gates, nodes, c_out=c, c_prev=c_prev)
    step.extra = {"depth": depth[0], "p": depth[1], "q": depth[2], "c_lower": c_lower}
    return step


def _depth_gate(
    alg: CellAlgebra, arg: str, c_prev: str, c_lower: str, nodes: set[int]
) -> tuple[Any, np.ndarray, np.ndarray] | None:
    """(D x + e as an affine map, p, q) of ``D x + e + p * c_prev + q * c_lower``."""
    pd: Poly | None = alg.poly(arg, nodes)
    if pd is None:
        return None
    vectors = {}
    for cell in (c_prev, c_lower):
        monos = [m for m in pd if cell in m]
        if len(monos) != 1 or len(monos[0]) != 2:
            return None
        (other,) = [a for a in monos[0] if a != cell] or [None]
        value = alg.constant(other) if other is not None else None
        if value is None or value.dtype.kind != "f" or value.ndim > 1:
            return None
        vectors[cell] = value.reshape(-1).astype(np.float64) * pd[monos[0]]
    rest = {m: v for m, v in pd.items() if c_prev not in m and c_lower not in m}
    affine = alg.linear_poly(rest, nodes)
    if affine is None:
        return None
    return affine, vectors[c_prev], vectors[c_lower]


def stack_chains(lists: list[list[CellStep]]) -> list[list[list[CellStep]]]:
    """The stacks among linked step lists: a plain LSTM list at the bottom, then depth-gated
    lists each of whose steps reads the h (its input) and new c (its ``c_lower``) of the same
    step of the list below, of the same length. Each depth-gated step's ``x`` and
    ``h_prev`` are set."""
    owner = {s.h_out: (n, k) for n, steps in enumerate(lists) for k, s in enumerate(steps)}
    below: dict[int, int] = {}
    for n, steps in enumerate(lists):
        if steps[0].cell != DG_LSTM:
            continue
        lower = None
        for k, s in enumerate(steps):
            hit = [owner[x] for x in s.leaves if x in owner and owner[x][1] == k]
            hit = [(m, j) for m, j in hit if lists[m][j].c_out == s.extra["c_lower"]]
            if len(hit) != 1 or (lower is not None and hit[0][0] != lower):
                break
            lower = hit[0][0]
            s.x = lists[lower][k].h_out
            others = s.leaves - {s.x}
            if len(others) != 1 or (s.h_prev is not None and others != {s.h_prev}):
                break
            s.h_prev = next(iter(others))
        else:
            if lower is not None and len(lists[lower]) == len(steps):
                below[n] = lower
    above: dict[int, list[int]] = {}
    for n, m in below.items():
        above.setdefault(m, []).append(n)
    stacks = []
    for n, steps in enumerate(lists):
        if steps[0].cell != "lstm" or len(above.get(n, [])) != 1:
            continue
        stack = [steps]
        while len(above.get(n, [])) == 1:
            n = above[n][0]
            stack.append(lists[n])
        if len(above.get(n, [])) <= 1:
            stacks.append(stack)
    return stacks


def _rows(alg: CellAlgebra, step: CellStep, x: str, h: str) -> tuple[np.ndarray, ...] | None:
    """weight_ih, weight_hh, bias (rows i, f, g, o; float64) of the step's four gates."""
    hidden = step.gates["i"].width
    w, r, b = [], [], []
    for key in PYTORCH_GATES:
        a = resolve(alg, step.gates[key], h, hidden)
        if a is None or set(a.terms) != {x, h} or a.terms[h].shape[0] != hidden:
            return None
        w.append(a.terms[x].T)
        r.append(a.terms[h].T)
        b.append(a.bias)
    return np.concatenate(w), np.concatenate(r), np.concatenate(b)


def layer_weights(alg: CellAlgebra, step: CellStep, layer: int) -> dict[str, np.ndarray] | None:
    """The native op's state_dict keys of ``layer`` read from one of its steps (float64;
    ``bias_hh`` zeros: the graph holds one sum), or None."""
    rows = _rows(alg, step, step.x or "", step.h_prev or "")
    if rows is None:
        return None
    w, r, b = rows
    hidden = r.shape[1]
    out = {f"weight_ih_l{layer}": w, f"weight_hh_l{layer}": r, f"bias_ih_l{layer}": b,
           f"bias_hh_l{layer}": np.zeros_like(b)}  # fmt: skip
    if layer == 0:
        return out if step.cell == "lstm" else None
    depth = resolve(alg, step.extra["depth"], step.h_prev or "", hidden)  # type: ignore[arg-type]
    if depth is None or set(depth.terms) != {step.x} or depth.width != hidden:
        return None
    p, q = step.extra["p"], step.extra["q"]
    for name, v in (("depth_cell", p), ("depth_lower", q)):
        if v.size not in (1, hidden):  # type: ignore[union-attr]
            return None
        out[f"{name}_l{layer}"] = np.broadcast_to(v, (hidden,))  # type: ignore[arg-type]
    out[f"depth_weight_l{layer}"] = depth.terms[step.x or ""].T
    out[f"depth_bias_l{layer}"] = depth.bias
    return out


def stack_attrs(weights: dict[str, np.ndarray], where: str) -> dict[str, Any]:
    """The native node's attributes, read and checked as the cell's state_dict is."""
    state = {k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()}
    attrs = CELLS[NATIVE_OP].read(state)
    CELLS[NATIVE_OP].check(attrs, where)
    return attrs
