"""A model graph compiled for whole-sequence runs.

At compile time: the graph is validated, every node whose inputs are all constants is run
once and replaced by its result (bounded: results over ``FOLD_MAX_BYTES`` stay nodes), and
each remaining node's op prepares what it can from its constant inputs (packed dense weights,
compiled recurrent layers). ``run`` then executes the nodes in order, each one whole tensors
through numpy, BLAS or the engine's kernels, and drops every intermediate after its last use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_infer.errors import InputError, LstmInferError, ModelFormatError
from lstm_infer.graph import Graph, Node
from lstm_infer.ops import OpDef, RunContext, get_op, run_on_constants
from lstm_infer.ops.sequence import is_sequence
from lstm_infer.passes.fold_batchnorm import fold_batchnorm
from lstm_infer.passes.fold_pad import fold_pad, weight_ranks
from lstm_infer.passes.fuse_activation import fuse_activation
from lstm_infer.passes.fuse_bias import fuse_bias
from lstm_infer.passes.inline_if import inline_constant_ifs
from lstm_infer.passes.loop_cells import loop_cells
from lstm_infer.passes.loop_lists import loop_lists
from lstm_infer.passes.reroll_cells import reroll_cells
from lstm_infer.runtime.threads import blas_threads

# The largest tensor constant folding may create (shapes checked before allocating; past it
# the model is refused: no real model computes a constant that large).
FOLD_MAX_BYTES = 64 << 20
MAX_INLINE_ROUNDS = 32


@dataclass
class _Step:
    node: Node
    op: OpDef
    state: Any
    free_after: list[str]  # tensors whose last reader is this node
    guards: list[tuple[str, tuple[int, ...]]]  # outputs whose shape a specialisation assumed


class ShapeChanged(LstmInferError):
    """A specialised program met a tensor of another shape than it was specialised to (the
    caller runs the general program instead)."""


def fold_constants(graph: Graph) -> Graph:
    """A copy of ``graph`` with every foldable node of constant inputs replaced by its value."""
    consts = dict(graph.initializers)
    kept: list[Node] = []
    for node in graph.nodes:
        op = get_op(node.op, node)
        ins = [n for n in node.inputs if n]
        if op.foldable and all(n in consts for n in ins) and node.outputs:
            try:
                # Shapes computed from constants are refused past the fold limit before they
                # are allocated: a constant subgraph is never materialised whatever its size.
                values = [consts[n] if n else None for n in node.inputs]
                outs = run_on_constants(node, values, FOLD_MAX_BYTES // 4)
            except LstmInferError as exc:
                raise ModelFormatError(
                    f"constant subgraph refused (at most {FOLD_MAX_BYTES >> 20} MB a tensor): {exc}"
                ) from exc
            if not any(is_sequence(v) for v in outs):  # (a sequence is no constant: kept)
                for name, value in zip(node.outputs, outs):
                    if name:
                        consts[name] = np.asarray(value)
                continue
        # A copy: the passes after folding edit nodes in place, and the source graph's nodes
        # are shared with other programs (the general one, If branches, specialisations).
        kept.append(
            Node(node.op, list(node.inputs), list(node.outputs), dict(node.attrs), node.name)
        )
    used = {n for node in kept for n in node.inputs} | set(graph.output_names)
    return Graph(
        graph.inputs,
        graph.outputs,
        kept,
        {k: v for k, v in consts.items() if k in used},
        dict(graph.value_types),
    )


def _read_only(value: np.ndarray) -> np.ndarray:
    """value if already read-only, else a read-only view of it (the array itself untouched)."""
    if not isinstance(value, np.ndarray) or not value.flags.writeable:
        return value
    view = value.view()
    view.flags.writeable = False
    return view


def _consts_of(node: Node, consts: Mapping[str, np.ndarray]) -> dict[int, np.ndarray]:
    return {i: consts[n] for i, n in enumerate(node.inputs) if n and n in consts}


def _dead_nodes_removed(graph: Graph, keep: set[str] = frozenset()) -> list[Node]:
    """Nodes some graph output (or a tensor in ``keep``) depends on, in order."""
    needed = set(graph.output_names) | set(keep)
    keep = []
    for node in reversed(graph.nodes):
        if any(o in needed for o in node.outputs if o):
            keep.append(node)
            needed.update(n for n in node.inputs if n)
    return keep[::-1]


class GraphProgram:
    """The compiled whole-sequence program of a graph (immutable; thread-safe to run).

    ``guards`` (tensor name -> shape) are the shapes a specialised program assumes
    (``lstm_infer.compile.specialize``): ``run`` raises ShapeChanged when one differs.
    ``reuse``: a program whose prepared node states (packed weights, compiled layers) may be
    taken over for nodes that are the same objects with the same constant inputs.
    """

    def __init__(
        self,
        graph: Graph,
        guards: dict[str, tuple[int, ...]] | None = None,
        reuse: GraphProgram | None = None,
    ) -> None:
        graph.validate()
        if reuse is None:  # (a specialisation's graph is a compiled one: re-rolled already)
            # Before folding: an unrolled first step reads its zero state through a product
            # that folding would turn into a constant. A Loop's trip count, read from its
            # sequence's Shape, is what proves it runs over the whole sequence. A list the
            # loop appends to and then stacks is a scan output first (loop_cells reads those).
            graph = reroll_cells(loop_cells(loop_lists(graph)))
        folded = fold_constants(graph)
        # A condition folded to a constant inlines its branch, whose nodes may fold further
        # (and hold more Ifs): bounded by the nesting depth the importer allows.
        inlined = False
        for _ in range(MAX_INLINE_ROUNDS):
            if not inline_constant_ifs(folded):
                break
            inlined = True
            folded = fold_constants(folded)
        if inlined:  # a branch's unrolled cell (silero's op18_ifless) is in the graph now
            folded = fold_constants(reroll_cells(folded))
        keep = set(guards or {})  # a guarded tensor must stay what its guard checks
        folded = fold_pad(folded, weight_ranks(folded), keep)
        folded = fuse_bias(fuse_activation(fold_batchnorm(folded, keep), keep), keep)
        guards = dict(guards or {})
        folded.nodes = _dead_nodes_removed(folded, set(guards))
        # The program's constants are read-only (int_values may cache what it read from
        # them): views of any writeable array, so the caller's own arrays (a Graph built by
        # hand, fixed_inputs) stay as writeable as they were.
        folded.initializers = {n: _read_only(v) for n, v in folded.initializers.items()}
        self.graph = folded
        self.constants = folded.initializers
        last_use: dict[str, int] = {}
        for i, node in enumerate(folded.nodes):
            for name in node.inputs:
                if name:
                    last_use[name] = i
        keep = set(folded.output_names) | set(self.constants)
        frees: list[list[str]] = [[] for _ in folded.nodes]
        for name, i in last_use.items():
            if name not in keep:
                frees[i].append(name)
        produced = {o for node in folded.nodes for o in node.outputs if o}
        self.guards = {k: v for k, v in guards.items() if k in produced}
        self._prepared: dict[tuple, tuple[dict, Any]] = {}
        self.steps = []
        for node, free in zip(folded.nodes, frees):
            op = get_op(node.op, node)
            consts = _consts_of(node, self.constants)
            key = (node.op, node.name, tuple(node.inputs), tuple(node.outputs), frozenset(consts))
            old = reuse._prepared.get(key) if reuse is not None else None
            if (
                old is not None
                and old[0].keys() == node.attrs.keys()
                and all(old[0][k] is v for k, v in node.attrs.items())
            ):
                state = old[1]  # the same node (same attribute objects, same constant inputs)
            else:
                state = op.prepare(node, consts) if op.prepare else None
            self._prepared[key] = (node.attrs, state)
            checks = [(o, self.guards[o]) for o in node.outputs if o in self.guards]
            self.steps.append(_Step(node, op, state, free, checks))

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        threads: int = 1,
        record: tuple[set[str], dict[str, tuple[int, ...]]] | None = None,
    ) -> dict[str, np.ndarray]:
        """Execute with ``feeds`` (already checked against the graph's inputs).

        ``record=(names, shapes)`` fills ``shapes`` with the shape of each tensor in
        ``names`` as it is computed (specialisation). Raises ShapeChanged when a guard fails.
        """
        env: dict[str, np.ndarray] = dict(self.constants)
        env.update(feeds)
        if record is not None:
            names, shapes = record
            shapes.update({n: np.shape(env[n]) for n in names if n in env})
        ctx = RunContext(threads=threads)
        with blas_threads(threads):
            self._run_steps(ctx, env, record)
        return {name: env[name] for name in outputs}

    def _run_steps(
        self,
        ctx: RunContext,
        env: dict[str, np.ndarray],
        record: tuple[set[str], dict[str, tuple[int, ...]]] | None = None,
    ) -> None:
        for step in self.steps:
            node = step.node
            ins = [env[n] if n else None for n in node.inputs]
            try:
                outs = step.op.run(ctx, node, ins, step.state)
            except LstmInferError:  # already names the node; ValueError subclasses among them
                raise
            except (ValueError, TypeError, IndexError, MemoryError) as exc:
                raise InputError(f"{node.label}: {type(exc).__name__}: {exc}") from None
            for name, value in zip(node.outputs, outs):
                if name:
                    env[name] = value
            for name, shape in step.guards:
                if np.shape(env[name]) != shape:
                    raise ShapeChanged(f"{node.label}: {name!r} is {np.shape(env[name])}")
            if record is not None:
                names, shapes = record
                shapes.update({n: np.shape(env[n]) for n in node.outputs if n in names})
            for name in step.free_after:
                env.pop(name, None)
