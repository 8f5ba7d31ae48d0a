"""Late interaction in the embedded store: two-stage MaxSim (HNSW on the pooled vector, MaxSim on the token
vectors of its candidates) against exhaustive MaxSim over the same pages, and the bytes a page costs by
storage option and pooling.

Pages are token-vector sets shaped like ColQwen2's (``--tokens`` x 128, unit length) with the structure real
pages have: each page's tokens lie near a few of many topics; a query is a handful of one page's tokens with
noise. Recall@10: the share of exhaustive MaxSim's top 10 that the two stages return.

    python benchmarks/bench_late.py [--pages 10000] [--tokens 700] [--queries 50] [--prefetch 100] [--storage S]
                                    [--work-dir DIR] [--memory-limit-gb 8] [--originals] [--cold]
    python benchmarks/bench_late.py --footprint    # bytes a page costs, by storage option and pooling

The store is served by a process of its own (opened from disk, as after a restart): its latencies, its
anonymous memory and file pages, and with --memory-limit-gb, inside a memory cgroup of that size (page cache
included: the store runs in that much memory or is killed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


SERVE = """
import json, statistics, sys, time
import numpy as np
import crossmodal.store.edge as edge
from crossmodal.store.edge import EdgeStore

if sys.argv[4] == "originals":  # the baseline: MaxSim on the original token vectors whatever the storage
    edge.maxsim_params = lambda storage: edge.qe.SearchParams(quantization=edge.qe.QuantizationSearchParams(ignore=True))

def memory_gb():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) / 2**20 for k in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}

store = EdgeStore(sys.argv[1])
queries = np.load(sys.argv[2])
store.get_collection("pages")
opened = memory_gb()
found, latencies = [], []
for query in queries:
    pooled = query.mean(0) / np.linalg.norm(query.mean(0))
    started = time.perf_counter()
    hits = store.query_late("pages", pooled.tolist(), query.tolist(), 10, int(sys.argv[3]))
    latencies.append(1000 * (time.perf_counter() - started))
    found.append([h.payload["page"] for h in hits])
print(json.dumps({"found": found, "latencies": latencies, "opened": opened, "queried": memory_gb()}))
"""


FOOTPRINT_STORAGE = ["vectors=float32, quantization=none", "vectors=float16, quantization=none",
                     "quantization=int8, on_disk=true"]
FOOTPRINT_TOKENS = {1: 700, 2: 350, 3: 233}  # ColQwen2's token vectors a page at pool_factor 1, 2, 3

OPEN_AND_MEASURE = """
import json, sys
from crossmodal.store.edge import EdgeStore
store = EdgeStore(sys.argv[1])
store.get_collection("pages")
fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({k: int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")}))
"""


def footprint(storage: str, tokens: int, sizes=(500, 2500)) -> dict:
    """Disk and resident memory a page adds (the difference between two collection sizes: the write-ahead log
    and the process are the same for both), the store reopened by a process of its own."""
    import subprocess

    from crossmodal.store import StoredPoint
    from crossmodal.store.edge import EdgeStore
    from crossmodal.store.options import StorageOptions

    measured = []
    for count in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            store = EdgeStore(Path(tmp) / "store")
            store.create_collection("pages", "late-bench", DIM, storage=StorageOptions.parse(storage),
                                    multivector_dim=DIM)
            pages = list(make_pages(count, tokens))
            for start in range(0, count, 100):
                store.upsert("pages", [StoredPoint(f"00000000-0000-0000-0000-{start + i:012d}", unit(t.mean(0)).tolist(),
                                                   {"page": start + i}, t.tolist())
                                       for i, t in enumerate(pages[start:start + 100])])
            store.finish_writes("pages")
            store.close()
            disk = sum(f.stat().st_size for f in (Path(tmp) / "store").rglob("*") if f.is_file()
                       and "wal" not in f.parts)
            memory = json.loads(subprocess.run([sys.executable, "-c", OPEN_AND_MEASURE, str(Path(tmp) / "store")],
                                               capture_output=True, text=True, check=True,
                                               cwd=Path(__file__).resolve().parents[1]).stdout)
            measured.append((disk, memory["RssAnon"]))
    pages = sizes[1] - sizes[0]
    return {"disk_kb": round((measured[1][0] - measured[0][0]) / pages / 1024, 1),
            "anonymous_kb": round((measured[1][1] - measured[0][1]) / pages / 1024, 1)}


def footprint_table() -> dict:
    rows = []
    for pool, tokens in FOOTPRINT_TOKENS.items():
        for storage in FOOTPRINT_STORAGE:
            row = {"pool_factor": pool, "tokens": tokens, "storage": storage, **footprint(storage, tokens)}
            rows.append(row)
            print(row, flush=True)
    print(table(rows, ["pool_factor", "tokens", "storage", "disk_kb", "anonymous_kb"]))
    out = {"footprint": rows}
    print(f"saved {save('late_footprint', out)}")
    return out


def build(work: Path, pages: int, tokens: int, storage: str) -> dict:
    """The store and, for the exhaustive reference, the same pages as float16 on disk (``pages.npy``)."""
    from crossmodal.store import StoredPoint
    from crossmodal.store.edge import EdgeStore
    from crossmodal.store.options import StorageOptions

    kept = np.lib.format.open_memmap(work / "pages.npy", mode="w+", dtype=np.float16, shape=(pages, tokens, DIM))
    store = EdgeStore(work / "store")
    store.create_collection("pages", "late-bench", DIM, storage=StorageOptions.parse(storage), multivector_dim=DIM)
    started = time.perf_counter()
    batch = []
    for i, page in enumerate(make_pages(pages, tokens)):
        kept[i] = page
        batch.append(StoredPoint(f"00000000-0000-0000-0000-{i:012d}", unit(page.mean(0)).tolist(), {"page": i},
                                 page.tolist()))
        if len(batch) == 200:
            store.upsert("pages", batch)
            batch = []
    store.upsert("pages", batch)
    upserted = time.perf_counter() - started
    started = time.perf_counter()
    store.finish_writes("pages")
    indexed = time.perf_counter() - started
    store.close()
    kept.flush()
    disk = sum(f.stat().st_size for f in (work / "store").rglob("*") if f.is_file())
    facts = {"pages": pages, "tokens": tokens, "storage": storage, "upsert_s": round(upserted, 1),
             "index_s": round(indexed, 1), "disk_bytes_per_page": int(disk / pages)}
    (work / "built.json").write_text(json.dumps(facts))
    return facts


def memory_cgroup(limit_gb: float | None):
    """A fresh memory cgroup (v1, as this machine has) of ``limit_gb`` for the serving process: page cache
    counts against it and is reclaimed at the limit, so the store runs in that much memory or is killed."""
    if not limit_gb:
        return None
    group = Path("/sys/fs/cgroup/memory") / f"crossmodal-bench-{os.getpid()}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(int(limit_gb * 2**30)))
    except OSError as exc:
        raise SystemExit(f"--memory-limit-gb needs a writable cgroup v1 memory controller: {exc}")
    return group


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=700, help="token vectors a page (350: ColQwen2 pooled by 2)")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--storage", default="quantization=int8, on_disk=true")
    parser.add_argument("--footprint", action="store_true", help="bytes per page by storage option and pooling")
    parser.add_argument("--work-dir", help="build here and keep it; a later run with the same sizes reuses it")
    parser.add_argument("--memory-limit-gb", type=float, help="serve inside a memory cgroup of this size")
    parser.add_argument("--originals", action="store_true",
                        help="serve a second time with MaxSim on the original token vectors (the baseline)")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before serving (root)")
    args = parser.parse_args(argv)
    if args.footprint:
        return footprint_table()
    with tempfile.TemporaryDirectory() as tmp:
        return run(args, Path(args.work_dir) if args.work_dir else Path(tmp))


def serve(args, work: Path, maxsim_on: str) -> dict:
    """The store's process: opened from disk (after dropping the page cache with ``--cold``), the queries run,
    inside the memory cgroup when one is asked."""
    import subprocess

    if args.cold:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1")
    group = memory_cgroup(args.memory_limit_gb)
    enter = (lambda: (group / "cgroup.procs").write_text(str(os.getpid()))) if group else None
    try:
        served = subprocess.run([sys.executable, "-c", SERVE, str(work / "store"), str(work / "queries.npy"),
                                 str(args.prefetch), maxsim_on], capture_output=True, text=True, preexec_fn=enter,
                                cwd=Path(__file__).resolve().parents[1])
        limit = {}
        if group:
            limit = {"memory_limit_gb": args.memory_limit_gb,
                     "cgroup_peak_gb": round(int((group / "memory.max_usage_in_bytes").read_text()) / 2**30, 2),
                     "cgroup_limit_hits": int((group / "memory.failcnt").read_text())}
    finally:
        if group:
            group.rmdir()
    if served.returncode:
        raise SystemExit(f"the serving process failed ({served.returncode}; killed at the memory limit?): "
                         f"{served.stderr[-2000:]} {limit}")
    return {**json.loads(served.stdout), "limit": limit}


def run(args, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    wanted = {"pages": args.pages, "tokens": args.tokens, "storage": args.storage}
    built = json.loads((work / "built.json").read_text()) if (work / "built.json").exists() else {}
    if {k: built.get(k) for k in wanted} != wanted:
        shutil.rmtree(work / "store", ignore_errors=True)
        built = build(work, args.pages, args.tokens, args.storage)
    kept = np.load(work / "pages.npy", mmap_mode="r")

    rng = np.random.default_rng(1)
    sources = rng.integers(0, args.pages, args.queries)
    queries = np.stack([unit(kept[page, rng.choice(args.tokens, 20, replace=False)].astype(np.float32)
                             + QUERY_NOISE * rng.normal(size=(20, DIM))) for page in sources])
    np.save(work / "queries.npy", queries)
    runs = {"the pack's choice": serve(args, work, "default")}
    if args.originals:
        runs["originals (baseline)"] = serve(args, work, "originals")

    exhaustive, exhaustive_ms = [], []
    for query in queries:
        started = time.perf_counter()
        scores = np.concatenate([
            (np.asarray(kept[s:s + 500], dtype=np.float32) @ query.T).max(axis=1).sum(axis=1)
            for s in range(0, args.pages, 500)])
        exhaustive_ms.append(1000 * (time.perf_counter() - started))
        exhaustive.append(set(np.argsort(-scores)[:10].tolist()))

    rows = []
    for label, served in runs.items():
        latencies = served["latencies"]
        rows.append({"measure": f"two-stage MaxSim, {args.pages:,} pages x {args.tokens} tokens, "
                                f"prefetch {args.prefetch}, MaxSim on {label}",
                     "p50_ms": round(statistics.median(latencies), 1),
                     "p95_ms": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 1),
                     "recall@10": round(float(np.mean([len(e & set(f)) / 10 for e, f in zip(exhaustive,
                                                                                          served["found"])])), 3)})
    rows.append({"measure": "exhaustive MaxSim in numpy (the reference)",
                 "p50_ms": round(statistics.median(exhaustive_ms), 1), "recall@10": 1.0})
    print(table(rows, ["measure", "p50_ms", "p95_ms", "recall@10"]))
    served = runs["the pack's choice"]
    facts = {**built, "cold": args.cold,
             # Anonymous memory is what the store holds; file pages (the token vectors MaxSim read) are the
             # kernel's page cache, given back under pressure.
             "serving_anonymous_gb": round(served["queried"]["RssAnon"], 2),
             "serving_file_pages_gb": round(served["queried"]["RssFile"], 2),
             "serving_peak_rss_gb": round(served["queried"]["VmHWM"], 2), **served["limit"]}
    print(facts)
    out = {"rows": rows, **facts}
    print(f"saved {save('late', out)}")
    return out


if __name__ == "__main__":
    main()
