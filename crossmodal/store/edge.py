"""The embedded store: Qdrant's own engine in-process (qdrant-edge), one shard per collection.

Layout under the data directory:
    collections/<name>/collection.json   model id, weights fingerprint, dimension, creation time, and the count
                                         of points when the collection was last written or closed
    collections/<name>/shard/            Qdrant's WAL and segments
    collections/<name>/.lock             held while a process has the shard open
    collections/<name>/thumbnails/       each image's thumbnail (JPEG), named by point id

Thumbnails live beside the shard, not in its payload: the engine keeps payloads in memory and maps its
files, so 20 KB of thumbnail per point made memory grow with the collection (1.45x peak RSS from 1k to 10k
images, benchmarks/bench_memory.py). A hit gets its thumbnail back on the way out when the caller asks for it;
points stored with the thumbnail in the payload (older collections) are served as they are.

Open shards are a budget (``open_collections``): each holds about a hundred memory maps (ten per payload index)
and its search threads, so a plugin with a thousand collections must not hold them all (the kernel's default
vm.max_map_count, 65,530, is reached at about 630). A call opens its collection's shard and counts itself in
(``_using``); past the budget the least recently used shard that no call is using is closed, as is any left
unused for ``IDLE_CLOSE_S``. A shard is closed only while no call uses it, and its ``.lock`` is held exactly
while it is open. Listing collections opens none: it reads each collection.json.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import qdrant_edge as qe

from crossmodal.errors import CollectionExists, CrossmodalError
from crossmodal.limits import limit as current_limit, register
from crossmodal.runtime import os_lock, os_rlock
from crossmodal.store.base import (
    INTEGER_FIELDS,
    KEYWORD_FIELDS,
    LEXICAL_NAME,
    MULTIVECTOR_NAME,
    NEW_LEXICAL,
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
from crossmodal.store.filters import (FILTER_FIELDS, engine_filter, indexes_to_make, new_indexes, present_paths,
                                      public_payload, with_filter_fields)
from crossmodal.store.heap import return_freed_heap
from crossmodal.store.options import INT8_QUANTILE, StorageOptions

logger = logging.getLogger(__name__)

# Below this many KB of vectors a segment is searched exactly (brute force is fast and exact): 10,000 512-d
# float32 points; above it the optimizer builds HNSW.
INDEXING_THRESHOLD = 20_000
HNSW_EF = 512  # recall@10 0.96 at 100k points, p50 under 2 ms (benchmarks/bench_store.py)
# Every write goes to the shard's write-ahead log first, and only a flush lets the log drop what the segments
# now hold: without one, a long ingest kept a second copy of everything it wrote (21 GB for 95,000 pages of
# token vectors) and an open replayed all of it. Flushing after this many bytes keeps the log near 100 MB.
FLUSH_AFTER_BYTES = 256 * 2**20
META_FILE = "collection.json"
OPEN_SHARDS = register(
    "open_collections", 32, "collections", "embedded collections open at once (each holds about 100 memory maps, "
    "10 more per payload index); past it the least recently used one no call is using is closed",
    cap=1024, minimum=2)
IDLE_CLOSE_S = 600  # a shard no call used for this long is closed at the next store call
MAX_PRESENT_FIELDS = 4096  # metadata keys and readings listed in collection.json; past it presence is unknown
# Threads of each new shard's search pool (the engine's default follows the host's CPUs: 8 a shard here).
SEARCH_THREADS = max(1, min(4, os.cpu_count() or 1))
HIDDEN = [FILTER_FIELDS]  # payload fields never returned
NO_THUMBNAILS = [FILTER_FIELDS, "thumbnail"]  # and the thumbnail of an older collection's payload


class _OpenShard:
    """A shard open in this process, with the file lock that says so, and how many calls use it."""

    def __init__(self, directory: Path, shard: qe.EdgeShard, lock_fd: int, storage: StorageOptions,
                 present: list | None, has_text: bool = False):
        self.directory = directory
        self.shard = shard
        self.lock_fd = lock_fd
        self.mutex = os_rlock()
        self.storage = storage
        self.search_params = search_params(storage)
        self.unflushed_bytes = 0
        self.indexed = {path: _index_kind(info) for path, info in shard.info().payload_schema.items()}
        self.present = None if present is None else set(present)  # paths under metadata and _filter points have
        self.has_text = has_text  # whether some point has a lexical vector (recorded in collection.json)
        self.users = 0  # calls between _using's entry and exit (changed under _OPEN_LOCK)
        self.last_used = time.monotonic()
        self.closed = False

    def fields(self) -> PayloadFields:
        return PayloadFields(dict(self.indexed), None if self.present is None else frozenset(self.present))


# One open shard per directory per process (Qdrant's files must not be opened twice), least recently used first.
_OPEN: OrderedDict[str, _OpenShard] = OrderedDict()
_OPEN_LOCK = os_lock()
_CREATE_LOCK = os_lock()  # creating and deleting collections


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
                          storage: StorageOptions | None = None, multivector_dim: int | None = None,
                          lexical: dict | str | None = NEW_LEXICAL) -> CollectionInfo:
        storage = (storage or StorageOptions()).check(self.backend, int(dim))
        directory = self._dir(name)
        with _CREATE_LOCK:  # two first ingests at once: one creates, the other finds it made
            if (directory / META_FILE).exists() or str(directory) in _OPEN:
                raise CollectionExists(name)
            return self._create(name, directory, model, dim, weights, storage, multivector_dim,
                                lexical_record(lexical))

    def _create(self, name: str, directory: Path, model: str, dim: int, weights: str | None,
                storage: StorageOptions, multivector_dim: int | None, lexical: dict | None) -> CollectionInfo:
        directory.mkdir(parents=True, exist_ok=True)
        info = CollectionInfo(name, model, int(dim), 0, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              weights, storage, multivector_dim, filter_fields=True, lexical=lexical)
        config = edge_config(int(dim), storage, multivector_dim, lexical=lexical is not None)
        lock_fd = _lock(directory, name)
        try:
            shard = qe.EdgeShard.create(str(directory / "shard"), config)
            for field in KEYWORD_FIELDS:
                shard.update(qe.UpdateOperation.create_field_index(field, qe.KeywordIndexParams(prefix=True)))
            for field in INTEGER_FIELDS:
                shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Integer))
        except Exception:
            os.close(lock_fd)
            raise
        with _OPEN_LOCK:  # closed past the budget by the next call (not before its collection.json is written)
            _OPEN[str(directory)] = _OpenShard(directory, shard, lock_fd, storage, [],
                                               has_text=bool(lexical and lexical.get("text")))
        # The metadata file is written last and atomically: its presence marks a complete collection.
        _write_json(directory / META_FILE, {"model": model, "dim": int(dim), "created_at": info.created_at,
                                            "weights": weights, "storage": storage.as_dict(), "count": 0,
                                            "filter_fields": True, "fields": [],
                                            **({"multivector_dim": int(multivector_dim)} if multivector_dim else {}),
                                            **({"lexical": lexical} if lexical else {})})
        return info

    def _meta(self, name: str) -> dict:
        path = self._dir(name) / META_FILE
        if not path.is_file():
            raise missing_collection(name)
        return json.loads(path.read_text())

    def get_collection(self, name: str, with_count: bool = True) -> CollectionInfo:
        meta = self._meta(name)
        count = self.count(name) if with_count else 0
        return _info(name, meta, count)

    def list_collections(self) -> list[CollectionInfo]:
        """Read from each collection.json, opening no shard: the count is the live one of a shard open and
        idle, else the one recorded when the collection was last written or closed."""
        infos = []
        for path in sorted((self.root / "collections").glob(f"*/{META_FILE}")):
            try:
                meta = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # removed meanwhile, or half-written by a crash: not a complete collection
            count = _idle_count(str(path.parent))
            if count is None:
                count = meta.get("count")
            if count is None:  # made before counts were recorded: counted once (recorded when it closes)
                count = self._count_unrecorded(path.parent.name)
            infos.append(_info(path.parent.name, meta, int(count)))
        return infos

    def _count_unrecorded(self, name: str) -> int:
        try:
            return self.count(name)
        except CrossmodalError:  # open in another process, or removed meanwhile: its count is not known here
            return 0

    def delete_collection(self, name: str) -> bool:
        directory = self._dir(name)
        with _CREATE_LOCK:
            if not (directory / META_FILE).exists():
                return False
            # Opening takes the file lock, so another process's collection is never removed under it.
            with self._locked(name) as opened:
                # The meta file goes in the same step as the open entry (under _OPEN_LOCK): a call arriving
                # after it finds no collection rather than a file lock this shard still holds ("open in another
                # process"), and a half-removed directory no longer counts.
                with _OPEN_LOCK:
                    (directory / META_FILE).unlink()
                    if _OPEN.get(str(directory)) is opened:
                        del _OPEN[str(directory)]
                _close(opened, record=False)  # calls waiting for it find it closed: "no collection named"
            shutil.rmtree(directory, ignore_errors=True)
        return True

    # -- open shards -----------------------------------------------------------------
    @contextmanager
    def _using(self, name: str) -> Iterator[_OpenShard]:
        """The collection's shard, open, counted as in use until the block ends (so it is not closed under it)."""
        directory = self._dir(name)
        key = str(directory)
        with _OPEN_LOCK:
            opened = _OPEN.get(key)
            if opened is None:
                opened = _OPEN[key] = _load(directory, name)
            _OPEN.move_to_end(key)
            opened.users += 1
            _close_unused()
        try:
            yield opened
        finally:
            with _OPEN_LOCK:
                opened.users -= 1
                opened.last_used = time.monotonic()
                _close_unused()

    @contextmanager
    def _locked(self, name: str) -> Iterator[_OpenShard]:
        """The shard, in use and with its mutex held: what each operation runs under."""
        with self._using(name) as opened, opened.mutex:
            if opened.closed:  # deleted while this call waited for it
                raise missing_collection(name)
            yield opened

    def open_shards(self) -> list[str]:
        """The collections of this data directory whose shards are open now (for tests and metrics)."""
        prefix = str(self.root / "collections") + os.sep
        with _OPEN_LOCK:
            return [Path(key).name for key in _OPEN if key.startswith(prefix)]

    # -- points ----------------------------------------------------------------
    def existing_ids(self, name: str, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        with self._locked(name) as opened:
            records = opened.shard.retrieve(list(ids), with_payload=False, with_vector=False)
        return {str(r.id) for r in records}

    def retrieve(self, name: str, ids: list[str], with_thumbnails: bool = True) -> list[Hit]:
        if not ids:
            return []
        with self._locked(name) as opened:
            records = opened.shard.retrieve(list(ids), with_payload=_payload_selector(with_thumbnails),
                                            with_vector=False)
        return [self._hit(name, r.id, 0.0, r.payload, with_thumbnails) for r in records]

    def upsert(self, name: str, points: list[StoredPoint]) -> None:
        if not points:
            return
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
            if p.sparse is not None and len(p.sparse):  # a point without text has no lexical vector at all
                vectors[LEXICAL_NAME] = qe.SparseVector(list(p.sparse.indices), list(map(float, p.sparse.values)))
                written += 8 * len(p.sparse)
            batch.append(qe.Point(p.id, vectors, with_filter_fields(payload)))
        with self._locked(name) as opened:
            payloads = [point.payload for point in batch]
            _note_text(opened, [point.payload for point in batch if LEXICAL_NAME in point.vector])
            _note_present(opened, payloads)
            _index_new_fields(opened, payloads)
            opened.shard.update(qe.UpdateOperation.upsert_points(batch))
            opened.unflushed_bytes += written
            if opened.unflushed_bytes >= FLUSH_AFTER_BYTES:
                opened.shard.flush()
                opened.unflushed_bytes = 0

    def _thumbnail_path(self, name: str, point_id) -> Path:
        point_id = str(point_id)
        return self._dir(name) / "thumbnails" / point_id[:2] / f"{point_id}.jpg"

    def _hit(self, name: str, point_id, score: float, payload, with_thumbnail: bool) -> Hit:
        """A hit as callers see it: no typed readings; an image's thumbnail read from its file only when asked."""
        payload = public_payload(payload)
        if (with_thumbnail and payload.get("kind") == "image" and "thumbnail" not in payload
                and "parent_id" not in payload):
            try:
                payload["thumbnail"] = base64.b64encode(self._thumbnail_path(name, point_id).read_bytes()).decode()
            except FileNotFoundError:
                pass
        return Hit(str(point_id), score, payload)

    def finish_writes(self, name: str) -> None:
        with self._locked(name) as opened:
            opened.shard.flush()
            opened.unflushed_bytes = 0
            opened.shard.optimize()  # builds HNSW once a segment passes INDEXING_THRESHOLD
            _record_count(opened)
        return_freed_heap()  # merged segments' buffers

    def payload_fields(self, name: str, wanted: dict | None = None) -> PayloadFields:
        with self._locked(name) as opened:
            budget = int(current_limit("payload_indexes"))
            for path, kind in indexes_to_make(wanted or {}, opened.fields()).items():
                if path in opened.indexed or len(opened.indexed) < budget:  # past it: checked on bounded hits
                    _make_index(opened, path, kind)  # over the points already there: once per path
            return opened.fields()

    def query(self, name, vector, limit, conditions=(), score_threshold=None, exact=False,
              with_thumbnails=False) -> list[Hit]:
        with self._locked(name) as opened:
            request = qe.QueryRequest(
                limit=int(limit),
                query=qe.Query.Nearest(list(map(float, vector)), using=VECTOR_NAME),
                filter=engine_filter(conditions, EDGE_FILTERS),
                score_threshold=score_threshold,
                with_payload=_payload_selector(with_thumbnails),
                params=qe.SearchParams(hnsw_ef=HNSW_EF, exact=exact, **({} if exact else opened.search_params)),
            )
            points = opened.shard.query(request)
        return [self._hit(name, p.id, float(p.score), p.payload, with_thumbnails) for p in points]

    def query_late(self, name, vector, multivector, limit, prefetch, conditions=(), score_threshold=None,
                   with_thumbnails=False) -> list[Hit]:
        conditions_filter = engine_filter(conditions, EDGE_FILTERS)
        with self._locked(name) as opened:
            first = qe.Prefetch(limit=int(prefetch),
                                query=qe.Query.Nearest(list(map(float, vector)), using=VECTOR_NAME),
                                filter=conditions_filter, params=qe.SearchParams(hnsw_ef=max(HNSW_EF, int(prefetch)),
                                                                                 **opened.search_params))
            request = qe.QueryRequest(
                limit=int(limit), prefetches=[first], filter=conditions_filter, score_threshold=score_threshold,
                query=qe.Query.Nearest([list(map(float, row)) for row in multivector], using=MULTIVECTOR_NAME),
                with_payload=_payload_selector(with_thumbnails), params=maxsim_params(opened.storage))
            points = opened.shard.query(request)
        return [self._hit(name, p.id, float(p.score), p.payload, with_thumbnails) for p in points]

    def query_fused(self, name, vector, sparse, limit, candidates, conditions=(), fusion="rrf", multivector=None,
                    late_candidates=None, with_thumbnails=False, lexical_weight=1.0) -> list[Hit]:
        conditions_filter = engine_filter(conditions, EDGE_FILTERS)
        with self._locked(name) as opened:
            lists = [qe.Prefetch(limit=int(candidates), filter=conditions_filter,
                                 query=qe.Query.Nearest(qe.SparseVector(list(sparse.indices),
                                                                        list(map(float, sparse.values))),
                                                        using=LEXICAL_NAME))]
            if vector is not None:
                dense = qe.Query.Nearest(list(map(float, vector)), using=VECTOR_NAME)
                params = qe.SearchParams(hnsw_ef=max(HNSW_EF, int(candidates)), **opened.search_params)
                if multivector is None:
                    lists.append(qe.Prefetch(limit=int(candidates), query=dense, filter=conditions_filter,
                                             params=params))
                else:  # late interaction: the pooled vector's nearest, ranked by MaxSim, is the dense list
                    pooled = qe.Prefetch(limit=int(late_candidates or candidates), query=dense,
                                         filter=conditions_filter, params=params)
                    lists.append(qe.Prefetch(
                        limit=int(candidates), prefetches=[pooled], filter=conditions_filter,
                        query=qe.Query.Nearest([list(map(float, row)) for row in multivector], using=MULTIVECTOR_NAME),
                        params=maxsim_params(opened.storage)))
            weights = (float(lexical_weight), 1.0)[:len(lists)]
            fused = qe.Fusion.Rrf(k=RRF_K, weights=list(weights)) if fusion == "rrf" else qe.Fusion.Dbsf()
            request = qe.QueryRequest(limit=int(limit), prefetches=lists, filter=conditions_filter, query=fused,
                                      with_payload=_payload_selector(with_thumbnails))
            points = opened.shard.query(request)
        return [self._hit(name, p.id, fused_score(float(p.score), fusion, weights), p.payload, with_thumbnails)
                for p in points]

    def count(self, name: str, conditions=()) -> int:
        with self._locked(name) as opened:
            return int(opened.shard.count(qe.CountRequest(exact=True,
                                                          filter=engine_filter(conditions, EDGE_FILTERS))))

    def scroll(self, name: str, offset=None, limit: int = 256, with_vectors: bool = True):
        with self._locked(name) as opened:
            records, following = opened.shard.scroll(qe.ScrollRequest(
                offset=offset, limit=int(limit), with_payload=qe.PayloadSelector.Exclude(HIDDEN),
                with_vector=with_vectors))
        vectors = [r.vector or {} for r in records]
        points = [StoredPoint(str(r.id), list(v.get(VECTOR_NAME, [])), self._hit(name, r.id, 0.0, r.payload, True).payload,
                              _rows(v.get(MULTIVECTOR_NAME)), sparse_terms(v.get(LEXICAL_NAME)))
                  for r, v in zip(records, vectors)]
        return points, following

    def add_lexical(self, name: str, record: dict) -> CollectionInfo:
        with self._locked(name) as opened:
            meta = json.loads((opened.directory / META_FILE).read_text())
            if not meta.get("lexical"):  # (made again after a crash before the record: the engine keeps what it has)
                opened.shard.update(qe.UpdateOperation.create_sparse_vector(LEXICAL_NAME, modifier=qe.Modifier.Idf))
                opened.shard.flush()  # the new vector's config is on disk before the record says it exists
            lexical = {**record, "text": bool((meta.get("lexical") or {}).get("text"))}
            _write_json(opened.directory / META_FILE, {**meta, "lexical": lexical})
        return self.get_collection(name, with_count=False)

    def update_text(self, name: str, updates: list[TextUpdate]) -> None:
        if not updates:
            return
        with self._locked(name) as opened:
            present = {str(r.id) for r in opened.shard.retrieve([u.id for u in updates], with_payload=False,
                                                                 with_vector=False)}
            updates = [u for u in updates if u.id in present]
            for u in updates:
                if u.payload:
                    opened.shard.update(qe.UpdateOperation.set_payload([u.id], u.payload))
            vectors = [qe.PointVectors(u.id, {LEXICAL_NAME: qe.SparseVector(list(u.sparse.indices),
                                                                             list(map(float, u.sparse.values)))})
                       for u in updates if u.sparse is not None and len(u.sparse)]
            if vectors:
                opened.shard.update(qe.UpdateOperation.update_vectors(vectors))

    def update_record(self, name: str, changes: dict) -> None:
        with self._locked(name) as opened:
            meta_path = opened.directory / META_FILE
            meta = {**json.loads(meta_path.read_text()), **changes}
            _write_json(meta_path, {k: v for k, v in meta.items() if v is not None})
            opened.has_text = bool((meta.get("lexical") or {}).get("text"))

    def vectors(self, name: str, ids: list[str]) -> dict[str, list[float]]:
        if not ids:
            return {}
        with self._locked(name) as opened:
            records = opened.shard.retrieve(list(ids), with_payload=False, with_vector=True)
        return {str(r.id): list(r.vector[VECTOR_NAME]) for r in records}

    def close(self) -> None:
        """Close this store's shards (other EdgeStore objects on the same root share them); calls using one
        finish first."""
        prefix = str(self.root / "collections") + os.sep
        with _OPEN_LOCK:
            closing = [_OPEN.pop(key) for key in [k for k in _OPEN if k.startswith(prefix)]]
        for opened in closing:
            _close(opened)


def _info(name: str, meta: dict, count: int) -> CollectionInfo:
    return CollectionInfo(name, meta["model"], int(meta["dim"]), count, meta.get("created_at"), meta.get("weights"),
                          StorageOptions.parse(meta.get("storage")), meta.get("multivector_dim"),
                          bool(meta.get("filter_fields")), meta.get("lexical"), meta.get("reindex"))



def _load(directory: Path, name: str) -> _OpenShard:
    """Open a collection's shard (under _OPEN_LOCK): its file lock first, then the engine's files."""
    if not (directory / META_FILE).is_file():
        raise missing_collection(name)
    meta = json.loads((directory / META_FILE).read_text())
    lock_fd = _lock(directory, name)
    try:
        opened = _OpenShard(directory, qe.EdgeShard.load(str(directory / "shard")), lock_fd,
                            StorageOptions.parse(meta.get("storage")), meta.get("fields"),
                            has_text=bool((meta.get("lexical") or {}).get("text")))
    except Exception:
        os.close(lock_fd)
        raise
    return_freed_heap()  # the log's replay leaves hundreds of MB freed but held (store/heap.py)
    return opened


def _close_unused() -> None:
    """Close (under _OPEN_LOCK) the least recently used shards no call is using while more than the budget
    are open, and any left unused for IDLE_CLOSE_S."""
    budget = int(current_limit("open_collections"))
    idle_since = time.monotonic() - IDLE_CLOSE_S
    for key, opened in list(_OPEN.items()):
        if opened.users == 0 and (len(_OPEN) > budget or opened.last_used < idle_since):
            del _OPEN[key]
            _close(opened)


def _close(opened: _OpenShard, record: bool = True) -> None:
    """Close a shard, after the call holding it (if any) is done, and release its file lock; first write its
    count into collection.json (``record``), which listings read."""
    with opened.mutex:
        if opened.closed:
            return
        try:
            if record:
                _record_count(opened)
        except Exception:  # noqa: BLE001 - a listing shows an older count; the shard must close all the same
            logger.warning("could not record the count of %s", opened.directory.name, exc_info=True)
        finally:
            opened.closed = True
            try:
                opened.shard.close()
            finally:
                os.close(opened.lock_fd)


def _record_count(opened: _OpenShard) -> None:
    meta_path = opened.directory / META_FILE
    meta = json.loads(meta_path.read_text())
    count = int(opened.shard.count(qe.CountRequest(exact=True)))
    if meta.get("count") != count:
        _write_json(meta_path, {**meta, "count": count})


def _idle_count(key: str) -> int | None:
    """The live count of an open shard that no operation holds now (None: not open, or busy)."""
    with _OPEN_LOCK:
        opened = _OPEN.get(key)
        if opened is None or not opened.mutex.acquire(blocking=False):
            return None
        try:
            return None if opened.closed else int(opened.shard.count(qe.CountRequest(exact=True)))
        finally:
            opened.mutex.release()


def _index_new_fields(opened: _OpenShard, payloads: list[dict]) -> None:
    """Payload indexes for the metadata keys and typed readings these payloads bring, made before they are
    written (so the engine keeps them up to date), within the ``payload_indexes`` budget."""
    for path, kind in new_indexes(payloads, opened.indexed, int(current_limit("payload_indexes"))).items():
        _make_index(opened, path, kind)


def _make_index(opened: _OpenShard, path: str, kind: str) -> None:
    schema = qe.KeywordIndexParams(prefix=True) if kind == "keyword" else qe.PayloadSchemaType.Float
    opened.shard.update(qe.UpdateOperation.create_field_index(path, schema))
    opened.indexed[path] = kind


def _index_kind(info) -> str:
    """An index's kind in PayloadFields' terms."""
    if info.data_type == qe.PayloadSchemaType.Keyword:
        return "keyword" if getattr(info.params, "prefix", None) else "keyword_exact"
    return {qe.PayloadSchemaType.Float: "float", qe.PayloadSchemaType.Integer: "integer"}.get(info.data_type, "other")


def _note_present(opened: _OpenShard, payloads: list[dict]) -> None:
    """Add the dynamic paths these payloads bring to collection.json's list, before they are written (a crash
    leaves a path listed that no point has, which only costs a filter its shortcut)."""
    if opened.present is None:
        return
    new = set().union(*map(present_paths, payloads)) - opened.present
    if not new:
        return
    opened.present |= new
    meta_path = opened.directory / META_FILE
    meta = json.loads(meta_path.read_text())
    if len(opened.present) > MAX_PRESENT_FIELDS:
        opened.present = None  # too many keys to list: presence unknown from now on
    _write_json(meta_path, {**meta, "fields": None if opened.present is None else sorted(opened.present)})


def _note_text(opened: _OpenShard, payloads: list[dict]) -> None:
    """Record that some point has text beyond its file name (text_beyond_names; the searcher's default mode reads
    it), before the first such point is written: a crash leaves at worst the record without the point."""
    if opened.has_text or not payloads:
        return
    meta_path = opened.directory / META_FILE
    meta = json.loads(meta_path.read_text())
    if text_beyond_names(payloads, meta.get("lexical")):
        _write_json(meta_path, {**meta, "lexical": {**meta["lexical"], "text": True}})
        opened.has_text = True


def _payload_selector(with_thumbnails: bool):
    return qe.PayloadSelector.Exclude(HIDDEN if with_thumbnails else NO_THUMBNAILS)


def edge_config(dim: int, storage: StorageOptions, multivector_dim: int | None = None,
                lexical: bool = False) -> qe.EdgeConfig:
    """Qdrant-edge's configuration for these storage options: originals Cached (memory-mapped and kept in the
    page cache) or Cold (on disk, read as needed); the quantised copy, when there is one, Pinned in RAM. Token
    vectors (``multivector_dim``) are kept the same way, compared by MaxSim and left out of the HNSW graph
    (m=0): only the pooled vector's graph is searched. ``lexical``: the sparse vector of the lexical index, with
    the IDF modifier (BM25 in the engine); its inverted index is memory-mapped (Cached) when the originals are
    on disk, else in RAM."""
    vectors = {VECTOR_NAME: edge_vector(dim, storage)}
    if multivector_dim:
        vectors[MULTIVECTOR_NAME] = edge_vector(
            multivector_dim, storage, multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
            hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000))
    placement = qe.Memory.Cold if storage.on_disk else qe.Memory.Cached
    sparse = {LEXICAL_NAME: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf,
                                                      memory=qe.Memory.Cached if storage.on_disk else None)}
    return qe.EdgeConfig(vectors=vectors, sparse_vectors=sparse if lexical else None, payload_memory=placement,
                         max_search_threads=SEARCH_THREADS,
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


class _EdgeFilters:
    """Conditions (store/base.py) as qdrant-edge's filter objects; the walk is crossmodal.store.filters'."""

    @staticmethod
    def field(c: Condition):
        if c.op == "empty":
            return qe.IsEmptyCondition(key=c.key)
        if c.op == "range":
            return qe.FieldCondition(key=c.key, range=qe.RangeFloat(**{k: float(v) for k, v in c.value.items()}))
        match = {"eq": qe.MatchValue, "any": qe.MatchAny, "prefix": qe.MatchPrefix,
                 "substring": qe.MatchSubstring}[c.op](c.value)
        return qe.FieldCondition(key=c.key, match=match)

    @staticmethod
    def group(must=(), should=(), must_not=()):
        return qe.Filter(must=list(must) or None, should=list(should) or None, must_not=list(must_not) or None)


EDGE_FILTERS = _EdgeFilters()


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
