"""A model from a state_dict that holds one of CELLS.md's cells (read without torch).

The cell is found by its marker key under any prefix (``rnn.gate_norm_l0.weight`` inside a
training checkpoint's wrapper module); its own keys are those under that prefix. The model is a
one-node graph: input ``input`` (time, batch, I), output ``output`` (time, batch, H);
``batch_first=True`` puts batch first on both (the state_dict cannot say which the training
used, as with nn.LSTM).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lstm_infer.cells import CELLS, CellDef
from lstm_infer.errors import ModelFormatError
from lstm_infer.graph import Graph, Node, TensorType, ValueInfo


def find_cell(
    state: Mapping[str, np.ndarray], prefix: str | None = None
) -> tuple[CellDef, str] | None:
    """The cell kind and key prefix of the state_dict's cell, or None when it holds none.

    Raises ModelFormatError when it holds several cells and ``prefix`` does not pick one.
    """
    found = []
    for cell in CELLS.values():
        for key in state:
            if key.endswith(cell.marker) and (prefix is None or key == prefix + cell.marker):
                found.append((cell, key[: len(key) - len(cell.marker)]))
    if not found:
        return None
    if len(found) > 1:
        shown = ", ".join(f"{c.op} at {p or '<top>'!r}" for c, p in found)
        raise ModelFormatError(
            f"the state_dict holds several cells ({shown}); pass prefix='...' to pick one"
        )
    return found[0]


def cell_graph(
    state: Mapping[str, np.ndarray],
    *,
    prefix: str | None = None,
    batch_first: bool = False,
) -> Graph | None:
    """The one-node graph of the state_dict's cell, or None when it holds none."""
    hit = find_cell(state, prefix)
    if hit is None:
        return None
    cell, pre = hit
    own = {k[len(pre) :]: v for k, v in state.items() if k.startswith(pre)}
    where = f"{cell.op} at {pre!r}" if pre else cell.op
    try:
        attrs = cell.read(own)
        cell.check(attrs, where)
        build = getattr(cell, "graph", None)  # a kind whose model is more than X -> Y
        if build is not None:
            return build(attrs, state, pre, batch_first, where)
    except ModelFormatError as exc:
        msg = str(exc)
        raise ModelFormatError(msg if msg.startswith(where) else f"{where}: {msg}") from exc
    width = attrs["input_size"]
    seq_in = ("batch", "time", width) if batch_first else ("time", "batch", width)
    hidden = attrs["hidden_size"]
    seq_out = ("batch", "time", hidden) if batch_first else ("time", "batch", hidden)
    nodes: list[Node] = []
    x, y = "input", "output"
    if batch_first:
        nodes.append(Node("Transpose", ["input"], ["input_tm"], {"perm": [1, 0, 2]}, "to_time"))
        x, y = "input_tm", "output_tm"
    nodes.append(Node(cell.op, [x], [y], dict(attrs), "cell"))
    if batch_first:
        nodes.append(Node("Transpose", [y], ["output"], {"perm": [1, 0, 2]}, "to_batch"))
    t_axis = 1 if batch_first else 0
    graph = Graph(
        [ValueInfo("input", TensorType("float32", seq_in, t_axis))],
        [ValueInfo("output", TensorType("float32", seq_out, t_axis))],
        nodes,
    )
    graph.validate()
    return graph


def load_cell_options(options: dict[str, Any]) -> dict[str, Any]:
    """The loader options that apply to a cell (prefix, batch_first); the others refused."""
    allowed = {"prefix", "batch_first"}
    extra = sorted(set(options) - allowed)
    if extra:
        raise TypeError(f"options {extra} do not apply to the cells of CELLS.md")
    return {k: options[k] for k in allowed if k in options}
