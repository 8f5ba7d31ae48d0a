"""The embedded store: Qdrant's own engine in-process (qdrant-edge), one shard per collection.

Layout under the data directory:
    collections/<name>/collection.json   model id, weights fingerprint, dimension, creation time
    collections/<name>/shard/            Qdrant's WAL and segments
    collections/<name>/.lock             held while a process has the shard open
    collections/<name>/thumbnails/       each image's thumbnail (JPEG), named by point id

Thumbnails live beside the shard, not in its payload: the engine keeps payloads in memory and maps its
files, so 20 KB of thumbnail per point made memory grow with the collection (1.45x peak RSS from 1k to 10k
images, benchmarks/bench_memory.py). A hit gets its thumbnail back on the way out; points stored with the
thumbnail in the payload (older collections) are served as they are.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

import qdrant_edge as qe

from crossmodal.runtime import os_lock, os_rlock
from crossmodal.errors import CollectionExists, CrossmodalError
from crossmodal.store.heap import return_freed_heap
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

# Below this many points a segment is searched exactly (brute force is fast and exact);
# above it the optimizer builds HNSW.
INDEXING_THRESHOLD = 20_000
HNSW_EF = 512  # recall@10 0.96 at 100k points, p50 under 2 ms (benchmarks/bench_store.py)
# Every write goes to the shard's write-ahead log first, and only a flush lets the log drop what the segments
# now hold: without one, a long ingest kept a second copy of everything it wrote (21 GB for 95,000 pages of
# token vectors) and an open replayed all of it. Flushing after this many bytes keeps the log near 100 MB.
FLUSH_AFTER_BYTES = 256 * 2**20
META_FILE = "collection.json"


class _OpenShard:
    def __init__(self, shard: qe.EdgeShard, lock_fd: int, storage: StorageOptions):
        self.shard = shard
        self.lock_fd = lock_fd
        self.mutex = os_rlock()
        self.storage = storage
        self.search_params = search_params(storage)
        self.unflushed_bytes = 0


# One open shard per directory per process: Qdrant's files must not be opened twice.
_OPEN: dict[str, _OpenShard] = {}
_OPEN_LOCK = os_lock()
_CREATE_LOCK = os_lock()


class EdgeStore(VectorStore):
    backend = "embedded"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        try:
            (self.root / "collections").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CrossmodalError(f"cannot create the data directory {self.root}: {exc}", param="data_dir") from None

    # -- collections --------------------------------------------------------
    def _dir(self, name: str) -> Path:
        return self.root / "collections" / check_collection_name(name)

    def create_collection(self, name: str, model: str, dim: int, weights: str | None = None,
                          storage: StorageOptions | None = None, multivector_dim: int | None = None) -> CollectionInfo:
        storage = (storage or StorageOptions()).check(self.backend, int(dim))
        directory = self._dir(name)
        with _CREATE_LOCK:  # two first ingests at once: one creates, the other finds it made
            if (directory / META_FILE).exists() or str(directory) in _OPEN:
                raise CollectionExists(name)
            return self._create(name, directory, model, dim, weights, storage, multivector_dim)

    def _create(self, name: str, directory: Path, model: str, dim: int, weights: str | None,
                storage: StorageOptions, multivector_dim: int | None) -> CollectionInfo:
        directory.mkdir(parents=True, exist_ok=True)
        info = CollectionInfo(name, model, int(dim), 0, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              weights, storage, multivector_dim)
        config = edge_config(int(dim), storage, multivector_dim)
        lock_fd = _lock(directory, name)
        shard = qe.EdgeShard.create(str(directory / "shard"), config)
        for field in KEYWORD_FIELDS:
            shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))
        for field in INTEGER_FIELDS:
            shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Integer))
        with _OPEN_LOCK:
            _OPEN[str(directory)] = _OpenShard(shard, lock_fd, storage)
        # The metadata file is written last and atomically: its presence marks a complete collection.
        _write_json(directory / META_FILE, {"model": model, "dim": int(dim), "created_at": info.created_at,
                                            "weights": weights, "storage": storage.as_dict(),
                                            **({"multivector_dim": int(multivector_dim)} if multivector_dim else {})})
        return info

    def _meta(self, name: str) -> dict:
        path = self._dir(name) / META_FILE
        if not path.is_file():
            raise missing_collection(name)
        return json.loads(path.read_text())

    def get_collection(self, name: str, with_count: bool = True) -> CollectionInfo:
        meta = self._meta(name)
        count = self.count(name) if with_count else 0
        return CollectionInfo(name, meta["model"], int(meta["dim"]), count, meta.get("created_at"),
                              meta.get("weights"), StorageOptions.parse(meta.get("storage")), meta.get("multivector_dim"))

    def list_collections(self) -> list[CollectionInfo]:
        names = sorted(p.parent.name for p in (self.root / "collections").glob(f"*/{META_FILE}"))
        return [self.get_collection(n) for n in names]

    def delete_collection(self, name: str) -> bool:
        directory = self._dir(name)
        if not (directory / META_FILE).exists():
            return False
        self._shard(name)  # takes the lock, so another process's collection is never removed under it
        with _OPEN_LOCK:
            opened = _OPEN.pop(str(directory), None)
        if opened:
            with opened.mutex:
                opened.shard.close()
                os.close(opened.lock_fd)
        (directory / META_FILE).unlink()  # first, so a half-removed directory no longer counts
        shutil.rmtree(directory, ignore_errors=True)
        return True

    # -- points ----------------------------------------------------------------
    def _shard(self, name: str) -> _OpenShard:
        directory = self._dir(name)
        key = str(directory)
        with _OPEN_LOCK:
            if key in _OPEN:
                return _OPEN[key]
            if not (directory / META_FILE).is_file():
                raise missing_collection(name)
            storage = StorageOptions.parse(json.loads((directory / META_FILE).read_text()).get("storage"))
            lock_fd = _lock(directory, name)
            try:
                shard = qe.EdgeShard.load(str(directory / "shard"))
            except Exception:
                os.close(lock_fd)
                raise
            return_freed_heap()  # the log's replay leaves hundreds of MB freed but held (store/heap.py)
            _OPEN[key] = _OpenShard(shard, lock_fd, storage)
            return _OPEN[key]

    def existing_ids(self, name: str, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        opened = self._shard(name)
        with opened.mutex:
            records = opened.shard.retrieve(list(ids), with_payload=False, with_vector=False)
        return {str(r.id) for r in records}

    def retrieve(self, name: str, ids: list[str]) -> list[Hit]:
        if not ids:
            return []
        opened = self._shard(name)
        with opened.mutex:
            records = opened.shard.retrieve(list(ids), with_payload=True, with_vector=False)
        return [self._hit(name, r.id, 0.0, r.payload) for r in records]

    def upsert(self, name: str, points: list[StoredPoint]) -> None:
        if not points:
            return
        opened = self._shard(name)
        batch, written = [], 0
        for p in points:
            payload = p.payload
            if payload.get("thumbnail"):
                # Written before the point: a crash leaves at worst an unused file, never a point without it.
                _write_bytes(self._thumbnail_path(name, p.id), base64.b64decode(payload["thumbnail"]))
                payload = {k: v for k, v in payload.items() if k != "thumbnail"}
            vectors = {VECTOR_NAME: list(map(float, p.vector))}
            written += 4 * len(p.vector)
            if p.multivector is not None:
                vectors[MULTIVECTOR_NAME] = [list(map(float, row)) for row in p.multivector]
                written += 4 * sum(map(len, p.multivector))
            batch.append(qe.Point(p.id, vectors, payload))
        with opened.mutex:
            opened.shard.update(qe.UpdateOperation.upsert_points(batch))
            opened.unflushed_bytes += written
            if opened.unflushed_bytes >= FLUSH_AFTER_BYTES:
                opened.shard.flush()
                opened.unflushed_bytes = 0

    def _thumbnail_path(self, name: str, point_id) -> Path:
        point_id = str(point_id)
        return self._dir(name) / "thumbnails" / point_id[:2] / f"{point_id}.jpg"

    def _hit(self, name: str, point_id, score: float, payload) -> Hit:
        payload = dict(payload or {})
        if payload.get("kind") == "image" and "thumbnail" not in payload and "parent_id" not in payload:
            try:
                payload["thumbnail"] = base64.b64encode(self._thumbnail_path(name, point_id).read_bytes()).decode()
            except FileNotFoundError:
                pass
        return Hit(str(point_id), score, payload)

    def finish_writes(self, name: str) -> None:
        opened = self._shard(name)
        with opened.mutex:
            opened.shard.flush()
            opened.unflushed_bytes = 0
            opened.shard.optimize()  # builds HNSW once a segment passes INDEXING_THRESHOLD
        return_freed_heap()  # merged segments' buffers

    def query(self, name, vector, limit, conditions=(), score_threshold=None, exact=False) -> list[Hit]:
        opened = self._shard(name)
        request = qe.QueryRequest(
            limit=int(limit),
            query=qe.Query.Nearest(list(map(float, vector)), using=VECTOR_NAME),
            filter=_edge_filter(conditions),
            score_threshold=score_threshold,
            with_payload=True,
            params=qe.SearchParams(hnsw_ef=HNSW_EF, exact=exact, **({} if exact else opened.search_params)),
        )
        with opened.mutex:
            points = opened.shard.query(request)
        return [self._hit(name, p.id, float(p.score), p.payload) for p in points]

    def query_late(self, name, vector, multivector, limit, prefetch, conditions=(), score_threshold=None) -> list[Hit]:
        opened = self._shard(name)
        conditions_filter = _edge_filter(conditions)
        first = qe.Prefetch(limit=int(prefetch), query=qe.Query.Nearest(list(map(float, vector)), using=VECTOR_NAME),
                            filter=conditions_filter, params=qe.SearchParams(hnsw_ef=max(HNSW_EF, int(prefetch)),
                                                                             **opened.search_params))
        request = qe.QueryRequest(
            limit=int(limit), prefetches=[first], filter=conditions_filter, score_threshold=score_threshold,
            query=qe.Query.Nearest([list(map(float, row)) for row in multivector], using=MULTIVECTOR_NAME),
            with_payload=True, params=maxsim_params(opened.storage))
        with opened.mutex:
            points = opened.shard.query(request)
        return [self._hit(name, p.id, float(p.score), p.payload) for p in points]

    def count(self, name: str, conditions=()) -> int:
        opened = self._shard(name)
        with opened.mutex:
            return int(opened.shard.count(qe.CountRequest(exact=True, filter=_edge_filter(conditions))))

    def scroll(self, name: str, offset=None, limit: int = 256):
        opened = self._shard(name)
        with opened.mutex:
            records, following = opened.shard.scroll(qe.ScrollRequest(offset=offset, limit=int(limit),
                                                                      with_payload=True, with_vector=True))
        points = [StoredPoint(str(r.id), list(r.vector[VECTOR_NAME]), self._hit(name, r.id, 0.0, r.payload).payload,
                              _rows(r.vector.get(MULTIVECTOR_NAME))) for r in records]
        return points, following

    def vectors(self, name: str, ids: list[str]) -> dict[str, list[float]]:
        if not ids:
            return {}
        opened = self._shard(name)
        with opened.mutex:
            records = opened.shard.retrieve(list(ids), with_payload=False, with_vector=True)
        return {str(r.id): list(r.vector[VECTOR_NAME]) for r in records}

    def close(self) -> None:
        """Close this store's shards (other EdgeStore objects on the same root share them)."""
        prefix = str(self.root / "collections")
        with _OPEN_LOCK:
            for key in [k for k in _OPEN if k.startswith(prefix)]:
                opened = _OPEN.pop(key)
                with opened.mutex:
                    opened.shard.close()
                    os.close(opened.lock_fd)


def edge_config(dim: int, storage: StorageOptions, multivector_dim: int | None = None) -> qe.EdgeConfig:
    """Qdrant-edge's configuration for these storage options: originals Cached (memory-mapped and kept in the
    page cache) or Cold (on disk, read as needed); the quantised copy, when there is one, Pinned in RAM. Token
    vectors (``multivector_dim``) are kept the same way, compared by MaxSim and left out of the HNSW graph
    (m=0): only the pooled vector's graph is searched."""
    vectors = {VECTOR_NAME: edge_vector(dim, storage)}
    if multivector_dim:
        vectors[MULTIVECTOR_NAME] = edge_vector(
            multivector_dim, storage, multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
            hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000))
    placement = qe.Memory.Cold if storage.on_disk else qe.Memory.Cached
    return qe.EdgeConfig(vectors=vectors, payload_memory=placement,
                         optimizers=qe.EdgeOptimizersConfig(indexing_threshold=INDEXING_THRESHOLD))


def edge_vector(dim: int, storage: StorageOptions, **extra) -> qe.EdgeVectorParams:
    quantization = None
    if storage.quantization == "int8":
        quantization = qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=INT8_QUANTILE, memory=qe.Memory.Pinned)
    elif storage.quantization == "binary":
        quantization = qe.BinaryQuantizationConfig(memory=qe.Memory.Pinned)
    placement = qe.Memory.Cold if storage.on_disk else qe.Memory.Cached
    return qe.EdgeVectorParams(
        size=dim, distance=qe.Distance.Cosine, memory=placement, quantization_config=quantization,
        datatype=qe.VectorStorageDatatype.Float16 if storage.vectors == "float16" else qe.VectorStorageDatatype.Float32,
        **extra)


def search_params(storage: StorageOptions) -> dict:
    """Quantised collections search the codes first, then rescore the best candidates on the originals."""
    if storage.quantization == "none":
        return {}
    return {"quantization": qe.QuantizationSearchParams(rescore=True, oversampling=storage.oversampling)}


def maxsim_params(storage: StorageOptions) -> qe.SearchParams:
    """MaxSim over the first stage's candidates: on the int8 codes or the originals (StorageOptions.maxsim_on_codes)."""
    if storage.maxsim_on_codes:
        return qe.SearchParams(quantization=qe.QuantizationSearchParams(ignore=False, rescore=False))
    return qe.SearchParams(quantization=qe.QuantizationSearchParams(ignore=True))


def _rows(multivector) -> list[list[float]] | None:
    return None if multivector is None else [list(row) for row in multivector]


def _edge_filter(conditions) -> qe.Filter | None:
    if not conditions:
        return None
    return qe.Filter(must=[_edge_condition(c) for c in conditions])


def _edge_condition(c: Condition):
    if c.op == "eq":
        return qe.FieldCondition(key=c.key, match=qe.MatchValue(c.value))
    if c.op == "any":
        return qe.FieldCondition(key=c.key, match=qe.MatchAny(c.value))
    return qe.FieldCondition(key=c.key, range=qe.RangeFloat(**{k: float(v) for k, v in c.value.items()}))


def _lock(directory: Path, name: str) -> int:
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CrossmodalError(
            f"collection '{name}' is open in another process (the plugin or another command); "
            "stop it or use a Qdrant server (store_url) for shared access",
            param="collection",
            status=409,
        ) from None
    return fd


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    _write_bytes(path, json.dumps(data, indent=2).encode())
