"""Compile the internal model description into kernel plans: packed weights, C descriptors.

Runs once per model at load time; nothing here is on the per-step path.
"""

from __future__ import annotations

import numpy as np

from lstm_infer import _engine
from lstm_infer._spec import GATES, DirectionWeights, RecurrentLayer, folds_embedding
from lstm_infer.errors import ModelFormatError
from lstm_infer.quantize import int8_rows, to_bf16_bits

BLOCK = _engine.BLOCK
# VPDPBUSD sums (activation code + 128) * weight code: 255 * 127 * K must stay below 2**31.
INT8_MAX_INPUTS = 65536


def _aligned_empty(shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """A C-contiguous array whose data starts on a 64-byte boundary."""
    n = int(np.prod(shape))
    size = np.dtype(dtype).itemsize
    raw = np.empty(n + 64 // size, dtype=dtype)
    offset = (-raw.ctypes.data % 64) // size
    return raw[offset : offset + n].reshape(shape)


def pack_gate_blocks(
    m: np.ndarray, gates: int, dtype: type = np.float32, pair: int = 1
) -> np.ndarray:
    """Pack a (G*H, K) matrix into [ceil(H/BLOCK)][ceil(K/pair)][G][BLOCK][pair], zero padded.

    The layout the packed products stream: one block holds every gate of BLOCK units, with
    ``pair`` consecutive inputs of a unit side by side (1 for float32, 2 for bfloat16 and 4
    for int8: the operand widths of VDPBF16PS and VPDPBUSD).
    """
    gh, k = m.shape
    h = gh // gates
    hp = -(-h // BLOCK) * BLOCK
    kp = -(-k // pair) * pair
    padded = np.zeros((gates, hp, kp), dtype=dtype)
    padded[:, :h, :k] = m.reshape(gates, h, k)
    blocks = padded.reshape(gates, hp // BLOCK, BLOCK, kp // pair, pair).transpose(1, 3, 0, 2, 4)
    out = _aligned_empty(blocks.shape, dtype)
    out[...] = blocks
    return out


def _pad_gate_vector(v: np.ndarray, gates: int, dtype: type = np.float32) -> np.ndarray:
    """(G*H,) -> (G*Hp,) with each gate's units zero padded to a whole number of blocks."""
    h = v.shape[0] // gates
    hp = -(-h // BLOCK) * BLOCK
    out = np.zeros((gates, hp), dtype=dtype)
    out[:, :h] = v.reshape(gates, h)
    return out.reshape(-1)


def _f32(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.ascontiguousarray(a, dtype=np.float32)


def _is_fast_path(layer: RecurrentLayer, dw: DirectionWeights) -> bool:
    """True when the ISA kernels' built-in activations match the direction's."""
    names = tuple(a.name for a in dw.activations)
    if layer.cell == "rnn":
        return names in (("Tanh",), ("Relu",))
    if layer.cell == "lstm":
        return names == ("Sigmoid", "Tanh", "Tanh")
    return names == ("Sigmoid", "Tanh")


def _pack(m: np.ndarray, gates: int, fmt: str) -> dict[str, np.ndarray | None]:
    """Packed weights in format ``fmt`` and, for int8, the padded per-row scales and code sums.

    Keys: "packed", "scale", "rowsum" (the last two None unless int8).
    """
    if fmt == "int8":
        if m.shape[1] > INT8_MAX_INPUTS:
            raise ModelFormatError(
                f"int8 weights support at most {INT8_MAX_INPUTS} inputs per row (the int32 "
                f"sums of byte products must not overflow), got {m.shape[1]}"
            )
        q, scale = int8_rows(m)
        rowsum = q.astype(np.int32).sum(axis=1, dtype=np.int32)
        return {
            "packed": pack_gate_blocks(q, gates, np.int8, pair=4),
            "scale": _pad_gate_vector(scale, gates),
            "rowsum": _pad_gate_vector(rowsum, gates, np.int32),
        }
    if fmt == "bfloat16":
        packed = to_bf16_bits(pack_gate_blocks(m, gates, pair=2))
    else:
        packed = pack_gate_blocks(m, gates)
    return {"packed": packed, "scale": None, "rowsum": None}


def token_table(embedding: np.ndarray, dw: DirectionWeights, gates: int) -> np.ndarray:
    """(vocab, G*Hp) float32: ``W emb[v] + bias`` per token, gate-padded like the kernels'.

    Computed in float64 and rounded once, from the direction's float32 ``w`` (the first
    layer's input weights stay float32 in a quantized model, see quantize.py).
    """
    proj = embedding.astype(np.float64) @ dw.w.astype(np.float64).T + dw.bias.astype(np.float64)
    vocab = proj.shape[0]
    h = proj.shape[1] // gates
    hp = -(-h // BLOCK) * BLOCK
    out = _aligned_empty((vocab, gates * hp))
    view = out.reshape(vocab, gates, hp)
    view[...] = 0.0
    view[:, :, :h] = proj.reshape(vocab, gates, h)
    return out


# The arrays of a CellPlan that a RecurrentLayer's own weights do not already hold: the
# packed layouts and what goes with them. Native files may store them (plans.*), so that a
# memory-mapped load builds the plan on the file's pages instead of packing a private copy.
_PAIR = {"float32": 1, "bfloat16": 2, "int8": 4}
_PACKED_DTYPE = {"float32": np.float32, "bfloat16": np.uint16, "int8": np.int8}


def _matrices(layer: RecurrentLayer, dw: DirectionWeights) -> dict[str, tuple[np.ndarray, int]]:
    """name -> (the matrix the kernels pack, its gate count)."""
    g, h = GATES[layer.cell], layer.hidden_size
    w, r = _f32(dw.w), _f32(dw.r)
    mats = {"w": (w, g), "r": (r, g)}
    if dw.proj is not None:
        mats["proj"] = (_f32(dw.proj), 1)
    if layer.cell == "gru":
        # z and r share one pass over h; n needs its own (it may read r * h).
        mats["r"] = (np.ascontiguousarray(r[: 2 * h]), 2)
        mats["rn"] = (np.ascontiguousarray(r[2 * h :]), 1)
    return mats


def derived_arrays(
    layer: RecurrentLayer, d: int, embedding: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The packed arrays of direction ``d`` (see derived_shapes), computed."""
    dw = layer.directions[d]
    g, fmt = GATES[layer.cell], layer.weight_format
    out: dict[str, np.ndarray] = {"bias_packed": _pad_gate_vector(_f32(dw.bias), g)}
    for name, (m, gates) in _matrices(layer, dw).items():
        for key, arr in _pack(m, gates, fmt).items():
            if arr is not None:
                out[f"{name}_{key}"] = arr
    if folds_embedding(embedding, layer):
        out["token_table"] = token_table(embedding, dw, g)
    return out


def derived_shapes(
    layer: RecurrentLayer, d: int, embedding: np.ndarray | None = None
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The shape and dtype of every array derived_arrays makes, from the sizes alone (to
    check arrays a file stores without packing anything)."""
    dw = layer.directions[d]
    g, fmt = GATES[layer.cell], layer.weight_format
    pair = _PAIR[fmt]

    def padded(rows: int, gates: int) -> int:
        return gates * (-(-(rows // gates) // BLOCK) * BLOCK)

    gh = padded(g * layer.hidden_size, g)
    out = {"bias_packed": ((gh,), np.dtype(np.float32))}
    for name, (m, gates) in _matrices(layer, dw).items():
        rows, k = m.shape
        if fmt == "int8" and k > INT8_MAX_INPUTS:  # as _pack refuses it
            raise ModelFormatError(
                f"int8 weights support at most {INT8_MAX_INPUTS} inputs per row, got {k}"
            )
        hp = padded(rows, gates) // gates
        shape = (hp // BLOCK, -(-k // pair), gates, BLOCK, pair)
        out[f"{name}_packed"] = (shape, np.dtype(_PACKED_DTYPE[fmt]))
        if fmt == "int8":
            out[f"{name}_scale"] = ((gates * hp,), np.dtype(np.float32))
            out[f"{name}_rowsum"] = ((gates * hp,), np.dtype(np.int32))
    if folds_embedding(embedding, layer):
        out["token_table"] = ((embedding.shape[0], gh), np.dtype(np.float32))
    return out


def compile_direction(
    layer: RecurrentLayer,
    d: int,
    embedding: np.ndarray | None = None,
    stored: dict[str, np.ndarray] | None = None,
) -> _engine.CellPlan:
    """Build the CellPlan of direction ``d`` of ``layer``.

    ``embedding`` (first layer only): fold it into a token table when folds_embedding says so.
    ``stored``: the derived arrays already made (read from a native file, checked against
    derived_shapes by the caller) instead of packing them here.
    """
    dw = layer.directions[d]
    h = layer.hidden_size
    fmt = layer.weight_format
    arrays: dict[str, np.ndarray | None] = {
        "w": _f32(dw.w),
        "r": _f32(dw.r),
        "bias": _f32(dw.bias),
        "peephole": _f32(dw.peephole),
        "proj": _f32(dw.proj),
        "bias_rn": _f32(dw.bias_rn) if layer.linear_before_reset else None,
    }
    arrays.update(derived_arrays(layer, d, embedding) if stored is None else stored)
    acts = [(a.code, a.alpha, a.beta) for a in dw.activations]
    return _engine.CellPlan(
        layer.cell,
        layer.input_size,
        h,
        layer.state_size,
        arrays,
        float(layer.clip) if layer.clip else 0.0,
        bool(layer.input_forget),
        bool(layer.linear_before_reset),
        _is_fast_path(layer, dw),
        acts,
        fmt,
    )


def compile_layer(
    layer: RecurrentLayer,
    embedding: np.ndarray | None = None,
    stored: list[dict[str, np.ndarray]] | None = None,
) -> list[_engine.CellPlan]:
    """One CellPlan per direction (``embedding``, ``stored``: see compile_direction)."""
    return [
        compile_direction(layer, d, embedding, None if stored is None else stored[d])
        for d in range(layer.num_directions)
    ]
