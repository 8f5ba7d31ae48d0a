"""The entry point of every worker process: ``python -m crossmodal.workers.child <kind> <fd> <parent pid> ...``.

``engine``: the plugin's worker process, which runs every call's work in lanes (crossmodal/workers/engine.py).
``task``: a disposable process for one kind of dangerous work at a time, e.g. rendering a PDF's pages
(crossmodal/workers/tasks.py), killed and replaced when a task passes its time budget.
"""

from __future__ import annotations

import socket
import sys


class _NoSdkHere:
    """The SDK's import patches the whole process with gevent. A worker process is a plain one (OS threads,
    blocking sockets); a module that imports the SDK belongs to the plugin process, and says so here."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "dify_plugin":
            raise ModuleNotFoundError("dify_plugin is not imported in a worker process (it patches the process with "
                                      "gevent); this code belongs to the plugin process", name=name)
        return None


def main(argv: list[str]) -> None:
    from crossmodal.workers.lifetime import die_with_parent

    kind, fd, parent = argv[0], int(argv[1]), int(argv[2])
    die_with_parent(parent)
    sys.meta_path.insert(0, _NoSdkHere())
    channel = socket.socket(fileno=fd)
    channel.setblocking(True)  # made by a gevent-patched parent, it arrives non-blocking
    if kind == "engine":
        from crossmodal.workers.engine import serve

        serve(channel)
    elif kind == "task":
        from crossmodal.workers.tasks import serve_tasks

        serve_tasks(channel, int(argv[3]))
    else:
        raise SystemExit(f"unknown worker kind {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
