"""Running a function over a stream in worker OS threads: decoding and preprocessing overlap inference.

Pillow's decoders and resizers release the GIL, so decode workers make progress while the inference
thread runs the model. At most ``window`` items are in flight: memory stays flat however long the stream.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Callable, Iterable, Iterator, TypeVar

from crossmodal.lanes import call_context_runner
from crossmodal.runtime import os_queue, start_os_thread, unwrap

T = TypeVar("T")
R = TypeVar("R")
_STOP = object()


def decode_workers() -> int:
    """$CROSSMODAL_DECODE_WORKERS, else one per core (at most 8)."""
    configured = os.environ.get("CROSSMODAL_DECODE_WORKERS")
    if configured:
        return max(0, int(configured))
    return max(1, min(8, os.cpu_count() or 1))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int, window: int) -> Iterator[R]:
    """``fn(item)`` for every item, in input order, computed by ``workers`` OS threads with at most
    ``window`` items submitted ahead. An exception raised by ``fn`` is re-raised at that item's turn.
    workers=0 computes in the caller's thread (no overlap)."""
    if workers <= 0:
        yield from map(fn, items)
        return
    tasks = os_queue()

    def work():
        while True:
            job = tasks.get()
            if job is _STOP:
                return
            item, slot = job
            try:
                slot.put((True, fn(item)))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                slot.put((False, exc))

    for _ in range(workers):
        start_os_thread(call_context_runner(work))  # the call's deadline, limits and pixel budget go along
    pending: deque = deque()
    source = iter(items)
    try:
        for item in source:
            pending.append(_submit(tasks, item))
            if len(pending) >= window:
                yield unwrap(pending.popleft().get())
        while pending:
            yield unwrap(pending.popleft().get())
    finally:
        for _ in range(workers):
            tasks.put(_STOP)


def _submit(tasks, item):
    slot = os_queue()
    tasks.put((item, slot))
    return slot

