"""The torch encoder, and get_encoder: one loaded encoder per model, device and precision, on torch or (for
ONNX exports, and always in the lean build) on ONNX Runtime. Presets and model files: crossmodal/encoders/catalog.py.

A model always travels with its own processor (tokenizer + image preprocessing),
loaded from the same directory, so embeddings are computed the way the model was trained.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from crossmodal.encoders.acceleration import load_towers, pooled
# Callers have always found these here; they live in crossmodal/encoders/catalog.py.
from crossmodal.encoders.catalog import (DEMO_MODEL_DIR, PRECISION_AGREEMENT, PRECISION_FALLBACK, PRECISIONS,  # noqa: F401
                                         PRESETS, SUPPORTED_TYPES, HubOptions, engine, hub_scope,
                                         is_late_interaction_model,
                                         is_vlm_model,
                                         model_identity, precision_check_batch, refuse_on_lean_build,
                                         resolve_model_dir, weights_fingerprint)
from crossmodal.encoders.model_ref import ModelRef
from crossmodal.encoders.interface import DualEncoderBase
from crossmodal.errors import CrossmodalError
from crossmodal.runtime import os_lock, unwrap
from crossmodal.encoders.vectors import TextEncoding, l2_normalize  # noqa: F401 - part of this module's API

logger = logging.getLogger(__name__)

def pick_device(device: str | None) -> str:
    device = (device or "auto").lower()
    if device not in ("auto", "cpu", "cuda"):
        raise CrossmodalError(f"'{device}' is not one of auto, cpu, cuda", param="device")
    if engine() == "onnx":
        return "cpu"  # the lean build runs ONNX Runtime on the CPU; get_encoder notes a CUDA request
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        return "cpu"  # get_encoder notes the fallback; a missing GPU never fails a node
    return device


class Encoder(DualEncoderBase):
    """A dual encoder (CLIP, Chinese-CLIP, SigLIP) on torch with its processor; outputs L2-normalised float32."""

    def __init__(self, identity: str, model, processor, device: str, model_dir: Path | None = None,
                 weights: str | None = None):
        import torch

        self.identity = identity
        self.model_dir = model_dir  # where its files are (a calibration fit may sit beside them)
        self.weights = weights  # weights_fingerprint of model_dir; collections record it
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device
        self.model_type = model.config.model_type
        self.dim = int(getattr(model.config, "projection_dim", 0) or self._probe_dim())
        self.context_length = int(model.config.text_config.max_position_embeddings)
        if self.model_type.startswith("siglip"):
            self.context_length = min(self.context_length, 64)
        self.image_size = int(model.config.vision_config.image_size)
        self.patch_size = int(model.config.vision_config.patch_size)
        self.logit_scale = float(model.logit_scale.detach().exp())
        bias = getattr(model, "logit_bias", None)
        self.logit_bias = float(bias.detach()) if bias is not None else None
        self._torch = torch
        # Images per forward pass: a GPU wants large batches; on a CPU 32 already fills the matrix units
        # and keeps memory small.
        self.batch_size = 128 if device == "cuda" else 32
        self.precision = "fp32"  # see use_precision
        self.precision_note: str | None = None
        self.precision_agreement: float | None = None
        self._onnx = None  # OnnxTowers when precision is onnx or int8
        from crossmodal.encoders.preprocess import FastPreprocessor

        # The processor's recipe run faster (crossmodal/encoders/preprocess.py); None when it does something that
        # FastPreprocessor does not reproduce. Made here, once: functools.cached_property would guard it with
        # an RLock that gevent's patching turns into a greenlet lock, which hangs when worker threads contend.
        self.fast_preprocessor = FastPreprocessor.from_processor(processor)
        self.image_config = image_processor_config(processor)
        self.start_query_batching()
        self._lock = os_lock()  # torch modules are not re-entrant across threads for one model

    def _probe_dim(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    # -- public API -------------------------------------------------------
    def stack(self, pixels: list):
        return self._torch.stack(pixels)

    def preprocess(self, images: Sequence):
        """PIL images -> normalised pixel tensor (N x 3 x S x S): the processor's recipe run by
        FastPreprocessor when it reproduces it (the same pixels, tests/test_preprocess.py; 11.4 against
        13.2 ms per 1024x768 image here, the resize being most of both), else the model's own processor."""
        fast = self.fast_preprocessor
        if fast is None:
            return self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        return fast.normalise([fast.to_uint8(im if im.mode == "RGB" else im.convert("RGB")) for im in images])

    def normalise(self, arrays: list[np.ndarray]):
        """Resized uint8 arrays (FastPreprocessor.to_uint8, in worker threads) -> the towers' input."""
        return self.fast_preprocessor.normalise(arrays)

    def text_batch_features(self, texts: list[str]):
        return self.text_features(self.tokenize(texts))

    # -- building blocks (also used by training and alignment) --------------
    def tokenize(self, texts: list[str]):
        padding = "max_length" if self.model_type.startswith("siglip") else True
        return self.processor.tokenizer(
            texts, padding=padding, truncation=True, max_length=self.context_length, return_tensors="pt"
        )

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        ids = self.processor.tokenizer(list(texts), truncation=False)["input_ids"]
        return [len(x) for x in ids]

    def image_features(self, pixel_values):
        if self._onnx is not None:
            return self._onnx.image_features(pixel_values)
        with self._lock, self._torch.inference_mode(), self._autocast():
            out = self.model.get_image_features(pixel_values=pixel_values.to(self.device))
        return pooled(out)

    def text_features(self, tokens):
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        if self.model_type.startswith("siglip"):
            tokens.pop("attention_mask", None)  # SigLIP was trained without a text mask
        if self._onnx is not None:
            return self._onnx.text_features(tokens)
        with self._lock, self._torch.inference_mode(), self._autocast():
            out = self.model.get_text_features(**tokens)
        return pooled(out)

    # -- precision -------------------------------------------------------------
    def _autocast(self):
        if self.precision not in ("bf16", "fp16"):
            return contextlib.nullcontext()
        dtype = self._torch.bfloat16 if self.precision == "bf16" else self._torch.float16
        return self._torch.autocast(self.device, dtype=dtype)

    def use_precision(self, wanted: str) -> str:
        """Run in ``wanted`` precision when it is available here and its embeddings agree with fp32 (mean
        cosine >= PRECISION_AGREEMENT on a calibration batch of generated scenes and captions, bundled); otherwise try
        the next one (PRECISION_FALLBACK) and say why in ``precision_note``. Never raises for a precision
        the machine cannot run."""
        wanted = (wanted or "fp32").lower()
        if wanted not in PRECISIONS:
            raise CrossmodalError(f"'{wanted}' is not one of {', '.join(PRECISIONS)}", param="precision")
        self._set_runtime("fp32")
        self.precision_note, self.precision_agreement = None, None
        if wanted == "fp32":
            return self.precision
        images, texts = precision_check_batch()
        reference = np.vstack([self.encode_images(images), self.encode_texts(texts).vectors])
        notes = []
        candidate = wanted
        while candidate != "fp32":
            problem = self._set_runtime(candidate, notes)
            if problem is None:
                trial = np.vstack([self.encode_images(images), self.encode_texts(texts).vectors])
                agreement = float(np.mean(np.sum(reference * trial, axis=1)))
                if agreement >= PRECISION_AGREEMENT:
                    self.precision_agreement = round(agreement, 5)
                    break
                problem = f"its embeddings agree with fp32 at mean cosine {agreement:.4f} (< {PRECISION_AGREEMENT})"
            notes.append(f"{candidate}: {problem}")
            self._set_runtime("fp32")
            candidate = PRECISION_FALLBACK[candidate]
        if candidate != wanted:
            notes.append(f"running {self.precision}")
        self.precision_note = "; ".join(notes) or None
        return self.precision

    def _set_runtime(self, precision: str, notes: list | None = None) -> str | None:
        """Switch to ``precision``; returns why it cannot run here, or None."""
        self._onnx = None
        self.precision = "fp32"
        if precision == "bf16" and self.device == "cpu" and not cpu_has_bf16():
            return "this CPU has no bf16 support"
        if precision in ("onnx", "int8"):
            if self.device != "cpu":
                return "ONNX Runtime runs on the CPU here; the GPU uses fp16 autocast (bf16) instead"
            try:

                self._onnx, rebuilt = load_towers(self, precision)
            except Exception as exc:  # noqa: BLE001 - an export failure falls back, it never fails the node
                first_line = str(exc).splitlines()[0][:200] if str(exc) else ""
                return f"the ONNX export failed ({type(exc).__name__}: {first_line})"
            if rebuilt and notes is not None:
                notes.append(rebuilt)
        self.precision = "fp16" if precision == "bf16" and self.device == "cuda" else precision
        return None

    def _finish(self, chunks, normalize: bool) -> np.ndarray:
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._torch.cat(chunks).float().cpu().numpy()
        return l2_normalize(vectors) if normalize else vectors


def image_processor_config(processor) -> dict:
    """The image processor's settings as the saved config has them (preprocessor_config.json)."""
    from crossmodal.encoders.preprocess import CONFIG_KEYS

    ip = getattr(processor, "image_processor", processor)
    return {key: getattr(ip, key, None) for key in CONFIG_KEYS}


def cpu_has_bf16() -> bool:
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_ENCODERS: dict[tuple, Encoder] = {}
# Seconds the last load of each model took, read by the metrics scrape. A plain dict, not a prometheus
# gauge set here: this runs in a worker thread, and the scrape runs on the loop.
LOAD_SECONDS: dict[str, float] = {}
# Guards the two dicts only; never held across a load, so that a loaded model is found at once while
# another one loads (a cheap External Knowledge lookup used to wait here behind a warm-up's loads).
_ENCODERS_LOCK = os_lock()
_LOADING: dict[tuple, "_Load"] = {}


class _Load:
    """One model load in progress: the first caller loads, later callers for the same model wait for it."""

    def __init__(self):
        self.finished = os_lock()
        self.finished.acquire()
        self.outcome: tuple[bool, object] | None = None

    def end(self, ok: bool, value) -> None:
        self.outcome = (ok, value)
        self.finished.release()

    def wait(self, identity: str):
        """The load's outcome, waited for within the current call's time left (crossmodal/lanes.py)."""
        from crossmodal.lanes import DeadlineExceeded, time_left

        seconds = time_left()
        if not self.finished.acquire(True, -1 if seconds is None else seconds):
            raise DeadlineExceeded(f"waiting for {identity} to load", seconds, "model_load")
        self.finished.release()
        return unwrap(self.outcome)


def loading(name: str | None, device: str | None, precision: str, hub: HubOptions | None) -> bool:
    """Whether the model is loading now (not merely waiting for a thread of the load lane)."""
    return _encoder_key(name, device, precision, hub) in _LOADING


def _encoder_key(name: str | None, device: str | None, precision: str, hub: HubOptions | None) -> tuple:
    asked_device = (device or "auto").lower()
    picked = pick_device(device)
    no_gpu = asked_device == "cuda" and picked == "cpu"
    identity = model_identity(name)
    # the fallback's note stays with those who asked for CUDA; a hub model's weights with its endpoint and token
    return identity, picked, precision, no_gpu, hub_scope(identity.partition("?")[0], hub)


def loaded_encoder(name: str | None = None, device: str | None = None, precision: str = "fp32",
                   hub: HubOptions | None = None) -> Encoder | None:
    """The encoder if it is loaded already, else None: never loads, never waits for a load."""
    return _ENCODERS.get(_encoder_key(name, device, precision, hub))


def get_encoder(name: str | None = None, device: str | None = None, hub: HubOptions | None = None,
                precision: str = "fp32") -> Encoder:
    """One loaded encoder per (model, device, precision) per process, loaded on first use; loads of different
    models run side by side, and a second caller of a model that is loading waits for that load."""
    key = _encoder_key(name, device, precision, hub)
    with _ENCODERS_LOCK:
        if key in _ENCODERS:
            return _ENCODERS[key]
        load = _LOADING.get(key)
        mine = load is None
        if mine:
            load = _LOADING[key] = _Load()
    if not mine:
        return load.wait(key[0])
    try:
        encoder = _load_encoder(key, hub)
    except BaseException as exc:
        with _ENCODERS_LOCK:
            del _LOADING[key]
        load.end(False, exc)
        raise
    with _ENCODERS_LOCK:
        _ENCODERS[key] = encoder
        del _LOADING[key]
    load.end(True, encoder)
    return encoder


def _load_encoder(key: tuple, hub: HubOptions | None) -> Encoder:
    identity, device, precision, no_gpu, _ = key
    started = time.perf_counter()
    refuse_on_lean_build(identity)
    ref = ModelRef.parse(identity)
    if uses_onnx_export(ref.name):
        from crossmodal.encoders.onnx_encoder import load_onnx_encoder

        no_options(ref)
        encoder = load_onnx_encoder(identity, hub, precision)
    else:
        encoder = load_any_encoder(ref, device, hub)
        encoder.use_precision(precision)
    LOAD_SECONDS[identity] = time.perf_counter() - started
    logger.info("loaded model %s in %.1f s", identity, LOAD_SECONDS[identity])
    if no_gpu:
        note = ("CUDA was asked for but no GPU is visible: running on the CPU" if engine() == "torch" else
                "CUDA was asked for, but this lean build runs ONNX Runtime on the CPU; install the full "
                "package for a GPU")
        encoder.precision_note = "; ".join(filter(None, [note, encoder.precision_note]))
    return encoder


def uses_onnx_export(identity: str) -> bool:
    """The lean build loads every model as an ONNX export; the full package does so for a directory that
    holds one (python -m crossmodal export), and loads the rest with torch."""
    if engine() == "onnx":
        return True
    from crossmodal.encoders.onnx_encoder import is_onnx_export

    path = Path(PRESETS.get(identity, identity)).expanduser()
    return path.is_dir() and is_onnx_export(path)


def load_any_encoder(ref: ModelRef, device: str, hub: HubOptions | None):
    """The family the model's files name: a late-interaction ``*ForRetrieval`` model
    (crossmodal/encoders/late_encoder.py), a VLM embedder saved by sentence-transformers
    (crossmodal/encoders/vlm_encoder.py), else a dual encoder."""
    directory = resolve_model_dir(ref.name, hub)
    if is_late_interaction_model(directory):
        from crossmodal.encoders.late_encoder import load_late_encoder

        return load_late_encoder(ref, directory, device, weights_fingerprint(directory))
    if is_vlm_model(directory):
        from crossmodal.encoders.vlm_encoder import load_vlm_encoder

        return load_vlm_encoder(ref, directory, device, weights_fingerprint(directory))
    no_options(ref)
    return load_encoder(ref.name, device, hub, directory)


def no_options(ref: ModelRef) -> None:
    if ref.options:
        raise CrossmodalError(f"'{ref.name}' is a dual encoder, which takes no options "
                              f"({', '.join(ref.options.as_dict())}); they shape VLM embedding models such as "
                              "qwen3-vl-embedding-2b: leave them empty", param="model")


def load_encoder(identity: str, device: str = "cpu", hub: HubOptions | None = None,
                 directory: Path | None = None) -> Encoder:
    from transformers import AutoConfig, AutoModel, AutoProcessor

    logger.info("loading model %s (a hub model downloads its weights on first use; this can take minutes)",
                identity)
    directory = directory or resolve_model_dir(identity, hub)
    try:
        config = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError) as exc:
        raise CrossmodalError(f"cannot read the model config in {directory}: {exc}", param="model") from None
    if config.model_type not in SUPPORTED_TYPES:
        raise CrossmodalError(
            f"'{identity}' is a {config.model_type} model; supported dual encoders are {', '.join(SUPPORTED_TYPES)}",
            param="model",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("transformers").setLevel(logging.ERROR)
        model = AutoModel.from_pretrained(directory, dtype="float32")
        processor = AutoProcessor.from_pretrained(directory)
    logger.info("loaded %s (%s) on %s", identity, config.model_type, device)
    return Encoder(identity, model, processor, device, model_dir=directory, weights=weights_fingerprint(directory))

