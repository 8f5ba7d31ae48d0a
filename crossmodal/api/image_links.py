"""Signed, expiring links to an item's picture, for External Knowledge records a chat can show.

A record may carry a markdown image whose URL is the plugin's own endpoint (``GET /v1/image``), signed so that a
browser needs no bearer header and nobody can ask for anything else: the query names the collection, the point
id and the expiry, and ``s`` is HMAC-SHA256 over the three with a key derived from the endpoint's api_key (the
worker process never sees the api_key itself). A link without a valid signature, past its expiry, or expiring
later than ``image_link_seconds`` from now (the admin lowered it) is answered 403; a valid one serves the
point's stored thumbnail (a 384-px JPEG) and nothing else: no path is taken from the request, and the point id
must be a UUID, as every point's is.

Where the endpoint is reachable: Dify's plugin daemon forwards ``/e/{hook_id}/...`` to the plugin with the path
cut to the endpoint's own (``/retrieval``) and adds ``Dify-Hook-Url: {scheme}://{Host}/e/{hook_id}{path}``, its
Host being the one the caller used (``X-Original-Host``) and its scheme http unless the daemon saw TLS or
``X-Forwarded-Proto: https`` (dify-plugin-daemon internal/service/endpoint.go, copyRequest). For External
Knowledge the caller is Dify's API server, through its SSRF proxy, at whatever URL the admin typed into the
knowledge base's API settings, often an internal name (``http://nginx/e/...``) that no browser resolves. So the
endpoint setting ``public_url`` (the endpoint's URL as browsers reach it, ``https://dify.example.com/e/<hook>``)
comes first; without it the daemon's header is used, and outside Dify (``python -m crossmodal serve``) the
request's own URL.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
import time
from typing import Mapping
from urllib.parse import quote, urlsplit

from crossmodal.errors import CrossmodalError
from crossmodal.limits import limit, register

IMAGE_PATH = "/v1/image"
HOOK_URL_HEADER = "Dify-Hook-Url"  # set by Dify's plugin daemon on every endpoint request it forwards
KEY_CONTEXT = b"crossmodal image links v1"
IMAGE_LINK_SECONDS = register(
    "image_link_seconds", 86_400, "s", "how long a picture link in an External Knowledge record stays valid "
    "(the endpoint's record_images); past it the link answers 403", cap=30 * 86_400, minimum=60, workspace=True)
UUID_TEXT = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# Seconds since the epoch in ASCII digits; str.isdigit() would pass "³", which int() refuses, and int() refuses
# more than 4,300 digits.
EXPIRY_TEXT = re.compile(r"[0-9]{1,12}")


class LinkRefused(CrossmodalError):
    """A link that does not open: always 403, whatever was wrong with it (a prober learns nothing)."""

    def __init__(self, reason: str):
        super().__init__(f"this picture link is not valid ({reason}); ask the knowledge base again for a new one",
                         param="s", status=403)


@dataclasses.dataclass(frozen=True)
class ImageLinks:
    """Signs and checks picture links of one endpoint: ``base_url`` (where browsers reach it), the derived key."""

    base_url: str
    key: bytes = dataclasses.field(repr=False)

    @classmethod
    def for_endpoint(cls, settings: Mapping, hook_url: str | None, path: str, request_root: str) -> "ImageLinks":
        return cls(public_base(settings, hook_url, path, request_root), derived_key(settings))

    def url(self, collection: str, point_id: str, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + limit("image_link_seconds"))
        signature = sign(self.key, collection, point_id, expires)
        return f"{self.base_url}{IMAGE_PATH}?c={quote(collection)}&id={point_id}&e={expires}&s={signature}"

    def check(self, query: Mapping, now: float | None = None) -> tuple[str, str]:
        """(collection, point id) of a link's query, or LinkRefused."""
        return check_link(self.key, query, now)


def derived_key(settings: Mapping) -> bytes:
    """The signing key, from the endpoint's api_key (its secret); no key, no links."""
    api_key = str((settings or {}).get("api_key") or "")
    if not api_key:
        raise LinkRefused("the endpoint has no api_key to sign with")
    return hmac.new(api_key.encode(), KEY_CONTEXT, hashlib.sha256).digest()


def sign(key: bytes, collection: str, point_id: str, expires: int) -> str:
    digest = hmac.new(key, f"{collection}\n{point_id}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def check_link(key: bytes, query: Mapping, now: float | None = None) -> tuple[str, str]:
    collection, point_id = str(query.get("c") or ""), str(query.get("id") or "")
    expires, signature = str(query.get("e") or ""), str(query.get("s") or "")
    if not (collection and point_id and EXPIRY_TEXT.fullmatch(expires) and signature):
        raise LinkRefused("it lacks its collection, id, expiry or signature")
    if not hmac.compare_digest(sign(key, collection, point_id, int(expires)).encode(), signature.encode()):
        raise LinkRefused("its signature does not match")
    now = time.time() if now is None else now
    if int(expires) < now:
        raise LinkRefused("it has expired")
    if int(expires) > now + limit("image_link_seconds") + 60:  # a link made before the lifetime was shortened
        raise LinkRefused("it outlives the link lifetime now set")
    if not UUID_TEXT.match(point_id):
        raise LinkRefused("its id is not a point id")
    return collection, point_id


def public_base(settings: Mapping, hook_url: str | None, path: str, request_root: str) -> str:
    """The endpoint's URL without the route: the ``public_url`` setting, else the daemon's Dify-Hook-Url with the
    request's path cut off, else the request's own root."""
    configured = str((settings or {}).get("public_url") or "").strip()
    if configured:
        parts = urlsplit(configured)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise CrossmodalError(f"'{configured}' is not the endpoint's URL as browsers reach it, such as "
                                  "https://dify.example.com/e/<hook id>; fix it in the endpoint's settings",
                                  param="public_url")
        return configured.rstrip("/")
    if hook_url and path and hook_url.endswith(path):
        return hook_url[: -len(path)].rstrip("/")
    return request_root.rstrip("/")
