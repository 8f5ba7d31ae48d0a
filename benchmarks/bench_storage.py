"""Storage options at scale: embedding-like 512-d vectors in the embedded store, one storage option per child
process (so that each peak RSS is that option's own), against exact search in the same run.

For each option, two child processes: one fills and indexes the collection (upsert time, index build time, its
peak RSS: a bulk load's transient), one opens it afresh, as the plugin after a restart, and answers queries
(first query, p50/p95 with one client and with 16 concurrent threads, recall@10 against exact search over 200
queries, its peak RSS: what serving the collection costs), and the collection's size on disk.
With --local-size, the same at that size through qdrant-client's local mode (the server code path).

    python benchmarks/bench_storage.py [--size 1000000] [--options float32,float16,int8,int8-disk] [--local-size 100000]

The vectors are made chunk by chunk (never all in this process's memory), and exact top-10s are merged chunk
by chunk, so that the RSS measured is the store's.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import embedding_like, save, table  # noqa: E402

DIM = 512
CHUNK = 10_000
QUERIES = 200
K = 10
OPTIONS = {
    "float32": "",
    "float16": "vectors=float16",
    "int8": "quantization=int8",
    "int8-disk": "quantization=int8, on_disk=true",
    "float16-int8-disk": "vectors=float16, quantization=int8, on_disk=true",
}


def chunks(size: int):
    """(start, vectors) for consecutive chunks of one deterministic data set (shared cluster centres)."""
    for start in range(0, size, CHUNK):
        n = min(CHUNK, size - start)
        yield start, embedding_like(n, DIM, seed=1_000 + start // CHUNK, basis_seed=7)


def query_set() -> np.ndarray:
    q = embedding_like(QUERIES, DIM, seed=99, basis_seed=7)
    q = q + 0.02 * np.random.default_rng(1).normal(size=q.shape).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def point_id(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def build_option(backend: str, size: int, storage: str, folder: str) -> dict:
    """In a child process: fill and index a collection in ``folder``; exact top-10s saved beside it."""
    from crossmodal.store import StoredPoint
    from crossmodal.store.options import StorageOptions

    queries = query_set()
    best = np.full((QUERIES, K), -2.0, dtype=np.float32)
    best_ids = np.zeros((QUERIES, K), dtype=np.int64)
    store = open_backend(backend, folder)
    store.create_collection("b", "bench", DIM, None, StorageOptions.parse(storage))
    upsert_s = 0.0
    for start, vectors in chunks(size):
        sims = queries @ vectors.T  # exact top-10, merged chunk by chunk
        merged = np.concatenate([best, sims], axis=1)
        merged_ids = np.concatenate([best_ids, np.arange(start, start + len(vectors))[None].repeat(QUERIES, 0)], 1)
        top = np.argsort(-merged, axis=1)[:, :K]
        best, best_ids = np.take_along_axis(merged, top, 1), np.take_along_axis(merged_ids, top, 1)
        points = [StoredPoint(point_id(start + i), v.tolist(), {"kind": "image"}) for i, v in enumerate(vectors)]
        t = time.perf_counter()
        for s in range(0, len(points), 1_000):
            store.upsert("b", points[s:s + 1_000])
        upsert_s += time.perf_counter() - t
    t = time.perf_counter()
    store.finish_writes("b")
    index_s = time.perf_counter() - t
    store.close()
    np.save(Path(folder) / "exact_top10.npy", best_ids)
    return {"upsert_s": round(upsert_s, 1), "index_s": round(index_s, 1),
            "build_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def serve_option(backend: str, folder: str) -> dict:
    """In a fresh child process, as a plugin after a restart: open the collection and answer queries."""
    queries = query_set()
    truth = np.load(Path(folder) / "exact_top10.npy")
    store = open_backend(backend, folder)

    def one(q):
        t0 = time.perf_counter()
        hits = store.query("b", q.tolist(), K)
        return (time.perf_counter() - t0) * 1000, [h.id for h in hits]

    t = time.perf_counter()
    store.query("b", queries[0].tolist(), K)
    first_ms = (time.perf_counter() - t) * 1000
    single = [one(q) for q in queries]
    recall = float(np.mean([len({point_id(i) for i in row} & set(ids)) / K for (_, ids), row in zip(single, truth)]))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        concurrent_ms = [ms for ms, _ in pool.map(one, np.concatenate([queries] * 2))]
    store.close()
    single_ms = [ms for ms, _ in single]
    disk_mb = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20
    return {"first_query_ms": round(first_ms, 1),
            "p50_ms": round(float(np.percentile(single_ms, 50)), 2),
            "p95_ms": round(float(np.percentile(single_ms, 95)), 2),
            "p50_16_ms": round(float(np.percentile(concurrent_ms, 50)), 2),
            "p95_16_ms": round(float(np.percentile(concurrent_ms, 95)), 2),
            "recall@10": round(recall, 3),
            "serving_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "disk_mb": round(disk_mb, 1)}


def open_backend(backend: str, folder: str):
    if backend == "embedded":
        from crossmodal.store.edge import EdgeStore

        return EdgeStore(folder)
    from qdrant_client import QdrantClient

    from crossmodal.store.remote import RemoteStore

    return RemoteStore(url="local", client=QdrantClient(path=folder))


def in_child(function: str, *args) -> dict:
    code = ("import json, sys; sys.path.insert(0, %r); from benchmarks.bench_storage import %s; "
            "print(json.dumps(%s(*%r)))" % (str(Path(__file__).resolve().parents[1]), function, function, args))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(backend: str, size: int, storage: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        built = in_child("build_option", backend, size, storage, folder)
        served = in_child("serve_option", backend, folder)
    return {"backend": backend, "size": size, "storage": storage or "float32 in memory", **built, **served}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--options", default="float32,float16,int8,int8-disk,float16-int8-disk",
                        help=f"comma-separated, of {', '.join(OPTIONS)}")
    parser.add_argument("--local-size", type=int, default=100_000, help="0 skips qdrant-client's local mode")
    args = parser.parse_args(argv)
    rows = []
    for option in args.options.split(","):
        rows.append(measure("embedded", args.size, OPTIONS[option]))
        print(json.dumps(rows[-1]), flush=True)
    if args.local_size:
        rows.append(measure("qdrant-client local", args.local_size, OPTIONS["int8"]))
    base = next((r["serving_peak_rss_mb"] for r in rows
                 if r["storage"].startswith("float32") and r["backend"] == "embedded"), None)
    for row in rows:
        row["rss_vs_float32"] = (round(row["serving_peak_rss_mb"] / base, 2)
                                 if base and row["backend"] == "embedded" else None)
    print(table(rows, ["backend", "size", "storage", "upsert_s", "index_s", "build_peak_rss_mb", "first_query_ms",
                       "p50_ms", "p95_ms", "p50_16_ms", "p95_16_ms", "recall@10", "serving_peak_rss_mb",
                       "rss_vs_float32", "disk_mb"]))
    result = {"rows": rows}
    print(f"saved {save('storage', result)}")
    return result


if __name__ == "__main__":
    main()
