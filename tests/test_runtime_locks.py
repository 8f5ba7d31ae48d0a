"""Locks shared by gevent's loop and worker threads inside the plugin process.

Under the SDK's gevent patching, the locks that logging and importlib make after the patch are greenlet
locks; the loop and the pool's worker threads contending for one can wait for good (the cause of a rare
hang of the load test: fifty searches whose handlers first imported the same module at once).
``install_loop_safe_locks`` (called by main.py) gives them OS locks. Each check runs in a fresh
interpreter patched exactly as the plugin is and hammers the locks; each has a control showing that the same
load hangs without the fix, so the check can fail."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.protocol

ROOT = Path(__file__).resolve().parents[1]

HAMMER = textwrap.dedent("""
    import os, sys
    import dify_plugin  # noqa: F401  (patches the process with gevent, as in the plugin)
    import logging
    import gevent
    import tqdm
    from crossmodal.runtime import install_loop_safe_locks

    def quiet_logger(name):
        logger = logging.getLogger(name)
        logger.addHandler(logging.StreamHandler(open(os.devnull, "w")))
        logger.propagate = False
        logger.setLevel(logging.INFO)
        return logger

    made_before = quiet_logger("crossmodal.before")  # like the SDK's handler, made at its import
    if sys.argv[1] == "fixed":
        install_loop_safe_locks()
    made_after = quiet_logger("crossmodal.after")
    sys.setswitchinterval(1e-5)  # threads interleave far more often, as on a loaded machine

    def in_worker(n):
        for i in range(n):
            made_before.info("worker line %d", i)
            made_after.info("worker line %d", i)
            logging.getLogger("transformers").setLevel(logging.ERROR)  # as a model load in a worker does
            with tqdm.tqdm.get_lock():  # the lock transformers' progress bars take while a model loads
                pass

    def on_loop(n):
        for i in range(n):
            made_before.info("loop line %d", i)
            made_after.info("loop line %d", i)
            logging.getLogger(f"crossmodal.locktest.{i % 5}")
            gevent.sleep(0)

    pool = gevent.get_hub().threadpool
    jobs = [gevent.spawn(lambda: pool.spawn(in_worker, 4000).get()) for _ in range(4)]
    jobs += [gevent.spawn(on_loop, 4000) for _ in range(2)]
    done = gevent.joinall(jobs, timeout=float(sys.argv[2]))
    print("finished" if len(done) == len(jobs) else "hung", flush=True)
    if len(done) != len(jobs):  # where every thread waits, for the failure message
        import faulthandler
        faulthandler.dump_traceback(all_threads=True)
    os._exit(0)
""")


TQDM_CLASS_LOCK = textwrap.dedent("""
    import os, sys, time
    import dify_plugin  # noqa: F401
    import gevent
    from tqdm.std import TqdmDefaultWriteLock
    from crossmodal.runtime import install_loop_safe_locks

    if sys.argv[1] == "fixed":
        install_loop_safe_locks()
    sys.setswitchinterval(1e-5)

    def in_worker(n):
        for _ in range(n):  # held a while, as the first get_lock holds it while it makes the process lock
            with TqdmDefaultWriteLock.th_lock:
                time.sleep(0.0002)

    pool = gevent.get_hub().threadpool
    jobs = [gevent.spawn(lambda: pool.spawn(in_worker, 500).get()) for _ in range(4)]
    done = gevent.joinall(jobs, timeout=float(sys.argv[2]))
    print("finished" if len(done) == len(jobs) else "hung", flush=True)
    os._exit(0)
""")


FIRST_IMPORTS = textwrap.dedent("""
    import os, sys
    import dify_plugin  # noqa: F401
    import importlib
    import gevent
    from crossmodal.runtime import install_loop_safe_locks

    if sys.argv[1] == "fixed":
        install_loop_safe_locks()
    sys.setswitchinterval(1e-5)  # threads interleave far more often, as on a loaded machine
    sys.path.insert(0, sys.argv[3])
    pool = gevent.get_hub().threadpool

    def first_import(k):
        importlib.import_module(f"lazy_{k}")

    for k in range(int(sys.argv[4])):  # six sessions at once import module k, never imported before
        jobs = [gevent.spawn(lambda: pool.spawn(first_import, k).get()) for _ in range(6)]
        if len(gevent.joinall(jobs, timeout=float(sys.argv[2]))) != len(jobs):
            print("hung", flush=True)
            os._exit(0)
    print("finished", flush=True)
    os._exit(0)
""")


def hammer_with_stacks(mode: str, timeout: float, script: str = HAMMER, *extra) -> tuple[str, str]:
    """The outcome ("finished", "hung" or the error) and stderr (a hung run's thread stacks)."""
    result = subprocess.run([sys.executable, "-c", script, mode, str(timeout), *map(str, extra)], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout + 120)
    return result.stdout.strip() or result.stderr[-2000:], result.stderr[-6000:]


def hammer(mode: str, timeout: float, script: str = HAMMER, *extra) -> str:
    return hammer_with_stacks(mode, timeout, script, *extra)[0]


def outcomes_until_hung(run_once, tries: int = 3) -> list[str]:
    """For the controls: up to ``tries`` runs (``run_once(attempt)``), stopping at the first hang."""
    outcomes = []
    for attempt in range(tries):
        outcomes.append(run_once(attempt))
        if outcomes[-1] == "hung":
            break
    return outcomes


def lazy_modules(directory: Path, count: int) -> Path:
    for k in range(count):
        (directory / f"lazy_{k}.py").write_text("TOTAL = sum(range(300_000))  # an import that takes a few ms\n")
    return directory


def test_logging_and_progress_bars_from_loop_and_workers_never_hang():
    for _ in range(3):
        outcome, stacks = hammer_with_stacks("fixed", 60)
        assert outcome == "finished", stacks


def test_without_os_locks_the_same_load_hangs():
    """The control: the hazard is real with these library versions, so the test above can fail."""
    outcomes = outcomes_until_hung(lambda attempt: hammer("unfixed", 8))
    assert outcomes[-1] == "hung", outcomes


def test_workers_contending_for_tqdms_class_lock_never_hang():
    """tqdm's class-level write lock, made at its import, is what four workers drawing their first progress
    bars at once waited on for good in a fresh-clone CI run."""
    assert hammer("fixed", 30, TQDM_CLASS_LOCK) == "finished"


def test_without_os_locks_tqdms_class_lock_hangs():
    """Its control: with the greenlet lock tqdm makes under the patch, the same contention hangs."""
    outcomes = outcomes_until_hung(lambda attempt: hammer("unfixed", 8, TQDM_CLASS_LOCK))
    assert outcomes[-1] == "hung", outcomes


MODULES = 400


def test_sessions_importing_the_same_module_for_the_first_time_never_hang(tmp_path):
    assert hammer("fixed", 30, FIRST_IMPORTS, lazy_modules(tmp_path, MODULES), MODULES) == "finished"


def test_without_os_locks_first_imports_can_hang(tmp_path):
    def run_once(attempt):  # modules never imported before, every attempt
        directory = tmp_path / str(attempt)
        directory.mkdir()
        return hammer("unfixed", 8, FIRST_IMPORTS, lazy_modules(directory, MODULES), MODULES)

    outcomes = outcomes_until_hung(run_once)
    assert outcomes[-1] == "hung", outcomes


FUSED_LINES = textwrap.dedent("""
    import json, os, sys
    import dify_plugin  # noqa: F401  (patches the process with gevent, as in the plugin)
    import logging
    import gevent
    from dify_plugin.config.logger_format import plugin_logger_handler
    from dify_plugin.core.server.stdio.response_writer import StdioResponseWriter
    from crossmodal.runtime import LoopLogHandler, install_loop_safe_locks

    logger = logging.getLogger("crossmodal.fused")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(LoopLogHandler(plugin_logger_handler) if sys.argv[1] == "fixed" else plugin_logger_handler)
    install_loop_safe_locks()
    sys.setswitchinterval(1e-5)
    writer = StdioResponseWriter()

    def in_worker(n):  # a model load logging its progress
        for i in range(n):
            logger.info("worker line %d", i)

    def heartbeats(n):  # the SDK's own writes on the loop: the JSON, then a blank line
        for _ in range(n):
            writer.heartbeat()
            gevent.sleep(0)

    pool = gevent.get_hub().threadpool
    jobs = [gevent.spawn(lambda: pool.spawn(in_worker, 1500).get()) for _ in range(3)]
    jobs.append(gevent.spawn(heartbeats, 3000))
    gevent.joinall(jobs, timeout=float(sys.argv[2]))
    gevent.sleep(0.2)  # the queue's last records
    sys.stdout.flush()
    os._exit(0)
""")


def stdout_lines(mode: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", FUSED_LINES, mode, "60"], cwd=ROOT, capture_output=True,
                            text=True, timeout=180)
    return [line for line in result.stdout.splitlines() if line.strip()]


def test_log_records_from_worker_threads_never_fuse_with_protocol_lines():
    for _ in range(2):
        lines = stdout_lines("fixed")
        broken = [line for line in lines if not _is_json(line)]
        assert not broken, broken[:3]
        logs = [line for line in lines if '"event": "log"' in line]
        assert len(logs) == 4500 and sum('"heartbeat"' in line for line in lines) == 3000


def test_without_the_loop_handler_lines_fuse():
    """The control: the SDK's handler written to from worker threads fuses lines with the SDK's own."""
    for _ in range(3):
        if any(not _is_json(line) for line in stdout_lines("unfixed")):
            return
    raise AssertionError("no fused line in three runs: the hazard did not show, so the test above proves nothing")


def _is_json(line: str) -> bool:
    import json

    try:
        json.loads(line)
    except ValueError:
        return False
    return True


LOCK_SEMANTICS = textwrap.dedent('''
    import json, os, sys, time
    import dify_plugin  # noqa: F401
    import gevent
    from gevent import monkey
    from crossmodal.runtime import install_loop_safe_locks

    install_loop_safe_locks()
    import threading
    from crossmodal.loop_safe import LoopSafeLock
    os_sleep = monkey.get_original("time", "sleep")
    workers = gevent.get_hub().threadpool
    report = {}

    # 1. The loop waits for a lock a worker holds without stopping: other greenlets tick meanwhile.
    lock = threading.Lock()
    report["type"] = type(lock).__name__
    ticks = []
    def hold_in_worker():
        with lock:
            os_sleep(0.5)
    holder = gevent.spawn(lambda: workers.spawn(hold_in_worker).get())
    gevent.sleep(0.1)
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.02)) for _ in range(15)])
    started = time.monotonic()
    with lock:
        report["loop_waited"] = round(time.monotonic() - started, 2)
    report["ticks_while_waiting"] = len(ticks)
    gevent.joinall([holder, ticker])

    # 2. Greenlets of one thread, one holding the lock across a switch: the other waits, the loop runs on.
    order = []
    def holder_greenlet():
        with lock:
            order.append("held")
            gevent.sleep(0.2)
            order.append("released")
    def waiter_greenlet():
        with lock:
            order.append("acquired")
    gevent.joinall([gevent.spawn(holder_greenlet), gevent.spawn(waiter_greenlet)])
    report["order"] = order

    # 3. A timeout is honoured on the loop and in a worker; a non-blocking try answers at once.
    lock.acquire()
    started = time.monotonic()
    report["loop_timeout"] = [lock.acquire(timeout=0.3), round(time.monotonic() - started, 2)]
    report["worker_timeout"] = workers.spawn(lambda: lock.acquire(timeout=0.3)).get()
    report["try"] = lock.acquire(False)
    # 4. A worker whose code runs greenlets of its own (a hub in that thread) waits for the loop's lock.
    def worker_with_greenlets():
        beats = []
        side = gevent.spawn(lambda: [beats.append(gevent.sleep(0.01)) for _ in range(10)])
        with lock:
            pass
        side.join()
        return len(beats)
    pending = workers.spawn(worker_with_greenlets)
    gevent.sleep(0.3)
    lock.release()
    report["worker_side_greenlet_beats"] = pending.get(timeout=5)
    # 5. RLock and Condition build on it: re-entry, and a notify across threads.
    rlock = threading.RLock()
    with rlock, rlock:
        report["rlock_block"] = type(rlock._block).__name__
    condition = threading.Condition()
    box = []
    def notify_later():
        os_sleep(0.2)
        with condition:
            box.append(1)
            condition.notify_all()
    workers.spawn(notify_later)
    with condition:
        report["condition"] = bool(condition.wait_for(lambda: box, timeout=5))
    print(json.dumps(report), flush=True)
    os._exit(0)
''')


def test_loop_safe_locks_wait_without_stopping_the_loop():
    result = subprocess.run([sys.executable, "-c", LOCK_SEMANTICS], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    import json

    report = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else result.stderr[-3000:]
    assert isinstance(report, dict), report
    assert report["type"] == "LoopSafeLock"
    # Bounds for correctness, not speed: it waited for the worker's release, it did not hang, and the loop
    # ran meanwhile (a blocked loop ticks at most once); wide enough for a loaded machine.
    assert 0.2 <= report["loop_waited"] < 10 and report["ticks_while_waiting"] >= 3, report
    assert report["order"] == ["held", "released", "acquired"]
    acquired, waited = report["loop_timeout"]
    assert acquired is False and 0.29 <= waited < 10, report  # gave up at its timeout, not before, not never
    assert report["worker_timeout"] is False and report["try"] is False
    assert report["worker_side_greenlet_beats"] == 10
    assert report["rlock_block"] == "LoopSafeLock" and report["condition"] is True


def test_the_gevent_locks_made_before_the_fix_are_swapped():
    """The module-level locks that libraries made at import, before main.py could act (concurrent.futures',
    logging's, tqdm's, the standard library's) are LoopSafeLocks afterwards."""
    script = textwrap.dedent("""
        import json
        import dify_plugin  # noqa: F401
        import concurrent.futures.thread as cft, logging, threading, tqdm.std
        from crossmodal.runtime import install_loop_safe_locks
        install_loop_safe_locks()
        print(json.dumps([type(lock).__name__ for lock in (cft._global_shutdown_lock, logging._lock._block,
              tqdm.std.TqdmDefaultWriteLock.th_lock._block, threading._active_limbo_lock, threading.Lock())]))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == '["LoopSafeLock", "LoopSafeLock", "LoopSafeLock", ' \
        '"LoopSafeLock", "LoopSafeLock"]', result.stderr[-2000:]


AUDIT = textwrap.dedent("""
    import gc, json, sys, types
    sys.path.insert(0, "")
    import dify_plugin  # noqa: F401
    from crossmodal.runtime import install_loop_safe_locks, preload_libraries
    install_loop_safe_locks()
    preload_libraries()  # torch, transformers, huggingface_hub, qdrant: what main.py imports before serving
    import main  # noqa: F401  (the plugin itself: the SDK's server, its handlers, its executor)
    from gevent.thread import LockType

    def holder(ref):
        if isinstance(ref, dict):
            owners = [m.__name__ for m in list(sys.modules.values()) if getattr(m, "__dict__", None) is ref]
            return "module " + owners[0] if owners else "dict"
        return type(ref).__module__ + "." + type(ref).__qualname__

    def holders(lock):
        return [r for r in gc.get_referrers(lock) if not isinstance(r, (list, types.FrameType))]

    def only_its_own_methods(lock, refs):  # no comprehension over lock here: it would hold it in a cell
        for ref in refs:
            if getattr(ref, "__self__", None) is not lock:
                return False
        return True

    def in_the_hubs_callbacks(item, ref):  # a notification gevent has queued: its bound method and arguments
        return isinstance(ref, tuple) or getattr(ref, "__self__", None) is item

    def audit():
        left = []
        for lock in gc.get_objects():
            if type(lock) is not LockType:
                continue
            refs = holders(lock)
            if only_its_own_methods(lock, refs):
                continue  # a swapped lock that only os.register_at_fork's hooks still hold: nobody can take it
            left.append(sorted(map(holder, refs)))
        left.append(sorted(holder(r) for r in gc.get_referrers(LockType) if isinstance(r, dict)))
        import gevent.event, gevent.queue  # gevent's events and queues bind to a hub too
        kinds = (gevent.event.Event, gevent.event.AsyncResult, gevent.queue.Queue, gevent.queue.SimpleQueue)
        left.append(sorted({holder(r) for item in gc.get_objects() if isinstance(item, kinds)
                            for r in holders(item) if not in_the_hubs_callbacks(item, r)}))
        return left

    left = audit()
    print(json.dumps(left), flush=True)
    import os
    os._exit(0)  # no interpreter shutdown: it would join the threads of whatever main.py started
""")


def test_no_gevent_lock_is_left_where_the_loop_and_workers_meet(tmp_path):
    """The audit: after main.py's start-up (the fix, the SDK's server, the worker process started), the gevent
    locks still in the process are the ones no worker thread can reach (the main thread's own state lock), and
    the gevent events and queues are the SDK dispatcher's and the worker process's supervisor's, used on the loop
    alone."""
    import json

    result = subprocess.run([sys.executable, "-c", AUDIT], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "INSTALL_METHOD": "local",
                                 "CROSSMODAL_HOME": str(tmp_path)})  # no remembered models to warm
    assert result.stdout.strip(), result.stderr[-3000:]
    left = json.loads(result.stdout.strip().splitlines()[-1])
    *locks, factory_holders, event_and_queue_holders = left
    assert all(holders == ["threading._MainThread"] for holders in locks), locks
    # the SDK dispatcher's work queue: the listener and the request greenlets, all on the loop; the worker
    # process's handle (gevent's Popen, its exit watched by the loop) and its supervisor's readiness event and
    # answers, set by the greenlet that reads the worker's channel: no OS thread of this process touches them
    assert event_and_queue_holders == ["concurrent.futures.thread.ThreadPoolExecutor",
                                       "crossmodal.workers.supervisor.Engine", "gevent.subprocess.Popen"], \
        event_and_queue_holders
    assert set(factory_holders) <= {"module gevent.thread", "module gevent.threading", "module __main__"}, \
        factory_holders
