"""StreamPool of state-carrying graph models (lstm_infer.graph_pool) against solo streams and
onnxruntime fed its state back.

silero-VAD sessions stepped in ragged subsets equal one model.stream() each and onnxruntime;
fork, snapshots, reset, growth and a fixed capacity; bad inputs name the session and change
nothing; a graph whose step does not compile steps op by op with the same results; the
asyncio front end batches graph sessions too.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from conftest import require

ort = require("onnxruntime")
onnx = require("onnx")

from graph_builders import vi  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from test_silero_vad import _session, silero_file  # noqa: E402
from test_step_program import _recurrent_weights, graph_model, model_bytes  # noqa: E402

import lstm_infer  # noqa: E402
from lstm_infer.errors import InputError, SessionError, StreamError  # noqa: E402
from lstm_infer.graph_pool import GraphStreamPool  # noqa: E402

F = TensorProto.FLOAT


@pytest.fixture(scope="module")
def silero():  # noqa: ANN201
    path = silero_file("silero_vad.onnx")
    return path, lstm_infer.load(path, fixed_inputs={"sr": 16000})


def _chunk(rng) -> np.ndarray:  # noqa: ANN001
    return (rng.standard_normal((1, 576)) * 0.2).astype(np.float32)


def test_ragged_subsets_equal_solo_streams_and_onnxruntime(silero, rng) -> None:
    path, model = silero
    pool = lstm_infer.StreamPool(model)
    assert isinstance(pool, GraphStreamPool) and pool.state_map == {"state": "stateN"}
    sids = [pool.open() for _ in range(11)]  # past the first slab of 8: it grows
    solo = [model.stream() for _ in sids]
    ref = _session(path)
    ref_state = [np.zeros((2, 1, 128), np.float32) for _ in sids]
    sr = np.array(16000, np.int64)
    for t in range(6):
        chosen = [k for k in range(len(sids)) if (k + t) % 3 != 0]
        xs = {sids[k]: _chunk(rng) for k in chosen}
        ys = pool.step(xs)
        for k in chosen:
            # other batch sizes sum in another order: equal to float32 rounding
            np.testing.assert_allclose(ys[sids[k]], solo[k].step(xs[sids[k]])[0], atol=1e-5)
            want, ref_state[k] = ref.run(None, {"input": xs[sids[k]], "state": ref_state[k],
                                                "sr": sr})  # fmt: skip
            np.testing.assert_allclose(ys[sids[k]], want[0], atol=1e-4)
    for k, sid in enumerate(sids):  # left-out sessions kept their state
        np.testing.assert_allclose(pool.state(sid)["state"], solo[k].state["state"], atol=1e-5)
    assert all(p is not None for p in pool._programs.values())  # every batch size compiled
    assert set(pool._programs) <= {1, 2, 4, 8, 16}


def test_fork_snapshots_reset_and_close(silero, rng) -> None:
    _, model = silero
    pool = lstm_infer.StreamPool(model, capacity=3)
    a = pool.open()
    x = _chunk(rng)
    pool.step({a: x})
    b = pool.fork(a)
    ya, yb = pool.step({a: x, b: x}).values()
    np.testing.assert_array_equal(ya, yb)
    snap = pool.state(a)
    first = pool.step({a: x})[a]
    pool.set_state(a, snap)
    np.testing.assert_array_equal(pool.step({a: x})[a], first)
    pool.reset(a)
    np.testing.assert_array_equal(pool.state(a)["state"], np.zeros((2, 1, 128), np.float32))
    pool.open()
    with pytest.raises(StreamError, match="full"):
        pool.open()
    pool.close(b)
    with pytest.raises(SessionError):
        pool.step({b: x})
    c = pool.open()  # b's row, reused at the initial state
    np.testing.assert_array_equal(pool.state(c)["state"], np.zeros((2, 1, 128), np.float32))


def test_bad_inputs_name_the_session_and_change_nothing(silero, rng) -> None:
    _, model = silero
    pool = lstm_infer.StreamPool(model)
    a, b = pool.open(), pool.open()
    pool.step({a: _chunk(rng), b: _chunk(rng)})
    before = {s: pool.state(s)["state"] for s in (a, b)}
    with pytest.raises(InputError, match=f"session {b}"):
        pool.step({a: _chunk(rng), b: np.zeros((1, 100), np.float32)})
    with pytest.raises(lstm_infer.errors.InputTypeError, match=f"session {a}"):
        pool.step({a: np.array([["x"] * 576]), b: _chunk(rng)})
    with pytest.raises(InputError, match="shape"):
        pool.set_state(a, {"state": np.zeros((2, 2, 128), np.float32)})
    for s in (a, b):
        np.testing.assert_array_equal(pool.state(s)["state"], before[s])


def test_a_graph_that_does_not_compile_steps_op_by_op(rng) -> None:
    inits = _recurrent_weights(rng, "GRU", 1, 4, 3)
    inits["zero"] = np.array([0], np.int64)
    nodes = [
        helper.make_node("Unsqueeze", ["x", "zero"], ["x3"]),
        helper.make_node("GRU", ["x3", "W", "R", "B", "", "state"], ["y", "stateN"],
                         hidden_size=4),
        helper.make_node("Squeeze", ["y", "zero"], ["y2"]),
        helper.make_node("Squeeze", ["y2", "zero"], ["ys"]),
        helper.make_node("Sin", ["ys"], ["out"]),  # no step lowering
    ]  # fmt: skip
    inputs = [vi("x", F, ("B", 3)), vi("state", F, (1, "B", 4))]
    outputs = [vi("out", F, ("B", 4)), vi("stateN", F, (1, "B", 4))]
    data = model_bytes(nodes, inputs, outputs, inits, 14)
    model = graph_model(data)
    pool = lstm_infer.StreamPool(model)
    sids = [pool.open() for _ in range(3)]
    solo = {s: model.stream(compile=False) for s in sids}
    for t in range(4):
        xs = {s: rng.standard_normal((1, 3)).astype(np.float32) for s in sids[: 1 + t % 3]}
        ys = pool.step(xs)
        for s, x in xs.items():
            np.testing.assert_allclose(ys[s], solo[s].step(x)[0], atol=1e-6)
    assert all(p is None for p in pool._programs.values())  # Sin: op by op


def test_submit_batches_graph_sessions(silero, rng) -> None:
    _, model = silero
    pool = lstm_infer.StreamPool(model, max_wait_us=2000)
    sids = [pool.open() for _ in range(6)]
    solo = {s: model.stream() for s in sids}
    chunks = {s: [_chunk(rng) for _ in range(3)] for s in sids}

    async def session(sid: int) -> list[np.ndarray]:
        return [await pool.submit(sid, x) for x in chunks[sid]]

    async def main() -> list[list[np.ndarray]]:
        return await asyncio.gather(*(session(s) for s in sids))

    try:
        results = asyncio.run(main())
        stats = pool.stats
    finally:
        pool.shutdown()
    for sid, outs in zip(sids, results):
        for x, y in zip(chunks[sid], outs):
            np.testing.assert_allclose(y, solo[sid].step(x)[0], atol=1e-5)
    assert stats.steps == 18 and max(stats.batch_sizes) > 1


def test_submit_of_another_chunk_shape_fails_alone(silero, rng) -> None:
    """A pool whose step shape is not fixed yet batches inputs of one shape: a submit of
    another shape than the steps waiting raises to its submitter only."""
    _, model = silero
    x = {k: _chunk(rng) for k in "abc"}

    async def main(pool: lstm_infer.StreamPool) -> None:
        a, b, c = pool.open(), pool.open(), pool.open()
        first = asyncio.ensure_future(pool.submit(a, x["a"]))
        await asyncio.sleep(0)  # a waits for b and c (max_wait_us is far away)
        with pytest.raises(InputError, match=f"session {b} has shape"):
            await pool.submit(b, x["b"][:, :512])
        ys = await asyncio.wait_for(
            asyncio.gather(first, pool.submit(b, x["b"]), pool.submit(c, x["c"])), timeout=60
        )
        for k, y in zip("abc", ys):
            np.testing.assert_allclose(y, model.stream().step(x[k])[0], atol=1e-5)
        assert list(pool.stats.batch_sizes) == [3]

    with lstm_infer.StreamPool(model, max_wait_us=60e6) as pool:
        asyncio.run(main(pool))


def test_time_axis_graph_sessions_equal_solo_streams(rng) -> None:
    """A causal conv -> LSTM -> LayerNorm -> Linear graph streamed along time: pooled
    sessions (ragged subsets, a fork, snapshots) equal one model.stream() each."""
    torch = require("torch")
    from test_time_stream import ConvLstmHead, _export

    from lstm_infer.graph_pool import TimeAxisPool

    torch.manual_seed(12)
    net = ConvLstmHead().eval()
    x = rng.standard_normal((1, 6, 9)).astype(np.float32)
    model = lstm_infer.load(_export(net, x, 2))
    with pytest.raises(StreamError, match="step_shape"):
        lstm_infer.StreamPool(model)
    pool = lstm_infer.StreamPool(model, step_shape=(6, 3))
    assert isinstance(pool, TimeAxisPool)
    sids = [pool.open() for _ in range(5)]
    solo = {s: model.stream() for s in sids}
    for t in range(6):
        chosen = [s for k, s in enumerate(sids) if (k + t) % 3]
        xs = {s: rng.standard_normal((1, 6, 3)).astype(np.float32) for s in chosen}
        ys = pool.step(xs)
        for s in chosen:
            np.testing.assert_allclose(ys[s], solo[s].step(xs[s])[0], atol=1e-5)
    a = sids[0]
    b = pool.fork(a)
    chunk = rng.standard_normal((6, 3)).astype(np.float32)
    ya, yb = pool.step({a: chunk, b: chunk}).values()
    np.testing.assert_allclose(ya, yb, atol=1e-6)
    snap = pool.state(a)
    assert any(k.endswith("/history") for k in snap)
    first = pool.step({a: chunk})[a]
    pool.set_state(a, snap)
    np.testing.assert_allclose(pool.step({a: chunk})[a], first, atol=1e-6)
    with pytest.raises(InputError):
        pool.step({a: np.zeros((6, 4), np.float32)})  # another chunk length


def test_time_major_graphs_pool_on_their_batch_axis(rng) -> None:
    """An ONNX LSTM -> LayerNorm over (T, B, 3) pools on axis 1 (batch_axis=1): sessions
    stepped together equal their solo streams; taking the time axis as the batch axis is
    refused with StreamError."""
    inits = _recurrent_weights(rng, "LSTM", 1, 4, 3)
    inits["g"] = np.ones(4, np.float32)
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], hidden_size=4),
             helper.make_node("LayerNormalization", ["y", "g"], ["out"])]  # fmt: skip
    data = model_bytes(nodes, [vi("x", F, ("T", "N", 3))], [vi("out", F, None)], inits, 17)
    model = graph_model(data)
    with pytest.raises(StreamError, match="batch axis"):
        lstm_infer.StreamPool(model, step_shape=(1, 3))
    pool = lstm_infer.StreamPool(model, step_shape=(1, 3), batch_axis=1)
    xs = [rng.standard_normal((5, 1, 3)).astype(np.float32) for _ in range(3)]
    sids = [pool.open() for _ in xs]
    got = {sid: [] for sid in sids}
    for t in range(5):
        for sid, y in pool.step({sid: x[t] for sid, x in zip(sids, xs)}).items():
            got[sid].append(np.asarray(y))
    for sid, x in zip(sids, xs):
        solo = model.stream().feed(x)  # (T, 1, 1, 4)
        np.testing.assert_allclose(np.stack(got[sid]).reshape(-1), solo.reshape(-1), atol=1e-6)
