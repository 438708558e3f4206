"""Ray Data batch inference: a callable class for ``Dataset.map_batches``, and ``predict``.

    import ray
    from lstm_infer.ray import MapBatches

    ds = ray.data.read_parquet("s3://bucket/utterances/")
    ds = ds.map_batches(
        MapBatches,
        fn_constructor_kwargs={"model": "/shared/tagger.safetensors",
                               "inputs": {"input": "features"}, "outputs": {"output": "tags"},
                               "threads": 1},
        batch_size=256, concurrency=8, num_cpus=1, batch_format="pyarrow",
    )

Each actor loads the model once (in its constructor) and runs every batch it is given as one
padded, ragged batch (:class:`lstm_infer.batch.BatchRunner`): rows of any length, features or
token ids, each row's output trimmed to its own length; other columns pass through. Batches
may come as pyarrow tables (the fastest: pass-through columns are not copied, outputs are
nested list columns), pandas DataFrames or dicts of numpy arrays; the result has the same
format. Only this module imports ray; ``import lstm_infer`` never does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from lstm_infer.errors import MissingDependencyError

try:
    import ray
    import ray.data
except ImportError as exc:  # pragma: no cover - exercised without ray installed
    raise MissingDependencyError(
        "lstm_infer.ray needs Ray Data: pip install 'lstm_infer[ray]' (ray[data] and pyarrow)"
    ) from exc

from lstm_infer.batch import BatchRunner
from lstm_infer.model import Model

__all__ = ["MapBatches", "predict"]


class MapBatches:
    """A callable class for ``ds.map_batches(MapBatches, fn_constructor_kwargs={...})``.

    Parameters
    ----------
    model : path, bytes or Model
        A model file for :func:`lstm_infer.load` (the workers must see the path: shared
        storage), its bytes (shipped to each actor through the object store), or a Model
        (used as is; in-process use only, a compiled Model does not pickle).
    inputs, outputs : mapping, optional
        Model input name -> column, model output name -> column (see
        :class:`~lstm_infer.batch.BatchRunner`).
    load_options : mapping, optional
        Keyword arguments of :func:`lstm_infer.load` (e.g. ``{"batch_first": True}``).
    threads : int
        Threads of each run (give the actors ``num_cpus=threads``).
    on_error, id_column, error_column
        As for :class:`~lstm_infer.batch.BatchRunner`.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes | Model,
        inputs: Mapping[str, str] | None = None,
        outputs: Mapping[str, str] | None = None,
        *,
        load_options: Mapping[str, Any] | None = None,
        threads: int = 1,
        on_error: str = "raise",
        id_column: str | None = None,
        error_column: str = "error",
    ) -> None:
        if isinstance(model, (bytes, bytearray, memoryview)):
            import lstm_infer

            model = lstm_infer.load(bytes(model), **dict(load_options or {}))
            load_options = None
        self.runner = BatchRunner(
            model,
            inputs,
            outputs,
            threads=threads,
            on_error=on_error,
            id_column=id_column,
            error_column=error_column,
            load_options=load_options,
        )

    def __call__(self, batch: Any) -> Any:
        """Run one batch: a pyarrow Table, a pandas DataFrame or a dict of numpy arrays."""
        if hasattr(batch, "column_names") and hasattr(batch, "schema"):
            from lstm_infer.batch_arrow import run_table

            return run_table(self.runner, batch)
        if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas
            import pandas as pd

            out = self.runner({name: batch[name].to_numpy() for name in batch.columns})
            return pd.DataFrame(out, index=batch.index)
        if isinstance(batch, Mapping):
            return self.runner(batch)
        raise TypeError(
            f"map_batches gave a {type(batch).__name__}; expected a pyarrow Table, a pandas "
            "DataFrame or a dict of numpy arrays"
        )


def _model_argument(model: Any, ship_model: bool) -> Any:
    """What goes to the actors: the path (absolute), or the bytes of the file or Model."""
    if isinstance(model, Model):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.safetensors")
            model.save(path)
            with open(path, "rb") as fh:
                return fh.read()
    if isinstance(model, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(model))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such model file: {path!r}")
        if ship_model:
            with open(path, "rb") as fh:
                return fh.read()
        return path
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    raise TypeError(f"model must be a path, bytes or a Model, got {type(model).__name__}")


def predict(
    dataset: Any,
    model: str | os.PathLike[str] | bytes | Model,
    inputs: Mapping[str, str] | None = None,
    outputs: Mapping[str, str] | None = None,
    *,
    batch_size: int = 256,
    concurrency: int | None = None,
    threads: int = 1,
    load_options: Mapping[str, Any] | None = None,
    on_error: str = "raise",
    id_column: str | None = None,
    error_column: str = "error",
    ship_model: bool = False,
    num_cpus: float | None = None,
) -> ray.data.Dataset:
    """Run every row of a dataset through the model on a pool of Ray actors.

    Parameters
    ----------
    dataset : ray.data.Dataset, or path(s) of parquet files
        The rows; paths are read with ``ray.data.read_parquet``.
    model : path, bytes or Model
        A path is sent to the actors as a path (each loads the file itself: put it on storage
        every node sees), unless ``ship_model``; bytes and Models are sent as the file's bytes
        through the object store.
    inputs, outputs, threads, load_options, on_error, id_column, error_column
        As for :class:`MapBatches`.
    batch_size : int
        Rows per batch (one padded run).
    concurrency : int, optional
        Number of actors (default: as many as fit in the cluster's CPUs less one, which the
        read tasks need: actors that hold every CPU leave none to read the input, and the
        job waits forever).
    num_cpus : float, optional
        CPUs each actor reserves (default ``threads``).

    Returns
    -------
    ray.data.Dataset
        Lazy: the input columns, then the output columns (nested lists of float32) and, with
        ``on_error="skip"``, the error column.
    """
    if isinstance(dataset, (str, os.PathLike)):
        dataset = [dataset]
    if isinstance(dataset, Sequence):
        dataset = ray.data.read_parquet([os.fspath(p) for p in dataset])
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    shipped = _model_argument(model, ship_model)
    kwargs = {
        "inputs": dict(inputs) if inputs is not None else None,
        "outputs": dict(outputs) if outputs is not None else None,
        "load_options": dict(load_options) if load_options else None,
        "threads": threads,
        "on_error": on_error,
        "id_column": id_column,
        "error_column": error_column,
    }
    # Arguments every actor would reject fail here, on the driver, with a plain traceback.
    MapBatches(model if isinstance(model, Model) else shipped, **kwargs)
    if num_cpus is None:
        num_cpus = threads
    if concurrency is None:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        concurrency = max(1, int((cpus - 1) // num_cpus))
    return dataset.map_batches(
        MapBatches,
        fn_constructor_kwargs={"model": shipped, **kwargs},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
        zero_copy_batch=True,
    )
