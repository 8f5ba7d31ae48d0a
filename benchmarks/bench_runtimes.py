"""The two builds side by side (issue 30): the full package (torch) and the lean one (ONNX Runtime alone), each
unpacked as the daemon does and driven over stdio in the same run.

Per build: installed size of what its requirements pull in, time from process start to the first heartbeat
(warm: best of --starts), idle RSS, RSS after loading a ViT-B/32-size CLIP (random weights: size and speed are
the real model's), ingest images/s end to end through the Ingest node, and the Search node's query latency.
The full build runs int8 (its fastest CPU path, ONNX Runtime towers exported on first use); the lean build runs
the same model exported with `python -m crossmodal export --int8`.

    python benchmarks/bench_runtimes.py [--images 128] [--rounds 2] [--queries 30] [--lean-python PATH]

--lean-python: the interpreter of a virtualenv installed from requirements-onnx.txt alone (its size is then
measured as installed; without it the lean plugin runs here with every module outside requirements-onnx.txt made
unimportable, and its size is what those requirements pull in from this environment).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.bench_ingest import cpu_line, save_vit_b32  # noqa: E402
from benchmarks.bench_model_package import file_server, photos  # noqa: E402
from benchmarks.common import save, table  # noqa: E402

# Sums the files of every distribution a requirements file pulls in, in the interpreter that runs it.
INSTALLED_SIZE = r"""
import re, sys
from importlib import metadata
def normal(name): return re.split(r"[<>=!~\[ ;(]", name.strip())[0].lower().replace("_", "-")
queue = [normal(l.split("#")[0]) for l in open(sys.argv[1]) if l.split("#")[0].strip()]
seen, total = set(), 0
while queue:
    name = queue.pop()
    if name in seen: continue
    seen.add(name)
    try: dist = metadata.distribution(name)
    except metadata.PackageNotFoundError: continue
    total += sum(f.size or 0 for f in dist.files or [])
    queue += [normal(r) for r in dist.requires or [] if "extra ==" not in r]
print(total)
"""


def installed_mb(python: str, requirements: Path) -> float:
    out = subprocess.run([python, "-c", INSTALLED_SIZE, str(requirements)], capture_output=True, text=True, check=True)
    return round(int(out.stdout) / 1e6, 1)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def unpack(work: Path, runtime: str) -> Path:
    from crossmodal.dify.packaging import build_package

    package = build_package(ROOT, str(work / f"{runtime}.difypkg"), runtime=runtime)
    folder = work / "cwd" / f"crossmodal-0.1.0@{runtime}"
    zipfile.ZipFile(package).extractall(folder)
    return folder


def start(build: dict):
    from stdio_harness import PluginProcess

    started = time.perf_counter()
    process = PluginProcess(cwd=build["folder"], heartbeat_interval=0.02, python=build["python"],
                            missing=build["missing"], env={"CROSSMODAL_ONNX_CACHE": build["onnx_cache"]})
    process.wait_ready()
    return process, time.perf_counter() - started


def measure(build: dict, files: list, queries: list[str], starts: int, rounds: int) -> dict:
    from stdio_harness import errors, json_message, tool_request

    start_times = []
    for _ in range(starts):
        process, seconds = start(build)
        start_times.append(seconds)
        process.close()
    process, _ = start(build)
    try:
        time.sleep(1.0)
        idle = rss_mb(process.proc.pid)
        creds = {"data_dir": build["data_dir"], "model": build["model"], "precision": "int8",
                 "default_collection": "photos"}
        # Loads the model and runs both towers once (ONNX Runtime prepares a graph on its first run).
        loaded = process.call(tool_request("embed", {"texts": "warm up", "images": files[:1]}, creds), timeout=600)
        assert not errors(loaded), errors(loaded)
        after_load = rss_mb(process.proc.pid)
        seconds = float("inf")
        for attempt in range(rounds):  # the best of a few rounds, each into a new collection
            started = time.perf_counter()
            report = process.call(tool_request("ingest", {"files": files, "collection": f"photos{attempt}"}, creds),
                                  timeout=900)
            seconds = min(seconds, time.perf_counter() - started)
            assert not errors(report), errors(report)
            report = json_message(report)
        latencies = []
        for query in queries:
            began = time.perf_counter()
            assert not errors(process.call(tool_request("search", {"query": query, "top_k": 10,
                                                                   "collection": "photos0"}, creds)))
            latencies.append((time.perf_counter() - began) * 1000)
        return {"start_s": round(min(start_times), 2), "idle_rss_mb": idle, "loaded_rss_mb": after_load,
                "precision": report["precision"], "ingest_images_per_s": round(report["added"] / seconds, 1),
                "query_p50_ms": round(statistics.median(latencies), 1),
                "query_p95_ms": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 1)}
    finally:
        process.close()


def encoder_query_ms(model: Path, lean_model: Path, queries: list[str], onnx_cache: Path) -> dict:
    """A text query's vector in this process, median ms: the encoders alone, without stdio and store (their
    difference is below the end-to-end figure's run-to-run spread). Both int8."""
    import os

    from crossmodal.encoders.models import get_encoder
    from crossmodal.encoders.onnx_encoder import OnnxEncoder

    os.environ["CROSSMODAL_ONNX_CACHE"] = str(onnx_cache)  # the full plugin then finds this export in its cache
    encoders = {"full (torch)": get_encoder(str(model), "cpu", None, "int8"), "lean (onnx)": OnnxEncoder(lean_model)}
    out = {}
    for name, encoder in encoders.items():
        encoder.query_text_vector("warm up")
        times = []
        for query in queries * 3:
            started = time.perf_counter()
            encoder.query_text_vector(query)
            times.append((time.perf_counter() - started) * 1000)
        out[name] = round(statistics.median(times), 2)
    return out


def main(argv: list[str] | None = None) -> dict:
    from conftest import modules_outside
    from crossmodal.encoders.onnx_export import export_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="ingest rounds per build (the best counts)")
    parser.add_argument("--lean-python", help="interpreter of a virtualenv of requirements-onnx.txt")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    model = save_vit_b32(work / "vit-b32")
    lean_model = work / "vit-b32-onnx-int8"
    export_model(str(model), lean_model, int8=True)
    (work / "files").mkdir()
    for k, blob in enumerate(photos(args.images)):
        (work / "files" / f"p{k}.jpg").write_bytes(blob)
    server = file_server(work / "files")
    from stdio_harness import dify_file

    files = [dify_file(f"http://127.0.0.1:{server.server_port}/p{k}.jpg", f"p{k}.jpg",
                       (work / "files" / f"p{k}.jpg").stat().st_size, "image/jpeg") for k in range(args.images)]
    queries = [f"a photo of a {w} on a table" for w in ("cat", "dog", "red cup", "bicycle", "tree", "car")]
    queries = (queries * (args.queries // len(queries) + 1))[:args.queries]
    lean_python = args.lean_python or sys.executable
    builds = {
        "full (torch)": {"folder": unpack(work, "torch"), "python": sys.executable, "missing": (),
                         "model": str(model), "requirements": ROOT / "requirements.txt"},
        "lean (onnx)": {"folder": unpack(work, "onnx"), "python": lean_python,
                        "missing": () if args.lean_python else modules_outside(ROOT / "requirements-onnx.txt"),
                        "model": str(lean_model), "requirements": ROOT / "requirements-onnx.txt"},
    }
    encoder_ms = encoder_query_ms(model, lean_model, queries, work / "onnx-cache-0")
    rows = []
    try:
        for name, build in builds.items():
            build.update(data_dir=str(work / f"store-{len(rows)}"), onnx_cache=str(work / f"onnx-cache-{len(rows)}"))
            row = {"build": name, "python": subprocess.run([build["python"], "-c", "import platform; print("
                                                            "platform.python_version())"], capture_output=True,
                                                           text=True).stdout.strip(),
                   "installed_mb": installed_mb(build["python"], build["requirements"])}
            row.update(measure(build, files, queries, args.starts, args.rounds))
            row["encoder_query_ms"] = encoder_ms[name]
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        server.shutdown()
    full, lean = rows
    ratios = {key: round(lean[key] / full[key], 2) for key in
              ("installed_mb", "start_s", "idle_rss_mb", "loaded_rss_mb", "ingest_images_per_s", "query_p50_ms",
               "encoder_query_ms")}
    columns = ["build", "python", "installed_mb", "start_s", "idle_rss_mb", "loaded_rss_mb", "precision",
               "ingest_images_per_s", "query_p50_ms", "query_p95_ms", "encoder_query_ms"]
    print(cpu_line())  # both builds' int8 figures hold for this instruction set (docs/benchmarks.md)
    print(table(rows, columns))
    print("lean / full:", ratios)
    result = {"cpu": cpu_line(), "rows": rows, "lean_over_full": ratios, "images": args.images,
              "queries": args.queries,
              "targets": "lean env <= 400 MB; start <= 1.5 s; idle RSS <= 250 MB; ingest >= full int8; "
                         "query p50 <= full"}
    save("runtimes", result)
    return result


if __name__ == "__main__":
    main()
