"""A Dify's real load on one plugin process, over stdio as the daemon drives it: latency per request kind at
1, 8, 24 and 48 requests in flight (Search, Embed, Collections, /v1/search, /retrieval, Align mixed), then
/retrieval while a 500-image ingest runs in the same process. The model is a ViT-B/32-size CLIP (random
weights: the speed is the real model's). Targets (this 2-core machine): /retrieval p95 <= 1.5 s with 24 in
flight and <= 2 s during the ingest; no 503 while the model is loaded.

    python benchmarks/bench_load.py [--requests 150] [--images 500]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.bench_ingest import save_vit_b32  # noqa: E402
from benchmarks.bench_model_package import file_server, photos  # noqa: E402
from benchmarks.common import machine, save, table  # noqa: E402

LEVELS = (1, 8, 24, 48)


def latency_rows(plugin, space, requests: int) -> list[dict]:
    from load_mix import KINDS, percentile, run_mix

    rows, sent = [], 0
    for level in LEVELS:
        outcome = run_mix(plugin, space, requests, level, start=sent)
        sent += outcome.sent
        assert not outcome.parked and not outcome.failures, (outcome.parked[:3], outcome.failures[:3])
        for kind in KINDS:
            values = outcome.latencies[kind]
            rows.append({"in_flight": level, "kind": kind, "n": len(values), "p50_s": round(percentile(values, 0.5), 3),
                         "p95_s": round(percentile(values, 0.95), 3)})
        rows.append({"in_flight": level, "kind": "all (requests/s)", "n": outcome.sent,
                     "p50_s": round(outcome.sent / outcome.seconds, 1), "p95_s": ""})
    return rows


def retrieval_during_ingest(plugin, space, files: list[dict], period: float = 0.2) -> dict:
    """/retrieval every ``period`` s while one Ingest call takes ``files`` into another collection."""
    from load_mix import AUTH, failure, percentile
    from stdio_harness import endpoint_request, tool_request, variables

    credentials = {**space.credentials, "default_collection": "photos"}
    started = time.monotonic()
    ingest = plugin.send(tool_request("ingest", {"files": files}, credentials))
    latencies, statuses, ingest_report, k = [], [], None, 0
    while ingest_report is None:
        body = {"knowledge_id": space.collection, "query": f"a red circle {k}",
                "retrieval_setting": {"top_k": 3, "score_threshold": 0.0}}
        sent = time.monotonic()
        sid = plugin.send(endpoint_request(space.settings, "POST", "/retrieval", body, AUTH))
        answered = None
        while answered is None:
            for done, messages in plugin.collect([sid, ingest], timeout=1.0, partial=True, first=True).items():
                if done == sid:
                    answered = messages
                    latencies.append(time.monotonic() - sent)
                else:
                    ingest_report, ingest_seconds = variables(messages), time.monotonic() - started
        statuses.append(failure("retrieval", answered) or "200")
        k += 1
        time.sleep(period)
    assert ingest_report["added"] == len(files), ingest_report
    return {"retrievals": len(latencies), "p50_s": round(percentile(latencies, 0.5), 3),
            "p95_s": round(percentile(latencies, 0.95), 3), "max_s": round(max(latencies), 3),
            "non_200": [s for s in statuses if s != "200"][:5], "ingest_images": len(files),
            "ingest_seconds": round(ingest_seconds, 1), "ingest_images_per_s": round(len(files) / ingest_seconds, 1)}


def main(argv: list[str] | None = None) -> dict:
    from load_mix import Workspace, seed_collection
    from stdio_harness import PluginProcess, dify_file

    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=150, help="requests per in-flight level")
    parser.add_argument("--images", type=int, default=500, help="images in the ingest that runs beside /retrieval")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    model = str(save_vit_b32(work / "vit-b32"))
    (work / "files").mkdir()
    blobs = photos(args.images)
    for k, blob in enumerate(blobs):
        (work / "files" / f"p{k}.jpg").write_bytes(blob)
    server = file_server(work / "files")
    files = [dify_file(f"http://127.0.0.1:{server.server_port}/p{k}.jpg", f"p{k}.jpg", len(b), "image/jpeg")
             for k, b in enumerate(blobs)]
    plugin = PluginProcess(env={"CROSSMODAL_HOME": str(work / "home")}, heartbeat_interval=5)
    space = Workspace(str(work / "store"), model=model)
    try:
        plugin.wait_ready()
        seed_collection(plugin, space)
        rows = latency_rows(plugin, space, args.requests)
        during = retrieval_during_ingest(plugin, space, files)
    finally:
        plugin.close()
        server.shutdown()
    print(table(rows, ["in_flight", "kind", "n", "p50_s", "p95_s"]))
    print(table([during], list(during)))
    retrieval_24 = next(r for r in rows if r["in_flight"] == 24 and r["kind"] == "retrieval")
    result = {"machine": machine(), "model": "ViT-B/32-size CLIP (random weights)", "rows": rows,
              "retrieval_during_ingest": during,
              "targets": {"retrieval p95 at 24 in flight <= 1.5 s": retrieval_24["p95_s"],
                          "retrieval p95 during a 500-image ingest <= 2 s": during["p95_s"],
                          "no non-200 answers": not during["non_200"]}}
    save("load", result)
    return result


if __name__ == "__main__":
    main()
