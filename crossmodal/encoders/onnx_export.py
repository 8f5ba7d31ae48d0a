"""`python -m crossmodal export MODEL --out DIR [--int8]`: a dual encoder as ONNX towers in the layout the hub's
published exports use, which the torch-free runtime (crossmodal/encoders/onnx_encoder.py) loads:

    DIR/onnx/vision_model.onnx, DIR/onnx/text_model.onnx   (int8: ..._quantized.onnx)
    DIR/tokenizer.json, DIR/preprocessor_config.json, DIR/config.json
    DIR/crossmodal_onnx.json   what the runtime needs beyond the graphs (dimension, context, padding, the logit
                               scale and bias for calibration) and every file's sha256: a corrupt file is refused

Needs torch and transformers, once, on any machine; the result runs with onnxruntime, tokenizers and numpy.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from crossmodal.encoders.onnx_encoder import MANIFEST
from crossmodal.errors import CrossmodalError

FORMAT = 1


def export_model(name: str, out: str | Path, int8: bool = False) -> dict:
    from crossmodal.encoders.acceleration import _uses_text_mask, export_towers, file_sha256, quantize_int8
    from crossmodal.encoders.models import load_encoder, model_identity

    encoder = load_encoder(model_identity(name), "cpu")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CrossmodalError(f"{out} is not empty; give a new folder", param="out")
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent if out.parent.exists() else None))
    try:
        (staging / "onnx").mkdir()
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
        model = encoder.model
        bias = getattr(model, "logit_bias", None)
        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT, "model": encoder.identity, "weights": encoder.weights, "model_type": encoder.model_type,
            "dimension": encoder.dim, "context_length": encoder.context_length, "image_size": encoder.image_size,
            "text_mask": _uses_text_mask(encoder),
            "padding": "max_length" if encoder.model_type.startswith("siglip") else "longest",
            "quantized": int8, "logit_scale": float(model.logit_scale.detach().exp()),
            "logit_bias": float(bias.detach()) if bias is not None else None,
            "sha256": {name: file_sha256(staging / name) for name in files},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        staging.rename(out)
        return {"out": str(out), "model": encoder.identity, "files": files + [MANIFEST], "quantized": int8}
    finally:
        shutil.rmtree(staging, ignore_errors=True)
