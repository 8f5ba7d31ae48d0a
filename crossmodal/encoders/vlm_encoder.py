"""VLM embedding models (Qwen3-VL-Embedding and any sentence-transformers model that reads images) behind the
encoder interface: one tower reads texts, images and both together, and the last token's state is the vector.

Loaded with ``SentenceTransformer``, which brings the model's own processor, chat template, prompts and pooling.
What differs from a dual encoder, and is handled here so that no caller learns of it:
- queries and documents get different prompts (``encode_query`` / ``encode_document``); the query prompt is
  the model's own unless the ``instruction`` option replaces it (crossmodal/encoders/model_ref.py);
- Matryoshka: the ``dimension`` option truncates and renormalises (sentence-transformers' ``truncate_dim``);
- images keep their aspect ratio and cost visual tokens by their pixel count (``max_pixels`` caps it), so
  image batches are cut by a visual-token budget, not by a count;
- Align's occlusion needs a fixed view: the square views of crossmodal/encoders/views.py (the image squashed to
  an ``image_size`` square, embedded as a document).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from crossmodal.encoders.catalog import PRECISION_AGREEMENT, PRECISIONS, precision_check_batch
from crossmodal.encoders.interface import DualEncoderBase
from crossmodal.encoders.views import SquareViews
from crossmodal.encoders.model_ref import ModelOptions, ModelRef
from crossmodal.encoders.vectors import TextEncoding, l2_normalize
from crossmodal.errors import CrossmodalError
from crossmodal.runtime import os_lock

logger = logging.getLogger(__name__)

# Qwen3-VL-Embedding's model card: documents get the default system prompt, queries a task instruction.
QWEN_DOCUMENT_PROMPT = "Represent the user's input."
QWEN_QUERY_PROMPT = "Retrieve images or text relevant to the user's query."
ALIGN_VIEW_SIDE = 448  # px: Align's square view (about 200 visual tokens for Qwen3-VL)
# Visual tokens per forward pass: a GPU takes long sequences in one go; a CPU gains nothing past a few.
TOKEN_BUDGET = {"cuda": 32768, "cpu": 4096}
TEXT_BATCH = {"cuda": 64, "cpu": 16}
DEFAULT_CALIBRATION_SCALE = 20.0  # no published temperature; a fitted calibration replaces it


class SharedModel:
    """One loaded model per directory and device, shared by every set of options (a 2B model is 8 GB in
    fp32): its forward passes take turns, and each view sets its own image budget under the turn."""

    def __init__(self, model, device: str):
        self.model = model
        self.device = device
        self.turn = os_lock()
        # The processor's own size setting, kept before any view sets its cap on the shared processor.
        processor = getattr(model[0], "processor", None)
        self.image_size_setting = dict(getattr(getattr(processor, "image_processor", None), "size", None) or {})
        self.precision, self.precision_note, self.precision_agreement = "fp32", None, None
        self.precision_checked: set[str] = set()


class VlmEncoder(SquareViews, DualEncoderBase):
    def __init__(self, ref: ModelRef, shared: SharedModel, model_dir: Path, weights: str):
        import torch

        self._torch = torch
        self.shared = shared
        self.model = model = shared.model
        self.device = device = shared.device
        self.model_dir = model_dir
        self.weights = weights
        self.options = ref.options
        transformer = model[0]
        self.model_type = getattr(transformer.config, "model_type", "vlm")
        self.full_dim = int(model.get_embedding_dimension())
        self.dim = self._checked_dimension(ref.options.dimension)
        # A collection records the size always (and a custom instruction), so that its searches embed alike.
        self.identity = ModelRef(ref.name, ModelOptions(dimension=self.dim,
                                                        instruction=ref.options.instruction)).identity_part()
        self.context_length = int(getattr(model, "max_seq_length", None) or 8192)
        qwen = self.model_type.startswith("qwen")
        prompts = model.prompts or {}
        self.query_prompt = ref.options.instruction or prompts.get("query") or (QWEN_QUERY_PROMPT if qwen else None)
        self.document_prompt = prompts.get("document") or (QWEN_DOCUMENT_PROMPT if qwen else None)
        self.image_processor = getattr(transformer.processor, "image_processor", None)
        self.patch_factor = self._patch_factor()
        self.image_budget = self._image_budget(ref.options.max_pixels)
        self.max_pixels = self.image_budget.get("longest_edge")
        self.image_size = self._view_side()
        self.patch_size = self.patch_factor
        self.image_config = {"do_center_crop": False, "size": {"height": self.image_size, "width": self.image_size}}
        self.fast_preprocessor = None  # images go to the model's own processor, at their own aspect ratio
        self.batch_size = TEXT_BATCH.get(device, 16)
        self.token_budget = TOKEN_BUDGET.get(device, 4096)
        self.logit_scale, self.logit_bias = DEFAULT_CALIBRATION_SCALE, None
        self.precision, self.precision_note, self.precision_agreement = "fp32", None, None
        self.start_query_batching()

    # -- set-up -----------------------------------------------------------------------------
    def _checked_dimension(self, dimension: int | None) -> int:
        if dimension is None:
            return self.full_dim
        if dimension > self.full_dim:
            raise CrossmodalError(f"{dimension} is larger than the model's {self.full_dim}; use {self.full_dim} "
                                  "or less (Matryoshka sizes such as 1024, 512, 256)", param="dimension")
        return dimension

    def _patch_factor(self) -> int:
        ip = self.image_processor
        return int(getattr(ip, "patch_size", 14) or 14) * int(getattr(ip, "merge_size", 1) or 1)

    def _image_budget(self, max_pixels: int | None) -> dict:
        """The processor's size setting with this view's pixel cap (so an image's visual tokens)."""
        size = dict(self.shared.image_size_setting)
        if max_pixels is not None and "longest_edge" in size:
            size["longest_edge"] = max(int(max_pixels), int(size.get("shortest_edge") or 0))
        return size

    def _use_image_budget(self) -> None:
        """Under the model's turn: the shared processor resizes with this view's cap."""
        ip = self.image_processor
        if ip is not None and self.image_budget:
            ip.size = self.image_budget

    def _view_side(self) -> int:
        side = ALIGN_VIEW_SIDE
        if self.max_pixels:
            side = min(side, int(math.sqrt(self.max_pixels)))
        return max(self.patch_factor, side // self.patch_factor * self.patch_factor)

    # -- the interface ------------------------------------------------------------------------
    def encode_texts(self, texts: Sequence[str], *, batch_size: int | None = None, normalize=True,
                     input_type: str = "document") -> TextEncoding:
        texts = list(texts)
        truncated = [i for i, n in enumerate(self.token_counts(texts)) if n > self.context_length]
        vectors = self._encode(texts, input_type, batch_size or self.batch_size) if texts else self._empty()
        return TextEncoding(vectors, truncated)

    def encode_images(self, images: Sequence, *, batch_size: int | None = None, show_progress_bar: bool = False,
                      normalize=True, input_type: str = "document") -> np.ndarray:
        images = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        return self._encode_by_token_budget(images, input_type)

    def encode_mixed(self, documents: Sequence[tuple], *, input_type: str = "document") -> np.ndarray:
        """One vector per (image, text) pair read together: an image with its caption, a figure with its text."""
        items = [{"image": im if im.mode == "RGB" else im.convert("RGB"), "text": text} for im, text in documents]
        return self._encode_by_token_budget(items, input_type)

    def query_image_vector(self, image) -> np.ndarray:
        return self.image_queries.submit(image if image.mode == "RGB" else image.convert("RGB"))

    def _image_query_batch(self, images: Sequence) -> list:
        return list(self.encode_images(list(images), input_type="query"))

    def _text_query_batch(self, texts: Sequence[str]) -> list:
        encoded = self.encode_texts(list(texts), input_type="query")
        return [(vector, i in encoded.truncated) for i, vector in enumerate(encoded.vectors)]

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.model.tokenizer(list(texts), truncation=False)["input_ids"]]

    @property
    def image_tokens(self) -> int:
        """Visual tokens of a typical image (the Align view's): an image's share of usage."""
        return (self.image_size // self.patch_factor) ** 2

    def visual_tokens(self, width: int, height: int) -> int:
        """How many visual tokens the processor makes of a width x height image (its own resize rule)."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        size = self.image_budget
        try:
            h, w = smart_resize(height, width, factor=self.patch_factor,
                                min_pixels=int(size.get("shortest_edge") or self.patch_factor ** 2),
                                max_pixels=int(size.get("longest_edge") or width * height))
        except ValueError:  # extreme aspect ratios: the processor refuses them too
            h, w = height, width
        return max(1, (h // self.patch_factor) * (w // self.patch_factor))

    # -- encoding -------------------------------------------------------------------------------------
    def _prompt(self, input_type: str) -> str | None:
        if input_type not in ("query", "document"):
            raise CrossmodalError(f"'{input_type}' is not query or document", param="input_type")
        return self.query_prompt if input_type == "query" else self.document_prompt

    def _encode(self, inputs: list, input_type: str, batch_size: int) -> np.ndarray:
        method = self.model.encode_query if input_type == "query" else self.model.encode_document
        with self.shared.turn, self._torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._use_image_budget()
            vectors = method(inputs, prompt=self._prompt(input_type), batch_size=batch_size,
                             truncate_dim=self.dim, normalize_embeddings=True, convert_to_numpy=True,
                             show_progress_bar=False)
        return l2_normalize(np.asarray(vectors, dtype=np.float32).reshape(len(inputs), self.dim))

    def _encode_by_token_budget(self, items: list, input_type: str) -> np.ndarray:
        """Batches whose visual tokens stay within the budget (one large image may be a batch of its own)."""
        out = self._empty(len(items))
        batch, tokens = [], 0
        for index, item in enumerate(items):
            image = item["image"] if isinstance(item, dict) else item
            cost = self.visual_tokens(*image.size)
            if batch and tokens + cost > self.token_budget:
                out[batch] = self._encode([items[i] for i in batch], input_type, len(batch))
                batch, tokens = [], 0
            batch.append(index)
            tokens += cost
        if batch:
            out[batch] = self._encode([items[i] for i in batch], input_type, len(batch))
        return out

    def _empty(self, rows: int = 0) -> np.ndarray:
        return np.zeros((rows, self.dim), dtype=np.float32)

    # -- precision -------------------------------------------------------------------------------------
    def use_precision(self, wanted: str) -> str:
        """bf16 on CUDA (flash attention 2 when installed), kept only if its vectors agree with fp32 on the
        bundled check batch; fp32 on the CPU. int8 and onnx are the CLIP family's CPU paths. The check runs
        once per loaded model; every view of it shares the outcome."""
        wanted = (wanted or "fp32").lower()
        if wanted not in PRECISIONS:
            raise CrossmodalError(f"'{wanted}' is not one of {', '.join(PRECISIONS)}", param="precision")
        shared = self.shared
        if wanted == "fp32":
            pass
        elif self.device != "cuda":
            shared.precision_note = (f"{wanted}: VLM embedding models run bf16 on a CUDA GPU only; running fp32 "
                                     "on the CPU")
        elif "bf16" not in shared.precision_checked:
            shared.precision_checked.add("bf16")
            self._check_bf16(wanted)
        self.precision, self.precision_note = shared.precision, shared.precision_note
        self.precision_agreement = shared.precision_agreement
        return self.precision

    def _check_bf16(self, wanted: str) -> None:
        shared = self.shared
        notes = [f"{wanted}: not for VLM embedding models (CLIP family only); trying bf16"] if wanted != "bf16" else []
        images, texts = precision_check_batch()
        reference = np.vstack([self.encode_images(images), self.encode_texts(texts).vectors])
        with shared.turn:
            set_dtype(shared.model, self._torch.bfloat16)
        trial = np.vstack([self.encode_images(images), self.encode_texts(texts).vectors])
        agreement = float(np.mean(np.sum(reference * trial, axis=1)))
        if agreement >= PRECISION_AGREEMENT:
            shared.precision, shared.precision_agreement = "bf16", round(agreement, 5)
        else:
            with shared.turn:
                set_dtype(shared.model, self._torch.float32)
            notes += [f"bf16: its embeddings agree with fp32 at mean cosine {agreement:.4f} "
                      f"(< {PRECISION_AGREEMENT})", "running fp32"]
        shared.precision_note = "; ".join(notes) or None


def set_dtype(model, dtype) -> None:
    """Cast a loaded model; bf16 attends with flash attention 2 when it is installed."""
    import torch

    model.to(dtype)
    backbone = model[0].model
    wanted = "flash_attention_2" if dtype != torch.float32 and flash_attention_installed() else "sdpa"
    if hasattr(backbone, "set_attn_implementation"):
        try:
            backbone.set_attn_implementation(wanted)
        except (ValueError, ImportError) as exc:  # an older GPU: sdpa it stays
            logger.info("attention stays %s: %s", backbone.config._attn_implementation, exc)


def flash_attention_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


_SHARED: dict[tuple, SharedModel] = {}
_SHARED_LOCK = os_lock()  # guards the dicts only
_LOAD_TURNS: dict[tuple, object] = {}  # one load per directory and device at a time


def load_vlm_encoder(ref: ModelRef, directory: Path, device: str, weights: str) -> VlmEncoder:
    """A view with ``ref``'s options over the one loaded model of ``directory`` on ``device``."""
    key = (str(directory), device)
    with _SHARED_LOCK:
        turn = _LOAD_TURNS.setdefault(key, os_lock())
    with turn:  # two option sets of one model asked at once load it once
        shared = _SHARED.get(key)
        if shared is None:
            shared = SharedModel(load_sentence_transformer(ref, directory, device), device)
            with _SHARED_LOCK:
                _SHARED[key] = shared
    return VlmEncoder(ref, shared, directory, weights)


def load_sentence_transformer(ref: ModelRef, directory: Path, device: str):
    from crossmodal.encoders.catalog import sentence_transformers_kind
    from crossmodal.engine import require_torch

    if sentence_transformers_kind(directory) == "CrossEncoder":
        raise CrossmodalError(f"'{ref.name}' is a cross-encoder (a rerank model), not an embedding model; use it "
                              "in Rerank (method cross-encoder) or as the model package's rerank model",
                              param="model")
    require_torch(f"'{ref.name}', a VLM embedding model,", "model",
                  "install the full package (python -m crossmodal package --runtime torch)")
    from sentence_transformers import SentenceTransformer

    check_torchvision(ref.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("transformers").setLevel(logging.ERROR)
        try:
            # fp32 first, also on a GPU: use_precision's check needs the fp32 vectors, then casts to bf16.
            model = SentenceTransformer(str(directory), device=device, local_files_only=True,
                                        model_kwargs=vlm_model_kwargs("cpu"))
        except (OSError, ValueError, KeyError) as exc:
            raise CrossmodalError(f"cannot load '{ref.name}' with sentence-transformers: {exc}",
                                  param="model") from None
    modalities = set(getattr(model, "modalities", []) or [])
    if "image" not in modalities:
        raise CrossmodalError(f"'{ref.name}' reads {', '.join(sorted(modalities)) or 'text only'}, not images; "
                              "choose a model that embeds images (e.g. qwen3-vl-embedding-2b)", param="model")
    return model.eval()



def check_torchvision(name: str) -> None:
    """The Qwen3-VL processor's video part needs torchvision, built for the installed torch."""
    import torch

    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError) as exc:  # a mismatched build fails at import ("operator ... does not exist")
        raise CrossmodalError(f"'{name}' needs torchvision built for the installed torch ({torch.__version__}), "
                              f"and it cannot be imported ({type(exc).__name__}: {str(exc)[:160]}); install the "
                              "torchvision that matches torch, from the same index", param="model") from None


def vlm_model_kwargs(device: str) -> dict:
    """How transformers loads a VLM: fp32 with PyTorch's attention on a CPU; bf16 on a GPU, with flash
    attention 2 when it is installed."""
    import torch

    if device != "cuda":
        return {"dtype": torch.float32, "attn_implementation": "sdpa"}
    return {"dtype": torch.bfloat16,
            "attn_implementation": "flash_attention_2" if flash_attention_installed() else "sdpa"}
