"""Dynamic batching of concurrent queries: text-query vectors per second and latency for 16 concurrent
sessions, one query per forward pass (the lock-serialised baseline) against batched passes, with the text
tower of a ViT-B/32-size CLIP (random weights). Also a lone session, to show batching adds no latency.

    python benchmarks/bench_batching.py [--clients 16] [--queries 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_ingest import save_vit_b32  # noqa: E402
from benchmarks.common import save, table  # noqa: E402

QUERIES = ["a red circle on the left", "a small blue star", "two green hearts and a yellow square",
           "a large purple hexagon in the centre", "一个红色圆形和一个蓝色星形", "a white triangle at the top"]


def run_clients(embed, clients: int, per_client: int) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(k: int):
        barrier.wait()
        for i in range(per_client):
            text = f"{QUERIES[(k + i) % len(QUERIES)]} {k} {i}"
            started = time.perf_counter()
            embed(text)
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    latencies.sort()
    return {"queries_per_s": round(clients * per_client / seconds, 1),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--queries", type=int, default=20, help="queries per client")
    args = parser.parse_args(argv)

    from crossmodal.encoders.models import load_encoder

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        encoder = load_encoder(str(save_vit_b32(Path(tmp) / "vit-b32")), "cpu")
        unbatched = lambda text: encoder.encode_texts([text])  # noqa: E731 - one forward pass per query
        batched = encoder.query_text_vector
        batched("warm-up")
        for clients in (1, args.clients):
            n = args.queries * (4 if clients == 1 else 1)
            for name, fn in (("one query per pass", unbatched), ("dynamic batching", batched)):
                before = (encoder.text_queries.batches, encoder.text_queries.items)
                row = {"clients": clients, "mode": name, **run_clients(fn, clients, n)}
                if fn is batched:
                    passes = encoder.text_queries.batches - before[0]
                    row["mean_batch"] = round((encoder.text_queries.items - before[1]) / max(passes, 1), 1)
                rows.append(row)
    print(table(rows, ["clients", "mode", "queries_per_s", "p50_ms", "p95_ms", "mean_batch"]))
    out = {"model": "ViT-B/32 CLIP text tower (random weights)", "rows": rows}
    print(f"saved {save('batching', out)}")
    return out


if __name__ == "__main__":
    main()
