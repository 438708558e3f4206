"""The internal model description every importer produces and the engine compiles.

Importers (ONNX, PyTorch, native file, numpy constructor) convert their weights once into these
classes: gate order and bias layout are the kernels' own, so nothing downstream knows where a
model came from.

Internal gate orders: LSTM ``i, f, g, o``; GRU ``z, r, n``; RNN one gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lstm_infer.errors import ModelFormatError

CELLS = ("rnn", "lstm", "gru")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
DIRECTIONS = ("forward", "reverse", "bidirectional")

# ONNX activation names in the order of enum li_activation_kind (src_c/li_kernels.h).
ACTIVATIONS = (
    "Relu",
    "Tanh",
    "Sigmoid",
    "Affine",
    "LeakyRelu",
    "ThresholdedRelu",
    "ScaledTanh",
    "HardSigmoid",
    "Elu",
    "Softsign",
    "Softplus",
)
# ONNX defaults for activation_alpha / activation_beta where the function uses them.
ACTIVATION_DEFAULTS = {
    "Affine": (1.0, 0.0),
    "LeakyRelu": (0.01, 0.0),
    "ThresholdedRelu": (1.0, 0.0),
    "ScaledTanh": (1.0, 1.0),
    "HardSigmoid": (0.2, 0.5),
    "Elu": (1.0, 0.0),
}
# Activations per direction (f, g, h) and the defaults of each cell.
ACTIVATION_SLOTS = {"rnn": 1, "lstm": 3, "gru": 2}
DEFAULT_ACTIVATIONS = {
    "rnn": ("Tanh",),
    "lstm": ("Sigmoid", "Tanh", "Tanh"),
    "gru": ("Sigmoid", "Tanh"),
}


@dataclass(frozen=True)
class Activation:
    """One ONNX activation function with its alpha and beta."""

    name: str
    alpha: float = 0.0
    beta: float = 0.0

    @classmethod
    def make(cls, name: str, alpha: float | None = None, beta: float | None = None) -> Activation:
        """Build from a case-insensitive name, filling ONNX's default alpha/beta."""
        canonical = {a.lower(): a for a in ACTIVATIONS}.get(str(name).lower())
        if canonical is None:
            raise ModelFormatError(
                f"unsupported activation {name!r}; supported: {', '.join(ACTIVATIONS)}"
            )
        da, db = ACTIVATION_DEFAULTS.get(canonical, (0.0, 0.0))
        return cls(
            canonical,
            float(da if alpha is None else alpha),
            float(db if beta is None else beta),
        )

    @property
    def code(self) -> int:
        return ACTIVATIONS.index(self.name)


def default_activations(cell: str) -> tuple[Activation, ...]:
    return tuple(Activation.make(n) for n in DEFAULT_ACTIVATIONS[cell])


@dataclass
class DirectionWeights:
    """Weights of one direction of a layer, internal gate order, float32.

    Shapes: ``w`` (G*H, I); ``r`` (G*H, Hr); ``bias`` (G*H,) added to the input projection
    (input and recurrent biases folded together wherever the equations allow);
    ``bias_rn`` (H,) the GRU's recurrent n-gate bias when ``linear_before_reset`` keeps it
    inside the reset product, else None; ``peephole`` (3, H) for i, f, o or None;
    ``proj`` (Hr, H) for an LSTM with projection or None.
    """

    w: np.ndarray
    r: np.ndarray
    bias: np.ndarray
    activations: tuple[Activation, ...]
    bias_rn: np.ndarray | None = None
    peephole: np.ndarray | None = None
    proj: np.ndarray | None = None


@dataclass
class RecurrentLayer:
    """One RNN/LSTM/GRU layer: one or two directions of the same cell."""

    cell: str
    input_size: int
    hidden_size: int
    direction: str
    directions: list[DirectionWeights]
    proj_size: int = 0
    clip: float | None = None
    input_forget: bool = False
    linear_before_reset: bool = False
    # "float32", "bfloat16" or "int8": how the kernels store w, r and proj (lstm_infer.quantize).
    # The arrays above always hold the (dequantized) float32 values.
    weight_format: str = "float32"

    @property
    def num_directions(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    @property
    def state_size(self) -> int:
        """Size of the h this layer emits and feeds back (proj_size when projecting)."""
        return self.proj_size or self.hidden_size

    @property
    def output_size(self) -> int:
        return self.num_directions * self.state_size

    def validate(self) -> None:
        """Check every shape against the sizes; raise ModelFormatError naming the bad one."""
        if self.cell not in CELLS:
            raise ModelFormatError(f"unknown cell {self.cell!r}; expected one of {CELLS}")
        if self.weight_format not in ("float32", "bfloat16", "int8"):
            raise ModelFormatError(f"unknown weight_format {self.weight_format!r}")
        if self.direction not in DIRECTIONS:
            raise ModelFormatError(f"unknown direction {self.direction!r}")
        for name, v in (("input_size", self.input_size), ("hidden_size", self.hidden_size)):
            if not (isinstance(v, int) and 0 < v <= 1 << 20):
                raise ModelFormatError(f"{name} must be an int in [1, 2**20], got {v!r}")
        if self.proj_size and (self.cell != "lstm" or not 0 < self.proj_size < self.hidden_size):
            raise ModelFormatError(
                f"proj_size={self.proj_size} needs an LSTM and 0 < proj_size < hidden_size"
            )
        if len(self.directions) != self.num_directions:
            raise ModelFormatError(
                f"direction {self.direction!r} needs {self.num_directions} weight sets, "
                f"got {len(self.directions)}"
            )
        G, H, Hr, In = GATES[self.cell], self.hidden_size, self.state_size, self.input_size
        for d, dw in enumerate(self.directions):
            expect = {"w": (G * H, In), "r": (G * H, Hr), "bias": (G * H,)}
            if dw.bias_rn is not None:
                expect["bias_rn"] = (H,)
            if dw.peephole is not None:
                expect["peephole"] = (3, H)
            if dw.proj is not None:
                expect["proj"] = (Hr, H)
            for name, shape in expect.items():
                arr = getattr(dw, name)
                if arr.shape != shape:
                    raise ModelFormatError(
                        f"{self.cell} layer direction {d}: {name} has shape {arr.shape}, "
                        f"expected {shape} (hidden_size={H}, input_size={In})"
                    )
            if bool(self.proj_size) != (dw.proj is not None):
                raise ModelFormatError("proj weights must be given exactly when proj_size > 0")
            if len(dw.activations) != ACTIVATION_SLOTS[self.cell]:
                raise ModelFormatError(
                    f"a {self.cell} direction takes {ACTIVATION_SLOTS[self.cell]} activations, "
                    f"got {len(dw.activations)}"
                )


@dataclass
class DenseLayer:
    """A dense layer after the recurrent stack: y = act(x W^T + b). W is (out, in)."""

    weight: np.ndarray
    bias: np.ndarray | None = None
    # None, "relu", "leaky_relu" (torch's default slope 0.01), "tanh", "sigmoid", "softmax",
    # "log_softmax"
    activation: str | None = None


HEAD_ACTIVATIONS = (None, "relu", "leaky_relu", "tanh", "sigmoid", "softmax", "log_softmax")
# The slope of "leaky_relu" for negative inputs: torch's nn.LeakyReLU / F.leaky_relu default.
LEAKY_RELU_SLOPE = 0.01


@dataclass
class TensorInfo:
    """Name, shape (ints, or strings for symbolic dims) and dtype of a model input/output."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def __repr__(self) -> str:
        return f"TensorInfo(name={self.name!r}, shape={self.shape}, dtype={self.dtype!r})"


@dataclass
class Signature:
    """How a model's named inputs and outputs map onto the engine's tensors.

    ``style`` "onnx_node": the ONNX RNN/LSTM/GRU operator's own tensors (one layer): Y is
    (T, D, B, Hr) for layout 0 and (B, T, D, Hr) for layout 1; Y_h/Y_c are (D, B, H) or
    (B, D, H). ``style`` "sequence": a stack as PyTorch runs it: output (T, B, F) or batch-first
    (B, T, F); states (L*D, B, H) whatever the layout.

    ``inputs`` / ``outputs`` map a role ("x", "sequence_lens", "initial_h", "initial_c" /
    "y", "y_h", "y_c") to the user-facing name; ``constants`` holds roles baked into the model
    (e.g. an initial_h initializer).

    ``weight_inputs`` (onnx_node only) maps the operator's formal weight names ("W", "R", "B",
    "P") to graph input names when the graph feeds weights at run time, as the ONNX backend
    conformance models do; ``node_attributes`` then keeps the operator's attributes so the
    layer can be rebuilt from the fed weights.

    ``state_groups`` ("sequence" only) splits the stack into consecutive runs of layers that
    each have their own state tensors, as a model built from several recurrent modules has:
    the number of layers in each run (empty: one run of every layer). The state roles of run
    ``g > 0`` carry the suffix ``:g`` ("initial_h:1", "y_c:1"); see :func:`state_role`.

    ``declared`` maps input/output names to the (shape, dtype) the source graph declares,
    reported by ``Model.inputs``/``outputs`` instead of the derived ones. Roles starting with
    ``unused:`` name graph inputs the model accepts and ignores.
    """

    style: str = "onnx_node"
    layout: int = 0
    inputs: dict[str, str] = field(default_factory=lambda: {"x": "X"})
    outputs: dict[str, str] = field(default_factory=lambda: {"y": "Y", "y_h": "Y_h"})
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    weight_inputs: dict[str, str] = field(default_factory=dict)
    node_attributes: dict = field(default_factory=dict)
    state_groups: list[int] = field(default_factory=list)
    declared: dict[str, tuple[tuple[int | str, ...], str]] = field(default_factory=dict)

    def validate(self) -> None:
        """Check the invariants every model relies on (files can say anything)."""
        if self.style not in ("onnx_node", "sequence"):
            raise ModelFormatError(f"unknown signature style {self.style!r}")
        if self.layout not in (0, 1) or isinstance(self.layout, bool):
            raise ModelFormatError(f"signature layout must be 0 or 1, got {self.layout!r}")
        for what, table in (("inputs", self.inputs), ("outputs", self.outputs)):
            if not isinstance(table, dict) or not table:
                raise ModelFormatError(f"signature {what} must be a non-empty mapping")
            for role, name in table.items():
                if not isinstance(role, str) or not isinstance(name, str) or not name:
                    raise ModelFormatError(
                        f"signature {what}: role {role!r} -> name {name!r} must both be "
                        "non-empty strings"
                    )
        if "x" not in self.inputs:
            raise ModelFormatError("signature inputs lack the sequence input (role 'x')")
        for role in self.inputs:
            base, _ = parse_state_role(role)
            known = base in ("x", "sequence_lens", "initial_h", "initial_c", "W", "R", "B", "P")
            if not known and not role.startswith("unused:"):
                raise ModelFormatError(f"signature inputs: unknown role {role!r}")
        for role in self.outputs:
            if parse_state_role(role)[0] not in ("y", "y_h", "y_c"):
                raise ModelFormatError(f"signature outputs: unknown role {role!r}")


STATE_ROLES = ("initial_h", "initial_c", "y_h", "y_c")


# Largest token table (vocab x gates x padded hidden floats) folded into a first layer.
TOKEN_TABLE_MAX_BYTES = 64 << 20


def folds_embedding(embedding: np.ndarray | None, layer: RecurrentLayer) -> bool:
    """True when the first layer's input projection becomes a per-token table.

    With an embedding, ``W emb[v] + b`` has only ``vocab`` possible values: precomputing them
    (in float64, rounded once) replaces the input matvec of every step by one row copy. Large
    vocabularies keep the matvec: the table would cost more memory than it saves.
    """
    if embedding is None:
        return False
    hp = -(-layer.hidden_size // 16) * 16
    return embedding.shape[0] * GATES[layer.cell] * hp * 4 <= TOKEN_TABLE_MAX_BYTES


def state_role(base: str, group: int) -> str:
    """The signature role of state ``base`` ("initial_h", "y_c", ...) of state group ``group``."""
    return base if group == 0 else f"{base}:{group}"


def parse_state_role(role: str) -> tuple[str, int]:
    """Inverse of :func:`state_role`: ("y_h:2") -> ("y_h", 2); other roles give group 0."""
    base, _, group = role.partition(":")
    if base in STATE_ROLES and group.isdigit():
        return base, int(group)
    return role, 0


@dataclass
class ModelSpec:
    """A whole model: optional embedding, a stack of recurrent layers, an optional dense head."""

    layers: list[RecurrentLayer]
    signature: Signature
    embedding: np.ndarray | None = None  # (vocab, dim)
    head: list[DenseLayer] = field(default_factory=list)
    source: str = ""

    def validate(self) -> None:
        self.signature.validate()
        if not self.layers:
            raise ModelFormatError("a model needs at least one recurrent layer")
        for layer in self.layers:
            layer.validate()
        if self.embedding is not None:
            if self.embedding.ndim != 2 or self.embedding.shape[1] != self.layers[0].input_size:
                raise ModelFormatError(
                    f"embedding has shape {self.embedding.shape}, expected (vocab, "
                    f"{self.layers[0].input_size})"
                )
        for i, (prev, nxt) in enumerate(zip(self.layers, self.layers[1:])):
            if nxt.input_size != prev.output_size:
                raise ModelFormatError(
                    f"layer {i + 1} expects {nxt.input_size} inputs but layer {i} emits "
                    f"{prev.output_size}"
                )
        width = self.layers[-1].output_size
        for i, dense in enumerate(self.head):
            if dense.weight.ndim != 2 or dense.weight.shape[1] != width:
                raise ModelFormatError(
                    f"head layer {i}: weight shape {dense.weight.shape}, expected (out, {width})"
                )
            if dense.bias is not None and dense.bias.shape != (dense.weight.shape[0],):
                raise ModelFormatError(f"head layer {i}: bias shape {dense.bias.shape}")
            if dense.activation not in HEAD_ACTIVATIONS:
                raise ModelFormatError(f"head layer {i}: unknown activation {dense.activation!r}")
            width = dense.weight.shape[0]
        sig = self.signature
        if sig.style == "onnx_node" and (len(self.layers) != 1 or self.head):
            raise ModelFormatError("an onnx_node signature describes exactly one layer")
        if sig.state_groups:
            if sig.style != "sequence" or any(
                not isinstance(n, int) or n <= 0 for n in sig.state_groups
            ):
                raise ModelFormatError(
                    f"state_groups {sig.state_groups} must be positive layer counts of a "
                    "sequence signature"
                )
            if sum(sig.state_groups) != len(self.layers):
                raise ModelFormatError(
                    f"state_groups {sig.state_groups} cover {sum(sig.state_groups)} layers; the "
                    f"model has {len(self.layers)}"
                )
        for role in (*sig.inputs, *sig.outputs, *sig.constants):
            base, group = parse_state_role(role)
            if base in STATE_ROLES and group >= max(1, len(sig.state_groups)):
                raise ModelFormatError(f"signature role {role!r} names a missing state group")
