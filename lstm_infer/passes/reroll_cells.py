"""Re-roll LSTM, GRU and layer-normalised LSTM cells an exporter unrolled over time into one
recurrent node.

A module that loops ``nn.LSTMCell`` / ``nn.GRUCell`` (or its own gate arithmetic) over T
timesteps exports as T copies of the step. This pass finds the steps by their equations
(:mod:`lstm_infer.passes.cell_steps`; the layer-normalised LSTM of CELLS.md, as
``lstm_infer.nn.LayerNormLSTM`` and torchaudio's RNN-T predictor write it, in
:mod:`lstm_infer.passes.norm_cells`), chains them (step t's hidden state, and an LSTM's
cell state, is what step t + 1 reads), and replaces a chain by one ONNX ``LSTM`` / ``GRU``
node, or the engine's own ``LayerNormLSTM`` node (one layer, forward), when:

* every step has the same weights;
* the steps' inputs are consecutive timesteps of one (3-D) sequence, taken by ``Gather``, or
  ``Slice`` / ``Split`` then ``Squeeze``, on one axis: t = 0..T-1 (a forward chain) or
  T-1..0 (a reverse one) (:mod:`lstm_infer.passes.step_inputs`; a sequence projected by a
  constant matrix before the loop is read through the projection);
* nothing outside the chain reads an intermediate of it other than the hidden states (any
  step's: read back from the output sequence) and the last cell state.

The node reads the whole sequence, so ``Unsqueeze`` + ``Concat`` of the hidden states in time
order becomes the node's output sequence and the last step's states its final states. Where the
sequence is a graph input that nothing else reads, its time axis is declared symbolic
(``time``): the graph then runs at any sequence length. Chains on the outputs of a re-rolled
chain (stacked layers) are re-rolled in the next round. Anything that does not match exactly
is left as it was (the unrolled nodes run as before). Once no chain is left, a step with no
predecessor nor successor among the steps, over any 2-D input (a per-chunk streaming model's
one step), becomes a node over a 1-step sequence (:mod:`lstm_infer.passes.one_step_cells`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from lstm_infer.errors import LstmInferError
from lstm_infer.graph import (
    Graph,
    Node,
    TensorType,
    ValueInfo,
    live_nodes,
    topological_order,
)
from lstm_infer.passes.cell_algebra import ZERO, CellAlgebra
from lstm_infer.passes.cell_steps import (
    CellStep,
    leaf_candidates,
    match_gru,
    match_lstm,
    onnx_weights,
    region_closed,
)
from lstm_infer.passes.depth_cells import (
    DG_LSTM,
    layer_weights,
    match_dg_lstm,
    stack_attrs,
    stack_chains,
)
from lstm_infer.passes.depth_cells import NATIVE_OP as DG_OP
from lstm_infer.passes.norm_cells import (
    LN_LSTM,
    NATIVE_OP,
    ln_lstm_attrs,
    ln_lstm_weights,
    match_ln_lstm,
    register_norm_widths,
)
from lstm_infer.passes.one_step_cells import one_step
from lstm_infer.passes.step_inputs import (
    norm_axis,
    seq_length,
    through_projection,
    time_slice,
)

MAX_ROUNDS = 8
TIME_DIM = "time"
PREFIX = "__lstm_infer_reroll"  # names of the nodes and constants the pass adds


@dataclass
class _Found:
    """What the rounds learn: the sequences made (3-D types, time at a known axis), which
    graph input each came from, and the inputs / outputs whose time axis may be symbolic."""

    types: dict[str, TensorType] = field(default_factory=dict)
    origin: dict[str, str | None] = field(default_factory=dict)
    inputs: list[tuple[str, int]] = field(default_factory=list)
    outputs: list[tuple[str, int]] = field(default_factory=list)
    sliced: bool = False
    # Each re-rolled chain's last hidden state as a timestep of its output sequence (a layer
    # above reads it as its last input).
    last_steps: dict[str, tuple[str, int, int]] = field(default_factory=dict)


@dataclass
class _Chain:
    steps: list[CellStep]
    seq: str
    axis: int
    times: list[int]  # each step's timestep
    length: int | None  # the sequence's length on ``axis`` where known
    region: set[int]  # ids of the nodes the chain's node replaces
    # A depth-gated stack (lstm_infer.passes.depth_cells): every layer's steps, bottom first
    # (``steps`` is the top one), and the native op's weights.
    stack: list[list[CellStep]] | None = None
    weights: dict[str, np.ndarray] | None = None
    # A single step over a 2-D input (lstm_infer.passes.one_step_cells): ``seq`` is that
    # input, read by the node as a 1-step sequence.
    one_step: bool = False


def reroll_cells(graph: Graph) -> Graph:
    """``graph`` with every recognised unrolled LSTM / GRU chain as one node (a new Graph;
    ``graph`` and its nodes are not modified). The same graph when there is none."""
    try:
        return _reroll(graph)
    except (LstmInferError, ArithmeticError, IndexError, KeyError, TypeError, ValueError):
        # An attribute or constant of a form the readers do not expect (the graph's nodes
        # check their own when compiled): the graph runs unrolled, as exported.
        return graph


def _reroll(graph: Graph) -> Graph:
    found = _Found()
    current = graph
    for round_ in range(MAX_ROUNDS):
        alg = CellAlgebra(current, found.types, time_slices=found.last_steps)
        chains = _find_chains(alg)
        if not chains:
            break
        # Chains over whole sequences first: their outputs' lengths are then known to the
        # next round's chains over them (a fixed slice would tie those to the traced T).
        whole = [c for c in chains if c.length == len(c.steps)]
        current = _rewrite(alg, whole or chains, round_, found)
    if current is graph or found.sliced:
        return current
    return _relax_time(current, found)


# ---- finding chains ------------------------------------------------------------------------


def _find_chains(alg: CellAlgebra) -> list[_Chain]:
    register_norm_widths(alg)
    steps: list[CellStep] = []
    for node in alg.graph.nodes:
        if node.op == "Tanh" and len(node.inputs) == 1:
            step = match_lstm(alg, node) or match_ln_lstm(alg, node) or match_dg_lstm(alg, node)
        elif node.op in ("Add", "Sub") and len(node.outputs) == 1:
            step = match_gru(alg, node)
        else:
            continue
        if step is not None:
            steps.append(step)
    lists = _link(alg, steps)
    # (copies: _as_chain decides a step's inputs on the step it is given)
    singles = [replace(chain[0]) for chain in lists if len(chain) == 1]
    chains = [_as_chain(alg, chain) for chain in lists if chain[0].cell != DG_LSTM]
    found = [c for c in chains if c is not None] + _stacks(alg, lists)
    # Steps on their own only once no chain is left (the chains are re-rolled first).
    return found or [c for c in (_one_step(alg, s) for s in singles) if c is not None]


def _one_step(alg: CellAlgebra, step: CellStep) -> _Chain | None:
    """A step on its own (no predecessor nor successor among the steps) as a 1-step node
    over its 2-D input, or None."""
    s = one_step(alg, step)
    region = None if s is None or s.x is None else region_closed(alg, [s])
    if s is None or s.x is None or region is None:
        return None
    return _Chain([s], s.x, 0, [0], 1, region, one_step=True)


def _link(alg: CellAlgebra, steps: list[CellStep]) -> list[list[CellStep]]:
    """The steps in lists, each step reading the state its predecessor made (h_prev set)."""
    by_h = {s.h_out: s for s in steps}
    if len(by_h) != len(steps):
        return []
    pred: dict[int, CellStep] = {}
    for s in steps:
        s.leaves = leaf_candidates(alg, s)
        if s.cell == "gru":
            before = by_h.get(s.h_prev or "")
        else:
            before = next(
                (by_h[n] for n in s.leaves if n in by_h and by_h[n].c_out == s.c_prev), None
            )
            if before is not None:
                s.h_prev = before.h_out
        if before is not None and before.cell == s.cell:
            pred[id(s)] = before
    succ: dict[int, list[CellStep]] = {}
    for s in steps:
        if id(s) in pred:
            succ.setdefault(id(pred[id(s)]), []).append(s)
    lists = []
    for head in steps:
        if id(head) in pred:
            continue
        chain = [head]
        while len(succ.get(id(chain[-1]), [])) == 1:
            chain.append(succ[id(chain[-1])][0])
        if len(succ.get(id(chain[-1]), [])) > 1:
            continue  # one state read by two steps: not a chain
        lists.append(chain)
    return lists


def _stacks(alg: CellAlgebra, lists: list[list[CellStep]]) -> list[_Chain]:
    """The depth-gated stacks among ``lists`` that can be one native node: forward, every
    layer's steps with the same weights, initial states all zero or all given, nothing
    outside reading an intermediate (but the top's h and each layer's last h and c)."""
    found = []
    for stack in stack_chains(lists):
        bottom = _as_chain(alg, stack[0], closed=False)
        if bottom is None or (len(bottom.steps) > 1 and bottom.times[0] > bottom.times[1]):
            continue
        weights: dict[str, np.ndarray] = {}
        for layer, steps in enumerate(stack):
            got = [layer_weights(alg, s, layer) for s in steps]
            if any(g is None for g in got) or any(
                any(not np.array_equal(g[k], got[0][k]) for k in got[0]) for g in got[1:]
            ):
                break
            weights.update(got[0])
        else:
            heads = [steps[0] for steps in stack]
            if any(len({_is_zero(alg, getattr(h, a)) for h in heads}) != 1
                   for a in ("h_prev", "c_prev")):  # fmt: skip
                continue  # some layers start at zero, some not: not one state input
            flat = [s for steps in stack for s in steps]
            exposed = {s.h_out for s in stack[-1]}
            exposed |= {o for steps in stack for o in (steps[-1].h_out, steps[-1].c_out)}
            keep = {s.x for s in stack[0]} | {h.h_prev for h in heads} | {h.c_prev for h in heads}
            region = region_closed(alg, flat, exposed, keep)
            if region is not None:
                found.append(_Chain(stack[-1], bottom.seq, bottom.axis, bottom.times,
                                    bottom.length, region, stack, weights))  # fmt: skip
    return found


def _is_zero(alg: CellAlgebra, name: str | None) -> bool:
    if not name or name == ZERO:
        return True
    value = alg.constant(name)
    return value is not None and not value.any()


def _as_chain(alg: CellAlgebra, steps: list[CellStep], closed: bool = True) -> _Chain | None:
    """The chain, its inputs and weights decided; None unless it can be one node (``closed``
    False: its region is not checked nor made, the bottom of a stack)."""
    slices: list[tuple[str, int, int]] = []
    for k, s in enumerate(steps):
        others = sorted(s.leaves - {s.h_prev} if s.h_prev else s.leaves)
        cands = [(n, time_slice(alg, n)) for n in others]
        cands = [(n, t) for n, t in cands if t is not None]
        if s.h_prev is None:  # the head of an LSTM chain: which leaf is the state?
            if len(s.leaves) != 2:
                return None
            if len(cands) == 2 and k + 1 < len(steps) and slices == []:
                nxt = [time_slice(alg, n) for n in steps[k + 1].leaves - {s.h_out}]
                nxt = [t for t in nxt if t is not None]
                cands = [c for c in cands if nxt and c[1][:2] == nxt[0][:2]]
            elif len(cands) == 2:
                c_src = time_slice(alg, s.c_prev or "")
                cands = [c for c in cands if c_src is None or c[1][0] != c_src[0]]
            if len(cands) != 1:
                return None
            s.h_prev = next(iter(s.leaves - {cands[0][0]}))
        if len(cands) != 1 or len(s.leaves) != 2:
            return None
        s.x = cands[0][0]
        slices.append(cands[0][1])
        if s.x in alg.bare_leaves:  # x_t entered as it is: a timestep of a projection
            found = through_projection(alg, s, slices[-1])
            if found is None:
                return None
            slices[-1] = found
        read = ln_lstm_weights if s.cell == LN_LSTM else onnx_weights
        s.weights = read(alg, s, s.x, s.h_prev)
        if s.weights is None:
            return None
    seq, axis = slices[0][:2]
    if any(t[:2] != (seq, axis) for t in slices):
        return None
    length = seq_length(alg, seq, axis)
    times = [t[2] + length if t[2] < 0 and length is not None else t[2] for t in slices]
    count = len(steps)
    if sorted(times) != list(range(count)) or times not in (sorted(times), sorted(times)[::-1]):
        return None
    if count > 1 and times[0] > times[1] and (length != count or steps[0].cell == LN_LSTM):
        return None  # a reverse chain must start at the last step (and be an ONNX op's)
    if length is not None and length < count:
        return None
    first = steps[0]
    for s in steps[1:]:
        if s.linear_before_reset != first.linear_before_reset:
            return None
        if any(not np.array_equal(a, b) for a, b in zip(s.weights, first.weights)):
            return None
    region = region_closed(alg, steps) if closed else set()
    if region is None:
        return None
    return _Chain(steps, seq, axis, times, length, region)


# ---- rewriting -----------------------------------------------------------------------------


class _Builder:
    """New nodes and constants of one rewrite, named uniquely."""

    def __init__(self, prefix: str, consts: dict[str, np.ndarray]) -> None:
        self.prefix, self.consts, self.nodes, self.count = prefix, consts, [], 0

    def name(self, what: str) -> str:
        self.count += 1
        return f"{self.prefix}{what}_{self.count}"

    def const(self, value: np.ndarray, what: str = "c") -> str:
        name = self.name(what)
        self.consts[name] = value
        return name

    def add(self, op: str, inputs: list[str], out: str | None = None, **attrs: object) -> str:
        out = out or self.name(op.lower())
        self.nodes.append(Node(op, inputs, [out], dict(attrs), name=self.name(f"/{op}")))
        return out

    def axes(self, *axes: int) -> str:
        return self.const(np.array(axes, np.int64), "axes")


def _rewrite(alg: CellAlgebra, chains: list[_Chain], round_: int, found: _Found) -> Graph:
    g = alg.graph
    consts = dict(g.initializers)
    removed: set[int] = set()
    added: list[Node] = []
    for k, chain in enumerate(chains):
        b = _Builder(f"{PREFIX}{round_}_{k}_", consts)
        removed |= _rewrite_chain(alg, chain, b, found)
        added += b.nodes
    kept = [n for n in g.nodes if id(n) not in removed] + added
    inputs = [v.name for v in g.inputs] + list(consts)
    nodes = live_nodes(topological_order(kept, inputs), set(g.output_names))
    used = {n for node in nodes for n in node.inputs} | set(g.output_names)
    consts = {n: v for n, v in consts.items() if n in used}
    types = {n: t for n, t in g.value_types.items() if n in used}
    return Graph(list(g.inputs), list(g.outputs), nodes, consts, types)


def _rewrite_chain(alg: CellAlgebra, chain: _Chain, b: _Builder, found: _Found) -> set[int]:
    """Add the chain's node (and its glue) to ``b``; the ids of the nodes it replaces."""
    steps, region = chain.steps, chain.region
    if chain.stack is not None:
        seq, seq_time = _depth_cell(alg, chain, b)
    elif steps[0].cell == LN_LSTM:
        seq, seq_time = _native_cell(alg, chain, b)
    else:
        seq, seq_time = _onnx_cell(alg, chain, b)
    if chain.length == len(steps) and chain.seq in alg.graph.input_names and not chain.one_step:
        found.inputs.append((chain.seq, chain.axis))
    reverse = len(steps) > 1 and chain.times[0] > chain.times[1]
    found.last_steps[steps[-1].h_out] = (seq, seq_time, 0 if reverse else -1)
    gone = set(region)
    is_input = chain.seq in alg.graph.input_names
    origin = found.origin.get(chain.seq, chain.seq if is_input else None)
    if chain.length != len(steps):
        found.sliced = True  # a chain over a fixed prefix: other lengths would be cut short
    found.origin[seq] = origin
    found.types[seq] = _seq_type(len(steps), seq_time)
    joined = _join(alg, chain, region)
    if joined is not None:
        concat, axis, unsqueezes = joined
        gone |= {id(concat)} | {id(u) for u in unsqueezes}
        out = concat.outputs[0]
        if axis == seq_time:
            b.add("Identity", [seq], out=out)
        else:
            b.add("Transpose", [seq], out=out, perm=_perm(seq_time, axis))
        found.origin[out] = origin
        found.types[out] = _seq_type(len(steps), axis)
        found.outputs.append((out, axis))
    for s, t in zip(steps[:-1], chain.times):
        outside = [n for n in alg.consumers.get(s.h_out, []) if id(n) not in gone]
        if outside or s.h_out in alg.graph.output_names:
            b.add("Gather", [seq, b.const(np.array(t, np.int64), "t")], out=s.h_out,
                  axis=seq_time)  # fmt: skip
    return gone


def _onnx_cell(alg: CellAlgebra, chain: _Chain, b: _Builder) -> tuple[str, int]:
    """An ONNX LSTM / GRU node over the chain's sequence; (its output sequence [T, B, H] or
    [B, T, H], which axis is time). The last step's states are made by it too."""
    steps, first, last = chain.steps, chain.steps[0], chain.steps[-1]
    w, r, bias = first.weights
    hidden = r.shape[2]
    layout = 1 if chain.axis == 1 else 0
    x = chain.seq
    if chain.one_step:  # x_t (B, I): a sequence of one step
        x = b.add("Unsqueeze", [x, b.axes(0)])
    if chain.axis == 2:
        x = b.add("Transpose", [x], perm=[2, 0, 1])
    if chain.length != len(steps):
        t_axis = 1 if layout else 0
        x = b.add("Slice", [x, b.axes(0), b.axes(len(steps)), b.axes(t_axis)])
    state_axis = 1 if layout else 0  # of initial_h / Y_h: [D, B, H] or [B, D, H]
    ins = [x, b.const(w, "W"), b.const(r, "R"), b.const(bias, "B"), ""]
    ins.append(_initial(alg, b, first.h_prev, state_axis))
    if first.cell == "lstm":
        ins.append(_initial(alg, b, first.c_prev, state_axis))
    while ins[-1] == "":
        ins.pop()
    reverse = len(steps) > 1 and chain.times[0] > chain.times[1]
    attrs: dict[str, object] = {"hidden_size": int(hidden), "layout": layout}
    attrs["direction"] = "reverse" if reverse else "forward"
    if first.cell == "gru":
        attrs["linear_before_reset"] = first.linear_before_reset
    outs = [b.name("Y"), b.name("Y_h")] + ([b.name("Y_c")] if first.cell == "lstm" else [])
    b.nodes.append(Node(first.cell.upper(), ins, outs, attrs, name=b.name("/cell")))
    seq = b.add("Squeeze", [outs[0], b.axes(2 if layout else 1)])  # [T, B, H] or [B, T, H]
    b.add("Squeeze", [outs[1], b.axes(state_axis)], out=last.h_out)
    if first.cell == "lstm" and last.c_out:
        b.add("Squeeze", [outs[2], b.axes(state_axis)], out=last.c_out)
    return seq, 1 if layout else 0


def _native_cell(alg: CellAlgebra, chain: _Chain, b: _Builder) -> tuple[str, int]:
    """The engine's own cell op (one layer) over the chain's sequence, made time-major (the
    op's layout); (its output sequence [T, B, H], 0). Forward chains only."""
    steps, first, last = chain.steps, chain.steps[0], chain.steps[-1]
    if len(steps) > 1 and chain.times[0] > chain.times[1]:
        raise ValueError("a reverse chain of a native cell")  # _as_chain keeps these out
    x = _time_major(chain, b)
    ins = [x, _initial(alg, b, first.h_prev, 0), _initial(alg, b, first.c_prev, 0)]
    outs = _cell_node(b, NATIVE_OP, ins, lambda where: ln_lstm_attrs(first.weights, where))
    b.add("Squeeze", [outs[1], b.axes(0)], out=last.h_out)  # [1, B, H]: one layer
    if last.c_out:
        b.add("Squeeze", [outs[2], b.axes(0)], out=last.c_out)
    return outs[0], 0


def _cell_node(b: _Builder, op: str, ins: list[str], attrs_of: Callable[[str], dict]) -> list[str]:
    """Append one engine cell node ``op`` reading ``ins`` (trailing unused inputs dropped),
    its attributes from ``attrs_of(where)`` (``where`` names the node for errors); returns
    its outputs Y, Y_h, Y_c."""
    while ins and ins[-1] == "":
        ins.pop()
    name = b.name("/cell")
    outs = [b.name("Y"), b.name("Y_h"), b.name("Y_c")]
    b.nodes.append(Node(op, ins, outs, attrs_of(f"node {name!r} ({op})"), name=name))
    return outs


def _time_major(chain: _Chain, b: _Builder) -> str:
    """The chain's sequence (T, B, I), as the engine's cell ops read it."""
    x = chain.seq
    if chain.axis:
        x = b.add("Transpose", [x], perm=[1, 0, 2] if chain.axis == 1 else [2, 0, 1])
    if chain.length != len(chain.steps):
        x = b.add("Slice", [x, b.axes(0), b.axes(len(chain.steps)), b.axes(0)])
    return x


def _depth_cell(alg: CellAlgebra, chain: _Chain, b: _Builder) -> tuple[str, int]:
    """The engine's DepthGatedLSTM op over a whole stack; (its top sequence [T, B, H], 0).
    Each layer's last h and c are read from the op's final states (L, B, H)."""
    assert chain.stack is not None and chain.weights is not None
    ins = [_time_major(chain, b)]
    heads = [steps[0] for steps in chain.stack]
    for attr in ("h_prev", "c_prev"):
        names = [getattr(h, attr) for h in heads]
        if all(_is_zero(alg, n) for n in names):
            ins.append("")
        else:
            ins.append(b.add("Concat", [_initial(alg, b, n, 0) for n in names], axis=0))
    weights = chain.weights
    outs = _cell_node(b, DG_OP, ins, lambda where: stack_attrs(weights, where))
    for layer, steps in enumerate(chain.stack):
        index = b.const(np.array(layer, np.int64), "layer")
        b.add("Gather", [outs[1], index], out=steps[-1].h_out, axis=0)
        if steps[-1].c_out:
            b.add("Gather", [outs[2], index], out=steps[-1].c_out, axis=0)
    return outs[0], 0


def _perm(src: int, dst: int) -> list[int]:
    """The Transpose perm moving axis ``src`` of a 3-D tensor to ``dst``, others in order."""
    rest = [a for a in range(3) if a != src]
    rest.insert(dst, src)
    return rest


def _initial(alg: CellAlgebra, b: _Builder, name: str | None, axis: int) -> str:
    """The operator's initial state input for a step's [B, H] state (zeros: omitted)."""
    if not name or name == ZERO:
        return ""
    value = alg.constant(name)
    if value is not None and not value.any():
        return ""
    if value is not None and value.ndim == 2:
        return b.const(np.expand_dims(value.astype(np.float32), axis), "state")
    return b.add("Unsqueeze", [name, b.axes(axis)])


def _join(alg: CellAlgebra, chain: _Chain, region: set[int]) -> tuple[Node, int, list] | None:
    """(Concat, axis, its Unsqueezes read by it alone) if the hidden states are stacked in
    time order."""
    by_time = {s.h_out: t for s, t in zip(chain.steps, chain.times)}
    count = len(chain.steps)
    for reader in alg.consumers.get(chain.steps[0].h_out, []):
        if reader.op != "Unsqueeze" or id(reader) in region or len(reader.inputs) != 2:
            continue
        axes = alg.constant(reader.inputs[1])
        users = alg.consumers.get(reader.outputs[0], [])
        if axes is None or axes.size != 1 or len(users) != 1 or users[0].op != "Concat":
            continue
        concat, axis = users[0], norm_axis(int(axes.reshape(-1)[0]))
        if norm_axis(int(concat.attrs.get("axis", 0))) != axis or len(concat.inputs) != count:
            continue
        unsqueezes = [alg.producer.get(n) for n in concat.inputs]
        ok = all(
            u is not None
            and u.op == "Unsqueeze"
            and by_time.get(u.inputs[0]) == t
            and np.array_equal(alg.constant(u.inputs[1]), axes)
            for t, u in enumerate(unsqueezes)
        )
        if ok:  # an Unsqueeze read elsewhere too (an exporter shares one) stays
            return concat, axis, [u for u in unsqueezes if alg.single_use(u.outputs[0])]
    return None


def _seq_type(length: int, axis: int) -> TensorType:
    shape: list[int | None] = [None, None, None]
    shape[axis] = length
    return TensorType("float32", tuple(shape), axis)


def _relax_time(graph: Graph, found: _Found) -> Graph:
    """Declare the time axis symbolic on sequence inputs that only re-rolled nodes read, and
    on the stacked outputs of the chains over them. Not when a hidden state of a fixed
    timestep is still read (a Gather the rewrite added): at another length it would be a
    different step."""
    fixed = [n for n in graph.nodes if n.op == "Gather" and n.name.startswith(PREFIX)]
    if any(n.inputs[0] in found.types for n in fixed):  # (not a layer of final states)
        return graph
    readers: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for n in node.inputs:
            readers.setdefault(n, []).append(node)
    free = {
        name: axis
        for name, axis in found.inputs
        if all(n.name.startswith(PREFIX) for n in readers.get(name, []))
    }
    outs = {name: axis for name, axis in found.outputs if found.origin.get(name) in free}
    inputs = [_symbolic(v, free.get(v.name)) for v in graph.inputs]
    outputs = [_symbolic(v, outs.get(v.name)) for v in graph.outputs]
    return Graph(inputs, outputs, graph.nodes, graph.initializers, graph.value_types)


def _symbolic(v: ValueInfo, axis: int | None) -> ValueInfo:
    if axis is None or v.type.shape is None or len(v.type.shape) != 3:
        return v
    shape = list(v.type.shape)
    shape[axis] = TIME_DIM
    return ValueInfo(v.name, TensorType(v.type.dtype, tuple(shape), axis))
