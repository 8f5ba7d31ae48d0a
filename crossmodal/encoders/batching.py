"""Dynamic batching: queries that arrive while the model is busy share its next forward pass.

Dify runs every session's search in its own worker thread. One query at a time leaves most of a forward
pass's fixed cost unshared; here the first caller runs the model at once (no added latency when alone),
and whoever arrives meanwhile waits and goes in one batch with the others as soon as the model is free.

No background thread: the caller that finds the model free leads; when it is done it hands the lead to
the oldest waiting caller.
"""

from __future__ import annotations

from typing import Callable, Generic, Sequence, TypeVar

from crossmodal.runtime import os_lock, os_queue, unwrap

T = TypeVar("T")
R = TypeVar("R")
_LEAD = object()


class DynamicBatcher(Generic[T, R]):
    def __init__(self, run_batch: Callable[[Sequence[T]], Sequence[R]], *, max_batch: int = 64):
        self.run_batch = run_batch
        self.max_batch = max_batch
        self._lock = os_lock()
        self._pending: list = []  # (item, slot) in arrival order
        self._busy = False
        self.batches = 0  # forward passes run (for benchmarks and tests)
        self.items = 0

    def submit(self, item: T) -> R:
        """The result for ``item``, computed in a batch with whatever else is waiting."""
        slot = os_queue()
        with self._lock:
            self._pending.append((item, slot))
            lead = not self._busy
            self._busy = True
        if not lead:
            message = slot.get()
            if message is not _LEAD:
                return unwrap(message)
        self._run_once()
        return unwrap(slot.get())

    def _run_once(self) -> None:
        with self._lock:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
        try:
            results = list(self.run_batch([item for item, _ in batch]))
            messages = [(True, r) for r in results]
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch gets the error
            messages = [(False, exc)] * len(batch)
        self.batches += 1
        self.items += len(batch)
        for (_, slot), message in zip(batch, messages):
            slot.put(message)
        with self._lock:
            if self._pending:
                self._pending[0][1].put(_LEAD)  # the oldest waiter runs the next batch
            else:
                self._busy = False

