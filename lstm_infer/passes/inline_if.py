"""Replace an If whose condition is a constant by the branch it takes.

Silero-VAD's files branch on ``sr == 16000`` and on batch-size checks; once ``sr`` is fixed
(``load(..., fixed_inputs={"sr": 16000})``) constant folding makes the condition a constant,
and the If becomes the chosen branch's nodes inlined into the graph around it: no per-call
branch, and the branch's constants join the graph's (so its recurrent layer, its convolutions
and their weights are compiled once, like any others). The branch's own tensors are renamed
with a prefix unique to the If node (an outer graph may use the same names); its outputs
become the If's outputs through Identity nodes, and its inputs the outer tensors the If
lists for them.
"""

from __future__ import annotations

import numpy as np

from lstm_infer.graph import Graph, Node
from lstm_infer.ops.control import branch_graph


def _cond_value(value: np.ndarray) -> bool | None:
    if value.size != 1 or value.dtype.kind not in "biuf":
        return None  # left for run time, which names the error
    return bool(value.reshape(()))


def inline_constant_ifs(graph: Graph) -> bool:
    """Inline every If of ``graph`` whose condition is a constant, in place; True if any was."""
    consts = graph.initializers
    changed = False
    nodes: list[Node] = []
    for node in graph.nodes:
        cond = consts.get(node.inputs[0]) if node.op == "If" and node.inputs else None
        taken = None if cond is None else _cond_value(np.asarray(cond))
        if taken is None:
            nodes.append(node)
            continue
        changed = True
        branch = branch_graph(node, "then_branch" if taken else "else_branch")
        prefix = f"{node.name or node.outputs[0]}/{'then' if taken else 'else'}/"
        # The branch's inputs stand for the If's outer tensors (by position); everything
        # else it names is its own and gets the prefix.
        outer = dict(zip(branch.input_names, node.inputs[1:]))

        def rename(name: str, outer: dict = outer, prefix: str = prefix) -> str:
            return outer.get(name, prefix + name)

        for name, value in branch.initializers.items():
            consts[rename(name)] = value
        for inner in branch.nodes:
            nodes.append(
                Node(
                    inner.op,
                    [rename(n) if n else n for n in inner.inputs],
                    [rename(n) if n else n for n in inner.outputs],
                    dict(inner.attrs),
                    name=prefix + inner.name,
                )
            )
        for out, inner_out in zip(node.outputs, branch.output_names):
            if out:
                nodes.append(Node("Identity", [rename(inner_out)], [out], {}, name=f"{prefix}out"))
    graph.nodes = nodes
    return changed
