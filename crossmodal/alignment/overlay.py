"""The align node's picture: the heat map blended over the image, each phrase's peak box and label."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MAX_OVERLAY_BYTES = 2 * 1024 * 1024
OVERLAY_SIDE = 1024  # longer side of the overlay; large inputs are shown downscaled
HEAT_ALPHA = 0.5
BOX_COLOURS = ["#00e5ff", "#ffea00", "#ff4081", "#76ff03", "#ffffff", "#ff9100"]
# The "jet" colour map's segment points (matplotlib's _cm._jet_data), so that the plugin needs no matplotlib
# at run time; tests/test_align_core.py checks jet_colours against matplotlib's own map.
JET_SEGMENTS = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
JET_LEVELS = 256


def render_overlay(image: Image.Image, result: dict, side: int = OVERLAY_SIDE) -> bytes:
    """PNG bytes, at most MAX_OVERLAY_BYTES (the picture shrinks until it fits)."""
    while True:
        data = draw_overlay(image, result, side)
        if len(data) <= MAX_OVERLAY_BYTES or side <= 128:
            return data
        side = int(side * 0.7)


def jet_colours(grid: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] for values in [0, 1], as matplotlib's 256-level "jet" map gives them."""
    levels = np.linspace(0.0, 1.0, JET_LEVELS)
    lut = np.stack([np.interp(levels, *zip(*JET_SEGMENTS[c])) for c in ("red", "green", "blue")], axis=-1)
    index = np.clip(np.nan_to_num(grid, nan=0.0) * JET_LEVELS, 0, JET_LEVELS - 1).astype(int)
    return lut[index]


def draw_overlay(image: Image.Image, result: dict, side: int) -> bytes:
    base = image.convert("RGB")
    scale = min(1.0, side / max(base.size))
    if scale < 1.0:
        base = base.resize((max(1, round(base.width * scale)), max(1, round(base.height * scale))), Image.BILINEAR)
    heat = result.get("attention_map")
    if heat:
        grid = np.asarray(heat["values"], dtype=np.float32)
        coloured = jet_colours(grid)
        layer = Image.fromarray((coloured * 255).astype(np.uint8)).resize(base.size, Image.BICUBIC)
        weight = Image.fromarray((np.clip(grid, 0, 1) * 255 * HEAT_ALPHA).astype(np.uint8)).resize(base.size,
                                                                                                   Image.BICUBIC)
        base = Image.composite(layer, base, weight)
    draw = ImageDraw.Draw(base)
    font = _font(max(12, base.width // 50))
    for k, phrase in enumerate(result.get("phrases", [])):
        if not phrase.get("box"):
            continue
        colour = BOX_COLOURS[k % len(BOX_COLOURS)]
        x0, y0, x1, y1 = (v * scale for v in phrase["box"])
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=max(2, base.width // 300))
        label = f"{k + 1}. {_latin(phrase['text'])} {phrase['similarity_score']:.2f}"
        tx, ty = x0 + 3, max(0, y0 - font.size - 4)
        draw.rectangle(draw.textbbox((tx, ty), label, font=font), fill="black")
        draw.text((tx, ty), label, fill=colour, font=font)
    buffer = io.BytesIO()
    base.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _latin(text: str, limit: int = 40) -> str:
    """Pillow's built-in font has no CJK glyphs: such phrases are labelled by number (the JSON has the text)."""
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()
