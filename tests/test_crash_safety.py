"""kill -9 in the middle of an ingest of 600 images, then the same ingest again: exactly 600 points,
no duplicates, and the store opens cleanly."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kill_mid_run import kill_after_progress

ROOT = Path(__file__).resolve().parents[1]
N = 600  # several 128-file chunks after the kill, at a fraction of a 1,000-file run's time


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("thousand")
    rng = np.random.default_rng(7)
    for k in range(N):  # distinct content: every file is a different point
        pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{k:04d}.png")
    return folder


def _ingest(images: Path, store: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "crossmodal", "ingest", str(images), "--collection", "c", "--store", str(store),
         "--model", "demo-shapes", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.slow
def test_kill_9_mid_ingest_then_rerun(images, tmp_path):
    store = tmp_path / "store"
    kill_after_progress(_ingest(images, store), N, 256)  # two chunks of 128 written

    rerun = _ingest(images, store, "--json")
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err.decode()[-2000:]
    import json

    report = json.loads(out)
    assert report["added"] + report["duplicates"] == N and report["duplicates"] >= 256
    assert report["added"] > 0, "the kill came after the ingest had finished: nothing was tested"
    assert not report["rejected"]

    from crossmodal.store import Condition
    from crossmodal.store.edge import EdgeStore

    reopened = EdgeStore(store)
    try:
        assert reopened.count("c") == N
        for k in (0, 1, 300, N - 1):  # each file once, whether written before or after the kill
            assert reopened.count("c", [Condition("source", "eq", str(images / f"img{k:04d}.png"))]) == 1
    finally:
        reopened.close()
