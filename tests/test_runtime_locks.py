"""Locks shared by gevent's loop and worker threads inside the plugin process.

Under the SDK's gevent patching, the locks that logging and importlib make after the patch are greenlet
locks; the loop and the pool's worker threads contending for one can wait for good (the cause of a rare
hang of the load test: fifty searches whose handlers first imported the same module at once).
``use_os_locks_in_shared_libraries`` (called by main.py) gives them OS locks. Each check runs in a fresh
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
    from crossmodal.runtime import use_os_locks_in_shared_libraries

    def quiet_logger(name):
        logger = logging.getLogger(name)
        logger.addHandler(logging.StreamHandler(open(os.devnull, "w")))
        logger.propagate = False
        logger.setLevel(logging.INFO)
        return logger

    made_before = quiet_logger("crossmodal.before")  # like the SDK's handler, made at its import
    if sys.argv[1] == "fixed":
        use_os_locks_in_shared_libraries()
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
    from crossmodal.runtime import use_os_locks_in_shared_libraries

    if sys.argv[1] == "fixed":
        use_os_locks_in_shared_libraries()
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
    from crossmodal.runtime import use_os_locks_in_shared_libraries

    if sys.argv[1] == "fixed":
        use_os_locks_in_shared_libraries()
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
    from crossmodal.runtime import LoopLogHandler, use_os_locks_in_shared_libraries

    logger = logging.getLogger("crossmodal.fused")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(LoopLogHandler(plugin_logger_handler) if sys.argv[1] == "fixed" else plugin_logger_handler)
    use_os_locks_in_shared_libraries()
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
