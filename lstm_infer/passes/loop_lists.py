"""Turn a Loop that appends to a list, stacked after the loop, into a Loop scan output.

``torch.jit.script`` writes ``ys = []; for t in ...: ys.append(h); torch.stack(ys)`` as a
``SequenceEmpty`` carried by a ``Loop`` whose body ends in ``SequenceInsert(ys, h)``, and a
``ConcatFromSequence(axis=0, new_axis=1)`` after it. That is exactly a Loop scan output (the
body's per-iteration values stacked on axis 0), which the executor collects without a
sequence and which :mod:`lstm_infer.passes.loop_cells` can read: an ``nn.LSTMCell`` loop
collecting its outputs then becomes the native LSTM like one that returns only its states.

A carried value is rewritten when all of these hold (anything else is left as it was):

* its initial value is a ``SequenceEmpty`` of the outer graph;
* in the body, its only reader is one ``SequenceInsert`` without a position (an append), whose
  result is the body's next value of it and read by nothing else;
* outside, the node's final value of it is read only by ``ConcatFromSequence(axis=0,
  new_axis=1)`` nodes (and is no graph output).

One difference by design: a loop of no iterations stacks to an empty tensor (0, ...) where
the ConcatFromSequence of an empty sequence is an error (onnxruntime's too).
"""

from __future__ import annotations

from typing import Any

from lstm_infer.errors import LstmInferError
from lstm_infer.graph import Graph, Node, TensorType, ValueInfo
from lstm_infer.ops.control import OWN_INPUTS

PREFIX = "__lstm_infer_looplist"  # names of the tensors the pass adds


def loop_lists(graph: Graph) -> Graph:
    """``graph`` with each appended-then-stacked list of a Loop made a scan output (a new
    Graph; ``graph`` is not modified). The same graph when there is none."""
    fresh = _names(graph)
    while True:  # one list per Loop a round (its carried positions then shift): each round
        try:  # drops a carried value, so this ends
            rewritten = _round(graph, fresh)
        except (LstmInferError, TypeError, ValueError, KeyError, IndexError):
            rewritten = None  # attributes of a form the checks refuse later, naming them
        if rewritten is None:
            return graph
        graph = rewritten


def _names(graph: Graph) -> Any:
    """A generator of tensor names ``graph`` does not use."""
    used = {n for node in graph.nodes for n in (*node.inputs, *node.outputs)}
    used |= set(graph.input_names) | set(graph.initializers)
    count = 0
    while True:
        count += 1
        if f"{PREFIX}{count}" not in used:
            yield f"{PREFIX}{count}"


def _round(graph: Graph, fresh: Any) -> Graph | None:
    if not any(n.op == "Loop" for n in graph.nodes):
        return None
    producers = graph.producers()
    readers: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for name in node.inputs:
            if name:
                readers.setdefault(name, []).append(node)
    outputs = set(graph.output_names)
    replaced: dict[int, Node] = {}  # id(original node) -> its replacement
    for node in graph.nodes:
        if node.op != "Loop" or id(node) in replaced:
            continue
        for k in range(_carried(node)):
            stacks = _stacks(node, k, producers, readers, outputs)
            stacked = next(fresh) if stacks is not None else ""
            rewritten = _as_scan_output(node, k, stacked) if stacks is not None else None
            if rewritten is None:
                continue
            replaced[id(node)] = rewritten
            for stack in stacks:
                replaced[id(stack)] = Node("Identity", [stacked], list(stack.outputs), {},
                                           name=stack.name)  # fmt: skip
            break
    if not replaced:
        return None
    nodes = [replaced.get(id(n), n) for n in graph.nodes]
    return Graph(
        list(graph.inputs), list(graph.outputs), nodes, dict(graph.initializers),
        dict(graph.value_types),
    )  # fmt: skip


def _carried(node: Node) -> int:
    own = node.attrs.get(OWN_INPUTS)
    return own - 2 if isinstance(own, int) and own >= 2 else 0


def _stacks(
    node: Node, k: int, producers: dict, readers: dict, outputs: set[str]
) -> list[Node] | None:
    """The ConcatFromSequence nodes stacking carried value k of ``node``, when it is a list
    built by appending from empty and read by nothing else; else None."""
    start = producers.get(node.inputs[2 + k])
    if start is None or start.op != "SequenceEmpty":
        return None
    final = node.outputs[k]
    if not final or final in outputs or not readers.get(final):
        return None
    stacks = readers[final]
    for s in stacks:
        if s.op != "ConcatFromSequence" or s.inputs[0] != final:
            return None
        if int(s.attrs.get("axis", 0)) != 0 or int(s.attrs.get("new_axis", 0)) != 1:
            return None
    return stacks


def _as_scan_output(node: Node, k: int, stacked: str) -> Node | None:
    """``node`` with carried value k dropped and what its body appends to it a new last scan
    output, named ``stacked`` outside; None when the body does not only append to it."""
    body = node.attrs["body"]
    if not isinstance(body, Graph) or len(body.inputs) != len(node.inputs):
        return None
    s_in, s_out = body.inputs[2 + k].name, body.outputs[1 + k].name
    appends = [n for n in body.nodes if s_in in n.inputs]
    if len(appends) != 1:
        return None
    append = appends[0]
    if append.op != "SequenceInsert" or len(append.inputs) != 2 or append.inputs[0] != s_in:
        return None
    if append.outputs[0] != s_out or any(s_out in n.inputs for n in body.nodes):
        return None
    body_outputs = [v.name for v in body.outputs]
    if body_outputs.count(s_out) != 1 or s_in in body_outputs:
        return None
    value = append.inputs[1]
    if value == s_in:
        return None
    # The appended tensor becomes a scan output through an Identity of its own name (it may
    # also be a carried value's next one: a body's outputs are distinct tensors).
    scan = f"{stacked}_scan"
    if scan in {n for b in body.nodes for n in b.outputs} | set(body.input_names):
        return None
    t = body.outputs[1 + k].type
    nodes = [n for n in body.nodes if n is not append]
    nodes.append(Node("Identity", [value], [scan], {}, name=f"{PREFIX}/scan"))
    new_body = Graph(
        [v for j, v in enumerate(body.inputs) if j != 2 + k],
        [v for j, v in enumerate(body.outputs) if j != 1 + k]
        + [ValueInfo(scan, TensorType(t.dtype, t.shape))],
        nodes,
        dict(body.initializers),
        dict(body.value_types),
    )
    attrs: dict[str, Any] = {**node.attrs, "body": new_body, OWN_INPUTS: node.attrs[OWN_INPUTS] - 1}
    return Node(
        "Loop",
        [n for j, n in enumerate(node.inputs) if j != 2 + k],
        [n for j, n in enumerate(node.outputs) if j != k] + [stacked],
        attrs,
        name=node.name,
    )
