"""Keeping CPU-bound work off the gevent loop inside the Dify plugin process.

The SDK monkey-patches the process with gevent and serves every session on one OS thread. Model inference,
decoding and search hold a thread for seconds, so heartbeats would stop and the daemon would kill the plugin;
and model code in threads of this process would take the interpreter lock from the loop. ``offload`` hands
such work to the plugin's worker process (crossmodal/workers/supervisor.py), where it runs in a lane
(crossmodal/lanes.py), and yields the loop while it waits. Outside the plugin (CLI, tests, the worker process
itself) it simply calls the function.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, TypeVar

from crossmodal.loop_safe import unpatched

T = TypeVar("T")


def gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("threading")


def _original(module: str, name: str):
    """``module.name`` as it was before gevent's patching (the same object when nothing is patched)."""
    return unpatched(module, name)


def os_lock():
    """A plain OS lock, for what only worker threads take: the cheapest. (On the loop a contended one would
    hold the loop; ``threading.Lock`` is a LoopSafeLock since install_loop_safe_locks, safe on both sides.)"""
    return _original("_thread", "allocate_lock")()


def os_rlock():
    return _original("_thread", "RLock")()


def os_queue():
    """An unbounded FIFO whose blocking get() waits on a real OS lock (the C ``_queue.SimpleQueue``)."""
    return _original("queue", "SimpleQueue")()


def start_os_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a new OS thread (not a greenlet, even under gevent's patching)."""
    _original("_thread", "start_new_thread")(fn, ())


def unwrap(outcome: tuple[bool, object]):
    """The value of an (ok, value) outcome handed from another thread, or its exception, raised here."""
    ok, value = outcome
    if ok:
        return value
    raise value


def offload(fn: Callable[..., T], *args, lane: str = "query", deadline: float | None = None, **kwargs) -> T:
    """Run ``fn`` in ``lane`` of the plugin's worker process and wait for it without holding the loop; past
    ``deadline`` seconds (default: the tool call's), DeadlineExceeded. Outside the plugin's loop it simply
    calls fn. ``fn`` and its arguments travel pickled: module-level functions, bound methods of the service,
    plain data."""
    if not gevent_patched() or not on_loop_thread():
        return fn(*args, **kwargs)
    from crossmodal.lanes import call_deadline
    from crossmodal.workers.supervisor import engine

    return engine().call(fn, args, kwargs, lane, deadline or call_deadline(), caller=caller_of(fn, args))


def caller_of(fn: Callable, args: tuple) -> str | None:
    """Whose call this is, for its share of a lane's queue: the ``caller`` of the settings it runs with (the
    service whose method ``fn`` is, or the service or settings passed first); None when it names none."""
    for candidate in (getattr(fn, "__self__", None), *args[:1]):
        settings = getattr(candidate, "settings", candidate)
        caller = getattr(settings, "caller", None)
        if isinstance(caller, str):
            return caller
    return None


def on_loop_thread() -> bool:
    """Whether this is the gevent loop's OS thread (the main thread until main.py marks the loop)."""
    get_ident = _original("_thread", "get_ident")
    return get_ident() == (_LOOP[1] if _LOOP[1] is not None else _MAIN_THREAD)


def on_loop(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run ``fn`` in a greenlet on the gevent loop and wait for it in this worker thread: what a call into the
    SDK's session needs (a backwards invocation reads and writes the protocol streams, which live on the
    loop). From the loop itself, or outside the plugin, it simply calls fn."""
    hub = _LOOP[0]
    if hub is None or _original("_thread", "get_ident")() == _LOOP[1]:
        return fn(*args, **kwargs)
    import gevent

    outcome = os_queue()

    def run() -> None:
        try:
            outcome.put((True, fn(*args, **kwargs)))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome.put((False, exc))

    import queue

    from crossmodal.lanes import DeadlineExceeded, time_left

    hub.loop.run_callback_threadsafe(gevent.spawn, run)  # a worker's get_hub() would be its own hub
    seconds = time_left(ON_LOOP_SECONDS)
    try:
        return unwrap(outcome.get(timeout=seconds))
    except queue.Empty:
        raise DeadlineExceeded(getattr(fn, "__name__", "a call on the loop"), round(seconds, 1),
                               "the plugin's loop did not run it in time") from None


ON_LOOP_SECONDS = 120.0  # a call into Dify made from a thread waits at most this (or its call's time left)


def mark_loop_thread() -> None:
    """Record the loop's hub and OS thread (main.py calls this on the main thread before serving)."""
    if gevent_patched():
        import gevent

        _LOOP[:] = [gevent.get_hub(), _original("_thread", "get_ident")()]


_LOOP: list = [None, None]  # the plugin's gevent hub and its OS thread; None outside the plugin
_MAIN_THREAD = _original("_thread", "get_ident")()  # this module is first imported on the main thread


class StillRunning(Exception):
    """offload_within's wait ended; the work goes on in its worker thread."""


def offload_within(seconds: float, fn: Callable[..., T], *args, lane: str = "load", **kwargs) -> T:
    """For a caller with a deadline of its own (Dify's 5 s External Knowledge calls): fn's value when it ends
    within ``seconds``, else StillRunning while fn goes on in ``lane`` of the worker process (within the tool
    call's deadline). Call it from the loop. Outside the plugin it simply calls fn."""
    if not gevent_patched():
        return fn(*args, **kwargs)
    import gevent

    from crossmodal.lanes import call_deadline
    from crossmodal.workers.supervisor import engine

    outcome = engine().call_async(fn, args, kwargs, lane, call_deadline(), caller=caller_of(fn, args))
    try:
        return outcome.get(timeout=seconds)
    except gevent.Timeout:
        raise StillRunning(f"{getattr(fn, '__name__', 'work')} still running after {seconds} s") from None


def dump_stacks_on_signal() -> None:
    """``kill -USR1 <plugin pid>`` writes every OS thread's and greenlet's stack to stderr (the daemon's log;
    stdout is the protocol's): what a plugin that stopped answering is waiting for."""
    import signal

    if not gevent_patched() or not hasattr(signal, "SIGUSR1"):
        return
    import gevent

    def dump() -> None:
        sys.stderr.write(format_stacks())
        sys.stderr.flush()

    gevent.signal_handler(signal.SIGUSR1, dump)


def format_stacks() -> str:
    """Every OS thread's stack and every suspended greenlet's (found by the garbage collector: gevent's own
    format_run_info fails on the hubs that worker threads make)."""
    import gc
    import traceback

    import greenlet

    import warnings

    lines = ["crossmodal: stacks on SIGUSR1\n"]
    for ident, frame in sys._current_frames().items():
        lines += [f"-- thread {ident}\n", *traceback.format_stack(frame)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on every object wakes some modules' deprecation warnings
        for item in gc.get_objects():
            if isinstance(item, greenlet.greenlet) and item.gr_frame is not None:
                lines += [f"-- greenlet {_describe(item)}\n", *traceback.format_stack(item.gr_frame)]
    return "".join(lines)


def _describe(item) -> str:
    try:
        return repr(item)
    except Exception:  # noqa: BLE001 - a hub made by a worker thread cannot always describe itself
        return f"{type(item).__name__} at {id(item):#x}"


def install_loop_safe_locks() -> None:
    """Make every lock of the process one that the loop and OS worker threads can share (main.py calls this
    right after the SDK's gevent patching, before anything else is imported or started).

    - Every ``threading.Lock``/``RLock``/``Condition`` from now on, and the gevent locks already made, become
      crossmodal.loop_safe.LoopSafeLock: logging's module and handler locks, tqdm's write lock,
      ``concurrent.futures``' global lock that the SDK's listener takes for every request (and transformers
      for every tensor it loads in a worker), huggingface_hub's, the SDK's, ours.
    - importlib's per-module locks are made by the unpatched ``_thread``: two sessions whose handlers first
      import the same module at the same moment met on one.
    tests/test_runtime_locks.py and tests/test_load_while_loading.py show each case hanging without this.
    """
    if not gevent_patched():
        return
    import importlib._bootstrap

    from crossmodal import loop_safe

    importlib._bootstrap._thread = _UnpatchedThreadModule()
    loop_safe.install()


class _UnpatchedThreadModule:
    """``_thread`` as it was before gevent's patching (allocate_lock, get_ident, RLock, ...)."""

    def __getattr__(self, name: str):
        return _original("_thread", name)


class LoopLogHandler(logging.Handler):
    """Passes log records to the SDK's stdout handler from the gevent loop's thread only.

    The SDK writes each protocol line as two writes (the JSON, then a blank line) on the loop's thread. A record
    written from a worker thread between the two fuses two lines into one the daemon cannot parse (a test run
    saw a heartbeat and a log line fused). Records from worker threads wait in a queue; an async watcher, which
    any thread may signal, wakes the loop to write them."""

    def __init__(self, target: logging.Handler):
        super().__init__(target.level)
        self.target = target
        self.loop_thread = _original("_thread", "get_ident")()
        self.pending = os_queue()
        self.wakeup = None
        if gevent_patched():
            import gevent

            self.wakeup = gevent.get_hub().loop.async_()
            self.wakeup.start(self.drain)

    def emit(self, record: logging.LogRecord) -> None:
        if self.wakeup is None or _original("_thread", "get_ident")() == self.loop_thread:
            self.target.handle(record)
            return
        self.pending.put(record)
        self.wakeup.send()

    def drain(self) -> None:
        while True:
            try:
                record = self.pending.get(block=False)
            except Exception:  # noqa: BLE001 - queue.Empty: nothing left
                return
            self.target.handle(record)


def prepare_plugin_imports() -> None:
    """The plugin process (gevent) imports no model library: trio, when installed, cannot import under gevent's
    patched ``select`` (no epoll), and httpcore2 (httpx's stack) imports it optionally: mark it absent so that
    httpcore2 takes its ImportError path."""
    if gevent_patched():
        sys.modules.setdefault("trio", None)


def preload_libraries() -> None:
    """Import the heavy libraries once, on the main thread of the worker process, before serving calls (a
    first import from several lane threads at once is slower and, for torch, prints to stdout)."""
    import huggingface_hub.hf_api  # noqa: F401
    try:
        import qdrant_edge  # noqa: F401
    except ImportError:  # the model package installs no vector store
        pass
    from crossmodal.engine import engine

    if engine() == "onnx":  # the lean build: a fraction of a second where torch takes seconds
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
        return
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoConfig, AutoModel, AutoProcessor  # noqa: F401
