"""Control flow: If.

``If(cond)`` runs one of two subgraphs (``then_branch`` / ``else_branch``, graphs of their own
ops, each compiled once at load) and returns its outputs. A branch may read any tensor of the
graphs around it: the importer lists those outer tensors after ``cond`` as the node's inputs,
and both branch graphs declare one input per outer tensor, by position (``inputs[1 + i]``
feeds the branches' ``inputs[i]``, whatever either side calls it). So the dataflow stays
explicit, renaming the outer graph never reaches into a branch, and a branch compiles like
any graph, the outer constants it reads becoming its own. A
condition known at load (a constant, or computed from inputs fixed with ``fixed_inputs=``) is
resolved there instead: the chosen branch is inlined (``lstm_infer.passes.inline_if``) and
the other never compiled.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer.errors import InputError, ModelFormatError
from lstm_infer.ops.base import OpDef, RunContext, allowed_attrs, op

BRANCHES = ("then_branch", "else_branch")


def branch_graph(node: Any, key: str) -> Any:
    from lstm_infer.graph import Graph  # graph imports the registry; ops never import graph

    g = node.attrs.get(key)
    if not isinstance(g, Graph):
        raise ModelFormatError(f"{node.label}: attribute {key!r} must be a graph")
    return g


def _check_if(node: Any) -> None:
    allowed_attrs(required=BRANCHES)(node)
    for key in BRANCHES:
        g = branch_graph(node, key)
        if len(g.outputs) != len(node.outputs):
            raise ModelFormatError(
                f"{node.label}: {key} has {len(g.outputs)} outputs, the node {len(node.outputs)}"
            )
        if len(g.inputs) != len(node.inputs) - 1:
            raise ModelFormatError(
                f"{node.label}: {key} declares {len(g.inputs)} outer tensors, the node lists "
                f"{len(node.inputs) - 1}"
            )
        g.validate()


def _if_prepare(node: Any, consts: dict[int, np.ndarray]) -> tuple[Any, Any]:
    from lstm_infer.compile.program import GraphProgram  # the compiler runs the ops
    from lstm_infer.compile.specialize import ShapeSpecializer

    runners = []
    for key in BRANCHES:
        g = branch_graph(node, key)
        fixed = {g.inputs[i - 1].name: v for i, v in consts.items() if i > 0}
        # A branch's batch-size checks fold per input shapes like the outer graph's.
        runners.append(ShapeSpecializer(GraphProgram(g.with_constants(fixed))))
    return runners[0], runners[1]


def _if_run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    cond = ins[0]
    if cond.size != 1 or cond.dtype.kind not in "biuf":
        raise InputError(f"{node.label}: cond must hold one boolean, got {cond.dtype} {cond.shape}")
    if state is None:  # (only while folding constants, where prepare has not run)
        state = _if_prepare(node, dict(enumerate(ins)))
    taken = bool(cond.reshape(()))
    runner = state[0] if taken else state[1]
    declared = branch_graph(node, BRANCHES[0 if taken else 1]).input_names
    given = dict(zip(declared, ins[1:]))
    names = runner.program.graph.output_names
    feeds = {n: given[n] for n in runner.program.graph.input_names}
    result = runner.run(feeds, names, ctx.threads)
    return [result[n] for n in names]


OPS: dict[str, OpDef] = {
    "If": op("If", _if_run, inputs=(1, -1), outputs=(1, -1), check=_check_if, prepare=_if_prepare),
}
