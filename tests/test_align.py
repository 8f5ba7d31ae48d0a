"""The align computation with the trained demo model: peaks land on the named objects, tiles cover large
images, transparent and extreme inputs are handled, the overlay stays within its size limit."""

import io

import numpy as np
import pytest
from PIL import Image

from crossmodal.alignment.align import AlignOptions, align, choose_mode, default_tile_size, peak_point, tile_boxes
from crossmodal.errors import CrossmodalError
from crossmodal.inputs.images import decode_image
from crossmodal.encoders.models import get_encoder
from crossmodal.alignment.overlay import MAX_OVERLAY_BYTES, draw_overlay, render_overlay
from crossmodal.lab.scenes import generate_scene


@pytest.fixture(scope="module")
def demo():
    return get_encoder("demo-shapes", "cpu")


def _inside(point, box) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


@pytest.mark.slow
def test_pointing_game_on_fresh_scenes(demo):
    """The heat-map peak of each named object falls inside its box (docs/evaluation.md: ~0.95 single, ~0.86 double)."""
    hits = total = 0
    for k in range(12):
        scene = generate_scene(810_000_000 + k, 512, 512, 1 + k % 2)
        for obj in scene.objects:
            result = align(demo, scene.image, f"a {obj.color} {obj.shape}")
            hits += _inside(peak_point(result["phrase_maps"][0], 512, 512), obj.box)
            total += 1
    assert hits / total >= 0.7, (hits, total)


def test_two_phrases_get_their_own_boxes(demo):
    """Eight two-object scenes (two colours): each phrase's box should sit on its own object (the pointing
    game on 1,000 such objects: 0.87)."""
    scenes = [s for k in range(60) if len({(s := generate_scene(820_000_000 + k, 512, 512, 2)).objects[0].color,
                                           s.objects[1].color}) == 2][:8]
    hits = 0
    for scene in scenes:
        a, b = scene.objects
        result = align(demo, scene.image, f"a {a.color} {a.shape} and a {b.color} {b.shape}")
        assert [p["text"] for p in result["phrases"]] == [f"a {a.color} {a.shape}", f"a {b.color} {b.shape}"]
        assert len(result["phrase_maps"]) == 2
        for phrase, obj in zip(result["phrases"], (a, b)):
            x0, y0, x1, y1 = phrase["box"]
            hits += _inside(((x0 + x1) / 2, (y0 + y1) / 2), obj.box)
    assert hits >= 10, f"{hits} of 16 phrase boxes on their object"


def test_a_true_caption_outscores_a_false_one(demo):
    scene = generate_scene(830_000_001, 400, 400, 1)
    obj = scene.objects[0]
    other = next(c for c in ("red", "green", "blue", "yellow") if c != obj.color)
    true = align(demo, scene.image, f"a {obj.color} {obj.shape}", AlignOptions(heatmap=False))
    false = align(demo, scene.image, f"a {other} {obj.shape}", AlignOptions(heatmap=False))
    assert true["similarity_score"] > false["similarity_score"]
    assert "attention_map" not in true and true["phrases"][0]["box"] is None


def test_large_image_is_tiled_and_finds_a_small_object(demo):
    scene = generate_scene(840_000_007, 2048, 2048, 1, size_range=(0.045, 0.05))
    obj = scene.objects[0]
    result = align(demo, scene.image, f"a {obj.color} {obj.shape}")
    assert result["mode"] == "tiled" and result["tiles"] == 16
    x0, y0, x1, y1 = result["phrases"][0]["box"]
    assert x0 < obj.box[2] and obj.box[0] < x1 and y0 < obj.box[3] and obj.box[1] < y1


@pytest.mark.parametrize("size", [(8000, 200), (200, 8000), (3000, 1000)])
def test_extreme_aspect_ratios_are_fully_covered(size):
    w, h = size
    tiles = tile_boxes(w, h, default_tile_size(w, h, 224, 0.25), 0.25)
    covered = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in tiles:
        covered[y0:y1, x0:x1] = True
    assert covered.all() and len(tiles) <= 64
    assert choose_mode(AlignOptions(), w, h) == "tiled"


def test_transparent_png_and_overlay_size(demo):
    image = Image.new("RGBA", (3000, 2000), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (1000, 800, 1300, 1100))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    decoded = decode_image(buf.getvalue())
    result = align(demo, decoded.image, "a red square")
    png = render_overlay(decoded.image, result)
    assert len(png) <= MAX_OVERLAY_BYTES
    assert max(Image.open(io.BytesIO(png)).size) == 1024


def test_noise_overlay_shrinks_under_the_limit(demo):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (2600, 2600, 3), dtype=np.uint8))
    result = align(demo, noise, "a red circle", AlignOptions(mode="global"))
    png = render_overlay(noise, result)
    assert len(png) <= MAX_OVERLAY_BYTES < len(draw_overlay(noise, result, 2600))


def test_options_are_checked(demo):
    image = Image.new("RGB", (64, 64))
    with pytest.raises(CrossmodalError, match="^tile_size"):
        align(demo, image, "x", AlignOptions(mode="tiled", tile_size=8))
    with pytest.raises(CrossmodalError, match="^tile_size"):
        align(demo, Image.new("RGB", (8000, 8000)), "x", AlignOptions(mode="tiled", tile_size=200, overlap=0.5))
    result = align(demo, image, ", ".join(f"thing {i}" for i in range(50)), AlignOptions(heatmap=False))
    assert len(result["phrases"]) == 16 and "50 phrases" in result["notes"][0]


def test_match_probability_is_calibrated_on_fresh_pairs(demo, tmp_path):
    """The bundled fit: true captions get high probabilities, false ones low (docs/evaluation.md: Brier and ECE)."""
    from crossmodal.lab.calibration_fit import expected_calibration_error, labelled_scene_pairs
    from crossmodal.service import Service
    from crossmodal.settings import Settings

    calibration = Service(Settings(data_dir=str(tmp_path))).calibration(demo)
    assert calibration.source.startswith("Platt fit") and calibration.a > 0
    pairs = labelled_scene_pairs(30, 870_000_000)
    probabilities = np.array([align(demo, image, text, AlignOptions(mode="global", heatmap=False),
                                    calibration)["match_probability"] for image, text, _ in pairs])
    labels = np.array([truth for _, _, truth in pairs])
    assert probabilities[labels].mean() > 0.7 and probabilities[~labels].mean() < 0.3
    assert expected_calibration_error(labels.astype(int), probabilities) < 0.2
