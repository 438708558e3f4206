"""Fold inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm before it.

``BN(y) = y * a + c`` per output channel (``a = scale / sqrt(var + eps)``, ``c = B - mean * a``)
is affine, and so is the op before it in its weights: scaling that op's weights per output
channel by ``a`` and replacing its bias ``b`` by ``b * a + c`` gives the same result with one
pass over the tensor fewer. Folded only when the statistics and the producer's weights are
constants and the producer's output feeds nothing but the BatchNormalization (a graph output
or a second reader needs the unnormalised value). ``a`` and ``c`` are computed in float64 and
the new weights rounded once to the weights' dtype.
"""

from __future__ import annotations

import numpy as np

from lstm_infer.graph import Graph, Node
from lstm_infer.ops.base import attr_float, attr_int
from lstm_infer.ops.norm import batchnorm_affine


def _readers(graph: Graph) -> dict[str, int]:
    count = graph.reader_counts()
    for name in graph.output_names:
        count[name] = count.get(name, 0) + 2  # never folded away
    return count


def _scaled_weights(prod: Node, w: np.ndarray, a: np.ndarray) -> np.ndarray | None:
    """``w`` with each output channel scaled by ``a`` (None when the layout does not fit)."""
    m = a.shape[0]
    if prod.op == "Conv":
        if w.ndim < 3 or w.shape[0] != m:
            return None
        return w * a.reshape(m, *([1] * (w.ndim - 1)))
    if prod.op == "ConvTranspose":
        group = attr_int(prod, "group", 1)
        if w.ndim < 3 or w.shape[1] * group != m or w.shape[0] % group:
            return None
        per_group = a.reshape(group, w.shape[1])  # out channel g * Mg + j
        cg = w.shape[0] // group
        scale = np.repeat(per_group, cg, axis=0)  # (C, Mg): input channel ci is in group ci // cg
        return w * scale.reshape(*scale.shape, *([1] * (w.ndim - 2)))
    # Gemm: y = alpha * A @ op(B) + beta * C, output channels are op(B)'s columns.
    if w.ndim != 2 or attr_int(prod, "transA", 0):
        return None
    if attr_int(prod, "transB", 0):
        return w * a[:, None] if w.shape[0] == m else None
    return w * a[None, :] if w.shape[1] == m else None


def fold_batchnorm(graph: Graph, keep: set[str] = frozenset()) -> Graph:
    """``graph`` with every foldable Conv/ConvTranspose/Gemm -> BatchNormalization pair fused
    (the graph is changed in place and returned); tensors in ``keep`` are never folded away."""
    consts = graph.initializers
    producer = graph.producers()
    readers = _readers(graph)
    removed: set[int] = set()
    for bn in graph.nodes:
        if bn.op != "BatchNormalization" or len([o for o in bn.outputs if o]) != 1:
            continue
        if not all(len(bn.inputs) > i and bn.inputs[i] in consts for i in (1, 2, 3, 4)):
            continue
        prod = producer.get(bn.inputs[0])
        if prod is None or prod.op not in ("Conv", "ConvTranspose", "Gemm"):
            continue
        if readers.get(bn.inputs[0], 0) != 1 or len(prod.outputs) != 1 or bn.inputs[0] in keep:
            continue
        w_name = prod.inputs[1]
        b_name = prod.inputs[2] if len(prod.inputs) > 2 else ""
        if w_name not in consts or (b_name and b_name not in consts):
            continue
        w = consts[w_name]
        if w.dtype.kind != "f":
            continue
        a, c = batchnorm_affine(bn, *(consts[bn.inputs[i]] for i in (1, 2, 3, 4)))
        scaled = _scaled_weights(prod, w.astype(np.float64), a)
        if scaled is None:
            continue
        old_b = consts[b_name].astype(np.float64) if b_name else np.zeros(1)
        if prod.op == "Gemm":
            # beta * C * a + c, with beta then 1 (C may broadcast: (M,), (1, M), (N, M), ()).
            new_b = attr_float(prod, "beta", 1.0) * old_b * a + c
            prod.attrs["beta"] = 1.0
        else:
            if b_name and old_b.shape != a.shape:
                continue
            new_b = old_b * a + c
        stem = f"__lstm_infer_bnfold_{bn.name or bn.outputs[0]}"
        consts[f"{stem}_w"] = scaled.astype(w.dtype)
        consts[f"{stem}_b"] = new_b.astype(w.dtype)
        prod.inputs = [prod.inputs[0], f"{stem}_w", f"{stem}_b"]
        prod.outputs = [bn.outputs[0]]
        removed.add(id(bn))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
    used = {n for node in graph.nodes for n in node.inputs} | set(graph.output_names)
    graph.initializers = {k: v for k, v in consts.items() if k in used}
    return graph
