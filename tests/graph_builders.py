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
