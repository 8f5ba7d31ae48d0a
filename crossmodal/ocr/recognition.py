"""Line crops, their direction (0 or 180 degrees) and their text: PP-OCRv4 recognition (CTC) in batches.

Each detected box is cut from the picture at its own size and brought to the recognizer's height with a Lanczos
filter (crop_line says why). Crops are sorted by width and batched so that padding stays small; a batch is
bounded by items and by columns. The CTC alignment is kept: the frames each character was read from, which
place it along the line (FRAME input columns per frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from crossmodal.ocr.models import OcrModels, load_models, run

HEIGHT = 48  # the recognizer's input height (PP-OCRv4: 3 x 48 x W)
FRAME = 8  # input columns per CTC frame
# Narrower crops are padded to this width, as the model was trained (PaddleOCR's 48 x 320 with right padding).
MIN_WIDTH = 320
MAX_WIDTH = 48 * 64  # a longer line is squeezed to this: 64 heights, past any page's line
BATCH_ITEMS = 16  # crops per recognizer run
BATCH_COLUMNS = 16_384  # padded columns per run: the output alone is columns / 8 x 6625 floats (54 MB here)
FRAME_MARGIN = 2  # frames read past a crop's own width (a character's peak can trail its pixels)
DIRECTION_SHAPE = (48, 192)  # the direction classifier's input
DIRECTION_BATCH = 32
DIRECTION_WINDOWS = 4  # pieces of a line the classifier reads (direction_windows)
DIRECTION_THRESHOLD = 0.9  # a crop is turned only when the classifier is this sure it is upside down
VERTICAL_RATIO = 1.5  # a box this much taller than wide is a vertical line, read turned a quarter
CROP_FILTER = Image.Resampling.LANCZOS  # see crop_line


@dataclass
class Crop:
    pixels: np.ndarray  # HEIGHT x width x 3, BGR uint8

    @property
    def width(self) -> int:
        return self.pixels.shape[1]


@dataclass
class Reading:
    text: str
    confidence: float  # mean probability of the characters read
    characters: list[str]
    frames: list[tuple[int, int]]  # first and last CTC frame of each character


def crop_line(image: Image.Image, box: np.ndarray) -> Crop:
    """The box (4 corners, clockwise from the top left) cut from an RGB picture at its own size, then resampled
    to HEIGHT rows with a Lanczos filter.

    The filter decides word spacing. The recognizer reads the gaps between English words only when the letters'
    edges stay crisp: on generated scans, crops brought to 48 rows bilinearly (rapidocr's cv2.resize default)
    kept 59 % of word boundaries, bicubic in one step 94 %, Lanczos 98.8 % (benchmarks/bench_ocr.py, docs/ocr.md).
    """
    top_left, top_right, bottom_right, bottom_left = (tuple(map(float, p)) for p in box)
    width = max(math.dist(top_left, top_right), math.dist(bottom_left, bottom_right))
    height = max(math.dist(top_left, bottom_left), math.dist(top_right, bottom_right))
    if height >= VERTICAL_RATIO * width:  # read a vertical line turned a quarter counter-clockwise
        quad = (top_right, top_left, bottom_left, bottom_right)
        width, height = height, width
    else:
        quad = (top_left, bottom_left, bottom_right, top_right)
    width, height = max(width, 1.0), max(height, 1.0)
    target = (min(MAX_WIDTH, max(1, round(width * HEIGHT / height))), HEIGHT)
    data = tuple(c for point in quad for c in point)
    native = image.transform((max(1, round(width)), max(1, round(height))), Image.Transform.QUAD, data,
                             Image.Resampling.BICUBIC)
    cut = native.resize(target, CROP_FILTER)
    return Crop(np.ascontiguousarray(np.asarray(cut)[:, :, ::-1]))


def normalised(pixels: np.ndarray, width: int) -> np.ndarray:
    """HEIGHT x w x 3 uint8 -> 3 x HEIGHT x width floats in [-1, 1], padded on the right with zeros."""
    out = np.zeros((3, pixels.shape[0], width), np.float32)
    out[:, :, :pixels.shape[1]] = pixels.transpose(2, 0, 1) * (2 / 255) - 1
    return out


def batches(widths: list[int], minimum: int) -> list[list[int]]:
    """Indices grouped into runs: widest first (so an over-wide crop never waits behind small ones), each run
    padded to its first crop's width, bounded by BATCH_ITEMS and BATCH_COLUMNS."""
    order = sorted(range(len(widths)), key=lambda i: -widths[i])
    groups: list[list[int]] = []
    for index in order:
        padded = max(minimum, widths[groups[-1][0]]) if groups else 0
        if groups and len(groups[-1]) < BATCH_ITEMS and padded * (len(groups[-1]) + 1) <= BATCH_COLUMNS:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def direction_windows(pixels: np.ndarray, width: int = DIRECTION_SHAPE[1]) -> list[np.ndarray]:
    """Up to DIRECTION_WINDOWS pieces of a crop at the classifier's own aspect, spread along the line. A whole
    line squeezed into 48 x 192 (rapidocr's way) loses the letters' shapes: on generated pages the classifier
    then called a third of upright lines upside down, some past 0.9."""
    if pixels.shape[1] <= width:
        return [pixels]
    count = min(DIRECTION_WINDOWS, -(-pixels.shape[1] // width))
    starts = np.linspace(0, pixels.shape[1] - width, count).round().astype(int)
    return [pixels[:, start:start + width] for start in starts]


def turn_upside_down_crops(crops: list[Crop], models: OcrModels | None = None) -> list[bool]:
    """Classify each crop's direction (the mean over its windows) and turn those read upside down; which were
    turned."""
    models = models or load_models()
    width = DIRECTION_SHAPE[1]
    windows, owners = [], []
    for index, crop in enumerate(crops):
        for window in direction_windows(crop.pixels, width):
            windows.append(normalised(window, width))
            owners.append(index)
    upside_down = np.zeros(len(crops))
    counts = np.bincount(owners, minlength=len(crops)) if owners else np.zeros(len(crops))
    for start in range(0, len(windows), DIRECTION_BATCH):
        probabilities = run(models.direction, np.stack(windows[start:start + DIRECTION_BATCH]))
        np.add.at(upside_down, owners[start:start + DIRECTION_BATCH], probabilities[:, 1])
    turned = []
    for crop, total, count in zip(crops, upside_down, counts):
        flip = bool(count) and total / count > DIRECTION_THRESHOLD
        if flip:
            crop.pixels = np.ascontiguousarray(crop.pixels[::-1, ::-1])
        turned.append(flip)
    return turned


def recognise(crops: list[Crop], models: OcrModels | None = None, minimum_width: int = MIN_WIDTH,
              before_batch=None) -> list[Reading]:
    """The text of each crop, batched by width; results in the crops' order. ``before_batch``: called before
    each run (a deadline check)."""
    models = models or load_models()
    readings: list[Reading | None] = [None] * len(crops)
    for group in batches([c.width for c in crops], minimum_width):
        if before_batch is not None:
            before_batch()
        padded = max(minimum_width, max(crops[i].width for i in group))
        batch = np.stack([normalised(crops[i].pixels, padded) for i in group])
        probabilities = run(models.recognition, batch)
        for row, index in enumerate(group):
            frames = min(probabilities.shape[1], -(-crops[index].width // FRAME) + FRAME_MARGIN)
            readings[index] = ctc_decode(probabilities[row, :frames], models.characters)
    return readings


def ctc_decode(probabilities: np.ndarray, characters: tuple[str, ...]) -> Reading:
    """Greedy CTC: the best class per frame, repeats merged, blanks (class 0) dropped, each character's frames
    kept."""
    best = probabilities.argmax(1)
    best_probability = probabilities[np.arange(len(best)), best]
    change = np.flatnonzero(np.diff(best, prepend=-1))  # first frame of each run of one class
    ends = np.append(change[1:], len(best)) - 1
    kept = best[change] != 0
    starts, stops, classes = change[kept], ends[kept], best[change][kept]
    chars = [characters[c] for c in classes]
    confidences = [float(best_probability[s:e + 1].max()) for s, e in zip(starts, stops)]
    return Reading("".join(chars), float(np.mean(confidences)) if confidences else 0.0, chars,
                   list(zip(starts.tolist(), stops.tolist())))
