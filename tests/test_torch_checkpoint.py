"""Tests of the torch-free checkpoint reader (lstm_infer.torch_checkpoint).

Two kinds of fixtures: files written by real torch (round trips, skipped without torch unless
LSTM_INFER_REQUIRE_ALL=1), and files built byte by byte here (torch-style pickles, zips, legacy
streams, safetensors) so the error paths and the malicious-pickle defence run without torch.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from lstm_infer.torch_checkpoint import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    read_checkpoint,
)


def _require(module_name: str) -> ModuleType:
    """Import a module, skipping the test if missing unless LSTM_INFER_REQUIRE_ALL=1."""
    if os.environ.get("LSTM_INFER_REQUIRE_ALL", "") == "1":
        return importlib.import_module(module_name)  # a missing module fails the test
    return pytest.importorskip(module_name)


# --------------------------------------------------------------------------------------------
# Hand-built torch-style files (no torch needed)
# --------------------------------------------------------------------------------------------


@dataclass
class FakeTensor:
    """A tensor record to emit as torch does: _rebuild_tensor_v2 over a persistent storage."""

    storage_class: str
    key: str
    storage_numel: int
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _emit(value: object, legacy: bool) -> bytes:
    """Protocol-2 opcodes that rebuild ``value`` (dicts, lists, str, int, FakeTensor)."""
    if isinstance(value, FakeTensor):
        pid = [b"X\x07\x00\x00\x00storage", f"ctorch\n{value.storage_class}\n".encode()]
        pid += [_emit(value.key, legacy), _emit("cpu", legacy), _emit(value.storage_numel, legacy)]
        pid += [b"N"] if legacy else []
        return (
            b"ctorch._utils\n_rebuild_tensor_v2\n("
            + b"("
            + b"".join(pid)
            + b"tQ"
            + _emit(value.offset, legacy)
            + _emit(tuple(value.shape), legacy)
            + _emit(tuple(value.stride), legacy)
            + b"\x89ccollections\nOrderedDict\n)Rt"
            + b"R"
        )
    if isinstance(value, dict):
        items = b"".join(_emit(k, legacy) + _emit(v, legacy) for k, v in value.items())
        return b"}(" + items + b"u"
    if isinstance(value, tuple):
        return b"(" + b"".join(_emit(v, legacy) for v in value) + b"t"
    if isinstance(value, list):
        return b"](" + b"".join(_emit(v, legacy) for v in value) + b"e"
    if isinstance(value, str):
        data = value.encode()
        return b"X" + struct.pack("<I", len(data)) + data
    if isinstance(value, int):
        return b"J" + struct.pack("<i", value)
    raise TypeError(value)


def fake_pickle(top: object, legacy: bool = False) -> bytes:
    return b"\x80\x02" + _emit(top, legacy) + b"."


def fake_zip(
    data_pkl: bytes | None,
    storages: dict[str, bytes],
    prefix: str = "archive",
    byteorder: bytes | None = b"little",
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        if data_pkl is not None:
            archive.writestr(f"{prefix}/data.pkl", data_pkl)
        if byteorder is not None:
            archive.writestr(f"{prefix}/byteorder", byteorder)
        for key, data in storages.items():
            archive.writestr(f"{prefix}/data/{key}", data)
    return buffer.getvalue()


def fake_legacy(main_pickle: bytes, storages: dict[str, tuple[int, bytes]]) -> bytes:
    """A legacy torch.save stream; ``storages`` maps key -> (element count, raw bytes)."""
    out = [pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2)]
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
    out += [pickle.dumps(sys_info, protocol=2), main_pickle]
    out.append(pickle.dumps(sorted(storages), protocol=2))
    for key in sorted(storages):
        count, data = storages[key]
        out += [struct.pack("<q", count), data]
    return b"".join(out)


def fake_safetensors(tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    header_bytes = json.dumps(header).encode()
    return struct.pack("<Q", len(header_bytes)) + header_bytes + data


BASE = np.arange(12, dtype=np.float32).reshape(3, 4) / 7


def simple_zip(**overrides: object) -> bytes:
    """A valid hand-built checkpoint: weights (3,4), a transposed view and an int buffer."""
    top = {
        "w": FakeTensor("FloatStorage", "0", 12, 0, (3, 4), (4, 1)),
        "w_t": FakeTensor("FloatStorage", "0", 12, 1, (3, 2), (1, 4)),
        "steps": FakeTensor("LongStorage", "1", 1, 0, (), ()),
    }
    top.update(overrides)  # type: ignore[arg-type]
    storages = {"0": BASE.tobytes(), "1": np.int64(7).tobytes()}
    return fake_zip(fake_pickle(top), storages)


# --------------------------------------------------------------------------------------------
# Hand-built files: the happy paths
# --------------------------------------------------------------------------------------------


def test_handmade_zip_offsets_strides_and_int_skipping() -> None:
    got = read_checkpoint(simple_zip())
    assert list(got) == ["w", "w_t"]  # the int64 buffer is left out
    np.testing.assert_array_equal(got["w"], BASE)
    flat = BASE.reshape(-1)
    expected_t = np.array([[flat[1 + i + 4 * j] for j in range(2)] for i in range(3)])
    np.testing.assert_array_equal(got["w_t"], expected_t)
    for array in got.values():
        assert array.dtype == np.float32 and array.flags.c_contiguous and array.flags.writeable


def test_handmade_zip_any_prefix_and_big_endian() -> None:
    pkl = fake_pickle({"w": FakeTensor("HalfStorage", "7", 12, 0, (4, 3), (1, 4))})
    data = fake_zip(pkl, {"7": BASE.astype(">f2").tobytes()}, prefix="my model", byteorder=b"big")
    got = read_checkpoint(data)
    np.testing.assert_array_equal(got["w"], BASE.astype(np.float16).astype(np.float32).T)


def test_handmade_bfloat16() -> None:
    values = np.array([1.0, -2.5, 3.140625, 1e-3, -0.0, np.inf], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")
    expected = (bf16.astype(np.uint32) << 16).view(np.float32)
    pkl = fake_pickle({"b": FakeTensor("BFloat16Storage", "0", 6, 0, (6,), (1,))})
    got = read_checkpoint(fake_zip(pkl, {"0": bf16.tobytes()}))
    np.testing.assert_array_equal(got["b"], expected)
    st = fake_safetensors({"b": ("BF16", (2, 3), bf16.tobytes())})
    np.testing.assert_array_equal(read_checkpoint(st)["b"], expected.reshape(2, 3))


def test_handmade_legacy_stream() -> None:
    top = {
        "a": FakeTensor("FloatStorage", "94000", 12, 2, (2, 2), (4, 1)),
        "b": FakeTensor("DoubleStorage", "95000", 3, 0, (3,), (1,)),
    }
    doubles = np.array([0.1, 0.2, 1e300], dtype=np.float64)
    data = fake_legacy(
        fake_pickle(top, legacy=True),
        {"94000": (12, BASE.tobytes()), "95000": (3, doubles.tobytes())},
    )
    got = read_checkpoint(data)
    np.testing.assert_array_equal(got["a"], BASE.reshape(-1)[2:10].reshape(2, 4)[:, :2])
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(got["b"], doubles.astype(np.float32))  # 1e300 -> inf


def test_path_and_bytes_sources_agree(tmp_path: Path) -> None:
    path = tmp_path / "weights.whatever"
    path.write_bytes(simple_zip())
    from_path = read_checkpoint(path)
    from_str = read_checkpoint(str(path))
    from_bytes = read_checkpoint(path.read_bytes())
    for name in from_bytes:
        np.testing.assert_array_equal(from_path[name], from_bytes[name])
        np.testing.assert_array_equal(from_str[name], from_bytes[name])


def test_safetensors_handmade_kinds_and_skips() -> None:
    st = fake_safetensors(
        {
            "f64": ("F64", (2,), np.array([0.1, 2.0]).tobytes()),
            "f16": ("F16", (1, 2), np.array([0.5, -1], dtype="<f2").tobytes()),
            "idx": ("I64", (2,), np.array([1, 2], dtype="<i8").tobytes()),
            "empty": ("F32", (0, 3), b""),
        }
    )
    got = read_checkpoint(st)
    assert list(got) == ["f64", "f16", "empty"]
    np.testing.assert_array_equal(got["f64"], np.array([0.1, 2.0], dtype=np.float32))
    np.testing.assert_array_equal(got["f16"], [[0.5, -1.0]])
    assert got["empty"].shape == (0, 3) and got["empty"].dtype == np.float32


def test_safetensors_written_by_safetensors_numpy(tmp_path: Path) -> None:
    st_numpy = _require("safetensors.numpy")
    rng = np.random.default_rng(0)
    tensors = {
        "a": rng.standard_normal((4, 5)).astype(np.float32),
        "b": rng.standard_normal(3).astype(np.float16),
        "c": rng.standard_normal((2, 2)),
    }
    path = tmp_path / "no_extension"
    st_numpy.save_file(tensors, str(path))
    got = read_checkpoint(path)
    for name, value in tensors.items():
        np.testing.assert_array_equal(got[name], value.astype(np.float32))


# --------------------------------------------------------------------------------------------
# Choosing the state dict inside a bigger checkpoint
# --------------------------------------------------------------------------------------------


def _nested_zip(top: dict[str, object]) -> bytes:
    return fake_zip(fake_pickle(top), {"0": BASE.tobytes()})


W = FakeTensor("FloatStorage", "0", 12, 0, (3, 4), (4, 1))
V = FakeTensor("FloatStorage", "0", 12, 4, (4,), (1,))


def test_nested_unique_tensor_dict_is_found() -> None:
    opt = {"state": {}, "param_groups": [{"lr": 1}]}
    got = read_checkpoint(_nested_zip({"epoch": 3, "weights": {"w": W}, "optimizer": opt}))
    assert list(got) == ["w"]


def test_nested_preferred_name_wins() -> None:
    got = read_checkpoint(_nested_zip({"ema": {"v": V}, "model": {"w": W}}))
    assert list(got) == ["w"]


def test_nested_ambiguous_lists_candidates() -> None:
    with pytest.raises(CheckpointFormatError) as info:
        read_checkpoint(_nested_zip({"ema": {"v": V}, "student": {"w": W}, "epoch": 1}))
    message = str(info.value)
    assert "'ema'" in message and "'student'" in message and "key=" in message


def test_key_selects_sub_dict() -> None:
    data = _nested_zip({"ema": {"v": V}, "student": {"w": W}})
    assert list(read_checkpoint(data, key="ema")) == ["v"]
    np.testing.assert_array_equal(read_checkpoint(data, key="student")["w"], BASE)


def test_missing_key_names_available_keys() -> None:
    with pytest.raises(CheckpointFormatError, match=r"'nope' not found.*'ema'.*'epoch'"):
        read_checkpoint(_nested_zip({"ema": {"v": V}, "epoch": 2}), key="nope")
    with pytest.raises(CheckpointFormatError, match="not a dict of tensors"):
        read_checkpoint(_nested_zip({"ema": {"v": V}, "epoch": 2}), key="epoch")


def test_no_tensor_dict_at_all() -> None:
    with pytest.raises(CheckpointFormatError, match="no dict of tensors.*'epoch'"):
        read_checkpoint(_nested_zip({"epoch": 2, "deep": {"deeper": {"w": W}}}))


# --------------------------------------------------------------------------------------------
# Error paths
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated_zip(fraction: float) -> None:
    data = simple_zip()
    with pytest.raises(CheckpointFormatError):
        read_checkpoint(data[: int(len(data) * fraction)])


@pytest.mark.parametrize(
    "data",
    [b"", b"PK", b"PK\x03\x04" + bytes(range(256)) * 4, b"hello, world", b"\x80\x02K\x05."],
    ids=["empty", "pk", "zip-garbage", "text", "plain-pickle"],
)
def test_garbage_is_a_format_error(data: bytes) -> None:
    with pytest.raises(CheckpointFormatError):
        read_checkpoint(data)


def test_corrupted_storage_crc() -> None:
    data = bytearray(simple_zip())
    position = bytes(data).index(BASE.tobytes())
    data[position] ^= 0xFF
    with pytest.raises(CheckpointFormatError):
        read_checkpoint(bytes(data))


def test_zip_without_data_pkl() -> None:
    with pytest.raises(CheckpointFormatError, match="data.pkl"):
        read_checkpoint(fake_zip(None, {"0": BASE.tobytes()}))


def test_missing_storage_entry() -> None:
    data = fake_zip(fake_pickle({"w": W}), {})
    with pytest.raises(CheckpointFormatError, match="archive/data/0.*missing"):
        read_checkpoint(data)


def test_storage_entry_shorter_than_declared() -> None:
    data = fake_zip(fake_pickle({"w": W}), {"0": BASE.tobytes()[:40]})
    with pytest.raises(CheckpointFormatError, match="holds 40 bytes.*declares 48"):
        read_checkpoint(data)


def test_tensor_reaching_past_its_storage() -> None:
    # The storage is declared (and stored) with 12 elements; the view needs 13.
    too_far = FakeTensor("FloatStorage", "0", 12, 1, (3, 4), (4, 1))
    with pytest.raises(CheckpointFormatError, match="'w'.*reaches element 13"):
        read_checkpoint(fake_zip(fake_pickle({"w": too_far}), {"0": BASE.tobytes()}))


def test_absurd_sizes_rejected_before_allocating() -> None:
    huge_view = FakeTensor("FloatStorage", "0", 12, 0, (1 << 20, 1 << 20), (0, 0))
    with pytest.raises(CheckpointFormatError, match="elements but its storage holds 12"):
        read_checkpoint(fake_zip(fake_pickle({"w": huge_view}), {"0": BASE.tobytes()}))
    huge_storage = FakeTensor("FloatStorage", "0", 2**31 - 1, 0, (4,), (1,))
    with pytest.raises(CheckpointFormatError, match="declares"):
        read_checkpoint(fake_zip(fake_pickle({"w": huge_storage}), {"0": BASE.tobytes()}))


def test_malformed_persistent_id() -> None:
    bad_pid = b"\x80\x02}(X\x01\x00\x00\x00wX\x03\x00\x00\x00abcQu."
    with pytest.raises(CheckpointFormatError, match="malformed persistent id"):
        read_checkpoint(fake_zip(bad_pid, {}))
    short_pid = b"\x80\x02}(X\x01\x00\x00\x00wX\x07\x00\x00\x00storage\x85Qu."
    with pytest.raises(CheckpointFormatError, match="malformed persistent id"):
        read_checkpoint(fake_zip(short_pid, {}))


def test_huge_memo_index_rejected_before_allocating() -> None:
    # LONG_BINPUT 0xFFFFFFF0 would make the C unpickler allocate a 32 GiB memo table.
    bomb = b"\x80\x02}r\xf0\xff\xff\xff."
    with pytest.raises(CheckpointFormatError, match="memo index"):
        read_checkpoint(fake_zip(bomb, {}))
    with pytest.raises(CheckpointFormatError, match="memo index"):
        read_checkpoint(bomb)


def test_legacy_truncated_storage() -> None:
    top = {"a": FakeTensor("FloatStorage", "1", 12, 0, (12,), (1,))}
    data = fake_legacy(fake_pickle(top, legacy=True), {"1": (12, BASE.tobytes())})
    with pytest.raises(CheckpointFormatError, match="truncated"):
        read_checkpoint(data[:-5])


def test_safetensors_header_longer_than_file() -> None:
    st = fake_safetensors({"a": ("F32", (2,), b"\x00" * 8)})
    bad = struct.pack("<Q", len(st)) + st[8:]
    with pytest.raises(CheckpointFormatError, match="exceeds the file size"):
        read_checkpoint(bad)


def test_safetensors_absurd_header_length() -> None:
    bad = struct.pack("<Q", 2**63 + 5) + b'{"a": 1}'
    with pytest.raises(CheckpointFormatError, match="header length"):
        read_checkpoint(bad)


def test_safetensors_truncated_data() -> None:
    st = fake_safetensors({"a": ("F32", (4,), BASE.tobytes()[:16])})
    with pytest.raises(CheckpointFormatError, match="truncated"):
        read_checkpoint(st[:-3])


def test_safetensors_inconsistent_or_bad_header() -> None:
    wrong_size = fake_safetensors({"a": ("F32", (5,), BASE.tobytes()[:16])})
    with pytest.raises(CheckpointFormatError, match="does not match"):
        read_checkpoint(wrong_size)
    not_json = struct.pack("<Q", 5) + b"{nope"
    with pytest.raises(CheckpointFormatError, match="JSON"):
        read_checkpoint(not_json)
    with pytest.raises(CheckpointFormatError, match="key="):
        read_checkpoint(fake_safetensors({"a": ("F32", (1,), b"\x00" * 4)}), key="model")


def test_missing_file_is_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "absent.pt")


# --------------------------------------------------------------------------------------------
# Malicious pickles
# --------------------------------------------------------------------------------------------


class _Reduce:
    """Pickles as ``func(*args)``: the classic code-execution payload."""

    def __init__(self, func: object, args: tuple[object, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


class ArbitraryClass:
    """Any importable class: constructing it has a side effect (creates the marker)."""

    def __init__(self, marker: str) -> None:
        Path(marker).touch()


def _payload(kind: str, marker: Path) -> tuple[_Reduce, str]:
    """The malicious object and the 'module.name' the reader must report."""
    if kind == "os.system":
        return _Reduce(os.system, (f"touch '{marker}'",)), f"{os.system.__module__}.system"
    if kind == "builtins.eval":
        return _Reduce(eval, (f"open({str(marker)!r}, 'w').close()",)), "builtins.eval"
    if kind == "subprocess.Popen":
        return _Reduce(subprocess.Popen, (["touch", str(marker)],)), "subprocess.Popen"
    cls = ArbitraryClass
    return _Reduce(cls, (str(marker),)), f"{cls.__module__}.{cls.__qualname__}"


def _evil_file(container: str, payload: object) -> bytes:
    wrapped = {"weight": payload}
    if container == "raw-protocol2":
        return pickle.dumps(wrapped, protocol=2)
    if container == "raw-protocol5":  # STACK_GLOBAL, only find_class can stop it
        return pickle.dumps(wrapped, protocol=5)
    if container == "legacy":
        return fake_legacy(pickle.dumps(wrapped, protocol=2), {})
    assert container == "zip"
    return fake_zip(pickle.dumps(wrapped, protocol=2), {"0": BASE.tobytes()})


@pytest.mark.parametrize("container", ["raw-protocol2", "raw-protocol5", "legacy", "zip"])
@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess.Popen", "class"])
def test_malicious_pickle_is_refused(tmp_path: Path, kind: str, container: str) -> None:
    marker = tmp_path / "PWNED"
    payload, global_name = _payload(kind, marker)
    path = tmp_path / "evil.pt"
    path.write_bytes(_evil_file(container, payload))
    with pytest.raises(UnsafeCheckpointError, match=f"'{global_name}'"):
        read_checkpoint(path)
    assert not marker.exists()


def test_payload_is_live_under_plain_pickle(tmp_path: Path) -> None:
    """Control: the os.system payload really runs when loaded without the allow-list."""
    marker = tmp_path / "PWNED"
    payload, _ = _payload("os.system", marker)
    pickle.loads(pickle.dumps(payload, protocol=2))
    assert marker.exists()


def test_torch_global_outside_allow_list_is_refused() -> None:
    evil = b"\x80\x02ctorch.nn.modules.rnn\nLSTM\n)R."
    with pytest.raises(UnsafeCheckpointError, match="'torch.nn.modules.rnn.LSTM'"):
        read_checkpoint(fake_zip(evil, {}))


def test_build_on_allow_listed_placeholder_is_refused() -> None:
    # BUILD with a dict state, then BUILD with (None, slotstate): both would let a pickle
    # overwrite attributes (e.g. __defaults__) of the objects find_class hands out.
    dict_state = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x01\x00\x00\x00aK\x01sb."
    slot_state = b"\x80\x02ctorch\nFloatStorage\nN}X\x01\x00\x00\x00aK\x01s\x86b."
    for data in (dict_state, slot_state):
        with pytest.raises(UnsafeCheckpointError, match="BUILD"):
            read_checkpoint(fake_zip(data, {}))


def test_extension_registry_opcodes_are_refused() -> None:
    with pytest.raises(UnsafeCheckpointError, match="EXT1"):
        read_checkpoint(fake_zip(b"\x80\x02\x82\x01.", {}))


# --------------------------------------------------------------------------------------------
# inert_objects: other libraries' objects beside the weights
# --------------------------------------------------------------------------------------------


class ConfigLike:
    """Pickles as NEWOBJ + BUILD with a dict state (what omegaconf containers do)."""

    def __init__(self, marker: str) -> None:
        self.content = {"lr": 1e-3, "marker": marker}

    def __setstate__(self, state: dict) -> None:
        Path(state["content"]["marker"]).touch()  # would run under plain pickle only


class DictLike(dict):
    """Pickles with SETITEMS on the rebuilt object."""


class ListLike(list):
    """Pickles with APPENDS on the rebuilt object."""


def _lightning_like(torch: ModuleType, marker: Path, weights: dict) -> dict:
    """A training checkpoint as Lightning writes one: the weights under "state_dict", other
    libraries' objects (and here live payloads) under "hyper_parameters"."""
    return {
        "state_dict": weights,
        "hyper_parameters": {
            "config": ConfigLike(str(marker)),
            "dict": DictLike(a=1, b=[2, 3]),
            "list": ListLike([ConfigLike(str(marker)), 4]),
            "payload": _Reduce(os.system, (f"touch '{marker}'",)),
            "class": _Reduce(ArbitraryClass, (str(marker),)),
        },
        "pytorch-lightning_version": "2.4.0",
    }


@pytest.mark.parametrize("legacy", [False, True])
def test_inert_objects_load_the_weights_beside_other_libraries_objects(
    tmp_path: Path, legacy: bool
) -> None:
    torch = _require("torch")
    marker = tmp_path / "PWNED"
    lstm = torch.nn.LSTM(3, 4)
    path = tmp_path / "lightning.ckpt"
    ckpt = _lightning_like(torch, marker, lstm.state_dict())
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError, match="inert_objects=True"):
        read_checkpoint(path)
    got = read_checkpoint(path, inert_objects=True)
    _assert_same(got, _expected(lstm.state_dict()))
    assert read_checkpoint(path, key="state_dict", inert_objects=True).keys() == got.keys()
    assert not marker.exists()


@pytest.mark.parametrize("where", ["value", "nested-tensor-dict"])
def test_inert_objects_inside_the_state_dict_are_refused(tmp_path: Path, where: str) -> None:
    torch = _require("torch")
    marker = tmp_path / "PWNED"
    weights = dict(torch.nn.Linear(2, 3).state_dict())
    weights["extra"] = _Reduce(os.system, (f"touch '{marker}'",))
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": weights} if where == "nested-tensor-dict" else weights, path)
    with pytest.raises(UnsafeCheckpointError, match="state dict holds an object of"):
        read_checkpoint(path, inert_objects=True)
    assert not marker.exists()


def test_inert_objects_keep_the_other_defences() -> None:
    """EXT opcodes and forged memo indices are refused with inert_objects too."""
    with pytest.raises(UnsafeCheckpointError, match="EXT1"):
        read_checkpoint(fake_zip(b"\x80\x02\x82\x01.", {}), inert_objects=True)
    with pytest.raises(CheckpointFormatError, match="memo"):
        read_checkpoint(fake_zip(b"\x80\x02}r\xf0\xff\xff\x0f.", {}), inert_objects=True)


def test_load_with_inert_objects_matches_torch(tmp_path: Path) -> None:
    torch = _require("torch")
    import lstm_infer

    marker = tmp_path / "PWNED"
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, num_layers=2).eval()
    path = tmp_path / "lightning.ckpt"
    torch.save(_lightning_like(torch, marker, lstm.state_dict()), path)
    model = lstm_infer.load(path, inert_objects=True)
    x = torch.randn(5, 2, 3)
    with torch.inference_mode():
        want = lstm(x)[0].numpy()
    np.testing.assert_allclose(model.run({"input": x.numpy()})["output"], want, atol=1e-5)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Round trips against real torch
# --------------------------------------------------------------------------------------------


def _build_module(torch: ModuleType, kind: str) -> object:
    nn = torch.nn
    if kind == "lstm-proj":
        return nn.LSTM(5, 8, num_layers=2, proj_size=3, bidirectional=True)
    if kind == "gru":
        return nn.GRU(5, 7, num_layers=2, batch_first=True)
    if kind == "rnn":
        return nn.RNN(5, 6, nonlinearity="relu", bidirectional=True)
    return nn.Sequential(nn.Embedding(11, 4), nn.Linear(4, 3))


def _expected(state_dict: dict[str, object]) -> dict[str, np.ndarray]:
    return {
        k: v.float().numpy()  # type: ignore[attr-defined]
        for k, v in state_dict.items()
        if v.is_floating_point()  # type: ignore[attr-defined]
    }


def _assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(got) == list(expected)
    for name, value in expected.items():
        assert got[name].dtype == np.float32 and got[name].flags.c_contiguous
        np.testing.assert_array_equal(got[name], value, err_msg=name)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("container", ["bare", "nested"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
@pytest.mark.parametrize("kind", ["lstm-proj", "gru", "rnn", "embedding-linear"])
def test_torch_round_trip(
    tmp_path: Path, kind: str, dtype: str, container: str, layout: str
) -> None:
    torch = _require("torch")
    torch.manual_seed(hash((kind, dtype)) % 1000)
    module = _build_module(torch, kind)
    optimizer = torch.optim.Adam(module.parameters())
    for p in module.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()  # gives the optimizer state tensors of its own
    module = module.to(getattr(torch, dtype))
    state_dict = module.state_dict()
    obj = state_dict
    if container == "nested":
        obj = {"model": state_dict, "optimizer": optimizer.state_dict(), "epoch": 3}
    path = tmp_path / "checkpoint.pt"
    torch.save(obj, path, _use_new_zipfile_serialization=(layout == "zip"))
    _assert_same(read_checkpoint(path), _expected(state_dict))


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_views_and_shared_storage(tmp_path: Path, layout: str, dtype: str) -> None:
    torch = _require("torch")
    torch.manual_seed(1)
    base = torch.randn(6, 5).to(getattr(torch, dtype))
    state_dict = {
        "base": base,
        "transposed": base.t(),
        "block": base[2:5, 1:4],
        "row": base[3],
        "column": base[:, 2],
        "flat_tail": base.view(-1)[7:20],
        "scalar": base[1, 1],
        "empty": base[:0],
        "own": torch.randn(3, 4).t(),
    }
    path = tmp_path / "views.pt"
    torch.save(state_dict, path, _use_new_zipfile_serialization=(layout == "zip"))
    if layout == "zip":  # the views really share one storage in the file
        with zipfile.ZipFile(path) as archive:
            assert sum("/data/" in n for n in archive.namelist()) == 2
    _assert_same(read_checkpoint(path.read_bytes()), _expected(state_dict))


def test_torch_special_tensors(tmp_path: Path) -> None:
    torch = _require("torch")
    param = torch.nn.Parameter(torch.randn(3))
    param.note = "attribute"  # -> _rebuild_parameter_with_state
    tagged = torch.randn(2, 2)
    tagged.note = "attribute"  # -> _rebuild_from_type_v2
    batch_norm = torch.nn.BatchNorm1d(4)
    batch_norm(torch.randn(8, 4))
    state_dict = {
        "param": param,
        "plain_param": torch.nn.Parameter(torch.randn(2)),
        "tagged": tagged,
        "u16": torch.zeros(4, dtype=torch.uint16),  # _rebuild_tensor_v3 + UntypedStorage
        "flags": torch.tensor([True, False]),
        **{f"bn.{k}": v for k, v in batch_norm.state_dict().items()},
    }
    path = tmp_path / "special.pt"
    torch.save(state_dict, path)
    got = read_checkpoint(path)
    assert "u16" not in got and "flags" not in got and "bn.num_batches_tracked" not in got
    _assert_same(got, _expected({k: v.detach() for k, v in state_dict.items()}))


@pytest.mark.parametrize("dtype", ["complex64", "float8_e4m3fn"])
def test_torch_unsupported_float_kinds_raise(tmp_path: Path, dtype: str) -> None:
    torch = _require("torch")
    path = tmp_path / "odd.pt"
    torch.save({"w": torch.zeros(3).to(getattr(torch, dtype))}, path)
    with pytest.raises(CheckpointFormatError, match=f"'w'.*{dtype}"):
        read_checkpoint(path)


def test_torch_whole_module_pickle_is_refused(tmp_path: Path) -> None:
    torch = _require("torch")
    path = tmp_path / "module.pt"
    torch.save(torch.nn.GRU(2, 3), path)
    with pytest.raises(UnsafeCheckpointError, match="'torch.nn.modules.rnn.GRU'"):
        read_checkpoint(path)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_torch_safetensors_round_trip(tmp_path: Path, dtype: str) -> None:
    torch = _require("torch")
    st_torch = _require("safetensors.torch")
    torch.manual_seed(2)
    state_dict = _build_module(torch, "lstm-proj").to(getattr(torch, dtype)).state_dict()
    path = tmp_path / "weights.bin"  # content decides, not the extension
    st_torch.save_file(state_dict, str(path))
    got = read_checkpoint(path)
    expected = _expected(state_dict)
    assert set(got) == set(expected)
    _assert_same({k: got[k] for k in expected}, expected)


_NO_TORCH_SCRIPT = """
import importlib.abc, importlib.util, sys
import numpy as np

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this interpreter")
        return None

sys.meta_path.insert(0, BlockTorch())
try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("torch was importable")

module_path, *pairs = sys.argv[1:]
spec = importlib.util.spec_from_file_location("torch_checkpoint_alone", module_path)
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
for checkpoint, expected_path in zip(pairs[::2], pairs[1::2]):
    got = module.read_checkpoint(checkpoint)
    expected = np.load(expected_path)
    assert sorted(got) == sorted(expected.files), (sorted(got), expected.files)
    for name in expected.files:
        np.testing.assert_array_equal(got[name], expected[name])
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
print("loaded", len(pairs) // 2)
"""


def test_reads_without_torch_in_a_fresh_interpreter(tmp_path: Path) -> None:
    torch = _require("torch")
    import lstm_infer.torch_checkpoint as module_under_test

    torch.manual_seed(3)
    state_dict = _build_module(torch, "lstm-proj").state_dict()
    expected = _expected(state_dict)
    np.savez(tmp_path / "expected.npz", **expected)
    args = []
    for name, legacy in (("zip.pt", False), ("legacy.pt", True)):
        torch.save(
            {"model": state_dict, "epoch": 1},
            tmp_path / name,
            _use_new_zipfile_serialization=not legacy,
        )
        args += [str(tmp_path / name), str(tmp_path / "expected.npz")]
    result = subprocess.run(
        [sys.executable, "-c", _NO_TORCH_SCRIPT, module_under_test.__file__, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # not the source checkout: `-c` puts the cwd first on sys.path
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    assert result.returncode == 0, result.stderr
    assert "loaded 2" in result.stdout
