"""``lstm-infer serve``: a real uvicorn server on 127.0.0.1 and the ``websockets`` client.

Each session's replies must equal a solo ``model.stream()`` fed the same inputs (and the
float64 numpy reference for ``/v1/run``); bad frames close only their own session. Every
loop is bounded and every wait has a timeout; servers always shut down.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import OUTSIDE, require, run_python
from reference import lstm_ref

import lstm_infer

uvicorn = require("uvicorn")
require("starlette")
websockets = require("websockets")
from websockets.asyncio.client import connect as aconnect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from lstm_infer.serve import ServeLimits, create_app  # noqa: E402

I, H = 5, 12
TIMEOUT = 30.0


class _Running:
    """A uvicorn server on a free 127.0.0.1 port, in a thread."""

    def __init__(self, app: Any) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", ws_max_size=1 << 20, lifespan="on")
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        for _ in range(1000):  # bounded: 10 s
            if self.server.started:
                break
            time.sleep(0.01)
        else:
            self.stop()
            raise RuntimeError("the test server did not start")

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def http(self, path: str, body: bytes | None = None, ctype: str = "") -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body)
        if ctype:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(TIMEOUT)


@pytest.fixture(scope="module")
def weights() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(16)
    s = 1 / np.sqrt(H)
    W = rng.uniform(-s, s, (1, 4 * H, I)).astype(np.float32)
    R = rng.uniform(-s, s, (1, 4 * H, H)).astype(np.float32)
    B = rng.uniform(-s, s, (1, 8 * H)).astype(np.float32)
    return W, R, B


@pytest.fixture(scope="module")
def model(weights: tuple[np.ndarray, ...]) -> lstm_infer.Model:
    return lstm_infer.Model.from_onnx_weights("lstm", *weights)


def _start(model: lstm_infer.Model, **limits: Any) -> Iterator[_Running]:
    app = create_app(model, max_batch=64, max_wait_us=2000, limits=ServeLimits(**limits))
    running = _Running(app)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def server(model: lstm_infer.Model) -> Iterator[_Running]:
    yield from _start(model, max_sessions=200, max_frame_bytes=4096)


def _solo(model: lstm_infer.Model, xs: np.ndarray) -> np.ndarray:
    stream = model.stream(1)
    return np.stack([stream.step(x[None])[0] for x in xs])


def _close_code(ws: Any) -> int:
    """Receive until the server closes; the close code."""
    for _ in range(10):
        try:
            ws.recv(timeout=TIMEOUT)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else -1
    raise AssertionError("the server did not close the session")


def test_64_concurrent_sessions_joining_and_leaving(server: _Running, model) -> None:
    """64 sessions with staggered starts and different lengths, binary or JSON frames: each
    one's replies equal a solo stream on its own inputs."""
    rng = np.random.default_rng(0)
    n = 64
    lengths = [3 + k % 9 for k in range(n)]
    inputs = [rng.standard_normal((t, I)).astype(np.float32) for t in lengths]

    async def session(k: int) -> np.ndarray:
        await asyncio.sleep(0.002 * (k % 8))  # joins mid-run
        out = []
        async with aconnect(server.ws) as ws:
            for x in inputs[k]:
                if k % 4 == 3:
                    await ws.send(json.dumps({"x": x.tolist()}))
                    out.append(np.array(json.loads(await ws.recv())["y"], np.float32))
                else:
                    await ws.send(x.astype("<f4").tobytes())
                    out.append(np.frombuffer(await ws.recv(), "<f4"))
        return np.stack(out)  # leaves before the longer sessions are done

    async def main() -> list[np.ndarray]:
        return await asyncio.wait_for(asyncio.gather(*(session(k) for k in range(n))), 120)

    outs = asyncio.run(main())
    for k in range(n):
        np.testing.assert_allclose(outs[k], _solo(model, inputs[k]), atol=1e-5, rtol=0)
    pool = server.server.config.app.state.server.pool
    assert pool.stats.batches < pool.stats.steps  # steps of different sessions ran together


def test_reset_frame(server: _Running, model) -> None:
    x = np.random.default_rng(1).standard_normal((3, I)).astype(np.float32)
    with connect(server.ws, open_timeout=TIMEOUT) as ws:
        for row in x:
            ws.send(row.tobytes())
            ws.recv(timeout=TIMEOUT)
        ws.send(json.dumps({"reset": True}))
        assert json.loads(ws.recv(timeout=TIMEOUT)) == {"reset": True}
        ws.send(x[0].tobytes())
        y = np.frombuffer(ws.recv(timeout=TIMEOUT), "<f4")
    np.testing.assert_allclose(y, _solo(model, x[:1])[0], atol=1e-6)


BAD_FRAMES = [
    (np.zeros(I + 1, "<f4").tobytes(), 1003, "float32 values"),
    (np.zeros(I, "<f8").tobytes(), 1003, "float32 values"),  # wrong dtype: float64
    (b"\x00\x01\x02", 1003, "float32 values"),
    ("not json", 1003, "JSON"),
    (json.dumps({"x": ["a"] * I}), 1003, "numbers"),
    (json.dumps({"x": [1.0] * (I + 2)}), 1003, "shape"),
    (json.dumps({"y": 1}), 1003, "x"),
    (json.dumps([[1.0], [2.0, 3.0]]), 1003, "numbers"),
    (b"\x00" * 5000, 1009, "over the limit"),
]


@pytest.mark.parametrize(("frame", "code", "words"), BAD_FRAMES)
def test_bad_frame_closes_only_its_session(server: _Running, model, frame, code, words) -> None:
    x = np.random.default_rng(2).standard_normal((4, I)).astype(np.float32)
    with connect(server.ws, open_timeout=TIMEOUT) as good, connect(server.ws) as bad:
        good.send(x[0].tobytes())
        first = np.frombuffer(good.recv(timeout=TIMEOUT), "<f4")
        bad.send(x[0].tobytes())
        bad.recv(timeout=TIMEOUT)
        bad.send(frame)
        reply = json.loads(bad.recv(timeout=TIMEOUT))
        assert words in reply["error"]
        assert _close_code(bad) == code
        rest = []
        for row in x[1:]:
            good.send(row.tobytes())
            rest.append(np.frombuffer(good.recv(timeout=TIMEOUT), "<f4"))
    np.testing.assert_allclose(np.stack([first, *rest]), _solo(model, x), atol=1e-6)


def test_slow_clients_do_not_stall_the_others(server: _Running, model) -> None:
    """One client connects and never sends; another sends a frame and never reads its
    replies. The other sessions still finish, with correct outputs."""
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((20, I)).astype(np.float32) for _ in range(8)]

    async def session(k: int) -> np.ndarray:
        async with aconnect(server.ws) as ws:
            out = []
            for x in inputs[k]:
                await ws.send(x.tobytes())
                out.append(np.frombuffer(await ws.recv(), "<f4"))
            return np.stack(out)

    async def main() -> list[np.ndarray]:
        async with aconnect(server.ws) as silent, aconnect(server.ws) as deaf:
            await deaf.send(inputs[0][0].tobytes())
            outs = await asyncio.wait_for(asyncio.gather(*(session(k) for k in range(8))), 60)
            assert silent.state.name == "OPEN"
            return outs

    outs = asyncio.run(main())
    for k in range(8):
        np.testing.assert_allclose(outs[k], _solo(model, inputs[k]), atol=1e-5)


def test_http_endpoints(server: _Running, model, weights) -> None:
    status, body = server.http("/healthz")
    assert (status, body) == (200, b"ok")
    status, body = server.http("/v1/model")
    info = json.loads(body)
    assert status == 200 and info["step"]["input_size"] == I and info["step"]["output_size"] == H
    assert [t["name"] for t in info["inputs"]][0] == "X"
    x = np.random.default_rng(4).standard_normal((7, I)).astype(np.float32)
    status, body = server.http("/v1/run", json.dumps({"x": x.tolist()}).encode())
    assert status == 200
    y = np.array(json.loads(body)["y"])
    ref64 = lstm_ref(x[:, None].astype(np.float64), *weights)[0][:, 0, 0]
    np.testing.assert_allclose(y, ref64, atol=1e-5)
    status, body = server.http("/v1/run", x.astype("<f4").tobytes(), "application/octet-stream")
    assert status == 200
    np.testing.assert_allclose(np.array(json.loads(body)["y"]), ref64, atol=1e-5)
    for bad in (b"{", json.dumps({"x": [[1.0] * (I + 1)]}).encode(), json.dumps([1]).encode()):
        status, body = server.http("/v1/run", bad)
        assert status == 400 and json.loads(body)["error"]
    with connect(server.ws, open_timeout=TIMEOUT) as ws:
        ws.send(x[0].tobytes())
        ws.recv(timeout=TIMEOUT)
        status, body = server.http("/metrics")
    text = body.decode()
    assert status == 200
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["lstm_infer_steps_total"] >= 1
    assert values["lstm_infer_open_sessions"] >= 1
    assert values['lstm_infer_batch_size_bucket{le="+Inf"}'] == values["lstm_infer_batches_total"]
    assert 'lstm_infer_step_latency_seconds{quantile="0.99"}' in values
    assert "# TYPE lstm_infer_batch_size histogram" in text


def test_max_sessions_idle_timeout_and_request_size(model) -> None:
    for running in _start(model, max_sessions=2, idle_timeout_s=2.0, max_request_bytes=1000):
        status, body = running.http("/v1/run", json.dumps({"x": [[0.5] * I] * 100}).encode())
        assert status == 413 and "limit" in json.loads(body)["error"]
        with connect(running.ws, open_timeout=TIMEOUT) as a, connect(running.ws) as b:
            with connect(running.ws) as c:
                assert "sessions open" in json.loads(c.recv(timeout=TIMEOUT))["error"]
                assert _close_code(c) == 1013
            # a and b send nothing: the server closes them after the idle timeout (long enough
            # that a loaded machine still connects c while both are open).
            for ws in (a, b):
                assert "idle" in json.loads(ws.recv(timeout=TIMEOUT))["error"]
                assert _close_code(ws) == 1000
        pool = running.server.config.app.state.server.pool
        for _ in range(1000):  # bounded: the handlers' cleanup runs after the close
            if len(pool) == 0:
                break
            time.sleep(0.01)
        assert len(pool) == 0


def test_connection_cycles_reuse_the_slab(model) -> None:
    """300 connect / step / disconnect cycles: every session is closed and the slab does
    not grow past the sessions open at once."""
    x = np.ones(I, "<f4").tobytes()
    want = _solo(model, np.ones((1, I), np.float32))[0]
    for running in _start(model):
        pool = running.server.config.app.state.server.pool
        for _ in range(300):
            with connect(running.ws, open_timeout=TIMEOUT) as ws:
                ws.send(x)
                y = np.frombuffer(ws.recv(timeout=TIMEOUT), "<f4")
        np.testing.assert_allclose(y, want, atol=1e-6)  # every session starts fresh
        for _ in range(1000):  # bounded: the last handler's cleanup runs after the close
            if len(pool) == 0:
                break
            time.sleep(0.01)
        assert len(pool) == 0 and pool.capacity <= 16


def test_token_model_session() -> None:
    """A model that takes token ids: binary int64 frames or JSON ids; an id outside the
    vocabulary closes the session with a message."""
    from lstm_infer._onnx_weights import layer_from_onnx
    from lstm_infer._spec import ModelSpec, Signature

    rng = np.random.default_rng(5)
    W = rng.uniform(-0.3, 0.3, (1, 3 * H, I)).astype(np.float32)
    R = rng.uniform(-0.3, 0.3, (1, 3 * H, H)).astype(np.float32)
    sig = Signature("sequence", 0, {"x": "tokens"}, {"y": "y", "y_h": "h_n"})
    emb = rng.standard_normal((9, I)).astype(np.float32)
    model = lstm_infer.Model(ModelSpec([layer_from_onnx("gru", W, R)], sig, embedding=emb))
    tokens = [3, 0, 8, 8, 1]
    solo = model.stream(1)
    want = [solo.step(np.array([t]))[0] for t in tokens]
    for running in _start(model):
        with connect(running.ws, open_timeout=TIMEOUT) as ws:
            got = []
            for k, t in enumerate(tokens):
                if k % 2:
                    ws.send(json.dumps({"x": t}))
                    got.append(np.array(json.loads(ws.recv(timeout=TIMEOUT))["y"]))
                else:
                    ws.send(np.array([t], "<i8").tobytes())
                    got.append(np.frombuffer(ws.recv(timeout=TIMEOUT), "<f4"))
            ws.send(np.array([9], "<i8").tobytes())
            assert "token ids" in json.loads(ws.recv(timeout=TIMEOUT))["error"]
            assert _close_code(ws) == 1003
    np.testing.assert_allclose(np.stack(got), np.stack(want), atol=1e-6)


def test_cli_serve_end_to_end(model, tmp_path) -> None:
    """``lstm-infer serve FILE --port 0`` loads the file and answers on 127.0.0.1."""
    import queue
    import re

    path = tmp_path / "model.safetensors"
    model.save(path)
    cmd = [sys.executable, "-m", "lstm_infer", "serve", str(path), "--port", "0"]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=OUTSIDE
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr], daemon=True).start()
    try:
        port = None
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "lstm-infer serve exited early"
                continue
            found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
        assert port, "lstm-infer serve did not say where it listens"
        url = f"http://127.0.0.1:{port}/healthz"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            assert resp.read() == b"ok"
        x = np.random.default_rng(6).standard_normal((2, I)).astype(np.float32)
        with connect(f"ws://127.0.0.1:{port}/v1/stream", open_timeout=TIMEOUT) as ws:
            ys = []
            for row in x:
                ws.send(row.tobytes())
                ys.append(np.frombuffer(ws.recv(timeout=TIMEOUT), "<f4"))
        np.testing.assert_allclose(np.stack(ys), _solo(model, x), atol=1e-6)
    finally:
        proc.terminate()
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(TIMEOUT)


def test_cli_parses_serve_and_the_core_never_imports_the_server_stack() -> None:
    from lstm_infer.cli import build_parser

    args = build_parser().parse_args(["serve", "m.onnx", "--port", "0", "--max-batch", "8"])
    assert (args.host, args.port, args.max_batch, args.max_wait_us) == ("127.0.0.1", 0, 8, 500)
    code = (
        "import sys, lstm_infer, lstm_infer.pool, lstm_infer.batching, lstm_infer.cli\n"
        "bad = [m for m in ('starlette', 'uvicorn', 'websockets') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr


def test_a_state_carrying_graph_is_served_session_by_session() -> None:
    """silero-VAD behind the server: 6 concurrent WebSocket sessions of 576-sample chunks
    (binary and JSON), each equal to its own model.stream(); POST /v1/run of a session's
    chunks equals the same; a graph without a step shape is refused at start."""
    from test_silero_vad import silero_file

    vad = lstm_infer.load(silero_file("silero_vad.onnx"), fixed_inputs={"sr": 16000})
    with pytest.raises(ValueError, match="step shape"):
        create_app(vad)
    app = create_app(vad, max_batch=8, max_wait_us=2000, step_shape=(576,))
    running = _Running(app)
    rng = np.random.default_rng(5)
    inputs = [(rng.standard_normal((4, 576)) * 0.2).astype(np.float32) for _ in range(6)]

    async def session(k: int) -> np.ndarray:
        out = []
        async with aconnect(running.ws) as ws:
            for x in inputs[k]:
                if k % 2:
                    await ws.send(json.dumps({"x": x.tolist()}))
                    out.append(np.array(json.loads(await ws.recv())["y"], np.float32))
                else:
                    await ws.send(x.astype("<f4").tobytes())
                    out.append(np.frombuffer(await ws.recv(), "<f4"))
        return np.stack(out)

    async def main() -> list[np.ndarray]:
        return await asyncio.wait_for(asyncio.gather(*(session(k) for k in range(6))), 120)

    try:
        outs = asyncio.run(main())
        for k in range(6):
            stream = vad.stream()
            want = np.stack([stream.step(x[None]).reshape(-1) for x in inputs[k]])
            np.testing.assert_allclose(outs[k], want, atol=1e-5)
        status, body = running.http("/v1/run", inputs[0].astype("<f4").tobytes(),
                                    "application/octet-stream")  # fmt: skip
        assert status == 200, body
        np.testing.assert_allclose(np.array(json.loads(body)["y"], np.float32).reshape(4, -1),
                                   outs[0], atol=1e-5)  # fmt: skip
    finally:
        running.stop()


def test_non_finite_outputs_reach_json_clients_as_null(server: _Running) -> None:
    """A NaN input makes NaN outputs: binary frames carry them, JSON replies (WebSocket and
    /v1/run) give null instead of failing."""
    x = np.full((2, I), np.nan, np.float32)
    with connect(server.ws) as ws:
        ws.send(json.dumps({"x": [0.0] * I}))
        json.loads(ws.recv(timeout=TIMEOUT))
        ws.send(x[0].astype("<f4").tobytes())
        assert np.isnan(np.frombuffer(ws.recv(timeout=TIMEOUT), "<f4")).all()
    status, body = server.http("/v1/run", x.astype("<f4").tobytes(), "application/octet-stream")
    assert status == 200, body
    y = json.loads(body)["y"]
    assert all(v is None for row in y for v in row)
