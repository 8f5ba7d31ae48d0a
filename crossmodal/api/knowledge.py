"""Dify's External Knowledge API over a collection: relevance scores and metadata conditions as Dify sends them.

Dify compares ``score`` with a 0-1 ``score_threshold`` (its UI's default is 0.5), so a record's score is the
align node's calibrated match probability of its cosine (crossmodal/alignment/calibration.py), and the raw cosine goes
in its metadata. The probability rises with the cosine, so the threshold becomes a cosine bound that the
store applies.

``metadata_condition`` ({"logical_operator": "and" | "or", "conditions": [{"name", "comparison_operator",
"value"}] | null}) becomes a predicate on each hit's payload: a name is a built-in field (tags, source, kind,
caption, width, height, mime_type, ingested_at) or a key of the item's metadata.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Callable

from crossmodal.errors import CrossmodalError

BUILT_IN_FIELDS = ("tags", "source", "kind", "caption", "width", "height", "mime_type", "ingested_at", "text")
TEXT_OPERATORS = ("contains", "not contains", "start with", "end with", "is", "is not", "empty", "not empty")
NUMBER_OPERATORS = {"=": "eq", "≠": "ne", "!=": "ne", ">": "gt", "<": "lt", "≥": "ge", ">=": "ge", "≤": "le",
                    "<=": "le"}
TIME_OPERATORS = ("before", "after")
OPERATORS = (*TEXT_OPERATORS, *NUMBER_OPERATORS, *TIME_OPERATORS)

Predicate = Callable[[dict], bool]


def cosine_bound(threshold: float | None, a: float, b: float) -> float | None:
    """The cosine at which sigmoid(a * cosine + b) reaches ``threshold``; None when every cosine does."""
    if threshold is None or threshold <= 0.0:
        return None
    if threshold >= 1.0:
        return math.inf
    return (math.log(threshold / (1.0 - threshold)) - b) / a


def metadata_predicate(condition: Any, param: str = "metadata_condition") -> Predicate | None:
    """A predicate for Dify's metadata_condition, or None for no filter. Unknown operators are errors."""
    if condition is None:
        return None
    if not isinstance(condition, dict):
        raise CrossmodalError("must be an object with logical_operator and conditions", param=param)
    conditions = condition.get("conditions")
    if conditions is None or conditions == []:
        return None
    if not isinstance(conditions, list):
        raise CrossmodalError("conditions must be a list (or null for no filter)", param=param)
    logic = str(condition.get("logical_operator") or "and").lower()
    if logic not in ("and", "or"):
        raise CrossmodalError(f"'{logic}' is not and / or", param=f"{param}.logical_operator")
    tests = [_condition(c, f"{param}.conditions[{k}]") for k, c in enumerate(conditions)]
    combine = all if logic == "and" else any
    return lambda payload: combine(test(payload) for test in tests)


def _condition(raw: Any, param: str) -> Predicate:
    if not isinstance(raw, dict):
        raise CrossmodalError("must be an object with name, comparison_operator and value", param=param)
    names = raw.get("name")
    names = names if isinstance(names, list) else [names]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise CrossmodalError("name must be a metadata field name", param=param)
    op, value = raw.get("comparison_operator"), raw.get("value")
    if op not in OPERATORS:
        raise CrossmodalError(f"operator '{op}' is not one of {', '.join(OPERATORS)}", param=param)
    if op not in ("empty", "not empty") and value is None:
        raise CrossmodalError(f"operator '{op}' needs a value", param=param)
    compare = _comparison(op, value, param)
    # Several names (Dify's older shape): the condition holds when it holds for any of them.
    return lambda payload: any(compare(field_value(payload, name)) for name in names)


def field_value(payload: dict, name: str) -> Any:
    if name in BUILT_IN_FIELDS:
        return payload.get(name)
    metadata = payload.get("metadata") or {}
    return metadata.get(name) if isinstance(metadata, dict) else None


def _comparison(op: str, value: Any, param: str) -> Callable[[Any], bool]:
    if op in ("empty", "not empty"):
        return (lambda v: _is_empty(v)) if op == "empty" else (lambda v: not _is_empty(v))
    if op in NUMBER_OPERATORS:
        wanted = _number(value)
        if wanted is None:
            raise CrossmodalError(f"operator '{op}' compares numbers; '{value}' is not one", param=param)
        check = {"eq": lambda x: x == wanted, "ne": lambda x: x != wanted, "gt": lambda x: x > wanted,
                 "lt": lambda x: x < wanted, "ge": lambda x: x >= wanted, "le": lambda x: x <= wanted}[
            NUMBER_OPERATORS[op]]
        if NUMBER_OPERATORS[op] == "ne":
            return lambda v: _number(v) is None or check(_number(v))
        return lambda v: _number(v) is not None and check(_number(v))
    if op in TIME_OPERATORS:
        wanted_time = _time(value)
        if wanted_time is None:
            raise CrossmodalError(f"operator '{op}' compares times; '{value}' is neither a timestamp nor an ISO "
                                  "date", param=param)
        if op == "before":
            return lambda v: _time(v) is not None and _time(v) < wanted_time
        return lambda v: _time(v) is not None and _time(v) > wanted_time
    text = str(value)
    match = {
        "contains": lambda s: text in s,
        "not contains": lambda s: text not in s,
        "start with": lambda s: s.startswith(text),
        "end with": lambda s: s.endswith(text),
        "is": lambda s: s == text,
        "is not": lambda s: s != text,
    }[op]
    if op in ("not contains", "is not"):  # a list holds it when no element breaks it
        return lambda v: all(match(s) for s in _strings(v))
    return lambda v: any(match(s) for s in _strings(v))


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [_text(v) for v in value if v is not None]
    return [_text(value)]


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 3.0 is "3", as Dify writes it
    return str(value)


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _time(value: Any) -> float | None:
    """Epoch seconds from a number (seconds, or milliseconds when that large) or an ISO 8601 string."""
    number = _number(value)
    if number is not None:
        return number / 1000.0 if number > 1e11 else number
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()
