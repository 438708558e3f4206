"""How many threads the BLAS under the engine may use while lstm_infer runs.

The engine's big products (whole-sequence input projections, dense heads) go through scipy's
BLAS (``scipy.linalg.cython_blas``), usually scipy's own OpenBLAS, which starts one thread per
core by default. On a small machine those threads compete with the engine's own: a dense head
measured 257 ms with OpenBLAS's default against 65 ms with one thread on 2 cores. So every
``Model.run`` sets the BLAS's thread count to what ``threads=`` allows for the work at hand and
gives the process back its own setting afterwards (``blas_threads``).

The library is found without importing anything heavy: scipy's bundled OpenBLAS (symbols
``scipy_openblas_*_num_threads``), else any OpenBLAS already loaded into the process
(``openblas_*_num_threads``, e.g. a distribution's scipy), else threadpoolctl when it is
installed. Where none is found (MKL or Accelerate builds of scipy without threadpoolctl) the
BLAS keeps its own setting and ``blas_controls()`` says so.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


@dataclass(frozen=True)
class BlasControl:
    """Getter and setter of one BLAS library's thread count."""

    library: str
    get: Callable[[], int]
    set: Callable[[int], None]


def _openblas_control(path: str) -> BlasControl | None:
    try:
        lib = ctypes.CDLL(path)  # already loaded by scipy: this only returns its handle
    except OSError:
        return None
    for prefix in ("scipy_openblas", "openblas"):
        get = getattr(lib, f"{prefix}_get_num_threads", None)
        put = getattr(lib, f"{prefix}_set_num_threads", None)
        if get is not None and put is not None:
            get.restype, get.argtypes = ctypes.c_int, []
            put.restype, put.argtypes = None, [ctypes.c_int]
            return BlasControl(path, lambda g=get: int(g()), lambda n, s=put: s(int(n)))
    return None


def _scipy_blas_paths() -> list[str]:
    """scipy's bundled OpenBLAS first, then OpenBLAS libraries mapped into the process."""
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS the engine calls)

    root = os.path.dirname(os.path.dirname(scipy.__file__))
    paths = sorted(glob.glob(os.path.join(root, "scipy.libs", "*openblas*.so*")))
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            mapped = {line.split()[-1] for line in fh if "openblas" in line.lower()}
        paths += sorted(p for p in mapped if p.startswith("/") and p not in paths)
    except OSError:
        pass
    return paths


def _threadpoolctl_control() -> BlasControl | None:
    try:
        import threadpoolctl
    except ImportError:
        return None
    libs = [
        lib
        for lib in threadpoolctl.ThreadpoolController().lib_controllers
        if lib.user_api == "blas" and "scipy" in (lib.filepath or "")
    ]
    if not libs:
        return None
    lib = libs[0]
    return BlasControl(lib.filepath, lambda: int(lib.num_threads), lib.set_num_threads)


_FOUND: list[BlasControl | None] = []
_FIND_LOCK = threading.Lock()


def blas_control() -> BlasControl | None:
    """The thread control of the BLAS the engine calls, found once; None when unknown."""
    with _FIND_LOCK:
        if not _FOUND:
            control = None
            for path in _scipy_blas_paths():
                control = _openblas_control(path)
                if control is not None:
                    break
            _FOUND.append(control or _threadpoolctl_control())
        return _FOUND[0]


_LOCK = threading.Lock()
# [blocks open now (overlapping runs of other threads count), the process's own setting saved
# by the first of them, the setting in force while they run]
_active = [0, 0, 0]


class blas_threads:  # noqa: N801 (used like a function: ``with blas_threads(n):``)
    """Let the engine's BLAS use ``n`` threads inside a ``with`` block; restore the process's
    setting when the last of any overlapping blocks (other threads' runs) ends.

    Overlapping blocks with different ``n`` share one process-wide setting (the most recent
    wins): that only moves speed, never results. A plain class rather than a generator-based
    context manager: it costs ~1 us per block, which a stream step with a head can afford.
    """

    __slots__ = ("_n",)

    def __init__(self, n: int) -> None:
        self._n = max(1, int(n))

    def __enter__(self) -> None:
        control = _FOUND[0] if _FOUND else blas_control()
        if control is None:
            return
        with _LOCK:
            if _active[0] == 0:
                _active[1] = _active[2] = control.get()
            _active[0] += 1
            if _active[2] != self._n:  # a set costs ~0.5 us: only when it changes anything
                control.set(self._n)
                _active[2] = self._n

    def __exit__(self, *exc: object) -> None:
        control = _FOUND[0]
        if control is None:
            return
        with _LOCK:
            _active[0] -= 1
            if _active[0] == 0 and _active[2] != _active[1]:
                control.set(_active[1])


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def thread_pool(threads: int) -> ThreadPoolExecutor:
    """A process-wide pool per thread count (created once, reused by every model)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(threads, "lstm_infer")
        return pool
