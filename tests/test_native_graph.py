"""Native format version 2: graph models round-trip exactly; hostile files fail cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import require

onnx = require("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lstm_infer  # noqa: E402
from lstm_infer.errors import LstmInferError, ModelFormatError  # noqa: E402
from lstm_infer.safetensors_io import read_safetensors, write_safetensors  # noqa: E402


def graph_model(rng: np.random.Generator) -> bytes:
    """LSTM -> last timestep -> Gemm -> Cos, with an int64 and a bool constant and a tensor
    attribute (ConstantOfShape's value): every kind of thing the file must carry."""
    T, B, I, H = 5, 2, 3, 4
    inits = [
        numpy_helper.from_array(rng.standard_normal((1, 4 * H, I)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((1, 4 * H, H)).astype(np.float32), "R"),
        numpy_helper.from_array(rng.standard_normal((H, 3)).astype(np.float32), "D"),
        numpy_helper.from_array(np.array(-1, np.int64), "last"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([True, False, True]), "mask"),
    ]
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=H, name="lstm"),
        helper.make_node("Squeeze", ["y", "axis1"], ["ys"], name="sq"),
        helper.make_node("Gather", ["ys", "last"], ["yl"], axis=0, name="pick"),
        helper.make_node("Gemm", ["yl", "D"], ["z"], name="dense"),
        helper.make_node("Cos", ["z"], ["zc"], name="cos"),
        helper.make_node("Shape", ["zc"], ["zs"], name="shape"),
        helper.make_node(
            "ConstantOfShape",
            ["zs"],
            ["half"],
            name="fill",
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5]),
        ),  # fmt: skip
        helper.make_node("Where", ["mask", "zc", "half"], ["out"], name="where"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", B, I])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [B, 3])],
        inits,
    )
    del T
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]).SerializeToString()


def test_graph_models_round_trip_exactly(tmp_path: Path, rng) -> None:
    model = lstm_infer.load(graph_model(rng))
    assert isinstance(model, lstm_infer.GraphModel)
    path = tmp_path / "graph.safetensors"
    model.save(path)
    again = lstm_infer.load(path)
    assert isinstance(again, lstm_infer.GraphModel)
    assert again.inputs == model.inputs and again.outputs == model.outputs
    assert [n.op for n in again.graph.nodes] == [n.op for n in model.graph.nodes]
    for T in (1, 5, 9):
        x = rng.standard_normal((T, 2, 3)).astype(np.float32)
        a, b = model.run({"x": x})["out"], again.run({"x": x})["out"]
        assert np.array_equal(a, b)  # the same constants, the same kernels: bit for bit
    again.save(tmp_path / "twice.safetensors")
    assert (tmp_path / "twice.safetensors").read_bytes() == path.read_bytes()


def _tamper(tmp_path: Path, rng, change) -> Path:
    path = tmp_path / "g.safetensors"
    lstm_infer.load(graph_model(rng)).save(path)
    tensors, metadata = read_safetensors(path)
    meta = json.loads(metadata["lstm_infer"])
    change(meta, tensors)
    bad = tmp_path / "bad.safetensors"
    write_safetensors(bad, tensors, {"lstm_infer": json.dumps(meta)})
    return bad


def _set(path: list, value):  # noqa: ANN001, ANN202
    def change(meta: dict, tensors: dict) -> None:
        target = meta
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


HOSTILE = {
    "unknown-op": _set(["nodes", 0, "op"], "Bogus"),
    "op-not-a-string": _set(["nodes", 0, "op"], 7),
    "inputs-not-strings": _set(["nodes", 1, "inputs"], [1, 2]),
    "undefined-input": _set(["nodes", 1, "inputs"], ["nowhere", "axis1"]),
    "cycle": _set(["nodes", 0, "inputs"], ["x", "W_missing", "R"]),
    "missing-constant": lambda meta, tensors: tensors.pop(next(iter(meta["constants"]))),
    "attr-missing-tensor": _set(["nodes", 6, "attrs", "value"], {"tensor": "attr.99"}),
    "attr-bad-type": _set(["nodes", 0, "attrs", "hidden_size"], {"x": 1}),
    "bad-dtype": _set(["inputs", 0, 1], "complex128"),
    "bad-dim": _set(["inputs", 0, 2], [-5, 2, 3]),
    "nodes-not-a-list": _set(["nodes"], {"a": 1}),
    "too-many-nodes": _set(["nodes"], [{"op": "Relu"}] * 100_001),
    "version-3": _set(["version"], 3),
    "hidden-size-absurd": _set(["nodes", 0, "attrs", "hidden_size"], 1 << 40),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_native_graph_files_fail_cleanly(tmp_path: Path, rng, case: str) -> None:
    bad = _tamper(tmp_path, rng, HOSTILE[case])
    with pytest.raises(LstmInferError):
        lstm_infer.load(bad)


def test_version_1_files_still_load(tmp_path: Path, rng) -> None:
    w = rng.standard_normal((1, 8, 3)).astype(np.float32)
    r = rng.standard_normal((1, 8, 2)).astype(np.float32)
    model = lstm_infer.Model.from_onnx_weights("gru", w[:, :6], r[:, :6, :2])
    path = tmp_path / "v1.safetensors"
    model.save(path)
    again = lstm_infer.load(path)
    assert isinstance(again, lstm_infer.Model)
    x = rng.standard_normal((4, 1, 3)).astype(np.float32)
    assert np.array_equal(model.run({"X": x})["Y"], again.run({"X": x})["Y"])
    with pytest.raises(ModelFormatError):
        _ = lstm_infer.load(_tamper(tmp_path, rng, _set(["kind"], "stack")))
