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

    def __reduce__(self):
        # Errors cross from the worker process to the plugin process pickled; subclasses take other arguments
        # than their message, so they are rebuilt from their text and attributes, not through __init__.
        return _rebuilt_error, (type(self), self.args, self.__dict__)


def _rebuilt_error(cls: type, args: tuple, state: dict) -> "CrossmodalError":
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


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
