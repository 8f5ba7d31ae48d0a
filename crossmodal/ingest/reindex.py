"""Reindex: a collection made before the lexical index gets it, and, from its original files given again, the text
read in their pictures (issue 45, point 6).

Two passes, each resumable:

1. ``files`` (only when files are given): each file is read and prepared as an ingest would prepare it (PDFs as
   pages, and figures with ``figures``), without embedding; its point ids derive from its content, so a file
   matches the points it made by content hash, whatever its name is now. A matched picture not read before (no
   ``ocr`` field) is read as ``ocr`` says (auto: scanned pages, and pictures in which detection finds text) and
   gets ``ocr_text``, ``ocr_lines`` and ``ocr`` in its payload, with its lexical vector from the new text, in one
   update. A file that matches no point is reported and left alone. Resumable because a point read already
   keeps its ``ocr`` field: a second run reads only what the first did not.
2. ``vectors``: every point in id order, in batches: its lexical vector from its text (crossmodal/lexical/:
   captions, text, OCR text, tags, metadata, file name), written over the old one. After each batch the
   collection's record says where the pass stands (``reindex``), so that a crash or a second run goes on from
   the last batch written; a batch written twice is written the same.

Nothing else of a point changes: not its dense or token vectors, nor its payload beyond the OCR fields. The
collection's lexical record (how its vectors are made) is written first, so that any ingest meanwhile writes its
vectors the same way.

Why the pictures are not read from what the store keeps: the store keeps a 384-px thumbnail of each picture,
not the original; an A4 page's text there is 4-5 px high, and the screenshots' too (measured in docs/hybrid.md:
the reader finds next to nothing on them). Reading needs the original files, given again.
"""

from __future__ import annotations

from typing import Callable, Iterable

from crossmodal.context import Context
from crossmodal.errors import CrossmodalError
from crossmodal.store.base import TextUpdate

BATCH = 128  # points analysed and written at a time (one update and one record write each)


def reindex(ctx: Context, collection: str | None, files: Iterable | None = None, ocr: str | None = None,
            figures: bool = False, batch: int = BATCH, progress: Callable[[int], None] | None = None) -> dict:
    """Give the collection its lexical index (today's analyzer) and rebuild every point's lexical vector;
    with ``files`` (ImageInputs of original files), first read the text in their pictures. Resumable."""
    from crossmodal.lexical import DEFAULT_OPTIONS, DEFAULT_TEXT_FIELDS

    name = ctx.collection_name(collection)
    store = ctx.store
    info = store.get_collection(name, with_count=False)
    fields = tuple((info.lexical or {}).get("fields") or DEFAULT_TEXT_FIELDS)
    record = DEFAULT_OPTIONS.record(fields)
    state = info.reindex if (info.reindex or {}).get("identity") == record["identity"] else None
    resumed = state is not None
    state = state or {"identity": record["identity"], "offset": None, "done": 0}
    info = store.add_lexical(name, record)
    store.update_record(name, {"reindex": state})
    report = {"collection": name, "lexical": record["identity"], "resumed": resumed}
    if files is not None:
        report["files"] = read_files(ctx, name, files, ocr, figures, DEFAULT_OPTIONS, fields)
    report["vectors"] = rebuild_vectors(ctx, name, state, DEFAULT_OPTIONS, fields, batch, progress)
    lexical = store.get_collection(name, with_count=False).lexical
    store.update_record(name, {"reindex": None, "lexical": {**lexical, "text": report["vectors"]["beyond_names"]}})
    report["count"] = store.count(name)
    return report


def rebuild_vectors(ctx: Context, name: str, state: dict, options, fields, batch: int, progress) -> dict:
    """Pass 2: every point's lexical vector, from where ``state`` says the last run stopped."""
    from crossmodal.lexical import document_text, document_vector

    from crossmodal.store.base import text_beyond_names

    store, offset = ctx.store, state.get("offset")
    written = with_text = 0
    beyond_names = bool(state.get("beyond_names"))
    while True:
        points, following = store.scroll(name, offset, batch, with_vectors=False)
        updates = []
        for point in points:
            if point.payload.get("kind") == "region":  # a region's text is its parent's
                continue
            terms = document_vector(document_text(point.payload, fields), options)
            if len(terms):
                updates.append(TextUpdate(point.id, sparse=terms))
        store.update_text(name, updates)
        written, with_text = written + len(points), with_text + len(updates)
        beyond_names = beyond_names or text_beyond_names([p.payload for p in points], {"fields": list(fields)})
        offset = None if following is None else str(following)
        state = {**state, "offset": offset, "done": int(state.get("done") or 0) + len(points),
                 "beyond_names": beyond_names}
        store.update_record(name, {"reindex": state})  # after the batch: a crash before it redoes the batch
        progress and progress(len(points))
        if offset is None:
            break
    return {"points": written, "with_text": with_text, "total_done": state["done"], "beyond_names": beyond_names}


def read_files(ctx: Context, name: str, files: Iterable, ocr: str | None, figures: bool, options, fields) -> dict:
    """Pass 1: the text in the pictures of the original files, for the points they made (matched by content)."""
    from crossmodal.ingest import ocr as ocr_step
    from crossmodal.ingest.documents import DocumentOptions, prepare_or_reject
    from crossmodal.ingest.items import IngestItem, Rejected
    from crossmodal.ingest.writer import with_pages
    from crossmodal.lexical import document_text, document_vector

    mode = ocr_step.check_ocr(ocr or "auto")
    if mode == "false":
        raise CrossmodalError("the files are given again to read the text in their pictures; with ocr false "
                              "there is nothing to read: leave the files out, or use ocr auto or true", param="ocr")
    documents = DocumentOptions.parse(None, None, figures, "false")  # prepared unread: reading is decided here
    report = {"files": 0, "pictures": 0, "read": 0, "already_read": 0, "not_in_collection": 0, "no_text": 0,
              "rejected": []}
    items = [IngestItem(image=f) for f in files]
    report["files"] = len(items)
    prepared = (prepare_or_reject(item, None, None, documents) for item in items)
    for result in with_pages(prepared, documents, None, None):
        if isinstance(result, Rejected):
            report["rejected"].append({"source": result.item.name, "reason": result.reason})
            continue
        if result.decoded is None:  # a text item: nothing to read
            continue
        report["pictures"] += 1
        stored = ctx.store.retrieve(name, [result.point_id], with_thumbnails=False)
        if not stored:
            report["not_in_collection"] += 1
            continue
        payload = stored[0].payload
        if "error" not in payload.get("ocr", {"error": None}):  # read before (a failed reading is tried again)
            report["already_read"] += 1
            continue
        page = payload.get("page") is not None and payload.get("figure") is None
        wanted = ocr_step.wanted(mode, text_layer=payload.get("text"), page=page)
        image = result.decoded.image
        if wanted is None:
            wanted = ocr_step.has_text_lines(image)
        read = (ocr_step.fields_or_error(image, f"files[{result.item.name}]") if wanted
                else {"ocr": {"lines": 0, "skipped": "no text detected"}})  # marked: a rerun does not test it again
        read = {k: v for k, v in read.items() if v is not None}
        terms = document_vector(document_text({**payload, **read}, fields), options)
        ctx.store.update_text(name, [TextUpdate(result.point_id, read, terms if len(terms) else None)])
        report["read" if read.get("ocr_text") else "no_text"] += 1
    if report["files"] and not report["pictures"] and not report["rejected"]:
        raise CrossmodalError("none of the files holds a picture", param="files")
    return report
