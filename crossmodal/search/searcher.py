"""The Search capability: a query vector (text, image, or their weighted fusion), filters, region search, and
reranking of the first stage."""

from __future__ import annotations

import base64
from typing import Callable

import numpy as np

from crossmodal.context import Context, precision_warnings, truncation_warning
from crossmodal.encoders.models import Encoder
from crossmodal.errors import CrossmodalError
from crossmodal.inputs.checks import check_text, check_top_k
from crossmodal.inputs.images import decode_image
from crossmodal.inputs.sources import ImageInput, read_input
from crossmodal.rerank.reranker import rerank
from crossmodal.store import Condition, Hit, check_weights, parse_filter


SEARCH_TARGETS = ("image", "text", "any")
MAX_REGION_CANDIDATES = 2000


def search(
    ctx: Context,
    text: str | None = None,
    image: ImageInput | None = None,
    collection: str | None = None,
    top_k: int = 10,
    score_threshold: float | None = None,
    filter: str | dict | None = None,
    target: str = "image",
    model: str | None = None,
    text_weight: float = 0.5,
    with_thumbnails: bool = False,
    regions: bool = False,
    rerank: str | None = None,
    rerank_k: int = 20,
    where: Callable[[dict], bool] | None = None,
) -> dict:
    """``rerank`` (auto, cross-encoder, itm, region): the first stage fetches ``rerank_k`` hits, the
    second stage rescores them (see ``rerank``) and the best ``top_k`` are returned. ``where``: a test on
    each hit's payload beyond what the filter grammar says (the External Knowledge API's conditions)."""
    if rerank and rerank != "none":
        return search_and_rerank(ctx, text, image, collection, top_k, score_threshold, filter, target, model,
                                       text_weight, with_thumbnails, regions, rerank, rerank_k)
    name = ctx.collection_name(collection)
    text = text.strip() if isinstance(text, str) else None
    if not text and image is None:
        raise CrossmodalError("give a query text, a query image, or both", param="query")
    if text:
        check_text(text, "query")
    top_k = check_top_k(top_k)
    if target not in SEARCH_TARGETS:
        raise CrossmodalError(f"'{target}' is not one of {', '.join(SEARCH_TARGETS)}", param="target")
    if score_threshold is not None and not -1.0 <= float(score_threshold) <= 1.0:
        raise CrossmodalError("must lie between -1 and 1 (cosine similarity)", param="score_threshold")
    if not 0.0 <= float(text_weight) <= 1.0:
        raise CrossmodalError("must lie between 0 and 1", param="text_weight")
    conditions = parse_filter(filter)
    info = ctx.store.get_collection(name, with_count=False)
    encoder, route = ctx.routed_encoder(asked=model, collection_model=ctx.model_for(info.model, model))
    check_weights(info, encoder.weights)
    if regions and target != "image":
        raise CrossmodalError("region search finds images; set target to image", param="regions")
    kinds = ["image", "text"] if target == "any" else [target]
    late = bool(info.multivector_dim) and getattr(encoder, "late_interaction", False) and text and image is None
    if late:
        warnings, query_kind = [], "text"
        hits = late_search(ctx, encoder, name, text, top_k, [*conditions, Condition("kind", "any", kinds)],
                           score_threshold, where, prefetch=info.storage.late_prefetch)
    else:
        vector, warnings, query_kind = query_vector(encoder, text, image, float(text_weight))
        if regions:
            hits = region_search(ctx, name, vector, top_k, conditions, score_threshold)
        else:
            hits = query_where(ctx, name, vector, top_k, [*conditions, Condition("kind", "any", kinds)],
                               score_threshold, where)
    results, thumbnails = [], {}
    for hit in hits:
        thumb = hit.payload.pop("thumbnail", None)
        if with_thumbnails and thumb:
            thumbnails[hit.id] = base64.b64decode(thumb)
        results.append(hit.as_dict())
    out = {"results": results, "model": encoder.identity, "collection": name, "query_kind": query_kind,
           "target": target, "warnings": precision_warnings(encoder) + warnings, "route": route.as_dict()}
    if late:
        out["scoring"] = "maxsim"  # each query token's best cosine over a page's token vectors, averaged
    if with_thumbnails:
        out["thumbnails"] = thumbnails
    return out


def search_and_rerank(ctx: Context, text, image, collection, top_k, score_threshold, filter, target, model,
                      text_weight, with_thumbnails, regions, method, rerank_k) -> dict:
    top_k, rerank_k = check_top_k(top_k), check_top_k(rerank_k)
    if not (text or "").strip():
        raise CrossmodalError("reranking reads the query text; give one, or turn rerank off", param="rerank")
    first = search(ctx, text, image, collection, max(top_k, rerank_k), score_threshold, filter, target, model,
                        text_weight, with_thumbnails, regions)
    second = rerank(ctx, text, first, top_n=top_k, method=method, collection=first["collection"])
    keep = {row["id"] for row in second["results"]}
    first["results"] = [{"id": r["id"], "score": r["score"], "first_stage_score": r["first_stage_score"],
                         "first_stage_rank": r["first_stage_rank"], "payload": r["payload"]}
                        for r in second["results"]]
    if with_thumbnails:
        first["thumbnails"] = {k: v for k, v in first["thumbnails"].items() if k in keep}
    first["rerank"] = {"method": second["method"], "model": second["model"], "candidates": rerank_k,
                       "rejected": second["rejected"]}
    return first


def late_search(ctx: Context, encoder, name, text, top_k, conditions, score_threshold, where,
                prefetch: int) -> list[Hit]:
    """Late interaction: ``prefetch`` candidates by the pooled vector, ranked by MaxSim in the engine. Scores
    are MaxSim divided by the query's token count (the mean of each token's best cosine), so that they read
    as cosines do, thresholds and calibration included."""
    pooled, tokens = encoder.query_multivector(text)
    count = len(tokens)
    limit = top_k if where is None else top_k * 4
    threshold = None if score_threshold is None else float(score_threshold) * count
    hits = ctx.store.query_late(name, pooled.tolist(), tokens.tolist(), limit, max(prefetch, 4 * limit),
                                conditions, threshold)
    hits = [Hit(h.id, h.score / count, h.payload) for h in hits]
    return (hits if where is None else [h for h in hits if where(h.payload)])[:top_k]


def query_where(ctx: Context, name, vector, top_k, conditions, score_threshold, where) -> list[Hit]:
    """The best ``top_k`` hits that pass ``where``: fetched in growing rounds until enough pass or the
    collection has no more, so a rare condition is still answered exactly."""
    if where is None:
        return ctx.store.query(name, vector.tolist(), top_k, conditions, score_threshold)
    limit = top_k * 4
    while True:
        hits = ctx.store.query(name, vector.tolist(), limit, conditions, score_threshold)
        kept = [hit for hit in hits if where(hit.payload)]
        if len(kept) >= top_k or len(hits) < limit:
            return kept[:top_k]
        limit *= 4


def region_search(ctx: Context, name, vector, top_k, conditions, score_threshold) -> list[Hit]:
    """Images ranked by their best match, whole image or any stored region of it."""
    conditions = [*conditions, Condition("kind", "any", ["image", "region"])]
    limit = top_k * 8
    while True:
        hits = ctx.store.query(name, vector.tolist(), limit, conditions, score_threshold)
        best: dict[str, Hit] = {}
        for hit in hits:  # best first
            parent = hit.payload.get("parent_id", hit.id)
            if parent not in best:
                best[parent] = hit
        if len(best) >= top_k or len(hits) < limit or limit >= MAX_REGION_CANDIDATES:
            break
        limit = min(limit * 4, MAX_REGION_CANDIDATES)
    chosen = list(best.items())[:top_k]
    parents = {h.id: h for h in ctx.store.retrieve(name, [p for p, h in chosen if h.id != p])}
    out = []
    for parent_id, hit in chosen:
        if hit.id == parent_id:
            out.append(Hit(parent_id, hit.score, {**hit.payload, "matched": "image"}))
        elif parent_id in parents:
            payload = {**parents[parent_id].payload, "matched": "region", "region_box": hit.payload.get("box")}
            out.append(Hit(parent_id, hit.score, payload))
    return out


def query_vector(encoder: Encoder, text, image, text_weight):
    warnings, parts, weights = [], [], []
    if text:
        vector, truncated = encoder.query_text_vector(text)
        parts.append(vector)
        weights.append(text_weight if image is not None else 1.0)
        if truncated:
            warnings.append(truncation_warning(text, encoder))
    if image is not None:
        decoded = decode_image(read_input(image), param="image")
        warnings += decoded.notes
        parts.append(encoder.query_image_vector(decoded.image))
        weights.append(1.0 - text_weight if text else 1.0)
    # Weighted sum of unit vectors: its cosine with x ranks by the weighted mean of the two cosines.
    fused = sum(w * p for w, p in zip(weights, parts))
    norm = float(np.linalg.norm(fused))
    if norm < 1e-6:
        raise CrossmodalError("the text and image queries cancel out; change text_weight", param="text_weight")
    kind = "fused" if len(parts) == 2 else ("text" if text else "image")
    return (fused / norm).astype(np.float32), warnings, kind
