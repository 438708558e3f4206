"""What every cell of CELLS.md shares: its definition record, and how its weights sit in a
graph node.

A cell is one graph op (``LayerNormLSTM``, ...). The node's attributes are the cell's sizes
and its state_dict exactly as CELLS.md names the keys (``weight_ih_l0``, ``gate_norm_l0.weight``,
...), float32; ``CellDef.expected`` lists every key's shape from the sizes, so a node (from a
state_dict or a native file) is checked key by key before anything is compiled. The node's
inputs are the time-major sequence (T, B, I) and, optionally, the initial states; its outputs
the top layer's output at every step and, optionally, the final states.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_infer import _engine
from lstm_infer._plan import BLOCK, _aligned_empty, _pack, _pad_gate_vector
from lstm_infer.errors import ModelFormatError
from lstm_infer.quantize import dequantize

# Sizes far above any trained cell and below the C layer's own bound (2**20).
MAX_SIZE = 1 << 16
MAX_LAYERS = 64
# The node attribute naming the format of the cell's packed matrices (GraphModel.quantize);
# absent: float32. The node keeps its float32 weights, so a saved quantized model reloads
# to the same packed bytes.
WEIGHT_FORMAT = "weight_format"
WEIGHT_FORMATS = ("float32", "bfloat16", "int8")

Shape = tuple[int, ...]


@dataclass(frozen=True)
class CellDef:
    """One cell kind of CELLS.md.

    op: the graph op's name. kind: the C kind (lstm_infer._engine.RCELL_KINDS). states: the
    state names in the C layout's order. marker: the state_dict key (under any prefix) that
    says a module of this kind is there. sizes: the node's size attributes with their
    defaults' types. read: the node attributes (sizes and float32 weights) from a state_dict
    whose keys are relative to the module. expected: every weight key's shape from the
    sizes. state_shapes: each state's shape for a batch. compile: the RCell.
    """

    op: str
    kind: str
    states: tuple[str, ...]
    marker: str
    sizes: tuple[str, ...]
    read: Callable[[Mapping[str, np.ndarray]], dict[str, Any]]
    expected: Callable[[Mapping[str, Any]], dict[str, Shape]]
    state_shapes: Callable[[Mapping[str, Any], int], list[Shape]]
    compile: Callable[[Mapping[str, Any]], Any]
    doc: str = ""

    def check(self, attrs: Mapping[str, Any], where: str) -> None:
        """Sizes in range and every weight key present with its shape, nothing else."""
        for name in self.sizes:
            value = attrs.get(name)
            if name == "eps":
                if not isinstance(value, float) or not (0.0 <= value < 1.0):
                    raise ModelFormatError(f"{where}: eps {value!r} is not a float in [0, 1)")
                continue
            if name == "periods":
                continue  # the kind's own check
            limit = MAX_LAYERS if name == "num_layers" else MAX_SIZE
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
                raise ModelFormatError(f"{where}: {name} {value!r} is not in [1, {limit}]")
        fmt = attrs.get(WEIGHT_FORMAT, "float32")
        if fmt not in WEIGHT_FORMATS:
            raise ModelFormatError(f"{where}: weight format {fmt!r} is not one of {WEIGHT_FORMATS}")
        want = self.expected(attrs)
        weights = {k: v for k, v in attrs.items() if k not in self.sizes and k != WEIGHT_FORMAT}
        missing = sorted(set(want) - set(weights))
        extra = sorted(set(weights) - set(want))
        if missing or extra:
            raise ModelFormatError(
                f"{where}: a {self.op} with these sizes has the keys {sorted(want)}; "
                + (f"missing {missing}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"unexpected {extra}" if extra else "")
            )
        for key, shape in want.items():
            value = weights[key]
            if not isinstance(value, np.ndarray) or value.dtype != np.float32:
                raise ModelFormatError(f"{where}: {key} must be a float32 tensor")
            if value.shape != shape:
                raise ModelFormatError(f"{where}: {key} has shape {value.shape}, expected {shape}")


# ---- weight layouts the C kinds read ---------------------------------------------------------


def padded(h: int) -> int:
    return -(-h // BLOCK) * BLOCK


def gate_rows_padded(m: np.ndarray, gates: int, fmt: str = "float32") -> np.ndarray:
    """(G*H, K) -> (G*Hp, K) float32, each gate's rows zero padded to whole blocks (sgemm
    then writes the padded layout the packed products write); ``fmt``: of the dequantized
    weights."""
    m = dequantize(m, fmt)
    gh, k = m.shape
    h = gh // gates
    out = np.zeros((gates, padded(h), k), np.float32)
    out[:, :h] = m.reshape(gates, h, k)
    return out.reshape(gates * padded(h), k)


def gate_vector_padded(v: np.ndarray, gates: int) -> np.ndarray:
    return _pad_gate_vector(np.asarray(v, np.float32), gates)


def input_weights(
    w: np.ndarray, gates: int, bias: np.ndarray | None, fmt: str = "float32"
) -> list[np.ndarray]:
    """The three arrays of an input projection: padded rows (sgemm), packed blocks (matvec),
    padded bias (zeros without one)."""
    b = np.zeros(w.shape[0], np.float32) if bias is None else bias
    return [
        gate_rows_padded(w, gates, fmt),
        packed(w, gates, fmt),
        gate_vector_padded(np.asarray(b, np.float32), gates),
    ]


def _bytes(parts: list[np.ndarray]) -> np.ndarray:
    """The parts' bytes back to back, each from a 64-byte boundary, in one aligned array."""
    offsets, end = [], 0
    for p in parts:
        offsets.append(end)
        end += -(-p.nbytes // 64) * 64
    out = _aligned_empty((max(offsets[-1] + parts[-1].nbytes, 1),), np.uint8)
    out[...] = 0
    for off, p in zip(offsets, parts):
        out[off : off + p.nbytes] = np.ascontiguousarray(p).reshape(-1).view(np.uint8)
    return out


def packed(m: np.ndarray, gates: int, fmt: str = "float32") -> np.ndarray:
    """A (G*H, K) matrix packed for the products in format ``fmt`` (li_cells.h), as the
    recurrent layers pack theirs (_plan._pack): float32 pack_gate_blocks, or bytes: bf16
    blocks, or int8 blocks then each padded row's scale and code sum."""
    parts = _pack(np.ascontiguousarray(m, np.float32), gates, fmt)
    if fmt == "float32":
        return parts["packed"]
    return _bytes([p for p in (parts["packed"], parts["scale"], parts["rowsum"]) if p is not None])


def weight_format(attrs: Mapping[str, Any]) -> str:
    return str(attrs.get(WEIGHT_FORMAT, "float32"))


def f32(a: Any) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32)


def rcell(kind: str, attrs: Mapping[str, Any], arrays: list[np.ndarray], **extra: Any) -> Any:
    return _engine.RCell(
        kind,
        int(attrs["input_size"]),
        int(attrs["hidden_size"]),
        int(attrs.get("num_layers", 1)),
        [np.ascontiguousarray(a) for a in arrays],
        weight_format=weight_format(attrs),
        **extra,
    )


def layer_count(state: Mapping[str, np.ndarray], pattern: str, where: str) -> int:
    """How many consecutive layers l = 0, 1, ... have ``pattern.format(l)`` keys."""
    n = 0
    while pattern.format(n) in state:
        n += 1
        if n > MAX_LAYERS:
            raise ModelFormatError(f"{where}: more than {MAX_LAYERS} layers")
    if n == 0:
        raise ModelFormatError(f"{where}: no {pattern.format(0)}")
    return n


def matrix(state: Mapping[str, np.ndarray], key: str, where: str, rank: int = 2) -> np.ndarray:
    value = state.get(key)
    if value is None:
        raise ModelFormatError(f"{where}: missing {key}")
    if np.ndim(value) != rank:
        raise ModelFormatError(f"{where}: {key} has shape {np.shape(value)}, not rank {rank}")
    return value


def float_weights(state: Mapping[str, np.ndarray], skip: tuple[str, ...] = ()) -> dict:
    """The state_dict's weights as float32 attributes (``skip``: keys that are sizes)."""
    out = {}
    for k, v in state.items():
        if k in skip:
            continue
        arr = np.asarray(v)
        if arr.dtype.kind != "f":
            raise ModelFormatError(f"{k} is {arr.dtype}, not a floating-point weight")
        out[k] = f32(arr)
    return out
