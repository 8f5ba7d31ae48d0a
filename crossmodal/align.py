"""Image-text alignment: a similarity score, per-phrase scores and boxes, and a heat map of where
each phrase matches, for images of any size through overlapping tiles fused with Gaussian weights.

Heat-map method: every tile (a crop the model sees at its own input size) is embedded once; a phrase's
score at a tile is the cosine between the tile and the phrase. Each tile spreads its score over the map
with a Gaussian centred on the tile (sigma = a quarter of the tile side), and every cell takes the
weighted mean of the tiles that cover it. It needs no gradients or attention hooks, works for every
dual encoder, and its cost is one batched forward pass over the tiles.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np

from crossmodal.errors import CrossmodalError

MAX_TEXT_CHARS = 1000
MAX_PHRASES = 16
MIN_IMAGE_SIDE = 8
MAP_CELLS = 32  # cells along the longer side of the heat map
PHRASE_SPLIT = re.compile(r"\s*(?:,|;|，|；|、|\band\b|和|与|以及)\s*", re.IGNORECASE)


@dataclass
class AlignOptions:
    mode: str = "auto"  # auto | global | tiled
    heatmap: bool = True
    tile_size: int | None = None  # pixels of the input image; default: a third of the shorter side
    overlap: float = 0.25


def split_phrases(text: str) -> tuple[list[str], list[str]]:
    """'a red circle and a blue star' -> ['a red circle', 'a blue star']; also commas, semicolons, 和."""
    text = (text or "").strip()
    if not text:
        raise CrossmodalError("is empty; give a description such as 'a red circle and a blue star'", param="text")
    if len(text) > MAX_TEXT_CHARS:
        raise CrossmodalError(f"has {len(text)} characters; at most {MAX_TEXT_CHARS} are allowed", param="text")
    phrases = [p.strip() for p in PHRASE_SPLIT.split(text) if p and p.strip()]
    notes = []
    if len(phrases) > MAX_PHRASES:
        notes.append(f"{len(phrases)} phrases given; only the first {MAX_PHRASES} were scored")
        phrases = phrases[:MAX_PHRASES]
    return phrases or [text], notes


def tile_boxes(width: int, height: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Overlapping square tiles (clipped for thin images) whose union covers every pixel, edges included."""
    tile_w, tile_h = min(tile, width), min(tile, height)
    xs = _starts(width, tile_w, max(1, int(tile_w * (1 - overlap))))
    ys = _starts(height, tile_h, max(1, int(tile_h * (1 - overlap))))
    return [(x, y, x + tile_w, y + tile_h) for y in ys for x in xs]


def _starts(length: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, max(1, length - tile + 1), stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)  # the last tile sits flush with the edge
    return starts


def fuse_tiles(boxes, scores: np.ndarray, width: int, height: int) -> np.ndarray:
    """Sum of per-tile Gaussians (centred on each tile, sigma a quarter of its side) weighted by the
    tile's score above the weakest tile's; rows x cols follows the image's aspect ratio.

    A plain weighted mean would put the peak at the image border, where a single tile has all the
    weight; the sum peaks where high-scoring tiles are centred and overlap."""
    cols = max(1, round(MAP_CELLS * width / max(width, height)))
    rows = max(1, round(MAP_CELLS * height / max(width, height)))
    cx = (np.arange(cols) + 0.5) * width / cols
    cy = (np.arange(rows) + 0.5) * height / rows
    evidence = np.asarray(scores, dtype=np.float64) - float(np.min(scores))
    fused = np.zeros((rows, cols))
    for (x0, y0, x1, y1), score in zip(boxes, evidence):
        sigma_x, sigma_y = (x1 - x0) / 4, (y1 - y0) / 4
        gx = np.exp(-((cx - (x0 + x1) / 2) ** 2) / (2 * sigma_x ** 2))
        gy = np.exp(-((cy - (y0 + y1) / 2) ** 2) / (2 * sigma_y ** 2))
        fused += score * np.outer(gy, gx)
    return fused


def normalise(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-9:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def align(encoder, image, text: str, options: AlignOptions | None = None) -> dict:
    """Score an RGB PIL image against a text; see the module docstring for the heat map."""
    options = options or AlignOptions()
    if options.mode not in ("auto", "global", "tiled"):
        raise CrossmodalError(f"'{options.mode}' is not one of auto, global, tiled", param="mode")
    if not 0.0 <= options.overlap < 0.9:
        raise CrossmodalError("must lie in [0, 0.9)", param="overlap")
    width, height = image.size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise CrossmodalError(f"the image is {width}x{height}; at least {MIN_IMAGE_SIDE} px a side is needed",
                              param="image")
    phrases, notes = split_phrases(text)
    timings = {}
    started = time.perf_counter()
    texts = [text.strip(), *phrases] if len(phrases) > 1 else [text.strip()]
    encoded = encoder.encode_texts(texts)
    text_vectors = encoded.vectors
    phrase_vectors = text_vectors[1:] if len(phrases) > 1 else text_vectors
    timings["text_ms"] = _ms(started)

    started = time.perf_counter()
    global_vector = encoder.encode_images([image])[0]
    timings["global_ms"] = _ms(started)
    global_score = float(text_vectors[0] @ global_vector)

    mode = options.mode
    if mode == "auto":
        mode = "tiled" if max(width, height) >= 2 * encoder.image_size else "global"
    tiled_needed = mode == "tiled" or options.heatmap
    result = {"similarity_score": round(global_score, 6), "mode": mode, "model": encoder.identity}
    if not tiled_needed:
        result["phrases"] = [{"text": p, "similarity_score": round(float(v @ global_vector), 6), "box": None}
                             for p, v in zip(phrases, phrase_vectors)]
    else:
        tile = options.tile_size or max(encoder.image_size // 2, min(width, height) // 3)
        if tile < MIN_IMAGE_SIDE:
            raise CrossmodalError(f"must be at least {MIN_IMAGE_SIDE} px", param="tile_size")
        boxes = tile_boxes(width, height, tile, options.overlap)
        started = time.perf_counter()
        tile_vectors = encoder.encode_images([image.crop(b) for b in boxes])
        timings["tiles_ms"] = _ms(started)
        started = time.perf_counter()
        scores = phrase_vectors @ tile_vectors.T  # phrases x tiles
        maps = [fuse_tiles(boxes, s, width, height) for s in scores]
        phrase_rows = []
        for p, v, s, m in zip(phrases, phrase_vectors, scores, maps):
            peak = _peak_box(m, width, height, boxes, s)
            phrase_rows.append({"text": p, "similarity_score": round(float(max(v @ global_vector, s.max())), 6),
                                "box": peak})
        result["phrases"] = phrase_rows
        if mode == "tiled":
            regional = float(np.mean([s.max() for s in scores]))
            result["similarity_score"] = round(0.5 * global_score + 0.5 * regional, 6)
        combined = normalise(np.mean(maps, axis=0)) if options.heatmap else None
        if options.heatmap:
            result["attention_map"] = {"rows": combined.shape[0], "cols": combined.shape[1],
                                       "values": np.round(combined, 4).tolist(), "width": width, "height": height}
            result["phrase_maps"] = [np.round(normalise(m), 4).tolist() for m in maps]
        result["tiles"] = len(boxes)
        timings["fuse_ms"] = _ms(started)
    if encoded.truncated:
        notes.append(f"text truncated to the model's {encoder.context_length}-token context")
    result["timings_ms"] = timings
    result["notes"] = notes
    return result


def _peak_box(fused: np.ndarray, width: int, height: int, boxes, scores) -> list[int]:
    """The tile with the best score among those covering the fused map's peak cell."""
    rows, cols = fused.shape
    r, c = np.unravel_index(int(np.argmax(fused)), fused.shape)
    px, py = (c + 0.5) * width / cols, (r + 0.5) * height / rows
    covering = [i for i, (x0, y0, x1, y1) in enumerate(boxes) if x0 <= px <= x1 and y0 <= py <= y1]
    best = max(covering or range(len(boxes)), key=lambda i: scores[i])
    return [int(v) for v in boxes[best]]


def peak_point(phrase_map: list[list[float]], width: int, height: int) -> tuple[float, float]:
    grid = np.asarray(phrase_map)
    r, c = np.unravel_index(int(np.argmax(grid)), grid.shape)
    return ((c + 0.5) * width / grid.shape[1], (r + 0.5) * height / grid.shape[0])


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
