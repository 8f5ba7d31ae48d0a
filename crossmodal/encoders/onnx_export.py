"""`python -m crossmodal export MODEL --out DIR [--int8]`: a model as ONNX in the layout the hub's published
exports use, which the torch-free runtime loads.

A dual encoder (crossmodal/encoders/onnx_encoder.py):
    DIR/onnx/vision_model.onnx, DIR/onnx/text_model.onnx   (int8: ..._quantized.onnx)
    DIR/tokenizer.json, DIR/preprocessor_config.json, DIR/config.json
A text cross-encoder (crossmodal/rerank/onnx_cross_encoder.py), as sentence-transformers publishes them:
    DIR/onnx/model.onnx, DIR/tokenizer.json, DIR/config.json, DIR/tokenizer_config.json
and in both DIR/crossmodal_onnx.json: what the runtime needs beyond the graphs (for a dual encoder: dimension,
context, padding, the logit scale and bias for calibration; with --int8, that the weights are 7-bit, which the
fast int8 kernels of every x86-64 CPU multiply exactly: crossmodal/encoders/int8.py) and every file's sha256, so
that a corrupt file is refused.

Needs torch and transformers, once, on any machine; the result runs with onnxruntime, tokenizers and numpy.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from crossmodal.encoders.int8 import PORTABLE_WEIGHT_BITS, quantize_int8
from crossmodal.encoders.onnx_encoder import MANIFEST
from crossmodal.errors import CrossmodalError

FORMAT = 1


def export_model(name: str, out: str | Path, int8: bool = False) -> dict:
    from crossmodal.encoders.acceleration import file_sha256
    from crossmodal.encoders.catalog import model_identity, read_config, resolve_model_dir

    identity = model_identity(name)
    directory = resolve_model_dir(identity)
    cross_encoder = any(str(a).endswith("ForSequenceClassification")
                        for a in read_config(directory).get("architectures") or [])
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CrossmodalError(f"{out} is not empty; give a new folder", param="out")
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent if out.parent.exists() else None))
    try:
        (staging / "onnx").mkdir()
        if cross_encoder:
            manifest = _write_cross_encoder(directory, staging, int8)
        else:
            manifest = _write_dual_encoder(identity, staging, int8)
        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        manifest = {"format": FORMAT, "model": identity, **manifest, "quantized": int8,
                    **({"int8_weight_bits": PORTABLE_WEIGHT_BITS} if int8 else {}),
                    "sha256": {name: file_sha256(staging / name) for name in files}}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the export from other users (a plugin daemon)
        if out.exists():
            out.rmdir()
        staging.rename(out)
        return {"out": str(out), "model": identity, "kind": manifest["kind"], "files": files + [MANIFEST],
                "quantized": int8}
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_dual_encoder(identity: str, staging: Path, int8: bool) -> dict:
    from crossmodal.encoders.acceleration import _uses_text_mask, export_towers
    from crossmodal.encoders.models import load_encoder

    encoder = load_encoder(identity, "cpu")
    export_towers(encoder, staging)
    suffix = "_quantized" if int8 else ""
    for tower in ("vision", "text"):
        if int8:
            quantize_int8(staging / f"{tower}.onnx")
        (staging / f"{tower}.onnx").rename(staging / "onnx" / f"{tower}_model{suffix}.onnx")
    encoder.processor.tokenizer.backend_tokenizer.save(str(staging / "tokenizer.json"))
    image_processor = encoder.processor.image_processor.to_dict()
    (staging / "preprocessor_config.json").write_text(json.dumps(image_processor, indent=2))
    shutil.copy(Path(encoder.model_dir) / "config.json", staging / "config.json")
    calibration = Path(encoder.model_dir) / "crossmodal_calibration.json"
    if calibration.is_file():
        shutil.copy(calibration, staging / calibration.name)
    return {
        "kind": "dual-encoder", "weights": encoder.weights, "model_type": encoder.model_type,
        "dimension": encoder.dim, "context_length": encoder.context_length, "image_size": encoder.image_size,
        "patch_size": encoder.patch_size, "text_mask": _uses_text_mask(encoder),
        "padding": "max_length" if encoder.model_type.startswith("siglip") else "longest",
        "logit_scale": encoder.logit_scale, "logit_bias": encoder.logit_bias,
    }


def _write_cross_encoder(directory: Path, staging: Path, int8: bool) -> dict:
    from crossmodal.encoders.catalog import weights_fingerprint
    from crossmodal.rerank.onnx_cross_encoder import GRAPH, export_cross_encoder

    inputs = export_cross_encoder(directory, staging)
    if int8:
        quantize_int8(staging / GRAPH)
    return {"kind": "cross-encoder", "weights": weights_fingerprint(directory), "inputs": inputs}
