"""The plugin's worker process: where every call's work runs (models, the store, documents), apart from the
process that speaks Dify's protocol.

The plugin process (gevent, one OS thread for every session) hands each call here over a socket pair
(crossmodal/workers/supervisor.py) and goes on serving heartbeats and other sessions. Here nothing is patched:
calls run in lanes of OS threads (crossmodal/lanes.py), each with its deadline and its workspace's limits; the
interpreter lock that model code takes is this process's own, so the plugin's loop never waits for it. A call
that needs Dify (a workspace's embedding model) calls back into the plugin process (``RemoteTarget``), and
log records go up the same channel to the daemon's log.

Messages, plugin -> here: ("call", id, payload, lane, seconds, limits, name), ("callback_result", id, ok,
value), ("ping", token). Here -> plugin: ("ready", pid), ("result", id, ok, value, traceback), ("callback", id,
target, method, args), ("log", level, logger, text), ("pong", token).
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import queue
import threading
import traceback

from crossmodal import lanes
from crossmodal.errors import CrossmodalError
from crossmodal.workers import wire
from crossmodal.workers.wire import RemoteFailure, portable_error

logger = logging.getLogger(__name__)
# A call into Dify made for a call in progress waits at most what that call has left, and never more than this.
CALLBACK_SECONDS = 120.0


class Channel:
    """The engine's end of the socket pair: any thread may send (one message at a time)."""

    def __init__(self, sock):
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, message) -> None:
        with self.lock:
            wire.send(self.sock, message)


_CHANNEL: list[Channel] = []
_CALLBACKS: dict[int, queue.SimpleQueue] = {}
_CALLBACK_IDS = itertools.count(1)


def serve(sock) -> None:
    """Serve calls from the plugin process until it closes the channel (then exit: the plugin has gone)."""
    channel = Channel(sock)
    _CHANNEL[:] = [channel]
    _forward_logs(channel)
    from crossmodal.runtime import preload_libraries

    preload_libraries()
    channel.send(("ready", os.getpid()))
    from crossmodal.encoders.warmup import warm_remembered

    warm_remembered()
    while True:
        try:
            message = wire.recv(sock)
        except (wire.ChannelClosed, OSError):
            os._exit(0)
        try:
            _dispatch(channel, message)
        except Exception:  # noqa: BLE001 - one bad message never ends the engine
            logger.exception("the worker process could not handle a %r message", message[0])


def _dispatch(channel: Channel, message) -> None:
    kind = message[0]
    if kind == "call":
        _call(channel, *message[1:])
    elif kind == "callback_result":
        _, callback_id, ok, value = message
        waiting = _CALLBACKS.get(callback_id)
        if waiting is not None:
            waiting.put((ok, value))
    elif kind == "ping":
        channel.send(("pong", message[1]))


def _call(channel: Channel, call_id: int, payload: bytes, lane: str, seconds: float | None, narrowing: dict,
          name: str | None, caller: str | None = None) -> None:
    def done(ok: bool, value) -> None:
        _reply(channel, call_id, ok, value)

    try:
        fn, args, kwargs = pickle.loads(payload)
    except Exception as exc:  # noqa: BLE001 - answered to the caller
        done(False, exc)
        return
    job = lanes.Job(fn, args, kwargs, lane=lane, deadline=seconds, narrowing=narrowing or {}, name=name,
                    caller=caller, on_done=done)
    try:
        lanes.submit(job)
    except CrossmodalError as exc:  # the lane is full
        job.answer(False, exc)


def _reply(channel: Channel, call_id: int, ok: bool, value) -> None:
    trace = None
    if not ok and not isinstance(value, CrossmodalError):
        trace = "".join(traceback.format_exception(type(value), value, value.__traceback__))
        value = portable_error(value)
    try:
        channel.send(("result", call_id, ok, value, trace))
    except (pickle.PicklingError, TypeError, AttributeError, ValueError) as exc:
        channel.send(("result", call_id, False, RemoteFailure(type(exc).__name__, f"the result could not be sent "
                                                              f"back: {exc}"), trace))


# -- calls into the plugin process (Dify's workspace models) ------------------------------------------------------
class RemoteTarget:
    """An object of the plugin process (e.g. a tool session's workspace models), seen from here: each method
    call is sent up, run there on the gevent loop, and waited for within the current call's deadline."""

    def __init__(self, handle: int):
        self.handle = handle

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args: call_plugin(self.handle, method, args)


def call_plugin(handle: int, method: str, args: tuple):
    if not _CHANNEL:
        raise CrossmodalError("this object lives in the plugin process, which this process is not connected to")
    seconds = lanes.time_left(CALLBACK_SECONDS)
    callback_id = next(_CALLBACK_IDS)
    waiting = _CALLBACKS[callback_id] = queue.SimpleQueue()
    try:
        _CHANNEL[0].send(("callback", callback_id, handle, method, args))
        try:
            ok, value = waiting.get(timeout=max(0.001, seconds))
        except queue.Empty:
            raise lanes.DeadlineExceeded(f"a call into Dify ({method})", round(seconds, 1),
                                         "Dify did not answer in time") from None
    finally:
        _CALLBACKS.pop(callback_id, None)
    if ok:
        return value
    raise value


# -- the log ----------------------------------------------------------------------------------------------------
class _ForwardingHandler(logging.Handler):
    """Log records of this process go up to the plugin process, which writes them to the daemon's log."""

    def __init__(self, channel: Channel):
        super().__init__(logging.INFO)
        self.channel = channel
        self.setFormatter(logging.Formatter("%(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("crossmodal") or record.levelno >= logging.WARNING

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.channel.send(("log", record.levelno, record.name, self.format(record)))
        except Exception:  # noqa: BLE001 - a log record is never worth a failed call
            pass


def _forward_logs(channel: Channel) -> None:
    root = logging.getLogger()
    root.addHandler(_ForwardingHandler(channel))
    root.setLevel(logging.INFO)
    logging.getLogger("crossmodal").setLevel(logging.INFO)
