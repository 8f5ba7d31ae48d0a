"""What the model-provider package's handlers share: credentials -> settings for one model, the work run off
the gevent loop, and errors mapped onto the SDK's model errors (their text is what Dify shows)."""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any, Callable

from crossmodal.dify.validation import validate_model, validate_reranker
from crossmodal.errors import CrossmodalError, redact
from crossmodal.lanes import QUERY, call_deadline
from crossmodal.runtime import offload
from crossmodal.service import Service
from crossmodal.settings import Settings

logger = logging.getLogger(__name__)
# A model's result goes back as one stdout line, and Dify's daemon kills the plugin (with every request in it) on a
# line over 5 MiB (PLUGIN_STDIO_MAX_BUFFER_SIZE); the envelope needs far less than the rest.
MAX_REPLY_BYTES = 4 * 1024 * 1024


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
        return offload(fn, *args, lane=lane, deadline=call_deadline(), **kwargs)
    except CrossmodalError as exc:
        raise bad_request(str(exc)) from None
    except Exception as exc:  # an unexpected failure: details in the log, one line for the user
        logger.error("crossmodal model call failed: %s", redact(traceback.format_exc()))
        raise RuntimeError(f"internal error ({type(exc).__name__}); the plugin log has the details") from None


def token_counts(service: Service, texts: list[str]) -> list[int]:
    """Each text's token count by the model's own tokenizer (the model package's get_num_tokens)."""
    return service.encoder().token_counts(texts)


def reranker_reads_images(service: Service, model: str) -> bool:
    """Whether a rerank model scores images (a dual encoder, or a cross-encoder that reads them): Dify sends
    image documents only to a model with the vision feature."""
    from crossmodal.rerank.documents import reranker_kind
    from crossmodal.rerank.scoring import reads_images

    return reranker_kind(service, model) == "dual" or reads_images(model, service.settings.hub)


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


def check_reply_size(items: list, what: str, error: type[Exception]) -> None:
    """Refuse, as ``error``, a result whose ``items`` (vectors, rerank documents) would not fit one reply line,
    naming how many per call would. Dify's own calls stay far below (a knowledge base sends at most a model's
    ``max_chunks`` documents per embedding call); another plugin's invocation may send any number."""
    import pydantic_core  # the encoder the SDK writes results with (pydantic's model_dump_json)

    size = len(pydantic_core.to_json(items))
    if size > MAX_REPLY_BYTES:
        fits = max(1, len(items) * MAX_REPLY_BYTES // size)
        raise error(f"the reply for {len(items)} {what} would be {size / 2**20:.1f} MiB, over the "
                    f"{MAX_REPLY_BYTES // 2**20} MiB one line to Dify's plugin daemon can carry: send at most "
                    f"{fits} per call")
