"""Parsing the filter JSON users write into backend-neutral conditions.

Grammar (all conditions must hold):
    {"tags": "cat"}                      tag list contains "cat"
    {"tags": ["cat", "dog"]}             contains any of them
    {"width": {"gte": 512, "lt": 4096}}  numeric range (gt, gte, lt, lte)
    {"metadata.album": "2024"}           a user metadata field (dotted path)
"""

from __future__ import annotations

import json
import re
from typing import Any

from crossmodal.errors import CrossmodalError
from crossmodal.store.base import Condition

RANGE_OPS = {"gt", "gte", "lt", "lte"}
FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
MAX_CONDITIONS = 32


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
