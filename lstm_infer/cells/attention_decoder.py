"""The attention LSTM decoder of CELLS.md (Bahdanau, Luong, Chorowski / Tacotron 2):

    h, c  = LSTMCell([y_t ; ctx_{t-1}], (h, c))
    e_j   = additive v . tanh(Wq h + K_j + b) | general h . (Wg M_j) | dot h . M_j
            | location: additive + Wl conv1d([alpha_{t-1}; alpha_cum], Wf)_j
    alpha = softmax over j < length;  ctx = sum_j alpha_j M_j;  out = [h ; ctx]

Graph op ``AttentionDecoder``: inputs X (T, B, E), memory (S, B, Dm), memory_lengths (B,)
int64 (optional: every position valid), then optionally the initial h, c (B, H), ctx (B, Dm),
alpha, alpha_cum (B, S); outputs Y (T, B, H + Dm) then optionally the final states. Its
attributes are the sizes (``attention`` a string) and the module's keys; an optional
``embedding.weight`` (V, E) rides along for ``GraphModel.generate`` (the run never reads it).
Runs on src_c/cell_attention_decoder.c; the memory's keys are computed once per run (per
``reset`` in a stream).

The loaded model (lstm_infer.cells.load) takes ``input``, ``memory``, ``memory_lengths`` and
returns ``output``; a state_dict with ``head.weight``/``head.bias`` (Linear(H + Dm, V)) at the
decoder's prefix or at the top level also gives ``logits`` (T, B, V), a MatMul and an Add
node after the cell.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_infer.cells.base import (
    MAX_SIZE,
    CellDef,
    Shape,
    f32,
    gate_rows_padded,
    gate_vector_padded,
    input_weights,
    matrix,
    packed,
    rcell,
    weight_format,
)
from lstm_infer.errors import InputError, ModelFormatError

WHAT = "AttentionDecoder"
ATTENTIONS = ("additive", "general", "dot", "location")  # the C enum's order
SIZES = (
    "input_size",
    "hidden_size",
    "memory_size",
    "attention",
    "attention_size",
    "location_filters",
    "location_kernel",
)
EMBEDDING = "embedding.weight"
MAX_KERNEL = 4095  # the C check's bound on the location kernel
HEAD = ("head.weight", "head.bias")


def read(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Sizes from the shapes: which attention by the keys present (energy_bias: additive or
    location, location_conv: location, score: general, none: dot)."""
    own = {k: v for k, v in state.items() if not (k.startswith("head.") or k == EMBEDDING)}
    w_ih = matrix(own, "cell.weight_ih", WHAT)
    hidden = matrix(own, "cell.weight_hh", WHAT).shape[1]
    if "location_conv.weight" in own:
        attention = "location"
    elif "energy_bias" in own:
        attention = "additive"
    elif "score.weight" in own:
        attention = "general"
    else:
        attention = "dot"
    if attention in ("additive", "location"):
        size, memory = matrix(own, "memory.weight", WHAT).shape
    elif attention == "general":
        memory, size = int(matrix(own, "score.weight", WHAT).shape[1]), int(hidden)
    else:
        memory, size = int(hidden), int(hidden)
    filters, kernel = 32, 31
    if attention == "location":
        conv = matrix(own, "location_conv.weight", WHAT, rank=3)
        filters, kernel = int(conv.shape[0]), int(conv.shape[2])
    attrs: dict[str, Any] = {
        "input_size": int(w_ih.shape[1]) - int(memory),
        "hidden_size": int(hidden),
        "memory_size": int(memory),
        "attention": attention,
        "attention_size": int(size),
        "location_filters": filters,
        "location_kernel": kernel,
    }
    for k, v in own.items():
        arr = np.asarray(v)
        if arr.dtype.kind != "f":
            raise ModelFormatError(f"{k} is {arr.dtype}, not a floating-point weight")
        attrs[k] = f32(arr)
    if EMBEDDING in state:
        attrs[EMBEDDING] = f32(matrix(state, EMBEDDING, WHAT))
    return attrs


def expected(a: Mapping[str, Any]) -> dict[str, Shape]:
    e, h, dm, size = a["input_size"], a["hidden_size"], a["memory_size"], a["attention_size"]
    out: dict[str, Shape] = {
        "cell.weight_ih": (4 * h, e + dm),
        "cell.weight_hh": (4 * h, h),
        "cell.bias_ih": (4 * h,),
        "cell.bias_hh": (4 * h,),
    }
    if a["attention"] in ("additive", "location"):
        out["query.weight"] = (size, h)
        out["memory.weight"] = (size, dm)
        out["energy.weight"] = (1, size)
        out["energy_bias"] = (size,)
    if a["attention"] == "location":
        out["location_conv.weight"] = (a["location_filters"], 2, a["location_kernel"])
        out["location_dense.weight"] = (size, a["location_filters"])
    if a["attention"] == "general":
        out["score.weight"] = (h, dm)
    emb = a.get(EMBEDDING)
    if emb is not None:
        out[EMBEDDING] = (int(np.shape(emb)[0]) if np.ndim(emb) == 2 else -1, e)
    return out


def state_shapes(a: Mapping[str, Any], batch: int, positions: int = 0) -> list[Shape]:
    """h, c, ctx, alpha, alpha_cum for ``batch`` rows and a memory of ``positions``."""
    h, dm = a["hidden_size"], a["memory_size"]
    return [(batch, h), (batch, h), (batch, dm), (batch, positions), (batch, positions)]


def compile_cell(a: Mapping[str, Any], head: tuple[np.ndarray, np.ndarray] | None = None) -> Any:
    """The RCell (arrays in src_c/cell_attention_decoder.c's order); ``head`` (weight (V,
    H + Dm), bias (V,)) and the node's embedding for generation."""
    e, dm = a["input_size"], a["memory_size"]
    kind, size = a["attention"], a["attention_size"]
    w_ih = np.asarray(a["cell.weight_ih"], np.float64)
    bias = np.asarray(a["cell.bias_ih"], np.float64) + np.asarray(a["cell.bias_hh"], np.float64)
    empty = np.zeros(0, np.float32)
    energy = kind in ("additive", "location")
    keys_w = a["memory.weight"] if energy else a["score.weight"] if kind == "general" else None
    vocab = 0 if head is None else int(head[0].shape[0])
    fmt = weight_format(a)
    arrays: list[np.ndarray] = [
        np.array(
            [
                ATTENTIONS.index(kind),
                dm,
                size,
                a["location_kernel"] if kind == "location" else 0,
                vocab,
            ],
            np.int32,
        ),  # fmt: skip
        *input_weights(f32(w_ih[:, :e]), 4, f32(bias), fmt),
        packed(
            np.concatenate([w_ih[:, e:], np.asarray(a["cell.weight_hh"], np.float64)], 1), 4, fmt
        ),
        packed(a["query.weight"], 1, fmt) if energy else empty,
        gate_rows_padded(f32(keys_w), 1, fmt) if keys_w is not None else empty,
        packed(keys_w, 1, fmt) if keys_w is not None else empty,
        f32(a["energy.weight"]).reshape(-1) if energy else empty,
        f32(a["energy_bias"]) if energy else empty,
        _location_filter(a) if kind == "location" else empty,
    ]
    if head is None:
        arrays += [empty, empty, empty]
    else:
        weight, b = head
        arrays += [packed(weight, 1, fmt), gate_vector_padded(f32(b), 1), f32(a[EMBEDDING])]
    return rcell("attention_decoder", a, arrays)


def _location_filter(a: Mapping[str, Any]) -> np.ndarray:
    """location_dense after location_conv as one filter (A, 2, k), folded in float64 and
    stored [2][k][A] (its inner loop in C runs over A)."""
    conv = np.asarray(a["location_conv.weight"], np.float64)  # (F, 2, k)
    dense = np.asarray(a["location_dense.weight"], np.float64)  # (A, F)
    folded = np.einsum("af,fck->cka", dense, conv)
    return f32(folded)


@dataclass(frozen=True)
class AttentionCellDef(CellDef):
    """CellDef for the decoder: a string size (``attention``), the memory inputs and its own
    run (``run``: the graph op's function; ``inputs``/``outputs``: its arities; ``graph``:
    the loaded model's graph, lstm_infer.cells.load)."""

    run: Any = None
    graph: Any = None
    inputs: tuple[int, int] = (2, 8)
    outputs: tuple[int, int] = (1, 6)

    def check(self, attrs: Mapping[str, Any], where: str) -> None:
        kind = attrs.get("attention")
        if kind not in ATTENTIONS:
            raise ModelFormatError(f"{where}: attention {kind!r} is not one of {ATTENTIONS}")
        numbers = {k: v for k, v in attrs.items() if k != "attention"}
        plain = CellDef(
            self.op, self.kind, self.states, self.marker,
            tuple(s for s in self.sizes if s != "attention"),
            self.read, lambda a: expected({**a, "attention": kind}), self.state_shapes,
            self.compile,
        )  # fmt: skip
        plain.check(numbers, where)
        if kind == "dot" and attrs["hidden_size"] != attrs["memory_size"]:
            raise ModelFormatError(
                f"{where}: dot attention needs hidden_size == memory_size, got "
                f"{attrs['hidden_size']} and {attrs['memory_size']}"
            )
        if kind == "location" and (
            attrs["location_kernel"] % 2 == 0 or attrs["location_kernel"] > MAX_KERNEL
        ):
            raise ModelFormatError(
                f"{where}: location_kernel {attrs['location_kernel']} is not odd and at most "
                f"{MAX_KERNEL}"
            )
        emb = attrs.get(EMBEDDING)
        if emb is not None and not 0 < emb.shape[0] <= MAX_SIZE:
            raise ModelFormatError(f"{where}: {EMBEDDING} has {emb.shape[0]} rows")


# ---- the graph op's run ----------------------------------------------------------------------


def memory_lengths(value: Any, batch: int, positions: int, where: str) -> np.ndarray | None:
    """The lengths as int32 (None: all valid), each checked in [1, S]."""
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu" or arr.shape != (batch,):
        raise InputError(
            f"{where}: memory_lengths must be ({batch},) integers, got {arr.dtype} {arr.shape}"
        )
    if batch and (arr.min() < 1 or arr.max() > positions):
        raise InputError(
            f"{where}: memory_lengths must be in [1, {positions}] (the memory's length), "
            f"got {arr.tolist()}"
        )
    return arr.astype(np.int32)


def check_memory(
    node_attrs: Mapping[str, Any], memory: Any, batch: int | None, where: str
) -> np.ndarray:
    """memory (S >= 1, B, Dm) as float32 C-contiguous, batch checked when given."""
    dm = node_attrs["memory_size"]
    shape = np.shape(memory)
    if len(shape) != 3 or shape[2] != dm:
        raise InputError(f"{where}: memory must be (positions, batch, {dm}), got shape {shape}")
    if shape[0] < 1:
        raise InputError(f"{where}: memory has no positions (S = 0); it needs at least one")
    if batch is not None and shape[1] != batch:
        raise InputError(f"{where}: memory has batch {shape[1]}, the input batch {batch}")
    return np.ascontiguousarray(memory, np.float32)


def initial_states(
    attrs: Mapping[str, Any], given: list, batch: int, positions: int, where: str
) -> list[np.ndarray]:
    """[h, c, ctx, alphas (2, B, S)]: the given states (checked) or zeros."""
    shapes = state_shapes(attrs, batch, positions)
    out = []
    for name, shape, value in zip(CELL.states, shapes, given + [None] * 5):
        if value is None:
            out.append(np.zeros(shape, np.float32))
            continue
        if np.shape(value) != shape:
            raise InputError(
                f"{where}: initial {name} has shape {np.shape(value)}, expected {shape}"
            )
        out.append(np.array(value, np.float32, order="C"))
    alphas = np.ascontiguousarray(np.stack([out[3], out[4]]))
    return [out[0], out[1], out[2], alphas]


def _run(ctx: Any, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    from lstm_infer import _engine

    x = ins[0]
    width = node.attrs["input_size"]
    if np.ndim(x) != 3 or np.shape(x)[2] != width:
        raise InputError(f"{node.label}: X must be (time, batch, {width}), got shape {np.shape(x)}")
    x = np.ascontiguousarray(x, np.float32)
    steps, batch = x.shape[0], x.shape[1]
    memory = check_memory(node.attrs, ins[1], batch, node.label)
    lengths = memory_lengths(ins[2] if len(ins) > 2 else None, batch, memory.shape[0], node.label)
    states = initial_states(node.attrs, list(ins[3:]), batch, memory.shape[0], node.label)
    y = np.empty((steps, batch, state.output_size), np.float32)
    if batch:
        mem = _engine.AttentionMemory(state, memory, lengths)
        _engine.run_attention_decoder(state, mem, x, states, y)
    results = [y, states[0], states[1], states[2], states[3][0].copy(), states[3][1].copy()]
    return [results[i] if name else np.zeros(0, np.float32) for i, name in enumerate(node.outputs)]


# ---- the loaded model's graph ----------------------------------------------------------------


def _head(state: Mapping[str, np.ndarray], prefix: str, width: int, where: str) -> tuple | None:
    """head.weight (V, H + Dm) and head.bias (V,) at the decoder's prefix or the top level."""
    for pre in dict.fromkeys((prefix, "")):
        if pre + HEAD[0] in state:
            weight = f32(matrix(state, pre + HEAD[0], where))
            bias = state.get(pre + HEAD[1])
            bias = np.zeros(weight.shape[0], np.float32) if bias is None else f32(bias)
            if weight.shape[1] != width or bias.shape != (weight.shape[0],):
                raise ModelFormatError(
                    f"{where}: {pre}{HEAD[0]} {weight.shape} / {pre}{HEAD[1]} {bias.shape} do "
                    f"not make a Linear({width}, V)"
                )
            return weight, bias
    return None


def embedding_of(state: Mapping[str, np.ndarray], prefix: str) -> np.ndarray | None:
    for pre in dict.fromkeys((prefix, "")):
        if pre + EMBEDDING in state:
            return state[pre + EMBEDDING]
    return None


def build_graph(
    attrs: dict[str, Any],
    state: Mapping[str, np.ndarray],
    prefix: str,
    batch_first: bool,
    where: str,
) -> Any:
    """input (T, B, E), memory (S, B, Dm), memory_lengths (B,) -> output (T, B, H + Dm) and,
    with a head, logits (T, B, V); batch_first puts batch first on the sequences."""
    from lstm_infer.graph import Graph, Node, TensorType, ValueInfo

    width = attrs["hidden_size"] + attrs["memory_size"]
    head = _head(state, prefix, width, where)
    emb = embedding_of(state, prefix)
    if emb is not None:
        attrs = {**attrs, EMBEDDING: f32(emb)}
        CELL.check(attrs, where)

    def seq(n: int | str) -> tuple:
        return ("batch", "time", n) if batch_first else ("time", "batch", n)

    nodes: list[Node] = []
    x, mem, y = "input", "memory", "output"
    if batch_first:
        nodes.append(Node("Transpose", ["input"], ["input_tm"], {"perm": [1, 0, 2]}, "to_time"))
        nodes.append(Node("Transpose", ["memory"], ["memory_tm"], {"perm": [1, 0, 2]}, "mem_tm"))
        x, mem, y = "input_tm", "memory_tm", "output_tm"
    nodes.append(Node(CELL.op, [x, mem, "memory_lengths"], [y], dict(attrs), "cell"))
    if batch_first:
        nodes.append(Node("Transpose", [y], ["output"], {"perm": [1, 0, 2]}, "to_batch"))
    outputs = [ValueInfo("output", TensorType("float32", seq(width), 1 if batch_first else 0))]
    inits: dict[str, np.ndarray] = {}
    if head is not None:
        weight, bias = head
        inits = {"head.weight_t": np.ascontiguousarray(weight.T), "head.bias": bias}
        nodes.append(Node("MatMul", ["output", "head.weight_t"], ["head_mm"], {}, "head"))
        nodes.append(Node("Add", ["head_mm", "head.bias"], ["logits"], {}, "head_bias"))
        vocab = int(weight.shape[0])
        outputs.append(
            ValueInfo("logits", TensorType("float32", seq(vocab), 1 if batch_first else 0))
        )
    memory_shape = ("batch", "positions", attrs["memory_size"]) if batch_first else (
        "positions", "batch", attrs["memory_size"])  # fmt: skip
    graph = Graph(
        [
            ValueInfo(
                "input", TensorType("float32", seq(attrs["input_size"]), 1 if batch_first else 0)
            ),
            ValueInfo("memory", TensorType("float32", memory_shape)),
            ValueInfo("memory_lengths", TensorType("int64", ("batch",))),
        ],
        outputs,
        nodes,
        inits,
    )
    graph.validate()
    return graph


CELL = AttentionCellDef(
    op="AttentionDecoder",
    kind="attention_decoder",
    states=("h", "c", "ctx", "alpha", "alpha_cum"),
    marker="cell.weight_ih",
    sizes=SIZES,
    read=read,
    expected=expected,
    state_shapes=state_shapes,
    compile=compile_cell,
    doc="attention LSTM decoder (additive, general, dot, location attention over a memory)",
    run=_run,
    graph=build_graph,
)
