"""The ONNX recurrent operators RNN, LSTM and GRU as graph ops.

Each node's weights (W, R, B and LSTM's P) must be constants: they are converted once, at
compile time, into the engine's internal layer (gate order, folded biases, packed blocks) and
run by the same fused kernels as a lone recurrent model (``Model`` with the operator's own
signature). X, sequence_lens and the initial states are run-time values; every attribute of
opsets 7-22 is honoured (activations, clip, directions, layout, input_forget,
linear_before_reset). ``lstm_infer_weight_format`` ("bf16" / "int8"), set by importers that
read quantized recurrent ops (com.microsoft.DynamicQuantizeLSTM), runs the layer on the
engine's quantized weights (``Model.quantize``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer._onnx_weights import (
    RECURRENT_ATTRIBUTES,
    RECURRENT_OPS,
    layer_from_node_attributes,
)
from lstm_infer._spec import ModelSpec, Signature
from lstm_infer.errors import ModelFormatError, UnsupportedModelError
from lstm_infer.ops.base import (
    OpDef,
    RunContext,
    allowed_attrs,
    attr_int,
    attr_str,
    dtype_of,
    op,
    shape_of,
    typed,
    unknown,
)
from lstm_infer.tensor_type import Dim, TensorType

# The operators' inputs by position, and the run-time ones the engine takes as feeds.
_INPUTS = {
    "rnn": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
    "gru": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
    "lstm": ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"),
}
_OUTPUTS = {"rnn": ("Y", "Y_h"), "gru": ("Y", "Y_h"), "lstm": ("Y", "Y_h", "Y_c")}
_ROLE = {"X": "x", "sequence_lens": "sequence_lens", "initial_h": "initial_h",
         "initial_c": "initial_c", "Y": "y", "Y_h": "y_h", "Y_c": "y_c"}  # fmt: skip


WEIGHT_FORMAT_ATTR = "lstm_infer_weight_format"


def _check(node: Any) -> None:
    allowed_attrs(*RECURRENT_ATTRIBUTES, WEIGHT_FORMAT_ATTR)(node)
    fmt = node.attrs.get(WEIGHT_FORMAT_ATTR)
    if fmt is not None and fmt not in ("bf16", "int8"):
        raise ModelFormatError(f"{node.label}: {WEIGHT_FORMAT_ATTR} {fmt!r} is not bf16 or int8")
    layout = attr_int(node, "layout", 0)
    if layout not in (0, 1):
        raise ModelFormatError(f"{node.label}: layout must be 0 or 1, got {layout}")
    hidden = node.attrs.get("hidden_size")
    if hidden is not None and not (isinstance(hidden, int) and 0 < hidden <= 1 << 20):
        raise ModelFormatError(f"{node.label}: hidden_size {hidden!r} is not in [1, 2**20]")


def _prepare(node: Any, consts: dict[int, np.ndarray]) -> Any:
    from lstm_infer.model import Model  # the core's compiled layer; model never imports ops

    cell = RECURRENT_OPS[node.op]
    names = _INPUTS[cell]
    given = {names[i]: i for i, n in enumerate(node.inputs) if n and i < len(names)}
    for role in ("W", "R", "B", "P"):
        if role in given and given[role] not in consts:
            raise UnsupportedModelError(
                f"{node.label}: {role} is computed at run time; its weights must be constants"
            )
    w = {role: consts[i] for role, i in given.items() if role in ("W", "R", "B", "P")}
    try:
        attrs = {k: v for k, v in node.attrs.items() if k != WEIGHT_FORMAT_ATTR}
        layer = layer_from_node_attributes(cell, w["W"], w["R"], w.get("B"), w.get("P"), attrs)
    except ModelFormatError as exc:
        raise type(exc)(f"{node.label}: {exc}") from exc
    feeds = [r for r in ("X", "sequence_lens", "initial_h", "initial_c") if r in given]
    outs = [r for r, n in zip(_OUTPUTS[cell], node.outputs) if n]
    sig = Signature(
        "onnx_node",
        attr_int(node, "layout", 0),
        {_ROLE[r]: r for r in feeds},
        {_ROLE[r]: r for r in outs},
    )
    model = Model(ModelSpec([layer], sig, source="onnx"))
    if node.attrs.get(WEIGHT_FORMAT_ATTR):
        model = model.quantize(node.attrs[WEIGHT_FORMAT_ATTR])
    return model, [(r, given[r]) for r in feeds], outs


def _run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
    model, feeds, outs = state
    result = model.run({r: ins[i] for r, i in feeds}, threads=ctx.threads)
    cell = RECURRENT_OPS[node.op]
    by_role = dict(zip(_OUTPUTS[cell], [result.get(r) for r in _OUTPUTS[cell]]))
    return [
        by_role[r] if n else np.zeros(0, np.float32) for r, n in zip(_OUTPUTS[cell], node.outputs)
    ]


def _infer(node: Any, types: list, consts: dict) -> list[TensorType]:
    """Y (T, D, B, H) and Y_h / Y_c (D, B, H); layout 1: (B, T, D, H) and (B, D, H)."""
    cell = RECURRENT_OPS[node.op]
    dtype, sx = dtype_of(types[0]), shape_of(types[0])
    layout = attr_int(node, "layout", 0)
    direction = attr_str(node, "direction", "forward")
    dirs = 2 if direction == "bidirectional" else 1
    hidden: Dim = node.attrs.get("hidden_size")
    sr = shape_of(types[2])
    if hidden is None and sr is not None and len(sr) == 3:
        hidden = sr[2]
    if sx is None:
        y = unknown(dtype)
        state = unknown(dtype)
    else:
        if len(sx) != 3:
            raise ModelFormatError(f"{node.label}: X must be rank 3, got shape {sx}")
        steps, batch = (sx[1], sx[0]) if layout else (sx[0], sx[1])
        y_shape = (batch, steps, dirs, hidden) if layout else (steps, dirs, batch, hidden)
        y = TensorType(dtype, typed(node, dtype, y_shape).shape, 1 if layout else 0)
        state = typed(node, dtype, (batch, dirs, hidden) if layout else (dirs, batch, hidden))
    return [y, state, state][: len(_OUTPUTS[cell])][: len(node.outputs)]


OPS: dict[str, OpDef] = {
    name: op(
        name,
        _run,
        inputs=(3, len(_INPUTS[cell])),
        outputs=(0, len(_OUTPUTS[cell])),
        check=_check,
        prepare=_prepare,
        infer=_infer,
        foldable=False,
    )
    for name, cell in RECURRENT_OPS.items()
}
