"""What Rerank accepts as candidates (Search output, hits, texts, image files) and how image hits get their
stored thumbnails."""

from __future__ import annotations

import base64
import json
from typing import Sequence

from crossmodal.context import Context
from crossmodal.errors import CrossmodalError
from crossmodal.inputs.images import decode_image
from crossmodal.inputs.sources import ImageInput, read_input


def parse_candidate_list(raw) -> list:
    """Accepted shapes: the Search node's output object ({"results": [...]}), a list of hits
    ({"id", "score", "payload"}), a list of strings, a JSON string of any of these, or lines of text."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        stripped = raw.strip()
        if stripped.startswith(("{", "[")):
            try:
                raw = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise CrossmodalError(f"looks like JSON but does not parse ({exc.msg}); {CANDIDATE_SHAPES}",
                                      param="candidates") from None
        else:
            return [line.strip() for line in stripped.splitlines() if line.strip()]
    if isinstance(raw, dict):
        if not isinstance(raw.get("results"), list):
            raise CrossmodalError(f"an object must hold a 'results' list; {CANDIDATE_SHAPES}", param="candidates")
        raw = raw["results"]
    if not isinstance(raw, list):
        raise CrossmodalError(f"unknown shape ({type(raw).__name__}); {CANDIDATE_SHAPES}", param="candidates")
    for k, item in enumerate(raw):
        if isinstance(item, str):
            continue
        if not isinstance(item, dict) or not isinstance(item.get("payload", {}), dict) or "id" not in item:
            raise CrossmodalError(f"item {k} is neither a text nor a hit with id and payload; {CANDIDATE_SHAPES}",
                                  param="candidates")
    return raw


CANDIDATE_SHAPES = ('expected the Search node\'s output ({"results": [{"id", "score", "payload"}]}), a list of such '
                    'hits, a list of texts, or one text per line')


def gather_candidates(ctx: Context, raw, files: Sequence[ImageInput], collection: str | None):
    """Search output (object or its results list), texts (list or one per line), or image files."""
    from crossmodal.rerank.scoring import MAX_CANDIDATES, Candidate

    rejected: list[dict] = []
    pool: list[Candidate] = []
    for k, image in enumerate(files):
        try:
            decoded = decode_image(read_input(image), param=f"files[{image.source}]")
            pool.append(Candidate(image.source, image=decoded.image, first_rank=k + 1,
                                  payload={"source": image.source}))
        except CrossmodalError as exc:
            rejected.append({"source": image.source, "reason": str(exc)})
    items = parse_candidate_list(raw)
    if isinstance(raw, dict) and not collection:
        collection = raw.get("collection")
    hits_needing_images = []
    for k, item in enumerate(items):
        if isinstance(item, str):
            pool.append(Candidate(f"text-{k + 1}", text=item, first_rank=k + 1))
            continue
        payload = dict(item.get("payload") or {})
        score = item.get("score")
        candidate = Candidate(str(item.get("id", k + 1)), first_score=float(score) if score is not None else None,
                              first_rank=k + 1, payload=payload)
        if payload.get("kind") == "text" or (payload.get("text") and payload.get("kind") != "image"):
            candidate.text = str(payload.get("text") or payload.get("caption"))
            pool.append(candidate)
        else:
            hits_needing_images.append(candidate)
    if hits_needing_images:
        pool += with_thumbnails(ctx, hits_needing_images, collection, rejected)
    if len(pool) > MAX_CANDIDATES:
        raise CrossmodalError(f"{len(pool)} candidates; at most {MAX_CANDIDATES} are reranked at once",
                              param="candidates")
    return pool, rejected


def with_thumbnails(ctx: Context, hits, collection, rejected):
    """Image hits from a Search output: their stored thumbnails (the collection names where)."""
    if not collection:
        raise CrossmodalError("image hits need the collection they came from: pass the Search node's whole "
                              "output, or set collection", param="collection")
    name = ctx.collection_name(collection)
    stored = {h.id: h.payload for h in ctx.store.retrieve(name, [c.id for c in hits])}
    out = []
    for c in hits:
        thumb = (stored.get(c.id) or {}).get("thumbnail")
        if not thumb:
            rejected.append({"source": c.payload.get("source", c.id),
                             "reason": f"no stored image for id {c.id} in '{name}'"})
            continue
        c.image = decode_image(base64.b64decode(thumb), param="candidates").image
        out.append(c)
    return out
