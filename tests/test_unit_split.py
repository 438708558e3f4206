"""threads > 1 splitting one layer's units among threads (the unit split) gives the results of
threads = 1: every cell, quantized formats, ragged and reversed rows, initial states, token
inputs; layers it does not support fall back to batch slices; bad inputs fail before any
thread starts (a part left waiting at the per-step barrier would hang: each test that could
hang runs under a timeout)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import lstm_infer
from lstm_infer import _engine
from lstm_infer import model as model_module
from lstm_infer._spec import (
    DirectionWeights,
    ModelSpec,
    RecurrentLayer,
    Signature,
    default_activations,
)

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


@pytest.fixture
def force_unit_split(monkeypatch):
    """Unit split for every supported layer, however small; counts the splits that ran."""
    ran: list[int] = []
    original = model_module._run_unit_split

    def spy(plan, *args):
        done = original(plan, *args)
        ran.append(int(done))
        return done

    monkeypatch.setattr(model_module, "_UNIT_SPLIT_MIN_WORK", 0)
    monkeypatch.setattr(model_module, "_prefer_unit_split", lambda *a, **k: True)
    monkeypatch.setattr(model_module, "_run_unit_split", spy)
    return ran


def _in_time(fn, seconds: float = 60.0):
    """fn() on a thread; fails (instead of hanging the run) when it does not finish."""
    box: dict[str, object] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001  (handed to the test)
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "hung: a part was left waiting at the barrier"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


def _model(rng, cell, H, I, direction="forward", lbr=0, fmt="float32", scale=None):
    G = GATES[cell]
    D = 2 if direction == "bidirectional" else 1
    s = scale if scale is not None else 1.0 / np.sqrt(H)
    W = rng.uniform(-s, s, (D, G * H, I)).astype(np.float32)
    R = rng.uniform(-s, s, (D, G * H, H)).astype(np.float32)
    B = rng.uniform(-0.2, 0.2, (D, 2 * G * H)).astype(np.float32)
    model = lstm_infer.Model.from_onnx_weights(
        cell, W, R, B, direction=direction, linear_before_reset=lbr
    )
    return model if fmt == "float32" else model.quantize(fmt)


def _feeds(rng, cell, T, batch, I, H, D=1, ragged=False, states=False):
    feeds = {"X": rng.standard_normal((T, batch, I)).astype(np.float32)}
    if ragged:
        lens = rng.integers(0, T + 1, batch).astype(np.int32)
        lens[0] = T
        feeds["sequence_lens"] = lens
    if states:
        feeds["initial_h"] = rng.standard_normal((D, batch, H)).astype(np.float32)
        if cell == "lstm":
            feeds["initial_c"] = rng.standard_normal((D, batch, H)).astype(np.float32)
    return feeds


def _assert_same(a, b, atol):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], atol=atol, rtol=0, err_msg=name)


CASES = [
    ("lstm", 0),
    ("gru", 0),
    ("gru", 1),
    ("rnn", 0),
]


@pytest.mark.parametrize("cell,lbr", CASES)
@pytest.mark.parametrize("batch,T", [(1, 30), (3, 1), (16, 12)])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("H", [72, 40])  # 5 blocks (uneven parts), 3 blocks (H % 16 != 0)
def test_unit_split_equals_one_thread(rng, force_unit_split, cell, lbr, batch, T, direction, H):
    model = _model(rng, cell, H, 24, direction, lbr)
    feeds = _feeds(rng, cell, T, batch, 24, H, ragged=batch > 1, states=True)
    one = model.run(feeds, threads=1)
    two = _in_time(lambda: model.run(feeds, threads=2))
    assert force_unit_split == [1]
    # The same kernels on the same blocks: identical, not merely close.
    _assert_same(one, two, atol=0)


@pytest.mark.parametrize("fmt", ["bfloat16", "int8"])
@pytest.mark.parametrize("cell,lbr", CASES)
@pytest.mark.parametrize("batch", [1, 16])
def test_unit_split_quantized(rng, quant_isa, force_unit_split, fmt, cell, lbr, batch):
    model = _model(rng, cell, 72, 24, lbr=lbr, fmt=fmt)
    feeds = _feeds(rng, cell, 40, batch, 24, 72, ragged=batch > 1, states=True)
    one = model.run(feeds, threads=1)
    two = _in_time(lambda: model.run(feeds, threads=2))
    assert force_unit_split == [1]
    # Per part the input projection may take sgemm over fewer rows of W (another rounding
    # of the same fp32 sums); int8 then quantizes those activations per step.
    _assert_same(one, two, atol=1e-5)


@pytest.mark.parametrize("threads", [2, 3])
def test_large_input_weights_take_sgemm_per_part(rng, force_unit_split, threads):
    # W over 1 MB: the input projection is sgemm over each part's rows of W.
    model = _model(rng, "lstm", 48, 1400)
    feeds = _feeds(rng, "lstm", 6, 3, 1400, 48, ragged=True, states=True)
    one = model.run(feeds, threads=1)
    many = _in_time(lambda: model.run(feeds, threads=threads))
    assert force_unit_split == [1]
    _assert_same(one, many, atol=1e-5)  # another rounding of sums over 1400 inputs


def test_token_inputs(rng, force_unit_split):
    H = 40
    dw = DirectionWeights(
        w=rng.uniform(-0.5, 0.5, (4 * H, 5)).astype(np.float32),
        r=rng.uniform(-0.3, 0.3, (4 * H, H)).astype(np.float32),
        bias=rng.uniform(-0.2, 0.2, 4 * H).astype(np.float32),
        activations=default_activations("lstm"),
    )
    layer = RecurrentLayer("lstm", 5, H, "forward", [dw])
    sig = Signature("sequence", 1, {"x": "tokens"}, {"y": "y", "y_h": "h"})
    emb = rng.standard_normal((11, 5)).astype(np.float32)
    model = lstm_infer.Model(ModelSpec([layer], sig, embedding=emb))
    tokens = rng.integers(0, 11, (3, 20)).astype(np.int64)
    name = model.inputs[0].name
    one = model.run({name: tokens}, threads=1)
    two = _in_time(lambda: model.run({name: tokens}, threads=2))
    assert force_unit_split == [1]
    _assert_same(one, two, atol=0)
    with pytest.raises(ValueError):
        _in_time(lambda: model.run({name: tokens + 11}, threads=2))


def test_unsupported_layers_fall_back(rng, force_unit_split):
    # Bidirectional: the two directions already take the two threads.
    model = _model(rng, "gru", 40, 8, "bidirectional")
    feeds = _feeds(rng, "gru", 9, 5, 8, 40, D=2, ragged=True, states=True)
    _assert_same(model.run(feeds, threads=1), _in_time(lambda: model.run(feeds, threads=2)), 0)
    assert force_unit_split == []
    # Projection: batch slices.
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    proj = lstm_infer.load(torch.nn.LSTM(8, 40, proj_size=20))
    assert not _engine.supports_unit_split(proj._plans[0][0])
    x = rng.standard_normal((9, 5, 8)).astype(np.float32)
    name = proj.inputs[0].name
    _assert_same(
        proj.run({name: x}, threads=1), _in_time(lambda: proj.run({name: x}, threads=2)), 0
    )
    assert force_unit_split == []


def test_bad_inputs_fail_before_threads_start(rng, force_unit_split):
    model = _model(rng, "lstm", 40, 8)
    feeds = _feeds(rng, "lstm", 9, 3, 8, 40)
    feeds["sequence_lens"] = np.array([9, 10, 1], np.int32)  # 10 > T
    with pytest.raises(ValueError):
        _in_time(lambda: model.run(feeds, threads=2))
    feeds["sequence_lens"] = np.array([9, -1, 1], np.int32)
    with pytest.raises(ValueError):
        _in_time(lambda: model.run(feeds, threads=2))
    # The engine object itself: every check before a part can run.
    plan = model._plans[0][0]
    x = feeds["X"]
    h = np.zeros((3, 40), np.float32)
    c = np.zeros((3, 40), np.float32)
    y = np.zeros((9, 3, 40), np.float32)
    bad = [
        dict(lens=np.array([1, 2, 30], np.int32)),
        dict(lens=np.array([1, 2], np.int32)),
        dict(h=np.zeros((2, 40), np.float32)),
        dict(c=None),
        dict(c=np.zeros((3, 39), np.float32)),
        dict(y=np.zeros((9, 3, 41), np.float32)),
        dict(x=np.zeros((9, 3, 7), np.float32)),
        dict(parts=0),
        dict(parts=4),  # 3 blocks
    ]
    for change in bad:
        args = dict(lens=None, h=h, c=c, y=y, x=x, parts=2) | change
        with pytest.raises((ValueError, TypeError)):
            _engine.UnitSplit(
                plan, args["x"], args["lens"], False, args["h"], args["c"], args["y"], args["parts"]
            )
    assert force_unit_split == []  # run() rejected the lengths before choosing a split


def test_busy_pool_falls_back_to_batch_slices(rng, force_unit_split):
    model = _model(rng, "rnn", 40, 8)
    feeds = _feeds(rng, "rnn", 9, 4, 8, 40)
    lock = model_module._split_lock(2)
    with lock:
        two = _in_time(lambda: model.run(feeds, threads=2))
    assert force_unit_split == [0]
    _assert_same(model.run(feeds, threads=1), two, 0)


def test_default_rule():
    prefer = model_module._prefer_unit_split
    assert prefer(1, 1024, 4) and prefer(16, 256, 3) and prefer(64, 1024, 4)
    assert not prefer(1, 64, 4) and not prefer(64, 128, 1)
    # Products on AMX tiles: batch slices below H = 512, where a tile step is a few us.
    assert not prefer(16, 256, 4, tiles="int8") and not prefer(8, 256, 3, tiles="int8")
    assert prefer(16, 1024, 4, tiles="int8") and prefer(16, 256, 4, tiles=None)
    assert prefer(16, 256, 4, tiles="bfloat16") and not prefer(16, 128, 4, tiles="bfloat16")


def test_stacked_layers(rng, force_unit_split):
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    model = lstm_infer.load(torch.nn.GRU(8, 40, num_layers=2))
    name = model.inputs[0].name
    x = rng.standard_normal((7, 3, 8)).astype(np.float32)
    one = model.run({name: x}, threads=1)
    two = _in_time(lambda: model.run({name: x}, threads=2))
    assert force_unit_split == [1, 1]
    _assert_same(one, two, atol=0)


def test_concurrent_runs_never_wait_on_each_other(rng, force_unit_split):
    # Several callers share one pool: one unit split at a time, the others take batch slices.
    model = _model(rng, "lstm", 72, 16)
    feeds = _feeds(rng, "lstm", 20, 4, 16, 72, ragged=True, states=True)
    want = model.run(feeds, threads=1)
    results: list[dict] = []

    def caller():
        for _ in range(10):
            results.append(model.run(feeds, threads=2))

    def all_callers():
        workers = [threading.Thread(target=caller) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    _in_time(all_callers, 120)
    assert len(results) == 40 and 1 in force_unit_split
    for got in results:
        _assert_same(want, got, atol=0)


@pytest.mark.parametrize("fmt", ["bfloat16", "int8"])
@pytest.mark.parametrize("batch", [8, 12, 40])
def test_batch_slices_of_quantized_layers_give_one_threads_numbers(rng, fmt, batch):
    """threads=2 slicing a quantized layer's batch (H = 64: too small for a unit split; T = 400
    is enough work for slices) gives exactly the one-thread numbers. A bf16 batch at or over the
    rounded-product threshold must not be cut into slices under it, which would switch those
    rows to the fp32-accurate products (on tables with a bf16 dot product: 1.7e-3 apart).
    Tables without one (AVX2) have no rounded mode: their bf16 input projection is one sgemm
    over the dequantized weights, whose sums for a row move by an ulp with the columns around
    it (OpenBLAS's edge kernels; fp32 layers on sgemm do the same), so there the slices must
    agree to float32 rounding, far under the 1.7e-3 of a mode switch."""
    model = _model(rng, "lstm", 64, 64, fmt=fmt)
    feeds = _feeds(rng, "lstm", 400, batch, 64, 64)  # >= 1e8 multiply-adds: slices run
    one = model.run(feeds, threads=1)
    two = _in_time(lambda: model.run(feeds, threads=2))
    on_sgemm = fmt == "bfloat16" and _engine.bf16_rounded_min_rows() is None
    _assert_same(one, two, atol=1e-6 if on_sgemm else 0)
