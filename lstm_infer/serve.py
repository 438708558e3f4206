"""``lstm-infer serve``: one model, many concurrent streams, over WebSocket and HTTP.

An ASGI app (Starlette, run by uvicorn) around one :class:`~lstm_infer.StreamPool`: the
steps of all connections are batched by the pool's front end (``max_batch`` /
``max_wait_us``), so 64 live sessions cost one batch-64 step, not 64 steps.

Endpoints
---------
``WebSocket /v1/stream``
    One connection is one session. Each message is one timestep: a binary frame of
    ``input_size`` little-endian float32 values (one little-endian int64 for a model that
    takes token ids), or a text frame of JSON, ``{"x": [...]}`` or a bare list (a token id
    for a token model). The reply is one message per step, in kind: binary little-endian
    float32 outputs, or ``{"y": [...]}`` (NaN and Inf as ``null``: JSON has no such
    numbers). ``{"reset": true}`` returns the session to the
    initial state (reply ``{"reset": true}``). A bad frame gets ``{"error": "..."}`` and the
    connection is closed (code 1003, 1009 for an oversize frame); the others go on.
``POST /v1/run``
    A whole sequence, ``{"x": [[...], ...]}`` (T timesteps) or ``application/octet-stream``
    T x input_size float32 little-endian; returns ``{"y": [[...], ...]}`` (T x features).
``GET /v1/model``
    Inputs, outputs, the step's sizes and the server's limits.
``GET /healthz``
    ``ok``.
``GET /metrics``
    Prometheus text: steps, batches, the batch-size histogram, step latency quantiles
    (submit to result), open sessions, rejected connections and bad frames.

Only this module imports Starlette and uvicorn (``pip install lstm_infer[serve]``); the
command line imports it only for ``serve``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_infer.batching import BATCH_BUCKETS
from lstm_infer.errors import LstmInferError, MissingDependencyError
from lstm_infer.pool import StreamPool

__all__ = ["ServeLimits", "create_app", "serve"]

# WebSocket close codes (RFC 6455).
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_UNSUPPORTED, CLOSE_TOO_BIG, CLOSE_TRY_LATER = (
    1000,
    1001,
    1003,
    1009,
    1013,
)


@dataclass(frozen=True)
class ServeLimits:
    """The server's limits.

    Attributes
    ----------
    max_sessions : int
        WebSocket sessions open at once; one more is refused (close code 1013).
    max_frame_bytes : int
        Largest WebSocket message accepted; a larger one closes its session (1009).
    idle_timeout_s : float
        A session with no message for this long is closed.
    max_request_bytes : int
        Largest ``POST /v1/run`` body.
    """

    max_sessions: int = 1024
    max_frame_bytes: int = 1 << 20
    idle_timeout_s: float = 300.0
    max_request_bytes: int = 16 << 20


class _FrameError(ValueError):
    """A message that is not one valid timestep (the session is closed)."""

    def __init__(self, message: str, code: int = CLOSE_UNSUPPORTED) -> None:
        super().__init__(message)
        self.code = code


def json_values(y: np.ndarray) -> Any:
    """``y`` as nested lists for a JSON reply, NaN and +-Inf as null (JSON has no such
    numbers; binary frames carry them as they are)."""
    y = np.asarray(y)
    return y.tolist() if np.isfinite(y).all() else _nulls(y.tolist())


def _nulls(values: Any) -> Any:
    if isinstance(values, list):
        return [_nulls(v) for v in values]
    return values if math.isfinite(values) else None


def _import_starlette() -> Any:
    try:
        import starlette  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "serving needs starlette and uvicorn: pip install 'lstm_infer[serve]'"
        ) from exc


class _Server:
    """State shared by the endpoints: the pool, the limits, counters."""

    def __init__(
        self,
        model: Any,
        max_batch: int,
        max_wait_us: float,
        limits: ServeLimits,
        step_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.model = model
        self.limits = limits
        extra = {} if step_shape is None else {"step_shape": tuple(step_shape)}
        self.pool = StreamPool(model, max_batch=max_batch, max_wait_us=max_wait_us, **extra)
        self.graph = not hasattr(model, "spec")  # a GraphModel's sessions (graph_pool)
        if self.graph:
            if not self.pool.input_size:
                raise ValueError(
                    "this graph's step input has symbolic dims: give one session's step shape "
                    "(step_shape=..., lstm-infer serve --step-shape 576)"
                )
            if len(self.pool._outputs) != 1:
                raise ValueError(
                    f"a served graph has one step output, this one {self.pool._outputs}"
                )
        self.sessions = 0
        self.rejected = 0
        self.bad_frames = 0

    # ---- frames --------------------------------------------------------------------------

    def decode(self, message: dict[str, Any]) -> tuple[Any, bool]:
        """One timestep from a WebSocket message, and whether it came as binary."""
        data, text = message.get("bytes"), message.get("text")
        size = len(data) if data is not None else len((text or "").encode())
        if size > self.limits.max_frame_bytes:
            raise _FrameError(
                f"frame of {size} bytes is over the limit of {self.limits.max_frame_bytes}",
                CLOSE_TOO_BIG,
            )
        pool = self.pool
        if data is not None:
            dtype, count = ("<i8", 1) if pool.takes_tokens else ("<f4", pool.input_size)
            if len(data) != count * np.dtype(dtype).itemsize:
                what = "one int64 token id" if pool.takes_tokens else f"{count} float32 values"
                raise _FrameError(
                    f"a binary frame must be {what} ({count * np.dtype(dtype).itemsize} "
                    f"bytes, little-endian), got {len(data)} bytes"
                )
            return np.frombuffer(data, dtype).reshape(-1 if pool.takes_tokens else count), True
        if text is None:
            raise _FrameError("empty message")
        try:
            value = json.loads(text)
        except ValueError:
            raise _FrameError('a text frame must be JSON: {"x": [...]}') from None
        if isinstance(value, dict):
            if value.get("reset") is True:
                return None, False
            if "x" not in value:
                raise _FrameError('a JSON frame must be {"x": [...]} or {"reset": true}')
            value = value["x"]
        return self._json_array(value, "x"), False

    def _json_array(self, value: Any, name: str) -> np.ndarray:
        """A JSON number list as an array, refusing strings, nulls and objects."""
        try:
            arr = np.asarray(value) if isinstance(value, (list, int, float)) else None
        except ValueError:  # ragged nesting
            arr = None
        if arr is None or arr.dtype.kind not in "iuf":
            raise _FrameError(f"{name!r} must be a list of numbers")
        return arr

    # ---- metrics -------------------------------------------------------------------------

    def metrics(self) -> str:
        stats = self.pool.stats
        lines = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

        steps = stats.steps if stats else 0
        batches = stats.batches if stats else 0
        metric("lstm_infer_steps_total", "counter", "Session steps run.", [("", steps)])
        metric("lstm_infer_batches_total", "counter", "Batched steps run.", [("", batches)])
        counts = stats.bucket_counts if stats else [0] * len(BATCH_BUCKETS)
        cumulative, samples = 0, []
        for le, n in zip(BATCH_BUCKETS, counts):
            cumulative += n
            samples.append((f'_bucket{{le="{le}"}}', cumulative))
        samples += [('_bucket{le="+Inf"}', batches), ("_sum", steps), ("_count", batches)]
        metric("lstm_infer_batch_size", "histogram", "Sessions per batched step.", samples)
        quantiles = stats.latency_quantiles() if stats else {}
        metric(
            "lstm_infer_step_latency_seconds",
            "summary",
            "Submit-to-result time of a step (recent steps).",
            [(f'{{quantile="{q}"}}', v) for q, v in quantiles.items()]
            + [("_sum", stats.latency_sum if stats else 0.0), ("_count", steps)],
        )
        metric("lstm_infer_open_sessions", "gauge", "Open sessions.", [("", len(self.pool))])
        metric(
            "lstm_infer_rejected_sessions_total",
            "counter",
            "Connections refused (max sessions).",
            [("", self.rejected)],
        )
        metric("lstm_infer_bad_frames_total", "counter", "Bad frames.", [("", self.bad_frames)])
        return "\n".join(lines) + "\n"

    def describe(self) -> dict[str, Any]:
        pool = self.pool
        return {
            "inputs": [dataclasses.asdict(t) for t in self.model.inputs],
            "outputs": [dataclasses.asdict(t) for t in self.model.outputs],
            "step": {
                "input_size": pool.input_size,
                "input_dtype": "int64" if pool.takes_tokens else "float32",
                "output_size": pool.output_size,
                "output_dtype": "float32",
            },
            "limits": dataclasses.asdict(self.limits),
            "max_batch": pool.max_batch,
            "max_wait_us": pool.max_wait_us,
        }

    # ---- whole sequences -----------------------------------------------------------------

    def run_sequence(self, x: np.ndarray) -> np.ndarray:
        """(T, input_size) -> (T, features) through a fresh stream (whole-sequence kernels)."""
        pool = self.pool
        if pool.takes_tokens:
            x = x.reshape(-1)
            if x.dtype.kind not in "iu":
                raise _FrameError("'x' must be a list of token ids")
        elif x.ndim != 2 or x.shape[1] != pool.input_size or x.shape[0] == 0:
            raise _FrameError(
                f"'x' must be T >= 1 timesteps of {pool.input_size} values, got shape {x.shape}"
            )
        if self.graph:  # each row one step of a fresh session, its state carried
            stream = self.model.stream(1, state_map=self.pool.state_map)
            shape = (1, *self.pool._step_shape)
            return np.stack([np.asarray(stream.step(row.reshape(shape))).reshape(-1) for row in x])
        batch_first = self.model.spec.signature.layout == 1
        chunk = x[None] if batch_first else x[:, None]
        y = self.model.stream(1).feed(chunk)
        return y[0] if batch_first else y[:, 0]


def create_app(
    model: Any,
    *,
    max_batch: int = 64,
    max_wait_us: float = 500.0,
    limits: ServeLimits | None = None,
    step_shape: tuple[int, ...] | None = None,
) -> Any:
    """The Starlette app serving ``model`` (see the module docstring for the endpoints).

    ``app.state.server.pool`` is its :class:`StreamPool`; the pool's worker thread stops
    when the app shuts down. A GraphModel that takes and returns its state (silero-VAD) is
    served the same way, one session per connection, a step's input being one session's
    chunk of ``step_shape`` (needed where the graph's input dims are symbolic).
    """
    _import_starlette()
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    server = _Server(model, max_batch, max_wait_us, limits or ServeLimits(), step_shape)
    lim = server.limits

    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        if server.sessions >= lim.max_sessions:
            server.rejected += 1
            await ws.send_json({"error": f"the server has {lim.max_sessions} sessions open"})
            await ws.close(CLOSE_TRY_LATER)
            return
        server.sessions += 1
        sid = server.pool.open()
        try:
            while True:
                try:
                    message = await asyncio.wait_for(ws.receive(), lim.idle_timeout_s)
                except asyncio.TimeoutError:
                    await ws.send_json({"error": f"idle for {lim.idle_timeout_s:g} s"})
                    await ws.close(CLOSE_NORMAL)
                    return
                if message["type"] == "websocket.disconnect":
                    return
                try:
                    x, binary = server.decode(message)
                    if x is None:
                        server.pool.reset(sid)
                        await ws.send_json({"reset": True})
                        continue
                    y = await server.pool.submit(sid, x)
                except (_FrameError, LstmInferError) as exc:
                    server.bad_frames += 1
                    await ws.send_json({"error": str(exc)})
                    await ws.close(getattr(exc, "code", CLOSE_UNSUPPORTED))
                    return
                if binary:
                    await ws.send_bytes(y.astype("<f4").tobytes())
                else:
                    await ws.send_json({"y": json_values(y)})
        except WebSocketDisconnect:
            return
        finally:
            server.sessions -= 1
            server.pool.close(sid)

    async def run(request: Request) -> Response:
        too_big = JSONResponse(
            {"error": f"body over the limit of {lim.max_request_bytes} bytes"}, 413
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > lim.max_request_bytes:
            return too_big
        parts, size = [], 0
        async for part in request.stream():  # never more than the limit in memory
            size += len(part)
            if size > lim.max_request_bytes:
                return too_big
            parts.append(part)
        body = b"".join(parts)
        try:
            if request.headers.get("content-type", "").startswith("application/octet-stream"):
                if server.pool.takes_tokens:
                    x = np.frombuffer(body, "<i8")
                elif len(body) % (4 * server.pool.input_size):
                    raise _FrameError(
                        f"the body must be T x {server.pool.input_size} float32 values"
                    )
                else:
                    x = np.frombuffer(body, "<f4").reshape(-1, server.pool.input_size)
            else:
                try:
                    value = json.loads(body)
                except ValueError:
                    raise _FrameError('the body must be JSON {"x": [[...], ...]}') from None
                if not isinstance(value, dict) or "x" not in value:
                    raise _FrameError('the body must be JSON {"x": [[...], ...]}')
                x = server._json_array(value["x"], "x")
            y = await asyncio.to_thread(server.run_sequence, x)
        except (_FrameError, LstmInferError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse({"y": json_values(y)})

    async def describe(request: Request) -> Response:
        return JSONResponse(server.describe())

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(server.metrics(), media_type="text/plain; version=0.0.4")

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        try:
            yield
        finally:
            server.pool.shutdown()

    app = Starlette(
        routes=[
            WebSocketRoute("/v1/stream", stream),
            Route("/v1/run", run, methods=["POST"]),
            Route("/v1/model", describe),
            Route("/healthz", healthz),
            Route("/metrics", metrics),
        ],
        lifespan=lifespan,
    )
    app.state.server = server
    return app


def serve(
    model: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_batch: int = 64,
    max_wait_us: float = 500.0,
    limits: ServeLimits | None = None,
    step_shape: tuple[int, ...] | None = None,
) -> None:
    """Serve ``model`` with uvicorn until interrupted."""
    _import_starlette()
    import uvicorn

    limits = limits or ServeLimits()
    app = create_app(model, max_batch=max_batch, max_wait_us=max_wait_us, limits=limits,
                     step_shape=step_shape)  # fmt: skip
    # uvicorn's own limit sits above ours, so an oversize frame gets our clear message.
    uvicorn.run(app, host=host, port=port, ws_max_size=2 * limits.max_frame_bytes + 1024)
