"""What the model-provider package's handlers share: credentials -> settings for one model, the work run off
the gevent loop, and errors mapped onto the SDK's model errors (their text is what Dify shows)."""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any, Callable

from crossmodal.dify.validation import validate_model, validate_reranker
from crossmodal.errors import CrossmodalError, redact
from crossmodal.lanes import CALL_DEADLINE_SECONDS, QUERY
from crossmodal.runtime import offload
from crossmodal.service import Service
from crossmodal.settings import Settings

logger = logging.getLogger(__name__)


def service_for_model(model: str, credentials: dict | None) -> Service:
    """The model name Dify sends is a preset, a hub id or a local directory; the credentials add device,
    precision, hub settings and (rerank models) an ITM model, which becomes the ``itm`` route."""
    credentials = dict(credentials or {})
    itm = str(credentials.pop("itm_model", "") or "").strip()
    if itm:
        credentials["routes"] = json.dumps({"itm": itm})
    return Service(Settings.from_credentials({**credentials, "model": model}))


def run(fn: Callable[..., Any], *args, bad_request: type[Exception], lane: str = QUERY, **kwargs) -> Any:
    """Run ``fn`` in a worker thread of ``lane``; a CrossmodalError becomes ``bad_request`` with its message,
    anything else is logged in full and raised as a short line."""
    try:
        return offload(fn, *args, lane=lane, deadline=CALL_DEADLINE_SECONDS, **kwargs)
    except CrossmodalError as exc:
        raise bad_request(str(exc)) from None
    except Exception as exc:  # an unexpected failure: details in the log, one line for the user
        logger.error("crossmodal model call failed: %s", redact(traceback.format_exc()))
        raise RuntimeError(f"internal error ({type(exc).__name__}); the plugin log has the details") from None


def rerank_limits(score_threshold: float | None, top_n: int | None) -> tuple[float | None, int | None]:
    """Dify's "no threshold" and "no top-n" as the daemon delivers them. The daemon re-encodes model requests
    from Go structs (a float64 and an int), so Dify's null arrives as 0.0 and 0: both mean none here."""
    return (score_threshold or None), (top_n or None)


def check_model(model: str, credentials: dict | None, error: type[Exception], rerank: bool = False) -> None:
    """Credential validation for a model (or, with a predefined model's name, for the provider): its settings
    and its config files, never its weights; a problem becomes ``error``. A rerank model may also be a text
    cross-encoder, and its ITM model is checked too."""
    service = service_for_model(model, credentials)
    if rerank:
        run(validate_reranker, service, bad_request=error)
    else:
        run(validate_model, service.settings, bad_request=error)
