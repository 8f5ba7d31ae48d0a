"""Which engine runs the models: torch (the full package) or ONNX Runtime alone (the lean build,
``python -m crossmodal package --runtime onnx``). Imports nothing of the package at module level, so that
anything may ask.
"""

from __future__ import annotations

import functools
import importlib.util
import os

ENGINES = ("torch", "onnx")


def engine() -> str:
    """'torch' (the full package) or 'onnx' (the lean build, ONNX Runtime alone): CROSSMODAL_ENGINE when set,
    else torch when torch and transformers are installed."""
    asked = os.environ.get("CROSSMODAL_ENGINE", "").strip().lower()
    if asked in ENGINES:
        return asked
    return "torch" if _installed("torch") and _installed("transformers") else "onnx"


@functools.lru_cache(maxsize=None)  # asked on every get_encoder call; what is installed does not change
def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_torch(feature: str, param: str, instead: str) -> None:
    """On the lean build, a clear error for a feature that needs torch: what to do ``instead``."""
    if engine() == "onnx":
        from crossmodal.errors import CrossmodalError

        raise CrossmodalError(f"{feature} runs on torch, which this lean build leaves out: {instead}", param=param)
