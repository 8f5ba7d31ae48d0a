"""Decoding untrusted image bytes into RGB pictures a model can take.

Pixel counts are checked from the header before any pixel is decoded, so a
small file that claims huge dimensions (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

from PIL import Image, ImageOps, UnidentifiedImageError

from crossmodal.errors import CrossmodalError
from crossmodal.limits import limit, register

# 4096 x 4096 plus room for panoramas; the admin's CROSSMODAL_MAX_PIXELS overrides it.
DEFAULT_MAX_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 50 * 1024 * 1024
REFUSED_FORMATS = {"svg", "svg+xml"}
register("max_pixels", DEFAULT_MAX_PIXELS, "pixels", "one image, checked from its header before it is decoded "
         "(embedded PDF images too)", cap=1_000_000_000, minimum=1, workspace=True)
register("call_pixels", 400_000_000, "pixels", "decoded pixels summed over one call's images; items past it are "
         "refused by name", cap=100_000_000_000, minimum=1, workspace=True)


# ISO-BMFF brands of HEIC/HEIF files (bytes 4-12): Pillow needs the pillow-heif plugin for them.
HEIF_BRANDS = (b"ftypheic", b"ftypheix", b"ftyphevc", b"ftypmif1", b"ftypmsf1")


def max_pixels() -> int:
    return int(limit("max_pixels"))


class PixelBudget:
    """The pixels one call may still decode (``call_pixels``), shared by the threads that decode its items."""

    def __init__(self, pixels: int):
        self.left = pixels
        self.total = pixels
        self.lock = threading.Lock()

    def take(self, pixels: int, param: str) -> None:
        with self.lock:
            if pixels > self.left:
                raise CrossmodalError(
                    f"not decoded: this call's images already used {self.total - self.left:,} of the "
                    f"{self.total:,} pixels one call may decode (call_pixels); send it in another call",
                    param=param, status=413)
            self.left -= pixels


_BUDGET: contextvars.ContextVar[PixelBudget | None] = contextvars.ContextVar("crossmodal_pixels", default=None)


@contextlib.contextmanager
def pixel_budget() -> Iterator[PixelBudget]:
    """A fresh ``call_pixels`` budget for the call in this block (the service enters one per capability call)."""
    budget = PixelBudget(int(limit("call_pixels")))
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied
    width: int
    height: int
    mime_type: str
    notes: list[str]


def _register_optional_plugins() -> None:
    """HEIC/HEIF decode when pillow-heif is installed (AVIF is built into Pillow 11.3+)."""
    global _PLUGINS_REGISTERED
    if _PLUGINS_REGISTERED:
        return
    _PLUGINS_REGISTERED = True
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


_PLUGINS_REGISTERED = False


def decode_image(data: bytes, *, param: str = "image", limit: int | None = None,
                 min_size: Callable[[int, int], tuple[int, int]] | None = None, charge: bool = True) -> DecodedImage:
    """Decode bytes into an RGB image, or raise CrossmodalError naming ``param``.

    ``min_size(width, height)``: the smallest picture the caller needs, given the stored size; a JPEG
    is then decoded at 1/2, 1/4 or 1/8 scale when that still covers it (much faster). ``width`` and
    ``height`` of the result stay the stored image's. ``charge``: count the pixels against the call's budget
    (False for a second decode of an image already counted)."""
    _register_optional_plugins()
    limit = limit or max_pixels()
    if not data:
        raise CrossmodalError("the file is empty (0 bytes); upload an image file", param=param, status=422)
    if len(data) > MAX_IMAGE_BYTES:
        raise CrossmodalError(
            f"the file has {len(data)} bytes, more than the {MAX_IMAGE_BYTES} allowed", param=param, status=413
        )
    head = data[:512].lstrip().lower()
    if head.startswith(b"<?xml") or head.startswith(b"<svg"):
        raise CrossmodalError("SVG is not supported; convert it to PNG or JPEG first", param=param, status=422)
    try:
        # Image.open reads only the header; the size check runs before load().
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            fmt = (probe.format or "").lower()
    except UnidentifiedImageError:
        if data[4:12] in HEIF_BRANDS:
            raise CrossmodalError("HEIC/HEIF images need the pillow-heif plugin (pip install pillow-heif); "
                                  "or convert the image to JPEG", param=param, status=422) from None
        raise CrossmodalError(
            "the file is not an image Pillow can read (JPEG, PNG, WebP, AVIF, GIF, BMP, TIFF)", param=param, status=422
        ) from None
    except Image.DecompressionBombError as exc:
        raise CrossmodalError(f"the image is too large to decode safely ({exc})", param=param, status=413) from None
    except Exception as exc:  # noqa: BLE001 - Pillow's parsers raise OSError, ValueError, TypeError, KeyError,
        # struct.error, ... on hostile headers (the fuzz tests found TypeError from a mutated TIFF)
        raise CrossmodalError(f"the image header is corrupt ({type(exc).__name__}: {exc})", param=param,
                              status=422) from None
    if width * height > limit:
        raise CrossmodalError(
            f"the image is {width}x{height} = {width * height} pixels, more than the {limit} allowed (max_pixels); "
            "downscale it", param=param, status=413)
    budget = _BUDGET.get()
    if budget is not None and charge:
        budget.take(width * height, param)
    draft = min_size(width, height) if min_size else None
    return _load_pixels(data, param, fmt, width, height, limit, draft)


def _load_pixels(data: bytes, param: str, fmt: str, width: int, height: int, limit: int,
                 draft: tuple[int, int] | None = None) -> DecodedImage:
    notes: list[str] = []
    saved_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = limit
        image = Image.open(io.BytesIO(data))
        if getattr(image, "n_frames", 1) > 1:
            notes.append(f"animated image: only the first of {image.n_frames} frames was used")
        image.seek(0)
        if draft and image.format == "JPEG" and image.mode in ("RGB", "L"):
            image.draft(image.mode, draft)
        image.load()
        stored_size = image.size
        image = ImageOps.exif_transpose(image)
        if image.size != stored_size:  # rotated by its EXIF orientation
            width, height = height, width
        image = to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise CrossmodalError(f"the image is too large to decode safely ({exc})", param=param, status=413) from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted bytes is a corrupt file
        raise CrossmodalError(f"the image is corrupt or truncated ({type(exc).__name__}: {exc})", param=param,
                              status=422) from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit
    mime = Image.MIME.get(fmt.upper(), f"image/{fmt}" if fmt else "application/octet-stream")
    return DecodedImage(image=image, width=width, height=height, mime_type=mime, notes=notes)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode (CMYK, 16-bit, palette, alpha) to RGB; transparency over white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray((array / peak * 255.0).clip(0, 255).astype("uint8"), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
