"""A Vision embedding model configured in the Dify workspace (any provider: the Crossmodal model package,
Jina, Tongyi, ...), used through the encoder interface: ``model`` = ``dify:<provider>/<model>``.

Tool nodes reach it by the SDK's reverse invocation (crossmodal/dify/workspace.py hands a ``WorkspaceModels``
to the service); outside a tool node there is no workspace to call, and naming such a model is a clear error.

What travels: texts as they are; images re-encoded from the decoded picture, at most ``MAX_IMAGE_SIDE`` px
(a Vision model reads 224-448 px; a phone photo as it is would pass the daemon's line limit on its own), PNG up
to ``PNG_UP_TO`` px a side (lossless, so small images give the vectors a local copy of the model gives) and
JPEG above. Each invocation is one stdout line of the plugin, which the daemon kills past 5 MiB: documents go
in batches of at most ``MAX_BATCH_BYTES`` of base64 and ``MAX_BATCH_DOCUMENTS`` items.
"""

from __future__ import annotations

import base64
import io
from typing import Protocol, Sequence

import numpy as np

from crossmodal.encoders.vectors import TextEncoding, l2_normalize
from crossmodal.errors import CrossmodalError
from crossmodal.runtime import os_lock

PREFIX = "dify:"
MAX_IMAGE_SIDE = 1024
PNG_UP_TO = 512
JPEG_QUALITY = 95
MAX_BATCH_BYTES = 3 * 1024 * 1024
MAX_BATCH_DOCUMENTS = 32
# Region points cut large images into tiles sized for this input (what most Vision models read).
ASSUMED_INPUT_SIDE = 224
FORMAT_HELP = ("write dify:<provider>/<model>, e.g. dify:langgenius/jina/jina/jina-clip-v2 or "
               "dify:jina/jina-clip-v2 (a model name with '/' needs the provider's full id, org/plugin/provider)")

_DIMENSIONS: dict[str, int] = {}  # a workspace model's dimension, learnt from its first answer
_DIMENSIONS_LOCK = os_lock()


class WorkspaceModels(Protocol):
    """What a tool node offers: its workspace's embedding models, by provider and model name."""

    def embed(self, provider: str, model: str, documents: list[dict], input_type: str) -> list[list[float]]:
        """One vector per document ({"content", "content_type"}), in order."""


def is_workspace_model(name: str | None) -> bool:
    return bool(name) and str(name).strip().startswith(PREFIX)


def parse_workspace_model(name: str) -> tuple[str, str]:
    """(provider, model): a short provider (``jina``) or a full id (``langgenius/jina/jina``, three parts)."""
    parts = [p.strip() for p in str(name).strip()[len(PREFIX):].split("/")]
    if len(parts) < 2 or not all(parts):
        raise CrossmodalError(f"'{name}' names no workspace model; {FORMAT_HELP}", param="model")
    if len(parts) >= 4:
        return "/".join(parts[:3]), "/".join(parts[3:])
    return parts[0], "/".join(parts[1:])


def workspace_identity(name: str) -> str:
    provider, model = parse_workspace_model(name)
    return f"{PREFIX}{provider}/{model}"


class WorkspaceEncoder:
    """The encoder interface over a workspace model: L2-normalised float32 vectors, in the caller's order."""

    precision = "workspace"
    precision_note = None
    weights = None  # the provider's weights are not ours to fingerprint
    model_dir = None
    fast_preprocessor = None  # pixels never leave this process: images go as files
    context_length = None  # the provider truncates texts by its own rules
    image_size = ASSUMED_INPUT_SIDE
    batch_size = MAX_BATCH_DOCUMENTS

    def __init__(self, name: str, models: WorkspaceModels | None):
        self.identity = workspace_identity(name)
        self.provider, self.model_name = parse_workspace_model(name)
        if models is None:
            raise CrossmodalError(f"'{self.identity}' is a model of a Dify workspace: only the tool nodes inside "
                                  "Dify can call it (not endpoints or the CLI); use a local model here",
                                  param="model")
        self.models = models

    @property
    def dim(self) -> int:
        with _DIMENSIONS_LOCK:
            known = _DIMENSIONS.get(self.identity)
        return known if known is not None else int(self.encode_texts(["a photo"]).vectors.shape[1])

    # -- the encoder interface ---------------------------------------------------------------
    def encode_texts(self, texts: Sequence[str], *, input_type: str = "document", **_) -> TextEncoding:
        documents = [{"content": t, "content_type": "text"} for t in texts]
        return TextEncoding(self._embed(documents, input_type), truncated=[])

    def encode_images(self, images: Sequence, *, input_type: str = "document", **_) -> np.ndarray:
        return self._embed([{"content": image_payload(im), "content_type": "image"} for im in images], input_type)

    def query_text_vector(self, text: str) -> tuple[np.ndarray, bool]:
        return self.encode_texts([text], input_type="query").vectors[0], False

    def query_image_vector(self, image) -> np.ndarray:
        return self.encode_images([image], input_type="query")[0]

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        raise CrossmodalError(f"'{self.identity}' counts its tokens in Dify, not here", param="model")

    def preprocess(self, images):
        require_local(self, "pixels")

    embed_pixels = preprocess

    # -- the calls ---------------------------------------------------------------------------
    def _embed(self, documents: list[dict], input_type: str) -> np.ndarray:
        vectors = []
        for batch in batches(documents):
            vectors += self._call(batch, input_type)
        return self._checked(vectors, len(documents))

    def _call(self, batch: list[dict], input_type: str) -> list:
        try:
            answer = self.models.embed(self.provider, self.model_name, batch, input_type)
        except CrossmodalError:
            raise
        except Exception as exc:  # Dify's own message (no such model, quota, permission, ...) is the useful part
            raise CrossmodalError(f"the workspace model '{self.identity}' failed: {exc}", param="model") from None
        if len(answer) != len(batch):
            # Never let a vector land at another document's place (a provider that skips an image would).
            raise CrossmodalError(f"the workspace model '{self.identity}' returned {len(answer)} vectors for "
                                  f"{len(batch)} documents", param="model")
        return answer

    def _checked(self, vectors: list, expected: int) -> np.ndarray:
        try:
            array = np.asarray(vectors, dtype=np.float32).reshape(expected, -1)
        except ValueError:
            raise CrossmodalError(f"the workspace model '{self.identity}' returned vectors of different lengths",
                                  param="model") from None
        if array.shape[1] == 0 or not np.isfinite(array).all() or (np.linalg.norm(array, axis=1) == 0).any():
            raise CrossmodalError(f"the workspace model '{self.identity}' returned an empty, zero or non-finite "
                                  "vector", param="model")
        with _DIMENSIONS_LOCK:
            _DIMENSIONS.setdefault(self.identity, int(array.shape[1]))
            known = _DIMENSIONS[self.identity]
        if array.shape[1] != known:
            raise CrossmodalError(f"the workspace model '{self.identity}' now returns {array.shape[1]}-d vectors, "
                                  f"not {known}-d", param="model")
        return l2_normalize(array)  # providers do not all normalise; our space is the unit sphere


def require_local(encoder, what: str = "this node") -> None:
    """Align (heat maps, boxes, calibrated probabilities) reads a local dual encoder's pixels and logit scale."""
    if isinstance(encoder, WorkspaceEncoder):
        raise CrossmodalError(f"'{encoder.identity}' is a workspace embedding model, and {what} needs a local "
                              "dual encoder (its pixels and logit scale): pick a local model here (a preset, "
                              "hub id or directory)", param="model")


def image_payload(image) -> str:
    """The picture as base64 file data: at most MAX_IMAGE_SIDE px, PNG when small, else JPEG."""
    image = image if image.mode in ("RGB", "RGBA", "L") else image.convert("RGB")
    if max(image.size) > MAX_IMAGE_SIDE:
        image = image.copy()
        image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    buffer = io.BytesIO()
    if max(image.size) <= PNG_UP_TO:
        image.save(buffer, "PNG")
    else:
        image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def batches(documents: list[dict]):
    """Consecutive runs of documents under MAX_BATCH_BYTES of content and MAX_BATCH_DOCUMENTS items."""
    batch, size = [], 0
    for document in documents:
        length = len(document["content"].encode())
        if batch and (size + length > MAX_BATCH_BYTES or len(batch) >= MAX_BATCH_DOCUMENTS):
            yield batch
            batch, size = [], 0
        batch.append(document)
        size += length
    if batch:
        yield batch
