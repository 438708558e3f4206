"""ONNX RNN/LSTM/GRU operator tensors and attributes -> the internal RecurrentLayer.

Shared by the ONNX importer and the numpy constructor (Model.from_onnx_weights). ONNX gate
orders: LSTM i, o, f, c (P: i, o, f); GRU z, r, h; converted here once to the internal ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lstm_infer._spec import (
    ACTIVATION_SLOTS,
    DEFAULT_ACTIVATIONS,
    GATES,
    Activation,
    DirectionWeights,
    RecurrentLayer,
)
from lstm_infer.errors import ModelFormatError

RECURRENT_OPS = {"RNN": "rnn", "LSTM": "lstm", "GRU": "gru"}
# Every attribute the ONNX RNN/LSTM/GRU operators define (opsets 7 to 22).
RECURRENT_ATTRIBUTES = frozenset(
    {
        "activations",
        "activation_alpha",
        "activation_beta",
        "clip",
        "direction",
        "hidden_size",
        "input_forget",
        "linear_before_reset",
        "layout",
    }
)

# Internal gate k takes ONNX gate block ONNX_GATE_ORDER[cell][k].
ONNX_GATE_ORDER = {"rnn": (0,), "lstm": (0, 2, 3, 1), "gru": (0, 1, 2)}
ONNX_PEEPHOLE_ORDER = (0, 2, 1)  # internal i, f, o from ONNX i, o, f

USES_ALPHA = {"Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh", "HardSigmoid", "Elu"}
USES_BETA = {"Affine", "ScaledTanh", "HardSigmoid"}


def parse_activations(
    cell: str,
    num_directions: int,
    names: Sequence[str] | None,
    alphas: Sequence[float] | None,
    betas: Sequence[float] | None,
) -> list[tuple[Activation, ...]]:
    """Split ONNX's flat activation lists into one tuple per direction.

    alpha and beta values are consumed in order by the activations that take them (as
    onnxruntime does); missing ones take the ONNX defaults.
    """
    slots = ACTIVATION_SLOTS[cell]
    if not names:
        names = list(DEFAULT_ACTIVATIONS[cell]) * num_directions
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(names) == slots and num_directions == 2:
        names = names * 2
    if len(names) != slots * num_directions:
        raise ModelFormatError(
            f"{cell.upper()} with {num_directions} direction(s) takes {slots * num_directions} "
            f"activations, got {len(names)}: {names}"
        )
    alpha_it = iter(list(alphas or []))
    beta_it = iter(list(betas or []))
    acts = []
    for name in names:
        probe = Activation.make(name)
        alpha = next(alpha_it, None) if probe.name in USES_ALPHA else None
        beta = next(beta_it, None) if probe.name in USES_BETA else None
        acts.append(Activation.make(name, alpha, beta))
    return [tuple(acts[d * slots : (d + 1) * slots]) for d in range(num_directions)]


def _reorder(m: np.ndarray, cell: str, h: int) -> np.ndarray:
    """Reorder the gate blocks (axis 0, G blocks of h rows) from ONNX to internal order."""
    return np.concatenate([m[g * h : (g + 1) * h] for g in ONNX_GATE_ORDER[cell]], axis=0)


def _as_f32(name: str, a: object) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiu":
        raise ModelFormatError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def layer_from_onnx(
    cell: str,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None = None,
    P: np.ndarray | None = None,
    *,
    hidden_size: int | None = None,
    direction: str = "forward",
    activations: Sequence[str] | None = None,
    activation_alpha: Sequence[float] | None = None,
    activation_beta: Sequence[float] | None = None,
    clip: float | None = None,
    input_forget: int = 0,
    linear_before_reset: int = 0,
) -> RecurrentLayer:
    """Build a RecurrentLayer from ONNX-convention tensors (shapes as in the ONNX spec)."""
    cell = cell.lower()
    if cell not in GATES:
        raise ModelFormatError(f"cell must be 'rnn', 'lstm' or 'gru', got {cell!r}")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ModelFormatError(
            f"direction must be forward, reverse or bidirectional, got {direction!r}"
        )
    nd = 2 if direction == "bidirectional" else 1
    g = GATES[cell]
    W = _as_f32("W", W)
    R = _as_f32("R", R)
    if W.ndim != 3 or R.ndim != 3:
        raise ModelFormatError(f"W and R must be 3-D, got shapes {W.shape} and {R.shape}")
    if W.shape[0] != nd or R.shape[0] != nd:
        raise ModelFormatError(
            f"direction {direction!r} needs W and R with {nd} direction(s) on axis 0; got "
            f"W {W.shape}, R {R.shape}"
        )
    h = hidden_size if hidden_size else R.shape[-1]
    if h <= 0 or W.shape[1] != g * h or R.shape[1:] != (g * h, h):
        raise ModelFormatError(
            f"{cell.upper()} with hidden_size={h}: W must be ({nd}, {g * h}, input_size) and R "
            f"({nd}, {g * h}, {h}); got W {W.shape}, R {R.shape}"
        )
    in_size = W.shape[2]
    if B is not None:
        B = _as_f32("B", B)
        if B.shape != (nd, 2 * g * h):
            raise ModelFormatError(f"B must have shape ({nd}, {2 * g * h}), got {B.shape}")
    if P is not None:
        if cell != "lstm":
            raise ModelFormatError("peepholes (P) exist only for LSTM")
        P = _as_f32("P", P)
        if P.shape != (nd, 3 * h):
            raise ModelFormatError(f"P must have shape ({nd}, {3 * h}), got {P.shape}")
    if input_forget and cell != "lstm":
        raise ModelFormatError("input_forget exists only for LSTM")
    if linear_before_reset and cell != "gru":
        raise ModelFormatError("linear_before_reset exists only for GRU")
    if clip is not None and not (np.isfinite(clip) and clip > 0):
        raise ModelFormatError(f"clip must be a positive finite number, got {clip}")
    acts = parse_activations(cell, nd, activations, activation_alpha, activation_beta)
    dirs = []
    for d in range(nd):
        wb = B[d, : g * h] if B is not None else np.zeros(g * h, np.float32)
        rb = B[d, g * h :] if B is not None else np.zeros(g * h, np.float32)
        bias_rn = None
        if cell == "gru" and linear_before_reset:
            bias = np.concatenate([wb[: 2 * h] + rb[: 2 * h], wb[2 * h :]])
            bias_rn = rb[2 * h :].copy()
        else:
            bias = wb + rb
        peephole = None
        if P is not None:
            peephole = np.stack([P[d, k * h : (k + 1) * h] for k in ONNX_PEEPHOLE_ORDER])
        dirs.append(
            DirectionWeights(
                w=_reorder(W[d], cell, h),
                r=_reorder(R[d], cell, h),
                bias=_reorder(bias, cell, h),
                activations=acts[d],
                bias_rn=bias_rn,
                peephole=peephole,
            )
        )
    layer = RecurrentLayer(
        cell=cell,
        input_size=int(in_size),
        hidden_size=int(h),
        direction=direction,
        directions=dirs,
        clip=float(clip) if clip is not None else None,
        input_forget=bool(input_forget),
        linear_before_reset=bool(linear_before_reset),
    )
    layer.validate()
    return layer


def layer_from_node_attributes(
    cell: str,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None,
    P: np.ndarray | None,
    attrs: dict,
) -> RecurrentLayer:
    """layer_from_onnx with the operator's attributes as a node holds them (strings may still
    be bytes; absent ones take the ONNX defaults)."""

    def text(value: object) -> object:
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, list):
            return [v.decode() if isinstance(v, bytes) else v for v in value]
        return value

    return layer_from_onnx(
        cell,
        W,
        R,
        B,
        P,
        hidden_size=attrs.get("hidden_size"),
        direction=text(attrs.get("direction")) or "forward",
        activations=text(attrs.get("activations")),
        activation_alpha=attrs.get("activation_alpha"),
        activation_beta=attrs.get("activation_beta"),
        clip=attrs.get("clip"),
        input_forget=attrs.get("input_forget", 0),
        linear_before_reset=attrs.get("linear_before_reset", 0),
    )
