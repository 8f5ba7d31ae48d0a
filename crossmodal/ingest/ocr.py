"""Text in pictures at ingest: which items are read (the ``ocr`` option) and what their payload keeps.

``auto`` (the default) reads PDF pages without a text layer and their figures, and images in which detection
finds text lines (boxes at least ``MIN_LINE_ASPECT`` times as long as high): the test runs on a small copy
(``GATE_SIDE``), so a photo without text costs a fraction of its decode. ``true`` reads every image, page and
figure; ``false`` none. The payload keeps the text (``ocr_text``, lines in reading order), each line's box in
the item's pixels and its confidence (``ocr_lines``), and how the reading went (``ocr``). Everything that uses an
item's text uses this text too (External Knowledge records, the lexical index, Document chunks).

Reading runs in the ingest's decode threads, in the bulk lane, within the call's time left (crossmodal/lanes.py)
and its pixel budget; recognition crops of a picture go through the model in batches (crossmodal/ocr/).
"""

from __future__ import annotations

import math
import os
import time

from crossmodal.errors import CrossmodalError

OCR_MODES = ("auto", "true", "false")
GATE_SIDE = 512  # px: the longer side of the copy auto's detection test looks at (a 1440 px screenshot's text is found from 480)
# A text line is long and flat; the detector also boxes solid shapes in photos and scenes, nearly square. Counting
# only boxes at least twice as long as high cut the scenes the gate sent to a full reading from 14 of 24 to 2
# (each such reading costs about 0.4 s; ingest of 1024x768 scenes went 6.0 -> 16 images/s), and kept every page
# and screenshot of 16 (their flattest box: 17:1). A lone CJK character or a one-letter sign is not a line here.
MIN_LINE_ASPECT = 2.0
MAX_KEPT_LINES = 300  # lines whose boxes the payload keeps (the text keeps every line read)


DEFAULT_ENV = "CROSSMODAL_OCR_DEFAULT"  # the admin's default for calls that leave ``ocr`` empty (auto otherwise)


def check_ocr(value) -> str:
    """The ``ocr`` option: auto, true or false (booleans and their usual spellings accepted); empty: the
    admin's default (``CROSSMODAL_OCR_DEFAULT``), else auto."""
    if value is None or value == "":
        default = os.environ.get(DEFAULT_ENV, "").strip()
        return check_ocr(default) if default else "auto"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    text = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}.get(text, text)
    if text not in OCR_MODES:
        raise CrossmodalError(f"'{value}' is not one of auto, true, false (auto reads scanned pages and pictures "
                              "that show text)", param="ocr")
    return text


def has_text_lines(image) -> bool:
    """auto's test: detection finds at least one text line in a small copy of the picture."""
    from crossmodal.ocr import find_text_lines

    return any(line_aspect(line.box) >= MIN_LINE_ASPECT for line in find_text_lines(image, max_side=GATE_SIDE))


def line_aspect(box) -> float:
    """A detected box's long side over its short side (the box is four corners in order; it may be tilted)."""
    first, second = math.dist(box[0], box[1]), math.dist(box[1], box[2])
    return max(first, second) / max(min(first, second), 1.0)


def read_fields(image, param: str) -> dict:
    """The payload fields of a picture's reading: ocr_text (None when no line was read), ocr_lines, ocr."""
    from crossmodal.lanes import time_left
    from crossmodal.ocr import read_text

    left = time_left()
    started = time.perf_counter()
    try:
        result = read_text(image, deadline=None if left is None else time.monotonic() + left)
    except CrossmodalError as exc:
        raise CrossmodalError(f"its text could not be read ({exc})", param=param, status=exc.status) from None
    lines = [line.to_dict() for line in result.lines]
    return {"ocr_text": result.text or None,
            "ocr_lines": [{"text": d["text"], "xyxy": d["xyxy"], "confidence": d["confidence"]}
                          for d in lines[:MAX_KEPT_LINES]],
            "ocr": {"lines": len(lines), "truncated": result.truncated or len(lines) > MAX_KEPT_LINES,
                    "seconds": round(time.perf_counter() - started, 3)}}


def fields_or_error(image, param: str) -> dict:
    """read_fields, or the reason it failed in ``ocr`` (the item still goes in, with its picture)."""
    try:
        return read_fields(image, param)
    except CrossmodalError as exc:
        return {"ocr": {"error": str(exc)}}


def wanted(mode: str, *, text_layer: str | None = None, page: bool = False) -> bool | None:
    """Whether a picture is read: True, False, or None (auto: read it if detection finds text). A PDF page
    (``page``) is read under auto when it has no text layer; an image is tested first."""
    if mode == "false":
        return False
    if mode == "true":
        return True
    if page:
        return not (text_layer or "").strip()
    return None


def item_text(payload: dict) -> str | None:
    """An item's text as an LLM or a chat should read it: its caption, its text layer or document text, and
    what was read in its picture."""
    parts = [payload.get(key) for key in ("caption", "text", "ocr_text")]
    parts = [part.strip() for part in parts if isinstance(part, str) and part.strip()]
    return "\n".join(dict.fromkeys(parts)) or None
