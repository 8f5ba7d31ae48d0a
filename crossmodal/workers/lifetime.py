"""Starting worker processes fresh, and making sure none outlives its parent.

A worker is spawned (a new interpreter running ``python -m crossmodal.workers.child``), never forked from the
parent: a fork of the plugin process would inherit gevent's patched state, its locks mid-use and its loop.

Dify's daemon restarts a plugin by killing it, often with SIGKILL, which runs no clean-up. So each worker
asks the kernel to kill it when its parent dies (``PR_SET_PDEATHSIG``), checks right after that its parent is
still the one that started it (the parent may have died before the request took effect), and its channel's
reader ends the process when the parent's end of the socket closes. No orphan keeps memory or a collection's
file lock.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Called first thing in a worker: SIGKILL when the parent dies (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the channel's end still ends the worker
            pass
    if os.getppid() != parent_pid:
        os._exit(0)


def set_memory_limit(limit_bytes: int) -> None:
    """Cap the worker's address space: an allocation past it fails inside the worker (PDFium's or Pillow's
    allocation fails, or the worker dies), never in the process that serves requests."""
    if limit_bytes <= 0:
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = limit_bytes if hard == resource.RLIM_INFINITY else min(limit_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def worker_command(kind: str, fd: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "crossmodal.workers.child", kind, str(fd), str(os.getpid()), *extra]


def worker_env() -> dict:
    """The parent's environment, with the parent's module search path (as multiprocessing's spawn passes it):
    the worker imports the same modules the parent does, whatever directory either runs from."""
    env = dict(os.environ)
    paths = [os.path.abspath(p or os.getcwd()) for p in sys.path if os.path.isdir(p or os.getcwd())]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
