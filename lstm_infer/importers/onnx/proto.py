"""ONNX protos: loading a model, reading its external data safely, decoding its tensors.

Every ONNX path of lstm_infer starts here. :func:`load_onnx_proto` turns a path, bytes or
``ModelProto`` into a ``ModelProto`` whose initializers hold their data: side files are read
from the model's folder only, each range and size checked before a byte is read, and the
recurrent nodes' sizes are checked (:func:`check_recurrent_attributes`) before any weight is
read or allocated. :func:`tensor_to_numpy` decodes a ``TensorProto``; :func:`used_tensor_names`
says which tensors some node, output or input refers to (the others are never read).

``onnx`` itself is imported only where it is needed, so that importing this module (and
lstm_infer) works without it; :func:`_require_onnx` reports it missing.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lstm_infer._onnx_weights import RECURRENT_OPS
from lstm_infer.errors import MissingDependencyError, ModelFormatError

__all__ = [
    "GATE_COUNT",
    "MAX_EXTERNAL_TENSOR_BYTES",
    "MAX_HIDDEN_SIZE",
    "MAX_INPUT_SIZE",
    "check_recurrent_attributes",
    "load_onnx_proto",
    "tensor_to_numpy",
    "used_tensor_names",
]

# The largest hidden size a layer may have (RecurrentLayer.validate's bound), checked on the
# node attributes before any weight is read or allocated.
MAX_HIDDEN_SIZE = 1 << 20
MAX_INPUT_SIZE = 1 << 20
# No tensor of a recurrent model comes near this; a larger external one is not read.
MAX_EXTERNAL_TENSOR_BYTES = 1 << 32
GATE_COUNT = {"rnn": 1, "lstm": 4, "gru": 3}


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - exercised only without onnx installed
        raise MissingDependencyError(
            "loading ONNX files needs the 'onnx' package: pip install 'lstm_infer[onnx]'"
        ) from exc
    return onnx


def load_onnx_proto(source: Any, base_dir: str | None = None) -> Any:
    """A ModelProto from a path, bytes or ModelProto; external data resolved safely.

    Parameters
    ----------
    source : str, os.PathLike, bytes or onnx.ModelProto
        The model. Side files of a path are read from the model's folder only; a
        ModelProto that still references external data is refused (it has no folder).
    base_dir : str, optional
        The folder the side files of bytes are read from (without it, refused); a path
        uses its own folder.

    Returns
    -------
    onnx.ModelProto
        The model, its external initializers (those some node reads) read into it.

    Raises
    ------
    ModelFormatError
        Not a valid ONNX model; external data outside the folder, missing, out of range or
        of the wrong size; a recurrent node of impossible sizes.
    MissingDependencyError
        When the ``onnx`` package is not installed.
    """
    onnx = _require_onnx()
    if isinstance(source, onnx.ModelProto):
        check_recurrent_attributes(source)
        # No folder to resolve side files against: refused if the proto still references
        # external data (rather than read relative to the working directory).
        _load_external_data(source, None)
        return source
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            model = onnx.load_model_from_string(bytes(source))
        else:
            path = os.fspath(source)
            model = onnx.load(path, load_external_data=False)
            base_dir = os.path.dirname(os.path.abspath(path))
    except (OSError, ValueError):
        raise
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelFormatError(f"not a valid ONNX model: {exc}") from exc
    check_recurrent_attributes(model)
    _load_external_data(model, base_dir)
    return model


def check_recurrent_attributes(model: Any) -> None:
    """Refuse absurd sizes on the recurrent nodes before any weight is read or allocated.

    Checks ``hidden_size`` and the declared dims of the W/R/B/P initializers kept in side
    files (the engine's bounds: hidden and input sizes up to 2**20), so that a side file of
    matching length is never read for an impossible layer. Initializers held in the model
    itself are checked, with the same rules, when the layer is built.

    Parameters
    ----------
    model : onnx.ModelProto
        The model, its external data not read yet.

    Raises
    ------
    ModelFormatError
        Naming the node, for a size out of bounds or a weight shape that contradicts it.
    """
    from onnx import helper
    from onnx.external_data_helper import uses_external_data

    inits = {t.name: t for t in model.graph.initializer if uses_external_data(t)}
    for node in model.graph.node:
        if node.op_type not in RECURRENT_OPS:
            continue
        label = f"node {node.name!r} ({node.op_type})"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        hidden = attrs.get("hidden_size")
        if hidden is not None and (
            not isinstance(hidden, int) or not 0 < hidden <= MAX_HIDDEN_SIZE
        ):
            raise ModelFormatError(
                f"{label}: hidden_size must be an int in [1, {MAX_HIDDEN_SIZE}], got {hidden!r}"
            )
        weights = {
            role: inits.get(node.input[pos]) if len(node.input) > pos else None
            for role, pos in (("W", 1), ("R", 2), ("B", 3), ("P", 7))
        }
        w = weights["W"]
        if w is not None and len(w.dims) == 3 and not 0 < w.dims[2] <= MAX_INPUT_SIZE:
            raise ModelFormatError(
                f"{label}: W has shape {list(w.dims)}; input_size must be in [1, {MAX_INPUT_SIZE}]"
            )
        if hidden is None:
            r = weights["R"]
            hidden = int(r.dims[-1]) if r is not None and len(r.dims) == 3 else None
            if hidden is not None and not 0 < hidden <= MAX_HIDDEN_SIZE:
                raise ModelFormatError(f"{label}: R has shape {list(r.dims)}")
        if hidden is None:
            continue
        direction = attrs.get("direction", b"forward")
        D = 2 if direction in (b"bidirectional", "bidirectional") else 1
        G = GATE_COUNT[RECURRENT_OPS[node.op_type]]
        expected = {
            "W": (D, G * hidden, w.dims[2] if w is not None and len(w.dims) == 3 else None),
            "R": (D, G * hidden, hidden),
            "B": (D, 2 * G * hidden),
            "P": (D, 3 * hidden),
        }
        for role, tensor in weights.items():
            if tensor is None:
                continue
            want = expected[role]
            if tuple(tensor.dims) != tuple(want):
                raise ModelFormatError(
                    f"{label}: {role} initializer {tensor.name!r} has shape "
                    f"{list(tensor.dims)}; hidden_size={hidden} needs {list(want)}"
                )


def _load_external_data(model: Any, base_dir: str | None) -> None:
    """Read initializers stored in side files, refusing locations outside base_dir."""
    onnx = _require_onnx()
    from onnx.external_data_helper import uses_external_data

    # Initializers no node reads are never read (nor decoded later).
    used = used_tensor_names(model.graph)
    tensors = [
        t
        for t in _all_initializers(model.graph)
        if uses_external_data(t) and (t.name in used or not t.name)
    ]
    if not tensors:
        return
    if base_dir is None:
        raise ModelFormatError(
            "this model keeps weights in external data files; load it from its path so the "
            "files can be found"
        )
    root = os.path.realpath(base_dir)
    for t in tensors:
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        full = os.path.realpath(os.path.join(root, location))
        if os.path.isabs(location) or os.path.commonpath([root, full]) != root:
            raise ModelFormatError(
                f"initializer {t.name!r}: external data location {location!r} points outside "
                "the model's folder; refused"
            )
        if not os.path.isfile(full):
            raise ModelFormatError(
                f"initializer {t.name!r}: external data file {location!r} is missing"
            )
        offset = int(info.get("offset", 0) or 0)
        length = info.get("length")
        size = os.path.getsize(full)
        n = size - offset if length is None else int(length)
        if offset < 0 or n < 0 or offset + n > size:
            raise ModelFormatError(
                f"initializer {t.name!r}: external data range [{offset}, {offset + n}) exceeds "
                f"the {size}-byte file {location!r}"
            )
        if n > MAX_EXTERNAL_TENSOR_BYTES:
            raise ModelFormatError(
                f"initializer {t.name!r}: {n} bytes of external data; tensors over "
                f"{MAX_EXTERNAL_TENSOR_BYTES} bytes are refused"
            )
        expected = _tensor_bytes(t)
        if expected is not None and n != expected:
            raise ModelFormatError(
                f"initializer {t.name!r}: external data holds {n} bytes; its shape "
                f"{list(t.dims)} needs {expected}"
            )
        with open(full, "rb") as fh:
            fh.seek(offset)
            t.raw_data = fh.read(n)
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def _tensor_bytes(tensor: Any) -> int | None:
    """Bytes a tensor's dims and type need, or None for types without a fixed size."""
    from onnx import helper

    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # noqa: BLE001 - string, 4-bit and unknown types: not checked
        return None
    count = 1
    for d in tensor.dims:
        count *= int(d)
    return count * itemsize


def used_tensor_names(graph: Any, depth: int = 0) -> set[str]:
    """Names some node reads (in subgraphs too: a branch may read the outer initializers),
    or the graph outputs or declares as an input.

    Parameters
    ----------
    graph : onnx.GraphProto
        The graph (or a subgraph).
    depth : int
        How deep ``graph`` is nested; subgraphs below 16 levels are not searched.

    Returns
    -------
    set of str
        The tensor names.
    """
    names = {i for node in graph.node for i in node.input if i}
    names |= {o.name for o in graph.output} | {i.name for i in graph.input}
    if depth < 16:
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    names |= used_tensor_names(attr.g, depth + 1)
    return names


def _all_initializers(graph: Any) -> list[Any]:
    out = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                out.append(attr.t)
    return out


def tensor_to_numpy(tensor: Any, keep_float_types: bool = False) -> np.ndarray:
    """An ONNX TensorProto as a numpy array.

    Parameters
    ----------
    tensor : onnx.TensorProto
        The tensor, its data held in the proto (external data already read).
    keep_float_types : bool
        False: floating types become float32 (the recurrent stack's weights). True: only
        bfloat16 does (a graph computes in its tensors' own float16/float64).

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    ModelFormatError
        When ``tensor`` is not a TensorProto or its data cannot be decoded.
    """
    from onnx import TensorProto, numpy_helper

    if not isinstance(tensor, TensorProto):
        raise ModelFormatError(f"expected a tensor, got {type(tensor).__name__}")
    try:
        arr = numpy_helper.to_array(tensor)
    except Exception as exc:
        raise ModelFormatError(f"tensor {tensor.name!r} cannot be decoded: {exc}") from exc
    if arr.dtype.name == "bfloat16" or (arr.dtype.kind == "f" and not keep_float_types):
        arr = arr.astype(np.float32)
    return arr


def listed_constant(attrs: dict[str, Any]) -> np.ndarray | None:
    """A Constant node's value given by a ``value_float(s)`` / ``value_int(s)`` attribute
    (float32 / int64), or None when it has none of them."""
    for key, dtype in (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    return None
