"""Ray Data: ``MapBatches`` on an actor pool, ``predict`` and ``lstm-infer batch --ray``.

One local cluster (2 CPUs, no dashboard) for the module. Every row's output is checked against
``model.run`` on that row alone, in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import OUTSIDE, require, run_python
from test_batch import VOCAB, F, _alone, onnx_node_model, torch_style_model

ray = require("ray")
pa = require("pyarrow")
pq = require("pyarrow.parquet")

from lstm_infer import cli  # noqa: E402
from lstm_infer.ray import MapBatches, predict  # noqa: E402

LENGTHS = [4, 17, 1, 9, 0, 12, 3, 17, 6, 2, 11, 5]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    # Workers start in the driver's working directory, which Python puts first on sys.path:
    # from the source checkout they would import its uncompiled package (CI installs it).
    here = os.getcwd()
    os.chdir(OUTSIDE)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        os.chdir(here)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


def _rows(model, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if model.spec.embedding is not None:
        return [rng.integers(0, VOCAB, n) for n in LENGTHS]
    return [rng.standard_normal((n, 5)).astype(np.float32) for n in LENGTHS]


def _parquet(path, rows) -> None:
    ids = [f"utt{i:03d}" for i in range(len(rows))]
    pq.write_table(pa.table({"id": ids, "features": [r.tolist() for r in rows]}), path)


def _check(model, rows, ids, tags, name) -> None:
    by_id = dict(zip(ids, tags))
    assert len(by_id) == len(rows)
    for i, row in enumerate(rows):
        want = _alone(model, row)[name]
        got = np.asarray(by_id[f"utt{i:03d}"], np.float32).reshape(want.shape)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_map_batches_rows_equal_rows_alone(cluster, tmp_path):
    batch_format = "pyarrow"  # the others: test_map_batches_called_directly_...
    model = torch_style_model(batch_first=True)
    path = tmp_path / "model.safetensors"
    model.save(path)
    rows = _rows(model)
    _parquet(tmp_path / "in.parquet", rows)
    ds = ray.data.read_parquet(str(tmp_path / "in.parquet")).map_batches(
        MapBatches,
        fn_constructor_kwargs={
            "model": str(path),
            "inputs": {"input": "features"},
            "outputs": {"output": "tags"},
            "threads": 1,
        },
        batch_size=5,
        concurrency=2,
        num_cpus=0.5,  # two actors in one of the two CPUs: the read tasks need the other
        batch_format=batch_format,
    )
    got = ds.take_all()
    _check(model, rows, [r["id"] for r in got], [r["tags"] for r in got], "output")
    assert sorted(len(r["features"]) for r in got) == sorted(LENGTHS)  # passed through


def test_map_batches_called_directly_with_each_batch_format(tmp_path):
    """The formats map_batches may hand over, without a cluster: the same rows each time."""
    import pandas as pd

    model = torch_style_model(tokens=True)
    path = tmp_path / "model.safetensors"
    model.save(path)
    rows = _rows(model, seed=6)
    ids = [f"utt{i:03d}" for i in range(len(rows))]
    fn = MapBatches(path.read_bytes(), {"input": "tokens"}, {"output": "tags"})
    objects = np.empty(len(rows), object)
    objects[:] = rows
    table = pa.table({"id": ids, "tokens": [r.tolist() for r in rows]})
    for batch in (
        {"id": np.array(ids), "tokens": objects},
        pd.DataFrame({"id": ids, "tokens": objects}),
        table,
    ):
        out = fn(batch)
        assert type(out) is type(batch) or isinstance(batch, dict)
        tags = out.column("tags").to_pylist() if isinstance(out, pa.Table) else list(out["tags"])
        ids_out = out.column("id").to_pylist() if isinstance(out, pa.Table) else list(out["id"])
        _check(model, rows, ids_out, tags, "output")
    with pytest.raises(TypeError, match="expected a pyarrow Table"):
        fn([1, 2, 3])


def test_predict_token_ids_from_bytes_and_a_model(cluster, tmp_path):
    model = torch_style_model(tokens=True, bidirectional=True)
    rows = _rows(model, seed=1)
    ids = [f"utt{i:03d}" for i in range(len(rows))]
    ds = ray.data.from_items([{"id": i, "tokens": r} for i, r in zip(ids, rows)])
    out = predict(
        ds, model, {"input": "tokens"}, {"output": "y", "h_n": "h"}, batch_size=4, num_cpus=0.5
    )
    got = out.take_all()
    _check(model, rows, [r["id"] for r in got], [r["y"] for r in got], "output")
    _check(model, rows, [r["id"] for r in got], [r["h"] for r in got], "h_n")


def test_predict_onnx_operator_batch_first_from_a_path(cluster, tmp_path):
    model = onnx_node_model(1)
    path = tmp_path / "op.safetensors"
    model.save(path)
    rows = _rows(model, seed=2)
    _parquet(tmp_path / "in.parquet", rows)
    out = predict(
        str(tmp_path / "in.parquet"), path, {"X": "features"}, {"Y": "y"}, concurrency=2,
        num_cpus=0.5, ship_model=True,
    )  # fmt: skip
    got = out.take_all()
    _check(model, rows, [r["id"] for r in got], [r["y"] for r in got], "Y")


def test_predict_rejects_bad_arguments_on_the_driver(cluster, tmp_path):
    model = torch_style_model()
    ds = ray.data.from_items([{"input": np.zeros((2, 5), np.float32)}])
    with pytest.raises(ValueError, match="unknown output"):
        predict(ds, model, outputs={"nope": "x"})
    with pytest.raises(FileNotFoundError):
        predict(ds, tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="threads"):
        predict(ds, model, threads=0)


def test_cli_batch_in_process_and_on_ray(cluster, tmp_path, capsys):
    model = torch_style_model("gru", batch_first=True)
    path = tmp_path / "model.safetensors"
    model.save(path)
    rows = _rows(model, seed=4)
    _parquet(tmp_path / "in.parquet", rows)
    args = [
        "batch", str(path), str(tmp_path / "in.parquet"), "--input-column", "features",
        "--output-column", "tags", "--batch-size", "5", "--quiet",
    ]  # fmt: skip
    local = tmp_path / "local.parquet"
    assert cli.main([*args[:3], str(local), *args[3:]]) == 0
    on_ray = tmp_path / "on_ray"
    assert (
        cli.main(
            [*args[:3], str(on_ray), *args[3:], "--ray", "--concurrency", "2", "--num-cpus", "0.5"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"{len(rows)} rows" in out and "on Ray (local)" in out
    for table in (pq.read_table(local), pq.read_table(on_ray)):
        assert table.num_rows == len(rows)
        _check(model, rows, table.column("id").to_pylist(), table.column("tags").to_pylist(),
               "output")  # fmt: skip
    assert ray.is_initialized()  # the CLI left the cluster it did not start alone


def test_cli_batch_reports_a_bad_row(tmp_path):
    model = torch_style_model()
    path = tmp_path / "model.safetensors"
    model.save(path)
    rows = _rows(model, seed=5)
    rows[2] = np.zeros((2, 9), np.float32)
    _parquet(tmp_path / "in.parquet", rows)
    cmd = [sys.executable, "-m", "lstm_infer", "batch", str(path), str(tmp_path / "in.parquet"),
           str(tmp_path / "out.parquet"), "--input-column", "features", "--quiet"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=OUTSIDE)
    assert result.returncode == 2
    assert "row 2 (id='utt002')" in result.stderr and "features must have size 5" in result.stderr
    skipped = subprocess.run([*cmd, "--on-error", "skip"], capture_output=True, text=True,
                             timeout=120, cwd=OUTSIDE)  # fmt: skip
    assert skipped.returncode == 0, skipped.stderr
    table = pq.read_table(tmp_path / "out.parquet")
    errors = table.column("error").to_pylist()
    assert [e is not None for e in errors] == [i == 2 for i in range(len(rows))]
    assert table.column("output").to_pylist()[2] is None
    assert len(table.column("output").to_pylist()[3]) == LENGTHS[3]
    assert F == len(table.column("output").to_pylist()[3][0])


def test_bad_row_is_named_by_its_id_or_skipped(cluster, tmp_path):
    model = torch_style_model()
    path = tmp_path / "model.safetensors"
    model.save(path)
    rows = _rows(model, seed=3)
    rows[7] = np.zeros((3, 4), np.float32)  # wrong feature size
    _parquet(tmp_path / "in.parquet", rows)
    src = str(tmp_path / "in.parquet")
    got = predict(src, path, {"input": "features"}, on_error="skip", num_cpus=0.5).take_all()
    errors = {r["id"]: r["error"] for r in got}
    assert [k for k, e in errors.items() if e] == ["utt007"]
    good = [r for r in got if r["id"] != "utt007"]
    assert next(r for r in got if r["id"] == "utt007")["output"] is None
    kept = [rows[int(r["id"][3:])] for r in good]
    for r, row in zip(good, kept):
        want = _alone(model, row)["output"]
        np.testing.assert_allclose(np.asarray(r["output"]).reshape(want.shape), want, atol=1e-5)
    # Last in the module: the failed job's actor may hold its CPU share a while.
    with pytest.raises(Exception, match=r"row \d+ \(id='utt007'\).*features must have size 5"):
        predict(src, path, {"input": "features"}, batch_size=4, num_cpus=0.5).materialize()


def test_importing_lstm_infer_does_not_import_ray():
    code = (
        "import sys, lstm_infer, lstm_infer.batch, lstm_infer.batch_arrow\n"
        "print('ray' in sys.modules)"
    )
    result = run_python(code)
    assert result.stdout.strip() == "False", result.stderr
