"""A corpus of hostile and unusual image files, generated (nothing binary is committed).

    python tests/hostile_corpus.py OUT_DIR     # writes the files, for manual runs against a deployment

Each entry: name -> (bytes, expectation) with expectation "ok" (decodes, maybe with a note) or the words
the error must contain.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

from PIL import Image


def _save(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header and one tiny compressed row stream claiming width x height pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def _bomb() -> bytes:
    """Zeros compress 1000:1: a few KB that inflate to gigabytes if decoded blindly."""
    return _save(Image.new("1", (15000, 15000)), "PNG", optimize=True)


def _exif_rotated() -> bytes:
    image = Image.new("RGB", (60, 30), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    return _save(image, "JPEG", exif=exif)


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)


def _palette_transparent() -> bytes:
    image = Image.new("P", (32, 32), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    return _save(image, "PNG", transparency=0)


def corpus() -> dict[str, tuple[bytes, str]]:
    rgb = Image.new("RGB", (64, 48), (200, 40, 40))
    jpeg = _save(rgb, "JPEG")
    png = _save(rgb, "PNG")
    return {
        "empty.png": (b"", "empty"),
        "text.png": (b"this is not an image at all\n" * 20, "not an image"),
        "html.jpg": (b"<!DOCTYPE html><html><body>404</body></html>", "not an image"),
        "drawing.svg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        "bomb.png": (_bomb(), "pixels"),
        "huge-header.png": (_png_claiming(100_000, 100_000), "pixels"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "ok-or:truncated"),
        "truncated.png": (png[: len(png) // 2], "ok-or:truncated"),
        "corrupt-header.png": (png[:16] + b"\xff" * 40, "not an image"),
        "animated.gif": (_animated("GIF"), "ok"),
        "animated.webp": (_animated("WEBP"), "ok"),
        "sixteen-bit.png": (_save(Image.new("I;16", (40, 40), 40000), "PNG"), "ok"),
        "cmyk.jpg": (_save(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG"), "ok"),
        "palette-alpha.png": (_palette_transparent(), "ok"),
        "rgba.png": (_save(Image.new("RGBA", (40, 40), (0, 0, 0, 0)), "PNG"), "ok"),
        "exif-rotated.jpg": (_exif_rotated(), "ok"),
        "one-pixel.png": (_save(Image.new("RGB", (1, 1)), "PNG"), "ok"),
        "panorama.png": (_save(Image.new("RGB", (8000, 20), "blue"), "PNG"), "ok"),
        "avif.avif": (_save(rgb, "AVIF"), "ok"),
        "heic.heic": (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64, "ok-or:pillow-heif"),
    }


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")
    out.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in corpus().items():
        (out / name).write_bytes(data)
    print(f"{len(corpus())} files in {out}")
