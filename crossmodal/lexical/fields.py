"""Which of an item's payload fields its lexical vector reads, and the text they make."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crossmodal.errors import CrossmodalError

# The payload fields a document's lexical vector is built from, in this order: the caption, the text of a
# text item or of a PDF page's text layer, the text OCR read (``ocr_text``), tags, the user's metadata values
# (every string and number under ``metadata``) and the file name (``source``: people search for the code or
# the name a file carries). A dotted path picks one key of a mapping: "metadata.sku".
DEFAULT_TEXT_FIELDS = ("caption", "text", "ocr_text", "tags", "metadata", "source")
MAX_FIELD_DEPTH = 4  # metadata nested deeper than this is not read (a mapping of mappings of lists ...)


def document_text(payload: dict[str, Any], fields: Sequence[str] = DEFAULT_TEXT_FIELDS) -> str:
    """The text of ``fields`` in ``payload``, one value a line; missing fields and empty values are skipped,
    and a value met twice (a caption repeated as text) counts once."""
    if isinstance(fields, str) or not fields or not all(isinstance(f, str) and f.strip() for f in fields):
        raise CrossmodalError(f"expected a list of payload field names such as {list(DEFAULT_TEXT_FIELDS)}, "
                              f"got {fields!r}", param="fields")
    seen: dict[str, None] = {}
    for field in fields:
        for value in _strings(_lookup(payload, field.strip()), MAX_FIELD_DEPTH):
            seen.setdefault(value, None)
    return "\n".join(seen)


def _lookup(payload: Any, path: str) -> Any:
    value = payload
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _strings(value: Any, depth: int) -> list[str]:
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [str(value)]
    if depth == 0:
        return []
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v, depth - 1)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v, depth - 1)]
    return []
