"""PDF files as pages (and their embedded figures), rendered with pypdfium2 (PDFium: BSD/Apache; PyMuPDF would
bring the AGPL), in worker processes that can be stopped.

A PDF is a program: a 2 KB file of nested forms can take a minute and a gigabyte to draw, a 1.6 KB one can
hold 30,000 figures, a 140 KB one a 12,000 x 12,000 image. So PDFium runs only in disposable worker processes
(crossmodal/workers/tasks.py), each under ``pdf_worker_memory_mb``: a ``PdfReader`` opens a document once in one
worker, then renders its pages one by one, each within ``pdf_page_seconds``. A page past its budget, or one
that exhausts its worker's memory, costs its caller that page (an error naming it) and a new worker; the
caller's process never runs PDFium, so no lock or thread of it is held, and another caller's document renders
meanwhile in another worker (``pdf_workers``). Figures have budgets per page and per document, checked before
anything is decoded, and an embedded image must meet the same pixel limit as an image file before it is
decoded. (PDFium is not thread-safe: one worker process renders one page at a time.)
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

from crossmodal.errors import CrossmodalError
from crossmodal.limits import limit, register
from crossmodal.workers.tasks import TaskPool

PDF_MAGIC = b"%PDF-"
DEFAULT_DPI = 144
MIN_DPI, MAX_DPI = 36, 600
DEFAULT_MAX_PAGES = 500
MAX_PAGE_PIXELS = 12_000_000  # a rendered page: A4 at 144 dpi is 1.9 MP; larger sheets render at a lower dpi
MAX_TEXT_CHARS = 20_000  # a page's text layer kept in the payload
MIN_FIGURE_SIDE = 32  # px: smaller embedded images are rules, bullets and logos, not figures
FIGURE_DEPTH = 3  # form XObjects looked into for figures
# After this many pages of one document that pass their budget or crash their worker, the rest of the
# document is refused: a file made of bombs costs its caller two pages' budgets, not one per page.
MAX_FAILED_PAGES = 2

register("pdf_pages", 2000, "pages", "pages of one PDF (the max_pages parameter asks at most this many)",
         cap=100_000, minimum=1, workspace=True)
register("pdf_page_seconds", 10, "s", "rendering one PDF page (and finding its figures) in a worker process; "
         "past it the worker is killed and the page refused", cap=600, minimum=0.5, workspace=True, integer=False)
register("pdf_workers", 2, "processes", "PDF worker processes (documents rendered side by side)", cap=64,
         minimum=1)
register("pdf_worker_memory_mb", 1024, "MB", "address space of one PDF worker process", cap=1 << 20, minimum=256)
register("figures_per_page", 32, "figures", "embedded figures kept from one PDF page", cap=10_000,
         workspace=True)
register("figures_per_document", 256, "figures", "embedded figures kept from one PDF", cap=100_000,
         workspace=True)

POOL = TaskPool("PDF", size=lambda: int(limit("pdf_workers")),
                memory_limit=lambda: int(limit("pdf_worker_memory_mb")) * 2**20)


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


def check_max_pages(max_pages) -> int:
    """The ``max_pages`` parameter: a whole number from 1 to the ``pdf_pages`` limit."""
    pages = DEFAULT_MAX_PAGES if max_pages in (None, "") else max_pages
    try:
        pages = int(pages)
    except (TypeError, ValueError):
        raise CrossmodalError(f"'{max_pages}' is not a whole number", param="max_pages") from None
    cap = int(limit("pdf_pages"))
    if not 1 <= pages <= cap:
        raise CrossmodalError(f"{pages} is out of range; use 1 to {cap} pages (pdf_pages: the plugin's limit for "
                              "one document; split longer files)", param="max_pages")
    return pages


class PdfReader:
    """One PDF open in a worker process: ``pages``, then ``page(n)`` for each page wanted (from any thread; one
    page renders at a time). Use it as a context manager: the worker goes back to the pool at the end."""

    def __init__(self, data: bytes, name: str, *, max_pages: int = DEFAULT_MAX_PAGES):
        self.data, self.name, self.max_pages = data, name, max_pages
        self.lock = threading.Lock()
        self.failed_pages = 0
        self.figures_left = int(limit("figures_per_document"))
        self._session = None
        self.worker = None
        self.pages = 0

    def __enter__(self) -> "PdfReader":
        self.pages = self._open()
        return self

    def __exit__(self, *exc) -> None:
        self._release()

    def _open(self) -> int:
        from crossmodal.lanes import time_left

        self._session = POOL.session(wait=time_left(60.0))
        self.worker = self._session.__enter__()
        try:
            count = self._call(_open_in_worker, (self.data, self.name), "opening the file")
        except BaseException:
            self._release()
            raise
        if count == 0:
            raise CrossmodalError("has no pages", param=self.param)
        if count > self.max_pages:
            raise CrossmodalError(f"has {count} pages, more than max_pages ({self.max_pages}); raise max_pages (up "
                                  f"to {limit('pdf_pages'):g}) or split the file", param=self.param)
        return count

    def _release(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            session.__exit__(None, None, None)

    @property
    def param(self) -> str:
        return f"files[{self.name}]"

    def _call(self, fn, args: tuple, what: str):
        """``fn`` in the worker within the page budget (and the call's time left)."""
        from crossmodal.lanes import time_left
        from crossmodal.workers.tasks import describe_exit  # noqa: F401 - its messages name the worker's end

        budget = float(limit("pdf_page_seconds"))
        seconds = time_left(budget)
        try:
            return self.worker.call(fn, args, {}, seconds)
        except TimeoutError:
            raise CrossmodalError(f"{what} took longer than {seconds:.1f} s (pdf_page_seconds: {budget:g}); it was "
                                  "stopped; the file may be built to exhaust a reader", param=self.param,
                                  status=422) from None
        except (ChildProcessError, MemoryError) as exc:
            raise CrossmodalError(f"{what} needed more than the {limit('pdf_worker_memory_mb'):g} MB a PDF "
                                  f"worker may use (pdf_worker_memory_mb), or crashed it ({exc}); it was stopped; "
                                  "the file may be built to exhaust a reader", param=self.param,
                                  status=422) from None

    def page(self, number: int, *, dpi: float = DEFAULT_DPI, figures: bool = False) -> PdfPage:
        with self.lock:
            if self.failed_pages >= MAX_FAILED_PAGES:
                raise CrossmodalError(f"page {number} was not read: {self.failed_pages} pages of this file passed "
                                      "their rendering budget", param=self.param, status=422)
            if self.worker is None or not self.worker.alive():
                self._release()
                self._open()
            budget = min(int(limit("figures_per_page")), self.figures_left) if figures else 0
            try:
                raw = self._call(_render_in_worker, (number, self.pages, dpi, budget, _max_pixels()),
                                 f"page {number}")
            except CrossmodalError:
                if not self.worker.alive():
                    self.failed_pages += 1
                raise
            self.figures_left -= len(raw["figures"])
        return _page_from(raw, number, self.pages)


def page_count(data: bytes, *, name: str, max_pages: int = DEFAULT_MAX_PAGES) -> int:
    """The number of pages, or a CrossmodalError saying why the file cannot be read (encrypted, damaged,
    empty, over ``max_pages``)."""
    with PdfReader(data, name, max_pages=max_pages) as reader:
        return reader.pages


def render_page(data: bytes, number: int, pages: int, *, name: str, dpi: float = DEFAULT_DPI,
                figures: bool = False) -> PdfPage:
    """One page of a document (a reader of its own: for a series of pages, use a PdfReader)."""
    with PdfReader(data, name, max_pages=max(pages, 1)) as reader:
        return reader.page(number, dpi=dpi, figures=figures)


def _max_pixels() -> int:
    from crossmodal.inputs.images import max_pixels

    return max_pixels()


def _page_from(raw: dict, number: int, pages: int) -> PdfPage:
    from PIL import Image

    image = Image.frombytes("RGB", raw["size"], raw["pixels"])
    found = [(Image.frombytes("RGB", size, pixels), box) for size, pixels, box in raw["figures"]]
    return PdfPage(number, pages, image, raw["text"], raw["dpi"], found, raw["notes"])


# -- inside a PDF worker process -------------------------------------------------------------------------------
_OPEN: list = []  # the document this worker has open: [PdfDocument]


def _open_in_worker(data: bytes, name: str) -> int:
    import pypdfium2 as pdfium

    for document in _OPEN:
        document.close()
    _OPEN.clear()
    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        reason = str(exc)
        if "password" in reason.lower():
            raise CrossmodalError("is encrypted (it needs a password); give an unencrypted copy",
                                  param=f"files[{name}]") from None
        raise CrossmodalError(f"is not a readable PDF ({reason}); the file may be damaged or cut short",
                              param=f"files[{name}]") from None
    _OPEN.append(document)
    return len(document)


def _render_in_worker(number: int, pages: int, dpi: float, figure_budget: int, max_pixels: int) -> dict:
    """Page ``number`` (1-based) of the open document at ``dpi`` (lowered for a sheet over MAX_PAGE_PIXELS), its
    text layer, and up to ``figure_budget`` embedded images of at least MIN_FIGURE_SIDE px with their boxes in
    the rendered page; as raw RGB bytes (they travel back over a pipe)."""
    import pypdfium2 as pdfium

    document = _OPEN[0]
    try:
        page = document[number - 1]
    except pdfium.PdfiumError as exc:
        raise CrossmodalError(f"page {number} cannot be read ({exc}); the file may be damaged") from None
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
            raise CrossmodalError(f"page {number} cannot be rendered ({exc}); the file may be damaged") from None
        found = _figures(page, scale, height_pt, pdfium, figure_budget, max_pixels, notes, number)
    finally:
        page.close()
    return {"size": image.size, "pixels": image.tobytes(), "text": text, "dpi": round(72 * scale, 1),
            "figures": [(picture.size, picture.tobytes(), box) for picture, box in found], "notes": notes}


def _pixels(width_pt: float, height_pt: float, scale: float) -> int:
    return math.ceil(width_pt * scale) * math.ceil(height_pt * scale)


def _text(page) -> str:
    textpage = page.get_textpage()
    try:
        text = textpage.get_text_bounded() or ""
    finally:
        textpage.close()
    return " ".join(text.split())[:MAX_TEXT_CHARS]


def _figures(page, scale: float, height_pt: float, pdfium, budget: int, max_pixels: int, notes: list[str],
             number: int) -> list[tuple[object, list[int]]]:
    """Up to ``budget`` figures; each image's size is read from its header before it is decoded."""
    found, oversized, skipped = [], 0, False
    if budget <= 0:
        return found
    for obj in page.get_objects(filter=[pdfium.raw.FPDF_PAGEOBJ_IMAGE], max_depth=FIGURE_DEPTH):
        if len(found) >= budget:
            skipped = True
            break
        try:
            width, height = obj.get_px_size()
            if width * height > max_pixels:
                oversized += 1
                continue
            if min(width, height) < MIN_FIGURE_SIDE:
                continue
            left, bottom, right, top = obj.get_bounds()
            picture = obj.get_bitmap(render=False).to_pil().convert("RGB")
        except (pdfium.PdfiumError, ValueError, OSError):
            continue  # an image PDFium cannot decode is skipped; the page itself still goes in
        box = [round(left * scale), round((height_pt - top) * scale), round(right * scale),
               round((height_pt - bottom) * scale)]
        if min(picture.size) >= MIN_FIGURE_SIDE and box[2] - box[0] >= MIN_FIGURE_SIDE:
            found.append((picture, box))
    if skipped:
        notes.append(f"page {number} has more figures than the {budget} kept (figures_per_page / "
                     "figures_per_document); the rest were left out")
    if oversized:
        notes.append(f"page {number}: {oversized} embedded images over {max_pixels:,} pixels were left out "
                     "undecoded (the image pixel limit)")
    return found
