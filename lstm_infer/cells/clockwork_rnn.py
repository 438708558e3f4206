"""The clockwork RNN of CELLS.md (Koutnik et al. 2014):

    active m:   h_m,t = tanh(W_m x_t + b_m + sum_{n >= m} R_mn h_n,t-1)
    inactive m: h_m,t = h_m,t-1

The H units form ``len(periods)`` equal modules; module m is active at step t iff
``t % periods[m] == 0``. Keys: ``weight_ih`` (H, I), ``weight_hh`` (H, H) (entries below the
block upper triangle ignored), ``bias`` (H), ``periods`` (an int64 buffer, ascending; an
attribute here, a list of ints). State: h (1, B, H) and each row's step counter t (B,), held
as ``t mod lcm(periods)`` in float32 (exact: the lcm is refused above 2**24). A zero state
is the start of a sequence, so ``Stream.reset()`` zeroes h and sets t = 0. Runs on
src_c/cell_clockwork_rnn.c, which computes only the active modules' rows, each over the
columns of modules n >= m (input projection and recurrence in one packed matvec).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from lstm_infer._plan import _aligned_empty
from lstm_infer.cells.base import (
    CellDef,
    Shape,
    f32,
    float_weights,
    gate_vector_padded,
    matrix,
    packed,
    padded,
    rcell,
    weight_format,
)
from lstm_infer.errors import ModelFormatError

WHAT = "ClockworkRNN"
MAX_MODULES = 64  # LI_RCELL_MAX_MODULES
MAX_LCM = 1 << 24  # the counter is a float32 holding t mod lcm: exact below 2**24


def check_periods(periods: Any, hidden: int) -> list[int]:
    """The periods as a list of ints, after checking them against CELLS.md's rules."""
    if not isinstance(periods, (list, tuple)) or not periods:
        raise ModelFormatError(f"{WHAT}: periods {periods!r} is not a non-empty list of ints")
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in periods):
        raise ModelFormatError(f"{WHAT}: periods {periods!r} are not all ints")
    out = list(periods)
    if any(p < 1 for p in out):
        raise ModelFormatError(f"{WHAT}: periods {out} must be positive")
    if any(a >= b for a, b in zip(out, out[1:])):
        raise ModelFormatError(f"{WHAT}: periods {out} must be ascending")
    if len(out) > MAX_MODULES:
        raise ModelFormatError(f"{WHAT}: {len(out)} periods (modules); at most {MAX_MODULES}")
    if isinstance(hidden, int) and hidden % len(out):
        raise ModelFormatError(
            f"{WHAT}: hidden_size {hidden} is not divisible by the {len(out)} modules (periods)"
        )
    lcm = math.lcm(*out)
    if lcm > MAX_LCM:
        raise ModelFormatError(
            f"{WHAT}: the periods' least common multiple {lcm} exceeds 2**24 (the step "
            "counter would not be exact)"
        )
    return out


def read(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    w = matrix(state, "weight_ih", WHAT)
    hidden = w.shape[0]  # weight_hh and bias are then checked against it, key by key
    if "periods" not in state:
        raise ModelFormatError(f"{WHAT}: missing periods")
    periods = np.asarray(state["periods"])
    if periods.dtype.kind not in "iu":
        raise ModelFormatError(f"{WHAT}: periods is {periods.dtype}, not an integer tensor")
    if periods.ndim != 1:
        raise ModelFormatError(f"{WHAT}: periods has shape {periods.shape}, not (modules,)")
    return {
        "input_size": int(w.shape[1]),
        "hidden_size": int(hidden),
        "periods": check_periods([int(p) for p in periods], int(hidden)),
        **float_weights(state, skip=("periods",)),
    }


def expected(a: Mapping[str, Any]) -> dict[str, Shape]:
    h, i = a["hidden_size"], a["input_size"]
    check_periods(a.get("periods"), h)
    return {"weight_ih": (h, i), "weight_hh": (h, h), "bias": (h,)}


def state_shapes(a: Mapping[str, Any], batch: int) -> list[Shape]:
    return [(1, batch, a["hidden_size"]), (batch,)]


def _concat_aligned(parts: list[np.ndarray]) -> np.ndarray:
    out = _aligned_empty((sum(p.size for p in parts),), parts[0].dtype)
    at = 0
    for p in parts:
        out[at : at + p.size] = p.reshape(-1)
        at += p.size
    return out


def module_gates(k: int) -> int:
    """The gates a module of k units is split into, so the packed matvec keeps several
    accumulator chains (src_c/cell_clockwork_rnn.c's rule: 4 or 2 when that adds no
    padding, else 1)."""
    for gates in (4, 2):
        if k % gates == 0 and gates * padded(k // gates) <= padded(k):
            return gates
    return 1


def compile_cell(a: Mapping[str, Any]) -> Any:
    """The arrays of src_c/cell_clockwork_rnn.c's layout: per module m its rows of
    [W | R restricted to the columns of modules n >= m], packed in G gates, and its bias."""
    hidden = a["hidden_size"]
    periods = check_periods(a["periods"], hidden)
    modules, k = len(periods), hidden // len(periods)
    gates = module_gates(k)
    w, r, b = f32(a["weight_ih"]), f32(a["weight_hh"]), f32(a["bias"])
    rows = [slice(m * k, (m + 1) * k) for m in range(modules)]
    fmt = weight_format(a)
    blocks = [
        packed(np.hstack([w[rows[m]], r[rows[m], m * k :]]), gates, fmt) for m in range(modules)
    ]
    arrays = [
        np.asarray([*periods, math.lcm(*periods)], np.int32),  # the periods, then their lcm
        _concat_aligned(blocks),
        np.concatenate([gate_vector_padded(b[rows[m]], gates) for m in range(modules)]),
    ]
    return rcell("clockwork_rnn", a, arrays, modules=modules)


CELL = CellDef(
    op="ClockworkRNN",
    kind="clockwork_rnn",
    states=("h", "t"),
    marker="periods",
    sizes=("input_size", "hidden_size", "periods"),
    read=read,
    expected=expected,
    state_shapes=state_shapes,
    compile=compile_cell,
    doc="clockwork RNN (modules at their own periods; only the active ones computed)",
)
