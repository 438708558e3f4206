"""Batch inference throughput: one process vs a local Ray cluster with 2 actors.

A tagger (LSTM I=64 -> H=256 -> Linear 32) over a few thousand rows of variable length
(uniform in [--min-len, --max-len] steps), held as an arrow table with a list<list<float>>
column, as a parquet file would give it. Measured:

- ``in_process``: ``BatchRunner`` over the table in batches of ``--batch-size`` rows, one thread
  (what ``lstm-infer batch`` without ``--ray`` does, minus the parquet I/O);
- ``ray_2_actors``: ``lstm_infer.ray.predict`` on ``ray.init(num_cpus=2)``, 2 actors of 1
  CPU and 1 thread, the table given as in-memory blocks (``ray.data.from_arrow``), the
  wall time of ``materialize()`` including the actors' start and model load; the same for a
  one-row job (the fixed cost of a job) and for half the rows: all rows less half the rows
  over the time difference is the rate once the actors are running (``marginal``).

The Ray outputs are checked against the in-process ones before anything is reported.

    python bench/ray_batch.py [--rows 6000] [--batch-size 64] [--output PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from compare import write_results  # noqa: E402

import lstm_infer  # noqa: E402
from lstm_infer.batch import BatchRunner  # noqa: E402
from lstm_infer.batch_arrow import run_table  # noqa: E402

I, H, F = 64, 256, 32


def tagger(seed: int = 0) -> lstm_infer.Model:
    """LSTM(I -> H) -> Linear(H -> F) from a PyTorch-style state_dict of random weights."""
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(H)
    sd = {
        "lstm.weight_ih_l0": rng.uniform(-s, s, (4 * H, I)),
        "lstm.weight_hh_l0": rng.uniform(-s, s, (4 * H, H)),
        "lstm.bias_ih_l0": rng.uniform(-s, s, 4 * H),
        "lstm.bias_hh_l0": rng.uniform(-s, s, 4 * H),
        "fc.weight": rng.uniform(-s, s, (F, H)),
        "fc.bias": rng.uniform(-s, s, F),
    }
    return lstm_infer.load({k: v.astype(np.float32) for k, v in sd.items()})


def table(rows: int, min_len: int, max_len: int, seed: int = 1) -> Any:
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, rows)
    leaves = rng.standard_normal((int(lengths.sum()) * I,)).astype(np.float32)
    steps = pa.ListArray.from_arrays(
        pa.array(np.arange(int(lengths.sum()) + 1, dtype=np.int32) * I), pa.array(leaves)
    )
    offsets = np.zeros(rows + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    features = pa.ListArray.from_arrays(pa.array(offsets), steps)
    return pa.table({"id": np.arange(rows), "features": features}), lengths


def in_process(model: lstm_infer.Model, tbl: Any, batch_size: int) -> tuple[float, list]:
    runner = BatchRunner(model, {"input": "features"}, {"output": "tags"})
    t0 = time.perf_counter()
    tags = []
    for start in range(0, tbl.num_rows, batch_size):
        out = run_table(runner, tbl.slice(start, batch_size))
        tags.append(out)
    return time.perf_counter() - t0, tags


def on_ray(path: str, tbl: Any, batch_size: int, blocks: int) -> dict[str, Any]:
    """Wall times of three jobs on one local cluster: one row (after a warm-up job), half the
    rows and all of them; the difference of the last two is the rate once the actors run."""
    import ray

    from lstm_infer.ray import predict

    def job(t: Any, n_blocks: int) -> tuple[float, Any]:
        step = -(-t.num_rows // n_blocks)
        ds = ray.data.from_arrow([t.slice(i, step) for i in range(0, t.num_rows, step)])
        t0 = time.perf_counter()
        out = predict(
            ds, path, {"input": "features"}, {"output": "tags"}, batch_size=batch_size,
            concurrency=2,
        ).materialize()  # fmt: skip
        return time.perf_counter() - t0, out

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        job(tbl.slice(0, 1), 1)  # warm-up: worker processes, imports
        one_s, _ = job(tbl.slice(0, 1), 1)
        half_s, _ = job(tbl.slice(0, tbl.num_rows // 2), blocks // 2)
        full_s, result = job(tbl, blocks)
        tables = ray.get(result.to_arrow_refs())
    finally:
        ray.shutdown()
    return {"one_s": one_s, "half_s": half_s, "full_s": full_s, "tables": tables}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=6000)
    p.add_argument("--min-len", type=int, default=10)
    p.add_argument("--max-len", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--blocks", type=int, default=16, help="blocks of the Ray dataset")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    import pyarrow as pa

    model = tagger()
    tbl, lengths = table(args.rows, args.min_len, args.max_len)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "tagger.safetensors")
        model.save(path)
        local_s, local_out = in_process(model, tbl, args.batch_size)
        timings = on_ray(path, tbl, args.batch_size, args.blocks)
    local = pa.concat_tables(local_out)
    remote = pa.concat_tables(timings.pop("tables")).sort_by("id")
    ray_s, fixed_s = timings["full_s"], timings["one_s"]
    marginal = (args.rows - args.rows // 2) / (ray_s - timings["half_s"])
    assert remote.column("id").to_pylist() == local.column("id").to_pylist()
    a = local.column("tags").combine_chunks().flatten().flatten().to_numpy()
    b = remote.column("tags").combine_chunks().flatten().flatten().to_numpy()
    diff = float(np.abs(a - b).max())
    if not diff <= 1e-5:
        raise SystemExit(f"Ray and in-process outputs differ by {diff}")
    steps = int(lengths.sum())
    rows = [
        {
            "case": name,
            "rows": args.rows,
            "steps": steps,
            "seconds": s,
            "rows_per_s": args.rows / s,
            "steps_per_s": steps / s,
        }
        for name, s in (("in_process_1_thread", local_s), ("ray_2_actors", ray_s))
    ]
    rows.append({"case": "ray_one_row_job", "seconds": fixed_s})
    rows.append({"case": "ray_2_actors_half_rows", "seconds": timings["half_s"]})
    rows.append({"case": "ray_2_actors_marginal", "rows_per_s": marginal})
    print(
        f"LSTM {I}->{H} -> Linear {F}; {args.rows} rows of {args.min_len}-{args.max_len} steps "
        f"(mean {lengths.mean():.0f}), batches of {args.batch_size}; max |ray - local| {diff:.1e}"
    )
    for r in rows[:2]:
        print(
            f"{r['case']:<22}{r['seconds']:8.2f} s {r['rows_per_s']:9.0f} rows/s "
            f"{r['steps_per_s']:11.0f} steps/s"
        )
    print(f"{'ray_one_row_job':<22}{fixed_s:8.2f} s (actor start, model load, scheduling)")
    print(f"ray_2_actors / in_process: {local_s / ray_s:.2f}x the rows/s")
    print(f"ray_2_actors marginal (all rows - half the rows): {marginal:.0f} rows/s")
    load = os.getloadavg()
    print(f"load average during the run (the cores may be shared): {load[0]:.1f}")
    rows.append({"case": "load_average_1min", "value": load[0]})
    write_results("ray_batch", rows, 1, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
