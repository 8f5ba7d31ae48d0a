"""Locks shared by gevent's loop and worker threads inside the plugin process.

Under the SDK's gevent patching, a lock that logging makes after the patch is a greenlet lock; the
loop and the pool's worker threads contending for it can wait for good (the cause of a rare hang of the load
test). ``use_os_locks_in_shared_libraries`` (called by main.py) gives those libraries OS locks. Each check
runs in a fresh interpreter patched exactly as the plugin is, and hammers the locks from both sides."""

import subprocess
import sys
import textwrap
from pathlib import Path

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
    os._exit(0)
""")


def hammer(mode: str, timeout: float) -> str:
    result = subprocess.run([sys.executable, "-c", HAMMER, mode, str(timeout)], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout + 60)
    return result.stdout.strip() or result.stderr[-2000:]


def test_logging_and_progress_bars_from_loop_and_workers_never_hang():
    for _ in range(3):
        assert hammer("fixed", 60) == "finished"


def test_without_os_locks_the_same_load_hangs():
    """The control: the hazard is real with these library versions, so the test above can fail."""
    outcomes = []
    for _ in range(3):
        outcomes.append(hammer("unfixed", 8))
        if outcomes[-1] == "hung":
            break
    assert outcomes[-1] == "hung", outcomes
