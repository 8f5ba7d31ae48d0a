"""What every local encoder shares, whichever engine runs its towers (torch: crossmodal/encoders/models.py;
ONNX Runtime alone: crossmodal/encoders/onnx_encoder.py). Callers use only this interface and never learn
which engine answers.

A subclass sets identity, model_dir, weights, model_type, dim, context_length, image_size, patch_size,
batch_size, precision, precision_note, logit_scale, logit_bias, image_config and fast_preprocessor, and
implements its engine's part: preprocess, normalise, stack, token_counts, image_features (one batch of
pixels), text_batch_features (one batch of texts) and _finish (chunks -> float32 rows). The batching is here.

``input_type`` ('query' or 'document') is what a text or image is for: dual encoders embed both alike;
models with prompts (crossmodal/encoders/vlm_encoder.py, a workspace's models) embed each its own way.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from crossmodal.encoders.batching import DynamicBatcher
from crossmodal.encoders.vectors import TextEncoding


class DualEncoderBase:
    precision: str = "fp32"
    precision_note: str | None = None
    logit_bias: float | None = None  # SigLIP's learned bias; None for the CLIP family

    def start_query_batching(self) -> None:
        """Concurrent sessions' query vectors share forward passes (crossmodal/encoders/batching.py)."""
        self.text_queries = DynamicBatcher(self._text_query_batch, max_batch=2 * self.batch_size)
        self.image_queries = DynamicBatcher(self._image_query_batch, max_batch=self.batch_size)

    def encode(self, inputs: Sequence, *, batch_size: int | None = None, show_progress_bar: bool = False,
               normalize_embeddings: bool = True, input_type: str = "document") -> np.ndarray:
        """Embed a mixed list of texts (str) and PIL images, in the caller's order."""
        texts = [(i, x) for i, x in enumerate(inputs) if isinstance(x, str)]
        images = [(i, x) for i, x in enumerate(inputs) if not isinstance(x, str)]
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)
        if texts:
            enc = self.encode_texts([t for _, t in texts], batch_size=batch_size, normalize=normalize_embeddings,
                                    input_type=input_type)
            out[[i for i, _ in texts]] = enc.vectors
        if images:
            out[[i for i, _ in images]] = self.encode_images([im for _, im in images], batch_size=batch_size,
                                                             show_progress_bar=show_progress_bar,
                                                             normalize=normalize_embeddings, input_type=input_type)
        return out

    def encode_images(self, images: Sequence, *, batch_size: int | None = None, show_progress_bar: bool = False,
                      normalize=True, input_type: str = "document") -> np.ndarray:
        from tqdm.auto import tqdm

        batch_size = batch_size or self.batch_size
        starts = range(0, len(images), batch_size)
        chunks = [self.image_features(self.preprocess(list(images[s:s + batch_size])))
                  for s in tqdm(starts, disable=not show_progress_bar, desc="embedding images", unit="batch")]
        return self._finish(chunks, normalize)

    def embed_pixels(self, pixels, *, batch_size: int | None = None, normalize=True) -> np.ndarray:
        """Embed already preprocessed (possibly edited, e.g. occluded) pixels."""
        batch_size = batch_size or 2 * self.batch_size
        chunks = [self.image_features(pixels[s:s + batch_size]) for s in range(0, len(pixels), batch_size)]
        return self._finish(chunks, normalize)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int | None = None, normalize=True,
                     input_type: str = "document") -> TextEncoding:
        batch_size = batch_size or 2 * self.batch_size
        truncated = [i for i, n in enumerate(self.token_counts(texts)) if n > self.context_length]
        chunks = [self.text_batch_features(list(texts[s:s + batch_size])) for s in range(0, len(texts), batch_size)]
        return TextEncoding(self._finish(chunks, normalize), truncated)

    def query_text_vector(self, text: str) -> tuple[np.ndarray, bool]:
        """One query's unit vector, computed in a batch with concurrent queries; (vector, truncated)."""
        return self.text_queries.submit(text)

    def query_image_vector(self, image) -> np.ndarray:
        return self.image_queries.submit(self.preprocess([image])[0])

    def _text_query_batch(self, texts: Sequence[str]) -> list:
        encoded = self.encode_texts(list(texts))
        return [(vector, i in encoded.truncated) for i, vector in enumerate(encoded.vectors)]

    def _image_query_batch(self, pixels: Sequence) -> list:
        return list(self.embed_pixels(self.stack(list(pixels))))

    @property
    def image_tokens(self) -> int:
        """The vision tower's sequence length (patches and the class token): an image's share of usage."""
        return (self.image_size // self.patch_size) ** 2 + 1
