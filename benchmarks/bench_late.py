"""Late interaction in the embedded store: two-stage MaxSim (HNSW on the pooled vector, MaxSim on the token
vectors of its candidates) against exhaustive MaxSim over the same pages, and the bytes a page costs by
storage option and pooling.

Pages are token-vector sets shaped like ColQwen2's (``--tokens`` x 128, unit length) with the structure real
pages have: each page's tokens lie near a few of many topics; a query is a handful of one page's tokens with
noise. Recall@10: the share of exhaustive MaxSim's top 10 that the two stages return.

    python benchmarks/bench_late.py [--pages 10000] [--tokens 700] [--queries 50] [--prefetch 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save, table  # noqa: E402

DIM = 128
TOPICS = 40  # pages share topics, as the pages of one corpus do: MaxSim tells them apart by how many
# Per-dimension noise: a token keeps a cosine of about 0.8 with its topic, a query token about 0.85 with its page's.
TOKEN_NOISE, QUERY_NOISE = 0.066, 0.055


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_pages(count: int, tokens: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    topics = unit(rng.normal(size=(TOPICS, DIM)))
    for _ in range(count):
        chosen = topics[rng.choice(TOPICS, size=6, replace=False)]
        yield unit(chosen[rng.integers(0, 6, tokens)] + TOKEN_NOISE * rng.normal(size=(tokens, DIM)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=700)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--storage", default="quantization=int8, on_disk=true")
    args = parser.parse_args(argv)

    from crossmodal.store import StoredPoint
    from crossmodal.store.edge import EdgeStore
    from crossmodal.store.options import StorageOptions

    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = EdgeStore(tmp)
        store.create_collection("pages", "late-bench", DIM, storage=StorageOptions.parse(args.storage),
                                multivector_dim=DIM)
        kept = np.zeros((args.pages, args.tokens, DIM), dtype=np.float16)  # for the exhaustive reference
        started = time.perf_counter()
        batch = []
        for i, tokens in enumerate(make_pages(args.pages, args.tokens)):
            kept[i] = tokens
            batch.append(StoredPoint(f"00000000-0000-0000-0000-{i:012d}", unit(tokens.mean(0)).tolist(), {"page": i},
                                     tokens.tolist()))
            if len(batch) == 200:
                store.upsert("pages", batch)
                batch = []
        store.upsert("pages", batch)
        upserted = time.perf_counter() - started
        started = time.perf_counter()
        store.finish_writes("pages")
        indexed = time.perf_counter() - started
        disk = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())

        recalls, latencies, exhaustive_ms = [], [], []
        for q in range(args.queries):
            page = int(rng.integers(0, args.pages))
            query = unit(kept[page, rng.choice(args.tokens, 20, replace=False)].astype(np.float32)
                         + QUERY_NOISE * rng.normal(size=(20, DIM)))
            started = time.perf_counter()
            hits = store.query_late("pages", unit(query.mean(0)).tolist(), query.tolist(), 10, args.prefetch)
            latencies.append(1000 * (time.perf_counter() - started))
            started = time.perf_counter()
            scores = np.array([(query @ kept[i].T.astype(np.float32)).max(axis=1).sum() for i in range(args.pages)])
            exhaustive_ms.append(1000 * (time.perf_counter() - started))
            truth = set(np.argsort(-scores)[:10].tolist())
            recalls.append(len(truth & {h.payload["page"] for h in hits}) / 10)
        store.close()

    p50 = statistics.median(latencies)
    rows = [{"measure": f"two-stage MaxSim, {args.pages:,} pages x {args.tokens} tokens, prefetch {args.prefetch}",
             "p50_ms": round(p50, 1), "p95_ms": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 1),
             "recall@10": round(float(np.mean(recalls)), 3)},
            {"measure": "exhaustive MaxSim in numpy (the reference)", "p50_ms": round(statistics.median(exhaustive_ms), 1),
             "recall@10": 1.0}]
    print(table(rows, ["measure", "p50_ms", "p95_ms", "recall@10"]))
    facts = {"pages": args.pages, "tokens": args.tokens, "storage": args.storage, "upsert_s": round(upserted, 1),
             "index_s": round(indexed, 1), "disk_bytes_per_page": int(disk / args.pages)}
    print(facts)
    out = {"rows": rows, **facts}
    print(f"saved {save('late', out)}")
    return out


if __name__ == "__main__":
    main()
