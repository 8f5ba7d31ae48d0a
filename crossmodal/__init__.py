"""Crossmodal: image-text alignment, embedding, storage and search for Dify workflows."""

__version__ = "0.1.0"
