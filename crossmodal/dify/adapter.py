"""What every Dify tool handler shares: credentials -> Service, Dify files -> ImageInput,
parameter parsing, and running the work off the gevent loop with user-facing errors.

Each tool module stays a few lines: parse -> call the service -> yield messages.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx

from crossmodal.errors import CrossmodalError, redact
from crossmodal.lanes import QUERY, call_deadline
from crossmodal.runtime import offload
from crossmodal.service import ImageInput, Service
from crossmodal.settings import Settings

logger = logging.getLogger(__name__)


class ToolInputError(ValueError):
    """Shown to the Dify user as the node's error message."""


def service_for(credentials: dict | None, session=None) -> Service:
    """The service for one call; with the tool's session, ``dify:<provider>/<model>`` reaches the workspace's
    own embedding models."""
    from crossmodal.dify.workspace import SessionModels

    return Service(Settings.from_credentials(credentials), workspace_models=SessionModels(session) if session else None)


def call(fn: Callable[..., Any], *args, lane: str = QUERY, **kwargs) -> Any:
    """Run ``fn`` in a worker thread of ``lane`` (crossmodal/lanes.py); turn errors into one message a person can
    act on."""
    from crossmodal.api import metrics
    name, started, status = getattr(fn, "__name__", "call"), time.perf_counter(), "ok"
    try:
        return offload(fn, *args, lane=lane, deadline=call_deadline(), **kwargs)
    except CrossmodalError as exc:
        status = str(exc.status)
        raise ToolInputError(str(exc)) from None
    except Exception as exc:  # an unexpected failure: log the details, show a short line
        status = "500"
        logger.error("crossmodal tool failed: %s", redact(traceback.format_exc()))
        raise RuntimeError(f"internal error ({type(exc).__name__}); the plugin log has the details") from None
    finally:
        metrics.REQUESTS.labels(endpoint=metrics.NODE, kind="node", name=name, status=status).inc()
        metrics.LATENCY.labels(endpoint=metrics.NODE, kind="node", name=name).observe(time.perf_counter() - started)
        if status != "ok":
            metrics.ERRORS.labels(endpoint=metrics.NODE, kind="node", name=name).inc()


FILES_URL_FIX = ("Dify gave the plugin a file URL without a host ('{url}'): set FILES_URL (or INTERNAL_FILES_URL) "
                 "on Dify's api and plugin_daemon services to an address the plugin can reach, for example "
                 "FILES_URL=http://api:5001 in docker/.env, then restart them (see the README, 'Running it in Dify')")
# Each file is fetched by the SDK with this total time-out (its HTTPX_TIMEOUT, in seconds).
SDK_DOWNLOAD_TIMEOUT = 5
# A tool message is one stdout line; the daemon kills the plugin on a line over 5 MiB (the envelope and
# JSON escaping need the rest).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def file_inputs(value) -> list[ImageInput]:
    """Dify File objects (one or a list) -> ImageInputs. Downloads happen here, on the loop
    (I/O yields to other sessions); a failed or slow download becomes that item's error, not the batch's.
    Relative file URLs (Dify's FILES_URL unset) fail every file the same way: one error for the node."""
    if value is None or value == "":
        return []
    files = value if isinstance(value, list) else [value]
    for file in files:
        url = str(getattr(file, "url", "") or "")
        if url and urlsplit(url).scheme not in ("http", "https"):
            raise ToolInputError(FILES_URL_FIX.format(url=url[:80]))
    inputs = []
    for index, file in enumerate(files):
        name = getattr(file, "filename", None) or f"file-{index + 1}"
        try:
            data = file.blob
        except Exception as exc:  # noqa: BLE001 - reported per item
            inputs.append(ImageInput.failed(name, CrossmodalError(download_failure(exc), param=name)))
            continue
        inputs.append(ImageInput.from_bytes(name, data))
    return inputs


def url_input(url: str, settings: Settings, param: str = "image_url") -> ImageInput:
    """An image URL fetched here, on the loop, before the work is handed to the worker process (a slow server
    costs a greenlet until the fetch's deadline, never a worker thread); a failure becomes that input's error."""
    from crossmodal.api.http import fetch_urls

    return fetch_urls("search", {"image_url": url}, settings, CALL_FETCH_SECONDS)["image_url"]


CALL_FETCH_SECONDS = 60.0  # the most a tool's URL fetch may take (url_fetch_seconds bounds it first)


def download_failure(exc: Exception) -> str:
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)) or isinstance(exc.__cause__, httpx.TimeoutException):
        return (f"Dify's file server did not deliver the file within the SDK's {SDK_DOWNLOAD_TIMEOUT} s download "
                "limit; the other files went on. Retry, or use smaller files")
    return f"cannot download the file from Dify's file server ({exc})"


def variable_message(tool, name: str, value):
    """A variable message, refused with a clear error where its one stdout line would pass the daemon's limit."""
    size = len(json.dumps(value, ensure_ascii=False).encode())
    if size > MAX_MESSAGE_BYTES:
        raise ToolInputError(f"{name}: the output would be {size / 2**20:.1f} MiB, over the {MAX_MESSAGE_BYTES // 2**20} "
                             "MiB one Dify message can carry; give fewer items per call (split the list)")
    return tool.create_variable_message(name, value)


def for_llm(result: dict) -> dict:
    """The JSON message (what an agent's LLM reads): vectors and heat-map grids left out, since the node's
    variables carry them for the workflow."""
    out = dict(result)
    if isinstance(out.get("items"), list):
        out["items"] = [{k: v for k, v in item.items() if k != "vector"} if isinstance(item, dict) else item
                        for item in out["items"]]
    heat = out.get("attention_map")
    if isinstance(heat, dict) and "values" in heat:
        out["attention_map"] = {k: v for k, v in heat.items() if k != "values"}
    return out


def text_list(value: str | None) -> list[str]:
    """One item per line; blank lines ignored."""
    return [line.strip() for line in str(value or "").splitlines() if line.strip()]


def tag_list(value: str | None) -> list[str]:
    return [t.strip() for t in str(value or "").replace("\n", ",").split(",") if t.strip()]


def json_object(value, param: str) -> dict:
    if value in (None, ""):
        return {}
    if isinstance(value, dict):
        return value
    if not isinstance(value, (str, bytes)):  # e.g. an array variable wired into the field
        raise ToolInputError(f"{param}: must be a JSON object such as {{\"album\": \"2024\"}}, "
                             f"not {type(value).__name__}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ToolInputError(f"{param}: is not valid JSON ({exc.msg}); example: {{\"album\": \"2024\"}}") from None
    if not isinstance(parsed, dict):
        raise ToolInputError(f"{param}: must be a JSON object such as {{\"album\": \"2024\"}}")
    return parsed


def number(value, param: str, default: float | None = None) -> float | None:
    if value in (None, ""):
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ToolInputError(f"{param}: '{value}' is not a number") from None


def flag(value) -> bool:
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")


def summary_line(results: list[dict], limit: int = 5) -> str:
    lines = []
    for rank, hit in enumerate(results[:limit], 1):
        p = hit["payload"]
        label = p.get("caption") or p.get("text") or p.get("source") or hit["id"]
        lines.append(f"{rank}. {label} ({hit['score']:.3f})")
    return "\n".join(lines) if lines else "no results"
