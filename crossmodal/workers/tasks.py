"""Disposable worker processes for work that can hang or explode on a hostile input (a PDF bomb): each task
runs in a process of its own kind, under a memory cap, and a task that passes its time budget costs one
process, which is killed and replaced, never a thread or a lock of the caller.

A ``TaskPool`` keeps up to ``size`` processes of one kind. ``session()`` lends one process to a caller for a
series of tasks that share state inside it (a document opened once, then its pages rendered one by one);
``run()`` is one task. The time a caller waits for a free process counts against its own deadline
(crossmodal/lanes.py ``time_left``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from typing import Callable, Iterator

from crossmodal.errors import CrossmodalError
from crossmodal.workers import wire
from crossmodal.workers.lifetime import set_memory_limit, worker_command, worker_env

logger = logging.getLogger(__name__)


class TaskTimedOut(CrossmodalError):
    """The task passed its time budget; its process was killed."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message, param=param, status=422)


class TaskCrashed(CrossmodalError):
    """The task's process died (a memory cap reached, a crash in native code)."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message, param=param, status=422)


class PoolBusy(CrossmodalError):
    def __init__(self, message: str):
        super().__init__(message, param="busy", status=503)


# -- the worker process's side ---------------------------------------------------------------------------------
def serve_tasks(channel: socket.socket, memory_limit: int) -> None:
    """Run tasks one at a time until the parent closes the channel."""
    set_memory_limit(memory_limit)
    while True:
        try:
            fn, args, kwargs = wire.recv(channel)
        except wire.ChannelClosed:
            os._exit(0)
        try:
            reply = (True, fn(*args, **kwargs))
        except MemoryError:
            reply = (False, MemoryError("the task needed more memory than its worker's cap"))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            reply = (False, exc)
        try:
            wire.send(channel, reply)
        except (TypeError, AttributeError, ValueError) as exc:  # an outcome that does not pickle
            wire.send(channel, (False, RuntimeError(f"the task's outcome could not be sent back: {exc}")))


# -- the caller's side -------------------------------------------------------------------------------------
class TaskProcess:
    """One worker process and its end of the channel."""

    def __init__(self, memory_limit: int):
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(worker_command("task", theirs.fileno(), str(memory_limit)),
                                        pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, env=worker_env())
        theirs.close()
        self.channel = ours
        self.tasks = 0

    def call(self, fn: Callable, args: tuple, kwargs: dict, timeout: float):
        """fn(*args, **kwargs) in the process: its value or its exception; TimeoutError (the process is then
        killed) or ChildProcessError (it died)."""
        self.tasks += 1
        try:
            self.channel.settimeout(max(0.001, timeout))
            wire.send(self.channel, (fn, args, kwargs))
            ok, value = wire.recv(self.channel)
        except (socket.timeout, TimeoutError):
            self.kill()
            raise TimeoutError(f"no answer within {timeout:.1f} s") from None
        except (wire.ChannelClosed, ConnectionError, OSError):
            code = self.kill()
            raise ChildProcessError(describe_exit(code)) from None
        if ok:
            return value
        raise value

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> int | None:
        """Stop the process now (SIGKILL) and reap it; its exit code (negative: the signal)."""
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self.channel.close()
        return code


def describe_exit(code: int | None) -> str:
    if code is None:
        return "the worker process did not end"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the worker process was killed ({name})"
    return f"the worker process ended with exit code {code}"


class TaskPool:
    """Up to ``size`` worker processes of one kind (see the module's text). Processes are made on demand and
    kept; one that timed out or died is replaced by the next caller. ``max_tasks`` recycles a process after
    that many tasks, so that whatever a long series leaks inside it is given back."""

    def __init__(self, name: str, size: Callable[[], int], memory_limit: Callable[[], int], max_tasks: int = 200):
        self.name = name
        self.size = size
        self.memory_limit = memory_limit
        self.max_tasks = max_tasks
        self._lock = threading.Condition(threading.Lock())
        self._idle: list[TaskProcess] = []
        self._busy = 0
        self.kills = 0  # processes killed for passing a time budget or dying (for /metrics)

    @contextlib.contextmanager
    def session(self, wait: float) -> Iterator[TaskProcess]:
        """A process lent to the caller until the block ends (waiting at most ``wait`` s for a free one)."""
        worker = self._acquire(wait)
        try:
            yield worker
        finally:
            self._release(worker)

    def run(self, fn: Callable, *args, timeout: float, wait: float, **kwargs):
        with self.session(wait) as worker:
            return worker.call(fn, args, kwargs, timeout)

    def _acquire(self, wait: float) -> TaskProcess:
        ends = time.monotonic() + max(0.0, wait)
        with self._lock:
            while not self._idle and self._busy >= max(1, self.size()):
                left = ends - time.monotonic()
                if left <= 0:
                    raise PoolBusy(f"all {self._busy} {self.name} workers are busy; retry in a few seconds")
                self._lock.wait(left)
            self._busy += 1
            worker = self._idle.pop() if self._idle else None
        if worker is not None and worker.alive():
            return worker
        try:
            return TaskProcess(self.memory_limit())
        except BaseException:
            with self._lock:
                self._busy -= 1
                self._lock.notify()
            raise

    def _release(self, worker: TaskProcess) -> None:
        keep = worker.alive() and worker.tasks < self.max_tasks
        if not worker.alive():
            self.kills += 1
        elif not keep:
            worker.kill()
        with self._lock:
            self._busy -= 1
            if keep:
                self._idle.append(worker)
            self._lock.notify()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()
