"""Fold a zero Pad into the Conv that reads it: the convolution pads its input itself.

Exporters write causal and "same" padding as a separate ``Pad`` before the convolution
(``F.pad(x, (k - 1, 0))`` in PyTorch, Keras ``padding="causal"``). Folded, the padded copy is
never made, and a time-axis stream sees one causal convolution (left padding, none on the
right) instead of a Pad that shifts frames along time, which alone could not stream. Only
when the Pad is constant-mode with value 0, pads only spatial dims, by non-negative amounts
known at compile time, and its output feeds nothing but that Conv's input (whose own
``auto_pad`` is NOTSET).
"""

from __future__ import annotations

import numpy as np

from lstm_infer.graph import Graph
from lstm_infer.ops.base import attr_str


def _zero_value(graph: Graph, node) -> bool:  # noqa: ANN001
    name = node.inputs[2] if len(node.inputs) > 2 else ""
    if not name:
        return True
    value = graph.initializers.get(name)
    return value is not None and value.size == 1 and float(value.reshape(-1)[0]) == 0.0


def _spatial_pads(graph: Graph, pad, rank: int) -> list[int] | None:  # noqa: ANN001
    """(begins..., ends...) over the spatial dims, or None when the Pad is not foldable."""
    pads = graph.initializers.get(pad.inputs[1])
    axes_name = pad.inputs[3] if len(pad.inputs) > 3 else ""
    if (
        pads is None
        or pads.dtype.kind not in "iu"
        or (axes_name and axes_name not in graph.initializers)
    ):
        return None
    axes = (
        [int(a) % rank for a in graph.initializers[axes_name].reshape(-1)]
        if axes_name
        else list(range(rank))
    )
    values = [int(v) for v in pads.reshape(-1)]
    if len(values) != 2 * len(axes) or len(set(axes)) != len(axes) or min(values, default=0) < 0:
        return None
    begin, end = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        begin[a], end[a] = values[i], values[len(axes) + i]
    if begin[0] or begin[1] or end[0] or end[1]:
        return None  # pads the batch or channel dim
    return begin[2:] + end[2:]


def fold_pad(graph: Graph, ranks: dict[str, int], keep: set[str] = frozenset()) -> Graph:
    """``graph`` with each foldable Pad -> Conv pair folded (in place; returned). ``ranks``:
    the rank of each Conv weight by its name (a Conv's input rank); tensors in ``keep`` are
    never folded away."""
    readers = graph.reader_counts()
    producer = graph.producers()
    outputs = set(graph.output_names) | set(keep)
    removed: set[int] = set()
    for conv in graph.nodes:
        if conv.op != "Conv" or attr_str(conv, "auto_pad", "NOTSET") != "NOTSET":
            continue
        pad = producer.get(conv.inputs[0])
        if pad is None or pad.op != "Pad" or attr_str(pad, "mode", "constant") != "constant":
            continue
        if readers.get(conv.inputs[0], 0) != 1 or conv.inputs[0] in outputs:
            continue
        rank = ranks.get(conv.inputs[1])
        if rank is None or not _zero_value(graph, pad):
            continue
        extra = _spatial_pads(graph, pad, rank)
        if extra is None:
            continue
        n = rank - 2
        own = list(conv.attrs.get("pads") or [0] * (2 * n))
        conv.attrs["pads"] = [int(a) + int(b) for a, b in zip(own, extra)]
        conv.inputs = [pad.inputs[0], *conv.inputs[1:]]
        removed.add(id(pad))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
    return graph


def weight_ranks(graph: Graph) -> dict[str, int]:
    """The rank of every constant (a Conv weight's rank is its input's)."""
    return {name: np.ndim(v) for name, v in graph.initializers.items()}
