"""The plumbing every capability shares (crossmodal/service.py's Service is a Context with one method per
capability), and the notes every output carries."""

from __future__ import annotations

import numpy as np

from crossmodal.alignment.align import Calibration
from crossmodal.encoders.models import Encoder, get_encoder, loaded_encoder, model_identity
from crossmodal.encoders.routing import Route
from crossmodal.encoders.workspace import WorkspaceEncoder, is_workspace_model
from crossmodal.errors import CrossmodalError
from crossmodal.runtime import os_lock
from crossmodal.settings import Settings
from crossmodal.store import VectorStore, check_collection_name, open_store

_CALIBRATIONS: dict[tuple[str, str], Calibration] = {}
_CALIBRATIONS_LOCK = os_lock()


class ModelNotLoaded(CrossmodalError):
    """The model is not loaded (yet); loading it is the caller's choice."""

    def __init__(self, model: str):
        self.model = model
        super().__init__(f"the model {model} is not loaded yet", param="model", status=503)


class Context:
    """What every capability shares: the settings, the store, the encoders (routed by language and task), the
    rules that tie a collection to its model, and the calibration of match probabilities."""

    def __init__(self, settings: Settings | None = None, store: VectorStore | None = None, workspace_models=None):
        self.settings = settings or Settings()
        self._store = store
        # A tool node's door to the Dify workspace's own embedding models (crossmodal/encoders/workspace.py).
        self.workspace_models = workspace_models

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            s = self.settings
            self._store = open_store(s.store_url, s.store_api_key, s.store_dir())
        return self._store

    def encoder(self, model: str | None = None) -> Encoder:
        if is_workspace_model(model or self.settings.model):
            return WorkspaceEncoder(model or self.settings.model, self.workspace_models)
        return get_encoder(model or self.settings.model, self.settings.device, self.settings.hub,
                           self.settings.precision)

    @property
    def routes(self) -> dict:
        from crossmodal.encoders.routing import parse_routes

        return parse_routes(self.settings.routes)

    def routed_encoder(self, *, asked: str | None, text: str | None = None,
                       collection_model: str | None = None) -> tuple[Encoder, Route]:
        """The encoder the route table picks (see crossmodal/encoders/routing.py), and the route."""
        from crossmodal.encoders.routing import route_encoder

        route = route_encoder(self.routes, asked=asked, provider_model=self.settings.model, text=text,
                              collection_model=collection_model)
        try:
            return self.encoder(route.model), route
        except CrossmodalError as exc:
            if route.route in ("zh", "default"):
                raise CrossmodalError(f"route '{route.route}' names '{route.model}', which cannot be loaded: {exc}",
                                      param="routes") from None
            raise

    def collection_model(self, collection: str | None) -> str:
        info = self.store.get_collection(self.collection_name(collection), with_count=False)
        return self.model_for(info.model, None)

    def loaded_collection_encoder(self, collection: str | None) -> Encoder:
        """The collection's encoder if it is loaded already, else ModelNotLoaded: never loads, never waits for a
        load (what a call with a deadline of seconds needs). The model is remembered for the next start."""
        from crossmodal.encoders import warmup
        model = self.collection_model(collection)
        if is_workspace_model(model):
            return self.encoder(model)
        warmup.remember(model, self.settings.device, self.settings.precision)
        encoder = loaded_encoder(model, self.settings.device, self.settings.precision)
        if encoder is None:
            raise ModelNotLoaded(model)
        return encoder

    def collection_name(self, name: str | None) -> str:
        return check_collection_name(name or self.settings.collection)

    def model_for(self, collection_model: str, asked: str | None) -> str:
        """A collection's own model wins over 'auto'; an explicit other model is an error."""
        asked = asked or self.settings.model
        if asked in (None, "", "auto") or model_identity(asked) == collection_model:
            return collection_model
        raise CrossmodalError(
            f"the collection was made with '{collection_model}', not '{model_identity(asked)}'; "
            f"use model '{collection_model}' or 'auto'",
            param="model",
        )

    def calibration(self, encoder: Encoder) -> Calibration:
        from crossmodal.alignment.calibration import load_calibration

        data_dir = str(self.settings.store_dir())
        key = (encoder.identity, data_dir)
        with _CALIBRATIONS_LOCK:
            if key not in _CALIBRATIONS:
                _CALIBRATIONS[key] = load_calibration(encoder, data_dir)
            return _CALIBRATIONS[key]


def precision_warnings(encoder: Encoder) -> list[str]:
    """A precision or device that fell back says so in every output that used it."""
    return [encoder.precision_note] if encoder.precision_note else []


def truncation_warning(text: str, encoder: Encoder) -> str:
    return f"text truncated to the model's {encoder.context_length}-token context: '{text[:40]}...'"


def vector_list(vector: np.ndarray) -> list[float]:
    """A float32 vector as JSON-ready floats with the 9 significant digits that round-trip float32 exactly
    (about half the text of float64's repr: node outputs and endpoint bodies have size limits)."""
    return [float(f"{x:.9g}") for x in vector.tolist()]


def torch_device(device: str) -> str:
    from crossmodal.encoders.models import pick_device

    return pick_device(device)
