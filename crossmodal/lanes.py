"""Worker lanes: where the CPU-bound work of calls runs, apart from each other, admitted and bounded in time.

Inside Dify every call the plugin serves runs in its worker process (crossmodal/workers/engine.py), in lanes
of OS threads. Latency-critical work (``QUERY``: searches, External Knowledge, a few texts to embed,
the model package's query embeddings) has threads of its own, so it never queues behind ``BULK`` work (ingest
batches, Align's tiles, large embeddings, documents); ``LOOKUP`` (collection lists and facts, the viewer's
pictures, "is this model loading") touches no model, so it never queues behind an encoding either; model loads
ahead of use run in ``LOAD``. The rules:

- **Admission, not parking.** A lane holds at most ``lane_queue`` calls waiting for a thread; one more is
  refused at once with a retryable "busy". A waiting call's time counts against its deadline: a call that
  cannot start in time ends with DeadlineExceeded ('queue') and never runs.
- **A share per caller.** One caller (the store a call reaches: one workspace's, see Settings.caller) holds
  at most ``lane_queue_per_caller`` of a lane's waiting calls (192 of 256 by default); its next one is refused
  as busy while other callers' calls are still admitted, so one endpoint key cannot fill the queue for every
  workspace.
- **Urgent calls first.** A free thread takes the waiting call whose deadline comes first, where a deadline
  further than ``URGENT_SECONDS`` away counts as that far: an External Knowledge call (Dify gives it 5 s)
  goes ahead of searches and embeddings with minutes to spare, which keep their arrival order among
  themselves and wait at most ``URGENT_SECONDS`` behind urgent calls (a plain nearest-deadline order would
  hold a tool's 570 s call behind every 300 s endpoint call for minutes).
- **Turns between callers.** Among calls of like urgency, a caller's call counts as at least a step after
  the last of that caller's own waiting calls: ``CALLER_STEP_SECONDS`` for calls with time to spare, a share
  of it as small as the horizon of an urgent one (0.15 s for a 4.5 s call), so urgent calls take turns among
  themselves without being stepped past unhurried ones. So a workspace that queues a hundred searches at once
  does not hold another workspace's one search behind all hundred: the newcomer goes after the first, and the
  flood's calls are taken in turns with the others'. A newcomer with time to spare counts no earlier than the
  stepped turn a thread took last (fair queueing's virtual start time), so a flood that drained while no one
  else waited leaves its last calls no further back than anyone's. One caller's calls keep their order among
  themselves, and no call's deadline changes.
- **Every call has a deadline.** Past it the caller gets DeadlineExceeded naming what holds the work, the log
  gets the worker's stack, and the lane stops counting that thread: it starts a replacement (up to
  ``lane_threads_cap`` threads in all), so no number of stuck calls takes a lane away for good. Threads cannot
  be stopped; a stuck one ends when its work does, and /metrics shows how many there are.
- A call's deadline and its workspace's narrower limits travel with it into the thread that runs it
  (``time_left``, crossmodal/limits.py), so every wait inside (a model another call is loading, a document
  worker, a call into Dify) is bounded by what the caller still has.
"""

from __future__ import annotations

import collections
import contextvars
import heapq
import itertools
import logging
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from crossmodal.errors import CrossmodalError
from crossmodal.limits import limit, narrowed_by, register
from crossmodal.loop_safe import unpatched

logger = logging.getLogger(__name__)
T = TypeVar("T")

QUERY, BULK, LOAD, LOOKUP = "query", "bulk", "load", "lookup"
# Threads per lane. Two cores do not run more than two models at once; the query lane's extra threads keep a
# search from waiting behind another query's model call. Lookups take milliseconds of store reads: two threads
# answer them while every encoding thread is busy (the soak's Collections waited ~1 s for a query thread).
LANE_THREADS = {QUERY: 4, BULK: 2, LOAD: 1, LOOKUP: 2}
LANE_QUEUE = register("lane_queue", 256, "calls", "calls waiting for a thread of one lane; one more is refused "
                      "as busy (503, retryable)", cap=10_000, minimum=1)
# Three quarters of the queue: a busy workspace's burst (a batch of searches) still fits, and the last quarter
# of a lane's places is always left to the others.
LANE_QUEUE_PER_CALLER = register("lane_queue_per_caller", 192, "calls", "calls of one caller (the store they "
                                 "reach: one workspace's) waiting for a thread of one lane; one more is refused as "
                                 "busy (503, retryable) while other callers are still admitted", cap=10_000,
                                 minimum=1)
LANE_THREADS_CAP = register("lane_threads_cap", 8, "threads", "threads of one lane, those stuck past their "
                            "deadline included: stuck threads are replaced up to this many", cap=256, minimum=1)
# Deadlines nearer than this come first in a lane's queue; further ones count as this far (see the module's text).
URGENT_SECONDS = 30.0
# How much later a caller's waiting call with time to spare counts for each of that caller's own calls ahead of it
# (see the module's text): at one second, a flood of calls of one kind from one workspace lets another's in after
# every call.
CALLER_STEP_SECONDS = 1.0
# Texts or images in one call up to which an embedding is a query, not bulk work.
QUERY_ITEMS = 8
# Tool and model calls: Dify's daemon gives up on a call after 600 s; ours end first, with a reason.
CALL_DEADLINE_SECONDS = 570.0
register("call_seconds", CALL_DEADLINE_SECONDS, "s", "a tool node's or a model's call (Dify's daemon gives up at "
         "600 s)", cap=CALL_DEADLINE_SECONDS, minimum=1, integer=False)


def call_deadline() -> float:
    return float(limit("call_seconds"))

_os_thread_ident = unpatched("_thread", "get_ident")
_os_lock = unpatched("_thread", "allocate_lock")
_start_thread = unpatched("_thread", "start_new_thread")
_os_sleep = unpatched("time", "sleep")
_ANSWER_LOCK = _os_lock()

# Plain numbers the /metrics scrape reads (crossmodal/api/metrics.py).
WAITS: dict[str, list[float]] = {}  # lane -> [calls, seconds waited for a thread]
# (name, reason) -> calls; reasons: queue, model (encoding), store, work (anything else), model_load (503)
DEADLINE_MISSES: dict[tuple[str, str], int] = {}


def count_deadline_miss(name: str, reason: str) -> None:
    DEADLINE_MISSES[(name, reason)] = DEADLINE_MISSES.get((name, reason), 0) + 1


class DeadlineExceeded(CrossmodalError):
    """A call ran past its deadline; its work goes on in the worker thread until it ends."""

    def __init__(self, what: str, seconds: float, reason: str):
        self.reason = reason
        super().__init__(f"{what} did not finish within {round(seconds, 1):g} s ({reason}); the plugin log has where it "
                         "was. Retry later, or send less work per call", param="deadline", status=504)


class LaneBusy(CrossmodalError):
    def __init__(self, lane: str, waiting: int, yours: bool = False):
        whose = "of this workspace " if yours else ""
        super().__init__(f"the plugin is busy: {waiting} calls {whose}already wait for the {lane} lane; retry in a "
                         "few seconds", param="busy", status=503)


def lane_for_items(count: int) -> str:
    return QUERY if count <= QUERY_ITEMS else BULK


# -- the call in progress -------------------------------------------------------------------------------------
_CALL_ENDS: contextvars.ContextVar[float | None] = contextvars.ContextVar("crossmodal_call_ends", default=None)


def time_left(cap: float | None = None) -> float | None:
    """Seconds the call in progress has left (at most ``cap``); ``cap`` (None: no bound) outside a call."""
    ends = _CALL_ENDS.get()
    if ends is None:
        return cap
    left = max(0.0, ends - time.monotonic())
    return left if cap is None else min(cap, left)


def call_context_runner(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` bound to the current call's context (deadline, narrower limits): for threads a call starts."""
    context = contextvars.copy_context()
    return lambda *args, **kwargs: context.run(fn, *args, **kwargs)


@dataclass
class Job:
    """One call in a lane: when it was queued and started, the thread that runs it (for its stack), its
    deadline and its workspace's narrower limits."""

    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    lane: str = QUERY
    deadline: float | None = None  # seconds from queued_at
    narrowing: dict = field(default_factory=dict)
    name: str | None = None
    caller: str | None = None  # whose call (Settings.caller): its share of the queue; None counts as no one's
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    thread_ident: int | None = None
    on_done: Callable[[bool, object], None] | None = None
    finished: bool = False  # answered (its result, or a deadline miss)

    @property
    def ends_at(self) -> float | None:
        return None if self.deadline is None else self.queued_at + self.deadline

    def run(self):
        self.started_at = time.monotonic()
        self.thread_ident = _os_thread_ident()
        token = _CALL_ENDS.set(self.ends_at)
        try:
            with narrowed_by(self.narrowing):
                return self.fn(*self.args, **self.kwargs)
        finally:
            _CALL_ENDS.reset(token)

    @property
    def what(self) -> str:
        return self.name or getattr(self.fn, "__name__", "the call")

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

    def answer(self, ok: bool, value) -> bool:
        """Hand the outcome to the caller once (the first of the result and a deadline miss wins)."""
        with _ANSWER_LOCK:
            if self.finished:
                return False
            self.finished = True
        if self.on_done is not None:
            self.on_done(ok, value)
        return True

    def miss(self) -> DeadlineExceeded:
        reason = self.held_by()
        logger.error("%s passed its %g s deadline in the %s lane (held by: %s; queued %.1f s); where it is:\n%s",
                     self.what, round(self.deadline, 1), self.lane, reason, self.queue_seconds, self.stack())
        count_deadline_miss(self.what, reason)
        return DeadlineExceeded(self.what, self.deadline, f"no thread of the {self.lane} lane was free in time"
                                if reason == "queue" else f"held by {reason}, after {self.queue_seconds:.1f} s "
                                f"waiting for a thread of the {self.lane} lane")


def urgency(job: Job) -> float:
    """When a queued call must start, for the queue's order: its deadline, or URGENT_SECONDS after it was
    queued when that comes sooner."""
    ends_at = job.ends_at if job.ends_at is not None else math.inf
    return min(ends_at, job.queued_at + URGENT_SECONDS)


class Lane:
    """OS threads serving one lane's queue (see the module's text)."""

    def __init__(self, name: str, threads: int, max_queued: int | None = None, max_threads: int | None = None):
        self.name = name
        self.threads = threads
        self.max_queued = max_queued
        self.max_threads = max(threads, max_threads or threads)
        self._lock = _os_lock()
        self._queue: list[tuple[float, int, Job]] = []  # a heap: (turn, arrival, job)
        self._arrivals = itertools.count()
        self._last_turn = -math.inf  # the turn of the call a thread took last: where the queue's turns have got to
        self._queued_by: collections.Counter[str] = collections.Counter()  # caller -> calls waiting
        self._wakeups: collections.deque = collections.deque()  # one OS lock per idle thread, held until woken
        self.running: dict[int, Job] = {}  # thread -> its job
        self.serving = 0  # threads that count towards the lane's capacity
        self.stuck: set[int] = set()  # threads whose job passed its deadline

    # -- admission -----------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue ``job``; its ``on_done`` gets the outcome. LaneBusy when the queue is full."""
        max_queued = self.max_queued if self.max_queued is not None else limit("lane_queue")
        with self._lock:
            if len(self._queue) >= max_queued:
                raise LaneBusy(self.name, len(self._queue))
            turn = self._turn(job)
            if job.caller is not None:
                waiting = self._queued_by[job.caller]
                if waiting >= min(max_queued, limit("lane_queue_per_caller")):
                    raise LaneBusy(self.name, waiting, yours=True)
                self._queued_by[job.caller] = waiting + 1
            heapq.heappush(self._queue, (turn, next(self._arrivals), job))
            self._wake_or_start()

    def _turn(self, job: Job) -> float:  # holds self._lock
        """The job's place in the queue: its urgency, or a step after the last turn among its caller's waiting
        calls that are due no later, whichever is later (a pass over at most ``lane_queue`` entries; quadratic
        in total only where an admin raises the queue to thousands). Taking the step from the last turn, not
        from a count, keeps one caller's calls in their order however fast the ones before them leave."""
        due = urgency(job)
        # Not urgent: no earlier than the turn a thread took last, so a caller whose calls left the queue
        # uncontested does not keep its remaining calls' turns far ahead of everyone else's.
        turn = max(due, self._last_turn) if due >= job.queued_at + URGENT_SECONDS else due
        if job.caller is None or not self._queued_by.get(job.caller):
            return turn
        before = [theirs for theirs, _, other in self._queue if other.caller == job.caller and urgency(other) <= due]
        # The step scales with the call's horizon: urgent calls take turns among themselves without being
        # stepped past calls with minutes to spare (4.5 s: 0.15 s a call).
        step = CALLER_STEP_SECONDS * min(1.0, max(0.0, due - job.queued_at) / URGENT_SECONDS)
        return max(turn, max(before) + step) if before else turn

    def _wake_or_start(self) -> None:  # holds self._lock
        if self._wakeups:
            self._wakeups.popleft().release()
        elif self.serving < self.threads and self.serving + len(self.stuck) < self._cap():
            self._start()

    def _start(self) -> None:  # holds self._lock
        self.serving += 1
        _start_thread(self._serve, ())

    # -- the threads ---------------------------------------------------------------------------------------
    def _serve(self) -> None:
        me = _os_thread_ident()
        while True:
            job = self._next(me)
            if job is None:
                return
            if job.ends_at is not None and time.monotonic() >= job.ends_at:
                job.answer(False, job.miss())  # it could not start in time: it never runs
                self._record_wait(job)
                continue
            with self._lock:
                self.running[me] = job
            self._record_wait(job)
            try:
                outcome = (True, job.run())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                outcome = (False, exc)
            with self._lock:
                self.running.pop(me, None)
                was_stuck = me in self.stuck
                self.stuck.discard(me)
                rejoin = was_stuck and self.serving < self.threads  # no replacement took its place
                if rejoin:
                    self.serving += 1
            if not job.answer(*outcome) and was_stuck:
                logger.warning("%s ended %.1f s after its deadline in the %s lane", job.what,
                               time.monotonic() - (job.ends_at or 0.0), self.name)
            if was_stuck and not rejoin:
                return  # a replacement took this thread's place while it was stuck

    def _next(self, me: int) -> Job | None:
        """The next job, waiting while the queue is empty; None when this thread is surplus."""
        while True:
            with self._lock:
                if self._queue:
                    turn, _, job = heapq.heappop(self._queue)
                    self._last_turn = turn if turn > urgency(job) else -math.inf  # a stepped turn, or none
                    self._left_queue(job)
                    return job
                if self.serving > self.threads:
                    self.serving -= 1
                    return None
                wakeup = _os_lock()
                wakeup.acquire()
                self._wakeups.append(wakeup)
            wakeup.acquire()  # released by submit()

    def _left_queue(self, job: Job) -> None:  # holds self._lock
        if job.caller is not None:
            self._queued_by[job.caller] -= 1
            if self._queued_by[job.caller] <= 0:
                del self._queued_by[job.caller]

    def _record_wait(self, job: Job) -> None:
        calls, waited = WAITS.get(self.name, (0, 0.0))
        WAITS[self.name] = [calls + 1, waited + job.queue_seconds]

    # -- deadlines -----------------------------------------------------------------------------------------
    def expire(self, now: float) -> None:
        """Answer every job past its deadline: queued ones are dropped, running ones are left to finish in a
        thread the lane no longer counts, and a replacement starts (up to the lane's cap)."""
        with self._lock:
            # One pass that splits the queue: no Job ``==`` (a dataclass's compares every field, arguments
            # included, which may raise or cost a copy's worth), and no quadratic membership test under the lock.
            kept, late_queued = [], []
            for entry in self._queue:
                ends_at = entry[2].ends_at
                if ends_at is not None and now >= ends_at:
                    late_queued.append(entry[2])
                    self._left_queue(entry[2])
                else:
                    kept.append(entry)
            if late_queued:
                heapq.heapify(kept)
                self._queue = kept
            late_running = [(t, j) for t, j in self.running.items()
                            if not j.finished and j.ends_at is not None and now >= j.ends_at]
        for job in late_queued:
            job.answer(False, job.miss())
            self._record_wait(job)
        for thread, job in late_running:
            job.answer(False, job.miss())
            with self._lock:
                if thread in self.stuck or self.running.get(thread) is not job:
                    continue
                self.stuck.add(thread)
                self.serving -= 1
                if self.serving + len(self.stuck) < self._cap():
                    self._start()  # the replacement
                else:
                    logger.error("the %s lane has %d stuck threads (its cap); new calls wait for one to end",
                                 self.name, len(self.stuck))

    def _cap(self) -> int:
        cap = self.max_threads if self.max_threads > self.threads else limit("lane_threads_cap")
        return max(cap, self.threads)

    def figures(self) -> dict:
        with self._lock:
            return {"queued": len(self._queue), "running": len(self.running) - len(self.stuck),
                    "stuck": len(self.stuck), "threads": self.serving + len(self.stuck)}


_LANES: dict[str, Lane] = {}
_LANES_LOCK = _os_lock()
_MONITOR_STARTED = [False]
MONITOR_PERIOD = 0.05  # seconds between deadline checks: a miss is answered within this of its deadline


def lane(name: str) -> Lane:
    with _LANES_LOCK:
        found = _LANES.get(name)
    return found if found is not None else watch(Lane(name, LANE_THREADS[name]))


def watch(new: Lane) -> Lane:
    """Register ``new`` under its name (the first one wins) and keep its deadlines."""
    with _LANES_LOCK:
        registered = _LANES.setdefault(new.name, new)
        if not _MONITOR_STARTED[0]:
            _MONITOR_STARTED[0] = True
            _start_thread(_watch_deadlines, ())
    return registered


def _watch_deadlines() -> None:
    while True:
        _os_sleep(MONITOR_PERIOD)
        now = time.monotonic()
        for each in list(_LANES.values()):
            try:
                each.expire(now)
            except Exception:  # noqa: BLE001 - the watcher must never die
                logger.exception("checking the %s lane's deadlines failed", each.name)


def submit(job: Job) -> None:
    """Queue ``job`` in its lane (LaneBusy when that lane's queue is full); ``job.on_done`` gets its outcome
    within its deadline."""
    lane(job.lane).submit(job)


def run_in_lane(job: Job, deadline: float | None = None):
    """Run ``job`` in its lane and wait for it in this (OS) thread: its value, its exception, or
    DeadlineExceeded within ``deadline`` (+ the monitor's period)."""
    if deadline is not None:
        job.deadline = deadline
    done = _os_lock()
    done.acquire()
    outcome: list = []

    def finished(ok: bool, value) -> None:
        outcome.append((ok, value))
        done.release()

    job.on_done = finished
    submit(job)
    done.acquire()
    ok, value = outcome[0]
    if ok:
        return value
    raise value


def lane_figures() -> dict[str, dict]:
    return {name: each.figures() for name, each in list(_LANES.items())}
