"""What an ingest item is, how one is read and validated into a point (content-derived id, payload,
thumbnail), and the region points of large images."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

import numpy as np

from crossmodal.encoders.models import Encoder
from crossmodal.errors import CrossmodalError
from crossmodal.ingest import ocr as ocr_step
from crossmodal.inputs.checks import check_text
from crossmodal.inputs.images import DecodedImage, decode_image
from crossmodal.inputs.sources import ImageInput, read_input
from crossmodal.store import StoredPoint


THUMBNAIL_SIDE = 384
REGION_OVERLAP = 0.25


@dataclass
class IngestItem:
    image: ImageInput | None = None
    text: str | None = None  # a text-only item (caption, document) when image is None
    caption: str | None = None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    @property
    def name(self) -> str:
        return self.source or (self.image.source if self.image else (self.text or "")[:60])


class PreparedItem(NamedTuple):
    item: IngestItem
    point_id: str
    decoded: DecodedImage | None  # None for a text item
    payload: dict[str, Any]
    pixels: np.ndarray | None = None  # resized + cropped uint8 model input (FastPreprocessor), when prepared
    regions: list | None = None  # [(box, the tile's model input)] for region points, when prepared


class Rejected(NamedTuple):
    item: IngestItem
    reason: str


def prepare_item(item: IngestItem, fast=None, region_side: int | None = None, data: bytes | None = None,
                 ocr: str = "false") -> PreparedItem:
    """Read and validate one item; its point id derives from its content. ``data``: the image's bytes when the
    caller read them already (crossmodal/ingest/documents.py looks for PDFs first).

    With ``fast`` (a FastPreprocessor) the model input is made here too, so that worker threads do it, and a
    JPEG is decoded only as large as the model input and the thumbnail need; ``region_side`` (the model's input
    side, when region points are wanted): the tiles' model inputs too (the image is then decoded whole). The
    decoded picture is dropped once they are made: a chunk of items never holds full decodes. ``ocr``: whether
    the picture's text is read (crossmodal/ingest/ocr.py)."""
    if item.image is None:
        text = check_text(item.text, "texts")
        digest = hashlib.sha256(b"text\0" + text.encode()).hexdigest()
        payload = {**base_payload(item), "kind": "text", "text": text, "sha256": digest, "mime_type": "text/plain"}
        return PreparedItem(item, point_id(digest), None, payload)
    data = read_input(item.image) if data is None else data
    param = f"files[{item.name}]"
    read = ocr_step.wanted(ocr)
    drafted = fast is not None and not region_side and read is not True
    side = ocr_step.GATE_SIDE if read is None else 0  # auto's text test looks at the draft: large enough for it
    decoded = decode_image(data, param=param,
                           min_size=(lambda w, h: _draft_request(fast, w, h, side)) if drafted else None)
    extra = {}
    if read or (read is None and ocr_step.has_text_lines(decoded.image)):
        picture = decoded.image
        if picture.size != (decoded.width, decoded.height):  # decoded small (a JPEG draft): read it whole
            picture = decode_image(data, param=param, charge=False).image
        extra = ocr_step.fields_or_error(picture, param)
    return prepared_picture(item, hashlib.sha256(data).hexdigest(), decoded, extra, fast, region_side, hashed=True)


def base_payload(item: IngestItem) -> dict[str, Any]:
    tags = [str(t).strip() for t in item.tags if str(t).strip()]
    return {"source": item.name, "caption": item.caption, "tags": tags, "metadata": dict(item.metadata),
            "ingested_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def prepared_picture(item: IngestItem, key: str, decoded: DecodedImage, extra: dict, fast=None,
                     region_side: int | None = None, hashed: bool = False) -> PreparedItem:
    """An image point: ``key`` is its content digest (``hashed``) or the text its digest is taken of (a PDF
    page: the file's digest and the page). ``extra`` payload fields go over the shared ones."""
    digest = key if hashed else hashlib.sha256(key.encode()).hexdigest()
    payload = {**base_payload(item), "kind": "image", "sha256": digest, "width": decoded.width,
               "height": decoded.height, "mime_type": decoded.mime_type, "thumbnail": thumbnail_b64(decoded.image)}
    payload.update({k: v for k, v in extra.items() if v is not None})
    if decoded.notes:
        payload["notes"] = decoded.notes
    pixels = fast.to_uint8(decoded.image) if fast is not None else None
    regions = region_inputs(decoded.image, region_side, fast) if region_side and fast is not None else None
    if pixels is not None and (not region_side or regions is not None):
        decoded = dataclasses.replace(decoded, image=None)
    return PreparedItem(item, point_id(digest), decoded, payload, pixels, regions)


def region_inputs(image, side: int, fast) -> list:
    """The model inputs of a large image's overlapping tiles (the align node's tiling: a quarter of the shorter
    side, 25 % overlap; 25 tiles for 2048^2); none for images under twice the model's input, which the
    whole-image vector already sees at full detail."""
    from crossmodal.alignment.align import default_tile_size, tile_boxes

    width, height = image.size
    if max(width, height) < 2 * side:
        return []
    boxes = tile_boxes(width, height, default_tile_size(width, height, side, REGION_OVERLAP), REGION_OVERLAP)
    return [(list(box), fast.to_uint8(image.crop(box))) for box in boxes]


def _draft_request(fast, width: int, height: int, longer_side: int = 0) -> tuple[int, int]:
    """What a drafted JPEG must still cover: the model's resize input (either orientation, since EXIF may
    rotate it), a full-size thumbnail, and ``longer_side`` px on its longer side."""
    w1, h1 = fast.draft_request(width, height)
    h2, w2 = fast.draft_request(height, width)
    shrink = max(THUMBNAIL_SIDE, longer_side) / max(width, height)
    return max(w1, w2, int(width * shrink)), max(h1, h2, int(height * shrink))


def region_points(encoder: Encoder, prepared: PreparedItem) -> list[StoredPoint]:
    """Child points for the overlapping tiles of a large image (``region_inputs``). Each region carries its
    parent's id, filterable fields and its box; ids derive from the parent's content and the box, so a
    re-ingest is idempotent."""
    if prepared.regions is not None:
        boxes = [box for box, _ in prepared.regions]
        vectors = encoder.embed_pixels(encoder.normalise([p for _, p in prepared.regions])) if boxes else []
    else:  # an encoder without a fast preprocessor reads the tiles from the full picture
        from crossmodal.alignment.align import default_tile_size, tile_boxes

        image = prepared.decoded.image
        width, height = image.size
        if max(width, height) < 2 * encoder.image_size:
            return []
        boxes = tile_boxes(width, height, default_tile_size(width, height, encoder.image_size, REGION_OVERLAP),
                           REGION_OVERLAP)
        vectors = encoder.encode_images([image.crop(b) for b in boxes])
    parent = prepared.payload
    # The parent's fields, so that filters (tags, metadata, width, ...) select regions as they select images.
    shared = {k: parent.get(k) for k in ("source", "caption", "tags", "metadata", "ingested_at", "sha256", "width",
                                         "height", "mime_type")}
    points = []
    for box, vector in zip(boxes, vectors):
        digest = hashlib.sha256(f"{parent['sha256']}:{tuple(box)}".encode()).hexdigest()
        payload = {**shared, "kind": "region", "parent_id": prepared.point_id, "box": list(box)}
        points.append(StoredPoint(point_id(digest), vector.tolist(), payload))
    return points


def point_id(digest: str) -> str:
    return str(uuid.UUID(hex=digest[:32]))


def thumbnail_b64(image) -> str:
    thumb = image.copy()
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()
