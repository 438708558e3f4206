"""Native files loaded memory-mapped: the model is built on the file's pages.

Model.save stores the packed weights too (plans.*, heads.*, 64-byte aligned);
lstm_infer.load(path, mmap=True) maps the file and hands the kernels read-only views of it,
so processes (Ray actors) loading one file share its pages. Checked: every array of the
compiled plans and heads is a view of the mapping, aligned; results equal the model that
was saved, bit for bit (float32, bf16, int8, GRU, bidirectional, embedding + head); a load
without mmap owns its arrays; files without the packed arrays still load; stored arrays of
the wrong names, shapes, dtypes or values are refused; a mapped load adds little memory of
its own.
"""

from __future__ import annotations

import mmap
import os
import textwrap

import numpy as np
import pytest
from conftest import run_python

import lstm_infer
from lstm_infer.errors import ModelFormatError
from lstm_infer.native_format import save_spec
from lstm_infer.safetensors_io import read_safetensors, write_safetensors


def _mapped(arr: np.ndarray) -> bool:
    """Whether ``arr`` is a view whose memory belongs to an mmap."""
    base = arr
    while base is not None and not isinstance(base, (mmap.mmap, memoryview)):
        base = getattr(base, "base", None)
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, mmap.mmap)


def _model(cell: str, direction: str, fmt: str | None, rng) -> lstm_infer.Model:  # noqa: ANN001
    g = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    d = 2 if direction == "bidirectional" else 1
    h, i = 37, 21
    w = rng.uniform(-0.3, 0.3, (d, g * h, i)).astype(np.float32)
    r = rng.uniform(-0.3, 0.3, (d, g * h, h)).astype(np.float32)
    b = rng.uniform(-0.1, 0.1, (d, 2 * g * h)).astype(np.float32)
    model = lstm_infer.Model.from_onnx_weights(cell, w, r, b, direction=direction)
    return model.quantize(fmt) if fmt else model


@pytest.mark.parametrize(
    ("cell", "direction", "fmt"),
    [("lstm", "forward", None), ("gru", "bidirectional", None), ("rnn", "forward", None),
     ("lstm", "forward", "bf16"), ("lstm", "bidirectional", "int8"), ("gru", "forward", "int8")],
)  # fmt: skip
def test_a_saved_model_loads_on_its_mapped_file_with_equal_results(
    cell: str, direction: str, fmt: str | None, tmp_path, rng
) -> None:
    model = _model(cell, direction, fmt, rng)
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = lstm_infer.load(path, mmap=True)
    for plans in loaded._plans:
        for plan in plans:
            for key, arr in plan.arrays().items():
                if arr is not None:
                    assert _mapped(arr), key  # no private copy of any weight
                    if key.endswith("packed") or key.startswith("token"):
                        assert arr.ctypes.data % 64 == 0, key
    assert not any(_mapped(a) for a in lstm_infer.load(path)._plans[0][0].arrays().values()
                   if a is not None)  # fmt: skip
    x = rng.standard_normal((9, 3, 21)).astype(np.float32)
    name = model.input_names[0]
    want, got = model.run({name: x}), loaded.run({name: x})
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    if direction == "forward":
        a, b = model.stream(3), loaded.stream(3)
        for t in range(4):
            np.testing.assert_array_equal(b.step(x[t]), a.step(x[t]))


def test_the_bundled_model_maps_its_embedding_table_and_head(tmp_path) -> None:
    from lstm_infer.bundled import model_path

    model = lstm_infer.load(model_path("char_lm.safetensors"))
    path = tmp_path / "lm.safetensors"
    model.save(path)
    loaded = lstm_infer.load(path, mmap=True)
    assert _mapped(loaded._plans[0][0].arrays()["token_table"])
    assert all(_mapped(h.packed) and _mapped(h.bias_padded) for h in loaded._head)
    ids = np.array([[5], [17], [3]], np.int64)
    name = model.input_names[0]
    for key, want in model.run({name: ids}).items():
        np.testing.assert_array_equal(loaded.run({name: ids})[key], want)


def test_files_without_packed_arrays_still_load(tmp_path, rng) -> None:
    model = _model("lstm", "forward", None, rng)
    path = tmp_path / "old.safetensors"
    save_spec(model.spec, path)  # as files were written before the packed arrays
    tensors, _ = read_safetensors(path)
    assert not any(k.startswith("plans.") for k in tensors)
    x = rng.standard_normal((5, 2, 21)).astype(np.float32)
    name = model.input_names[0]
    out = model.output_names[0]
    np.testing.assert_array_equal(lstm_infer.load(path).run({name: x})[out],
                                  model.run({name: x})[out])  # fmt: skip


@pytest.mark.parametrize(
    "damage", ["shape", "dtype", "missing", "extra", "head", "values", "name", "padding"]
)
def test_stored_arrays_that_do_not_fit_the_layer_are_refused(damage: str, tmp_path, rng) -> None:
    model = _model("lstm", "forward", "bf16" if damage == "padding" else None, rng)
    path = tmp_path / "m.safetensors"
    model.save(path)
    tensors, metadata = read_safetensors(path)
    tensors = {k: np.array(v) for k, v in tensors.items()}
    if damage == "shape":
        tensors["plans.0.0.w_packed"] = tensors["plans.0.0.w_packed"][:1]
    elif damage == "dtype":
        tensors["plans.0.0.r_packed"] = tensors["plans.0.0.r_packed"].astype(np.int32)
    elif damage == "missing":
        del tensors["plans.0.0.bias_packed"]
    elif damage == "extra":
        tensors["plans.3.0.w_packed"] = np.zeros(4, np.float32)
    elif damage == "values":  # the right shape, another model's weights
        tensors["plans.0.0.w_packed"] = np.zeros_like(tensors["plans.0.0.w_packed"])
    elif damage == "name":
        tensors["plans.x.0.w_packed"] = np.zeros(4, np.float32)
    elif damage == "padding":  # NaN only in a bf16 block's zero padding
        packed = tensors["plans.0.0.w_packed"].view(np.uint16).copy()
        packed[..., -1, :, :, 1] = 0x7FC0
        tensors["plans.0.0.w_packed"] = packed.view(np.int16)
    else:  # a head the model does not have
        tensors["heads.0.packed"] = np.zeros(3, np.float32)
    bad = tmp_path / "bad.safetensors"
    write_safetensors(bad, tensors, metadata)
    for mmap_ in (True, False):
        with pytest.raises(ModelFormatError):
            lstm_infer.load(bad, mmap=mmap_)


def test_saved_files_use_only_dtypes_older_readers_know(tmp_path, rng) -> None:
    """bf16 packed bits are stored as I16 (version-1 readers know it and skip plans.*)."""
    import json
    import struct

    path = tmp_path / "bf16.safetensors"
    _model("lstm", "forward", "bf16", rng).save(path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes <= {"F32", "I64", "I32", "I16", "I8", "U8"}, dtypes


def test_int8_rows_past_the_exact_sum_limit_are_refused_with_stored_plans(tmp_path) -> None:
    from lstm_infer._plan import INT8_MAX_INPUTS, derived_shapes

    rng = np.random.default_rng(0)
    model = lstm_infer.Model.from_onnx_weights(
        "rnn", rng.uniform(-0.1, 0.1, (1, 2, 8)).astype(np.float32),
        rng.uniform(-0.1, 0.1, (1, 2, 2)).astype(np.float32),
    ).quantize("int8")  # fmt: skip
    layer = model.spec.layers[0]
    wide = type(layer)(**{**layer.__dict__, "input_size": INT8_MAX_INPUTS + 1,
                          "directions": [type(layer.directions[0])(**{
                              **layer.directions[0].__dict__,
                              "w": np.zeros((2, INT8_MAX_INPUTS + 1), np.float32)})]})  # fmt: skip
    with pytest.raises(ModelFormatError, match="at most"):
        derived_shapes(wide, 0)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="Linux /proc only")
def test_a_mapped_load_adds_little_private_memory(tmp_path, rng) -> None:
    """Weights of ~64 MB (packed included): the load's anonymous memory (what is the process's
    own, not the file's pages, which every process mapping the file shares through the page
    cache) stays a small part of it, where a read-and-pack load holds all of it."""
    h = 1024
    w = rng.uniform(-0.1, 0.1, (1, 4 * h, h)).astype(np.float32)
    model = lstm_infer.Model.from_onnx_weights("lstm", w, w.copy())
    path = tmp_path / "big.safetensors"
    model.save(path)
    weights = sum(a.nbytes for p in model._plans[0] for a in p.arrays().values() if a is not None)
    code = textwrap.dedent(f"""
        import lstm_infer, numpy as np
        def private():
            fields = dict(l.split(":") for l in open("/proc/self/smaps_rollup") if ":" in l)
            return int(fields["Anonymous"].split()[0]) * 1024
        before = private()
        m = lstm_infer.load({str(path)!r}, mmap=True)
        m.run({{m.input_names[0]: np.zeros((2, 1, {h}), np.float32)}})  # touch the weights
        print(private() - before)
    """)
    result = run_python(code, timeout=300)
    assert result.returncode == 0, result.stderr
    grown = int(result.stdout.split()[-1])
    assert weights > 40e6
    assert grown < 0.25 * weights, (grown, weights)
