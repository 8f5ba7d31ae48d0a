"""Filters, backend-neutral: the filter JSON users write, the typed readings that let the engine compare numbers
and times as Dify's metadata conditions mean them, and the one walk that turns conditions (store/base.py:
Condition, AllOf, AnyOf, Not) into either store's filter.

The filter grammar (all conditions must hold):
    {"tags": "cat"}                      tag list contains "cat"
    {"tags": ["cat", "dog"]}             contains any of them
    {"width": {"gte": 512, "lt": 4096}}  numeric range (gt, gte, lt, lte)
    {"metadata.album": "2024"}           a user metadata field (dotted path)

Typed readings. Metadata is what users wrote: "pages": "7" is a number to Dify's "≤ 7", "date":
"2024-01-05T00:00:00Z" a time to "before". The engine compares a string only as a string, so every point
carries, beside its payload, ``_filter.number.<name>`` (the number each value reads as: numbers, and strings
that parse as one) and ``_filter.time.<name>`` (the epoch seconds of each ISO 8601 string), for the built-in
fields and each key of ``metadata``; the store adds them on upsert and leaves them out of what it returns.
Numeric and time conditions then are ranges on these fields, exactly as Dify means them.

Payload indexes. A condition the engine cannot serve from a payload index costs it a read of every point's
payload (1.6 ms per 1,000 points here): a scan. So the stores index each metadata key holding text (keyword,
with prefixes: is, start with, contains) and each typed reading (float) as keys first arrive, and any other
path a condition names when it is first filtered on, within the ``payload_indexes`` budget; the embedded store
also lists in collection.json which metadata keys and readings some point has, so that a condition on a field
no point has is known without a query.

What the searcher does with each condition (``engine_form``, crossmodal/search/searcher.py):
- served by an index: in the engine's query, exactly;
- on a field no point has: known false (true for "empty"), no query needed;
- anything else is checked on the engine's nearest ``filter_candidates`` hits (a limit), never on the whole
  collection: "end with" (the engine has prefix and substring matches but no suffix one: it runs the
  substring, indexed), a field past the index budget, and numeric and time conditions on a collection made
  before the typed readings (``CollectionInfo.filter_fields`` False; copying it with ``python -m crossmodal
  collections migrate`` writes them). The engine then runs a superset of the conditions (a subset under a
  Not), so the check sees every point that meets them among those hits.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Protocol

from crossmodal.errors import CrossmodalError
from crossmodal.limits import register
from crossmodal.store.base import AllOf, AnyOf, Condition, Not

RANGE_OPS = {"gt", "gte", "lt", "lte"}
FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
MAX_CONDITIONS = 32
ENGINE_OPS = ("eq", "any", "range", "prefix", "substring", "empty")  # and "suffix", which the searcher relaxes
# A field a Dify condition names is one of these payload fields, or else a key of the item's metadata.
BUILT_IN_FIELDS = ("tags", "source", "kind", "caption", "width", "height", "mime_type", "ingested_at", "text")
FILTER_FIELDS = "_filter"  # the payload object holding the typed readings (never returned)
# A time given as a number is in seconds, or in milliseconds when this large (year 5138 in seconds).
MILLISECONDS_ABOVE = 1e11
PAYLOAD_INDEXES = register(
    "payload_indexes", 32, "indexes", "payload indexes per collection (built-in fields included), made as "
    "metadata keys arrive or are first filtered on; past it, conditions are checked on filter_candidates hits",
    cap=256, minimum=8)
MATCH_ALL, MATCH_NONE = AllOf(()), AnyOf(())
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NUMBER_STARTS = frozenset("0123456789+-.")  # a finite number's text starts with one of these


# -- the filter grammar ------------------------------------------------------------------------------------
def parse_filter(raw: str | dict | None, *, param: str = "filter") -> list[Condition]:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CrossmodalError(
                f"is not valid JSON ({exc.msg} at position {exc.pos}); example: {{\"tags\": [\"cat\"]}}", param=param
            ) from None
    if not isinstance(raw, dict):
        raise CrossmodalError("must be a JSON object such as {\"tags\": [\"cat\"]}", param=param)
    if len(raw) > MAX_CONDITIONS:
        raise CrossmodalError(f"has {len(raw)} conditions; at most {MAX_CONDITIONS} are allowed", param=param)
    return [_condition(key, value, param) for key, value in raw.items()]


def _condition(key: str, value: Any, param: str) -> Condition:
    if not isinstance(key, str) or not FIELD_PATH.match(key):
        raise CrossmodalError(f"field '{key}' is not a valid name (letters, digits, '_' and dots)", param=param)
    if isinstance(value, bool) or isinstance(value, (str, int)):
        return Condition(key, "eq", value)
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) for v in value) and not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise CrossmodalError(f"'{key}' must be a non-empty list of strings or of integers", param=param)
        return Condition(key, "any", list(value))
    if isinstance(value, dict):
        unknown = set(value) - RANGE_OPS
        if unknown or not value:
            raise CrossmodalError(
                f"'{key}' range takes gt, gte, lt, lte; got {sorted(unknown) or 'nothing'}", param=param
            )
        bad = [op for op, v in value.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise CrossmodalError(f"'{key}' range bounds must be numbers ({', '.join(bad)})", param=param)
        return Condition(key, "range", dict(value))
    raise CrossmodalError(
        f"'{key}' must be a string, integer, list or range object, not {type(value).__name__}", param=param
    )


# -- paths ---------------------------------------------------------------------------------------------------
def field_path(*parts: str) -> str:
    """A JSON path the engines read: plain names as they are, others quoted (``metadata."my key"``). Neither
    engine can address a name holding a double quote."""
    if any('"' in part for part in parts):
        raise ValueError("a field name with a double quote cannot be addressed by a filter")
    return ".".join(part if _PLAIN_KEY.match(part) else f'"{part}"' for part in parts)


def path_parts(path: str) -> list[str]:
    return [quoted or plain for quoted, plain in re.findall(r'"([^"]*)"|([^.]+)', path)]


def values_at(payload: dict, path: str) -> list:
    """The values at ``path`` as the engines see them: arrays of objects are crossed, and a final array gives
    its elements (a missing field: none)."""
    current = [payload]
    for part in path_parts(path):
        found = []
        for node in current:
            for item in (node if isinstance(node, list) else [node]):
                if isinstance(item, dict) and part in item:
                    found.append(item[part])
        current = found
    return current


# -- typed readings ------------------------------------------------------------------------------------------
def number_reading(value: Any) -> float | None:
    """A number, or a string that parses as one (``"7"``, ``" 2.5 "``); booleans are not numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str) and len(value) <= 64:
        text = value.strip()
        if not text or text[0] not in _NUMBER_STARTS:  # most text, rejected without an exception
            return None
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def iso_time(value: Any) -> float | None:
    """Epoch seconds of an ISO 8601 date or time (UTC when it names no zone)."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    text = value.strip()
    if not text[:4].isdigit():  # every ISO 8601 date starts with its year
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def time_reading(value: Any) -> float | None:
    """Epoch seconds from a number (seconds, or milliseconds when that large) or an ISO 8601 string."""
    number = number_reading(value)
    if number is not None:
        return number / 1000.0 if number > MILLISECONDS_ABOVE else number
    return iso_time(value)


def named_fields(payload: dict) -> Iterable[tuple[str, Any]]:
    """The fields a condition can name: the built-in ones, then the metadata keys (a built-in name wins)."""
    for name in BUILT_IN_FIELDS:
        if name in payload:
            yield name, payload[name]
    metadata = payload.get("metadata")
    if isinstance(metadata, dict):
        for name, value in metadata.items():
            if name not in BUILT_IN_FIELDS and isinstance(name, str) and '"' not in name:
                yield name, value


def filter_fields(payload: dict) -> dict:
    """The typed readings of a payload (what goes under ``_filter``): each value that reads as a number under
    ``number``, each ISO time string under ``time``; lists value by value."""
    numbers, times = {}, {}
    for name, value in named_fields(payload):
        elements = value if isinstance(value, list) else [value]
        read = [n for n in map(number_reading, elements) if n is not None]
        if read:
            numbers[name] = read
        dated = [t for e in elements if number_reading(e) is None and (t := iso_time(e)) is not None]
        if dated:
            times[name] = dated
    return {kind: found for kind, found in (("number", numbers), ("time", times)) if found}


def with_filter_fields(payload: dict) -> dict:
    """The payload as stored: with its typed readings."""
    readings = filter_fields(payload)
    payload = {k: v for k, v in payload.items() if k != FILTER_FIELDS}
    return {**payload, FILTER_FIELDS: readings} if readings else payload


def index_plan(payload: dict) -> dict[str, str]:
    """The payload indexes a stored payload calls for, {path: "keyword" | "float"}: a keyword index on each
    metadata key holding text (prefix-enabled: is, start with and contains use it), a float index on each
    typed reading (numeric and time conditions)."""
    plan = {}
    metadata = payload.get("metadata")
    if isinstance(metadata, dict):
        for name, value in metadata.items():
            elements = value if isinstance(value, list) else [value]
            if isinstance(name, str) and '"' not in name and any(isinstance(e, str) for e in elements):
                plan[field_path("metadata", name)] = "keyword"
    for kind, readings in (payload.get(FILTER_FIELDS) or {}).items():
        for name in readings:
            plan[field_path(FILTER_FIELDS, kind, name)] = "float"
    return plan


def new_indexes(payloads: Iterable[dict], indexed, budget: int) -> dict[str, str]:
    """Which of the indexes these stored payloads call for are still to be made, within ``budget`` in all
    (``indexed``: the paths that have one)."""
    wanted: dict[str, str] = {}
    for payload in payloads:
        for path, kind in index_plan(payload).items():
            if path not in indexed and path not in wanted and len(indexed) + len(wanted) < budget:
                wanted[path] = kind
    return wanted


def indexes_to_make(wanted: dict[str, str], fields) -> dict[str, str]:
    """Of the indexes conditions want (``wanted_indexes``), those a store is to make now: for a path that has
    none, or a keyword one without the prefixes that prefix and substring matches need (remade with them), and
    that some point has (when the store knows). An index of another kind stays: other filters use it."""
    def to_make(path: str, kind: str) -> bool:
        existing = fields.indexed.get(path)
        if not (existing is None or (existing == "keyword_exact" and kind == "keyword")):
            return False
        return fields.present is None or not is_dynamic(path) or path in fields.present

    return {path: kind for path, kind in wanted.items() if to_make(path, kind)}


def present_paths(payload: dict) -> set[str]:
    """The dynamic paths a stored payload has: each metadata key (any value) and each typed reading."""
    metadata = payload.get("metadata")
    paths = {field_path("metadata", name) for name in (metadata if isinstance(metadata, dict) else ())
             if isinstance(name, str) and '"' not in name}
    for kind, readings in (payload.get(FILTER_FIELDS) or {}).items():
        paths.update(field_path(FILTER_FIELDS, kind, name) for name in readings)
    return paths


def is_dynamic(path: str) -> bool:
    """A path under metadata or the typed readings: one whose presence a store can track."""
    parts = path_parts(path)
    return len(parts) >= 2 and parts[0] in ("metadata", FILTER_FIELDS)


def wanted_indexes(conditions) -> dict[str, str]:
    """The index each condition's path needs for the engine to serve it: float for ranges, keyword (with
    prefixes) for the rest."""
    wanted = {}
    for leaf in leaves(conditions):
        wanted.setdefault(leaf.key, "float" if leaf.op == "range" else "keyword")
    return wanted


def leaves(conditions) -> Iterable[Condition]:
    for node in conditions:
        if isinstance(node, Condition):
            yield node
        elif isinstance(node, Not):
            yield from leaves([node.condition])
        else:
            yield from leaves(node.conditions)


def public_payload(payload) -> dict:
    """A stored payload as callers see it: without the typed readings."""
    return {k: v for k, v in (payload or {}).items() if k != FILTER_FIELDS}


# -- evaluating conditions on one payload (what the engines do, for the bounded checks) ---------------------
def matches(node, payload: dict) -> bool:
    if isinstance(node, Condition):
        return _leaf_matches(node, values_at(payload, node.key))
    if isinstance(node, AllOf):
        return all(matches(c, payload) for c in node.conditions)
    if isinstance(node, AnyOf):
        return any(matches(c, payload) for c in node.conditions)
    if isinstance(node, Not):
        return not matches(node.condition, payload)
    raise TypeError(f"not a condition: {node!r}")


def _leaf_matches(c: Condition, raw: list) -> bool:
    if c.op == "empty":
        return all(v is None or v == [] for v in raw)
    values = [e for v in raw for e in (v if isinstance(v, list) else [v])]
    if c.op == "eq":
        return any(_same(v, c.value) for v in values)
    if c.op == "any":
        return any(_same(v, wanted) for v in values for wanted in c.value)
    if c.op == "range":
        return any(_in_range(v, c.value) for v in values)
    text = {"prefix": str.startswith, "substring": str.__contains__, "suffix": str.endswith}.get(c.op)
    if text is None:
        raise ValueError(f"unknown condition op '{c.op}'")
    return any(isinstance(v, str) and text(v, c.value) for v in values)


def _same(value, wanted) -> bool:
    """The engines' exact match: strings, integers and booleans each only equal their own kind."""
    return type(value) is type(wanted) and value == wanted


def _in_range(value, bounds: dict) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return all({"gt": value > b, "gte": value >= b, "lt": value < b, "lte": value <= b}[op]
               for op, b in bounds.items())


@dataclass(frozen=True)
class PayloadFilter:
    """Conditions on a point's payload that the engine runs (Dify's metadata conditions,
    crossmodal/api/knowledge.py). Called on one returned payload it says whether the point meets them, with the
    engine's meaning (its typed readings computed from the payload): the bounded check of what the engine
    could not say exactly."""

    conditions: tuple

    def __call__(self, payload: dict) -> bool:
        typed = {**payload, FILTER_FIELDS: filter_fields(payload)}
        return all(matches(c, typed) for c in self.conditions)


# -- what the engine runs ------------------------------------------------------------------------------------
ENGINE, ABSENT, CHECK = "engine", "absent", "check"  # what the engine does with one condition (engine_form)


def engine_form(conditions, verdict: Callable[[Condition], str]) -> tuple[list | None, bool]:
    """The conditions the engine runs for these, and whether they say the same. ``verdict`` says for each
    condition: ENGINE (the engine serves it from an index), ABSENT (no point has its field: it is known false,
    or true for "empty") or CHECK (it is checked on the engine's hits instead: it becomes a superset of itself,
    a suffix the substring when the engine serves that and anything else no restriction, or, under a Not, a
    subset: nothing). What the engine returns then includes every point that meets the conditions. None:
    nothing can meet them (no query is needed)."""
    checked = []

    def rewrite(leaf: Condition, widen: bool):
        judged = verdict(leaf)
        if judged == ENGINE:
            return leaf
        if judged == ABSENT:
            return MATCH_ALL if leaf.op == "empty" else MATCH_NONE
        checked.append(leaf)
        if not widen:
            return MATCH_NONE
        substring = Condition(leaf.key, "substring", leaf.value)
        return substring if leaf.op == "suffix" and verdict(substring) == ENGINE else MATCH_ALL

    relaxed = _relax(AllOf(tuple(conditions)), True, rewrite)
    if relaxed == MATCH_NONE:
        return None, not checked
    return (list(relaxed.conditions) if isinstance(relaxed, AllOf) else [relaxed]), not checked


def _relax(node, widen: bool, rewrite):
    if isinstance(node, Condition):
        return rewrite(node, widen)
    if isinstance(node, Not):
        inner = _relax(node.condition, not widen, rewrite)
        return MATCH_NONE if inner == MATCH_ALL else MATCH_ALL if inner == MATCH_NONE else Not(inner)
    parts = [_relax(c, widen, rewrite) for c in node.conditions]
    if isinstance(node, AllOf):
        if MATCH_NONE in parts:
            return MATCH_NONE
        kept = tuple(p for p in parts if p != MATCH_ALL)
        return AllOf(kept) if len(kept) != 1 else kept[0]
    if MATCH_ALL in parts:
        return MATCH_ALL
    kept = tuple(p for p in parts if p != MATCH_NONE)
    return AnyOf(kept) if len(kept) != 1 else kept[0]


def verdict_for(fields, typed: bool) -> Callable[[Condition], str]:
    """The verdicts for a collection: typed readings of a collection made without them are checked; a path no
    point has is absent; an indexed path the index serves is the engine's; anything else is checked (the
    engine would read every point's payload for it)."""
    def verdict(leaf: Condition) -> str:
        if leaf.key.startswith(FILTER_FIELDS + ".") and not typed:
            return CHECK
        if fields.present is not None and is_dynamic(leaf.key) and leaf.key not in fields.present:
            return ABSENT
        return ENGINE if leaf.op != "suffix" and fields.serves(leaf) else CHECK

    return verdict


class FilterBuilder(Protocol):
    """One store's filter objects (edge.py and remote.py each have one)."""

    def field(self, condition: Condition): ...

    def group(self, must: list = (), should: list = (), must_not: list = ()): ...


def engine_filter(conditions, builder: FilterBuilder):
    """The store's filter for these conditions (all must hold), or None for none."""
    if not conditions:
        return None
    return builder.group(must=[_build(c, builder) for c in conditions])


def _build(node, builder: FilterBuilder):
    if isinstance(node, Condition):
        if node.op not in ENGINE_OPS:
            raise ValueError(f"condition op '{node.op}' has no engine form; relax it first (engine_form)")
        return builder.field(node)
    if isinstance(node, AllOf):
        return builder.group(must=[_build(c, builder) for c in node.conditions])
    if isinstance(node, AnyOf):
        return builder.group(should=[_build(c, builder) for c in node.conditions])
    if isinstance(node, Not):
        return builder.group(must_not=[_build(node.condition, builder)])
    raise TypeError(f"not a condition: {node!r}")
