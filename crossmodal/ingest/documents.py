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
from crossmodal.ingest import ocr as ocr_step
from crossmodal.limits import limit, register
from crossmodal.inputs import pdf
from crossmodal.inputs.images import DecodedImage


@dataclass(frozen=True)
class DocumentOptions:
    dpi: float = pdf.DEFAULT_DPI
    max_pages: int = pdf.DEFAULT_MAX_PAGES
    figures: bool = False
    ocr: str = "auto"  # which pictures' text is read (crossmodal/ingest/ocr.py)

    @classmethod
    def parse(cls, dpi=None, max_pages=None, figures=False, ocr=None) -> "DocumentOptions":
        return cls(pdf.check_dpi(pdf.DEFAULT_DPI if dpi in (None, "") else dpi), pdf.check_max_pages(max_pages),
                   bool(figures), ocr_step.check_ocr(ocr))


@dataclass(frozen=True)
class PdfFile:
    """A PDF item whose pages are still to be prepared."""

    item: object  # IngestItem
    data: bytes
    pages: int
    sha256: str


def prepare_or_reject(item, fast, region_side: int | None, options: DocumentOptions):
    """An item prepared (crossmodal/ingest/items.py) or rejected, or for a PDF a PdfFile whose pages the writer
    prepares next (only its pages are counted here)."""
    from crossmodal.ingest.items import Rejected, prepare_item
    from crossmodal.inputs.sources import read_input

    try:
        if item.image is None:
            return prepare_item(item, fast, region_side)  # a text item
        data = read_input(item.image)
        if pdf.is_pdf(data):
            return PdfFile(item, data, pdf.page_count(data, name=item.name, max_pages=options.max_pages),
                           hashlib.sha256(data).hexdigest())
        return prepare_item(item, fast, region_side, data=data, ocr=options.ocr)
    except CrossmodalError as exc:  # read, decode and PDF errors all arrive as this
        return Rejected(item, str(exc))


def prepared_pages(document: PdfFile, options: DocumentOptions, fast, region_side: int | None, *, workers: int,
                   window: int) -> Iterator:
    """PreparedItems (or Rejected) for every page, and its figures, in page order. The document is opened once,
    in a PDF worker process (crossmodal/inputs/pdf.py), and its pages rendered there one by one while this
    process's threads prepare the pages already rendered."""
    from crossmodal.ingest.items import Rejected
    from crossmodal.ingest.pipeline import ordered_map

    try:
        reader = pdf.PdfReader(document.data, document.item.name, max_pages=options.max_pages).__enter__()
    except CrossmodalError as exc:
        yield Rejected(document.item, str(exc))
        return

    def prepare(number: int) -> list:
        try:
            return page_items(reader, document, number, options, fast, region_side)
        except CrossmodalError as exc:
            return [Rejected(document.item, f"page {number}: {exc}")]

    try:
        for items in ordered_map(prepare, range(1, document.pages + 1), workers=workers, window=window):
            yield from items
    finally:
        reader.__exit__(None, None, None)


def page_items(reader: pdf.PdfReader, document: PdfFile, number: int, options: DocumentOptions, fast,
               region_side: int | None) -> list:
    from crossmodal.ingest.items import prepared_picture

    page = reader.page(number, dpi=options.dpi, figures=options.figures)
    name = document.item.name
    param = f"files[{name}]#page={number}"
    scanned = ocr_step.wanted(options.ocr, text_layer=page.text, page=True)  # auto: a page without a text layer
    shared = {"document": name, "page": number, "pages": document.pages, "mime_type": "application/pdf"}
    items = [prepared_picture(document.item, f"{document.sha256}:page={number}",
                              DecodedImage(page.image, *page.image.size, "application/pdf", page.notes),
                              {**shared, "source": f"{name}#page={number}", "text": page.text or None,
                               "dpi": page.dpi, **(ocr_step.fields_or_error(page.image, param) if scanned else {})},
                              fast, region_side)]
    for index, (picture, box) in enumerate(page.figures, start=1):
        read = scanned if options.ocr == "auto" else ocr_step.wanted(options.ocr)  # auto: a scanned page's figures
        items.append(prepared_picture(document.item, f"{document.sha256}:page={number}:figure={index}",
                                      DecodedImage(picture, *picture.size, "image/png", []),
                                      {**shared, "source": f"{name}#page={number}&figure={index}", "figure": index,
                                       "bbox": box, **(ocr_step.fields_or_error(picture, f"{param}&figure={index}")
                                                       if read else {})}, fast, region_side))
    return items


# -- chunks for Dify's own knowledge base (the Knowledge Pipeline processor tool) --------------------------------
MAX_ATTACHMENT_BYTES = 2 * 1024 * 1024  # Dify's ATTACHMENT_IMAGE_FILE_SIZE_LIMIT default: larger images are dropped
CHUNK_CONTEXT_CHARS = 500  # a figure's chunk carries the start of its page's text
register("document_picture_bytes", 64 * 2**20, "bytes", "JPEG pictures the Document chunks tool uploads for one "
         "document (pages and figures); pictures past it are left out, before any upload", cap=2**34,
         workspace=True)


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
        read = ocr_step.wanted(options.ocr)
        text = None
        if read or (read is None and ocr_step.has_text_lines(decoded.image)):  # a scan or a screenshot
            text = _read_text(decoded.image, f"files[{name}]", [])
        return [Chunk(text or name, [Picture(_stem(name) + ".jpg", jpeg_within(decoded.image, MAX_ATTACHMENT_BYTES))])]
    chunks, picture_bytes, left_out, notes = [], 0, 0, []
    with pdf.PdfReader(data, name, max_pages=options.max_pages) as reader:
        for number in range(1, reader.pages + 1):
            try:
                page = reader.page(number, dpi=options.dpi, figures=options.figures)
            except CrossmodalError as exc:  # one bad page is left out, never the document
                notes.append(f"page {number} was left out: {exc}")
                continue
            notes += page.notes
            where = f"{name}, page {number} of {reader.pages}"
            if ocr_step.wanted(options.ocr, text_layer=page.text, page=True):  # a scanned page: its read text
                page.text = _read_text(page.image, f"files[{name}]#page={number}", notes) or ""
            pictures = [(f"{_stem(name)}-page{number}.jpg", page.image, page.text or where)]
            pictures += [(f"{_stem(name)}-page{number}-figure{index}.jpg", picture,
                          f"Figure {index} on {where}. {page.text[:CHUNK_CONTEXT_CHARS]}".strip())
                         for index, (picture, _) in enumerate(page.figures, start=1)]
            for file_name, picture, content in pictures:
                jpeg = jpeg_within(picture, MAX_ATTACHMENT_BYTES)
                if picture_bytes + len(jpeg) > limit("document_picture_bytes"):
                    left_out += 1
                    continue
                picture_bytes += len(jpeg)
                chunks.append(Chunk(content, [Picture(file_name, jpeg)]))
    if left_out:
        notes.append(f"{left_out} pictures were left out: their JPEGs would pass the "
                     f"{limit('document_picture_bytes') / 2**20:g} MiB one document may upload (document_picture_bytes)")
    if not chunks:
        raise CrossmodalError("no page could be read: " + "; ".join(notes[:3]), param=f"files[{name}]", status=422)
    if notes:  # said in a last chunk: the tool's output has no other place for what was left out
        chunks.append(Chunk(f"{name}: " + "; ".join(notes), []))
    return chunks


def _read_text(image, param: str, notes: list[str]) -> str | None:
    """The text read in a picture, or None with a note saying why it could not be read."""
    try:
        return ocr_step.read_fields(image, param)["ocr_text"]
    except CrossmodalError as exc:
        notes.append(str(exc))
        return None


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


def chunk_document(ctx, document, dpi=None, max_pages=None, figures: bool = True, ocr=None) -> list[Chunk]:
    """The capability behind the Knowledge Pipeline processor: ``document`` (an ImageInput holding a PDF or an
    image) as chunks of text and pictures (``document_chunks``); needs no model and no store. A scanned page's
    chunk carries the text read in it (``ocr``, auto by default)."""
    from crossmodal.inputs.sources import read_input

    options = DocumentOptions.parse(dpi, max_pages, figures, ocr)
    return document_chunks(read_input(document), document.source, options)
