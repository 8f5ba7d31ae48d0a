"""`collections migrate` at scale: N embedding-like points with JPEG thumbnails, from the embedded store to
qdrant-client's local mode (a server's code path), killed with SIGKILL part-way, then rerun to completion; the
copy is checked by count and by the top-10 ids of 50 queries (exact search on both sides, so that any
difference is the data's, not an index's).

    python benchmarks/bench_migrate.py [--points 100000] [--kill-at 0.4]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import embedding_like, save, table  # noqa: E402

DIM = 512


def thumbnails(count: int) -> list[str]:
    """A few distinct small JPEGs (about 2-3 KB each), cycled: thumbnails travel as payload bytes."""
    from PIL import Image

    rng, out = np.random.default_rng(3), []
    for _ in range(count):
        image = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=70)
        out.append(base64.b64encode(buffer.getvalue()).decode())
    return out


def fill(folder: str, points: int) -> np.ndarray:
    from crossmodal.store import StoredPoint
    from crossmodal.store.edge import EdgeStore

    store = EdgeStore(folder)
    store.create_collection("photos", "bench", DIM)
    thumbs = thumbnails(16)
    for start in range(0, points, 10_000):
        vectors = embedding_like(min(10_000, points - start), DIM, seed=start, basis_seed=7)
        store.upsert("photos", [StoredPoint(str(uuid.UUID(int=start + i + 1)), v.tolist(),
                                            {"kind": "image", "source": f"p{start + i}.jpg",
                                             "thumbnail": thumbs[(start + i) % len(thumbs)]})
                                for i, v in enumerate(vectors)])
    store.finish_writes("photos")
    store.close()
    return embedding_like(50, DIM, seed=424242, basis_seed=7)


def migrate_command(source: str, target: str) -> list[str]:
    return [sys.executable, "-m", "crossmodal", "collections", "migrate", "photos", "--store", source,
            "--to", f"path:{target}"]


def run_and_kill(command: list[str], points: int, fraction: float) -> float:
    """Start the command and SIGKILL it once its progress bar passes ``fraction`` of the points."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    done = [0]

    def watch():
        for chunk in iter(lambda: process.stderr.read(256), b""):
            counts = re.findall(rb"(\d+)/\d+", chunk)
            if counts:
                done[0] = int(counts[-1])

    threading.Thread(target=watch, daemon=True).start()
    while done[0] < fraction * points and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return time.perf_counter() - started


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--kill-at", type=float, default=0.4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        source, target = f"{tmp}/edge", f"{tmp}/server"
        started = time.perf_counter()
        queries = fill(source, args.points)
        fill_s = time.perf_counter() - started
        killed_after = run_and_kill(migrate_command(source, target), args.points, args.kill_at)
        started = time.perf_counter()
        rerun = subprocess.run([*migrate_command(source, target), "--json"], cwd=ROOT, capture_output=True,
                               text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        rerun_s = time.perf_counter() - started
        if rerun.returncode:
            raise RuntimeError(rerun.stderr[-3000:])
        report = json.loads(rerun.stdout)

        from qdrant_client import QdrantClient

        from crossmodal.store.edge import EdgeStore
        from crossmodal.store.remote import RemoteStore

        edge, server = EdgeStore(source), RemoteStore(url="path", client=QdrantClient(path=target))
        same = sum([h.id for h in edge.query("photos", q.tolist(), 10, exact=True)]
                   == [h.id for h in server.query("photos", q.tolist(), 10, exact=True)] for q in queries)
        thumbs = sum(bool(h.payload.get("thumbnail")) for h in server.query("photos", queries[0].tolist(), 10))
        edge.close()
        server.close()
    row = {"points": args.points, "fill_s": round(fill_s, 1), "killed_after_s": round(killed_after, 1),
           "rerun_s": round(rerun_s, 1), "copied_in_rerun": report["copied"],
           "already_there": report["already_there"], "count": report["count"], "sampled_equal": report["sampled"],
           "same_top10_of_50": same, "thumbnails_in_top10": thumbs}
    print(table([row], list(row)))
    result = {"rows": [row]}
    print(f"saved {save('migrate', result)}")
    return result


if __name__ == "__main__":
    main()
