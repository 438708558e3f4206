"""lstm_infer.validate: random inputs through onnxruntime and lstm_infer, errors per output."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import require

onnx = require("onnx")
require("onnxruntime")

import onnx_builders  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lstm_infer  # noqa: E402
from lstm_infer.errors import UnsupportedModelError  # noqa: E402
from lstm_infer.validate import ValidationReport, main_validate  # noqa: E402


def _embedding_lstm_graph(vocab: int = 7, static: bool = False) -> Any:
    """tokens (batch, seq) -> Gather -> Transpose -> LSTM -> Squeeze -> Transpose -> y."""
    rng = np.random.default_rng(0)
    E, H = 3, 4
    inits = [
        numpy_helper.from_array(rng.standard_normal((vocab, E)).astype(np.float32), "table"),
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, (1, 4 * H, E)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, (1, 4 * H, H)).astype(np.float32), "R"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "tokens"], ["emb"], name="embedding"),
        helper.make_node("Transpose", ["emb"], ["x"], perm=[1, 0, 2], name="time_major"),
        helper.make_node("LSTM", ["x", "W", "R"], ["y4", "hn"], hidden_size=H, name="lstm"),
        helper.make_node("Squeeze", ["y4", "axis1"], ["y3"], name="squeeze"),
        helper.make_node("Transpose", ["y3"], ["y"], perm=[1, 0, 2], name="batch_major"),
    ]
    batch, seq = (2, 6) if static else ("batch", "seq")
    graph = helper.make_graph(
        nodes,
        "emb_lstm",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, [batch, seq])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, H]),
            helper.make_tensor_value_info("hn", TensorProto.FLOAT, [1, batch, H]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_report_passes_and_prints_a_table(tmp_path: Any) -> None:
    path = tmp_path / "emb.onnx"
    onnx.save(_embedding_lstm_graph(), str(path))
    report = lstm_infer.validate(path, batch=3, seq_len=5, trials=2, seed=4)
    assert isinstance(report, ValidationReport) and report.passed
    assert [o.name for o in report.outputs] == ["y", "hn"]
    assert [o.shape for o in report.outputs] == [(3, 5, 4), (1, 3, 4)]
    assert all(o.max_abs <= 1e-4 and o.max_rel >= 0 for o in report.outputs)
    text = str(report)
    assert "max abs err" in text and "max rel err" in text and text.endswith("PASSED")
    assert str(path) in text and "trials=2" in text
    data = report.as_dict()
    assert data["passed"] is True and data["outputs"][0]["name"] == "y"


def test_token_ids_stay_inside_the_embedding() -> None:
    # onnxruntime rejects out-of-range Gather indices, so passing shows the draws fit.
    report = lstm_infer.validate(_embedding_lstm_graph(vocab=2), seq_len=40, trials=3)
    assert report.passed, str(report)


def test_static_dims_keep_the_graphs_sizes() -> None:
    report = lstm_infer.validate(_embedding_lstm_graph(static=True), batch=5, seq_len=9)
    assert report.passed and report.outputs[0].shape == (2, 6, 4)


def test_single_node_model_with_sequence_lens_and_state_inputs() -> None:
    case = onnx_builders.RecurrentCase(
        "GRU",
        4,
        3,
        2,
        5,
        direction="bidirectional",
        initial_state="input",
        lengths=(4, 2, 1),
        linear_before_reset=1,
        symbolic_dims=True,
    )
    report = lstm_infer.validate(case.build().model.SerializeToString(), batch=3, seq_len=6)
    assert report.passed, str(report)
    assert [o.name for o in report.outputs] == ["Y", "Y_h"]


def test_failures_are_reported(monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Any) -> None:
    original = lstm_infer.Model.run

    def off_by_a_bit(self: Any, feeds: Any, output_names: Any = None) -> Any:
        return {k: v + np.float32(1e-3) for k, v in original(self, feeds, output_names).items()}

    path = tmp_path / "emb.onnx"
    onnx.save(_embedding_lstm_graph(), str(path))
    monkeypatch.setattr(lstm_infer.Model, "run", off_by_a_bit)
    report = lstm_infer.validate(path, trials=1)
    assert not report.passed
    assert all(abs(o.max_abs - 1e-3) < 1e-5 and not o.passed for o in report.outputs)
    assert "FAIL" in str(report) and str(report).splitlines()[-1].startswith("FAILED")
    assert main_validate([str(path), "--trials", "1"]) == 1
    assert "FAILED" in capsys.readouterr().out
    monkeypatch.undo()
    assert main_validate([str(path), "--seq-len", "3", "--batch", "1"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("PASSED")


def test_onnxruntime_errors_are_reported_not_raised() -> None:
    # onnxruntime rejects layout=1 on the recurrent operators; lstm_infer runs it.
    case = onnx_builders.RecurrentCase("LSTM", 3, 2, 2, 3, layout=1)
    report = lstm_infer.validate(case.build().model)
    assert not report.passed and "onnxruntime" in (report.error or "")
    assert "error:" in str(report)


def test_unloadable_models_raise_and_the_command_says_why(tmp_path: Any, capsys: Any) -> None:
    model = _embedding_lstm_graph()
    # Acosh: an ONNX operator neither the stack nor the graph path runs
    cos = helper.make_node("Acosh", ["y3"], ["y3c"], name="the_cos")
    model.graph.node.insert(4, cos)
    model.graph.node[5].input[0] = "y3c"
    path = tmp_path / "cos.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UnsupportedModelError, match=r"node 'the_cos' \(Acosh\)"):
        lstm_infer.validate(path)
    assert main_validate([str(path)]) == 2
    assert "node 'the_cos' (Acosh)" in capsys.readouterr().err
    assert main_validate([str(tmp_path / "missing.onnx")]) == 2


def test_graph_models_validate_with_user_chosen_feeds(tmp_path: Any) -> None:
    """A graph beyond the stack (Cos after the LSTM, an int64 input only the user can
    choose) is validated node for node against onnxruntime."""
    model = _embedding_lstm_graph()
    cos = helper.make_node("Cos", ["y3"], ["y3c"], name="the_cos")
    model.graph.node.insert(4, cos)
    model.graph.node[5].input[0] = "y3c"
    assert isinstance(lstm_infer.load(model), lstm_infer.GraphModel)
    report = lstm_infer.validate(model, trials=2)
    assert report.passed, str(report)
    first = model.graph.input[0]
    fixed = np.zeros([d.dim_value or 3 for d in first.type.tensor_type.shape.dim], np.int64)
    assert lstm_infer.validate(model, feeds={first.name: fixed}).passed
    with pytest.raises(ValueError, match="unknown input"):
        lstm_infer.validate(model, feeds={"nope": fixed})


def test_argument_errors() -> None:
    model = _embedding_lstm_graph()
    with pytest.raises(TypeError, match="ONNX model itself"):
        lstm_infer.validate(lstm_infer.load(model))
    with pytest.raises(ValueError, match="trials must be a positive int"):
        lstm_infer.validate(model, trials=0)
