"""Softmax and LogSoftmax over one axis (newest-opset semantics).

float32 runs through the engine's one-kernel-per-row softmax (``_engine.softmax_rows``) after
moving the axis last; other float dtypes through numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer import _engine
from lstm_infer.errors import InputError
from lstm_infer.ops.base import OpDef, RunContext, allowed_attrs, attr_int, normalize_axis, op


def _softmax(log: bool):  # noqa: ANN202
    def run(ctx: RunContext, node: Any, ins: list, state: Any) -> list[np.ndarray]:
        x = ins[0]
        if x.dtype.kind != "f":
            raise InputError(f"{node.label}: needs a floating-point input, got {x.dtype}")
        if x.ndim == 0:
            return [np.zeros_like(x) if log else np.ones_like(x)]
        axis = normalize_axis(node, attr_int(node, "axis", -1), x.ndim)
        moved = np.moveaxis(x, axis, -1)
        if x.dtype == np.float32:
            y = np.array(moved, dtype=np.float32, order="C")
            _engine.softmax_rows(y, log)
        else:
            m = moved.max(axis=-1, keepdims=True)
            shifted = moved - m
            lse = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
            y = shifted - lse if log else np.exp(shifted - lse)
        return [np.ascontiguousarray(np.moveaxis(y, -1, axis))]

    return run


OPS: dict[str, OpDef] = {
    "Softmax": op("Softmax", _softmax(False), check=allowed_attrs("axis")),
    "LogSoftmax": op("LogSoftmax", _softmax(True), check=allowed_attrs("axis")),
}
