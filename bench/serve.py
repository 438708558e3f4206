"""Many independent streams of one LSTM-256: a StreamPool step against one call per session.

For 1..256 live sessions, one round advances every session by one timestep:

* ``pool``: one ``StreamPool.step`` over all sessions (one batched kernel call);
* ``solo``: one lstm_infer ``model.stream()`` per session, stepped one by one;
* ``ort``: one onnxruntime ``run`` per session with its state fed back (X, initial_h,
  initial_c -> Y_h, Y_c).

All three must agree to 1e-4 before anything is timed; engines are interleaved round-robin
within every repetition (bench/compare.py's ``time_interleaved``) and medians reported, one
thread each. Then the latency of one step through ``await pool.submit`` (p50 / p99, submit
to result), beside a solo stream's own step time, under two kinds of load:

* ``submit`` (closed loop): N coroutines each submit their next step as soon as the last
  one returned, so every batch waits for all N to resubmit: the pool at full throughput;
* ``paced`` (open loop, what a streaming service sees): N sessions each produce one frame
  every ``--frame-ms`` (10 ms: an audio frame), starting at random offsets, served once
  through the pool and once by a solo stream per session stepped in its coroutine; both
  see the same cold caches and idle-core wake-ups between frames. The latency target
  reads here: the pool's p99 no worse than the solo streams' p99 plus ``max_wait_us``.

    python bench/serve.py [--repeat 7] [--sessions 1 4 16 64 256] [--frame-ms 10]
                          [--output PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from compare import (  # noqa: E402
    build_onnx,
    ort_session,
    random_weights,
    time_interleaved,
    write_results,
)

import lstm_infer  # noqa: E402

HIDDEN = 256
AGREEMENT_TOL = 1e-4


def round_loops(model: Any, ort: Any, n: int, xs: np.ndarray) -> dict[str, Any]:
    """Timed bodies: one call is one round (every one of n sessions steps once)."""
    pool = lstm_infer.StreamPool(model, capacity=n)
    sids = [pool.open() for _ in range(n)]
    streams = [model.stream(1) for _ in range(n)]
    state = [[np.zeros((1, 1, HIDDEN), np.float32)] * 2 for _ in range(n)]
    feeds = [dict(zip(sids, x)) for x in xs]  # per timestep: {sid: (I,)}
    rows = [[np.ascontiguousarray(x[k : k + 1]) for k in range(n)] for x in xs]  # (1, I)
    rows3 = [[r[None] for r in per_t] for per_t in rows]  # (1, 1, I)
    T = len(xs)

    def pool_round(calls: int) -> None:
        for i in range(calls):
            pool.step(feeds[i % T])

    def solo_round(calls: int) -> None:
        for i in range(calls):
            for stream, x in zip(streams, rows[i % T]):
                stream.step(x)

    def ort_round(calls: int) -> None:
        run = ort.run
        for i in range(calls):
            for k, x in enumerate(rows3[i % T]):
                h, c = state[k]
                state[k] = run(["Y_h", "Y_c"], {"X": x, "initial_h": h, "initial_c": c})

    # Agreement on the first steps, from the initial state, before any timing.
    y_pool = [pool.step(feeds[t]) for t in range(3)]
    for t in range(3):
        y_solo = np.stack([s.step(r)[0] for s, r in zip(streams, rows[t])])
        y_ort = []
        for k, x in enumerate(rows3[t]):
            h, c = state[k]
            state[k] = ort.run(["Y_h", "Y_c"], {"X": x, "initial_h": h, "initial_c": c})
            y_ort.append(state[k][0][0, 0])
        got = np.stack([y_pool[t][s] for s in sids])
        worst = max(np.abs(got - y_solo).max(), np.abs(got - np.stack(y_ort)).max())
        if not worst <= AGREEMENT_TOL:
            raise SystemExit(f"{n} sessions: the pool disagrees by {worst:g} at step {t}")
    return {"pool": pool_round, "solo": solo_round, "ort": ort_round}


def submit_latency(model: Any, n: int, steps: int, xs: np.ndarray, wait_us: float) -> dict:
    """p50 / p99 of one step through ``await pool.submit`` with n sessions stepping."""
    latencies: list[float] = []

    async def session(pool: lstm_infer.StreamPool, k: int) -> None:
        sid = pool.open()
        for i in range(steps):
            t0 = time.perf_counter()
            await pool.submit(sid, xs[i % len(xs), k % xs.shape[1]])
            latencies.append(time.perf_counter() - t0)

    async def main(pool: lstm_infer.StreamPool) -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(session(pool, k) for k in range(n)))
        return time.perf_counter() - t0

    with lstm_infer.StreamPool(model, max_batch=max(n, 1), max_wait_us=wait_us) as pool:
        asyncio.run(main(pool))  # warm-up
        latencies.clear()
        wall = asyncio.run(main(pool))
        stats = pool.stats
    lat = np.array(latencies) * 1e6
    return {
        "sessions": n,
        "steps_per_session": steps,
        "max_wait_us": wait_us,
        "p50_us": float(np.percentile(lat, 50)),
        "p99_us": float(np.percentile(lat, 99)),
        "steps_per_s": n * steps / wall,
        "mean_batch": float(np.mean(list(stats.batch_sizes))),
    }


def paced_latency(
    model: Any, n: int, frames: int, frame_s: float, xs: np.ndarray, wait_us: float
) -> dict:
    """p50 / p99 of one step when each of n sessions produces one frame every ``frame_s``
    seconds (first frames at random offsets within a period), as live streams do, served
    two ways in one event loop: through ``await pool.submit`` (``pool_*``), and by a solo
    ``model.stream()`` per session stepped in the coroutine (``solo_*``: a service without
    a pool). The latency is from the frame being taken up (the coroutine's sleep ending:
    asyncio's timers wake up to a millisecond late, which would swamp the figures) to its
    result; frames taken up after they were due are counted apart. Both see the same cold
    caches and idle-core wake-ups between frames."""
    offsets = np.random.default_rng(n).uniform(0.0, frame_s, n)
    late: list[float] = []

    async def session(step: Any, k: int, start: float, latencies: list[float]) -> None:
        loop = asyncio.get_running_loop()
        for i in range(frames):
            due = start + offsets[k] + i * frame_s
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                late.append(-delay)
            t0 = time.perf_counter()
            await step(xs[i % len(xs), k % xs.shape[1]])
            latencies.append(time.perf_counter() - t0)

    async def main(steps: list[Any], latencies: list[float]) -> None:
        start = asyncio.get_running_loop().time() + 0.01
        await asyncio.gather(*(session(s, k, start, latencies) for k, s in enumerate(steps)))

    def pool_steps(pool: lstm_infer.StreamPool) -> list[Any]:
        sids = [pool.open() for _ in range(n)]
        return [lambda x, sid=sid: pool.submit(sid, x) for sid in sids]

    def solo_steps() -> list[Any]:
        async def stepper(stream: Any, x: np.ndarray) -> np.ndarray:
            return stream.step(x[None])[0]

        streams = [model.stream(1) for _ in range(n)]
        return [lambda x, st=st: stepper(st, x) for st in streams]

    result: dict[str, Any] = {
        "sessions": n,
        "frames_per_session": frames,
        "frame_ms": frame_s * 1e3,
        "max_wait_us": wait_us,
        "steps_per_s": n / frame_s,
    }
    for kind in ("solo", "pool"):
        latencies: list[float] = []
        late.clear()
        if kind == "pool":
            with lstm_infer.StreamPool(model, max_batch=64, max_wait_us=wait_us) as pool:
                steps = pool_steps(pool)
                asyncio.run(main(steps, []))  # warm-up
                asyncio.run(main(steps, latencies))
                result["mean_batch"] = float(np.mean(list(pool.stats.batch_sizes)))
        else:
            steps = solo_steps()
            asyncio.run(main(steps, []))
            asyncio.run(main(steps, latencies))
        lat = np.array(latencies) * 1e6
        result[f"{kind}_p50_us"] = float(np.percentile(lat, 50))
        result[f"{kind}_p99_us"] = float(np.percentile(lat, 99))
        result[f"{kind}_max_us"] = float(lat.max())
        # Frames taken up after they were due (the event loop was behind): a load past
        # what one core serves shows here first.
        result[f"{kind}_late_frames"] = len(late)
    result["p99_target_us"] = result["solo_p99_us"] + wait_us
    return result


def solo_step_us(model: Any, xs: np.ndarray, steps: int) -> dict[str, float]:
    """p50 / p99 of one batch-1 ``Stream.step``."""
    stream = model.stream(1)
    times = []
    for i in range(steps):
        x = xs[i % len(xs), :1]
        t0 = time.perf_counter()
        stream.step(x)
        times.append(time.perf_counter() - t0)
    lat = np.array(times[steps // 10 :]) * 1e6
    return {"p50_us": float(np.percentile(lat, 50)), "p99_us": float(np.percentile(lat, 99))}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=7, help="samples per engine")
    p.add_argument("--block-ms", type=float, default=40.0, help="one timed block")
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    p.add_argument("--latency-steps", type=int, default=200, help="steps per session")
    p.add_argument("--max-wait-us", type=float, default=500.0)
    p.add_argument("--frame-ms", type=float, default=10.0, help="paced load: one frame per")
    p.add_argument("--paced-frames", type=int, default=300, help="frames per paced session")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)

    w = random_weights("LSTM", HIDDEN)
    model = lstm_infer.load(build_onnx(w, stateful=False))
    ort = ort_session(build_onnx(w, stateful=True), 1)
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    print(f"LSTM-{HIDDEN}, one thread; us per round (every session steps once)", flush=True)
    for n in args.sessions:
        xs = rng.standard_normal((8, n, HIDDEN)).astype(np.float32)
        samples = time_interleaved(round_loops(model, ort, n, xs), args.repeat, args.block_ms / 1e3)
        us = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
        row = {
            "kind": "round",
            "sessions": n,
            "us": us,
            "pool_over_ort": us["pool"] / us["ort"],
            "pool_over_solo": us["pool"] / us["solo"],
        }
        rows.append(row)
        print(
            f"{n:4d} sessions  pool {us['pool']:9.1f}  solo {us['solo']:9.1f}  "
            f"ort {us['ort']:9.1f}  pool/ort {row['pool_over_ort']:.2f}  "
            f"pool/solo {row['pool_over_solo']:.2f}",
            flush=True,
        )
    xs = rng.standard_normal((8, max(args.sessions), HIDDEN)).astype(np.float32)
    solo = solo_step_us(model, xs, 2000)
    rows.append({"kind": "solo_step", **solo})
    print(f"solo stream step: p50 {solo['p50_us']:.1f} us  p99 {solo['p99_us']:.1f} us")
    for n in args.sessions:
        row = {
            "kind": "submit",
            **submit_latency(model, n, args.latency_steps, xs, args.max_wait_us),
        }
        rows.append(row)
        print(
            f"submit, {n:4d} sessions: p50 {row['p50_us']:8.1f} us  p99 {row['p99_us']:8.1f} us  "
            f"{row['steps_per_s']:9.0f} steps/s  mean batch {row['mean_batch']:.1f}",
            flush=True,
        )
    for n in args.sessions:
        row = {
            "kind": "paced",
            **paced_latency(model, n, args.paced_frames, args.frame_ms / 1e3, xs, args.max_wait_us),
        }
        rows.append(row)
        print(
            f"paced {args.frame_ms:g} ms, {n:4d} sessions ({row['steps_per_s']:.0f} steps/s):"
            f"  pool p50 {row['pool_p50_us']:7.1f} p99 {row['pool_p99_us']:7.1f} us"
            f" (mean batch {row['mean_batch']:.1f}, late {row['pool_late_frames']})"
            f"  solo p50 {row['solo_p50_us']:7.1f} p99 {row['solo_p99_us']:7.1f} us"
            f" (late {row['solo_late_frames']})  target p99 <= {row['p99_target_us']:.1f}",
            flush=True,
        )
    write_results("serve", rows, 1, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
