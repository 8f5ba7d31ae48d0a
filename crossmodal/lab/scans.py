"""Generated text pictures with their ground truth, for OCR tests and benchmarks and for exact-code retrieval:
rendered lines, A4 pages at 144 dpi that look scanned (slight tilt, blur, noise), screenshots, and photo-like
pictures without any text. Each page and screenshot carries a unique code (``XH-4562-X5``) inside a sentence.

Fonts are Debian's (``apt-get install fonts-dejavu-core fonts-noto-cjk``): DejaVu for Latin text, Noto CJK
(simplified Chinese faces) for Chinese. Everything is deterministic in its seed; nothing binary is stored.
"""

from __future__ import annotations

import functools
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_PACKAGES = "fonts-dejavu-core fonts-noto-cjk"
# name -> (file, face inside a collection or None)
FONT_FILES = {
    "dejavu-sans": ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", None),
    "dejavu-serif": ("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf", None),
    "dejavu-sans-mono": ("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf", None),
    "dejavu-sans-bold": ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", None),
    "noto-sans-cjk": ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", "Noto Sans CJK SC"),
    "noto-serif-cjk": ("/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc", "Noto Serif CJK SC"),
}
LATIN_FONTS = ("dejavu-sans", "dejavu-serif", "dejavu-sans-mono")
CJK_FONTS = ("noto-sans-cjk", "noto-serif-cjk")
LANGUAGES = ("en", "zh")

A4_INCHES = (8.27, 11.69)
PAGE_DPI = 144
PAGE_MARGIN_INCHES = 0.7
PAGE_LINES = (25, 40)  # lines of text on a generated page
MAX_TILT_DEGREES = 1.5  # "slight tilt": a sheet laid by hand on a flatbed
SCAN_NOISE_SIGMA = 5.0  # grey levels of sensor noise
SCREEN_SIZES = ((1280, 800), (1024, 640), (1440, 900))

EN_WORDS = {
    "adjective": "quick quiet bright heavy narrow early final annual careful modern local formal spare broken "
                 "safe fresh simple detailed signed blue green yellow second third empty open closed urgent".split(),
    "noun": "report invoice order engine valve pump battery cable sensor filter bearing motor panel bracket "
            "shipment customer supplier warehouse account ledger meeting schedule contract budget review "
            "manual drawing sample label pallet container printer scanner server network window station "
            "harbour garden library kitchen office bridge river mountain village market".split(),
    "verb": "checked replaced shipped approved signed returned measured cleaned tested listed opened counted "
            "repaired loaded moved stored printed scanned sorted weighed delivered inspected recorded".split(),
    "place": "in the north hall|near the loading dock|on the second floor|at the main gate|before the audit|"
             "after the storm|during the night shift|by the east door|under the old bridge|beside the tower".split("|"),
    "time": "on Monday|last week|this morning|in March|at noon|every Friday|since 2019|by the end of June".split("|"),
}
ZH_WORDS = {
    "subject": "客户 供应商 仓库 工程师 财务部 检查员 司机 经理 技术员 采购部 销售部 实验室".split(),
    "verb": "检查了 更换了 发送了 批准了 签收了 退回了 测量了 清洗了 测试了 登记了 修理了 装载了 整理了 打印了".split(),
    "object": "订单 发票 水泵 阀门 电池 电缆 传感器 过滤器 轴承 电机 面板 合同 预算 报告 样品 标签 托盘 服务器".split(),
    "time": "上周 今天上午 三月份 中午 每个星期五 去年 月底之前 昨天晚上".split(),
    "place": "在北楼 在装卸区 在二楼 在大门口 在东门旁边 在旧桥下 在仓库里 在办公室".split(),
}
CODE_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # no I or O: codes people type are chosen to avoid 1/I and 0/O


@dataclass
class TextLine:
    """One line of ground truth: its text and the four corners of its ink (clockwise from the top left)
    in the picture's pixels."""

    text: str
    box: list[tuple[float, float]]
    language: str
    font: str
    size: int

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        xs, ys = [p[0] for p in self.box], [p[1] for p in self.box]
        return min(xs), min(ys), max(xs), max(ys)


@dataclass
class TextPicture:
    """A generated picture and what is written on it, in reading order."""

    image: Image.Image
    lines: list[TextLine]
    kind: str  # line | page | screenshot | photo
    seed: int
    code: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


class FontMissing(RuntimeError):
    pass


@functools.lru_cache(maxsize=None)
def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """One of FONT_FILES at a pixel size; FontMissing names the Debian packages when the file is absent."""
    path, face = FONT_FILES[name]
    if not Path(path).is_file():
        raise FontMissing(f"{path} is missing: apt-get install {FONT_PACKAGES}")
    if face is None:
        return ImageFont.truetype(path, size)
    for index in range(16):
        candidate = ImageFont.truetype(path, size, index=index)
        if candidate.getname()[0] == face:
            return candidate
    raise FontMissing(f"{path} has no face '{face}': apt-get install {FONT_PACKAGES}")


def fonts_available(names=tuple(FONT_FILES)) -> bool:
    return all(Path(FONT_FILES[name][0]).is_file() for name in names)


def make_code(rng: random.Random) -> str:
    """A part or reference number like XH-4562-X5."""
    return (f"{rng.choice(CODE_LETTERS)}{rng.choice(CODE_LETTERS)}-{rng.randrange(1000, 10000)}-"
            f"{rng.choice(CODE_LETTERS)}{rng.randrange(10)}")


def unique_codes(count: int, seed: int = 0) -> list[str]:
    rng, codes = random.Random(f"codes-{seed}"), {}
    while len(codes) < count:
        codes.setdefault(make_code(rng), None)
    return list(codes)


def english_sentence(rng: random.Random) -> str:
    w = EN_WORDS
    first = (f"The {rng.choice(w['adjective'])} {rng.choice(w['noun'])} was {rng.choice(w['verb'])} "
             f"{rng.choice(w['place'])}")
    tail = rng.choice([
        f" {rng.choice(w['time'])}.",
        f", and {rng.randrange(2, 90)} {rng.choice(w['noun'])}s were {rng.choice(w['verb'])} {rng.choice(w['time'])}.",
        f" with the {rng.choice(w['adjective'])} {rng.choice(w['noun'])}.",
        f"; see the {rng.choice(w['noun'])} list, page {rng.randrange(2, 40)}.",
    ])
    return first + tail


def chinese_sentence(rng: random.Random) -> str:
    w = ZH_WORDS
    count = rng.randrange(2, 60)
    return rng.choice([
        f"{rng.choice(w['time'])}{rng.choice(w['subject'])}{rng.choice(w['place'])}{rng.choice(w['verb'])}"
        f"{count}个{rng.choice(w['object'])}。",
        f"{rng.choice(w['subject'])}{rng.choice(w['time'])}{rng.choice(w['verb'])}{rng.choice(w['object'])}和"
        f"{rng.choice(w['object'])}，共{count}件。",
        f"请把{rng.choice(w['object'])}交给{rng.choice(w['subject'])}，{rng.choice(w['place'])}等候。",
    ])


def code_sentence(code: str, language: str, rng: random.Random) -> str:
    if language == "zh":
        return rng.choice([f"回复时请注明编号{code}。", f"本批次的编号是{code}，请核对。"])
    return rng.choice([f"Please quote reference {code} when you reply.", f"The part number is {code} on the label.",
                       f"Record {code} was {rng.choice(EN_WORDS['verb'])} {rng.choice(EN_WORDS['time'])}."])


def sentence(language: str, rng: random.Random) -> str:
    return chinese_sentence(rng) if language == "zh" else english_sentence(rng)


def wrap(text: str, face: ImageFont.FreeTypeFont, width: float, language: str) -> list[str]:
    """Greedy line breaking at spaces (English) or between characters (Chinese; a run of Latin letters, digits
    and hyphens, such as a code, stays whole) to fit ``width`` pixels."""
    units = re.findall(r"[A-Za-z0-9\-]+|.", text) if language == "zh" else text.split(" ")
    joiner = "" if language == "zh" else " "
    lines, current = [], ""
    for unit in units:
        candidate = f"{current}{joiner}{unit}" if current else unit
        if current and face.getlength(candidate) > width:
            lines.append(current)
            current = unit
        else:
            current = candidate
    return [*lines, current] if current else lines


def draw_line(draw: ImageDraw.ImageDraw, origin: tuple[float, float], text: str, face, fill, language: str,
              font_name: str, size: int) -> TextLine:
    """Draw ``text`` with its top-left anchor at ``origin``; the ground-truth box is the ink's bounds."""
    draw.text(origin, text, font=face, fill=fill, anchor="la")
    x0, y0, x1, y1 = draw.textbbox(origin, text, font=face, anchor="la")
    return TextLine(text, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], language, font_name, size)


def rendered_line(seed: int, language: str = "en", font_name: str | None = None, size: int | None = None,
                  noise: bool = False) -> TextPicture:
    """One line of text on a light background (a crop-like picture): for character accuracy by font and size."""
    rng = random.Random(f"line-{seed}-{language}")
    font_name = font_name or rng.choice(CJK_FONTS if language == "zh" else LATIN_FONTS)
    size = size or rng.randrange(18, 40)
    text = sentence(language, rng)
    if language == "en" and rng.random() < 0.3:
        text = code_sentence(make_code(rng), language, rng)
    face = font(font_name, size)
    margin = size // 2 + rng.randrange(4, 16)
    width = int(face.getlength(text)) + 2 * margin
    height = int(size * 1.3) + 2 * margin
    paper = rng.randrange(235, 256)
    image = Image.new("RGB", (width, height), (paper, paper, paper))
    ink = rng.randrange(0, 60)
    line = draw_line(ImageDraw.Draw(image), (margin, margin), text, face, (ink, ink, ink), language, font_name, size)
    if noise:
        image = add_scan_noise(image, rng)
    return TextPicture(image, [line], "line", seed, meta={"font": font_name, "size": size})


def page_size(dpi: int = PAGE_DPI) -> tuple[int, int]:
    return round(A4_INCHES[0] * dpi), round(A4_INCHES[1] * dpi)


def scanned_page(seed: int, language: str = "en", code: str | None = None, lines: int | None = None,
                 dpi: int = PAGE_DPI, tilt: bool = True, noise: bool = True, font_name: str | None = None) -> TextPicture:
    """An A4 page at ``dpi`` of 25-40 lines (a title, paragraphs, one sentence carrying ``code``), scanned: slight
    tilt, blur and noise. ``language``: en, zh or mixed (paragraphs in both)."""
    for attempt in range(PAGE_ATTEMPTS):  # another draw of sentences when the code's sentence was cut off
        # the code drawn by the first draw is kept for the next ones, as the recursive version passed it on
        page, code = _page(seed + 10_000 * attempt, language, code, lines, dpi, tilt, noise, font_name)
        if page is not None:
            return page
    raise ValueError(f"lines={lines}: the page's code never fitted in {PAGE_ATTEMPTS} draws; ask for more lines")


PAGE_ATTEMPTS = 20


def _page(seed: int, language: str, code: str | None, lines: int | None, dpi: int, tilt: bool, noise: bool,
          font_name: str | None) -> tuple[TextPicture | None, str]:
    rng = random.Random(f"page-{seed}")
    code = code or make_code(rng)
    wanted = lines or rng.randrange(PAGE_LINES[0], PAGE_LINES[1] + 1)
    width, height = page_size(dpi)
    margin = round(PAGE_MARGIN_INCHES * dpi)
    pitch = (height - 2 * margin) / (wanted + 1)  # the title takes two lines' room
    size = max(12, round(pitch / 1.55))
    paper = rng.randrange(240, 256)
    image = Image.new("RGB", (width, height), (paper, paper, paper))
    draw = ImageDraw.Draw(image)
    truth: list[TextLine] = []

    def font_for(language_of_line: str) -> str:
        if font_name and (font_name in CJK_FONTS) == (language_of_line == "zh"):
            return font_name
        return CJK_FONTS[seed % 2] if language_of_line == "zh" else LATIN_FONTS[seed % 3]

    title_lang = "zh" if language == "zh" else "en"
    title = (f"{rng.choice(ZH_WORDS['object'])}检查报告 第{seed % 97 + 1}号" if title_lang == "zh"
             else f"{rng.choice(EN_WORDS['noun']).title()} report no. {seed % 97 + 1}")
    title_font = font_for(title_lang)
    y = margin
    truth.append(draw_line(draw, (margin, y), title, font(title_font, round(size * 1.5)), (0, 0, 0), title_lang,
                           title_font, round(size * 1.5)))
    y += 2 * pitch
    code_line = rng.randrange(2, wanted - 2)
    paragraph_lang = title_lang
    while len(truth) < wanted:
        if language == "mixed":
            paragraph_lang = "zh" if paragraph_lang == "en" else "en"
        name = font_for(paragraph_lang)
        face = font(name, size)
        sentences = [sentence(paragraph_lang, rng) for _ in range(rng.randrange(2, 5))]
        if code_line is not None and len(truth) >= code_line:
            sentences.insert(rng.randrange(len(sentences) + 1), code_sentence(code, paragraph_lang, rng))
            code_line = None
        text = ("" if paragraph_lang == "zh" else " ").join(sentences)
        for row in wrap(text, face, width - 2 * margin, paragraph_lang):
            if len(truth) >= wanted:
                break
            ink = rng.randrange(0, 50)
            truth.append(draw_line(draw, (margin, y), row, face, (ink, ink, ink), paragraph_lang, name, size))
            y += pitch
    if code_line is not None or code not in "".join(line.text for line in truth).replace(" ", ""):
        return None, code  # the code was cut off
    if tilt:
        image, truth = rotated(image, truth, rng.uniform(-MAX_TILT_DEGREES, MAX_TILT_DEGREES), paper)
    if noise:
        image = add_scan_noise(image, rng)
    return TextPicture(image, truth, "page", seed, code, meta={"size": size, "dpi": dpi, "language": language}), code


def screenshot(seed: int, code: str | None = None, dark: bool | None = None) -> TextPicture:
    """An application window: a title bar, a sidebar, a panel of sentences and a field holding ``code``."""
    rng = random.Random(f"screen-{seed}")
    code = code or make_code(rng)
    dark = rng.random() < 0.3 if dark is None else dark
    width, height = rng.choice(SCREEN_SIZES)
    background, panel, ink, accent = (((30, 32, 36), (44, 47, 53), (225, 225, 225), (70, 130, 220)) if dark
                                      else ((238, 240, 243), (255, 255, 255), (25, 25, 25), (40, 100, 200)))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    size = rng.randrange(15, 20)
    sans = font("dejavu-sans", size)
    truth: list[TextLine] = []
    draw.rectangle((0, 0, width, 2 * size + 10), fill=accent)
    app = f"{rng.choice(EN_WORDS['noun']).title()} tracker"
    truth.append(draw_line(draw, (16, 8), app, font("dejavu-sans-bold", size + 2), (255, 255, 255), "en",
                           "dejavu-sans-bold", size + 2))
    sidebar = 200
    y = 2 * size + 30
    for entry in rng.sample(EN_WORDS["noun"], 6):
        truth.append(draw_line(draw, (20, y), entry.title(), sans, ink, "en", "dejavu-sans", size))
        y += 2 * size
    draw.rectangle((sidebar + 20, 2 * size + 24, width - 20, height - 20), fill=panel)
    x, y = sidebar + 40, 2 * size + 44
    label = rng.choice(["Ticket", "Reference", "Part number", "Order"])
    truth.append(draw_line(draw, (x, y), f"{label}: {code}", font("dejavu-sans-bold", size + 4), ink, "en",
                           "dejavu-sans-bold", size + 4))
    y += 3 * size
    for _ in range(rng.randrange(3, 6)):
        for row in wrap(english_sentence(rng), sans, width - sidebar - 100, "en"):
            if y > height - 4 * size:
                break
            truth.append(draw_line(draw, (x, y), row, sans, ink, "en", "dejavu-sans", size))
            y += round(1.6 * size)
        y += size
    return TextPicture(image, truth, "screenshot", seed, code, meta={"size": size, "dark": dark})


def photo_like(seed: int, size: tuple[int, int] = (1024, 768)) -> TextPicture:
    """A picture without text, built like a landscape photo: a sky graded towards the horizon, ground with
    large-scale shading and fine texture, soft round shapes (trees, stones) and sensor grain. Detection should
    find no lines in it."""
    rng = np.random.default_rng(seed)
    width, height = size
    horizon = int(height * rng.uniform(0.35, 0.6))
    rows = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    sky_top, sky_low = rng.uniform([40, 90, 170], [110, 150, 235]), rng.uniform([170, 190, 210], [230, 235, 250])
    ground_near, ground_far = rng.uniform([40, 60, 20], [110, 120, 60]), rng.uniform([90, 110, 60], [150, 160, 110])
    depth = np.clip((rows * height - horizon) / max(1, height - horizon), 0, 1)
    sky = sky_top + (sky_low - sky_top) * np.clip(rows * height / max(1, horizon), 0, 1)
    ground = ground_far + (ground_near - ground_far) * depth
    pixels = np.where(rows * height < horizon, sky, ground) * np.ones((1, width, 1), np.float32)
    for scale, strength in ((8, 30.0), (32, 14.0), (128, 6.0)):  # ground texture, coarse to fine, smoothed
        coarse = rng.normal(0, 1, (max(2, height * scale // width), scale)).astype(np.float32)
        layer = np.asarray(Image.fromarray(coarse, mode="F").resize(size, Image.Resampling.BICUBIC))
        pixels += (strength * layer * (rows * height >= horizon)[..., 0])[..., None]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    shapes = Image.new("L", size, 0)
    draw = ImageDraw.Draw(shapes)
    for _ in range(int(rng.integers(3, 9))):
        cx, cy, r = rng.uniform(0, width), rng.uniform(horizon - 80, height), rng.uniform(30, 150)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r * rng.uniform(0.5, 1.0)), fill=int(rng.integers(120, 230)))
    tint = Image.new("RGB", size, tuple(int(v) for v in rng.uniform([20, 50, 10], [90, 110, 60])))
    image = Image.composite(tint, image, shapes.filter(ImageFilter.GaussianBlur(6)))
    grain = rng.normal(0, 3, (height, width, 1))
    return TextPicture(Image.fromarray(np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype(np.uint8)),
                       [], "photo", seed)


def rotated(image: Image.Image, lines: list[TextLine], degrees: float, fill: int):
    """The page turned ``degrees`` counter-clockwise about its centre, with the boxes turned alike."""
    turned = image.rotate(degrees, resample=Image.Resampling.BICUBIC, fillcolor=(fill, fill, fill))
    cx, cy = image.width / 2, image.height / 2
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))

    def turn(point):
        dx, dy = point[0] - cx, point[1] - cy
        return (cx + c * dx + s * dy, cy - s * dx + c * dy)

    return turned, [TextLine(line.text, [turn(p) for p in line.box], line.language, line.font, line.size)
                    for line in lines]


def add_scan_noise(image: Image.Image, rng: random.Random) -> Image.Image:
    """A scanner's softness and sensor noise."""
    blurred = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.7)))
    noise = np.random.default_rng(rng.randrange(2 ** 32)).normal(0, SCAN_NOISE_SIGMA, (image.height, image.width, 1))
    return Image.fromarray(np.clip(np.asarray(blurred, np.float32) + noise, 0, 255).astype(np.uint8))


def coded_documents(count: int, seed: int = 0, screenshot_share: float = 0.3,
                    languages=("en", "en", "mixed", "zh")) -> list[TextPicture]:
    """``count`` pictures (scanned pages and screenshots), each carrying its own unique code: the corpus of the
    exact-code retrieval benchmark (picture.code is the answer to a query for it)."""
    rng = random.Random(f"documents-{seed}")
    pictures = []
    for index, code in enumerate(unique_codes(count, seed)):
        item_seed = seed * 1_000_003 + index
        if rng.random() < screenshot_share:
            pictures.append(screenshot(item_seed, code))
        else:
            pictures.append(scanned_page(item_seed, languages[index % len(languages)], code))
    return pictures


def line_set(count: int, language: str, seed: int = 0, fonts=None, sizes=(18, 24, 32)) -> list[TextPicture]:
    """Rendered lines over every font of the language and the given sizes (character accuracy by font and size)."""
    fonts = fonts or (CJK_FONTS if language == "zh" else LATIN_FONTS)
    return [rendered_line(seed * 100_003 + k, language, fonts[k % len(fonts)], sizes[(k // len(fonts)) % len(sizes)])
            for k in range(count)]


# Measures of reading quality against ground truth.

def edit_alignment(truth: str, guess: str) -> tuple[int, list[int | None]]:
    """Levenshtein distance and, for each position of ``truth``, the position of ``guess`` aligned with it
    (None where the character was deleted)."""
    n, m = len(truth), len(guess)
    cost = np.zeros((n + 1, m + 1), np.int32)
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    guess_array = np.frombuffer(guess.encode("utf-32-le"), np.uint32) if m else np.zeros(0, np.uint32)
    for i in range(1, n + 1):
        substitution = cost[i - 1, :-1] + (guess_array != ord(truth[i - 1]))
        deletion = cost[i - 1, 1:] + 1
        row = np.minimum(substitution, deletion)
        # insertions run along the row: a running minimum of (row[j] - j) + j
        best = np.minimum.accumulate(np.concatenate([[cost[i, 0]], row]) - np.arange(m + 1)) + np.arange(m + 1)
        cost[i, 1:] = best[1:]
    mapping: list[int | None] = [None] * n
    i, j = n, m
    while i > 0 and j > 0:
        if cost[i, j] == cost[i - 1, j - 1] + (truth[i - 1] != guess[j - 1]):
            mapping[i - 1] = j - 1
            i, j = i - 1, j - 1
        elif cost[i, j] == cost[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    return int(cost[n, m]), mapping


def without_spaces(text: str) -> str:
    return "".join(text.split())


def character_errors(truth: str, guess: str) -> tuple[int, int]:
    """(edits, characters of truth), whitespace ignored: character accuracy is 1 - edits / characters."""
    truth, guess = without_spaces(truth), without_spaces(guess)
    return edit_alignment(truth, guess)[0], len(truth)


def matched_lines(truth: list[TextLine], guesses) -> tuple[list[str], list[str]]:
    """Pair read lines with true lines by place, whatever order they were read in: each guess (text, its four
    corners) goes to the true line whose box holds the guess's centre. Returns, per true line, the text of its
    guesses left to right ("" when none), and the guesses that fell on no line."""
    assigned: list[list[tuple[float, str]]] = [[] for _ in truth]
    stray = []
    for text, box in guesses:
        corners = np.asarray(box, np.float64).reshape(-1, 2)
        centre = corners.mean(0)
        inside = [k for k, line in enumerate(truth) if _holds(np.asarray(line.box, np.float64), centre)]
        if inside:
            # Boxes of neighbouring lines can meet; the nearest centre line wins.
            best = min(inside, key=lambda k: abs(centre[1] - np.mean([p[1] for p in truth[k].box])))
            assigned[best].append((float(corners[:, 0].min()), text))
        else:
            stray.append(text)
    return [" ".join(text for _, text in sorted(parts)) for parts in assigned], stray


def _holds(polygon: np.ndarray, point: np.ndarray) -> bool:
    """Whether a convex polygon (corners in order, either direction) holds the point."""
    edges = np.roll(polygon, -1, axis=0) - polygon
    cross = edges[:, 0] * (point[1] - polygon[:, 1]) - edges[:, 1] * (point[0] - polygon[:, 0])
    return bool(np.all(cross >= 0) or np.all(cross <= 0))


def page_errors(truth: list[TextLine], guesses) -> tuple[int, int]:
    """(edits, characters of truth) over a picture, whitespace ignored: each true line against what was read on
    it, and every character read off any line counted as an error."""
    read, stray = matched_lines(truth, guesses)
    edits = sum(character_errors(line.text, text)[0] for line, text in zip(truth, read))
    return edits + sum(len(without_spaces(text)) for text in stray), sum(len(without_spaces(l.text)) for l in truth)


def page_word_boundaries(truth: list[TextLine], guesses) -> tuple[int, int, int]:
    """word_boundaries summed over the English lines of a picture, lines paired by place."""
    read, _ = matched_lines(truth, guesses)
    totals = [0, 0, 0]
    for line, text in zip(truth, read):
        if line.language == "en":
            totals = [a + b for a, b in zip(totals, word_boundaries(line.text, text))]
    return tuple(totals)


def bare_and_cuts(text: str) -> tuple[str, set[int]]:
    """A line without its whitespace, and where the whitespace was (positions in the bare text): how lines are
    aligned when spaces are measured apart from characters."""
    bare, cuts = [], set()
    for char in text.strip():
        if char.isspace():
            cuts.add(len(bare))
        else:
            bare.append(char)
    return "".join(bare), cuts


def word_boundaries(truth: str, guess: str) -> tuple[int, int, int]:
    """(English words whose both boundaries the guess has, words, spaces the guess has that truth has not).
    The texts are aligned with whitespace removed, so a misread letter does not count against the spaces."""
    truth_bare, truth_cuts = bare_and_cuts(truth)
    guess_bare, guess_cuts = bare_and_cuts(guess)
    _, mapping = edit_alignment(truth_bare, guess_bare)
    mapped = {cut: mapping[cut] for cut in truth_cuts if mapping[cut] is not None}
    found = {cut for cut, position in mapped.items() if position in guess_cuts}
    edges = [0, *sorted(truth_cuts), len(truth_bare)]
    words = len(edges) - 1
    kept = sum(1 for start, end in zip(edges, edges[1:])
               if (start == 0 or start in found) and (end == len(truth_bare) or end in found))
    spurious = len(guess_cuts - set(mapped.values()))
    return kept, words, spurious
