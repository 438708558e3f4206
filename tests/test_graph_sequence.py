"""Sequences of tensors (issue 14: torch.jit.script loops that append to a list and stack it):
each sequence op on graphs built with onnx.helper against onnxruntime; Loop / If / Scan
carrying sequences; scripted torch modules exported with torch.onnx (dynamo=False) against
onnxruntime and torch; hostile sequences (positions out of range, shapes that do not
concatenate, an empty sequence concatenated, a loop appending without end) end with a clear
error naming the node; sequences where a model may not hold them (its inputs and outputs,
step programs, streams) are refused cleanly, and native files keep them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import require

import lstm_infer
from lstm_infer.errors import InputError, ModelFormatError, StreamError, UnsupportedModelError

onnx = require("onnx")
ort = require("onnxruntime")
from graph_builders import assert_like_onnxruntime as _assert_like_onnxruntime  # noqa: E402
from graph_builders import export_scripted, vi  # noqa: E402
from graph_builders import model_bytes as _model_bytes  # noqa: E402
from onnx import TensorProto as TP  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

OPSET = 17
TOL = 1e-6


def model_bytes(nodes: list, inputs: list, outputs: list, inits: dict | None = None) -> bytes:
    return _model_bytes(nodes, inputs, outputs, inits, OPSET)


def node(op: str, ins: list[str], outs: list[str], **attrs: Any) -> Any:
    return helper.make_node(op, ins, outs, name=outs[0], **attrs)


def seq_vi(name: str, elem: int = TP.FLOAT, shape: Any = None) -> Any:
    return helper.make_tensor_sequence_value_info(name, elem, shape)


def assert_like_onnxruntime(data: bytes, feeds: dict, atol: float = TOL) -> dict:
    return _assert_like_onnxruntime(data, feeds, atol)


ABC = [vi("a", TP.FLOAT, [2, 3]), vi("b", TP.FLOAT, [2, 3]), vi("c", TP.FLOAT, [2, 3])]


def abc(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: rng.standard_normal((2, 3)).astype(np.float32) for k in "abc"}


# ---- each op against onnxruntime -----------------------------------------------------------------


@pytest.mark.parametrize("position", [-3, -2, -1, 0, 1, 2])
def test_sequence_at_and_length(position: int, rng: np.random.Generator) -> None:
    data = model_bytes(
        [
            node("SequenceConstruct", ["a", "b", "c"], ["s"]),
            node("SequenceAt", ["s", "p"], ["y"]),
            node("SequenceLength", ["s"], ["n"]),
        ],
        ABC,
        [vi("y", TP.FLOAT, [None] * 2), vi("n", TP.INT64, [])],
        {"p": np.array(position, np.int64)},
    )
    got = assert_like_onnxruntime(data, abc(rng))
    assert int(got["n"]) == 3


@pytest.mark.parametrize("position", [None, 0, 1, 2, -1, -2])
def test_sequence_insert(position: int | None, rng: np.random.Generator) -> None:
    """Insert c into [a, b] (no position: appended), then concatenate on axis 1."""
    inits = {} if position is None else {"p": np.array(position, np.int32)}
    ins = ["ab", "c"] if position is None else ["ab", "c", "p"]
    data = model_bytes(
        [
            node("SequenceConstruct", ["a", "b"], ["ab"]),
            node("SequenceInsert", ins, ["s"]),
            node("ConcatFromSequence", ["s"], ["y"], axis=1),
            node("SequenceLength", ["s"], ["n"]),
        ],
        ABC,
        [vi("y", TP.FLOAT, [None] * 2), vi("n", TP.INT64, [])],
        inits,
    )
    assert_like_onnxruntime(data, abc(rng))


@pytest.mark.parametrize("position", [None, 0, 1, 2, -1, -3])
def test_sequence_erase(position: int | None, rng: np.random.Generator) -> None:
    inits = {} if position is None else {"p": np.array(position, np.int64)}
    ins = ["abc"] if position is None else ["abc", "p"]
    data = model_bytes(
        [
            node("SequenceConstruct", ["a", "b", "c"], ["abc"]),
            node("SequenceErase", ins, ["s"]),
            node("ConcatFromSequence", ["s"], ["y"], axis=0),
            node("SequenceLength", ["s"], ["n"]),
        ],
        ABC,
        [vi("y", TP.FLOAT, [None] * 2), vi("n", TP.INT64, [])],
        inits,
    )
    assert_like_onnxruntime(data, abc(rng))


def test_erase_keeps_the_sequence_it_came_from(rng: np.random.Generator) -> None:
    """Values are immutable: erasing from s, then appending to both s and the erased one,
    leaves each what it should be (they share storage where they can)."""
    data = model_bytes(
        [
            node("SequenceConstruct", ["a", "b"], ["s"]),
            node("SequenceErase", ["s"], ["t"]),
            node("SequenceInsert", ["t", "c"], ["t2"]),
            node("SequenceInsert", ["s", "a"], ["s2"]),
            node("SequenceInsert", ["t", "b"], ["t3"]),
            node("ConcatFromSequence", ["t2"], ["y1"], axis=0),
            node("ConcatFromSequence", ["s2"], ["y2"], axis=0),
            node("ConcatFromSequence", ["t3"], ["y3"], axis=0),
            node("ConcatFromSequence", ["s"], ["y4"], axis=0),
        ],
        ABC,
        [vi(f"y{i}", TP.FLOAT, [None] * 2) for i in range(1, 5)],
    )
    assert_like_onnxruntime(data, abc(rng))


@pytest.mark.parametrize(
    ("new_axis", "axis"),
    [(0, 0), (0, 1), (0, -1), (0, -2), (1, 0), (1, 1), (1, 2), (1, -1), (1, -3)],
)
def test_concat_from_sequence(new_axis: int, axis: int, rng: np.random.Generator) -> None:
    data = model_bytes(
        [
            node("SequenceConstruct", ["a", "b", "c"], ["s"]),
            node("ConcatFromSequence", ["s"], ["y"], axis=axis, new_axis=new_axis),
        ],
        ABC,
        [vi("y", TP.FLOAT, [None] * (2 + new_axis))],
    )
    assert_like_onnxruntime(data, abc(rng))


def test_concat_from_sequence_of_different_lengths(rng: np.random.Generator) -> None:
    data = model_bytes(
        [
            node("SequenceConstruct", ["a", "d"], ["s"]),
            node("ConcatFromSequence", ["s"], ["y"], axis=1),
        ],
        [vi("a", TP.FLOAT, [2, 3]), vi("d", TP.FLOAT, [2, 5])],
        [vi("y", TP.FLOAT, [None] * 2)],
    )
    feeds = {"a": rng.standard_normal((2, 3)), "d": rng.standard_normal((2, 5))}
    assert_like_onnxruntime(data, {k: v.astype(np.float32) for k, v in feeds.items()})


SPLITS = [
    ({}, None),
    ({"keepdims": 0}, None),
    ({"axis": 1}, None),
    ({"axis": -1, "keepdims": 0}, None),
    ({"axis": 1}, np.array(2, np.int64)),  # 6 = 2 + 2 + 2
    ({"axis": 1}, np.array(4, np.int64)),  # the last part smaller: 4 + 2
    ({"axis": 1, "keepdims": 0}, np.array([1, 3, 2], np.int64)),  # keepdims ignored with split
    ({"axis": 0}, np.array([3, 0, 1], np.int32)),
]


@pytest.mark.parametrize(("attrs", "split"), SPLITS)
def test_split_to_sequence(attrs: dict, split: Any, rng: np.random.Generator) -> None:
    """Split x (4, 6), then read its length, first and last parts and all of it stacked or
    concatenated back."""
    ins = ["x"] if split is None else ["x", "split"]
    stack = split is None and attrs.get("keepdims", 1) == 0
    data = model_bytes(
        [
            node("SplitToSequence", ins, ["s"], **attrs),
            node("SequenceLength", ["s"], ["n"]),
            node("SequenceAt", ["s", "zero"], ["first"]),
            node("SequenceAt", ["s", "last"], ["final"]),
            node(
                "ConcatFromSequence",
                ["s"],
                ["whole"],
                axis=attrs.get("axis", 0),
                new_axis=int(stack),
            ),
        ],
        [vi("x", TP.FLOAT, [4, 6])],
        [vi(n, TP.FLOAT, [None] * (1 + (not stack))) for n in ("first", "final")]
        + [vi("whole", TP.FLOAT, [None] * 2)]
        + [vi("n", TP.INT64, [])],
        {
            "zero": np.array(0, np.int64),
            "last": np.array(-1, np.int64),
            **({} if split is None else {"split": split}),
        },
    )
    x = rng.standard_normal((4, 6)).astype(np.float32)
    got = assert_like_onnxruntime(data, {"x": x})
    np.testing.assert_array_equal(got["whole"], x)


def test_sequence_empty_of_int64_collects_integers() -> None:
    data = model_bytes(
        [
            node("SequenceEmpty", [], ["e"], dtype=TP.INT64),
            node("SequenceInsert", ["e", "i"], ["s1"]),
            node("SequenceInsert", ["s1", "j"], ["s2"]),
            node("ConcatFromSequence", ["s2"], ["y"], axis=0),
        ],
        [vi("i", TP.INT64, [2]), vi("j", TP.INT64, [1])],
        [vi("y", TP.INT64, [None])],
    )
    assert_like_onnxruntime(data, {"i": np.array([4, -2]), "j": np.array([7])})


# ---- control flow carrying sequences -------------------------------------------------------------


def appending_loop(with_scan: bool = False, axis: int = 1, extra: str = "") -> bytes:
    """for i in range(M): h = tanh(0.5 h + x * i); seq.append(h) -> stack(seq, axis), and
    (with_scan) a scan output built through a sequence made in the body: concat([h, x]).
    Stacked on axis 0 the list becomes a scan output (lstm_infer.passes.loop_lists) unless
    ``extra`` reads it elsewhere too: its length "inside" the body (added to h) or "outside"
    (a second output)."""
    body_nodes = [
        node("Cast", ["i"], ["fi"], to=TP.FLOAT),
        node("Mul", ["x", "fi"], ["xi"]),
        node("Mul", ["h_in", "half"], ["hh"]),
        node("Add", ["hh", "xi"], ["pre"]),
        node("Tanh", ["pre"], ["h_out"]),
        node("SequenceInsert", ["s_in", "h_out"], ["s_out"]),
        node("Identity", ["c_in"], ["c_out"]),
    ]
    if extra == "inside":
        body_nodes[3:3] = [
            node("SequenceLength", ["s_in"], ["n_in"]),
            node("Cast", ["n_in"], ["fn"], to=TP.FLOAT),
            node("Add", ["hh", "fn"], ["hn"]),
        ]
        body_nodes[6] = node("Add", ["hn", "xi"], ["pre"])
    outputs = [vi("c_out", TP.BOOL, []), vi("h_out", TP.FLOAT, [2, 3]), seq_vi("s_out")]
    if with_scan:
        body_nodes += [
            node("SequenceConstruct", ["h_out", "x"], ["pair"]),
            node("ConcatFromSequence", ["pair"], ["scan"], axis=1),
        ]
        outputs.append(vi("scan", TP.FLOAT, [2, 6]))
    body = helper.make_graph(
        body_nodes,
        "body",
        [
            vi("i", TP.INT64, []),
            vi("c_in", TP.BOOL, []),
            vi("h_in", TP.FLOAT, [2, 3]),
            seq_vi("s_in"),
        ],  # fmt: skip
        outputs,
        [numpy_helper.from_array(np.array(0.5, np.float32), "half")],
    )
    loop_outs = ["h", "s"] + (["scans"] if with_scan else [])
    graph_outs = [vi("h", TP.FLOAT, [2, 3]), vi("y", TP.FLOAT, [None] * 3)]
    graph_outs += [vi("scans", TP.FLOAT, [None] * 3)] if with_scan else []
    nodes = [
        node("SequenceEmpty", [], ["empty"], dtype=TP.FLOAT),
        node("Loop", ["M", "", "h0", "empty"], loop_outs, body=body),
        node("ConcatFromSequence", ["s"], ["y"], axis=axis, new_axis=1),
    ]
    if extra == "outside":
        nodes.append(node("SequenceLength", ["s"], ["n"]))
        graph_outs.append(vi("n", TP.INT64, []))
    return model_bytes(
        nodes,
        [vi("M", TP.INT64, []), vi("h0", TP.FLOAT, [2, 3]), vi("x", TP.FLOAT, [2, 3])],
        graph_outs,
    )


def loop_feeds(trips: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "M": np.array(trips, np.int64),
        "h0": rng.standard_normal((2, 3)).astype(np.float32),
        "x": rng.standard_normal((2, 3)).astype(np.float32),
    }


def carries_sequence(model: Any) -> bool:
    loop = next(n for n in model.graph.nodes if n.op == "Loop")
    return any(v.type.sequence for v in loop.attrs["body"].inputs)


@pytest.mark.parametrize("trips", [1, 3, 8])
@pytest.mark.parametrize("with_scan", [False, True])
@pytest.mark.parametrize("axis", [0, 1])
def test_loop_carries_a_sequence(
    trips: int, with_scan: bool, axis: int, rng: np.random.Generator
) -> None:
    data = appending_loop(with_scan, axis)
    got = assert_like_onnxruntime(data, loop_feeds(trips, rng))
    assert got["y"].shape == ((trips, 2, 3) if axis == 0 else (2, trips, 3))
    # stacked on axis 0, the list is the Loop's scan output (lstm_infer.passes.loop_lists)
    assert carries_sequence(lstm_infer.load(data)) == (axis == 1)


@pytest.mark.parametrize("extra", ["inside", "outside"])
def test_a_list_read_elsewhere_stays_a_sequence(extra: str, rng: np.random.Generator) -> None:
    data = appending_loop(axis=0, extra=extra)
    assert carries_sequence(lstm_infer.load(data))
    for trips in (1, 4):
        assert_like_onnxruntime(data, loop_feeds(trips, rng))


def test_a_list_stacked_after_no_iterations() -> None:
    """The one difference loop_lists makes: no iterations stack to an empty (0,) tensor where
    ConcatFromSequence (and onnxruntime) refuse an empty sequence."""
    feeds = loop_feeds(0, np.random.default_rng(0))
    assert lstm_infer.load(appending_loop(axis=0)).run(feeds)["y"].shape == (0,)
    with pytest.raises(InputError, match="empty sequence"):
        lstm_infer.load(appending_loop(axis=1)).run(feeds)


def test_if_returns_a_sequence(rng: np.random.Generator) -> None:
    """Each branch builds a sequence of outer tensors; the node's output is concatenated."""

    def branch(name: str, ins: list[str]) -> Any:
        return helper.make_graph(
            [node("SequenceConstruct", ins, [f"{name}_s"])], name, [], [seq_vi(f"{name}_s")]
        )

    data = model_bytes(
        [
            node(
                "If",
                ["cond"],
                ["s"],
                then_branch=branch("then", ["a", "b"]),
                else_branch=branch("else", ["c", "a", "b"]),
            ),  # fmt: skip
            node("ConcatFromSequence", ["s"], ["y"], axis=0),
        ],
        [vi("cond", TP.BOOL, []), *ABC],
        [vi("y", TP.FLOAT, [None] * 2)],
    )
    for cond in (True, False):
        assert_like_onnxruntime(data, {"cond": np.array(cond), **abc(rng)})


def test_scan_body_reads_an_outer_sequence(rng: np.random.Generator) -> None:
    """A Scan over x's rows whose body adds the outer sequence's tensor at index 1."""
    body = helper.make_graph(
        [
            node("SequenceAt", ["outer", "one"], ["picked"]),
            node("Add", ["acc_in", "row"], ["sum"]),
            node("Add", ["sum", "picked"], ["acc_out"]),
            node("Identity", ["acc_out"], ["scan"]),
        ],
        "body",
        [vi("acc_in", TP.FLOAT, [3]), vi("row", TP.FLOAT, [3])],
        [vi("acc_out", TP.FLOAT, [3]), vi("scan", TP.FLOAT, [3])],
        [numpy_helper.from_array(np.array(1, np.int64), "one")],
    )
    data = model_bytes(
        [
            node("SplitToSequence", ["x"], ["outer"], keepdims=0),
            node("Scan", ["acc0", "x"], ["acc", "scans"], body=body, num_scan_inputs=1),
        ],
        [vi("acc0", TP.FLOAT, [3]), vi("x", TP.FLOAT, [4, 3])],
        [vi("acc", TP.FLOAT, [3]), vi("scans", TP.FLOAT, [4, 3])],
    )
    feeds = {"acc0": rng.standard_normal(3), "x": rng.standard_normal((4, 3))}
    assert_like_onnxruntime(data, {k: v.astype(np.float32) for k, v in feeds.items()})


# ---- scripted torch loops collecting a list ------------------------------------------------------

torch = require("torch")
I, H = 3, 5


class ArithmeticList(torch.nn.Module):
    """h = tanh(0.5 x_t + W h) over time, each h appended to a list, then stacked."""

    def __init__(self) -> None:
        super().__init__()
        self.hh = torch.nn.Linear(I, I)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        ys: list[torch.Tensor] = []
        for t in range(x.size(0)):
            h = torch.tanh(0.5 * x[t] + self.hh(h))
            ys.append(h)
        return torch.stack(ys)


class LstmCellList(torch.nn.Module):
    """nn.LSTMCell over time, each h appended, then stacked; the final c returned too."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = torch.nn.LSTMCell(I, H)

    def forward(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ys: list[torch.Tensor] = []
        for t in range(x.size(0)):
            h, c = self.cell(x[t], (h, c))
            ys.append(h)
        return torch.stack(ys), c


class CatList(torch.nn.Module):
    """A list of steps concatenated along features (torch.cat: ConcatFromSequence, axis 1)."""

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        ys: list[torch.Tensor] = []
        for t in range(x.size(0)):
            h = torch.sigmoid(x[t] - h)
            ys.append(h * 2.0)
        return torch.cat(ys, 1)


# (nn.RNNCell in a scripted loop does not export with torch 2.13, list or not:
# "ONNX symbolic expected node type prim::ListConstruct"; see test_loop_cells_torch.py.)
# name -> (module, its width, the graph's op it runs as): the stacked lists become scan
# outputs (an nn.LSTMCell loop then the native LSTM); torch.cat's list stays a sequence.
MODULES = {
    "arithmetic": (ArithmeticList, I, "Loop"),
    "lstm_cell": (LstmCellList, H, "LSTM"),
    "cat": (CatList, I, "ConcatFromSequence"),
}


def export(module: torch.nn.Module, names: list[str], width: int) -> bytes:
    return export_scripted(module, names, I, width)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_scripted_list_loop(name: str, rng: np.random.Generator) -> None:
    cls, width, runs_as = MODULES[name]
    torch.manual_seed(0)
    module = cls().eval()
    names = ["x", "h0", "c0"] if name == "lstm_cell" else ["x", "h0"]
    data = export(module, names, width)
    exported = onnx.load_from_string(data)
    ops = {n.op_type for n in exported.graph.node}
    assert {"SequenceEmpty", "Loop", "ConcatFromSequence"} <= ops, ops
    body = next(a.g for n in exported.graph.node if n.op_type == "Loop" for a in n.attribute)
    assert "SequenceInsert" in {n.op_type for n in body.node}
    model = lstm_infer.load(data)
    ops = {n.op for n in model.graph.nodes}
    assert runs_as in ops, ops
    if runs_as == "LSTM":
        assert "Loop" not in ops, ops
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    for T, B in ((1, 2), (7, 3)):
        feeds = {"x": rng.standard_normal((T, B, I)).astype(np.float32)}
        feeds.update({n: rng.uniform(-1, 1, (B, width)).astype(np.float32) for n in names[1:]})
        for _ in range(2):  # the second call at these shapes tries a compiled step program
            got = list(model.run(feeds).values())
        want = session.run(None, feeds)
        with torch.no_grad():
            ref = module(*(torch.from_numpy(v) for v in feeds.values()))
        ref = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
        assert len(got) == len(want) == len(ref)
        for g, w, r in zip(got, want, ref):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_scripted_list_loop_refuses_step_programs_and_streams(rng: np.random.Generator) -> None:
    model = lstm_infer.load(export(CatList().eval(), ["x", "h0"], I))
    feeds = {"x": rng.standard_normal((3, 1, I)), "h0": rng.standard_normal((1, I))}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    first = model.run(feeds)[model.output_names[0]]
    again = model.run(feeds)[model.output_names[0]]  # compiling refused: op by op
    np.testing.assert_array_equal(first, again)
    assert "sequences of tensors are not compiled" in model._compiled.error(feeds)


def test_a_graph_of_sequences_does_not_stream_along_time() -> None:
    data = model_bytes(
        [
            node("SplitToSequence", ["x"], ["s"], keepdims=0),
            node("ConcatFromSequence", ["s"], ["y"], axis=0, new_axis=1),
        ],
        [vi("x", TP.FLOAT, ["time", 1, 3])],
        [vi("y", TP.FLOAT, [None] * 3)],
    )
    model = lstm_infer.load(data)
    with pytest.raises(StreamError, match=r"SplitToSequence.*cannot stream"):
        model.stream().step(np.ones((1, 1, 3), np.float32))


def test_native_file_keeps_sequences(tmp_path: Any, rng: np.random.Generator) -> None:
    model = lstm_infer.load(appending_loop(with_scan=True))
    path = tmp_path / "seq.safetensors"
    model.save(path)
    again = lstm_infer.load(path)
    loop = next(n for n in again.graph.nodes if n.op == "Loop")
    assert loop.attrs["body"].inputs[3].type.sequence
    feeds = {
        "M": np.array(5, np.int64),
        "h0": rng.standard_normal((2, 3)).astype(np.float32),
        "x": rng.standard_normal((2, 3)).astype(np.float32),
    }
    for name, value in model.run(feeds).items():
        np.testing.assert_array_equal(again.run(feeds)[name], value)


# ---- hostile sequences ---------------------------------------------------------------------------


def at_model(position: int) -> bytes:
    return model_bytes(
        [node("SequenceConstruct", ["a", "b"], ["s"]), node("SequenceAt", ["s", "p"], ["pick"])],
        ABC[:2],
        [vi("pick", TP.FLOAT, [None] * 2)],
        {"p": np.array(position, np.int64)},
    )


@pytest.mark.parametrize("position", [2, -3, 2**62])
def test_sequence_at_out_of_range(position: int, rng: np.random.Generator) -> None:
    model = lstm_infer.load(at_model(position))
    feeds = {k: v for k, v in abc(rng).items() if k != "c"}
    with pytest.raises(InputError, match=r"'pick' \(SequenceAt\).*outside \[-2, 1\]"):
        model.run(feeds)


def test_concat_of_mismatched_shapes(rng: np.random.Generator) -> None:
    data = model_bytes(
        [
            node("SequenceConstruct", ["a", "d"], ["s"]),
            node("ConcatFromSequence", ["s"], ["cat"], axis=0),
            node("SequenceConstruct", ["a", "a"], ["t"]),
            node("SequenceInsert", ["t", "d"], ["u"]),
            node("ConcatFromSequence", ["u"], ["stacked"], axis=0, new_axis=1),
        ],
        [vi("a", TP.FLOAT, [2, 3]), vi("d", TP.FLOAT, [2, 4])],
        [vi("cat", TP.FLOAT, [None] * 2), vi("stacked", TP.FLOAT, [None] * 3)],
    )
    feeds = {"a": np.ones((2, 3), np.float32), "d": np.ones((2, 4), np.float32)}
    with pytest.raises(InputError, match=r"'cat' \(ConcatFromSequence\).*\(2, 3\) and \(2, 4\)"):
        lstm_infer.load(data).run(feeds)


def test_concat_of_an_empty_sequence() -> None:
    """onnxruntime refuses it too ("Must have 1 or more inputs"): no shape to give."""
    data = model_bytes(
        [
            node("SplitToSequence", ["x"], ["s"]),
            node("ConcatFromSequence", ["s"], ["y"], axis=0, new_axis=1),
        ],
        [vi("x", TP.FLOAT, [None, 3])],
        [vi("y", TP.FLOAT, [None] * 3)],
    )
    model = lstm_infer.load(data)
    np.testing.assert_array_equal(model.run({"x": np.ones((2, 3), np.float32)})["y"], 1.0)
    with pytest.raises(InputError, match=r"'y' \(ConcatFromSequence\).*empty sequence"):
        model.run({"x": np.ones((0, 3), np.float32)})


def test_erase_from_an_empty_sequence() -> None:
    data = model_bytes(
        [
            node("SequenceEmpty", [], ["e"]),
            node("SequenceErase", ["e"], ["s"]),
            node("SequenceLength", ["s"], ["n"]),
        ],  # fmt: skip
        [],
        [vi("n", TP.INT64, [])],
    )
    with pytest.raises(InputError, match=r"'s' \(SequenceErase\).*empty sequence"):
        lstm_infer.load(data).run({})


def test_insert_of_another_dtype_is_refused() -> None:
    data = model_bytes(
        [
            node("SequenceEmpty", [], ["e"]),
            node("SequenceInsert", ["e", "i"], ["s"]),
            node("SequenceLength", ["s"], ["n"]),
        ],  # fmt: skip
        [vi("i", TP.INT64, [2])],
        [vi("n", TP.INT64, [])],
    )
    with pytest.raises(InputError, match=r"'s' \(SequenceInsert\).*int64 tensor.*float32"):
        lstm_infer.load(data).run({"i": np.array([1, 2])})


def test_absurd_trip_count_appending_is_bounded_by_the_sequence_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lstm_infer.ops import sequence

    monkeypatch.setattr(sequence, "MAX_SEQUENCE_LENGTH", 300)
    model = lstm_infer.load(appending_loop())  # loads at once: loops never run at load
    feeds = {"M": np.array(2**62), "h0": np.zeros((2, 3), np.float32)}
    feeds["x"] = np.ones((2, 3), np.float32)
    with pytest.raises(InputError, match=r"'s_out' \(SequenceInsert\).*more than 300 tensors"):
        model.run(feeds)


def test_appending_is_bounded_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A big tensor appended over and over stops at MAX_SEQUENCE_BYTES (the default: 1 GB)."""
    from lstm_infer.ops import sequence

    assert sequence.MAX_SEQUENCE_BYTES <= 1 << 30
    monkeypatch.setattr(sequence, "MAX_SEQUENCE_BYTES", 10 * 24 + 1)  # ten (2, 3) float32
    model = lstm_infer.load(appending_loop())
    feeds = {"M": np.array(1000), "h0": np.zeros((2, 3), np.float32)}
    feeds["x"] = np.ones((2, 3), np.float32)
    with pytest.raises(InputError, match=r"SequenceInsert.*264 bytes, past 241"):
        model.run(feeds)


@pytest.mark.parametrize("axis", [0, 1])
def test_the_loop_bound_holds_for_appending_loops(
    axis: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lstm_infer.ops import control

    monkeypatch.setattr(control, "LOOP_MAX_ITERATIONS", 200)
    feeds = {"M": np.array(2**62), "h0": np.zeros((2, 3), np.float32)}
    feeds["x"] = np.ones((2, 3), np.float32)
    with pytest.raises(InputError, match=r"Loop.*more than 200 iterations"):
        lstm_infer.load(appending_loop(axis=axis)).run(feeds)


def test_split_into_too_many_parts_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from lstm_infer.ops import sequence

    monkeypatch.setattr(sequence, "MAX_SEQUENCE_LENGTH", 50)
    data = model_bytes(
        [node("SplitToSequence", ["x"], ["s"]), node("SequenceLength", ["s"], ["n"])],
        [vi("x", TP.FLOAT, [None])],
        [vi("n", TP.INT64, [])],
    )
    model = lstm_infer.load(data)
    assert int(model.run({"x": np.ones(50, np.float32)})["n"]) == 50
    with pytest.raises(InputError, match=r"SplitToSequence.*more than 50 tensors"):
        model.run({"x": np.ones(51, np.float32)})


def test_a_tensor_op_fed_a_sequence_is_refused_at_load() -> None:
    data = model_bytes(
        [node("SequenceConstruct", ["a"], ["s"]), node("Relu", ["s"], ["y"])],
        ABC[:1],
        [vi("y", TP.FLOAT, [None] * 2)],
    )
    with pytest.raises(ModelFormatError, match=r"'y' \(Relu\).*'s' is a sequence"):
        lstm_infer.load(data)


def test_a_sequence_op_fed_a_tensor_is_refused_at_load() -> None:
    data = model_bytes(
        [node("Relu", ["a"], ["r"]), node("SequenceLength", ["r"], ["n"])],
        ABC[:1],
        [vi("n", TP.INT64, [])],
    )
    with pytest.raises(ModelFormatError, match=r"'n' \(SequenceLength\).*'r' is a tensor"):
        lstm_infer.load(data)


def test_a_sequence_output_is_refused_at_load() -> None:
    data = model_bytes(
        [node("SequenceConstruct", ["a", "b"], ["s"])], ABC[:2], [seq_vi("s", TP.FLOAT, [2, 3])]
    )
    with pytest.raises(UnsupportedModelError, match="graph output 's' is a sequence"):
        lstm_infer.load(data)


def test_a_sequence_input_is_refused_at_load() -> None:
    data = model_bytes(
        [node("ConcatFromSequence", ["s"], ["y"], axis=0)],
        [seq_vi("s", TP.FLOAT, [2])],
        [vi("y", TP.FLOAT, [None])],
    )
    with pytest.raises(UnsupportedModelError, match="graph input 's' is a sequence"):
        lstm_infer.load(data)


@pytest.mark.parametrize("extra", [["list"], ["sequence", 1], [True]])
def test_native_value_entry_of_another_form_is_refused(extra: list) -> None:
    import json

    from lstm_infer.native_graph import FORMAT_NAME, graph_from_native

    meta = {
        "format": FORMAT_NAME,
        "version": 2,
        "kind": "graph",
        "inputs": [["x", "float32", [2], None, *extra]],
        "outputs": [["x", "float32", [2], None]],
        "nodes": [],
        "constants": {},
    }
    with pytest.raises(ModelFormatError, match=r"\+ 'sequence'"):
        graph_from_native({}, {FORMAT_NAME: json.dumps(meta)})
