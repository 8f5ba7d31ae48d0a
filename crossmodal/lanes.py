"""Worker lanes: where the plugin's CPU-bound work runs, apart from the gevent loop and from each other.

One plugin process serves every request of every workspace. Three rules keep it answering:

- Our work never runs in gevent's hub threadpool. The SDK reads stdin through it (``gevent.os.tp_read``);
  filled with long calls, it would leave the reader no thread, and a call that waits for a reply only the
  reader can read (a workspace model's answer) would wait for good.
- Latency-critical work (``QUERY``: searches, External Knowledge, a few texts to embed, collection lookups,
  query embeddings of the model package) has threads of its own, so it never queues behind ``BULK`` work
  (ingest batches, Align's tiles, large embeddings, documents). Model loads ahead of use (the warm-up of
  remembered models) run in ``LOAD``.
- Every call has a deadline. Past it the caller gets a clear error and the log gets the worker's stack; the
  work itself cannot be stopped from outside and finishes in its thread.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from crossmodal.errors import CrossmodalError
from crossmodal.loop_safe import unpatched

logger = logging.getLogger(__name__)
T = TypeVar("T")

QUERY, BULK, LOAD = "query", "bulk", "load"
# Threads per lane. Two cores do not run more than two models at once; the query lane's extra threads keep a
# lookup or a search from waiting behind another query's model call.
LANE_THREADS = {QUERY: 4, BULK: 2, LOAD: 1}
# Texts or images in one call up to which an embedding is a query, not bulk work.
QUERY_ITEMS = 8
# Tool and model calls: Dify's daemon gives up on a call after 600 s; ours end first, with a reason.
CALL_DEADLINE_SECONDS = 570.0

_POOLS: dict = {}
_os_thread_ident = unpatched("_thread", "get_ident")

# Plain numbers, updated on the loop only; the /metrics scrape reads them (crossmodal/api/metrics.py). The
# model package, which serves no metrics, installs no prometheus_client.
WAITS: dict[str, list[float]] = {}  # lane -> [calls, seconds waited for a thread]
# (name, reason) -> calls; reasons: queue, model (encoding), store, work (anything else), model_load (503)
DEADLINE_MISSES: dict[tuple[str, str], int] = {}


def count_deadline_miss(name: str, reason: str) -> None:
    DEADLINE_MISSES[(name, reason)] = DEADLINE_MISSES.get((name, reason), 0) + 1


class DeadlineExceeded(CrossmodalError):
    """A call ran past its deadline; its work goes on in the worker thread until it ends."""

    def __init__(self, what: str, seconds: float, reason: str):
        self.reason = reason
        super().__init__(f"{what} did not finish within {seconds:g} s ({reason}); the plugin log has where it "
                         "was. Retry later, or send less work per call", param="deadline", status=504)


def lane_for_items(count: int) -> str:
    return QUERY if count <= QUERY_ITEMS else BULK


@dataclass
class Job:
    """One call in a lane: when it was queued and started, and the thread that runs it (for its stack)."""

    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    lane: str = QUERY
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    thread_ident: int | None = None

    def run(self):
        self.started_at = time.monotonic()
        self.thread_ident = _os_thread_ident()
        return self.fn(*self.args, **self.kwargs)

    @property
    def queue_seconds(self) -> float:
        return (self.started_at or time.monotonic()) - self.queued_at

    def stack(self) -> str:
        frame = self._frame()
        return "".join(traceback.format_stack(frame)) if frame else "(not started: still queued in its lane)"

    def held_by(self) -> str:
        """What holds the call now: ``queue`` (no thread yet), ``store`` or ``model`` (the innermost of our
        store or encoder code on its stack), else ``work``."""
        frame = self._frame()
        if self.started_at is None or frame is None:
            return "queue"
        for entry in reversed(traceback.extract_stack(frame)):
            for part, reason in (("/crossmodal/store/", "store"), ("/crossmodal/encoders/", "model")):
                if part in entry.filename.replace("\\", "/"):
                    return reason
        return "work"

    def _frame(self):
        return sys._current_frames().get(self.thread_ident) if self.thread_ident else None


def pool(lane: str):
    """The lane's thread pool (made on first use, on the loop: its results wake the loop's hub)."""
    if lane not in _POOLS:
        from gevent.threadpool import ThreadPool

        _POOLS[lane] = ThreadPool(LANE_THREADS[lane])
    return _POOLS[lane]


def run_in_lane(job: Job, deadline: float | None):
    """Run ``job`` in its lane and wait for it on the loop (other greenlets run meanwhile)."""
    from gevent import Timeout

    pending = pool(job.lane).spawn(job.run)
    try:
        return pending.get(timeout=deadline)
    except Timeout:
        reason = job.held_by()
        what = getattr(job.fn, "__name__", "the call")
        logger.error("%s passed its %g s deadline in the %s lane (held by: %s; queued %.1f s); where it is:\n%s",
                     what, deadline, job.lane, reason, job.queue_seconds, job.stack())
        count_deadline_miss(what, reason)
        raise DeadlineExceeded(what, deadline, f"no thread of the {job.lane} lane was free in time"
                               if reason == "queue" else f"held by {reason}, after {job.queue_seconds:.1f} s "
                               f"waiting for a thread of the {job.lane} lane") from None
    finally:
        calls, waited = WAITS.get(job.lane, (0, 0.0))
        WAITS[job.lane] = [calls + 1, waited + job.queue_seconds]
