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
