"""Hostile inputs to ``run``, ``step``, ``feed`` and ``state``: clear errors, never a crash.

Every malformed feed raises an :mod:`lstm_infer.errors` exception (a ``ValueError`` or a
``TypeError``) naming the input, the expected and the received shape; a failed stream call
leaves the stream's state exactly as it was. float64 and non-contiguous arrays are converted;
NaN and Inf propagate through every cell on every ISA. A hypothesis test throws random arrays
(dtypes, ranks, sizes, values) at all four entry points.

``LSTM_INFER_FUZZ_EXAMPLES`` raises the number of hypothesis examples (see README).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import require
from fuzz_settings import fuzz_settings

import lstm_infer
from lstm_infer._spec import (
    DenseLayer,
    DirectionWeights,
    ModelSpec,
    RecurrentLayer,
    Signature,
    default_activations,
)
from lstm_infer.errors import InputError, InputTypeError, LstmInferError, StreamError

hypothesis = require("hypothesis")
st = require("hypothesis.strategies")
hnp = require("hypothesis.extra.numpy")

FUZZ = fuzz_settings(60)
I, H, VOCAB = 3, 5, 11
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def onnx_model(cell: str, *, direction: str = "forward", seed: int = 0) -> lstm_infer.Model:
    """A small one-node model (inputs X, sequence_lens, initial_h[, initial_c])."""
    rng = np.random.default_rng(seed)
    D = 2 if direction == "bidirectional" else 1
    G = GATES[cell]
    W = rng.uniform(-0.5, 0.5, (D, G * H, I)).astype(np.float32)
    R = rng.uniform(-0.5, 0.5, (D, G * H, H)).astype(np.float32)
    B = rng.uniform(-0.2, 0.2, (D, 2 * G * H)).astype(np.float32)
    return lstm_infer.Model.from_onnx_weights(cell, W, R, B, direction=direction)


def embedding_model(seed: int = 0) -> lstm_infer.Model:
    """Token ids -> embedding -> LSTM -> dense head (a PyTorch-style sequence model)."""
    rng = np.random.default_rng(seed)
    dw = DirectionWeights(
        w=rng.uniform(-0.5, 0.5, (4 * H, I)).astype(np.float32),
        r=rng.uniform(-0.5, 0.5, (4 * H, H)).astype(np.float32),
        bias=rng.uniform(-0.2, 0.2, 4 * H).astype(np.float32),
        activations=default_activations("lstm"),
    )
    layer = RecurrentLayer("lstm", I, H, "forward", [dw])
    head = [DenseLayer(rng.standard_normal((2, H)).astype(np.float32), None, "softmax")]
    sig = Signature("sequence", 0, {"x": "tokens"}, {"y": "logits", "y_h": "h_n"})
    emb = rng.standard_normal((VOCAB, I)).astype(np.float32)
    return lstm_infer.Model(ModelSpec([layer], sig, embedding=emb, head=head))


def snapshot(stream: lstm_infer.Stream) -> dict[str, list[np.ndarray | None]]:
    return stream.state


def assert_state_equal(stream: lstm_infer.Stream, before: dict[str, Any]) -> None:
    after = stream.state
    for key in ("h", "c"):
        for a, b in zip(after[key], before[key]):
            if a is None or b is None:
                assert a is None and b is None
            else:
                np.testing.assert_array_equal(a, b)


def advanced_stream(model: lstm_infer.Model, batch: int, seed: int = 1) -> lstm_infer.Stream:
    """A stream that has taken a few steps, so its state is not the initial zeros."""
    stream = model.stream(batch_size=batch)
    rng = np.random.default_rng(seed)
    if model.spec.embedding is not None:
        stream.feed(rng.integers(0, VOCAB, (3, batch)))
    else:
        stream.feed(rng.standard_normal((3, batch, I)).astype(np.float32))
    return stream


# ---- the error types ------------------------------------------------------------------------


def test_error_types_subclass_the_builtins() -> None:
    assert issubclass(InputError, ValueError) and issubclass(InputError, LstmInferError)
    assert issubclass(InputTypeError, TypeError) and issubclass(InputTypeError, LstmInferError)
    assert issubclass(lstm_infer.errors.ModelFormatError, ValueError)
    assert lstm_infer.errors is __import__("lstm_infer.errors").errors


# ---- run ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("feeds", "exc", "pattern"),
    [
        ({}, InputError, r"missing input 'X'"),
        ({"X": np.zeros((2, 1, I)), "Z": 1}, InputError, r"unknown input.*'Z'.*\['X'"),
        ({"X": np.zeros((2, I))}, InputError, r"'X'.*rank 3.*got shape \(2, 3\)"),
        ({"X": np.zeros((1, 2, 1, I))}, InputError, r"'X'.*rank 3.*\(1, 2, 1, 3\)"),
        ({"X": np.zeros((2, 1, I + 1))}, InputError, r"'X'.*input_size=3, got \(2, 1, 4\)"),
        ({"X": np.full((2, 1, I), "x")}, InputTypeError, r"'X' must be numeric.*<U1"),
        ({"X": np.zeros((2, 1, I), complex)}, InputTypeError, r"'X'.*complex"),
        ({"X": None}, InputTypeError, r"'X'.*object"),
        ({"X": {"a": 1}}, InputTypeError, r"'X'.*object"),
        (
            {"X": np.zeros((2, 1, I)), "initial_h": np.zeros((1, 2, H))},
            InputError,
            r"'initial_h' must have shape \(1, 1, 5\), got \(1, 2, 5\)",
        ),
        (
            {"X": np.zeros((2, 1, I)), "initial_h": np.zeros((1, H))},
            InputError,
            r"'initial_h'.*rank 3.*\(1, 5\)",
        ),
        (
            {"X": np.zeros((2, 1, I)), "sequence_lens": np.array([3])},
            InputError,
            r"'sequence_lens'.*\[0, 2\], got \[3\]",
        ),
        (
            {"X": np.zeros((2, 1, I)), "sequence_lens": np.array([-1])},
            InputError,
            r"'sequence_lens'.*\[0, 2\]",
        ),
        (
            {"X": np.zeros((2, 2, I)), "sequence_lens": np.array([1])},
            InputError,
            r"'sequence_lens' must have shape \(2,\), got \(1,\)",
        ),
        (
            {"X": np.zeros((2, 1, I)), "sequence_lens": np.array([1.5])},
            InputTypeError,
            r"'sequence_lens' must be integer",
        ),
    ],
)
def test_run_rejects_bad_feeds_with_a_clear_error(
    feeds: dict[str, Any], exc: type[Exception], pattern: str
) -> None:
    model = onnx_model("gru")
    with pytest.raises(exc, match=pattern):
        model.run(feeds)


def test_run_rejects_non_mapping_feeds_and_unknown_outputs() -> None:
    model = onnx_model("rnn")
    with pytest.raises(InputTypeError, match="dict"):
        model.run([np.zeros((2, 1, I))])  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"unknown output.*'nope'"):
        model.run({"X": np.zeros((2, 1, I))}, output_names=["nope"])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_float64_int_and_non_contiguous_feeds_are_converted(cell: str) -> None:
    model = onnx_model(cell, direction="bidirectional")
    rng = np.random.default_rng(3)
    x64 = rng.standard_normal((4, 3, I))
    want = model.run({"X": x64.astype(np.float32)})
    # float64, Fortran order, a strided view, and plain nested lists all give the same result.
    for variant in (x64, np.asfortranarray(x64), np.repeat(x64, 2, axis=2)[:, :, ::2]):
        got = model.run({"X": variant})
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    got = model.run({"X": x64.astype(np.float32).tolist()})
    np.testing.assert_array_equal(got["Y"], want["Y"])
    ints = model.run({"X": np.ones((2, 1, I), np.int16)})
    np.testing.assert_array_equal(ints["Y"], model.run({"X": np.ones((2, 1, I))})["Y"])


def test_empty_batch_and_empty_sequence_do_not_crash() -> None:
    model = onnx_model("lstm", direction="bidirectional")
    out = model.run({"X": np.zeros((4, 0, I), np.float32)})
    assert out["Y"].shape == (4, 2, 0, H) and out["Y_c"].shape == (2, 0, H)
    out = model.run({"X": np.zeros((0, 2, I), np.float32), "sequence_lens": np.zeros(2, int)})
    assert out["Y"].shape == (0, 2, 2, H)
    stream = model_stream = onnx_model("gru").stream(batch_size=2)
    assert model_stream.feed(np.zeros((0, 2, I), np.float32)).shape == (0, 2, H)
    assert stream.step(np.zeros((2, I))).shape == (2, H)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_propagate_without_a_crash(isa: str, cell: str, bad: float) -> None:
    model = onnx_model(cell)
    x = np.zeros((4, 3, I), np.float32)
    x[1, 0, 0] = bad
    y = model.run({"X": x})["Y"][:, 0]  # (T, B, H) of the single direction
    assert np.isfinite(y[:, 1:]).all(), "other rows must not be affected"
    assert np.isfinite(y[0]).all(), "steps before the bad value must not be affected"
    if np.isnan(bad):
        assert np.isnan(y[1:, 0]).any(axis=-1).all(), "NaN must reach every later step"
    stream = model.stream(batch_size=3)
    steps = np.stack([stream.step(x[t]) for t in range(4)])
    np.testing.assert_allclose(steps, y, atol=1e-5, equal_nan=True)


def test_nan_propagates_through_relu_on_every_isa(isa: str) -> None:
    """Regression: the scalar Relu mapped NaN to 0 while the SIMD max(0, x) kept it."""
    rng = np.random.default_rng(0)
    W = rng.uniform(-0.5, 0.5, (1, H, I)).astype(np.float32)
    R = rng.uniform(-0.5, 0.5, (1, H, H)).astype(np.float32)
    model = lstm_infer.Model.from_onnx_weights("rnn", W, R, activations=["Relu"])
    x = np.zeros((2, 1, I), np.float32)
    x[0, 0, :] = np.nan
    assert np.isnan(model.run({"X": x})["Y"]).all()


@pytest.mark.parametrize("shape", [(0, 2), (3, 0)])
def test_sequence_model_runs_an_empty_sequence(shape: tuple[int, int]) -> None:
    out = embedding_model().run({"tokens": np.zeros(shape, np.int64)})
    assert out["logits"].shape == (*shape, 2)


# ---- tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "exc", "pattern"),
    [
        (np.array([[0], [VOCAB]]), InputError, rf"'tokens'.*\[0, {VOCAB}\).*\[0, {VOCAB}\]"),
        (np.array([[-1], [2]]), InputError, r"'tokens'.*token ids must be in"),
        (np.array([[0.0], [1.0]]), InputTypeError, r"'tokens'.*integer.*float64"),
        (np.array([0, 1]), InputError, r"'tokens' must have rank 2.*got shape \(2,\)"),
        (np.array([[2**40], [1]]), InputError, r"'tokens'.*token ids"),
    ],
)
def test_token_ids_are_checked(tokens: np.ndarray, exc: type[Exception], pattern: str) -> None:
    model = embedding_model()
    with pytest.raises(exc, match=pattern):
        model.run({"tokens": tokens})
    stream = advanced_stream(model, batch=1)
    before = snapshot(stream)
    with pytest.raises(exc):
        stream.feed(tokens)
    assert_state_equal(stream, before)


def test_stream_step_token_ids_are_checked() -> None:
    stream = advanced_stream(embedding_model(), batch=2)
    before = snapshot(stream)
    for bad, exc in (
        ([0, VOCAB], InputError),
        ([-3, 0], InputError),
        ([0.5, 1.0], InputTypeError),
        ([0, 1, 2], InputError),
        (["a", "b"], InputTypeError),
    ):
        with pytest.raises(exc):
            stream.step(np.array(bad))
        assert_state_equal(stream, before)
    assert stream.step(np.array([VOCAB - 1, 0])).shape == (2, 2)


# ---- streams --------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_failed_stream_calls_leave_the_state_unchanged(cell: str) -> None:
    model = onnx_model(cell)
    stream = advanced_stream(model, batch=2)
    before = snapshot(stream)
    good_state = snapshot(stream)
    calls: list[tuple[Callable[[], object], type[Exception], str]] = [
        (lambda: stream.step(np.zeros((3, I))), InputError, r"\(2, 3\), got \(3, 3\)"),
        (lambda: stream.step(np.zeros((2, I + 2))), InputError, r"\(2, 3\), got \(2, 5\)"),
        (lambda: stream.step(np.zeros(I)), InputError, r"\(2, 3\), got \(3,\)"),
        (lambda: stream.step(np.zeros((1, 2, I))), InputError, r"got \(1, 2, 3\)"),
        (lambda: stream.step(np.float32(1)), InputError, r"got \(\)"),
        (lambda: stream.step(np.full((2, I), "a")), InputTypeError, "numeric"),
        (lambda: stream.step(None), InputTypeError, "numeric"),
        (
            lambda: stream.step(np.zeros((2, I)), out=np.zeros((2, H + 1), np.float32)),
            ValueError,
            r"out",
        ),
        (lambda: stream.feed(np.zeros((4, 3, I))), InputError, r"'X' has batch 3.*batch is 2"),
        (lambda: stream.feed(np.zeros((4, 2, I + 1))), InputError, r"'X'.*input_size=3"),
        (lambda: stream.feed(np.zeros((2, I))), InputError, r"'X'.*rank 3"),
        (lambda: stream.feed(np.zeros((2, 2, I), complex)), InputTypeError, r"'X'"),
        (lambda: setattr(stream, "state", {}), InputError, r"'h'"),
        (lambda: setattr(stream, "state", []), InputError, r"'h'"),
        (
            lambda: setattr(stream, "state", {**good_state, "h": [np.zeros((3, H))]}),
            InputError,
            r"state\['h'\]\[0\] must have shape \(2, 5\), got \(3, 5\)",
        ),
        (
            lambda: setattr(stream, "state", {**good_state, "h": []}),
            InputError,
            r"state\['h'\] must list 1 layer",
        ),
        (
            lambda: setattr(stream, "state", {**good_state, "h": [np.full((2, H), "z")]}),
            InputTypeError,
            r"state\['h'\]\[0\]",
        ),
    ]
    if cell == "lstm":
        # A good h with a bad c must not apply the h either (all or nothing).
        new_h = [np.ones((2, H), np.float32)]
        calls.append(
            (
                lambda: setattr(stream, "state", {"h": new_h, "c": [np.zeros((2, H + 1))]}),
                InputError,
                r"state\['c'\]\[0\] must have shape \(2, 5\), got \(2, 6\)",
            )
        )
        calls.append((lambda: setattr(stream, "state", {"h": new_h}), InputError, r"state\['c'\]"))
    for call, exc, pattern in calls:
        with pytest.raises(exc, match=pattern):
            call()
        assert_state_equal(stream, before)


def test_stream_accepts_float64_and_strided_steps() -> None:
    model = onnx_model("lstm")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 2, I))
    a, b = model.stream(batch_size=2), model.stream(batch_size=2)
    for t in range(6):
        strided = np.repeat(x[t], 3, axis=1)[:, ::3]
        np.testing.assert_array_equal(a.step(strided), b.step(x[t].astype(np.float32)))
    c = model.stream(batch_size=2)
    np.testing.assert_allclose(
        c.feed(np.asfortranarray(x)), model.run({"X": x})["Y"][:, 0], atol=1e-6
    )


def test_stream_construction_errors() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        onnx_model("rnn").stream(batch_size=-1)
    with pytest.raises(ValueError, match="batch_size"):
        onnx_model("rnn").stream(batch_size=1.5)  # type: ignore[arg-type]
    with pytest.raises(StreamError, match="bidirectional"):
        onnx_model("gru", direction="bidirectional").stream()


# ---- random inputs (hypothesis) ---------------------------------------------------------------

_DTYPES = st.sampled_from(
    [
        np.float32,
        np.float64,
        np.float16,
        np.int8,
        np.int64,
        np.uint32,
        np.bool_,
        np.complex64,
        np.str_,
        np.object_,
        "datetime64[s]",
    ]
)


@st.composite
def random_arrays(draw: Any) -> np.ndarray:
    """Arrays of any dtype, rank 0..4 and small sizes, with hostile values mixed in."""
    dtype = np.dtype(draw(_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    if dtype.kind in "fc":
        elements = st.floats(allow_nan=True, allow_infinity=True, width=32)
        with np.errstate(over="ignore"):  # float32 -> float16 overflows to inf: wanted
            arr = draw(hnp.arrays(np.float32, shape, elements=elements)).astype(dtype)
    elif dtype.kind in "iub":
        arr = draw(hnp.arrays(dtype, shape))
    elif dtype.kind == "U":
        arr = np.full(shape, "x")
    elif dtype.kind == "M":
        arr = np.zeros(shape, dtype)
    else:
        arr = np.empty(shape, object)
        arr.fill(draw(st.sampled_from([None, 1.5, "a", (1, 2)])))
    if arr.ndim >= 2 and draw(st.booleans()):
        arr = arr.swapaxes(0, -1)  # non-contiguous
    return arr


def _attempt(call: Callable[[], object]) -> tuple[bool, object]:
    """Run ``call``: (True, result), or (False, None) when it raised one of our input errors.

    Any other exception (IndexError, OverflowError, a Cython buffer error...) fails the test.
    """
    try:
        return True, call()
    except (InputError, InputTypeError):
        return False, None


@FUZZ
@hypothesis.given(
    x=random_arrays(),
    lens=st.one_of(st.none(), random_arrays()),
    h0=st.one_of(st.none(), random_arrays()),
    cell=st.sampled_from(["rnn", "lstm", "gru"]),
)
def test_fuzz_run_with_random_arrays(
    x: np.ndarray, lens: np.ndarray | None, h0: np.ndarray | None, cell: str
) -> None:
    model = MODELS[cell]
    ok, out = _attempt(lambda: model.run({"X": x, "sequence_lens": lens, "initial_h": h0}))
    if ok:
        assert isinstance(out, dict)
        T, B = x.shape[0], x.shape[1]
        assert out["Y"].shape == (T, 1, B, H) and out["Y"].dtype == np.float32


@FUZZ
@hypothesis.given(
    x=random_arrays(),
    h=random_arrays(),
    cell=st.sampled_from(["rnn", "lstm", "gru"]),
    batch=st.integers(1, 3),
)
def test_fuzz_stream_with_random_arrays(
    x: np.ndarray, h: np.ndarray, cell: str, batch: int
) -> None:
    stream = advanced_stream(MODELS[cell], batch)
    calls: list[Callable[[], object]] = [
        lambda: stream.step(x),
        lambda: stream.feed(x),
        lambda: setattr(stream, "state", {"h": [h], "c": [h]}),
    ]
    for call in calls:
        before = snapshot(stream)
        ok, _ = _attempt(call)
        if not ok:
            assert_state_equal(stream, before)


@FUZZ
@hypothesis.given(tokens=random_arrays(), batch=st.integers(1, 3))
def test_fuzz_token_models_with_random_arrays(tokens: np.ndarray, batch: int) -> None:
    model = MODELS["embedding"]
    ok, out = _attempt(lambda: model.run({"tokens": tokens}))
    if ok:
        assert isinstance(out, dict) and np.isfinite(out["logits"]).all()
    stream = advanced_stream(model, batch)
    calls: list[Callable[[], object]] = [lambda: stream.step(tokens), lambda: stream.feed(tokens)]
    for call in calls:
        before = snapshot(stream)
        ok, _ = _attempt(call)
        if not ok:
            assert_state_equal(stream, before)


MODELS: dict[str, lstm_infer.Model] = {
    **{cell: onnx_model(cell) for cell in ("rnn", "lstm", "gru")},
    "embedding": embedding_model(),
}
