"""Checking provider settings for real: reach the store, resolve the model (its config, never its weights)."""

from __future__ import annotations

from crossmodal.encoders.catalog import (PRECISIONS, SUPPORTED_TYPES, is_late_interaction_model, is_vlm_model,
                                         model_identity, read_config, refuse_on_lean_build, resolve_model_config_dir,
                                         sentence_transformers_kind)
from crossmodal.encoders.models import pick_device
from crossmodal.engine import require_torch
from crossmodal.encoders.workspace import is_workspace_model, parse_workspace_model
from crossmodal.errors import CrossmodalError
from crossmodal.settings import Settings
from crossmodal.store import check_collection_name, open_store
from crossmodal.store.options import BINARY_MIN_DIM, StorageOptions


def validate_settings(settings: Settings) -> dict:
    """The tool pack's credentials: collection name, routes, the store, and the model."""
    check_collection_name(settings.collection)
    from crossmodal.encoders.routing import parse_routes
    from crossmodal.inputs.urls import check_service_url, check_workspace_allowlist

    check_workspace_allowlist(settings.url_allowlist)
    if settings.hub.endpoint:
        check_service_url(settings.hub.endpoint, "hf_endpoint")

    parse_routes(settings.routes)
    storage = StorageOptions.parse(settings.storage)
    store = open_store(settings.store_url, settings.store_api_key, settings.store_dir())
    storage.check(store.backend, BINARY_MIN_DIM)  # the dimension is the model's, checked when a collection is made
    try:
        collections = store.list_collections()
    finally:
        if settings.store_url:
            store.close()
    validate_model(settings)
    return {"backend": store.backend, "collections": len(collections), "model": model_identity(settings.model)}


def validate_reranker(service) -> str:
    """A rerank model's settings: a dual encoder or a text cross-encoder, and its ITM model's config."""
    from crossmodal.rerank.documents import reranker_kind

    settings = service.settings
    check_runtime(settings)
    kind = reranker_kind(service, settings.model)
    if kind == "dual":
        validate_model(settings)
    itm = service.routes.get("itm")
    if itm:
        require_torch("BLIP ITM", "itm_model", "install the full package, or leave the ITM model empty")
        try:
            model_type = read_config(resolve_model_config_dir(itm, settings.hub)).get("model_type")
        except CrossmodalError as exc:
            raise CrossmodalError(str(exc).split(": ", 1)[-1], param="itm_model") from None
        if model_type not in ("blip", "blip-2"):
            raise CrossmodalError(f"'{itm}' is a {model_type} model, not a BLIP or BLIP-2 image-text retrieval "
                                  "model such as Salesforce/blip-itm-base-coco", param="itm_model")
    return kind


def validate_model(settings: Settings) -> str:
    """Device, precision, and the model's config and processor files (a few KB): saving credentials must not
    wait for gigabytes of weights. Returns the model's type."""
    check_runtime(settings)
    if is_workspace_model(settings.model):  # Dify checks it on first use; here only its spelling can be
        parse_workspace_model(settings.model)
        return "workspace"
    refuse_on_lean_build(model_identity(settings.model))
    directory = resolve_model_config_dir(settings.model, settings.hub)
    model_type = read_config(directory).get("model_type")
    late = is_late_interaction_model(directory)
    if late or (sentence_transformers_kind(directory) == "SentenceTransformer" and is_vlm_model(directory)):
        require_torch(f"'{settings.model}', a {'late-interaction' if late else 'VLM embedding'} model,", "model",
                      "install the full package")
        return model_type
    if model_type not in SUPPORTED_TYPES:
        raise CrossmodalError(f"'{settings.model}' is a {model_type} model, not a dual encoder "
                              f"({', '.join(SUPPORTED_TYPES)}) or a VLM embedding model saved by "
                              "sentence-transformers (such as qwen3-vl-embedding-2b)", param="model")
    return model_type


def check_runtime(settings: Settings) -> None:
    pick_device(settings.device)
    if settings.precision not in PRECISIONS:
        raise CrossmodalError(f"'{settings.precision}' is not one of {', '.join(PRECISIONS)}", param="precision")
