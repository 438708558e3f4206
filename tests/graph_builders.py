"""Small ONNX graphs for the graph-op tests: value infos, a checked model's bytes, and an
onnxruntime run of them (control flow and quantization tests build their graphs with these).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper


def vi(name: str, elem: int, shape: Any) -> Any:
    """A tensor value info (elem: a TensorProto code; shape: dims, names or None)."""
    return helper.make_tensor_value_info(name, elem, shape)


def model_bytes(
    nodes: list, inputs: list, outputs: list, inits: dict | None = None, opset: int = 17
) -> bytes:
    """One graph of ``nodes`` as a serialized model, checked by onnx's checker."""
    initializers = [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()]
    g = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(m)
    return m.SerializeToString()


def onnxruntime_run(data: bytes | str, feeds: dict) -> list[np.ndarray]:
    """Every output of ``data`` (bytes or a path) run by onnxruntime on the CPU."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_like_onnxruntime(data: bytes, feeds: dict, atol: float) -> dict:
    """Load ``data`` with lstm_infer and check every output against onnxruntime's: same names
    in order, shapes, dtypes, values within ``atol``. Returns lstm_infer's outputs."""
    import lstm_infer

    model = lstm_infer.load(data)
    got = model.run(feeds)
    want = onnxruntime_run(data, feeds)
    assert list(got) == [o.name for o in model.outputs]
    for (name, g), w in zip(got.items(), want):
        assert g.shape == w.shape, (name, g.shape, w.shape)
        assert g.dtype == w.dtype, (name, g.dtype, w.dtype)
        np.testing.assert_allclose(g, w, atol=atol, rtol=0, err_msg=name)
    return got


def export_scripted(module: Any, names: list[str], inputs: int, hidden: int) -> bytes:
    """A torch.jit.script'ed module exported by the legacy exporter at opset 17: ``x`` of
    (4, 2, inputs) with axes 0/1 symbolic ("time", "batch"), then one (2, hidden) state per
    further name (axis 0 "batch")."""
    import io
    import warnings

    import torch

    args = [torch.randn(4, 2, inputs)] + [torch.randn(2, hidden) for _ in names[1:]]
    axes = {n: ({0: "time", 1: "batch"} if n == "x" else {0: "batch"}) for n in names}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.jit.script(module), tuple(args), buf, input_names=names,
                          dynamic_axes=axes, opset_version=17, dynamo=False)  # fmt: skip
    return buf.getvalue()
