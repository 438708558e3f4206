"""A strict reader and a writer of the safetensors format, numpy only.

The header is validated (length against the file size, JSON, dtypes, shapes, offsets that tile
the data area exactly) before any tensor is allocated, so a truncated or hostile file raises
ModelFormatError instead of crashing or allocating absurd sizes.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
import tempfile
from typing import Any

import numpy as np

from lstm_infer.errors import ModelFormatError

_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # widened to float32 on read
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "U16": np.dtype("<u2"),
    "BOOL": np.dtype("?"),
}
_NAMES = {
    np.dtype("<u2"): "U16",
    np.dtype("<f4"): "F32",
    np.dtype("<i8"): "I64",
    np.dtype("<i4"): "I32",
    np.dtype("<i2"): "I16",
    np.dtype("i1"): "I8",
    np.dtype("u1"): "U8",
    np.dtype("?"): "BOOL",
}
MAX_HEADER_BYTES = 100 * 1024 * 1024
_MAX_NDIM = 32  # numpy's limit is 32 (numpy 1.x) or 64 (2.x)


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (bf16 is the top half of an f32)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def is_safetensors(data: bytes) -> bool:
    """True when the first bytes look like a safetensors header."""
    if len(data) < 10:
        return False
    (n,) = struct.unpack("<Q", data[:8])
    return 2 <= n <= MAX_HEADER_BYTES and data[8:9] == b"{"


def read_safetensors(
    source: str | os.PathLike[str] | bytes, mapped: bool = False
) -> tuple[dict[str, np.ndarray], dict]:
    """Read every tensor (floating ones as float32) and the ``__metadata__`` dict.

    ``mapped`` (a path only): the file is memory-mapped read-only and every float32, int32,
    int8 and uint16 tensor at an aligned offset is a read-only view of the mapping instead
    of a copy, so processes loading the same file share its pages (the page cache). The
    header is checked exactly as for a read.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data: Any = bytes(source)
        label = "<bytes>"
    else:
        label = os.fspath(source)
        data = _mapped(label) if mapped else None
        if data is None:
            with open(label, "rb") as fh:
                data = fh.read()
            mapped = False
    if len(data) < 8:
        raise ModelFormatError(f"{label}: too short for a safetensors file ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > MAX_HEADER_BYTES:
        raise ModelFormatError(
            f"{label}: safetensors header length {n} exceeds the file size ({len(data)} bytes)"
        )
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        # RecursionError: a header of deeply nested brackets exhausts json's recursion limit.
        raise ModelFormatError(f"{label}: safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelFormatError(f"{label}: safetensors header must be a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise ModelFormatError(f"{label}: __metadata__ must be an object")
    body = memoryview(data)[8 + n :]
    tensors: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        try:
            dtype_name = entry["dtype"]
            shape = [int(s) for s in entry["shape"]]
            start, end = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            # OverflowError: JSON numbers like 1e999 parse as float inf, which int() refuses.
            raise ModelFormatError(f"{label}: malformed header entry for {name!r}") from exc
        # A non-string dtype (e.g. a JSON list) is unhashable: check before the dict lookup.
        if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
            raise ModelFormatError(f"{label}: tensor {name!r} has unsupported dtype {dtype_name}")
        dtype = _DTYPES[dtype_name]
        if len(shape) > _MAX_NDIM:  # numpy would raise its own ValueError at reshape
            raise ModelFormatError(f"{label}: tensor {name!r} has {len(shape)} dimensions")
        if any(s < 0 for s in shape):
            raise ModelFormatError(f"{label}: tensor {name!r} has a negative dimension {shape}")
        count = 1
        for s in shape:
            count *= s
        if not 0 <= start <= end:
            raise ModelFormatError(f"{label}: tensor {name!r} has bad data_offsets")
        if end > len(body):
            raise ModelFormatError(
                f"{label}: tensor {name!r} needs data range [{start}, {end}) but the data area "
                f"holds {len(body)} bytes; the file is truncated"
            )
        if end - start != count * dtype.itemsize:
            raise ModelFormatError(
                f"{label}: tensor {name!r}: shape {dtype_name}{shape} does not match its "
                f"{end - start} data bytes"
            )
        arr = np.frombuffer(body[start:end], dtype=dtype).reshape(shape)
        if mapped and dtype_name in _MAPPED and (8 + n + start) % dtype.itemsize == 0:
            pass  # a view of the mapping (read-only; keeps the mapping alive)
        elif dtype_name == "BF16":
            arr = bf16_to_f32(arr)
        elif dtype.kind == "f":
            arr = arr.astype(np.float32)
        else:
            arr = arr.copy()
        tensors[name] = arr
    return tensors, metadata


# Dtypes a mapped read hands out as views (what the engine uses as it is stored).
_MAPPED = frozenset({"F32", "I32", "I16", "I8", "U16"})


def _mapped(path: str) -> Any:
    """The file mapped read-only, or None where it cannot be (empty, not a regular file)."""
    try:
        with open(path, "rb") as fh:
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: dict[str, np.ndarray],
    metadata: dict[str, str],
    align: int = 1,
) -> None:
    """Write tensors (floats as float32; int8-64, uint8, uint16, bool as they are) and string
    metadata as a safetensors file.

    ``align`` (a power of two): every tensor's data starts at a multiple of it in the file
    (uint8 ``__pad.N`` tensors fill the gaps, as the format has no holes; readers that do
    not know them ignore them), so a mapped file's arrays are that aligned in memory.
    """
    header: dict[str, Any] = {"__metadata__": metadata}
    chunks = []
    offset = 0
    pads = 0
    for name in sorted(tensors):
        gap = -offset % align
        if gap:
            header[f"__pad.{pads}"] = {"dtype": "U8", "shape": [gap],
                                       "data_offsets": [offset, offset + gap]}  # fmt: skip
            chunks.append(b"\0" * gap)
            offset += gap
            pads += 1
        arr = np.asarray(tensors[name])  # (ascontiguousarray would make a 0-D tensor 1-D)
        if arr.dtype.newbyteorder("<") not in _NAMES:
            arr = arr.astype(np.float32)
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        raw = arr.tobytes()
        header[name] = {
            "dtype": _NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-(8 + len(head)) % max(8, align))  # the data area starts aligned
    # A temporary file of its own (two writers of one path never share one), renamed over the
    # path: a process that mapped the old file keeps reading the old inode.
    target = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(target) + ".", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(target)))  # fmt: skip
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # what open() would have given, not mkstemp's 0600
        with os.fdopen(fd, "wb") as fh:
            fh.write(struct.pack("<Q", len(head)))
            fh.write(head)
            for raw in chunks:
                fh.write(raw)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
