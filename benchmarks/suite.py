"""The whole benchmark suite in one command: a table of headline figures beside their baselines and targets,
and one JSON file for comparison between commits.

    python -m benchmarks.suite                     # everything (about 30 minutes on a 2-core CPU)
    python -m benchmarks.suite --quick             # smaller sizes (about 5 minutes)
    python -m benchmarks.suite --only ingest,align --compare benchmarks/results/suite-OLDCOMMIT.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (bench_align, bench_batching, bench_ingest, bench_memory, bench_rerank, bench_runtimes,  # noqa
                        bench_serve, bench_storage, bench_store)
from benchmarks.common import RESULTS, machine, table  # noqa: E402

SECTIONS = ("ingest", "store", "batching", "align", "rerank", "memory", "storage", "serve", "runtimes")


def run_sections(only: list[str], quick: bool) -> dict:
    runs = {
        "ingest": lambda: bench_ingest.main(["--images", "128" if quick else "256",
                                             "--naive-images", "24" if quick else "48"]),
        "store": lambda: bench_store.main(["--sizes", "10000" if quick else "10000,100000",
                                           "--skip-local-above", "0"]),
        "batching": lambda: bench_batching.main(["--queries", "8" if quick else "20"]),
        "align": lambda: bench_align.main(["--repeat", "2" if quick else "5"]),
        "rerank": lambda: bench_rerank.main(["--pairs", "64" if quick else "256"]),
        "memory": lambda: bench_memory.main(["--sizes", "300,3000" if quick else "1000,10000"]),
        # 1M points take about ten minutes per option here; run bench_storage.py alone for the full table.
        "storage": lambda: bench_storage.main(["--size", "50000" if quick else "200000",
                                               "--options", "float32,int8,int8-disk",
                                               "--local-size", "10000" if quick else "50000"]),
        "serve": lambda: bench_serve.main(["--clients", "16" if quick else "50", "--seconds", "15" if quick else "60"]),
        # The lean build runs here with torch made unimportable; bench_runtimes.py --lean-python measures it in its
        # own virtualenv (docs/lean-runtime.md).
        "runtimes": lambda: bench_runtimes.main(["--images", "32" if quick else "64", "--queries", "10" if quick else "30"]),
    }
    results = {}
    for name in only:
        print(f"\n== {name} ==", flush=True)
        results[name] = runs[name]()
    return results


def headlines(results: dict) -> list[dict]:
    """One row per figure the issues set a target for: value, what it is compared with, the target."""
    rows = []
    if "ingest" in results:
        by_path = {r.get("asked", r["path"]): r for r in results["ingest"]["rows"]}
        limit = results["ingest"]["rows"][0]["images_per_s"]
        for precision in ("fp32", "bf16", "onnx", "int8"):
            if precision in by_path:
                r = by_path[precision]
                rows.append({"figure": f"ingest images/s, {r['path'].split(', ')[-1]}", "value": r["images_per_s"],
                             "baseline": f"naive x{r['vs_naive']}, fp32 limit ({limit}) x{r['vs_limit']}",
                             "target": ">= 100 (2.2x limit, 8x naive)", "cosine": r["cosine_to_fp32"]})
    if "store" in results:
        for r in results["store"]["rows"]:
            if r["engine"].startswith("embedded"):
                rows.append({"figure": f"query p50 ms, {r['size']:,} points", "value": round(r["query_p50_ms"], 2),
                             "baseline": f"recall@10 {r['recall@10']:.3f} vs exact",
                             "target": "<= 10 ms, recall >= 0.95"})
    if "batching" in results:
        many = [r for r in results["batching"]["rows"] if r["clients"] > 1]
        if len(many) == 2:
            rows.append({"figure": f"text queries/s, {many[0]['clients']} concurrent sessions, dynamic batching",
                         "value": many[1]["queries_per_s"],
                         "baseline": f"one per pass {many[0]['queries_per_s']} (x"
                                     f"{many[1]['queries_per_s'] / many[0]['queries_per_s']:.2f})", "target": ""})
    if "align" in results:
        naive = results["align"]["rows"][0]["ms"]
        for r in results["align"]["rows"][1:]:
            rows.append({"figure": f"align 2048^2 ms, {r['pass'].split(', ')[-1]}", "value": r["ms"],
                         "baseline": f"naive {naive} ms (x{r['speedup']})", "target": "<= 1000"})
    if "rerank" in results:
        for r in results["rerank"]["rows"]:
            rows.append({"figure": f"rerank pairs/s: {r['what']}", "value": r["per_s"],
                         "baseline": f"{r['ms']} ms / query" if "ms" in r else f"fp32 limit x{r.get('of_limit')}",
                         "target": ""})
    if "memory" in results:
        first, last = results["memory"]["rows"][0], results["memory"]["rows"][-1]
        rows.append({"figure": f"peak RSS MB ingesting {last['images']:,} images", "value": last["peak_rss_mb"],
                     "baseline": f"{first['images']:,} images: {first['peak_rss_mb']} (x{last['vs_smallest']})",
                     "target": "within 20 %"})
    if "storage" in results:
        for r in results["storage"]["rows"]:
            if r["backend"] == "embedded":
                rows.append({"figure": f"storage {r['storage']}, {r['size']:,} points: query p50 ms", "value": r["p50_ms"],
                             "baseline": f"recall@10 {r['recall@10']}, peak RSS x{r['rss_vs_float32']} of float32",
                             "target": "int8: <= 10 ms, recall >= 0.95, RSS <= 0.4x"})
    if "serve" in results:
        r = results["serve"]["rows"][0]
        rows.append({"figure": f"serve p95 ms, {r['clients']} clients for {r['seconds']:.0f} s", "value": r["p95_ms"],
                     "baseline": f"single-client p50 {r['single_p50_ms']} (x{r['p95_vs_single_p50']}), "
                                 f"{r['errors']} errors", "target": "no error, < 5x"})
    if "runtimes" in results:
        full, lean = results["runtimes"]["rows"]
        for key, target in (("installed_mb", "<= 400"), ("start_s", "<= 1.5"), ("idle_rss_mb", "<= 250"),
                            ("ingest_images_per_s", ">= full"), ("query_p50_ms", "<= full")):
            rows.append({"figure": f"lean build {key}", "value": lean[key], "baseline": f"full build {full[key]}",
                         "target": target})
    return rows


def compare(rows: list[dict], previous_path: str) -> None:
    previous = {r["figure"]: r["value"] for r in json.loads(Path(previous_path).read_text())["headlines"]}
    print(f"\ncompared with {previous_path}:")
    for r in rows:
        old = previous.get(r["figure"])
        if isinstance(old, (int, float)) and isinstance(r["value"], (int, float)) and old:
            print(f"  {r['figure']}: {old} -> {r['value']} ({(r['value'] / old - 1) * 100:+.1f} %)")


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--compare", help="a previous suite JSON to print changes against")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    results = run_sections(only, args.quick)
    rows = headlines(results)
    print("\n== summary ==")
    print(table(rows, ["figure", "value", "baseline", "target"]))
    out = {"commit": commit(), "machine": machine(), "quick": args.quick, "headlines": rows, "sections": results}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"suite-{out['commit']}.json"
    path.write_text(json.dumps(out, indent=2, default=str))
    (RESULTS / "suite.json").write_text(json.dumps(out, indent=2, default=str))
    print(f"saved {path}")
    if args.compare:
        compare(rows, args.compare)
    return out


if __name__ == "__main__":
    main()
