"""The HTTP API behind the plugin's endpoints (and any WSGI server): parse -> service -> JSON.

Every route but the viewer page needs ``Authorization: Bearer <api_key>`` (constant-time compare).
Bodies are JSON (images as base64 strings or ``image_url``) or multipart (image files); at most 10 MB,
Dify's own cap. Errors are ``{"error": {"code", "message", "param"}}`` with a fitting status; the External
Knowledge API route answers in that API's own error shape.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import time
import traceback
import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

from werkzeug import Request, Response

from crossmodal.errors import CrossmodalError, NotFoundError, redact
from crossmodal.inputs.sources import decode_base64
from crossmodal.lanes import BULK, LOAD, LOOKUP, QUERY, DeadlineExceeded, lane_for_items
from crossmodal.limits import limit, register
from crossmodal.runtime import StillRunning, gevent_patched, offload, offload_within
from crossmodal.service import ImageInput, IngestItem, Service
from crossmodal.settings import Settings

logger = logging.getLogger(__name__)

# Dify's daemon cuts endpoint request bodies at 10 MB without a word (and sets Content-Length to what is left):
# refuse clearly below that.
DIFY_BODY_CUT = 10 * 1024 * 1024
MAX_BODY_BYTES = 9 * 1024 * 1024
# Dify's External Knowledge calls time out after 5 s: a model still loading answers 503 within that, and a
# call that cannot finish in time says why (queue, model load, store) in the log and /metrics.
WARM_WAIT_SECONDS = 3.0
RETRIEVAL_DEADLINE_SECONDS = 4.5
register("retrieval_seconds", RETRIEVAL_DEADLINE_SECONDS, "s", "an External Knowledge call (/retrieval): Dify "
         "waits 5 s and shows no records, silently, after", cap=RETRIEVAL_DEADLINE_SECONDS, minimum=0.5, integer=False)
# The other routes: the endpoint setting request_timeout, within Dify's 600 s for a plugin call.
DEFAULT_REQUEST_TIMEOUT, MAX_REQUEST_TIMEOUT = 300.0, 570.0
register("request_seconds", DEFAULT_REQUEST_TIMEOUT, "s", "an endpoint call other than /retrieval, unless the "
         "endpoint's request_timeout setting says otherwise (1 s to call_seconds)", cap=MAX_REQUEST_TIMEOUT,
         minimum=1, integer=False)
# Dify's plugin SDK writes a non-streamed endpoint body as one hex line on stdout, and the daemon kills the
# plugin on a line over 5 MiB: bodies larger than one chunk go out as a stream of chunks (a line each).
STREAM_CHUNK_BYTES = 512 * 1024
VIEWER_PAGE = Path(__file__).resolve().parents[1] / "assets" / "viewer.html"


class ApiError(CrossmodalError):
    pass


def service_for(settings: Mapping) -> Service:
    return Service(Settings.from_credentials(dict(settings or {})))


# -- request parsing ----------------------------------------------------------------------------
def read_json(request: Request) -> dict:
    if request.content_length and request.content_length > MAX_BODY_BYTES:
        raise CrossmodalError(too_large(request.content_length), param="body", status=413)
    raw = request.get_data(cache=True)
    if len(raw) > MAX_BODY_BYTES:
        raise CrossmodalError(too_large(len(raw)), param="body", status=413)
    if request.mimetype == "multipart/form-data":
        return {k: v for k, v in request.form.items()}
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise CrossmodalError(f"is not valid JSON{where}; send a JSON object", param="body") from None
    if not isinstance(body, dict):
        raise CrossmodalError("must be a JSON object", param="body")
    return body


def too_large(size: int) -> str:
    cut = " (exactly Dify's cut: the request was larger still)" if size == DIFY_BODY_CUT else ""
    return (f"the body has {size} bytes{cut}; at most {MAX_BODY_BYTES} (9 MB) are accepted, below the 10 MB at "
            "which Dify cuts request bodies: send fewer or smaller images per request")


def field(body: dict, name: str, kind: type | tuple, default=None, required: bool = False):
    value = body.get(name, default)
    if value is None:
        if required:
            raise CrossmodalError("is required", param=name)
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise CrossmodalError(f"must be {expected}, not {type(value).__name__}", param=name)
    return value


@dataclasses.dataclass
class RequestParts:
    """What a route reads of its request beyond the JSON body, as plain data (a call travels to the worker
    process pickled): the multipart files, and the images the plugin process already fetched by URL."""

    mimetype: str = ""
    files: dict[str, list[tuple[str, bytes]]] = dataclasses.field(default_factory=dict)
    fetched: dict[str, ImageInput] = dataclasses.field(default_factory=dict)  # parameter -> the fetched image (or its failure)
    # External Knowledge: the endpoint's retrieval settings, and the signer of picture links (crossmodal/api/knowledge.py)
    endpoint: dict = dataclasses.field(default_factory=dict)
    links: Any = None

    @classmethod
    def of(cls, request: Request) -> "RequestParts":
        files = {}
        if request.mimetype == "multipart/form-data":
            files = {name: [(f.filename or name, f.read()) for f in request.files.getlist(name)]
                     for name in request.files}
        return cls(request.mimetype, files)

    def file(self, name: str) -> tuple[str, bytes] | None:
        found = self.files.get(name)
        return found[0] if found else None


def image_from(body: dict, parts: RequestParts, name: str, settings: Settings, *, url_name: str | None = None,
               prefix: str = ""):
    """One image: a multipart file, a base64 string in ``name``, or a URL in ``url_name`` (fetched already by
    the plugin process, or here on first read)."""
    upload = parts.file(name)
    if upload:
        return ImageInput.from_bytes(*upload)
    data = body.get(name)
    if data is not None:
        return ImageInput.from_bytes(name, decode_base64(data, prefix + name))
    url = body.get(url_name) if url_name else None
    if url is not None:
        if not isinstance(url, str):
            raise CrossmodalError("must be a string URL", param=prefix + url_name)
        return parts.fetched.get(prefix + url_name) or ImageInput.from_url(url, settings.url_allowlist,
                                                                            param=prefix + url_name)
    return None


def images_from(body: dict, parts: RequestParts, name: str) -> list[ImageInput]:
    out = [ImageInput.from_bytes(filename or f"{name}[{k}]", data)
           for k, (filename, data) in enumerate(parts.files.get(name, []))]
    values = field(body, name, list, [])
    for k, value in enumerate(values):
        out.append(ImageInput.from_bytes(f"{name}[{k}]", decode_base64(value, f"{name}[{k}]")))
    return out


URLS_PER_CALL = register("urls_per_call", 64, "URLs", "image URLs one endpoint call may ask the plugin to fetch",
                         cap=10_000, minimum=1, workspace=True)
FETCHES_AT_ONCE = 8  # one call's URLs fetched side by side (each a greenlet: it holds no thread while it waits)


def image_urls(route: str, body: dict) -> list[tuple[str, str]]:
    """(parameter, URL) of every image URL a route's body names."""
    if route in ("search", "align"):
        url = body.get("image_url")
        return [("image_url", url)] if isinstance(url, str) else []
    if route == "ingest" and isinstance(body.get("items"), list):
        return [(f"items[{k}].image_url", raw["image_url"]) for k, raw in enumerate(body["items"])
                if isinstance(raw, dict) and isinstance(raw.get("image_url"), str) and raw.get("image") is None]
    return []


def fetch_urls(route: str, body: dict, settings: Settings, seconds: float) -> dict[str, ImageInput]:
    """The route's image URLs fetched here, on the gevent loop, before its work is handed to the worker
    process: a slow server costs a greenlet until the fetch's deadline, never a worker thread. A failed fetch
    becomes that item's error."""
    import gevent
    from gevent.pool import Pool

    wanted = image_urls(route, body)
    if len(wanted) > limit("urls_per_call"):
        raise CrossmodalError(f"the body names {len(wanted)} image URLs; at most {limit('urls_per_call'):g} are "
                              "fetched per call (urls_per_call): send fewer items per request", param="items")

    def fetch(param: str, url: str) -> tuple[str, ImageInput]:
        wanted_input = ImageInput.from_url(url, settings.url_allowlist, param=param)
        try:
            with gevent.Timeout(seconds, CrossmodalError(f"{url} was not fetched within the call's {seconds:.0f} s",
                                                         param=param, status=422)):
                return param, ImageInput.from_bytes(url, wanted_input.read())
        except CrossmodalError as exc:
            return param, ImageInput.failed(url, exc)

    pool = Pool(FETCHES_AT_ONCE)
    return dict(pool.imap(lambda pair: fetch(*pair), wanted))


# -- routes -------------------------------------------------------------------------------------------
def route_embed(service: Service, body: dict, request: RequestParts) -> dict:
    texts = field(body, "texts", list, [])
    if not all(isinstance(t, str) for t in texts):
        raise CrossmodalError("must be a list of strings", param="texts")
    return service.embed(images_from(body, request, "images"), texts, field(body, "model", str),
                         field(body, "input_type", str) or "document")


def route_ingest(service: Service, body: dict, request: RequestParts) -> dict:
    items = []
    for k, raw in enumerate(field(body, "items", list, [])):
        if not isinstance(raw, dict):
            raise CrossmodalError("must be an object with image (base64), image_url or text", param=f"items[{k}]")
        image = image_from(raw, request, "image", service.settings, url_name="image_url", prefix=f"items[{k}].")
        tags = raw.get("tags") or []
        if not isinstance(tags, list):
            raise CrossmodalError("must be a list of strings", param=f"items[{k}].tags")
        metadata = raw.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise CrossmodalError("must be an object", param=f"items[{k}].metadata")
        if image is None and not raw.get("text"):
            raise CrossmodalError("needs image, image_url or text", param=f"items[{k}]")
        items.append(IngestItem(image=image, text=None if image else raw.get("text"), caption=raw.get("caption"),
                                tags=tags, metadata=metadata, source=raw.get("source")))
    items += [IngestItem(image=f) for f in images_from(body, request, "files")]
    if not items:
        raise CrossmodalError("give at least one item (image, image_url or text), or multipart files", param="items")
    report = service.ingest(items, field(body, "collection", str), field(body, "model", str),
                            regions=bool(field(body, "regions", bool, False)), storage=field(body, "storage", str),
                            dpi=field(body, "dpi", (int, float)), max_pages=field(body, "max_pages", int),
                            figures=bool(field(body, "figures", bool, False)),
                            ocr=field(body, "ocr", (str, bool)))
    return report


def route_search(service: Service, body: dict, request: RequestParts) -> dict:
    image = image_from(body, request, "image", service.settings, url_name="image_url")
    result = service.search(
        text=field(body, "query", str), image=image, collection=field(body, "collection", str),
        top_k=field(body, "top_k", int, 10), score_threshold=field(body, "score_threshold", float),
        filter=field(body, "filter", (dict, str)), target=field(body, "target", str, "image"),
        model=field(body, "model", str), text_weight=field(body, "text_weight", float, 0.5),
        with_thumbnails=bool(field(body, "with_thumbnails", bool, False)),
        regions=bool(field(body, "regions", bool, False)), rerank=field(body, "rerank", str),
        rerank_k=field(body, "rerank_k", int, 20), mode=field(body, "mode", str), fusion=field(body, "fusion", str),
    )
    thumbnails = result.pop("thumbnails", None)
    if thumbnails:
        for hit in result["results"]:
            if hit["id"] in thumbnails:
                hit["thumbnail_jpeg"] = base64.b64encode(thumbnails[hit["id"]]).decode()
    return result


def route_align(service: Service, body: dict, request: RequestParts) -> dict:
    """Also the seed's call shape: {"image_url": ..., "text_query": ...}."""
    image = image_from(body, request, "image", service.settings, url_name="image_url")
    if image is None:
        raise CrossmodalError("give image (base64 or a multipart file) or image_url", param="image")
    text = body.get("text", body.get("text_query"))
    if not isinstance(text, str):
        raise CrossmodalError("is required: the description to check (text or text_query)", param="text")
    result = service.align(image, text, model=field(body, "model", str), mode=field(body, "mode", str, "auto"),
                           heatmap=field(body, "heatmap", bool, True), tile_size=field(body, "tile_size", int),
                           overlap=field(body, "overlap", float, 0.25), overlay=field(body, "overlay", bool, True),
                           ocr=field(body, "ocr", (str, bool)))
    overlay = result.pop("overlay_png", None)
    if overlay:
        result["overlay_png"] = base64.b64encode(overlay).decode()
    return result


def route_rerank(service: Service, body: dict, request: RequestParts) -> dict:
    query_image = image_from(body, request, "query_image", service.settings)
    return service.rerank(field(body, "query", str), body.get("candidates"), images_from(body, request, "images"),
                          query_image, field(body, "top_n", int), field(body, "method", str, "auto"),
                          field(body, "model", str), field(body, "collection", str),
                          field(body, "weight", float, 0.5))


def route_collections(service: Service, body: dict, request: RequestParts) -> dict:
    return service.list_collections()


def route_retrieval(service: Service, body: dict, request: RequestParts) -> dict:
    """Dify's External Knowledge API: a collection as a knowledge base (see crossmodal/api/knowledge.py)."""
    from crossmodal.api.knowledge import knowledge_records, metadata_predicate

    knowledge_id = field(body, "knowledge_id", str, required=True)
    query = field(body, "query", str, required=True)
    setting = field(body, "retrieval_setting", dict, {})
    top_k = setting.get("top_k", 5)
    threshold = setting.get("score_threshold")
    if not isinstance(top_k, int) or isinstance(top_k, bool):
        raise CrossmodalError("must be an integer", param="retrieval_setting.top_k")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not 0.0 <= threshold <= 1.0):
        raise CrossmodalError("must be a relevance between 0 and 1", param="retrieval_setting.score_threshold")
    where = metadata_predicate(body.get("metadata_condition"))
    options = request.endpoint if request is not None else {}
    encoder = service.loaded_collection_encoder(knowledge_id)  # ModelNotLoaded: see retrieval_within_deadline
    # Relevance is filtered on the records' own 0-1 scores (for dense hits a rising function of the cosine, so
    # the same hits as a cosine bound in the engine would keep).
    result = service.search(text=query, collection=knowledge_id, top_k=max(1, min(top_k, 100)), target="any",
                            where=where, mode=options.get("retrieval_mode"), fusion=options.get("retrieval_fusion"))
    records = knowledge_records(result, service.calibration(encoder), request.links if request is not None else None)
    return {"records": [r for r in records if threshold is None or r["score"] >= threshold]}


def route_image(service: Service, body: dict, request: RequestParts) -> bytes:
    """A signed picture link's thumbnail (crossmodal/api/image_links.py); the link was checked by the caller."""
    from crossmodal.store import check_collection_name

    name, point_id = check_collection_name(body["c"]), body["id"]
    for hit in service.store.retrieve(name, [point_id], with_thumbnails=True):
        if hit.payload.get("thumbnail"):
            return base64.b64decode(hit.payload["thumbnail"])
    raise NotFoundError("this item has no picture", param="id")


def route_openapi(service: Service | None, body: dict, request: RequestParts) -> dict:
    from crossmodal.api.openapi import openapi_document

    return openapi_document()


ROUTES: dict[str, Callable] = {
    "embed": route_embed, "ingest": route_ingest, "search": route_search, "align": route_align,
    "rerank": route_rerank, "collections": route_collections, "retrieval": route_retrieval,
    "openapi": route_openapi,
}


# -- the entry point the endpoint classes call ------------------------------------------------------------
def respond(route: str, request: Request, settings: Mapping) -> Response:
    from crossmodal.api import metrics
    started = time.perf_counter()
    status = 500
    scope = metrics.endpoint_scope(settings)
    try:
        if route == "viewer":
            status = 200
            return Response(VIEWER_PAGE.read_bytes(), status=200, content_type="text/html; charset=utf-8")
        if route == "image":  # a signed link instead of the bearer key: browsers follow it from a chat
            response = image_response(request, settings, started)
            status = response.status_code
            return response
        if route == "metrics":
            status = 200
            body, content_type = metrics.exposition(service_for(settings), metrics_scope(request, settings))
            return Response(body, status=200, content_type=content_type)
        check_key(request, settings, route)
        body = read_json(request) if request.method == "POST" else {}
        service = service_for(settings)
        deadline = request_deadline(route, settings)
        parts = RequestParts.of(request)
        if route == "retrieval":
            from crossmodal.api.knowledge import endpoint_options

            parts.endpoint, parts.links = endpoint_options(request, settings)
        if gevent_patched():
            parts.fetched = fetch_urls(route, body, service.settings, deadline)
        if route == "retrieval":
            result = retrieval_within_deadline(service, body, parts, started + deadline)
        else:
            result = offload(ROUTES[route], service, body, parts, lane=route_lane(route, body),
                             deadline=max(0.5, deadline - (time.perf_counter() - started)))
        status = 200
        return _json(result, 200)
    except CrossmodalError as exc:
        status = exc.status
        metrics.ERRORS.labels(endpoint=scope, kind="endpoint", name=route).inc()
        if route == "retrieval" and isinstance(exc, DeadlineExceeded):
            logger.warning("an External Knowledge call missed Dify's 5 s: %s", exc)
        return error_response(route, exc)
    except Exception:  # noqa: BLE001 - logged in full, answered in one line
        logger.error("endpoint %s failed: %s", route, redact(traceback.format_exc()))
        metrics.ERRORS.labels(endpoint=scope, kind="endpoint", name=route).inc()
        return _json({"error": {"code": "internal", "message": "internal error; the plugin log has the details"}},
                     500)
    finally:
        metrics.REQUESTS.labels(endpoint=scope, kind="endpoint", name=route, status=str(status)).inc()
        metrics.LATENCY.labels(endpoint=scope, kind="endpoint", name=route).observe(time.perf_counter() - started)


class AuthError(CrossmodalError):
    """A missing, malformed or wrong key. The pack's REST routes answer 401. The External Knowledge route
    answers 403 with that API's codes (1001 malformed header, 1002 failed authorisation): Dify's connection
    check counts only 403/404/502 as failures, so a 401 would let a broken knowledge base be saved."""

    def __init__(self, message: str, *, malformed: bool, route: str, param: str = "authorization"):
        self.code = 1001 if malformed else 1002
        super().__init__(message, param=param, status=403 if route == "retrieval" else 401)


def route_lane(route: str, body: dict) -> str:
    """Searches, External Knowledge and short embeddings go ahead of bulk work; collection lists need no model."""
    if route in ("ingest", "align"):
        return BULK
    if route == "collections":
        return LOOKUP
    if route == "embed":
        return lane_for_items(len(body.get("texts") or []) + len(body.get("images") or []))
    if route == "rerank":  # image candidates are read and encoded (as in the Rerank node); texts and ids are light
        return BULK if body.get("images") else QUERY
    return QUERY


def request_deadline(route: str, settings: Mapping) -> float:
    if route == "retrieval":
        return float(limit("retrieval_seconds"))
    raw = (settings or {}).get("request_timeout")
    if raw in (None, ""):
        return float(limit("request_seconds"))
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        seconds = 0.0
    most = float(limit("call_seconds"))
    if not 1.0 <= seconds <= most:
        raise CrossmodalError(f"'{raw}' is not a number of seconds between 1 and {most:g} (Dify ends a "
                              "plugin call at 600 s); fix it in the endpoint's settings", param="request_timeout")
    return seconds


def retrieval_within_deadline(service: Service, body: dict, request: RequestParts, ends_at: float) -> dict:
    """Dify gives an External Knowledge call 5 s. The route runs in the query lane and finds the collection's
    model loaded (a lookup that neither loads nor waits), or says ModelNotLoaded. Only then is the model loaded,
    in the load lane, and a load that takes more than WARM_WAIT_SECONDS answers 503 'still loading' while it
    goes on, so that Dify's retry (or the next call) finds it ready. 503 is never the answer for a loaded model."""
    from crossmodal.context import ModelNotLoaded
    from crossmodal.lanes import count_deadline_miss

    def remaining() -> float:
        return max(0.5, ends_at - time.perf_counter())

    try:
        return offload(route_retrieval, service, body, request, lane=QUERY, deadline=remaining())
    except ModelNotLoaded as missing:
        model = missing.model
    try:
        offload_within(min(WARM_WAIT_SECONDS, remaining()), service.encoder, model, lane=LOAD)
    except StillRunning:
        count_deadline_miss("retrieval", "model_load")
        loading = offload(model_is_loading, service, model, lane=LOOKUP, deadline=remaining())
        state = "is still loading (the first call after the plugin started)" if loading else \
            "waits for another model's load to finish before its own"
        logger.warning("External Knowledge call for '%s': the model %s %s; answered 503",
                       body.get("knowledge_id"), model, state)
        raise CrossmodalError(f"the collection's model {state}; retry in a few seconds", param="model",
                              status=503) from None
    return offload(route_retrieval, service, body, request, lane=QUERY, deadline=remaining())


def image_response(request: Request, settings: Mapping, started: float) -> Response:
    """GET /v1/image: 403 for a link without a valid, unexpired signature (checked here, in the plugin process,
    before any work is handed on); else the item's thumbnail from the store (the worker's), or 404."""
    from crossmodal.api.image_links import check_link, derived_key

    collection, point_id = check_link(derived_key(settings), request.args)
    service = service_for(settings)
    jpeg = offload(route_image, service, {"c": collection, "id": point_id}, None, lane=LOOKUP,
                   deadline=max(0.5, request_deadline("image", settings) - (time.perf_counter() - started)))
    return Response(jpeg, status=200, content_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})


def metrics_scope(request: Request, settings: Mapping) -> str | None:
    """Who reads /metrics: the admin (the plugin's CROSSMODAL_METRICS_KEY: everything, None) or the endpoint
    with its own key (its endpoint_scope); anyone else gets 401."""
    from crossmodal.api.metrics import ADMIN_KEY_ENV, endpoint_scope

    admin = os.environ.get(ADMIN_KEY_ENV, "")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if admin and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), admin.encode()):
        return None
    check_key(request, settings, "metrics")
    return endpoint_scope(settings)


def model_is_loading(service: Service, model: str) -> bool:
    return service.model_loading(model)


def check_key(request: Request, settings: Mapping, route: str) -> None:
    expected = str((settings or {}).get("api_key") or "")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if not expected:
        raise AuthError("the endpoint has no api_key configured; set one in the endpoint's settings",
                        malformed=False, route=route, param="api_key")
    if scheme.lower() != "bearer" or not given:
        raise AuthError("send 'Authorization: Bearer <api_key>'", malformed=True, route=route)
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise AuthError("the API key is wrong", malformed=False, route=route)


def error_response(route: str, exc: CrossmodalError) -> Response:
    if route == "retrieval":  # the External Knowledge API's documented shape
        if isinstance(exc, AuthError):
            code = exc.code
        elif isinstance(exc, NotFoundError) or exc.status == 404:
            code = 2001
        else:
            code = exc.status
        return _json({"error_code": code, "error_msg": str(exc)}, exc.status)
    return _json({"error": {"code": _code(exc.status), "message": str(exc), "param": exc.param}}, exc.status)


def _code(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "too_large",
            422: "unprocessable", 503: "unavailable"}.get(status, "error")


def _json(data: Any, status: int) -> Response:
    body = json.dumps(data, ensure_ascii=False).encode()
    if len(body) <= STREAM_CHUNK_BYTES:
        return Response(body, status=status, content_type="application/json")
    return Response(_chunks(body), status=status, content_type="application/json")


def _chunks(body: bytes):
    for start in range(0, len(body), STREAM_CHUNK_BYTES):
        yield body[start:start + STREAM_CHUNK_BYTES]


# -- outside Dify: the same routes as a WSGI app (``python -m crossmodal serve``, tests) ------------------------
PATHS = {("POST", "/v1/embed"): "embed", ("POST", "/v1/ingest"): "ingest", ("POST", "/v1/search"): "search",
         ("POST", "/v1/align"): "align", ("POST", "/v1/rerank"): "rerank", ("GET", "/v1/collections"): "collections",
         ("GET", "/openapi.json"): "openapi", ("POST", "/retrieval"): "retrieval", ("GET", "/metrics"): "metrics",
         ("GET", "/viewer"): "viewer", ("GET", "/v1/image"): "image"}


def wsgi_app(settings: Mapping):
    """A WSGI application serving every route with the given endpoint settings (api_key, store, model)."""

    def app(environ, start_response):
        request = Request(environ)
        route = PATHS.get((request.method, request.path.rstrip("/") or "/"))
        if route is None:
            known = {p for _, p in PATHS}
            status = 405 if request.path in known else 404
            response = _json({"error": {"code": _code(status), "message": f"no route {request.method} {request.path}",
                                        "param": None}}, status)
        else:
            response = respond(route, request, settings)
        return response(environ, start_response)

    return app
