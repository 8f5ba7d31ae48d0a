"""What every encoder returns, local or a workspace's: unit-length float32 vectors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TextEncoding:
    vectors: np.ndarray
    truncated: list[int]  # indexes of texts cut to the model's context


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
