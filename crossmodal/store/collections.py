"""The Collections capability: list, inspect, delete."""

from __future__ import annotations

from crossmodal.context import Context
from crossmodal.errors import CrossmodalError, NotFoundError


def list_collections(ctx: Context) -> dict:
    return {"collections": [c.as_dict() for c in ctx.store.list_collections()], "backend": ctx.store.backend}


def collection_info(ctx: Context, collection: str | None = None) -> dict:
    return ctx.store.get_collection(ctx.collection_name(collection)).as_dict()


def delete_collection(ctx: Context, collection: str | None, confirm: bool) -> dict:
    name = ctx.collection_name(collection)
    if not confirm:
        raise CrossmodalError("deleting removes every point for good; set confirm to true to proceed",
                              param="confirm")
    if not ctx.store.delete_collection(name):
        raise NotFoundError(f"no collection named '{name}'", param="collection")
    return {"deleted": name}
