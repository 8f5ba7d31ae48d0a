"""The SDK's server, made to end every session it starts.

The SDK runs each request in a greenlet and, when the handler raises, writes the error and the session's
end, but it catches ``Exception`` only. A ``BaseException`` (a greenlet killed with GreenletExit, a
gevent.Timeout that nobody caught) skipped both: the daemon then waited for that session until its own
600 s limit. ``ending_every_session`` closes that gap for any handler, ours or the SDK's.
"""

from __future__ import annotations

import logging
import traceback

from crossmodal.errors import redact

logger = logging.getLogger(__name__)


def ending_every_session(plugin_class: type) -> type:
    """A subclass of the SDK's Plugin whose request runner ends the session after any BaseException."""

    class Plugin(plugin_class):
        def _execute_request_in_thread(self, session_id, data, reader, writer, *args, **kwargs):
            try:
                super()._execute_request_in_thread(session_id, data, reader, writer, *args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - the SDK caught the rest; these escaped it
                end_after(session_id, writer, exc)
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise

    Plugin.__name__ = Plugin.__qualname__ = plugin_class.__name__
    return Plugin


def end_after(session_id: str, writer, exc: BaseException) -> None:
    """Write the error and the end of ``session_id`` as the SDK does for an Exception."""
    logger.error("a request ended by %s: %s", type(exc).__name__, redact(traceback.format_exc()))
    message = f"the request was interrupted ({type(exc).__name__}); the plugin log has the details"
    writer.session_message(session_id=session_id, data=writer.stream_error_object(
        data={"error_type": type(exc).__name__, "message": message, "args": {}}))
    writer.session_message(session_id=session_id, data=writer.stream_end_object())
    writer.done()
