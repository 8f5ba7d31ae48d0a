"""`serve` under load: a single client's latency, then N concurrent clients for S seconds against the same
gunicorn server (loopback only), searching a small demo-model collection by text.

    python benchmarks/bench_serve.py [--clients 50] [--seconds 60] [--threads 8]

Reports errors, requests/s, p50/p95 under load and p95 / single-client p50 (the issue's target: no error and a
ratio under 5). The clients share this machine's cores with the server.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import save, table  # noqa: E402

KEY = "bench-key"
QUERIES = ["a red circle", "a blue star on the left", "a large green square", "a small yellow triangle"]


def start_server(data: str, threads: int) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(Path(data) / "server.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "crossmodal", "serve", "--port", str(port), "--store", data,
                                "--model", "demo-shapes", "--threads", str(threads)], cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT, env={**os.environ, "CROSSMODAL_API_KEY": KEY})
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/viewer", timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start; see " + str(Path(data) / "server.log"))


def search(port: int, k: int) -> tuple[float, int]:
    body = json.dumps({"query": QUERIES[k % len(QUERIES)], "collection": "bench", "top_k": 5}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/search", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError:
        status = 0
    return (time.perf_counter() - started) * 1000, status


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    from crossmodal.lab.scenes import generate_scene
    from crossmodal.service import ImageInput, IngestItem, Service
    from crossmodal.settings import Settings
    import io

    with tempfile.TemporaryDirectory() as data:
        service = Service(Settings(data_dir=data, model="demo-shapes"))
        items = []
        for k in range(200):
            buffer = io.BytesIO()
            generate_scene(5_000 + k, 128, 128).image.save(buffer, "PNG")
            items.append(IngestItem(image=ImageInput.from_bytes(f"s{k}.png", buffer.getvalue())))
        service.ingest(items, "bench")
        service.store.close()
        process, port = start_server(data, args.threads)
        try:
            for k in range(5):
                search(port, k)  # the model loads
            single = [search(port, k)[0] for k in range(100)]
            stop = time.monotonic() + args.seconds

            def client(c: int) -> list[tuple[float, int]]:
                out, k = [], c
                while time.monotonic() < stop:
                    out.append(search(port, k))
                    k += 1
                return out

            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                results = [r for rows in pool.map(client, range(args.clients)) for r in rows]
            elapsed = time.perf_counter() - started
        finally:
            process.terminate()
            process.wait(timeout=30)
    latencies = [ms for ms, status in results if status == 200]
    single_p50 = float(np.percentile(single, 50))
    row = {"clients": args.clients, "seconds": args.seconds, "threads": args.threads, "requests": len(results),
           "errors": sum(status != 200 for _, status in results), "requests_per_s": round(len(results) / elapsed, 1),
           "single_p50_ms": round(single_p50, 1), "p50_ms": round(float(np.percentile(latencies, 50)), 1),
           "p95_ms": round(float(np.percentile(latencies, 95)), 1),
           "p95_vs_single_p50": round(float(np.percentile(latencies, 95)) / single_p50, 2)}
    print(table([row], list(row)))
    result = {"rows": [row]}
    print(f"saved {save('serve', result)}")
    return result


if __name__ == "__main__":
    main()
