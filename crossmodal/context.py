"""The plumbing every capability shares (crossmodal/service.py's Service is a Context with one method per
capability), and the notes every output carries."""

from __future__ import annotations

import numpy as np

from crossmodal.alignment.align import Calibration
from crossmodal.encoders.model_ref import ModelRef, base_name, has_options
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

    def __reduce__(self):
        # A call crosses to the worker process with its settings and the workspace's models (a handle back to
        # this process, crossmodal/dify/workspace.py); the store and the encoders are the worker's own.
        return type(self), (self.settings, None, self.workspace_models)

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            s = self.settings
            self._store = open_store(s.store_url, s.store_api_key, s.store_dir())
        return self._store

    def encoder(self, model: str | None = None) -> Encoder:
        if is_workspace_model(model or self.settings.model):
            return WorkspaceEncoder(model or self.settings.model, self.workspace_models)
        return get_encoder(self.model_ref(model), self.settings.device, self.settings.hub, self.settings.precision)

    def model_ref(self, model: str | None = None) -> str:
        """The model with the settings' VLM options (dimension, max_pixels, instruction) when it takes options
        and names none of its own; a collection's model always names its own."""
        from crossmodal.encoders.catalog import takes_options

        name = model or self.settings.model
        options = self.settings.model_options
        if not options or has_options(name) or is_workspace_model(name) or not takes_options(name, self.settings.hub):
            return name
        return str(ModelRef(model_identity(name), options))

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
        encoder = loaded_encoder(model, self.settings.device, self.settings.precision, self.settings.hub)
        if encoder is None:
            raise ModelNotLoaded(model)
        return encoder

    def model_loading(self, model: str) -> bool:
        """Whether ``model`` is loading in this process now (with these settings' device, precision and hub)."""
        from crossmodal.encoders.models import loading

        return loading(model, self.settings.device, self.settings.precision, self.settings.hub)

    def collection_name(self, name: str | None) -> str:
        return check_collection_name(name or self.settings.collection)

    def model_for(self, collection_model: str, asked: str | None) -> str:
        """A collection's own model wins over 'auto'; an explicit other model is an error, and so is the same
        VLM model asked at another dimension or with another instruction than the collection was made with."""
        asked = asked or self.settings.model
        if asked in (None, "", "auto") or model_identity(asked) == collection_model:
            return collection_model
        if model_identity(base_name(asked)) == base_name(collection_model):
            check_same_options(ModelRef.parse(model_identity(self.model_ref(asked))), ModelRef.parse(collection_model))
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


def check_same_options(asked: ModelRef, made: ModelRef) -> None:
    """The options that decide vectors, as asked (settings or the model parameter) against the collection's."""
    if asked.options.dimension is not None and asked.options.dimension != made.options.dimension:
        raise CrossmodalError(
            f"the collection holds {made.options.dimension}-d vectors of '{made.name}', but {asked.options.dimension} "
            f"is asked; set dimension to {made.options.dimension} (or empty) for this collection, or use another one",
            param="dimension")
    if asked.options.instruction is not None and asked.options.instruction != made.options.instruction:
        raise CrossmodalError(
            f"the collection's queries are embedded with the instruction {made.options.instruction!r}, not "
            f"{asked.options.instruction!r}; one collection keeps one prompt style: clear the instruction setting "
            "or use another collection", param="instruction")


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
