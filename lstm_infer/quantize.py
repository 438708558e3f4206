"""bf16 and int8 weights: fewer bytes per weight for the bandwidth-bound streaming path.

``bfloat16`` rounds each weight to nearest-even bf16; ``int8`` rounds each output row (one gate
of one unit) symmetrically to [-127, 127] with its own fp32 scale.

bf16 products accumulate in fp32 with fp32 activations: widened weights (error: the weights'
rounding alone), or bf16 dot products (VDPBF16PS, AMX tiles) on activations split into two
bf16 halves, which adds up to ~2**-16 relative error per activation, far below the weights'
2**-9. Whole sequences at batch >= 8 on tables with a bf16 dot product round activations to
one bf16 instead (VDPBF16PS, or AMX TDPBF16PS tiles), where the products are compute-bound.
int8 products also quantize each row of activations per step (code = round(x * 127 /
max|x|), scale max|x| / 127) and sum code products exactly in int32 (VPDPBUSD, AMX TDPBSSD
tiles for batches on the amx table, ...); every kernel table computes the same integers, and
whole sequences quantize their inputs the same way, so ``run`` and stepping agree to float
rounding.

The internal model keeps the dequantized weights (exactly representable in fp32), so a
quantized model saves, loads and recompiles to the same packed weights.
"""

from __future__ import annotations

import copy

import numpy as np

from lstm_infer._spec import ModelSpec, folds_embedding
from lstm_infer.errors import ModelFormatError

WEIGHT_FORMATS = ("float32", "bfloat16", "int8")
_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "i8": "int8"}


def canonical_format(name: str) -> str:
    """'bf16' -> 'bfloat16', 'int8' -> 'int8', ...; ModelFormatError for anything else."""
    fmt = _ALIASES.get(str(name).lower(), str(name).lower())
    if fmt not in WEIGHT_FORMATS:
        raise ModelFormatError(f"weight format must be 'bf16' or 'int8' (or 'fp32'), got {name!r}")
    return fmt


def to_bf16_bits(m: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(m, np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    nan = np.isnan(m)
    rounded = np.where(nan, (bits >> 16) | 0x40, rounded)
    return rounded.astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def int8_rows(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: (q (rows, K) int8, scale (rows,) float32), m ~= q * scale."""
    m = np.ascontiguousarray(m, np.float32)
    peak = np.abs(m).max(axis=1) if m.shape[1] else np.zeros(m.shape[0], np.float32)
    scale = np.where(peak > 0, peak / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(m / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def dequantize(m: np.ndarray, fmt: str) -> np.ndarray:
    """The fp32 values the kernels will use for ``m`` in format ``fmt``."""
    if fmt == "bfloat16":
        return from_bf16_bits(to_bf16_bits(m))
    if fmt == "int8":
        q, scale = int8_rows(m)
        return (q.astype(np.float32) * scale[:, None]).astype(np.float32)
    return np.ascontiguousarray(m, np.float32)


def quantize_spec(spec: ModelSpec, fmt: str) -> ModelSpec:
    """A copy of ``spec`` whose recurrent layers use weight format ``fmt``.

    Embedding and dense head stay float32 (they are read once per token, not per unit), and
    so do the first layer's input weights when the embedding folds into a token table
    (folds_embedding): the step then reads one table row, not the weights.
    """
    fmt = canonical_format(fmt)
    new = copy.deepcopy(spec)
    for i, layer in enumerate(new.layers):
        keep_w = i == 0 and folds_embedding(new.embedding, layer)
        if layer.weight_format != "float32" and fmt != layer.weight_format:
            raise ModelFormatError(
                f"layer is already {layer.weight_format}; quantize the float32 model instead"
            )
        layer.weight_format = fmt
        for d in layer.directions:
            if not keep_w:
                d.w = dequantize(d.w, fmt)
            # Per-row quantization is row-local, so quantizing all of R equals quantizing the
            # GRU's z,r and n blocks separately as the plan packs them.
            d.r = dequantize(d.r, fmt)
            if d.proj is not None:
                d.proj = dequantize(d.proj, fmt)
    return new
