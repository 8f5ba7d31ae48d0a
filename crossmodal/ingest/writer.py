"""The Ingest capability: items decoded in worker threads, embedded in chunks, written with their regions
in one write per chunk; duplicates and bad items reported, never the batch aborted."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from crossmodal.context import Context, precision_warnings, truncation_warning
from crossmodal.encoders.models import Encoder
from crossmodal.errors import CrossmodalError, NotFoundError
from crossmodal.ingest.documents import DocumentOptions, PdfFile, prepare_or_reject, prepared_pages
from crossmodal.ingest.items import IngestItem, PreparedItem, Rejected, region_points
from crossmodal.ingest.pipeline import decode_workers, ordered_map
from crossmodal.store import StoredPoint
from crossmodal.store.options import DEFAULT_FOR_NEW, StorageOptions


INGEST_CHUNK = 128  # items decoded, embedded and written at a time: memory stays flat


def ingest(
    ctx: Context,
    items: Iterable[IngestItem],
    collection: str | None = None,
    model: str | None = None,
    progress: Callable[[int], None] | None = None,
    regions: bool = False,
    storage: str | dict | None = None,
    embed_captions: bool = False,
    dpi: float | None = None,
    max_pages: int | None = None,
    figures: bool = False,
    ocr: str | bool | None = None,
) -> dict:
    """Add items; same content again is a duplicate; a bad item is rejected, never the batch.

    ``regions``: also store one child point per overlapping tile of each large image (see
    ``region_points``), so that searches with ``regions`` find small objects in large images. ``storage``: how a
    new collection keeps its vectors (crossmodal/store/options.py); the provider's default when empty.
    A PDF file is a point per page (``dpi``, at most ``max_pages``; with ``figures`` also a point per embedded
    image): crossmodal/ingest/documents.py. ``ocr`` (auto, true, false): whose text is read in its pictures
    (crossmodal/ingest/ocr.py)."""
    documents = DocumentOptions.parse(dpi, max_pages, figures, ocr)
    name = ctx.collection_name(collection)
    asked = StorageOptions.parse(storage) if storage else None
    default = (StorageOptions.parse(ctx.settings.storage, param="storage (provider default)")
               if ctx.settings.storage else DEFAULT_FOR_NEW)
    encoder = encoder_for_write(ctx, name, model)
    if embed_captions and not hasattr(encoder, "encode_mixed"):
        raise CrossmodalError(f"'{encoder.identity}' embeds an image or a text, not both in one vector; reading an "
                              "image with its caption needs a VLM embedding model such as qwen3-vl-embedding-2b",
                              param="embed_captions")
    late = getattr(encoder, "late_interaction", False)
    if asked is not None and asked.pool_factor and not late:
        raise CrossmodalError(f"pool_factor merges the token vectors of late-interaction models (ColQwen2, ColPali); "
                              f"'{encoder.identity}' makes one vector per item: leave pool_factor out",
                              param="storage")
    info = ctx.store.ensure_collection(name, encoder.identity, encoder.dim, encoder.weights, asked or default,
                                       strict=asked is not None,
                                       multivector_dim=encoder.multivector_dim if late else None)
    pool_factor = info.storage.pool_factor if late else None
    report = {"collection": name, "model": encoder.identity, "precision": encoder.precision, "added": 0,
              "duplicates": 0, "rejected": [], "items": [], "warnings": precision_warnings(encoder)}
    seen: set[str] = set()
    fast = encoder.fast_preprocessor
    region_side = encoder.image_size if regions else None
    prepared = ordered_map(lambda item: prepare_or_reject(item, fast, region_side, documents), items,
                           workers=decode_workers(), window=2 * INGEST_CHUNK)
    chunk: list[PreparedItem | Rejected] = []
    for result in with_pages(prepared, documents, fast, region_side):
        chunk.append(result)
        if len(chunk) >= INGEST_CHUNK:
            ingest_chunk(ctx, name, encoder, chunk, seen, report, regions, embed_captions, pool_factor)
            progress and progress(len(chunk))
            chunk = []
    if chunk:
        ingest_chunk(ctx, name, encoder, chunk, seen, report, regions, embed_captions, pool_factor)
        progress and progress(len(chunk))
    ctx.store.finish_writes(name)
    report["count"] = ctx.store.count(name)
    return report


def with_pages(prepared: Iterable, documents: DocumentOptions, fast, region_side: int | None) -> Iterable:
    """The prepared items, each PDF file replaced by its pages (and figures), prepared in order."""
    for result in prepared:
        if isinstance(result, PdfFile):
            yield from prepared_pages(result, documents, fast, region_side, workers=decode_workers(),
                                      window=INGEST_CHUNK)
        else:
            yield result


def encoder_for_write(ctx: Context, name: str, model: str | None) -> Encoder:
    try:
        info = ctx.store.get_collection(name, with_count=False)
    except NotFoundError:
        return ctx.encoder(model)
    return ctx.encoder(ctx.model_for(info.model, model))


def ingest_chunk(ctx: Context, name: str, encoder: Encoder, chunk: list, seen: set, report: dict,
                 regions: bool = False, embed_captions: bool = False, pool_factor: int | None = None):
    prepared: list[PreparedItem] = []
    for result in chunk:
        if isinstance(result, Rejected):
            report["rejected"].append({"source": result.item.name, "reason": result.reason})
            report["items"].append({"source": result.item.name, "status": "rejected", "reason": result.reason})
        else:
            prepared.append(result)
    existing = ctx.store.existing_ids(name, [p.point_id for p in prepared])
    fresh: list[PreparedItem] = []
    for p in prepared:
        if p.point_id in existing or p.point_id in seen:
            report["duplicates"] += 1
            report["items"].append({"source": p.item.name, "id": p.point_id, "status": "duplicate"})
        else:
            seen.add(p.point_id)
            fresh.append(p)
    if not fresh:
        return
    if getattr(encoder, "late_interaction", False):
        points = late_points(encoder, fresh, pool_factor)
    else:
        vectors = vectors_for(encoder, fresh, report, embed_captions)
        points = [StoredPoint(p.point_id, v.tolist(), p.payload) for p, v in zip(fresh, vectors)]
    add_lexical_vectors(ctx, name, points)
    region_counts = {}
    if regions:
        for p in fresh:
            if p.decoded is not None:
                children = region_points(encoder, p)
                region_counts[p.point_id] = len(children)
                points += children
    # Parents and their regions go in one write: a crash leaves both or neither.
    ctx.store.upsert(name, points)
    for p in fresh:
        report["added"] += 1
        row = {"source": p.item.name, "id": p.point_id, "status": "added"}
        if p.point_id in region_counts:
            row["regions"] = region_counts[p.point_id]
        report["items"].append(row)


def add_lexical_vectors(ctx: Context, name: str, points: list[StoredPoint]) -> None:
    """Each point's lexical vector, from its text (caption, page text, OCR text, chosen metadata fields: the
    collection's record names them), when the collection has the lexical index. A collection whose vectors another
    analyzer version made gets none until it is reindexed (mixed vectors would rank unpredictably)."""
    from crossmodal.lexical import document_text, document_vector

    info = ctx.store.get_collection(name, with_count=False)
    options = info.lexical_options()
    if options is None:
        return
    for point in points:
        point.sparse = document_vector(document_text(point.payload, info.lexical["fields"]), options)


def late_points(encoder, fresh: list[PreparedItem], pool_factor: int | None) -> list[StoredPoint]:
    """A late-interaction model's points: the token vectors of each page (or text) and their pooled vector."""
    from crossmodal.encoders.late_encoder import pooled

    tokens = encoder.page_tokens([p.decoded.image if p.decoded is not None else p.payload["text"] for p in fresh],
                                 pool_factor)
    return [StoredPoint(p.point_id, pooled(t).tolist(), p.payload, t.tolist()) for p, t in zip(fresh, tokens)]


def vectors_for(encoder: Encoder, fresh: list[PreparedItem], report: dict, embed_captions: bool = False) -> np.ndarray:
    """``embed_captions``: an image with a caption becomes one vector of both, read together (VLM models)."""
    vectors = np.zeros((len(fresh), encoder.dim), dtype=np.float32)
    mixed = {i for i, p in enumerate(fresh) if embed_captions and p.decoded is not None and p.payload.get("caption")}
    if mixed:
        rows = sorted(mixed)
        vectors[rows] = encoder.encode_mixed([(fresh[i].decoded.image, fresh[i].payload["caption"]) for i in rows])
        for i in mixed:
            fresh[i].payload["embedded_with_caption"] = True
    image_rows = [i for i, p in enumerate(fresh) if p.decoded is not None and i not in mixed]
    text_rows = [i for i, p in enumerate(fresh) if p.decoded is None]
    ready = [i for i in image_rows if fresh[i].pixels is not None]
    others = [i for i in image_rows if fresh[i].pixels is None]
    if ready:
        pixels = encoder.normalise([fresh[i].pixels for i in ready])
        vectors[ready] = encoder.embed_pixels(pixels, batch_size=encoder.batch_size)
    if others:
        vectors[others] = encoder.encode_images([fresh[i].decoded.image for i in others])
    if text_rows:
        texts = [fresh[i].payload["text"] for i in text_rows]
        encoded = encoder.encode_texts(texts)
        vectors[text_rows] = encoded.vectors
        report["warnings"] += [truncation_warning(texts[i], encoder) for i in encoded.truncated]
    return vectors
