"""Reranking Dify's documents (texts or base64 images) against a text or image query: what the model package's
rerank models serve. Every score is a 0-1 match probability, so that Dify's score threshold means what it says,
and indices are always the request's.

The model decides how pairs are scored:
- a dual encoder (CLIP, Chinese-CLIP, SigLIP): the align node's calibrated probability of the pair's cosine;
  with an ITM model set (the ``itm`` route, the model package's ``itm_model`` field), image-text pairs are
  scored by its image-text matching head instead (BLIP's P(match)), same-kind pairs still by the dual encoder;
- a text cross-encoder (``*ForSequenceClassification``, e.g. cross-encoder/ms-marco-MiniLM-L-6-v2): the
  sigmoid of its relevance logit for each query-document pair; it reads texts only;
- a multimodal cross-encoder (Qwen3-VL-Reranker): the sigmoid of its yes/no log-odds for each pair, texts and
  images on either side, with the model's ``instruction`` credential as its instruction.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from crossmodal.context import Context, torch_device
from crossmodal.encoders.embedder import embed_documents
from crossmodal.encoders.workspace import is_workspace_model
from crossmodal.errors import CrossmodalError
from crossmodal.inputs.checks import check_text


def rerank_documents(ctx: Context, query: tuple[str, str], documents: Sequence[tuple[str, str]],
                     score_threshold: float | None = None, top_n: int | None = None,
                     model: str | None = None) -> dict:
    if not documents:
        return {"model": model or ctx.settings.model, "docs": []}
    if top_n is not None and top_n < 1:
        raise CrossmodalError(f"{top_n} is not a positive number of documents", param="top_n")
    if reranker_kind(ctx, model) == "cross-encoder":
        used, scores, cosines = cross_encoder_scores(ctx, query, documents, model)
    else:
        used, scores, cosines = dual_encoder_scores(ctx, query, documents, model)
    order = sorted(range(len(documents)), key=lambda i: -scores[i])
    kept = [i for i in order if score_threshold is None or scores[i] >= score_threshold]
    if top_n is not None:
        kept = kept[:top_n]
    docs = []
    for i in kept:
        row = {"index": i, "score": round(float(scores[i]), 6), "text": result_text(*documents[i], i + 1)}
        if cosines is not None:
            row["cosine"] = round(float(cosines[i]), 6)
        docs.append(row)
    return {"model": used, "docs": docs}


def result_text(kind: str, content: str, index: int) -> str:
    """What a result carries as its ``text``: a text document itself; for an image, a short stand-in naming its
    bytes (``image sha256:<first 16 hex digits>``), never the image again. Dify rebuilds each reranked document
    from the metadata it kept by ``index`` and reads an image's attachment from its own storage, so the text of
    an image result is read by nothing; echoing the base64 would make one reply of ten 2 MB images over the
    daemon's 5 MiB line, and the daemon kills the plugin then (docs/dify-compat.md)."""
    from crossmodal.inputs.sources import decode_base64

    if kind == "text":
        return content
    return "image sha256:" + hashlib.sha256(decode_base64(content, f"documents[{index}]")).hexdigest()[:16]


def reranker_kind(ctx: Context, model: str | None) -> str:
    """'dual' (a dual encoder or a VLM embedder: cosines) or 'cross-encoder' (text or multimodal), read from
    the model's config (a few KB; never its weights; remembered by the catalog)."""
    from crossmodal.encoders.catalog import (SUPPORTED_TYPES, family_or_none, model_family, model_identity,
                                             refuse_on_lean_build)

    identity = model_identity(model or ctx.settings.model)
    refuse_on_lean_build(identity)
    if is_workspace_model(identity):
        return "dual"
    # A model that cannot be read: model_family raises the reason.
    family = family_or_none(identity, ctx.settings.hub) or model_family(identity, ctx.settings.hub)
    if family == "other":
        raise CrossmodalError(f"'{identity}' is neither a dual encoder ({', '.join(SUPPORTED_TYPES)}), a VLM "
                              "embedding model, nor a cross-encoder (a *ForSequenceClassification model such as "
                              "cross-encoder/ms-marco-MiniLM-L-6-v2, or qwen3-vl-reranker-2b); a BLIP ITM model "
                              "goes in the ITM model field", param="model")
    return "dual" if family in ("dual", "vlm", "late") else "cross-encoder"


def dual_encoder_scores(ctx: Context, query: tuple[str, str], documents: Sequence[tuple[str, str]],
                        model: str | None):
    asked = embed_documents(ctx, [query], model, input_type="query")["vectors"][0]  # the request's documents[0]
    embedded = embed_documents(ctx, documents, model, first_index=1)
    vectors = np.asarray(embedded["vectors"], dtype=np.float32)
    calibration = ctx.calibration(ctx.encoder(embedded["model"]))
    cosines = vectors @ np.asarray(asked, dtype=np.float32)
    scores = np.asarray([calibration.probability(float(c)) for c in cosines], dtype=np.float64)
    itm = ctx.routes.get("itm")
    crossing = [i for i, (kind, _) in enumerate(documents) if kind != query[0]]
    if itm and crossing:
        scores[crossing] = itm_probabilities(ctx, itm, query, [documents[i] for i in crossing], crossing)
    return embedded["model"], scores, cosines


def itm_probabilities(ctx: Context, itm: str, query: tuple[str, str], pairs: list[tuple[str, str]],
                      indices: list[int]) -> np.ndarray:
    """BLIP's P(match) for each image-text pair (the query and a document of the other kind)."""
    from crossmodal.rerank import scoring

    try:
        loaded = scoring.load_itm(itm, ctx.settings.hub, torch_device(ctx.settings.device))
    except CrossmodalError as exc:
        raise CrossmodalError(f"the ITM model '{itm}' cannot be loaded: {exc}", param="itm_model") from None

    if query[0] == "image":
        image = document_content("image", query[1], 0)
        candidates = [scoring.Candidate(str(i), image=image) for i in indices]
        probabilities, _ = scoring.itm_scores(loaded, None, candidates, texts=[text for _, text in pairs])
    else:
        candidates = [scoring.Candidate(str(i), image=document_content("image", content, i + 1))
                      for i, (_, content) in zip(indices, pairs)]
        probabilities, _ = scoring.itm_scores(loaded, query[1], candidates)
    return probabilities


def cross_encoder_scores(ctx: Context, query: tuple[str, str], documents: Sequence[tuple[str, str]],
                         model: str | None):
    from crossmodal.encoders.models import model_identity
    from crossmodal.rerank import scoring

    name = model_identity(model or ctx.settings.model)
    try:
        encoder = scoring.load_cross_encoder(name, ctx.settings.hub, torch_device(ctx.settings.device))
    except CrossmodalError as exc:
        raise CrossmodalError(str(exc).split(": ", 1)[-1], param="model") from None
    multimodal = scoring.is_multimodal(encoder)
    contents = []
    for index, (kind, content) in enumerate([query, *documents]):
        if kind != "text" and not multimodal:
            raise CrossmodalError(f"is an image, and '{name}' is a text cross-encoder: rerank images with a "
                                  "Vision rerank model (a dual encoder or qwen3-vl-reranker-2b)",
                                  param=f"documents[{index}]")
        contents.append(document_content(kind, content, index))
    candidates = [scoring.Candidate(str(i), **({"text": c} if isinstance(c, str) else {"image": c}))
                  for i, c in enumerate(contents[1:])]
    scores = scoring.cross_encoder_scores(encoder, contents[0], candidates, bf16=ctx.settings.precision == "bf16",
                                          instruction=ctx.settings.model_options.instruction)
    return name, np.asarray(scores, dtype=np.float64), None


def document_content(kind: str, content: str, index: int):
    """A request's text, or its base64 image decoded (the parameter named by the request's index)."""
    from crossmodal.inputs.images import decode_image
    from crossmodal.inputs.sources import decode_base64

    param = f"documents[{index}]"
    if kind == "text":
        return check_text(content, param)
    if kind != "image":
        raise CrossmodalError(f"content_type '{kind}' is not text or image", param=param)
    return decode_image(decode_base64(content, param), param=param).image
