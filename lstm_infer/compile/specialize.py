"""Programs specialised to the shapes of one call's inputs.

Exported graphs compute much of their glue from tensor shapes: ``Shape -> Gather -> Concat ->
Reshape`` chains, batch-size checks feeding ``If`` (silero-VAD has four of those per call).
For a given set of input shapes those values are the same on every call, so the program
specialised to them folds the chains, inlines the Ifs and runs only the arithmetic.

Specialising runs the general program once and records the shape of every tensor a
``Shape`` / ``Size`` node reads; those nodes become constants (their own op run on a
zero-strided stand-in of the recorded shape, so ``start`` / ``end`` mean what they mean), and
the graph is compiled again (folding, If inlining, the fusions), reusing the general
program's prepared weights for every node that is unchanged. Inlined branches may hold
Shape nodes of their own: a few rounds repeat this.

The recorded shapes of intermediate tensors are assumptions (a graph may shape a tensor from
an input's values): each becomes a guard the specialised program checks right after it
computes that tensor, and a failed guard makes the call fall back to the general program.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

from lstm_infer.compile.program import GraphProgram, ShapeChanged
from lstm_infer.graph import Graph
from lstm_infer.ops import RunContext
from lstm_infer.ops.sequence import is_sequence

# Rounds of record -> fold -> compile (each may inline Ifs that expose more Shape nodes).
MAX_ROUNDS = 4
SHAPE_OPS = ("Shape", "Size")
# Programs specialised to input shapes kept per program (least recently used dropped first).
CACHE_SIZE = 8


class ShapeSpecializer:
    """Runs ``program``, specialised to each new set of input shapes on first sight (cached);
    the general program where specialising gives nothing or a guard fails. Thread-safe."""

    def __init__(self, program: GraphProgram) -> None:
        self.program = program
        self.enabled = True
        self._cache: OrderedDict[tuple, GraphProgram | None] = OrderedDict()
        self._lock = threading.Lock()

    def specialized(self) -> list[GraphProgram]:
        """The specialised programs cached now (most recently used last)."""
        with self._lock:
            return [p for p in self._cache.values() if p is not None]

    def program_for(self, feeds: Mapping[str, np.ndarray]) -> GraphProgram:
        """The program for the shapes of ``feeds`` (specialised when enabled and possible)."""
        return self._program_for(feeds, 1) if self.enabled else self.program

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str], threads: int
    ) -> dict[str, np.ndarray]:
        program = self._program_for(feeds, threads) if self.enabled else self.program
        if program is not self.program:
            try:
                return program.run(feeds, outputs, threads)
            except ShapeChanged:  # a shape that depends on values, not only on input shapes
                self._remember(feeds, None)
        return self.program.run(feeds, outputs, threads)

    @staticmethod
    def _key(feeds: Mapping[str, np.ndarray]) -> tuple:
        # (a Loop body is fed its carried sequences: keyed by their dtype alone)
        return tuple(
            (n, "seq", a.dtype.str) if is_sequence(a) else (n, np.shape(a), np.asarray(a).dtype.str)
            for n, a in feeds.items()
        )

    def _remember(self, feeds: Mapping[str, np.ndarray], program: GraphProgram | None) -> None:
        with self._lock:
            self._cache[self._key(feeds)] = program
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)

    def _program_for(self, feeds: Mapping[str, np.ndarray], threads: int) -> GraphProgram:
        key = self._key(feeds)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key] or self.program
        try:
            program = specialize(self.program, feeds, self.program.graph.output_names, threads)
        except ShapeChanged:
            program = None
        self._remember(feeds, program)
        return program or self.program


def specialize(
    program: GraphProgram, feeds: Mapping[str, np.ndarray], outputs: Sequence[str], threads: int
) -> GraphProgram | None:
    """``program`` specialised to the shapes of ``feeds``; None when it reads no shapes."""
    current = program
    guards: dict[str, tuple[int, ...]] = dict(program.guards)
    for _ in range(MAX_ROUNDS):
        shape_steps = [s for s in current.steps if s.node.op in SHAPE_OPS and s.node.inputs]
        if not shape_steps:
            break
        wanted = {s.node.inputs[0] for s in shape_steps}
        shapes: dict[str, tuple[int, ...]] = {}
        current.run(feeds, outputs, threads, record=(wanted, shapes))
        consts: dict[str, np.ndarray] = {}
        for step in shape_steps:
            source = step.node.inputs[0]
            shape = shapes[source]
            stand_in = np.lib.stride_tricks.as_strided(
                np.zeros(1, np.float32), shape, (0,) * len(shape), writeable=False
            )
            value = step.op.run(RunContext(), step.node, [stand_in], None)[0]
            consts[step.node.outputs[0]] = value
            if source not in feeds and source not in current.constants:
                guards[source] = shape
        dropped = {id(s.node) for s in shape_steps}
        g = current.graph
        graph = Graph(
            list(g.inputs),
            list(g.outputs),
            [n for n in g.nodes if id(n) not in dropped],
            {**g.initializers, **consts},
            dict(g.value_types),
        )
        current = GraphProgram(graph, guards=guards, reuse=program)
    return None if current is program else current
