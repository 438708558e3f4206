"""StreamPool: many sessions in one slab, any subset stepped as one batch.

Every session's outputs are checked against a solo ``model.stream()`` fed the same inputs
and, for a one-layer LSTM, against the float64 numpy reference; bad input must raise a
clear error and leave every session's state as it was.

Over 600 lines: the slab's API and the submit front end (asyncio and threads, cancellation,
closed sessions in a batch) share one fixture set and one solo-stream reference; the file
would split along that line (submit tests apart) when it grows further.
"""

from __future__ import annotations

import asyncio
import threading
import tracemalloc

import numpy as np
import pytest
from conftest import require
from fuzz_settings import fuzz_settings
from reference import lstm_ref

import lstm_infer
from lstm_infer._onnx_weights import layer_from_onnx
from lstm_infer._spec import DenseLayer, ModelSpec, Signature
from lstm_infer.errors import InputError, InputTypeError, SessionError, StreamError

hypothesis = require("hypothesis")
given, st = hypothesis.given, hypothesis.strategies

I = 6


def _weights(rng: np.random.Generator, cell: str, I: int, H: int) -> tuple[np.ndarray, ...]:
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    s = 1 / np.sqrt(H)
    W = rng.uniform(-s, s, (1, G * H, I)).astype(np.float32)
    R = rng.uniform(-s, s, (1, G * H, H)).astype(np.float32)
    B = rng.uniform(-s, s, (1, 2 * G * H)).astype(np.float32)
    return W, R, B


def _stack(rng: np.random.Generator, head: bool = False, vocab: int = 0) -> lstm_infer.Model:
    """LSTM(12) -> GRU(9) -> RNN(7), optionally with an embedding and a dense head."""
    layers, size = [], I
    for cell, H in (("lstm", 12), ("gru", 9), ("rnn", 7)):
        layers.append(layer_from_onnx(cell, *_weights(rng, cell, size, H)))
        size = H
    sig = Signature("sequence", 0, {"x": "x"}, {"y": "y", "y_h": "h_n"})
    dense = [DenseLayer(rng.standard_normal((5, 7)).astype(np.float32), None, "log_softmax")]
    emb = rng.standard_normal((vocab, I)).astype(np.float32) if vocab else None
    return lstm_infer.Model(ModelSpec(layers, sig, embedding=emb, head=dense if head else []))


_FUZZ_MODEL = _stack(np.random.default_rng(7))


@pytest.fixture
def lstm(rng: np.random.Generator) -> tuple[lstm_infer.Model, tuple[np.ndarray, ...]]:
    W, R, B = _weights(rng, "lstm", I, 16)
    return lstm_infer.Model.from_onnx_weights("lstm", W, R, B), (W, R, B)


def _inputs(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    return [rng.standard_normal(I).astype(np.float32) for _ in range(n)]


def test_64_sessions_equal_solo_streams_and_the_float64_reference(isa, rng, lstm) -> None:
    model, (W, R, B) = lstm
    pool = lstm_infer.StreamPool(model)
    sids = [pool.open() for _ in range(64)]
    T = 6
    xs = rng.standard_normal((T, 64, I)).astype(np.float32)
    got = np.stack([np.stack(list(pool.step(dict(zip(sids, xs[t]))).values())) for t in range(T)])
    for k in (0, 17, 63):
        solo = model.stream(1)
        ref = np.stack([solo.step(xs[t, k : k + 1])[0] for t in range(T)])
        np.testing.assert_allclose(got[:, k], ref, atol=1e-6, rtol=0)
    y64 = lstm_ref(xs.astype(np.float64), W, R, B)[0][:, 0]
    np.testing.assert_allclose(got, y64, atol=1e-5, rtol=0)


@pytest.mark.parametrize("head", [False, True])
def test_ragged_subsets_joining_and_leaving(rng, head: bool) -> None:
    """Sessions open and close mid-run and each step advances a random subset: each session's
    outputs equal a solo stream fed only its own inputs; the growing slab keeps them."""
    model = _stack(rng, head=head)
    pool = lstm_infer.StreamPool(model)
    solo: dict[int, lstm_infer.Stream] = {}
    for t in range(40):
        if t % 3 == 0 or not solo:
            for _ in range(int(rng.integers(1, 4))):
                sid = pool.open()
                solo[sid] = model.stream(1)
        if t % 5 == 4 and len(solo) > 2:
            gone = list(solo)[int(rng.integers(len(solo)))]
            pool.close(gone)
            del solo[gone]
        chosen = [s for s in solo if rng.random() < 0.6] or [next(iter(solo))]
        feeds = dict(zip(chosen, _inputs(rng, len(chosen))))
        got = pool.step(feeds)
        assert list(got) == chosen
        for sid in chosen:
            np.testing.assert_allclose(got[sid], solo[sid].step(feeds[sid][None])[0], atol=1e-6)
    assert len(pool) == len(solo) and pool.capacity >= len(solo)
    for sid, stream in solo.items():
        st = pool.state(sid)
        for a, b in zip(st["h"] + st["c"], stream.state["h"] + stream.state["c"]):
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_allclose(a, b, atol=1e-6)


def test_token_model_sessions(rng) -> None:
    model = _stack(rng, vocab=11)
    pool = lstm_infer.StreamPool(model, capacity=3)
    assert pool.takes_tokens
    sids = [pool.open() for _ in range(3)]
    solo = [model.stream(1) for _ in sids]
    for _ in range(5):
        toks = rng.integers(0, 11, 3)
        got = pool.step({s: int(t) for s, t in zip(sids, toks)})
        for s, t, stream in zip(sids, toks, solo):
            np.testing.assert_allclose(got[s], stream.step(np.array([t]))[0], atol=1e-6)
    before = [pool.state(s) for s in sids]
    with pytest.raises(InputError, match="token ids"):
        pool.step({sids[0]: 3, sids[1]: 11})
    with pytest.raises(InputTypeError):
        pool.step({sids[0]: 1.5})
    _assert_states_equal(before, [pool.state(s) for s in sids])


def test_fork_reset_and_set_state(rng, lstm) -> None:
    model, _ = lstm
    pool = lstm_infer.StreamPool(model, capacity=4)
    a = pool.open()
    xs = _inputs(rng, 8)
    for x in xs[:4]:
        pool.step({a: x})
    b = pool.fork(a)
    snap = pool.state(a)
    ya = [pool.step({a: x})[a] for x in xs[4:]]
    yb = [pool.step({b: x})[b] for x in xs[4:]]
    np.testing.assert_allclose(ya, yb, atol=1e-6)  # the fork continues from the same state
    pool.set_state(a, snap)
    np.testing.assert_allclose(pool.step({a: xs[4]})[a], ya[0], atol=1e-6)
    # A snapshot moves between a pool session and a solo stream.
    stream = model.stream(1)
    stream.state = snap
    np.testing.assert_allclose(stream.step(xs[4][None])[0], ya[0], atol=1e-6)
    pool.reset(a)
    fresh = model.stream(1)
    np.testing.assert_allclose(pool.step({a: xs[0]})[a], fresh.step(xs[0][None])[0], atol=1e-6)
    h0 = rng.standard_normal((1, 1, 16)).astype(np.float32)
    pool.reset(a, {"initial_h": h0})
    fresh.reset({"initial_h": h0})
    np.testing.assert_allclose(pool.step({a: xs[1]})[a], fresh.step(xs[1][None])[0], atol=1e-6)
    with pytest.raises(InputError):
        pool.reset(a, {"initial_h": np.zeros((1, 2, 16))})
    with pytest.raises(InputError):
        pool.set_state(a, {"h": [np.zeros((1, 3))], "c": [np.zeros((1, 16))]})


def _assert_states_equal(before: list, after: list) -> None:
    for s0, s1 in zip(before, after):
        for a, b in zip(s0["h"] + s0["c"], s1["h"] + s1["c"]):
            if a is not None:
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(I + 1, np.float32),
        np.zeros((2, I), np.float32),
        np.zeros(I, np.complex64),
        np.array(["a"] * I),
        [1.0, None, 2.0, 3.0, 4.0, 5.0],
        3.0,
    ],
)
def test_bad_input_raises_and_changes_no_session(rng, lstm, bad) -> None:
    model, _ = lstm
    pool = lstm_infer.StreamPool(model)
    sids = [pool.open() for _ in range(3)]
    for _ in range(2):
        pool.step(dict(zip(sids, _inputs(rng, 3))))
    before = [pool.state(s) for s in sids]
    with pytest.raises((InputError, InputTypeError), match=f"session {sids[1]}"):
        pool.step({sids[0]: _inputs(rng, 1)[0], sids[1]: bad, sids[2]: _inputs(rng, 1)[0]})
    _assert_states_equal(before, [pool.state(s) for s in sids])


def test_unknown_and_closed_sessions(rng, lstm) -> None:
    model, _ = lstm
    pool = lstm_infer.StreamPool(model, capacity=2)
    a, b = pool.open(), pool.open()
    with pytest.raises(StreamError, match="full"):
        pool.open()
    pool.close(b)
    for call in (
        lambda: pool.step({b: _inputs(rng, 1)[0]}),
        lambda: pool.close(b),
        lambda: pool.state(b),
        lambda: pool.fork(b),
        lambda: pool.reset(b),
        lambda: pool.step({"a": _inputs(rng, 1)[0]}),
        lambda: pool.step({True: _inputs(rng, 1)[0]}),
    ):
        with pytest.raises(SessionError, match="not open"):
            call()
    c = pool.open()  # b's row is reused, but b's id stays invalid
    assert c not in (a, b) and b not in pool
    with pytest.raises(InputTypeError):
        pool.step([(a, _inputs(rng, 1)[0])])  # type: ignore[arg-type]
    assert pool.step({}) == {}


def test_bidirectional_model_is_refused(rng) -> None:
    W = rng.standard_normal((2, 8, 3)).astype(np.float32)
    R = rng.standard_normal((2, 8, 2)).astype(np.float32)
    model = lstm_infer.Model.from_onnx_weights("lstm", W, R, direction="bidirectional")
    with pytest.raises(StreamError, match="bidirectional"):
        lstm_infer.StreamPool(model)


def test_open_close_cycles_keep_memory_flat(rng, lstm) -> None:
    model, _ = lstm
    pool = lstm_infer.StreamPool(model)
    keep = [pool.open() for _ in range(5)]
    x = _inputs(rng, 1)[0]

    def cycle(n: int) -> None:
        for _ in range(n):
            sid = pool.open()
            pool.step({sid: x, keep[0]: x})
            pool.close(pool.fork(sid))
            pool.close(sid)

    cycle(50)
    tracemalloc.start()
    try:
        start = tracemalloc.take_snapshot()
        cycle(1000)
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(start, "lineno"))
    finally:
        tracemalloc.stop()
    assert pool.capacity == 8 and len(pool) == 5
    assert grown < 64 * 1024, f"1,000 open/close cycles grew traced memory by {grown} bytes"


def test_threads_stepping_disjoint_sessions(rng, lstm) -> None:
    model, _ = lstm
    pool = lstm_infer.StreamPool(model)
    per_thread = 4
    sids = [[pool.open() for _ in range(per_thread)] for _ in range(4)]
    xs = rng.standard_normal((4, 20, per_thread, I)).astype(np.float32)
    outs: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for t in range(20):
                got = pool.step(dict(zip(sids[k], xs[k, t])))
                for s in sids[k]:
                    outs.setdefault(s, []).append(got[s])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors
    for k in range(4):
        for j, s in enumerate(sids[k]):
            solo = model.stream(1)
            ref = [solo.step(xs[k, t, j][None])[0] for t in range(20)]
            np.testing.assert_allclose(outs[s], ref, atol=1e-6)


def test_submit_batches_concurrent_coroutines(rng, lstm) -> None:
    model, _ = lstm
    T, n = 8, 16
    xs = rng.standard_normal((n, T, I)).astype(np.float32)

    async def session(pool: lstm_infer.StreamPool, k: int) -> list[np.ndarray]:
        sid = pool.open()
        out = []
        for t in range(T):
            out.append(await pool.submit(sid, xs[k, t]))
        pool.close(sid)
        return out

    async def main(pool: lstm_infer.StreamPool) -> list[list[np.ndarray]]:
        return await asyncio.wait_for(
            asyncio.gather(*(session(pool, k) for k in range(n))), timeout=60
        )

    with lstm_infer.StreamPool(model, max_batch=8, max_wait_us=2000) as pool:
        outs = asyncio.run(main(pool))
        stats = pool.stats
    for k in range(n):
        solo = model.stream(1)
        ref = [solo.step(xs[k, t][None])[0] for t in range(T)]
        np.testing.assert_allclose(outs[k], ref, atol=1e-6)
    assert stats.steps == n * T
    assert stats.batches < n * T  # some steps ran together
    assert max(stats.batch_sizes) <= 8


def test_submit_blocking_from_threads_and_errors(rng, lstm) -> None:
    model, _ = lstm
    with lstm_infer.StreamPool(model, max_wait_us=1000) as pool:
        sids = [pool.open() for _ in range(6)]
        xs = rng.standard_normal((6, 10, I)).astype(np.float32)
        outs: dict[int, list[np.ndarray]] = {s: [] for s in sids}

        def work(k: int) -> None:
            for t in range(10):
                outs[sids[k]].append(pool.submit_blocking(sids[k], xs[k, t], timeout=30))

        threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
        for k, s in enumerate(sids):
            solo = model.stream(1)
            ref = [solo.step(xs[k, t][None])[0] for t in range(10)]
            np.testing.assert_allclose(outs[s], ref, atol=1e-6)
        before = pool.state(sids[0])
        with pytest.raises(InputError, match=f"session {sids[0]}"):
            pool.submit_blocking(sids[0], np.zeros(I + 2), timeout=30)
        with pytest.raises(SessionError):
            pool.submit_blocking(12345, np.zeros(I), timeout=30)
        _assert_states_equal([before], [pool.state(sids[0])])


def test_second_submit_for_a_session_in_flight_raises(rng, lstm) -> None:
    model, _ = lstm

    async def main(pool: lstm_infer.StreamPool) -> None:
        a, b = pool.open(), pool.open()
        x = _inputs(rng, 1)[0]
        # a's step waits for b's (or for max_wait_us, far away): it stays in flight.
        first = asyncio.ensure_future(pool.submit(a, x))
        await asyncio.sleep(0)
        with pytest.raises(StreamError, match="in flight"):
            await pool.submit(a, x)
        # Every open session has a step waiting: the batch runs at once.
        ya, yb = await asyncio.wait_for(asyncio.gather(first, pool.submit(b, x)), timeout=30)
        np.testing.assert_allclose(ya, yb, atol=1e-6)
        ref = model.stream(1).step(x[None])[0]
        np.testing.assert_allclose(ya, ref, atol=1e-6)

    with lstm_infer.StreamPool(model, max_wait_us=60e6) as pool:
        asyncio.run(main(pool))


def test_session_closed_while_its_step_waits(rng, lstm) -> None:
    """Closing the session a batch waits for runs the batch; a closed session's own
    waiting step gets SessionError while the others are stepped as usual."""
    model, _ = lstm

    async def main(pool: lstm_infer.StreamPool) -> None:
        a, b = pool.open(), pool.open()
        x = _inputs(rng, 1)[0]
        first = asyncio.ensure_future(pool.submit(a, x))
        await asyncio.sleep(0)  # a waits for b (max_wait_us is far away)
        pool.close(b)  # a's is now the only session's step: the batch runs without b's
        ya = await asyncio.wait_for(first, timeout=30)
        np.testing.assert_allclose(ya, model.stream(1).step(x[None])[0], atol=1e-6)
        b = pool.open()
        first = asyncio.ensure_future(pool.submit(a, x))
        await asyncio.sleep(0)  # a waits for b again
        pool.close(a)
        yb = await asyncio.wait_for(pool.submit(b, x), timeout=30)  # one session open: runs
        with pytest.raises(SessionError, match="not open"):
            await asyncio.wait_for(first, timeout=30)
        np.testing.assert_allclose(yb, model.stream(1).step(x[None])[0], atol=1e-6)

    with lstm_infer.StreamPool(model, max_wait_us=60e6) as pool:
        asyncio.run(main(pool))


def test_submit_from_many_event_loops_and_threads(rng, lstm) -> None:
    """Three event loops (four coroutines each) and three threads submit to one pool at
    once: batches mix their steps, and every session's outputs equal a solo stream's."""
    model, _ = lstm
    T, loops, per_loop, threads = 10, 3, 4, 3
    n = loops * per_loop + threads
    xs = rng.standard_normal((n, T, I)).astype(np.float32)
    outs: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(loops + threads)

    with lstm_infer.StreamPool(model, max_wait_us=200_000) as pool:
        sids = [pool.open() for _ in range(n)]

        async def session(k: int) -> None:
            outs[k] = [await pool.submit(sids[k], xs[k, t]) for t in range(T)]

        async def loop_main(first: int) -> None:
            group = (session(k) for k in range(first, first + per_loop))
            await asyncio.wait_for(asyncio.gather(*group), timeout=60)

        def run_loop(first: int) -> None:
            try:
                start.wait(30)
                asyncio.run(loop_main(first))
            except BaseException as exc:
                errors.append(exc)

        def run_thread(k: int) -> None:
            try:
                start.wait(30)
                outs[k] = [pool.submit_blocking(sids[k], xs[k, t], timeout=30) for t in range(T)]
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=run_loop, args=(j * per_loop,)) for j in range(loops)]
        workers += [threading.Thread(target=run_thread, args=(n - 1 - j,)) for j in range(threads)]
        for th in workers:
            th.start()
        for th in workers:
            th.join(timeout=120)
        stats = pool.stats
    assert not errors and not any(th.is_alive() for th in workers)
    for k in range(n):
        solo = model.stream(1)
        ref = [solo.step(xs[k, t][None])[0] for t in range(T)]
        np.testing.assert_allclose(outs[k], ref, atol=1e-6)
    assert stats.steps == n * T
    assert max(stats.batch_sizes) > per_loop  # a batch held steps of several submitters


def test_cancelled_waiting_submit_is_dropped_from_its_batch(rng, lstm) -> None:
    """A coroutine cancelled while its step waits: the batch runs without that step (the
    session keeps its state), the others get their results."""
    model, _ = lstm
    x = _inputs(rng, 4)

    async def main(pool: lstm_infer.StreamPool) -> None:
        a, b, c, d = (pool.open() for _ in range(4))
        tasks = [asyncio.ensure_future(pool.submit(s, x[k])) for k, s in enumerate((a, b, c))]
        await asyncio.sleep(0)  # the three wait for d (max_wait_us is far away)
        tasks[2].cancel()
        tasks.append(asyncio.ensure_future(pool.submit(d, x[3])))  # every session waits: runs
        ya, yb, yd = await asyncio.wait_for(asyncio.gather(*tasks[:2], tasks[3]), timeout=30)
        with pytest.raises(asyncio.CancelledError):
            await tasks[2]
        for y, k in ((ya, 0), (yb, 1), (yd, 3)):
            np.testing.assert_allclose(y, model.stream(1).step(x[k][None])[0], atol=1e-6)
        _assert_states_equal([model.stream(1).state], [pool.state(c)])  # c was not stepped
        assert pool.stats.steps == 3 and list(pool.stats.batch_sizes) == [3]
        for s in (a, b, d):
            pool.close(s)
        yc = await asyncio.wait_for(pool.submit(c, x[2]), timeout=30)  # c can step again
        np.testing.assert_allclose(yc, model.stream(1).step(x[2][None])[0], atol=1e-6)

    with lstm_infer.StreamPool(model, max_wait_us=60e6) as pool:
        asyncio.run(main(pool))


def test_cancelled_during_its_batch_leaves_the_others(rng, lstm) -> None:
    """A coroutine cancelled while its batch's kernel runs: the others get their results;
    the cancelled session's step did run (as documented), and it can submit again."""
    model, _ = lstm
    x = _inputs(rng, 3)
    running, release = threading.Event(), threading.Event()

    async def main(pool: lstm_infer.StreamPool) -> None:
        step = pool._step_batch_locked

        def held_step(sids: list[int], staged: np.ndarray) -> np.ndarray:
            running.set()
            assert release.wait(30)
            return step(sids, staged)

        pool._step_batch_locked = held_step
        a, b = pool.open(), pool.open()
        ta = asyncio.ensure_future(pool.submit(a, x[0]))
        tb = asyncio.ensure_future(pool.submit(b, x[1]))
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, running.wait, 30)
        ta.cancel()
        release.set()
        yb = await asyncio.wait_for(tb, timeout=30)
        with pytest.raises(asyncio.CancelledError):
            await ta
        np.testing.assert_allclose(yb, model.stream(1).step(x[1][None])[0], atol=1e-6)
        pool.close(b)  # a alone: its next step runs at once
        ya2 = await asyncio.wait_for(pool.submit(a, x[2]), timeout=30)
        solo = model.stream(1)
        solo.step(x[0][None])
        np.testing.assert_allclose(ya2, solo.step(x[2][None])[0], atol=1e-6)

    with lstm_infer.StreamPool(model, max_wait_us=60e6) as pool:
        asyncio.run(main(pool))


def test_closed_sessions_fail_alone_and_the_rest_run_as_one_batch(rng, lstm) -> None:
    """Two sessions of a waiting batch are closed: their submitters get SessionError, the
    other steps of the batch still run together, equal to solo streams."""
    model, _ = lstm
    x = _inputs(rng, 4)

    async def main(pool: lstm_infer.StreamPool) -> None:
        sids = [pool.open() for _ in range(5)]
        tasks = [asyncio.ensure_future(pool.submit(s, x[k])) for k, s in enumerate(sids[:4])]
        await asyncio.sleep(0)  # four wait for the fifth
        pool.close(sids[0])
        pool.close(sids[2])  # now every open session has a step waiting: the batch runs
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)
        for k in (0, 2):
            assert isinstance(done[k], SessionError) and f"session {sids[k]}" in str(done[k])
        for k in (1, 3):
            np.testing.assert_allclose(done[k], model.stream(1).step(x[k][None])[0], atol=1e-6)
        assert list(pool.stats.batch_sizes) == [2]

    with lstm_infer.StreamPool(model, max_wait_us=60e6) as pool:
        asyncio.run(main(pool))


def test_nan_stays_in_its_session(rng, lstm) -> None:
    """NaN and Inf propagate as in a stream, only through the session that was fed them."""
    model, _ = lstm
    pool = lstm_infer.StreamPool(model)
    a, b, c = pool.open(), pool.open(), pool.open()
    xs = _inputs(rng, 3)
    bad_a, bad_c = xs[0].copy(), xs[2].copy()
    bad_a[1], bad_c[0] = np.nan, np.inf
    solo = {s: model.stream(1) for s in (a, b, c)}
    for x in xs:
        feeds = {a: bad_a, b: x, c: bad_c}
        got = pool.step(feeds)
        for s, x_s in feeds.items():
            want = solo[s].step(x_s[None])[0]
            np.testing.assert_allclose(got[s], want, atol=1e-6, equal_nan=True)
    assert np.isnan(got[a]).all()
    assert np.isfinite(got[b]).all() and np.isfinite(pool.state(b)["h"][0]).all()


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.integers(0, 0)),
        st.tuples(st.just("close"), st.integers(0, 63)),
        st.tuples(st.just("fork"), st.integers(0, 63)),
        st.tuples(st.just("reset"), st.integers(0, 63)),
        st.tuples(st.just("restore"), st.integers(0, 4095)),
        st.tuples(st.just("step"), st.integers(1, 2**16 - 1)),
    ),
    min_size=1,
    max_size=40,
)


@fuzz_settings(40)
@given(ops=_OPS, seed=st.integers(0, 2**16))
def test_random_session_histories_equal_solo_streams(ops, seed) -> None:
    """Any history of open / close / fork / reset / set_state / ragged steps: every session
    behaves as a solo stream that went through the same history."""
    rng = np.random.default_rng(seed)
    model = _FUZZ_MODEL
    pool = lstm_infer.StreamPool(model)
    solo: dict[int, lstm_infer.Stream] = {}

    def pick(k: int) -> int:
        return list(solo)[k % len(solo)]

    for _ in range(3):  # sessions with different states to start from
        solo[pool.open()] = model.stream(1)
    for t in range(3):
        feeds = {s: rng.standard_normal(I).astype(np.float32) for s in list(solo)[t:]}
        pool.step(feeds)
        for s, x in feeds.items():
            solo[s].step(x[None])
    for op, k in ops:
        if op == "open" or not solo:
            solo[pool.open()] = model.stream(1)
        elif op == "close":
            sid = pick(k)
            pool.close(sid)
            del solo[sid]
        elif op == "fork":
            sid = pick(k)
            new = pool.fork(sid)
            solo[new] = model.stream(1)
            solo[new].state = solo[sid].state
        elif op == "reset":
            pool.reset(pick(k))
            solo[pick(k)].reset()
        elif op == "restore":
            dst, src = pick(k), pick(k // 64)
            pool.set_state(dst, pool.state(src))
            solo[dst].state = solo[src].state
        else:
            chosen = [s for i, s in enumerate(solo) if k >> (i % 16) & 1] or [pick(k)]
            feeds = {s: rng.standard_normal(I).astype(np.float32) for s in chosen}
            got = pool.step(feeds)
            for s in chosen:
                np.testing.assert_allclose(got[s], solo[s].step(feeds[s][None])[0], atol=1e-5)
    assert sorted(pool.sessions()) == sorted(solo)
    for sid, stream in solo.items():
        st_pool, st_solo = pool.state(sid), stream.state
        for a, b in zip(st_pool["h"] + st_pool["c"], st_solo["h"] + st_solo["c"]):
            if a is not None:
                np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("weight_format", ["bf16", "int8"])
def test_quantized_model_sessions_equal_solo_streams(rng, lstm, weight_format) -> None:
    model = lstm[0].quantize(weight_format)
    pool = lstm_infer.StreamPool(model)
    sids = [pool.open() for _ in range(5)]
    solo = [model.stream(1) for _ in sids]
    for t in range(4):
        feeds = dict(zip(sids[t % 2 :], _inputs(rng, 5)))
        got = pool.step(feeds)
        for sid, stream in zip(sids, solo):
            if sid in feeds:
                want = stream.step(feeds[sid][None])[0]
                np.testing.assert_allclose(got[sid], want, atol=1e-5)


def test_open_and_close_do_not_wait_for_a_running_step(rng, lstm) -> None:
    """A server's event loop opens and closes sessions while a batch runs on the worker."""
    model, _ = lstm
    pool = lstm_infer.StreamPool(model)
    a = pool.open()
    done = threading.Event()

    def open_and_close() -> None:
        b = pool.open()
        pool.close(b)
        pool.close(a)
        done.set()

    with pool._lock:  # what a step holds while its kernel runs
        thread = threading.Thread(target=open_and_close)
        thread.start()
        assert done.wait(30), "open/close waited for the step"
    thread.join(30)
    assert len(pool) == 0
    c = pool.open()  # the closed rows are reused once no step runs
    np.testing.assert_allclose(
        pool.step({c: np.ones(I)})[c], model.stream(1).step(np.ones((1, I)))[0], atol=1e-6
    )
    assert pool.capacity == 8
