"""Second-stage rescoring of first-stage candidates.

- ``cross-encoder``: sentence-transformers ``CrossEncoder`` reads query and candidate together; its score
  (sigmoid of the relevance logit) replaces the first-stage cosine. A text cross-encoder reads texts; a
  multimodal one (Qwen3-VL-Reranker: the sigmoid of its yes/no log-odds) reads any mix of texts and images on
  either side, with an instruction (its model's default unless one is given).
- ``itm`` (image candidates, text query): an image-text matching head (BLIP's ``BlipForImageTextRetrieval``,
  or BLIP-2's Q-Former head, ``Blip2ForImageTextRetrieval``, e.g. Salesforce/blip2-itm-vit-g);
  final = itm_weight x P(match) + (1 - itm_weight) x first-stage similarity - BLIP's own retrieval protocol
  (ITC to shortlist, ITM to rescore), with the first stage's cosine as the ITC term (BLIP's own ITC
  cosine when a candidate has no first-stage score).
- ``region`` (image candidates, any CLIP-family model): the query is split into phrases; each phrase is
  scored against the candidate's global view and 3 x 3 half-side tiles, and its best view counts; the
  weakest phrase's best view is the region score, so every named object must be present:
  final = region_weight x min_phrase(max_view cos) + (1 - region_weight) x first-stage similarity.
  Chosen with the demo model's tenth run on two development galleries (600 two-object queries, the candidates
  read from stored thumbnails as in use): first stage 0.470, this 0.542, the earlier mean of phrases over
  tiles floored at the model input 0.505 (docs/evaluation.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossmodal.runtime import os_lock
from crossmodal.errors import CrossmodalError

METHODS = ("auto", "cross-encoder", "itm", "region")
DEFAULT_CROSS_ENCODER = "cross-encoder/ms-marco-MiniLM-L-6-v2"
DEFAULT_ITM = "Salesforce/blip-itm-base-coco"
MAX_CANDIDATES = 200
MIN_REGION_TILE = 16  # px: a tile smaller than this shows nothing a phrase could name


@dataclass
class Candidate:
    """One thing to rescore: a text, or an image (PIL), with what the first stage said about it."""

    id: str
    text: str | None = None
    image: Any = None
    first_score: float | None = None
    first_rank: int | None = None
    payload: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "image" if self.image is not None else "text"


def pick_method(method: str, candidates: list[Candidate], has_itm: bool, query_kind: str = "text",
                multimodal_cross_encoder: bool = False) -> str:
    """auto: text query + texts -> cross-encoder; text query + images -> itm when an ITM route is set, else
    region; image query + texts -> itm (an ITM head reads any image-text pair). A multimodal cross-encoder
    (``multimodal_cross_encoder``: the cross-encoder route reads images) takes every pair that auto or
    cross-encoder asks for."""
    method = (method or "auto").strip().lower()
    if method not in METHODS:
        raise CrossmodalError(f"'{method}' is not one of {', '.join(METHODS)}", param="method")
    kinds = {c.kind for c in candidates}
    if len(kinds) > 1:
        raise CrossmodalError("candidates mix texts and images; rerank one kind at a time", param="candidates")
    kind = kinds.pop() if kinds else "text"
    if multimodal_cross_encoder and method in ("auto", "cross-encoder"):
        return "cross-encoder"
    if query_kind == "image":
        if kind == "image":
            raise CrossmodalError("an image query reranks text candidates; for image candidates give a text query",
                                  param="query")
        if method not in ("auto", "itm"):
            raise CrossmodalError(f"an image query with text candidates needs itm, not '{method}'", param="method")
        return "itm"
    if method == "auto":
        return "cross-encoder" if kind == "text" else ("itm" if has_itm else "region")
    if method in ("itm", "region") and kind == "text":
        raise CrossmodalError(f"'{method}' rescoring needs image candidates, but these are texts; use "
                              "cross-encoder (or auto)", param="method")
    if method == "cross-encoder" and kind == "image":
        raise CrossmodalError("this cross-encoder reads texts, but these are images; use itm or region (or auto), "
                              "or a multimodal cross-encoder such as qwen3-vl-reranker-2b", param="method")
    return method


# -- cross-encoder ------------------------------------------------------------------------
_LOADED: dict[tuple, Any] = {}
_LOCK = os_lock()


def load_cross_encoder(name: str, hub=None, device: str = "cpu"):
    """sentence-transformers' CrossEncoder on torch; on the lean build, or for a directory holding an ONNX
    export, the same scoring on ONNX Runtime (crossmodal/rerank/onnx_cross_encoder.py)."""
    from crossmodal.encoders.catalog import model_identity, refuse_on_lean_build

    refuse_on_lean_build(model_identity(name))
    key = ("ce", name, device)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = _onnx_cross_encoder(name, hub) if _runs_on_onnx(name) else _torch_cross_encoder(
                name, hub, device)
        return _LOADED[key]


def reads_images(name: str | None, hub=None) -> bool:
    """Whether ``name`` is a multimodal cross-encoder (by preset, else by its config files; never loads it)."""
    from crossmodal.encoders.catalog import family_or_none

    return family_or_none(name, hub) == "vlm-cross-encoder"


def is_multimodal(model) -> bool:
    return "image" in (getattr(model, "modalities", None) or ())


def _runs_on_onnx(name: str) -> bool:
    from crossmodal.encoders.catalog import engine
    from crossmodal.rerank.onnx_cross_encoder import is_cross_encoder_export

    return engine() == "onnx" or (Path(name).is_dir() and is_cross_encoder_export(Path(name)))


def _torch_cross_encoder(name: str, hub, device: str):
    from sentence_transformers import CrossEncoder

    from crossmodal.encoders.catalog import is_vlm_model, resolve_model_dir

    directory = resolve_model_dir(name, hub)
    options = {}
    if is_vlm_model(directory):  # Qwen3-VL-Reranker: torchvision for its processor, bf16 on a GPU
        from crossmodal.encoders.vlm_encoder import check_torchvision, vlm_model_kwargs

        check_torchvision(name)
        options["model_kwargs"] = vlm_model_kwargs(device)
    try:
        return CrossEncoder(str(directory), device=device, local_files_only=True, **options)
    except (OSError, ValueError) as exc:
        raise CrossmodalError(f"cannot load the cross-encoder '{name}': {exc}", param="model") from None


def _onnx_cross_encoder(name: str, hub):
    from crossmodal.encoders.catalog import HubOptions, _download, looks_like_hub_id
    from crossmodal.rerank.onnx_cross_encoder import GRAPH, OnnxCrossEncoder

    path = Path(name).expanduser()
    if path.is_dir():
        return OnnxCrossEncoder(path)
    if not looks_like_hub_id(name):
        raise CrossmodalError(f"'{name}' is neither a Hugging Face id (owner/name) nor an existing directory",
                              param="model")
    return OnnxCrossEncoder(_download(name, hub or HubOptions.from_env(), patterns=["*.json", "*.txt", GRAPH]))


def cross_encoder_scores(model, query, candidates: list[Candidate], batch_size: int = 32,
                         bf16: bool = False, instruction: str | None = None) -> np.ndarray:
    """0-1 scores of (query, candidate) pairs; ``query`` is a text or, for a multimodal model, a PIL image."""
    if is_multimodal(model):
        return multimodal_scores(model, query, candidates, instruction)
    if not isinstance(query, str):
        raise CrossmodalError("this cross-encoder reads texts; an image query needs a multimodal cross-encoder such "
                              "as qwen3-vl-reranker-2b", param="query_image")
    pairs = [(query, c.text) for c in candidates]
    if not hasattr(model, "to"):  # OnnxCrossEncoder: no torch, no autocast
        scores = np.asarray(model.predict(pairs, batch_size=batch_size), dtype=np.float32)
        return scores if scores.ndim == 1 else scores[:, -1]
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        scores = model.predict(pairs, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)
    scores = np.asarray(scores, dtype=np.float32)
    return scores if scores.ndim == 1 else scores[:, -1]


MULTIMODAL_BATCH = {"cuda": 16, "cpu": 4}  # pairs per forward pass: an image pair is hundreds of tokens


def multimodal_scores(model, query, candidates: list[Candidate], instruction: str | None = None) -> np.ndarray:
    """P(relevant) = sigmoid(logit(yes) - logit(no)) for each pair, images and texts on either side; the
    instruction goes in as the model's system prompt (its own default when None)."""
    import torch

    pairs = [(query, c.image if c.image is not None else c.text) for c in candidates]
    batch = MULTIMODAL_BATCH.get(str(model.device).split(":")[0], 4)
    with torch.inference_mode():
        scores = model.predict(pairs, prompt=instruction or None, batch_size=batch, activation_fn=torch.nn.Sigmoid(),
                               show_progress_bar=False, convert_to_numpy=True)
    return np.asarray(scores, dtype=np.float32).reshape(len(pairs))


# -- image-text matching head ------------------------------------------------------------------
def load_itm(name: str, hub=None, device: str = "cpu"):
    from crossmodal.encoders.catalog import resolve_model_dir
    from crossmodal.engine import require_torch

    require_torch("BLIP ITM", "method", "install the full package (python -m crossmodal package --runtime torch), "
                  "or rerank with region or cross-encoder")
    key = ("itm", name, device)
    with _LOCK:
        if key not in _LOADED:
            from transformers import AutoConfig, AutoProcessor, Blip2ForImageTextRetrieval, BlipForImageTextRetrieval

            directory = resolve_model_dir(name, hub)
            model_type = AutoConfig.from_pretrained(directory).model_type
            classes = {"blip": BlipForImageTextRetrieval, "blip-2": Blip2ForImageTextRetrieval}
            if model_type not in classes:
                raise CrossmodalError(f"'{name}' is a {model_type} model; the itm method needs a BLIP or BLIP-2 "
                                      f"image-text retrieval model such as {DEFAULT_ITM}", param="model")
            model = classes[model_type].from_pretrained(directory).to(device).eval()
            _LOADED[key] = (model, AutoProcessor.from_pretrained(directory), os_lock())
        return _LOADED[key]


def itm_scores(loaded, query: str | None, candidates: list[Candidate], batch_size: int = 16,
               texts: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(P(match) from the ITM head, BLIP's own ITC cosine) per candidate: the query text against each
    candidate image, or (``texts``) each text against the candidates' image (an image query)."""
    import torch

    model, processor, lock = loaded
    probabilities, cosines = [], []
    for start in range(0, len(candidates), batch_size):
        chunk = candidates[start : start + batch_size]
        chunk_texts = texts[start : start + batch_size] if texts is not None else [query] * len(chunk)
        inputs = processor(images=[c.image for c in chunk], text=chunk_texts, return_tensors="pt",
                           padding=True, truncation=True)
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        with lock, torch.inference_mode():
            if model.config.model_type == "blip-2":  # Q-Former ITM: logits averaged over the query tokens
                itm = model(**inputs, use_image_text_matching_head=True).logits_per_image
                itc = model(**inputs, use_image_text_matching_head=False).logits_per_image
            else:
                itm = model(**inputs, use_itm_head=True).itm_score
                itc = model(**inputs, use_itm_head=False).itm_score
        probabilities.append(torch.softmax(itm.float(), dim=-1)[:, 1].cpu().numpy())
        cosines.append(torch.diagonal(itc.float()).cpu().numpy())
    return np.concatenate(probabilities), np.concatenate(cosines)


# -- region rescoring -------------------------------------------------------------------------------
def region_views(image) -> list:
    """The whole image and overlapping half-side tiles (3 x 3 at 50 % overlap; on panoramas larger ones, at
    most align.MAX_TILES). Tiles stay half the side even below the model input: upscaled, one object fills more
    patches, which is what tells shapes apart (docs/evaluation.md: +3.7 points of R@1 over tiles floored at
    the model input)."""
    from crossmodal.alignment.align import default_tile_size, tile_boxes

    width, height = image.size
    tile = default_tile_size(width, height, MIN_REGION_TILE, 0.5, fraction=2)
    boxes = tile_boxes(width, height, tile, 0.5)
    return [image] + [image.crop(b) for b in boxes if b != (0, 0, width, height)]


def region_scores(encoder, query: str, candidates: list[Candidate]) -> tuple[np.ndarray, list[list[float]]]:
    """Per candidate: the weakest phrase's best view cosine, so that every named object must be present;
    and the per-phrase bests."""
    from crossmodal.alignment.align import split_phrases

    phrases, _ = split_phrases(query)
    phrase_vectors = encoder.encode_texts(phrases, input_type="query").vectors
    views, owner = [], []
    for k, candidate in enumerate(candidates):
        crops = region_views(candidate.image)
        views += crops
        owner += [k] * len(crops)
    similarities = phrase_vectors @ encoder.encode_images(views, batch_size=64).T  # phrases x all views
    owner = np.asarray(owner)
    scores, per_phrase = [], []
    for k in range(len(candidates)):
        best = similarities[:, owner == k].max(axis=1)
        scores.append(float(best.min()))
        per_phrase.append([round(float(b), 6) for b in best])
    return np.asarray(scores, dtype=np.float32), per_phrase


def fuse(second: np.ndarray, candidates: list[Candidate], weight: float, fallback: np.ndarray | None = None):
    first = np.array([c.first_score if c.first_score is not None else np.nan for c in candidates], dtype=np.float32)
    if fallback is not None:
        first = np.where(np.isnan(first), fallback, first)
    first = np.where(np.isnan(first), second, first)
    return weight * second + (1 - weight) * first
