"""Which model serves a request when the user leaves the model on ``auto``.

Order: a model named in the node wins; then a collection's own model (its vectors were made by it);
then the provider's model setting when it is not ``auto``; then the route table, by the query's language
(text with Chinese, Japanese or Korean characters -> the ``zh`` route, a Chinese-capable encoder; other
text and images -> ``default``). Reranking routes by task (``cross_encoder`` for text candidates, ``itm``
for an image-text matching head; with no ``itm`` route, image candidates are rescored by region).
Every answer carries the route and why it was taken.

The table is JSON in the provider's ``routes`` credential; missing keys keep their defaults:
    {"default": "clip-vit-base-patch32", "zh": "chinese-clip",
     "cross_encoder": "cross-encoder/ms-marco-MiniLM-L-6-v2", "itm": "Salesforce/blip-itm-base-coco"}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from crossmodal.errors import CrossmodalError

DEFAULT_ROUTES = {
    "default": "clip-vit-base-patch32",
    "zh": "chinese-clip",
    "cross_encoder": "cross-encoder/ms-marco-MiniLM-L-6-v2",
    "itm": None,  # set it to use BLIP ITM for image candidates under method auto
}
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


@dataclass(frozen=True)
class Route:
    model: str
    reason: str
    route: str

    def as_dict(self) -> dict:
        return {"route": self.route, "model": self.model, "reason": self.reason}


def parse_routes(raw: str | dict | None) -> dict:
    routes = dict(DEFAULT_ROUTES)
    if raw in (None, ""):
        return routes
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CrossmodalError(f"is not valid JSON ({exc.msg}); example: "
                                  '{"default": "clip-vit-base-patch32", "zh": "chinese-clip"}', param="routes") from None
    if not isinstance(raw, dict):
        raise CrossmodalError('must be a JSON object such as {"zh": "chinese-clip"}', param="routes")
    unknown = set(raw) - set(DEFAULT_ROUTES)
    if unknown:
        raise CrossmodalError(f"unknown route(s) {sorted(unknown)}; known: {', '.join(DEFAULT_ROUTES)}",
                              param="routes")
    for key, value in raw.items():
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise CrossmodalError(f"route '{key}' must name a model (preset, hub id or directory)", param="routes")
        routes[key] = value.strip() if isinstance(value, str) else None
    return routes


def language_of(text: str | None) -> str:
    """'zh' when the text holds CJK characters (a Chinese-capable encoder reads them), else 'en'."""
    return "zh" if text and CJK.search(text) else "en"


def route_encoder(routes: dict, *, asked: str | None, provider_model: str | None, text: str | None = None,
                  collection_model: str | None = None) -> Route:
    if asked and asked != "auto":
        return Route(asked, "named in the request", "explicit")
    if collection_model:
        return Route(collection_model, "the collection's own model (its vectors were made by it)", "collection")
    if provider_model and provider_model != "auto":
        return Route(provider_model, "the provider's model setting", "provider")
    if language_of(text) == "zh":
        return Route(routes["zh"], "the query has CJK characters: Chinese-capable encoder", "zh")
    return Route(routes["default"], "default route" + (" (no text to read the language from)" if not text else ""),
                 "default")
