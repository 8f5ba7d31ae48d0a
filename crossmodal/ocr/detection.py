"""Text detection with PP-OCRv4's DB model: the picture at a size the network takes, its text probability map,
and the map's regions as line boxes in the picture's pixels.

Post-processing follows PaddleOCR's DBPostProcess (threshold, 2x2 dilation, a least-area rectangle per region,
a score per region, the unclip by area x ratio / perimeter), computed with numpy instead of OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from crossmodal.ocr import geometry
from crossmodal.ocr.models import load_models, run

# Longer pictures are scaled down to this for detection (recognition reads the full-size picture). On generated
# A4 pages at 144 dpi (1684 px tall) with 60-70 lines of 15-16 px text, character accuracy was 0.9994 at 2000,
# 0.9991 at 1280 and 0.9962 at 1024, for 0.57x and 0.37x the detection work of 2000 (rapidocr's max_side_len).
MAX_SIDE = 1280
MIN_SIDE = 32  # shorter sides are padded to this, never scaled up
STRIDE = 32  # the network's input sides are multiples of this
PIXEL_THRESHOLD = 0.3  # a pixel is text above this probability
# A region is a line when its mean probability is above this. PaddleOCR's 0.5 is over the least-area box (pixels
# around the text included); over the region's own pixels, as here, the same separation sits higher.
REGION_THRESHOLD = 0.6
MAX_REGIONS = 1000  # regions scored per picture, largest first (a budget against noise-like maps)
MIN_SHORT_SIDE = 3  # regions thinner than this (map pixels) are specks
UNCLIP_RATIO = 1.6  # DB's maps are shrunk text; this grows a region back to the text's extent
MEAN = 0.5  # the network's normalisation: (pixel / 255 - MEAN) / STD
STD = 0.5


@dataclass
class DetectedLine:
    box: np.ndarray  # 4 x 2 corners, clockwise from the top left, in the picture's pixels
    score: float

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (float(self.box[:, 0].min()), float(self.box[:, 1].min()), float(self.box[:, 0].max()),
                float(self.box[:, 1].max()))

    @property
    def height(self) -> float:
        return float(max(np.hypot(*(self.box[3] - self.box[0])), np.hypot(*(self.box[2] - self.box[1]))))


def network_input(pixels: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """BGR pixels (H, W, 3) -> the network's (1, 3, H', W') input and the scale from picture to input. The
    picture is shrunk when its longer side passes ``max_side``; its sides are then padded (edge pixels repeated)
    to multiples of STRIDE rather than stretched, so text keeps its shape."""
    height, width = pixels.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
    padded_h = max(MIN_SIDE, -(-pixels.shape[0] // STRIDE) * STRIDE)
    padded_w = max(MIN_SIDE, -(-pixels.shape[1] // STRIDE) * STRIDE)
    pixels = np.pad(pixels, ((0, padded_h - pixels.shape[0]), (0, padded_w - pixels.shape[1]), (0, 0)), mode="edge")
    batch = np.empty((1, 3, padded_h, padded_w), np.float32)
    for channel in range(3):  # planar, one channel at a time: no full-size float copy of the picture
        np.multiply(pixels[:, :, channel], 1 / (255 * STD), out=batch[0, channel], dtype=np.float32)
        batch[0, channel] -= MEAN / STD
    return batch, scale


def detect(pixels: np.ndarray, max_side: int = MAX_SIDE) -> list[DetectedLine]:
    """The text lines of one picture (BGR uint8 pixels), in reading order."""
    batch, scale = network_input(pixels, max_side)
    probability = run(load_models().detection, batch)[0, 0]
    lines = lines_from_map(probability, scale, pixels.shape[:2])
    return reading_order(lines)


def lines_from_map(probability: np.ndarray, scale: float, picture_shape: tuple[int, int]) -> list[DetectedLine]:
    """Regions of the probability map -> unclipped line boxes in picture pixels."""
    mask = probability > PIXEL_THRESHOLD
    # 2x2 dilation (DB's use_dilation): joins strokes one pixel apart.
    dilated = mask.copy()
    dilated[1:, :] |= mask[:-1, :]
    dilated[:, 1:] |= mask[:, :-1]
    dilated[1:, 1:] |= mask[:-1, :-1]
    regions = geometry.connected_regions(dilated)
    if regions.count == 0:
        return []
    lengths = regions.ends - regions.starts + 1
    # A region's score is its pixels' mean probability: the runs' sums in one reduceat over the flat map, whose
    # boundaries alternate run starts and ends (every other sum is a gap between runs).
    flat = probability.ravel()
    row_start = regions.rows * probability.shape[1]
    bounds = np.stack([row_start + regions.starts, row_start + regions.ends + 1], 1).ravel()
    sums = np.add.reduceat(flat, bounds[bounds < flat.size], dtype=np.float64)[::2][:len(lengths)]
    scores = np.bincount(regions.labels, sums, regions.count) / np.bincount(regions.labels, lengths, regions.count)
    sizes = np.bincount(regions.labels, lengths, regions.count)
    order = np.argsort(-sizes, kind="stable")[:MAX_REGIONS]
    members_of = np.split(np.argsort(regions.labels, kind="stable"), np.cumsum(np.bincount(regions.labels))[:-1])
    height, width = picture_shape
    lines = []
    for region in order:
        if scores[region] < REGION_THRESHOLD:
            continue
        points = geometry.region_points(regions, members_of[region])
        corners, long_side, short_side = geometry.min_area_rect(points)
        if short_side < MIN_SHORT_SIDE:
            continue
        area, perimeter = long_side * short_side, 2 * (long_side + short_side)
        grown = geometry.expand_rect(corners, area * UNCLIP_RATIO / perimeter)
        if min(np.hypot(*(grown[1] - grown[0])), np.hypot(*(grown[3] - grown[0]))) < MIN_SHORT_SIDE + 2:
            continue
        box = grown / scale
        box[:, 0] = np.clip(box[:, 0], 0, width)
        box[:, 1] = np.clip(box[:, 1], 0, height)
        lines.append(DetectedLine(geometry.order_corners(box), float(scores[region])))
    return lines


def reading_order(lines: list[DetectedLine]) -> list[DetectedLine]:
    """Top to bottom; lines whose vertical centres lie within half a line height of each other read left to right
    (columns side by side, a label and its value)."""
    if not lines:
        return []
    by_top = sorted(lines, key=lambda line: (line.xyxy[1], line.xyxy[0]))
    heights = np.median([min(line.height, line.xyxy[3] - line.xyxy[1]) for line in by_top])
    rows: list[list[DetectedLine]] = []
    for line in by_top:
        centre = (line.xyxy[1] + line.xyxy[3]) / 2
        if rows and abs(centre - np.mean([(x.xyxy[1] + x.xyxy[3]) / 2 for x in rows[-1]])) < heights / 2:
            rows[-1].append(line)
        else:
            rows.append([line])
    return [line for row in rows for line in sorted(row, key=lambda x: x.xyxy[0])]
