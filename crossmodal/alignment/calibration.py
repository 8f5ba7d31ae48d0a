"""Calibrated match probabilities for the align node (Platt scaling of the align match score): loading.

A model's cosines are not probabilities, and their scale differs from model to model (CLIP's true pairs
sit near 0.3, the demo model's near 0.6). A fit (``python -m crossmodal calibrate``, crossmodal/lab/
calibration_fit.py) is stored beside the model (``crossmodal_calibration.json``, as the bundled demo model
ships it) or under the data directory for hub models. A model without a fit gets SigLIP's own learned
bias where it has one, else a documented default, and the output says which.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from crossmodal.alignment.align import Calibration

CALIBRATION_FILE = "crossmodal_calibration.json"
DEFAULT_MIDPOINT = 0.25  # CLIP-family cosines: true pairs mostly above, false pairs below


def calibration_path(identity: str, data_dir: str | Path) -> Path:
    return Path(data_dir) / "calibration" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", identity) + ".json")


def load_calibration(encoder, data_dir: str | Path | None) -> Calibration:
    candidates = []
    if encoder.model_dir is not None:
        candidates.append(Path(encoder.model_dir) / CALIBRATION_FILE)
    if data_dir:
        candidates.append(calibration_path(encoder.identity, data_dir))
    for path in candidates:
        if path.is_file():
            raw = json.loads(path.read_text())
            return Calibration(float(raw["a"]), float(raw["b"]), raw.get("source", str(path)), raw.get("metrics", {}))
    default = default_calibration(encoder)
    if default.source.startswith("SigLIP"):
        default.source = "SigLIP's own sigmoid (logit scale and bias learned in pre-training)"
    else:
        default.source = (f"default, not fitted: sigmoid(logit_scale x (score - {DEFAULT_MIDPOINT})); "
                          "run `python -m crossmodal calibrate` for a fitted one")
    return default


def default_calibration(encoder) -> Calibration:
    """What a model gets with no fit on disk (SigLIP's bias, or the CLIP default)."""
    scale, bias = encoder.logit_scale, encoder.logit_bias
    if bias is not None:
        return Calibration(scale, bias, "SigLIP's own sigmoid")
    return Calibration(scale, -scale * DEFAULT_MIDPOINT, "default, not fitted")
