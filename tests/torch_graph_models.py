"""Tiny PyTorch recurrent models exported with ``torch.onnx.export``, for the graph tests.

``GraphCase`` names one configuration of the matrix (cell, layers, directions, layout,
embedding, dense head, state inputs/outputs, exporter); ``build_net`` makes the module with
seeded weights, ``export`` writes it with either exporter and ``example_inputs`` draws inputs.
``pairwise_cases`` picks a subset of the full matrix in which every pair of option values
appears at least once. Everything here imports torch lazily so collection never needs it.
"""

from __future__ import annotations

import io
import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
HEAD_ACTIVATIONS = ("relu", "tanh", "sigmoid", "softmax", "log_softmax")
VOCAB, INPUT, HIDDEN, OUT = 11, 4, 5, 3
FULL_MATRIX = {
    "cell": CELLS,
    "layers": (1, 2, 3),
    "bidirectional": (False, True),
    "batch_first": (False, True),
    "embedding": (False, True),
    "head": (False, True),
    "state": (False, True),
    "dynamo": (False, True),
}


@dataclass(frozen=True)
class GraphCase:
    """One configuration of an exported recurrent model."""

    cell: str = "lstm"
    layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    embedding: bool = False
    head: bool = False
    state: bool = False
    dynamo: bool = False
    seed: int = 0

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def head_activation(self) -> str:
        return HEAD_ACTIVATIONS[self.seed % len(HEAD_ACTIVATIONS)]

    @property
    def input_names(self) -> list[str]:
        names = ["tokens" if self.embedding else "x"]
        if self.state:
            names += ["h0", "c0"] if self.cell == "lstm" else ["h0"]
        return names

    @property
    def output_names(self) -> list[str]:
        names = ["y"]
        if self.state:
            names += ["hn", "cn"] if self.cell == "lstm" else ["hn"]
        return names

    def id(self) -> str:
        parts = [
            self.cell,
            f"L{self.layers}",
            "bi" if self.bidirectional else "uni",
            "bf" if self.batch_first else "tf",
        ]
        parts += [name for name in ("embedding", "head", "state") if getattr(self, name)]
        parts.append("dynamo" if self.dynamo else "torchscript")
        return "-".join(parts)


def build_net(case: GraphCase) -> Any:
    """The torch module of ``case`` (eval mode, weights drawn from ``case.seed``)."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(VOCAB, INPUT) if case.embedding else None
            kwargs: dict[str, Any] = {
                "num_layers": case.layers,
                "bidirectional": case.bidirectional,
                "batch_first": case.batch_first,
            }
            if case.cell.startswith("rnn"):
                kwargs["nonlinearity"] = case.cell[4:]
                self.rnn = torch.nn.RNN(INPUT, HIDDEN, **kwargs)
            else:
                self.rnn = getattr(torch.nn, case.cell.upper())(INPUT, HIDDEN, **kwargs)
            self.head = torch.nn.Linear(case.directions * HIDDEN, OUT) if case.head else None

        def forward(self, x: Any, h0: Any = None, c0: Any = None) -> Any:
            if self.embedding is not None:
                x = self.embedding(x)
            if case.state:
                state = (h0, c0) if case.cell == "lstm" else h0
                y, final = self.rnn(x, state)
            else:
                y, final = self.rnn(x)
            if self.head is not None:
                y = _activation(case.head_activation)(self.head(y))
            if not case.state:
                return y
            return (y, *final) if case.cell == "lstm" else (y, final)

    torch.manual_seed(case.seed)
    return Net().eval()


def _activation(name: str) -> Any:
    import torch

    return {
        "relu": torch.relu,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "softmax": lambda t: torch.softmax(t, dim=-1),
        "log_softmax": lambda t: torch.log_softmax(t, dim=-1),
    }[name]


def example_inputs(
    case: GraphCase, batch: int, seq_len: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random feeds for the exported graph, by input name."""
    lead = (batch, seq_len) if case.batch_first else (seq_len, batch)
    feeds: dict[str, np.ndarray] = {}
    if case.embedding:
        feeds["tokens"] = rng.integers(0, VOCAB, size=lead).astype(np.int64)
    else:
        feeds["x"] = rng.standard_normal((*lead, INPUT)).astype(np.float32)
    if case.state:
        shape = (case.layers * case.directions, batch, HIDDEN)
        feeds["h0"] = (0.5 * rng.standard_normal(shape)).astype(np.float32)
        if case.cell == "lstm":
            feeds["c0"] = (0.5 * rng.standard_normal(shape)).astype(np.float32)
    return feeds


def torch_forward(net: Any, case: GraphCase, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    """PyTorch's own outputs for ``feeds``, by output name."""
    import torch

    args = [torch.from_numpy(feeds[n]) for n in case.input_names]
    with torch.no_grad():
        out = net(*args)
    out = out if isinstance(out, tuple) else (out,)
    return {n: t.numpy() for n, t in zip(case.output_names, out)}


def export(
    net: Any,
    case: GraphCase,
    feeds: dict[str, np.ndarray],
    *,
    dynamic: bool = True,
    opset: int | None = None,
) -> bytes:
    """Serialized ONNX of ``net`` from ``torch.onnx.export`` (the case's exporter).

    With ``dynamic`` the batch and sequence axes are symbolic (``dynamic_axes`` /
    ``dynamic_shapes``); the dynamo exporter unrolls ``nn.RNN`` and so fixes its length.
    """
    import torch

    args = tuple(torch.from_numpy(feeds[n]) for n in case.input_names)
    kwargs: dict[str, Any] = {
        "input_names": case.input_names,
        "output_names": case.output_names,
    }
    if opset is not None:
        kwargs["opset_version"] = opset
    b_axis, t_axis = (0, 1) if case.batch_first else (1, 0)
    if case.dynamo:
        kwargs["dynamo"] = True
        if dynamic and not case.cell.startswith("rnn"):
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
            shapes: list[Any] = [{b_axis: batch, t_axis: seq}]
            shapes += [{1: batch}] * (len(args) - 1)
            kwargs["dynamic_shapes"] = tuple(shapes)
    else:
        kwargs["dynamo"] = False
        if dynamic:
            axes: dict[str, dict[int, str]] = {
                case.input_names[0]: {b_axis: "batch", t_axis: "seq"},
                "y": {b_axis: "batch", t_axis: "seq"},
            }
            for name in [*case.input_names[1:], *case.output_names[1:]]:
                axes[name] = {1: "batch"}
            kwargs["dynamic_axes"] = axes
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, buf, **kwargs)
    return buf.getvalue()


def ort_run(model: bytes | str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``model`` (serialized, or a path) in onnxruntime (CPU, one thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def all_cases(matrix: dict[str, Sequence[Any]] = FULL_MATRIX) -> list[GraphCase]:
    """Every combination of the matrix."""
    keys = list(matrix)
    return [
        GraphCase(**dict(zip(keys, values)), seed=i)
        for i, values in enumerate(itertools.product(*matrix.values()))
    ]


def pairwise_cases(matrix: dict[str, Sequence[Any]] = FULL_MATRIX) -> list[GraphCase]:
    """A small subset of the matrix covering every pair of option values at least once.

    Greedy (deterministic): repeatedly take the full-matrix row that covers the most pairs
    not covered yet.
    """
    keys = list(matrix)
    rows = list(itertools.product(*matrix.values()))
    uncovered = {
        (i, a, j, b)
        for i, j in itertools.combinations(range(len(keys)), 2)
        for a in matrix[keys[i]]
        for b in matrix[keys[j]]
    }

    def pairs(row: tuple[Any, ...]) -> set[tuple[int, Any, int, Any]]:
        return {(i, row[i], j, row[j]) for i, j in itertools.combinations(range(len(keys)), 2)}

    chosen: list[tuple[Any, ...]] = []
    while uncovered:
        best = max(rows, key=lambda r: len(pairs(r) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return [GraphCase(**dict(zip(keys, row)), seed=i) for i, row in enumerate(chosen)]


def case_fields() -> list[str]:
    return [f.name for f in fields(GraphCase)]
