"""Shared pytest helpers: ``require``, the ``isa`` fixture, a seeded ``rng``, and
``run_python`` / ``OUTSIDE`` for code that must run in a fresh interpreter.

Test modules import helpers from this directory directly (``from conftest import require``,
``from reference import lstm_ref``, ``import onnx_builders``); the directory is put on
``sys.path`` here so that works under any pytest import mode.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

# Where fresh interpreters start: outside the source checkout, whose uncompiled lstm_infer
# would come first on their sys.path and shadow the installed package (CI installs it).
OUTSIDE = tempfile.gettempdir()


def run_python(code: str, *, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -c code`` from ``OUTSIDE``; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=OUTSIDE,
        timeout=timeout,
    )  # fmt: skip


def import_without(blocked: str, module: str) -> subprocess.CompletedProcess:
    """Import ``module`` in a fresh interpreter where package ``blocked`` cannot be imported;
    stdout holds the ImportError's class name and message (empty if the import worked)."""
    return run_python(
        f"import sys\nsys.modules[{blocked!r}] = None\nimport lstm_infer\n"
        f"try:\n    import {module}\nexcept ImportError as e:\n    print(type(e).__name__, e)"
    )


REQUIRE_ALL_ENV = "LSTM_INFER_REQUIRE_ALL"
ISAS: tuple[str, ...] = ("scalar", "avx2", "avx512")
# Every kernel table; the *vnni / *bf16 ones differ from their base only in quantized products.
QUANT_ISAS: tuple[str, ...] = (
    "scalar", "avx2", "avx2vnni", "avx512", "avx512vnni", "avx512bf16", "amx",
)  # fmt: skip


def require_all() -> bool:
    """Whether missing optional modules must fail tests instead of skipping them."""
    return os.environ.get(REQUIRE_ALL_ENV, "") == "1"


def require(module_name: str) -> ModuleType:
    """Import ``module_name``; skip the caller if it is missing.

    With ``LSTM_INFER_REQUIRE_ALL=1`` a missing module is an error instead (the test, or the
    collection of a module calling this at import time, fails rather than skips).
    """
    if not require_all():
        return pytest.importorskip(module_name, exc_type=ImportError)
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"{module_name!r} is required because {REQUIRE_ALL_ENV}=1: {exc}"
        ) from exc


def _with_isa(name: str) -> Iterator[str]:
    lstm_infer = require("lstm_infer")
    if name not in lstm_infer.available_isas():
        pytest.skip(f"ISA {name!r} not available here ({lstm_infer.available_isas()})")
    previous = lstm_infer.isa()
    lstm_infer.set_isa(name)
    try:
        assert lstm_infer.isa() == name
        yield name
    finally:
        lstm_infer.set_isa(previous)


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with each SIMD variant the CPU supports active; restore the previous one."""
    yield from _with_isa(request.param)


@pytest.fixture(params=QUANT_ISAS)
def quant_isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Like ``isa`` over every kernel table, the dot-product ones (VNNI, BF16) included."""
    yield from _with_isa(request.param)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """Return a numpy Generator seeded from the test's node id (stable across runs)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
