"""lstm_infer: fast CPU inference for trained RNN, LSTM and GRU models.

import lstm_infer
model = lstm_infer.load("model.onnx")          # or a native .safetensors file
outs = model.run({"X": x})                     # dict keyed by the model's output names
stream = model.stream(batch_size=1)            # stateful, one timestep per call
y_t = stream.step(x_t)
"""

from __future__ import annotations

import os
from typing import Any

from lstm_infer import errors
from lstm_infer._engine import available_isas, isa, set_isa
from lstm_infer._spec import TensorInfo
from lstm_infer.model import Model, Stream

__version__ = "0.1.0"
__all__ = [
    "Model",
    "Stream",
    "TensorInfo",
    "available_isas",
    "errors",
    "isa",
    "load",
    "set_isa",
]


def load(source: Any, **options: Any) -> Model:
    """Load a model.

    Parameters
    ----------
    source : path, bytes or onnx.ModelProto
        An ONNX model (``.onnx`` path, its bytes, or a ``ModelProto``) or a native
        lstm_infer file written by :meth:`Model.save`.

    Returns
    -------
    Model
    """
    from lstm_infer.errors import ModelFormatError
    from lstm_infer.native_format import load_native
    from lstm_infer.safetensors_io import is_safetensors

    if isinstance(source, Model):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        head = bytes(source[:16])
        if is_safetensors(head):
            return Model(load_native(bytes(source)))
        from lstm_infer.onnx_import import import_onnx

        return Model(import_onnx(bytes(source)))
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such model file: {path!r}")
        with open(path, "rb") as fh:
            head = fh.read(16)
        if is_safetensors(head):
            return Model(load_native(path))
        from lstm_infer.onnx_import import import_onnx

        return Model(import_onnx(path))
    if type(source).__name__ == "ModelProto":
        from lstm_infer.onnx_import import import_onnx

        return Model(import_onnx(source))
    raise ModelFormatError(
        f"cannot load a model from {type(source).__name__}; pass a path, bytes or an "
        "onnx.ModelProto"
    )
