"""Dense heads: one product over every row (packed matvec or sgemm), softmax kernels, and the
BLAS thread policy of ``threads=``; all against float64 numpy or PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require

import lstm_infer
from lstm_infer import _engine
from lstm_infer._spec import DenseLayer
from lstm_infer.dense_head import PACKED_MAX_ROWS, CompiledDense, apply_head
from lstm_infer.runtime import threads as runtime_threads


def _log_softmax64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _head64(x: np.ndarray, layers: list[DenseLayer]) -> np.ndarray:
    y = x.astype(np.float64)
    for d in layers:
        y = y @ d.weight.astype(np.float64).T
        if d.bias is not None:
            y = y + d.bias
        if d.activation == "relu":
            y = np.maximum(y, 0.0)
        elif d.activation == "leaky_relu":
            y = np.where(y >= 0.0, y, 0.01 * y)
        elif d.activation == "tanh":
            y = np.tanh(y)
        elif d.activation == "sigmoid":
            y = 1.0 / (1.0 + np.exp(-y))
        elif d.activation == "log_softmax":
            y = _log_softmax64(y)
        elif d.activation == "softmax":
            y = np.exp(_log_softmax64(y))
    return y


# ---- softmax kernels ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 15, 16, 17, 33, 1000, 8210])
@pytest.mark.parametrize("log", [False, True])
def test_softmax_rows_matches_float64(isa: str, n: int, log: bool, rng) -> None:
    x = (rng.standard_normal((5, n)) * 8).astype(np.float32)
    x[1] += 500.0  # a large offset: only the max shift keeps exp finite
    x[2, : n // 2] = -np.inf  # masked logits
    y = _engine.softmax_rows(x.copy(), log)
    ref = _log_softmax64(x)
    if not log:
        ref = np.exp(ref)
    tol = 2e-6 * np.maximum(1.0, np.abs(ref)) if log else 1e-6
    finite = np.isfinite(ref)
    assert np.all(np.abs(y[finite] - ref[finite]) <= (tol[finite] if log else tol))
    if log:
        assert np.all(y[~finite] < -80.0)  # -inf logits: a huge negative log-probability
    else:
        assert np.all(np.abs(y[~finite] if (~finite).any() else 0.0) < 1e-30)
    assert np.allclose(np.exp(y.astype(np.float64)).sum(-1) if log else y.sum(-1), 1.0, atol=1e-5)


def test_softmax_rows_nan_and_inf_make_their_row_nan(isa: str) -> None:
    x = np.zeros((4, 37), np.float32)
    x[0, 5] = np.nan
    x[1, 36] = np.nan  # in the scalar tail of the SIMD kernels
    x[2, 3] = np.inf
    x[3] = -np.inf
    for log in (False, True):
        y = _engine.softmax_rows(x.copy(), log)
        assert np.isnan(y).all(), (isa, log)  # numpy's formula gives NaN rows here too


def test_softmax_rows_leaves_padding_alone() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    y = _engine.softmax_rows(x.copy(), True, 10)
    assert np.array_equal(y[:, 10:], x[:, 10:])
    assert np.allclose(y[:, :10], _log_softmax64(x[:, :10]), atol=2e-6)
    with pytest.raises(ValueError, match="n must be in"):
        _engine.softmax_rows(x.copy(), True, 13)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        _engine.softmax_rows(x.astype(np.float64), True)


# ---- the dense products ------------------------------------------------------------------


@pytest.mark.parametrize("rows", [0, 1, 5, PACKED_MAX_ROWS, PACKED_MAX_ROWS + 1, 300])
@pytest.mark.parametrize("out_features", [1, 29, 64, 100, 257])
@pytest.mark.parametrize(
    "activation", [None, "relu", "leaky_relu", "sigmoid", "tanh", "log_softmax", "softmax"]
)
def test_dense_layer_matches_float64(
    isa: str, rows: int, out_features: int, activation: str | None, rng
) -> None:
    k = 70
    w = rng.standard_normal((out_features, k)).astype(np.float32) * 0.3
    b = rng.standard_normal(out_features).astype(np.float32)
    layer = DenseLayer(w, b if out_features % 2 else None, activation)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    y = apply_head(x, [CompiledDense.of(layer)])
    assert y.shape == (rows, out_features) and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y, _head64(x, [layer]), rtol=1e-5, atol=2e-5)


def test_head_over_a_sequence_matches_per_step_products(rng) -> None:
    """(T, B, F) in one product equals the float64 product of every timestep."""
    layers = [
        DenseLayer(rng.standard_normal((90, 40)).astype(np.float32) * 0.2, None, "tanh"),
        DenseLayer(
            rng.standard_normal((1000, 90)).astype(np.float32) * 0.2,
            rng.standard_normal(1000).astype(np.float32),
            "log_softmax",
        ),
    ]
    head = [CompiledDense.of(d) for d in layers]
    x = rng.standard_normal((20, 3, 40)).astype(np.float32)
    for threads in (1, 2):
        y = apply_head(x, head, threads)
        assert y.shape == (20, 3, 1000)
        for t in range(20):
            np.testing.assert_allclose(y[t], _head64(x[t], layers), rtol=1e-5, atol=3e-5)


def test_packed_split_over_threads_equals_one_thread(rng) -> None:
    w = rng.standard_normal((3000, 512)).astype(np.float32)
    head = [CompiledDense.of(DenseLayer(w, None, None))]
    x = rng.standard_normal((20, 512)).astype(np.float32)  # 31M multiply-adds: split
    one, two = apply_head(x, head, 1), apply_head(x, head, 2)
    assert np.array_equal(one, two)  # the same blocks, the same sums, whoever computes them


def test_dense_refuses_bad_arguments() -> None:
    x = np.zeros((2, 3), np.float32)
    w = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="weight has shape"):
        _engine.dense(x, np.zeros((4, 5), np.float32), None, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="out has shape"):
        _engine.dense(x, w, None, np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="bias must be"):
        _engine.dense(x, w, np.zeros(3, np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="x must be"):
        _engine.dense(x.astype(np.float64), w, None, np.zeros((2, 4), np.float32))


# ---- whole models ------------------------------------------------------------------------


def test_bilstm_ctc_head_matches_torch(rng) -> None:
    """The issue's shape, scaled down: BiLSTM -> Linear(2H -> V) -> log_softmax, T=20."""
    torch = require("torch")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(48, 64, bidirectional=True)
    fc = torch.nn.Linear(128, 821)
    state = {**{f"rnn.{k}": v for k, v in lstm.state_dict().items()}}
    state.update({f"fc.{k}": v for k, v in fc.state_dict().items()})
    model = lstm_infer.load(state, head_activation="log_softmax")
    for batch in (1, 3):
        x = rng.standard_normal((20, batch, 48)).astype(np.float32)
        with torch.no_grad():
            ref = torch.log_softmax(fc(lstm(torch.from_numpy(x))[0]), -1)
        for threads in (1, 2):
            y = model.run({"input": x}, threads=threads)["output"]
            np.testing.assert_allclose(y, ref.numpy(), rtol=1e-5, atol=2e-5)


class _Recorder:
    """A BLAS thread control that records what it is set to (the real one underneath)."""

    def __init__(self, real: runtime_threads.BlasControl) -> None:
        self.real = real
        self.calls: list[int] = []

    def control(self) -> runtime_threads.BlasControl:
        def put(n: int) -> None:
            self.calls.append(n)
            self.real.set(n)

        return runtime_threads.BlasControl(self.real.library, self.real.get, put)


def test_threads_govern_blas_threads_and_restore_the_process_setting(monkeypatch, rng) -> None:
    real = runtime_threads.blas_control()
    assert real is not None, "scipy's OpenBLAS thread control was not found"
    recorder = _Recorder(real)
    monkeypatch.setattr(runtime_threads, "_FOUND", [recorder.control()])
    before = real.get()
    real.set(2)
    try:
        layers = [DenseLayer(rng.standard_normal((50, 16)).astype(np.float32), None, None)]
        w = rng.standard_normal((16, 8)).astype(np.float32)
        x = rng.standard_normal((100, 8)).astype(np.float32)
        head = [CompiledDense.of(d) for d in layers]
        apply_head(x @ w.T, head, threads=1)  # 100 rows: the sgemm path
        assert recorder.calls == [1, 2]  # one BLAS thread inside, the process's 2 after
        assert real.get() == 2
        recorder.calls.clear()
        with runtime_threads.blas_threads(1):
            with runtime_threads.blas_threads(1):
                assert real.get() == 1
            assert real.get() == 1  # the outer block still runs
        assert real.get() == 2
        assert recorder.calls == [1, 2]
    finally:
        real.set(before)


def test_model_run_uses_one_blas_thread_by_default(monkeypatch, rng) -> None:
    real = runtime_threads.blas_control()
    assert real is not None
    recorder = _Recorder(real)
    monkeypatch.setattr(runtime_threads, "_FOUND", [recorder.control()])
    before = real.get()
    real.set(2)
    try:
        w = rng.standard_normal((4 * 300, 300)).astype(np.float32) * 0.05
        r = rng.standard_normal((4 * 300, 300)).astype(np.float32) * 0.05
        model = lstm_infer.Model.from_onnx_weights("lstm", w[None], r[None])
        x = rng.standard_normal((100, 2, 300)).astype(np.float32)  # 200 rows: sgemm inside
        model.run({"X": x})
        assert recorder.calls and set(recorder.calls[:-1]) == {1} and recorder.calls[-1] == 2
        assert real.get() == 2
    finally:
        real.set(before)
