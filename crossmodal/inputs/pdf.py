"""PDF files as pages (and their embedded figures), rendered with pypdfium2 (PDFium: BSD/Apache; PyMuPDF would
bring the AGPL).

PDFium is not thread-safe: every call into it, from any document, holds one process-wide lock. The lock is
taken per page (open, render one page, read its text and figures, close), so the ingest pipeline's other
workers decode images meanwhile, and no rendered page waits in memory for the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from crossmodal.errors import CrossmodalError
from crossmodal.runtime import os_lock

PDF_MAGIC = b"%PDF-"
DEFAULT_DPI = 144
MIN_DPI, MAX_DPI = 36, 600
DEFAULT_MAX_PAGES = 500
MAX_PAGE_PIXELS = 12_000_000  # a rendered page: A4 at 144 dpi is 1.9 MP; larger sheets render at a lower dpi
MAX_TEXT_CHARS = 20_000  # a page's text layer kept in the payload
MIN_FIGURE_SIDE = 32  # px: smaller embedded images are rules, bullets and logos, not figures
_PDFIUM = os_lock()


@dataclass
class PdfPage:
    number: int  # 1-based
    pages: int
    image: object  # RGB PIL image of the rendered page
    text: str
    dpi: float
    figures: list[tuple[object, list[int]]] = field(default_factory=list)  # (RGB image, [x0, y0, x1, y1] px)
    notes: list[str] = field(default_factory=list)


def is_pdf(data: bytes) -> bool:
    """PDF files start with %PDF- (some writers put a few bytes before it: the spec allows 1,024)."""
    return PDF_MAGIC in data[:1024]


def check_dpi(dpi) -> float:
    try:
        value = float(dpi)
    except (TypeError, ValueError):
        raise CrossmodalError(f"'{dpi}' is not a number", param="dpi") from None
    if not MIN_DPI <= value <= MAX_DPI:
        raise CrossmodalError(f"{value:g} is out of range; use {MIN_DPI} to {MAX_DPI} (144 reads small print)",
                              param="dpi")
    return value


def page_count(data: bytes, *, name: str, max_pages: int = DEFAULT_MAX_PAGES) -> int:
    """The number of pages, or a CrossmodalError saying why the file cannot be read (encrypted, damaged,
    empty, over ``max_pages``)."""
    with _PDFIUM:
        document = _open(data, name)
        try:
            count = len(document)
        finally:
            document.close()
    if count == 0:
        raise CrossmodalError("has no pages", param=f"files[{name}]")
    if count > max_pages:
        raise CrossmodalError(f"has {count} pages, more than max_pages ({max_pages}); raise max_pages or split the file",
                              param=f"files[{name}]")
    return count


def render_page(data: bytes, number: int, pages: int, *, name: str, dpi: float = DEFAULT_DPI,
                figures: bool = False) -> PdfPage:
    """Page ``number`` (1-based) at ``dpi`` (lowered for a sheet over MAX_PAGE_PIXELS), its text layer, and with
    ``figures`` its embedded images of at least MIN_FIGURE_SIDE px with their boxes in the rendered page."""
    import pypdfium2 as pdfium

    with _PDFIUM:
        document = _open(data, name)
        try:
            page = _page(document, number, name, pdfium)
            try:
                width_pt, height_pt = page.get_size()
                notes = []
                scale = dpi / 72
                if _pixels(width_pt, height_pt, scale) > MAX_PAGE_PIXELS:
                    scale = math.sqrt(MAX_PAGE_PIXELS / max(1.0, width_pt * height_pt))
                    while _pixels(width_pt, height_pt, scale) > MAX_PAGE_PIXELS:  # PDFium rounds sides up
                        scale *= 0.999
                    notes.append(f"page {number} is {width_pt / 72:.0f}x{height_pt / 72:.0f} in; rendered at "
                                 f"{72 * scale:.0f} dpi to stay within {MAX_PAGE_PIXELS:,} pixels")
                try:
                    image = page.render(scale=scale).to_pil().convert("RGB")
                    text = _text(page)
                except (pdfium.PdfiumError, ValueError, OSError) as exc:
                    raise CrossmodalError(f"page {number} cannot be rendered ({exc}); the file may be damaged",
                                          param=f"files[{name}]") from None
                found = _figures(page, scale, height_pt, pdfium) if figures else []
            finally:
                page.close()
        finally:
            document.close()
    return PdfPage(number, pages, image, text, round(72 * scale, 1), found, notes)


def _page(document, number: int, name: str, pdfium):
    try:
        return document[number - 1]
    except pdfium.PdfiumError as exc:
        raise CrossmodalError(f"page {number} cannot be read ({exc}); the file may be damaged",
                              param=f"files[{name}]") from None


def _pixels(width_pt: float, height_pt: float, scale: float) -> int:
    return math.ceil(width_pt * scale) * math.ceil(height_pt * scale)


def _open(data: bytes, name: str):
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        reason = str(exc)
        if "password" in reason.lower():
            raise CrossmodalError("is encrypted (it needs a password); give an unencrypted copy",
                                  param=f"files[{name}]") from None
        raise CrossmodalError(f"is not a readable PDF ({reason}); the file may be damaged or cut short",
                              param=f"files[{name}]") from None


def _text(page) -> str:
    textpage = page.get_textpage()
    try:
        text = textpage.get_text_bounded() or ""
    finally:
        textpage.close()
    return " ".join(text.split())[:MAX_TEXT_CHARS]


def _figures(page, scale: float, height_pt: float, pdfium) -> list[tuple[object, list[int]]]:
    found = []
    for obj in page.get_objects(filter=[pdfium.raw.FPDF_PAGEOBJ_IMAGE], max_depth=3):
        try:
            left, bottom, right, top = obj.get_bounds()
            picture = obj.get_bitmap(render=False).to_pil().convert("RGB")
        except (pdfium.PdfiumError, ValueError, OSError):
            continue  # an image PDFium cannot decode is skipped; the page itself still goes in
        box = [round(left * scale), round((height_pt - top) * scale), round(right * scale),
               round((height_pt - bottom) * scale)]
        if min(picture.size) >= MIN_FIGURE_SIDE and box[2] - box[0] >= MIN_FIGURE_SIDE:
            found.append((picture, box))
    return found
