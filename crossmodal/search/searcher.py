"""The Search capability: a query vector (text, image, or their weighted fusion), the lexical index, filters, region
search, and reranking of the first stage.

``mode``: ``dense`` ranks by the query vector (cosine); ``lexical`` by BM25 over the items' text (captions, page
text, OCR text, chosen metadata: crossmodal/lexical/), ``hybrid`` fuses both lists in the engine's Query API (RRF,
or DBSF with ``fusion``). Empty or ``auto``: hybrid when the collection has text (some point has text beyond its
file name) and the query has words, else dense. A query that holds a code (a run of letters and digits of four
characters or more, such as a part or invoice number) weighs its lexical list CODE_QUERY_WEIGHT times in RRF:
image-text models do not read codes, and with equal weights a page the dense list happens to put first beat the
page that carries the code (docs/hybrid.md has the measurements). A query without a code weighs its lexical list
by the dense model's own confidence: where the query model's softmax over the dense candidates, at the
temperature it was trained with, gives its first hit DENSE_CONFIDENT or more, the lexical list weighs
CONFIDENT_LEXICAL_WEIGHT, which keeps that first hit first and lets words reorder the rest; otherwise both lists
weigh 1 (a model that cannot read a page, or cannot tell which colour goes with which shape, is never confident,
and the words decide). Lexical and hybrid scores are on 0-1: the fused score over the best the fusion can give
(crossmodal.store.base.fused_score); RRF measures ranks, not similarity.
"""

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
from crossmodal.limits import limit as current_limit, register
from crossmodal.rerank.reranker import rerank
from crossmodal.store import Condition, Hit, check_weights, parse_filter
from crossmodal.store.base import FUSIONS, CollectionInfo
from crossmodal.store.filters import PayloadFilter, engine_form, verdict_for, wanted_indexes


SEARCH_TARGETS = ("image", "text", "any")
MODES = ("auto", "dense", "lexical", "hybrid")
# Candidates each list brings to the fusion (or the limit, when larger): at RRF's k = 2 the 100th adds 0.01 of a
# first place, so deeper lists change nothing a top 100 shows.
FUSION_CANDIDATES = 100
CODE_QUERY_WEIGHT = 3.0  # above 2, a code's first lexical place stays first (crossmodal/store/base.py, RRF_K)
# A query without a code (see the module's text). The threshold was chosen on a validation draw of the scene
# sets (another seed) and measured on the sets docs/hybrid.md reports; below 0.5, the lexical list's first place
# (w / 1) and the dense list's second (1 / 2) together stay under the dense list's first (1).
DENSE_CONFIDENT = 0.7
CONFIDENT_LEXICAL_WEIGHT = 0.25
MAX_REGION_CANDIDATES = 2000
FILTER_CANDIDATES = register(
    "filter_candidates", 1000, "hits", "nearest hits a metadata condition is checked on, per query, where the "
    "engine cannot serve it from an index ('end with'; fields past payload_indexes; numbers and times in "
    "collections made before typed readings)", cap=20_000, minimum=10, workspace=True)


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
    where: PayloadFilter | None = None,
    mode: str | None = None,
    fusion: str | None = None,
) -> dict:
    """``rerank`` (auto, cross-encoder, itm, region): the first stage fetches ``rerank_k`` hits, the
    second stage rescores them (see ``rerank``) and the best ``top_k`` are returned. ``where``: conditions
    beyond what the filter grammar says (the External Knowledge API's), run in the engine (``query_where``).
    ``mode`` and ``fusion``: see the module's docstring."""
    if rerank and rerank != "none":
        return search_and_rerank(ctx, text, image, collection, top_k, score_threshold, filter, target, model,
                                       text_weight, with_thumbnails, regions, rerank, rerank_k, mode, fusion)
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
    if regions and target != "image":
        raise CrossmodalError("region search finds images; set target to image", param="regions")
    mode, lexical, notes = search_mode(info, mode, text, image, regions)
    fusion = check_fusion(fusion)
    weighed: dict = {}  # the lexical list's weight, as the fusion chose it
    kinds = ["image", "text"] if target == "any" else [target]
    if mode == "lexical":
        encoder, route, warnings, query_kind = None, None, [], "text"
        nearest = fused_nearest(ctx, name, None, lexical, fusion, score_threshold, with_thumbnails)
        hits = filtered_nearest(ctx, name, nearest, top_k, [*conditions, Condition("kind", "any", kinds)], where,
                                info.filter_fields)
    else:
        encoder, route = ctx.routed_encoder(asked=model, collection_model=ctx.model_for(info.model, model))
        check_weights(info, encoder.weights)
        hits, warnings, query_kind = dense_or_hybrid(ctx, encoder, info, text, image, text_weight, top_k,
                                                     conditions, kinds, score_threshold, where, with_thumbnails,
                                                     regions, lexical if mode == "hybrid" else None, fusion,
                                                     weighed)
    late = query_kind == "late"
    query_kind = "text" if late else query_kind
    results, thumbnails = [], {}
    for hit in hits:
        thumb = hit.payload.pop("thumbnail", None)
        if with_thumbnails and thumb:
            thumbnails[hit.id] = base64.b64decode(thumb)
        results.append(hit.as_dict())
    out = {"results": results, "model": encoder.identity if encoder else info.model, "collection": name,
           "query_kind": query_kind, "target": target, "mode": mode,
           "warnings": (precision_warnings(encoder) if encoder else []) + notes + warnings}
    if route is not None:
        out["route"] = route.as_dict()
    if mode != "dense":
        out["fusion"] = fusion
        out["scoring"] = f"{fusion} of {'dense and lexical lists' if mode == 'hybrid' else 'the lexical list'}, 0-1"
        if mode == "hybrid" and fusion == "rrf":
            out["weights"] = {"lexical": weighed.get("lexical", 1.0), "dense": 1.0, "lexical_by": weighed.get("by")}
            if "dense_confidence" in weighed:
                out["weights"]["dense_confidence"] = weighed["dense_confidence"]
    elif late:
        out["scoring"] = "maxsim"  # each query token's best cosine over a page's token vectors, averaged
    if with_thumbnails:
        out["thumbnails"] = thumbnails
    return out


def search_mode(info: CollectionInfo, mode: str | None, text: str | None, image, regions: bool):
    """The mode a search runs in, the query's lexical vector (lexical and hybrid), and notes for the output."""
    asked = (mode or "auto").strip().lower()
    if asked not in MODES:
        raise CrossmodalError(f"'{mode}' is not one of {', '.join(MODES)}", param="mode")
    if asked == "dense":
        return "dense", None, []
    options = info.lexical_options()
    if asked == "auto":
        if not (text and info.lexical and info.lexical.get("text")):
            return "dense", None, []
        if options is None:
            return "dense", None, [f"collection '{info.name}' has lexical vectors of another analyzer version: "
                                   f"searched dense only; run python -m crossmodal reindex {info.name}"]
    elif not info.lexical:
        raise CrossmodalError(f"mode {asked} reads the lexical index, which collection '{info.name}' was made "
                              f"without (before it existed): run python -m crossmodal reindex {info.name}, or use "
                              "mode dense", param="mode")
    elif options is None:
        raise CrossmodalError(f"mode {asked}: collection '{info.name}' has lexical vectors of another analyzer "
                              f"version; run python -m crossmodal reindex {info.name}, or use mode dense", param="mode")
    elif not text:
        raise CrossmodalError(f"mode {asked} matches the words of a query text; give one, or use mode dense for "
                              "an image alone", param="mode")
    elif asked == "lexical" and (image is not None or regions):
        raise CrossmodalError("mode lexical matches words only: it cannot use a query image or regions; use mode "
                              "hybrid to fuse them with the text's words", param="mode")
    from crossmodal.lexical import has_code, query_vector as lexical_query

    terms = lexical_query(text, options)
    if not len(terms):
        note = "the query has no searchable words (only stop words or marks)"
        if asked == "lexical":
            raise CrossmodalError(f"mode lexical: {note}; use mode dense", param="mode")
        return "dense", None, [f"{note}: searched dense only"]
    weight = CODE_QUERY_WEIGHT if has_code(text, options) else None  # None: by the dense model's confidence
    return ("hybrid" if asked == "auto" else asked), (terms, weight), []


def check_fusion(fusion: str | None) -> str:
    fusion = (fusion or "rrf").strip().lower()
    if fusion not in FUSIONS:
        raise CrossmodalError(f"'{fusion}' is not one of {', '.join(FUSIONS)}", param="fusion")
    return fusion


def dense_or_hybrid(ctx: Context, encoder, info: CollectionInfo, text, image, text_weight, top_k, conditions,
                    kinds, score_threshold, where, with_thumbnails, regions, lexical, fusion, weighed=None):
    """Hits by the query vector (or a late-interaction model's MaxSim), fused with the lexical list when
    ``lexical`` (the query's sparse vector) is given; (hits, warnings, query kind: text | image | fused | late).
    ``conditions``: the filter's; ``kinds``: which kinds of item to return (regions add their own); ``weighed``
    receives the lexical list's weight as the fusion chose it."""
    name = info.name
    if not regions:  # region search asks for images and their regions itself
        conditions = [*conditions, Condition("kind", "any", kinds)]
    if bool(info.multivector_dim) and getattr(encoder, "late_interaction", False) and text and image is None:
        if lexical is not None:
            pooled, tokens = encoder.query_multivector(text)
            nearest = fused_nearest(ctx, name, pooled.tolist(), lexical, fusion, score_threshold, with_thumbnails,
                                    multivector=tokens.tolist(), late_candidates=info.storage.late_prefetch,
                                    weighed=weighed)
            return filtered_nearest(ctx, name, nearest, top_k, conditions, where, info.filter_fields), [], "late"
        return late_search(ctx, encoder, name, text, top_k, conditions, score_threshold, where,
                           prefetch=info.storage.late_prefetch, with_thumbnails=with_thumbnails,
                           typed=info.filter_fields), [], "late"
    vector, warnings, query_kind = query_vector(encoder, text, image, float(text_weight))
    if lexical is None:
        nearest = dense_nearest(ctx, name, vector, score_threshold, with_thumbnails)
    else:
        nearest = fused_nearest(ctx, name, vector.tolist(), lexical, fusion, score_threshold, with_thumbnails,
                                temperature=encoder.logit_scale, weighed=weighed)
    if regions:
        return region_search(ctx, name, nearest, top_k, conditions, with_thumbnails), warnings, query_kind
    return filtered_nearest(ctx, name, nearest, top_k, conditions, where, info.filter_fields), warnings, query_kind


def dense_nearest(ctx: Context, name: str, vector, score_threshold, with_thumbnails: bool) -> Callable:
    """``nearest(limit, conditions)`` by the query vector (cosine scores)."""
    def nearest(how_many, engine_conditions):
        return ctx.store.query(name, vector.tolist(), how_many, engine_conditions, score_threshold,
                               with_thumbnails=with_thumbnails)

    return nearest


def fused_nearest(ctx: Context, name: str, vector, lexical, fusion: str, score_threshold, with_thumbnails: bool,
                  multivector=None, late_candidates: int | None = None, temperature: float | None = None,
                  weighed: dict | None = None) -> Callable:
    """``nearest(limit, conditions)``: the lexical list (and the dense one, given ``vector``) fused in the engine,
    scores on 0-1, ``score_threshold`` applied to them. ``lexical``: (the query's sparse vector, its weight, or
    None to weigh it by the dense model's confidence at ``temperature``, its logit scale); ``weighed`` receives
    the weight used and why."""
    terms, weight = lexical
    weighed = weighed if weighed is not None else {}

    def nearest(how_many, engine_conditions):
        candidates = max(FUSION_CANDIDATES, how_many)
        lexical_weight = lexical_weight_for(ctx, name, vector, weight, fusion, multivector, temperature,
                                            candidates, engine_conditions, weighed)
        hits = ctx.store.query_fused(name, vector, terms, how_many, candidates,
                                     engine_conditions, fusion, multivector, late_candidates, with_thumbnails,
                                     lexical_weight=lexical_weight)
        # RRF ties often (first in one list and second in the other, or the other way round), and the engine
        # orders ties differently from call to call: the same query gives the same order by id.
        hits.sort(key=lambda hit: (-round(hit.score, 9), hit.id))
        return [h for h in hits if score_threshold is None or h.score >= float(score_threshold)]

    return nearest


def lexical_weight_for(ctx: Context, name: str, vector, weight: float | None, fusion: str, multivector,
                       temperature: float | None, candidates: int, engine_conditions, weighed: dict) -> float:
    """The lexical list's RRF weight: a code's, or by the dense model's confidence (see the module's text), or 1
    where there is no single-vector dense list to judge (lexical mode, late interaction) or no temperature."""
    if weight is not None:
        weighed.update(lexical=weight, by="code")
        return weight
    if vector is None or multivector is not None or fusion != "rrf" or not temperature:
        weighed.update(lexical=1.0, by="equal")
        return 1.0
    dense = ctx.store.query(name, vector, candidates, engine_conditions)
    confidence = dense_confidence([hit.score for hit in dense], temperature)
    chosen = CONFIDENT_LEXICAL_WEIGHT if confidence >= DENSE_CONFIDENT else 1.0
    weighed.update(lexical=chosen, by="dense confidence", dense_confidence=round(confidence, 4))
    return chosen


def dense_confidence(scores: list[float], temperature: float) -> float:
    """The first candidate's share of the softmax of ``temperature`` x cosine over the candidates: how sure the
    model is of its first hit among them, in its own trained scale (0 for no candidates)."""
    if not scores:
        return 0.0
    logits = float(temperature) * np.asarray(scores, dtype=np.float64)
    shares = np.exp(logits - logits.max())
    return float(shares[0] / shares.sum())


def search_and_rerank(ctx: Context, text, image, collection, top_k, score_threshold, filter, target, model,
                      text_weight, with_thumbnails, regions, method, rerank_k, mode=None, fusion=None) -> dict:
    top_k, rerank_k = check_top_k(top_k), check_top_k(rerank_k)
    if not (text or "").strip():
        raise CrossmodalError("reranking reads the query text; give one, or turn rerank off", param="rerank")
    first = search(ctx, text, image, collection, max(top_k, rerank_k), score_threshold, filter, target, model,
                        text_weight, with_thumbnails, regions, mode=mode, fusion=fusion)
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
                prefetch: int, with_thumbnails: bool = False, typed: bool = True) -> list[Hit]:
    """Late interaction: ``prefetch`` candidates by the pooled vector, ranked by MaxSim in the engine. Scores
    are MaxSim divided by the query's token count (the mean of each token's best cosine), so that they read
    as cosines do, thresholds and calibration included."""
    pooled, tokens = encoder.query_multivector(text)
    count = len(tokens)
    threshold = None if score_threshold is None else float(score_threshold) * count

    def nearest(how_many, engine_conditions):
        hits = ctx.store.query_late(name, pooled.tolist(), tokens.tolist(), how_many, max(prefetch, 4 * how_many),
                                    engine_conditions, threshold, with_thumbnails=with_thumbnails)
        return [Hit(h.id, h.score / count, h.payload) for h in hits]

    return filtered_nearest(ctx, name, nearest, top_k, conditions, where, typed)


def query_where(ctx: Context, name, vector, top_k, conditions, score_threshold, where: PayloadFilter | None,
                with_thumbnails: bool = False, typed: bool | None = None) -> list[Hit]:
    """The best ``top_k`` hits that meet ``conditions`` and ``where``: one query whose filter the engine runs.
    ``typed``: whether the collection's points carry the typed readings (read from the collection if None)."""
    if where is not None and typed is None:
        typed = ctx.store.get_collection(name, with_count=False).filter_fields
    return filtered_nearest(ctx, name, dense_nearest(ctx, name, vector, score_threshold, with_thumbnails), top_k,
                            conditions, where, typed)


def filtered_nearest(ctx: Context, name: str, nearest: Callable[[int, list], list[Hit]], top_k: int, conditions,
                     where: PayloadFilter | None, typed: bool) -> list[Hit]:
    """``nearest(limit, conditions)`` asked once, with ``where`` in the engine's filter, when the engine serves
    each of its conditions from a payload index (the store makes the indexes they need, once, within its
    budget; a condition on a field no point has is known without one). Otherwise (a suffix; a field past the
    index budget; numbers or times in a collection without typed readings) the engine runs a superset and
    ``where`` is checked here on the nearest hits, in growing rounds up to ``filter_candidates`` hits: bounded,
    never a scan of the collection; past the budget the answer holds what was found."""
    if where is None:
        return nearest(top_k, list(conditions))
    fields = ctx.store.payload_fields(name, wanted_indexes(where.conditions))
    engine, exact = engine_form(where.conditions, verdict_for(fields, typed))
    if engine is None:
        return []
    if exact:
        return nearest(top_k, [*conditions, *engine])
    budget = max(top_k, int(current_limit("filter_candidates")))
    fetch = min(top_k * 4, budget)
    while True:
        hits = nearest(fetch, [*conditions, *engine])
        kept = [hit for hit in hits if where(hit.payload)]
        if len(kept) >= top_k or len(hits) < fetch or fetch >= budget:
            return kept[:top_k]
        fetch = min(fetch * 4, budget)


def region_search(ctx: Context, name, nearest: Callable[[int, list], list[Hit]], top_k, conditions,
                  with_thumbnails: bool = False) -> list[Hit]:
    """Images ranked by their best match, whole image or any stored region of it (``nearest``: dense, or fused
    with the lexical list, where regions are found by their vectors and their parents also by their text)."""
    conditions = [*conditions, Condition("kind", "any", ["image", "region"])]
    limit = top_k * 8
    while True:
        hits = nearest(limit, conditions)
        best: dict[str, Hit] = {}
        for hit in hits:  # best first
            parent = hit.payload.get("parent_id", hit.id)
            if parent not in best:
                best[parent] = hit
        if len(best) >= top_k or len(hits) < limit or limit >= MAX_REGION_CANDIDATES:
            break
        limit = min(limit * 4, MAX_REGION_CANDIDATES)
    chosen = list(best.items())[:top_k]
    parents = {h.id: h for h in ctx.store.retrieve(name, [p for p, h in chosen if h.id != p],
                                                   with_thumbnails=with_thumbnails)}
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
