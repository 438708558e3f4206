"""Plain numpy reference for the ONNX RNN, LSTM and GRU operators (opsets 7..22).

Written straight from the operator equations in the ONNX spec and computed in float64, so it
shares no code and no rounding with the engine. Every function takes ONNX-shaped tensors in ONNX
gate order (RNN: one gate; LSTM: W/R/B in ``iofc``, P in ``iof``; GRU: ``zrh``) and returns
float64 arrays in the operator's output layout.

Where the spec is silent or ambiguous this module follows onnxruntime, the runtime the engine
is validated against (``tests/test_reference_vs_onnxruntime.py`` pins each point):

* ``clip`` bounds every activation *input* -- the full gate pre-activation after bias and
  peephole terms are added. It is not applied to the cell state before ``h(C_t)``.
* ``activation_alpha`` / ``activation_beta`` are consumed in activation order, and only by the
  activations that take the parameter (Affine, LeakyRelu, ThresholdedRelu, ScaledTanh,
  HardSigmoid, Elu take alpha; Affine, ScaledTanh, HardSigmoid take beta).
* ``sequence_lens``: ``Y`` is zero at and after a row's length; ``Y_h``/``Y_c`` hold the state
  after the row's last valid step; the reverse direction starts at each row's own last valid
  step (from the initial state). A row of length 0 reports zeros in ``Y_h``/``Y_c`` (what
  onnxruntime does for all three cells) unless ``zero_length_state="initial"`` is passed.

Where onnxruntime deviates from the spec, the spec wins: unset alpha/beta take the defaults of
the corresponding ONNX operators (``ACTIVATION_DEFAULTS``; onnxruntime uses 0 for Affine,
ThresholdedRelu and ScaledTanh), and ThresholdedRelu keeps ``x >= alpha`` (onnxruntime: ``>``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Literal

import numpy as np

Array = np.ndarray
Activation = Callable[[Array], Array]
ZeroLengthState = Literal["zeros", "initial"]

# (alpha, beta) defaults: those of the same-named ONNX operators (LeakyRelu, ThresholdedRelu,
# HardSigmoid, Elu) or of the removed experimental ones (Affine, ScaledTanh). None: not used.
ACTIVATION_DEFAULTS: dict[str, tuple[float | None, float | None]] = {
    "Relu": (None, None),
    "Tanh": (None, None),
    "Sigmoid": (None, None),
    "Affine": (1.0, 0.0),
    "LeakyRelu": (0.01, None),
    "ThresholdedRelu": (1.0, None),
    "ScaledTanh": (1.0, 1.0),
    "HardSigmoid": (0.2, 0.5),
    "Elu": (1.0, None),
    "Softsign": (None, None),
    "Softplus": (None, None),
}
ACTIVATIONS: tuple[str, ...] = tuple(ACTIVATION_DEFAULTS)
_CANONICAL = {name.lower(): name for name in ACTIVATIONS}

DEFAULT_ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "RNN": ("Tanh",),
    "GRU": ("Sigmoid", "Tanh"),
    "LSTM": ("Sigmoid", "Tanh", "Tanh"),
}
GATES: dict[str, int] = {"RNN": 1, "GRU": 3, "LSTM": 4}
OUTPUT_NAMES: dict[str, tuple[str, ...]] = {
    "RNN": ("Y", "Y_h"),
    "GRU": ("Y", "Y_h"),
    "LSTM": ("Y", "Y_h", "Y_c"),
}
INPUT_NAMES: dict[str, tuple[str, ...]] = {
    "RNN": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
    "GRU": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
    "LSTM": ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"),
}


def canonical_activation(name: str | bytes) -> str:
    """Return the spec spelling of an activation name (matched case-insensitively)."""
    text = name.decode() if isinstance(name, bytes) else name
    try:
        return _CANONICAL[text.lower()]
    except KeyError:
        raise ValueError(f"unknown activation {text!r}; expected one of {ACTIVATIONS}") from None


def activation(
    name: str | bytes, alpha: float | None = None, beta: float | None = None
) -> Activation:
    """Return the float64 activation ``name`` with alpha/beta (None: the spec default)."""
    canon = canonical_activation(name)
    default_alpha, default_beta = ACTIVATION_DEFAULTS[canon]
    a = float(default_alpha if alpha is None else alpha) if default_alpha is not None else 0.0
    b = float(default_beta if beta is None else beta) if default_beta is not None else 0.0
    table: dict[str, Activation] = {
        "Relu": lambda x: np.maximum(x, 0.0),
        "Tanh": np.tanh,
        "Sigmoid": lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)),
        "Affine": lambda x: a * x + b,
        "LeakyRelu": lambda x: np.where(x >= 0.0, x, a * x),
        "ThresholdedRelu": lambda x: np.where(x >= a, x, 0.0),
        "ScaledTanh": lambda x: a * np.tanh(b * x),
        "HardSigmoid": lambda x: np.clip(a * x + b, 0.0, 1.0),
        "Elu": lambda x: np.where(x >= 0.0, x, a * np.expm1(np.minimum(x, 0.0))),
        "Softsign": lambda x: x / (1.0 + np.abs(x)),
        "Softplus": lambda x: np.logaddexp(0.0, x),
    }
    return table[canon]


def resolve_activations(
    op_type: str,
    num_directions: int,
    activations: Sequence[str | bytes] | None = None,
    activation_alpha: Sequence[float] | None = None,
    activation_beta: Sequence[float] | None = None,
) -> list[list[Activation]]:
    """Turn the activation attributes into one list of callables per direction.

    alpha and beta values are consumed in activation order by the activations that use them;
    an exhausted list leaves the remaining activations at their defaults.
    """
    per_direction = len(DEFAULT_ACTIVATIONS[op_type])
    names = list(activations or DEFAULT_ACTIVATIONS[op_type] * num_directions)
    if op_type == "RNN" and num_directions == 1 and len(names) == 2:
        names = names[:1]  # the RNN schema's own default is ["Tanh", "Tanh"]
    if len(names) != per_direction * num_directions:
        raise ValueError(
            f"{op_type} needs {per_direction * num_directions} activations, got {len(names)}"
        )
    alphas = list(activation_alpha or [])
    betas = list(activation_beta or [])
    funcs: list[Activation] = []
    for name in names:
        default_alpha, default_beta = ACTIVATION_DEFAULTS[canonical_activation(name)]
        alpha = alphas.pop(0) if default_alpha is not None and alphas else None
        beta = betas.pop(0) if default_beta is not None and betas else None
        funcs.append(activation(name, alpha, beta))
    return [funcs[d * per_direction : (d + 1) * per_direction] for d in range(num_directions)]


def _clipper(clip: float | None) -> Activation:
    if clip is None:
        return lambda x: x
    bound = float(clip)
    return lambda x: np.clip(x, -bound, bound)


def _num_directions(direction: str | bytes) -> int:
    text = direction.decode() if isinstance(direction, bytes) else direction
    if text not in ("forward", "reverse", "bidirectional"):
        raise ValueError(f"unknown direction {text!r}")
    return 2 if text == "bidirectional" else 1


def _scan(
    step: Callable[[Array, tuple[Array, ...]], tuple[Array, ...]],
    x: Array,
    lens: Array,
    state0: tuple[Array, ...],
    reverse: bool,
) -> tuple[Array, tuple[Array, ...]]:
    """Run ``step`` over time for one direction, honouring per-row lengths.

    ``step(x_t, state) -> new_state`` with ``new_state[0]`` the output h. Returns ``Y`` as
    [T, B, H] (zero past each row's length) and the state after each row's last valid step.
    """
    seq_len, batch = x.shape[:2]
    rows = np.arange(batch)
    state = tuple(s.copy() for s in state0)
    y = np.zeros((seq_len, batch, state0[0].shape[1]))
    for k in range(seq_len):
        valid = k < lens
        # reverse: row b visits lens[b]-1, ..., 0 (its own last valid step first)
        t_idx = np.where(valid, lens - 1 - k, 0) if reverse else np.full(batch, k)
        new_state = step(x[t_idx, rows], state)
        state = tuple(np.where(valid[:, None], n, s) for n, s in zip(new_state, state, strict=True))
        y[t_idx[valid], rows[valid]] = state[0][valid]
    return y, state


def _prepare(
    X: Array,
    initial_states: Sequence[Array | None],
    sequence_lens: Array | None,
    layout: int,
    num_directions: int,
    hidden_size: int,
) -> tuple[Array, list[Array], Array]:
    """Bring X / initial states to layout 0 in float64 and expand defaults."""
    x = np.asarray(X, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"X must be 3-D, got shape {x.shape}")
    if layout == 1:
        x = x.transpose(1, 0, 2)
    elif layout != 0:
        raise ValueError(f"layout must be 0 or 1, got {layout}")
    seq_len, batch = x.shape[:2]
    states = []
    for s in initial_states:
        if s is None:
            states.append(np.zeros((num_directions, batch, hidden_size)))
            continue
        s64 = np.asarray(s, dtype=np.float64)
        if layout == 1:
            s64 = s64.transpose(1, 0, 2)
        if s64.shape != (num_directions, batch, hidden_size):
            raise ValueError(f"initial state has shape {s64.shape}")
        states.append(s64)
    if sequence_lens is None:
        lens = np.full(batch, seq_len, dtype=np.int64)
    else:
        lens = np.asarray(sequence_lens, dtype=np.int64).reshape(-1)
        if lens.shape != (batch,) or (lens < 0).any() or (lens > seq_len).any():
            raise ValueError(f"sequence_lens {lens} invalid for seq_length {seq_len}")
    return x, states, lens


def _finish(
    ys: list[Array],
    finals: list[tuple[Array, ...]],
    lens: Array,
    layout: int,
    zero_length_state: ZeroLengthState,
) -> tuple[Array, ...]:
    """Stack directions and convert to the requested layout."""
    y = np.stack(ys, axis=1)  # [T, D, B, H]
    outs = []
    for k in range(len(finals[0])):
        s = np.stack([f[k] for f in finals], axis=0)  # [D, B, H]
        if zero_length_state == "zeros":
            s[:, lens == 0] = 0.0
        outs.append(s)
    if layout == 1:
        y = y.transpose(2, 0, 1, 3)
        outs = [s.transpose(1, 0, 2) for s in outs]
    return (y, *outs)


def _check_weights(op_type: str, W: Array, R: Array, num_directions: int) -> int:
    """Validate W/R shapes; return hidden_size."""
    gates = GATES[op_type]
    if W.ndim != 3 or R.ndim != 3 or W.shape[0] != num_directions:
        raise ValueError(f"bad W/R shapes {W.shape} {R.shape} for {num_directions} directions")
    hidden = R.shape[2]
    if W.shape[1] != gates * hidden or R.shape[:2] != (num_directions, gates * hidden):
        raise ValueError(f"bad W/R shapes {W.shape} {R.shape} for hidden_size {hidden}")
    return hidden


def _is_reverse(direction: str | bytes, d: int) -> bool:
    text = direction.decode() if isinstance(direction, bytes) else direction
    return text == "reverse" or d == 1


def _rnn_cell(
    xt: Array,
    state: tuple[Array, ...],
    *,
    w: Array,
    r: Array,
    b: Array,
    f: Activation,
    clamp: Activation,
) -> tuple[Array, ...]:
    hid = r.shape[1]
    return (f(clamp(xt @ w.T + state[0] @ r.T + b[:hid] + b[hid:])),)


def _gru_cell(
    xt: Array,
    state: tuple[Array, ...],
    *,
    w: Array,
    r: Array,
    b: Array,
    f: Activation,
    g: Activation,
    clamp: Activation,
    linear_before_reset: int,
) -> tuple[Array, ...]:
    (h,) = state
    hid = h.shape[1]
    wbz, wbr, wbh, rbz, rbr, rbh = np.split(b, 6)
    z = f(clamp(xt @ w[:hid].T + h @ r[:hid].T + wbz + rbz))
    rt = f(clamp(xt @ w[hid : 2 * hid].T + h @ r[hid : 2 * hid].T + wbr + rbr))
    wh, rh = w[2 * hid :], r[2 * hid :]
    if linear_before_reset:
        pre = xt @ wh.T + rt * (h @ rh.T + rbh) + wbh
    else:
        pre = xt @ wh.T + (rt * h) @ rh.T + rbh + wbh
    return ((1.0 - z) * g(clamp(pre)) + z * h,)


def _lstm_cell(
    xt: Array,
    state: tuple[Array, ...],
    *,
    w: Array,
    r: Array,
    b: Array,
    p: Array,
    f: Activation,
    g: Activation,
    h_act: Activation,
    clamp: Activation,
    input_forget: int,
) -> tuple[Array, ...]:
    h, c = state
    hid = h.shape[1]
    pre_i, pre_o, pre_f, pre_c = np.split(xt @ w.T + h @ r.T + b[: 4 * hid] + b[4 * hid :], 4, 1)
    p_i, p_o, p_f = np.split(p, 3)
    i = f(clamp(pre_i + p_i * c))
    forget = 1.0 - i if input_forget else f(clamp(pre_f + p_f * c))
    c_new = forget * c + i * g(clamp(pre_c))
    o = f(clamp(pre_o + p_o * c_new))
    return (o * h_act(c_new), c_new)


def _run(
    op_type: str,
    X: Array,
    W: Array,
    R: Array,
    B: Array | None,
    sequence_lens: Array | None,
    initial_states: Sequence[Array | None],
    P: Array | None,
    *,
    activations: Sequence[str | bytes] | None,
    activation_alpha: Sequence[float] | None,
    activation_beta: Sequence[float] | None,
    clip: float | None,
    direction: str | bytes,
    layout: int,
    hidden_size: int | None,
    zero_length_state: ZeroLengthState,
    **cell_options: int,
) -> tuple[Array, ...]:
    """Shared driver: validate, convert layout, run each direction, assemble outputs."""
    nd = _num_directions(direction)
    W64, R64 = np.asarray(W, dtype=np.float64), np.asarray(R, dtype=np.float64)
    hid = _check_weights(op_type, W64, R64, nd)
    if hidden_size is not None and hidden_size != hid:
        raise ValueError(f"hidden_size={hidden_size} but R implies {hid}")
    gates = GATES[op_type]
    bias = np.zeros((nd, 2 * gates * hid)) if B is None else np.asarray(B, dtype=np.float64)
    if bias.shape != (nd, 2 * gates * hid):
        raise ValueError(f"B has shape {bias.shape}")
    x, states, lens = _prepare(X, initial_states, sequence_lens, layout, nd, hid)
    acts = resolve_activations(op_type, nd, activations, activation_alpha, activation_beta)
    clamp = _clipper(clip)
    ys, finals = [], []
    for d in range(nd):
        common = {"w": W64[d], "r": R64[d], "b": bias[d], "clamp": clamp}
        if op_type == "RNN":
            cell = partial(_rnn_cell, f=acts[d][0], **common)
        elif op_type == "GRU":
            cell = partial(_gru_cell, f=acts[d][0], g=acts[d][1], **common, **cell_options)
        else:
            peep = np.zeros((nd, 3 * hid)) if P is None else np.asarray(P, dtype=np.float64)
            if peep.shape != (nd, 3 * hid):
                raise ValueError(f"P has shape {peep.shape}")
            f, g, h_act = acts[d]
            cell = partial(_lstm_cell, p=peep[d], f=f, g=g, h_act=h_act, **common, **cell_options)
        y, final = _scan(cell, x, lens, tuple(s[d] for s in states), _is_reverse(direction, d))
        ys.append(y)
        finals.append(final)
    return _finish(ys, finals, lens, layout, zero_length_state)


def rnn_ref(
    X: Array,
    W: Array,
    R: Array,
    B: Array | None = None,
    sequence_lens: Array | None = None,
    initial_h: Array | None = None,
    *,
    activations: Sequence[str | bytes] | None = None,
    activation_alpha: Sequence[float] | None = None,
    activation_beta: Sequence[float] | None = None,
    clip: float | None = None,
    direction: str | bytes = "forward",
    layout: int = 0,
    hidden_size: int | None = None,
    zero_length_state: ZeroLengthState = "zeros",
) -> tuple[Array, Array]:
    """ONNX RNN: ``H_t = f(X_t W^T + H_{t-1} R^T + Wb + Rb)``. Returns (Y, Y_h) in float64."""
    y, y_h = _run(
        "RNN",
        X,
        W,
        R,
        B,
        sequence_lens,
        [initial_h],
        None,
        activations=activations,
        activation_alpha=activation_alpha,
        activation_beta=activation_beta,
        clip=clip,
        direction=direction,
        layout=layout,
        hidden_size=hidden_size,
        zero_length_state=zero_length_state,
    )
    return y, y_h


def gru_ref(
    X: Array,
    W: Array,
    R: Array,
    B: Array | None = None,
    sequence_lens: Array | None = None,
    initial_h: Array | None = None,
    *,
    activations: Sequence[str | bytes] | None = None,
    activation_alpha: Sequence[float] | None = None,
    activation_beta: Sequence[float] | None = None,
    clip: float | None = None,
    direction: str | bytes = "forward",
    layout: int = 0,
    hidden_size: int | None = None,
    linear_before_reset: int = 0,
    zero_length_state: ZeroLengthState = "zeros",
) -> tuple[Array, Array]:
    """ONNX GRU (gates ``zrh``). Returns (Y, Y_h) in float64.

    ``linear_before_reset=0``: ``h~ = g(X Wh^T + (r . H) Rh^T + Rbh + Wbh)``;
    ``linear_before_reset=1``: ``h~ = g(X Wh^T + r . (H Rh^T + Rbh) + Wbh)``;
    ``H_t = (1 - z) . h~ + z . H_{t-1}``.
    """
    y, y_h = _run(
        "GRU",
        X,
        W,
        R,
        B,
        sequence_lens,
        [initial_h],
        None,
        activations=activations,
        activation_alpha=activation_alpha,
        activation_beta=activation_beta,
        clip=clip,
        direction=direction,
        layout=layout,
        hidden_size=hidden_size,
        zero_length_state=zero_length_state,
        linear_before_reset=int(linear_before_reset),
    )
    return y, y_h


def lstm_ref(
    X: Array,
    W: Array,
    R: Array,
    B: Array | None = None,
    sequence_lens: Array | None = None,
    initial_h: Array | None = None,
    initial_c: Array | None = None,
    P: Array | None = None,
    *,
    activations: Sequence[str | bytes] | None = None,
    activation_alpha: Sequence[float] | None = None,
    activation_beta: Sequence[float] | None = None,
    clip: float | None = None,
    direction: str | bytes = "forward",
    layout: int = 0,
    hidden_size: int | None = None,
    input_forget: int = 0,
    zero_length_state: ZeroLengthState = "zeros",
) -> tuple[Array, Array, Array]:
    """ONNX LSTM (W/R/B gates ``iofc``, peepholes ``iof``). Returns (Y, Y_h, Y_c) in float64.

    ``i = f(.. + Pi . C_{t-1})``, ``f = f(.. + Pf . C_{t-1})`` (or ``1 - i`` with
    ``input_forget``), ``c~ = g(..)``, ``C_t = f . C_{t-1} + i . c~``,
    ``o = f(.. + Po . C_t)``, ``H_t = o . h(C_t)``.
    """
    y, y_h, y_c = _run(
        "LSTM",
        X,
        W,
        R,
        B,
        sequence_lens,
        [initial_h, initial_c],
        P,
        activations=activations,
        activation_alpha=activation_alpha,
        activation_beta=activation_beta,
        clip=clip,
        direction=direction,
        layout=layout,
        hidden_size=hidden_size,
        zero_length_state=zero_length_state,
        input_forget=int(input_forget),
    )
    return y, y_h, y_c


def lstm_proj_ref(
    x: Array,
    w_ih: Array,
    w_hh: Array,
    b_ih: Array | None = None,
    b_hh: Array | None = None,
    w_hr: Array | None = None,
    h0: Array | None = None,
    c0: Array | None = None,
) -> tuple[Array, Array, Array]:
    """Single-layer, unidirectional PyTorch ``nn.LSTM`` (optionally with ``proj_size``).

    Weights in PyTorch order ``ifgo``: w_ih [4H, I], w_hh [4H, P], biases [4H], w_hr [P, H]
    (None: no projection, P = H). x is [T, B, I]; h0 [B, P]; c0 [B, H].
    ``h_t = W_hr (o . tanh(c_t))`` and the recurrence uses the projected h_t.
    Returns (y [T, B, P], h_n [B, P], c_n [B, H]) in float64.
    """
    x64 = np.asarray(x, dtype=np.float64)
    wi, wh = np.asarray(w_ih, dtype=np.float64), np.asarray(w_hh, dtype=np.float64)
    hid = wi.shape[0] // 4
    proj = None if w_hr is None else np.asarray(w_hr, dtype=np.float64)
    out_size = hid if proj is None else proj.shape[0]
    if wh.shape != (4 * hid, out_size):
        raise ValueError(f"w_hh has shape {wh.shape}, expected {(4 * hid, out_size)}")
    bias = np.zeros(4 * hid)
    for extra in (b_ih, b_hh):
        if extra is not None:
            bias = bias + np.asarray(extra, dtype=np.float64)
    batch = x64.shape[1]
    h = np.zeros((batch, out_size)) if h0 is None else np.asarray(h0, dtype=np.float64)
    c = np.zeros((batch, hid)) if c0 is None else np.asarray(c0, dtype=np.float64)
    sigmoid = activation("Sigmoid")
    ys = []
    for xt in x64:
        gi, gf, gg, go = np.split(xt @ wi.T + h @ wh.T + bias, 4, axis=1)
        c = sigmoid(gf) * c + sigmoid(gi) * np.tanh(gg)
        h = sigmoid(go) * np.tanh(c)
        if proj is not None:
            h = h @ proj.T
        ys.append(h)
    y = np.stack(ys) if ys else np.zeros((0, batch, out_size))
    return y, h, c


_REFS: dict[str, Callable[..., tuple[Array, ...]]] = {
    "RNN": rnn_ref,
    "GRU": gru_ref,
    "LSTM": lstm_ref,
}
_ATTRS: dict[str, tuple[str, ...]] = {
    "RNN": (),
    "GRU": ("linear_before_reset",),
    "LSTM": ("input_forget",),
}
_COMMON_ATTRS = (
    "activations",
    "activation_alpha",
    "activation_beta",
    "clip",
    "direction",
    "layout",
    "hidden_size",
)


def run_reference(
    op_type: str,
    inputs: Mapping[str, Array | None],
    attrs: Mapping[str, Any] | None = None,
    *,
    zero_length_state: ZeroLengthState = "zeros",
) -> dict[str, Array]:
    """Evaluate one ONNX RNN/GRU/LSTM node given by input name -> array and its attributes.

    Input names are the operator's formal names (``X``, ``W``, ... ``P``); absent or None
    means the optional input is missing. Attribute values may be bytes (as onnx decodes them).
    Returns all outputs keyed by formal name (``Y``, ``Y_h`` and, for LSTM, ``Y_c``).
    """
    if op_type not in _REFS:
        raise ValueError(f"unsupported op_type {op_type!r}")
    unknown = set(inputs) - set(INPUT_NAMES[op_type])
    if unknown:
        raise ValueError(f"unknown inputs {sorted(unknown)} for {op_type}")
    attrs = dict(attrs or {})
    allowed = set(_COMMON_ATTRS) | set(_ATTRS[op_type])
    kwargs: dict[str, Any] = {}
    for key, value in attrs.items():
        if key not in allowed:
            raise ValueError(f"unsupported attribute {key!r} for {op_type}")
        if key == "direction" and isinstance(value, bytes):
            value = value.decode()
        if key == "activations":
            value = [v.decode() if isinstance(v, bytes) else v for v in value]
        kwargs[key] = value
    args = [inputs.get(name) for name in INPUT_NAMES[op_type]]
    outs = _REFS[op_type](*args, zero_length_state=zero_length_state, **kwargs)
    return dict(zip(OUTPUT_NAMES[op_type], outs, strict=True))
