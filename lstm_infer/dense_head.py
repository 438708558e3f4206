"""The dense layers after a recurrent stack, compiled: one product per layer over every row.

A head ``y = act(x W^T + b)`` applied to a whole sequence multiplies all T*B rows at once, so
its weight (33 MB for a 1024 -> 8210 CTC head) is read once per call, not once per timestep as
numpy's matmul over a (T, B, F) stack did. Two products, chosen by the number of rows:

* few rows (streams, short sequences): the packed matvec of the recurrent layers over the
  weight packed as 4 gate blocks of 16 outputs; each block (K x 64 floats, 256 KB at K=1024)
  is read from memory once and reused from cache by every tile of rows. Threads split the
  blocks. Measured (Zen 4, one thread, 1024 -> 8210): 1 row 0.84 ms vs 7.8 ms for OpenBLAS's
  sgemm, 20 rows 3.6 vs 10.3 ms;
* many rows: one sgemm through the engine's BLAS (``lstm_infer.runtime.threads`` sets its
  thread count to the caller's budget), which wins once the product is compute-bound.

Activations run in place; softmax and log-softmax in one kernel per row (``softmax_rows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lstm_infer import _engine
from lstm_infer._plan import pack_gate_blocks
from lstm_infer._spec import LEAKY_RELU_SLOPE, DenseLayer
from lstm_infer.runtime.threads import blas_threads, thread_pool

# The packed weight's "gates": output blocks of 4 x 16 features share each broadcast input.
PACKED_GATES = 4
_GROUP = PACKED_GATES * _engine.BLOCK
# Rows up to which the packed product beats sgemm (measured with bench/large_head.py: from
# ~1.5x at 20 rows to par at ~300 rows for a 33 MB weight; small weights turn over earlier).
PACKED_MAX_ROWS = 48
PACKED_MAX_ROWS_LARGE = 256
LARGE_WEIGHT_BYTES = 4 << 20
# Multiply-adds from which splitting a product's blocks over threads pays (the hand-off
# costs ~20-50 us).
SPLIT_MIN_WORK = 20_000_000


@dataclass(frozen=True)
class CompiledDense:
    """One dense layer, ready for both products.

    weight (out, in) and bias (out,) C-contiguous float32 for sgemm; packed the weight padded
    to ``4 * Hp`` rows (Hp a multiple of 16) in the matvec's block layout, bias_padded (4*Hp,).
    """

    weight: np.ndarray
    bias: np.ndarray | None
    activation: str | None
    packed: np.ndarray
    bias_padded: np.ndarray

    @classmethod
    def of(cls, dense: DenseLayer, stored: tuple | None = None) -> CompiledDense:
        """Compile ``dense``; ``stored`` = (packed, bias_padded) already made (from a native
        file, checked against packed_head_shapes) instead of packing here."""
        w = np.ascontiguousarray(dense.weight, np.float32)
        if stored is not None:
            b = None if dense.bias is None else np.ascontiguousarray(dense.bias, np.float32)
            return cls(w, b, dense.activation, stored[0], stored[1])
        b = None if dense.bias is None else np.ascontiguousarray(dense.bias, np.float32)
        out = w.shape[0]
        padded_out = -(-out // _GROUP) * _GROUP
        w_padded = np.zeros((padded_out, w.shape[1]), np.float32)
        w_padded[:out] = w
        b_padded = np.zeros(padded_out, np.float32)
        if b is not None:
            b_padded[:out] = b
        packed = pack_gate_blocks(w_padded, PACKED_GATES)
        return cls(w, b, dense.activation, packed, b_padded)

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def uses_packed(self, rows: int) -> bool:
        if rows <= PACKED_MAX_ROWS:
            return True
        return self.weight.nbytes >= LARGE_WEIGHT_BYTES and rows <= PACKED_MAX_ROWS_LARGE

    def forward(self, x: np.ndarray, threads: int) -> np.ndarray:
        """act(x W^T + b) for x (rows, in) C-contiguous float32 -> (rows, out)."""
        rows, out = x.shape[0], self.out_features
        if not self.uses_packed(rows):
            res = np.empty((rows, out), np.float32)
            with blas_threads(threads):
                _engine.dense(x, self.weight, self.bias, res)
            _activate(res, self.activation, out)
            return res
        padded = np.empty((rows, self.bias_padded.shape[0]), np.float32)
        nblk = self.packed.shape[0]
        parts = min(threads, nblk) if rows * out * x.shape[1] >= SPLIT_MIN_WORK else 1
        if parts <= 1:
            _engine.dense_packed(self.packed, PACKED_GATES, x, self.bias_padded, padded)
        else:
            edges = [nblk * i // parts for i in range(parts + 1)]
            pool = thread_pool(threads)
            jobs = [
                pool.submit(
                    _engine.dense_packed,
                    self.packed,
                    PACKED_GATES,
                    x,
                    self.bias_padded,
                    padded,
                    a,
                    b,
                )
                for a, b in zip(edges[1:-1], edges[2:])
            ]
            try:
                _engine.dense_packed(
                    self.packed, PACKED_GATES, x, self.bias_padded, padded, edges[0], edges[1]
                )
            finally:
                for job in jobs:
                    job.result()
        _activate(padded, self.activation, out)
        return padded if padded.shape[1] == out else np.ascontiguousarray(padded[:, :out])


def compile_head(
    head: Sequence[DenseLayer], stored: Sequence[tuple] | None = None
) -> tuple[CompiledDense, ...]:
    return tuple(
        CompiledDense.of(d, None if stored is None else stored[i]) for i, d in enumerate(head)
    )


def packed_head_shapes(dense: DenseLayer) -> tuple[tuple[tuple, str], tuple[tuple, str]]:
    """The shapes CompiledDense.of gives ``packed`` and ``bias_padded`` for ``dense``."""
    out, k = np.shape(dense.weight)
    padded_out = -(-out // _GROUP) * _GROUP
    blocks = padded_out // PACKED_GATES // _engine.BLOCK
    return ((blocks, k, PACKED_GATES, _engine.BLOCK, 1), "packed"), ((padded_out,), "bias_padded")


def _activate(y: np.ndarray, activation: str | None, n: int) -> None:
    """Apply a head activation in place to the first ``n`` columns of float32 (rows, ld)."""
    if activation is None:
        return
    if activation in ("softmax", "log_softmax"):
        _engine.softmax_rows(y, activation == "log_softmax", n)
        return
    v = y if y.shape[1] == n else y[:, :n]
    if activation == "relu":
        np.maximum(v, 0.0, out=v)
    elif activation == "leaky_relu":
        # max(v, slope * v) is v for v >= 0 and slope * v below (slope < 1); NaN stays NaN
        np.maximum(v, v * np.float32(LEAKY_RELU_SLOPE), out=v)
    elif activation == "tanh":
        np.tanh(v, out=v)
    elif activation == "sigmoid":
        # 1 / (1 + exp(-v)); exp overflows to inf for v < -88, giving the right 0.
        np.negative(v, out=v)
        with np.errstate(over="ignore"):
            np.exp(v, out=v)
        v += 1.0
        np.reciprocal(v, out=v)
    else:  # ModelSpec.validate refuses any other name before a model is compiled
        raise AssertionError(f"unknown head activation {activation!r}")


def apply_head(y: np.ndarray, head: Sequence[CompiledDense], threads: int = 1) -> np.ndarray:
    """Run the dense layers on the last axis of ``y`` (any leading shape).

    Parameters
    ----------
    y : float32 array (..., in_features)
    head : the compiled layers, in order
    threads : int
        Threads (and BLAS threads) the products may use.

    Returns
    -------
    float32 array (..., out_features), C-contiguous
    """
    lead = y.shape[:-1]
    x = np.ascontiguousarray(y, np.float32).reshape(-1, y.shape[-1])
    for dense in head:
        x = dense.forward(x, threads)
    return x.reshape(*lead, x.shape[-1])
