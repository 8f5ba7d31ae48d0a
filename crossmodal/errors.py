"""The one error type users see.

Every message names the parameter at fault and says how to fix it. Adapters
(Dify tools, endpoints, the CLI) show ``str(error)`` as is and log anything else.
"""

from __future__ import annotations

import re

URL_CREDENTIALS = re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+@")


def redact(text: str) -> str:
    """URLs with user:password@ lose that part: messages and logs never carry credentials."""
    return URL_CREDENTIALS.sub("***@", text)


class CrossmodalError(ValueError):
    """A problem the caller can fix: bad input, unknown collection, unreachable store."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400):
        self.param = param
        self.status = status  # HTTP status for the endpoints: 400, 404, 413, 422, 503
        message = redact(message)
        super().__init__(f"{param}: {message}" if param else message)


class NotFoundError(CrossmodalError):
    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message, param=param, status=404)


class CollectionExists(CrossmodalError):
    """create_collection of a name that exists (made meanwhile by another call, for ensure_collection)."""

    def __init__(self, name: str):
        super().__init__(f"collection '{name}' already exists", param="collection")


class StoreUnavailableError(CrossmodalError):
    def __init__(self, message: str, *, param: str | None = "store_url"):
        super().__init__(message, param=param, status=503)
