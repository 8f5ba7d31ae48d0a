"""Messages between a process and its worker processes: pickled tuples, each behind an 8-byte length, over one
end of a socket pair that the parent made.

Both ends are this package's own processes, started by the parent with the same interpreter and code, so
pickle carries bytes, arrays and the package's plain records (settings, inputs, results, errors) as they are.
In the plugin process the socket is gevent's (patched), so reads and writes yield to other greenlets; in a
worker process it is an ordinary blocking socket.
"""

from __future__ import annotations

import pickle
import socket
import struct

HEADER = struct.Struct("!Q")
# A message larger than this is a bug or an attack on the pipe, never a real call (request bodies stop at
# 10 MB; a page's pixels are a few MB; a search's thumbnails stay under the daemon's line limits).
MAX_MESSAGE_BYTES = 1 << 30


class ChannelClosed(EOFError):
    """The other end of the socket is gone (its process ended)."""


def encode(message) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


SMALL = 1 << 16  # messages up to this size go out in one write with their header


def send(sock: socket.socket, message) -> None:
    """One message (the caller makes sure no other thread or greenlet writes to ``sock`` meanwhile)."""
    data = encode(message)
    if len(data) <= SMALL:
        sock.sendall(HEADER.pack(len(data)) + data)
        return
    sock.sendall(HEADER.pack(len(data)))
    sock.sendall(data)


def recv(sock: socket.socket):
    (size,) = HEADER.unpack(_exactly(sock, HEADER.size))
    if size > MAX_MESSAGE_BYTES:
        raise ChannelClosed(f"a message of {size} bytes: the channel is corrupt")
    return pickle.loads(_exactly(sock, size))


def _exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    read = 0
    while read < size:
        got = sock.recv_into(view[read:], size - read)
        if not got:
            raise ChannelClosed("the other process closed the channel")
        read += got
    return bytes(buffer)


class RemoteFailure(Exception):
    """An unexpected exception in another process, as this one receives it: its type's name and its message
    (the full traceback goes to the log)."""

    def __init__(self, type_name: str, message: str):
        self.type_name = type_name
        super().__init__(f"{type_name}: {message}")


def portable_error(exc: BaseException) -> BaseException:
    """``exc`` when it survives pickling both ways, else a RemoteFailure with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any exception that does not round-trip
        return RemoteFailure(type(exc).__name__, str(exc))
