"""Store benchmark: upsert and query latency at 10k and 100k vectors for the embedded engine
(qdrant-edge), qdrant-client's local mode and numpy exact search, all in one run, plus
recall@10 of the embedded search against exact search.

    python benchmarks/bench_store.py [--sizes 10000,100000] [--queries 200] [--skip-local-above 100000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import embedding_like, save, table, timed  # noqa: E402
from crossmodal.store import StoredPoint  # noqa: E402

DIM = 512
BATCH = 1000


def to_points(vectors: np.ndarray, start: int = 0) -> list[StoredPoint]:
    return [StoredPoint(str(uuid.UUID(int=start + i + 1)), v.tolist(), {"kind": "image", "tags": ["t"]})
            for i, v in enumerate(vectors)]


def fill(store, name: str, vectors: np.ndarray) -> None:
    store.create_collection(name, "bench", DIM)
    for start in range(0, len(vectors), BATCH):
        store.upsert(name, to_points(vectors[start:start + BATCH], start))


def query_stats(store, name: str, queries: np.ndarray, ids: list[str], exact_top: np.ndarray, k: int = 10):
    latencies, recalls = [], []
    for q, truth in zip(queries, exact_top):
        hits, seconds = timed(store.query, name, q.tolist(), k)
        latencies.append(seconds * 1000)
        expected = {ids[i] for i in truth}
        recalls.append(len(expected & {h.id for h in hits}) / k)
    return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 95)), float(np.mean(recalls))


def bench_size(n: int, n_queries: int, with_local: bool) -> list[dict]:
    from crossmodal.store.edge import EdgeStore

    vectors = embedding_like(n, DIM, seed=n)
    queries = embedding_like(n_queries, DIM, seed=n)[:n_queries]  # same distribution: near real neighbours
    queries = queries + 0.02 * np.random.default_rng(1).normal(size=queries.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    exact_top, exact_seconds = timed(lambda: np.argsort(-(queries @ vectors.T), axis=1)[:, :10])
    rows = [{"size": n, "engine": "numpy exact", "upsert_s": None,
             "query_p50_ms": exact_seconds * 1000 / n_queries, "query_p95_ms": None, "recall@10": 1.0}]
    with tempfile.TemporaryDirectory() as tmp:
        edge = EdgeStore(tmp)
        _, upsert_s = timed(fill, edge, "b", vectors)
        _, index_s = timed(edge.finish_writes, "b")
        p50, p95, recall = query_stats(edge, "b", queries, ids, exact_top)
        rows.append({"size": n, "engine": "embedded (qdrant-edge)", "upsert_s": upsert_s, "index_s": index_s,
                     "query_p50_ms": p50, "query_p95_ms": p95, "recall@10": recall})
        edge.close()
    if with_local:
        from qdrant_client import QdrantClient

        from crossmodal.store.remote import RemoteStore

        with tempfile.TemporaryDirectory() as tmp:
            local = RemoteStore(url="local", client=QdrantClient(path=tmp))
            _, upsert_s = timed(fill, local, "b", vectors)
            p50, p95, recall = query_stats(local, "b", queries[: max(20, n_queries // 10)], ids, exact_top)
            rows.append({"size": n, "engine": "qdrant-client local", "upsert_s": upsert_s,
                         "query_p50_ms": p50, "query_p95_ms": p95, "recall@10": recall})
            local.close()
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--skip-local-above", type=int, default=100_000,
                        help="qdrant-client local mode is slow: skip it above this size")
    args = parser.parse_args(argv)
    rows = []
    for n in map(int, args.sizes.split(",")):
        rows += bench_size(n, args.queries, n <= args.skip_local_above)
    print(table(rows, ["size", "engine", "upsert_s", "index_s", "query_p50_ms", "query_p95_ms", "recall@10"]))
    result = {"rows": rows}
    print(f"saved {save('store', result)}")
    return result


if __name__ == "__main__":
    main()
