"""Deterministic synthetic scenes: coloured shapes on backgrounds, with bilingual captions and boxes.

They train the offline demo model and evaluate every semantic feature (search,
heat maps, tiling, reranking) against known ground truth.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "heart")
COLORS = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 220), "yellow": (240, 220, 30),
    "purple": (140, 40, 170), "orange": (245, 140, 20), "white": (250, 250, 250), "black": (15, 15, 15),
}
SIZES = ("small", "large")
POSITIONS = ("top-left", "top", "top-right", "left", "centre", "right", "bottom-left", "bottom", "bottom-right")
BACKGROUNDS = ("flat", "gradient", "noise")

ZH_SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形", "hexagon": "六边形", "heart": "心形"}
ZH_COLORS = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色",
             "white": "白色", "black": "黑色"}
ZH_SIZES = {"small": "小", "large": "大"}
ZH_POSITIONS = {"top-left": "左上角", "top": "上边", "top-right": "右上角", "left": "左边", "centre": "中间",
                "right": "右边", "bottom-left": "左下角", "bottom": "下边", "bottom-right": "右下角"}
EN_POSITIONS = {"top-left": "in the top left corner", "top": "at the top", "top-right": "in the top right corner",
                "left": "on the left", "centre": "in the centre", "right": "on the right",
                "bottom-left": "in the bottom left corner", "bottom": "at the bottom",
                "bottom-right": "in the bottom right corner"}
# Object side as a fraction of the image's shorter side.
SIZE_RANGES = {"small": (0.13, 0.19), "large": (0.28, 0.33)}  # large fits its third of the image


@dataclass
class SceneObject:
    shape: str
    color: str
    size: str
    position: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels
    angle: float = 0.0

    def phrase(self, lang: str = "en", *, size=True, position=False) -> str:
        if lang == "zh":
            core = (ZH_SIZES[self.size] if size else "") + ZH_COLORS[self.color] + ZH_SHAPES[self.shape]
            return f"{ZH_POSITIONS[self.position]}的{core}" if position else core
        words = [self.size] if size else []
        text = " ".join([*words, self.color, self.shape])
        return f"{text} {EN_POSITIONS[self.position]}" if position else text


@dataclass
class Scene:
    image: Image.Image
    objects: list[SceneObject]
    background: str
    seed: int
    captions: dict[str, list[str]] = field(default_factory=dict)

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        return [o.box for o in self.objects]


def canonical_caption(objects: list[SceneObject], lang: str = "en") -> str:
    """The fullest description: size, colour, shape, and position for a single object."""
    if len(objects) == 1:
        o = objects[0]
        return o.phrase("zh", position=True) if lang == "zh" else f"a {o.phrase('en', position=True)}"
    return join_phrases([o.phrase(lang, size=False) for o in objects], lang)


def join_phrases(phrases: list[str], lang: str) -> str:
    if lang == "zh":
        return "和".join("一个" + p for p in phrases)
    items = [f"{article(p)} {p}" for p in phrases]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeiou" else "a"


def caption_variants(objects: list[SceneObject], rng: random.Random) -> dict[str, list[str]]:
    """Several phrasings per language; the first is the canonical one."""
    en, zh = [canonical_caption(objects, "en")], [canonical_caption(objects, "zh")]
    if len(objects) == 1:
        o = objects[0]
        bare = o.phrase(size=False)
        en += [f"{article(bare)} {bare}", f"a {o.phrase()}", f"{article(bare)} {o.phrase(size=False, position=True)}",
               f"a photo of a {o.phrase()}", f"there is a {o.phrase(position=True)}",
               f"{o.color} {o.shape}", f"a {o.phrase()} {EN_POSITIONS[o.position]}"]
        zh += ["一个" + o.phrase("zh", size=False), "一个" + o.phrase("zh"),
               o.phrase("zh", size=False, position=True), ZH_COLORS[o.color] + ZH_SHAPES[o.shape],
               "一张" + o.phrase("zh") + "的图片"]
    else:
        shuffled = objects[:]
        rng.shuffle(shuffled)
        en += [join_phrases([o.phrase() for o in shuffled], "en"),
               join_phrases([o.phrase(size=False) for o in shuffled], "en")]
        zh += [join_phrases([o.phrase("zh") for o in shuffled], "zh"),
               join_phrases([o.phrase("zh", size=False) for o in shuffled], "zh")]
    return {"en": en, "zh": zh}


def generate_scene(
    seed: int,
    width: int | None = None,
    height: int | None = None,
    n_objects: int | None = None,
    *,
    size_range: tuple[float, float] | None = None,
    background: str | None = None,
    rotate: bool = True,
) -> Scene:
    """One scene from a seed. ``size_range`` (fraction of the shorter side) overrides small/large,
    e.g. (0.02, 0.05) for tiny objects in a large image."""
    rng = random.Random(seed)
    if width is None:
        width = height = rng.randint(224, 512)
    height = height or width
    n_objects = n_objects or rng.choice((1, 1, 2, 2, 3))
    background = background or rng.choice(BACKGROUNDS)
    image = _background(background, width, height, rng)
    draw = ImageDraw.Draw(image)
    cells = rng.sample(POSITIONS, n_objects)
    objects = []
    used_pairs = set()
    for cell in cells:
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        while (shape, color) in used_pairs:  # every object in a scene differs in colour or shape
            shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        used_pairs.add((shape, color))
        size = rng.choice(SIZES)
        lo, hi = size_range or SIZE_RANGES[size]
        side = max(3, int(min(width, height) * rng.uniform(lo, hi)))
        box = _place(cell, side, width, height, rng)
        angle = rng.uniform(0, 360) if rotate else 0.0
        _draw_shape(draw, shape, box, COLORS[color], angle)
        objects.append(SceneObject(shape, color, size, cell, box, angle))
    scene = Scene(image, objects, background, seed)
    scene.captions = caption_variants(objects, rng)
    return scene


def _background(kind: str, width: int, height: int, rng: random.Random) -> Image.Image:
    # Muted mid-tones, so that no background is mistaken for an object colour.
    base = tuple(rng.randint(95, 165) for _ in range(3))
    if kind == "flat":
        return Image.new("RGB", (width, height), base)
    if kind == "gradient":
        other = tuple(max(80, min(180, c + rng.randint(-45, 45))) for c in base)
        strip = Image.linear_gradient("L").resize((width, height))
        if rng.random() < 0.5:
            strip = strip.transpose(Image.Transpose.ROTATE_90).resize((width, height))
        return Image.composite(Image.new("RGB", (width, height), other), Image.new("RGB", (width, height), base), strip)
    # Noise from the scene's own generator (Image.effect_noise would use a global, unseeded one).
    import numpy as np

    grid = np.random.default_rng(rng.getrandbits(32)).normal(128, 30, (max(8, height // 16), max(8, width // 16)))
    small = Image.fromarray(grid.clip(0, 255).astype("uint8"), mode="L").resize((width, height))
    noise = small.filter(ImageFilter.GaussianBlur(2))
    return Image.merge("RGB", [noise.point(lambda v, c=c: max(70, min(185, c + (v - 128) // 3))) for c in base])


def _place(cell: str, side: int, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    col = {"left": 0, "right": 2}.get(cell.split("-")[-1], 1)
    row = {"top": 0, "bottom": 2}.get(cell.split("-")[0], 1)
    if cell in ("left", "right"):
        row = 1
    if cell in ("top", "bottom"):
        col = 1
    cw, ch = width / 3, height / 3
    x_lo, x_hi = col * cw, (col + 1) * cw - side
    y_lo, y_hi = row * ch, (row + 1) * ch - side
    x0 = int(rng.uniform(x_lo, max(x_lo, x_hi))) if x_hi > x_lo else int(col * cw + (cw - side) / 2)
    y0 = int(rng.uniform(y_lo, max(y_lo, y_hi))) if y_hi > y_lo else int(row * ch + (ch - side) / 2)
    x0 = min(max(0, x0), width - side)
    y0 = min(max(0, y0), height - side)
    return (x0, y0, x0 + side, y0 + side)


def _polygon(shape: str, n: int = 0) -> list[tuple[float, float]]:
    """Unit outline centred on the origin, radius about 1."""
    if shape == "square":
        return [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    if shape == "triangle":
        return [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "hexagon":
        return [(math.cos(k * math.pi / 3), math.sin(k * math.pi / 3)) for k in range(6)]
    if shape == "star":
        return [((1.0 if k % 2 == 0 else 0.42) * math.cos(k * math.pi / 5 - math.pi / 2),
                 (1.0 if k % 2 == 0 else 0.42) * math.sin(k * math.pi / 5 - math.pi / 2)) for k in range(10)]
    if shape == "heart":
        pts = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 17, -y / 17 + 0.1))
        return pts
    return [(math.cos(2 * math.pi * k / 48), math.sin(2 * math.pi * k / 48)) for k in range(48)]  # circle


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, color, angle: float) -> None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    rad = math.radians(angle)
    cos_a, sin_a = math.cos(rad), math.sin(rad)
    pts = [(cx + r * (x * cos_a - y * sin_a), cy + r * (x * sin_a + y * cos_a)) for x, y in _polygon(shape)]
    draw.polygon(pts, fill=color)


def object_matches(obj: SceneObject, spec: dict) -> bool:
    return all(getattr(obj, k) == v for k, v in spec.items())


def scene_satisfies(scene_objects: list[SceneObject], specs: list[dict]) -> bool:
    """True when every described object (a dict of attributes) is present in the scene."""
    return all(any(object_matches(o, s) for o in scene_objects) for s in specs)


def caption_specs(objects: list[SceneObject], *, size: bool, position: bool) -> list[dict]:
    """The attribute constraints a caption naming these objects expresses."""
    specs = []
    for o in objects:
        spec = {"shape": o.shape, "color": o.color}
        if size:
            spec["size"] = o.size
        if position:
            spec["position"] = o.position
        specs.append(spec)
    return specs


EN_PREFIXES = ("a ", "a ", "a photo of a ", "there is a ", "an image of a ")


def sample_caption(objects: list[SceneObject], rng: random.Random, lang: str | None = None, *,
                   relative: bool = True) -> tuple[str, list[dict]]:
    """A random true caption for a scene and the attribute constraints it expresses (for training).
    ``relative=False`` (crops): size and position, which are relative to the whole scene, are never stated."""
    lang = lang or rng.choice(("en", "zh"))
    if len(objects) == 1 or rng.random() < 0.15:
        o = rng.choice(objects)
        size, position = relative and rng.random() < 0.7, relative and rng.random() < 0.7
        if relative and len(objects) == 1 and rng.random() < 0.35:
            size = position = True  # the canonical, fullest form
        specs = caption_specs([o], size=size, position=position)
        if lang == "zh":
            core = o.phrase("zh", size=size, position=position)
            return rng.choice(("", "一个", "")) + core if not position else core, specs
        phrase = o.phrase("en", size=size, position=position)
        prefix = rng.choice(EN_PREFIXES)
        return prefix[:-2] + article(phrase) + " " + phrase if prefix.endswith("a ") else prefix + phrase, specs
    shuffled = objects[:]
    rng.shuffle(shuffled)
    size = relative and rng.random() < 0.3
    specs = caption_specs(shuffled, size=size, position=False)
    return join_phrases([o.phrase(lang, size=size) for o in shuffled], lang), specs


UNKNOWN = "?"  # a crop's object: its size and position in the whole scene say nothing about the crop


def crop_around(scene: Scene, rng: random.Random, tries: int = 8) -> tuple[Image.Image, list[SceneObject]] | None:
    """A square crop (40-67 % of the shorter side, the size of Align's and region rerank's tiles) that holds
    one object whole, and the objects it shows. Every other object is either at least 80 % inside (kept, with
    unknown size and position) or at most 5 % inside, so that no caption is half true; None when no such
    crop is found."""
    width, height = scene.image.size
    for _ in range(tries):
        target = rng.choice(scene.objects)
        tx0, ty0, tx1, ty1 = target.box
        side = int(min(width, height) * rng.uniform(0.4, 0.67))
        side = max(side, int(1.2 * (tx1 - tx0)))
        if side > min(width, height):
            continue
        x0 = rng.randint(max(0, tx1 - side), min(tx0, width - side))
        y0 = rng.randint(max(0, ty1 - side), min(ty0, height - side))
        kept, clean = [], True
        for o in scene.objects:
            share = _inside_share(o.box, (x0, y0, x0 + side, y0 + side))
            if share >= 0.8:
                bx0, by0, bx1, by1 = o.box
                box = (max(0, bx0 - x0), max(0, by0 - y0), min(side, bx1 - x0), min(side, by1 - y0))
                kept.append(SceneObject(o.shape, o.color, UNKNOWN, UNKNOWN, box, o.angle))
            elif share > 0.05:
                clean = False
                break
        if clean:
            return scene.image.crop((x0, y0, x0 + side, y0 + side)), kept
    return None


def window_around(boxes: list[tuple], k: int, side: int, image_side: int, rng: random.Random,
                  tries: int = 8) -> tuple[int, int] | None:
    """The top-left corner of a ``side``-px square inside a square image that holds box ``k`` whole and at most
    5 % of any other box; None when none is found (the object is larger than the window, or crowded)."""
    x0, y0, x1, y1 = boxes[k]
    lo_x, hi_x = max(0, math.ceil(x1) - side), min(int(x0), image_side - side)
    lo_y, hi_y = max(0, math.ceil(y1) - side), min(int(y0), image_side - side)
    if lo_x > hi_x or lo_y > hi_y:
        return None
    for _ in range(tries):
        wx, wy = rng.randint(lo_x, hi_x), rng.randint(lo_y, hi_y)
        window = (wx, wy, wx + side, wy + side)
        if all(_inside_share(b, window) <= 0.05 for n, b in enumerate(boxes) if n != k):
            return wx, wy
    return None


def _inside_share(box, window) -> float:
    x0, y0, x1, y1 = box
    ix = max(0, min(x1, window[2]) - max(x0, window[0]))
    iy = max(0, min(y1, window[3]) - max(y0, window[1]))
    return ix * iy / max(1, (x1 - x0) * (y1 - y0))


def vocabulary_texts() -> list[str]:
    """Every word and character any caption template can produce (for the tokenizer)."""
    texts = list(EN_PREFIXES) + ["and , 和 一个 一张 的图片"]
    texts += list(EN_POSITIONS.values()) + list(ZH_POSITIONS.values())
    texts += list(COLORS) + list(SHAPES) + list(SIZES)
    texts += list(ZH_COLORS.values()) + list(ZH_SHAPES.values()) + list(ZH_SIZES.values())
    return texts
