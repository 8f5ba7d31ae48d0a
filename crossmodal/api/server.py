"""`python -m crossmodal serve`: the HTTP API on gunicorn, a production WSGI server, instead of werkzeug's
development server.

Threads serve concurrent requests in each worker process (gunicorn's ``gthread`` worker; inference and search
release the GIL). More worker processes need a Qdrant server as the store: the embedded store's files are
opened by one process only, so ``workers > 1`` with it is refused. Each worker loads its own models.
Request bodies over 9 MB are refused by the application (crossmodal/api/http.py); request lines and headers
are bounded here, and a request that runs longer than ``timeout`` seconds has its worker restarted.
"""

from __future__ import annotations

from typing import Mapping

from crossmodal.errors import CrossmodalError

DEFAULT_THREADS = 8
DEFAULT_TIMEOUT_S = 120  # a cold model load on first use takes tens of seconds on a CPU
KEEPALIVE_S = 5
MAX_REQUEST_LINE = 8190
MAX_HEADER_FIELDS = 100


def check_workers(workers: int, store_url: str | None) -> int:
    if workers < 1:
        raise CrossmodalError(f"{workers} is not a positive number of worker processes", param="workers")
    if workers > 1 and not store_url:
        raise CrossmodalError("the embedded store is opened by one process only: use --workers 1 (its threads "
                              "serve concurrent requests) or a Qdrant server (--url) for several workers",
                              param="workers")
    return workers


def gunicorn_options(host: str, port: int, workers: int, threads: int, timeout: int) -> dict:
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": timeout,
        "graceful_timeout": 30,
        "keepalive": KEEPALIVE_S,
        "limit_request_line": MAX_REQUEST_LINE,
        "limit_request_fields": MAX_HEADER_FIELDS,
        "accesslog": "-",
        "errorlog": "-",
    }


def serve(settings: Mapping, host: str = "127.0.0.1", port: int = 8080, workers: int = 1,
          threads: int = DEFAULT_THREADS, timeout: int = DEFAULT_TIMEOUT_S) -> None:
    check_workers(workers, settings.get("store_url"))
    try:
        from gunicorn.app.base import BaseApplication
    except ImportError:
        raise CrossmodalError("serve runs on gunicorn: python -m pip install -r requirements-serve.txt",
                              param="serve") from None
    from crossmodal.api.http import wsgi_app

    options = gunicorn_options(host, port, workers, threads, timeout)

    class Server(BaseApplication):
        def load_config(self):
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            return wsgi_app(settings)

    Server().run()
