"""Build single-node ONNX models (RNN / LSTM / GRU) for tests.

``build_model`` turns a dict of formal-name -> array plus attributes into a ModelProto: any of
W/R/B/P/initial states/sequence_lens can be an initializer or a graph input, missing optional
inputs become ``''`` in the node, and any subset of outputs can be requested. ``RecurrentCase``
describes one randomized configuration (shapes, options, placements, seed) and builds the model,
the feeds and the attribute dict that ``reference.run_reference`` takes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from reference import GATES, INPUT_NAMES, OUTPUT_NAMES

Placement = Literal["missing", "initializer", "input"]
MIN_OPSET, MAX_OPSET = 7, 22
LAYOUT_MIN_OPSET = 14  # the layout attribute exists from opset 14 on


class Built(NamedTuple):
    """A built model, the feeds for its graph inputs, and formal -> graph output names."""

    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    outputs: dict[str, str]


def _dims(
    formal: str,
    shape: tuple[int, ...],
    layout: int,
    symbolic: bool,
) -> list[int | str]:
    """Shape for a graph input/output; batch and sequence dims named when ``symbolic``."""
    if not symbolic:
        return list(shape)
    if formal == "X":
        return ["batch", "seq", shape[2]] if layout else ["seq", "batch", shape[2]]
    if formal == "Y":
        return ["batch", "seq", *shape[2:]] if layout else ["seq", shape[1], "batch", shape[3]]
    if formal in ("initial_h", "initial_c", "Y_h", "Y_c"):
        return ["batch", *shape[1:]] if layout else [shape[0], "batch", shape[2]]
    if formal == "sequence_lens":
        return ["batch"]
    return list(shape)


def output_shapes(
    op_type: str, x_shape: tuple[int, ...], num_directions: int, hidden: int, layout: int
) -> dict[str, tuple[int, ...]]:
    """Shapes of Y / Y_h (/ Y_c) for an input of shape ``x_shape``."""
    if layout:
        batch, seq = x_shape[:2]
        y, state = (batch, seq, num_directions, hidden), (batch, num_directions, hidden)
    else:
        seq, batch = x_shape[:2]
        y, state = (seq, num_directions, batch, hidden), (num_directions, batch, hidden)
    shapes = {"Y": y, "Y_h": state}
    if op_type == "LSTM":
        shapes["Y_c"] = state
    return shapes


def build_model(
    op_type: str,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    *,
    initializers: Collection[str] = ("W", "R", "B", "P"),
    outputs: Sequence[str] | None = None,
    opset: int = MAX_OPSET,
    symbolic_dims: bool = False,
    tensor_names: Mapping[str, str] | None = None,
) -> Built:
    """Build a one-node ``op_type`` model.

    ``arrays`` maps formal input names (``X``, ``W``, ``R``, ``B``, ``sequence_lens``,
    ``initial_h``, ``initial_c``, ``P``) to values; absent names are omitted (``''`` in the node
    when a later input is present). Names in ``initializers`` become initializers, the rest graph
    inputs (X is always an input). ``outputs`` is the subset of formal outputs to produce (default
    all). ``tensor_names`` renames graph tensors (formal -> graph name). ``hidden_size`` is set from
    R unless given in ``attrs``; None-valued attributes are dropped.
    """
    if op_type not in GATES:
        raise ValueError(f"unsupported op_type {op_type!r}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset {opset} outside {MIN_OPSET}..{MAX_OPSET}")
    unknown = set(arrays) - set(INPUT_NAMES[op_type])
    if unknown or "X" not in arrays or "W" not in arrays or "R" not in arrays:
        raise ValueError(f"bad inputs {sorted(arrays)} for {op_type}")
    if "X" in initializers:
        raise ValueError("X must be a graph input")
    names = {n: n for n in (*INPUT_NAMES[op_type], *OUTPUT_NAMES[op_type])}
    names.update(tensor_names or {})

    node_attrs = {k: v for k, v in (attrs or {}).items() if v is not None}
    layout = int(node_attrs.get("layout", 0))
    if "layout" in node_attrs and opset < LAYOUT_MIN_OPSET:
        raise ValueError(f"layout attribute needs opset >= {LAYOUT_MIN_OPSET}, got {opset}")
    hidden = int(np.shape(arrays["R"])[-1])
    node_attrs.setdefault("hidden_size", hidden)
    direction = node_attrs.get("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    num_directions = 2 if direction == "bidirectional" else 1

    x = np.asarray(arrays["X"])
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    node_inputs, graph_inputs, inits, feeds = [], [], [], {}
    for formal in INPUT_NAMES[op_type]:
        if formal not in arrays:
            node_inputs.append("")
            continue
        value = np.asarray(arrays[formal])
        if formal == "sequence_lens":
            value = value.astype(np.int32)
        elif value.dtype != x.dtype:
            value = value.astype(x.dtype)
        name = names[formal]
        node_inputs.append(name)
        if formal in initializers:
            inits.append(numpy_helper.from_array(value, name))
        else:
            dtype = TensorProto.INT32 if formal == "sequence_lens" else elem
            dims = _dims(formal, value.shape, layout, symbolic_dims)
            graph_inputs.append(helper.make_tensor_value_info(name, dtype, dims))
            feeds[name] = value
    while node_inputs and node_inputs[-1] == "":
        node_inputs.pop()

    wanted = list(OUTPUT_NAMES[op_type] if outputs is None else outputs)
    if not wanted or set(wanted) - set(OUTPUT_NAMES[op_type]):
        raise ValueError(f"bad outputs {wanted} for {op_type}")
    node_outputs = [names[o] if o in wanted else "" for o in OUTPUT_NAMES[op_type]]
    while node_outputs[-1] == "":
        node_outputs.pop()
    shapes = output_shapes(op_type, x.shape, num_directions, hidden, layout)
    graph_outputs = [
        helper.make_tensor_value_info(names[o], elem, _dims(o, shapes[o], layout, symbolic_dims))
        for o in OUTPUT_NAMES[op_type]
        if o in wanted
    ]

    node = helper.make_node(op_type, node_inputs, node_outputs, name=op_type.lower(), **node_attrs)
    graph = helper.make_graph(
        [node], f"{op_type.lower()}_graph", graph_inputs, graph_outputs, inits
    )
    opset_ids = [helper.make_opsetid("", opset)]
    # IR >= 4 lets initializers stay out of the graph inputs, whatever the opset.
    ir_version = max(helper.find_min_ir_version_for(opset_ids), 4)
    model = helper.make_model(
        graph, opset_imports=opset_ids, ir_version=ir_version, producer_name="lstm_infer-tests"
    )
    onnx.checker.check_model(model)
    return Built(model, feeds, {o: names[o] for o in wanted})


def uniform(rng: np.random.Generator, shape: Sequence[int], scale: float) -> np.ndarray:
    """Float32 samples from U(-scale, scale)."""
    return rng.uniform(-scale, scale, size=tuple(shape)).astype(np.float32)


def random_arrays(
    op_type: str,
    *,
    seq_length: int,
    batch_size: int,
    input_size: int,
    hidden_size: int,
    num_directions: int = 1,
    layout: int = 0,
    rng: np.random.Generator,
    weight_scale: float | None = None,
) -> dict[str, np.ndarray]:
    """All inputs of ``op_type`` (except sequence_lens), well scaled, as float32.

    Weights, biases and peepholes are U(+-1/sqrt(hidden)) (PyTorch's init), X and the initial
    states U(-1, 1).
    """
    gates = GATES[op_type]
    scale = 1.0 / np.sqrt(hidden_size) if weight_scale is None else weight_scale
    x_shape = (batch_size, seq_length) if layout else (seq_length, batch_size)
    state_shape = (
        (batch_size, num_directions, hidden_size)
        if layout
        else (num_directions, batch_size, hidden_size)
    )
    arrays = {
        "X": uniform(rng, (*x_shape, input_size), 1.0),
        "W": uniform(rng, (num_directions, gates * hidden_size, input_size), scale),
        "R": uniform(rng, (num_directions, gates * hidden_size, hidden_size), scale),
        "B": uniform(rng, (num_directions, 2 * gates * hidden_size), scale),
        "initial_h": uniform(rng, state_shape, 1.0),
    }
    if op_type == "LSTM":
        arrays["initial_c"] = uniform(rng, state_shape, 1.0)
        arrays["P"] = uniform(rng, (num_directions, 3 * hidden_size), scale)
    return arrays


@dataclass(frozen=True)
class RecurrentCase:
    """One test configuration of a single RNN/LSTM/GRU node; values derive from ``seed``."""

    op_type: str
    seq_length: int
    batch_size: int
    input_size: int
    hidden_size: int
    direction: str = "forward"
    layout: int = 0
    opset: int = MAX_OPSET
    weights: Placement = "initializer"
    bias: Placement = "initializer"
    initial_state: Placement = "missing"
    peepholes: Placement = "missing"
    lengths: tuple[int, ...] | None = None
    lengths_as: Placement = "input"
    activations: tuple[str, ...] | None = None
    activation_alpha: tuple[float, ...] | None = None
    activation_beta: tuple[float, ...] | None = None
    clip: float | None = None
    linear_before_reset: int = 0
    input_forget: int = 0
    outputs: tuple[str, ...] | None = None
    symbolic_dims: bool = False
    seed: int = 0
    tensor_names: tuple[tuple[str, str], ...] = field(default=())

    @property
    def num_directions(self) -> int:
        """2 for bidirectional, else 1."""
        return 2 if self.direction == "bidirectional" else 1

    def attrs(self) -> dict[str, Any]:
        """ONNX attributes of the node (unset ones omitted)."""
        attrs: dict[str, Any] = {"hidden_size": self.hidden_size}
        if self.direction != "forward":
            attrs["direction"] = self.direction
        if self.layout:
            attrs["layout"] = self.layout
        optional = {
            "activations": list(self.activations) if self.activations else None,
            "activation_alpha": list(self.activation_alpha) if self.activation_alpha else None,
            "activation_beta": list(self.activation_beta) if self.activation_beta else None,
            "clip": self.clip,
        }
        attrs.update({k: v for k, v in optional.items() if v is not None})
        if self.op_type == "GRU" and self.linear_before_reset:
            attrs["linear_before_reset"] = self.linear_before_reset
        if self.op_type == "LSTM" and self.input_forget:
            attrs["input_forget"] = self.input_forget
        return attrs

    def placements(self) -> dict[str, Placement]:
        """Where each formal input goes."""
        places: dict[str, Placement] = {
            "X": "input",
            "W": self.weights,
            "R": self.weights,
            "B": self.bias,
            "initial_h": self.initial_state,
            "sequence_lens": self.lengths_as if self.lengths is not None else "missing",
        }
        if self.op_type == "LSTM":
            places["initial_c"] = self.initial_state
            places["P"] = self.peepholes
        return places

    def arrays(self) -> dict[str, np.ndarray]:
        """Return the present inputs by formal name (float32; sequence_lens int32)."""
        rng = np.random.default_rng(self.seed)
        all_arrays = random_arrays(
            self.op_type,
            seq_length=self.seq_length,
            batch_size=self.batch_size,
            input_size=self.input_size,
            hidden_size=self.hidden_size,
            num_directions=self.num_directions,
            layout=self.layout,
            rng=rng,
        )
        if self.lengths is not None:
            all_arrays["sequence_lens"] = np.asarray(self.lengths, dtype=np.int32)
        return {
            name: value
            for name, value in all_arrays.items()
            if self.placements().get(name, "missing") != "missing"
        }

    def build(self) -> Built:
        """Build the ModelProto, its feeds and its output names."""
        places = self.placements()
        return build_model(
            self.op_type,
            self.arrays(),
            self.attrs(),
            initializers=[n for n, p in places.items() if p == "initializer"],
            outputs=self.outputs,
            opset=self.opset,
            symbolic_dims=self.symbolic_dims,
            tensor_names=dict(self.tensor_names),
        )


def layout0_twin(case: RecurrentCase) -> Built:
    """Build ``case`` (any layout) as a layout-0 model with the same values, for onnxruntime."""
    arrays = {
        k: batch_major_to_time_major(k, v) if case.layout else v for k, v in case.arrays().items()
    }
    attrs = {k: v for k, v in case.attrs().items() if k != "layout"}
    places = case.placements()
    return build_model(
        case.op_type,
        arrays,
        attrs,
        initializers=[n for n, p in places.items() if p == "initializer"],
        outputs=case.outputs,
        opset=case.opset,
        tensor_names=dict(case.tensor_names),
    )


def batch_major_to_time_major(formal: str, value: np.ndarray) -> np.ndarray:
    """Convert a layout-1 tensor (input or output, by formal name) to layout 0."""
    if formal == "Y":
        return value.transpose(1, 2, 0, 3)
    if formal in ("X", "initial_h", "initial_c", "Y_h", "Y_c"):
        return value.transpose(1, 0, 2)
    return value


def time_major_to_batch_major(formal: str, value: np.ndarray) -> np.ndarray:
    """Convert a layout-0 tensor (input or output, by formal name) to layout 1."""
    if formal == "Y":
        return value.transpose(2, 0, 1, 3)
    return batch_major_to_time_major(formal, value)


def ort_run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``model`` in onnxruntime (CPU, one thread); outputs keyed by graph output name."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))


def inputs_to_initializers(
    model: onnx.ModelProto, values: Mapping[str, np.ndarray], names: Collection[str]
) -> onnx.ModelProto:
    """Copy ``model``, turning its graph inputs ``names`` into initializers set to ``values``."""
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    graph = frozen.graph
    kept = [vi for vi in graph.input if vi.name not in names]
    del graph.input[:]
    graph.input.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(np.asarray(values[n]), n) for n in names)
    frozen.ir_version = max(frozen.ir_version, 4)
    onnx.checker.check_model(frozen)
    return frozen
