"""The source tree is ruff-clean (run only from a source checkout, where pyproject.toml is)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean() -> None:
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not a source checkout")
    from conftest import require

    require("ruff")
    paths = [
        p for p in ("lstm_infer", "tests", "bench", "models", "setup.py") if (ROOT / p).exists()
    ]
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_subpackage_is_installed() -> None:
    """A package folder missing from pyproject's list works in a source checkout and breaks
    every import of an installed wheel (CI installs with ``pip install .``)."""
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not a source checkout")
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "lstm_infer").rglob("__init__.py")
    }
    assert found - listed == set(), (
        f"package folders missing from pyproject.toml: {sorted(found - listed)}"
    )
