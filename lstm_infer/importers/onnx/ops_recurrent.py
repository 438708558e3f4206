"""The recurrent ops of the stack lowering: RNN, LSTM and GRU nodes.

A recurrent node becomes a layer stage of the plan: its weights (constants) are read into a
:class:`~lstm_infer._spec.RecurrentLayer`, its X bound as the (time, batch, features) sequence
of the stage before (layout 0, or batch-first for layout 1), and each direction's initial h
and c traced to zeros, a constant or rows of a state graph input. Its outputs are the Y
sequence and the final states. ``OPS`` maps each op type to its handler.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer._onnx_weights import (
    RECURRENT_ATTRIBUTES,
    RECURRENT_OPS,
    layer_from_node_attributes,
)
from lstm_infer.importers.onnx.base import Handler, LoweringBase
from lstm_infer.importers.onnx.values import (
    Cell,
    Const,
    Fill,
    FinalState,
    InputStage,
    LayerStage,
    Seq,
    Stage,
    _dim_prod,
    _label,
    _Unsupported,
)


class RecurrentOps(LoweringBase):
    """Handlers of the recurrent ops (a mixin of ``GraphLowering``)."""

    def _op_RNN(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
        return self._recurrent(node, ins, attrs)

    def _recurrent(self, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
        cell = RECURRENT_OPS[node.op]
        unknown = set(attrs) - RECURRENT_ATTRIBUTES
        if unknown:
            raise _Unsupported(f"unsupported attribute(s) {sorted(unknown)}")
        ins = ins + [None] * (8 - len(ins))
        x, w, r, b, lens, h0, c0, p = ins[:8]
        for label, v in (("W", w), ("R", r), ("B", b), ("P", p)):
            if v is not None and not isinstance(v, Const):
                raise _Unsupported(f"{label} must be an initializer or a constant")
        if w is None or r is None:
            raise _Unsupported("W and R are required")
        if lens is not None:
            raise _Unsupported("sequence_lens inside a multi-node graph is not supported")
        layer = layer_from_node_attributes(
            cell,
            w.value,
            r.value,
            None if b is None else b.value,
            None if p is None else p.value,
            attrs,
        )
        layout = int(attrs.get("layout", 0))
        if not isinstance(x, Seq):
            raise _Unsupported(f"X is {type(x).__name__}, not a sequence")
        if x.windows or x.flipped:
            raise _Unsupported("X is a slice of a sequence")
        parent = self._bind_sequence(x, layout, layer.input_size)
        D, H = layer.num_directions, layer.hidden_size
        cells = [
            Cell(cell, dw, reverse=(layer.direction == "reverse" or d == 1))
            for d, dw in enumerate(layer.directions)
        ]
        for kind, value in (("h", h0), ("c", c0)):
            sources = self._state_sources(value, D, layer.state_size if kind == "h" else H, layout)
            for c_, src in zip(cells, sources):
                setattr(c_, f"init_{kind}", src)
        d_role = self.roles.new("dir", D)
        h_role = self.roles.new("feat", layer.state_size, "h")
        stage = LayerStage(
            parent, (d_role, h_role), layer=layer, cells=cells, node=_label(node), layout=layout
        )
        if layout == 0:
            y_axes = (("T",), (d_role,), ("B",), (h_role,))
        else:
            y_axes = (("B",), ("T",), (d_role,), (h_role,))
        outs: list[Any] = [Seq(stage, y_axes)]
        for kind, size in (("h", layer.state_size), ("c", H)):
            s_role = self.roles.new("state", D)
            f_role = self.roles.new("feat", size, kind)
            axes = ((s_role,), ("B",), (f_role,)) if layout == 0 else (("B",), (s_role,), (f_role,))
            outs.append(FinalState(tuple(cells), kind, axes))
        return outs[: 3 if cell == "lstm" else 2]

    def _bind_sequence(self, x: Seq, layout: int, input_size: int) -> Stage:
        """Check that ``x`` is (T, B, features) (layout 0) or (B, T, features); bind roles."""
        axes = [ax for ax in x.axes if not all(self.roles.droppable(r) for r in ax)]
        if len(axes) != 3:
            raise _Unsupported(f"X must have 3 axes, got {len(axes)}")
        t_ax, b_ax = (axes[0], axes[1]) if layout == 0 else (axes[1], axes[0])
        for ax, canonical in ((t_ax, "T"), (b_ax, "B")):
            core = [r for r in ax if not self.roles.droppable(r)]
            if len(core) != 1:
                raise _Unsupported(f"X's {'time' if canonical == 'T' else 'batch'} axis is merged")
            self.roles.bind(core[0], canonical)
        stage = x.stage
        if isinstance(stage, InputStage):
            if stage.usage == "state":
                raise _Unsupported(f"graph input {stage.name!r} is used as a state and as X")
            stage.usage = "sequence"
            core = [r for r in axes[2] if not self.roles.droppable(r)]
            if len(core) != 1:
                raise _Unsupported("X's feature axis is merged")
            stage.features = tuple(core)
        elif not self.roles.same(axes[2], stage.features):
            raise _Unsupported("X's last axis is not the feature axis of the sequence")
        width = _dim_prod(self._role_size(x, r) for r in axes[2])
        if width != input_size:
            raise _Unsupported(f"X has {width} features but W expects input_size={input_size}")
        return stage

    def _state_sources(self, value: Any, D: int, size: int, layout: int) -> list[tuple | None]:
        """Where each direction's initial state comes from (see :class:`Cell`)."""
        if value is None:
            return [None] * D
        if isinstance(value, Fill):
            if value.value != 0.0:
                raise _Unsupported("an initial state filled with a non-zero value")
            return [None] * D
        if isinstance(value, Const):
            arr = np.asarray(value.value, np.float32)
            if arr.ndim != 3:
                raise _Unsupported(f"a constant initial state of shape {arr.shape}")
            if layout == 1:
                arr = arr.transpose(1, 0, 2)
            if arr.shape[0] != D or arr.shape[2] != size:
                raise _Unsupported(f"a constant initial state of shape {value.value.shape}")
            if not arr.any():
                return [None] * D
            return [("const", np.ascontiguousarray(arr[d])) for d in range(D)]
        if isinstance(value, Seq) and isinstance(value.stage, InputStage):
            start, count = self._bind_state(value, layout)
            if count != D:
                raise _Unsupported(f"the initial state holds {count} directions; the layer has {D}")
            return [("input", value.stage.name, start + d) for d in range(D)]
        raise _Unsupported(f"initial state is {type(value).__name__}, not a graph input or zeros")

    def _bind_state(self, value: Seq, layout: int) -> tuple[int, int]:
        """Bind a state input's roles; its [start, start+count) range on the layers axis."""
        stage = value.stage
        assert isinstance(stage, InputStage)
        if stage.usage == "sequence":
            raise _Unsupported(f"graph input {stage.name!r} is used as X and as a state")
        stage.usage = "state"
        axes = list(value.axes)
        if len(axes) != 3 or any(len(ax) != 1 for ax in axes):
            raise _Unsupported("the initial state must be a (layers, batch, hidden) input")
        s_ax, b_ax = (axes[0][0], axes[1][0]) if layout == 0 else (axes[1][0], axes[0][0])
        if (s_ax, b_ax) != (self._input_axis(stage, 0), self._input_axis(stage, 1)):
            raise _Unsupported(
                f"graph input {stage.name!r} must be used as (layers, batch, hidden), unpermuted"
            )
        self.roles.bind(b_ax, "B")
        return self._state_window(value, s_ax)

    def _state_window(self, value: Seq, s_role: str) -> tuple[int, int]:
        windows = [w for w in value.windows if w.role == s_role]
        others = [w for w in value.windows if w.role != s_role]
        if others:
            raise _Unsupported("the state input is sliced on an axis other than the first")
        if windows:
            return windows[0].start, windows[0].stop - windows[0].start
        size = self.roles.size_of(s_role)
        if not isinstance(size, int):
            raise _Unsupported("the state input's first axis has a symbolic size")
        return 0, size


OPS: dict[str, Handler] = {
    "RNN": RecurrentOps._op_RNN,
    "LSTM": RecurrentOps._op_RNN,
    "GRU": RecurrentOps._op_RNN,
}
