"""A dual encoder on ONNX Runtime alone: no torch, no transformers (the lean runtime of issue 30).

It loads the layout crossmodal/encoders/onnx_export.py writes (the hub's ``onnx/`` layout plus a manifest of
checksums) and answers with the encoder interface the service uses: L2-normalised float32 vectors, the same
preprocessing (FastPreprocessor from the saved processor config) and tokenisation (``tokenizers`` from
``tokenizer.json``, truncated to the model's context) as the torch Encoder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from crossmodal.encoders.acceleration import file_sha256
from crossmodal.encoders.preprocess import FastPreprocessor
from crossmodal.encoders.vectors import TextEncoding, l2_normalize
from crossmodal.errors import CrossmodalError

MANIFEST = "crossmodal_onnx.json"


class OnnxEncoder:
    precision_note = None
    fast_preprocessor: FastPreprocessor

    def __init__(self, directory: str | Path, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_dir = Path(directory)
        self.manifest = read_manifest(self.model_dir)
        m = self.manifest
        self.identity, self.weights, self.model_type = m["model"], m.get("weights"), m["model_type"]
        self.dim, self.context_length, self.image_size = int(m["dimension"]), int(m["context_length"]), int(m["image_size"])
        self.precision = "int8" if m.get("quantized") else "onnx"
        self.batch_size = 32
        suffix = "_quantized" if m.get("quantized") else ""
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        providers = ["CPUExecutionProvider"]
        self.vision = ort.InferenceSession(str(self.model_dir / "onnx" / f"vision_model{suffix}.onnx"), options,
                                           providers=providers)
        self.text = ort.InferenceSession(str(self.model_dir / "onnx" / f"text_model{suffix}.onnx"), options,
                                         providers=providers)
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.context_length)
        pad_id = self.tokenizer.padding["pad_id"] if self.tokenizer.padding else 0
        length = self.context_length if m.get("padding") == "max_length" else None
        self.tokenizer.enable_padding(pad_id=pad_id, length=length)
        # The same tokenizer without truncation or padding: how many tokens a text needs (token_counts).
        self.counter = Tokenizer.from_str(self.tokenizer.to_str())
        self.counter.no_truncation()
        self.counter.no_padding()
        config = json.loads((self.model_dir / "preprocessor_config.json").read_text())
        fast = FastPreprocessor.from_config(config.get("image_processor", config))
        if fast is None:
            raise CrossmodalError(f"{self.model_dir}: its image preprocessing is not one the lean runtime "
                                  "reproduces; use the full package", param="model")
        self.fast_preprocessor = fast

    # -- the encoder interface -------------------------------------------------------------------
    def preprocess(self, images: Sequence) -> np.ndarray:
        fast = self.fast_preprocessor
        return fast.normalise_numpy([fast.to_uint8(im if im.mode == "RGB" else im.convert("RGB")) for im in images])

    def embed_pixels(self, pixels, *, batch_size: int | None = None, normalize=True) -> np.ndarray:
        pixels = np.asarray(pixels, dtype=np.float32)
        step = batch_size or 2 * self.batch_size
        chunks = [self.vision.run(None, {"pixel_values": pixels[s:s + step]})[0] for s in range(0, len(pixels), step)]
        return self._finish(chunks, normalize)

    def encode_images(self, images: Sequence, *, batch_size: int | None = None, normalize=True, **_) -> np.ndarray:
        step = batch_size or self.batch_size
        chunks = [self.embed_pixels(self.preprocess(list(images[s:s + step])), normalize=False)
                  for s in range(0, len(images), step)]
        return self._finish(chunks, normalize)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int | None = None, normalize=True) -> TextEncoding:
        step = batch_size or 2 * self.batch_size
        truncated = [i for i, n in enumerate(self.token_counts(texts)) if n > self.context_length]
        chunks = []
        for s in range(0, len(texts), step):
            encodings = self.tokenizer.encode_batch(list(texts[s:s + step]))
            feed = {"input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64)}
            if self.manifest.get("text_mask"):
                feed["attention_mask"] = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
            chunks.append(self.text.run(None, feed)[0])
        return TextEncoding(self._finish(chunks, normalize), truncated)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text needs, before truncation (special tokens included)."""
        return [len(e.ids) for e in self.counter.encode_batch(list(texts))]

    def query_text_vector(self, text: str) -> tuple[np.ndarray, bool]:
        encoded = self.encode_texts([text])
        return encoded.vectors[0], bool(encoded.truncated)

    def query_image_vector(self, image) -> np.ndarray:
        return self.encode_images([image])[0]

    @staticmethod
    def _finish(chunks, normalize: bool) -> np.ndarray:
        vectors = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, 0), np.float32)
        return l2_normalize(vectors) if normalize else vectors


def read_manifest(directory: Path) -> dict:
    """The export's manifest, after checking every file it lists against its sha256."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        sums = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CrossmodalError(f"{directory} holds no readable {MANIFEST}: export it with python -m crossmodal "
                              "export", param="model") from None
    for name, expected in sums.items():
        path = directory / name
        if not path.is_file():
            raise CrossmodalError(f"{directory}: {name} is missing; export the model again", param="model")
        if file_sha256(path) != expected:
            raise CrossmodalError(f"{directory}: {name} does not match its recorded sha256 (a corrupt or "
                                  "edited file); export the model again", param="model")
    return manifest
