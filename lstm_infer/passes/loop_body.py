"""Reading a Loop or Scan body as one recurrent cell step (lstm_infer.passes.loop_cells).

The body is read with the outer tensors it takes as constants, and the values it carries
through unchanged (tf2onnx carries the weights so) fixed in the same way. A step is then either

* written out as equations: an LSTM or GRU step read by
  :func:`~lstm_infer.passes.cell_steps.match_lstm` / :func:`~lstm_infer.passes.cell_steps.match_gru`
  (any gate order, any spelling of the affine maps), or a plain RNN step ``h_t = f(A)``
  (:func:`match_rnn`, f one of RNN_ACTIVATIONS); tf2onnx's Slices over two axes and torch's
  whole-axis Slices are first rewritten into the one-axis form the affine reader follows; or
* one native ``LSTM`` / ``GRU`` / ``RNN`` node over a one-step sequence (what torch.jit.script
  of a loop over ``nn.LSTMCell`` exports): ``Unsqueeze(x_t)`` in, ``Unsqueeze`` of the carried
  states as its initial states, ``Squeeze`` of its final states carried out.

Either way the step reads exactly two tensors, the carried hidden state and one other (x_t),
and the carried state's next value is the step's ``h_t`` (an LSTM's cell state likewise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lstm_infer.graph import Graph, Node
from lstm_infer.ops.control import OWN_INPUTS
from lstm_infer.passes.cell_algebra import Affine, CellAlgebra
from lstm_infer.passes.cell_steps import (
    CellStep,
    leaf_candidates,
    match_gru,
    match_lstm,
    onnx_weights,
    resolve,
)

PREFIX = "__lstm_infer_loopbody"  # names of the constants the slice rewrite adds
# Activations an RNN body may apply, each exactly the ONNX RNN operator's of that name.
RNN_ACTIVATIONS = ("Tanh", "Relu", "Sigmoid")
MAX_IDENTITIES = 16  # a body output reached through at most this many Identity nodes
# Attributes of a one-step node the whole-sequence node keeps (layout, direction checked).
STEP_ATTRS = ("activations", "activation_alpha", "activation_beta", "clip", "hidden_size",
              "input_forget", "linear_before_reset")  # fmt: skip


def match_rnn(alg: CellAlgebra, node: Node) -> CellStep | None:
    """The plain RNN step ``h_t = f(A)`` whose activation is ``node`` (f one of
    RNN_ACTIVATIONS, A an affine map of the step's leaves), or None."""
    if node.op not in RNN_ACTIVATIONS or len(node.inputs) != 1 or len(node.outputs) != 1:
        return None
    nodes: set[int] = {id(node)}
    a = alg.linear(node.inputs[0], nodes)
    if a is None or a.width < 1:
        return None
    return CellStep("rnn", node.outputs[0], {"h": a}, nodes)


def _rnn_weights(
    alg: CellAlgebra, step: CellStep, x: str, h: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The RNN operator's W [1, H, I], R [1, H, H], B [1, 2H], or None when the map reads
    anything but ``x`` and ``h``."""
    a: Affine | None = step.gates["h"]
    hidden = a.width
    a = resolve(alg, a, h, hidden)
    if a is None or set(a.terms) != {x, h} or a.terms[h].shape != (hidden, hidden):
        return None
    w = a.terms[x].T[None].astype(np.float32)
    r = a.terms[h].T[None].astype(np.float32)
    b = np.concatenate([a.bias, np.zeros(hidden)])[None].astype(np.float32)
    return w, r, b


def source(body: Graph, producer: dict[str, Node], name: str) -> str:
    """``name`` with the Identity nodes before it skipped."""
    for _ in range(MAX_IDENTITIES):
        node = producer.get(name)
        if node is None or node.op != "Identity":
            return name
        name = node.inputs[0]
    return name


def _steps(alg: CellAlgebra) -> list[tuple[CellStep, str]]:
    """Every cell step the body holds, with its RNN activation ("" for LSTM / GRU)."""
    found = []
    for node in alg.graph.nodes:
        step = None
        activation = ""
        if node.op == "Tanh" and len(node.inputs) == 1:
            step = match_lstm(alg, node)
        if step is None and node.op in ("Add", "Sub") and len(node.outputs) == 1:
            step = match_gru(alg, node)
        if step is None and node.op in RNN_ACTIVATIONS:
            step = match_rnn(alg, node)
            activation = node.op
        if step is not None:
            found.append((step, activation))
    return found


@dataclass
class CellBody:
    """A body graph with its constant outer and loop-invariant tensors fixed in, and the
    step it runs."""

    graph: Graph
    alg: CellAlgebra
    producer: dict[str, Node]
    invariant: dict[str, str]  # body input -> the outer tensor it always holds
    step: CellStep
    attrs: dict[str, object]  # the native node's attributes beyond hidden_size / layout /
    # direction / linear_before_reset (an RNN's activation; a one-step node's own)
    h_state: int  # which carried value / state is h (index among them)
    c_state: int  # and c (-1: none)

    def source(self, name: str) -> str:
        """``name`` with the Identity nodes before it skipped."""
        return source(self.graph, self.producer, name)


def read_body(alg: CellAlgebra, node: Node, first_state: int, states: int) -> CellBody | None:
    """The body of ``node`` read as one cell step over its states (body inputs
    ``first_state`` .. ``first_state + states - 1``; a Loop's body outputs its condition
    first). A state the body passes through unchanged (tf2onnx carries the weights so) is
    loop-invariant like an outer tensor."""
    body = node.attrs.get("body")
    own = node.attrs.get(OWN_INPUTS)
    if not isinstance(body, Graph) or not isinstance(own, int):
        return None
    out_pos = 1 if node.op == "Loop" else 0
    plain = body.producers()
    invariant = {body.inputs[j].name: node.inputs[j] for j in range(own, len(node.inputs))}
    for k in range(states):
        name = body.inputs[first_state + k].name
        if source(body, plain, body.outputs[out_pos + k].name) == name:
            invariant[name] = node.inputs[first_state + k]
    fixed = {}
    for inner, outer in invariant.items():
        value = alg.constant(outer) if outer else None
        if value is not None:
            fixed[inner] = value
    if any(v.dtype.kind == "f" and v.dtype != np.float32 for v in fixed.values()):
        return None  # (the native node computes in float32: a float64 body would lose bits)
    g = _single_axis_slices(body.with_constants(fixed))
    balg = CellAlgebra(g)
    producer = g.producers()
    state_in = [body.inputs[first_state + k].name for k in range(states)]
    state_out = [source(g, producer, body.outputs[out_pos + k].name) for k in range(states)]
    matches = [(s, act) for s, act in _steps(balg) if s.h_out in state_out]
    if not matches:
        return _one_step_node(balg, g, producer, invariant, state_in, state_out)
    if len(matches) != 1:
        return None
    step, activation = matches[0]
    h_state = state_out.index(step.h_out)
    c_state = -1
    if step.cell == "lstm":
        if step.c_out not in state_out:
            return None
        c_state = state_out.index(step.c_out)
        if state_in[c_state] != step.c_prev or c_state == h_state:
            return None
    step.h_prev = state_in[h_state]
    step.leaves = leaf_candidates(balg, step)
    if step.h_prev not in step.leaves or len(step.leaves) != 2:
        return None
    (x,) = step.leaves - {step.h_prev}
    step.x = x
    if step.cell == "rnn":
        step.weights = _rnn_weights(balg, step, x, step.h_prev)
    else:
        step.weights = onnx_weights(balg, step, x, step.h_prev)
    if step.weights is None:
        return None
    attrs: dict[str, object] = {"activations": [activation]} if activation else {}
    return CellBody(g, balg, producer, invariant, step, attrs, h_state, c_state)


FULL = (1 << 31) - 1  # a Slice end at or past this takes the whole axis


def _single_axis_slices(graph: Graph) -> Graph:
    """``graph`` with each constant Slice that takes all but one of its axes whole written as
    a Slice over that one axis (tf2onnx writes ``x[:, a:b]`` as starts [0, a], ends
    [2**31 - 1, b], axes [0, 1]), and one that takes every axis whole (torch's ``x[:, a:b]``
    is such a Slice on axis 0, then one on axis 1) as an Identity: the forms the affine
    reader follows."""
    consts = dict(graph.initializers)
    nodes = []
    alg = CellAlgebra(graph)
    changed = False
    for node in graph.nodes:
        cut = _cut_axis(alg, node) if node.op == "Slice" and len(node.inputs) >= 4 else None
        if cut is None:
            nodes.append(node)
            continue
        changed = True
        if cut == ():
            nodes.append(Node("Identity", [node.inputs[0]], list(node.outputs), {}, node.name))
            continue
        names = []
        for what, value in zip(("starts", "ends", "axes"), cut):
            names.append(f"{PREFIX}_{node.outputs[0]}_{what}")
            consts[names[-1]] = np.array([value], np.int64)
        nodes.append(Node("Slice", [node.inputs[0], *names], list(node.outputs), {}, node.name))
    if not changed:
        return graph
    return Graph(graph.inputs, graph.outputs, nodes, consts, graph.value_types)


def _cut_axis(alg: CellAlgebra, node: Node) -> tuple[int, ...] | None:
    """(start, end, axis) of the one axis a constant Slice cuts when it takes every other
    whole, () when it takes every axis whole; None otherwise (or when already one axis)."""
    vals = [alg.constant(n) if n else None for n in node.inputs[1:5]]
    starts, ends, axes = vals[:3]
    steps = vals[3] if len(vals) > 3 else None
    if starts is None or ends is None or axes is None or starts.dtype.kind not in "iu":
        return None
    starts, ends, axes = (v.reshape(-1) for v in (starts, ends, axes))
    if not starts.size == ends.size == axes.size or len(set(axes.tolist())) != axes.size:
        return None
    if steps is not None and (steps.size != starts.size or np.any(steps != 1)):
        return None
    cut = [k for k in range(starts.size) if not (starts[k] == 0 and ends[k] >= FULL)]
    if not cut:
        return ()
    if len(cut) != 1 or starts.size == 1:
        return None
    k = cut[0]
    return int(starts[k]), int(ends[k]), int(axes[k])


def _one_step_node(
    alg: CellAlgebra,
    g: Graph,
    producer: dict[str, Node],
    invariant: dict[str, str],
    state_in: list[str],
    state_out: list[str],
) -> CellBody | None:
    """The body as one forward, layout-0 LSTM / GRU / RNN node over ``Unsqueeze(x_t, 0)``
    (constant weights, no sequence_lens), its initial states ``Unsqueeze`` of carried states
    and ``Squeeze`` of its final states their next values; None otherwise."""
    nodes = [n for n in g.nodes if n.op in ("LSTM", "GRU", "RNN")]
    if len(nodes) != 1:
        return None
    (node,) = nodes
    if node.attrs.get("direction", "forward") not in ("forward", b"forward"):
        return None
    if int(node.attrs.get("layout", 0)) != 0 or set(node.attrs) - {*STEP_ATTRS, "direction",
                                                                   "layout"}:  # fmt: skip
        return None
    lstm = node.op == "LSTM"
    ins = node.inputs + [""] * (8 - len(node.inputs))
    if ins[4] or (lstm and ins[7]):  # sequence_lens, peepholes
        return None
    w, r = alg.constant(ins[1]), alg.constant(ins[2])
    bias = alg.constant(ins[3]) if ins[3] else None
    if w is None or r is None or (ins[3] and bias is None) or w.ndim != 3 or r.ndim != 3:
        return None
    if w.shape[0] != 1 or w.dtype != np.float32 or r.dtype != np.float32:
        return None
    if bias is None:
        bias = np.zeros((1, 2 * r.shape[1]), np.float32)
    x = _unsqueezed(alg, producer, ins[0])
    h_prev = _unsqueezed(alg, producer, ins[5])
    c_prev = _unsqueezed(alg, producer, ins[6]) if lstm else None
    h_out = _squeezed(alg, node.outputs, 1, state_out)
    c_out = _squeezed(alg, node.outputs, 2, state_out) if lstm else None
    if x is None or h_prev not in state_in or h_out is None or h_prev == x:
        return None
    h_state = state_out.index(h_out)
    if state_in[h_state] != h_prev:
        return None
    c_state = -1
    if lstm:
        if c_prev not in state_in or c_out is None:
            return None
        c_state = state_out.index(c_out)
        if state_in[c_state] != c_prev or c_state == h_state:
            return None
    step = CellStep(node.op.lower(), h_out, {}, {id(node)}, h_prev=h_prev, c_out=c_out,
                    c_prev=c_prev, x=x)  # fmt: skip
    step.linear_before_reset = int(node.attrs.get("linear_before_reset", 0))
    step.weights = (w, r, bias.astype(np.float32))
    attrs = {k: v for k, v in node.attrs.items() if k in STEP_ATTRS and k != "hidden_size"}
    return CellBody(g, alg, producer, invariant, step, attrs, h_state, c_state)


def _unsqueezed(alg: CellAlgebra, producer: dict[str, Node], name: str) -> str | None:
    """t if ``name`` is ``Unsqueeze(t, axes=[0])``."""
    node = producer.get(name) if name else None
    if node is None or node.op != "Unsqueeze" or len(node.inputs) != 2:
        return None
    axes = alg.constant(node.inputs[1])
    if axes is None or axes.size != 1 or int(axes.reshape(-1)[0]) != 0:
        return None
    return node.inputs[0]


def _squeezed(alg: CellAlgebra, outputs: list[str], k: int, state_out: list[str]) -> str | None:
    """The carried value that is ``Squeeze(outputs[k], axes=[0])``, if one is."""
    if len(outputs) <= k or not outputs[k]:
        return None
    for name in state_out:
        node = alg.producer.get(name)
        if node is not None and node.op == "Squeeze" and node.inputs[0] == outputs[k]:
            axes = alg.constant(node.inputs[1]) if len(node.inputs) == 2 else None
            if axes is not None and axes.size == 1 and int(axes.reshape(-1)[0]) == 0:
                return name
    return None
