"""Prove the numpy reference (tests/reference.py) right: compare it with onnxruntime and torch.

The engine tests trust the reference as their oracle, so every semantic choice it makes is
pinned here against an independent implementation: randomized configurations over all cells and
options, plus one targeted test per subtle point (clip placement, zero-length rows, activation
defaults and alpha/beta consumption, GRU ``linear_before_reset`` bias, layout 1) and PyTorch for
the projection LSTM and the PyTorch gate orders.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from conftest import require
from onnx_builders import (
    MAX_OPSET,
    MIN_OPSET,
    Placement,
    RecurrentCase,
    layout0_twin,
    ort_run,
    time_major_to_batch_major,
)
from reference import (
    ACTIVATION_DEFAULTS,
    ACTIVATIONS,
    DEFAULT_ACTIVATIONS,
    OUTPUT_NAMES,
    gru_ref,
    lstm_proj_ref,
    lstm_ref,
    run_reference,
)

require("onnxruntime")

# onnxruntime computes in float32 with approximate sigmoid/tanh; the reference in float64.
ATOL = RTOL = 1e-5

# onnxruntime's defaults for these agree with the spec; for Affine, ThresholdedRelu and
# ScaledTanh it uses 0 (see test_onnxruntime_uses_zero_for_other_unset_alpha_beta).
ORT_AGREEING_ALPHA_DEFAULTS = {"LeakyRelu", "HardSigmoid", "Elu"}
ORT_AGREEING_BETA_DEFAULTS = {"HardSigmoid"}
ALPHA_RANGES = {
    "Affine": (0.3, 1.2),
    "LeakyRelu": (0.0, 0.3),
    "ThresholdedRelu": (-0.5, 0.5),
    "ScaledTanh": (0.5, 1.5),
    "HardSigmoid": (0.1, 0.5),
    "Elu": (0.5, 1.5),
}
BETA_RANGES = {"Affine": (-0.5, 0.5), "ScaledTanh": (0.5, 1.5), "HardSigmoid": (0.3, 0.7)}
BOUNDED_ACTIVATIONS = ("Sigmoid", "HardSigmoid", "Tanh", "ScaledTanh", "Softsign")


def _uses_alpha(name: str) -> bool:
    return ACTIVATION_DEFAULTS[name][0] is not None


def _uses_beta(name: str) -> bool:
    return ACTIVATION_DEFAULTS[name][1] is not None


def random_activation_attrs(
    rng: np.random.Generator, op_type: str, num_directions: int
) -> dict[str, Any]:
    """Random activations with packed alpha/beta lists that onnxruntime reads like the spec.

    The lists are consumed in order by the activations taking each parameter; they are cut
    short (leaving defaults) only where onnxruntime's default equals the spec's.
    """
    if rng.random() < 0.25:
        return {}
    names = []
    for _ in range(num_directions):
        for slot in range(len(DEFAULT_ACTIVATIONS[op_type])):
            # Gates (LSTM/GRU f) stay bounded so long random runs cannot blow up;
            # test_every_activation_in_every_slot covers the rest.
            pool = BOUNDED_ACTIVATIONS if op_type != "RNN" and slot == 0 else ACTIVATIONS
            names.append(str(rng.choice(pool)))
    alphas = [float(rng.uniform(*ALPHA_RANGES[n])) for n in names if _uses_alpha(n)]
    betas = [float(rng.uniform(*BETA_RANGES[n])) for n in names if _uses_beta(n)]
    alpha_users = [n for n in names if _uses_alpha(n)]
    beta_users = [n for n in names if _uses_beta(n)]

    def cut(values: list[float], users: list[str], safe: set[str]) -> list[float]:
        keep = len(values)
        while keep and users[keep - 1] in safe and rng.random() < 0.5:
            keep -= 1
        return values[:keep]

    attrs: dict[str, Any] = {"activations": tuple(names)}
    alphas = cut(alphas, alpha_users, ORT_AGREEING_ALPHA_DEFAULTS)
    betas = cut(betas, beta_users, ORT_AGREEING_BETA_DEFAULTS)
    if alphas:
        attrs["activation_alpha"] = tuple(alphas)
    if betas:
        attrs["activation_beta"] = tuple(betas)
    return attrs


def random_case(seed: int) -> RecurrentCase:
    """One randomized configuration covering every option of the three operators."""
    rng = np.random.default_rng(seed)
    op_type = str(rng.choice(["RNN", "GRU", "LSTM"]))
    direction = str(rng.choice(["forward", "reverse", "bidirectional"]))
    seq_length = int(rng.integers(1, 9))
    batch_size = int(rng.integers(1, 6))
    placements: list[Placement] = ["missing", "initializer", "input"]

    def place() -> Placement:
        return placements[int(rng.integers(3))]

    lengths = None
    if rng.random() < 0.5:
        lengths = tuple(int(v) for v in rng.integers(0, seq_length + 1, batch_size))
    outputs = tuple(o for o in OUTPUT_NAMES[op_type] if rng.random() < 0.6)
    return RecurrentCase(
        op_type,
        seq_length=seq_length,
        batch_size=batch_size,
        input_size=int(rng.integers(1, 11)),
        hidden_size=int(rng.integers(1, 13)),
        direction=direction,
        opset=int(rng.integers(MIN_OPSET, MAX_OPSET + 1)),
        weights="initializer" if rng.random() < 0.7 else "input",
        bias=place(),
        initial_state=place(),
        peepholes=place(),
        lengths=lengths,
        lengths_as="input" if rng.random() < 0.7 else "initializer",
        clip=float(rng.uniform(0.2, 3.0)) if rng.random() < 0.35 else None,
        linear_before_reset=int(rng.integers(2)),
        input_forget=int(rng.random() < 0.3),
        outputs=outputs or None,
        seed=seed,
        **random_activation_attrs(rng, op_type, 2 if direction == "bidirectional" else 1),
    )


def assert_matches_ort(
    case: RecurrentCase, zero_length_state: str = "zeros", atol: float = ATOL
) -> dict[str, np.ndarray]:
    """Run ``case`` in onnxruntime and the reference; assert every output agrees."""
    built = case.build()
    got = ort_run(built.model, built.feeds)
    ref = run_reference(
        case.op_type, case.arrays(), case.attrs(), zero_length_state=zero_length_state
    )
    for formal, name in built.outputs.items():
        np.testing.assert_allclose(got[name], ref[formal], rtol=RTOL, atol=atol, err_msg=formal)
    return ref


@pytest.mark.parametrize("seed", range(240))
def test_random_config_matches_onnxruntime(seed: int) -> None:
    """Randomized configurations over every cell, option and input placement."""
    assert_matches_ort(random_case(seed))


ACTIVATION_SLOTS = [
    (op_type, slot)
    for op_type in ("RNN", "GRU", "LSTM")
    for slot in range(len(DEFAULT_ACTIVATIONS[op_type]))
]


@pytest.mark.parametrize(("op_type", "slot"), ACTIVATION_SLOTS)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_every_activation_in_every_slot(op_type: str, slot: int, name: str) -> None:
    """Each of the 11 activations as f / g / h of each cell, with explicit alpha and beta."""
    acts = list(DEFAULT_ACTIVATIONS[op_type])
    acts[slot] = name
    alpha, beta = ACTIVATION_DEFAULTS[name]
    case = RecurrentCase(
        op_type, 4, 3, 4, 5, activations=tuple(acts),
        activation_alpha=(float(np.mean(ALPHA_RANGES[name])),) if alpha is not None else None,
        activation_beta=(float(np.mean(BETA_RANGES[name])),) if beta is not None else None,
        bias="initializer", initial_state="input", peepholes="initializer", clip=2.5, seed=10,
    )  # fmt: skip
    assert_matches_ort(case)


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_ragged_lengths(op_type: str, direction: str) -> None:
    """Y is zero past each row's length; reverse starts at each row's last valid step."""
    case = RecurrentCase(
        op_type, 7, 5, 4, 6, direction=direction, initial_state="input", peepholes="input",
        lengths=(7, 3, 1, 5, 2), seed=11,
    )  # fmt: skip
    ref = assert_matches_ort(case)
    y = ref["Y"]
    for row, length in enumerate(case.lengths or ()):
        assert not y[length:, :, row].any()
        assert y[length - 1, 0, row].any()


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("outputs", [None, ("Y_h",)])
def test_zero_length_rows_report_zero_state(
    op_type: str, direction: str, outputs: tuple[str, ...] | None
) -> None:
    """Rows of length 0 report zeros (not the initial state) in Y_h/Y_c, as onnxruntime does."""
    case = RecurrentCase(
        op_type, 4, 3, 3, 5, direction=direction, initial_state="input", lengths=(4, 0, 2),
        outputs=outputs, seed=12,
    )  # fmt: skip
    ref = assert_matches_ort(case)
    assert not ref["Y_h"][:, 1].any()
    initial = run_reference(op_type, case.arrays(), case.attrs(), zero_length_state="initial")
    np.testing.assert_array_equal(initial["Y_h"][:, 1], case.arrays()["initial_h"][:, 1])


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
def test_all_rows_zero_length(op_type: str) -> None:
    """Every row empty: all outputs are zero."""
    case = RecurrentCase(op_type, 3, 2, 3, 4, initial_state="input", lengths=(0, 0), seed=13)
    ref = assert_matches_ort(case)
    assert not any(v.any() for v in ref.values())


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
def test_clip_bounds_every_activation_input(op_type: str) -> None:
    """With identity activations (Affine 1, 0) every gate value lies inside [-clip, clip]."""
    per_dir = len(DEFAULT_ACTIVATIONS[op_type])
    case = RecurrentCase(
        op_type, 6, 3, 5, 4, activations=("Affine",) * per_dir,
        activation_alpha=(1.0,) * per_dir, activation_beta=(0.0,) * per_dir, clip=0.1,
        bias="initializer", initial_state="input", seed=14,
    )  # fmt: skip
    ref = assert_matches_ort(case)
    if op_type == "RNN":
        assert np.abs(ref["Y"]).max() <= 0.1 + 1e-12
        assert np.isclose(np.abs(ref["Y"]).max(), 0.1)


def test_clip_is_not_applied_to_the_cell_state() -> None:
    """LSTM: clip bounds the gate pre-activations, not C_t (kept and fed to h unclipped)."""
    case = RecurrentCase(
        "LSTM", 30, 4, 6, 5, activations=("Sigmoid", "Affine", "Tanh"),
        activation_alpha=(3.0,), activation_beta=(0.0,), clip=0.5, bias="initializer",
        seed=15,
    )  # fmt: skip
    ref = assert_matches_ort(case)
    assert np.abs(ref["Y_c"]).max() > 1.0  # twice the clip, yet Y_h agrees with onnxruntime


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("name", sorted(ORT_AGREEING_ALPHA_DEFAULTS))
def test_unset_alpha_beta_take_spec_defaults(op_type: str, name: str) -> None:
    """LeakyRelu 0.01, HardSigmoid 0.2/0.5, Elu 1.0 when no alpha/beta is given."""
    acts = (*DEFAULT_ACTIVATIONS[op_type][:-1], name)
    case = RecurrentCase(op_type, 5, 3, 4, 6, activations=acts, bias="initializer", seed=16)
    ref = assert_matches_ort(case)
    a, b = ACTIVATION_DEFAULTS[name]
    explicit = replace(case, activation_alpha=(a,), activation_beta=(b,) if b is not None else None)
    other = run_reference(op_type, explicit.arrays(), explicit.attrs())
    for key, value in ref.items():
        np.testing.assert_array_equal(value, other[key])


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("name", ["Affine", "ThresholdedRelu", "ScaledTanh"])
def test_onnxruntime_uses_zero_for_other_unset_alpha_beta(op_type: str, name: str) -> None:
    """Documents an onnxruntime deviation: unset alpha/beta are 0 for these, not the spec's.

    The spec's defaults (Affine 1/0, ThresholdedRelu 1, ScaledTanh 1/1) are what the reference
    uses; onnxruntime behaves like explicit zeros. Tests against onnxruntime therefore always
    pass alpha/beta for these three explicitly.
    """
    acts = (*DEFAULT_ACTIVATIONS[op_type][:-1], name)
    case = RecurrentCase(op_type, 5, 3, 4, 6, activations=acts, bias="initializer", seed=17)
    built = case.build()
    got = ort_run(built.model, built.feeds)
    zeros = replace(
        case,
        activation_alpha=(0.0,),
        activation_beta=(0.0,) if ACTIVATION_DEFAULTS[name][1] is not None else None,
    )
    as_zero = run_reference(op_type, zeros.arrays(), zeros.attrs())
    spec = run_reference(op_type, case.arrays(), case.attrs())
    for formal, tensor in built.outputs.items():
        np.testing.assert_allclose(got[tensor], as_zero[formal], rtol=RTOL, atol=ATOL)
    assert any(np.abs(got[t] - spec[f]).max() > 1e-2 for f, t in built.outputs.items())


def test_alpha_beta_lists_are_consumed_by_the_activations_that_use_them() -> None:
    """[Sigmoid, LeakyRelu, HardSigmoid] with alpha [a, b], beta [c]: LeakyRelu a, HS b/c."""
    case = RecurrentCase(
        "LSTM", 5, 3, 4, 6, activations=("Sigmoid", "LeakyRelu", "HardSigmoid"),
        activation_alpha=(0.3, 0.4), activation_beta=(0.6,), bias="initializer",
        initial_state="input", seed=18,
    )  # fmt: skip
    assert_matches_ort(case)
    bidi = RecurrentCase(
        "RNN", 5, 3, 4, 6, direction="bidirectional", activations=("Tanh", "LeakyRelu"),
        activation_alpha=(0.5,), bias="initializer", seed=19,
    )  # fmt: skip
    assert_matches_ort(bidi)


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_linear_before_reset_bias_placement(lbr: int) -> None:
    """Rbh sits inside r . (H Rh^T + Rbh) with lbr=1 and outside (added to Wbh) with lbr=0."""
    case = RecurrentCase(
        "GRU", 6, 3, 4, 5, bias="initializer", initial_state="input", linear_before_reset=lbr,
        seed=20,
    )  # fmt: skip
    ref = assert_matches_ort(case)
    flipped = replace(case, linear_before_reset=1 - lbr)
    other = run_reference("GRU", flipped.arrays(), flipped.attrs())
    assert np.abs(ref["Y"] - other["Y"]).max() > 1e-3


def test_gru_rbh_alone_distinguishes_lbr() -> None:
    """With only Rbh non-zero and r < 1 the two placements give different results."""
    arrays = RecurrentCase("GRU", 4, 2, 3, 4, bias="initializer", seed=21).arrays()
    hid = 4
    bias = np.zeros_like(arrays["B"])
    bias[:, 5 * hid :] = 0.8
    arrays["B"] = bias
    y0, _ = gru_ref(**arrays, linear_before_reset=0)
    y1, _ = gru_ref(**arrays, linear_before_reset=1)
    assert np.abs(y0 - y1).max() > 1e-3


def test_input_forget_ignores_forget_weights_and_peephole() -> None:
    """input_forget=1: f = 1 - i, so the f rows of W/R/B and Pf have no effect."""
    case = RecurrentCase(
        "LSTM", 6, 3, 4, 5, bias="initializer", initial_state="input", peepholes="initializer",
        input_forget=1, seed=22,
    )  # fmt: skip
    ref = assert_matches_ort(case)
    arrays = case.arrays()
    hid = case.hidden_size
    for key, rows in (("W", slice(2 * hid, 3 * hid)), ("R", slice(2 * hid, 3 * hid))):
        arrays[key] = arrays[key].copy()
        arrays[key][:, rows] = 7.0
    arrays["P"] = arrays["P"].copy()
    arrays["P"][:, 2 * hid :] = -5.0
    other = run_reference("LSTM", arrays, case.attrs())
    np.testing.assert_allclose(other["Y"], ref["Y"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_layout1_equals_transposed_layout0(op_type: str, direction: str) -> None:
    """Layout 1 vs onnxruntime's layout-0 run on transposed data (it rejects layout=1)."""
    case = RecurrentCase(
        op_type, 5, 3, 4, 6, direction=direction, layout=1, opset=14, bias="input",
        initial_state="input", peepholes="initializer", lengths=(5, 2, 4), seed=23,
    )  # fmt: skip
    twin = layout0_twin(case)
    got = ort_run(twin.model, twin.feeds)
    ref = run_reference(op_type, case.arrays(), case.attrs())
    for formal, tensor in twin.outputs.items():
        expected = time_major_to_batch_major(formal, got[tensor])
        np.testing.assert_allclose(ref[formal], expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("opset", [7, 13, 14, 21, 22])
def test_every_opset_has_the_same_semantics(opset: int) -> None:
    """Opsets 7..22 agree (the layout attribute aside)."""
    for op_type in ("RNN", "GRU", "LSTM"):
        case = RecurrentCase(
            op_type, 4, 2, 3, 5, direction="bidirectional", opset=opset, bias="initializer",
            initial_state="input", lengths=(4, 2), seed=24,
        )  # fmt: skip
        assert_matches_ort(case)


# --- PyTorch: projection LSTM and the PyTorch gate orders ------------------------------------


def _torch_lstm(
    input_size: int, hidden: int, proj: int, seed: int
) -> tuple[Any, dict[str, np.ndarray]]:
    torch = require("torch")
    torch.manual_seed(seed)
    module = torch.nn.LSTM(input_size, hidden, proj_size=proj).double()
    params = {k: v.detach().numpy().copy() for k, v in module.named_parameters()}
    return module, params


@pytest.mark.parametrize(
    ("input_size", "hidden", "proj", "batch", "steps"),
    [(3, 5, 2, 1, 1), (4, 7, 3, 2, 6), (10, 16, 4, 5, 20), (1, 9, 8, 3, 7), (6, 4, 0, 2, 5)],
)
def test_projection_lstm_matches_torch(
    input_size: int, hidden: int, proj: int, batch: int, steps: int
) -> None:
    """lstm_proj_ref equals torch.nn.LSTM(proj_size=...) (float64) with and without states."""
    torch = require("torch")
    module, p = _torch_lstm(input_size, hidden, proj, seed=input_size * 100 + hidden)
    rng = np.random.default_rng(hidden)
    out_size = proj or hidden
    x = rng.uniform(-1, 1, (steps, batch, input_size))
    h0 = rng.uniform(-1, 1, (1, batch, out_size))
    c0 = rng.uniform(-1, 1, (1, batch, hidden))
    w_hr = p.get("weight_hr_l0")
    for states in (None, (h0, c0)):
        with torch.no_grad():
            tx = torch.from_numpy(x)
            if states is None:
                y_t, (h_t, c_t) = module(tx)
            else:
                y_t, (h_t, c_t) = module(tx, tuple(torch.from_numpy(s) for s in states))
        y, h, c = lstm_proj_ref(
            x, p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"], w_hr,
            None if states is None else h0[0], None if states is None else c0[0],
        )  # fmt: skip
        np.testing.assert_allclose(y, y_t.numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(h, h_t.numpy()[0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(c, c_t.numpy()[0], rtol=0, atol=1e-12)


def _ifgo_to_iofc(a: np.ndarray) -> np.ndarray:
    i, f, g, o = np.split(a, 4, axis=0)
    return np.concatenate([i, o, f, g], axis=0)


def test_onnx_lstm_equals_torch_lstm_after_gate_reorder() -> None:
    """lstm_ref with PyTorch weights reordered ifgo -> iofc equals torch.nn.LSTM."""
    torch = require("torch")
    module, p = _torch_lstm(5, 6, 0, seed=3)
    x = np.random.default_rng(3).uniform(-1, 1, (8, 3, 5))
    with torch.no_grad():
        y_t, (h_t, c_t) = module(torch.from_numpy(x))
    bias = np.concatenate([_ifgo_to_iofc(p["bias_ih_l0"]), _ifgo_to_iofc(p["bias_hh_l0"])])
    y, y_h, y_c = lstm_ref(
        x,
        _ifgo_to_iofc(p["weight_ih_l0"])[None],
        _ifgo_to_iofc(p["weight_hh_l0"])[None],
        bias[None],
    )
    np.testing.assert_allclose(y[:, 0], y_t.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(y_h, h_t.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(y_c, c_t.numpy(), rtol=0, atol=1e-12)


def test_onnx_gru_lbr1_equals_torch_gru_after_gate_reorder() -> None:
    """gru_ref(linear_before_reset=1) with PyTorch weights reordered rzn -> zrh equals nn.GRU."""
    torch = require("torch")
    torch.manual_seed(4)
    module = torch.nn.GRU(5, 6, bidirectional=True).double()
    p = {k: v.detach().numpy() for k, v in module.named_parameters()}

    def zrh(a: np.ndarray) -> np.ndarray:
        r, z, n = np.split(a, 3, axis=0)
        return np.concatenate([z, r, n], axis=0)

    suffixes = ("l0", "l0_reverse")
    w = np.stack([zrh(p[f"weight_ih_{s}"]) for s in suffixes])
    r = np.stack([zrh(p[f"weight_hh_{s}"]) for s in suffixes])
    b = np.stack(
        [np.concatenate([zrh(p[f"bias_ih_{s}"]), zrh(p[f"bias_hh_{s}"])]) for s in suffixes]
    )
    x = np.random.default_rng(4).uniform(-1, 1, (7, 2, 5))
    with torch.no_grad():
        y_t, h_t = module(torch.from_numpy(x))
    y, y_h = gru_ref(x, w, r, b, direction="bidirectional", linear_before_reset=1)
    np.testing.assert_allclose(y.transpose(0, 2, 1, 3).reshape(7, 2, 12), y_t.numpy(), atol=1e-12)
    np.testing.assert_allclose(y_h, h_t.numpy(), rtol=0, atol=1e-12)
