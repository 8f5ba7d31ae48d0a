"""The store interface both backends implement, and the records that cross it."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from crossmodal.errors import CollectionExists, CrossmodalError, NotFoundError
from crossmodal.store.options import StorageOptions

VECTOR_NAME = "embedding"
# A late-interaction model's token vectors (MaxSim), kept beside the pooled vector, out of the HNSW graph: the
# pooled vector's HNSW search finds candidates, MaxSim on these rescores them (query_late).
MULTIVECTOR_NAME = "late"
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# Payload fields that filters commonly use get an index when a collection is made.
KEYWORD_FIELDS = ("kind", "tags", "source", "sha256", "mime_type")
INTEGER_FIELDS = ("width", "height")


@dataclass
class CollectionInfo:
    name: str
    model: str
    dim: int
    count: int = 0
    created_at: str | None = None
    weights: str | None = None  # the model's weights_fingerprint when it was made; None: made before it was kept
    storage: StorageOptions = field(default_factory=StorageOptions)  # how its vectors are kept (store/options.py)
    multivector_dim: int | None = None  # a late-interaction model's token vectors, when it keeps them

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "model": self.model, "dimension": self.dim, "count": self.count,
               "created_at": self.created_at, "weights": self.weights, "storage": self.storage.as_dict()}
        if self.multivector_dim:
            out["multivector_dimension"] = self.multivector_dim
        return out


@dataclass
class StoredPoint:
    id: str
    vector: list[float]
    payload: dict[str, Any]
    multivector: list[list[float]] | None = None  # token vectors, in a late-interaction collection


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(float(self.score), 6), "payload": self.payload}


@dataclass(frozen=True)
class Condition:
    """One filter condition, backend-neutral: key equals / is any of / lies in a range."""

    key: str
    op: str  # "eq" | "any" | "range"
    value: Any


def check_collection_name(name: str | None) -> str:
    name = (name or "").strip()
    if not COLLECTION_NAME.match(name):
        raise CrossmodalError(
            f"'{name}' is not a valid collection name; use 1-64 letters, digits, '_' or '-', starting with a letter or digit",
            param="collection",
        )
    return name


def missing_collection(name: str) -> NotFoundError:
    return NotFoundError(f"no collection named '{name}'; ingest into it first or list collections", param="collection")


class VectorStore(ABC):
    """A set of named collections of L2-normalised vectors with payloads."""

    backend = "abstract"

    @abstractmethod
    def create_collection(self, name: str, model: str, dim: int, weights: str | None = None,
                          storage: StorageOptions | None = None, multivector_dim: int | None = None) -> CollectionInfo:
        """A new collection; ``storage`` is checked against the backend and the dimension first. With
        ``multivector_dim`` its points also keep token vectors (MaxSim, no HNSW graph; the same storage options)."""

    @abstractmethod
    def get_collection(self, name: str, with_count: bool = True) -> CollectionInfo:
        """Raise NotFoundError when the collection does not exist. ``with_count=False`` skips
        counting the points (searches only need the model)."""

    @abstractmethod
    def list_collections(self) -> list[CollectionInfo]: ...

    @abstractmethod
    def delete_collection(self, name: str) -> bool: ...

    @abstractmethod
    def existing_ids(self, name: str, ids: list[str]) -> set[str]: ...

    @abstractmethod
    def retrieve(self, name: str, ids: list[str]) -> list[Hit]:
        """Stored points by id, with payload (score 0); missing ids are left out."""

    @abstractmethod
    def upsert(self, name: str, points: list[StoredPoint]) -> None: ...

    @abstractmethod
    def query(
        self,
        name: str,
        vector: list[float],
        limit: int,
        conditions: list[Condition] = (),
        score_threshold: float | None = None,
        exact: bool = False,
    ) -> list[Hit]: ...

    @abstractmethod
    def query_late(self, name: str, vector: list[float], multivector: list[list[float]], limit: int,
                   prefetch: int, conditions: list[Condition] = (), score_threshold: float | None = None
                   ) -> list[Hit]:
        """Two stages in the engine: ``prefetch`` candidates by the pooled ``vector`` (HNSW), then the best
        ``limit`` of them by MaxSim of ``multivector`` against their token vectors (the score: the sum over
        query tokens of each one's best cosine)."""

    @abstractmethod
    def count(self, name: str, conditions: list[Condition] = ()) -> int: ...

    @abstractmethod
    def scroll(self, name: str, offset=None, limit: int = 256) -> tuple[list[StoredPoint], Any]:
        """Points in id order with their vectors and full payloads (thumbnails included), and the offset of
        the next page (None after the last): what a copy of the collection needs."""

    @abstractmethod
    def vectors(self, name: str, ids: list[str]) -> dict[str, list[float]]:
        """Stored vectors by id (missing ids are left out)."""

    def finish_writes(self, name: str) -> None:
        """Called after an ingest: build indexes, flush. Backends that index on their own do nothing."""

    def close(self) -> None:
        """Release files and connections."""

    def ensure_collection(self, name: str, model: str, dim: int, weights: str | None = None,
                          storage: StorageOptions | None = None, strict: bool = False,
                          multivector_dim: int | None = None) -> CollectionInfo:
        """The collection, made on first use (with ``storage``, and token vectors of ``multivector_dim`` for a
        late-interaction model); a clear error if another model, or other weights, made it, or (``strict``: the
        caller asked for these options) if it keeps its vectors otherwise."""
        try:
            info = self.get_collection(name, with_count=False)
        except NotFoundError:
            try:
                return self.create_collection(name, model, dim, weights, storage, multivector_dim)
            except CollectionExists:  # another call made it meanwhile (two first ingests at once): use it
                info = self.get_collection(name, with_count=False)
        check_model(info, model, dim)
        check_weights(info, weights)
        if strict and storage is not None and storage != info.storage:
            raise CrossmodalError(f"collection '{name}' exists with storage '{info.storage.describe()}'; storage "
                                  "options apply when a collection is made: leave them empty, or use a new "
                                  "collection (python -m crossmodal collections migrate copies one)", param="storage")
        return info


def check_model(info: CollectionInfo, model: str, dim: int) -> None:
    if info.model != model or info.dim != dim:
        raise CrossmodalError(
            f"collection '{info.name}' was made with model '{info.model}' ({info.dim}-d); "
            f"it cannot take vectors of '{model}' ({dim}-d). Use model '{info.model}' (or 'auto'), "
            "or another collection",
            param="model",
        )


def check_weights(info: CollectionInfo, weights: str | None) -> None:
    """Same model name, other files (a retrained local model, replaced weights): the old vectors and the
    new ones live in different spaces, so neither searching nor adding may mix them."""
    if info.weights and weights and info.weights != weights:
        raise CrossmodalError(
            f"collection '{info.name}' holds vectors of '{info.model}' with weights {info.weights}, but the "
            f"files of '{info.model}' now have weights {weights}: the model was replaced and the two sets of "
            f"vectors are not comparable. Ingest into a new collection (or delete '{info.name}' and ingest "
            "again), or restore the model files it was made with",
            param="model",
        )
