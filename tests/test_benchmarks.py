"""The benchmark scripts' own contracts (the figures themselves are measured, not tested)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_says_when_there_is_no_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the check would measure it")
    run = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0
    assert run.stdout.startswith("no GPU found")


def test_suite_rejects_unknown_sections():
    run = subprocess.run([sys.executable, "-m", "benchmarks.suite", "--only", "ingest,warp"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "unknown sections ['warp']" in run.stderr


def test_suite_headlines_carry_baselines_and_targets():
    sys.path.insert(0, str(ROOT))
    from benchmarks.suite import headlines

    results = {
        "ingest": {"rows": [{"path": "fp32 limit", "images_per_s": 20.0},
                            {"path": "naive", "images_per_s": 10.0, "vs_naive": 1.0},
                            {"path": "pipelined ingest, int8", "asked": "int8", "images_per_s": 40.0,
                             "vs_naive": 4.0, "vs_limit": 2.0, "cosine_to_fp32": 0.9998}]},
        "memory": {"rows": [{"images": 1000, "peak_rss_mb": 500.0, "vs_smallest": 1.0},
                            {"images": 10000, "peak_rss_mb": 550.0, "vs_smallest": 1.1}]},
        "runtimes": {"rows": [{"installed_mb": 1255.0, "start_s": 3.8, "idle_rss_mb": 404.0, "ingest_images_per_s": 21.0,
                               "query_p50_ms": 10.0},
                              {"installed_mb": 275.0, "start_s": 0.96, "idle_rss_mb": 116.0, "ingest_images_per_s": 22.0,
                               "query_p50_ms": 9.0}]},
    }
    rows = {r["figure"]: r for r in headlines(results)}
    ingest = rows["ingest images/s, int8"]
    assert ingest["value"] == 40.0 and "naive x4.0" in ingest["baseline"] and "x2.0" in ingest["baseline"]
    assert rows["peak RSS MB ingesting 10,000 images"]["baseline"] == "1,000 images: 500.0 (x1.1)"
    start = rows["lean build start_s"]
    assert (start["value"], start["baseline"], start["target"]) == (0.96, "full build 3.8", "<= 1.5")
