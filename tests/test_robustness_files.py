"""Hostile model files: native (safetensors + JSON), plain safetensors, PyTorch checkpoints.

Truncations, bad header lengths, absurd sizes, contradictory metadata, missing or short zip
entries and disallowed pickle globals must each raise a clear
:class:`~lstm_infer.errors.ModelFormatError` (``CheckpointFormatError`` and
``UnsafeCheckpointError`` subclass it) before any large allocation: never a crash, a hang, or
code from the file being run. Hypothesis mutates valid files (bytes and JSON values) and
checks that every mutant is either refused cleanly or loads into a model that runs.

ONNX files are left out here on purpose: the ONNX importer is being rewritten and is fuzzed
with it. ``LSTM_INFER_FUZZ_EXAMPLES`` raises the number of hypothesis examples (see README).
"""

from __future__ import annotations

import copy
import functools
import io
import json
import os
import pickle
import struct
import tempfile
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import require
from fuzz_settings import fuzz_settings

import lstm_infer
from lstm_infer._spec import (
    DenseLayer,
    DirectionWeights,
    ModelSpec,
    RecurrentLayer,
    Signature,
    default_activations,
)
from lstm_infer.errors import (
    CheckpointFormatError,
    InputError,
    InputTypeError,
    LstmInferError,
    ModelFormatError,
    UnsafeCheckpointError,
)
from lstm_infer.safetensors_io import read_safetensors
from lstm_infer.torch_checkpoint import read_checkpoint

hypothesis = require("hypothesis")
st = require("hypothesis.strategies")

FUZZ = fuzz_settings(60)
# A refused file may allocate a little (parsing the header); never this much.
ALLOCATION_BOUND = 32 * 1024 * 1024


# ---- valid files to start from ---------------------------------------------------------------


def _onnx_style_model(cell: str) -> lstm_infer.Model:
    rng = np.random.default_rng(7)
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    W = rng.uniform(-0.5, 0.5, (1, G * 5, 3)).astype(np.float32)
    R = rng.uniform(-0.5, 0.5, (1, G * 5, 5)).astype(np.float32)
    B = rng.uniform(-0.2, 0.2, (1, 2 * G * 5)).astype(np.float32)
    P = rng.uniform(-0.2, 0.2, (1, 15)).astype(np.float32) if cell == "lstm" else None
    return lstm_infer.Model.from_onnx_weights(cell, W, R, B, P, clip=4.0)


def _sequence_model() -> lstm_infer.Model:
    """Embedding -> projected LSTM -> dense head: every tensor kind of the native format."""
    rng = np.random.default_rng(8)
    dw = DirectionWeights(
        w=rng.uniform(-0.5, 0.5, (24, 4)).astype(np.float32),
        r=rng.uniform(-0.5, 0.5, (24, 3)).astype(np.float32),
        bias=rng.uniform(-0.2, 0.2, 24).astype(np.float32),
        proj=rng.uniform(-0.5, 0.5, (3, 6)).astype(np.float32),
        activations=default_activations("lstm"),
    )
    layer = RecurrentLayer("lstm", 4, 6, "forward", [dw], proj_size=3)
    head = [DenseLayer(rng.standard_normal((2, 3)).astype(np.float32), np.zeros(2, np.float32))]
    sig = Signature("sequence", 1, {"x": "tokens"}, {"y": "logits", "y_h": "h"})
    emb = rng.standard_normal((9, 4)).astype(np.float32)
    return lstm_infer.Model(ModelSpec([layer], sig, embedding=emb, head=head))


def _graph_model() -> lstm_infer.GraphModel:
    """A version-2 native file's model: LSTM -> Squeeze -> Gather -> Gemm -> Cos ->
    ConstantOfShape -> Where (int64, bool and tensor-attribute constants included)."""
    from test_native_graph import graph_model

    return lstm_infer.load(graph_model(np.random.default_rng(0)))


@functools.cache
def native_blob(kind: str) -> bytes:
    """The bytes of a valid native file ("gru", "lstm", "sequence", or "graph": version 2)."""
    if kind == "graph":
        model = _graph_model()
    else:
        model = _sequence_model() if kind == "sequence" else _onnx_style_model(kind)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        model.save(path)
        return path.read_bytes()


def split_native(blob: bytes) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """(safetensors header without metadata, the lstm_infer metadata dict, data area)."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    meta = json.loads(header.pop("__metadata__")["lstm_infer"])
    return header, meta, blob[8 + n :]


def join_native(header: dict[str, Any], meta: Any, body: bytes) -> bytes:
    full = {"__metadata__": {"lstm_infer": json.dumps(meta)}, **header}
    raw = json.dumps(full).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def raw_safetensors(header_bytes: bytes, body: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header_bytes)) + header_bytes + body


# ---- checking one file -------------------------------------------------------------------------


def exercise(model: lstm_infer.Model) -> None:
    """A model that loaded must run: a tiny sequence, and a stream when it can stream."""
    name = model.input_names[0]
    layout = model.spec.signature.layout
    shape = (2, 3) if layout == 0 else (3, 2)
    if model.spec.embedding is not None:
        x: np.ndarray = np.zeros(shape, np.int64)
    else:
        x = np.ones((*shape, model.layers[0].input_size), np.float32)
    try:
        outs = model.run({name: x})
    except (InputError, InputTypeError):
        return  # e.g. a constant initial state fixes another batch size
    for value in outs.values():
        assert isinstance(value, np.ndarray) and value.dtype == np.float32
    if all(layer.num_directions == 1 for layer in model.layers):
        try:
            stream = model.stream(batch_size=3)
        except (InputError, InputTypeError):
            return
        stream.step(x[0] if layout == 0 else x[:, 0])


def load_or_refuse(load: Callable[[], Any], *, run: bool = True) -> bool:
    """Call ``load``; True if it gave a model (which is then exercised), False if refused.

    Refusal must be a ModelFormatError and must not allocate much; anything else (KeyError,
    OverflowError, a numpy ValueError...) fails the test.
    """
    tracemalloc.start()
    try:
        model = load()
    except ModelFormatError:
        peak = tracemalloc.get_traced_memory()[1]
        assert peak < ALLOCATION_BOUND, f"refusing the file allocated {peak} bytes"
        return False
    finally:
        tracemalloc.stop()
    if run and isinstance(model, lstm_infer.Model):
        exercise(model)
    elif run and isinstance(model, lstm_infer.GraphModel):
        exercise_graph(model)
    return True


def exercise_graph(model: lstm_infer.GraphModel) -> None:
    """A graph that loaded runs, or refuses its feeds with the library's own error."""
    feeds = {}
    for info in model.inputs:
        shape = tuple(d if isinstance(d, int) and 0 <= d <= 8 else 3 for d in info.shape)
        feeds[info.name] = np.ones(shape, np.dtype(info.dtype))
    try:
        outs = model.run(feeds)
    except LstmInferError:
        return
    assert all(isinstance(v, np.ndarray) for v in outs.values())


def refused(load: Callable[[], Any], match: str | None = None) -> None:
    """``load`` must raise ModelFormatError (matching ``match``) without a large allocation."""
    tracemalloc.start()
    try:
        with pytest.raises(ModelFormatError, match=match):
            load()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < ALLOCATION_BOUND, f"refusing the file allocated {peak} bytes"


# ---- native / safetensors: truncation and header lengths ---------------------------------------


@pytest.mark.parametrize("kind", ["gru", "lstm", "sequence", "graph"])
def test_valid_native_files_load_and_run(kind: str) -> None:
    assert load_or_refuse(lambda: lstm_infer.load(native_blob(kind)))


@pytest.mark.parametrize("kind", ["lstm", "sequence", "graph"])
def test_truncated_native_file_is_refused_at_every_length(kind: str, tmp_path: Path) -> None:
    blob = native_blob(kind)
    (n,) = struct.unpack("<Q", blob[:8])
    cuts = set(range(0, 24)) | set(range(8 + n - 4, 8 + n + 4))
    cuts |= set(range(8 + n, len(blob), max(1, (len(blob) - 8 - n) // 40)))
    cuts |= set(range(24, 8 + n, max(1, n // 40)))
    path = tmp_path / "cut.safetensors"
    for cut in sorted(c for c in cuts if c < len(blob)):
        refused(lambda cut=cut: read_safetensors(blob[:cut]))
        if cut >= 16:  # shorter prefixes are not recognisable as safetensors at all
            refused(lambda cut=cut: lstm_infer.load(blob[:cut]))
    path.write_bytes(blob[: len(blob) - 1])
    refused(lambda: lstm_infer.load(path), match="truncated")


@pytest.mark.parametrize(
    "length", [0, 1, 7, 2**31, 2**32 + 2, 2**62, 2**64 - 1, 100 * 1024 * 1024 + 1]
)
def test_bad_header_length_is_refused(length: int) -> None:
    blob = native_blob("gru")
    hostile = struct.pack("<Q", length) + blob[8:]
    refused(lambda: read_safetensors(hostile))
    if length >= 2:
        refused(lambda: lstm_infer.load(hostile))


def _entry_mutations() -> list[tuple[str, Callable[[dict[str, Any]], None], str]]:
    def set_field(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
        def apply(entry: dict[str, Any]) -> None:
            entry[field] = value

        return apply

    return [
        ("dtype list", set_field("dtype", ["F32"]), "dtype"),
        ("dtype null", set_field("dtype", None), "dtype"),
        ("dtype unknown", set_field("dtype", "F128"), "dtype"),
        ("offsets 1e999", set_field("data_offsets", [0, 1e999]), "malformed"),
        ("offsets nan", set_field("data_offsets", [0, float("nan")]), "malformed"),
        ("offsets reversed", set_field("data_offsets", [8, 0]), "data_offsets"),
        ("offsets past end", set_field("data_offsets", [0, 2**60]), "truncated"),
        ("offsets one", set_field("data_offsets", [0]), "malformed"),
        ("offsets string", set_field("data_offsets", "0-8"), "malformed"),
        ("shape 1e999", set_field("shape", [1e999]), "malformed"),
        ("shape negative", set_field("shape", [-4, -1]), "negative"),
        ("shape absurd", set_field("shape", [2**31, 2**31]), "does not match"),
        ("shape rank 100", set_field("shape", [1] * 100), "dimensions"),
        ("shape dict", set_field("shape", {"a": 1}), "malformed"),
        ("entry missing", lambda e: e.clear(), "malformed"),
    ]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [pytest.param(m, p, id=name) for name, m, p in _entry_mutations()],
)
def test_hostile_tensor_header_entries_are_refused(
    mutate: Callable[[dict[str, Any]], None], match: str
) -> None:
    header, meta, body = split_native(native_blob("lstm"))
    key = sorted(header)[0]
    mutate(header[key])
    blob = join_native(header, meta, body)
    refused(lambda: read_safetensors(blob), match=match)
    refused(lambda: lstm_infer.load(blob), match=match)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"[1, 2]", "JSON object|ONNX"),  # no '{': load() does not take it for safetensors
        (b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "not valid JSON"),
        (b'{"\xff\xfe": 1}', "not valid JSON"),
        (b"{" + b" " * 64, "not valid JSON"),
        (b'{"__metadata__": [1]}', "__metadata__"),
        (b'{"w": 5}', "malformed"),
    ],
    ids=["list", "deeply-nested", "not-utf8", "unterminated", "metadata-list", "entry-int"],
)
def test_hostile_header_json_is_refused(raw: bytes, match: str) -> None:
    blob = raw_safetensors(raw)
    refused(lambda: read_safetensors(blob), match=match)
    refused(lambda: lstm_infer.load(blob), match=match)


# ---- native metadata ----------------------------------------------------------------------------


def _meta_mutation(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], Any]:
    def apply(meta: dict[str, Any]) -> Any:
        target = meta
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        return meta

    return apply


NATIVE_META_CASES = [
    (("layers", 0, "hidden_size"), 2**31, "hidden_size"),
    (("layers", 0, "hidden_size"), 0, "hidden_size"),
    (("layers", 0, "hidden_size"), 6, "shape"),  # weights contradict the attribute
    (("layers", 0, "input_size"), -3, "input_size"),
    (("layers", 0, "input_size"), "three", "malformed"),
    (("layers", 0, "cell"), "transformer", "cell"),
    (("layers", 0, "direction"), "sideways", "direction"),
    (("layers", 0, "direction"), "bidirectional", "weight sets"),
    (("layers", 0, "proj_size"), 9, "proj_size"),
    (("layers", 0, "activations"), [[["Swish", 0, 0]] * 3], "Swish"),
    (("layers", 0, "activations"), [[["Tanh", 0, 0]]], "activations"),
    (("layers", 0, "activations"), 7, "malformed"),
    (("layers", 0, "clip"), [1], "malformed"),
    (("layers",), [], "at least one"),
    (("layers",), "lstm", "malformed"),
    (("head",), [{"activation": "relu"}], "head.0.weight"),
    (("version",), 99, "version"),
    (("format",), "onnx", "native"),
    (("signature",), None, "malformed"),
]


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        pytest.param(p, v, m, id=f"{'.'.join(map(str, p))}={v!r}"[:60])
        for p, v, m in NATIVE_META_CASES
    ],
)
def test_hostile_native_metadata_is_refused(path: tuple[Any, ...], value: Any, match: str) -> None:
    header, meta, body = split_native(native_blob("lstm"))
    blob = join_native(header, _meta_mutation(path, value)(meta), body)
    refused(lambda: lstm_infer.load(blob), match=match)


def test_metadata_that_is_not_json_is_refused() -> None:
    header, _, body = split_native(native_blob("gru"))
    for meta_text in ("{not json", "[" * 50_000 + "]" * 50_000, "5", '{"format": "lstm_infer"}'):
        full = {"__metadata__": {"lstm_infer": meta_text}, **header}
        blob = raw_safetensors(json.dumps(full).encode(), body)
        refused(lambda blob=blob: lstm_infer.load(blob))


def test_native_size_of_infinity_is_a_format_error() -> None:
    """Regression: int() of a JSON 1e999 (float inf) raised OverflowError, not a format error."""
    header, meta, body = split_native(native_blob("gru"))
    meta["layers"][0]["hidden_size"] = 1e999
    blob = join_native(header, meta, body)
    refused(lambda: lstm_infer.load(blob), match="hidden_size|malformed")


@pytest.mark.parametrize(
    ("field", "value"),
    [("inputs", {"initial_h": "h0"}), ("layout", 7), ("style", "weird"), ("inputs", {"x": 5})],
    ids=["no-x-role", "layout-7", "unknown-style", "non-string-name"],
)
def test_native_signature_is_validated_at_load(field: str, value: Any) -> None:
    header, meta, body = split_native(native_blob("gru"))
    meta["signature"][field] = value
    blob = join_native(header, meta, body)
    refused(lambda: lstm_infer.load(blob))


def test_absurd_sizes_are_refused_before_allocating() -> None:
    """Sizes far beyond the data present fail fast, with a small peak allocation."""
    header, meta, body = split_native(native_blob("gru"))
    for size in (2**20 + 1, 2**31, 2**63):
        m = copy.deepcopy(meta)
        m["layers"][0]["hidden_size"] = size
        blob = join_native(header, m, body)
        refused(lambda blob=blob: lstm_infer.load(blob), match="hidden_size")
    huge = {"w": {"dtype": "F32", "shape": [2**30, 2**30], "data_offsets": [0, 2**62]}}
    blob = raw_safetensors(json.dumps(huge).encode(), b"\0" * 64)
    refused(lambda: read_safetensors(blob), match="truncated")


# ---- PyTorch checkpoints -------------------------------------------------------------------------


def _zip_entries(blob: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _rezip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


@functools.cache
def torch_blob(legacy: bool) -> bytes:
    """A real ``torch.save`` of a small nn.LSTM's state_dict (zip or legacy format)."""
    torch = require("torch")
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 5, num_layers=2)
    out = io.BytesIO()
    torch.save(module.state_dict(), out, _use_new_zipfile_serialization=not legacy)
    return out.getvalue()


def _pickle_name(entries: dict[str, bytes]) -> str:
    return next(n for n in entries if n.endswith("data.pkl"))


def test_valid_torch_checkpoints_load_and_run() -> None:
    for legacy in (False, True):
        blob = torch_blob(legacy)
        weights = read_checkpoint(blob)
        assert weights["weight_ih_l0"].shape == (20, 3)
        assert load_or_refuse(lambda blob=blob: lstm_infer.load(blob))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_torch_checkpoint_is_refused(legacy: bool) -> None:
    blob = torch_blob(legacy)
    for cut in sorted(set(range(0, len(blob), max(1, len(blob) // 60))) | {len(blob) - 1}):
        refused(lambda cut=cut: read_checkpoint(blob[:cut]))


def test_zip_with_missing_or_short_entries_is_refused() -> None:
    entries = _zip_entries(torch_blob(False))
    pkl = _pickle_name(entries)
    storages = sorted(n for n in entries if "/data/" in n)
    cases = {
        "no data.pkl": {n: d for n, d in entries.items() if n != pkl},
        "missing storage": {n: d for n, d in entries.items() if n != storages[0]},
        "short storage": {**entries, storages[-1]: entries[storages[-1]][:-4]},
        "empty storage": {**entries, storages[0]: b""},
        "empty pickle": {**entries, pkl: b""},
        "truncated pickle": {**entries, pkl: entries[pkl][: len(entries[pkl]) // 2]},
        "garbage pickle": {**entries, pkl: b"\x80\x02garbage"},
    }
    for case in cases.values():
        blob = _rezip(case)
        refused(lambda blob=blob: read_checkpoint(blob))
        # The public loader says the same (it must not fall through to another format).
        refused(lambda blob=blob: lstm_infer.load(blob))


class _Payload:
    """Pickles as a call of ``func(*args)``: what a malicious checkpoint carries."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _malicious_pickles(sentinel: Path) -> dict[str, bytes]:
    import builtins
    import subprocess

    touch = f"open({str(sentinel)!r}, 'w').write('ran')"
    out: dict[str, bytes] = {}
    for protocol in (0, 2, 4):
        out[f"eval-p{protocol}"] = pickle.dumps(
            {"w": _Payload(builtins.eval, touch)}, protocol=protocol
        )
        out[f"exec-p{protocol}"] = pickle.dumps(_Payload(builtins.exec, touch), protocol=protocol)
        out[f"system-p{protocol}"] = pickle.dumps(
            _Payload(os.system, f"touch {sentinel}"), protocol=protocol
        )
        out[f"popen-p{protocol}"] = pickle.dumps(
            _Payload(subprocess.Popen, ["touch", str(sentinel)]), protocol=protocol
        )
    # getattr(builtins, 'eval') built from allowed-looking pieces.
    out["getattr"] = (
        b"\x80\x02cbuiltins\ngetattr\ncbuiltins\n__dict__\nX\x04\x00\x00\x00evalt\x85R."
    )
    return out


@pytest.mark.parametrize("container", ["zip", "legacy", "bare"])
def test_disallowed_pickle_globals_never_run(tmp_path: Path, container: str) -> None:
    sentinel = tmp_path / "pwned"
    for name, payload in _malicious_pickles(sentinel).items():
        if container == "zip":
            entries = _zip_entries(torch_blob(False))
            entries[_pickle_name(entries)] = payload
            blob = _rezip(entries)
        elif container == "legacy":
            header = b"".join(
                pickle.dumps(v, protocol=2)
                for v in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True})
            )
            blob = header + payload
        else:
            blob = payload
        path = tmp_path / f"{name}.pt"
        path.write_bytes(blob)
        with pytest.raises((UnsafeCheckpointError, CheckpointFormatError)):
            read_checkpoint(blob)
        # The public loader may try other formats (a bare pickle is no checkpoint), but it
        # must refuse the file too.
        for source in (path, blob):
            with pytest.raises(ModelFormatError):
                lstm_infer.load(source)
        assert not sentinel.exists(), f"{name}: code from the file ran"


# ---- hypothesis: mutate valid files --------------------------------------------------------------


@st.composite
def byte_mutations(draw: Any, blob: bytes) -> bytes:
    """``blob`` with 1..4 edits: overwrite, insert, delete, truncate, or a hostile u64/u32."""
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["byte", "insert", "delete", "truncate", "u64", "u32"]))
        if op == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
        else:
            fmt = "<Q" if op == "u64" else "<I"
            hostile = draw(st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**63]))
            hostile %= 1 << (64 if op == "u64" else 32)
            data[pos : pos + struct.calcsize(fmt)] = struct.pack(fmt, hostile)
    return bytes(data)


_HOSTILE_JSON = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.sampled_from([0, -1, 2**31, 1e999, -1e999, 0.5]),
    st.text(max_size=8),
    st.lists(st.integers(-3, 2**33), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _json_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside nested dicts/lists."""
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, sub in value.items():
            paths += _json_paths(sub, (*prefix, key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            paths += _json_paths(sub, (*prefix, i))
    return paths


@st.composite
def json_mutations(draw: Any, blob: bytes) -> bytes:
    """A native file with 1..3 values in its metadata or tensor header made hostile."""
    header, meta, body = split_native(blob)
    doc = {"header": header, "meta": meta}
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_json_paths(doc)))
        target = doc
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = draw(_HOSTILE_JSON)
    try:
        return join_native(doc["header"], doc["meta"], body)
    except (TypeError, AttributeError):  # the header itself was replaced by a non-dict
        raw = json.dumps({"__metadata__": {"lstm_infer": json.dumps(doc["meta"])}, "h": 1})
        return raw_safetensors(raw.encode(), body)


@FUZZ
@hypothesis.given(data=st.data(), kind=st.sampled_from(["gru", "lstm", "sequence", "graph"]))
def test_fuzz_native_file_bytes(data: Any, kind: str) -> None:
    blob = data.draw(byte_mutations(native_blob(kind)))
    load_or_refuse(lambda: read_safetensors(blob), run=False)
    if len(blob) >= 16 and blob[8:9] == b"{":
        load_or_refuse(lambda: lstm_infer.load(blob))


@FUZZ
@hypothesis.given(data=st.data(), kind=st.sampled_from(["gru", "lstm", "sequence", "graph"]))
def test_fuzz_native_file_json_values(data: Any, kind: str) -> None:
    blob = data.draw(json_mutations(native_blob(kind)))
    load_or_refuse(lambda: lstm_infer.load(blob))


@FUZZ
@hypothesis.given(data=st.data(), legacy=st.booleans())
def test_fuzz_torch_checkpoint_bytes(data: Any, legacy: bool) -> None:
    blob = data.draw(byte_mutations(torch_blob(legacy)))
    load_or_refuse(lambda: read_checkpoint(blob), run=False)


@FUZZ
@hypothesis.given(data=st.data())
def test_fuzz_torch_zip_pickle(data: Any) -> None:
    """Mutate the pickle inside a valid zip (CRCs recomputed, so the unpickler sees it)."""
    entries = _zip_entries(torch_blob(False))
    pkl = _pickle_name(entries)
    entries[pkl] = data.draw(byte_mutations(entries[pkl]))
    blob = _rezip(entries)
    if load_or_refuse(lambda: read_checkpoint(blob), run=False):
        weights = read_checkpoint(blob)
        assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in weights.values())
    load_or_refuse(lambda: lstm_infer.load(blob))


@functools.cache
def state_dict_blob() -> bytes:
    """A plain safetensors state_dict with PyTorch's names (nn.LSTM(3, 5, 2) + Linear(5, 2))."""
    from lstm_infer.safetensors_io import write_safetensors

    rng = np.random.default_rng(9)
    tensors: dict[str, np.ndarray] = {}
    for layer, inputs in ((0, 3), (1, 5)):
        tensors[f"lstm.weight_ih_l{layer}"] = rng.uniform(-0.4, 0.4, (20, inputs))
        tensors[f"lstm.weight_hh_l{layer}"] = rng.uniform(-0.4, 0.4, (20, 5))
        tensors[f"lstm.bias_ih_l{layer}"] = rng.uniform(-0.4, 0.4, 20)
        tensors[f"lstm.bias_hh_l{layer}"] = rng.uniform(-0.4, 0.4, 20)
    tensors["fc.weight"] = rng.uniform(-0.4, 0.4, (2, 5))
    tensors["fc.bias"] = rng.uniform(-0.4, 0.4, 2)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sd.safetensors"
        write_safetensors(path, {k: v.astype(np.float32) for k, v in tensors.items()}, {})
        return path.read_bytes()


def test_valid_state_dict_safetensors_loads_and_runs() -> None:
    assert load_or_refuse(lambda: lstm_infer.load(state_dict_blob()))


@st.composite
def header_mutations(draw: Any, blob: bytes) -> bytes:
    """A safetensors file with 1..3 values in its JSON header made hostile."""
    (n,) = struct.unpack("<Q", blob[:8])
    header, body = json.loads(blob[8 : 8 + n]), blob[8 + n :]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_json_paths(header)))
        target = header
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = draw(_HOSTILE_JSON)
    return raw_safetensors(json.dumps(header).encode(), body)


@FUZZ
@hypothesis.given(data=st.data(), structured=st.booleans())
def test_fuzz_state_dict_safetensors(data: Any, structured: bool) -> None:
    blob = state_dict_blob()
    blob = data.draw(header_mutations(blob) if structured else byte_mutations(blob))
    if len(blob) >= 16 and blob[8:9] == b"{":
        load_or_refuse(lambda: lstm_infer.load(blob))
