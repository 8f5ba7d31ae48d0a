"""A Qdrant server or cluster through qdrant-client (also its local mode, which the tests use)."""

from __future__ import annotations

from datetime import datetime, timezone

from crossmodal.errors import CollectionExists, CrossmodalError, NotFoundError, StoreUnavailableError
from crossmodal.store.options import INT8_QUANTILE, StorageOptions
from crossmodal.store.base import (
    INTEGER_FIELDS,
    KEYWORD_FIELDS,
    MULTIVECTOR_NAME,
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
        self._storage: dict[str, StorageOptions] = {}  # each collection's options, read once (queries need them)
        try:
            self.client = client or QdrantClient(url=url, api_key=api_key or None, timeout=CONNECT_TIMEOUT_S)
        except ValueError as exc:
            raise CrossmodalError(f"'{url}' is not a usable Qdrant URL ({exc})", param="store_url") from None

    def _call(self, fn, *args, refused_param: str = "collection", **kwargs):
        """Run one client call, mapping the client's many exception types onto ours. A 400 (a request the
        server or cluster cannot satisfy) names ``refused_param`` with the server's own reason."""
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
            if exc.status_code == 400:
                raise CrossmodalError(f"Qdrant refused it: {exc.content[:300].decode('utf-8', 'replace')}",
                                      param=refused_param) from None
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

    def create_collection(self, name: str, model: str, dim: int, weights: str | None = None,
                          storage: StorageOptions | None = None, multivector_dim: int | None = None) -> CollectionInfo:
        from qdrant_client import models

        storage = (storage or StorageOptions()).check(self.backend, int(dim))
        if self._exists(name):
            raise CollectionExists(name)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._call(
            self.client.create_collection,
            name,
            vectors_config=vectors_config(int(dim), storage, multivector_dim, models),
            on_disk_payload=storage.on_disk,
            shard_number=storage.shards,
            replication_factor=storage.replicas,
            write_consistency_factor=storage.write_consistency,
            metadata={"crossmodal_model": model, "crossmodal_dim": int(dim), "created_at": created,
                      "crossmodal_weights": weights, "crossmodal_storage": storage.as_dict(),
                      **({"crossmodal_multivector_dim": int(multivector_dim)} if multivector_dim else {})},
            refused_param="storage",
        )
        for field in KEYWORD_FIELDS:
            self._call(self.client.create_payload_index, name, field, models.PayloadSchemaType.KEYWORD)
        for field in INTEGER_FIELDS:
            self._call(self.client.create_payload_index, name, field, models.PayloadSchemaType.INTEGER)
        self._storage[name] = storage
        return CollectionInfo(name, model, int(dim), 0, created, weights, storage, multivector_dim)

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
        storage = StorageOptions.parse(meta.get("crossmodal_storage"))
        self._storage[name] = storage
        return CollectionInfo(name, meta["crossmodal_model"], int(meta["crossmodal_dim"]), count,
                              meta.get("created_at"), meta.get("crossmodal_weights"), storage,
                              meta.get("crossmodal_multivector_dim"))

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
        self._storage.pop(name, None)
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
            batch = [models.PointStruct(id=p.id, vector=point_vectors(p), payload=p.payload) for p in points]
            self._call(self.client.upsert, name, points=batch, wait=True)

    def _storage_of(self, name: str) -> StorageOptions:
        return self._storage.get(name) or self.get_collection(name, with_count=False).storage

    def query(self, name, vector, limit, conditions=(), score_threshold=None, exact=False) -> list[Hit]:
        from qdrant_client import models

        quantization = None if exact else search_quantization(self._storage_of(name), models)
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
                search_params=models.SearchParams(hnsw_ef=HNSW_EF, exact=exact, quantization=quantization),
            )
        except NotFoundError:
            raise missing_collection(name) from None
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def query_late(self, name, vector, multivector, limit, prefetch, conditions=(), score_threshold=None) -> list[Hit]:
        from qdrant_client import models

        storage = self._storage_of(name)
        query_filter = _client_filter(conditions)
        first = models.Prefetch(query=list(map(float, vector)), using=VECTOR_NAME, limit=int(prefetch),
                                filter=query_filter,
                                params=models.SearchParams(hnsw_ef=max(HNSW_EF, int(prefetch)),
                                                           quantization=search_quantization(storage, models)))
        try:
            response = self._call(
                self.client.query_points, check_collection_name(name), prefetch=first,
                query=[list(map(float, row)) for row in multivector], using=MULTIVECTOR_NAME, limit=int(limit),
                query_filter=query_filter, score_threshold=score_threshold, with_payload=True,
                search_params=models.SearchParams(quantization=models.QuantizationSearchParams(
                    ignore=not storage.maxsim_on_codes, rescore=False)))  # as the embedded store: see options.py
        except NotFoundError:
            raise missing_collection(name) from None
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def count(self, name: str, conditions=()) -> int:
        return int(self._call(self.client.count, name, count_filter=_client_filter(conditions), exact=True).count)

    def scroll(self, name: str, offset=None, limit: int = 256):
        records, following = self._call(self.client.scroll, name, offset=offset, limit=int(limit),
                                        with_payload=True, with_vectors=True)
        return [StoredPoint(str(r.id), list(r.vector[VECTOR_NAME]), dict(r.payload or {}),
                            r.vector.get(MULTIVECTOR_NAME)) for r in records], following

    def vectors(self, name: str, ids: list[str]) -> dict[str, list[float]]:
        if not ids:
            return {}
        records = self._call(self.client.retrieve, name, ids=list(ids), with_payload=False,
                             with_vectors=[VECTOR_NAME])
        return {str(r.id): list(r.vector[VECTOR_NAME]) for r in records}

    def close(self) -> None:
        self.client.close()


def vectors_config(dim: int, storage: StorageOptions, multivector_dim: int | None, models) -> dict:
    """The pooled vector; with ``multivector_dim`` also token vectors (MaxSim, out of the HNSW graph: m=0)."""
    config = {VECTOR_NAME: vector_params(dim, storage, models)}
    if multivector_dim:
        config[MULTIVECTOR_NAME] = vector_params(
            multivector_dim, storage, models,
            multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
            hnsw_config=models.HnswConfigDiff(m=0))
    return config


def point_vectors(point: StoredPoint) -> dict:
    vectors = {VECTOR_NAME: list(map(float, point.vector))}
    if point.multivector is not None:
        vectors[MULTIVECTOR_NAME] = [list(map(float, row)) for row in point.multivector]
    return vectors


def search_quantization(storage: StorageOptions, models):
    """Quantised collections search the codes first, then rescore the best candidates on the originals (as the
    embedded store's search_params)."""
    if storage.quantization == "none":
        return None
    return models.QuantizationSearchParams(rescore=True, oversampling=storage.oversampling)


def vector_params(dim: int, storage: StorageOptions, models, **extra):
    """qdrant-client's vector parameters for these storage options (the quantised copy always in RAM)."""
    quantization = None
    if storage.quantization == "int8":
        quantization = models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
            type=models.ScalarType.INT8, quantile=INT8_QUANTILE, always_ram=True))
    elif storage.quantization == "binary":
        quantization = models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True))
    return models.VectorParams(size=dim, distance=models.Distance.COSINE, on_disk=storage.on_disk,
                               datatype=models.Datatype.FLOAT16 if storage.vectors == "float16" else None,
                               quantization_config=quantization, **extra)


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
