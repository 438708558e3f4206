"""One-node ONNX models for the graph-op tests, and the comparison against onnxruntime.

``one_node`` builds a model of one node at a given opset with onnx.helper (output types from
onnx's own shape inference, which onnxruntime needs declared); ``compare`` loads it with
``lstm_infer.load`` (a GraphModel) and checks every output against onnxruntime's on the same
feeds, dtype and shape included.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from conftest import require

onnx = require("onnx")
ort = require("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lstm_infer  # noqa: E402

NP_TO_ONNX = {
    np.dtype("float32"): TensorProto.FLOAT,
    np.dtype("float64"): TensorProto.DOUBLE,
    np.dtype("float16"): TensorProto.FLOAT16,
    np.dtype("int64"): TensorProto.INT64,
    np.dtype("int32"): TensorProto.INT32,
    np.dtype("bool"): TensorProto.BOOL,
}


def one_node(
    op: str,
    feeds: dict[str, np.ndarray],
    consts: dict[str, np.ndarray] | None = None,
    n_out: int = 1,
    opset: int = 21,
    inputs: list[str] | None = None,
    **attrs: Any,
) -> bytes:
    consts = consts or {}
    names = inputs if inputs is not None else [*feeds, *consts]
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, name="n", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(k, NP_TO_ONNX[v.dtype], v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    # Output types from onnx's own shape inference (onnxruntime needs them declared).
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    inferred.update({v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.output})
    for out in model.graph.output:
        if out.name in inferred and inferred[out.name].type.tensor_type.elem_type:
            out.CopyFrom(inferred[out.name])
    return model.SerializeToString()


def compare(model: bytes, feeds: dict[str, np.ndarray], tol: float = 1e-5) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    want = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, feeds)
    ours = lstm_infer.load(model)
    assert isinstance(ours, lstm_infer.GraphModel)
    got = ours.run(feeds)
    got_list = [got[o.name] for o in ours.outputs]
    for g, w in zip(got_list, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol)
        else:
            np.testing.assert_array_equal(g, w)
    return got_list
