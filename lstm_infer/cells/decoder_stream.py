"""The stream and the generator of a loaded attention decoder (lstm_infer.cells.attention_decoder).

A decoder attends over a memory that belongs to one sequence, so its stream takes the memory
at ``reset`` and then steps the decoder inputs::

    stream = model.stream()
    stream.reset({"memory": M, "memory_lengths": L})   # keys K computed here, once
    y_t = stream.step(y)                               # y (B, E) or (1, B, E)

Each step is one C call (src_c/cell_attention_decoder.c, T = 1) on state arrays the stream
owns; with ``out=`` a step allocates no array. ``generate`` runs the decoding (greedy, or
seeded sampling) of a model with an embedding and a head in one C call. GraphModel.stream
and .generate pick these when the graph is a loaded attention decoder (:func:`decoder_node`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lstm_infer import _engine
from lstm_infer.cells.attention_decoder import (
    CELL,
    EMBEDDING,
    check_memory,
    compile_cell,
    initial_states,
    memory_lengths,
)
from lstm_infer.errors import InputError, StreamError


def decoder_node(graph: Any) -> Any | None:
    """The AttentionDecoder node of a loaded decoder's graph (lstm_infer.cells.load), or None
    for any other graph."""
    nodes = [n for n in graph.nodes if n.op == CELL.op]
    if len(nodes) != 1 or "memory" not in graph.input_names:
        return None
    return nodes[0]


def _batch_first(graph: Any) -> bool:
    return any(n.op == "Transpose" and n.inputs == ["memory"] for n in graph.nodes)


def _memory(node: Any, feeds: Mapping[str, Any], batch_first: bool) -> tuple[np.ndarray, Any]:
    """The time-major memory and the int32 lengths (or None) of a reset's feeds."""
    unknown = sorted(set(feeds) - {"memory", "memory_lengths"})
    if unknown:
        raise InputError(f"unknown reset input(s) {unknown}; a decoder stream takes 'memory' "
                         "and optionally 'memory_lengths'")  # fmt: skip
    if feeds.get("memory") is None:
        raise InputError("a decoder stream needs its memory: reset({'memory': M, ...})")
    m = np.asarray(feeds["memory"])
    if m.dtype.kind not in "fiub":
        raise InputError(f"memory must be float32, got {m.dtype}")
    if batch_first and m.ndim == 3:
        m = m.transpose(1, 0, 2)
    memory = check_memory(node.attrs, m, None, node.label)
    lengths = memory_lengths(feeds.get("memory_lengths"), memory.shape[1], memory.shape[0],
                             node.label)  # fmt: skip
    return memory, lengths


class DecoderStream:
    """Step-by-step decoding against a memory set by :meth:`reset`."""

    def __init__(self, model: Any) -> None:
        node = decoder_node(model.graph)
        if node is None:
            raise StreamError("not an attention decoder graph")
        self._node = node
        self._cell = compile_cell(node.attrs)
        self._batch_first = _batch_first(model.graph)
        self._mem: Any = None
        self._states: list[np.ndarray] = []
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None
        self._scratch = np.empty(0, np.float32)

    @property
    def compiled(self) -> bool:
        """Always True: every step is one C call."""
        return True

    @property
    def batch(self) -> int:
        return 0 if self._mem is None else int(self._mem.B)

    def reset(self, feeds: Mapping[str, Any] | None = None) -> None:
        """Zero the states; with ``feeds`` (``memory`` (S, B, Dm), or (B, S, Dm) for a
        batch_first model, and ``memory_lengths`` (B,) optional) take a new memory and
        compute its keys. Without feeds the current memory stays."""
        if feeds is None:
            if self._mem is None:
                raise StreamError("a decoder stream needs its memory: reset({'memory': M})")
        else:
            if not isinstance(feeds, Mapping):
                raise InputError(f"reset takes a dict of inputs, got {type(feeds).__name__}")
            memory, lengths = _memory(self._node, feeds, self._batch_first)
            self._mem = _engine.AttentionMemory(self._cell, memory, lengths)
            batch = memory.shape[1]
            self._x = np.empty((1, batch, self._node.attrs["input_size"]), np.float32)
            self._y = np.empty((1, batch, self._cell.output_size), np.float32)
            self._scratch = np.empty(max(self._cell.scratch_floats(1, batch), 1), np.float32)
            self._states = initial_states(
                self._node.attrs, [], batch, memory.shape[0], self._node.label
            )
            return
        for s in self._states:
            s[...] = 0.0

    def step(self, y: Any, out: Any = None) -> np.ndarray:
        """One decoder step on y (B, E) or (1, B, E) (batch_first: (B, 1, E)); returns
        [h ; ctx] (B, H + Dm), or (1, B, H + Dm) / (B, 1, H + Dm) for a 3-D y. ``out``:
        a float32 array of that shape written instead (no allocation)."""
        if self._mem is None:
            raise StreamError("reset({'memory': M, ...}) before the first step")
        assert self._x is not None and self._y is not None
        arr = np.asarray(y)
        batch, width = self._x.shape[1], self._x.shape[2]
        if arr.shape == (batch, width):
            rank3 = False
        elif arr.shape in ((1, batch, width), (batch, 1, width)):
            rank3 = True
        else:
            raise InputError(f"a decoder step takes y of shape ({batch}, {width}) or "
                             f"(1, {batch}, {width}), got {arr.shape}")  # fmt: skip
        if arr.dtype.kind not in "fiub":
            raise InputError(f"y must be float32, got {arr.dtype}")
        self._x[0] = arr.reshape(batch, width)
        target = self._y
        if out is not None:
            if (not isinstance(out, np.ndarray) or out.dtype != np.float32
                    or not out.flags.c_contiguous or out.size != self._y.size):  # fmt: skip
                raise InputError(f"out must be a C-contiguous float32 array of {self._y.size}")
            target = out.reshape(self._y.shape)
        _engine.run_attention_decoder(
            self._cell, self._mem, self._x, self._states, target, self._scratch
        )
        if out is not None:
            return out
        shape = (1, batch, -1) if not self._batch_first else (batch, 1, -1)
        return self._y.reshape(shape).copy() if rank3 else self._y[0].copy()

    def feed(self, ys: Any) -> np.ndarray:
        """Every step of ys (T, B, E) (batch_first: (B, T, E)) in turn; the outputs stacked."""
        arr = np.asarray(ys, np.float32)
        if arr.ndim != 3:
            raise InputError(f"feed takes a (time, batch, features) sequence, got {arr.shape}")
        steps = arr.transpose(1, 0, 2) if self._batch_first else arr
        got = np.stack([self.step(s) for s in steps])
        return got.transpose(1, 0, 2) if self._batch_first else got

    @property
    def state(self) -> dict[str, np.ndarray]:
        """Copies of h, c, ctx (B, ...), alpha, alpha_cum (B, S)."""
        if self._mem is None:
            return {}
        h, c, ctx, alphas = self._states
        return {"h": h.copy(), "c": c.copy(), "ctx": ctx.copy(), "alpha": alphas[0].copy(),
                "alpha_cum": alphas[1].copy()}  # fmt: skip

    @state.setter
    def state(self, snapshot: Mapping[str, Any]) -> None:
        if self._mem is None:
            raise StreamError("reset({'memory': M, ...}) before setting the state")
        given = [snapshot.get(n) for n in CELL.states]
        missing = [n for n, v in zip(CELL.states, given) if v is None]
        if missing:
            raise InputError(f"the state needs {missing}")
        new = initial_states(
            self._node.attrs, given, self.batch, int(self._mem.S), self._node.label
        )
        for dst, src in zip(self._states, new):
            dst[...] = src


def generate(
    model: Any,
    memory: Any,
    memory_lengths: Any = None,
    *,
    bos: int,
    eos: int | None = None,
    max_steps: int = 100,
    temperature: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Decoding in one C call; see GraphModel.generate."""
    node = decoder_node(model.graph)
    if node is None:
        raise StreamError("generate needs a loaded attention decoder")
    weight, bias = _head_of(model.graph)
    emb = node.attrs.get(EMBEDDING)
    if emb is None or weight is None:
        raise StreamError("generate needs the state_dict's embedding.weight and head.weight")
    if not isinstance(temperature, (int, float, np.integer, np.floating)) or not (
        0.0 <= float(temperature) < float("inf")
    ):
        raise InputError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if (
        not isinstance(seed, (int, np.integer))
        or isinstance(seed, bool)
        or not (0 <= int(seed) < 1 << 64)
    ):
        raise InputError(f"seed must be an int in [0, 2**64), got {seed!r}")
    vocab = int(weight.shape[0])
    if emb.shape[0] != vocab:
        raise InputError(f"embedding.weight has {emb.shape[0]} rows, the head {vocab} outputs")
    for name, value in (("bos", bos), ("eos", eos)):
        if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(
                value, bool) or not 0 <= int(value) < vocab):  # fmt: skip
            raise InputError(f"{name} must be a token in [0, {vocab}), got {value!r}")
    if not isinstance(max_steps, (int, np.integer)) or isinstance(max_steps, bool) or max_steps < 1:
        raise InputError(f"max_steps must be a positive int, got {max_steps!r}")
    cache = model.__dict__.setdefault("_decoder_generator", {})
    cell = cache.get("cell")
    if cell is None:
        cell = cache["cell"] = compile_cell(node.attrs, (weight, bias))
    feeds = {"memory": memory}
    if memory_lengths is not None:
        feeds["memory_lengths"] = memory_lengths
    mem_arr, lengths = _memory(node, feeds, _batch_first(model.graph))
    mem = _engine.AttentionMemory(cell, mem_arr, lengths)
    states = initial_states(node.attrs, [], mem_arr.shape[1], mem_arr.shape[0], node.label)
    return _engine.generate_attention(
        cell, mem, states, int(bos), -1 if eos is None else int(eos), int(max_steps),
        float(temperature), int(seed),
    )  # fmt: skip


def _head_of(graph: Any) -> tuple[Any, Any]:
    """head.weight (V, H + Dm) and head.bias of the loaded graph's MatMul + Add head."""
    weight = graph.initializers.get("head.weight_t")
    bias = graph.initializers.get("head.bias")
    if weight is None or bias is None:
        return None, None
    return np.ascontiguousarray(np.asarray(weight, np.float32).T), np.asarray(bias, np.float32)
