"""The type of a graph tensor: dtype, shape with symbolic dims, time axis.

Its own module so that both the graph (``lstm_infer.graph``) and the op registry's shape
inference (``lstm_infer.ops``) use it without importing each other.

A shape's entries are ints (static), strings (symbolic dims such as ``"batch"`` or
``"time"``: equal names are equal sizes) or None (unknown); a shape of None is an unknown
rank. Shape inference also follows the values of the small integer tensors a graph computes
its shapes with (``Shape -> Gather -> Concat -> Reshape``): ``value`` holds them, flattened,
as dims (ints, names, None) where known.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lstm_infer.errors import ModelFormatError

# dtypes a graph tensor may have (numpy names).
DTYPES = (
    "float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool",
    "undefined",  # an output or intermediate whose type the source does not declare
)  # fmt: skip

Dim = int | str | None


@dataclass(frozen=True)
class TensorType:
    """dtype and shape (None: rank unknown) of a tensor, plus its time axis if known; or,
    with ``sequence``, the dtype and shape of each tensor of a sequence."""

    dtype: str
    shape: tuple[Dim, ...] | None = None
    time_axis: int | None = None
    # The elements of a small integer tensor (a shape being computed), where inference knows
    # them: ints, names of dims, or None each. Not part of the type (equality ignores it).
    value: tuple[Dim, ...] | None = field(default=None, compare=False, repr=False)
    sequence: bool = False  # a sequence of such tensors (ONNX seq(tensor)); pass by keyword

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ModelFormatError(f"unsupported tensor dtype {self.dtype!r}")

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def static(self) -> bool:
        """Whether every dim is a known int (and the rank known)."""
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)
