"""Reranking Dify's documents (texts or base64 images) against a text or image query with the dual encoder:
each document's score is the align node's calibrated match probability of its cosine with the query, so
Dify's 0-1 score threshold means what it says; indices are always the request's."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from crossmodal.context import Context
from crossmodal.encoders.embedder import embed_documents
from crossmodal.errors import CrossmodalError


def rerank_documents(ctx: Context, query: tuple[str, str], documents: Sequence[tuple[str, str]],
                     score_threshold: float | None = None, top_n: int | None = None,
                     model: str | None = None) -> dict:
    if not documents:
        return {"model": model or ctx.settings.model, "docs": []}
    if top_n is not None and top_n < 1:
        raise CrossmodalError(f"{top_n} is not a positive number of documents", param="top_n")
    embedded = embed_documents(ctx, [query, *documents], model)
    vectors = np.asarray(embedded["vectors"], dtype=np.float32)
    calibration = ctx.calibration(ctx.encoder(embedded["model"]))
    cosines = vectors[1:] @ vectors[0]
    scores = [calibration.probability(float(c)) for c in cosines]
    order = sorted(range(len(documents)), key=lambda i: -scores[i])
    kept = [i for i in order if score_threshold is None or scores[i] >= score_threshold]
    if top_n is not None:
        kept = kept[:top_n]
    docs = [{"index": i, "score": round(scores[i], 6), "text": documents[i][1], "cosine": round(float(cosines[i]), 6)}
            for i in kept]
    return {"model": embedded["model"], "docs": docs}
