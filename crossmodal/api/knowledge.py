"""Dify's External Knowledge API over a collection: records an LLM can read, relevance scores and metadata
conditions as Dify sends them.

A record's ``content`` is the item's text as an LLM should read it (caption, page text or text layer, OCR text:
crossmodal.ingest.ocr.item_text); only an item with no text at all falls back to its file name. With the endpoint
setting ``record_images``, a record of a picture also carries it as a markdown image (and ``metadata.image_url``)
whose URL is signed and expires (crossmodal/api/image_links.py), so that a chatflow's answer can show it.

The endpoint setting ``retrieval_mode`` (auto, hybrid, dense, lexical) and ``retrieval_fusion`` (rrf, dbsf) choose
how the collection is searched (crossmodal/search/searcher.py; auto: hybrid when the collection has text).
Dify compares ``score`` with a 0-1 ``score_threshold`` (its UI's default is 0.5). A dense hit's score is the
align node's calibrated match probability of its cosine (crossmodal/alignment/calibration.py; the raw cosine goes
in its metadata). A lexical or hybrid hit's is the fused score on 0-1 (crossmodal.store.base.fused_score): with
RRF a rank, not a similarity: 1 for a hit first in both lists, 0.5 for one first in one list only (docs/hybrid.md).

``metadata_condition`` ({"logical_operator": "and" | "or", "conditions": [{"name", "comparison_operator",
"value"}] | null}) becomes the store's own filter, run inside the engine's query (store/filters.py): a name is
a built-in field (tags, source, kind, caption, width, height, mime_type, ingested_at, text) or a key of the
item's metadata.
- Text operators (contains, not contains, start with, end with, is, is not) compare text values (a list: one of
  its strings; "not contains" and "is not": none of them), case-sensitively. A number stored as a number is
  not text to them; compare it with = and ≠.
- Number operators (= ≠ > < ≥ ≤) read numbers and strings that parse as one ("7"); a list meets them when one
  of its values does (≠: when none equals).
- Time operators (before, after) read ISO 8601 strings and numbers (epoch seconds, or milliseconds when above
  10^11).
- empty: missing, null, an empty list, or the empty string; not empty: anything else.
Each runs in the engine's query, exactly, from a payload index, except "end with" (the engine finds the
substring; the ending is checked on at most ``filter_candidates`` hits), fields past the ``payload_indexes``
budget and numbers and times in a collection made before the typed readings (checked the same way):
crossmodal/store/filters.py.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from crossmodal.errors import CrossmodalError
from crossmodal.store.base import AnyOf, Condition, Not
from crossmodal.store.filters import (BUILT_IN_FIELDS, FILTER_FIELDS, MAX_CONDITIONS, MILLISECONDS_ABOVE,
                                      PayloadFilter, field_path, number_reading, time_reading)

TEXT_OPERATORS = ("contains", "not contains", "start with", "end with", "is", "is not", "empty", "not empty")
NUMBER_OPERATORS = {"=": "eq", "≠": "ne", "!=": "ne", ">": "gt", "<": "lt", "≥": "gte", ">=": "gte", "≤": "lte",
                    "<=": "lte"}
TIME_OPERATORS = ("before", "after")
OPERATORS = (*TEXT_OPERATORS, *NUMBER_OPERATORS, *TIME_OPERATORS)
TEXT_MATCHES = {"contains": "substring", "start with": "prefix", "end with": "suffix", "is": "eq"}
NEGATED = {"not contains": "contains", "is not": "is"}  # a list holds these when no element breaks the positive


RETRIEVAL_MODES = ("auto", "hybrid", "dense", "lexical")
PAYLOAD_LEFT_OUT = ("text", "ocr_text", "ocr_lines", "thumbnail")  # in the content already, or too large for Dify


def endpoint_options(request, settings: Mapping) -> tuple[dict, Any]:
    """The endpoint's retrieval settings (checked, each error naming its setting) and, with ``record_images``, the
    signer of picture links for this request (crossmodal/api/image_links.py)."""
    from crossmodal.api.image_links import HOOK_URL_HEADER, ImageLinks
    from crossmodal.store.base import FUSIONS

    settings = settings or {}
    mode = str(settings.get("retrieval_mode") or "auto").strip().lower()
    if mode not in RETRIEVAL_MODES:
        raise CrossmodalError(f"'{mode}' is not one of {', '.join(RETRIEVAL_MODES)}; fix it in the endpoint's "
                              "settings", param="retrieval_mode")
    fusion = str(settings.get("retrieval_fusion") or "rrf").strip().lower()
    if fusion not in FUSIONS:
        raise CrossmodalError(f"'{fusion}' is not one of {', '.join(FUSIONS)}; fix it in the endpoint's settings",
                              param="retrieval_fusion")
    links = None
    if str(settings.get("record_images") or "").strip().lower() in ("true", "1", "yes", "on"):
        links = ImageLinks.for_endpoint(settings, request.headers.get(HOOK_URL_HEADER), request.path,
                                        request.host_url + request.script_root.lstrip("/"))
    return {"retrieval_mode": mode, "retrieval_fusion": fusion}, links


def knowledge_records(result: dict, calibration, links=None) -> list[dict]:
    """External Knowledge records of a search's hits: the item's text as content, a 0-1 score, its metadata."""
    from crossmodal.ingest.ocr import item_text

    dense = result.get("mode", "dense") == "dense"
    records = []
    for hit in result["results"]:
        payload = hit["payload"]
        title = payload.get("source") or hit["id"]
        content = item_text(payload) or title  # a file name only when the item has no text at all
        metadata = {k: v for k, v in payload.items() if k not in PAYLOAD_LEFT_OUT}
        metadata.update(id=hit["id"], source=payload.get("source"), kind=payload.get("kind"))
        if dense:
            metadata["cosine"] = hit["score"]
            score = calibration.probability(hit["score"])
        else:
            metadata["retrieval"] = {"mode": result["mode"], "fusion": result.get("fusion")}
            score = hit["score"]
        if links is not None and payload.get("kind") == "image" and "parent_id" not in payload:
            metadata["image_url"] = links.url(result["collection"], hit["id"])
            alt = re.sub(r"[\[\]\n]", " ", str(title))[:100]
            content = f"{content}\n\n![{alt}]({metadata['image_url']})"
        records.append({"content": content, "score": round(float(score), 6), "title": title, "metadata": metadata})
    return records


def metadata_predicate(condition: Any, param: str = "metadata_condition") -> PayloadFilter | None:
    """The store filter for Dify's metadata_condition, or None for no filter; calling it tests one payload.
    Unknown operators and values that do not fit them are errors naming the condition."""
    if condition is None:
        return None
    if not isinstance(condition, dict):
        raise CrossmodalError("must be an object with logical_operator and conditions", param=param)
    conditions = condition.get("conditions")
    if conditions is None or conditions == []:
        return None
    if not isinstance(conditions, list):
        raise CrossmodalError("conditions must be a list (or null for no filter)", param=param)
    if len(conditions) > MAX_CONDITIONS:
        raise CrossmodalError(f"has {len(conditions)} conditions; at most {MAX_CONDITIONS} are allowed", param=param)
    logic = str(condition.get("logical_operator") or "and").lower()
    if logic not in ("and", "or"):
        raise CrossmodalError(f"'{logic}' is not and / or", param=f"{param}.logical_operator")
    parts = tuple(_condition(c, f"{param}.conditions[{k}]") for k, c in enumerate(conditions))
    return PayloadFilter(parts if logic == "and" else (AnyOf(parts),))


def _condition(raw: Any, param: str):
    if not isinstance(raw, dict):
        raise CrossmodalError("must be an object with name, comparison_operator and value", param=param)
    names = raw.get("name")
    names = names if isinstance(names, list) else [names]
    if not names or len(names) > MAX_CONDITIONS or not all(isinstance(n, str) and n for n in names):
        raise CrossmodalError(f"name must be a metadata field name (or a list of at most {MAX_CONDITIONS})",
                              param=param)
    if any('"' in n for n in names):
        raise CrossmodalError("a field name with a double quote cannot be filtered on; rename the metadata key",
                              param=param)
    op, value = raw.get("comparison_operator"), raw.get("value")
    if op not in OPERATORS:
        raise CrossmodalError(f"operator '{op}' is not one of {', '.join(OPERATORS)}", param=param)
    if op not in ("empty", "not empty") and value is None:
        raise CrossmodalError(f"operator '{op}' needs a value", param=param)
    # Several names (Dify's older shape): the condition holds when it holds for any of them.
    tests = tuple(_comparison(op, value, name, param) for name in names)
    return tests[0] if len(tests) == 1 else AnyOf(tests)


def field_key(name: str) -> str:
    """Where a named field lives in the payload: a built-in field, else a key of the metadata."""
    return name if name in BUILT_IN_FIELDS else field_path("metadata", name)


def _comparison(op: str, value: Any, name: str, param: str):
    if op in NUMBER_OPERATORS:
        return _number_comparison(NUMBER_OPERATORS[op], op, value, name, param)
    if op in TIME_OPERATORS:
        return _time_comparison(op, value, name, param)
    key = field_key(name)
    if op in ("empty", "not empty"):
        empty = AnyOf((Condition(key, "empty"), Condition(key, "eq", "")))
        return empty if op == "empty" else Not(empty)
    text = _text(value)
    if op in NEGATED:
        return Not(Condition(key, TEXT_MATCHES[NEGATED[op]], text))
    return Condition(key, TEXT_MATCHES[op], text)


def _number_comparison(kind: str, op: str, value: Any, name: str, param: str):
    wanted = number_reading(value)
    if wanted is None:
        raise CrossmodalError(f"operator '{op}' compares numbers; '{value}' is not one", param=param)
    key = field_path(FILTER_FIELDS, "number", name)
    if kind in ("eq", "ne"):
        equal = Condition(key, "range", {"gte": wanted, "lte": wanted})
        return equal if kind == "eq" else Not(equal)
    return Condition(key, "range", {kind: wanted})


def _time_comparison(op: str, value: Any, name: str, param: str):
    """A number reads as seconds, or milliseconds above 10^11: one range for each reading, on the typed fields."""
    wanted = time_reading(value)
    if wanted is None:
        raise CrossmodalError(f"operator '{op}' compares times; '{value}' is neither a timestamp nor an ISO "
                              "date", param=param)
    numbers, times = field_path(FILTER_FIELDS, "number", name), field_path(FILTER_FIELDS, "time", name)
    if op == "before":
        ranges = ((numbers, {"lt": wanted, "lte": MILLISECONDS_ABOVE}),
                  (numbers, {"gt": MILLISECONDS_ABOVE, "lt": wanted * 1000.0}), (times, {"lt": wanted}))
    else:
        ranges = ((numbers, {"gt": wanted, "lte": MILLISECONDS_ABOVE}),
                  (numbers, {"gt": max(MILLISECONDS_ABOVE, wanted * 1000.0)}), (times, {"gt": wanted}))
    return AnyOf(tuple(Condition(key, "range", bounds) for key, bounds in ranges))


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 3.0 is "3", as Dify writes it
    return str(value)
