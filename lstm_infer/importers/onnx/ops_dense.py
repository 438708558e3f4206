"""Arithmetic, dense and activation ops of the stack lowering.

Add, Sub, Mul and Div (on constants they compute; on a sequence, by a per-feature constant,
they fold into a dense stage), MatMul and Gemm by a constant weight (a dense layer, or the
recurrent product of an unrolled RNN), Relu, Tanh and Sigmoid, Softmax and LogSoftmax on the
feature axis. A sum of one timestep's input projection and a recurrent product, and its
activation, are handed to :mod:`lstm_infer.importers.onnx.unrolled`. ``OPS`` maps each op type
to its handler.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer.importers.onnx.base import Handler
from lstm_infer.importers.onnx.unrolled import UnrolledCells
from lstm_infer.importers.onnx.values import (
    Const,
    DenseStage,
    Dim,
    Hidden,
    InputStage,
    PreAct,
    RecProd,
    Seq,
    Window,
    _axis,
    _check_elements,
    _dim_div,
    _dim_prod,
    _is_symbolic,
    _label,
    _shape_array,
    _shape_elements,
    _Unsupported,
)


class DenseOps(UnrolledCells):
    """Handlers of the arithmetic, dense and activation ops (a mixin of ``GraphLowering``)."""

    def _binary_consts(self, op: str, a: Any, b: Any) -> Const:
        x, y = a.value, b.value
        try:
            shape = np.broadcast_shapes(x.shape, y.shape)
        except (ValueError, RuntimeError):  # RuntimeError: a rank past numpy's 32
            raise _Unsupported(
                f"constant shapes {x.shape} and {y.shape} do not broadcast"
            ) from None
        _check_elements(_shape_elements(shape), "the result")
        if op == "Add":
            r = x + y
        elif op == "Sub":
            r = x - y
        elif op == "Mul":
            r = x * y
        else:
            if _is_symbolic(x) or _is_symbolic(y):
                flat = [_dim_div(p, q) for p, q in np.broadcast(x, y)]
                if any(d is None for d in flat):
                    raise _Unsupported("inexact division of symbolic sizes")
                r = _shape_array(flat).reshape(np.broadcast(x, y).shape)
            elif x.dtype.kind in "iu" and y.dtype.kind in "iu":
                r = np.floor_divide(x, y)  # ONNX integer Div truncates; sizes are >= 0
            else:
                r = x / y
        if _is_symbolic(np.asarray(r)) and op in ("Add", "Sub"):
            if any(isinstance(d, Dim) for d in np.asarray(r).reshape(-1)):
                raise _Unsupported("adds symbolic sizes")
        arr = np.asarray(r)
        if not _is_symbolic(x) and not _is_symbolic(y):
            arr = arr.astype(np.result_type(x, y))
        return Const(arr)

    def _op_Add(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._arith("Add", node, ins)

    def _op_Sub(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._arith("Sub", node, ins)

    def _op_Mul(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._arith("Mul", node, ins)

    def _op_Div(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._arith("Div", node, ins)

    def _arith(self, op: str, node: Any, ins: list[Any]) -> Any:
        a, b = ins[0], ins[1]
        if isinstance(a, Const) and isinstance(b, Const):
            return self._binary_consts(op, a, b)
        if op == "Add":
            step_sum = self._unrolled_sum(a, b)
            if step_sum is not None:
                return step_sum
        if isinstance(a, Const) and op in ("Add", "Mul"):
            a, b = b, a
        if not isinstance(b, Const):
            raise _Unsupported(
                f"{op} of {type(a).__name__} and {type(b).__name__} is not an affine map of "
                "one sequence"
            )
        c = np.asarray(b.value, dtype=np.float32)
        if isinstance(a, RecProd):
            if op != "Add":
                raise _Unsupported(f"{op} inside an unrolled recurrence")
            bias = _as_vector(c, a.weight.shape[0], len(a.axes))
            if bias is None:
                raise _Unsupported(f"a bias of shape {c.shape} does not broadcast on the features")
            total = bias if a.bias is None else a.bias + bias
            return RecProd(a.prev, a.weight, total, a.axes)
        if not isinstance(a, Seq):
            raise _Unsupported(f"{op} on {type(a).__name__} is not supported")
        return self._affine(a, op, c, node)

    def _affine(self, v: Seq, op: str, c: np.ndarray, node: Any) -> Seq:
        """Fold Add/Sub/Mul/Div by a per-feature constant into a dense stage."""
        if v.flipped or any(w.stage is v.stage for w in v.windows):
            # (A slice taken before this dense stage, as of one layer's rows of a state input,
            # is fine: the bias of h0[k] R^T + b.)
            raise _Unsupported(f"{op} on a slice of a sequence")
        width = self._feature_width(v)
        vec = _as_vector(c, width, len(v.axes))
        if vec is None:
            raise _Unsupported(
                f"the constant of shape {c.shape} must broadcast along the last (feature) axis "
                f"of size {width}"
            )
        stage = v.stage
        if isinstance(stage, DenseStage) and stage.activation is None:
            weight, bias, parent, feats = stage.weight, stage.bias, stage.parent, stage.features
        else:
            weight, bias, parent, feats = None, None, stage, stage.features
        if op in ("Add", "Sub"):
            delta = vec if op == "Add" else -vec
            bias = delta if bias is None else bias + delta
        else:
            scale = vec if op == "Mul" else 1.0 / vec
            base = np.eye(width, dtype=np.float32) if weight is None else weight
            weight = (base * scale[:, None]).astype(np.float32)
            bias = None if bias is None else (bias * scale).astype(np.float32)
        new = DenseStage(parent, feats, weight=weight, bias=bias, node=_label(node))
        windows = tuple(
            Window(w.role, w.start, w.stop, new) if w.stage is stage else w for w in v.windows
        )
        return Seq(new, v.axes, windows)

    def _feature_width(self, v: Seq) -> int:
        width = _dim_prod(self._role_size(v, r) for r in v.axes[-1])
        if not isinstance(width, int):
            raise _Unsupported("the last axis has a symbolic size; it must be the features")
        if not self._is_feature_axis(v, v.axes[-1]):
            raise _Unsupported("the last axis is not the features of the sequence")
        return width

    def _is_feature_axis(self, v: Seq, axis: tuple[str, ...]) -> bool:
        stage = v.stage
        if isinstance(stage, InputStage) and not stage.features:
            return len(axis) == 1 and self.roles.kind_of(axis[0]) == "feat"
        return self.roles.same(axis, stage.features)

    def _op_MatMul(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        a, b = ins[0], ins[1]
        if isinstance(a, Const) and isinstance(b, Const):
            rows = a.value.size // max(1, a.value.shape[-1]) if a.value.ndim else 1
            _check_elements(rows * (b.value.shape[-1] if b.value.ndim else 1), "the product")
            return Const(np.matmul(a.value, b.value))
        if not isinstance(b, Const) or b.value.ndim != 2:
            raise _Unsupported(
                "only x @ W with a constant 2-D W is supported (a dense layer), got "
                f"{type(a).__name__} @ {type(b).__name__}"
            )
        return self._dense(node, a, np.asarray(b.value, np.float32).T, None)

    def _op_Gemm(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        a, b = ins[0], ins[1]
        c = ins[2] if len(ins) > 2 else None
        if all(isinstance(v, Const) or v is None for v in ins):
            return self._fold(node, ins)[0]
        if attrs.get("transA", 0):
            raise _Unsupported("transA=1 on sequence data")
        if not isinstance(b, Const) or (c is not None and not isinstance(c, Const)):
            raise _Unsupported("B and C must be constants")
        w = np.asarray(b.value, np.float32)
        w = w if attrs.get("transB", 0) else w.T  # (out, in)
        w = w * np.float32(attrs.get("alpha", 1.0))
        bias = None
        if c is not None:
            bias = _as_vector(np.asarray(c.value, np.float32), w.shape[0], 2)
            if bias is None:
                raise _Unsupported(f"C of shape {c.value.shape} is not a per-output bias")
            bias = bias * np.float32(attrs.get("beta", 1.0))
        return self._dense(node, a, w, bias)

    def _dense(self, node: Any, a: Any, weight: np.ndarray, bias: np.ndarray | None) -> Any:
        """x W^T (+ b) on a sequence, or the recurrent product of an unrolled RNN."""
        if isinstance(a, Hidden) and a.cell.steps == 1:
            a = self._single_step_sequence(a)  # the next layer's input, not a recurrence
        if isinstance(a, Hidden):
            if a.axes and self.roles.size_of(a.axes[-1][-1]) != weight.shape[1]:
                raise _Unsupported(
                    f"W has {weight.shape[1]} inputs but the hidden state has "
                    f"{self.roles.size_of(a.axes[-1][-1])}"
                )
            feat = self.roles.new("feat", weight.shape[0], "rec")
            return RecProd(a, weight, bias, (*a.axes[:-1], (feat,)))
        if not isinstance(a, Seq):
            raise _Unsupported(f"a dense layer on {type(a).__name__}")
        if a.flipped:
            raise _Unsupported("a dense layer on a time-reversed sequence")
        width = _dim_prod(self._role_size(a, r) for r in a.axes[-1])
        if width != weight.shape[1]:
            raise _Unsupported(
                f"the weight has shape {weight.shape[::-1]} but the input's last axis has "
                f"{width} features"
            )
        stage = a.stage
        if isinstance(stage, InputStage) and not stage.features:
            if len(a.axes[-1]) != 1:
                raise _Unsupported("the input's last axis must be its features")
        elif not self._is_feature_axis(a, a.axes[-1]):
            raise _Unsupported("the last axis is not the features of the sequence")
        feat = self.roles.new("feat", weight.shape[0], "dense")
        new = DenseStage(
            stage, (feat,), weight=np.ascontiguousarray(weight), bias=bias, node=_label(node)
        )
        return Seq(new, (*a.axes[:-1], (feat,)), a.windows)

    def _activation(self, node: Any, v: Any, act: str) -> Any:
        if isinstance(v, PreAct):
            return self._unrolled_step(node, v, act)
        if not isinstance(v, Seq):
            raise _Unsupported(f"activation on {type(v).__name__}")
        if v.windows or v.flipped:
            raise _Unsupported("activation on a slice of a sequence")
        self._feature_width(v)
        stage = v.stage
        if isinstance(stage, DenseStage) and stage.activation is None:
            new = DenseStage(
                stage.parent,
                stage.features,
                weight=stage.weight,
                bias=stage.bias,
                activation=act,
                node=_label(node),
            )
        else:
            new = DenseStage(stage, stage.features, activation=act, node=_label(node))
        return Seq(new, v.axes)

    def _op_Relu(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._activation(node, ins[0], "relu")

    def _op_Tanh(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._activation(node, ins[0], "tanh")

    def _op_Sigmoid(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._activation(node, ins[0], "sigmoid")

    def _softmax(self, node: Any, ins: list[Any], attrs: dict[str, Any], act: str) -> Any:
        v = ins[0]
        if isinstance(v, Const):
            return self._fold(node, ins)[0]
        rank = len(self._dims(v))
        axis = attrs.get("axis", -1)
        if _axis(axis, rank) != rank - 1:
            raise _Unsupported(f"axis {axis} is not the last (feature) axis of a rank-{rank} input")
        return self._activation(node, v, act)

    def _op_Softmax(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._softmax(node, ins, attrs, "softmax")

    def _op_LogSoftmax(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> Any:
        return self._softmax(node, ins, attrs, "log_softmax")


OPS: dict[str, Handler] = {
    "Add": DenseOps._op_Add,
    "Sub": DenseOps._op_Sub,
    "Mul": DenseOps._op_Mul,
    "Div": DenseOps._op_Div,
    "MatMul": DenseOps._op_MatMul,
    "Gemm": DenseOps._op_Gemm,
    "Relu": DenseOps._op_Relu,
    "Tanh": DenseOps._op_Tanh,
    "Sigmoid": DenseOps._op_Sigmoid,
    "Softmax": DenseOps._op_Softmax,
    "LogSoftmax": DenseOps._op_LogSoftmax,
}


def _as_vector(c: np.ndarray, width: int, rank: int) -> np.ndarray | None:
    """A constant that broadcasts only along the last axis, as a (width,) vector."""
    if c.ndim > rank or any(d != 1 for d in c.shape[:-1]):
        return None
    if c.ndim == 0 or c.shape[-1] == 1:
        return np.full(width, float(c.reshape(-1)[0]), np.float32)
    if c.shape[-1] != width:
        return None
    return np.ascontiguousarray(c.reshape(width), np.float32)
