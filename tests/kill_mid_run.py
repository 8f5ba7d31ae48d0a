"""kill -9 in the middle of a long command-line run: what the crash-safety tests share."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time


def kill_after_progress(process: subprocess.Popen, total: int, at_least: int, timeout: float = 300) -> None:
    """Read the command's progress lines on stderr ("<done>/<total>") until ``at_least`` items are done, then
    kill it with SIGKILL. Fails, with the end of its output, if it never got that far."""
    done, buffer, deadline = 0, b"", time.monotonic() + timeout
    while done < at_least and time.monotonic() < deadline:
        chunk = os.read(process.stderr.fileno(), 4096)
        if not chunk:
            break
        buffer += chunk
        counts = re.findall(rb"(\d+)/%d" % total, buffer)
        done = int(counts[-1]) if counts else 0
    assert done >= at_least, buffer[-500:]
    process.send_signal(signal.SIGKILL)
    process.wait(30)
