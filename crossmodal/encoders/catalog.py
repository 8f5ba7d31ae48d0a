"""Which models there are and where their files come from: presets for each engine (torch, or the lean
build's ONNX Runtime), hub options (mirror, token, offline, cache), resolving a name to a local directory,
the fingerprint that ties a collection to a model's files, and the precision check's bundled batch.

Both encoders (crossmodal/encoders/models.py on torch, crossmodal/encoders/onnx_encoder.py on ONNX Runtime)
load through here; nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from crossmodal.engine import ENGINES, engine  # noqa: F401 - part of this module's API
from crossmodal.errors import CrossmodalError, redact
from crossmodal.locations import check_workspace_path, model_cache_dir, paths_allowed

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # crossmodal/
DEMO_MODEL_DIR = PACKAGE_DIR / "assets" / "demo-shapes"

# Preset name -> hub id (or a directory shipped with the package).
PRESETS: dict[str, str] = {
    "clip-vit-base-patch32": "openai/clip-vit-base-patch32",
    "chinese-clip": "OFA-Sys/chinese-clip-vit-base-patch16",
    "siglip": "google/siglip-base-patch16-224",
    "demo-shapes": str(DEMO_MODEL_DIR),
    # VLM embedding models (crossmodal/encoders/vlm_encoder.py): torch only, a GPU advised.
    "qwen3-vl-embedding-2b": "Qwen/Qwen3-VL-Embedding-2B",
    "qwen3-vl-embedding-8b": "Qwen/Qwen3-VL-Embedding-8B",
}
# Multimodal cross-encoders (crossmodal/rerank/scoring.py): the Rerank node's and the model
# package's rerank models by short name.
RERANKER_PRESETS: dict[str, str] = {
    "qwen3-vl-reranker-2b": "Qwen/Qwen3-VL-Reranker-2B",
    "qwen3-vl-reranker-8b": "Qwen/Qwen3-VL-Reranker-8B",
}
VLM_PRESETS = ("qwen3-vl-embedding-2b", "qwen3-vl-embedding-8b", *RERANKER_PRESETS)
# The lean build (no torch) runs the same presets from ONNX exports in the hub's layout: published ones, and
# the demo model's export shipped beside it (python -m crossmodal export; tests/test_lean_build.py keeps it
# in step with the torch weights).
DEMO_ONNX_DIR = PACKAGE_DIR / "assets" / "demo-shapes-onnx"
ONNX_PRESETS: dict[str, str] = {
    "clip-vit-base-patch32": "Xenova/clip-vit-base-patch32",
    "chinese-clip": "Xenova/chinese-clip-vit-base-patch16",
    "siglip": "Xenova/siglip-base-patch16-224",
    "demo-shapes": str(DEMO_ONNX_DIR),
}
DEFAULT_MODEL = "clip-vit-base-patch32"
SUPPORTED_TYPES = ("clip", "chinese_clip", "siglip", "siglip2")
# fp32; bf16 = half-precision autocast (bf16 on CPUs with bf16 units, fp16 on CUDA); onnx = ONNX Runtime fp32;
# int8 = ONNX Runtime with dynamic int8 quantisation (crossmodal/encoders/acceleration.py).
PRECISIONS = ("fp32", "bf16", "onnx", "int8")
# When a precision is unavailable or disagrees with fp32, the next one is tried.
PRECISION_FALLBACK = {"int8": "bf16", "bf16": "fp32", "onnx": "fp32"}
PRECISION_AGREEMENT = 0.999
# *.jinja: a chat template (VLM models); sentence-transformers' module folders are matched by *.json.
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
CONFIG_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja"]  # config, tokenizer and processor; no weights


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

    def scope(self) -> str:
        """What decides the weights a hub id loads besides its name: the endpoint, the token (hashed) and the
        cache. Loaded models and downloads are kept per scope, so that a model one workspace's token or mirror
        brought is never served to another workspace by name."""
        token = hashlib.sha256(self.token.encode()).hexdigest()[:16] if self.token else ""
        return hashlib.sha256(f"{self.endpoint or ''}\0{token}\0{self.cache_dir or ''}".encode()).hexdigest()[:16]

    def download_cache(self) -> str | None:
        """Where hub files download: the shared cache for the hub itself without a token; a folder of its own
        under it for each mirror and token (a mirror's files, or private ones, never fill another's cache)."""
        if not self.endpoint and not self.token:
            return self.cache_dir
        from huggingface_hub import constants

        return str(Path(self.cache_dir or constants.HF_HUB_CACHE) / "scoped" / self.scope())

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
    """The name recorded in a collection: preset names stay short, directories become absolute; a VLM
    model's options (``?dimension=...``, crossmodal/encoders/model_ref.py) stay with it."""
    name = (name or "auto").strip()
    if name == "auto":
        name = default_model()
    if "?" in name:
        from crossmodal.encoders.model_ref import ModelRef

        ref = ModelRef.parse(name)
        return str(ModelRef(model_identity(ref.name), ref.options))
    if name.startswith("dify:"):  # a workspace model (crossmodal/encoders/workspace.py)
        from crossmodal.encoders.workspace import workspace_identity

        return workspace_identity(name)
    if name in PRESETS or name in RERANKER_PRESETS or name in presets():
        return name
    if not paths_allowed():  # inside Dify: a hub id, or a folder under the admin's model roots (never probed)
        return name if looks_like_hub_id(name) else check_workspace_path(name, "model")
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return name


def looks_like_hub_id(ref: str) -> bool:
    """owner/name, not a path."""
    return ref.count("/") == 1 and not ref.startswith(("/", "."))


def presets() -> dict[str, str]:
    """The preset names' hub ids or directories for this engine (the lean build's are ONNX exports)."""
    return ONNX_PRESETS if engine() == "onnx" else {**PRESETS, **RERANKER_PRESETS}


def refuse_on_lean_build(identity: str) -> None:
    """The lean build (ONNX Runtime alone) runs no VLM model: say so by name, not as an unknown preset."""
    if engine() == "onnx" and identity.partition("?")[0] in VLM_PRESETS:
        raise CrossmodalError(f"'{identity}' is a VLM model, which runs on torch; this lean build leaves torch "
                              "out: install the full package (python -m crossmodal package --runtime torch)",
                              param="model")


FAMILIES = ("dual", "vlm", "late", "cross-encoder", "vlm-cross-encoder", "other")


def model_family(name: str, hub: "HubOptions | None" = None) -> str:
    """What kind of model ``name`` is, by preset, else by its files' config (a hub model's config files only, a
    few KB; never its weights): 'dual' (CLIP, Chinese-CLIP, SigLIP), 'vlm' (a VLM embedder saved by
    sentence-transformers), 'late' (a late-interaction ``*ForRetrieval`` model: ColQwen2, ColPali),
    'cross-encoder' (text), 'vlm-cross-encoder' (reads images too), or 'other'."""
    identity = model_identity(name).partition("?")[0]
    if identity in RERANKER_PRESETS:
        return "vlm-cross-encoder"
    if identity in VLM_PRESETS:
        return "vlm"
    if identity in PRESETS:
        return "dual"
    directory = resolve_model_config_dir(identity, hub)
    config = read_config(directory)
    if config.get("model_type") in SUPPORTED_TYPES:
        return "dual"
    if is_late_interaction_model(directory):
        return "late"
    kind = sentence_transformers_kind(directory)
    if kind == "CrossEncoder":
        return "vlm-cross-encoder" if is_vlm_model(directory) else "cross-encoder"
    if kind is not None:
        return "vlm"
    if any(str(a).endswith("ForSequenceClassification") for a in (config.get("architectures") or [])):
        return "cross-encoder"
    return "other"


# identity -> (family or None, when it was read): a hub model's config is fetched once per process; a model that
# could not be read is asked again after UNREADABLE_RETRY_S, not on every call (a Dify without the hub would
# wait for its timeout each time).
_FAMILIES: dict[tuple[str, str], tuple[str | None, float]] = {}
UNREADABLE_RETRY_S = 300.0


def family_or_none(name: str | None, hub: "HubOptions | None" = None) -> str | None:
    """model_family (remembered per hub scope), or None for a model that cannot be read here (loading it says
    why)."""
    import time

    if not name or name.startswith("dify:"):
        return None
    identity = model_identity(name).partition("?")[0]
    key = (identity, hub_scope(identity, hub))
    known = _FAMILIES.get(key)
    if known is None or (known[0] is None and time.monotonic() - known[1] > UNREADABLE_RETRY_S):
        try:
            family = model_family(identity, hub)
        except CrossmodalError:
            family = None
        known = _FAMILIES[key] = (family, time.monotonic())
    return known[0]


def hub_scope(identity: str, hub: "HubOptions | None") -> str:
    """HubOptions.scope for a model that comes from the hub; '' for a preset's or a local folder's files."""
    ref = presets().get(identity, identity)
    if not looks_like_hub_id(ref) or Path(ref).expanduser().is_dir():
        return ""
    return (hub or HubOptions.from_env()).scope()


def takes_options(name: str, hub: "HubOptions | None" = None) -> bool:
    """Whether VLM options (dimension, max_pixels, instruction) apply to the model. The lean build runs no
    VLM model: there none do (loading one says so)."""
    return engine() != "onnx" and family_or_none(name, hub) in ("vlm", "vlm-cross-encoder")


def sentence_transformers_kind(directory: Path) -> str | None:
    """'SentenceTransformer' or 'CrossEncoder' for a model saved by sentence-transformers, else None."""
    path = Path(directory) / "config_sentence_transformers.json"
    if not (Path(directory) / "modules.json").is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("model_type") or "SentenceTransformer"
    except (OSError, ValueError):
        return "SentenceTransformer"


def is_late_interaction_model(directory: Path) -> bool:
    """A ``*ForRetrieval`` checkpoint (ColQwen2, ColPali, ColModernVBert): one vector per token."""
    return any(str(a).endswith("ForRetrieval") for a in (read_config(directory).get("architectures") or []))


def is_vlm_model(directory: Path) -> bool:
    """A sentence-transformers model whose backbone is none of the dual encoders' (a VLM embedder or a
    multimodal cross-encoder such as Qwen3-VL-Reranker)."""
    return (sentence_transformers_kind(directory) is not None
            and read_config(directory).get("model_type") not in SUPPORTED_TYPES)


def read_config(directory: Path) -> dict:
    """A model's config.json as plain JSON (model type, architectures): no transformers import."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
        return config
    except (OSError, ValueError) as exc:
        raise CrossmodalError(f"cannot read the model config in {directory}: {exc}", param="model") from None


def resolve_model_dir(name: str, hub: HubOptions | None = None) -> Path:
    """A local directory holding the model's files: the preset's, the given one, or a hub snapshot."""
    identity = model_identity(name).partition("?")[0]
    refuse_on_lean_build(identity)
    ref = presets().get(identity, identity)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CrossmodalError(f"the directory {path} holds no config.json; point to a saved model", param="model")
        return path
    if identity == "demo-shapes":
        raise CrossmodalError(f"the demo model is missing from {ref}; reinstall the package", param="model")
    if not looks_like_hub_id(ref):
        raise CrossmodalError(
            f"'{name}' is neither a preset ({', '.join(presets())}), a Hugging Face id (owner/name) "
            "nor an existing directory",
            param="model",
        )
    return _download(ref, hub or HubOptions.from_env())


def resolve_model_config_dir(name: str, hub: HubOptions | None = None) -> Path:
    """Like resolve_model_dir, but a hub model brings only its config and processor files (a few KB), not
    its weights: what saving the credentials needs (the weights load on first use, inside a node)."""
    identity = model_identity(name).partition("?")[0]
    ref = presets().get(identity, identity)
    is_hub_id = looks_like_hub_id(ref) and not Path(ref).expanduser().is_dir()
    if not is_hub_id or identity == "demo-shapes":
        return resolve_model_dir(name, hub)  # local directories, and the same errors for bad names
    return _download(ref, hub or HubOptions.from_env(), patterns=CONFIG_FILES)


def _download(repo_id: str, hub: HubOptions, patterns: list[str] | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (HFValidationError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)  # the hub library's own rule, before any request
    except HFValidationError:
        raise CrossmodalError(f"'{repo_id}' is not a Hugging Face id: owner/name in letters, digits, '-', '_' and '.', "
                              "at most 96 characters; give a preset, such an id or a local directory",
                              param="model") from None
    try:
        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=patterns or HUB_FILES,
                endpoint=hub.endpoint,
                token=hub.token,
                cache_dir=hub.download_cache(),
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



def precision_check_batch():
    """Eight generated scenes (448 px) and a caption of each, bundled (crossmodal/assets/precision-check/,
    written once by the laboratory's scene generator, which the runtime does not import)."""
    from PIL import Image

    folder = PACKAGE_DIR / "assets" / "precision-check"
    captions = json.loads((folder / "captions.json").read_text(encoding="utf-8"))
    images = [Image.open(folder / f"scene-{k}.png").convert("RGB") for k in range(len(captions))]
    return images, captions



def weights_fingerprint(directory: Path) -> str:
    """A short hash of the files that decide a model's vectors (weights, configs, tokenizer), by content.

    A collection records it, so that a model whose files were replaced under the same name is caught
    before its vectors are mixed with the old ones. By content, not modification time, so that a fresh
    copy of the same files (a new clone, a re-download) keeps it. Crossmodal's own files beside the
    model (a calibration fit) and read-mes do not count: they do not change a vector."""
    return files_fingerprint(path for path in sorted(Path(directory).iterdir())
                             if path.is_file() and not path.name.startswith((".", "crossmodal_", "README")))


def files_fingerprint(paths) -> str:
    """16 hex digits of the files' names and contents, in the given order (each file's hash remembered)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}\0{_file_sha256(path)}\0".encode())
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
