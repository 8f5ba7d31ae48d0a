"""PDF files as ingest items: each page a point (its rendered image, text layer, document and page number),
and with ``figures`` each embedded image of a page a point of its own.

A worker that reads a PDF item only counts its pages (``PdfFile``); the writer then prepares the pages in
order, a few at a time through the same worker pool (crossmodal/ingest/pipeline.py), so a 300-page file never
sits rendered in memory. Ids derive from the file's content and the page (and figure), so ingesting the
same PDF again is a duplicate per page.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

from crossmodal.errors import CrossmodalError
from crossmodal.inputs import pdf
from crossmodal.inputs.images import DecodedImage


@dataclass(frozen=True)
class DocumentOptions:
    dpi: float = pdf.DEFAULT_DPI
    max_pages: int = pdf.DEFAULT_MAX_PAGES
    figures: bool = False

    @classmethod
    def parse(cls, dpi=None, max_pages=None, figures=False) -> "DocumentOptions":
        pages = pdf.DEFAULT_MAX_PAGES if max_pages in (None, "") else max_pages
        try:
            pages = int(pages)
        except (TypeError, ValueError):
            raise CrossmodalError(f"'{max_pages}' is not a whole number", param="max_pages") from None
        if pages < 1:
            raise CrossmodalError(f"{pages} is not a positive number of pages", param="max_pages")
        return cls(pdf.check_dpi(pdf.DEFAULT_DPI if dpi in (None, "") else dpi), pages, bool(figures))


@dataclass(frozen=True)
class PdfFile:
    """A PDF item whose pages are still to be prepared."""

    item: object  # IngestItem
    data: bytes
    pages: int
    sha256: str


def prepare_or_reject(item, fast, keep_full: bool, options: DocumentOptions):
    """An item prepared (crossmodal/ingest/items.py) or rejected, or for a PDF a PdfFile whose pages the writer
    prepares next (only its pages are counted here)."""
    from crossmodal.ingest.items import Rejected, prepare_item
    from crossmodal.inputs.sources import read_input

    try:
        if item.image is None:
            return prepare_item(item, fast, keep_full)
        data = read_input(item.image)
        if pdf.is_pdf(data):
            return PdfFile(item, data, pdf.page_count(data, name=item.name, max_pages=options.max_pages),
                           hashlib.sha256(data).hexdigest())
        return prepare_item(item, fast, keep_full, data=data)
    except CrossmodalError as exc:  # read, decode and PDF errors all arrive as this
        return Rejected(item, str(exc))


def prepared_pages(document: PdfFile, options: DocumentOptions, fast, keep_full: bool, *, workers: int,
                   window: int) -> Iterator:
    """PreparedItems (or Rejected) for every page, and its figures, in page order."""
    from crossmodal.ingest.pipeline import ordered_map

    def prepare(number: int) -> list:
        try:
            return page_items(document, number, options, fast, keep_full)
        except CrossmodalError as exc:
            from crossmodal.ingest.items import Rejected

            return [Rejected(document.item, f"page {number}: {exc}")]

    for items in ordered_map(prepare, range(1, document.pages + 1), workers=workers, window=window):
        yield from items


def page_items(document: PdfFile, number: int, options: DocumentOptions, fast, keep_full: bool) -> list:
    from crossmodal.ingest.items import prepared_picture

    page = pdf.render_page(document.data, number, document.pages, name=document.item.name, dpi=options.dpi,
                           figures=options.figures)
    name = document.item.name
    shared = {"document": name, "page": number, "pages": document.pages, "mime_type": "application/pdf"}
    items = [prepared_picture(document.item, f"{document.sha256}:page={number}",
                              DecodedImage(page.image, *page.image.size, "application/pdf", page.notes),
                              {**shared, "source": f"{name}#page={number}", "text": page.text or None,
                               "dpi": page.dpi}, fast, keep_full)]
    for index, (picture, box) in enumerate(page.figures, start=1):
        items.append(prepared_picture(document.item, f"{document.sha256}:page={number}:figure={index}",
                                      DecodedImage(picture, *picture.size, "image/png", []),
                                      {**shared, "source": f"{name}#page={number}&figure={index}", "figure": index,
                                       "bbox": box}, fast, keep_full))
    return items


# -- chunks for Dify's own knowledge base (the Knowledge Pipeline processor tool) --------------------------------
MAX_ATTACHMENT_BYTES = 2 * 1024 * 1024  # Dify's ATTACHMENT_IMAGE_FILE_SIZE_LIMIT default: larger images are dropped
CHUNK_CONTEXT_CHARS = 500  # a figure's chunk carries the start of its page's text


@dataclass
class Picture:
    name: str
    data: bytes
    mime_type: str = "image/jpeg"


@dataclass
class Chunk:
    content: str
    pictures: list


def document_chunks(data: bytes, name: str, options: DocumentOptions) -> list[Chunk]:
    """A PDF as chunks: each page's text with the page's picture, and with ``options.figures`` each embedded
    figure with its page's opening text; an image file as one chunk of itself. Raises CrossmodalError (naming
    the file) for a file that cannot be read."""
    from crossmodal.inputs.images import decode_image

    if not pdf.is_pdf(data):
        decoded = decode_image(data, param=f"files[{name}]")
        return [Chunk(name, [Picture(_stem(name) + ".jpg", jpeg_within(decoded.image, MAX_ATTACHMENT_BYTES))])]
    pages = pdf.page_count(data, name=name, max_pages=options.max_pages)
    chunks = []
    for number in range(1, pages + 1):
        page = pdf.render_page(data, number, pages, name=name, dpi=options.dpi, figures=options.figures)
        where = f"{name}, page {number} of {pages}"
        chunks.append(Chunk(page.text or where, [Picture(f"{_stem(name)}-page{number}.jpg",
                                                         jpeg_within(page.image, MAX_ATTACHMENT_BYTES))]))
        for index, (picture, _) in enumerate(page.figures, start=1):
            context = f"Figure {index} on {where}. {page.text[:CHUNK_CONTEXT_CHARS]}".strip()
            chunks.append(Chunk(context, [Picture(f"{_stem(name)}-page{number}-figure{index}.jpg",
                                                  jpeg_within(picture, MAX_ATTACHMENT_BYTES))]))
    return chunks


def jpeg_within(image, limit: int) -> bytes:
    """JPEG bytes of ``image`` under ``limit``: quality 85, then smaller sides until it fits."""
    import io

    picture = image.convert("RGB")
    while True:
        buf = io.BytesIO()
        picture.save(buf, format="JPEG", quality=85)
        if buf.tell() <= limit or min(picture.size) <= 64:
            return buf.getvalue()
        picture = picture.resize((max(1, int(picture.width * 0.8)), max(1, int(picture.height * 0.8))))


def _stem(name: str) -> str:
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:80] or "document"


def chunk_document(ctx, document, dpi=None, max_pages=None, figures: bool = True) -> list[Chunk]:
    """The capability behind the Knowledge Pipeline processor: ``document`` (an ImageInput holding a PDF or an
    image) as chunks of text and pictures (``document_chunks``); needs no model and no store."""
    from crossmodal.inputs.sources import read_input

    options = DocumentOptions.parse(dpi, max_pages, figures)
    return document_chunks(read_input(document), document.source, options)
