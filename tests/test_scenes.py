import random

import numpy as np
import pytest

from crossmodal.lab.scenes import (
    COLORS,
    SHAPES,
    SIZES,
    UNKNOWN,
    canonical_caption,
    caption_specs,
    crop_around,
    generate_scene,
    sample_caption,
    scene_satisfies,
)


def test_deterministic_by_seed():
    a, b = generate_scene(42), generate_scene(42)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.captions == b.captions and a.boxes == b.boxes
    assert not np.array_equal(np.asarray(a.image), np.asarray(generate_scene(43).image))


@pytest.mark.parametrize("size", [(64, 64), (512, 300), (200, 900), (4096, 4096)])
def test_boxes_inside_and_objects_disjoint(size):
    for seed in range(5):
        scene = generate_scene(seed, *size, n_objects=3)
        for x0, y0, x1, y1 in scene.boxes:
            assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]
        for i, a in enumerate(scene.boxes):
            for b in scene.boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def test_object_colour_is_drawn_at_its_box_centre():
    scene = generate_scene(7, 400, 400, 1, rotate=False, background="flat")
    obj = scene.objects[0]
    x0, y0, x1, y1 = obj.box
    assert scene.image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == COLORS[obj.color]


def test_tiny_objects_for_large_images():
    scene = generate_scene(3, 2048, 2048, 1, size_range=(0.02, 0.05))
    x0, y0, x1, y1 = scene.boxes[0]
    assert 0.02 * 2048 - 1 <= x1 - x0 <= 0.05 * 2048


def test_captions_in_both_languages_describe_the_scene():
    scene = generate_scene(11, 300, 300, 1)
    o = scene.objects[0]
    en, zh = scene.captions["en"][0], scene.captions["zh"][0]
    assert o.color in en and o.shape in en and o.size in en
    assert "的" in zh and any(ch >= "\u4e00" for ch in zh)
    two = generate_scene(12, 300, 300, 2)
    assert canonical_caption(two.objects, "en").count(" and ") == 1
    assert "和" in canonical_caption(two.objects, "zh")


def test_sampled_captions_are_true_of_their_scene():
    rng = random.Random(0)
    for seed in range(200):
        scene = generate_scene(seed)
        text, specs = sample_caption(scene.objects, rng)
        assert text and scene_satisfies(scene.objects, specs)
        for spec in specs:
            assert spec["shape"] in SHAPES and spec["color"] in COLORS


def test_relevance_by_attributes():
    scene = generate_scene(5, 300, 300, 1)
    o = scene.objects[0]
    assert scene_satisfies(scene.objects, caption_specs([o], size=True, position=True))
    other = "circle" if o.shape != "circle" else "star"
    assert not scene_satisfies(scene.objects, [{"shape": other, "color": o.color}])


def test_crops_hold_whole_objects_and_cut_none_in_half():
    rng = random.Random(1)
    found = 0
    for seed in range(60):
        scene = generate_scene(seed, 360, 360, 3, rotate=False, background="flat")
        crop = crop_around(scene, rng)
        if crop is None:
            continue
        found += 1
        image, objects = crop
        assert image.size[0] == image.size[1] and 0.4 * 360 - 1 <= image.size[0] <= 360
        assert objects, "a crop is made around an object"
        for o in objects:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= image.size[0] and 0 <= y0 < y1 <= image.size[1]
            assert image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == COLORS[o.color]
            assert o.size == UNKNOWN and o.position == UNKNOWN
        # An object left out shows at most 5 % of itself (counted by its exact fill colour, when unique).
        kept_colours = {o.color for o in objects}
        colours = [o.color for o in scene.objects]
        for o in scene.objects:
            if o.color in kept_colours or colours.count(o.color) > 1:
                continue
            whole, shown = (_pixels_of(im, COLORS[o.color]) for im in (scene.image, image))
            assert shown <= 0.05 * whole + 1, (seed, o.color, shown, whole)
    assert found >= 40


def _pixels_of(image, colour) -> int:
    return int(np.all(np.asarray(image) == np.asarray(colour, dtype=np.uint8), axis=-1).sum())


def test_crop_captions_name_colour_and_shape_only():
    rng = random.Random(2)
    scene = generate_scene(5, 400, 400, 2)
    _, objects = crop_around(scene, rng)
    for _ in range(50):
        text, specs = sample_caption(objects, rng, "en", relative=False)
        assert scene_satisfies(objects, specs)
        assert all(set(spec) == {"shape", "color"} for spec in specs)
        assert not any(size in text.split() for size in SIZES)
    # A caption stating a size or a position is not taken as true of a crop.
    o = objects[0]
    assert not scene_satisfies(objects, [{"shape": o.shape, "color": o.color, "size": "small"}])
