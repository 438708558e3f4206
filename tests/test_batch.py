"""Ragged batches: ``Model.run(lengths=)`` and :mod:`lstm_infer.batch`.

The reference for every row is ``model.run`` on that row alone (a batch of one, no padding),
so padding, the per-row lengths and the trimming are what is tested. The engine itself is
checked against the float64 reference elsewhere (test_engine_vs_reference.py); one test here
checks a padded row against it too.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import import_without, require
from reference import lstm_ref

import lstm_infer
from lstm_infer.batch import BatchRowError, BatchRunner, run_batch
from lstm_infer.errors import InputError

I, H, F, VOCAB = 5, 8, 3, 11
LENGTHS = [3, 9, 1, 6, 9, 2]


def _recurrent(sd: dict, name: str, cell: str, I: int, rng, reverse: bool) -> None:
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    for sfx in ["", "_reverse"] if reverse else [""]:
        sd[f"{name}.weight_ih_l0{sfx}"] = rng.uniform(-0.5, 0.5, (G * H, I)).astype(np.float32)
        sd[f"{name}.weight_hh_l0{sfx}"] = rng.uniform(-0.5, 0.5, (G * H, H)).astype(np.float32)
        sd[f"{name}.bias_ih_l0{sfx}"] = rng.uniform(-0.3, 0.3, G * H).astype(np.float32)
        sd[f"{name}.bias_hh_l0{sfx}"] = rng.uniform(-0.3, 0.3, G * H).astype(np.float32)


def torch_style_model(
    cell: str = "lstm",
    *,
    bidirectional: bool = False,
    batch_first: bool = False,
    tokens: bool = False,
    seed: int = 0,
) -> lstm_infer.Model:
    """A PyTorch-style state_dict (embedding?) -> recurrent -> Linear, loaded from numpy."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}
    if tokens:
        sd["emb.weight"] = rng.standard_normal((VOCAB, I)).astype(np.float32)
    _recurrent(sd, "rnn", cell, I, rng, bidirectional)
    D = 2 if bidirectional else 1
    sd["fc.weight"] = rng.uniform(-0.5, 0.5, (F, D * H)).astype(np.float32)
    sd["fc.bias"] = rng.uniform(-0.5, 0.5, F).astype(np.float32)
    return lstm_infer.load(sd, batch_first=batch_first)


def onnx_node_model(layout: int, seed: int = 0) -> lstm_infer.Model:
    """A bidirectional ONNX LSTM operator (Y is (T, D, B, H) or (B, T, D, H))."""
    rng = np.random.default_rng(seed)
    W = rng.uniform(-0.5, 0.5, (2, 4 * H, I)).astype(np.float32)
    R = rng.uniform(-0.5, 0.5, (2, 4 * H, H)).astype(np.float32)
    B = rng.uniform(-0.3, 0.3, (2, 8 * H)).astype(np.float32)
    return lstm_infer.Model.from_onnx_weights(
        "lstm", W, R, B, direction="bidirectional", layout=layout
    )


def _rows(model: lstm_infer.Model, rng, lengths=LENGTHS) -> list[np.ndarray]:
    if model.spec.embedding is not None:
        return [rng.integers(0, VOCAB, n) for n in lengths]
    return [rng.standard_normal((n, I)).astype(np.float32) for n in lengths]


def _alone(model: lstm_infer.Model, row: np.ndarray) -> dict[str, np.ndarray]:
    """``model.run`` on one row (batch of one), the batch axis removed."""
    batch_first = model.spec.signature.layout == 1
    x = row[None] if batch_first else row[:, None]
    outs = model.run({model.spec.signature.inputs["x"]: x})
    onnx = model.spec.signature.style == "onnx_node"
    squeezed = {}
    for name, y in outs.items():
        if name == model.spec.signature.outputs["y"]:
            axis = (0 if batch_first else 2) if onnx else (0 if batch_first else 1)
        else:
            axis = 0 if onnx and batch_first else 1
        squeezed[name] = np.take(y, 0, axis=axis)
    return squeezed


def _pad(model: lstm_infer.Model, rows: list[np.ndarray]) -> np.ndarray:
    T = max(len(r) for r in rows)
    padded = np.zeros((T, len(rows), *rows[0].shape[1:]), rows[0].dtype)
    for b, r in enumerate(rows):
        padded[: len(r), b] = r
    return np.swapaxes(padded, 0, 1) if model.spec.signature.layout == 1 else padded


# ---- Model.run(lengths=) -------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_run_lengths_rows_equal_rows_alone(cell, bidirectional, rng):
    model = torch_style_model(cell, bidirectional=bidirectional)
    rows = _rows(model, rng)
    outs = model.run({"input": _pad(model, rows)}, lengths=LENGTHS)
    for b, row in enumerate(rows):
        alone = _alone(model, row)
        n = len(row)
        np.testing.assert_allclose(outs["output"][:n, b], alone["output"], atol=1e-5)
        assert not outs["output"][n:, b].any()  # padding stays zero after the head
        for name in model.output_names[1:]:
            np.testing.assert_allclose(outs[name][:, b], alone[name], atol=1e-5)


def test_run_lengths_matches_float64_reference(rng):
    """A padded row against the ONNX equations in float64 on the unpadded row."""
    model = onnx_node_model(0)
    rng2 = np.random.default_rng(0)  # the weights onnx_node_model drew
    W = rng2.uniform(-0.5, 0.5, (2, 4 * H, I))
    R = rng2.uniform(-0.5, 0.5, (2, 4 * H, H))
    B = rng2.uniform(-0.3, 0.3, (2, 8 * H))
    rows = _rows(model, rng)
    outs = model.run({"X": _pad(model, rows)}, lengths=LENGTHS)
    for b, row in enumerate(rows):
        Y, Y_h, Y_c = lstm_ref(row[:, None].astype(np.float64), W, R, B, direction="bidirectional")
        np.testing.assert_allclose(outs["Y"][: len(row), :, b], Y[:, :, 0], atol=1e-5)
        np.testing.assert_allclose(outs["Y_h"][:, b], Y_h[:, 0], atol=1e-5)
        np.testing.assert_allclose(outs["Y_c"][:, b], Y_c[:, 0], atol=1e-5)


def test_run_lengths_errors_name_the_argument(rng):
    model = torch_style_model()
    x = np.zeros((4, 2, I), np.float32)
    with pytest.raises(InputError, match=r"'lengths' must have shape \(2,\)"):
        model.run({"input": x}, lengths=[1, 2, 3])
    with pytest.raises(InputError, match=r"'lengths'.*\[0, 4\]"):
        model.run({"input": x}, lengths=[5, 1])
    with pytest.raises(TypeError, match="'lengths' must be integer"):
        model.run({"input": x}, lengths=[1.5, 2.0])
    onnx = onnx_node_model(0)
    with pytest.raises(InputError, match="not both"):
        onnx.run({"X": x, "sequence_lens": np.array([1, 2], np.int32)}, lengths=[1, 2])
    np.testing.assert_array_equal(  # the model still runs after the errors
        model.run({"input": x}, lengths=[4, 4])["output"], model.run({"input": x})["output"]
    )


# ---- BatchRunner ---------------------------------------------------------------------------


def _check_against_alone(model, rows, out, outputs) -> None:
    for b, row in enumerate(rows):
        alone = _alone(model, row)
        for name, column in outputs.items():
            got = out[column][b]
            assert got.shape == alone[name].shape
            np.testing.assert_allclose(got, alone[name], atol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: torch_style_model(), id="time-major"),
        pytest.param(lambda: torch_style_model("gru", batch_first=True), id="batch-first"),
        pytest.param(lambda: torch_style_model(tokens=True, bidirectional=True), id="tokens"),
        pytest.param(lambda: onnx_node_model(0), id="onnx-layout0"),
        pytest.param(lambda: onnx_node_model(1), id="onnx-layout1"),
    ],
)
def test_batch_rows_equal_rows_alone(make, rng):
    model = make()
    rows = _rows(model, rng)
    x = model.spec.signature.inputs["x"]
    outputs = {name: f"out_{name}" for name in model.output_names}
    ids = [f"r{i}" for i in range(len(rows))]
    out = run_batch(model, {"seq": rows, "id": ids}, {x: "seq"}, outputs)
    _check_against_alone(model, rows, out, outputs)
    assert list(out["id"]) == ids  # other columns pass through
    assert [len(s) for s in out["seq"]] == LENGTHS


@pytest.mark.parametrize("tokens", [False, True])
def test_many_lengths_run_in_sorted_groups(tokens, rng, monkeypatch):
    """40 rows of 1-60 steps: cut into several length groups, each row still its own."""
    import lstm_infer.batch as batch

    runs = []
    model = torch_style_model("gru", tokens=tokens, batch_first=not tokens)
    real_run = model.run

    def counting_run(*args, **kwargs):
        runs.append(kwargs["lengths"])
        return real_run(*args, **kwargs)

    monkeypatch.setattr(model, "run", counting_run)
    lengths = rng.integers(1, 61, 40)
    rows = _rows(model, rng, lengths)
    out = batch.run_batch(model, {"input": rows[::-1]})
    assert len(runs) > 2 and sorted(np.concatenate(runs)) == sorted(lengths)
    monkeypatch.undo()
    _check_against_alone(model, rows[::-1], out, {n: n for n in model.output_names})


def test_batch_accepts_nested_lists_and_object_arrays(rng):
    """What pandas / Ray's numpy batches hold for list columns: object arrays of arrays."""
    model = torch_style_model()
    rows = _rows(model, rng)
    nested = [r.tolist() for r in rows]
    objects = np.empty(len(rows), object)
    objects[:] = [np.array([step for step in r], dtype=object) for r in rows]
    for column in (nested, objects):
        out = run_batch(model, {"input": column}, outputs={"output": "y"})
        _check_against_alone(model, rows, out, {"output": "y"})


def test_empty_rows_and_empty_batches(rng):
    model = torch_style_model(tokens=True)
    rows = _rows(model, rng, [0, 4, 0])
    out = run_batch(model, {"input": rows})
    _check_against_alone(model, rows, out, {n: n for n in model.output_names})
    assert out["output"][0].shape == (0, F)
    features = torch_style_model()
    for no_steps in ([], np.empty(0, object), np.zeros((0, I), np.float32)):
        out = run_batch(features, {"input": [no_steps, np.ones((2, I))]})
        assert out["output"][0].shape == (0, F)
    empty = run_batch(model, {"input": [], "id": []})
    assert len(empty["output"]) == 0 and len(empty["id"]) == 0


BAD_ROWS = [
    (np.zeros((4, I + 1), np.float32), r"features must have size 5 .*\(4, 6\)"),
    (np.zeros((4, 2, I), np.float32), r"rank 2"),
    (np.zeros(3, np.float32), r"rank 2"),
    (np.full((2, I), "x"), r"must be numeric"),
    (None, r"missing \(null"),
    ([[0.0] * I, [0.0] * (I - 1)], r"different shapes|inhomogeneous"),
]


@pytest.mark.parametrize("bad,match", BAD_ROWS)
def test_bad_row_is_reported_by_its_id(bad, match, rng):
    model = torch_style_model()
    rows: list = _rows(model, rng)
    rows[3] = bad
    ids = np.array([100 + i for i in range(len(rows))])
    runner = BatchRunner(model)
    with pytest.raises(BatchRowError, match=r"row 3 \(id=103\).*" + match) as info:
        runner({"input": rows, "id": ids})
    assert info.value.row == 3 and info.value.row_id == 103


def test_token_ids_outside_the_vocabulary(rng):
    model = torch_style_model(tokens=True)
    rows = _rows(model, rng)
    rows[1] = np.array([1, VOCAB, 2])
    rows[4] = np.array([0.5, 1.0])
    runner = BatchRunner(model, id_column="key", on_error="skip")
    keys = [f"k{i}" for i in range(len(rows))]
    out = runner({"input": rows, "key": keys})
    assert "row 1 (key='k1')" in out["error"][1] and "[0, 11)" in out["error"][1]
    assert "must be integers" in out["error"][4]
    with pytest.raises(BatchRowError, match=r"row 1 \(key='k1'\).*token ids must be in \[0, 11\)"):
        BatchRunner(model, id_column="key")({"input": rows, "key": keys})


def test_skip_keeps_the_good_rows(rng):
    model = torch_style_model(bidirectional=True)
    rows: list = _rows(model, rng)
    good = list(rows)
    rows[0] = np.zeros((2, 7), np.float32)
    rows[5] = "not a sequence"
    out = BatchRunner(model, on_error="skip", error_column="why")({"input": rows})
    assert out["output"][0] is None and out["output"][5] is None
    assert "row 0 " in out["why"][0] and "row 5 " in out["why"][5]
    assert [e is None for e in out["why"]] == [False, True, True, True, True, False]
    kept = [1, 2, 3, 4]
    _check_against_alone(
        model, [good[i] for i in kept], {"output": out["output"][kept]}, {"output": "output"}
    )


def test_runner_argument_errors(tmp_path):
    model = torch_style_model()
    with pytest.raises(ValueError, match="on_error"):
        BatchRunner(model, on_error="ignore")
    with pytest.raises(ValueError, match="sequence input 'input'"):
        BatchRunner(model, {"h0": "h"})
    with pytest.raises(ValueError, match="unknown output"):
        BatchRunner(model, outputs={"nope": "x"})
    with pytest.raises(ValueError, match="threads"):
        BatchRunner(model, threads=0)
    runner = BatchRunner(model)
    with pytest.raises(InputError, match="no column 'input'"):
        runner({"features": [np.zeros((2, I))]})
    with pytest.raises(InputError, match="has 1 rows"):
        runner({"input": [np.zeros((2, I)), np.zeros((2, I))], "id": [1]})
    path = tmp_path / "m.safetensors"
    model.save(path)
    x = np.ones((3, I), np.float32)
    from_path = BatchRunner(path)({"input": [x]})
    np.testing.assert_allclose(from_path["output"][0], _alone(model, x)["output"], atol=1e-6)


# ---- arrow tables and parquet (pyarrow, no ray) --------------------------------------------


def test_arrow_table_rows_equal_rows_alone_and_bad_rows_are_named(rng):
    pa = require("pyarrow")
    from lstm_infer.batch_arrow import column_rows, run_table

    model = onnx_node_model(1)
    rows = _rows(model, rng)
    values = [r.tolist() for r in rows]
    values[2] = None  # a null row
    values[4] = [[0.0] * I, [0.0] * (I + 1)]  # steps of different sizes
    values[5] = [[0.0] * (I + 2)] * 3  # the wrong feature size
    table = pa.table(
        {"key": [f"k{i}" for i in range(len(rows))], "x": pa.array(values, pa.large_list(
            pa.list_(pa.float64())))}
    )  # fmt: skip
    runner = BatchRunner(model, {"X": "x"}, {"Y": "y", "Y_h": "h"}, on_error="skip",
                         id_column="key")  # fmt: skip
    out = run_table(runner, table)
    assert out.column_names == ["key", "x", "y", "h", "error"]
    errors = out.column("error").to_pylist()
    assert "row 2 (key='k2')" in errors[2] and "null" in errors[2]
    assert "different shapes" in errors[4] and "size 5" in errors[5]
    for name, column in (("Y", "y"), ("Y_h", "h")):
        got = column_rows(out.column(column))
        for i in (0, 1, 3):
            np.testing.assert_allclose(got[i], _alone(model, rows[i])[name], atol=1e-5)
        assert got[2] is None and got[4] is None and got[5] is None
    strings = pa.table({"x": ["abc", "def"]})
    with pytest.raises(BatchRowError, match=r"row 0 .*must be numeric"):
        run_table(BatchRunner(model, {"X": "x"}), strings)


def test_parquet_in_process_with_the_counter_progress(rng, tmp_path, monkeypatch, capsys):
    pa = require("pyarrow")
    pq = require("pyarrow.parquet")
    from lstm_infer.batch_arrow import column_rows, run_parquet

    model = torch_style_model(tokens=True)
    rows = _rows(model, rng)
    pq.write_table(pa.table({"id": np.arange(6), "input": [r.tolist() for r in rows]}),
                   tmp_path / "in.parquet")  # fmt: skip
    monkeypatch.setitem(sys.modules, "tqdm", None)  # no tqdm: the stderr counter
    n = run_parquet(BatchRunner(model), tmp_path / "in.parquet", tmp_path / "out.parquet",
                    batch_size=4)  # fmt: skip
    assert n == 6 and "6/6 rows" in capsys.readouterr().err
    got = column_rows(pq.read_table(tmp_path / "out.parquet").column("output"))
    for row, y in zip(rows, got):
        np.testing.assert_allclose(y, _alone(model, row)["output"], atol=1e-5)
    pq.write_table(pa.table({"id": pa.array([], pa.int64())}), tmp_path / "empty.parquet")
    with pytest.raises(InputError, match="no column 'input'"):
        run_parquet(BatchRunner(model), tmp_path / "empty.parquet", tmp_path / "o.parquet")
    with pytest.raises(FileNotFoundError):
        run_parquet(BatchRunner(model), tmp_path / "missing.parquet", tmp_path / "o.parquet")


def test_lstm_infer_ray_without_ray_names_the_extra():
    result = import_without("ray", "lstm_infer.ray")
    assert "MissingDependencyError" in result.stdout and "lstm_infer[ray]" in result.stdout, (
        result.stdout + result.stderr
    )
