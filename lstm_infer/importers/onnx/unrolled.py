"""Recognising an RNN that the exporter unrolled over time into per-step nodes.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``) writes ``nn.RNN`` as, for each
timestep t, ``x_t W^T + b`` (a slice of one input projection) ``+ h_{t-1} R^T + b_h`` and a
``Tanh`` or ``Relu``. :class:`UnrolledCells` follows those pieces as abstract values: a
:class:`~lstm_infer.importers.onnx.values.RecProd` (``h R^T + b_h``), a ``PreAct`` (their sum)
and a ``Hidden`` (step t of one :class:`~lstm_infer.importers.onnx.values.UnrolledCell`),
checks that the steps are consecutive and share their weights, and turns the concatenated
steps into the direction's output sequence (two directions concatenated on the features into
one bidirectional layer) and the last step into its final state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer._spec import Activation, DirectionWeights, RecurrentLayer
from lstm_infer.importers.onnx.base import LoweringBase
from lstm_infer.importers.onnx.values import (
    Cell,
    Const,
    DenseStage,
    FinalState,
    Hidden,
    InputStage,
    LayerStage,
    PreAct,
    RecProd,
    Seq,
    UnrolledCell,
    Window,
    _is_one,
    _Unsupported,
)


class UnrolledCells(LoweringBase):
    """The unrolled-RNN recognition of the lowering (a mixin of ``GraphLowering``)."""

    def _as_step(self, v: Any) -> tuple[Window, DenseStage] | None:
        """(window, projection) if ``v`` is one timestep of an input projection x W^T + b."""
        if not isinstance(v, Seq) or len(v.windows) != 1:
            return None
        stage, w = v.stage, v.windows[0]
        if not (isinstance(stage, DenseStage) and stage.weight is not None):
            return None
        if stage.activation is not None or w.stage is not stage or w.stop - w.start != 1:
            return None
        if isinstance(stage.parent, InputStage) and stage.parent.usage == "state":
            return None
        return w, stage

    def _as_state_projection(self, v: Any) -> RecProd | None:
        """h0[k] W^T + b on a state input, as the recurrent product of an unrolled step 0."""
        if not isinstance(v, Seq) or len(v.windows) > 1:
            return None
        stage = v.stage
        if not (isinstance(stage, DenseStage) and stage.weight is not None):
            return None
        parent = stage.parent
        if stage.activation is not None or not isinstance(parent, InputStage):
            return None
        if parent.usage == "sequence":
            return None
        rows = self._input_axis(parent, 0)
        if v.windows:
            w = v.windows[0]
            if w.stage is not parent or w.stop - w.start != 1 or w.role != rows:
                return None
            index = w.start
        elif _is_one(self.roles.size_of(rows)) and all(rows not in ax for ax in v.axes):
            index = 0  # a one-row state input, squeezed
        else:
            return None
        parent.usage = "state"
        self.roles.bind(self._input_axis(parent, 1), "B")
        return RecProd(("input", parent.name, index), stage.weight, stage.bias, v.axes)

    def _unrolled_sum(self, a: Any, b: Any) -> PreAct | None:
        """x_t W^T + b_x + (h R^T + b_h), in either order, else None."""
        for step, other in ((a, b), (b, a)):
            found = self._as_step(step)
            if found is None:
                continue
            rec = other
            if isinstance(other, Seq):
                rec = self._as_state_projection(other)
            if isinstance(rec, (RecProd, Const)):
                axes = _broadcast_axes(self, step.axes, getattr(rec, "axes", None), rec)
                return PreAct(step, rec, axes)
        return None

    def _unrolled_step(self, node: Any, pre: PreAct, act: str) -> Hidden:
        if act not in ("tanh", "relu"):
            raise _Unsupported(f"{act} of an unrolled recurrence (only RNN tanh/relu unroll)")
        window, proj = self._as_step(pre.step)  # type: ignore[misc]
        reverse = pre.step.flipped == window.role
        rec = pre.rec
        if isinstance(rec, RecProd) and isinstance(rec.prev, Hidden):
            cell = rec.prev.cell
            if cell.proj is not proj or cell.reverse != reverse:
                raise _Unsupported("the recurrence mixes two different input projections")
            if rec.prev.step != cell.seen - 1:
                raise _Unsupported("the unrolled steps are not consecutive")
        else:
            steps = self.roles.size_of(window.role)
            if not isinstance(steps, int):
                raise _Unsupported("an unrolled recurrence over a symbolic number of steps")
            cell = UnrolledCell(proj, reverse, act, steps, window.role)
            self.roles.bind(window.role, "T")
            others = [
                r
                for ax in pre.step.axes
                for r in ax
                if r != window.role and self.roles.kind_of(r) == "axis"
            ]
            for r in others:
                self.roles.bind(r, "B")
            if isinstance(rec, Const):
                cell.init_const = np.asarray(rec.value, np.float32)
            else:
                cell.init_h = rec.prev
        if window.start != cell.seen:
            raise _Unsupported(
                f"step {cell.seen} of the unrolled recurrence reads timestep {window.start}"
            )
        if act != cell.activation:
            raise _Unsupported("the unrolled recurrence changes its activation")
        if isinstance(rec, RecProd):
            if cell.recurrent is None:
                cell.recurrent, cell.rec_bias = rec.weight, rec.bias
                self._check_folded_zero_state(cell)
            elif not (
                np.array_equal(cell.recurrent, rec.weight)
                and _same_optional(cell.rec_bias, rec.bias)
            ):
                raise _Unsupported("the unrolled recurrence changes its recurrent weights")
        elif cell.seen:
            raise _Unsupported("a constant replaces the recurrent term after step 0")
        cell.seen += 1
        return Hidden(cell, cell.seen - 1, pre.axes)

    def _check_folded_zero_state(self, cell: UnrolledCell) -> None:
        """Step 0 of a zero state is folded to the constant b_h; check it is exactly that."""
        if cell.init_const is None:
            return
        H = cell.recurrent.shape[0]
        bias = np.zeros(H, np.float32) if cell.rec_bias is None else cell.rec_bias
        const = cell.init_const.reshape(-1, H) if cell.init_const.size % H == 0 else None
        if const is None or not np.allclose(const, bias[None, :], rtol=1e-6, atol=1e-7):
            raise _Unsupported(
                "step 0 adds a constant that is not the recurrent bias: the graph bakes in a "
                "non-zero initial state"
            )

    def _finish_cell(self, cell: UnrolledCell) -> Cell:
        if cell.cell is not None:
            return cell.cell
        if cell.seen != cell.steps:
            raise _Unsupported(f"the unrolled recurrence has {cell.seen} of its {cell.steps} steps")
        if cell.recurrent is None:
            raise _Unsupported(
                "the graph unrolls a single timestep, so its recurrent weights are not in it"
            )
        proj = cell.proj
        H = proj.weight.shape[0]
        bias = np.zeros(H, np.float32) if proj.bias is None else proj.bias.astype(np.float32)
        if cell.rec_bias is not None:
            bias = bias + cell.rec_bias
        dw = DirectionWeights(
            w=np.ascontiguousarray(proj.weight, np.float32),
            r=np.ascontiguousarray(cell.recurrent, np.float32),
            bias=bias.astype(np.float32),
            activations=(Activation.make("Relu" if cell.activation == "relu" else "Tanh"),),
        )
        cell.cell = Cell("rnn", dw, cell.reverse, init_h=cell.init_h)
        return cell.cell

    def _hidden_sequence(self, parts: list[Hidden], axis: int) -> Seq:
        """Concatenated per-step outputs of one unrolled direction: its output sequence."""
        cell = parts[0].cell
        order = [h.step for h in parts]
        want = list(range(cell.steps))
        if cell.reverse:
            want = want[::-1]
        if order != want:
            raise _Unsupported(f"concatenates steps {order} of an unrolled recurrence")
        ax = parts[0].axes[axis]
        if not all(_is_one(self.roles.size_of(r)) for r in ax):
            raise _Unsupported("the steps are not concatenated on their unit time axis")
        rnn = self._finish_cell(cell)
        if cell.stage is None:
            H = rnn.weights.w.shape[0]
            layer = RecurrentLayer(
                "rnn",
                int(rnn.weights.w.shape[1]),
                int(H),
                "reverse" if cell.reverse else "forward",
                [rnn.weights],
            )
            layer.validate()
            feat = self.roles.new("feat", H, "h")
            cell.stage = LayerStage(cell.proj.parent, (feat,), layer=layer, cells=[rnn])
            self._check_projection_input(cell)
        feat_role = cell.stage.features[0]
        axes = list(parts[0].axes)
        axes[axis] = ("T",)
        axes[-1] = (feat_role,)
        return Seq(cell.stage, tuple(axes))

    def _single_step_sequence(self, h: Hidden) -> Seq:
        """The output sequence of a direction unrolled over one step: its only Hidden."""
        units = [
            k for k, ax in enumerate(h.axes) if all(_is_one(self.roles.size_of(r)) for r in ax)
        ]
        if len(h.axes) != 3 or 0 not in units:
            raise _Unsupported("the single unrolled step is not shaped (1, batch, hidden)")
        return self._hidden_sequence([h], 0)

    def _check_projection_input(self, cell: UnrolledCell) -> None:
        parent = cell.proj.parent
        if isinstance(parent, InputStage):
            if parent.usage == "state":
                raise _Unsupported(f"graph input {parent.name!r} is used as a state and as X")
            parent.usage = "sequence"
            if not parent.features:
                parent.features = (self._input_axis(parent, 2),)

    def _concat_directions(self, fwd: Seq, bwd: Seq, axis: int) -> Seq:
        """[forward ; reverse] outputs of two unrolled directions: one bidirectional layer."""
        a, b = fwd.stage, bwd.stage
        ok = (
            isinstance(a, LayerStage)
            and isinstance(b, LayerStage)
            and a.parent is b.parent
            and a.layer.direction == "forward"
            and b.layer.direction == "reverse"
            and a.layer.hidden_size == b.layer.hidden_size
            and axis == len(fwd.axes) - 1
            and not fwd.windows
            and not bwd.windows
        )
        if not ok:
            raise _Unsupported(
                "only [forward; reverse] outputs of one layer concatenated on the features form "
                "a bidirectional layer"
            )
        if len(fwd.axes) != len(bwd.axes) or not all(
            self.roles.same(p, q) for p, q in zip(fwd.axes[:-1], bwd.axes[:-1])
        ):
            raise _Unsupported("the two directions have different layouts")
        H = a.layer.hidden_size
        layer = RecurrentLayer(
            "rnn",
            a.layer.input_size,
            H,
            "bidirectional",
            [a.layer.directions[0], b.layer.directions[0]],
        )
        layer.validate()
        d_role, h_role = self.roles.new("dir", 2), self.roles.new("feat", H, "h")
        stage = LayerStage(a.parent, (d_role, h_role), layer=layer, cells=[*a.cells, *b.cells])
        return Seq(stage, (*fwd.axes[:-1], (d_role, h_role)))

    def _as_final_state(self, v: Any) -> FinalState:
        if isinstance(v, FinalState):
            return v
        if not isinstance(v, Hidden):
            raise _Unsupported(f"{type(v).__name__} is not a final state")
        cell = v.cell
        if v.step != cell.steps - 1:
            raise _Unsupported(f"step {v.step} of {cell.steps} is used as the final state")
        rnn = self._finish_cell(cell)
        if len(v.axes) != 3 or not all(_is_one(self.roles.size_of(r)) for r in v.axes[0]):
            raise _Unsupported("the final state must be (1, batch, hidden)")
        s_role = self.roles.new("state", 1)
        return FinalState((rnn,), "h", ((s_role,), *v.axes[1:]))

    def _concat_states(self, parts: list[FinalState], axis: int) -> FinalState:
        if axis != 0 or any(
            self.roles.kind_of(p.axes[0][0]) != "state" or len(p.axes[0]) != 1 for p in parts
        ):
            raise _Unsupported("final states are concatenated on their first axis only")
        kinds = {p.kind for p in parts}
        if len(kinds) != 1:
            raise _Unsupported("concatenates h and c states")
        cells = tuple(c for p in parts for c in p.cells)
        s_role = self.roles.new("state", len(cells))
        return FinalState(cells, parts[0].kind, ((s_role,), *parts[0].axes[1:]))


def _same_optional(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(a, b))


def _broadcast_axes(
    low: LoweringBase,
    step_axes: tuple[tuple[str, ...], ...],
    rec_axes: tuple[tuple[str, ...], ...] | None,
    rec: Any,
) -> tuple[tuple[str, ...], ...]:
    """Axes of step + rec under numpy broadcasting (the step's roles win)."""
    if rec_axes is None:  # a Const
        shape = list(np.shape(rec.value))
        rec_axes = tuple((low.roles.new("unit", 1),) if d == 1 else ("?",) for d in shape)
    rank = max(len(step_axes), len(rec_axes))
    a = [None] * (rank - len(step_axes)) + list(step_axes)
    b = [None] * (rank - len(rec_axes)) + list(rec_axes)
    out = []
    for x, y in zip(a, b):
        if x is None:
            out.append(y if y != ("?",) else (low.roles.new("unit", 1),))
        elif y is None or y == ("?",):
            out.append(x)
        elif all(_is_one(low.roles.size_of(r)) for r in x):
            out.append(y)
        else:
            out.append(x)
    return tuple(out)
