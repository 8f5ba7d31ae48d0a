"""Late-interaction models (ColQwen2 / ColQwen2.5 / ColPali / ColModernVBert) behind the encoder interface, loaded
with sentence-transformers' ``MultiVectorEncoder`` (its ``*ForRetrieval`` checkpoints).

A page is a set of token vectors (one per image patch and prompt token) and a query one per query token; their
score is MaxSim (each query token's best cosine, summed). To every other part of the pack the encoder is a
dual encoder whose vector is the mean of the token vectors, renormalised: Embed returns it, and a collection's
HNSW graph indexes it. A late-interaction collection keeps the token vectors too (crossmodal/store: MaxSim, out
of the graph), and Search ranks the pooled vector's candidates by MaxSim (``query_late``).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from crossmodal.encoders.interface import DualEncoderBase
from crossmodal.encoders.views import SquareViews
from crossmodal.encoders.model_ref import ModelRef
from crossmodal.encoders.vectors import TextEncoding, l2_normalize
from crossmodal.errors import CrossmodalError
from crossmodal.runtime import os_lock

logger = logging.getLogger(__name__)
ALIGN_VIEW_SIDE = 448
PAGE_BATCH = {"cuda": 16, "cpu": 4}


class LateInteractionEncoder(SquareViews, DualEncoderBase):
    late_interaction = True

    def __init__(self, identity: str, model, device: str, model_dir: Path, weights: str):
        import torch

        self._torch = torch
        self.identity = identity
        self.model = model
        self.device = device
        self.model_dir = model_dir
        self.weights = weights
        transformer = model[0]
        self.model_type = getattr(transformer.config, "model_type", "late-interaction")
        self.dim = self.multivector_dim = int(model.get_embedding_dimension())
        self.context_length = int(getattr(model, "max_seq_length", None) or 512)
        self.image_processor = getattr(transformer.processor, "image_processor", None)
        ip = self.image_processor
        self.patch_size = int(getattr(ip, "patch_size", 14) or 14) * int(getattr(ip, "merge_size", 1) or 1)
        self.image_size = max(self.patch_size, ALIGN_VIEW_SIDE // self.patch_size * self.patch_size)
        self.image_config = {"do_center_crop": False, "size": {"height": self.image_size, "width": self.image_size}}
        self.fast_preprocessor = None
        self.batch_size = PAGE_BATCH.get(device, 4)
        self.logit_scale, self.logit_bias = 20.0, None  # no published temperature; a fitted calibration replaces it
        self.precision, self.precision_note = "fp32", None
        self._lock = os_lock()
        self.start_query_batching()

    # -- token vectors ------------------------------------------------------------------------------
    def page_tokens(self, pages: Sequence, pool_factor: int | None = None) -> list[np.ndarray]:
        """Each page's (or document text's) token vectors, L2-normalised; ``pool_factor`` merges similar ones
        (sentence-transformers' HierarchicalTokenPooling: about the same MaxSim with 1/pool_factor of them)."""
        pooling = None
        if pool_factor and pool_factor > 1:
            from sentence_transformers.multi_vector_encoder.modules.token_pooling import HierarchicalTokenPooling

            pooling = HierarchicalTokenPooling(pool_factor=int(pool_factor))
        pages = [p if isinstance(p, str) or p.mode == "RGB" else p.convert("RGB") for p in pages]
        with self._lock, self._torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokens = self.model.encode_document(pages, batch_size=self.batch_size, convert_to_numpy=True,
                                                normalize_embeddings=True, token_pooling=pooling,
                                                show_progress_bar=False)
        return [np.asarray(t, dtype=np.float32) for t in tokens]

    def query_tokens(self, texts: Sequence[str]) -> list[np.ndarray]:
        with self._lock, self._torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokens = self.model.encode_query(list(texts), batch_size=2 * self.batch_size, convert_to_numpy=True,
                                             normalize_embeddings=True, show_progress_bar=False)
        return [np.asarray(t, dtype=np.float32) for t in tokens]

    def page_patches(self, image) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """A page's token vectors (normalised, every token: MaxSim reads them all), which of them are image
        patches in row-major order over the page, and that patch grid (cols, rows): what a heat map needs."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        with self._lock, self._torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = self.model.encode_document([image], output_value=None, show_progress_bar=False)[0]
        keep = raw["attention_mask"].bool()
        tokens = l2_normalize(raw["token_embeddings"][keep].float().numpy())
        processor = self.model[0].processor
        is_patch = (raw["input_ids"][keep] == processor.image_token_id).numpy()
        if not split_into_tiles(processor):
            from sentence_transformers.multi_vector_encoder.interpretability import get_n_patches

            return tokens, is_patch, tuple(get_n_patches(self.model, image.size))
        order, grid = tile_patch_order(processor, image, np.nonzero(is_patch)[0])
        rest = np.setdiff1d(np.arange(len(tokens)), order)
        mask = np.concatenate([np.zeros(len(rest), bool), np.ones(len(order), bool)])
        return tokens[np.concatenate([rest, order])], mask, grid

    def query_multivector(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(pooled vector, token vectors) of a text query."""
        tokens = self.query_tokens([text])[0]
        return pooled(tokens), tokens

    # -- the dual-encoder interface: pooled vectors ---------------------------------------------------------
    def encode_images(self, images: Sequence, *, batch_size: int | None = None, show_progress_bar: bool = False,
                      normalize=True, input_type: str = "document") -> np.ndarray:
        return self._pooled(self.page_tokens(list(images))) if images else self._empty()

    def encode_texts(self, texts: Sequence[str], *, batch_size: int | None = None, normalize=True,
                     input_type: str = "document") -> TextEncoding:
        texts = list(texts)
        if not texts:
            return TextEncoding(self._empty(), [])
        tokens = self.query_tokens(texts) if input_type == "query" else self.page_tokens(texts)
        return TextEncoding(self._pooled(tokens), [])

    def query_image_vector(self, image) -> np.ndarray:
        return self.encode_images([image])[0]

    def _text_query_batch(self, texts: Sequence[str]) -> list:
        return [(vector, False) for vector in self.encode_texts(list(texts), input_type="query").vectors]

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.model.tokenizer(list(texts), truncation=False)["input_ids"]] if texts else []

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def use_precision(self, wanted: str) -> str:
        if (wanted or "fp32").lower() != "fp32":
            self.precision_note = f"{wanted}: late-interaction models run fp32 here; running fp32"
        return self.precision

    def _pooled(self, tokens: list[np.ndarray]) -> np.ndarray:
        return np.vstack([pooled(t) for t in tokens]) if tokens else self._empty()

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.dim), dtype=np.float32)


def split_into_tiles(processor) -> bool:
    """Idefics3-style processors (ColModernVBert's) cut a page into tiles, each its own block of image tokens,
    and add the whole page shrunk to one tile after them: not one row-major grid."""
    return getattr(getattr(processor, "image_processor", None), "do_image_splitting", None) is not None


def tile_patch_order(processor, image, patch_positions: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The positions of a tiled page's image tokens in row-major order over the page, and that grid (cols,
    rows). Each tile's ``image_seq_len`` tokens are a square, row-major; tiles follow row by row; the global
    view's block, last, is left out (it covers the page a second time, coarsely)."""
    side = math.isqrt(processor.image_seq_len)
    layout = processor.image_processor(images=[[image]], return_row_col_info=True, return_tensors="np")
    rows, cols = max(1, int(layout["rows"][0][0])), max(1, int(layout["cols"][0][0]))
    block = side * side
    spatial = np.empty((rows * side, cols * side), dtype=np.int64)
    for tile in range(rows * cols):
        row, col = divmod(tile, cols)
        spatial[row * side:(row + 1) * side, col * side:(col + 1) * side] = \
            patch_positions[tile * block:(tile + 1) * block].reshape(side, side)
    return spatial.ravel(), (cols * side, rows * side)


def pooled(tokens: np.ndarray) -> np.ndarray:
    """The mean of token vectors, renormalised: what the HNSW graph indexes and the first stage searches."""
    return l2_normalize(np.asarray(tokens, dtype=np.float32).mean(axis=0, keepdims=True))[0]


def load_late_encoder(ref: ModelRef, directory: Path, device: str, weights: str) -> LateInteractionEncoder:
    from crossmodal.engine import require_torch

    require_torch(f"'{ref.name}', a late-interaction model,", "model",
                  "install the full package (python -m crossmodal package --runtime torch)")
    if ref.options:
        raise CrossmodalError(f"'{ref.name}' is a late-interaction model, which takes no options "
                              f"({', '.join(ref.options.as_dict())}); leave them empty", param="model")
    from sentence_transformers import MultiVectorEncoder

    from crossmodal.encoders.vlm_encoder import vlm_model_kwargs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("transformers").setLevel(logging.ERROR)
        try:
            model = MultiVectorEncoder(str(directory), device=device, local_files_only=True,
                                       model_kwargs=vlm_model_kwargs(device))  # fp32 on a CPU, bf16 on a GPU
        except (OSError, ValueError, KeyError) as exc:
            raise CrossmodalError(f"cannot load '{ref.name}' with sentence-transformers: {exc}",
                                  param="model") from None
    apply_retrieval_prompts(model[0].processor)
    return LateInteractionEncoder(ref.name, model.eval(), device, directory, weights)


def apply_retrieval_prompts(processor) -> None:
    """sentence-transformers hands a ``*ForRetrieval`` processor pages as ``processor(images=...)`` and queries as
    ``processor(text=...)``. ColQwen2's and ColPali's then add what the model was trained with (the visual
    prompt around a page's image tokens; the query prefix and ten augmentation tokens after a query).
    ColModernVBert's does that only in ``process_images`` / ``process_queries``: called plainly it returns a page
    without token ids, which the model cannot read, and a bare query. Give such a processor the others'
    behaviour, from its own prompts."""
    prefix = getattr(processor, "visual_prompt_prefix", None)
    if prefix is None or getattr(type(processor), "applies_retrieval_prompts", False):
        return
    from PIL import Image

    if "input_ids" in processor(images=[Image.new("RGB", (32, 32))], return_tensors="pt"):
        return

    class WithRetrievalPrompts(type(processor)):
        applies_retrieval_prompts = True

        def __call__(self, images=None, text=None, **kwargs):
            if images is not None and text is None:
                text = [self.visual_prompt_prefix] * len(images)
            elif text is not None and images is None:
                augmentation = self.query_augmentation_token * 10  # as process_queries
                text = [f"{self.query_prefix}{query}{augmentation}" for query in ([text] if isinstance(text, str)
                                                                                  else text)]
            return super().__call__(images=images, text=text, **kwargs)

    WithRetrievalPrompts.__name__ = WithRetrievalPrompts.__qualname__ = type(processor).__name__
    processor.__class__ = WithRetrievalPrompts
