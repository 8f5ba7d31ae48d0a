"""The service layer: every adapter (Dify tools, endpoints, CLI) parses its input,
calls one of these functions, and formats what comes back. Nothing here knows Dify."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np

from crossmodal.align import AlignOptions, Calibration, align, split_phrases
from crossmodal.runtime import os_lock
from crossmodal.errors import CrossmodalError, NotFoundError
from crossmodal.images import DecodedImage, decode_image
from crossmodal.models import Encoder, get_encoder, model_identity
from crossmodal.pipeline import decode_workers, ordered_map
from crossmodal.settings import Settings
from crossmodal.store import (Condition, Hit, StoredPoint, VectorStore, check_collection_name, check_weights,
                              open_store, parse_filter)

if TYPE_CHECKING:
    from crossmodal.routing import Route

logger = logging.getLogger(__name__)

MAX_TOP_K = 100
MAX_TEXT_CHARS = 10_000
INGEST_CHUNK = 128  # items decoded, embedded and written at a time: memory stays flat
THUMBNAIL_SIDE = 384
SEARCH_TARGETS = ("image", "text", "any")
REGION_OVERLAP = 0.25
MAX_REGION_CANDIDATES = 2000
_CALIBRATIONS: dict[tuple[str, str], Calibration] = {}
_CALIBRATIONS_LOCK = os_lock()


@dataclass
class ImageInput:
    """An image to read lazily: ``read`` returns its bytes (download, file read, base64 decode)."""

    source: str
    read: Callable[[], bytes]

    @classmethod
    def from_bytes(cls, source: str, data: bytes) -> "ImageInput":
        return cls(source, lambda: data)

    @classmethod
    def from_url(cls, url: str, allowlist: str | None = None, param: str = "image_url") -> "ImageInput":
        """Fetched on first read, under the URL safety rules (crossmodal/urls.py)."""
        from crossmodal.urls import UrlPolicy, fetch_image

        policy = UrlPolicy.from_settings(allowlist)
        return cls(url, lambda: fetch_image(url, policy, param=param))

    @classmethod
    def from_path(cls, path: str | Path) -> "ImageInput":
        path = Path(path)
        return cls(str(path), path.read_bytes)


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


class Rejected(NamedTuple):
    item: IngestItem
    reason: str


class Service:
    def __init__(self, settings: Settings | None = None, store: VectorStore | None = None):
        self.settings = settings or Settings()
        self._store = store

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            s = self.settings
            self._store = open_store(s.store_url, s.store_api_key, s.store_dir())
        return self._store

    def encoder(self, model: str | None = None) -> Encoder:
        return get_encoder(model or self.settings.model, self.settings.device, self.settings.hub,
                           self.settings.precision)

    @property
    def routes(self) -> dict:
        from crossmodal.routing import parse_routes

        return parse_routes(self.settings.routes)

    def routed_encoder(self, *, asked: str | None, text: str | None = None,
                       collection_model: str | None = None) -> tuple[Encoder, Route]:
        """The encoder the route table picks (see crossmodal/routing.py), and the route."""
        from crossmodal.routing import route_encoder

        route = route_encoder(self.routes, asked=asked, provider_model=self.settings.model, text=text,
                              collection_model=collection_model)
        try:
            return self.encoder(route.model), route
        except CrossmodalError as exc:
            if route.route in ("zh", "default"):
                raise CrossmodalError(f"route '{route.route}' names '{route.model}', which cannot be loaded: {exc}",
                                      param="routes") from None
            raise

    def collection_encoder(self, collection: str | None) -> Encoder:
        """The encoder that searches of this collection use, loaded now if need be. It is remembered, so that
        the next plugin start loads it before any call (crossmodal/warmup.py)."""
        from crossmodal import warmup

        info = self.store.get_collection(self._collection(collection), with_count=False)
        model = self._model_for(info.model, None)
        warmup.remember(model, self.settings.device, self.settings.precision)
        return self.encoder(model)

    def _collection(self, name: str | None) -> str:
        return check_collection_name(name or self.settings.collection)

    # -- embed ---------------------------------------------------------------
    def embed(self, images: Sequence[ImageInput] = (), texts: Sequence[str] = (), model: str | None = None) -> dict:
        texts = [check_text(t, "texts") for t in texts]
        if not images and not texts:
            raise CrossmodalError("give at least one image or one text", param="images")
        encoder, route = self.routed_encoder(asked=model, text=" ".join(texts))
        items, rejected, warnings = [], [], precision_warnings(encoder)
        decoded = []
        for image in images:
            try:
                decoded.append((image.source, decode_image(read_input(image), param=f"images[{image.source}]")))
            except CrossmodalError as exc:
                rejected.append({"source": image.source, "reason": str(exc)})
        if decoded:
            vectors = encoder.encode_images([d.image for _, d in decoded])
            for (source, d), vec in zip(decoded, vectors):
                items.append({"kind": "image", "source": source, "width": d.width, "height": d.height,
                              "vector": vector_list(vec)})
                warnings += [f"{source}: {n}" for n in d.notes]
        if texts:
            encoded = encoder.encode_texts(texts)
            for i, (text, vec) in enumerate(zip(texts, encoded.vectors)):
                items.append({"kind": "text", "text": text, "vector": vector_list(vec)})
                if i in encoded.truncated:
                    warnings.append(truncation_warning(text, encoder))
        return {"model": encoder.identity, "dimension": encoder.dim, "precision": encoder.precision, "items": items,
                "rejected": rejected, "warnings": warnings, "route": route.as_dict()}

    # -- ingest --------------------------------------------------------------
    def ingest(
        self,
        items: Iterable[IngestItem],
        collection: str | None = None,
        model: str | None = None,
        progress: Callable[[int], None] | None = None,
        regions: bool = False,
    ) -> dict:
        """Add items; same content again is a duplicate; a bad item is rejected, never the batch.

        ``regions``: also store one child point per overlapping tile of each large image (see
        ``region_points``), so that searches with ``regions`` find small objects in large images."""
        name = self._collection(collection)
        encoder = self._encoder_for_write(name, model)
        self.store.ensure_collection(name, encoder.identity, encoder.dim, encoder.weights)
        report = {"collection": name, "model": encoder.identity, "precision": encoder.precision, "added": 0,
                  "duplicates": 0, "rejected": [], "items": [], "warnings": precision_warnings(encoder)}
        seen: set[str] = set()
        fast = encoder.fast_preprocessor
        prepared = ordered_map(lambda item: prepare_or_reject(item, fast, keep_full=regions), items,
                               workers=decode_workers(), window=2 * INGEST_CHUNK)
        chunk: list[PreparedItem | Rejected] = []
        for result in prepared:
            chunk.append(result)
            if len(chunk) >= INGEST_CHUNK:
                self._ingest_chunk(name, encoder, chunk, seen, report, regions)
                progress and progress(len(chunk))
                chunk = []
        if chunk:
            self._ingest_chunk(name, encoder, chunk, seen, report, regions)
            progress and progress(len(chunk))
        self.store.finish_writes(name)
        report["count"] = self.store.count(name)
        return report

    def _encoder_for_write(self, name: str, model: str | None) -> Encoder:
        try:
            info = self.store.get_collection(name, with_count=False)
        except NotFoundError:
            return self.encoder(model)
        return self.encoder(self._model_for(info.model, model))

    def _model_for(self, collection_model: str, asked: str | None) -> str:
        """A collection's own model wins over 'auto'; an explicit other model is an error."""
        asked = asked or self.settings.model
        if asked in (None, "", "auto") or model_identity(asked) == collection_model:
            return collection_model
        raise CrossmodalError(
            f"the collection was made with '{collection_model}', not '{model_identity(asked)}'; "
            f"use model '{collection_model}' or 'auto'",
            param="model",
        )

    def _ingest_chunk(self, name: str, encoder: Encoder, chunk: list, seen: set, report: dict,
                      regions: bool = False):
        prepared: list[PreparedItem] = []
        for result in chunk:
            if isinstance(result, Rejected):
                report["rejected"].append({"source": result.item.name, "reason": result.reason})
                report["items"].append({"source": result.item.name, "status": "rejected", "reason": result.reason})
            else:
                prepared.append(result)
        existing = self.store.existing_ids(name, [p.point_id for p in prepared])
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
        vectors = self._vectors_for(encoder, fresh, report)
        points = [StoredPoint(p.point_id, v.tolist(), p.payload) for p, v in zip(fresh, vectors)]
        region_counts = {}
        if regions:
            for p in fresh:
                if p.decoded is not None:
                    children = region_points(encoder, p)
                    region_counts[p.point_id] = len(children)
                    points += children
        # Parents and their regions go in one write: a crash leaves both or neither.
        self.store.upsert(name, points)
        for p in fresh:
            report["added"] += 1
            row = {"source": p.item.name, "id": p.point_id, "status": "added"}
            if p.point_id in region_counts:
                row["regions"] = region_counts[p.point_id]
            report["items"].append(row)

    @staticmethod
    def _vectors_for(encoder: Encoder, fresh: list[PreparedItem], report: dict) -> np.ndarray:
        vectors = np.zeros((len(fresh), encoder.dim), dtype=np.float32)
        image_rows = [i for i, p in enumerate(fresh) if p.decoded is not None]
        text_rows = [i for i, p in enumerate(fresh) if p.decoded is None]
        ready = [i for i in image_rows if fresh[i].pixels is not None]
        others = [i for i in image_rows if fresh[i].pixels is None]
        if ready:
            pixels = encoder.fast_preprocessor.normalise([fresh[i].pixels for i in ready])
            vectors[ready] = encoder.embed_pixels(pixels, batch_size=encoder.batch_size)
        if others:
            vectors[others] = encoder.encode_images([fresh[i].decoded.image for i in others])
        if text_rows:
            texts = [fresh[i].payload["text"] for i in text_rows]
            encoded = encoder.encode_texts(texts)
            vectors[text_rows] = encoded.vectors
            report["warnings"] += [truncation_warning(texts[i], encoder) for i in encoded.truncated]
        return vectors

    # -- search --------------------------------------------------------------
    def search(
        self,
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
            return self._search_and_rerank(text, image, collection, top_k, score_threshold, filter, target, model,
                                           text_weight, with_thumbnails, regions, rerank, rerank_k)
        name = self._collection(collection)
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
        info = self.store.get_collection(name, with_count=False)
        encoder, route = self.routed_encoder(asked=model, collection_model=self._model_for(info.model, model))
        check_weights(info, encoder.weights)
        vector, warnings, query_kind = self._query_vector(encoder, text, image, float(text_weight))
        if regions and target != "image":
            raise CrossmodalError("region search finds images; set target to image", param="regions")
        if regions:
            hits = self._region_search(name, vector, top_k, conditions, score_threshold)
        else:
            kinds = ["image", "text"] if target == "any" else [target]
            hits = self._query_where(name, vector, top_k, [*conditions, Condition("kind", "any", kinds)],
                                     score_threshold, where)
        results, thumbnails = [], {}
        for hit in hits:
            thumb = hit.payload.pop("thumbnail", None)
            if with_thumbnails and thumb:
                thumbnails[hit.id] = base64.b64decode(thumb)
            results.append(hit.as_dict())
        out = {"results": results, "model": encoder.identity, "collection": name, "query_kind": query_kind,
               "target": target, "warnings": precision_warnings(encoder) + warnings, "route": route.as_dict()}
        if with_thumbnails:
            out["thumbnails"] = thumbnails
        return out

    def _search_and_rerank(self, text, image, collection, top_k, score_threshold, filter, target, model,
                           text_weight, with_thumbnails, regions, method, rerank_k) -> dict:
        top_k, rerank_k = check_top_k(top_k), check_top_k(rerank_k)
        if not (text or "").strip():
            raise CrossmodalError("reranking reads the query text; give one, or turn rerank off", param="rerank")
        first = self.search(text, image, collection, max(top_k, rerank_k), score_threshold, filter, target, model,
                            text_weight, with_thumbnails, regions)
        second = self.rerank(text, first, top_n=top_k, method=method, collection=first["collection"])
        keep = {row["id"] for row in second["results"]}
        first["results"] = [{"id": r["id"], "score": r["score"], "first_stage_score": r["first_stage_score"],
                             "first_stage_rank": r["first_stage_rank"], "payload": r["payload"]}
                            for r in second["results"]]
        if with_thumbnails:
            first["thumbnails"] = {k: v for k, v in first["thumbnails"].items() if k in keep}
        first["rerank"] = {"method": second["method"], "model": second["model"], "candidates": rerank_k,
                           "rejected": second["rejected"]}
        return first

    def _query_where(self, name, vector, top_k, conditions, score_threshold, where) -> list[Hit]:
        """The best ``top_k`` hits that pass ``where``: fetched in growing rounds until enough pass or the
        collection has no more, so a rare condition is still answered exactly."""
        if where is None:
            return self.store.query(name, vector.tolist(), top_k, conditions, score_threshold)
        limit = top_k * 4
        while True:
            hits = self.store.query(name, vector.tolist(), limit, conditions, score_threshold)
            kept = [hit for hit in hits if where(hit.payload)]
            if len(kept) >= top_k or len(hits) < limit:
                return kept[:top_k]
            limit *= 4

    def _region_search(self, name, vector, top_k, conditions, score_threshold) -> list[Hit]:
        """Images ranked by their best match, whole image or any stored region of it."""
        conditions = [*conditions, Condition("kind", "any", ["image", "region"])]
        limit = top_k * 8
        while True:
            hits = self.store.query(name, vector.tolist(), limit, conditions, score_threshold)
            best: dict[str, Hit] = {}
            for hit in hits:  # best first
                parent = hit.payload.get("parent_id", hit.id)
                if parent not in best:
                    best[parent] = hit
            if len(best) >= top_k or len(hits) < limit or limit >= MAX_REGION_CANDIDATES:
                break
            limit = min(limit * 4, MAX_REGION_CANDIDATES)
        chosen = list(best.items())[:top_k]
        parents = {h.id: h for h in self.store.retrieve(name, [p for p, h in chosen if h.id != p])}
        out = []
        for parent_id, hit in chosen:
            if hit.id == parent_id:
                out.append(Hit(parent_id, hit.score, {**hit.payload, "matched": "image"}))
            elif parent_id in parents:
                payload = {**parents[parent_id].payload, "matched": "region", "region_box": hit.payload.get("box")}
                out.append(Hit(parent_id, hit.score, payload))
        return out

    def _query_vector(self, encoder: Encoder, text, image, text_weight):
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

    # -- align ---------------------------------------------------------------
    def align(
        self,
        image: ImageInput,
        text: str,
        model: str | None = None,
        mode: str = "auto",
        heatmap: bool = True,
        tile_size: int | None = None,
        overlap: float = 0.25,
        overlay: bool = True,
    ) -> dict:
        """Similarity, calibrated match probability, per-phrase scores and boxes, heat map (+ PNG overlay)."""
        from crossmodal.overlay import render_overlay

        options = AlignOptions(mode, bool(heatmap), int(tile_size) if tile_size else None, float(overlap))
        options.check()
        split_phrases(text)  # text errors before any image work
        decoded = decode_image(read_input(image), param="image")
        encoder, route = self.routed_encoder(asked=model, text=text)
        result = align(encoder, decoded.image, text, options, self.calibration(encoder))
        result["route"] = route.as_dict()
        result["notes"] = decoded.notes + result["notes"]
        if overlay:
            result["overlay_png"] = render_overlay(decoded.image, result)
        return result

    def calibration(self, encoder: Encoder) -> Calibration:
        from crossmodal.calibration import load_calibration

        data_dir = str(self.settings.store_dir())
        key = (encoder.identity, data_dir)
        with _CALIBRATIONS_LOCK:
            if key not in _CALIBRATIONS:
                _CALIBRATIONS[key] = load_calibration(encoder, data_dir)
            return _CALIBRATIONS[key]

    # -- rerank ----------------------------------------------------------------
    def rerank(
        self,
        query: str | None = None,
        candidates: Any = None,
        files: Sequence[ImageInput] = (),
        query_image: ImageInput | None = None,
        top_n: int | None = None,
        method: str = "auto",
        model: str | None = None,
        collection: str | None = None,
        weight: float = 0.5,
    ) -> dict:
        """Rescore first-stage candidates (Search output, texts, or image files); see crossmodal/rerank.py."""
        from crossmodal import rerank as rr

        query = query.strip() if isinstance(query, str) else None
        if query:
            check_text(query, "query")
        if not query and query_image is None:
            raise CrossmodalError("give the query text (or a query image for text candidates)", param="query")
        if not 0.0 <= float(weight) <= 1.0:
            raise CrossmodalError("must lie between 0 and 1", param="weight")
        pool, rejected = self._rerank_candidates(candidates, files, collection)
        if top_n is not None:
            top_n = check_top_k(top_n) if int(top_n) <= MAX_TOP_K else int(top_n)
        out = {"results": [], "rejected": rejected, "method": None, "model": None}
        if not pool:  # nothing to rescore: say so in the same shape (strings, as the node declares them)
            out.update(method="none", model=model or "")
            return out
        query_kind = "text" if query else "image"
        routes = self.routes
        method = rr.pick_method(method, pool, has_itm=bool(routes.get("itm")), query_kind=query_kind)
        weight = float(weight)
        extra: dict[str, list] = {}
        if method == "cross-encoder":
            name = model or routes["cross_encoder"]
            encoder = self._load_route(rr.load_cross_encoder, "cross_encoder", name, model)
            scores = rr.cross_encoder_scores(encoder, query, pool, bf16=self.settings.precision == "bf16")
        elif method == "itm":
            name = model or routes.get("itm") or rr.DEFAULT_ITM
            loaded = self._load_route(rr.load_itm, "itm", name, model)
            if query_kind == "image":
                image = decode_image(read_input(query_image), param="query_image").image
                pool_pairs = [rr.Candidate(c.id, image=image, payload=c.payload) for c in pool]
                probabilities, cosines = rr.itm_scores(loaded, None, pool_pairs, texts=[c.text for c in pool])
            else:
                probabilities, cosines = rr.itm_scores(loaded, query, pool)
            scores = rr.fuse(probabilities, pool, weight, fallback=cosines)
            extra["itm_probability"] = [round(float(p), 6) for p in probabilities]
        else:
            encoder, route = self.routed_encoder(asked=model, text=query)
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

    def _load_route(self, loader, route: str, name: str, asked: str | None):
        try:
            return loader(name, self.settings.hub, _torch_device(self.settings.device))
        except CrossmodalError as exc:
            where = "the model parameter" if asked else f"route '{route}'"
            raise CrossmodalError(f"{where} names '{name}', which cannot be loaded: {exc}",
                                  param="model" if asked else "routes") from None

    def _rerank_candidates(self, raw, files: Sequence[ImageInput], collection: str | None):
        """Search output (object or its results list), texts (list or one per line), or image files."""
        from crossmodal.rerank import MAX_CANDIDATES, Candidate

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
            pool += self._with_thumbnails(hits_needing_images, collection, rejected)
        if len(pool) > MAX_CANDIDATES:
            raise CrossmodalError(f"{len(pool)} candidates; at most {MAX_CANDIDATES} are reranked at once",
                                  param="candidates")
        return pool, rejected

    def _with_thumbnails(self, hits, collection, rejected):
        """Image hits from a Search output: their stored thumbnails (the collection names where)."""
        if not collection:
            raise CrossmodalError("image hits need the collection they came from: pass the Search node's whole "
                                  "output, or set collection", param="collection")
        name = self._collection(collection)
        stored = {h.id: h.payload for h in self.store.retrieve(name, [c.id for c in hits])}
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

    # -- collections -----------------------------------------------------------
    def list_collections(self) -> dict:
        return {"collections": [c.as_dict() for c in self.store.list_collections()], "backend": self.store.backend}

    def collection_info(self, collection: str | None = None) -> dict:
        return self.store.get_collection(self._collection(collection)).as_dict()

    def delete_collection(self, collection: str | None, confirm: bool) -> dict:
        name = self._collection(collection)
        if not confirm:
            raise CrossmodalError("deleting removes every point for good; set confirm to true to proceed",
                                  param="confirm")
        if not self.store.delete_collection(name):
            raise NotFoundError(f"no collection named '{name}'", param="collection")
        return {"deleted": name}


# -- helpers shared by the adapters ---------------------------------------------------
def precision_warnings(encoder: Encoder) -> list[str]:
    """A precision or device that fell back says so in every output that used it."""
    return [encoder.precision_note] if encoder.precision_note else []


def vector_list(vector: np.ndarray) -> list[float]:
    """A float32 vector as JSON-ready floats with the 9 significant digits that round-trip float32 exactly
    (about half the text of float64's repr: node outputs and endpoint bodies have size limits)."""
    return [float(f"{x:.9g}") for x in vector.tolist()]


def read_input(image: ImageInput) -> bytes:
    try:
        return image.read()
    except CrossmodalError:
        raise
    except FileNotFoundError:
        raise CrossmodalError(f"file not found: {image.source}", param="image") from None
    except Exception as exc:  # network errors of the Dify file server, permissions, ...
        raise CrossmodalError(f"cannot read {image.source}: {exc}", param="image") from None


def prepare_or_reject(item: IngestItem, fast=None, keep_full: bool = False) -> PreparedItem | Rejected:
    try:
        return prepare_item(item, fast, keep_full)
    except CrossmodalError as exc:  # read and decode errors all arrive as this
        return Rejected(item, str(exc))


def prepare_item(item: IngestItem, fast=None, keep_full: bool = True) -> PreparedItem:
    """Read and validate one item; its point id derives from its content.

    With ``fast`` (a FastPreprocessor) the model input is made here too, so that worker threads do it;
    unless ``keep_full``, a JPEG is then decoded only as large as the model input and the thumbnail need,
    and the decoded picture is dropped once they are made."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tags = [str(t).strip() for t in item.tags if str(t).strip()]
    payload: dict[str, Any] = {"source": item.name, "caption": item.caption, "tags": tags,
                               "metadata": dict(item.metadata), "ingested_at": now}
    if item.image is None:
        text = check_text(item.text, "texts")
        digest = hashlib.sha256(b"text\0" + text.encode()).hexdigest()
        payload.update(kind="text", text=text, sha256=digest, mime_type="text/plain")
        return PreparedItem(item, point_id(digest), None, payload)
    data = read_input(item.image)
    min_size = None if (fast is None or keep_full) else (lambda w, h: _draft_request(fast, w, h))
    decoded = decode_image(data, param=f"files[{item.name}]", min_size=min_size)
    digest = hashlib.sha256(data).hexdigest()
    payload.update(kind="image", sha256=digest, width=decoded.width, height=decoded.height,
                   mime_type=decoded.mime_type, thumbnail=thumbnail_b64(decoded.image))
    if decoded.notes:
        payload["notes"] = decoded.notes
    pixels = fast.to_uint8(decoded.image) if fast is not None else None
    if pixels is not None and not keep_full:
        decoded = dataclasses.replace(decoded, image=None)
    return PreparedItem(item, point_id(digest), decoded, payload, pixels)


def _draft_request(fast, width: int, height: int) -> tuple[int, int]:
    """What a drafted JPEG must still cover: the model's resize input (either orientation, since EXIF may
    rotate it) and a full-size thumbnail."""
    w1, h1 = fast.draft_request(width, height)
    h2, w2 = fast.draft_request(height, width)
    shrink = THUMBNAIL_SIDE / max(width, height)
    return max(w1, w2, int(width * shrink)), max(h1, h2, int(height * shrink))


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


def _torch_device(device: str) -> str:
    from crossmodal.models import pick_device

    return pick_device(device)


def region_points(encoder: Encoder, prepared: PreparedItem) -> list[StoredPoint]:
    """Child points for the overlapping tiles of a large image (the align node's tiling: a quarter of the
    shorter side, 25 % overlap; 25 tiles for 2048^2). Images under twice the model's input get none: the
    whole-image vector already sees them at full detail. Each region carries its parent's id, filterable
    fields and its box; ids derive from the parent's content and the box, so a re-ingest is idempotent."""
    from crossmodal.align import default_tile_size, tile_boxes

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
        digest = hashlib.sha256(f"{parent['sha256']}:{box}".encode()).hexdigest()
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


def check_text(text: str | None, param: str) -> str:
    text = (text or "").strip()
    if not text:
        raise CrossmodalError("is empty; give some words", param=param)
    if len(text) > MAX_TEXT_CHARS:
        raise CrossmodalError(f"has {len(text)} characters; at most {MAX_TEXT_CHARS} are allowed", param=param)
    return text


def check_top_k(top_k) -> int:
    try:
        value = int(top_k)
    except (TypeError, ValueError):
        raise CrossmodalError(f"'{top_k}' is not a whole number between 1 and {MAX_TOP_K}", param="top_k") from None
    if not 1 <= value <= MAX_TOP_K or value != float(top_k):
        raise CrossmodalError(f"{top_k} is out of range; use a whole number between 1 and {MAX_TOP_K}", param="top_k")
    return value


def truncation_warning(text: str, encoder: Encoder) -> str:
    return f"text truncated to the model's {encoder.context_length}-token context: '{text[:40]}...'"
