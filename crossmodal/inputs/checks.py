"""Checks on what callers send: texts and result counts, with errors that name the parameter and the fix."""

from __future__ import annotations

from crossmodal.errors import CrossmodalError


MAX_TOP_K = 100
MAX_TEXT_CHARS = 10_000


def check_text(text: str | None, param: str) -> str:
    text = (text or "").strip()
    if not text:
        raise CrossmodalError("is empty; give some words", param=param)
    if len(text) > MAX_TEXT_CHARS:
        raise CrossmodalError(f"has {len(text)} characters; at most {MAX_TEXT_CHARS} are allowed", param=param)
    return text


def check_top_k(top_k) -> int:
    try:
        value = int(top_k)
    except (TypeError, ValueError):
        raise CrossmodalError(f"'{top_k}' is not a whole number between 1 and {MAX_TOP_K}", param="top_k") from None
    if not 1 <= value <= MAX_TOP_K or value != float(top_k):
        raise CrossmodalError(f"{top_k} is out of range; use a whole number between 1 and {MAX_TOP_K}", param="top_k")
    return value
