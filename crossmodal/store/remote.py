"""A Qdrant server or cluster through qdrant-client (also its local mode, which the tests use)."""

from __future__ import annotations

from datetime import datetime, timezone

from crossmodal.errors import CrossmodalError, NotFoundError, StoreUnavailableError
from crossmodal.store.base import (
    INTEGER_FIELDS,
    KEYWORD_FIELDS,
    VECTOR_NAME,
    CollectionInfo,
    Condition,
    Hit,
    StoredPoint,
    VectorStore,
    check_collection_name,
    missing_collection,
)

CONNECT_TIMEOUT_S = 5
HNSW_EF = 512


class RemoteStore(VectorStore):
    backend = "qdrant"

    def __init__(self, url: str | None = None, api_key: str | None = None, client=None):
        from qdrant_client import QdrantClient

        self.url = url
        try:
            self.client = client or QdrantClient(url=url, api_key=api_key or None, timeout=CONNECT_TIMEOUT_S)
        except ValueError as exc:
            raise CrossmodalError(f"'{url}' is not a usable Qdrant URL ({exc})", param="store_url") from None

    def _call(self, fn, *args, **kwargs):
        """Run one client call, mapping the client's many exception types onto ours."""
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        try:
            return fn(*args, **kwargs)
        except ValueError as exc:  # qdrant-client's local mode: "Collection x not found"
            if "not found" in str(exc):
                raise NotFoundError(str(exc), param="collection") from None
            raise
        except UnexpectedResponse as exc:
            if exc.status_code == 404:
                raise NotFoundError(str(exc.content[:200]), param="collection") from None
            if exc.status_code in (401, 403):
                raise CrossmodalError("the Qdrant server refused the API key; check store_api_key",
                                      param="store_api_key", status=401) from None
            raise StoreUnavailableError(f"Qdrant answered {exc.status_code}: {exc.reason_phrase}") from None
        except ResponseHandlingException as exc:
            raise StoreUnavailableError(
                f"cannot reach Qdrant at {self.url} ({exc.source.__class__.__name__}); check the URL and that it runs"
            ) from None

    def _exists(self, name: str) -> bool:
        return bool(self._call(self.client.collection_exists, check_collection_name(name)))

    def create_collection(self, name: str, model: str, dim: int, weights: str | None = None) -> CollectionInfo:
        from qdrant_client import models

        if self._exists(name):
            raise CrossmodalError(f"collection '{name}' already exists", param="collection")
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._call(
            self.client.create_collection,
            name,
            vectors_config={VECTOR_NAME: models.VectorParams(size=int(dim), distance=models.Distance.COSINE)},
            metadata={"crossmodal_model": model, "crossmodal_dim": int(dim), "created_at": created,
                      "crossmodal_weights": weights},
        )
        for field in KEYWORD_FIELDS:
            self._call(self.client.create_payload_index, name, field, models.PayloadSchemaType.KEYWORD)
        for field in INTEGER_FIELDS:
            self._call(self.client.create_payload_index, name, field, models.PayloadSchemaType.INTEGER)
        return CollectionInfo(name, model, int(dim), 0, created, weights)

    def get_collection(self, name: str, with_count: bool = True) -> CollectionInfo:
        try:
            config = self._call(self.client.get_collection, check_collection_name(name)).config
        except NotFoundError:
            raise missing_collection(name) from None
        meta = config.metadata or {}
        if "crossmodal_model" not in meta:
            raise CrossmodalError(
                f"collection '{name}' was not made by Crossmodal (no model recorded); use another name",
                param="collection",
            )
        count = self.count(name) if with_count else 0
        return CollectionInfo(name, meta["crossmodal_model"], int(meta["crossmodal_dim"]), count,
                              meta.get("created_at"), meta.get("crossmodal_weights"))

    def list_collections(self) -> list[CollectionInfo]:
        names = sorted(c.name for c in self._call(self.client.get_collections).collections)
        infos = []
        for name in names:
            try:
                infos.append(self.get_collection(name))
            except CrossmodalError:
                continue  # a collection of some other application on the same server
        return infos

    def delete_collection(self, name: str) -> bool:
        if not self._exists(name):
            return False
        return bool(self._call(self.client.delete_collection, name))

    def existing_ids(self, name: str, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        records = self._call(self.client.retrieve, name, ids=list(ids), with_payload=False, with_vectors=False)
        return {str(r.id) for r in records}

    def retrieve(self, name: str, ids: list[str]) -> list[Hit]:
        if not ids:
            return []
        records = self._call(self.client.retrieve, name, ids=list(ids), with_payload=True, with_vectors=False)
        return [Hit(str(r.id), 0.0, dict(r.payload or {})) for r in records]

    def upsert(self, name: str, points: list[StoredPoint]) -> None:
        from qdrant_client import models

        if points:
            batch = [models.PointStruct(id=p.id, vector={VECTOR_NAME: list(map(float, p.vector))}, payload=p.payload)
                     for p in points]
            self._call(self.client.upsert, name, points=batch, wait=True)

    def query(self, name, vector, limit, conditions=(), score_threshold=None, exact=False) -> list[Hit]:
        from qdrant_client import models

        try:
            response = self._call(
                self.client.query_points,
                check_collection_name(name),
                query=list(map(float, vector)),
                using=VECTOR_NAME,
                limit=int(limit),
                query_filter=_client_filter(conditions),
                score_threshold=score_threshold,
                with_payload=True,
                search_params=models.SearchParams(hnsw_ef=HNSW_EF, exact=exact),
            )
        except NotFoundError:
            raise missing_collection(name) from None
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def count(self, name: str, conditions=()) -> int:
        return int(self._call(self.client.count, name, count_filter=_client_filter(conditions), exact=True).count)

    def close(self) -> None:
        self.client.close()


def _client_filter(conditions):
    from qdrant_client import models

    if not conditions:
        return None
    return models.Filter(must=[_client_condition(c, models) for c in conditions])


def _client_condition(c: Condition, models):
    if c.op == "eq":
        return models.FieldCondition(key=c.key, match=models.MatchValue(value=c.value))
    if c.op == "any":
        return models.FieldCondition(key=c.key, match=models.MatchAny(any=c.value))
    return models.FieldCondition(key=c.key, range=models.Range(**c.value))
