"""Which axis of each tensor is time, and whether a graph may be streamed along it.

The time axis is found by running the graph at two chunk lengths, T and T + 1 frames of the
input's time axis: a tensor whose size changes by one frame on exactly one axis carries time
on that axis; a tensor whose sizes do not change is time-free (weights, per-sequence values).
Every node is then checked to be streamable, one frame (or chunk) at a time, with the same
results as a run over the whole sequence:

* time-local nodes (elementwise, products over features, layer norm / softmax / reductions
  over other axes, layout ops that keep every element at its own time step) step directly;
* forward recurrent layers keep their state from one chunk to the next;
* convolutions along time are causal (left padding (k - 1) * dilation, none on the right,
  stride 1): the step program keeps their last (k - 1) * dilation input frames; a
  convolution or pool whose batch axis is time (a Reshape folded the frames into it, as a
  per-frame feature extractor does) sees each frame on its own and steps directly;
* anything else needs frames from the future or from every step (bidirectional and reverse
  layers, symmetric padding, pooling or reducing over time, concatenating along time): the
  stream is refused with StreamError naming the node and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lstm_infer.cells import CELLS
from lstm_infer.compile.step_lower import LAYOUT_OPS, REDUCE_CODES, UNARY_CODES
from lstm_infer.errors import StreamError
from lstm_infer.ops import RunContext, get_op
from lstm_infer.ops.base import attr_int, attr_str
from lstm_infer.ops.window import resolve, window_attrs

_ELEMENTWISE = set(UNARY_CODES) | {
    "Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Clip", "Gelu", "Cast", "Identity",
    "Dropout", "BatchNormalization",
}  # fmt: skip
_RECURRENT = ("RNN", "LSTM", "GRU")
_CELLS = tuple(CELLS)  # time-major, forward: they keep their state from chunk to chunk


def time_axes(
    short: Mapping[str, np.ndarray], long: Mapping[str, np.ndarray]
) -> dict[str, int | None]:
    """Per tensor its time axis (None: time-free), from two traces one frame apart."""
    axes: dict[str, int | None] = {}
    for name, a in short.items():
        b = long.get(name)
        if b is None:
            continue
        sa, sb = np.shape(a), np.shape(b)
        if sa == sb:
            axes[name] = None
            continue
        diff = [i for i, (x, y) in enumerate(zip(sa, sb)) if x != y] if len(sa) == len(sb) else []
        if len(diff) != 1 or sb[diff[0]] - sa[diff[0]] != 1:
            axes[name] = -1  # time merged with other axes, or a rank that depends on it
        else:
            axes[name] = diff[0]
    return axes


def chunk_dependent(short: Any, long: Any) -> set[str]:
    """The constants of the program at T frames that the program at T + 1 frames does not
    have, or has with another shape or value: values folded from the chunk's length (a
    positional table sliced to ``Shape(x)``, a division by the sequence length). A stream
    would use the chunk's value where the whole sequence uses its own: refused."""
    out = set()
    for name, value in short.constants.items():
        other = long.constants.get(name)
        if other is None or np.shape(other) != np.shape(value):
            out.add(name)
        elif not np.array_equal(np.asarray(other), np.asarray(value), equal_nan=True):
            out.add(name)
    return out


def check_streamable(
    program: Any, axes: Mapping[str, int | None], short: Mapping, dependent: set[str] = frozenset()
) -> None:
    """Raise StreamError naming the first node that cannot stream along time (``dependent``:
    constants whose values depend on the chunk length, see chunk_dependent)."""
    for step in program.steps:
        node = step.node
        # A layout op's shape, index and pad inputs may follow the chunk length (a Reshape to
        # (B, C, T)): the index check below decides those. Data read at that length may not.
        read = node.inputs[:1] if node.op in LAYOUT_OPS else node.inputs
        bad = [n for n in read if n in dependent]
        if bad:
            raise StreamError(
                f"{node.label} cannot stream along time: {bad[0]!r} is computed from the "
                "sequence length (a whole run and a stream of chunks would use different values)"
            )
        ins = {n: axes.get(n) for n in node.inputs if n}
        timed = {n: a for n, a in ins.items() if a is not None}
        if not timed:
            continue  # a node of per-sequence values
        for name, a in timed.items():
            if a == -1:
                raise StreamError(f"{node.label}: {name!r} mixes the time axis with others")
        outs = {n: axes.get(n) for n in node.outputs if n}
        why = _refusal(node, step.state, timed, outs, short)
        if why:
            raise StreamError(f"{node.label} cannot stream along time: {why}")


def _refusal(node: Any, state: Any, timed: dict, outs: dict, short: Mapping) -> str | None:
    op = node.op
    if op in _RECURRENT:
        layout = attr_int(node, "layout", 0)
        x = node.inputs[0]
        if timed.get(x) != layout:
            return "its input's time axis is not the layer's sequence axis"
        if attr_str(node, "direction", "forward") != "forward":
            return f"a {attr_str(node, 'direction')} layer needs the future"
        if len(timed) > 1:
            return "its weights or states change along time"
        return None
    if op in _CELLS:
        if timed.get(node.inputs[0]) != 0:
            return "its input's time axis is not the cell's sequence axis (0)"
        if len(timed) > 1:
            return "its states change along time"
        return None
    if any(a is None or a == -1 for n, a in outs.items() if n in _timed_outputs(node)):
        return "its output has no time axis of its own (it reduces over or picks along time)"
    if op in _ELEMENTWISE:
        out_rank = len(np.shape(short[node.outputs[0]]))
        out_axis = outs[node.outputs[0]]
        for name, a in timed.items():
            if out_rank - len(np.shape(short[name])) + a != out_axis:
                return "its operands carry time on different axes"
        return None
    if op in ("MatMul", "Gemm"):
        x = node.inputs[0]
        if len(timed) != 1 or x not in timed or state is None:
            return "a product of two sequences"
        if timed[x] == len(np.shape(short[x])) - 1:
            return "it sums over time"
        return None
    if op == "Conv":
        return _conv_refusal(node, state, timed, short)
    if op in ("LayerNormalization", "Softmax", "LogSoftmax", *REDUCE_CODES):
        x = node.inputs[0]
        rank = len(np.shape(short[x]))
        if op == "LayerNormalization":
            over = range(attr_int(node, "axis", -1) % rank, rank)
        elif op in ("Softmax", "LogSoftmax"):
            over = [attr_int(node, "axis", -1) % rank]
        else:
            axes_in = node.inputs[1] if len(node.inputs) > 1 else ""
            v = short.get(axes_in) if axes_in else None
            over = range(rank) if v is None or v.size == 0 else [int(a) % rank for a in v]
        return "it normalises or reduces over time" if timed[x] in over else None
    if op == "Concat":
        rank = len(np.shape(short[node.outputs[0]]))
        if attr_int(node, "axis") % rank == outs[node.outputs[0]]:
            return "it concatenates along time"
        return None
    if op in LAYOUT_OPS:
        return _layout_refusal(node, state, timed, outs, short)
    if op in ("MaxPool", "AveragePool"):
        return _pool_refusal(node, timed, short)
    return "an op that has no streaming form"


def _timed_outputs(node: Any) -> list[str]:
    """The outputs that must carry time (a recurrent layer's final states need not)."""
    if node.op in _RECURRENT or node.op in _CELLS:
        return [n for n in node.outputs[:1] if n]
    return list(node.outputs)


def _conv_refusal(node: Any, state: Any, timed: dict, short: Mapping) -> str | None:
    x = node.inputs[0]
    if x not in timed or len(timed) > 1 or state is None:
        return "weights that change along time"
    rank = len(np.shape(short[x]))
    if timed[x] == 0:
        return None  # frames are its batch (a Reshape folded time into it): each on its own
    if timed[x] != rank - 1:
        return "time is not its last spatial axis"
    if attr_str(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return "auto_pad pads both sides"
    r = resolve(node, window_attrs(node), np.shape(short[x])[2:], state.w.shape[2:])
    k, s, d = r.kernel[-1], r.strides[-1], r.dilations[-1]
    if s != 1:
        return f"stride {s} along time"
    if r.end[-1] != 0 or r.begin[-1] != (k - 1) * d:
        return (
            f"pads ({r.begin[-1]}, {r.end[-1]}) along time: a causal convolution pads "
            f"({(k - 1) * d}, 0)"
        )
    return None


def _pool_refusal(node: Any, timed: dict, short: Mapping) -> str | None:
    """A pool streams when its window covers one frame along time (pooling over frequency
    in a spectrogram front end): kernel 1, stride 1 and no padding on the time axis."""
    x = node.inputs[0]
    rank = len(np.shape(short[x]))
    if timed[x] == 0:
        return None  # frames are its batch: each pooled on its own
    if timed[x] < 2:
        return "time is not one of its spatial axes"
    w = window_attrs(node, ceil_mode_allowed=True)
    r = resolve(node, w, np.shape(short[x])[2:], w.kernel)
    d = timed[x] - 2
    if (r.kernel[d], r.strides[d], r.begin[d], r.end[d]) != (1, 1, 0, 0) or rank != 2 + len(r.out):
        return "it pools over time"
    return None


def _layout_refusal(node: Any, state: Any, timed: dict, outs: dict, short: Mapping) -> str | None:
    """Run the layout op on time indices: every output element must come from its own
    time step (a Pad or Slice along time, a Transpose moving it, a Reshape merging it...)."""
    x = node.inputs[0]
    if len(timed) != 1 or x not in timed:
        return "its indices or shape change along time"
    shape = np.shape(short[x])
    t_in = timed[x]
    frames = np.arange(shape[t_in], dtype=np.int64).reshape(
        [-1 if i == t_in else 1 for i in range(len(shape))]
    )
    stamp = np.broadcast_to(frames, shape).copy()
    others = [short.get(n) if n else None for n in node.inputs[1:]]
    if node.op == "Pad":
        others = others[:1] + [None] * (len(others) - 1)
        stamp = stamp + 1  # padded positions come out 0 - 1 = -1: no frame
    results = get_op(node.op, node).run(RunContext(), node, [stamp, *others], state)
    for name, value in zip(node.outputs, results):
        if not name:
            continue
        got = np.asarray(value, np.int64) - (1 if node.op == "Pad" else 0)
        t_out = outs.get(name)
        if t_out is None or t_out < 0:
            return "its output has no time axis"
        want = np.arange(got.shape[t_out]).reshape(
            [-1 if i == t_out else 1 for i in range(got.ndim)]
        )
        if not np.array_equal(got, np.broadcast_to(want, got.shape)):
            return "it moves elements across time steps"
    return None
