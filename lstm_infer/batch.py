"""Batch inference over columns of rows, one sequence per row: the in-process core.

A batch of rows of different lengths is sorted by length, padded into a few arrays of
similar lengths and each run as one ragged batch (``Model.run(..., lengths=)``); each row gets
its own outputs, trimmed to its own length, the same (to fp32 rounding) as running that row
alone. Rows are checked one by one before the run:
a row that cannot be run (wrong rank, wrong feature size, token ids outside the vocabulary,
non-numeric values) raises :class:`BatchRowError` naming the row, or with ``on_error="skip"``
gets its message in an error column and empty (None) outputs, the other rows unaffected.

Used by :mod:`lstm_infer.ray` (one :class:`BatchRunner` per Ray actor) and by
``lstm-infer batch``; it imports neither ray nor pyarrow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_infer.errors import InputError, LstmInferError
from lstm_infer.model import Model

__all__ = ["BatchRowError", "BatchRunner", "run_batch"]

ON_ERROR = ("raise", "skip")

# Length grouping of a batch (BatchRunner._run_padded). Measured with bench/ray_batch.py's
# tagger (LSTM 64 -> 256, 64 rows of 10-150 steps): one padded run 94 ms, four sorted groups
# 74 ms, the unpadded rows' share of the steps being 54%.
_GROUP_FILL = 0.75
_GROUP_MIN_ROWS = 8


class BatchRowError(InputError):
    """One row of a batch cannot be run. ``row`` is its index in the batch, ``row_id`` the
    value of its id column (None without one)."""

    def __init__(self, message: str, row: int, row_id: Any = None) -> None:
        super().__init__(message)
        self.row = row
        self.row_id = row_id


@dataclass(frozen=True)
class _OutputAxes:
    """Where the batch and time axes of one model output are (time None: a state)."""

    batch: int
    time: int | None


def _output_axes(model: Model) -> dict[str, _OutputAxes]:
    """Batch and time axes of each output, from the model's signature (its conventions)."""
    sig = model.spec.signature
    axes = {}
    for role, name in sig.outputs.items():
        if role == "y":
            if sig.style == "onnx_node":  # (T, D, B, Hr) or (B, T, D, Hr)
                axes[name] = _OutputAxes(2, 0) if sig.layout == 0 else _OutputAxes(0, 1)
            else:  # (T, B, F) or (B, T, F)
                axes[name] = _OutputAxes(1, 0) if sig.layout == 0 else _OutputAxes(0, 1)
        elif sig.style == "onnx_node" and sig.layout == 1:  # (B, D, H)
            axes[name] = _OutputAxes(0, None)
        else:  # (D, B, H) or (L*D, B, H)
            axes[name] = _OutputAxes(1, None)
    return axes


def _as_row_array(value: Any) -> np.ndarray:
    """One row's sequence as an ndarray; nested lists / object arrays (what pandas and Ray's
    numpy batches hold for list columns) are stacked. Raises ValueError when ragged."""
    if value is None:
        raise ValueError("it holds a missing (null) value")
    arr = np.asarray(value)
    if arr.dtype == object:
        if arr.ndim == 0:
            raise TypeError(f"it holds a {type(value).__name__}, not numbers")
        parts = [_as_row_array(v) for v in arr.reshape(-1)]
        if not parts:
            return np.zeros(arr.shape + (0,), np.float32)
        if len({p.shape for p in parts}) != 1:
            raise ValueError(
                f"its steps have different shapes {sorted({p.shape for p in parts})[:3]}"
            )
        arr = np.stack(parts).reshape(arr.shape + parts[0].shape)
    return arr


class BatchRunner:
    """Runs batches of rows through one model.

    Parameters
    ----------
    model : Model, or a path
        The model, or a file for :func:`lstm_infer.load` (with ``load_options``).
    inputs : mapping, optional
        Model input name -> column holding it (default: the sequence input read from a column
        of the same name). Only the sequence input comes from a column: each row holds one
        sequence, ``(seq_len, input_size)`` floats or ``(seq_len,)`` token ids for a model
        with an embedding, whatever the model's layout (time-major or batch-first).
    outputs : mapping, optional
        Model output name -> column written (default: every output, under its own name).
        A row's sequence output is trimmed to its length, ``(seq_len, ...)``; a state output
        is the row's slice of it.
    threads : int
        Threads of each ``Model.run``.
    on_error : {"raise", "skip"}
        What a row that cannot be run does: raise :class:`BatchRowError`, or leave its outputs
        None and put the reason in ``error_column``.
    id_column : str, optional
        Column whose value names a row in error messages (default "id" when the batch has one,
        else the row's index in the batch).
    error_column : str
        The column of error messages with ``on_error="skip"`` (None for rows that ran).
    load_options : mapping, optional
        Keyword arguments of :func:`lstm_infer.load` when ``model`` is a path.
    """

    def __init__(
        self,
        model: Model | str | os.PathLike[str],
        inputs: Mapping[str, str] | None = None,
        outputs: Mapping[str, str] | None = None,
        *,
        threads: int = 1,
        on_error: str = "raise",
        id_column: str | None = None,
        error_column: str = "error",
        load_options: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(model, (str, os.PathLike)):
            import lstm_infer

            # A native file is mapped: every worker on a machine shares its pages.
            options = {"mmap": _is_native_file(model), **dict(load_options or {})}
            if not options["mmap"]:
                options.pop("mmap")
            model = lstm_infer.load(model, **options)
        elif load_options:
            raise TypeError("load_options apply only when model is a path")
        if not isinstance(model, Model):
            raise TypeError(
                f"batch inference needs a recurrent-stack Model (lstm_infer.Model), got "
                f"{type(model).__name__}; whole-graph models are not supported yet"
            )
        if model.spec.signature.weight_inputs:
            raise TypeError("this model takes its weights as run-time inputs; freeze them first")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if not isinstance(threads, (int, np.integer)) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        sig = model.spec.signature
        self.model = model
        self.input_name = sig.inputs["x"]
        inputs = dict(inputs) if inputs is not None else {self.input_name: self.input_name}
        extra = sorted(set(inputs) - {self.input_name})
        if extra or self.input_name not in inputs:
            raise ValueError(
                f"inputs must map the model's sequence input {self.input_name!r} (and only it) "
                f"to a column, got {sorted(inputs)}"
            )
        self.input_column = inputs[self.input_name]
        axes = _output_axes(model)
        outputs = dict(outputs) if outputs is not None else {n: n for n in model.output_names}
        unknown = sorted(set(outputs) - set(axes))
        if unknown:
            raise ValueError(f"unknown output name(s) {unknown}; outputs are {model.output_names}")
        self.outputs = outputs
        self._axes = axes
        self.threads = int(threads)
        self.on_error = on_error
        self.id_column = id_column
        self.error_column = error_column
        emb = model.spec.embedding
        self._vocab = None if emb is None else int(emb.shape[0])
        self._input_size = model.spec.layers[0].input_size
        self._batch_first = sig.layout == 1

    # ---- one row -------------------------------------------------------------------------------

    def check_row(self, value: Any) -> np.ndarray:
        """One row's sequence as the array ``Model.run`` takes for it (float32 ``(T, I)`` or
        int64 ``(T,)`` ids); raises ValueError / TypeError saying what is wrong."""
        if value is None:
            raise ValueError("it is missing (null / None)")
        arr = _as_row_array(value)
        if self._vocab is not None:
            if arr.ndim == 2 and arr.size == 0 and arr.shape[0] == 0:
                arr = arr.reshape(0)  # an empty list of lists
            if arr.ndim != 1:
                raise ValueError(f"token ids must have rank 1 (seq_len,), got shape {arr.shape}")
            if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and arr.size == 0):
                raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
            if arr.size and (arr.min() < 0 or arr.max() >= self._vocab):
                raise ValueError(
                    f"token ids must be in [0, {self._vocab}), got range [{arr.min()}, {arr.max()}]"
                )
            return arr.astype(np.int64, copy=False)
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"features must be numeric, got dtype {arr.dtype}")
        if arr.ndim in (1, 2) and arr.shape[0] == 0:  # no steps ([] has no feature axis)
            arr = arr.reshape(0, self._input_size)
        if arr.ndim != 2:
            raise ValueError(
                f"features must have rank 2 (seq_len, {self._input_size}), got shape {arr.shape}"
            )
        if arr.shape[1] != self._input_size:
            raise ValueError(
                f"features must have size {self._input_size} (seq_len, {self._input_size}), got "
                f"shape {arr.shape}"
            )
        return arr.astype(np.float32, copy=False)

    def resolve_id_column(self, names: Sequence[str]) -> str | None:
        """The column naming rows in errors, given a batch's column names."""
        if self.id_column is not None:
            if self.id_column not in names:
                raise InputError(f"no id column {self.id_column!r}; the batch has {sorted(names)}")
            return self.id_column
        return "id" if "id" in names and self.input_column != "id" else None

    def output_ndim(self, name: str) -> int:
        """Rank of one row's value of output ``name`` (its batch axis removed)."""
        info = next(t for t in self.model.outputs if t.name == name)
        return len(info.shape) - 1

    # ---- a batch -------------------------------------------------------------------------------

    def __call__(self, columns: Mapping[str, Any]) -> dict[str, Any]:
        """Run one batch.

        Parameters
        ----------
        columns : mapping of column name -> sequence of row values
            Every column has one value per row; the input column holds each row's sequence.

        Returns
        -------
        dict of column name -> numpy array
            The input columns passed through (the input column too), then one object array per
            output column (an ndarray per row, None for a skipped row), then, with
            ``on_error="skip"``, the error column.
        """
        if self.input_column not in columns:
            raise InputError(
                f"no column {self.input_column!r} (the model input {self.input_name!r}); the "
                f"batch has {sorted(columns)}"
            )
        id_column = self.resolve_id_column(list(columns))
        n = len(columns[self.input_column])
        for name, col in columns.items():
            if len(col) != n:
                raise InputError(f"column {name!r} has {len(col)} rows, {self.input_column!r} {n}")
        ids = None if id_column is None else columns[id_column]
        outputs, errors = self.run_rows(columns[self.input_column], ids, id_column)
        out: dict[str, Any] = {name: _passthrough(col) for name, col in columns.items()}
        for name, column in self.outputs.items():
            out[column] = outputs[name]
        if self.on_error == "skip":
            out[self.error_column] = np.array(errors, dtype=object)
        return out

    def run_rows(
        self, values: Sequence[Any], ids: Sequence[Any] | None = None, id_column: str = "id"
    ) -> tuple[dict[str, np.ndarray], list[str | None]]:
        """Run the rows ``values`` (one sequence each) as one padded batch.

        Parameters
        ----------
        values : sequence
            Each row's sequence (array, nested lists).
        ids : sequence, optional
            Each row's id (for error messages), from the column ``id_column``.

        Returns
        -------
        outputs : dict of output name -> object array
            Per row its output (None for a row in error).
        errors : list
            Per row None, or why it could not be run (``on_error="skip"``).
        """
        n = len(values)
        rows: list[np.ndarray | None] = [None] * n
        errors: list[str | None] = [None] * n
        labels = _Labels(ids, id_column, self.input_column)
        for i in range(n):
            try:
                rows[i] = self.check_row(values[i])
            except (ValueError, TypeError) as exc:
                self._fail(labels, i, str(exc), errors)
        good = [i for i, r in enumerate(rows) if r is not None]
        per_row: list[dict[str, np.ndarray] | None] = []
        if good:
            try:
                per_row = list(self._run_padded([rows[i] for i in good]))
            except LstmInferError:
                # Something only the engine checks: find the row(s) by running each alone.
                per_row = []
                for i in good:
                    try:
                        per_row.append(self._run_padded([rows[i]])[0])
                    except LstmInferError as exc:
                        self._fail(labels, i, str(exc), errors)
                        per_row.append(None)
        results: list[dict[str, np.ndarray] | None] = [None] * n
        for i, r in zip(good, per_row):
            results[i] = r
        outputs = {}
        for name in self.outputs:
            col = np.empty(n, dtype=object)
            col[:] = [None if r is None else r[name] for r in results]
            outputs[name] = col
        return outputs, errors

    def _fail(self, labels: _Labels, row: int, reason: str, errors: list[str | None]) -> None:
        label, row_id = labels(row)
        message = f"{label} of column {self.input_column!r} cannot be run: {reason}"
        if self.on_error == "raise":
            raise BatchRowError(message, row, row_id)
        errors[row] = message

    def _run_padded(self, rows: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Run ``rows`` as a few padded batches of similar lengths; outputs per row.

        The engine runs every step of a padded batch for every row (the lengths only mask
        the updates), so rows are sorted by length and cut into groups whose shortest row is
        at least ``_GROUP_FILL`` of the longest (each group keeps ``_GROUP_MIN_ROWS`` rows or
        more: a batch too small wastes the matrix products' width instead).
        """
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        per_row: list[dict[str, np.ndarray]] = [{} for _ in rows]
        start = 0
        while start < len(order):
            longest = len(rows[order[start]])
            stop = start + 1
            while stop < len(order) and (
                stop - start < _GROUP_MIN_ROWS or len(rows[order[stop]]) >= _GROUP_FILL * longest
            ):
                stop += 1
            if len(order) - stop < _GROUP_MIN_ROWS:  # no short group left over at the end
                stop = len(order)
            group = order[start:stop]
            for i, out in zip(group, self._run_one_batch([rows[i] for i in group])):
                per_row[i] = out
            start = stop
        return per_row

    def _run_one_batch(self, rows: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Pad ``rows`` into one batch, run it, and split the outputs per row."""
        lengths = np.array([len(r) for r in rows], np.int32)
        T, B = int(lengths.max()), len(rows)
        tail = rows[0].shape[1:]
        dtype = rows[0].dtype
        padded = np.zeros((T, B, *tail), dtype)
        for b, r in enumerate(rows):
            padded[: len(r), b] = r
        if self._batch_first:
            padded = np.swapaxes(padded, 0, 1)
        wanted = list(self.outputs)
        outs = self.model.run(
            {self.input_name: padded}, wanted, threads=self.threads, lengths=lengths
        )
        per_row: list[dict[str, np.ndarray]] = [{} for _ in rows]
        for name in wanted:
            y, ax = outs[name], self._axes[name]
            for b, n in enumerate(lengths):
                part = np.take(y, b, axis=ax.batch)
                if ax.time is not None:  # the time axis, once the batch axis is gone
                    t = ax.time if ax.time < ax.batch else ax.time - 1
                    part = part[(slice(None),) * t + (slice(0, int(n)),)]
                per_row[b][name] = np.ascontiguousarray(part)
        return per_row


class _Labels:
    """How error messages name row ``i``: its index, and its id when there is an id column."""

    def __init__(self, ids: Sequence[Any] | None, id_column: str, input_column: str) -> None:
        self.ids, self.id_column, self.input_column = ids, id_column, input_column

    def __call__(self, row: int) -> tuple[str, Any]:
        if self.ids is None:
            return f"row {row}", None
        row_id = self.ids[row]
        if isinstance(row_id, np.generic):
            row_id = row_id.item()
        return f"row {row} ({self.id_column}={row_id!r})", row_id


def _passthrough(col: Any) -> Any:
    """A column passed through unchanged (lists become numpy arrays, as Ray's batches hold)."""
    if isinstance(col, np.ndarray):
        return col
    try:
        arr = np.asarray(col)
    except ValueError:
        arr = None
    if arr is None or arr.ndim != 1:
        arr = np.empty(len(col), dtype=object)
        arr[:] = list(col)
    return arr


def run_batch(
    model: Model | str | os.PathLike[str],
    columns: Mapping[str, Any],
    inputs: Mapping[str, str] | None = None,
    outputs: Mapping[str, str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run one batch of rows through ``model``: ``BatchRunner(model, inputs, outputs,
    **options)(columns)``. See :class:`BatchRunner`."""
    return BatchRunner(model, inputs, outputs, **options)(columns)


def _is_native_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an lstm_infer native file (safetensors with our metadata)."""
    from lstm_infer.safetensors_io import is_safetensors

    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    return is_safetensors(head) and b'"lstm_infer"' in head
