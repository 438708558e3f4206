"""Fuse a Relu into the Conv before it: the convolution clamps its outputs as it stores them.

A Relu after a Conv (the usual conv -> batch norm -> ReLU block, once the batch norm is folded)
would read and write the whole feature map once more; fused, the direct kernel applies it to
its accumulators and the other Conv paths clamp in place. Only when the Conv's output feeds
nothing but the Relu. The fused Conv carries the internal attribute
``lstm_infer_activation = "Relu"`` (kept by the native format).
"""

from __future__ import annotations

from lstm_infer.graph import Graph
from lstm_infer.ops.conv import ACTIVATION_ATTR

FUSABLE = ("Relu",)


def fuse_activation(graph: Graph, keep: set[str] = frozenset()) -> Graph:
    """``graph`` with each single-reader Conv -> Relu pair fused (in place; returned); tensors
    in ``keep`` are never fused away."""
    readers = graph.reader_counts()
    outputs = set(graph.output_names)
    producer = graph.producers()
    removed: set[int] = set()
    for act in graph.nodes:
        if act.op not in FUSABLE or act.attrs or len(act.inputs) != 1:
            continue
        conv = producer.get(act.inputs[0])
        if conv is None or conv.op != "Conv" or ACTIVATION_ATTR in conv.attrs:
            continue
        if readers.get(act.inputs[0], 0) != 1 or act.inputs[0] in outputs | keep:
            continue
        conv.attrs[ACTIVATION_ATTR] = act.op
        conv.outputs = list(act.outputs)
        removed.add(id(act))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
    return graph
