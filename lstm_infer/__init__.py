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

import numpy as np

from lstm_infer import errors
from lstm_infer._engine import available_isas, isa, set_isa
from lstm_infer._spec import TensorInfo
from lstm_infer.graph_model import GraphModel
from lstm_infer.model import Model
from lstm_infer.pool import StreamPool
from lstm_infer.stream import Stream
from lstm_infer.validate import validate

__version__ = "0.1.0"
__all__ = [
    "GraphModel",
    "Model",
    "Stream",
    "StreamPool",
    "TensorInfo",
    "available_isas",
    "errors",
    "isa",
    "load",
    "set_isa",
    "validate",
]


def _from_state(
    state: dict[str, np.ndarray], found: dict[str, Any], options: dict[str, Any]
) -> Model | GraphModel:
    """A state_dict's model: one of CELLS.md's cells (a graph) or a recurrent stack.
    ``found``: the options the source implies, ``options`` the caller's (they win)."""
    from lstm_infer.cells.load import cell_graph, load_cell_options
    from lstm_infer.torch_import import floating, spec_from_state_dict

    state = _drop_ignored(state, options.pop("ignore", None))
    merged = {**found, **options}
    graph = cell_graph(
        state, prefix=merged.get("prefix"), batch_first=merged.get("batch_first", False)
    )
    if graph is None:
        return Model(spec_from_state_dict(floating(state), **merged))
    load_cell_options(options)  # refuses the options that apply to stacks only
    return GraphModel(graph, source="pytorch")


def _drop_ignored(state: dict[str, np.ndarray], ignore: Any) -> dict[str, np.ndarray]:
    """``state`` without the parameters ``ignore`` names: full keys, or module names whose
    every ``name.*`` key goes (a loss's parameters saved beside the model, say). An entry
    matching nothing is refused: a misspelt name would otherwise leave the model as it was."""
    if ignore is None:
        return state
    if isinstance(ignore, str) or not all(isinstance(n, str) and n for n in ignore):
        raise TypeError(f"ignore must be a list of parameter or module names, got {ignore!r}")
    kept = dict(state)
    for name in ignore:
        gone = [k for k in kept if k == name or k.startswith(name + ".")]
        if not gone:
            raise errors.ModelFormatError(
                f"ignore: {name!r} names no parameter or module of this state_dict"
            )
        for k in gone:
            del kept[k]
    return kept


def load(source: Any, **options: Any) -> Model | GraphModel:
    """Load a model.

    Parameters
    ----------
    source : path, bytes, onnx.ModelProto, torch module or state_dict
        An ONNX model (``.onnx`` path, its bytes, or a ``ModelProto``); a native lstm_infer
        file written by :meth:`Model.save`; a PyTorch checkpoint written by ``torch.save``
        (``.pt``/``.pth``/``.bin``/``.ckpt``, zip or legacy format, read without torch and
        without running any code from the file) or a ``.safetensors`` state_dict; or, with torch
        installed, a live ``nn.Module`` or ``state_dict``.
    **options
        For PyTorch weights: ``key`` (which entry of a training checkpoint dict holds the
        state_dict), ``inert_objects=True`` (objects of other libraries' classes beside the
        weights, such as Lightning's hyper-parameters, load as inert markers instead of
        being refused; nothing of them runs), ``prefix`` (use only parameters under this key
        prefix), ``ignore``
        (parameter or module names to leave out, e.g. a loss's ``["similarity_weight",
        "similarity_bias"]`` saved with the model; full keys), ``nonlinearity``
        ("tanh"/"relu" for nn.RNN), ``batch_first``, ``head_activation`` /
        ``head_activations`` (after the Linear head), and, where the weights fit more than one
        architecture, ``embedding="emb.weight"`` (or False) / ``head=["fc", ...]`` (or []).
        For ONNX models: ``fixed_inputs={"sr": 16000}`` makes inputs constants (they leave
        ``model.inputs``; branches they decide are resolved at load).
        For native files: ``mmap=True`` maps the file and builds the model on its pages
        (every process loading that file shares them: batch jobs, Ray actors); the file must
        then stay as it is while the model lives (replace it by writing a new file and
        renaming it over, as ``Model.save`` does; rewriting or truncating it in place changes
        or crashes the loaded model). Default False: the weights are read into memory.
        For a live module whose forward is more than a recurrent stack (a conv front end,
        layer norm, ...): ``example_inputs=(x, ...)`` (and optionally ``input_names``)
        exports it with torch.onnx and loads that graph.
        See :mod:`lstm_infer.torch_import`.

    Returns
    -------
    Model
    """
    from lstm_infer.errors import ModelFormatError
    from lstm_infer.importers.onnx.load import load_onnx
    from lstm_infer.native_format import (
        is_native,
        spec_from_safetensors,
        stored_heads,
        stored_plans,
    )
    from lstm_infer.native_graph import graph_from_native, is_native_graph, native_source
    from lstm_infer.safetensors_io import is_safetensors, read_safetensors
    from lstm_infer.torch_import import is_torch_checkpoint, read_state

    def no_options(kind: str) -> None:
        if options:
            raise TypeError(f"options {sorted(options)} do not apply to {kind}")

    def onnx_options() -> dict[str, Any]:
        fixed = options.pop("fixed_inputs", None)
        no_options("ONNX models")
        if fixed is not None and not isinstance(fixed, dict):
            raise TypeError(f"fixed_inputs must be a dict of name -> value, got {fixed!r}")
        return {"fixed_inputs": fixed}

    def from_torch() -> Model | GraphModel:
        """A checkpoint file's, a state_dict's or a module's model (``source`` by then)."""
        key = options.pop("key", None)
        inert = options.pop("inert_objects", False)
        return _from_state(*read_state(source, key=key, inert_objects=inert), options)

    if isinstance(source, Model):
        no_options("a Model")
        return source
    path = None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such model file: {path!r}")
        with open(path, "rb") as fh:
            head = fh.read(16)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        source = bytes(source)
        head = source[:16]
    else:
        if type(source).__name__ == "ModelProto":
            return load_onnx(source, **onnx_options())
        if hasattr(source, "state_dict") and "example_inputs" in options:
            from lstm_infer.torch_import import export_module

            example = options.pop("example_inputs")
            names = options.pop("input_names", None)
            no_options("a module exported with example_inputs")
            return load_onnx(export_module(source, example, names))
        if hasattr(source, "state_dict") or isinstance(source, dict):
            return from_torch()
        raise ModelFormatError(
            f"cannot load a model from {type(source).__name__}; pass a path, bytes, an "
            "onnx.ModelProto, a torch module or a state_dict"
        )
    mapped = options.pop("mmap", False)
    if not isinstance(mapped, bool):
        raise TypeError(f"mmap must be True or False, got {mapped!r}")
    if is_safetensors(head):
        # mmap=True: a native model is built on the file's pages (see Model.save).
        tensors, metadata = read_safetensors(source, mapped=mapped and path is not None)
        if is_native(metadata):
            no_options("native lstm_infer files")
            if is_native_graph(metadata):
                tensors = {k: np.array(v) for k, v in tensors.items()}  # graphs: own copies
                graph = graph_from_native(tensors, metadata)
                return GraphModel(graph, source=native_source(metadata))
            spec = spec_from_safetensors(tensors, metadata)
            return Model(spec, stored_plans(tensors, spec), stored_heads(tensors, spec))
        tensors = {
            k: np.array(v, np.int64 if v.dtype.kind in "iu" else v.dtype)  # own copies
            for k, v in tensors.items()
            if v.dtype == "float32" or v.dtype.kind in "iu"
        }
        # safetensors sorts its names: their order says nothing about the modules'
        return _from_state(tensors, {"ordered": False}, options)
    if is_torch_checkpoint(head, path):
        return from_torch()
    return load_onnx(source, **onnx_options())
