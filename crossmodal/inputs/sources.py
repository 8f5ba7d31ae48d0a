"""Where an image's bytes come from: read lazily (a file, Dify's file server, base64, a URL under the fetching
rules), so that a batch reads each item only when it is its turn and one unreadable item fails alone."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from crossmodal.errors import CrossmodalError


@dataclass
class ImageInput:
    """An image to read lazily: ``read`` returns its bytes (download, file read, base64 decode)."""

    source: str
    read: Callable[[], bytes]

    @classmethod
    def from_bytes(cls, source: str, data: bytes) -> "ImageInput":
        return cls(source, lambda: data)

    @classmethod
    def from_url(cls, url: str, allowlist: str | None = None, param: str = "image_url") -> "ImageInput":
        """Fetched on first read, under the URL safety rules (crossmodal/inputs/urls.py)."""
        from crossmodal.inputs.urls import UrlPolicy, fetch_image

        policy = UrlPolicy.from_settings(allowlist)
        return cls(url, lambda: fetch_image(url, policy, param=param))

    @classmethod
    def from_path(cls, path: str | Path) -> "ImageInput":
        path = Path(path)
        return cls(str(path), path.read_bytes)


def read_input(image: ImageInput) -> bytes:
    try:
        return image.read()
    except CrossmodalError:
        raise
    except FileNotFoundError:
        raise CrossmodalError(f"file not found: {image.source}", param="image") from None
    except Exception as exc:  # network errors of the Dify file server, permissions, ...
        raise CrossmodalError(f"cannot read {image.source}: {exc}", param="image") from None


def decode_base64(value, param: str) -> bytes:
    """Base64 text (or a browser's data URL) -> bytes, with an error naming the parameter."""
    if not isinstance(value, str):
        raise CrossmodalError("must be a base64 string", param=param)
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]  # a data URL from a browser
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CrossmodalError("is not valid base64", param=param) from None
