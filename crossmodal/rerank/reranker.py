"""The Rerank capability: pick the method, load its model, score, fuse with the first stage, reorder."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from crossmodal.context import Context, torch_device
from crossmodal.errors import CrossmodalError
from crossmodal.inputs.checks import MAX_TOP_K, check_text, check_top_k
from crossmodal.inputs.images import decode_image
from crossmodal.inputs.sources import ImageInput, read_input
from crossmodal.rerank.candidates import gather_candidates


def rerank(
    ctx: Context,
    query: str | None = None,
    candidates: Any = None,
    files: Sequence[ImageInput] = (),
    query_image: ImageInput | None = None,
    top_n: int | None = None,
    method: str = "auto",
    model: str | None = None,
    collection: str | None = None,
    weight: float = 0.5,
    instruction: str | None = None,
) -> dict:
    """Rescore first-stage candidates (Search output, texts, or image files); see crossmodal/rerank/scoring.py."""
    from crossmodal.rerank import scoring as rr
    query = query.strip() if isinstance(query, str) else None
    if query:
        check_text(query, "query")
    if not query and query_image is None:
        raise CrossmodalError("give the query text (or a query image for text candidates)", param="query")
    if not 0.0 <= float(weight) <= 1.0:
        raise CrossmodalError("must lie between 0 and 1", param="weight")
    pool, rejected = gather_candidates(ctx, candidates, files, collection)
    if top_n is not None:
        top_n = check_top_k(top_n) if int(top_n) <= MAX_TOP_K else int(top_n)
    out = {"results": [], "rejected": rejected, "method": None, "model": None}
    if not pool:  # nothing to rescore: say so in the same shape (strings, as the node declares them)
        out.update(method="none", model=model or "")
        return out
    query_kind = "text" if query else "image"
    routes = ctx.routes
    # Only images make the difference (a text pair goes to the cross-encoder either way): the model's config is
    # read only then.
    needs_images = query_kind == "image" or any(c.kind == "image" for c in pool)
    multimodal = needs_images and rr.reads_images(model or routes["cross_encoder"], ctx.settings.hub)
    method = rr.pick_method(method, pool, has_itm=bool(routes.get("itm")), query_kind=query_kind,
                            multimodal_cross_encoder=multimodal)
    weight = float(weight)
    extra: dict[str, list] = {}
    if method == "cross-encoder":
        name = model or routes["cross_encoder"]
        encoder = load_route(ctx, rr.load_cross_encoder, "cross_encoder", name, model)
        asked = query if query else decode_image(read_input(query_image), param="query_image").image
        scores = rr.cross_encoder_scores(encoder, asked, pool, bf16=ctx.settings.precision == "bf16",
                                         instruction=instruction)
    elif method == "itm":
        name = model or routes.get("itm") or rr.DEFAULT_ITM
        loaded = load_route(ctx, rr.load_itm, "itm", name, model)
        if query_kind == "image":
            image = decode_image(read_input(query_image), param="query_image").image
            pool_pairs = [rr.Candidate(c.id, image=image, payload=c.payload) for c in pool]
            probabilities, cosines = rr.itm_scores(loaded, None, pool_pairs, texts=[c.text for c in pool])
        else:
            probabilities, cosines = rr.itm_scores(loaded, query, pool)
        scores = rr.fuse(probabilities, pool, weight, fallback=cosines)
        extra["itm_probability"] = [round(float(p), 6) for p in probabilities]
    else:
        encoder, route = ctx.routed_encoder(asked=model, text=query)
        name = encoder.identity
        region, per_phrase = rr.region_scores(encoder, query, pool)
        scores = rr.fuse(region, pool, weight)
        extra["region_score"] = [round(float(r), 6) for r in region]
        extra["phrase_scores"] = per_phrase
    order = np.argsort(-scores, kind="stable")
    if top_n:
        order = order[:top_n]
    for new_rank, i in enumerate(order, 1):
        c = pool[i]
        row = {"id": c.id, "score": round(float(scores[i]), 6), "rank": new_rank,
               "first_stage_score": c.first_score, "first_stage_rank": c.first_rank, "kind": c.kind,
               "payload": c.payload}
        if c.text is not None:
            row["text"] = c.text
        for key, values in extra.items():
            row[key] = values[i]
        out["results"].append(row)
    out["method"], out["model"] = method, name
    return out


def load_route(ctx: Context, loader, route: str, name: str, asked: str | None):
    try:
        return loader(name, ctx.settings.hub, torch_device(ctx.settings.device))
    except CrossmodalError as exc:
        where = "the model parameter" if asked else f"route '{route}'"
        raise CrossmodalError(f"{where} names '{name}', which cannot be loaded: {exc}",
                              param="model" if asked else "routes") from None
