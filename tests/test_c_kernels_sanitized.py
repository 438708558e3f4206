"""The C kernels' own test program, built with AddressSanitizer and UBSan, run on every ISA.

``tests/c/test_kernels.c`` checks every usable ISA's kernel table against the scalar table
and naive C references (matvec, pointwise cells, whole-sequence driver, stack step). Here it
is compiled from ``src_c/`` exactly as ``setup.py`` compiles the extension — the portable
files without ``-m`` flags, each per-ISA file with its own — plus the sanitizers, then run.
Any mismatch or sanitizer report fails the test. Skipped only when gcc is missing, and even
then not under ``LSTM_INFER_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import ast
import os
import platform
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import require_all

ROOT = Path(__file__).resolve().parents[1]
TEST_SOURCE = ROOT / "tests" / "c" / "test_kernels.c"
SANITIZE = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
# Any of these on stderr is a sanitizer finding, whatever the exit status.
SANITIZER_MARKERS = ("runtime error:", "AddressSanitizer", "LeakSanitizer", "SUMMARY:")


def _setup_constants() -> dict[str, object]:
    """PORTABLE_SOURCES, X86_ISA_SOURCES and COMMON_CFLAGS, read from setup.py's literals."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    wanted = {"PORTABLE_SOURCES", "X86_ISA_SOURCES", "COMMON_CFLAGS"}
    found: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in wanted:
                found[target.id] = ast.literal_eval(node.value)
    missing = wanted - set(found)
    assert not missing, f"setup.py no longer defines {sorted(missing)} as literals"
    return found


def _gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        if require_all():
            pytest.fail("gcc is required (LSTM_INFER_REQUIRE_ALL=1) to build the C kernel test")
        pytest.skip("gcc not found")
    return gcc


def _compile(gcc: str, args: list[str], cwd: Path) -> None:
    result = subprocess.run([gcc, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"gcc {' '.join(args)}\n{result.stderr}"


def _build(test_source: Path, tmp_path: Path) -> Path:
    """``test_source`` + src_c with ASan/UBSan, compiled as setup.py compiles the extension."""
    gcc = _gcc()
    consts = _setup_constants()
    # setup.py's warnings and language flags, with its -O level replaced by the sanitizer's.
    common = [f for f in consts["COMMON_CFLAGS"] if not f.startswith("-O")]  # type: ignore[union-attr]
    # A 4 KB input-projection chunk (the build's is 256 KB) so the small test sequences run
    # their projections chunk by chunk too, including one step per chunk.
    base = [
        *SANITIZE,
        *common,
        "-pthread",
        f"-I{ROOT / 'src_c'}",
        "-DLI_XPROJ_CHUNK_BYTES=4096",
        "-DLI_RCELL_CHUNK_FLOATS=512",
    ]
    is_x86_64 = platform.machine().lower() in ("x86_64", "amd64")
    # (source, extra flags) per translation unit: only the per-ISA files get -m flags.
    units = [(ROOT / s, []) for s in consts["PORTABLE_SOURCES"]]  # type: ignore[union-attr]
    units.append((test_source, []))
    if is_x86_64:
        base.append("-DLI_HAVE_X86_KERNELS=1")
        for source, flags in consts["X86_ISA_SOURCES"].items():  # type: ignore[union-attr]
            units.append((ROOT / source, list(flags)))
    objects = [tmp_path / f"{i}_{src.stem}.o" for i, (src, _) in enumerate(units)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(
            pool.map(
                lambda job: _compile(
                    gcc, [*base, *job[0][1], "-c", str(job[0][0]), "-o", str(job[1])], tmp_path
                ),
                zip(units, objects),
            )
        )
    exe = tmp_path / test_source.stem
    _compile(gcc, [*SANITIZE, *map(str, objects), "-lm", "-pthread", "-o", str(exe)], tmp_path)
    return exe


def _run_clean(exe: Path) -> str:
    """Run a sanitized test program; its stdout, after asserting a clean run."""
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:halt_on_error=1:abort_on_error=0"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300, env=env)
    report = f"exit status {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, report
    assert not any(m in result.stderr for m in SANITIZER_MARKERS), report
    assert "all ok" in result.stdout, report
    assert "scalar  ok" in result.stdout or "scalar     ok" in result.stdout, report
    return result.stdout


def test_kernels_under_sanitizers(tmp_path: Path) -> None:
    """Build tests/c/test_kernels.c + src_c with ASan/UBSan and require a clean run."""
    _run_clean(_build(TEST_SOURCE, tmp_path))


def test_step_program_under_sanitizers(tmp_path: Path) -> None:
    """tests/c/test_step_program.c: every record kind against naive references, buffers
    allocated to their exact extents, on every usable kernel table (the portable records,
    GROUPED_CONV, once)."""
    out = _run_clean(_build(ROOT / "tests" / "c" / "test_step_program.c", tmp_path))
    assert "portable   ok" in out, out


@pytest.mark.parametrize(
    "source",
    [
        "test_cell_layer_norm_lstm.c",  # the layer-normalised LSTM
        "test_cell_clockwork_rnn.c",  # rows at different step counters, strided output
        "test_cells_lstm_blocks.c",  # the depth-gated and grid LSTMs
        "test_cell_attention_decoder.c",  # every attention kind, runs and greedy generation
    ],
)
def test_cells_under_sanitizers(tmp_path: Path, source: str) -> None:
    """tests/c/test_cell*.c: each fused cell of CELLS.md (src_c/cell_*.c) against a naive
    double version of its equations, weights packed by the test in the documented layout,
    arrays allocated to their exact lengths, on every usable kernel table."""
    _run_clean(_build(ROOT / "tests" / "c" / source, tmp_path))
