"""Where an image's bytes come from: read lazily (a file, Dify's file server, base64, a URL under the fetching
rules), so that a batch reads each item only when it is its turn and one unreadable item fails alone."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path

from crossmodal.errors import CrossmodalError


@dataclass
class ImageInput:
    """An image to read lazily: bytes at hand, a file, or a URL fetched on first read under the fetching rules;
    or the reason it cannot be read (an item's failed download). Plain data, so that it travels to the worker
    process with its call."""

    source: str
    data: bytes | None = None
    path: str | None = None
    url: str | None = None
    url_policy: object = None  # UrlPolicy of a URL input
    param: str = "image_url"
    error: Exception | None = None

    def read(self) -> bytes:
        if self.error is not None:
            raise self.error
        if self.data is not None:
            return self.data
        if self.path is not None:
            return Path(self.path).read_bytes()
        from crossmodal.inputs.urls import fetch_image

        return fetch_image(self.url, self.url_policy, param=self.param)

    @classmethod
    def from_bytes(cls, source: str, data: bytes) -> "ImageInput":
        return cls(source, data=data)

    @classmethod
    def from_url(cls, url: str, allowlist: str | None = None, param: str = "image_url") -> "ImageInput":
        """Fetched on first read, under the URL safety rules (crossmodal/inputs/urls.py)."""
        from crossmodal.inputs.urls import UrlPolicy

        return cls(url, url=url, url_policy=UrlPolicy.from_settings(allowlist), param=param)

    @classmethod
    def from_path(cls, path: str | Path) -> "ImageInput":
        return cls(str(path), path=str(path))

    @classmethod
    def failed(cls, source: str, error: Exception) -> "ImageInput":
        """An input whose read raises ``error``: one item's failure that the batch reports and goes past."""
        return cls(source, error=error)


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
