"""Replace a Loop or Scan whose body is one recurrent cell step by the native LSTM / GRU / RNN.

tf2onnx writes a Keras ``GRU`` or ``SimpleRNN`` as a ``Loop`` whose body runs one step of the
cell (a plain Keras ``LSTM``, stateful or not, it writes as an ONNX LSTM node itself);
``torch.jit.script`` loops over a cell export the same way (gate arithmetic as equations,
``nn.LSTMCell`` as a one-step LSTM node), and hand-written graphs use ``Scan``. The Loop executor
(:mod:`lstm_infer.ops.control`) runs such a body once per timestep from Python; this pass reads
the body by its equations instead and, when it is proven to be one cell step, replaces the node
by one ONNX ``LSTM`` / ``GRU`` / ``RNN`` node over the whole sequence, which runs on the
engine's fused kernels.

The body is proven a cell step when:

* one carried value (Loop) or state (Scan) is the cell's hidden state: the body's next value of
  it is the ``h_t`` of one cell step read by :mod:`lstm_infer.passes.loop_body` (an LSTM, GRU
  or RNN step written as equations, any gate order, any spelling of the affine maps, or one
  native node over a one-step sequence), its previous value the body's own input for it, and
  an LSTM's cell state likewise;
* the step's only other leaf is timestep t of one 3-D sequence: a Scan's one scanned input
  (axis 0 or 1), or in a Loop ``Gather(X, k, axis=0 or 1)`` of an outer tensor ``X``, ``k`` the
  iteration number or a carried counter that starts at 0 and adds 1;
* the Loop runs exactly ``X``'s length: its trip count is read from ``Shape(X)`` on the time
  axis (or is a constant equal to a static length), and its condition, if any, stays true
  (passed through, a constant true, or an And of ``k < T`` / ``k + 1 < T`` for counters k:
  true after every step but the last), and its initial condition is true or ``0 < T``;
* every weight is a constant; every scan output is ``h_t``; every other carried value (a
  counter, tf2onnx's time and bound values) is read by nothing outside the node.

Anything else is left as it was (it runs per iteration, as exported). One difference remains
by design: on an empty sequence the native node returns an empty [T=0, B, H] stack, where the
Loop (and onnxruntime) return a stack of unknown shape (0, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lstm_infer.errors import LstmInferError
from lstm_infer.graph import Graph, Node, live_nodes, topological_order
from lstm_infer.ops.control import OWN_INPUTS
from lstm_infer.passes.cell_algebra import CellAlgebra
from lstm_infer.passes.cell_steps import CellStep
from lstm_infer.passes.loop_body import MAX_IDENTITIES, CellBody, read_body

PREFIX = "__lstm_infer_loopcell"  # names of the nodes and constants the pass adds


@dataclass
class _Cell:
    """A recognised loop: what the native node needs and which outputs it provides."""

    loop: Node
    step: CellStep
    attrs: dict[str, object]  # the native node's further attributes (CellBody.attrs)
    seq: str  # the outer 3-D sequence
    axis: int  # its time axis: 0 or 1 (the operator's layout)
    reverse: bool  # Scan over the sequence backwards
    h0: str  # outer initial hidden state
    c0: str  # outer initial cell state ("" for GRU / RNN)
    h_out: str  # node output of the final hidden state ("" if none)
    c_out: str  # node output of the final cell state ("" if none)
    scans: list[tuple[str, int]]  # node outputs stacking h_t: (name, stacking axis)


def loop_cells(graph: Graph) -> Graph:
    """``graph`` with every Loop / Scan proven to run one recurrent cell over a sequence
    replaced by the native node (a new Graph; ``graph`` is not modified). The same graph
    when there is none."""
    try:
        return _replace(graph)
    except (LstmInferError, ArithmeticError, IndexError, KeyError, TypeError, ValueError):
        # A body of a form the readers do not expect: the loop runs as exported (the Loop's
        # own checks report any real error in it when it is compiled).
        return graph


def _replace(graph: Graph) -> Graph:
    if not any(n.op in ("Loop", "Scan") for n in graph.nodes):
        return graph
    alg = CellAlgebra(graph)
    cells = []
    for node in graph.nodes:
        found = None
        if node.op == "Loop":
            found = _loop_cell(alg, node)
        elif node.op == "Scan":
            found = _scan_cell(alg, node)
        if found is not None:
            cells.append(found)
    if not cells:
        return graph
    consts = dict(graph.initializers)
    added: list[Node] = []
    for k, cell in enumerate(cells):
        added += _native(cell, f"{PREFIX}{k}_", consts)
    gone = {id(c.loop) for c in cells}
    kept = [n for n in graph.nodes if id(n) not in gone] + added
    nodes = topological_order(kept, [v.name for v in graph.inputs] + list(consts))
    nodes = live_nodes(nodes, set(graph.output_names))
    used = {n for node in nodes for n in node.inputs} | set(graph.output_names)
    consts = {n: v for n, v in consts.items() if n in used}
    return Graph(list(graph.inputs), list(graph.outputs), nodes, consts, dict(graph.value_types))


# Ops whose output has exactly the shape of their first input (whatever the other inputs;
# not the broadcasting binary ops, whose output may have a higher rank).
_SHAPE_KEEPING = ("Identity", "Cast", "Relu", "Tanh", "Sigmoid", "Dropout", "ReverseSequence")


def _rank(alg: CellAlgebra, name: str, depth: int = 0) -> int | None:
    """``name``'s rank where declared, or carried through Transpose and shape-keeping ops."""
    for v in alg.graph.inputs:
        if v.name == name:
            return None if v.type.shape is None else len(v.type.shape)
    t = alg.graph.value_types.get(name)
    if t is not None and t.shape is not None:
        return len(t.shape)
    node = alg.producer.get(name)
    if node is None or depth > MAX_IDENTITIES:
        return None
    if node.op == "Transpose" and "perm" in node.attrs:
        return len(node.attrs["perm"])
    if node.op in _SHAPE_KEEPING:
        return _rank(alg, node.inputs[0], depth + 1)
    return None


def _int_const(alg: CellAlgebra, name: str) -> int | None:
    value = alg.constant(name) if name else None
    if value is None or value.size != 1 or value.dtype.kind not in "iu":
        return None
    return int(value.reshape(-1)[0])


def _strip(alg: CellAlgebra, name: str, ops: tuple[str, ...]) -> str:
    """``name`` with the ``ops`` before it skipped (Casts only to int or float types)."""
    for _ in range(MAX_IDENTITIES):
        node = alg.producer.get(name)
        if node is None or node.op not in ops:
            break
        if node.op == "Cast" and int(node.attrs.get("to", 0)) not in (1, 6, 7, 11):
            break
        name = node.inputs[0]
    return name


def _same_shape(alg: CellAlgebra, name: str) -> set[str]:
    """``name`` and the tensors it is computed from by shape-keeping ops (Keras's
    ``go_backwards`` reads the length from the sequence before its ReverseSequence)."""
    out = {name}
    for _ in range(MAX_IDENTITIES):
        node = alg.producer.get(name)
        if node is None or node.op not in _SHAPE_KEEPING:
            break
        name = node.inputs[0]
        out.add(name)
    return out


def _length_of(alg: CellAlgebra, name: str, seq: str, axis: int) -> bool:
    """Whether scalar ``name`` (outer graph) is the length of ``seq`` on ``axis``: read from
    its Shape (Gather, or a one-element Slice then Squeeze / Reshape), through Casts, or a
    constant equal to its static length."""
    name = _strip(alg, name, ("Cast", "Identity", "Squeeze", "Reshape"))
    node = alg.producer.get(name)
    if node is not None and node.op in ("Gather", "Slice"):
        shape = alg.producer.get(_strip(alg, node.inputs[0], ("Cast", "Identity")))
        if shape is None or shape.op != "Shape" or shape.inputs[0] not in _same_shape(alg, seq):
            return False
        if int(shape.attrs.get("start", 0)) != 0 or "end" in shape.attrs:
            return False
        if node.op == "Gather":
            return _int_const(alg, node.inputs[1]) == axis and not node.attrs.get("axis", 0)
        ins = node.inputs + [""] * (5 - len(node.inputs))
        start, end = _int_const(alg, ins[1]), _int_const(alg, ins[2])
        ok_axes = not ins[3] or _int_const(alg, ins[3]) == 0
        ok_steps = not ins[4] or _int_const(alg, ins[4]) == 1
        return start == axis and end == axis + 1 and ok_axes and ok_steps
    value = _int_const(alg, name)
    for v in alg.graph.inputs:
        if v.name == seq and v.type.shape is not None and value is not None:
            return len(v.type.shape) == 3 and v.type.shape[axis] == value
    return False


def _loop_cell(alg: CellAlgebra, node: Node) -> _Cell | None:
    own = node.attrs.get(OWN_INPUTS)
    if not isinstance(own, int) or own < 3:
        return None
    n = own - 2
    body = node.attrs["body"]
    b = read_body(alg, node, 2, n)
    if b is None:
        return None
    names_in = [v.name for v in body.inputs]
    names_out = [v.name for v in body.outputs]
    # Counters: the iteration number, and carried ints starting at 0 that add 1 per step.
    counters = {names_in[0]}
    for k in range(n):
        if k not in (b.h_state, b.c_state) and _int_const(alg, node.inputs[2 + k]) == 0:
            if _is_next(b, names_out[1 + k], {names_in[2 + k]}):
                counters.add(names_in[2 + k])
    gather = b.producer.get(b.step.x)
    if gather is None or gather.op != "Gather" or gather.inputs[1] not in counters:
        return None
    axis = int(gather.attrs.get("axis", 0))
    seq = b.invariant.get(gather.inputs[0], "")
    if axis not in (0, 1) or not seq or alg.constant(seq) is not None or _rank(alg, seq) != 3:
        return None
    # The trip count is the length (a Loop without one is not proven to stop there).
    if not node.inputs[0] or not _length_of(alg, node.inputs[0], seq, axis):
        return None
    if not _first_step(alg, node.inputs[1], seq, axis):
        return None
    cond = b.source(names_out[0])
    if cond != names_in[1] and not _holds_before_last(alg, b, cond, counters, seq, axis):
        return None
    scans = [(0, False)] * (len(node.outputs) - n)
    return _outputs(alg, node, b, seq, axis, False, n, scans, 2)


def _first_step(alg: CellAlgebra, cond: str, seq: str, axis: int) -> bool:
    """Whether the Loop's initial condition is true (none, a constant true) or is
    ``0 < length`` (tf2onnx's; false only for an empty sequence, which the native node
    also runs as no steps)."""
    if not cond:
        return True
    value = alg.constant(cond)
    if value is not None:
        return value.size == 1 and bool(value.reshape(-1)[0])
    node = alg.producer.get(_strip(alg, cond, ("Identity", "Cast")))
    if node is not None and node.op == "And":
        return all(_first_step(alg, n, seq, axis) for n in node.inputs)
    if node is None or node.op != "Less":
        return False
    start = alg.constant(_strip(alg, node.inputs[0], ("Identity", "Cast")))
    if start is None or start.size != 1 or float(start.reshape(-1)[0]) > 0:
        return False
    return _length_of(alg, _strip(alg, node.inputs[1], ("Identity", "Cast")), seq, axis)


def _holds_before_last(
    alg: CellAlgebra, b: CellBody, cond: str, counters: set[str], seq: str, axis: int
) -> bool:
    """Whether the body's condition is true after every step but the last, where the trip
    count (the length T) ends the loop: a constant true, or an And of ``k < T`` / ``k + 1
    < T`` for counters ``k`` (k = t after step t <= T - 2), through Casts (tf2onnx compares
    in float32: exact for every length below 2**24 steps)."""
    value = b.alg.constant(cond)
    if value is not None:
        return value.size == 1 and bool(value.reshape(-1)[0])
    node = b.producer.get(_strip(b.alg, cond, ("Identity", "Cast")))
    if node is not None and node.op == "And":
        return all(_holds_before_last(alg, b, n, counters, seq, axis) for n in node.inputs)
    if node is None or node.op != "Less":
        return False
    left = _strip(b.alg, node.inputs[0], ("Identity", "Cast"))
    right = _strip(b.alg, node.inputs[1], ("Identity", "Cast"))
    if left not in counters and not _is_next(b, left, counters):
        return False
    bound = b.invariant.get(right)
    return bound is not None and _length_of(alg, bound, seq, axis)


def _is_next(b: CellBody, name: str, counters: set[str]) -> bool:
    """Whether ``name`` is ``k + 1`` for a counter ``k``."""
    node = b.producer.get(b.source(name))
    if node is None or node.op != "Add":
        return False
    a, c = node.inputs
    return (a in counters and _int_const(b.alg, c) == 1) or (
        c in counters and _int_const(b.alg, a) == 1
    )


def _scan_cell(alg: CellAlgebra, node: Node) -> _Cell | None:
    own = node.attrs.get(OWN_INPUTS)
    m = node.attrs.get("num_scan_inputs")
    if not isinstance(own, int) or m != 1 or own < 2:
        return None
    n = own - 1
    b = read_body(alg, node, 0, n)
    body = node.attrs["body"]
    if b is None or b.step.x != body.inputs[n].name:
        return None
    k = len(node.outputs) - n
    axes = np.asarray(node.attrs.get("scan_input_axes", [0]), np.int64).reshape(-1)
    dirs = np.asarray(node.attrs.get("scan_input_directions", [0]), np.int64).reshape(-1)
    out_axes = np.asarray(node.attrs.get("scan_output_axes", [0] * k), np.int64).reshape(-1)
    out_dirs = np.asarray(node.attrs.get("scan_output_directions", [0] * k), np.int64).reshape(-1)
    if len(axes) != 1 or int(axes[0]) not in (0, 1) or len(out_axes) != k or len(out_dirs) != k:
        return None
    seq = node.inputs[n]
    if _rank(alg, seq) != 3:
        return None
    reverse = bool(dirs[0])
    # A scan output is in the native output's time order when it is stacked in the order
    # the steps read the sequence (both directions equal).
    scans = [(int(a) % 3, bool(d) != reverse) for a, d in zip(out_axes, out_dirs)]
    return _outputs(alg, node, b, seq, int(axes[0]), reverse, n, scans, 0)


def _outputs(
    alg: CellAlgebra,
    node: Node,
    b: CellBody,
    seq: str,
    axis: int,
    reverse: bool,
    states: int,
    scan_layout: list[tuple[int, bool]],
    first_state: int,
) -> _Cell | None:
    """The _Cell, if every scan output is h and every other state is unused outside."""
    body = node.attrs["body"]
    out0 = 1 if node.op == "Loop" else 0
    outputs = node.outputs
    for k in range(states):
        name = outputs[k]
        if (
            k not in (b.h_state, b.c_state)
            and name
            and (alg.consumers.get(name) or name in alg.graph.output_names)
        ):
            return None  # another carried value (a counter) read outside: not dropped
    scans = []
    for k, (out_axis, flipped) in enumerate(scan_layout):
        name = outputs[states + k]
        src = b.source(body.outputs[out0 + states + k].name)
        if src != b.step.h_out or flipped:
            return None
        if name:
            scans.append((name, out_axis))
    h0 = node.inputs[first_state + b.h_state]
    c0 = node.inputs[first_state + b.c_state] if b.c_state >= 0 else ""
    if not h0 or (b.c_state >= 0 and not c0):
        return None
    h_out = outputs[b.h_state]
    c_out = outputs[b.c_state] if b.c_state >= 0 else ""
    return _Cell(node, b.step, b.attrs, seq, axis, reverse, h0, c0, h_out, c_out, scans)


# ---- the native node -------------------------------------------------------------------------


def _native(cell: _Cell, prefix: str, consts: dict[str, np.ndarray]) -> list[Node]:
    """The native node over ``cell.seq`` and the glue giving the loop's outputs their
    shapes: Y [T, 1, B, H] (layout 0) / [B, T, 1, H] (layout 1) squeezed and transposed to
    each scan output's stacking axis, Y_h / Y_c squeezed to [B, H]."""
    nodes: list[Node] = []
    count = [0]

    def name(what: str) -> str:
        count[0] += 1
        return f"{prefix}{what}_{count[0]}"

    def const(value: np.ndarray, what: str) -> str:
        key = name(what)
        consts[key] = value
        return key

    def add(op: str, inputs: list[str], out: str = "", **attrs: object) -> str:
        out = out or name(op.lower())
        nodes.append(Node(op, inputs, [out], dict(attrs), name=name(f"/{op}")))
        return out

    step = cell.step
    w, r, b = step.weights
    hidden = int(r.shape[2])
    layout = cell.axis  # 0: X [T, B, I]; 1: X [B, T, I]
    state_axis = 1 if layout else 0  # of initial_h / Y_h: [1, B, H] or [B, 1, H]
    axes = lambda *a: const(np.array(a, np.int64), "axes")  # noqa: E731
    ins = [cell.seq, const(w, "W"), const(r, "R"), const(b, "B"), ""]
    ins.append(add("Unsqueeze", [cell.h0, axes(state_axis)]))
    if step.cell == "lstm":
        ins.append(add("Unsqueeze", [cell.c0, axes(state_axis)]))
    attrs: dict[str, object] = {**cell.attrs, "hidden_size": hidden, "layout": layout}
    attrs["direction"] = "reverse" if cell.reverse else "forward"
    if step.cell == "gru":
        attrs["linear_before_reset"] = step.linear_before_reset
    outs = [name("Y"), name("Y_h")] + ([name("Y_c")] if step.cell == "lstm" else [])
    nodes.append(Node(step.cell.upper(), ins, outs, attrs, name=name("/cell")))
    if cell.h_out:
        add("Squeeze", [outs[1], axes(state_axis)], out=cell.h_out)
    if cell.c_out:
        add("Squeeze", [outs[2], axes(state_axis)], out=cell.c_out)
    if cell.scans:
        seq = add("Squeeze", [outs[0], axes(2 if layout else 1)])  # [T, B, H] or [B, T, H]
        for out, axis in cell.scans:
            if axis == layout:  # (time at the stacking axis, B and H after in order)
                add("Identity", [seq], out=out)
            else:
                add("Transpose", [seq], out=out, perm=_perm(layout, axis))
    return nodes


def _perm(src: int, dst: int) -> list[int]:
    """The Transpose perm moving axis ``src`` of a 3-D tensor to ``dst``, others in order."""
    rest = [a for a in range(3) if a != src]
    rest.insert(dst, src)
    return rest
