"""A Dify's real load on one plugin process, over stdio as the daemon drives it.

Default: latency per request kind at 1, 8, 24 and 48 requests in flight (Search, Embed, Collections,
/v1/search, /retrieval, Align mixed), then /retrieval while a 500-image ingest runs in the same process. The
model is a ViT-B/32-size CLIP (random weights: the speed is the real model's). Targets (this 2-core machine):
/retrieval p95 <= 1.5 s with 24 in flight and <= 2 s during the ingest; no 503 while the model is loaded.

``--soak``: the soak of issue 42 on one build: a cold start while three remembered models (and the OCR models,
which the mix's Align uses) load, then rounds
of 300 mixed requests with 24 in flight; p50/p95 per kind and 504s per round, start-up time and memory.
``--plugin-dir`` runs another checkout's plugin the same way (the baseline in the same run: the commit
before the worker process, whose work ran in threads of the plugin process). ``--lean-python`` runs the lean
build (its own environment, the demo model).

``--hostile``: four image URLs that drip a byte at a time, a PDF form bomb and a pixel bomb in flight, with the
SDK's default MAX_WORKER, then 2,000 mixed requests (the viewer among them) with 24 in flight. Targets: every
request ends within its deadline + 1 s, /retrieval p95 <= 1.5 s, the viewer always answers, heartbeats never
pause > 2 s, memory (the plugin and its worker processes) grows <= 1.5 GB.

``--fairness``: two workspaces on one plugin. Workspace A sends a flood of /v1/search calls at once (180, under
its queue share), and workspace B meanwhile sends a search every 0.1 s; B's latency is what one endpoint key's
flood costs another workspace. With ``--plugin-dir``, the same run on another checkout (the baseline).

    python benchmarks/bench_load.py [--requests 150] [--images 500]
    python benchmarks/bench_load.py --fairness [--plugin-dir DIR]
    python benchmarks/bench_load.py --soak [--plugin-dir DIR] [--lean-python PY]
    python benchmarks/bench_load.py --hostile
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.bench_ingest import save_vit_b32  # noqa: E402
from benchmarks.bench_model_package import file_server, photos  # noqa: E402
from benchmarks.common import cpu_steal_seconds, machine, save, table  # noqa: E402

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


SOAK_ROUNDS, SOAK_ROUND, SOAK_IN_FLIGHT = 3, 300, 24
HOSTILE_REQUESTS = 2000
# Each kind's deadline (the tools' 570 s, the endpoints' request_timeout default, Dify's 5 s for /retrieval).
DEADLINES = {"search": 570, "embed": 570, "collections": 570, "v1_search": 300, "align": 300, "viewer": 300,
             "retrieval": 4.5}


def soak_rows(plugin, space, rounds: int = SOAK_ROUNDS) -> list[dict]:
    """Rounds of mixed requests with 24 in flight: per round and kind, p50 / p95 and the answers of 504."""
    from load_mix import KINDS, percentile, run_mix

    rows, sent = [], 0
    for number in range(1, rounds + 1):
        steal_before = cpu_steal_seconds()
        outcome = run_mix(plugin, space, SOAK_ROUND, SOAK_IN_FLIGHT, start=sent, timeout=600)
        steal = round(cpu_steal_seconds() - steal_before, 1)
        sent += outcome.sent
        late = [f for f in outcome.failures if "HTTP 504" in f or "did not finish within" in f]
        for kind in KINDS:
            values = outcome.latencies.get(kind, [])
            rows.append({"round": number, "kind": kind, "n": len(values), "p50_s": round(percentile(values, 0.5), 3),
                         "p95_s": round(percentile(values, 0.95), 3),
                         "504s": sum(1 for f in late if f.startswith(kind + ":"))})
        rows.append({"round": number, "kind": "all", "n": outcome.sent, "p50_s": "", "p95_s": "",
                     "504s": len(late), "other_failures": len(outcome.failures) - len(late),
                     "parked": len(outcome.parked), "seconds": round(outcome.seconds, 1), "cpu_steal_s": steal})
    return rows


def start_plugin(work: Path, plugin_dir: str | None, lean_python: str | None, warm: list[str], env: dict | None = None):
    """A plugin process with ``warm`` models remembered (they load at start, while the first requests come)."""
    import json as json_module

    from stdio_harness import PluginProcess

    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "warm-models.json").write_text(json_module.dumps([{"model": m, "device": "cpu", "precision": "fp32"}
                                                              for m in warm]))
    (home / "warm-ocr").touch()  # the install read text before this start (its Align calls test for text)
    options = {"env": {"CROSSMODAL_HOME": str(home), **(env or {})}, "heartbeat_interval": 0.5}
    if plugin_dir:
        options["cwd"] = Path(plugin_dir)
    if lean_python:
        from conftest import modules_outside

        options.update(python=lean_python, missing=modules_outside(ROOT / "requirements-onnx.txt"))
    started = time.monotonic()
    plugin = PluginProcess(**options)
    plugin.wait_ready(timeout=300, worker=False)
    first_heartbeat = time.monotonic() - started
    return plugin, first_heartbeat


def soak(args) -> dict:
    from load_mix import Workspace, rss_mb, run_mix, seed_collection
    from tiny_models import save_tiny_clip

    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    if args.lean_python:
        model, warm = "demo-shapes", ["demo-shapes"]
    else:
        model = str(save_vit_b32(work / "vit-b32"))
        warm = [str(save_tiny_clip(work / f"m{k}", seed=k, layers=12)) for k in range(2)] + [model]
    plugin, first_heartbeat = start_plugin(work, args.plugin_dir, args.lean_python, warm)
    space = Workspace(str(work / "store"), model=model)
    try:
        cold = run_mix(plugin, space, 200, SOAK_IN_FLIGHT, kinds=("ingest", "embed", "collections"), pace=0.01,
                       timeout=600)
        seed_collection(plugin, space)
        rss_after_cold = rss_mb(plugin.proc.pid)
        rows = soak_rows(plugin, space)
        rss_end = rss_mb(plugin.proc.pid)
        processes = process_memory(plugin.proc.pid)
    finally:
        plugin.close()
    from load_mix import percentile

    cold_latencies = [v for values in cold.latencies.values() for v in values]
    print(table(rows, ["round", "kind", "n", "p50_s", "p95_s", "504s", "seconds", "cpu_steal_s"]))
    summary = {"first_heartbeat_s": round(first_heartbeat, 2), "cold_requests": cold.sent,
               "cold_p95_s": round(percentile(cold_latencies, 0.95), 3), "cold_failures": len(cold.failures),
               "rss_mb_after_cold": round(rss_after_cold), "rss_mb_end": round(rss_end), **processes}
    print(table([summary], list(summary)))
    result = {"machine": machine(), "plugin": args.plugin_dir or "this checkout",
              "build": "lean" if args.lean_python else "torch", "rows": rows, "summary": summary}
    save("load-soak-lean" if args.lean_python else ("load-soak-baseline" if args.plugin_dir else "load-soak"), result)
    return result


def process_memory(pid: int) -> dict:
    """Resident MB of the plugin process and of each process it started (the worker, PDF workers)."""
    from load_mix import _rss_mb, descendants

    out = {"rss_mb_plugin_process": round(_rss_mb(pid))}
    for k, child in enumerate(descendants(pid)):
        out[f"rss_mb_child_{k}"] = round(_rss_mb(child))
    return out


def hostile(args) -> dict:
    """Attacks in flight while 2,000 mixed requests run (see the module's text)."""
    import base64
    import io
    import threading
    from http.server import ThreadingHTTPServer

    from PIL import Image

    from crossmodal.lab.pdfs import form_bomb_pdf
    from load_mix import KINDS, Workspace, max_heartbeat_gap, percentile, rss_mb, run_mix, seed_collection
    from stdio_harness import endpoint_request, http_response
    from test_bounded import _Drip

    work = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    drip = ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    drip.daemon_threads = True
    threading.Thread(target=drip.serve_forever, daemon=True).start()
    env = {"CROSSMODAL_URL_ALLOWLIST": "127.0.0.1"}  # the drip server stands in for a public host
    env.pop("MAX_WORKER", None)
    plugin, _ = start_plugin(work, None, None, [], env)
    plugin.wait_ready(timeout=300)
    space = Workspace(str(work / "store"))
    auth = {"Authorization": "Bearer k"}
    buffer = io.BytesIO()
    Image.new("RGB", (6000, 6000), (10, 120, 200)).save(buffer, "PNG", compress_level=1)
    png = base64.b64encode(buffer.getvalue()).decode()
    try:
        seed_collection(plugin, space)
        rss_before = rss_mb(plugin.proc.pid)
        began = time.monotonic()
        attacks = [plugin.send(endpoint_request(space.settings, "POST", "/v1/search", {
            "image_url": f"http://127.0.0.1:{drip.server_port}/body", "target": "text"}, auth)) for _ in range(4)]
        attacks.append(plugin.send(endpoint_request(space.settings, "POST", "/v1/ingest", {
            "items": [{"image": base64.b64encode(form_bomb_pdf(10, 8)).decode()}], "collection": "bombs"}, auth)))
        pixel_bomb = {"images": [png] * max(1, (8 * 2**20) // len(png))}
        attacks.append(plugin.send(endpoint_request(space.settings, "POST", "/v1/embed", pixel_bomb, auth)))
        outcome = run_mix(plugin, space, args.requests or HOSTILE_REQUESTS, 24, kinds=(*KINDS, "viewer"),
                          timeout=600)
        attack_answers = plugin.collect(attacks, timeout=600, partial=True)
        ended = time.monotonic()
        rss_peak = rss_mb(plugin.proc.pid)
        gap = max_heartbeat_gap(plugin, began, ended)
    finally:
        plugin.close()
        drip.shutdown()
    rows = []
    for kind in (*KINDS, "viewer"):
        values = outcome.latencies.get(kind, [])
        rows.append({"kind": kind, "n": len(values), "p50_s": round(percentile(values, 0.5), 3),
                     "p95_s": round(percentile(values, 0.95), 3), "max_s": round(max(values), 3) if values else "",
                     "deadline_s": DEADLINES[kind],
                     "over_deadline_plus_1": sum(1 for v in values if v > DEADLINES[kind] + 1)})
    attack_rows = [{"attack": name, "status": http_response(attack_answers[sid])[0] if sid in attack_answers
                    else "never ended"} for name, sid in zip(["drip"] * 4 + ["pdf bomb", "pixel bomb"], attacks)]
    print(table(rows, list(rows[0])))
    print(table(attack_rows, ["attack", "status"]))
    retrieval = next(r for r in rows if r["kind"] == "retrieval")
    viewer = next(r for r in rows if r["kind"] == "viewer")
    targets = {"every request within its deadline + 1 s": all(r["over_deadline_plus_1"] == 0 for r in rows)
               and not outcome.parked,
               "retrieval p95 <= 1.5 s": retrieval["p95_s"],
               "the viewer always answers": viewer["n"] > 0 and not any(f.startswith("viewer") for f in outcome.failures),
               "longest heartbeat pause <= 2 s": round(gap, 2),
               "RSS growth <= 1.5 GB": round((rss_peak - rss_before) / 1024, 2),
               "failures": outcome.failures[:5]}
    print(targets)
    result = {"machine": machine(), "rows": rows, "attacks": attack_rows, "targets": targets}
    save("load-hostile", result)
    return result


FLOOD = 180  # workspace A's searches sent at once (its queue share is 192)
PROBES = 20  # workspace B's searches, sent one every PROBE_EVERY seconds while the flood is served
PROBE_EVERY = 0.1


def fairness(args) -> dict:
    """One endpoint key's flood against another workspace's searches (see the module's text)."""
    from load_mix import Workspace, percentile, request, seed_collection, small_png

    work = Path(tempfile.mkdtemp(prefix="bench-fairness-"))
    model = str(save_vit_b32(work / "vit-b32"))
    image, rows = small_png(), []
    for label, plugin_dir in [("this checkout", None)] + ([("baseline", args.plugin_dir)] if args.plugin_dir else []):
        plugin, _ = start_plugin(work / label.replace(" ", "-"), plugin_dir, None, [model])
        flooder, other = (Workspace(str(work / label.replace(" ", "-") / name), model=model) for name in "ab")
        try:
            plugin.wait_ready(timeout=300)
            for space in (flooder, other):
                seed_collection(plugin, space)
                plugin.call(request("v1_search", 0, space, image), 120)
            started = time.monotonic()
            flood = [plugin.send(request("v1_search", k, flooder, image)) for k in range(args.requests or FLOOD)]
            waits, probe_statuses = _probe(plugin, [request("v1_search", k, other, image) for k in range(PROBES)])
            answers = plugin.collect(flood, timeout=600, partial=True)
            flood_seconds = time.monotonic() - started
        finally:
            plugin.close()
        statuses = collections.Counter(_status(answers.get(sid)) for sid in flood)
        rows.append({"plugin": label, "b_p50_s": round(percentile(waits, 0.5), 3),
                     "b_p95_s": round(percentile(waits, 0.95), 3), "b_max_s": round(max(waits), 3),
                     "b_answers": dict(probe_statuses), "a_flood_s": round(flood_seconds, 1),
                     "a_answers": dict(statuses)})
    print(table(rows, list(rows[0])))
    result = {"machine": machine(), "flood": args.requests or FLOOD, "probes": PROBES, "rows": rows}
    save("load-fairness", result)
    return result


def _probe(plugin, requests: list[dict], every: float = PROBE_EVERY) -> tuple[list[float], collections.Counter]:
    """Send ``requests`` one every ``every`` seconds without waiting, harvesting answers meanwhile: each one's
    latency and the answers' statuses."""
    pending, waits, statuses = {}, [], collections.Counter()

    def harvest(seconds: float) -> None:
        done = plugin.collect(list(pending), timeout=seconds, partial=True, first=True)
        now = time.monotonic()
        for sid, messages in done.items():
            waits.append(now - pending.pop(sid))
            statuses[_status(messages)] += 1

    for data in requests:
        pending[plugin.send(data)] = time.monotonic()
        ends = time.monotonic() + every
        while pending and time.monotonic() < ends:
            harvest(max(0.001, ends - time.monotonic()))
        time.sleep(max(0.0, ends - time.monotonic()))
    ends = time.monotonic() + 300
    while pending and time.monotonic() < ends:
        harvest(1.0)
    statuses.update({"never ended": len(pending)} if pending else {})
    return waits, statuses


def _status(messages) -> str:
    from stdio_harness import http_response

    if not messages:
        return "never ended"
    try:
        return str(http_response(messages)[0])
    except (KeyError, ValueError, StopIteration):
        return "no response"


def main(argv: list[str] | None = None) -> dict:
    from load_mix import Workspace, seed_collection
    from stdio_harness import PluginProcess, dify_file

    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=None, help="requests per in-flight level (default 150) or "
                        "of the hostile mix (default 2,000)")
    parser.add_argument("--images", type=int, default=500, help="images in the ingest that runs beside /retrieval")
    parser.add_argument("--soak", action="store_true", help="the issue-42 soak (see the module's text)")
    parser.add_argument("--hostile", action="store_true", help="attacks in flight beside 2,000 mixed requests")
    parser.add_argument("--fairness", action="store_true", help="one workspace's flood against another's searches")
    parser.add_argument("--plugin-dir", help="with --soak or --fairness: also run this checkout's plugin (a "
                        "baseline)")
    parser.add_argument("--lean-python", help="with --soak: the lean build, run by this interpreter")
    args = parser.parse_args(argv)
    if args.soak:
        return soak(args)
    if args.hostile:
        return hostile(args)
    if args.fairness:
        return fairness(args)
    args.requests = args.requests or 150
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
