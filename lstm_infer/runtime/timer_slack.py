"""A thread's timer slack: how late Linux may end its timed waits.

Linux lets every timed wait of an ordinary thread end up to its *timer slack* late (50 us by
default), so that nearby wake-ups can be merged. A batching worker that waits for a batch's
deadline then hands the batch back up to 50 us after it, and under a paced load that shows
as the tail of the step latency (the p99 ``max_wait_us`` is meant to bound). The batcher's
worker therefore asks for a slack of one microsecond for itself only
(``prctl(PR_SET_TIMERSLACK)`` acts on the calling thread), and nothing else in the process
changes.

Elsewhere than Linux, or where the call is refused, nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

__all__ = ["WORKER_TIMER_SLACK_NS", "set_thread_timer_slack", "thread_timer_slack"]

PR_SET_TIMERSLACK = 29  # <linux/prctl.h>
# The worker's slack: below any wake-up cost a VM adds, above zero (0 means "the default").
WORKER_TIMER_SLACK_NS = 1_000

_prctl_lock = threading.Lock()
_prctl = None


def _libc_prctl():  # -> the prctl function, or False where there is none
    global _prctl
    with _prctl_lock:
        if _prctl is None:
            _prctl = False
            if sys.platform.startswith("linux"):
                try:
                    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                    fn = libc.prctl
                    fn.restype = ctypes.c_int
                    fn.argtypes = [ctypes.c_int, ctypes.c_ulong]
                    _prctl = fn
                except (OSError, AttributeError):
                    pass
        return _prctl


def set_thread_timer_slack(ns: int) -> bool:
    """Set the calling thread's timer slack to ``ns`` nanoseconds (``ns`` >= 1).

    Returns
    -------
    bool
        True when the slack was set, False where the platform has no such setting or the
        call was refused.
    """
    if not isinstance(ns, int) or ns < 1:
        raise ValueError(f"ns must be a positive int of nanoseconds, got {ns!r}")
    prctl = _libc_prctl()
    if not prctl:
        return False
    return prctl(PR_SET_TIMERSLACK, ns) == 0


def thread_timer_slack(native_id: int) -> int | None:
    """The timer slack of thread ``native_id`` of this process in nanoseconds, read from
    ``/proc`` (None where it cannot be read)."""
    try:
        # /proc/<thread id> (task/<id>/ has no timerslack_ns)
        with open(f"/proc/{int(native_id)}/timerslack_ns") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None
