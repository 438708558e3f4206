"""The native file format: safetensors tensors + one JSON metadata entry.

Weights are stored in the internal (kernel) gate order, so loading is exact and needs no
conversion. The metadata key ``lstm_infer`` holds the architecture and the I/O signature.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np

from lstm_infer._spec import (
    Activation,
    DenseLayer,
    DirectionWeights,
    ModelSpec,
    RecurrentLayer,
    Signature,
)
from lstm_infer.errors import ModelFormatError
from lstm_infer.safetensors_io import write_safetensors

FORMAT_NAME = "lstm_infer"
FORMAT_VERSION = 1
_DIRECTION_ARRAYS = ("w", "r", "bias", "bias_rn", "peephole", "proj")


def save_spec(
    spec: ModelSpec,
    path: str | os.PathLike[str],
    plans: list[list[dict[str, np.ndarray]]] | None = None,
    heads: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> None:
    """Write ``spec`` to ``path`` (conventionally ``*.safetensors``).

    ``plans`` (per layer, per direction: lstm_infer._plan.derived_arrays) and ``heads`` (per
    dense layer: its packed weight and padded bias) are stored too, as ``plans.*`` and
    ``heads.*``: a memory-mapped load then builds the model on the file's pages.
    """
    tensors: dict[str, np.ndarray] = {}
    for li, per_layer in enumerate(plans or []):
        for d, arrays in enumerate(per_layer):
            for key, arr in arrays.items():
                # bf16 bits as int16: a dtype every reader of version 1 files knows
                stored = arr.view(np.int16) if arr.dtype == np.uint16 else arr
                tensors[f"plans.{li}.{d}.{key}"] = stored
    for i, (packed, bias_padded) in enumerate(heads or []):
        tensors[f"heads.{i}.packed"] = packed
        tensors[f"heads.{i}.bias_padded"] = bias_padded
    layers_meta = []
    for li, layer in enumerate(spec.layers):
        dirs_meta = []
        for d, dw in enumerate(layer.directions):
            for key in _DIRECTION_ARRAYS:
                arr = getattr(dw, key)
                if arr is not None:
                    tensors[f"layers.{li}.{d}.{key}"] = np.asarray(arr, np.float32)
            dirs_meta.append([[a.name, a.alpha, a.beta] for a in dw.activations])
        layers_meta.append(
            {
                "cell": layer.cell,
                "input_size": layer.input_size,
                "hidden_size": layer.hidden_size,
                "proj_size": layer.proj_size,
                "direction": layer.direction,
                "clip": layer.clip,
                "input_forget": layer.input_forget,
                "linear_before_reset": layer.linear_before_reset,
                "weight_format": layer.weight_format,
                "activations": dirs_meta,
            }
        )
    head_meta = []
    for i, dense in enumerate(spec.head):
        tensors[f"head.{i}.weight"] = np.asarray(dense.weight, np.float32)
        if dense.bias is not None:
            tensors[f"head.{i}.bias"] = np.asarray(dense.bias, np.float32)
        head_meta.append({"activation": dense.activation})
    if spec.embedding is not None:
        tensors["embedding"] = np.asarray(spec.embedding, np.float32)
    sig = spec.signature
    for role, value in sig.constants.items():
        tensors[f"constants.{role}"] = np.asarray(value)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "layers": layers_meta,
        "head": head_meta,
        "signature": {
            "style": sig.style,
            "layout": sig.layout,
            "inputs": sig.inputs,
            "outputs": sig.outputs,
            "state_groups": sig.state_groups,
            "declared": {
                name: [list(shape), dtype] for name, (shape, dtype) in sig.declared.items()
            },
        },
        "source": spec.source,
    }
    # 64-byte aligned tensors: a mapped load's packed blocks start on cache lines.
    write_safetensors(path, tensors, {FORMAT_NAME: json.dumps(meta)}, align=64)


_PLAN_KEY = re.compile(r"plans\.(\d{1,6})\.(\d)\.([a-z_]{1,32})")
_HEAD_KEY = re.compile(r"heads\.(\d{1,6})\.(packed|bias_padded)")


def stored_plans(tensors: dict[str, np.ndarray], spec: ModelSpec) -> list | None:
    """The derived plan arrays a native file stores, per layer and direction; None when it
    stores none (files written before they were). Each must be exactly what packing the
    layer's own weights gives: names, shapes and dtypes are checked first, then the values
    against a fresh packing (made and dropped one direction at a time), so one file can
    never hold two different models. ModelFormatError otherwise."""
    from lstm_infer._plan import derived_arrays, derived_shapes

    keys = [k for k in tensors if k.startswith("plans.")]
    if not keys:
        return None
    found: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    for key in keys:
        m = _PLAN_KEY.fullmatch(key)
        if m is None:
            raise ModelFormatError(f"native file: malformed plan array name {key!r}")
        li, d = int(m.group(1)), int(m.group(2))
        if li >= len(spec.layers) or d >= spec.layers[li].num_directions:
            raise ModelFormatError(f"native file: {key!r} names a layer direction it lacks")
        found.setdefault((li, d), {})[m.group(3)] = tensors[key]
    out = []
    for li, layer in enumerate(spec.layers):
        emb = spec.embedding if li == 0 else None
        per_layer = []
        for d in range(layer.num_directions):
            want = derived_shapes(layer, d, emb)
            got = found.get((li, d), {})
            if set(got) != set(want):
                raise ModelFormatError(
                    f"native file: layer {li} direction {d} stores plan arrays "
                    f"{sorted(got)}, expected {sorted(want)}"
                )
            for key, (shape, dtype) in want.items():
                arr = got[key]
                if dtype == np.uint16 and arr.dtype == np.int16:
                    arr = got[key] = arr.view(np.uint16)
                if arr.shape != shape or arr.dtype != dtype:
                    raise ModelFormatError(
                        f"native file: plans.{li}.{d}.{key} is {arr.dtype}{list(arr.shape)}, "
                        f"expected {dtype}{list(shape)}"
                    )
            fresh = derived_arrays(layer, d, emb)
            for key, arr in fresh.items():
                if not np.array_equal(arr, got[key], equal_nan=arr.dtype.kind == "f"):
                    raise ModelFormatError(
                        f"native file: plans.{li}.{d}.{key} does not hold the packing of "
                        f"layer {li}'s weights"
                    )
            del fresh
            per_layer.append(got)
        out.append(per_layer)
    return out


def stored_heads(tensors: dict[str, np.ndarray], spec: ModelSpec) -> list | None:
    """(packed, bias_padded) per dense layer as the file stores them, checked like the plans
    (names, shapes, and values against a fresh packing); or None."""
    from lstm_infer.dense_head import CompiledDense, packed_head_shapes

    keys = [k for k in tensors if k.startswith("heads.")]
    if not keys:
        return None
    for key in keys:
        m = _HEAD_KEY.fullmatch(key)
        if m is None or int(m.group(1)) >= len(spec.head):
            raise ModelFormatError(f"native file: {key!r} names no dense layer of the model")
    out = []
    for i, dense in enumerate(spec.head):
        pair = (tensors.get(f"heads.{i}.packed"), tensors.get(f"heads.{i}.bias_padded"))
        for arr, (shape, what) in zip(pair, packed_head_shapes(dense)):
            if arr is None or arr.dtype != np.float32 or arr.shape != shape:
                raise ModelFormatError(
                    f"native file: heads.{i}.{what} must be float32{list(shape)}, got "
                    f"{None if arr is None else (arr.dtype, list(arr.shape))}"
                )
        fresh = CompiledDense.of(dense)
        if not (np.array_equal(fresh.packed, pair[0], equal_nan=True)
                and np.array_equal(fresh.bias_padded, pair[1], equal_nan=True)):  # fmt: skip
            raise ModelFormatError(f"native file: heads.{i} does not hold its layer's packing")
        out.append(pair)
    return out


def is_native(metadata: dict[str, Any]) -> bool:
    return FORMAT_NAME in metadata


def spec_from_safetensors(tensors: dict[str, np.ndarray], metadata: dict[str, Any]) -> ModelSpec:
    """Rebuild a ModelSpec from a native file's tensors and metadata."""
    try:
        meta = json.loads(metadata[FORMAT_NAME])
    except (KeyError, TypeError, json.JSONDecodeError, RecursionError) as exc:
        # RecursionError: deeply nested brackets exhaust json's recursion limit.
        raise ModelFormatError(f"native metadata is missing or not JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ModelFormatError("not an lstm_infer native file")
    if meta.get("version") != FORMAT_VERSION:
        raise ModelFormatError(
            f"native format version {meta.get('version')!r}; this lstm_infer reads "
            f"version {FORMAT_VERSION}"
        )

    def tensor(key: str, required: bool = True) -> np.ndarray | None:
        if key not in tensors:
            if required:
                raise ModelFormatError(f"native file lacks tensor {key!r}")
            return None
        return tensors[key]

    try:
        layers = []
        for li, lm in enumerate(meta["layers"]):
            dirs = []
            for d, acts in enumerate(lm["activations"]):
                arrays = {
                    key: tensor(f"layers.{li}.{d}.{key}", key in ("w", "r", "bias"))
                    for key in _DIRECTION_ARRAYS
                }
                dirs.append(
                    DirectionWeights(
                        activations=tuple(Activation.make(n, a, b) for n, a, b in acts),
                        **arrays,
                    )
                )
            layers.append(
                RecurrentLayer(
                    cell=str(lm["cell"]),
                    input_size=int(lm["input_size"]),
                    hidden_size=int(lm["hidden_size"]),
                    proj_size=int(lm["proj_size"]),
                    direction=str(lm["direction"]),
                    directions=dirs,
                    clip=None if lm["clip"] is None else float(lm["clip"]),
                    input_forget=bool(lm["input_forget"]),
                    linear_before_reset=bool(lm["linear_before_reset"]),
                    weight_format=str(lm.get("weight_format", "float32")),
                )
            )
        head = [
            DenseLayer(
                weight=tensor(f"head.{i}.weight"),
                bias=tensor(f"head.{i}.bias", False),
                activation=hm["activation"],
            )
            for i, hm in enumerate(meta["head"])
        ]
        sm = meta["signature"]
        constants = {
            key.split(".", 1)[1]: value
            for key, value in tensors.items()
            if key.startswith("constants.")
        }
        sig = Signature(
            str(sm["style"]),
            int(sm["layout"]),
            dict(sm["inputs"]),
            dict(sm["outputs"]),
            constants,
            state_groups=[int(n) for n in sm.get("state_groups") or []],
            declared={
                str(name): (tuple(d if isinstance(d, str) else int(d) for d in shape), str(dtype))
                for name, (shape, dtype) in dict(sm.get("declared") or {}).items()
            },
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        # OverflowError: int() of a JSON 1e999 (parsed as float inf), e.g. as hidden_size.
        if isinstance(exc, ModelFormatError):
            raise
        raise ModelFormatError(f"native metadata is malformed: {exc!r}") from exc
    spec = ModelSpec(
        layers,
        sig,
        embedding=tensor("embedding", False),
        head=head,
        source=str(meta.get("source", "")),
    )
    spec.validate()
    return spec
