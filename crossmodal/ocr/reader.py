"""Reading pictures: detection, direction and recognition in one pass, for one picture or many.

For many pictures, every line crop of every picture goes into one pool before recognition, so batches fill with
crops of like widths whichever picture they came from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from crossmodal.errors import CrossmodalError
from crossmodal.ocr import detection, recognition
from crossmodal.ocr.models import load_models

MIN_CONFIDENCE = 0.5  # lines read with less mean character probability are dropped (rapidocr's text_score)
MAX_LINES = 1000  # lines read per picture (a budget: a dense two-column page has about 150)


@dataclass
class OcrLine:
    text: str
    box: list[tuple[float, float]]  # four corners, clockwise from the top left, in the given picture's pixels
    confidence: float

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        xs, ys = [p[0] for p in self.box], [p[1] for p in self.box]
        return min(xs), min(ys), max(xs), max(ys)

    def to_dict(self) -> dict:
        return {"text": self.text, "box": [[round(x, 1), round(y, 1)] for x, y in self.box],
                "xyxy": [round(v, 1) for v in self.xyxy], "confidence": round(self.confidence, 4)}


@dataclass
class OcrResult:
    lines: list[OcrLine]
    width: int
    height: int
    truncated: bool = False  # more than MAX_LINES lines were found; the first MAX_LINES in reading order were read
    seconds: dict = field(default_factory=dict)  # detection, direction, recognition

    @property
    def text(self) -> str:
        """The lines in reading order, one per line."""
        return "\n".join(line.text for line in self.lines)

    def to_dict(self) -> dict:
        return {"text": self.text, "lines": [line.to_dict() for line in self.lines], "width": self.width,
                "height": self.height, "truncated": self.truncated}


@dataclass
class TextBox:
    box: list[tuple[float, float]]  # four corners, clockwise from the top left
    score: float  # the detector's mean text probability over the line

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        xs, ys = [p[0] for p in self.box], [p[1] for p in self.box]
        return min(xs), min(ys), max(xs), max(ys)


def checked_pixels(image, param: str = "image") -> tuple[Image.Image, np.ndarray]:
    """(RGB picture, its BGR pixels) or a CrossmodalError naming ``param``."""
    if not isinstance(image, Image.Image):
        raise CrossmodalError(f"expected a PIL.Image.Image, got {type(image).__name__}: decode the file first "
                              "(crossmodal.inputs)", param=param)
    if image.width < 1 or image.height < 1:
        raise CrossmodalError(f"the picture is {image.width}x{image.height}: it has no pixels to read", param=param)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent parts read as paper (white), not as whatever colour the transparent pixels carry.
        backdrop = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(backdrop, image.convert("RGBA"))
    rgb = image.convert("RGB")
    return rgb, np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])


def find_text_lines(image: Image.Image, max_side: int = detection.MAX_SIDE) -> list[TextBox]:
    """Detection alone: the text lines of a picture, in reading order (none for a picture without text). This is
    the cheap test of whether a picture holds text; a smaller ``max_side`` makes it cheaper for large pictures."""
    _check_max_side(max_side)
    _, pixels = checked_pixels(image)
    return [TextBox([tuple(map(float, p)) for p in line.box], line.score)
            for line in detection.detect(pixels, max_side)]


def read_text(image: Image.Image, deadline: float | None = None, max_side: int = detection.MAX_SIDE) -> OcrResult:
    """The text of one picture: lines with boxes in its pixels and confidences, and the joined text in reading
    order. ``deadline``: a time.monotonic() past which the work stops with a 504 error. ``max_side``: the
    picture's longer side for detection (recognition always reads it at full size); raise it for fine print in
    large pictures."""
    result = read_texts([image], deadline=deadline, max_side=max_side)[0]
    if isinstance(result, CrossmodalError):
        raise CrossmodalError(str(result).removeprefix("images[0]: "), param="image", status=result.status)
    return result


def read_texts(images, deadline: float | None = None,
               max_side: int = detection.MAX_SIDE) -> list[OcrResult | CrossmodalError]:
    """The text of several pictures, their line crops recognised in shared batches. A picture that cannot be
    read gets its CrossmodalError in its place (naming ``images[i]``); the others are read."""
    _check_max_side(max_side)
    if isinstance(images, (Image.Image, str, bytes)) or not hasattr(images, "__iter__"):
        raise CrossmodalError("expected a list of PIL images", param="images")
    images = list(images)
    models = load_models()
    results: list[OcrResult | CrossmodalError | None] = [None] * len(images)
    pending: list[tuple[int, Image.Image, list[detection.DetectedLine], bool, dict]] = []
    for index, image in enumerate(images):
        try:
            rgb, pixels = checked_pixels(image, f"images[{index}]")
        except CrossmodalError as error:
            results[index] = error
            continue
        _check_deadline(deadline)
        started = time.perf_counter()
        lines = detection.detect(pixels, max_side)
        pending.append((index, rgb, lines[:MAX_LINES], len(lines) > MAX_LINES,
                        {"detection": time.perf_counter() - started}))
    jobs = [(slot, line) for slot, (_, _, lines, _, _) in enumerate(pending) for line in lines]
    crops = [recognition.crop_line(pending[slot][1], line.box) for slot, line in jobs]
    _check_deadline(deadline)
    started = time.perf_counter()
    recognition.turn_upside_down_crops(crops, models)
    direction_seconds = time.perf_counter() - started
    started = time.perf_counter()
    readings = recognition.recognise(crops, models, before_batch=lambda: _check_deadline(deadline))
    recognition_seconds = time.perf_counter() - started
    per_picture: list[list[OcrLine]] = [[] for _ in pending]
    for reading, (slot, line) in zip(readings, jobs):
        text = reading.text.strip()
        if text and reading.confidence >= MIN_CONFIDENCE:
            per_picture[slot].append(OcrLine(text, [tuple(map(float, p)) for p in line.box], reading.confidence))
    total_crops = max(1, len(crops))
    for slot, (index, rgb, lines, truncated, seconds) in enumerate(pending):
        share = len(lines) / total_crops  # shared batches: each picture is charged its share of crops
        seconds.update(direction=direction_seconds * share, recognition=recognition_seconds * share)
        results[index] = OcrResult(per_picture[slot], rgb.width, rgb.height, truncated, seconds)
    return results


def _check_max_side(max_side) -> None:
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < detection.MIN_SIDE:
        raise CrossmodalError(f"max_side must be an integer of at least {detection.MIN_SIDE} (pixels), got "
                              f"{max_side!r}", param="max_side")


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise CrossmodalError("OCR ran past its deadline; read fewer or smaller pictures at once", param="ocr",
                              status=504)
