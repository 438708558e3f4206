"""Native format version 2: a model graph and its constants (safetensors + JSON).

The safetensors file holds the graph's constant tensors under ``const.<i>`` keys; the metadata
key ``lstm_infer`` holds ``{"format": "lstm_infer", "version": 2, "kind": "graph", ...}``: the
inputs and outputs (name, dtype, shape, time axis, then ``"sequence"`` for a sequence of
tensors), the nodes (op, name, inputs, outputs, attributes; a tensor attribute refers to a
``const.<i>`` key, an If branch or a Loop body is a nested graph object of the same shape)
and which tensor name each constant has. Loading checks every
field's type before building anything, then the graph is validated and compiled like an
imported one, so a hostile file fails with ModelFormatError.
Version 1 files (recurrent stacks, ``lstm_infer.native_format``) keep loading as before.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from lstm_infer.errors import ModelFormatError
from lstm_infer.graph import DTYPES, MAX_NODES, Graph, Node, TensorType, ValueInfo
from lstm_infer.safetensors_io import write_safetensors

FORMAT_NAME = "lstm_infer"
GRAPH_VERSION = 2
_MAX_LIST = 1 << 20  # entries of one attribute list or I/O list
MAX_GRAPH_DEPTH = 16  # If branches within branches


def _encode_attr(value: Any, tensors: dict[str, np.ndarray]) -> Any:
    if isinstance(value, Graph):  # an If branch: its own nodes and constants
        return {"graph": _graph_meta(value, tensors)}
    if isinstance(value, np.ndarray):
        key = f"attr.{len(tensors)}"
        tensors[key] = value
        return {"tensor": key}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_encode_attr(v, tensors) for v in value]
    if isinstance(value, (int, float, str)) or value is None:
        return value
    raise ModelFormatError(f"attribute value {value!r} cannot be saved")


def _value_meta(v: ValueInfo) -> list[Any]:
    shape = None if v.type.shape is None else list(v.type.shape)
    meta = [v.name, v.type.dtype, shape, v.type.time_axis]
    return meta + ["sequence"] if v.type.sequence else meta  # (a Loop body's carried list)


def _graph_meta(graph: Graph, tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """``graph`` as JSON-ready metadata, its constants added to ``tensors`` (branches too)."""
    names: dict[str, str] = {}
    for name, value in graph.initializers.items():
        key = f"const.{len(tensors)}"
        tensors[key] = np.asarray(value)
        names[key] = name
    nodes = [
        {
            "op": n.op,
            "name": n.name,
            "inputs": list(n.inputs),
            "outputs": list(n.outputs),
            "attrs": {k: _encode_attr(v, tensors) for k, v in n.attrs.items()},
        }
        for n in graph.nodes
    ]
    return {
        "inputs": [_value_meta(v) for v in graph.inputs],
        "outputs": [_value_meta(v) for v in graph.outputs],
        "nodes": nodes,
        "constants": names,
    }


def save_graph(graph: Graph, path: str | os.PathLike[str], source: str = "") -> None:
    """Write ``graph`` (constants included) to ``path`` in the native format, version 2."""
    tensors: dict[str, np.ndarray] = {}
    meta = {
        "format": FORMAT_NAME,
        "version": GRAPH_VERSION,
        "kind": "graph",
        "source": source,
        **_graph_meta(graph, tensors),
    }
    write_safetensors(path, tensors, {FORMAT_NAME: json.dumps(meta)})


def is_native_graph(metadata: dict[str, Any]) -> bool:
    """Whether native metadata is a version-2 graph (cheap: no full validation)."""
    try:
        meta = json.loads(metadata[FORMAT_NAME])
    except (KeyError, TypeError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("version") == GRAPH_VERSION


def native_source(metadata: dict[str, Any]) -> str:
    """The ``source`` a version-2 file records (where the graph came from), or ""."""
    try:
        source = json.loads(metadata[FORMAT_NAME]).get("source", "")
    except (KeyError, TypeError, ValueError, RecursionError, AttributeError):
        return ""
    return source if isinstance(source, str) else ""


def _fail(what: str) -> ModelFormatError:
    return ModelFormatError(f"native graph file: {what}")


def _str_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or len(value) > _MAX_LIST:
        raise _fail(f"{what} must be a list of strings")
    if not all(isinstance(v, str) for v in value):
        raise _fail(f"{what} must be a list of strings")
    return value


def _decode_attr(
    value: Any, tensors: dict[str, np.ndarray], graph_depth: int, depth: int = 0
) -> Any:
    if depth > 2:
        raise _fail("attribute nested too deep")
    if isinstance(value, dict) and set(value) == {"graph"} and depth == 0:
        return _graph_from_meta(value["graph"], tensors, graph_depth + 1)
    if isinstance(value, dict):
        key = value.get("tensor")
        if set(value) != {"tensor"} or not isinstance(key, str) or key not in tensors:
            raise _fail(f"attribute refers to a missing tensor {value!r}")
        return tensors[key]
    if isinstance(value, list):
        if len(value) > _MAX_LIST:
            raise _fail("attribute list too long")
        return [_decode_attr(v, tensors, graph_depth, depth + 1) for v in value]
    if value is None or isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return value
    raise _fail(f"attribute value {value!r} has an unsupported type")


def _value_info(entry: Any, what: str) -> ValueInfo:
    if (
        not isinstance(entry, list)
        or len(entry) not in (4, 5)
        or entry[4:] not in ([], ["sequence"])
    ):
        raise _fail(f"{what} entries are [name, dtype, shape, time_axis] (+ 'sequence')")
    name, dtype, shape, time_axis = entry[:4]
    if not isinstance(name, str) or not name or dtype not in DTYPES:
        raise _fail(f"{what} {name!r}: bad name or dtype {dtype!r}")
    if shape is not None:
        if not isinstance(shape, list) or len(shape) > 32:
            raise _fail(f"{what} {name!r}: bad shape")
        for d in shape:
            if not (d is None or isinstance(d, str) or (isinstance(d, int) and d >= 0)):
                raise _fail(f"{what} {name!r}: bad dim {d!r}")
        shape = tuple(shape)
    if time_axis is not None and not isinstance(time_axis, int):
        raise _fail(f"{what} {name!r}: bad time axis")
    return ValueInfo(name, TensorType(dtype, shape, time_axis, sequence=len(entry) == 5))


def graph_from_native(tensors: dict[str, np.ndarray], metadata: dict[str, Any]) -> Graph:
    """Rebuild the graph of a version-2 native file (checked field by field)."""
    try:
        meta = json.loads(metadata[FORMAT_NAME])
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise _fail(f"metadata is missing or not JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise _fail("not an lstm_infer native file")
    if meta.get("version") != GRAPH_VERSION or meta.get("kind") != "graph":
        raise _fail(f"version {meta.get('version')!r} / kind {meta.get('kind')!r}")
    graph = _graph_from_meta(meta, tensors, 0)
    graph.validate()
    return graph


def _graph_from_meta(meta: Any, tensors: dict[str, np.ndarray], depth: int) -> Graph:
    """One graph (the file's, or an If branch ``depth`` levels down) from its metadata."""
    if depth > MAX_GRAPH_DEPTH:
        raise _fail(f"subgraphs nested deeper than {MAX_GRAPH_DEPTH} levels")
    if not isinstance(meta, dict):
        raise _fail("a graph must be an object")
    for key in ("inputs", "outputs", "nodes"):
        if not isinstance(meta.get(key), list):
            raise _fail(f"{key!r} must be a list")
    if len(meta["nodes"]) > MAX_NODES:
        raise _fail(f"{len(meta['nodes'])} nodes; at most {MAX_NODES}")
    names = meta.get("constants")
    if not isinstance(names, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in names.items()
    ):
        raise _fail("'constants' must map tensor keys to names")
    missing = sorted(set(names) - set(tensors))
    if missing:
        raise _fail(f"constants {missing[:5]} are not in the file")
    nodes = []
    for i, n in enumerate(meta["nodes"]):
        if not isinstance(n, dict) or not isinstance(n.get("op"), str):
            raise _fail(f"node {i} is not an object with an 'op'")
        attrs = n.get("attrs", {})
        if not isinstance(attrs, dict):
            raise _fail(f"node {i}: attrs must be an object")
        name = n.get("name", "")
        if not isinstance(name, str):
            raise _fail(f"node {i}: name must be a string")
        nodes.append(
            Node(
                n["op"],
                _str_list(n.get("inputs"), f"node {i} inputs"),
                _str_list(n.get("outputs"), f"node {i} outputs"),
                {str(k): _decode_attr(v, tensors, depth) for k, v in attrs.items()},
                name=name,
            )
        )
    return Graph(
        [_value_info(v, "input") for v in meta["inputs"]],
        [_value_info(v, "output") for v in meta["outputs"]],
        nodes,
        {names[k]: tensors[k] for k in names},
    )
