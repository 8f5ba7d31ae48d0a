"""The plugin process's side of its worker process (crossmodal/workers/engine.py): start it, hand it each call,
wait for the answer without holding the gevent loop, and replace it when it dies, grows past its memory budget
or stops answering.

The plugin process keeps to Dify's protocol, the endpoints' parsing and file downloads: it holds no model and
no lock that model code shares, so its loop never competes with model code for the interpreter lock (with
worker threads in one process, every kind of request waited 8-10 s at 24 in flight, Collections included).

- **Deadlines.** Each call carries its deadline; the worker process answers at the deadline at the latest
  (crossmodal/lanes.py) and this side waits that long plus ``GRACE_SECONDS`` before it answers the caller
  itself.
- **Supervision.** Every ``WATCH_SECONDS`` the worker's resident memory is read (past ``worker_memory_mb`` it
  is replaced: the calls in it end with a retryable 503) and it is pinged (silent for ``worker_silence_s``, it
  is replaced). A worker that dies is restarted, with a growing pause when it dies right after starting.
- **Calls back.** A call's arguments may hold an object of this process (a tool session's workspace models):
  it travels as a handle, and the worker's method calls on it come back here and run on the loop.
- **Lifetime.** The worker dies with this process (crossmodal/workers/lifetime.py).
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import subprocess
import time
from typing import Callable

from crossmodal.errors import CrossmodalError
from crossmodal.limits import current_narrowing, limit, register
from crossmodal.workers import wire
from crossmodal.workers.lifetime import rss_bytes, worker_command, worker_env

logger = logging.getLogger(__name__)

GRACE_SECONDS = 1.0  # past a call's deadline, how long this side still waits for the worker's own answer
WATCH_SECONDS = 2.0
WORKER_MEMORY = register("worker_memory_mb", 0, "MB", "resident memory of the plugin's worker process (models, "
                         "store, work in progress); past it the worker is replaced and its calls end with a "
                         "retryable 503 (0: three quarters of the machine's memory)", cap=1 << 22)
WORKER_SILENCE = register("worker_silence_s", 180, "s", "how long the worker process may leave a ping unanswered "
                          "before it is replaced (an HNSW build holds its interpreter for tens of seconds)",
                          cap=3600, minimum=10)
WORKER_START = register("worker_start_s", 120, "s", "how long a call waits for the worker process to start "
                        "(bounded by the call's own deadline)", cap=600, minimum=1)


class WorkerUnavailable(CrossmodalError):
    """The worker process is starting or was replaced while the call was in it: retry."""

    def __init__(self, message: str):
        super().__init__(message + "; retry in a few seconds", param="worker", status=503)


class Engine:
    """The worker process of this plugin process (one; see the module's text)."""

    def __init__(self, command: Callable[[int], list[str]] | None = None):
        import gevent.event
        import gevent.lock

        self.command = command or (lambda fd: worker_command("engine", fd))
        self.process: subprocess.Popen | None = None
        self.channel = None
        self.ready = gevent.event.Event()
        self.pending: dict[int, tuple] = {}  # call id -> (AsyncResult, handles of its targets)
        self.targets: dict[int, object] = {}  # handle -> object of this process a call lent the worker
        self.ids = itertools.count(1)
        self.started_at = 0.0
        self.quick_deaths = 0
        self.restarts = 0
        self.last_pong = time.monotonic()
        self.last_exit = ""
        self._watching = False
        self._lending: list[int] | None = None
        self._sending = gevent.lock.Semaphore()

    # -- lifetime -----------------------------------------------------------------------------------------
    def start(self) -> None:
        import socket

        import gevent

        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(self.command(theirs.fileno()), pass_fds=(theirs.fileno(),),
                                        stdin=subprocess.DEVNULL, stdout=2, env=worker_env())
        theirs.close()
        self.channel = ours
        self.started_at = self.last_pong = time.monotonic()
        logger.info("started the plugin's worker process (pid %d)", self.process.pid)
        gevent.spawn(self._read, self.process, ours)
        if not self._watching:
            self._watching = True
            gevent.spawn(self._watch)

    def _read(self, process, sock) -> None:
        try:
            while True:
                self._handle(wire.recv(sock))
        except (wire.ChannelClosed, OSError, EOFError):
            pass
        except Exception:  # noqa: BLE001 - a message that cannot be read: the channel is lost
            logger.exception("a message from the worker process could not be read")
        self._lost(process)

    def _handle(self, message) -> None:
        import gevent

        kind = message[0]
        if kind == "result":
            _, call_id, ok, value, trace = message
            entry = self.pending.pop(call_id, None)
            if entry is None:
                return  # its caller stopped waiting
            if ok:
                entry[0].set(value)
            else:
                if trace:
                    logger.error("a call failed in the worker process:\n%s", trace)
                entry[0].set_exception(value)
        elif kind == "log":
            _, level, name, text = message
            logging.getLogger(name if name.startswith("crossmodal") else f"crossmodal.worker.{name}").log(
                level, "%s", text)
        elif kind == "callback":
            gevent.spawn(self._callback, *message[1:])
        elif kind == "pong":
            self.last_pong = time.monotonic()
        elif kind == "ready":
            self.ready.set()
            logger.info("the worker process is ready (%.1f s after its start)", time.monotonic() - self.started_at)

    def _lost(self, process) -> None:
        """The channel to ``process`` ended: end its calls, and start a new worker (after a pause when it died
        right after starting)."""
        import gevent

        code = process.poll()
        if code is None:
            process.kill()
            code = process.wait()
        from crossmodal.workers.tasks import describe_exit

        self.last_exit = describe_exit(code)
        if process is not self.process:
            return
        logger.error("the plugin's worker process ended: %s; %d calls in it end with a retryable error",
                     self.last_exit, len(self.pending))
        self.ready.clear()
        pending, self.pending = self.pending, {}
        for result, _ in pending.values():
            result.set_exception(WorkerUnavailable(f"the plugin's worker process ended ({self.last_exit}) while "
                                                   "the call was in it"))
        self.quick_deaths = self.quick_deaths + 1 if time.monotonic() - self.started_at < 60 else 0
        self.restarts += 1
        gevent.spawn_later(min(30.0, 0.5 * 2 ** self.quick_deaths) if self.quick_deaths else 0.0, self.start)

    def _watch(self) -> None:
        import gevent

        while True:
            gevent.sleep(WATCH_SECONDS)
            process = self.process
            if process is None or process.poll() is not None or not self.ready.is_set():
                continue
            budget = memory_budget()
            used = rss_bytes(process.pid)
            silent = time.monotonic() - self.last_pong
            if used > budget:
                logger.error("the worker process uses %.0f MB, over its %.0f MB budget (worker_memory_mb): "
                             "replacing it", used / 2**20, budget / 2**20)
                process.kill()
            elif silent > limit("worker_silence_s"):
                logger.error("the worker process has not answered for %.0f s (worker_silence_s): replacing it", silent)
                process.kill()
            else:
                self._send(("ping", time.monotonic()))

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    # -- calls ---------------------------------------------------------------------------------------------
    def call(self, fn: Callable, args: tuple, kwargs: dict, lane: str, deadline: float, name: str | None = None,
             caller: str | None = None):
        """``fn(*args, **kwargs)`` in the worker process's ``lane``: its value or its exception, within
        ``deadline`` seconds (+ GRACE_SECONDS). ``caller``: whose share of the lane's queue it takes."""
        return self.call_async(fn, args, kwargs, lane, deadline, name, caller).get(
            timeout=deadline + GRACE_SECONDS + 5)

    def call_async(self, fn: Callable, args: tuple, kwargs: dict, lane: str, deadline: float,
                   name: str | None = None, caller: str | None = None):
        """The call sent; a gevent AsyncResult of its outcome (DeadlineExceeded past ``deadline`` + grace)."""
        import gevent
        import gevent.event

        started = time.monotonic()
        name = name or getattr(fn, "__name__", "call")
        self._lending = handles = []
        try:
            payload = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            self._forget(handles)
            raise TypeError(f"{name} cannot travel to the worker process ({exc}): pass a module-level function "
                            "and plain data, not a lambda or a local function") from None
        finally:
            self._lending = None
        outcome = gevent.event.AsyncResult()
        if not self.ready.wait(timeout=min(deadline, limit("worker_start_s"))):
            self._forget(handles)
            outcome.set_exception(WorkerUnavailable(
                "the plugin's worker process is starting" + (f" again (it {self.last_exit})" if self.last_exit else "")))
            return outcome
        left = max(0.001, deadline - (time.monotonic() - started))
        call_id = next(self.ids)
        self.pending[call_id] = (outcome, handles)
        outcome.rawlink(lambda _: self._forget(handles))
        if not self._send(("call", call_id, payload, lane, left, current_narrowing(), name, caller)):
            self.pending.pop(call_id, None)
            outcome.set_exception(WorkerUnavailable("the plugin's worker process cannot be reached"))
            return outcome

        def too_late() -> None:
            if self.pending.pop(call_id, None) is not None:
                from crossmodal.lanes import DeadlineExceeded, count_deadline_miss

                count_deadline_miss(name, "worker")
                outcome.set_exception(DeadlineExceeded(name, round(deadline, 1), "the worker process did not "
                                                       "answer in time"))

        gevent.spawn_later(left + GRACE_SECONDS, too_late)
        return outcome

    def _send(self, message) -> bool:
        """One message at a time: greenlets that write to one socket at once interleave their bytes (gevent
        refuses it: ConcurrentObjectUseError)."""
        try:
            with self._sending:
                wire.send(self.channel, message)
            return True
        except (OSError, AttributeError):
            return False

    # -- objects lent to the worker --------------------------------------------------------------------------
    def lend(self, target) -> int:
        """A handle for ``target`` that the worker calls back through (only while a call's arguments are being
        packed: the handle lives as long as that call)."""
        if self._lending is None:
            raise TypeError(f"{type(target).__name__} lives in the plugin process and travels only in a call's "
                            "arguments")
        handle = next(self.ids)
        self.targets[handle] = target
        self._lending.append(handle)
        return handle

    def _forget(self, handles: list[int]) -> None:
        for handle in handles:
            self.targets.pop(handle, None)

    def _callback(self, callback_id: int, handle: int, method: str, args: tuple) -> None:
        target = self.targets.get(handle)
        try:
            if target is None:
                raise CrossmodalError("the call this answer belongs to has ended", param="worker")
            reply = (True, getattr(target, method)(*args))
        except BaseException as exc:  # noqa: BLE001 - handed back to the worker
            reply = (False, wire.portable_error(exc))
        self._send(("callback_result", callback_id, *reply))

    def figures(self) -> dict:
        process = self.process
        alive = process is not None and process.poll() is None
        return {"pid": process.pid if alive else None, "rss_bytes": rss_bytes(process.pid) if alive else 0,
                "restarts": self.restarts, "ready": self.ready.is_set(), "in_flight": len(self.pending)}


def memory_budget() -> int:
    configured = limit("worker_memory_mb")
    if configured:
        return int(configured) * 2**20
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.75)


_ENGINE: list[Engine] = []


def engine() -> Engine:
    """This plugin process's worker process, started on first use (main.py starts it before serving)."""
    if not _ENGINE:
        started = Engine()
        started.start()
        _ENGINE.append(started)
    return _ENGINE[0]


def started() -> Engine | None:
    return _ENGINE[0] if _ENGINE else None
