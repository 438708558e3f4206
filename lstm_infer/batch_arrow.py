"""Arrow tables and parquet files for batch inference (pyarrow, no ray).

A sequence column is a list column: ``list<list<float>>`` for features (one inner list per
step), ``list<int>`` for token ids; Ray's tensor extension columns are read too. Output columns
are written as nested lists of float32 (portable parquet, readable without lstm_infer or Ray),
null for a row that was skipped. Columns that are not the model's pass through untouched.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lstm_infer.batch import BatchRunner
from lstm_infer.errors import MissingDependencyError


def import_pyarrow() -> Any:
    """pyarrow, or MissingDependencyError naming the extra that installs it."""
    try:
        import pyarrow
    except ImportError as exc:
        raise MissingDependencyError(
            "batch inference on arrow tables / parquet needs pyarrow: pip install "
            "'lstm_infer[ray]' (or pyarrow alone without Ray)"
        ) from exc
    return pyarrow


def _list_depth(t: Any) -> tuple[int, Any]:
    """Nesting depth of list types and the leaf type."""
    pa = import_pyarrow()
    depth = 0
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
        depth += 1
    return depth, t


def _chunk_rows(arr: Any) -> Sequence[Any]:
    """Per-row values of one arrow array (ndarrays where the layout allows, no Python floats)."""
    pa = import_pyarrow()
    if isinstance(arr.type, pa.ExtensionType) and hasattr(arr, "to_numpy"):
        return arr.to_numpy()  # Ray's tensor columns: an ndarray per row (or one stacked array)
    depth, leaf = _list_depth(arr.type)
    numeric = pa.types.is_integer(leaf) or pa.types.is_floating(leaf)
    if depth not in (1, 2) or not numeric or pa.types.is_fixed_size_list(arr.type):
        return arr.to_pylist()
    nulls = arr.is_null().to_numpy(zero_copy_only=False)
    outer = arr.offsets.to_numpy()
    rows: list[Any] = [None] * len(arr)
    if depth == 1:
        leaves = arr.values.to_numpy(zero_copy_only=False)
        for i in range(len(arr)):
            if not nulls[i]:
                rows[i] = leaves[outer[i] : outer[i + 1]]
        return rows
    inner = arr.values
    if pa.types.is_fixed_size_list(inner.type) or inner.null_count:
        return arr.to_pylist()
    offsets = inner.offsets.to_numpy()
    leaves = inner.values.to_numpy(zero_copy_only=False)
    sizes = np.diff(offsets)
    for i in range(len(arr)):
        if nulls[i]:
            continue
        lo, hi = outer[i], outer[i + 1]
        steps = sizes[lo:hi]
        if hi > lo and (steps == steps[0]).all():
            rows[i] = leaves[offsets[lo] : offsets[hi]].reshape(hi - lo, steps[0])
        elif hi == lo:
            rows[i] = leaves[:0]
        else:  # steps of different sizes: the runner reports it
            parts = np.empty(hi - lo, dtype=object)
            parts[:] = [leaves[offsets[k] : offsets[k + 1]] for k in range(lo, hi)]
            rows[i] = parts
    return rows


def column_rows(column: Any) -> list[Any]:
    """Per-row values of an arrow (chunked) array."""
    chunks = getattr(column, "chunks", [column])
    rows: list[Any] = []
    for chunk in chunks:
        rows.extend(_chunk_rows(chunk))
    return rows


def nested_list_array(values: Sequence[np.ndarray | None], ndim: int) -> Any:
    """Rows of ``ndim``-d float32 arrays (None: null) as a nested list array.

    Every row's dims but the first must agree (what a model's outputs do).
    """
    pa = import_pyarrow()
    n = len(values)
    mask = np.array([v is None for v in values], dtype=bool)
    good = [np.ascontiguousarray(v, np.float32) for v in values if v is not None]
    trailing = good[0].shape[1:] if good else (0,) * (ndim - 1)
    if any(v.ndim != ndim or v.shape[1:] != trailing for v in good):
        raise ValueError(f"rows must all be {ndim}-d with dims {trailing} after the first")
    firsts = np.zeros(n, np.int64)
    firsts[~mask] = [v.shape[0] for v in good]
    leaves = pa.array(np.concatenate([v.ravel() for v in good]) if good else np.zeros(0, "f4"))
    # Innermost level first: each item of level k holds trailing[k] children.
    items = int(firsts.sum())
    counts = [items]
    for dim in trailing[:-1]:
        counts.append(counts[-1] * dim)
    array = leaves
    for level in range(ndim - 1, 0, -1):
        size = trailing[level - 1]
        offsets = pa.array(np.arange(counts[level - 1] + 1, dtype=np.int32) * size)
        array = pa.ListArray.from_arrays(offsets, array)
    outer = np.zeros(n + 1, np.int32)
    np.cumsum(firsts, out=outer[1:])
    return pa.ListArray.from_arrays(pa.array(outer), array, mask=pa.array(mask))


def run_table(runner: BatchRunner, table: Any) -> Any:
    """Run one arrow table: the table with the output (and error) columns set."""
    pa = import_pyarrow()
    names = table.column_names
    if runner.input_column not in names:
        from lstm_infer.errors import InputError

        raise InputError(
            f"no column {runner.input_column!r} (the model input {runner.input_name!r}); the "
            f"table has {sorted(names)}"
        )
    id_column = runner.resolve_id_column(names)
    ids = None if id_column is None else table.column(id_column).to_pylist()
    values = column_rows(table.column(runner.input_column))
    outputs, errors = runner.run_rows(values, ids, id_column or "id")
    new = {
        column: nested_list_array(outputs[name], runner.output_ndim(name))
        for name, column in runner.outputs.items()
    }
    if runner.on_error == "skip":
        new[runner.error_column] = pa.array(errors, type=pa.string())
    for column, array in new.items():
        if column in table.column_names:
            table = table.set_column(table.column_names.index(column), column, array)
        else:
            table = table.append_column(column, array)
    return table


def _progress_bar(total: int, quiet: bool) -> Callable[[int], None]:
    """An update(n_rows) callback: tqdm if installed, else a counter on stderr."""
    if quiet:
        return lambda n: None
    try:
        from tqdm import tqdm
    except ImportError:
        done = [0]
        t0 = time.perf_counter()

        def update(n: int) -> None:
            done[0] += n
            rate = done[0] / max(time.perf_counter() - t0, 1e-9)
            end = "\n" if done[0] >= total else ""
            sys.stderr.write(f"\rbatch: {done[0]}/{total} rows ({rate:.0f} rows/s){end}")
            sys.stderr.flush()

        return update
    bar = tqdm(total=total, unit="rows", desc="batch", file=sys.stderr)

    def update_tqdm(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()

    return update_tqdm


def parquet_dataset(path: str | os.PathLike[str]) -> Any:
    """A parquet file or directory of parquet files as a ``pyarrow.dataset.Dataset``."""
    import_pyarrow()
    import pyarrow.dataset as pads

    if not os.path.exists(path):
        raise FileNotFoundError(f"no such parquet file or directory: {os.fspath(path)!r}")
    return pads.dataset(os.fspath(path), format="parquet")


def run_parquet(
    runner: BatchRunner,
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    batch_size: int = 256,
    quiet: bool = False,
) -> int:
    """Run every row of a parquet file (or directory) in this process, writing ``destination``
    (one parquet file) batch by batch. Returns the number of rows written."""
    pa = import_pyarrow()
    import pyarrow.parquet as pq

    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    dataset = parquet_dataset(source)
    update = _progress_bar(dataset.count_rows(), quiet)
    writer = None
    rows = 0
    try:
        for batch in dataset.to_batches(batch_size=batch_size):
            if not batch.num_rows:
                continue
            table = run_table(runner, pa.Table.from_batches([batch]))
            if writer is None:
                writer = pq.ParquetWriter(os.fspath(destination), table.schema)
            writer.write_table(table)
            rows += table.num_rows
            update(table.num_rows)
        if writer is None:  # no rows: the columns there would have been
            pq.write_table(run_table(runner, dataset.schema.empty_table()), destination)
    finally:
        if writer is not None:
            writer.close()
    return rows
