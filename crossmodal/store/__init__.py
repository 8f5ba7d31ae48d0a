"""Vector stores: the embedded Qdrant engine (default) or a Qdrant server / cluster."""

from crossmodal.store.base import (CollectionInfo, Condition, Hit, StoredPoint, VectorStore, check_collection_name,
                                   check_weights)
from crossmodal.store.filters import parse_filter


def open_store(url: str | None = None, api_key: str | None = None, data_dir: str | None = None) -> VectorStore:
    """Empty URL: the embedded store under ``data_dir``; otherwise a Qdrant server at ``url``."""
    if url:
        from crossmodal.inputs.urls import check_service_url
        from crossmodal.store.remote import RemoteStore

        return RemoteStore(check_service_url(url, "store_url"), api_key)  # inside Dify: the admin's URL rules
    from crossmodal.locations import data_root
    from crossmodal.store.edge import EdgeStore

    return EdgeStore(data_dir or data_root())


__all__ = ["CollectionInfo", "Condition", "Hit", "StoredPoint", "VectorStore", "check_collection_name",
           "check_weights", "open_store", "parse_filter"]
