"""Building blocks of the align node (issue 4): phrase splitting, tile coverage, Gaussian fusion."""

import numpy as np
import pytest
from PIL import Image

from crossmodal.alignment.align import MAX_PHRASES, AlignOptions, align, fuse_tiles, split_phrases, tile_boxes
from crossmodal.errors import CrossmodalError


@pytest.mark.parametrize(
    "text, phrases",
    [
        ("a red circle and a blue star", ["a red circle", "a blue star"]),
        ("红色圆形和蓝色星形", ["红色圆形", "蓝色星形"]),
        ("cat, dog; bird", ["cat", "dog", "bird"]),
        ("a sandy beach", ["a sandy beach"]),
    ],
)
def test_phrases(text, phrases):
    assert split_phrases(text)[0] == phrases


def test_phrase_limits():
    with pytest.raises(CrossmodalError, match="^text: is empty"):
        split_phrases("  ")
    with pytest.raises(CrossmodalError, match="1000"):
        split_phrases("x" * 1001)
    phrases, notes = split_phrases(", ".join(f"thing {i}" for i in range(50)))
    assert len(phrases) == MAX_PHRASES and "50 phrases" in notes[0]


@pytest.mark.parametrize("size, tile", [((2048, 2048), 224), ((8000, 200), 682), ((500, 333), 111), ((64, 64), 100)])
def test_tiles_cover_every_pixel(size, tile):
    width, height = size
    covered = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in tile_boxes(width, height, tile, 0.25):
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert len(tile_boxes(2048, 2048, 224, 0.25)) == 144


def test_fusion_peaks_at_the_best_tile_not_at_the_border():
    boxes = tile_boxes(300, 300, 100, 0.5)
    scores = np.array([1.0 if b == (100, 100, 200, 200) else 0.1 for b in boxes])
    fused = fuse_tiles(boxes, scores, 300, 300)
    r, c = np.unravel_index(np.argmax(fused), fused.shape)
    assert 100 <= (c + 0.5) * 300 / fused.shape[1] <= 200 and 100 <= (r + 0.5) * 300 / fused.shape[0] <= 200


def test_align_contract_with_a_tiny_model(tiny_clip_dir):
    from crossmodal.encoders.models import get_encoder

    encoder = get_encoder(str(tiny_clip_dir), "cpu")
    result = align(encoder, Image.new("RGB", (300, 120), "red"), "a red circle and a blue star")
    assert result["mode"] == "tiled" and [p["text"] for p in result["phrases"]] == ["a red circle", "a blue star"]
    attention = result["attention_map"]
    assert (attention["width"], attention["height"]) == (300, 120)
    values = np.asarray(attention["values"])
    assert values.shape == (attention["rows"], attention["cols"]) and values.min() >= 0 and values.max() <= 1
    for phrase in result["phrases"]:
        x0, y0, x1, y1 = phrase["box"]
        assert 0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 120
    with pytest.raises(CrossmodalError, match="^image:"):
        align(encoder, Image.new("RGB", (1, 1)), "x")
    with pytest.raises(CrossmodalError, match="^mode:"):
        align(encoder, Image.new("RGB", (50, 50)), "x", AlignOptions(mode="zoom"))


def test_jet_colours_match_matplotlib():
    """The overlay's own jet map (no matplotlib at run time) against matplotlib's, the reference."""
    matplotlib = pytest.importorskip("matplotlib")
    from crossmodal.alignment.overlay import jet_colours

    values = np.concatenate([np.linspace(0, 1, 4096), [0.0, 1.0, 0.35, 0.66, 0.125, 0.999999, 0.5, 1e-9]]).reshape(-1, 8)
    expected = matplotlib.colormaps["jet"](values)[..., :3]
    np.testing.assert_allclose(jet_colours(values), expected, atol=1e-6)
