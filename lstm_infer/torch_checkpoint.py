"""Read PyTorch checkpoints into numpy arrays without importing torch.

Three containers are understood, recognised by their content rather than their file name:

- the zip archive ``torch.save`` writes by default (``<prefix>/data.pkl`` plus one
  ``<prefix>/data/<key>`` entry per storage, and an optional ``<prefix>/byteorder``);
- the legacy stream ``torch.save(..., _use_new_zipfile_serialization=False)`` writes (magic
  number, protocol and sys-info pickles, the object pickle, the list of storage keys, then each
  storage as an 8-byte element count followed by its raw bytes);
- ``.safetensors`` (8-byte little-endian header length, a JSON header, raw tensor data).

Security model: a checkpoint is untrusted input. The pickles are read by an unpickler whose
``find_class`` hands out only the placeholders in ``_ALLOWED_GLOBALS``, objects defined in this
module that record their arguments and never touch torch. Any other global (``os.system``,
``builtins.eval``, a model class, ...) raises :class:`UnsafeCheckpointError` before anything is
called. Each pickle is also scanned opcode by opcode before it is unpickled, so a forbidden
``GLOBAL`` is refused before a single opcode runs and the ``EXT*`` opcodes, which can fetch
objects from the process-wide ``copyreg`` cache without going through ``find_class``, are
refused outright; memo indices are bounded there too (a forged one would make the C
unpickler allocate gigabytes). Every placeholder refuses ``BUILD`` (``__setstate__`` raises),
so a pickle cannot mutate them; only the ``OrderedDict`` stand-in accepts the
``{'_metadata': ...}`` state that ``state_dict()`` carries, and it ignores it. Sizes, strides
and offsets are checked against the bytes actually present before any array is allocated.

Training checkpoints often keep objects of other libraries beside the weights (Lightning's
``hyper_parameters`` holding omegaconf containers, say). With ``inert_objects=True`` a global
outside the allow-list resolves to an inert class of ours instead of being refused
(:class:`_Opaque`): calling it, BUILD, SETITEMS and APPENDS on it record nothing and run
nothing, so such objects load as empty markers of their class name; the state dict chosen
must then hold none of them (UnsafeCheckpointError naming the class otherwise). The EXT
opcodes and the memo bounds are refused as always.

Integer and bool tensors (``num_batches_tracked``, index buffers) are parsed and bounds-checked
but left out of the result; complex and float8 tensors raise :class:`CheckpointFormatError`
rather than being dropped, because they would be weights this engine cannot represent.

Longer than the ~600-line guide, on purpose. The allow-listed placeholders, the opcode
prescan, the restricted unpickler and the three container readers are one security boundary;
kept in one module they can be read, reviewed and audited together (nothing else in the
package unpickles), and no helper of the boundary is importable from elsewhere by accident.
"""

from __future__ import annotations

import _compat_pickle
import io
import math
import os
import pickle
import pickletools
import reprlib
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["CheckpointFormatError", "UnsafeCheckpointError", "read_checkpoint"]


from lstm_infer.errors import CheckpointFormatError, ModelFormatError, UnsafeCheckpointError
from lstm_infer.safetensors_io import read_safetensors

# Keys a training script typically stores the model's weights under, in order of preference.
_PREFERRED_KEYS = ("state_dict", "model_state_dict", "model", "net")

# The legacy (non-zip) format opens with these two pickled integers.
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001

# torch supports at most 64 dimensions.
_MAX_NDIM = 64
# A deflated stream cannot expand by more than ~1032x; larger claims are a zip bomb.
_MAX_DEFLATE_RATIO = 1100


# Error messages quote values taken from the file; keep them short whatever the file holds.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 160
_REPR.maxlevel = 3


def _brief(value: object) -> str:
    return _REPR.repr(value)


# --------------------------------------------------------------------------------------------
# Element types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ElementType:
    """How one torch dtype is laid out in a storage and what we do with it.

    ``kind`` is ``"float"`` (converted with ``astype``), ``"bfloat16"`` (stored as uint16, widened
    by a 16-bit shift), ``"skip"`` (integer/bool: checked, then left out of the result) or
    ``"unsupported"`` (floating or complex data we cannot represent: an error if selected).
    """

    name: str
    storage_dtype: str  # numpy dtype string, little-endian
    kind: str

    @property
    def itemsize(self) -> int:
        return np.dtype(self.storage_dtype).itemsize

    def numpy_dtype(self, byteorder: str) -> np.dtype:
        dtype = np.dtype(self.storage_dtype)
        return dtype.newbyteorder(">") if byteorder == "big" else dtype


_ELEMENT_TYPES: dict[str, _ElementType] = {
    et.name: et
    for et in (
        _ElementType("float32", "<f4", "float"),
        _ElementType("float64", "<f8", "float"),
        _ElementType("float16", "<f2", "float"),
        _ElementType("bfloat16", "<u2", "bfloat16"),
        _ElementType("int64", "<i8", "skip"),
        _ElementType("int32", "<i4", "skip"),
        _ElementType("int16", "<i2", "skip"),
        _ElementType("int8", "<i1", "skip"),
        _ElementType("uint8", "<u1", "skip"),
        _ElementType("uint16", "<u2", "skip"),
        _ElementType("uint32", "<u4", "skip"),
        _ElementType("uint64", "<u8", "skip"),
        _ElementType("bool", "<u1", "skip"),
        _ElementType("complex64", "<c8", "unsupported"),
        _ElementType("complex128", "<c16", "unsupported"),
        _ElementType("float8_e4m3fn", "<u1", "unsupported"),
        _ElementType("float8_e5m2", "<u1", "unsupported"),
        _ElementType("float8_e4m3fnuz", "<u1", "unsupported"),
        _ElementType("float8_e5m2fnuz", "<u1", "unsupported"),
    )
}

# Legacy typed-storage class name -> element type name.
_STORAGE_CLASSES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}

# --------------------------------------------------------------------------------------------
# What the unpickler may build
# --------------------------------------------------------------------------------------------


class _Frozen:
    """Base of every object a checkpoint pickle can obtain: BUILD on it is refused."""

    __slots__ = ()

    def __setstate__(self, state: object) -> None:
        raise UnsafeCheckpointError(
            f"the pickle tries to set the state of {_brief(self)} (BUILD opcode); refused"
        )


class _Marker(_Frozen):
    """Stand-in for a torch class or dtype object: inert, not callable."""

    __slots__ = ("qualname", "element_type")

    def __init__(self, qualname: str, element_type: _ElementType | None = None) -> None:
        self.qualname = qualname
        self.element_type = element_type

    def __repr__(self) -> str:
        return f"<placeholder for {self.qualname}>"


class _Rebuilder(_Frozen):
    """Stand-in for an allow-listed torch function: calls our own implementation."""

    __slots__ = ("qualname", "function")

    def __init__(self, qualname: str, function: Callable[..., Any]) -> None:
        self.qualname = qualname
        self.function = function

    def __call__(self, *args: object) -> Any:
        try:
            return self.function(*args)
        except TypeError as exc:  # wrong number of arguments
            raise CheckpointFormatError(f"bad arguments to {self.qualname}: {exc}") from exc

    def __repr__(self) -> str:
        return f"<placeholder for {self.qualname}>"


class _StateDict(dict):
    """What ``collections.OrderedDict`` unpickles to. Plain dicts keep insertion order."""

    __slots__ = ()

    def __setstate__(self, state: object) -> None:
        # state_dict() pickles as OrderedDict + BUILD {'_metadata': {...}}; the metadata only
        # holds module versions, which we do not need.
        if not isinstance(state, dict):
            raise CheckpointFormatError("unexpected BUILD state on an OrderedDict")


class _Opaque:
    """What a global outside the allow-list resolves to under ``inert_objects=True``: one
    subclass per global name, carrying only that name. Every way a pickle can use a class
    or function (called by REDUCE / INST / OBJ, instantiated by NEWOBJ, its instances given
    state by BUILD, items by SETITEMS, elements by APPENDS) builds or touches an instance
    that keeps nothing: no argument, state or item is stored, nothing is called."""

    __slots__ = ()
    qualname = "?"

    def __new__(cls, *args: object, **kwargs: object) -> _Opaque:
        return object.__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def append(self, value: object) -> None:
        pass

    def extend(self, values: object) -> None:
        pass

    def __repr__(self) -> str:
        return f"<inert {self.qualname}>"


def _opaque(value: object) -> str | None:
    """The global name behind ``value`` if it is an inert class or instance, else None."""
    if isinstance(value, _Opaque) or (isinstance(value, type) and issubclass(value, _Opaque)):
        return value.qualname
    return None


class _Storage(_Frozen):
    """One storage of the checkpoint; its bytes are fetched on first use and cached."""

    __slots__ = ("key", "element_type", "nbytes", "_fetch", "_data")

    def __init__(
        self,
        key: str,
        element_type: _ElementType,
        nbytes: int,
        fetch: Callable[[str, int], memoryview] | None,
    ) -> None:
        self.key = key
        self.element_type = element_type
        self.nbytes = nbytes
        self._fetch = fetch
        self._data: memoryview | None = None

    def attach(self, data: memoryview) -> None:
        self._data = data

    def data(self) -> memoryview:
        if self._data is None:
            if self._fetch is None:
                raise CheckpointFormatError(f"the data of storage {_brief(self.key)} is missing")
            data = self._fetch(self.key, self.nbytes)
            if len(data) < self.nbytes:
                raise CheckpointFormatError(
                    f"storage {_brief(self.key)} holds {len(data)} bytes, {self.nbytes} declared"
                )
            self._data = data[: self.nbytes]
        return self._data

    def __repr__(self) -> str:
        return f"<storage {_brief(self.key)} {self.element_type.name} {self.nbytes} bytes>"


class _Tensor(_Frozen):
    """A tensor as the pickle describes it: a view (offset, shape, strides) of a storage."""

    __slots__ = ("storage", "element_type", "offset", "shape", "strides")

    def __init__(
        self,
        storage: _Storage,
        element_type: _ElementType,
        offset: int,
        shape: tuple[int, ...],
        strides: tuple[int, ...],
    ) -> None:
        self.storage = storage
        self.element_type = element_type
        self.offset = offset
        self.shape = shape
        self.strides = strides

    def __repr__(self) -> str:
        return f"<tensor {self.element_type.name} {self.shape}>"


def _index(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise CheckpointFormatError(f"{what} must be a non-negative integer, got {_brief(value)}")
    return value


def _index_tuple(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > _MAX_NDIM:
        raise CheckpointFormatError(f"{what} must be a tuple of at most {_MAX_NDIM} integers")
    return tuple(_index(v, what) for v in value)


def _make_tensor(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    element_type: _ElementType | None = None,
) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise CheckpointFormatError(f"tensor built from {_brief(storage)} instead of a storage")
    shape = _index_tuple(size, "tensor size")
    strides = _index_tuple(stride, "tensor stride")
    if len(shape) != len(strides):
        raise CheckpointFormatError(f"tensor size {shape} and stride {strides} differ in length")
    return _Tensor(
        storage,
        element_type or storage.element_type,
        _index(storage_offset, "storage offset"),
        shape,
        strides,
    )


def _rebuild_tensor(
    storage: object, storage_offset: object, size: object, stride: object
) -> _Tensor:
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _Tensor:
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    backward_hooks: object,
    dtype: object,
    metadata: object = None,
) -> _Tensor:
    # Used for dtypes without a legacy typed storage (uint16, float8...): untyped storage + dtype.
    if not isinstance(dtype, _Marker) or dtype.element_type is None:
        raise CheckpointFormatError(f"_rebuild_tensor_v3 expects a dtype, got {_brief(dtype)}")
    return _make_tensor(storage, storage_offset, size, stride, dtype.element_type)


def _rebuild_parameter(data: object, requires_grad: object, backward_hooks: object) -> _Tensor:
    if not isinstance(data, _Tensor):
        raise CheckpointFormatError(f"Parameter built from {_brief(data)} instead of a tensor")
    return data


def _rebuild_parameter_with_state(
    data: object, requires_grad: object, backward_hooks: object, state: object
) -> _Tensor:
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _make_state_dict(*args: object) -> _StateDict:
    return _StateDict(*args)


_TENSOR_TYPE = _Marker("torch.Tensor")
_PARAMETER_TYPE = _Marker("torch.nn.parameter.Parameter")


def _rebuild_from_type_v2(func: object, new_type: object, args: object, state: object) -> object:
    # Emitted for a tensor carrying Python attributes; only plain tensors/Parameters accepted.
    if new_type not in (_TENSOR_TYPE, _PARAMETER_TYPE):
        raise CheckpointFormatError(f"_rebuild_from_type_v2 with type {_brief(new_type)}")
    if not isinstance(func, _Rebuilder) or func.function not in _TENSOR_REBUILDERS:
        raise CheckpointFormatError(f"_rebuild_from_type_v2 with function {_brief(func)}")
    if not isinstance(args, tuple):
        raise CheckpointFormatError("_rebuild_from_type_v2 arguments must be a tuple")
    return func(*args)


_TENSOR_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3)
_UNTYPED_STORAGE = _Marker("torch.storage.UntypedStorage", _ELEMENT_TYPES["uint8"])


def _build_allow_list() -> dict[tuple[str, str], _Frozen]:
    allowed: dict[tuple[str, str], _Frozen] = {
        ("collections", "OrderedDict"): _Rebuilder("collections.OrderedDict", _make_state_dict),
        ("torch", "Tensor"): _TENSOR_TYPE,
        ("torch.nn.parameter", "Parameter"): _PARAMETER_TYPE,
        ("torch.storage", "UntypedStorage"): _UNTYPED_STORAGE,
    }
    functions = {
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    }
    for (module, name), function in functions.items():
        allowed[module, name] = _Rebuilder(f"{module}.{name}", function)
    for class_name, type_name in _STORAGE_CLASSES.items():
        allowed["torch", class_name] = _Marker(f"torch.{class_name}", _ELEMENT_TYPES[type_name])
    for type_name, element_type in _ELEMENT_TYPES.items():
        allowed["torch", type_name] = _Marker(f"torch.{type_name}", element_type)
    return allowed


_ALLOWED_GLOBALS = _build_allow_list()


# --------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------


def _python3_name(module: str, name: str) -> str:
    """The name a protocol-2 pickle's Python 2 spelling ('__builtin__ eval') stands for."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def _check_global(module: str, name: str) -> _Frozen:
    # The lookup uses the name exactly as written: Python 2 aliases are never translated, so
    # they can only ever be refused.
    allowed = _ALLOWED_GLOBALS.get((module, name))
    if allowed is None:
        written = f"{module}.{name}"
        meant = _python3_name(module, name)
        alias = f" (written as '{written}')" if meant != written else ""
        raise UnsafeCheckpointError(
            f"the checkpoint's pickle references the global '{meant}'{alias}, which is not on "
            "the allow-list of plain tensor data; refusing to load it (it could run code). "
            "If that object is not part of the weights (training metadata such as "
            "hyper-parameters), load with inert_objects=True: it then loads as an inert "
            "marker and nothing of it runs. Or re-save the weights as model.state_dict() or "
            "as safetensors."
        )
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves globals only to this module's placeholders."""

    def __init__(
        self,
        file: BinaryIO,
        persistent_load: Callable[[object], _Storage] | None,
        inert: bool = False,
    ) -> None:
        super().__init__(file, encoding="utf-8")
        self._persistent_load = persistent_load
        self._inert: dict[str, type] | None = {} if inert else None

    def find_class(self, module: str, name: str) -> Any:
        if self._inert is None or (module, name) in _ALLOWED_GLOBALS:
            return _check_global(module, name)
        qualname = f"{module}.{name}"[:200]
        cls = self._inert.get(qualname)
        if cls is None:  # one per name, at most one per GLOBAL opcode of the pickle
            cls = self._inert[qualname] = type(
                "_Opaque", (_Opaque,), {"__slots__": (), "qualname": qualname}
            )
        return cls

    def persistent_load(self, pid: object) -> _Storage:
        if self._persistent_load is None:
            raise CheckpointFormatError(f"unexpected persistent id {_brief(pid)} in this pickle")
        return self._persistent_load(pid)


def _prescan(stream: BinaryIO, inert: bool = False) -> None:
    """Walk one pickle's opcodes without executing them, refusing forbidden globals early.

    Also bounds memo indices: the C unpickler grows its memo table to the largest index
    written, so a 6-byte ``LONG_BINPUT 0xFFFFFFF0`` would make it allocate tens of gigabytes.
    A pickler numbers memo entries 0, 1, 2, ..., so an index never exceeds the opcode count.
    """
    for count, (opcode, arg, _) in enumerate(pickletools.genops(stream)):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            if not isinstance(arg, int) or not 0 <= arg <= count:
                raise CheckpointFormatError(f"pickle memo index {arg} is out of range")
        elif opcode.name in ("GLOBAL", "INST") and not inert:
            module, _, name = str(arg).partition(" ")
            _check_global(module, name)
        elif opcode.name in ("EXT1", "EXT2", "EXT4"):
            raise UnsafeCheckpointError(
                f"the checkpoint's pickle uses the {opcode.name} opcode (copyreg extension "
                "registry), which is not allowed"
            )


def _unpickle(
    stream: BinaryIO,
    persistent_load: Callable[[object], _Storage] | None = None,
    inert: bool = False,
) -> object:
    """Load the next pickle from ``stream``, leaving the stream just after its STOP opcode;
    ``inert``: globals outside the allow-list become inert classes (see the module doc)."""
    start = stream.tell()
    _prescan(stream, inert)
    stream.seek(start)
    return _RestrictedUnpickler(stream, persistent_load, inert).load()


def _storage_type(value: object) -> _ElementType:
    if not isinstance(value, _Marker) or value.element_type is None:
        raise CheckpointFormatError(f"persistent id names {_brief(value)}, not a storage type")
    if not value.qualname.endswith("Storage"):
        raise CheckpointFormatError(f"persistent id names {_brief(value)}, not a storage type")
    return value.element_type


class _StorageTable:
    """Turns persistent ids into shared :class:`_Storage` records (one per storage key)."""

    def __init__(self, expected_length: int, fetch: Callable[[str, int], memoryview] | None):
        self._expected_length = expected_length  # 5 in zip files, 6 in legacy files
        self._fetch = fetch
        self.storages: dict[str, _Storage] = {}

    def __call__(self, pid: object) -> _Storage:
        if (
            not isinstance(pid, tuple)
            or len(pid) != self._expected_length
            or pid[0] != "storage"
            or not isinstance(pid[2], str)
            or not isinstance(pid[3], str)
        ):
            raise CheckpointFormatError(f"malformed persistent id {_brief(pid)}")
        if self._expected_length == 6 and pid[5] is not None:
            raise CheckpointFormatError("legacy storage views (view_metadata) are not supported")
        element_type = _storage_type(pid[1])
        key = pid[2]
        nbytes = _index(pid[4], "storage size") * element_type.itemsize
        storage = self.storages.get(key)
        if storage is None:
            storage = _Storage(key, element_type, nbytes, self._fetch)
            self.storages[key] = storage
        elif storage.element_type != element_type or storage.nbytes != nbytes:
            raise CheckpointFormatError(f"storage {_brief(key)} is declared twice, differently")
        return storage


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


class _Source:
    """Random access to the checkpoint bytes, from a path (read on demand) or from memory."""

    def __init__(self, source: str | os.PathLike[str] | bytes) -> None:
        self._file: BinaryIO | None = None
        self._buffer: memoryview | None = None
        self._bytes: bytes | None = source if isinstance(source, bytes) else None
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._buffer = memoryview(source).cast("B")
            self.size = len(self._buffer)
        elif isinstance(source, (str, os.PathLike)):
            self._file = open(source, "rb")  # noqa: SIM115 - closed by close()
            self.size = os.fstat(self._file.fileno()).st_size
        else:
            raise TypeError(f"source must be a path or bytes, not {type(source).__name__}")

    def read_at(self, offset: int, length: int) -> memoryview:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise CheckpointFormatError(
                f"the file is truncated: needs bytes [{offset}, {offset + length}) "
                f"but holds {self.size}"
            )
        if self._buffer is not None:
            return self._buffer[offset : offset + length]
        assert self._file is not None
        self._file.seek(offset)
        data = self._file.read(length)
        if len(data) != length:
            raise CheckpointFormatError("the file is truncated (short read)")
        return memoryview(data)

    def stream(self) -> BinaryIO:
        if self._buffer is not None:
            # BytesIO shares an immutable bytes object instead of copying it.
            return io.BytesIO(self._bytes if self._bytes is not None else self._buffer)
        assert self._file is not None
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _detect_format(source: _Source) -> str:
    head = bytes(source.read_at(0, min(source.size, 9)))
    if head[:2] == b"PK":
        return "zip"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":
        return "legacy"
    raise CheckpointFormatError(
        "not a PyTorch checkpoint: neither a zip archive (torch.save), a legacy torch.save "
        "pickle stream, nor a safetensors file"
    )


def _check_zip_entry(info: zipfile.ZipInfo, archive_size: int) -> None:
    if info.compress_type == zipfile.ZIP_STORED:
        too_big = info.file_size > archive_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        too_big = info.file_size > max(info.compress_size, 1) * _MAX_DEFLATE_RATIO
    else:
        raise CheckpointFormatError(
            f"zip entry {_brief(info.filename)} uses unsupported compression {info.compress_type}"
        )
    if too_big:
        raise CheckpointFormatError(
            f"zip entry {_brief(info.filename)} claims {info.file_size} bytes, more than "
            "the archive can hold"
        )


def _read_zip(
    source: _Source, key: str | None, integers: bool = False, inert: bool = False
) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(source.stream()) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
        pickles = [n for n in pickles if n == "data.pkl" or n.endswith("/data.pkl")]
        if not pickles:
            raise CheckpointFormatError(
                "zip archive has no '<archive>/data.pkl' entry; it is not a torch.save checkpoint"
            )
        if len(pickles) > 1:
            raise CheckpointFormatError(f"zip archive has several data.pkl entries: {pickles}")
        prefix = pickles[0][: -len("data.pkl")]

        byteorder = "little"
        if prefix + "byteorder" in names:
            info = archive.getinfo(prefix + "byteorder")
            if info.file_size > 16:
                raise CheckpointFormatError("byteorder entry is implausibly large")
            byteorder = archive.read(info).decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointFormatError(f"unknown byteorder {_brief(byteorder)}")

        def fetch(storage_key: str, nbytes: int) -> memoryview:
            name = f"{prefix}data/{storage_key}"
            try:
                info = archive.getinfo(name)
            except KeyError:
                raise CheckpointFormatError(
                    f"storage entry {_brief(name)} is missing from the archive"
                ) from None
            _check_zip_entry(info, source.size)
            if info.file_size < nbytes:
                raise CheckpointFormatError(
                    f"storage entry {_brief(name)} holds {info.file_size} bytes but the checkpoint "
                    f"declares {nbytes}"
                )
            return memoryview(archive.read(info))

        info = archive.getinfo(pickles[0])
        _check_zip_entry(info, source.size)
        table = _StorageTable(5, fetch)
        top = _unpickle(io.BytesIO(archive.read(info)), table, inert)
        return _to_arrays(_select_state_dict(top, key), byteorder, integers)


def _read_legacy(
    source: _Source, key: str | None, integers: bool = False, inert: bool = False
) -> dict[str, np.ndarray]:
    data = source.read_at(0, source.size)
    stream = io.BytesIO(data)
    if _unpickle(stream) != _LEGACY_MAGIC_NUMBER:
        raise CheckpointFormatError(
            "a pickle, but not a legacy torch.save file (magic number missing)"
        )
    if _unpickle(stream) != _LEGACY_PROTOCOL_VERSION:
        raise CheckpointFormatError("unsupported legacy torch.save protocol version")
    sys_info = _unpickle(stream)
    if not isinstance(sys_info, dict):
        raise CheckpointFormatError("legacy torch.save sys_info record is not a dict")
    little_endian = sys_info.get("little_endian", True)
    byteorder = "little" if little_endian else "big"

    table = _StorageTable(6, None)
    top = _unpickle(stream, table, inert)
    keys = _unpickle(stream)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CheckpointFormatError("legacy storage key list is not a list of strings")

    offset = stream.tell()
    count_format = "<q" if little_endian else ">q"
    for storage_key in keys:
        storage = table.storages.get(storage_key)
        if storage is None:
            raise CheckpointFormatError(f"storage {_brief(storage_key)} is listed but never used")
        (count,) = struct.unpack(count_format, source.read_at(offset, 8))
        nbytes = count * storage.element_type.itemsize
        if count < 0 or nbytes != storage.nbytes:
            raise CheckpointFormatError(
                f"storage {_brief(storage_key)} records {count} elements, the pickle declared "
                f"{storage.nbytes // storage.element_type.itemsize}"
            )
        storage.attach(source.read_at(offset + 8, nbytes))
        offset += 8 + nbytes
    return _to_arrays(_select_state_dict(top, key), byteorder, integers)


def _read_safetensors(source: _Source, integers: bool = False) -> dict[str, np.ndarray]:
    """The floating-point tensors of a flat safetensors file (shared strict parser), and its
    integer ones as int64 with ``integers``."""
    try:
        tensors, _ = read_safetensors(bytes(source.read_at(0, source.size)))
    except ModelFormatError as exc:
        raise CheckpointFormatError(str(exc)) from exc
    if integers:
        return {
            name: np.array(arr, np.int64) if arr.dtype.kind in "iu" else arr
            for name, arr in tensors.items()
            if arr.dtype == np.float32 or arr.dtype.kind in "iu"
        }
    return {name: arr for name, arr in tensors.items() if arr.dtype == np.float32}


# --------------------------------------------------------------------------------------------
# Picking the state dict and materialising it
# --------------------------------------------------------------------------------------------


def _describe(value: object) -> str:
    if isinstance(value, _Tensor):
        return "a tensor"
    return f"a {type(value).__name__}" if not isinstance(value, _StateDict) else "a dict"


def _key_list(keys: list[object]) -> str:
    shown = ", ".join(_brief(k) for k in keys[:20])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")


def _is_tensor_dict(value: object) -> bool:
    return isinstance(value, dict) and any(isinstance(v, _Tensor) for v in value.values())


def _select_state_dict(top: object, key: str | None) -> dict[object, object]:
    if key is not None:
        if not isinstance(top, dict):
            raise CheckpointFormatError(
                f"key={_brief(key)} given, but the checkpoint holds {_describe(top)}, not a dict"
            )
        if key not in top:
            raise CheckpointFormatError(
                f"key {_brief(key)} not found in the checkpoint; available keys: "
                f"{_key_list(list(top))}"
            )
        chosen = top[key]
        if not _is_tensor_dict(chosen):
            raise CheckpointFormatError(
                f"checkpoint[{_brief(key)}] is {_describe(chosen)}, not a dict of tensors"
            )
        return chosen
    if isinstance(top, _Tensor):
        raise CheckpointFormatError("the checkpoint holds a single tensor, not a state dict")
    if not isinstance(top, dict):
        raise CheckpointFormatError(f"the checkpoint holds {_describe(top)}, not a state dict")
    if _is_tensor_dict(top):
        return top
    candidates = [k for k, v in top.items() if _is_tensor_dict(v)]
    if len(candidates) == 1:
        return top[candidates[0]]
    for preferred in _PREFERRED_KEYS:
        if preferred in candidates:
            return top[preferred]
    if not candidates:
        raise CheckpointFormatError(
            "no dict of tensors found at the top level of the checkpoint; its keys are "
            f"{_key_list(list(top))}; pass key= to choose one"
        )
    raise CheckpointFormatError(
        f"the checkpoint holds several dicts of tensors under keys {_key_list(candidates)}; "
        "pass key= to choose one"
    )


def _check_supported(name: object, element_type: _ElementType) -> None:
    if element_type.kind == "unsupported":
        raise CheckpointFormatError(
            f"tensor {_brief(name)} has dtype {element_type.name}, which cannot be converted "
            "to float32"
        )


def _as_float32(view: np.ndarray, element_type: _ElementType) -> np.ndarray:
    """Copy ``view`` into a new C-contiguous float32 array (exact except float64 rounding)."""
    if element_type.kind == "bfloat16":
        # bfloat16 is the high half of a float32: widen the bits, then reinterpret.
        bits = view.astype(np.uint32, order="C")
        bits <<= 16
        return bits.view(np.float32)
    with np.errstate(over="ignore"):  # float64 beyond float32 range -> inf, as torch's .float()
        return np.array(view, dtype=np.float32, order="C")


def _tensor_to_float32(
    name: object, tensor: _Tensor, byteorder: str, integers: bool = False
) -> np.ndarray | None:
    element_type = tensor.element_type
    itemsize = element_type.itemsize
    storage = tensor.storage
    storage_elements = storage.nbytes // itemsize
    numel = math.prod(tensor.shape)
    if numel == 0:
        end = tensor.offset
    else:
        end = (
            tensor.offset
            + 1
            + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.strides, strict=True))
        )
    if end > storage_elements:
        raise CheckpointFormatError(
            f"tensor {_brief(name)} reaches element {end} of storage {_brief(storage.key)}, "
            f"which holds only {storage_elements} {element_type.name} elements"
        )
    if numel > storage_elements:
        raise CheckpointFormatError(
            f"tensor {_brief(name)} has {numel} elements but its storage holds {storage_elements}"
        )
    keep_integer = integers and element_type.kind == "skip" and element_type.name != "bool"
    if element_type.kind == "skip" and not keep_integer:
        return None
    _check_supported(name, element_type)
    if numel == 0:
        return np.zeros(tensor.shape, dtype=np.float32)
    flat = np.frombuffer(storage.data(), dtype=element_type.numpy_dtype(byteorder), count=end)
    view = as_strided(
        flat[tensor.offset :],
        shape=tensor.shape,
        strides=tuple(s * itemsize for s in tensor.strides),
        writeable=False,
    )
    if keep_integer:
        return np.array(view, dtype=np.int64, order="C")
    return _as_float32(view, element_type)


def _to_arrays(
    state_dict: dict[object, object], byteorder: str, integers: bool = False
) -> dict[str, np.ndarray]:
    result: dict[str, np.ndarray] = {}
    for name, value in state_dict.items():
        inert = _opaque(name) or _opaque(value)
        if inert is not None:
            raise UnsafeCheckpointError(
                f"the state dict holds an object of '{inert}' (entry {_brief(name)}), which "
                "is not on the allow-list of plain tensor data; refusing to load it"
            )
        if not isinstance(value, _Tensor):
            continue  # e.g. extra_state or a stray '_metadata' entry
        if not isinstance(name, str):
            raise CheckpointFormatError(f"state dict key {_brief(name)} is not a string")
        array = _tensor_to_float32(name, value, byteorder, integers)
        if array is not None:
            result[name] = array
    return result


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def read_checkpoint(
    source: str | os.PathLike[str] | bytes,
    *,
    key: str | None = None,
    integers: bool = False,
    inert_objects: bool = False,
) -> dict[str, np.ndarray]:
    """Read the floating-point weights of a PyTorch checkpoint, without torch.

    Parameters
    ----------
    source : str, os.PathLike or bytes
        Path to, or the bytes of, a file written by ``torch.save`` (zip or legacy format) or a
        safetensors file. The format is recognised from the content, not the file name.
    key : str, optional
        Top-level key holding the state dict when the checkpoint is a dict of several things,
        e.g. ``{'model': sd, 'optimizer': ..., 'epoch': 3}``. Without it the top level is used
        if it holds tensors itself, else the single entry that is a dict of tensors (with
        ``state_dict``, ``model_state_dict``, ``model``, ``net`` preferred, in that order).
        Not accepted for safetensors, which are flat.
    integers : bool, default False
        Also return the integer tensors (as int64 arrays; bool ones stay out): the cells of
        CELLS.md keep some of their structure in them (the clockwork RNN's ``periods``).
    inert_objects : bool, default False
        Objects of classes outside the allow-list (a training library's hyper-parameter
        containers beside the weights) load as inert markers instead of being refused; none
        may be inside the chosen state dict. Nothing from the file runs either way.

    Returns
    -------
    dict of str to numpy.ndarray
        Tensor name to a new float32 C-contiguous array, in the checkpoint's order. float16,
        bfloat16 and float32 convert exactly; float64 is rounded to nearest. Integer and bool
        tensors (``num_batches_tracked``...) and non-tensor entries are left out.

    Raises
    ------
    UnsafeCheckpointError
        The pickle references a global outside the allow-list (e.g. ``posix.system``, a model
        class saved with ``torch.save(model)``): nothing from the file was executed.
    CheckpointFormatError
        The data is truncated, corrupt, inconsistent, ambiguous (several candidate state dicts),
        or holds complex/float8 weights; also for a missing ``key``.
    OSError
        The path cannot be opened.
    """
    src = _Source(source)
    try:
        kind = _detect_format(src)
        if kind == "safetensors":
            if key is not None:
                raise CheckpointFormatError("key= does not apply to safetensors files (flat)")
            return _read_safetensors(src, integers)
        if kind == "zip":
            return _read_zip(src, key, integers, inert_objects)
        return _read_legacy(src, key, integers, inert_objects)
    except (CheckpointFormatError, UnsafeCheckpointError):
        raise
    except Exception as exc:  # a corrupt file can trip any parser; report it as a format error
        raise CheckpointFormatError(
            f"corrupt or truncated checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        src.close()
