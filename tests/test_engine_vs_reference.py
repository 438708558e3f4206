"""The engine against the numpy reference (and onnxruntime for layout 1), on every ISA.

Configurations come from a deterministic pairwise sample: every pair of option values (cell
options, direction, layout, opset, awkward sizes, sequence lengths, input placements, output
subsets, activations, clip, tensor names) appears in at least one case, without the full
cartesian product. Each case runs through ``lstm_infer.load(proto).run(feeds)`` with only the
non-initializer graph inputs fed, and must agree with ``tests/reference.py`` to 1e-5 absolute
(relative to the output's magnitude where that exceeds 1, which only unbounded activations
reach).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest
from conftest import require
from onnx_builders import (
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
    ZeroLengthState,
    lstm_ref,
    run_reference,
)

import lstm_infer

T = TypeVar("T")
TOLERANCE = 1e-5
ORT_TOLERANCE = 2e-5  # engine and onnxruntime are both float32: their errors can add up
# Y_h / Y_c of a row with sequence length 0: onnxruntime (1.32, all three cells) reports zeros,
# not the initial state; "initial" would keep initial_h / initial_c instead.
ZERO_LENGTH_STATE: ZeroLengthState = "zeros"

# Per-direction activation variants: (names, packed alphas, packed betas); index 0 = attribute
# omitted. Together with test_every_activation_in_every_slot they cover all 11 activations.
ActivationVariant = tuple[tuple[str, ...], tuple[float, ...], tuple[float, ...]]
ACTIVATION_VARIANTS: dict[str, list[ActivationVariant | None]] = {
    "RNN": [
        None,
        (("Relu",), (), ()),
        (("LeakyRelu",), (0.1,), ()),
        (("Softsign",), (), ()),
        (("ScaledTanh",), (1.2,), (0.7,)),
    ],
    "GRU": [
        None,
        (("HardSigmoid", "Tanh"), (0.3,), (0.4,)),
        (("Sigmoid", "Relu"), (), ()),
        (("Softsign", "Elu"), (0.9,), ()),
        (("Sigmoid", "Affine"), (0.8,), (0.1,)),
    ],
    "LSTM": [
        None,
        (("HardSigmoid", "Tanh", "Tanh"), (0.3,), (0.4,)),
        (("Sigmoid", "Relu", "Softsign"), (), ()),
        (("Sigmoid", "Softplus", "ThresholdedRelu"), (0.2,), ()),
        (("Sigmoid", "ScaledTanh", "LeakyRelu"), (1.2, 0.1), (0.7,)),
    ],
}
OUTPUT_SUBSETS: dict[str, list[tuple[str, ...] | None]] = {
    "RNN": [None, ("Y",), ("Y_h",)],
    "GRU": [None, ("Y",), ("Y_h",)],
    "LSTM": [None, ("Y",), ("Y_h",), ("Y_c",), ("Y_h", "Y_c")],
}
RENAMED = (
    ("X", "input.1"),
    ("W", "onnx::W_0"),
    ("R", "onnx::R_0"),
    ("B", "onnx::B_0"),
    ("P", "peepholes"),
    ("sequence_lens", "lengths"),
    ("initial_h", "h0"),
    ("initial_c", "c0"),
    ("Y", "output"),
    ("Y_h", "h_n"),
    ("Y_c", "c_n"),
)
COMMON_FACTORS: dict[str, list[Any]] = {
    "direction": ["forward", "reverse", "bidirectional"],
    "layout": [0, 1],
    "opset": [7, 13, 14, 22],
    "hidden_size": [1, 3, 7, 16, 17, 33, 100, 257],
    "input_size": [1, 3, 16, 64, 300],
    "batch_size": [1, 2, 5, 16],
    "seq_length": [1, 2, 50],
    "lengths": ["none", "full", "ragged"],
    "bias": ["missing", "initializer"],
    "initial_state": ["missing", "initializer", "input"],
    "clip": [None, 0.5, 3.0],
    "names": ["formal", "renamed"],
    "symbolic_dims": [False, True],
}
CELL_FACTORS: dict[str, dict[str, list[Any]]] = {
    "RNN": {},
    "GRU": {"linear_before_reset": [0, 1]},
    "LSTM": {"peepholes": ["missing", "initializer"], "input_forget": [0, 1]},
}


def _valid_pair(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    """Reject layout=1 with opset < 14 (the layout attribute exists from opset 14)."""
    pair = dict([a, b])
    return not (pair.get("layout") == 1 and pair.get("opset", 14) < 14)


def pairwise(
    factors: Mapping[str, Sequence[Any]],
    valid_pair: Callable[[tuple[str, Any], tuple[str, Any]], bool],
    seed: int,
    candidates: int = 40,
) -> list[dict[str, Any]]:
    """Greedy all-pairs covering array: each row covers as many still-uncovered pairs as it can.

    Deterministic for a given ``seed``. Rows only ever contain valid pairs.
    """
    rng = np.random.default_rng(seed)
    names = list(factors)
    uncovered = {
        ((f, x), (g, y))
        for f, g in itertools.combinations(names, 2)
        for x in factors[f]
        for y in factors[g]
        if valid_pair((f, x), (g, y))
    }
    rows: list[dict[str, Any]] = []
    while uncovered:
        # seed each candidate with one uncovered pair so every row makes progress
        target = sorted(uncovered, key=repr)[int(rng.integers(len(uncovered)))]
        best: dict[str, Any] | None = None
        best_gain = -1
        for _ in range(candidates):
            row = {f: factors[f][int(rng.integers(len(factors[f])))] for f in names}
            row.update(dict(target))
            items = list(row.items())
            if not all(valid_pair(a, b) for a, b in itertools.combinations(items, 2)):
                continue
            gain = sum(pair in uncovered for pair in itertools.combinations(items, 2))
            if gain > best_gain:
                best, best_gain = row, gain
        if best is None:
            raise RuntimeError(f"no valid row covers {target}")
        uncovered -= set(itertools.combinations(list(best.items()), 2))
        rows.append(best)
    return rows


def _activation_attrs(op_type: str, variant: int, num_directions: int) -> dict[str, Any]:
    variants = ACTIVATION_VARIANTS[op_type]
    if variants[variant] is None:
        return {}
    picks = [variant]
    if num_directions == 2:  # the backward direction uses the next variant
        picks.append(variant % (len(variants) - 1) + 1)
    names: tuple[str, ...] = ()
    alphas: tuple[float, ...] = ()
    betas: tuple[float, ...] = ()
    for pick in picks:
        chosen = variants[pick]
        assert chosen is not None
        names, alphas, betas = names + chosen[0], alphas + chosen[1], betas + chosen[2]
    return {
        "activations": names,
        "activation_alpha": alphas or None,
        "activation_beta": betas or None,
    }


def _lengths(spec: str, seq_length: int, batch: int, seed: int) -> tuple[int, ...] | None:
    if spec == "none":
        return None
    if spec == "full":
        return (seq_length,) * batch
    rng = np.random.default_rng(seed)
    return tuple(int(v) for v in rng.integers(1, seq_length + 1, batch))


def _case_from_row(op_type: str, index: int, row: Mapping[str, Any]) -> RecurrentCase:
    num_directions = 2 if row["direction"] == "bidirectional" else 1
    return RecurrentCase(
        op_type,
        seq_length=row["seq_length"],
        batch_size=row["batch_size"],
        input_size=row["input_size"],
        hidden_size=row["hidden_size"],
        direction=row["direction"],
        layout=row["layout"],
        opset=row["opset"],
        bias=row["bias"],
        initial_state=row["initial_state"],
        peepholes=row.get("peepholes", "missing"),
        lengths=_lengths(row["lengths"], row["seq_length"], row["batch_size"], index),
        clip=row["clip"],
        linear_before_reset=row.get("linear_before_reset", 0),
        input_forget=row.get("input_forget", 0),
        outputs=OUTPUT_SUBSETS[op_type][row["outputs"]],
        symbolic_dims=row["symbolic_dims"],
        tensor_names=RENAMED if row["names"] == "renamed" else (),
        seed=index,
        **_activation_attrs(op_type, row["activations"], num_directions),
    )


def engine_cases() -> list[RecurrentCase]:
    """Build the pairwise sample, per cell (cell-specific options vary only where they exist)."""
    cases = []
    for cell_index, op_type in enumerate(("RNN", "GRU", "LSTM")):
        factors = {
            **COMMON_FACTORS,
            **CELL_FACTORS[op_type],
            "activations": list(range(len(ACTIVATION_VARIANTS[op_type]))),
            "outputs": list(range(len(OUTPUT_SUBSETS[op_type]))),
        }
        for row in pairwise(factors, _valid_pair, seed=cell_index):
            cases.append(_case_from_row(op_type, len(cases), row))
    return cases


def _case_id(case: RecurrentCase) -> str:
    return (
        f"{case.seed:03d}-{case.op_type}-{case.direction[:3]}-L{case.layout}-H{case.hidden_size}"
        f"-I{case.input_size}-B{case.batch_size}-T{case.seq_length}"
    )


ENGINE_CASES = engine_cases()


@functools.cache
def reference_outputs(case: RecurrentCase) -> dict[str, np.ndarray]:
    """Return the reference outputs of ``case`` by formal name (cached across ISAs)."""
    return run_reference(
        case.op_type, case.arrays(), case.attrs(), zero_length_state=ZERO_LENGTH_STATE
    )


def assert_close(name: str, got: np.ndarray, expected: np.ndarray, tolerance: float) -> None:
    """Max abs error within ``tolerance`` (scaled by the magnitude where that exceeds 1)."""
    got = np.asarray(got)
    assert got.shape == expected.shape, f"{name}: shape {got.shape} != {expected.shape}"
    assert np.isfinite(got).all(), f"{name}: non-finite values"
    if not got.size:
        return
    err = float(np.abs(got.astype(np.float64) - expected).max())
    scale = max(1.0, float(np.abs(expected).max()))
    assert err <= tolerance * scale, f"{name}: max abs error {err:.3g} > {tolerance * scale:.3g}"


def run_engine(case: RecurrentCase) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Load ``case``'s model in the engine, run it on its graph-input feeds."""
    lstm_infer = require("lstm_infer")
    built = case.build()
    model = lstm_infer.load(built.model)
    outs = model.run(built.feeds)
    missing = set(built.outputs.values()) - set(outs)
    assert not missing, f"engine outputs {sorted(outs)} lack {sorted(missing)}"
    again = model.run(built.feeds)
    for name in built.outputs.values():
        np.testing.assert_array_equal(again[name], outs[name], err_msg=f"{name}: rerun differs")
    return outs, built.outputs


def check_against_reference(case: RecurrentCase) -> None:
    """Engine outputs equal the reference's to TOLERANCE."""
    outs, names = run_engine(case)
    expected = reference_outputs(case)
    for formal, tensor in names.items():
        assert_close(tensor, outs[tensor], expected[formal], TOLERANCE)


def test_sample_is_pairwise_and_stable() -> None:
    """Every cell appears, every awkward size appears, and the sample is deterministic."""
    assert [_case_id(c) for c in engine_cases()] == [_case_id(c) for c in ENGINE_CASES]
    for op_type in ("RNN", "GRU", "LSTM"):
        cell = [c for c in ENGINE_CASES if c.op_type == op_type]
        assert {c.hidden_size for c in cell} == set(COMMON_FACTORS["hidden_size"])
        assert {(c.layout, c.direction) for c in cell} == {
            (lay, d) for lay in (0, 1) for d in COMMON_FACTORS["direction"]
        }
    assert len(ENGINE_CASES) < 250


@pytest.mark.parametrize("case", ENGINE_CASES, ids=_case_id)
def test_engine_matches_reference(case: RecurrentCase, isa: str) -> None:
    """Pairwise sample of every option, on every ISA."""
    check_against_reference(case)


ACTIVATION_SLOTS = [
    (op_type, slot)
    for op_type in ("RNN", "GRU", "LSTM")
    for slot in range(len(DEFAULT_ACTIVATIONS[op_type]))
]
EXPLICIT_ALPHA = {
    "Affine": 0.8,
    "LeakyRelu": 0.1,
    "ThresholdedRelu": 0.2,
    "ScaledTanh": 1.2,
    "HardSigmoid": 0.3,
    "Elu": 0.9,
}
EXPLICIT_BETA = {"Affine": 0.1, "ScaledTanh": 0.7, "HardSigmoid": 0.4}


@pytest.mark.parametrize(("op_type", "slot"), ACTIVATION_SLOTS)
@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("explicit", [True, False], ids=["explicit", "defaults"])
def test_every_activation_in_every_slot(
    op_type: str, slot: int, name: str, explicit: bool, isa: str
) -> None:
    """Each activation as f / g / h of each cell, with explicit or spec-default alpha/beta."""
    acts = list(DEFAULT_ACTIVATIONS[op_type])
    acts[slot] = name
    alpha, beta = ACTIVATION_DEFAULTS[name]
    case = RecurrentCase(
        op_type, 5, 3, 4, 9, direction="bidirectional", activations=tuple(acts) * 2,
        activation_alpha=(EXPLICIT_ALPHA[name],) * 2 if explicit and alpha is not None else None,
        activation_beta=(EXPLICIT_BETA[name],) * 2 if explicit and beta is not None else None,
        bias="initializer", initial_state="input", peepholes="initializer", clip=2.5,
        seed=slot,
    )  # fmt: skip
    check_against_reference(case)


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("lengths_as", ["input", "initializer"])
def test_zero_length_rows(op_type: str, direction: str, lengths_as: str, isa: str) -> None:
    """Rows of length 0: Y all zero, Y_h/Y_c as ZERO_LENGTH_STATE says (onnxruntime: zeros)."""
    case = RecurrentCase(
        op_type, 6, 4, 5, 7, direction=direction, initial_state="input", peepholes="initializer",
        lengths=(6, 0, 3, 0), lengths_as=lengths_as, bias="initializer", seed=7,
    )  # fmt: skip
    check_against_reference(case)
    all_empty = RecurrentCase(
        op_type, 3, 2, 5, 7, direction=direction, initial_state="input", lengths=(0, 0), seed=8
    )
    check_against_reference(all_empty)


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_weights_fed_as_graph_inputs(op_type: str, direction: str) -> None:
    """W, R, B (and P) as graph inputs fed at run time, as the ONNX spec allows."""
    case = RecurrentCase(
        op_type, 7, 3, 6, 5, direction=direction, weights="input", bias="input",
        peepholes="input", initial_state="input", lengths=(7, 2, 5), seed=9,
    )  # fmt: skip
    check_against_reference(case)


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def _layout1_cases(count: int) -> list[RecurrentCase]:
    """Random batch-major (layout=1) configurations."""
    placements: list[Placement] = ["missing", "initializer", "input"]
    cases = []
    for seed in range(count):
        rng = np.random.default_rng(1000 + seed)
        batch = _pick(rng, [1, 2, 5, 16])
        seq_length = _pick(rng, [1, 2, 9, 50])
        lengths = None
        if rng.random() < 0.5:
            lengths = tuple(int(v) for v in rng.integers(1, seq_length + 1, batch))
        cases.append(
            RecurrentCase(
                ("RNN", "GRU", "LSTM")[seed % 3],
                seq_length=seq_length,
                batch_size=batch,
                input_size=_pick(rng, [1, 3, 16, 64, 300]),
                hidden_size=_pick(rng, [1, 3, 7, 16, 17, 33, 100, 257]),
                direction=_pick(rng, ["forward", "reverse", "bidirectional"]),
                layout=1,
                opset=_pick(rng, [14, 18, 22]),
                bias=_pick(rng, placements[:2]),
                initial_state=_pick(rng, placements),
                peepholes=_pick(rng, placements[:2]),
                lengths=lengths,
                clip=float(rng.uniform(0.5, 3.0)) if rng.random() < 0.3 else None,
                linear_before_reset=int(rng.integers(2)),
                input_forget=int(rng.random() < 0.3),
                seed=1000 + seed,
            )
        )
    return cases


@pytest.mark.parametrize("case", _layout1_cases(18), ids=_case_id)
def test_layout1_matches_onnxruntime_on_transposed_data(case: RecurrentCase, isa: str) -> None:
    """Engine on a layout-1 model vs onnxruntime on the same model in layout 0."""
    require("onnxruntime")
    outs, names = run_engine(case)
    twin = layout0_twin(case)
    ort_outs = ort_run(twin.model, twin.feeds)
    for formal, tensor in names.items():
        expected = time_major_to_batch_major(formal, ort_outs[twin.outputs[formal]])
        assert_close(tensor, outs[tensor], expected.astype(np.float64), ORT_TOLERANCE)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_input_weights_between_the_two_packed_limits(direction: str, isa: str) -> None:
    """fp32 input weights of 512 KB to 1 MB (I = H = 256): the packed projection in 4-step
    chunks where the table's tiles take it (AVX-512), one sgemm over the whole sequence where
    they do not (AVX2, scalar); T = 13 covers several chunks and a partial one."""
    rng = np.random.default_rng(11)
    H = I = 256
    T, B = 13, 16
    s = 1 / np.sqrt(H)
    W = rng.uniform(-s, s, (1, 4 * H, I)).astype(np.float32)
    R = rng.uniform(-s, s, (1, 4 * H, H)).astype(np.float32)
    bias = rng.uniform(-s, s, (1, 8 * H)).astype(np.float32)
    X = rng.standard_normal((T, B, I)).astype(np.float32)
    model = lstm_infer.Model.from_onnx_weights("lstm", W, R, bias, direction=direction)
    got = model.run({"X": X})
    want = lstm_ref(*(a.astype(np.float64) for a in (X, W, R, bias)), direction=direction)
    for name, ref in zip(("Y", "Y_h", "Y_c"), want):
        np.testing.assert_allclose(got[name], ref, atol=TOLERANCE, rtol=0, err_msg=name)
