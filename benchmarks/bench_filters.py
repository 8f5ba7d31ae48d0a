"""Filters and open collections in the embedded store (issue 42, findings 4 and 5), each against a baseline
measured in the same run.

    python benchmarks/bench_filters.py [--points 20000] [--dim 512] [--million 1000000] [--million-dim 32]
                                       [--collections 1000] [--queries 50] [--only filters,million,collections]

filters      --points realistic image points (512-d, payload and thumbnail file each): Dify metadata conditions
             that nothing meets, and one that a seventh meets, through the searcher; the baseline is the old
             widening loop (x4 until the collection runs out, payloads and thumbnails read, tested in Python).
million      --million synthetic points (small vectors, so that it fits in memory beside everything else) with
             indexed metadata: conditions that nothing meets, that 0.1 % and that 10 % meet; the baseline is
             the same query with no filter.
collections  --collections one-point collections: listing them (no shard opened) against opening each (as a
             listing did before), then every one used once under the open_collections budget: open shards, the
             process's memory maps and vm.max_map_count.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import embedding_like, save, table  # noqa: E402
from crossmodal.api.knowledge import metadata_predicate  # noqa: E402
from crossmodal.search.searcher import query_where  # noqa: E402
from crossmodal.store import Condition, StoredPoint  # noqa: E402

BATCH = 2000
THUMBNAIL_BYTES = 20_000  # a 256-px JPEG thumbnail, about what ingest writes


def condition(name, operator, value=None):
    return {"logical_operator": "and", "conditions": [{"name": name, "comparison_operator": operator,
                                                       "value": value}]}


def percentiles(fn, queries) -> tuple[float, float, int]:
    latencies, found = [], 0
    for q in queries:
        started = time.perf_counter()
        found = len(fn(q))
        latencies.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 95)), found


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def widening_loop(store, name, vector, top_k, conditions, where):
    """The searcher before: x4 rounds until enough pass or the collection runs out, every hit's payload and
    thumbnail read, the condition tested in Python."""
    limit = top_k * 4
    while True:
        hits = store.query(name, vector.tolist(), limit, conditions, with_thumbnails=True)
        kept = [hit for hit in hits if where(hit.payload)]
        if len(kept) >= top_k or len(hits) < limit:
            return kept[:top_k]
        limit *= 4


def image_payload(i: int) -> dict:
    return {"kind": "image", "source": f"photos/img_{i:06d}.jpg", "caption": f"a photo number {i}",
            "tags": [f"t{i % 13}"], "width": 640 + i % 7, "height": 480, "mime_type": "image/jpeg",
            "ingested_at": "2025-03-01T12:00:00+00:00", "sha256": uuid.UUID(int=i + 1).hex * 2,
            "metadata": {"album": f"album-{i % 7}", "year": str(2000 + i % 25), "pages": i % 300,
                         "taken": f"2024-{1 + i % 12:02d}-15T00:00:00Z"},
            "thumbnail": ""}  # filled per point


def bench_filters(points: int, dim: int, n_queries: int) -> list[dict]:
    import base64

    from crossmodal.store.edge import EdgeStore

    vectors = embedding_like(points, dim, seed=42)
    queries = embedding_like(n_queries, dim, seed=7, basis_seed=None)
    thumbnail = base64.b64encode(os.urandom(THUMBNAIL_BYTES)).decode()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = EdgeStore(tmp)
        store.create_collection("photos", "bench", dim)
        for start in range(0, points, BATCH):
            store.upsert("photos", [StoredPoint(str(uuid.UUID(int=i + 1)), vectors[i].tolist(),
                                                {**image_payload(i), "thumbnail": thumbnail})
                                    for i in range(start, min(points, start + BATCH))])
        store.finish_writes("photos")
        ctx, kinds = SimpleNamespace(store=store), [Condition("kind", "any", ["image", "text"])]
        cases = [("is, nothing meets", condition("album", "is", "nope")),
                 ("> (numbers), nothing meets", condition("pages", ">", 10_000)),
                 ("contains, nothing meets", condition("album", "contains", "zz")),
                 ("before (times), nothing meets", condition("taken", "before", "1990-01-01")),
                 ("end with, nothing meets (bounded)", condition("album", "end with", "zz")),
                 ("is, a seventh meets", condition("album", "is", "album-3"))]
        for label, raw in cases:
            where = metadata_predicate(raw)
            before = rss_mb()
            p50, p95, found = percentiles(lambda q: query_where(ctx, "photos", q, 10, kinds, None, where,
                                                                typed=True), queries)
            rows.append({"set": f"{points:,} x {dim}-d", "condition": label, "path": "engine filter",
                         "p50_ms": p50, "p95_ms": p95, "found": found, "rss_growth_mb": rss_mb() - before})
        where = metadata_predicate(cases[0][1])
        before = rss_mb()
        few = queries[: max(3, n_queries // 10)]
        p50, p95, found = percentiles(lambda q: widening_loop(store, "photos", q, 10, kinds, where), few)
        rows.append({"set": f"{points:,} x {dim}-d", "condition": cases[0][0], "path": "baseline: widening loop",
                     "p50_ms": p50, "p95_ms": p95, "found": found, "rss_growth_mb": rss_mb() - before})
        store.close()
    return rows


def bench_million(points: int, dim: int, n_queries: int) -> list[dict]:
    from crossmodal.store.edge import EdgeStore

    rng = np.random.default_rng(3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = EdgeStore(tmp)
        store.create_collection("big", "bench", dim)
        started = time.perf_counter()
        for start in range(0, points, 10_000):
            chunk = rng.normal(size=(min(10_000, points - start), dim)).astype(np.float32)
            chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
            store.upsert("big", [StoredPoint(str(uuid.UUID(int=start + k + 1)), v.tolist(),
                                             {"kind": "text", "metadata": {"album": f"a{(start + k) % 1000}",
                                                                           "shelf": f"s{(start + k) % 10}",
                                                                           "pages": (start + k) % 5000}})
                                 for k, v in enumerate(chunk)])
        upsert_s = time.perf_counter() - started
        started = time.perf_counter()
        store.finish_writes("big")  # HNSW over the whole set
        index_s = time.perf_counter() - started
        queries = rng.normal(size=(n_queries, dim)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        ctx, kinds = SimpleNamespace(store=store), [Condition("kind", "any", ["image", "text"])]
        size = f"{points:,} x {dim}-d"
        p50, p95, found = percentiles(lambda q: store.query("big", q.tolist(), 10, kinds), queries)
        rows.append({"set": size, "condition": "baseline: no metadata condition", "p50_ms": p50, "p95_ms": p95,
                     "found": found, "upsert_s": upsert_s, "index_s": index_s})
        for label, raw in (("is (indexed), nothing meets", condition("album", "is", "nope")),
                           ("> (indexed reading), nothing meets", condition("pages", ">", 10_000)),
                           ("is (indexed), 0.1 % meet", condition("album", "is", "a7")),
                           ("is (indexed), 10 % meet", condition("shelf", "is", "s3"))):
            where = metadata_predicate(raw)
            p50, p95, found = percentiles(lambda q: query_where(ctx, "big", q, 10, kinds, None, where, typed=True),
                                          queries)
            rows.append({"set": size, "condition": label, "p50_ms": p50, "p95_ms": p95, "found": found})
        store.close()
    return rows


def count_maps(prefix: str | None = None) -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if prefix is None or prefix in line)


def bench_collections(count: int) -> list[dict]:
    from crossmodal.limits import limit
    from crossmodal.store.edge import EdgeStore

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        first = EdgeStore(root)
        first.create_collection("c00000", "bench", 8)
        first.upsert("c00000", [StoredPoint(str(uuid.UUID(int=1)), [1.0] + [0.0] * 7,
                                            {"kind": "text", "metadata": {"album": "a"}})])
        first.finish_writes("c00000")
        first.close()
        names = [f"c{k:05d}" for k in range(count)]
        for name in names[1:]:  # copies of one collection's files: making each through the engine is not measured
            subprocess.run(["cp", "-a", "--sparse=always", str(root / "collections" / "c00000"),
                            str(root / "collections" / name)], check=True)
        store = EdgeStore(root)
        maps_before, threads_before = count_maps(), len(os.listdir("/proc/self/task"))
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            listing = store.list_collections()
            timings.append(time.perf_counter() - started)
        opened_by_listing = len(store.open_shards())
        started, peak_maps = time.perf_counter(), 0
        for k, name in enumerate(names):  # what a listing did before: open each collection to count it
            store.count(name)
            if k % 25 == 0:
                peak_maps = max(peak_maps, count_maps())
        opening_s = time.perf_counter() - started
        with open("/proc/sys/vm/max_map_count") as f:
            max_maps = int(f.read())
        maps = count_maps()
        rows = [{"collections": count, "figure": "listing, no shard opened (p50 of 5)",
                 "seconds": float(np.median(timings)), "listed": len(listing), "open_shards": opened_by_listing},
                {"collections": count, "figure": "baseline: opening each to count it", "seconds": opening_s,
                 "open_shards": len(store.open_shards()), "budget": int(limit("open_collections")),
                 "maps": maps, "peak_maps": max(peak_maps, maps), "maps_growth": maps - maps_before,
                 "maps_onto_collections": count_maps(str(root / "collections")), "max_map_count": max_maps,
                 "maps_share": maps / max_maps, "threads_growth": len(os.listdir("/proc/self/task")) - threads_before}]
        store.close()
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--million", type=int, default=1_000_000)
    parser.add_argument("--million-dim", type=int, default=32)
    parser.add_argument("--collections", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--only", default="filters,million,collections")
    args = parser.parse_args(argv)
    sections = set(args.only.split(","))
    result = {}
    if "filters" in sections:
        result["filters"] = bench_filters(args.points, args.dim, args.queries)
        print(table(result["filters"], ["set", "condition", "path", "p50_ms", "p95_ms", "found", "rss_growth_mb"]))
    if "million" in sections:
        result["million"] = bench_million(args.million, args.million_dim, args.queries)
        print(table(result["million"], ["set", "condition", "p50_ms", "p95_ms", "found", "upsert_s", "index_s"]))
    if "collections" in sections:
        result["collections"] = bench_collections(args.collections)
        print(table(result["collections"], ["collections", "figure", "seconds", "listed", "open_shards", "budget",
                                            "maps", "peak_maps", "maps_onto_collections", "max_map_count", "maps_share",
                                            "threads_growth"]))
    print(f"saved {save('filters', result)}")
    return result


if __name__ == "__main__":
    main()
