"""The CLI contract scripts rely on: `ingest --json` and `search --json` shapes, exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run(*args, env=None, check=True):
    out = subprocess.run([sys.executable, "-m", "crossmodal", *args], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=300)
    if check:
        assert out.returncode == 0, out.stderr
    return out


@pytest.mark.slow
def test_ingest_then_search_json_contract(tmp_path, tiny_clip_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        Image.new("RGB", (30, 30), (60 * i, 20, 200)).save(photos / f"p{i}.png")
    (photos / "broken.jpg").write_bytes(b"garbage")
    env = {"CROSSMODAL_HOME": str(tmp_path / "home")}  # the default data directory
    first = json.loads(run("ingest", str(photos), "--collection", "pics", "--model", str(tiny_clip_dir), "--json",
                           env=env).stdout)
    assert first["added"] == 4 and first["duplicates"] == 0
    assert [r["source"] for r in first["rejected"]] == [str(photos / "broken.jpg")]
    second = json.loads(run("ingest", str(photos), "--collection", "pics", "--json", env=env).stdout)
    assert (second["added"], second["duplicates"]) == (0, 4)

    found = json.loads(run("search", "a photo", "--collection", "pics", "--top-k", "2", "--json", env=env).stdout)
    assert found["model"] == str(tiny_clip_dir.resolve())
    assert len(found["results"]) == 2
    assert set(found["results"][0]) == {"id", "score", "payload"} and "source" in found["results"][0]["payload"]
    by_image = json.loads(run("search", "--image", str(photos / "p2.png"), "--collection", "pics", "--top-k", "1",
                              "--filter", '{"kind": "image"}', "--json", env=env).stdout)
    assert by_image["results"][0]["payload"]["source"] == str(photos / "p2.png")

    listing = run("collections", "--json", env=env).stdout
    assert json.loads(listing)["collections"][0]["count"] == 4


def test_errors_exit_2_with_a_message(tmp_path):
    env = {"CROSSMODAL_HOME": str(tmp_path)}
    out = run("search", "x", "--collection", "absent", env=env, check=False)
    assert out.returncode == 2 and "no collection named 'absent'" in out.stderr
    out = run("search", "x", "--collection", "absent", "--top-k", "0", env=env, check=False)
    assert out.returncode == 2 and "top_k" in out.stderr


def test_help_is_instant_and_lists_the_stages():
    out = run("--help").stdout
    for stage in ("ingest", "search", "embed", "collections", "train", "eval", "demo"):
        assert stage in out


def test_package_honours_difyignore(tmp_path):
    import zipfile

    target = tmp_path / "crossmodal.difypkg"
    run("package", "--out", str(target))
    names = set(zipfile.ZipFile(target).namelist())
    assert {"manifest.yaml", "main.py", "provider/crossmodal.yaml", "tools/search.py", "_assets/icon.svg",
            "crossmodal/service.py", "requirements.txt", "PRIVACY.md", "README.md", "endpoints/crossmodal.yaml",
            "endpoints/retrieval.py", "crossmodal/assets/viewer.html",
            "crossmodal/assets/demo-shapes/crossmodal_calibration.json"} <= names
    assert not any(n.startswith(("tests/", ".git/", "benchmarks/", ".ci/", ".hypothesis/", "test-artifacts/"))
                   for n in names)
    assert not any("__pycache__" in n for n in names)
