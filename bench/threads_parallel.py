"""Show that the kernels release the GIL: two threads stepping big models run in parallel.

Each worker owns a large LSTM and either runs a whole sequence (one long ``with nogil:``
kernel call) or steps a stream (one short nogil call per timestep). The same work is timed
once sequentially and once on two threads; with the GIL released the threaded wall time
approaches half the sequential one on a machine with two free cores. A GIL probe first counts
how fast the main thread's Python loop runs while a worker is inside a kernel: that figure
does not depend on how many cores are free.
Whole-sequence runs call OpenBLAS for the input projection, so OpenBLAS is pinned to one
thread here (unless ``OPENBLAS_NUM_THREADS`` is already set) to measure our threads, not its.

    python bench/threads_parallel.py [--hidden 512] [--steps 1000] [--threads 2]

Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402  (after pinning OpenBLAS)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the package is built in place, not installed
    sys.path.insert(0, str(ROOT))

import lstm_infer  # noqa: E402


def big_lstm(hidden: int, inputs: int, seed: int) -> lstm_infer.Model:
    """A single-layer LSTM with random weights in the ONNX layout."""
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(hidden)
    W = rng.uniform(-s, s, (1, 4 * hidden, inputs)).astype(np.float32)
    R = rng.uniform(-s, s, (1, 4 * hidden, hidden)).astype(np.float32)
    B = rng.uniform(-s, s, (1, 8 * hidden)).astype(np.float32)
    return lstm_infer.Model.from_onnx_weights("lstm", W, R, B)


def stream_work(model: lstm_infer.Model, x: np.ndarray) -> None:
    """Step a stream over ``x``: one short nogil kernel call per timestep."""
    stream = model.stream(batch_size=x.shape[1])
    out = np.empty((x.shape[1], model.layers[0].hidden_size), np.float32)
    for t in range(x.shape[0]):
        stream.step(x[t], out=out)


def run_work(model: lstm_infer.Model, x: np.ndarray) -> None:
    """Run ``x`` as one sequence: one long nogil kernel call."""
    model.run({"X": x})


def wall_time(
    work: Callable[[lstm_infer.Model, np.ndarray], None],
    jobs: list[tuple[lstm_infer.Model, np.ndarray]],
    parallel: bool,
) -> float:
    start = time.perf_counter()
    if parallel:
        threads = [threading.Thread(target=work, args=job) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for job in jobs:
            work(*job)
    return time.perf_counter() - start


def gil_probe(model: lstm_infer.Model, x: np.ndarray) -> tuple[float, float]:
    """Python loop iterations per second in the main thread, alone and while a worker runs
    ``model`` (near 0 while the worker ran if the kernels held the GIL)."""
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 0.2:
        n += 1
    alone = n / (time.perf_counter() - start)
    done = threading.Event()

    def worker() -> None:
        run_work(model, x)
        done.set()

    thread = threading.Thread(target=worker)
    start, n = time.perf_counter(), 0
    thread.start()
    while not done.is_set():
        n += 1
    during = n / (time.perf_counter() - start)
    thread.join()
    return alone, during


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512, help="LSTM hidden size")
    parser.add_argument("--inputs", type=int, default=128, help="LSTM input size")
    parser.add_argument("--steps", type=int, default=1000, help="timesteps per worker")
    parser.add_argument("--threads", type=int, default=2, help="parallel workers")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    jobs = [
        (
            big_lstm(args.hidden, args.inputs, seed),
            rng.standard_normal((args.steps, 1, args.inputs)).astype(np.float32),
        )
        for seed in range(args.threads)
    ]
    run_work(*jobs[0])  # warm up: page in the weights, settle the CPU clock
    print(
        f"isa={lstm_infer.isa()} cpus={os.cpu_count()} LSTM hidden={args.hidden} "
        f"inputs={args.inputs} steps={args.steps} workers={args.threads} "
        f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}"
    )
    alone, during = gil_probe(*jobs[0])
    print(
        f"GIL probe: main-thread Python loop ran at {during / alone:5.0%} of its solo speed "
        "while a worker was inside a kernel (0% would mean the GIL is held)"
    )
    ideal = min(args.threads, os.cpu_count() or 1)
    print(f"{'':16} {'sequential':>12} {'threaded':>12} {'speed-up':>9}  (ideal {ideal}x)")
    for label, work in (("model.run", run_work), ("stream.step", stream_work)):
        seq = min(wall_time(work, jobs, False) for _ in range(args.repeats))
        par = min(wall_time(work, jobs, True) for _ in range(args.repeats))
        print(f"{label:16} {seq * 1e3:9.1f} ms {par * 1e3:9.1f} ms {seq / par:8.2f}x")
    print(
        "A speed-up well below the ideal with a high GIL-probe figure means the cores are "
        "busy or shared (hyper-threads, a loaded machine, memory bandwidth), not the GIL."
    )


if __name__ == "__main__":
    main()
