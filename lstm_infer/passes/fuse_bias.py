"""Fold a bias Add into the MatMul before it: the dense product starts from the bias.

``Add(MatMul(x, W), c)`` with a constant float32 2-D ``W`` and a constant float32 vector
``c`` of W's columns (a Linear layer as torch.onnx and tf2onnx export it) would read and write
the product's output once more, with numpy's broadcasting on top (~0.1 ms on the zoo's
heads against a 0.13 ms product); fused, the engine's dense layer takes ``c`` as its bias.
Only when the MatMul's output feeds nothing but the Add. The fused MatMul takes ``c`` as a
third input and carries ``lstm_infer_bias = 1`` (``lstm_infer.ops.dense``).
"""

from __future__ import annotations

import numpy as np

from lstm_infer.graph import Graph
from lstm_infer.ops.dense import BIAS_ATTR


def fuse_bias(graph: Graph, keep: set[str] = frozenset()) -> Graph:
    """``graph`` with each single-reader MatMul -> bias Add pair fused (in place; returned);
    tensors in ``keep`` are never fused away."""
    readers = graph.reader_counts()
    outputs = set(graph.output_names) | set(keep)
    consts = graph.initializers
    producer = graph.producers()
    removed: set[int] = set()
    for add in graph.nodes:
        if add.op != "Add" or len(add.inputs) != 2 or add.attrs:
            continue
        for side in (0, 1):
            mm = producer.get(add.inputs[side])
            bias = consts.get(add.inputs[1 - side])
            if mm is None or mm.op != "MatMul" or len(mm.inputs) != 2 or mm.attrs:
                continue
            w = consts.get(mm.inputs[1])
            if (
                w is None
                or bias is None
                or w.ndim != 2
                or w.dtype != np.float32
                or bias.dtype != np.float32
                or bias.shape != (w.shape[1],)
                or readers.get(add.inputs[side], 0) != 1
                or add.inputs[side] in outputs
            ):
                continue
            mm.inputs = [*mm.inputs, add.inputs[1 - side]]
            mm.attrs[BIAS_ATTR] = 1
            mm.outputs = list(add.outputs)
            removed.add(id(add))
            break
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
    return graph
