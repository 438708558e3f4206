"""Hostile ONNX files: truncated or garbage bytes, contradictory or absurd attributes and
weights, external data that leaves the model's folder, control flow, malformed graph nodes.

Each must either load into a model that then runs (or refuses its feeds with an
:mod:`lstm_infer.errors` exception), or be refused with an exception that is an
:class:`~lstm_infer.errors.LstmInferError`, ``ValueError``, ``TypeError`` or ``OSError`` with a
message, before any large allocation. Never a crash, a hang, another exception type
(``KeyError``, ``IndexError``, ``AttributeError``, ``MemoryError``, a protobuf ``DecodeError``),
or code from the file being run. Every load here runs under :func:`bounded`: a wall-clock
alarm, an address-space cap (Linux) so that a runaway allocation fails instead of swapping,
and a tracemalloc bound on the peak.

Hypothesis mutates valid seeds (single RNN/LSTM/GRU nodes built by ``onnx_builders``, graphs
exported by ``torch.onnx.export``): random bytes, and structured edits of attributes,
initializers, node inputs, op types and declared shapes. CI runs a fixed set of examples
(``LSTM_INFER_FUZZ_EXAMPLES``, default 40, derandomized); a longer, randomised run:

    LSTM_INFER_FUZZ_EXAMPLES=5000 python -m pytest -q tests/test_robustness_onnx.py -k fuzz

"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import signal
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import require, require_all
from fuzz_settings import fuzz_examples, fuzz_settings, is_ci_run

onnx = require("onnx")
hypothesis = require("hypothesis")
st = require("hypothesis.strategies")

from onnx import AttributeProto, TensorProto, helper, numpy_helper  # noqa: E402
from onnx_builders import RecurrentCase  # noqa: E402

import lstm_infer  # noqa: E402
from lstm_infer.errors import (  # noqa: E402
    InputError,
    LstmInferError,
    ModelFormatError,
)

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None  # type: ignore[assignment]

CI_FUZZ = is_ci_run(fuzz_examples(40))
FUZZ = fuzz_settings(
    40,
    # CI reports a failing example as drawn; the long run shrinks it to a small reproducer.
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate]
    if CI_FUZZ
    else list(hypothesis.Phase),
)
# What a refusal may raise; anything else (and an empty message) is a bug.
REFUSALS = (LstmInferError, ValueError, TypeError, OSError)
# A refused (or loaded) seed-sized model allocates a few MB; never this much.
MEMORY_BOUND = 200 * 1024 * 1024
# The address space may grow by this much during one load before allocations fail.
ADDRESS_SPACE_HEADROOM = 2 * 1024**3
LOAD_SECONDS = 5.0
HOSTILE_INTS = (0, 1, -1, 2, 3, 7, 2**31 - 1, 2**31, -(2**31), 2**62, 2**63 - 1, -(2**63))


# ---- the guard around every load ---------------------------------------------------------------


class LoadTimeout(BaseException):
    """Raised by the alarm. A BaseException, so no ``except Exception`` can swallow it."""


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    if (
        not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise LoadTimeout(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    outer = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer[0]:
            signal.setitimer(signal.ITIMER_REAL, *outer)


def _address_space() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def address_space_capped() -> bool:
    """Whether :func:`bounded` can turn a runaway allocation into a MemoryError here."""
    return resource is not None and sys.platform.startswith("linux") and bool(_address_space())


@contextlib.contextmanager
def _address_space_cap() -> Iterator[None]:
    """Cap RLIMIT_AS at the current size plus the headroom (Linux), restoring it after."""
    if not address_space_capped():
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = (_address_space() or 0) + ADDRESS_SPACE_HEADROOM
    for limit in (soft, hard):
        if limit != resource.RLIM_INFINITY:
            cap = min(cap, limit)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextlib.contextmanager
def bounded(seconds: float = LOAD_SECONDS) -> Iterator[None]:
    """Run the body under an alarm and an address-space cap; fail if its peak allocation (as
    tracemalloc sees it, numpy arrays included) reaches MEMORY_BOUND."""
    tracemalloc.start()
    try:
        with _alarm(seconds), _address_space_cap():
            yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"allocated {peak / 2**20:.0f} MiB"


def exercise(model: lstm_infer.Model) -> None:
    """A model that loaded must run on small feeds built from its declared inputs, or refuse
    them with an lstm_infer error."""
    feeds: dict[str, np.ndarray] = {}
    for info in model.inputs:
        shape = tuple(d if isinstance(d, int) and 0 < d <= 64 else 2 for d in info.shape)
        if "int" in str(info.dtype):
            feeds[info.name] = np.zeros(shape, np.int64)
        else:
            feeds[info.name] = np.full(shape, 0.5, np.float32)
    try:
        outs = model.run(feeds)
    except LstmInferError:
        return
    for value in outs.values():
        assert isinstance(value, np.ndarray) and value.dtype == np.float32


def load_or_refuse(source: Any) -> bool:
    """True if ``source`` loaded (and the model then ran), False if it was refused cleanly."""
    with bounded():
        try:
            model = lstm_infer.load(source)
        except REFUSALS as exc:
            assert str(exc).strip(), f"{type(exc).__name__} without a message"
            return False
    # Outside the address-space cap: BLAS may map its per-thread buffers on a first run.
    with _alarm(LOAD_SECONDS):
        exercise(model)
    return True


def refused(
    source: Any,
    match: str | None = None,
    error: type[BaseException] | tuple[type[BaseException], ...] = ModelFormatError,
    seconds: float = LOAD_SECONDS,
) -> BaseException:
    """``lstm_infer.load(source)`` must raise ``error`` (matching ``match``), within bounds."""
    with bounded(seconds):
        with pytest.raises(error, match=match) as info:
            lstm_infer.load(source)
    assert str(info.value).strip(), f"{type(info.value).__name__} without a message"
    return info.value


@pytest.fixture(autouse=True, scope="module")
def _blas_warmed_up() -> None:
    """Let numpy's and the engine's BLAS start their threads and map their buffers now, not
    under the address-space cap of a load (where a many-core machine could run out)."""
    a = np.ones((512, 512), np.float32)
    a @ a
    built = RecurrentCase("LSTM", 8, 64, 32, 64).build()
    lstm_infer.load(built.model.SerializeToString()).run(built.feeds)


# ---- valid seeds --------------------------------------------------------------------------------

NODE_SEEDS = {
    "lstm": RecurrentCase(
        "LSTM", 3, 2, 4, 5, initial_state="input", peepholes="initializer", lengths=(3, 2)
    ),
    "gru-bidirectional-layout1": RecurrentCase(
        "GRU", 3, 2, 4, 5, direction="bidirectional", layout=1, linear_before_reset=1
    ),
    "rnn-reverse-relu-clip": RecurrentCase(
        "RNN", 3, 2, 4, 5, direction="reverse", activations=("Relu",), clip=3.0
    ),
}
GRAPH_SEEDS = {
    "lstm-L2-bi-bf-head-state": {
        "cell": "lstm",
        "layers": 2,
        "bidirectional": True,
        "batch_first": True,
        "head": True,
        "state": True,
    },
    "gru-embedding": {"cell": "gru", "embedding": True},
}


@functools.cache
def seed_blob(name: str) -> bytes:
    """Serialized valid seed: a single-node model, or a torchscript export of a small net."""
    if name in NODE_SEEDS:
        return NODE_SEEDS[name].build().model.SerializeToString()
    require("torch")
    import torch_graph_models as tg

    case = tg.GraphCase(**GRAPH_SEEDS[name])
    feeds = tg.example_inputs(case, 2, 3, np.random.default_rng(0))
    return tg.export(tg.build_net(case), case, feeds)


def seed(name: str = "lstm") -> onnx.ModelProto:
    """A fresh (mutable) ModelProto of a seed."""
    model = onnx.ModelProto()
    model.ParseFromString(seed_blob(name))
    return model


ALL_SEEDS = [*NODE_SEEDS, *GRAPH_SEEDS]
# Without torch the fuzzers still run on the single-node seeds.
FUZZ_SEEDS = ALL_SEEDS if importlib.util.find_spec("torch") or require_all() else [*NODE_SEEDS]


@pytest.mark.parametrize("name", ALL_SEEDS)
def test_valid_seeds_load_and_run(name: str) -> None:
    assert load_or_refuse(seed_blob(name))


# ---- bytes: truncation, garbage -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["lstm", "lstm-L2-bi-bf-head-state"])
def test_truncated_onnx_at_many_lengths(name: str, tmp_path: Path) -> None:
    """A prefix is refused, or (cut between top-level fields) is a smaller model that runs."""
    blob = seed_blob(name)
    cuts = set(range(0, 40)) | set(range(len(blob) - 24, len(blob)))
    cuts |= set(range(40, len(blob), max(1, len(blob) // 80)))
    for cut in sorted(c for c in cuts if 0 <= c < len(blob)):
        load_or_refuse(blob[:cut])
    path = tmp_path / "cut.onnx"
    for cut in (1, len(blob) // 3, len(blob) - 1):
        path.write_bytes(blob[:cut])
        load_or_refuse(path)


def test_exported_graph_without_opset_import_loads_or_is_refused() -> None:
    """Regression: opset 0 was taken as < 10, so Slice read opset-1 attributes (KeyError)."""
    model = seed("lstm-L2-bi-bf-head-state")
    del model.opset_import[:]
    load_or_refuse(model.SerializeToString())


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _nested_if(depth: int) -> bytes:
    """A model whose graph holds an If whose then_branch holds an If ... ``depth`` deep."""
    graph = b""
    for _ in range(depth):
        attribute = _field(1, b"then_branch") + _varint(20 << 3) + _varint(5) + _field(6, graph)
        node = _field(4, b"If") + _field(5, attribute)  # NodeProto.op_type, .attribute
        graph = _field(1, node)  # GraphProto.node
    return _varint(1 << 3) + _varint(8) + _field(7, graph)  # ModelProto.ir_version, .graph


GARBAGE = {
    "empty": b"",
    "zero": b"\x00",
    "ff": b"\xff" * 64,
    "random": np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "text": b"ir_version: 8\ngraph { node { op_type: 'LSTM' } }\n",
    "json": b'{"graph": {"node": [{"op_type": "LSTM"}]}}',
    # field 7 (graph), length-delimited, claiming 4 GiB of payload
    "huge-length": b"\x3a\xff\xff\xff\xff\x0f" + b"\x00" * 16,
    # field 7 with a 10-byte varint length (overflows 64 bits)
    "overlong-varint": b"\x3a" + b"\xff" * 10 + b"\x01",
    "zip-magic": b"PK\x03\x04" + b"\x00" * 60,
    "pickle-magic": b"\x80\x02" + b"garbage" * 8,
    "safetensors-ish": b"\x10\x00\x00\x00\x00\x00\x00\x00{" + b" " * 15,
    "nested-if-40": _nested_if(40),
    "nested-if-5000": _nested_if(5000),  # beyond protobuf's recursion limit
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_bytes_are_refused(name: str, tmp_path: Path) -> None:
    refused(GARBAGE[name], error=REFUSALS)
    path = tmp_path / "garbage.onnx"
    path.write_bytes(GARBAGE[name])
    refused(path, error=REFUSALS)


def test_paths_that_are_not_model_files_are_refused(tmp_path: Path) -> None:
    refused(tmp_path, error=OSError)
    refused(tmp_path / "absent.onnx", error=OSError)
    if hasattr(os, "mkfifo"):  # never opened: a FIFO would block the reader forever
        os.mkfifo(tmp_path / "fifo.onnx")
        refused(tmp_path / "fifo.onnx", error=OSError)


# ---- hypothesis: bytes --------------------------------------------------------------------------


@st.composite
def byte_mutations(draw: Any, blob: bytes) -> bytes:
    """``blob`` with 1..4 edits: overwrite, insert, delete, truncate, or a hostile varint."""
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["byte", "insert", "delete", "truncate", "varint"]))
        if op == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
        else:  # a protobuf varint of a hostile value over the byte at pos
            data[pos : pos + 1] = _varint(draw(st.sampled_from(HOSTILE_INTS)) % (1 << 64))
    return bytes(data)


@FUZZ
@hypothesis.given(data=st.data(), name=st.sampled_from(FUZZ_SEEDS))
def test_fuzz_onnx_bytes(data: Any, name: str) -> None:
    load_or_refuse(data.draw(byte_mutations(seed_blob(name)), label="blob"))


# ---- hypothesis: structured edits ---------------------------------------------------------------

OP_TYPES = (
    "LSTM",
    "GRU",
    "RNN",
    "Loop",
    "Scan",
    "If",
    "NoSuchOp",
    "Identity",
    "Add",
    "MatMul",
    "Gemm",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Reshape",
    "Concat",
    "Slice",
    "Gather",
    "Shape",
    "Constant",
    "Cast",
    "Softmax",
)
ELEM_TYPES = (0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 16, 17, 99)


def _hostile_attribute(draw: Any, attr: Any) -> None:
    """Give ``attr`` a hostile value of its own type, or another type altogether."""
    kind = attr.type
    if draw(st.integers(0, 9)) == 0:
        attr.type = draw(st.sampled_from(sorted(AttributeProto.AttributeType.values())))
    elif kind == AttributeProto.INT:
        attr.i = draw(st.sampled_from(HOSTILE_INTS))
    elif kind == AttributeProto.FLOAT:
        attr.f = draw(st.sampled_from([0.0, -1.0, math.nan, math.inf, 1e38]))
    elif kind == AttributeProto.INTS:
        if attr.ints and draw(st.booleans()):
            attr.ints[draw(st.integers(0, len(attr.ints) - 1))] = draw(
                st.sampled_from(HOSTILE_INTS)
            )
        else:
            attr.ints.append(draw(st.sampled_from(HOSTILE_INTS)))
    elif kind == AttributeProto.FLOATS:
        attr.floats.append(draw(st.sampled_from([math.nan, -1.0, 1e38])))
    elif kind == AttributeProto.STRING:
        attr.s = draw(
            st.sampled_from([b"", b"sideways", b"\xff\xfe", b"reverse", b"bidirectional"])
        )
    elif kind == AttributeProto.STRINGS:
        if attr.strings and draw(st.booleans()):
            del attr.strings[-1]
        else:
            attr.strings.append(draw(st.sampled_from([b"Tanh", b"Swish", b"", b"\xff"])))
    elif kind == AttributeProto.TENSOR:
        _hostile_tensor(draw, attr.t)
    else:
        attr.Clear()


def _hostile_tensor(draw: Any, t: Any) -> None:
    """Edit a TensorProto: a dim, its rank, its element type, its data, or make it external."""
    op = draw(st.sampled_from(["dim", "rank", "dtype", "data", "short", "external"]))
    if op == "dim" and t.dims:
        t.dims[draw(st.integers(0, len(t.dims) - 1))] = draw(st.sampled_from(HOSTILE_INTS))
    elif op == "rank":
        if t.dims and draw(st.booleans()):
            del t.dims[-1]
        else:
            t.dims.append(draw(st.sampled_from(HOSTILE_INTS)))
    elif op == "dtype":
        t.data_type = draw(st.sampled_from(ELEM_TYPES))
    elif op == "data":
        try:
            arr = numpy_helper.to_array(t).copy()
        except Exception:  # noqa: BLE001 - an earlier edit broke it already
            return
        if arr.size and arr.dtype.kind in "fiu":
            values = [math.nan, math.inf, 1e30, -1.0] if arr.dtype.kind == "f" else [-1, 0, 7]
            arr.flat[draw(st.integers(0, arr.size - 1))] = draw(st.sampled_from(values))
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    elif op == "short":
        t.raw_data = t.raw_data[: draw(st.integers(0, max(0, len(t.raw_data) - 1)))]
    else:
        location = draw(st.sampled_from(["../outside.bin", "/etc/hostname", "w.bin", ""]))
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value=location)


def _mutation_sites(model: Any) -> list[tuple[str, Callable[[Any], None]]]:
    """Every place a structured edit can hit, as (label, apply(draw))."""
    graph = model.graph
    names = [i.name for i in graph.input] + [t.name for t in graph.initializer]
    names += [o for n in graph.node for o in n.output] + ["", "nowhere"]
    sites: list[tuple[str, Callable[[Any], None]]] = []
    for n in graph.node:
        label = f"{n.op_type}:{n.name}"
        for a in n.attribute:
            sites.append((f"{label}.{a.name}", functools.partial(_hostile_attribute, attr=a)))

        def rewire(draw: Any, n: Any = n) -> None:
            if n.input and draw(st.integers(0, 3)):
                n.input[draw(st.integers(0, len(n.input) - 1))] = draw(st.sampled_from(names))
            elif n.input and draw(st.booleans()):
                del n.input[-1]
            else:
                n.input.append(draw(st.sampled_from(names)))

        def retype(draw: Any, n: Any = n) -> None:
            n.op_type = draw(st.sampled_from(OP_TYPES))

        def drop_attribute(draw: Any, n: Any = n) -> None:
            if n.attribute:
                del n.attribute[draw(st.integers(0, len(n.attribute) - 1))]

        def drop_node(draw: Any, n: Any = n) -> None:
            graph.node.remove(n)

        sites += [
            (f"{label} inputs", rewire),
            (f"{label} op_type", retype),
            (f"{label} drop attribute", drop_attribute),
            (f"{label} drop", drop_node),
        ]
    for t in graph.initializer:
        sites.append((f"initializer {t.name}", functools.partial(_hostile_tensor, t=t)))
    for vi in [*graph.input, *graph.output]:

        def reshape(draw: Any, vi: Any = vi) -> None:
            dims = vi.type.tensor_type.shape.dim
            if dims and draw(st.integers(0, 3)):
                d = dims[draw(st.integers(0, len(dims) - 1))]
                if draw(st.booleans()):
                    d.dim_value = draw(st.sampled_from(HOSTILE_INTS))
                else:
                    d.dim_param = draw(st.sampled_from(["", "batch", "seq", "other"]))
            else:
                vi.type.tensor_type.elem_type = draw(st.sampled_from(ELEM_TYPES))

        sites.append((f"value_info {vi.name}", reshape))

    def opset(draw: Any) -> None:
        model.opset_import[0].version = draw(st.sampled_from(HOSTILE_INTS))

    sites.append(("opset", opset))
    return sites


@st.composite
def field_mutations(draw: Any, blob: bytes) -> bytes:
    """A parsed seed with 1..3 structured edits, serialized again."""
    model = onnx.ModelProto()
    model.ParseFromString(blob)
    for _ in range(draw(st.integers(1, 3))):
        sites = _mutation_sites(model)
        label, apply = sites[draw(st.integers(0, len(sites) - 1))]
        hypothesis.note(f"edit: {label}")
        apply(draw)
    return model.SerializeToString()


@FUZZ
@hypothesis.given(data=st.data(), name=st.sampled_from(FUZZ_SEEDS))
def test_fuzz_onnx_fields(data: Any, name: str) -> None:
    load_or_refuse(data.draw(field_mutations(seed_blob(name)), label="blob"))


# ---- attributes of a single node ----------------------------------------------------------------


def with_attribute(model: Any, name: str, value: Any, node: int = -1) -> bytes:
    """``model`` with attribute ``name`` of its node ``node`` set (None: removed)."""
    target = model.graph.node[node]
    kept = [a for a in target.attribute if a.name != name]
    del target.attribute[:]
    target.attribute.extend(kept)
    if value is not None:
        target.attribute.append(helper.make_attribute(name, value))
    return model.SerializeToString()


@pytest.mark.parametrize("hidden", [2**31, 2**31 - 1, 2**63 - 1, -1, -(2**63), 4, 6, 4 * 5])
def test_hidden_size_contradicting_the_weights_is_refused(hidden: int) -> None:
    refused(with_attribute(seed("lstm"), "hidden_size", hidden), match="hidden_size")


def test_hidden_size_zero_is_refused() -> None:
    """Regression: 0 was taken for "absent" and the weights' hidden size used instead."""
    refused(with_attribute(seed("lstm"), "hidden_size", 0), match="hidden_size")


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("direction", "sideways", "direction"),
        ("direction", "bidirectional", "direction"),  # W holds one direction
        ("clip", -1.0, "clip"),
        ("clip", math.nan, "clip"),
        ("clip", math.inf, "clip"),
        ("clip", 0.0, "clip"),
        ("layout", 5, "layout"),
        ("layout", -1, "layout"),
        ("activations", ["Sigmoid"], "activations"),
        ("activations", ["Sigmoid", "Tanh", "Tanh", "Tanh"], "activations"),
        ("activations", ["Sigmoid", "Tanh", "Swish"], "Swish"),
        ("activations", ["Sigmoid", "", "Tanh"], "activation"),
        ("activations", ["Sigmoid", "Tanh", "__import__('os')"], "activation"),
        ("linear_before_reset", 1, "linear_before_reset"),
        ("no_such_attribute", 1, "no_such_attribute"),
    ],
    ids=lambda v: repr(v)[:24],
)
def test_bad_lstm_attribute_is_refused(name: str, value: Any, match: str) -> None:
    refused(with_attribute(seed("lstm"), name, value), match=f"(?i){match}")


@pytest.mark.parametrize("seed_name", ["lstm", "lstm-L2-bi-bf-head-state"])
def test_non_utf8_string_attribute_is_refused(seed_name: str) -> None:
    model = seed(seed_name)
    node = next(n for n in model.graph.node if n.op_type == "LSTM")
    kept = [a for a in node.attribute if a.name != "direction"]
    del node.attribute[:]
    node.attribute.extend(kept)
    node.attribute.add(name="direction", type=AttributeProto.STRING, s=b"\xff\xfe")
    refused(model.SerializeToString(), error=REFUSALS)


@pytest.mark.parametrize(
    ("seed_name", "name", "value"),
    [
        ("gru-bidirectional-layout1", "activations", ["Sigmoid", "Tanh", "Relu"]),  # 4 needed
        ("gru-bidirectional-layout1", "input_forget", 1),
        ("gru-bidirectional-layout1", "direction", "forward"),  # W holds two directions
        ("rnn-reverse-relu-clip", "activations", ["Relu", "Relu"]),
        ("rnn-reverse-relu-clip", "clip", -3.0),
        ("rnn-reverse-relu-clip", "layout", 2),
    ],
)
def test_bad_gru_and_rnn_attributes_are_refused(seed_name: str, name: str, value: Any) -> None:
    refused(with_attribute(seed(seed_name), name, value))


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("hidden_size", AttributeProto.STRING),
        ("hidden_size", AttributeProto.FLOAT),
        ("hidden_size", AttributeProto.TENSOR),
        ("hidden_size", AttributeProto.GRAPH),
        ("hidden_size", AttributeProto.UNDEFINED),
        ("clip", AttributeProto.STRING),
        ("clip", AttributeProto.INTS),
        ("direction", AttributeProto.INT),
        ("activations", AttributeProto.INT),
        ("layout", AttributeProto.STRING),
    ],
)
def test_attribute_of_the_wrong_type_never_leaks(name: str, kind: int) -> None:
    """The attribute's type field contradicts its value: refused, or read as its default."""
    model = seed("lstm")
    with_attribute(model, name, {"clip": 1.0, "direction": "forward"}.get(name, 1))
    attr = next(a for a in model.graph.node[0].attribute if a.name == name)
    attr.type = kind
    if kind == AttributeProto.STRING:
        attr.s = b"\xff\xfe"
    load_or_refuse(model.SerializeToString())


# ---- weights ------------------------------------------------------------------------------------


def replace_initializer(model: Any, name: str, tensor: Any | None) -> bytes:
    """``model`` with initializer ``name`` replaced by ``tensor`` (None: removed)."""
    kept = [t for t in model.graph.initializer if t.name != name]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    if tensor is not None:
        tensor.name = name
        model.graph.initializer.append(tensor)
    return model.SerializeToString()


def initializer(model: Any, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def raw_tensor(dims: list[int], data_type: int = TensorProto.FLOAT, raw: bytes = b"") -> Any:
    t = TensorProto()
    t.data_type = data_type
    t.dims.extend(dims)
    t.raw_data = raw
    return t


W_SHAPE = (1, 20, 4)  # the "lstm" seed: 4 gates x hidden 5, input 4


def _float_data_claiming_more() -> Any:
    tensor = helper.make_tensor("W", TensorProto.FLOAT, list(W_SHAPE), [0.0] * 80)
    tensor.dims[1] = 2**33  # make_tensor checks the count; contradict it afterwards
    return tensor


def _weight_cases() -> dict[str, tuple[Any, str]]:
    """Hostile replacements of the "lstm" seed's W, with what the refusal should mention."""
    zeros = functools.partial(np.zeros, dtype=np.float32)
    return {
        "2-D": (numpy_helper.from_array(zeros(W_SHAPE[1:])), "3-D|shape"),
        "4-D": (numpy_helper.from_array(zeros((1, *W_SHAPE))), "3-D|shape"),
        "scalar": (numpy_helper.from_array(np.float32(1)), "3-D|shape"),
        "wrong gates": (numpy_helper.from_array(zeros((1, 15, 4))), "hidden_size"),
        "two directions": (numpy_helper.from_array(zeros((2, 20, 4))), "direction"),
        "no input features": (numpy_helper.from_array(zeros((1, 20, 0))), "input"),
        "bool": (numpy_helper.from_array(np.zeros(W_SHAPE, bool)), "dtype|numeric"),
        "complex": (numpy_helper.from_array(np.zeros(W_SHAPE, np.complex64)), "dtype|numeric"),
        "string": (
            helper.make_tensor("W", TensorProto.STRING, W_SHAPE, [b"a"] * 80),
            "dtype|numeric|string",
        ),
        "string too short": (raw_tensor(list(W_SHAPE), TensorProto.STRING), "decoded|shape"),
        "raw data short": (raw_tensor(list(W_SHAPE), raw=b"\0" * 7), "decoded"),
        "raw data long": (raw_tensor(list(W_SHAPE), raw=b"\0" * 4 * 81), "decoded"),
        "dims huge, no data": (raw_tensor([1, 4 * 2**31, 4]), "decoded"),
        "dims overflow int64": (raw_tensor([2**62, 2**62, 4]), "decoded"),
        "float_data short": (_float_data_claiming_more(), "decoded"),
        "element type undefined": (raw_tensor(list(W_SHAPE), 0, b"\0" * 320), "decoded"),
        "element type 999": (raw_tensor(list(W_SHAPE), 999, b"\0" * 320), "decoded"),
    }


@pytest.mark.parametrize("case", list(_weight_cases()))
def test_bad_weight_initializer_is_refused(case: str) -> None:
    tensor, match = _weight_cases()[case]
    refused(replace_initializer(seed("lstm"), "W", tensor), match=f"(?i){match}")


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.float16, np.float64])
def test_weights_of_another_numeric_type_load_or_are_refused(dtype: Any) -> None:
    model = seed("lstm")
    W = initializer(model, "W")
    load_or_refuse(replace_initializer(model, "W", numpy_helper.from_array(W.astype(dtype))))


def test_negative_weight_dims_load_or_are_refused() -> None:
    """numpy reads a negative dim as "infer this one"; whatever the loader makes of it."""
    tensor = raw_tensor([1, -20, 4], raw=b"\0" * 320)
    load_or_refuse(replace_initializer(seed("lstm"), "W", tensor))


@pytest.mark.parametrize(("name", "size"), [("B", 7), ("B", 80), ("P", 7), ("P", 16)])
def test_bias_and_peephole_shapes_are_checked(name: str, size: int) -> None:
    tensor = numpy_helper.from_array(np.zeros((1, size), np.float32))
    refused(replace_initializer(seed("lstm"), name, tensor), match=name)


@pytest.mark.parametrize(
    "inputs",
    [
        ["X"],
        ["X", "", "R"],
        ["X", "W", ""],
        ["X", "W"],
        [],
        ["", "W", "R"],
        ["X", "W", "R", "nowhere"],
        ["X", "W", "no_such_tensor"],
        ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P", "P"],
        ["X", "W", "R", "B", "", "", "", "", "", "", "", "W"],
    ],
    ids=lambda v: ",".join(v) or "none",
)
def test_missing_or_extra_node_inputs_are_refused(inputs: list[str]) -> None:
    model = seed("lstm")
    node = model.graph.node[0]
    del node.input[:]
    node.input.extend(inputs)
    refused(model.SerializeToString())


@pytest.mark.parametrize("name", ["W", "R"])
def test_weight_initializer_missing_is_refused(name: str) -> None:
    refused(replace_initializer(seed("lstm"), name, None), match=name)


@pytest.mark.parametrize(
    ("op_type", "domain"),
    [("NoSuchOp", ""), ("LSTM", "com.example"), ("Conv", ""), ("GRU", ""), ("RNN", "")],
)
def test_unknown_or_mismatched_op_is_refused(op_type: str, domain: str) -> None:
    """A foreign op or domain, or an LSTM's 8 inputs on a GRU/RNN node (6 at most)."""
    model = seed("lstm")
    model.graph.node[0].op_type = op_type
    model.graph.node[0].domain = domain
    refused(model.SerializeToString())


# ---- absurd sizes: refused before allocating ----------------------------------------------------

needs_address_space_cap = pytest.mark.skipif(
    not address_space_capped(),
    reason="needs RLIMIT_AS (Linux) to keep a runaway allocation from exhausting memory",
)


@pytest.mark.parametrize("hidden", [2**31, 2**31 - 1, 0, -1])
def test_absurd_hidden_size_with_data_less_weights_is_refused(hidden: int) -> None:
    """Initializers whose dims match the attribute but carry no data."""
    model = seed("lstm")
    with_attribute(model, "hidden_size", hidden)
    replace_initializer(model, "W", raw_tensor([1, 4 * hidden, 4]))
    refused(replace_initializer(model, "R", raw_tensor([1, 4 * hidden, hidden])))


@needs_address_space_cap
@pytest.mark.parametrize("hidden", [2**31, 2**31 - 1, 0, -1])
def test_absurd_hidden_size_with_matching_weight_inputs_is_refused(hidden: int) -> None:
    """Regression: W/R fed at run time got an np.zeros placeholder of their declared shape
    (128 GiB here) before any check."""
    model = RecurrentCase("LSTM", 3, 2, 4, 5, weights="input").build().model
    with_attribute(model, "hidden_size", hidden)
    for vi in model.graph.input:
        if vi.name in ("W", "R"):
            dims = vi.type.tensor_type.shape.dim
            dims[1].dim_value = 4 * hidden
            if vi.name == "R":
                dims[2].dim_value = hidden
    refused(model.SerializeToString(), error=REFUSALS)


def _external(tensor: Any, location: str, **extra: Any) -> Any:
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    tensor.external_data.add(key="location", value=location)
    for key, value in extra.items():
        tensor.external_data.add(key=key, value=str(value))
    return tensor


@needs_address_space_cap
@pytest.mark.parametrize("hidden", [2**31, 2**31 - 1])
def test_absurd_hidden_size_with_matching_external_weights_is_refused(
    hidden: int, tmp_path: Path
) -> None:
    """Regression: external data was read whole (128 GiB here) before hidden_size was checked."""
    model = seed("lstm")
    with_attribute(model, "hidden_size", hidden)
    W = next(t for t in model.graph.initializer if t.name == "W")
    del W.dims[:]
    W.dims.extend([1, 4 * hidden, 4])
    length = 4 * 4 * hidden * 4
    try:
        with open(tmp_path / "w.bin", "wb") as fh:
            fh.truncate(length)  # sparse: no disk space used
    except OSError as exc:
        pytest.skip(f"cannot create a sparse {length}-byte file here: {exc}")
    _external(W, "w.bin", offset=0, length=length)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    refused(path, match="(?i)hidden_size|size", error=REFUSALS)


def _sparse_external_model(folder: Path, name: str, dims: list[int]) -> Path:
    """The "lstm" seed whose initializer ``name`` (added if absent) has ``dims`` and lives in
    a sparse side file of exactly the matching length."""
    model = seed("lstm")
    tensor = next((t for t in model.graph.initializer if t.name == name), None)
    if tensor is None:
        tensor = model.graph.initializer.add(name=name, data_type=TensorProto.FLOAT)
    del tensor.dims[:]
    tensor.dims.extend(dims)
    length = 4 * math.prod(dims)
    try:
        with open(folder / f"{name}.bin", "wb") as fh:
            fh.truncate(length)
    except OSError as exc:
        pytest.skip(f"cannot create a sparse {length}-byte file here: {exc}")
    _external(tensor, f"{name}.bin", offset=0, length=length)
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@needs_address_space_cap
@pytest.mark.parametrize(
    ("name", "dims"),
    [("W", [1, 20, 2**31]), ("B", [1, 2**34]), ("unused", [2**34])],
    ids=["W-input_size-2**31", "B-64GiB", "unused-64GiB"],
)
def test_absurd_external_tensor_is_not_read(name: str, dims: list[int], tmp_path: Path) -> None:
    load_or_refuse(_sparse_external_model(tmp_path, name, dims))


# ---- external data ------------------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """tmp/model/ holds w.bin (the seed's W); tmp/outside.bin holds the same bytes."""
    folder = tmp_path / "model"
    folder.mkdir()
    raw = initializer(seed("lstm"), "W").astype(np.float32).tobytes()
    (folder / "w.bin").write_bytes(raw)
    (tmp_path / "outside.bin").write_bytes(raw)
    return folder


def external_model(folder: Path, location: str, name: str = "W", **extra: Any) -> Path:
    """The "lstm" seed with initializer ``name`` in external data, saved in ``folder``."""
    model = seed("lstm")
    _external(next(t for t in model.graph.initializer if t.name == name), location, **extra)
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_inside_the_folder_loads(model_dir: Path) -> None:
    assert load_or_refuse(external_model(model_dir, "w.bin"))
    assert load_or_refuse(external_model(model_dir, "./sub/../w.bin"))


def _outside_locations(model_dir: Path) -> dict[str, str]:
    outside = model_dir.parent / "outside.bin"
    (model_dir / "link.bin").symlink_to(outside)
    (model_dir / "sub").mkdir()
    return {
        "absolute": str(outside),
        "dotdot": "../outside.bin",
        "dotdot-deep": "sub/../../outside.bin",
        "symlink": "link.bin",
        "dev-zero": "/dev/zero",
        "proc": "/proc/self/environ",
        "home": "~/.bashrc",
    }


@pytest.mark.parametrize(
    "case", ["absolute", "dotdot", "dotdot-deep", "symlink", "dev-zero", "proc", "home"]
)
def test_external_data_outside_the_folder_is_refused(model_dir: Path, case: str) -> None:
    location = _outside_locations(model_dir)[case]
    if case == "home":  # not expanded: simply a missing file inside the folder
        refused(external_model(model_dir, location), match="(?i)missing|outside")
        return
    refused(external_model(model_dir, location), match="(?i)outside")


def test_external_data_outside_the_folder_is_never_opened(model_dir: Path) -> None:
    """A FIFO outside the folder would block whoever opens it; the loader must not."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(model_dir.parent / "trap.fifo")
    (model_dir / "trap.bin").symlink_to(model_dir.parent / "trap.fifo")
    os.mkfifo(model_dir / "inside.fifo")
    for location in ("../trap.fifo", str(model_dir.parent / "trap.fifo"), "trap.bin"):
        refused(external_model(model_dir, location), match="(?i)outside", seconds=3)
    # A FIFO inside the folder is no regular file either.
    refused(external_model(model_dir, "inside.fifo"), seconds=3)


@pytest.mark.parametrize(
    ("location", "extra", "match"),
    [
        ("missing.bin", {}, "missing"),
        ("", {}, "missing|location"),
        (".", {}, "missing|location"),
        ("sub", {}, "missing|location"),  # a directory
        ("w.bin", {"offset": 10**12}, "exceeds|range"),
        ("w.bin", {"offset": -5}, "exceeds|range|offset"),
        ("w.bin", {"length": 10**12}, "exceeds|range"),
        ("w.bin", {"length": -1}, "exceeds|range|length"),
        ("w.bin", {"offset": 8, "length": 320}, "exceeds|range"),
        ("w.bin", {"offset": 2**63, "length": 2**63}, "exceeds|range"),
        ("w.bin", {"length": 16}, "decoded|shape"),
        ("w.bin", {"offset": "abc"}, ""),
        ("w.bin", {"length": "1e3"}, ""),
        ("w.bin\x00../outside.bin", {}, ""),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_bad_external_data_reference_is_refused(
    model_dir: Path, location: str, extra: dict[str, Any], match: str
) -> None:
    (model_dir / "sub").mkdir(exist_ok=True)
    path = external_model(model_dir, location, **extra)
    refused(path, match=f"(?i){match}" if match else None, error=REFUSALS)


def test_external_data_needs_a_folder(model_dir: Path) -> None:
    """Bytes have no folder to read side files from."""
    blob = external_model(model_dir, "w.bin").read_bytes()
    refused(blob, match="(?i)external")


def test_external_data_of_a_model_proto_is_not_read_from_the_working_directory(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a ModelProto skipped the folder checks and onnx read its side files
    relative to the working directory."""
    proto = onnx.ModelProto()
    proto.ParseFromString(external_model(model_dir, "outside.bin").read_bytes())
    monkeypatch.chdir(model_dir.parent)  # where outside.bin is
    refused(proto, match="(?i)external")


def test_external_data_in_a_constant_node_is_checked(model_dir: Path) -> None:
    model = seed("lstm")
    W = next(t for t in model.graph.initializer if t.name == "W")
    model.graph.initializer.remove(W)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["W"], value=W))
    _external(model.graph.node[0].attribute[0].t, "../outside.bin")
    path = model_dir / "m.onnx"
    path.write_bytes(model.SerializeToString())
    refused(path, match="(?i)outside")
    refused(path.read_bytes(), match="(?i)external")


# ---- graphs: control flow, malformed nodes, absurd constants -------------------------------------


def lstm_graph(tail: list[Any], inits: dict[str, np.ndarray] | None = None) -> bytes:
    """X -> LSTM -> Squeeze(Y, axis 1) = "Ys" -> ``tail`` nodes -> graph output "out"."""
    model = RecurrentCase("LSTM", 3, 2, 4, 5).build().model
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    graph.node.append(helper.make_node("Squeeze", ["Y", "axis1"], ["Ys"]))
    graph.node.extend(tail)
    for name, value in (inits or {}).items():
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("out", TensorProto.FLOAT, None))
    return model.SerializeToString()


def test_lstm_graph_seed_loads() -> None:
    assert load_or_refuse(lstm_graph([helper.make_node("Identity", ["Ys"], ["out"])]))


def _loop_body() -> Any:
    return helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "v_in"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )


def _scan_body() -> Any:
    return helper.make_graph(
        [helper.make_node("Add", ["s_in", "x_in"], ["s_out"])],
        "scan_body",
        [
            helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [5]),
            helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [5]),
        ],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [5])],
    )


def _branch(value: float, outer: str | None = None) -> Any:
    node = (
        helper.make_node("Identity", [outer], ["r"])
        if outer
        else helper.make_node("Constant", [], ["r"], value_floats=[value] * 5)
    )
    return helper.make_graph([node], "branch", [], [helper.make_tensor_value_info("r", 1, None)])


def control_flow(op: str, on_constants: bool, trips: int = 3) -> bytes:
    """A Loop/Scan/If feeding the model's output: over constants, or over the sequence."""
    data = "zeros5" if on_constants else "Ys"
    consts = {
        "trips": np.array(trips, np.int64),
        "true": np.array(True),
        "zeros5": np.zeros(5, np.float32),
        "rows": np.zeros((3, 5), np.float32),
    }
    if op == "Loop":
        node = helper.make_node("Loop", ["trips", "true", data], ["cf"], body=_loop_body())
    elif op == "Scan":
        scanned = "rows" if on_constants else "Ys"
        node = helper.make_node(
            "Scan", ["zeros5", scanned], ["cf"], body=_scan_body(), num_scan_inputs=1
        )
    else:
        outer = None if on_constants else "Ys"
        node = helper.make_node(
            "If", ["true"], ["cf"], then_branch=_branch(1.0, outer), else_branch=_branch(2.0, outer)
        )
    tail = [node, helper.make_node("Add", ["Ys", "cf"], ["out"])]
    if not on_constants:
        tail[-1] = helper.make_node("Identity", ["cf"], ["out"])
    return lstm_graph(tail, consts)


# (Scan over the sequence is left out: that seed's body declares rank-1 slices of a rank-4
# output, which onnxruntime rejects as ill-typed.)
@pytest.mark.parametrize(
    ("op", "on_constants"),
    [("If", False), ("If", True), ("Loop", False), ("Loop", True), ("Scan", True)],
)
def test_control_flow_around_the_recurrence_runs_like_onnxruntime(
    op: str, on_constants: bool
) -> None:
    """If, Loop and Scan are supported (tests/test_graph_control.py, test_graph_loop.py):
    here the seeds above run and match. (Ops of constants were once folded by onnx's
    ReferenceEvaluator, bodies and all: control flow is never folded at load now.)"""
    ort = require("onnxruntime")
    data = control_flow(op, on_constants=on_constants)
    model = lstm_infer.load(data)
    x = np.random.default_rng(3).standard_normal((3, 2, 4)).astype(np.float32)
    name = model.inputs[0].name
    so = ort.SessionOptions()
    so.log_severity_level = 3
    want = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(None, {name: x})
    np.testing.assert_allclose(model.run({name: x})["out"], want[0], atol=1e-5)


def test_control_flow_with_an_absurd_trip_count_does_not_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: a Loop of 2**62 trips over constants ran at load time, forever. Loops are
    never run at load now; a run stops at the iteration bound with an error naming the node."""
    from lstm_infer.ops import control

    monkeypatch.setattr(control, "LOOP_MAX_ITERATIONS", 500)
    start = time.perf_counter()
    model = lstm_infer.load(control_flow("Loop", on_constants=True, trips=2**62))
    assert time.perf_counter() - start < 2
    x = np.zeros((3, 2, 4), np.float32)
    with pytest.raises(InputError, match="Loop.*more than 500 iterations"):
        model.run({model.inputs[0].name: x})


def _node_cases() -> dict[str, tuple[list[Any], dict[str, Any]]]:
    make = helper.make_node
    return {
        "Identity-no-input": ([make("Identity", [], ["out"])], {}),
        "Relu-no-input": ([make("Relu", [], ["out"])], {}),
        "Softmax-no-input": ([make("Softmax", [], ["out"])], {}),
        "Transpose-no-input": ([make("Transpose", [], ["out"])], {}),
        "Add-one-input": ([make("Add", ["Ys"], ["out"])], {}),
        "MatMul-one-input": ([make("MatMul", ["Ys"], ["out"])], {}),
        "Gemm-one-input": ([make("Gemm", ["Ys"], ["out"])], {}),
        "Reshape-one-input": ([make("Reshape", ["Ys"], ["out"])], {}),
        "Gather-one-input": ([make("Gather", ["Ys"], ["out"])], {}),
        "Slice-one-input": ([make("Slice", ["Ys"], ["out"])], {}),
        "Cast-without-to": ([make("Cast", ["Ys"], ["out"])], {}),
        "Concat-without-axis": ([make("Concat", ["Ys", "Ys"], ["out"])], {}),
        "Gather-index-out-of-range": (
            [make("Gather", ["table", "index"], ["g"]), make("Add", ["Ys", "g"], ["out"])],
            {"table": np.ones(5, np.float32), "index": np.array([7], np.int64)},
        ),
    }


@pytest.mark.parametrize("case", list(_node_cases()))
def test_malformed_graph_node_is_refused(case: str) -> None:
    """Regression: handlers indexed ins[k] / attrs[...] unchecked (IndexError, KeyError)."""
    tail, inits = _node_cases()[case]
    refused(lstm_graph(tail, inits), match=tail[0].op_type)


@pytest.mark.parametrize("value_type", ["UNDEFINED", "FLOAT", "INTS", "STRING"])
@pytest.mark.parametrize("where", ["single-node", "graph"])
def test_constant_value_of_the_wrong_attribute_type_is_refused(value_type: str, where: str) -> None:
    """Regression: tensor_to_numpy's error message read ``.name`` of a non-tensor
    (AttributeError)."""
    if where == "single-node":  # W comes from a Constant node
        model = seed("lstm")
        W = next(t for t in model.graph.initializer if t.name == "W")
        model.graph.initializer.remove(W)
        model.graph.node.insert(0, helper.make_node("Constant", [], ["W"], value=W))
    else:  # a bias Constant after the LSTM
        model = onnx.ModelProto()
        bias = numpy_helper.from_array(np.zeros(5, np.float32))
        tail = [
            helper.make_node("Constant", [], ["c"], value=bias),
            helper.make_node("Add", ["Ys", "c"], ["out"]),
        ]
        model.ParseFromString(lstm_graph(tail))
    constant = next(n for n in model.graph.node if n.op_type == "Constant")
    constant.attribute[0].type = getattr(AttributeProto, value_type)
    refused(model.SerializeToString(), match="(?i)constant|value|tensor")


def _absurd_constant(op: str, elements: int) -> tuple[list[Any], dict[str, Any]]:
    """A constant subgraph making ``elements`` floats, added to the sequence."""
    make = helper.make_node
    shape = np.array([elements // 2**10, 2**10], np.int64)
    nodes = {
        "ConstantOfShape": [make("ConstantOfShape", ["shape"], ["big"])],
        "Expand": [make("Expand", ["one", "shape"], ["big"])],
        "Range": [make("Range", ["start", "limit", "delta"], ["big"])],
        "Tile": [make("Tile", ["one", "reps"], ["big"])],
    }[op]
    inits = {
        "shape": shape,
        "one": np.ones((1, 1), np.float32),
        "reps": shape,
        "start": np.array(0.0, np.float32),
        "limit": np.array(float(elements), np.float32),
        "delta": np.array(1.0, np.float32),
    }
    return [*nodes, make("Add", ["Ys", "big"], ["out"])], inits


@needs_address_space_cap
@pytest.mark.parametrize(
    ("op", "elements"),
    [
        ("ConstantOfShape", 2**26),
        ("ConstantOfShape", 2**50),
        ("Expand", 2**26),
        ("Expand", 2**50),
        ("Range", 2**26),
        ("Tile", 2**26),
    ],
)
def test_absurd_constant_subgraph_is_refused_before_allocating(op: str, elements: int) -> None:
    """Regression: constant subgraphs were materialised whatever their size (MemoryError)."""
    tail, inits = _absurd_constant(op, elements)
    refused(lstm_graph(tail, inits), error=REFUSALS)


RANK_BOMB = 40  # past numpy's 32-dimension limit on broadcasting (its RuntimeError leaked)


@pytest.mark.parametrize("op", ["Expand", "Add"])
def test_a_constant_of_absurd_rank_is_refused_at_load(op: str) -> None:
    """Regression: folding a rank-40 broadcast raised numpy's bare RuntimeError at load."""
    make = helper.make_node
    ones = np.ones((1,) * (RANK_BOMB - 1) + (2,), np.float32)
    node = (
        make("Expand", ["one", "shape"], ["big"])
        if op == "Expand"
        else make("Add", ["one", "ones"], ["big"])
    )
    inits = {
        "one": np.ones(1, np.float32),
        "shape": np.array([1] * (RANK_BOMB - 1) + [2], np.int64),
        "ones": ones,
    }
    refused(
        lstm_graph([node, make("Add", ["Ys", "big"], ["out"])], inits),
        match="rank|dimensions",
        error=REFUSALS,
    )


@pytest.mark.parametrize(("op", "arity"), [("Add", 2), ("Max", 3), ("Sum", 3), ("Where", 3)])
def test_a_feed_of_absurd_rank_is_refused_naming_the_node(op: str, arity: int) -> None:
    """Regression: a rank-40 feed into a broadcasting op raised numpy's bare RuntimeError (it
    is now refused as a feed, naming the input)."""
    names = [f"in{k}" for k in range(arity)]
    condition = op == "Where"
    inputs = [
        helper.make_tensor_value_info(
            n, TensorProto.BOOL if condition and k == 0 else TensorProto.FLOAT, None
        )
        for k, n in enumerate(names)
    ]
    graph = helper.make_graph(
        [helper.make_node(op, names, ["y"], name="broadcast")],
        "g",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = lstm_infer.load(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    shape = (1,) * RANK_BOMB
    feeds = {
        n: np.ones(shape, bool if condition and k == 0 else np.float32) for k, n in enumerate(names)
    }
    with pytest.raises(InputError, match=f"rank {RANK_BOMB}"):
        model.run(feeds)
    small = {n: v.reshape(1) for n, v in feeds.items()}
    assert model.run(small)["y"].shape == (1,)  # the model still runs


def _binary_model(op: str, **attrs: Any) -> lstm_infer.Model:
    """One int64 binary node named "broadcast" over two inputs of unknown shape."""
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["y"], name="broadcast", **attrs)],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.INT64, None) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)],
    )
    return lstm_infer.load(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )


BROADCAST_BOMB_OPS = [("Add", {}), ("Mul", {}), ("Pow", {}), ("Mod", {}), ("Mod", {"fmod": 1})]


@needs_address_space_cap
@pytest.mark.parametrize(("op", "attrs"), BROADCAST_BOMB_OPS)
def test_feeds_broadcasting_to_an_absurd_size_are_refused_naming_the_node(
    op: str, attrs: dict[str, int]
) -> None:
    """Regression (Mod): (100000, 1) and (1, 100000) broadcast to 10**10 elements (80 GB of
    int64); a binary op refuses them by its element bound before allocating, naming the
    node, and refuses shapes that do not broadcast in the same words. Mod asked numpy for
    the 80 GB first (only the executor's net turned the MemoryError, or numpy's ValueError
    for shapes that do not broadcast, into an InputError, and only where the allocation
    fails)."""
    model = _binary_model(op, **attrs)
    small = {"a": np.array([[7], [-7]], np.int64), "b": np.array([[2, -3]], np.int64)}
    assert model.run(small)["y"].shape == (2, 2)  # the model runs on sane feeds
    bomb = {"a": np.ones((100_000, 1), np.int64), "b": np.ones((1, 100_000), np.int64)}
    with bounded():
        with pytest.raises(
            InputError, match=r"'broadcast'.*\(100000, 100000\) would hold more than \d+ elements"
        ):
            model.run(bomb)
    apart = {"a": np.ones(3, np.int64), "b": np.ones(4, np.int64)}
    with pytest.raises(InputError, match=r"'broadcast'.*shapes \(3,\) and \(4,\) do not broadcast"):
        model.run(apart)


def test_lstm_output_through_identity_keeps_its_shape() -> None:
    """Regression: the lowering dropped the num_directions axis of Y behind an Identity."""
    require("onnxruntime")
    from onnx_builders import ort_run

    built = RecurrentCase("LSTM", 3, 2, 4, 5).build()
    model = built.model
    model.graph.node.append(helper.make_node("Identity", ["Y"], ["Y_out"]))
    model.graph.output[0].name = "Y_out"
    want = ort_run(model, built.feeds)["Y_out"]
    got = lstm_infer.load(model.SerializeToString()).run(built.feeds)["Y_out"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)
