"""Assembling the ModelSpec once the stack lowering has interpreted every node.

The graph outputs name a sequence (at most one) and final states. Following the sequence's
stage back to the input gives the chain of the plan: an optional embedding, recurrent layers
(dense maps before a layer folded into its input weights) and a dense head. :class:`Assembly`
checks the layouts of the input, the output and the states, groups the layers by the state
tensors that cover them (their rows must stack the layers' directions in order), and builds
the :class:`~lstm_infer._spec.Signature` naming every graph input and output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_infer._spec import (
    DenseLayer,
    DirectionWeights,
    ModelSpec,
    RecurrentLayer,
    Signature,
    state_role,
)
from lstm_infer.errors import ModelFormatError, UnsupportedModelError
from lstm_infer.importers.onnx.base import LoweringBase
from lstm_infer.importers.onnx.unrolled import UnrolledCells
from lstm_infer.importers.onnx.values import (
    DenseStage,
    EmbeddingStage,
    FinalState,
    Hidden,
    InputStage,
    LayerStage,
    Seq,
    Stage,
    _dim_prod,
    _Unsupported,
)


class Assembly(UnrolledCells):
    """The ModelSpec from the interpreted graph (a mixin of ``GraphLowering``)."""

    def _assemble(self) -> ModelSpec:
        seq_out: tuple[str, Seq] | None = None
        state_outs: list[tuple[str, FinalState]] = []
        for k, vi in enumerate(self.graph.outputs):
            v = self.values.get(vi.name)
            where = self._where(vi.name)
            try:
                if isinstance(v, Hidden) and k == 0 and v.cell.steps == 1:
                    # Unrolled over one step, the output sequence and the final state are
                    # the same tensor; exporters list the sequence first.
                    v = self._single_step_sequence(v)
                elif isinstance(v, Hidden):
                    v = self._as_final_state(v)
            except _Unsupported as exc:
                raise UnsupportedModelError(f"{where}: {exc}") from None
            if isinstance(v, FinalState):
                state_outs.append((vi.name, v))
            elif isinstance(v, Seq):
                if seq_out is not None:
                    raise UnsupportedModelError(
                        f"{where}: a second sequence output (after {seq_out[0]!r}); one "
                        "sequence output is supported"
                    )
                seq_out = (vi.name, v)
            else:
                raise UnsupportedModelError(
                    f"{where}: is {type(v).__name__ if v is not None else 'an unused tensor'}, "
                    "not the model's output sequence or a final state"
                )
        if seq_out is not None:
            final = seq_out[1].stage
        elif state_outs:
            final = self._last_layer_stage(state_outs)
        else:
            raise UnsupportedModelError("the graph has no outputs")
        chain: list[Stage] = []
        st: Stage | None = final
        while st is not None:
            chain.append(st)
            st = st.parent
        chain.reverse()
        root = chain[0]
        embedding = None
        if isinstance(root, EmbeddingStage):
            embedding = root.table
            x_name = root.tokens
            x_value = self.values[x_name]
        elif isinstance(root, InputStage):
            x_name = root.name
            x_value = self.values[x_name]
        else:  # pragma: no cover - every chain starts at an input
            raise UnsupportedModelError("the output does not depend on a graph input")
        layers, layer_stages, head = self._plan(chain)
        if not layers:
            raise UnsupportedModelError(
                f"{self._where(seq_out[0]) if seq_out else 'the graph'}: no recurrent layer "
                "between the input and the output"
            )
        layout = self._layout_of(x_value.axes, f"graph input {x_name!r}")
        outputs: dict[str, str] = {}
        style = "sequence"
        if seq_out is not None and self._is_node_y(seq_out[1], chain):
            # One node whose own Y is the output (through layout-neutral glue): the
            # operator's signature, with its layout.
            style = "onnx_node"
            if layout != layer_stages[0].layout:
                raise UnsupportedModelError(
                    f"{self._where(seq_out[0])}: the node's layout-{layer_stages[0].layout} Y "
                    f"is the output but its X comes in layout {layout}"
                )
        elif seq_out is not None:
            name, v = seq_out
            out_layout = self._check_output_sequence(name, v)
            if out_layout != layout:
                raise UnsupportedModelError(
                    f"{self._where(name)}: the input is "
                    f"{'batch' if layout else 'time'}-first but the output is "
                    f"{'batch' if out_layout else 'time'}-first"
                )
        self._check_state_layouts(layer_stages, state_outs, layout if style == "onnx_node" else 0)
        cells = {id(c): (li, d) for li, s in enumerate(layer_stages) for d, c in enumerate(s.cells)}
        inputs, constants, groups, state_roles = self._states(layer_stages, cells, state_outs)
        if style == "onnx_node" and layout == 1:
            constants = {
                k: np.ascontiguousarray(v.transpose(1, 0, 2)) for k, v in constants.items()
            }
        graph_inputs = [vi.name for vi in self.graph.inputs]
        ordered_inputs: dict[str, str] = {}
        for name in graph_inputs:
            if name == x_name:
                ordered_inputs["x"] = name
            elif name in inputs:
                ordered_inputs[inputs[name]] = name
            elif name in self.unused_inputs:
                ordered_inputs[f"unused:{name}"] = name
            else:
                raise UnsupportedModelError(
                    f"graph input {name!r} is neither the model's input sequence nor an "
                    "initial state of its recurrent layers"
                )
        for vi in self.graph.outputs:
            if seq_out is not None and vi.name == seq_out[0]:
                outputs["y"] = vi.name
            else:
                outputs[state_roles[vi.name]] = vi.name
        sig = Signature(
            style,
            layout,
            ordered_inputs,
            outputs,
            constants,
            state_groups=groups if len(groups) > 1 else [],
            declared=self._declared(),
        )
        spec = ModelSpec(layers, sig, embedding=embedding, head=head, source="onnx")
        try:
            spec.validate()
        except ModelFormatError as exc:
            raise ModelFormatError(f"the lowered graph is inconsistent: {exc}") from exc
        return spec

    def _where(self, tensor: str) -> str:
        node = self.producer.get(tensor)
        if node is None:
            return f"graph output {tensor!r}"
        return f"graph output {tensor!r} (node {node.name!r} ({node.op}))"

    def _last_layer_stage(self, state_outs: list[tuple[str, FinalState]]) -> Stage:
        stages = []
        for name, fs in state_outs:
            for c in fs.cells:
                owner = self._stage_of_cell(c)
                if owner is None:
                    raise UnsupportedModelError(
                        f"{self._where(name)}: the state of an unrolled recurrence whose "
                        "output sequence the graph does not use"
                    )
                stages.append(owner)
        last = stages[0]
        for s in stages:
            if _depth(s) > _depth(last):
                last = s
        return last

    def _stage_of_cell(self, c: Any) -> LayerStage | None:
        for s in self._all_layer_stages():
            if any(x is c for x in s.cells):
                return s
        return None

    def _all_layer_stages(self) -> list[LayerStage]:
        out: list[LayerStage] = []
        for v in self.values.values():
            st = getattr(v, "stage", None)
            while st is not None:
                if isinstance(st, LayerStage) and all(st is not o for o in out):
                    out.append(st)
                st = st.parent
        return out

    def _plan(
        self, chain: list[Stage]
    ) -> tuple[list[RecurrentLayer], list[LayerStage], list[DenseLayer]]:
        """Turn the chain of stages into layers (dense maps before a layer folded in) + head."""
        layers: list[RecurrentLayer] = []
        layer_stages: list[LayerStage] = []
        after: list[DenseStage] = []  # dense stages since the input or the last layer
        for st in chain[1:]:
            if isinstance(st, LayerStage):
                with_act = [d for d in after if d.activation is not None]
                if with_act:
                    raise UnsupportedModelError(
                        f"{with_act[0].node}: a dense layer with activation "
                        f"{with_act[0].activation!r} before a recurrent layer is not supported"
                    )
                layers.append(_fold_dense(st.layer, after) if after else st.layer)
                layer_stages.append(st)
                after = []
            elif isinstance(st, DenseStage):
                after.append(st)
            else:  # pragma: no cover - input stages only start chains
                raise UnsupportedModelError(f"unexpected stage {type(st).__name__}")
        # Dense maps after the last layer are the head; an activation right after a layer (or
        # after another activation) becomes an identity dense layer with that activation.
        head = []
        for st in after:
            width = _stage_width(self, st)
            weight = np.eye(width, dtype=np.float32) if st.weight is None else st.weight
            head.append(
                DenseLayer(np.ascontiguousarray(weight, np.float32), st.bias, st.activation)
            )
        for i, (a, b) in enumerate(zip(layers, layers[1:])):
            if b.input_size != a.output_size:
                raise UnsupportedModelError(
                    f"{layer_stages[i + 1].node or 'a recurrent layer'}: input_size "
                    f"{b.input_size} does not match the previous layer's output {a.output_size}"
                )
        return layers, layer_stages, head

    def _layout_of(self, axes: tuple[tuple[str, ...], ...], where: str) -> int:
        first = [self.roles.find(r) for r in axes[0] if not self.roles.droppable(r)]
        second = [self.roles.find(r) for r in axes[1] if not self.roles.droppable(r)]
        if first == ["T"] and second == ["B"]:
            return 0
        if first == ["B"] and second == ["T"]:
            return 1
        raise UnsupportedModelError(f"{where}: cannot tell its time and batch axes apart")

    def _check_output_sequence(self, name: str, v: Seq) -> int:
        where = self._where(name)
        if v.windows or v.flipped:
            raise UnsupportedModelError(f"{where}: a slice of a sequence is not supported")
        if len(v.axes) != 3:
            raise UnsupportedModelError(
                f"{where}: a sequence output must be (time, batch, features) or (batch, time, "
                f"features); this one has {len(v.axes)} axes (the recurrent node's own 4-D Y "
                "is supported only as the output of a one-layer graph without a head)"
            )
        axes = list(v.axes)
        if not self.roles.same(axes[2], v.stage.features):
            raise UnsupportedModelError(f"{where}: its last axis is not the features")
        return self._layout_of(tuple(axes), where)

    def _is_node_y(self, v: Seq, chain: list[Stage]) -> bool:
        """Whether ``v`` is the raw 4-D Y of the only (node) layer, straight from its input."""
        stage = v.stage
        if not (isinstance(stage, LayerStage) and len(chain) == 2 and len(v.axes) == 4):
            return False
        if not isinstance(chain[0], InputStage) or v.windows or v.flipped:
            return False
        d_role, h_role = stage.features if len(stage.features) == 2 else (None, None)
        want = ("T", d_role, "B", h_role) if stage.layout == 0 else ("B", "T", d_role, h_role)
        got = tuple(self.roles.find(ax[0]) if len(ax) == 1 else None for ax in v.axes)
        return got == want

    def _check_state_layouts(
        self,
        stages: list[LayerStage],
        state_outs: list[tuple[str, FinalState]],
        layout: int,
    ) -> None:
        """States are (rows, batch, size), or (batch, rows, size) for a layout-1 node model."""
        for name, fs in state_outs:
            roles = [self.roles.kind_of(ax[0]) if len(ax) == 1 else "" for ax in fs.axes]
            want = ["state", "batch", "feat"] if layout == 0 else ["batch", "state", "feat"]
            if roles != want:
                shape = "(layers * directions, batch, hidden)"
                if layout == 1:
                    shape = "(batch, directions, hidden)"
                raise UnsupportedModelError(
                    f"{self._where(name)}: a final state output must be shaped {shape}"
                )
        for st in stages:
            uses_inputs = any(
                src is not None and src[0] == "input"
                for c in st.cells
                for src in (c.init_h, c.init_c)
            )
            if uses_inputs and st.layout != layout:
                raise UnsupportedModelError(
                    f"{st.node}: a layout-{st.layout} node takes (batch, directions, hidden) "
                    "states; a multi-node graph's state inputs must be (layers * directions, "
                    "batch, hidden)"
                )

    def _states(
        self,
        stages: list[LayerStage],
        cells: dict[int, tuple[int, int]],
        state_outs: list[tuple[str, FinalState]],
    ) -> tuple[dict[str, str], dict[str, np.ndarray], list[int], dict[str, str]]:
        """State groups and the signature roles of state inputs, outputs and constants."""
        L = len(stages)
        # For each state tensor: ("in"/"out", kind) and the layers it covers.
        covers: dict[str, tuple[str, str, list[int]]] = {}
        for li, st in enumerate(stages):
            for d, c in enumerate(st.cells):
                for kind in ("h", "c"):
                    src = getattr(c, f"init_{kind}")
                    if src is not None and src[0] == "input":
                        name = src[1]
                        entry = covers.setdefault(name, ("in", kind, []))
                        if entry[1] != kind:
                            raise UnsupportedModelError(
                                f"graph input {name!r} is used as both an h and a c state"
                            )
                        entry[2].append((li, d, src[2]))
        for name, fs in state_outs:
            where = self._where(name)
            entries = []
            for c in fs.cells:
                if id(c) not in cells:
                    raise UnsupportedModelError(
                        f"{where}: the state of a layer that is not on the path to the output"
                    )
                entries.append((*cells[id(c)], len(entries)))
            covers[name] = ("out", fs.kind, entries)
        bounds = {0, L}
        for name, (io, kind, entries) in covers.items():
            where = self._where(name) if io == "out" else f"graph input {name!r}"
            entries.sort(key=lambda e: e[2])
            pairs = [(li, d) for li, d, _ in entries]
            if [e[2] for e in entries] != list(range(len(entries))):
                raise UnsupportedModelError(
                    f"{where}: the recurrent layers use its rows {[e[2] for e in entries]}; "
                    "each row must belong to exactly one layer direction, in order"
                )
            lo, hi = pairs[0][0], pairs[-1][0] + 1
            expected = [
                (li, d)
                for li in range(lo, hi)
                if kind == "h" or stages[li].layer.cell == "lstm"
                for d in range(stages[li].layer.num_directions)
            ]
            if pairs != expected:
                raise UnsupportedModelError(
                    f"{where}: its rows must stack the layers' directions in order "
                    f"(layer, direction) {expected}, got {pairs}"
                )
            if io == "in":
                declared = self.roles.size_of(self._input_axis(self.input_stages[name], 0))
                if isinstance(declared, int) and declared != len(pairs):
                    raise UnsupportedModelError(
                        f"{where}: declares {declared} rows; the layers use {len(pairs)}"
                    )
            bounds.update((lo, hi))
        edges = sorted(bounds)
        groups = [(a, b) for a, b in zip(edges, edges[1:])]
        group_of = {li: g for g, (a, b) in enumerate(groups) for li in range(a, b)}
        inputs: dict[str, str] = {}
        roles: dict[str, str] = {}
        for name, (io, kind, entries) in covers.items():
            g = group_of[entries[0][0]]
            if (
                group_of[entries[-1][0]] != g
                or entries[0][0] != groups[g][0]
                or (entries[-1][0] != groups[g][1] - 1)
            ):
                where = self._where(name) if io == "out" else f"graph input {name!r}"
                raise UnsupportedModelError(
                    f"{where}: covers layers that other state tensors split differently"
                )
            base = ("initial_" if io == "in" else "y_") + kind
            role = state_role(base, g)
            if io == "in":
                if role in inputs.values():
                    raise UnsupportedModelError(
                        f"two graph inputs are the {base} of layers {groups[g]}"
                    )
                inputs[name] = role
            else:
                roles[name] = role
        constants: dict[str, np.ndarray] = {}
        for g, (a, b) in enumerate(groups):
            for kind in ("h", "c"):
                srcs = [
                    getattr(c, f"init_{kind}")
                    for st in stages[a:b]
                    if kind == "h" or st.layer.cell == "lstm"
                    for c in st.cells
                ]
                kinds = {None if s is None else s[0] for s in srcs}
                if "input" in kinds and kinds != {"input"}:
                    raise UnsupportedModelError(
                        f"layers {a}..{b - 1} take their initial {kind} partly from a graph input "
                        "and partly from constants"
                    )
                if "const" in kinds:
                    batch = next(s[1].shape[0] for s in srcs if s is not None)
                    rows = [s[1] if s is not None else None for s in srcs]
                    size = next(r.shape[1] for r in rows if r is not None)
                    stacked = np.stack(
                        [r if r is not None else np.zeros((batch, size), np.float32) for r in rows]
                    )
                    constants[state_role(f"initial_{kind}", g)] = stacked
        return inputs, constants, [b - a for a, b in groups], roles

    def _declared(self) -> dict[str, tuple[tuple[int | str, ...], str]]:
        out: dict[str, tuple[tuple[int | str, ...], str]] = {}
        for vi in [*self.graph.inputs, *self.graph.outputs]:
            t = vi.type
            if t.shape is None or t.sequence:
                continue
            dims = tuple(d if d is not None else f"{vi.name}_dim{k}" for k, d in enumerate(t.shape))
            out[vi.name] = (dims, t.dtype if t.dtype != "undefined" else "float32")
        return out


def _depth(stage: Stage) -> int:
    n = 0
    while stage.parent is not None:
        stage = stage.parent
        n += 1
    return n


def _stage_width(low: LoweringBase, st: DenseStage) -> int:
    if st.weight is not None:
        return int(st.weight.shape[0])
    return int(_dim_prod(low.roles.size_of(r) for r in st.features))


def _fold_dense(layer: RecurrentLayer, pending: list[DenseStage]) -> RecurrentLayer:
    """A layer whose input first goes through affine maps: fold them into W and the bias."""
    A: np.ndarray | None = None
    a: np.ndarray | None = None
    for st in pending:
        W = st.weight
        b = st.bias
        if W is None:
            width = (A.shape[0] if A is not None else None) or (len(b) if b is not None else 0)
            W = np.eye(width, dtype=np.float32)
        A = W if A is None else W @ A
        a = W @ a if a is not None else None
        if b is not None:
            a = b if a is None else a + b
    assert A is not None
    dirs = []
    for dw in layer.directions:
        bias = dw.bias + (dw.w @ a if a is not None else 0.0)
        dirs.append(
            DirectionWeights(
                w=np.ascontiguousarray(dw.w @ A, np.float32),
                r=dw.r,
                bias=np.asarray(bias, np.float32),
                activations=dw.activations,
                bias_rn=dw.bias_rn,
                peephole=dw.peephole,
                proj=dw.proj,
            )
        )
    folded = RecurrentLayer(
        layer.cell,
        int(A.shape[1]),
        layer.hidden_size,
        layer.direction,
        dirs,
        proj_size=layer.proj_size,
        clip=layer.clip,
        input_forget=layer.input_forget,
        linear_before_reset=layer.linear_before_reset,
    )
    folded.validate()
    return folded
