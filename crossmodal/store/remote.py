"""A Qdrant server or cluster through qdrant-client (also its local mode, which the tests use)."""

from __future__ import annotations

import logging
import logging
from datetime import datetime, timezone

from crossmodal.errors import CollectionExists, CrossmodalError, NotFoundError, StoreUnavailableError
from crossmodal.limits import limit as current_limit
from crossmodal.store.options import INT8_QUANTILE, StorageOptions
from crossmodal.store.filters import (FILTER_FIELDS, engine_filter, indexes_to_make, new_indexes, public_payload,
                                      with_filter_fields)
from crossmodal.store.base import (
    INTEGER_FIELDS,
    KEYWORD_FIELDS,
    LEXICAL_NAME,
    MULTIVECTOR_NAME,
    NEW_LEXICAL,
    PLAIN_RRF_K,
    RRF_K,
    VECTOR_NAME,
    CollectionInfo,
    Condition,
    Hit,
    PayloadFields,
    StoredPoint,
    TextUpdate,
    VectorStore,
    check_collection_name,
    fused_score,
    lexical_record,
    missing_collection,
    sparse_terms,
    text_beyond_names,
)

logger = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5
HNSW_EF = 512
logger = logging.getLogger(__name__)


class RemoteStore(VectorStore):
    backend = "qdrant"

    def __init__(self, url: str | None = None, api_key: str | None = None, client=None):
        from qdrant_client import QdrantClient

        self.url = url
        self._storage: dict[str, StorageOptions] = {}  # each collection's options, read once (queries need them)
        # Each collection's payload indexes and their kinds (PayloadFields), read once; upserts and filters add some.
        self._indexed: dict[str, dict[str, str]] = {}
        self._has_text: set[str] = set()  # collections whose record says some point has a lexical vector
        # Weighted RRF (k and weights) needs qdrant-client 1.20's Rrf.weights and a server that takes it.
        from qdrant_client import models

        self._weighted_rrf = "weights" in getattr(getattr(models, "Rrf", None), "model_fields", {})
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
                raise NotFoundError("the Qdrant server has no such collection", param="collection") from None
            if exc.status_code == 400:
                raise CrossmodalError(f"Qdrant refused it: {qdrant_reason(exc.content)}", param=refused_param) from None
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
                          storage: StorageOptions | None = None, multivector_dim: int | None = None,
                          lexical: dict | str | None = NEW_LEXICAL) -> CollectionInfo:
        from qdrant_client import models

        storage = (storage or StorageOptions()).check(self.backend, int(dim))
        lexical = lexical_record(lexical)
        if self._exists(name):
            raise CollectionExists(name)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._call(
            self.client.create_collection,
            name,
            vectors_config=vectors_config(int(dim), storage, multivector_dim, models),
            sparse_vectors_config={LEXICAL_NAME: sparse_params(storage, models)} if lexical else None,
            on_disk_payload=storage.on_disk,
            shard_number=storage.shards,
            replication_factor=storage.replicas,
            write_consistency_factor=storage.write_consistency,
            metadata={"crossmodal_model": model, "crossmodal_dim": int(dim), "created_at": created,
                      "crossmodal_weights": weights, "crossmodal_storage": storage.as_dict(),
                      "crossmodal_filter_fields": True,
                      **({"crossmodal_multivector_dim": int(multivector_dim)} if multivector_dim else {}),
                      **({"crossmodal_lexical": lexical} if lexical else {})},
            refused_param="storage",
        )
        self._indexed[name] = {}
        self._create_indexes(name, {**{field: "keyword" for field in KEYWORD_FIELDS},
                                    **{field: "integer" for field in INTEGER_FIELDS}})
        self._storage[name] = storage
        return CollectionInfo(name, model, int(dim), 0, created, weights, storage, multivector_dim, filter_fields=True,
                              lexical=lexical)

    def _create_indexes(self, name: str, wanted: dict[str, str]) -> None:
        """Payload indexes: keyword ones prefix-enabled where the server has that (Qdrant 1.17 on), else plain."""
        from qdrant_client import models

        schemas = {"keyword": models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, prefix=True),
                   "integer": models.PayloadSchemaType.INTEGER, "float": models.PayloadSchemaType.FLOAT}
        for path, kind in wanted.items():
            try:
                self._call(self.client.create_payload_index, name, path, schemas[kind], refused_param="storage")
            except CrossmodalError:
                if kind != "keyword":
                    raise
                self._call(self.client.create_payload_index, name, path, models.PayloadSchemaType.KEYWORD)
                kind = "keyword_exact"
            self._indexed[name][path] = kind

    def get_collection(self, name: str, with_count: bool = True) -> CollectionInfo:
        try:
            described = self._call(self.client.get_collection, check_collection_name(name))
        except NotFoundError:
            raise missing_collection(name) from None
        meta = described.config.metadata or {}
        if "crossmodal_model" not in meta:
            raise CrossmodalError(
                f"collection '{name}' was not made by Crossmodal (no model recorded); use another name",
                param="collection",
            )
        count = self.count(name) if with_count else 0
        storage = StorageOptions.parse(meta.get("crossmodal_storage"))
        self._storage[name] = storage
        self._indexed.setdefault(name, {path: index_kind(info) for path, info in (described.payload_schema or {}).items()})
        lexical = meta.get("crossmodal_lexical")
        if lexical and lexical.get("text"):
            self._has_text.add(name)
        return CollectionInfo(name, meta["crossmodal_model"], int(meta["crossmodal_dim"]), count,
                              meta.get("created_at"), meta.get("crossmodal_weights"), storage,
                              meta.get("crossmodal_multivector_dim"), bool(meta.get("crossmodal_filter_fields")),
                              lexical, meta.get("crossmodal_reindex"))

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
        self._indexed.pop(name, None)
        self._has_text.discard(name)
        return bool(self._call(self.client.delete_collection, name))

    def existing_ids(self, name: str, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        records = self._call(self.client.retrieve, name, ids=list(ids), with_payload=False, with_vectors=False)
        return {str(r.id) for r in records}

    def retrieve(self, name: str, ids: list[str], with_thumbnails: bool = True) -> list[Hit]:
        if not ids:
            return []
        records = self._call(self.client.retrieve, name, ids=list(ids), with_payload=payload_selector(with_thumbnails),
                             with_vectors=False)
        return [Hit(str(r.id), 0.0, public_payload(r.payload)) for r in records]

    def upsert(self, name: str, points: list[StoredPoint]) -> None:
        from qdrant_client import models

        if not points:
            return
        batch = [models.PointStruct(id=p.id, vector=point_vectors(p), payload=with_filter_fields(p.payload))
                 for p in points]
        if name not in self._indexed:
            self.get_collection(name, with_count=False)
        # Indexes for the metadata keys and typed readings these points bring, before they are written.
        self._create_indexes(name, new_indexes([p.payload for p in batch], self._indexed[name],
                                               int(current_limit("payload_indexes"))))
        self._note_text(name, [p.payload for p in points if p.sparse is not None and len(p.sparse)])
        self._call(self.client.upsert, name, points=batch, wait=True)

    def _note_text(self, name: str, payloads: list[dict]) -> None:
        """Record in the collection's metadata that some point has text beyond its file name (once; see the
        embedded store's _note_text)."""
        if name in self._has_text or not payloads:
            return
        record = self._metadata(name).get("crossmodal_lexical")
        if text_beyond_names(payloads, record):
            self.update_record(name, {"lexical": {**record, "text": True}})
            self._has_text.add(name)

    def _metadata(self, name: str) -> dict:
        try:
            return self._call(self.client.get_collection, check_collection_name(name)).config.metadata or {}
        except NotFoundError:
            raise missing_collection(name) from None

    def payload_fields(self, name: str, wanted: dict | None = None) -> PayloadFields:
        """Which paths a point has is not kept here (None); the indexes are read once and made as asked."""
        if name not in self._indexed:
            self.get_collection(name, with_count=False)
        indexed = self._indexed[name]
        budget = int(current_limit("payload_indexes"))
        for path, kind in indexes_to_make(wanted or {}, PayloadFields(dict(indexed))).items():
            if path in indexed or len(indexed) < budget:  # past it: checked on a bounded number of hits
                self._create_indexes(name, {path: kind})
        return PayloadFields(dict(indexed))

    def _storage_of(self, name: str) -> StorageOptions:
        return self._storage.get(name) or self.get_collection(name, with_count=False).storage

    def query(self, name, vector, limit, conditions=(), score_threshold=None, exact=False,
              with_thumbnails=False) -> list[Hit]:
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
                with_payload=payload_selector(with_thumbnails),
                search_params=models.SearchParams(hnsw_ef=HNSW_EF, exact=exact, quantization=quantization),
            )
        except NotFoundError:
            raise missing_collection(name) from None
        return [Hit(str(p.id), float(p.score), public_payload(p.payload)) for p in response.points]

    def query_late(self, name, vector, multivector, limit, prefetch, conditions=(), score_threshold=None,
                   with_thumbnails=False) -> list[Hit]:
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
                query_filter=query_filter, score_threshold=score_threshold,
                with_payload=payload_selector(with_thumbnails),
                search_params=models.SearchParams(quantization=models.QuantizationSearchParams(
                    ignore=not storage.maxsim_on_codes, rescore=False)))  # as the embedded store: see options.py
        except NotFoundError:
            raise missing_collection(name) from None
        return [Hit(str(p.id), float(p.score), public_payload(p.payload)) for p in response.points]

    def query_fused(self, name, vector, sparse, limit, candidates, conditions=(), fusion="rrf", multivector=None,
                    late_candidates=None, with_thumbnails=False, lexical_weight=1.0) -> list[Hit]:
        from qdrant_client import models

        query_filter = _client_filter(conditions)
        lists = [models.Prefetch(query=models.SparseVector(indices=list(sparse.indices),
                                                           values=list(map(float, sparse.values))),
                                 using=LEXICAL_NAME, limit=int(candidates), filter=query_filter)]
        if vector is not None:
            storage = self._storage_of(name)
            params = models.SearchParams(hnsw_ef=max(HNSW_EF, int(candidates)),
                                         quantization=search_quantization(storage, models))
            dense = models.Prefetch(query=list(map(float, vector)), using=VECTOR_NAME, filter=query_filter,
                                    limit=int(candidates if multivector is None else late_candidates or candidates),
                                    params=params)
            if multivector is not None:  # late interaction: the pooled vector's nearest, ranked by MaxSim
                dense = models.Prefetch(
                    prefetch=dense, query=[list(map(float, row)) for row in multivector], using=MULTIVECTOR_NAME,
                    limit=int(candidates), filter=query_filter,
                    params=models.SearchParams(quantization=models.QuantizationSearchParams(
                        ignore=not storage.maxsim_on_codes, rescore=False)))
            lists.append(dense)
        weights, k = (float(lexical_weight), 1.0)[:len(lists)], RRF_K
        if fusion == "dbsf":
            fused = models.FusionQuery(fusion=models.Fusion.DBSF)
        elif self._weighted_rrf:
            fused = models.RrfQuery(rrf=models.Rrf(k=RRF_K, weights=list(weights)))
        else:
            fused, weights, k = models.FusionQuery(fusion=models.Fusion.RRF), (1.0,) * len(lists), PLAIN_RRF_K

        def run(query):
            return self._call(self.client.query_points, check_collection_name(name), prefetch=lists, query=query,
                              query_filter=query_filter, limit=int(limit), with_payload=payload_selector(with_thumbnails))

        try:
            try:
                response = run(fused)
            except CrossmodalError as exc:
                if not isinstance(fused, models.RrfQuery) or isinstance(exc, NotFoundError):
                    raise
                # A server before weighted RRF (it refuses the query): Qdrant's plain RRF from now on.
                logger.warning("the Qdrant server refused a weighted RRF query (%s); using its plain RRF (k = 2, "
                               "equal weights): a code query's lexical list no longer decides its first place", exc)
                self._weighted_rrf = False
                weights, k = (1.0,) * len(lists), PLAIN_RRF_K
                response = run(models.FusionQuery(fusion=models.Fusion.RRF))
        except NotFoundError:
            raise missing_collection(name) from None
        return [Hit(str(p.id), fused_score(float(p.score), fusion, weights, k), public_payload(p.payload))
                for p in response.points]

    def count(self, name: str, conditions=()) -> int:
        return int(self._call(self.client.count, name, count_filter=_client_filter(conditions), exact=True).count)

    def scroll(self, name: str, offset=None, limit: int = 256, with_vectors: bool = True):
        records, following = self._call(self.client.scroll, name, offset=offset, limit=int(limit),
                                        with_payload=payload_selector(True), with_vectors=with_vectors)
        vectors = [r.vector or {} for r in records]
        return [StoredPoint(str(r.id), list(v.get(VECTOR_NAME, [])), public_payload(r.payload),
                            v.get(MULTIVECTOR_NAME), sparse_terms(v.get(LEXICAL_NAME)))
                for r, v in zip(records, vectors)], following

    def add_lexical(self, name: str, record: dict) -> CollectionInfo:
        """A sparse vector added to an existing collection needs qdrant-client 1.20 (create_vector_name) and a
        server with that route; otherwise the error says what to do."""
        from qdrant_client import models

        described = self._call(self.client.get_collection, check_collection_name(name))
        if LEXICAL_NAME not in (described.config.params.sparse_vectors or {}):
            if not hasattr(self.client, "create_vector_name"):
                raise CrossmodalError("adding the lexical index to a collection needs qdrant-client 1.20 or later "
                                      "(pip install -U qdrant-client) and a Qdrant server that can add vectors to "
                                      "a collection", param="collection")
            self._call(self.client.create_vector_name, name, LEXICAL_NAME, models.SparseVectorNameConfig(
                sparse=models.SparseVectorConfig(modifier=models.Modifier.IDF)), refused_param="collection")
        meta = described.config.metadata or {}
        self.update_record(name, {"lexical": {**record, "text": bool((meta.get("crossmodal_lexical") or {}).get("text"))}})
        return self.get_collection(name, with_count=False)

    def update_text(self, name: str, updates: list[TextUpdate]) -> None:
        from qdrant_client import models

        if not updates:
            return
        present = self.existing_ids(name, [u.id for u in updates])
        updates = [u for u in updates if u.id in present]
        for u in updates:
            if u.payload:
                self._call(self.client.set_payload, name, payload=u.payload, points=[u.id], wait=True)
        vectors = [models.PointVectors(id=u.id, vector={LEXICAL_NAME: models.SparseVector(
            indices=list(u.sparse.indices), values=list(map(float, u.sparse.values)))})
            for u in updates if u.sparse is not None and len(u.sparse)]
        if vectors:
            self._call(self.client.update_vectors, name, points=vectors, wait=True)

    def update_record(self, name: str, changes: dict) -> None:
        """Collection metadata merges on the server; a key set to None is removed."""
        meta = {**self._metadata(name), **{f"crossmodal_{key}": value for key, value in changes.items()}}
        self._call(self.client.update_collection, name, metadata=meta)
        if (meta.get("crossmodal_lexical") or {}).get("text"):
            self._has_text.add(name)
        else:
            self._has_text.discard(name)

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
    from qdrant_client import models

    vectors = {VECTOR_NAME: list(map(float, point.vector))}
    if point.multivector is not None:
        vectors[MULTIVECTOR_NAME] = [list(map(float, row)) for row in point.multivector]
    if point.sparse is not None and len(point.sparse):  # a point without text has no lexical vector at all
        vectors[LEXICAL_NAME] = models.SparseVector(indices=list(point.sparse.indices),
                                                    values=list(map(float, point.sparse.values)))
    return vectors


def sparse_params(storage: StorageOptions, models):
    """The lexical index's sparse vector: IDF modifier (BM25 in the engine); its index on disk with the originals."""
    return models.SparseVectorParams(modifier=models.Modifier.IDF,
                                     index=models.SparseIndexParams(on_disk=True) if storage.on_disk else None)



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


def index_kind(info) -> str:
    """A server index's kind in PayloadFields' terms."""
    schema = str(getattr(info.data_type, "value", info.data_type))
    if schema == "keyword":
        return "keyword" if getattr(info.params, "prefix", None) else "keyword_exact"
    return schema if schema in ("float", "integer") else "other"


def payload_selector(with_thumbnails: bool):
    """Payloads without the typed readings, and without thumbnails unless asked (they cross the network)."""
    from qdrant_client import models

    return models.PayloadSelectorExclude(exclude=[FILTER_FIELDS] + ([] if with_thumbnails else ["thumbnail"]))


class _ClientFilters:
    """Conditions (store/base.py) as qdrant-client's models; the walk is crossmodal.store.filters'."""

    def __init__(self):
        from qdrant_client import models

        self.models = models

    def field(self, c: Condition):
        m = self.models
        if c.op == "empty":
            return m.IsEmptyCondition(is_empty=m.PayloadField(key=c.key))
        if c.op == "range":
            return m.FieldCondition(key=c.key, range=m.Range(**c.value))
        match = {"eq": lambda v: m.MatchValue(value=v), "any": lambda v: m.MatchAny(any=v),
                 "prefix": lambda v: m.MatchPrefix(prefix=v), "substring": lambda v: m.MatchSubstring(substring=v)}
        return m.FieldCondition(key=c.key, match=match[c.op](c.value))

    def group(self, must=(), should=(), must_not=()):
        return self.models.Filter(must=list(must) or None, should=list(should) or None,
                                  must_not=list(must_not) or None)


def _client_filter(conditions):
    return engine_filter(conditions, _ClientFilters()) if conditions else None


def qdrant_reason(body: bytes) -> str:
    """The reason in a Qdrant error reply ({"status": {"error": ...}}). Any other body is not echoed: store_url
    may point at a service that is not Qdrant, and its answer is not the caller's to read (the log has it)."""
    import json

    try:
        reason = json.loads(body)["status"]["error"]
        if isinstance(reason, str):
            return reason[:200]
    except (ValueError, TypeError, KeyError):
        pass
    logger.warning("a store_url server answered 400 with a body that is not Qdrant's: %r", body[:300])
    return "the server's answer is not a Qdrant error; the plugin log has it"
