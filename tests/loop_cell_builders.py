"""Loop and Scan bodies that run one recurrent cell step, built with onnx.helper in the
shapes tf2onnx and hand-written exporters use (tests/test_loop_cells.py).

:func:`cell_loop` builds a model ``X [T, B, I]`` (or ``[B, T, I]``), ``h0`` (and ``c0``) ->
the final state(s) and the stacked hidden states, in one of three forms:

* ``"loop"``: ``Loop(M = Shape(X)[t], "", h0...)``, ``x_t = Gather(X, i)`` by the iteration
  number;
* ``"tf2onnx"``: what tf2onnx writes for a Keras RNN layer: a carried time counter that
  starts at 0 and adds 1, the length carried unchanged, the weights carried unchanged (the body
  passes them through), the condition ``i < T and time + 1 < T`` through float Casts, the
  initial condition ``0 < T``, and Slices over two axes for the gate blocks;
* ``"scan"``: ``Scan(h0..., X)`` over the time axis, forward or reversed.

Keyword knobs make the negative cases: a different activation, a state that is not fed back,
an extra scan output computed from something else, a trip count the graph cannot prove.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from graph_builders import model_bytes, vi
from onnx import TensorProto as TP
from onnx import helper

OPSET = 17
BIG = (1 << 31) - 1


class _Body:
    """Nodes and constants of one body, named uniquely."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.consts: dict[str, np.ndarray] = {}
        self.count = 0

    def op(self, op: str, *inputs: str, **attrs: Any) -> str:
        self.count += 1
        out = f"{op.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def const(self, value: np.ndarray) -> str:
        self.count += 1
        name = f"k_{self.count}"
        self.consts[name] = value
        return name


def _weights(
    cell: str, I: int, H: int, rng: np.random.Generator, scale: float
) -> dict[str, np.ndarray]:
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    u = lambda *s: rng.uniform(-scale, scale, s).astype(np.float32)  # noqa: E731
    return {"W": u(I, gates * H), "R": u(H, gates * H), "bx": u(gates * H), "bh": u(gates * H)}


def _block(b: _Body, tensor: str, k: int, H: int, two_axes: bool) -> str:
    """Columns k*H .. (k+1)*H of a [B, G*H] tensor (tf2onnx: a Slice over two axes)."""
    if two_axes:
        starts, ends = np.array([0, k * H]), np.array([BIG, (k + 1) * H])
        return b.op("Slice", tensor, b.const(starts), b.const(ends), b.const(np.array([0, 1])))
    one = lambda v: b.const(np.array([v]))  # noqa: E731
    return b.op("Slice", tensor, one(k * H), one((k + 1) * H), one(1))


def _step(b: _Body, cell: str, x: str, h: str, c: str, H: int, w: dict[str, str],
          opts: dict[str, Any]) -> tuple[str, str, str]:  # fmt: skip
    """(h_t, c_t or "", an intermediate): one step in Keras's gate orders (GRU z r h,
    LSTM i f c o)."""
    two = opts.get("two_axes", False)
    xw = b.op("Add", b.op("MatMul", x, w["W"]), w["bx"])
    hr = b.op("Add", b.op("MatMul", h, w["R"]), w["bh"])
    if cell == "rnn":
        pre = b.op("Add", xw, hr)
        return b.op(opts.get("activation", "Tanh"), pre), "", pre
    if cell == "lstm":
        pre = b.op("Add", xw, hr)
        i, f, g, o = (_block(b, pre, k, H, two) for k in range(4))
        c_new = b.op("Add", b.op("Mul", b.op("Sigmoid", f), c),
                     b.op("Mul", b.op("Sigmoid", i), b.op("Tanh", g)))  # fmt: skip
        return b.op("Mul", b.op("Sigmoid", o), b.op("Tanh", c_new)), c_new, pre
    xz, xr, xn = (_block(b, xw, k, H, two) for k in range(3))
    hz, hr_r, hn = (_block(b, hr, k, H, two) for k in range(3))
    z = b.op("Sigmoid", b.op("Add", xz, hz))
    r = b.op("Sigmoid", b.op("Add", xr, hr_r))
    if opts.get("reset_after", True):
        n = b.op("Tanh", b.op("Add", xn, b.op("Mul", r, hn)))
    else:  # n = tanh(x W_n + b_n + (r * h) R_n), the reset before the product
        rn = b.op("MatMul", b.op("Mul", r, h), w["Rn"])
        n = b.op("Tanh", b.op("Add", xn, rn))
    one = b.const(np.array(1.0, np.float32))
    h_new = b.op("Add", b.op("Mul", z, h), b.op("Mul", b.op("Sub", one, z), n))
    return h_new, "", n


def cell_loop(cell: str, I: int, H: int, rng: np.random.Generator, form: str = "loop",
              **opts: Any) -> tuple[bytes, dict[str, np.ndarray]]:  # fmt: skip
    """The model bytes and its weights (see the module docstring for ``form`` and ``opts``:
    batch_first, reverse (scan), reset_after (gru), activation (rnn), two_axes, scale (weights
    drawn from U(-scale, scale); default 0.5), and the
    negative knobs not_fed_back, extra_scan, trips_input, data_cond)."""
    weights = _weights(cell, I, H, rng, opts.get("scale", 0.5))
    if cell == "gru" and not opts.get("reset_after", True):
        weights["Rn"] = weights["R"][:, 2 * H :].copy()
        weights["R"][:, 2 * H :] = 0.0  # (the candidate's recurrent product comes after r)
        weights["bh"][2 * H :] = 0.0
    lstm = cell == "lstm"
    batch_first = opts.get("batch_first", False)
    x_shape = ["B", "T", I] if batch_first else ["T", "B", I]
    states = ["h0", "c0"] if lstm else ["h0"]
    outer = [vi("X", TP.FLOAT, x_shape)] + [vi(s, TP.FLOAT, ["B", H]) for s in states]
    if opts.get("trips_input"):
        outer.append(vi("M", TP.INT64, []))
    b = _Body()
    tf = form == "tf2onnx"
    # Weights: outer constants the body reads, or (tf2onnx) values the Loop carries.
    wnames = {k: (f"{k}_in" if tf else k) for k in weights}
    h_in, c_in = "h_in", "c_in"
    if form == "scan":
        x_t = "x_t"
    else:
        index = "time_in" if tf else "i"
        x_t = b.op("Gather", "X", index, axis=1 if batch_first else 0)
    h_read = "h0" if opts.get("not_fed_back") else h_in
    h_new, c_new, inner = _step(b, cell, x_t, h_read, c_in, H, wnames, opts)
    h_out = b.op("Identity", h_new)
    c_out = b.op("Identity", c_new) if lstm else ""
    scan_outs = [b.op("Identity", h_new)]
    if opts.get("extra_scan"):
        scan_outs.append(b.op("Identity", inner))
    state_in = [vi(h_in, TP.FLOAT, ["B", H])] + ([vi(c_in, TP.FLOAT, ["B", H])] if lstm else [])
    state_out = [vi(h_out, TP.FLOAT, ["B", H])] + ([vi(c_out, TP.FLOAT, ["B", H])] if lstm else [])
    scan_vi = [vi(s, TP.FLOAT, ["B", None]) for s in scan_outs]
    outer_nodes: list[Any] = []
    inits = {} if tf else dict(weights)
    final = ["h"] + (["c"] if lstm else [])
    ys = ["Y"] + (["Y2"] if opts.get("extra_scan") else [])
    t_axis = 1 if batch_first else 0
    if form == "scan":
        body = helper.make_graph(b.nodes, "cell", state_in + [vi("x_t", TP.FLOAT, ["B", I])],
                                 state_out + scan_vi, _tensors(b.consts))  # fmt: skip
        reverse = int(opts.get("reverse", False))
        outer_nodes.append(helper.make_node(
            "Scan", states + ["X"], final + ys, body=body, num_scan_inputs=1,
            scan_input_axes=[t_axis], scan_input_directions=[reverse],
            scan_output_directions=[int(opts.get("out_reverse", reverse))] * len(ys),
            scan_output_axes=[int(opts.get("out_axis", 0))] * len(ys)))  # fmt: skip
    else:
        inits["t_axis"] = np.array(t_axis, np.int64)
        outer_nodes += [helper.make_node("Shape", ["X"], ["shape"]),
                        helper.make_node("Gather", ["shape", "t_axis"], ["T"], axis=0)]  # fmt: skip
        trips = "M" if opts.get("trips_input") else "T"
        carried_in, carried_out, init_vals, cond_in = _loop_extras(b, tf, weights, inits,
                                                                   outer_nodes, opts)  # fmt: skip
        body = helper.make_graph(
            b.nodes, "cell",
            [vi("i", TP.INT64, []), vi("cond_in", TP.BOOL, [])] + carried_in + state_in,
            [vi(cond_in, TP.BOOL, [])] + carried_out + state_out + scan_vi, _tensors(b.consts),
        )  # fmt: skip
        extra_outs = [f"unused_{k}" for k in range(len(carried_in))]
        outer_nodes.append(helper.make_node(
            "Loop", [trips, init_vals[0]] + init_vals[1:] + states, extra_outs + final + ys,
            body=body))  # fmt: skip
    y_shape = ["B", None, H] if opts.get("out_axis", 0) == 1 else [None, "B", H]
    outputs = [vi(n, TP.FLOAT, ["B", H]) for n in final] + [vi(y, TP.FLOAT, y_shape) for y in ys]
    return model_bytes(outer_nodes, outer, outputs, inits, OPSET), weights


def _loop_extras(b: _Body, tf: bool, weights: dict, inits: dict, outer_nodes: list,
                 opts: dict) -> tuple[list, list, list, str]:  # fmt: skip
    """The carried values before the states, their body outputs, the node's condition and
    initial values, and the body's condition output."""
    if opts.get("data_cond"):  # continue while the state's sum is below a bound: not a length
        total = b.op("ReduceSum", "h_in", keepdims=0)
        cond = b.op("Less", total, b.const(np.array(1e9, np.float32)))
        return [], [], [""], cond
    if not tf:
        return [], [], [""], b.op("Identity", "cond_in")
    # tf2onnx: time counter (int32), the length (int32), the weights, all carried.
    outer_nodes += [
        helper.make_node("Cast", ["T"], ["T32"], to=TP.INT32),
        helper.make_node("Cast", ["T"], ["Tf"], to=TP.FLOAT),
        helper.make_node("Less", ["zero_f", "Tf"], ["go"]),
    ]
    inits.update(zero_f=np.array(0.0, np.float32), time0=np.array(0, np.int32), **weights)
    one = b.const(np.array(1, np.int32))
    time_out = b.op("Add", "time_in", one)
    less_i = b.op("Less", b.op("Cast", "i", to=TP.FLOAT), b.op("Cast", "T_in", to=TP.FLOAT))
    less_t = b.op("Less", b.op("Cast", time_out, to=TP.FLOAT), b.op("Cast", "T_in", to=TP.FLOAT))
    cond = b.op("And", less_i, less_t)
    carried_in = [vi("time_in", TP.INT32, []), vi("T_in", TP.INT32, [])]
    carried_out = [vi(time_out, TP.INT32, []), vi("T_in", TP.INT32, [])]
    values = ["go", "time0", "T32"]
    for k, v in weights.items():
        carried_in.append(vi(f"{k}_in", TP.FLOAT, list(v.shape)))
        carried_out.append(vi(f"{k}_in", TP.FLOAT, list(v.shape)))
        values.append(k)
    return carried_in, carried_out, values, cond


def _tensors(consts: dict[str, np.ndarray]) -> list:
    from onnx import numpy_helper

    return [numpy_helper.from_array(v, name=k) for k, v in consts.items()]


def one_step_loop(op: str, I: int, H: int, rng: np.random.Generator,
                  **attrs: Any) -> bytes:  # fmt: skip
    """A Loop whose body is one ONNX ``op`` (LSTM / GRU / RNN) node over ``Unsqueeze(x_t)``,
    its initial states ``Unsqueeze`` of the carried ones, ``Squeeze`` of its final states
    carried out and scanned (torch.jit.script's form of an ``nn.LSTMCell`` loop)."""
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[op]
    u = lambda *s: rng.uniform(-0.5, 0.5, s).astype(np.float32)  # noqa: E731
    inits = {"W": u(1, gates * H, I), "R": u(1, gates * H, H), "B": u(1, 2 * gates * H)}
    lstm = op == "LSTM"
    b = _Body()
    zero = b.const(np.array([0], np.int64))
    x_t = b.op("Unsqueeze", b.op("Gather", "X", "i", axis=0), zero)
    ins = [x_t, "W", "R", "B", "", b.op("Unsqueeze", "h_in", zero)]
    if lstm:
        ins.append(b.op("Unsqueeze", "c_in", zero))
    outs = ["y", "y_h"] + (["y_c"] if lstm else [])
    b.nodes.append(helper.make_node(op, ins, outs, hidden_size=H, **attrs))
    h_out = b.op("Squeeze", "y_h", zero)
    states = [h_out] + ([b.op("Squeeze", "y_c", zero)] if lstm else [])
    scan = b.op("Identity", h_out)
    names = ["h_in", "c_in"] if lstm else ["h_in"]
    body = helper.make_graph(
        b.nodes + [helper.make_node("Identity", ["cond_in"], ["cond_out"])], "step",
        [vi("i", TP.INT64, []), vi("cond_in", TP.BOOL, [])]
        + [vi(n, TP.FLOAT, ["B", H]) for n in names],
        [vi("cond_out", TP.BOOL, [])] + [vi(n, TP.FLOAT, ["B", H]) for n in states]
        + [vi(scan, TP.FLOAT, ["B", H])], _tensors(b.consts),
    )  # fmt: skip
    inits["zero"] = np.array(0, np.int64)
    nodes = [
        helper.make_node("Shape", ["X"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["T"], axis=0),
        helper.make_node("Loop", ["T", "", "h0"] + (["c0"] if lstm else []),
                         ["h", "c"][: len(states)] + ["Y"], body=body),
    ]  # fmt: skip
    inputs = [vi("X", TP.FLOAT, ["T", "B", I])] + [
        vi(n, TP.FLOAT, ["B", H]) for n in (["h0", "c0"] if lstm else ["h0"])
    ]
    outputs = [vi(n, TP.FLOAT, ["B", H]) for n in ["h", "c"][: len(states)]]
    outputs.append(vi("Y", TP.FLOAT, [None, "B", H]))
    return model_bytes(nodes, inputs, outputs, inits, OPSET)
