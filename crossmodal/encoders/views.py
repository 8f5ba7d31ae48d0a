"""Align's square views for encoders whose processor reads an image at its own aspect ratio (VLM embedders,
late-interaction models): occlusion needs a fixed grid of pixels to hide windows in."""

from __future__ import annotations

from typing import Sequence

import numpy as np


class SquareViews:
    """``preprocess`` squashes each image to an ``image_size`` square with pixels in [-1, 1] (a hidden pixel, 0,
    is mid grey); ``embed_pixels`` turns such views back into pictures and embeds them as documents."""

    image_size: int

    def preprocess(self, images: Sequence) -> np.ndarray:
        side = self.image_size
        views = [np.asarray(im.convert("RGB").resize((side, side), resample=3), dtype=np.float32) for im in images]
        return np.stack(views).transpose(0, 3, 1, 2) / 127.5 - 1.0

    def embed_pixels(self, pixels, *, batch_size: int | None = None, normalize=True) -> np.ndarray:
        from PIL import Image

        arrays = np.clip((np.asarray(pixels).transpose(0, 2, 3, 1) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
        return self.encode_images([Image.fromarray(a) for a in arrays])
