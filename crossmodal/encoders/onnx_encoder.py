"""A dual encoder on ONNX Runtime alone: no torch, no transformers (the lean build's, docs/lean-runtime.md).

It loads the hub's ``onnx/`` layout: the published exports (Xenova/clip-vit-base-patch32 and the like, read
from their config.json) and what crossmodal/encoders/onnx_export.py writes (the same layout plus a manifest of
checksums). It answers with the encoder interface the service uses (crossmodal/encoders/interface.py):
L2-normalised float32 vectors, the same preprocessing (FastPreprocessor from the saved processor config) and
tokenisation (``tokenizers`` from ``tokenizer.json``, truncated to the model's context) as the torch Encoder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from crossmodal.encoders.acceleration import file_sha256
from crossmodal.encoders.int8 import fits_u8s8, session_options
from crossmodal.encoders.interface import DualEncoderBase
from crossmodal.encoders.preprocess import FastPreprocessor
from crossmodal.encoders.vectors import l2_normalize
from crossmodal.errors import CrossmodalError

MANIFEST = "crossmodal_onnx.json"
# The image and text embeddings among a tower's outputs, by the names the hub's exports use (optimum and
# transformers.js: CLIP's *_embeds, SigLIP's pooler_output; ours: embedding); else the first output.
EMBEDDING_OUTPUTS = ("embedding", "image_embeds", "text_embeds", "pooler_output")
# A published export carries no logit scale (it is not in config.json): CLIP and Chinese-CLIP train it up to
# the clamp at ln(100), where their released checkpoints sit.
TRAINED_CLIP_SCALE = 100.0


class OnnxEncoder(DualEncoderBase):
    """A dual encoder on ONNX Runtime: our export (with its manifest) or a published one (the same layout)."""

    def __init__(self, directory: str | Path, identity: str | None = None, quantized: bool | None = None,
                 threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_dir = Path(directory)
        m = self.manifest = export_description(self.model_dir, quantized)
        self.identity = identity or m["model"]
        self.weights, self.model_type = m["weights"], m["model_type"]
        self.dim, self.context_length, self.image_size = int(m["dimension"]), int(m["context_length"]), int(m["image_size"])
        self.patch_size = int(m["patch_size"])
        self.logit_scale, self.logit_bias = float(m["logit_scale"]), m.get("logit_bias")
        self.precision = "int8" if m["quantized"] else "onnx"
        self.precision_agreement: float | None = None
        self.device = "cpu"
        self.batch_size = 32
        suffix = "_quantized" if m["quantized"] else ""
        # Full 8-bit int8 weights (a published export) run ONNX Runtime's precise kernels on a CPU without VNNI.
        options = session_options(threads or os.cpu_count() or 1, fits_u8s8(m))
        providers = ["CPUExecutionProvider"]
        self.vision = ort.InferenceSession(str(self.model_dir / "onnx" / f"vision_model{suffix}.onnx"), options,
                                           providers=providers)
        self.text = ort.InferenceSession(str(self.model_dir / "onnx" / f"text_model{suffix}.onnx"), options,
                                         providers=providers)
        self._vision_output, self._text_output = _embedding_output(self.vision), _embedding_output(self.text)
        self._text_inputs = {i.name for i in self.text.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.context_length)
        pad_id = self.tokenizer.padding["pad_id"] if self.tokenizer.padding else 0
        length = self.context_length if m["padding"] == "max_length" else None
        self.tokenizer.enable_padding(pad_id=pad_id, length=length)
        # The same tokenizer without truncation or padding: how many tokens a text needs (token_counts).
        self.counter = Tokenizer.from_str(self.tokenizer.to_str())
        self.counter.no_truncation()
        self.counter.no_padding()
        config = json.loads((self.model_dir / "preprocessor_config.json").read_text())
        self.image_config = config.get("image_processor", config)
        fast = FastPreprocessor.from_config(self.image_config)
        if fast is None:
            raise CrossmodalError(f"{self.model_dir}: its image preprocessing is not one the lean runtime "
                                  "reproduces; use the full package", param="model")
        self.fast_preprocessor = fast
        self.start_query_batching()

    # -- the encoder interface (crossmodal/encoders/interface.py) ----------------------------------
    def preprocess(self, images: Sequence) -> np.ndarray:
        return self.normalise([self.fast_preprocessor.to_uint8(im if im.mode == "RGB" else im.convert("RGB"))
                               for im in images])

    def normalise(self, arrays: list[np.ndarray]) -> np.ndarray:
        return self.fast_preprocessor.normalise_numpy(arrays)

    def stack(self, pixels: list) -> np.ndarray:
        return np.stack(pixels)

    def image_features(self, pixels) -> np.ndarray:
        return self.vision.run([self._vision_output], {"pixel_values": np.asarray(pixels, dtype=np.float32)})[0]

    def text_batch_features(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        feed = {"input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64)}
        if "attention_mask" in self._text_inputs:
            feed["attention_mask"] = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        return self.text.run([self._text_output], feed)[0]

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text needs, before truncation (special tokens included)."""
        return [len(e.ids) for e in self.counter.encode_batch(list(texts))]

    def _finish(self, chunks, normalize: bool) -> np.ndarray:
        vectors = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, self.dim), np.float32)
        return l2_normalize(vectors) if normalize else vectors


def _embedding_output(session) -> str:
    names = [o.name for o in session.get_outputs()]
    return next((n for n in EMBEDDING_OUTPUTS if n in names), names[0])


def is_onnx_export(directory: Path) -> bool:
    """A directory in the hub's ONNX layout (ours or a published one), holding no torch weights."""
    directory = Path(directory)
    return (directory / "onnx").is_dir() and not any(directory.glob("*.safetensors")) \
        and not any(directory.glob("pytorch_model*.bin"))


def export_description(directory: Path, quantized: bool | None = None) -> dict:
    """What the runtime needs to know about an export: our manifest (checked against its checksums), or, for a
    published export, the same read from its config.json. ``quantized``: the int8 towers (None: whichever
    the export has, fp32 first)."""
    if (directory / MANIFEST).is_file():
        manifest = read_manifest(directory)
        config = json.loads((directory / "config.json").read_text())
        manifest.setdefault("patch_size", config["vision_config"]["patch_size"])
        if quantized is not None and bool(manifest.get("quantized")) != quantized:
            manifest["note"] = (f"this export has only {'int8' if manifest.get('quantized') else 'fp32'} towers; "
                                f"export with{'' if quantized else 'out'} --int8 for the other")
        manifest["quantized"] = bool(manifest.get("quantized"))
        return manifest
    return published_description(directory, quantized)


# What transformers' config classes default to when a saved config.json leaves a value out (published configs
# often hold only what differs: Xenova/siglip-base-patch16-224's vision_config is just its patch size).
# tests/test_onnx_encoder.py keeps these equal to the classes themselves.
CONFIG_DEFAULTS = {
    "clip": {"projection_dim": 512, "text": {"hidden_size": 512, "max_position_embeddings": 77},
             "vision": {"image_size": 224, "patch_size": 32}},
    "chinese_clip": {"projection_dim": 512, "text": {"hidden_size": 768, "max_position_embeddings": 512},
                     "vision": {"image_size": 224, "patch_size": 32}},
    "siglip": {"projection_dim": None, "text": {"hidden_size": 768, "max_position_embeddings": 64},
               "vision": {"image_size": 224, "patch_size": 16}},
}
CONFIG_DEFAULTS["siglip2"] = CONFIG_DEFAULTS["siglip"]


def published_description(directory: Path, quantized: bool | None) -> dict:
    try:
        config = json.loads((directory / "config.json").read_text())
        model_type = config["model_type"]
        defaults = CONFIG_DEFAULTS[model_type]
    except (OSError, ValueError, KeyError, TypeError):
        raise CrossmodalError(f"{directory} holds no readable config.json of a dual encoder "
                              f"({', '.join(CONFIG_DEFAULTS)})", param="model") from None
    text = {**defaults["text"], **(config.get("text_config") or {})}
    vision = {**defaults["vision"], **(config.get("vision_config") or {})}
    siglip = model_type.startswith("siglip")
    have = {q for q in (False, True) if _tower_files(directory, q)}
    if not have:
        raise CrossmodalError(f"{directory}/onnx holds no vision_model.onnx and text_model.onnx (nor their "
                              "_quantized forms)", param="model")
    use = quantized if quantized in have else min(have)
    description = {
        "model": str(directory), "model_type": model_type, "quantized": use,
        "dimension": config.get("projection_dim") or defaults["projection_dim"] or text["hidden_size"],
        "context_length": min(text["max_position_embeddings"], 64) if siglip else text["max_position_embeddings"],
        "image_size": vision["image_size"], "patch_size": vision["patch_size"],
        "padding": "max_length" if siglip else "longest",
        # SigLIP's bias is not in its config either: with none, calibration uses the CLIP-style default.
        "logit_scale": TRAINED_CLIP_SCALE, "logit_bias": None,
        "weights": _published_fingerprint(directory, use),
    }
    if quantized is not None and use != quantized:
        description["note"] = f"this export has no {'int8' if quantized else 'fp32'} towers"
    return description


def _tower_files(directory: Path, quantized: bool) -> list[Path]:
    suffix = "_quantized" if quantized else ""
    files = [directory / "onnx" / f"{tower}_model{suffix}.onnx" for tower in ("vision", "text")]
    return files if all(f.is_file() for f in files) else []


def _published_fingerprint(directory: Path, quantized: bool) -> str:
    """What decides the vectors: the two towers, the tokenizer, the configs (as weights_fingerprint does for a
    torch model, by content)."""
    from crossmodal.encoders.catalog import files_fingerprint

    return files_fingerprint(_tower_files(directory, quantized) + [
        directory / name for name in ("config.json", "tokenizer.json", "preprocessor_config.json")])


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


def load_onnx_encoder(identity: str, hub=None, precision: str = "fp32") -> OnnxEncoder:
    """The encoder for ``identity`` from an ONNX export: a preset (the lean build's ONNX_PRESETS), a local
    directory or a hub id in the published layout. int8 takes the ``_quantized`` towers when the export has
    them and they agree with its fp32 towers (as the torch precisions are checked); every precision that
    cannot run here falls back with a note."""
    from crossmodal.encoders.catalog import PRECISIONS

    precision = (precision or "fp32").lower()
    if precision not in PRECISIONS:
        raise CrossmodalError(f"'{precision}' is not one of {', '.join(PRECISIONS)}", param="precision")
    notes = []
    if precision == "bf16":
        notes.append("bf16: a torch autocast, and this model runs as an ONNX export; running fp32 (onnx)")
    want_int8 = precision == "int8"
    directory = onnx_export_dir(identity, hub, want_int8)
    encoder = OnnxEncoder(directory, identity=identity, quantized=want_int8)
    if encoder.manifest.get("note"):
        notes.append(f"{precision}: {encoder.manifest['note']}")
    if encoder.precision == "int8" and want_int8 and _tower_files(directory, False):
        encoder, note = _checked_int8(encoder, directory, identity)
        notes += [note] if note else []
    encoder.precision_note = "; ".join(notes) or None
    return encoder


def _checked_int8(int8: OnnxEncoder, directory: Path, identity: str) -> tuple[OnnxEncoder, str | None]:
    from crossmodal.encoders.catalog import PRECISION_AGREEMENT, precision_check_batch

    fp32 = OnnxEncoder(directory, identity=identity, quantized=False)
    images, texts = precision_check_batch()
    reference = np.vstack([fp32.encode_images(images), fp32.encode_texts(texts).vectors])
    trial = np.vstack([int8.encode_images(images), int8.encode_texts(texts).vectors])
    agreement = float(np.mean(np.sum(reference * trial, axis=1)))
    if agreement >= PRECISION_AGREEMENT:
        int8.precision_agreement = round(agreement, 5)
        return int8, None
    return fp32, (f"int8: its embeddings agree with fp32 at mean cosine {agreement:.4f} (< {PRECISION_AGREEMENT}); "
                  "running fp32 (onnx)")


def onnx_export_dir(identity: str, hub=None, want_int8: bool = False) -> Path:
    """A local directory holding the export for ``identity``, downloaded from the hub when it is an id."""
    from crossmodal.encoders.catalog import (DEMO_ONNX_DIR, ONNX_PRESETS, PRESETS, HubOptions, _download, engine,
                                             looks_like_hub_id)

    presets = ONNX_PRESETS if engine() == "onnx" else PRESETS  # the full package: a directory named by a preset
    ref = presets.get(identity, identity)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not is_onnx_export(path):
            raise CrossmodalError(f"{path} holds torch weights, not an ONNX export; this lean build runs ONNX "
                                  f"exports: write one with `python -m crossmodal export {identity} --out DIR` "
                                  "where the full package is installed, or install the full package",
                                  param="model")
        return path
    if identity == "demo-shapes":
        raise CrossmodalError(f"the demo model's ONNX export is missing from {DEMO_ONNX_DIR}; reinstall the "
                              "package", param="model")
    if not looks_like_hub_id(ref):
        raise CrossmodalError(f"'{identity}' is neither a preset ({', '.join(ONNX_PRESETS)}), a Hugging Face id of "
                              "an ONNX export (owner/name, with onnx/vision_model.onnx and onnx/text_model.onnx) "
                              "nor an existing directory", param="model")
    hub = hub or HubOptions.from_env()
    for quantized in ((True, False) if want_int8 else (False, True)):
        suffix = "_quantized" if quantized else ""
        files = ["*.json", "*.txt", f"onnx/vision_model{suffix}.onnx", f"onnx/text_model{suffix}.onnx"]
        directory = _download(ref, hub, patterns=files)
        if _tower_files(directory, quantized):
            return directory
    raise CrossmodalError(f"'{ref}' on the hub has no onnx/vision_model.onnx and onnx/text_model.onnx; give an "
                          "ONNX export (such as the Xenova/ ones) or a directory written by python -m crossmodal "
                          "export", param="model")
