"""ONNX Runtime towers for an encoder: fp32 and int8 (dynamic quantisation, weights in 8 or 7 bits by this CPU:
int8.py), exports cached on disk.

An export is keyed by the model's files (names, sizes, modification times), the runtime and the library
versions. A manifest written last holds each file's sha256: a half-written, truncated or edited export
fails the check and is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from crossmodal.encoders.int8 import quantize_int8, session_options, weight_bits_here

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
ONNX_KINDS = ("onnx", "int8")
MANIFEST = "manifest.json"


def cache_root() -> Path:
    """$CROSSMODAL_ONNX_CACHE, else onnx-cache/ in the data directory ($CROSSMODAL_HOME or ~/.crossmodal)."""
    if os.environ.get("CROSSMODAL_ONNX_CACHE"):
        return Path(os.environ["CROSSMODAL_ONNX_CACHE"]).expanduser()
    from crossmodal.locations import data_root

    return data_root() / "onnx-cache"


class OnnxTowers:
    """The image and text towers as ONNX Runtime sessions; same inputs and outputs as the torch model."""

    def __init__(self, directory: Path, uses_text_mask: bool, threads: int):
        import onnxruntime as ort

        # Quantised for this CPU (the cache key names the weight bits): its fast int8 kernels cannot saturate.
        options = session_options(threads, fits=True)
        providers = ["CPUExecutionProvider"]
        self.vision = ort.InferenceSession(str(directory / "vision.onnx"), options, providers=providers)
        self.text = ort.InferenceSession(str(directory / "text.onnx"), options, providers=providers)
        self.uses_text_mask = uses_text_mask
        self.directory = directory

    def image_features(self, pixel_values):
        import torch

        pixels = pixel_values.detach().float().cpu().numpy()
        return torch.from_numpy(self.vision.run(None, {"pixel_values": pixels})[0])

    def text_features(self, tokens: dict):
        import torch

        feed = {"input_ids": tokens["input_ids"].cpu().numpy().astype(np.int64)}
        if self.uses_text_mask:
            feed["attention_mask"] = tokens["attention_mask"].cpu().numpy().astype(np.int64)
        return torch.from_numpy(self.text.run(None, feed)[0])


def load_towers(encoder, kind: str) -> tuple[OnnxTowers, str | None]:
    """The cached export for ``encoder`` and ``kind`` (onnx | int8), built when missing or corrupt.
    Returns the towers and a note when a corrupt cache entry was rebuilt."""
    import torch

    directory = cache_root() / cache_key(encoder, kind)
    note = None
    if directory.exists():
        problem = verify(directory)
        if problem is None:
            try:
                return OnnxTowers(directory, _uses_text_mask(encoder), torch.get_num_threads()), None
            except Exception as exc:  # noqa: BLE001 - a file ONNX Runtime cannot load is as corrupt as a bad hash
                problem = f"ONNX Runtime could not load it ({type(exc).__name__})"
        note = f"the cached {kind} export in {directory} was corrupt ({problem}): rebuilt"
        logger.warning(note)
        shutil.rmtree(directory, ignore_errors=True)
    build(encoder, kind, directory)
    return OnnxTowers(directory, _uses_text_mask(encoder), torch.get_num_threads()), note


def cache_key(encoder, kind: str) -> str:
    import onnxruntime
    import torch
    import transformers

    # The weights fingerprint is by content (crossmodal/encoders/models.py): new weights under the same name get a
    # new export, a fresh copy of the same files reuses the cached one.
    identity = {"model": encoder.identity, "weights": encoder.weights, "kind": kind, "opset": ONNX_OPSET,
                "torch": torch.__version__, "transformers": transformers.__version__,
                "onnxruntime": onnxruntime.__version__}
    if kind == "int8":  # 8-bit weights where this CPU has VNNI, else 7: a cache shared by both keeps one of each
        identity["int8_weight_bits"] = weight_bits_here()
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(encoder.identity).name)[:40]
    return f"{safe_name}-{kind}-{digest}"


def verify(directory: Path) -> str | None:
    """None when every file the manifest lists is there with its recorded sha256; else what is wrong."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        expected = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no readable manifest"
    for name in ("vision.onnx", "text.onnx"):
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != expected.get(name):
            return f"{name} does not match its recorded sha256"
    return None


def build(encoder, kind: str, directory: Path) -> None:
    """Export both towers (and quantise them for int8) into a temporary directory, then move it in place."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=directory.parent))
    try:
        export_towers(encoder, staging)
        manifest = {"model": encoder.identity, "kind": kind}
        if kind == "int8":
            manifest["int8_weight_bits"] = weight_bits_here()
            for name in ("vision.onnx", "text.onnx"):
                quantize_int8(staging / name, manifest["int8_weight_bits"])
        manifest["sha256"] = {name: file_sha256(staging / name) for name in ("vision.onnx", "text.onnx")}
        (staging / MANIFEST).write_text(json.dumps(manifest))
        try:
            os.replace(staging, directory)
        except OSError:  # another process finished the same export first: use theirs if it checks out
            if verify(directory) is not None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_towers(encoder, out: Path) -> None:
    import torch

    model = encoder.model.float().cpu().eval()

    class ImageTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model  # a submodule, so its weights export as initialisers

        def forward(self, pixel_values):
            return pooled(self.model.get_image_features(pixel_values=pixel_values))

    class TextTower(ImageTower):
        def forward(self, input_ids, attention_mask=None):
            if attention_mask is None:
                return pooled(self.model.get_text_features(input_ids=input_ids))
            return pooled(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    size = encoder.image_size
    pixels = torch.zeros(2, 3, size, size)
    tokens = encoder.tokenize(["a red circle", "a small blue star on the left"])
    with_mask = _uses_text_mask(encoder)
    text_args = (tokens["input_ids"], tokens["attention_mask"]) if with_mask else (tokens["input_ids"],)
    text_names = ["input_ids", "attention_mask"] if with_mask else ["input_ids"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        torch.onnx.export(ImageTower(), (pixels,), str(out / "vision.onnx"), input_names=["pixel_values"],
                          output_names=["embedding"], dynamic_axes={"pixel_values": {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)
        torch.onnx.export(TextTower(), text_args, str(out / "text.onnx"), input_names=text_names,
                          output_names=["embedding"],
                          dynamic_axes={name: {0: "batch", 1: "sequence"} for name in text_names},
                          opset_version=ONNX_OPSET, dynamo=False)
    model.to(encoder.device)


def _uses_text_mask(encoder) -> bool:
    return not encoder.model_type.startswith("siglip")  # SigLIP was trained without a text mask


def file_sha256(path: Path) -> str:
    """Read afresh each time (not catalog._file_sha256's memo): it must see an export damaged in place."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def pooled(output):
    # transformers 4.x returns the projected tensor, 5.x an output object holding it.
    return output if hasattr(output, "shape") else output.pooler_output
