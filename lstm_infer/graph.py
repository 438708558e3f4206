"""The model graph: a DAG of typed ops over named tensors.

Every importer produces one, passes rewrite it, and ``lstm_infer.compile`` turns it into a
program; nothing downstream knows where a model came from. Op kinds and their attributes are
those of the op registry (``lstm_infer.ops``), whose semantics are the ONNX operators' at their
newest opset (importers convert older forms once).

Tensors carry a dtype and a shape whose entries are ints (static), strings (symbolic dims
such as ``"batch"`` or ``"time"``) or None (unknown); ``time_axis`` marks the stream's time
axis where an importer or pass knows it (the streaming compiler's annotation). A value may
also be a sequence of tensors (ONNX ``seq(tensor(D))``, :mod:`lstm_infer.ops.sequence`):
its type is then the tensors' dtype and, when all share one, their shape, marked
``sequence=True``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lstm_infer.errors import ModelFormatError
from lstm_infer.ops import get_op
from lstm_infer.ops.sequence import check_sequence_use
from lstm_infer.tensor_type import DTYPES, Dim, TensorType

__all__ = ["DTYPES", "MAX_NODES", "Dim", "Graph", "Node", "TensorType", "ValueInfo"]

# Nodes a graph may hold: far above any recurrent model, low enough to bound load time.
MAX_NODES = 100_000


@dataclass(frozen=True)
class ValueInfo:
    """A named graph input or output."""

    name: str
    type: TensorType


@dataclass
class Node:
    """One op application. ``inputs`` may hold "" for an omitted optional input."""

    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    @property
    def label(self) -> str:
        """How errors name this node: its name and op kind."""
        return f"node {self.name or '<unnamed>'!r} ({self.op})"


@dataclass
class Graph:
    """Inputs, outputs, nodes in execution order, and constant tensors (initializers)."""

    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    nodes: list[Node]
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    # Types known for intermediate tensors (declared by the source or inferred).
    value_types: dict[str, TensorType] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.outputs]

    def with_constants(self, values: dict[str, np.ndarray]) -> Graph:
        """A copy whose inputs named in ``values`` are constants instead (nodes shared)."""
        if not values:
            return self
        return Graph(
            [v for v in self.inputs if v.name not in values],
            list(self.outputs),
            list(self.nodes),
            {**self.initializers, **values},
            dict(self.value_types),
        )

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs if out}

    def reader_counts(self) -> dict[str, int]:
        """How many node inputs read each tensor (a fusion pass's single-reader test)."""
        count: dict[str, int] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    count[name] = count.get(name, 0) + 1
        return count

    def validate(self) -> None:
        """Names defined once, before use, in order; every output produced; ops registered;
        sequences read only by the ops that take them (and tensors by the others).

        Raises ModelFormatError naming the first node or tensor at fault.
        """
        if len(self.nodes) > MAX_NODES:
            raise ModelFormatError(f"graph has {len(self.nodes)} nodes; at most {MAX_NODES}")
        defined: set[str] = set()
        for v in self.inputs:
            if v.name in defined or not v.name:
                raise ModelFormatError(f"graph input {v.name!r} is empty or given twice")
            defined.add(v.name)
        for name in self.initializers:
            if name in defined:
                raise ModelFormatError(f"tensor {name!r} is both a graph input and a constant")
            defined.add(name)
        for node in self.nodes:
            op = get_op(node.op, node)
            op.check_arity(node)
            for name in node.inputs:
                if name and name not in defined:
                    raise ModelFormatError(
                        f"{node.label}: input {name!r} is not defined before it (a cycle, or "
                        "a tensor no node produces)"
                    )
            for name in node.outputs:
                if name and name in defined:
                    raise ModelFormatError(f"{node.label}: output {name!r} is defined twice")
                if name:
                    defined.add(name)
        for v in self.outputs:
            if v.name not in defined:
                raise ModelFormatError(f"graph output {v.name!r} is produced by no node")
        check_sequence_use(self)


def topological_order(nodes: Iterable[Node], available: Iterable[str]) -> list[Node]:
    """Nodes sorted so each comes after the producers of its inputs (stable otherwise).

    Raises ModelFormatError naming a node on a cycle or reading an undefined tensor.
    """
    pending = list(nodes)
    ready = set(available)
    ordered: list[Node] = []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            if all(not n or n in ready for n in node.inputs):
                ordered.append(node)
                ready.update(o for o in node.outputs if o)
                progressed = True
            else:
                rest.append(node)
        if not progressed:
            node = rest[0]
            missing = [n for n in node.inputs if n and n not in ready]
            raise ModelFormatError(
                f"{node.label}: inputs {missing} are never produced before it (a cycle, or a "
                "tensor no node produces)"
            )
        pending = rest
    return ordered


def live_nodes(nodes: list[Node], needed: Iterable[str]) -> list[Node]:
    """The nodes of a topologically ordered list that some tensor of ``needed`` depends on,
    in their order (what a rewrite keeps once it has replaced others)."""
    want = set(needed)
    keep = []
    for node in reversed(nodes):
        if any(o in want for o in node.outputs if o):
            keep.append(node)
            want.update(n for n in node.inputs if n)
    return keep[::-1]
