"""Model presets, loading (hub id, mirror, token, offline, local directory) and the encoder.

A model always travels with its own processor (tokenizer + image preprocessing),
loaded from the same directory, so embeddings are computed the way the model was trained.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from crossmodal.encoders.acceleration import load_towers, pooled
from crossmodal.errors import CrossmodalError, redact
from crossmodal.locations import model_cache_dir
from crossmodal.runtime import os_lock
from crossmodal.encoders.vectors import TextEncoding, l2_normalize  # noqa: F401 - part of this module's API

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # crossmodal/
DEMO_MODEL_DIR = PACKAGE_DIR / "assets" / "demo-shapes"

# Preset name -> hub id (or a directory shipped with the package).
PRESETS: dict[str, str] = {
    "clip-vit-base-patch32": "openai/clip-vit-base-patch32",
    "chinese-clip": "OFA-Sys/chinese-clip-vit-base-patch16",
    "siglip": "google/siglip-base-patch16-224",
    "demo-shapes": str(DEMO_MODEL_DIR),
}
DEFAULT_MODEL = "clip-vit-base-patch32"
SUPPORTED_TYPES = ("clip", "chinese_clip", "siglip", "siglip2")
# fp32; bf16 = half-precision autocast (bf16 on CPUs with bf16 units, fp16 on CUDA); onnx = ONNX Runtime fp32;
# int8 = ONNX Runtime with dynamic int8 quantisation (crossmodal/encoders/acceleration.py).
PRECISIONS = ("fp32", "bf16", "onnx", "int8")
# When a precision is unavailable or disagrees with fp32, the next one is tried.
PRECISION_FALLBACK = {"int8": "bf16", "bf16": "fp32", "onnx": "fp32"}
PRECISION_AGREEMENT = 0.999
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
CONFIG_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken"]  # config, tokenizer and processor; no weights


@dataclass(frozen=True)
class HubOptions:
    """How to reach the Hugging Face hub: a mirror endpoint, a token, offline mode, a cache."""

    endpoint: str | None = None
    token: str | None = field(default=None, repr=False)
    offline: bool = False
    cache_dir: str | None = None

    def __repr__(self) -> str:  # the endpoint may carry user:password@
        endpoint = redact(self.endpoint) if self.endpoint else None
        return f"HubOptions(endpoint={endpoint!r}, offline={self.offline}, cache_dir={self.cache_dir!r})"

    @classmethod
    def from_env(cls) -> "HubOptions":
        return cls(
            endpoint=os.environ.get("HF_ENDPOINT") or None,
            token=os.environ.get("HF_TOKEN") or None,
            offline=os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"),
            cache_dir=model_cache_dir(),
        )


def default_model() -> str:
    return os.environ.get("CROSSMODAL_DEFAULT_MODEL") or DEFAULT_MODEL


def model_identity(name: str | None) -> str:
    """The name recorded in a collection: preset names stay short, directories become absolute."""
    name = (name or "auto").strip()
    if name == "auto":
        name = default_model()
    if name.startswith("dify:"):  # a workspace model (crossmodal/encoders/workspace.py)
        from crossmodal.encoders.workspace import workspace_identity

        return workspace_identity(name)
    if name in PRESETS:
        return name
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return name


def resolve_model_dir(name: str, hub: HubOptions | None = None) -> Path:
    """A local directory holding the model's files: the preset's, the given one, or a hub snapshot."""
    identity = model_identity(name)
    ref = PRESETS.get(identity, identity)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CrossmodalError(f"the directory {path} holds no config.json; point to a saved model", param="model")
        return path
    if identity == "demo-shapes":
        raise CrossmodalError(f"the demo model is missing from {DEMO_MODEL_DIR}; reinstall the package", param="model")
    if ref.count("/") != 1 or ref.startswith(("/", ".")):
        raise CrossmodalError(
            f"'{name}' is neither a preset ({', '.join(PRESETS)}), a Hugging Face id (owner/name) "
            "nor an existing directory",
            param="model",
        )
    return _download(ref, hub or HubOptions.from_env())


def resolve_model_config_dir(name: str, hub: HubOptions | None = None) -> Path:
    """Like resolve_model_dir, but a hub model brings only its config and processor files (a few KB), not
    its weights: what saving the credentials needs (the weights load on first use, inside a node)."""
    identity = model_identity(name)
    ref = PRESETS.get(identity, identity)
    is_hub_id = ref.count("/") == 1 and not ref.startswith(("/", ".")) and not Path(ref).expanduser().is_dir()
    if not is_hub_id or identity == "demo-shapes":
        return resolve_model_dir(name, hub)  # local directories, and the same errors for bad names
    return _download(ref, hub or HubOptions.from_env(), patterns=CONFIG_FILES)


def _download(repo_id: str, hub: HubOptions, patterns: list[str] | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=patterns or HUB_FILES,
                endpoint=hub.endpoint,
                token=hub.token,
                cache_dir=hub.cache_dir,
                local_files_only=hub.offline,
            )
        )
    except LocalEntryNotFoundError:
        raise CrossmodalError(
            f"'{repo_id}' is not in the local cache and offline mode is on (or the hub is unreachable); "
            "download it once with network access, set hf_endpoint to a reachable mirror, or give a local directory",
            param="model",
        ) from None
    except RepositoryNotFoundError:
        raise CrossmodalError(
            f"'{repo_id}' was not found on the hub; check the id, or give hf_token for a private model", param="model"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        where = redact(hub.endpoint) if hub.endpoint else "the Hugging Face hub"
        raise CrossmodalError(f"could not download '{repo_id}' from {where}: {exc}; check hf_endpoint "
                              "(HF_ENDPOINT), hf_token and the network, or give a local directory",
                              param="model") from None


def pick_device(device: str | None) -> str:
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        return "cpu"  # get_encoder notes the fallback; a missing GPU never fails a node
    if device not in ("cpu", "cuda"):
        raise CrossmodalError(f"'{device}' is not one of auto, cpu, cuda", param="device")
    return device


class Encoder:
    """A dual encoder (CLIP, Chinese-CLIP, SigLIP) with its processor; outputs L2-normalised float32."""

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
        from crossmodal.encoders.batching import DynamicBatcher

        # Concurrent sessions' query vectors share forward passes (crossmodal/encoders/batching.py).
        self.text_queries = DynamicBatcher(self._text_query_batch, max_batch=2 * self.batch_size)
        self.image_queries = DynamicBatcher(self._image_query_batch, max_batch=self.batch_size)
        self._lock = os_lock()  # torch modules are not re-entrant across threads for one model

    def _probe_dim(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    # -- public API -------------------------------------------------------
    def encode(
        self,
        inputs: Sequence,
        *,
        batch_size: int | None = None,
        show_progress_bar: bool = False,
        normalize_embeddings: bool = True,
    ) -> np.ndarray:
        """Embed a mixed list of texts (str) and PIL images, in the caller's order."""
        texts = [(i, x) for i, x in enumerate(inputs) if isinstance(x, str)]
        images = [(i, x) for i, x in enumerate(inputs) if not isinstance(x, str)]
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)
        if texts:
            enc = self.encode_texts([t for _, t in texts], batch_size=batch_size, normalize=normalize_embeddings)
            out[[i for i, _ in texts]] = enc.vectors
        if images:
            vecs = self.encode_images(
                [im for _, im in images],
                batch_size=batch_size,
                show_progress_bar=show_progress_bar,
                normalize=normalize_embeddings,
            )
            out[[i for i, _ in images]] = vecs
        return out

    def encode_images(self, images: Sequence, *, batch_size: int | None = None, show_progress_bar: bool = False,
                      normalize=True):
        from tqdm.auto import tqdm

        batch_size = batch_size or self.batch_size
        chunks = []
        starts = range(0, len(images), batch_size)
        for start in tqdm(starts, disable=not show_progress_bar, desc="embedding images", unit="batch"):
            batch = list(images[start : start + batch_size])
            pixels = self.preprocess(batch)
            chunks.append(self.image_features(pixels))
        return self._finish(chunks, normalize)

    def query_text_vector(self, text: str) -> tuple[np.ndarray, bool]:
        """One query's unit vector, computed in a batch with concurrent queries; (vector, truncated)."""
        return self.text_queries.submit(text)

    def query_image_vector(self, image) -> np.ndarray:
        return self.image_queries.submit(self.preprocess([image])[0])

    def _text_query_batch(self, texts: Sequence[str]) -> list:
        encoded = self.encode_texts(list(texts))
        return [(vector, i in encoded.truncated) for i, vector in enumerate(encoded.vectors)]

    def _image_query_batch(self, pixels: Sequence) -> list:
        return list(self.embed_pixels(self._torch.stack(list(pixels))))

    def preprocess(self, images: Sequence):
        """PIL images -> normalised pixel tensor (N x 3 x S x S): the processor's recipe run by
        FastPreprocessor when it reproduces it (the same pixels, tests/test_preprocess.py; 11.4 against
        13.2 ms per 1024x768 image here, the resize being most of both), else the model's own processor."""
        fast = self.fast_preprocessor
        if fast is None:
            return self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        return fast.normalise([fast.to_uint8(im if im.mode == "RGB" else im.convert("RGB")) for im in images])

    def embed_pixels(self, pixels, *, batch_size: int | None = None, normalize=True) -> np.ndarray:
        """Embed already preprocessed (possibly edited, e.g. occluded) pixel tensors."""
        batch_size = batch_size or 2 * self.batch_size
        chunks = [self.image_features(pixels[s : s + batch_size]) for s in range(0, len(pixels), batch_size)]
        return self._finish(chunks, normalize)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int | None = None, normalize=True) -> TextEncoding:
        batch_size = batch_size or 2 * self.batch_size
        truncated = [i for i, n in enumerate(self.token_counts(texts)) if n > self.context_length]
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenize(list(texts[start : start + batch_size]))
            chunks.append(self.text_features(tokens))
        return TextEncoding(self._finish(chunks, normalize), truncated)

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
        images, texts = _calibration_batch()
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


def cpu_has_bf16() -> bool:
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _calibration_batch():
    """Eight generated scenes (448 px) and a caption of each, bundled (crossmodal/assets/precision-check/,
    written once by the laboratory's scene generator, which the runtime does not import)."""
    from PIL import Image

    folder = PACKAGE_DIR / "assets" / "precision-check"
    captions = json.loads((folder / "captions.json").read_text(encoding="utf-8"))
    images = [Image.open(folder / f"scene-{k}.png").convert("RGB") for k in range(len(captions))]
    return images, captions



_ENCODERS: dict[tuple, Encoder] = {}
# Seconds the last load of each model took, read by the metrics scrape. A plain dict, not a prometheus
# gauge set here: this runs in a worker thread, and the gauge's lock would be a greenlet lock shared with
# the loop that scrapes (crossmodal/runtime.py).
LOAD_SECONDS: dict[str, float] = {}
_ENCODERS_LOCK = os_lock()


def _encoder_key(name: str | None, device: str | None, precision: str) -> tuple:
    asked_device = (device or "auto").lower()
    picked = pick_device(device)
    no_gpu = asked_device == "cuda" and picked == "cpu"
    return model_identity(name), picked, precision, no_gpu  # the fallback's note stays with those who asked for CUDA


def get_encoder(name: str | None = None, device: str | None = None, hub: HubOptions | None = None,
                precision: str = "fp32") -> Encoder:
    """One loaded encoder per (model, device, precision) per process, loaded on first use."""
    key = _encoder_key(name, device, precision)
    identity, device, precision, no_gpu = key
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            started = time.perf_counter()
            encoder = load_encoder(identity, device, hub)
            LOAD_SECONDS[identity] = time.perf_counter() - started
            logger.info("loaded model %s in %.1f s", identity, LOAD_SECONDS[identity])
            encoder.use_precision(precision)
            if no_gpu:
                note = "CUDA was asked for but no GPU is visible: running on the CPU"
                encoder.precision_note = "; ".join(filter(None, [note, encoder.precision_note]))
            _ENCODERS[key] = encoder
        return _ENCODERS[key]


def load_encoder(identity: str, device: str = "cpu", hub: HubOptions | None = None) -> Encoder:
    from transformers import AutoConfig, AutoModel, AutoProcessor

    logger.info("loading model %s (a hub model downloads its weights on first use; this can take minutes)",
                identity)
    directory = resolve_model_dir(identity, hub)
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


def weights_fingerprint(directory: Path) -> str:
    """A short hash of the files that decide a model's vectors (weights, configs, tokenizer), by content.

    A collection records it, so that a model whose files were replaced under the same name is caught
    before its vectors are mixed with the old ones. By content, not modification time, so that a fresh
    copy of the same files (a new clone, a re-download) keeps it. Crossmodal's own files beside the
    model (a calibration fit) and read-mes do not count: they do not change a vector."""
    digest = hashlib.sha256()
    for path in sorted(Path(directory).iterdir()):
        name = path.name
        if not path.is_file() or name.startswith((".", "crossmodal_", "README")):
            continue
        digest.update(f"{name}\0{_file_sha256(path)}\0".encode())
    return digest.hexdigest()[:16]


_FILE_HASHES: dict[tuple, str] = {}


def _file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for this process (a CLIP-base file: ~1 s)."""
    resolved = path.resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        with open(resolved, "rb") as handle:
            _FILE_HASHES[key] = hashlib.file_digest(handle, "sha256").hexdigest()
    return _FILE_HASHES[key]
