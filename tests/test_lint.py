"""The source tree is ruff-clean, says why where a file is long, and has no import cycles (run
only from a source checkout, where pyproject.toml is)."""

from __future__ import annotations

import ast
import re
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


# A file this long says why at its top (the layout guide's ~600-line rule).
LONG_FILE_LINES = 650
_REASON = re.compile(r"\b\d{3}[- ]line|\b\d{3} lines")


def _source_files() -> list[Path]:
    roots = [ROOT / "lstm_infer", ROOT / "src_c"]
    suffixes = {".py", ".pyx", ".pxi", ".pxd", ".c", ".h"}
    return sorted(
        p
        for root in roots
        for p in root.rglob("*")
        if p.suffix in suffixes and not (p.suffix == ".c" and p.with_suffix(".pyx").exists())
    )


def test_long_files_say_why_at_their_top() -> None:
    """Files past the ~600-line guide name their length and the reason in their first 40
    lines (generated Cython C is exempt)."""
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not a source checkout")
    silent = []
    for path in _source_files():
        lines = path.read_text(errors="replace").splitlines()
        if len(lines) > LONG_FILE_LINES and not _REASON.search("\n".join(lines[:40])):
            silent.append(f"{path.relative_to(ROOT)} ({len(lines)} lines)")
    assert not silent, f"long files without a reason at their top: {silent}"


def _module_imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The lstm_infer modules ``name`` imports when it is imported: top-level statements
    (inside module-level if / try too), not function bodies or ``if TYPE_CHECKING:``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:
                        found.add(sub)
                    elif target in modules:
                        found.add(target)
            elif isinstance(node, ast.If):
                test = node.test
                if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                    visit(node.orelse)
                    continue
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(ast.parse(path.read_text()).body)
    found.discard(name)
    return found


def test_no_import_cycles_among_modules() -> None:
    """No cycle of module-level imports among lstm_infer's modules (function-level imports
    are the deliberate late bindings)."""
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not a source checkout")
    paths = {}
    for path in (ROOT / "lstm_infer").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        paths[".".join(parts)] = path
    # Compiled modules (lstm_infer._engine, ...) are leaves: `from lstm_infer import _engine`
    # imports them, not the package's __init__ again.
    compiled = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "lstm_infer").rglob("*.pyx")
    }
    modules = set(paths) | compiled
    graph = {name: _module_imports(path, name, modules) for name, path in paths.items()}
    graph.update({name: set() for name in compiled})
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def walk(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append(trail[trail.index(dep) :] + [dep] if dep in trail else [name, dep])
            elif dep not in state:
                walk(dep, [*trail, dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles, f"import cycles: {[' -> '.join(c) for c in cycles]}"
