"""The buffers and records of a step program while it is being built.

Every float32 tensor of a compiled step is a :class:`Buf`: a C-contiguous region of one base
array, the program's arena (one allocation, made when the program is finished, tensors at
64-byte aligned offsets) or a constant's own array. :class:`StepBuilder` hands out regions,
records aliases (a Reshape's output is its input's region), collects the C records
(``lstm_infer._engine.StepProgram``'s dict form) and checks every record's reach against its
buffers' extents before anything runs. :class:`StepContext` is what a node's lowering
(``lstm_infer.compile.step_lower``) sees: the builder, the traced shapes and the constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_infer import _engine

KIND = _engine.STEP_KINDS
MAX_RANK = _engine.STEP_MAX_RANK
# Floats between the starts of two arena regions (64 bytes: vector loads never straddle).
ALIGN_FLOATS = 16
# The largest index table a GATHER record may hold, and the largest tensor a layout op is
# lowered for by running it on element indices (int64, 8 bytes each); bigger ones are not
# compiled.
MAX_GATHER = 1 << 22
MAX_INDEXED = 1 << 22


class NotCompiled(Exception):
    """A graph (or one node of it) that the step compiler does not lower; the message says
    which node and why. The stream then runs the graph op by op instead."""


class _Arena:
    """Placeholder base of arena regions until the arena exists."""


ARENA = _Arena()


@dataclass(frozen=True)
class Buf:
    """A C-contiguous float32 tensor: ``shape`` at element ``offset`` of ``base``."""

    base: Any  # ARENA or a float32 numpy array
    offset: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def strides(self) -> tuple[int, ...]:
        """Element strides of the contiguous layout."""
        out, acc = [], 1
        for d in reversed(self.shape):
            out.append(acc)
            acc *= d
        return tuple(reversed(out))

    def at(self, offset: int, shape: tuple[int, ...]) -> Buf:
        """The region ``shape`` starting ``offset`` elements into this one."""
        if offset < 0 or offset + math.prod(shape) > self.size:
            raise NotCompiled(f"internal: view {offset}+{shape} outside a buffer of {self.shape}")
        return Buf(self.base, self.offset + offset, tuple(shape))

    def reshaped(self, shape: tuple[int, ...]) -> Buf:
        if math.prod(shape) != self.size:
            raise NotCompiled(f"internal: reshape of {self.shape} to {shape}")
        return self.at(0, tuple(shape))

    def overlaps(self, other: Buf) -> bool:
        return (
            self.base is other.base
            and self.offset < other.offset + other.size
            and other.offset < self.offset + self.size
        )


def collapse(
    shape: tuple[int, ...], *strides: tuple[int, ...]
) -> tuple[list[int], list[list[int]]]:
    """Merge neighbouring dims that every stride set walks as one (fewer loop levels in C),
    and drop dims of size 1. Returns the shape and the stride sets, at least one dim."""
    dims = [(d, [s[i] for s in strides]) for i, d in enumerate(shape) if d != 1]
    if not dims:
        return [1], [[0] for _ in strides]
    out_shape, out_strides = [dims[0][0]], [[s] for s in dims[0][1]]
    for d, ss in dims[1:]:
        if all(prev[-1] == s * d for prev, s in zip(out_strides, ss)):
            out_shape[-1] *= d
            for prev, s in zip(out_strides, ss):
                prev[-1] = s
        else:
            out_shape.append(d)
            for prev, s in zip(out_strides, ss):
                prev.append(s)
    return out_shape, out_strides


class StepBuilder:
    """Regions, aliases and records of one step program (see the module doc)."""

    def __init__(self, max_bytes: int | None = None) -> None:
        # The arena's bound, checked as regions are handed out (before anything is made).
        self.max_floats = None if max_bytes is None else max_bytes // 4
        self.values: dict[str, Buf] = {}  # tensor name -> its buffer
        self.records: list[dict[str, Any]] = []
        self.keep: list[Any] = []  # arrays and plans the records point into
        self._arena_floats = 0
        self._scratch_floats = 0
        self._scratch_users: list[tuple[dict[str, Any], str]] = []
        self.arena: np.ndarray | None = None
        # Regions that keep their values from one step to the next in a time-axis stream (a
        # recurrent layer's state, a causal convolution's last frames): (key naming the node
        # and role, region, the values a reset gives it). Keys match across chunk lengths.
        self.carried: list[tuple[str, Buf, np.ndarray]] = []
        # Regions given a value once, when the arena is made, that nothing writes later (a
        # max pool's -inf padding).
        self.preset: list[tuple[Buf, float]] = []

    # ---- regions -------------------------------------------------------------------------

    def region(self, shape: tuple[int, ...]) -> Buf:
        """A new arena region of ``shape``."""
        n = math.prod(shape)
        if n >= 1 << 31:
            raise NotCompiled(f"a step tensor of shape {shape} is too large to compile")
        buf = Buf(ARENA, self._arena_floats, tuple(shape))
        self._arena_floats += -(-max(n, 1) // ALIGN_FLOATS) * ALIGN_FLOATS
        self._check_bound()
        return buf

    def _check_bound(self) -> None:
        if (
            self.max_floats is not None
            and self._arena_floats + self._scratch_floats > self.max_floats
        ):
            raise NotCompiled(f"the step's arena would exceed {self.max_floats * 4} bytes")

    def constant(self, value: np.ndarray) -> Buf:
        """A constant as a float32 buffer of its own (kept alive by the program)."""
        arr = np.ascontiguousarray(value, np.float32)
        if arr.size == 0:
            arr = np.zeros(1, np.float32)[:0]
        self.keep.append(arr)
        return Buf(arr, 0, tuple(np.shape(value)))

    def int_table(self, values: np.ndarray) -> np.ndarray:
        table = np.ascontiguousarray(values, np.int32)
        self.keep.append(table)
        return table

    def scratch(self, floats: int, user: dict[str, Any], key: str) -> None:
        """Point ``user[key]`` at the program's shared scratch (records run one at a time)."""
        self._scratch_floats = max(self._scratch_floats, int(floats))
        self._check_bound()
        self._scratch_users.append((user, key))

    # ---- records -------------------------------------------------------------------------

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        record = {"kind": KIND[kind], **fields}
        self.records.append(record)
        return record

    def copy(
        self,
        dst: Buf,
        src: Buf,
        shape: tuple[int, ...],
        sy: tuple,
        sa: tuple,
        dst_offset: int = 0,
        src_offset: int = 0,
    ) -> None:
        """COPY over ``shape`` with element strides sy / sa from the given offsets."""
        if math.prod(shape) == 0:
            return
        shape_c, (sy_c, sa_c) = collapse(shape, sy, sa)
        if len(shape_c) > MAX_RANK:
            raise NotCompiled(f"a copy of rank {len(shape_c)} (at most {MAX_RANK})")
        check_reach(dst, dst_offset, shape, sy)
        check_reach(src, src_offset, shape, sa)
        self.emit("copy", shape=shape_c, sy=sy_c, sa=sa_c, y=(dst, dst_offset), a=(src, src_offset))

    def copy_whole(self, dst: Buf, src: Buf) -> None:
        if dst.size != src.size:
            raise NotCompiled(f"internal: copy of {src.shape} into {dst.shape}")
        if dst.base is src.base and dst.offset == src.offset:
            return
        self.copy(dst, src, (dst.size,), (1,), (1,))

    def fill(self, dst: Buf, value: float) -> None:
        if dst.size:
            self.emit("fill", shape=[dst.size], sy=[1], f=[float(value)], y=(dst, 0))

    # ---- finishing ---------------------------------------------------------------------

    def finish(self) -> tuple[Any, np.ndarray]:
        """The arena and the StepProgram over it."""
        floats = self._arena_floats + -(-self._scratch_floats // ALIGN_FLOATS) * ALIGN_FLOATS
        raw = np.zeros(floats + ALIGN_FLOATS, np.float32)
        start = (-raw.ctypes.data // 4) % ALIGN_FLOATS
        arena = raw[start : start + floats]
        self.arena = arena
        for buf, value in self.preset:
            self.view(buf)[...] = value
        scratch = (arena, self._arena_floats)
        for user, key in self._scratch_users:
            user[key] = scratch
        records = [_resolved(r, arena) for r in self.records]
        return _engine.StepProgram(records), arena

    def view(self, buf: Buf) -> np.ndarray:
        """A numpy view of a buffer (after finish)."""
        base = self.arena if buf.base is ARENA else buf.base
        return base[buf.offset : buf.offset + buf.size].reshape(buf.shape)


def check_reach(buf: Buf, offset: int, shape: tuple, strides: tuple) -> None:
    """Every element a strided walk reaches lies inside ``buf``."""
    if any(s < 0 for s in strides):
        raise NotCompiled("internal: negative strides")
    last = offset + sum((d - 1) * s for d, s in zip(shape, strides))
    if offset < 0 or last >= buf.size:
        raise NotCompiled(f"internal: a walk reaches {last} in a buffer of {buf.size}")


def _resolved_ref(ref: Any, arena: np.ndarray) -> Any:
    if ref is None:
        return None
    if isinstance(ref, tuple) and len(ref) == 2 and isinstance(ref[0], Buf):
        buf, extra = ref
        base = arena if buf.base is ARENA else buf.base
        return (base, buf.offset + extra)
    return ref  # (array, offset) already: an index table, the shared scratch


def _resolved(record: dict[str, Any], arena: np.ndarray) -> dict[str, Any]:
    out = dict(record)
    for key in ("a", "b", "y", "aux", "aux2"):
        out[key] = _resolved_ref(record.get(key), arena)
    spec = record.get("recurrent")
    if spec is not None:
        spec = dict(spec)
        for key in ("x", "y", "scratch"):
            spec[key] = _resolved_ref(spec[key], arena)
        spec["h"] = [_resolved_ref(v, arena) for v in spec["h"]]
        spec["c"] = [_resolved_ref(v, arena) for v in spec["c"]]
        out["recurrent"] = spec
    spec = record.get("cell")
    if spec is not None:
        spec = dict(spec)
        for key in ("x", "y", "scratch"):
            spec[key] = _resolved_ref(spec[key], arena)
        spec["states"] = [_resolved_ref(v, arena) for v in spec["states"]]
        out["cell"] = spec
    return out


class StepContext:
    """What a lowering reads and writes: the builder, the traced shapes and dtypes of every
    tensor, and the program's constants."""

    def __init__(
        self,
        builder: StepBuilder,
        shapes: dict[str, tuple[int, ...]],
        dtypes: dict[str, np.dtype],
        consts: dict[str, np.ndarray],
    ) -> None:
        self.b = builder
        self.shapes = shapes
        self.dtypes = dtypes
        self.consts = consts
        # Time-axis streams: recurrent layers and causal convolutions keep their state in
        # the arena between steps; time_axes gives each tensor's time axis (None: no time).
        self.carry_state = False
        self.time_axes: dict[str, int | None] = {}
        self._const_bufs: dict[str, Buf] = {}
        # tensor name -> the nodes reading it, and the graph's outputs: a lowering that
        # fuses a node into the one before it checks it is the only reader
        self.readers: dict[str, list[Any]] = {}
        self.graph_outputs: set[str] = set()
        # ids of the nodes an earlier lowering already emitted the records of
        self.lowered: set[int] = set()

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def buf(self, node: Any, name: str) -> Buf:
        """The float32 buffer of a node's input (a constant gets a buffer of its own)."""
        if name in self.b.values:
            return self.b.values[name]
        value = self.consts.get(name)
        if value is None:
            raise NotCompiled(f"{node.label}: input {name!r} has no value (internal)")
        if value.dtype.kind != "f":
            raise NotCompiled(f"{getattr(node, 'label', name)}: {value.dtype} operand {name!r}")
        if name not in self._const_bufs:
            self._const_bufs[name] = self.b.constant(value)
        return self._const_bufs[name]

    def out(self, node: Any, i: int = 0) -> Buf:
        """A new region for output i of the node, of its traced shape."""
        name = node.outputs[i]
        self._float(node, name)
        buf = self.b.region(self.shapes[name])
        self.b.values[name] = buf
        return buf

    def bind(self, node: Any, i: int, buf: Buf) -> None:
        """Output i of the node is ``buf`` (an alias: no copy)."""
        name = node.outputs[i]
        self._float(node, name)
        self.b.values[name] = buf.reshaped(self.shapes[name])

    def _float(self, node: Any, name: str) -> None:
        if self.dtypes.get(name) != np.float32:
            raise NotCompiled(f"{node.label}: output {name!r} is {self.dtypes.get(name)}")
