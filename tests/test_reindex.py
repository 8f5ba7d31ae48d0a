"""The reindex command: a collection made before the lexical index gets it (and the text in the pictures of its
original files, matched by content), nothing else of its points changes, and a kill -9 in the middle followed by
a second run leaves every point indexed and intact."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crossmodal.lexical import document_text, document_vector
from crossmodal.service import ImageInput, IngestItem, Service
from crossmodal.settings import Settings
from crossmodal.store import StoredPoint
from kill_mid_run import kill_after_progress

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("pump valve report invoice ledger harbour station bracket sensor cable meeting audit north river quiet "
         "signed replaced shipped measured").split()


def point_id(k: int) -> str:
    return f"00000000-0000-0000-0000-{k:012d}"


def old_points(n: int, seed: int = 0, words: int = 12) -> list[StoredPoint]:
    """What a collection made before the lexical index holds: pictures with captions (one without any), texts,
    and region points of a picture."""
    rng, generator = random.Random(seed), np.random.default_rng(seed)
    out = []
    for k in range(n):
        vector = generator.normal(size=8)
        text = " ".join(rng.choice(WORDS) for _ in range(words)) + f" part PS-{1000 + k}-V{k % 10}"
        if k % 10 == 9:
            payload = {"kind": "region", "parent_id": point_id(k - 1), "box": [0, 0, 10, 10]}
        elif k % 10 == 5:
            payload = {"kind": "image", "source": f"IMG_{k}.jpg"}
        elif k % 2:
            payload = {"kind": "text", "text": text, "source": f"note-{k}"}
        else:
            payload = {"kind": "image", "caption": text, "source": f"scan-{k}.png", "metadata": {"shelf": f"S{k}"}}
        out.append(StoredPoint(point_id(k), (vector / np.linalg.norm(vector)).tolist(), payload))
    return out


def expected_vector(payload: dict):
    terms = document_vector(document_text(payload))
    return terms if len(terms) and payload.get("kind") != "region" else None


def check_reindexed(store, name: str, before: list[StoredPoint]) -> None:
    """Every point's lexical vector is the one its text makes; payloads and dense vectors as they were."""
    after = {}
    offset = None
    while True:
        page, offset = store.scroll(name, offset, 256)
        after.update({p.id: p for p in page})
        if offset is None:
            break
    assert set(after) == {p.id for p in before}
    for p in before:
        stored = after[p.id]
        assert stored.payload == p.payload
        assert np.allclose(stored.vector, p.vector, atol=1e-6)
        wanted = expected_vector(p.payload)
        if wanted is None:
            assert stored.sparse is None, p.payload
        else:
            assert stored.sparse.indices == wanted.indices
            assert np.allclose(stored.sparse.values, wanted.values, atol=1e-5)


def test_reindex_gives_a_collection_made_before_its_lexical_index(store):
    before = old_points(40)
    store.create_collection("old", "m", 8, lexical=None)
    store.upsert("old", before)
    service = Service(Settings(model="m"), store=store)
    from crossmodal.ingest.reindex import reindex

    seen = []
    report = reindex(service, "old", batch=16, progress=seen.append)
    assert seen == [16, 16, 8] and report["vectors"]["points"] == 40 and not report["resumed"]
    assert report["vectors"]["with_text"] == 36  # the four regions have none (their text is their parent's)
    check_reindexed(store, "old", before)
    info = store.get_collection("old")
    assert info.lexical["text"] is True and info.reindex is None and info.count == 40
    found = service.search("PS-1012-V2", collection="old", mode="lexical", target="any", top_k=1)["results"]
    assert found[0]["id"] == point_id(12)
    again = reindex(service, "old")  # a second run over an indexed collection writes the same vectors
    assert again["vectors"]["points"] == 40
    check_reindexed(store, "old", before)


def test_reindex_reads_the_pictures_of_the_original_files_matched_by_content(tmp_path):
    from crossmodal.inputs.images import encode_png
    from crossmodal.lab.scans import fonts_available, photo_like, screenshot

    if not fonts_available(("dejavu-sans", "dejavu-sans-bold")):
        pytest.skip("Debian's fonts-dejavu-core is not installed")
    service = Service(Settings(data_dir=str(tmp_path / "store"), model="demo-shapes"))
    pictures = {"shot-a.png": encode_png(screenshot(11, code="MV-3318-K4").image),
                "shot-b.png": encode_png(screenshot(12, code="QT-5521-H7").image),
                "photo.png": encode_png(photo_like(3, (640, 480)).image)}
    service.ingest([IngestItem(image=ImageInput.from_bytes(n, d)) for n, d in pictures.items()], "shots", ocr="false")
    assert service.search("MV-3318-K4", collection="shots", mode="lexical")["results"] == []
    originals = tmp_path / "originals"
    originals.mkdir()
    for k, data in enumerate(pictures.values()):  # renamed since: matched by content, not by name
        (originals / f"renamed-{k}.png").write_bytes(data)
    (originals / "unrelated.png").write_bytes(encode_png(photo_like(4, (320, 240)).image))
    from crossmodal.cli import expand_paths
    from crossmodal.ingest.reindex import reindex

    files = [ImageInput.from_path(p) for p in expand_paths([str(originals)])]
    report = reindex(service, "shots", files)
    assert report["files"]["read"] == 2 and report["files"]["no_text"] == 1
    assert report["files"]["not_in_collection"] == 1 and not report["files"]["rejected"]
    top = service.search("MV-3318-K4", collection="shots", top_k=3)
    assert top["mode"] == "hybrid" and top["results"][0]["payload"]["source"] == "shot-a.png"
    assert "MV-3318-K4" in top["results"][0]["payload"]["ocr_text"].upper().replace(" ", "")
    assert top["results"][0]["payload"]["ocr_lines"] and "thumbnail" not in top["results"][0]["payload"]
    again = reindex(service, "shots", [ImageInput.from_path(p) for p in expand_paths([str(originals)])])
    assert again["files"]["already_read"] == 3 and again["files"]["read"] == 0  # nothing read twice
    from crossmodal.errors import CrossmodalError

    with pytest.raises(CrossmodalError) as refused:
        reindex(service, "shots", files, ocr="false")
    assert refused.value.param == "ocr"
    service.store.close()


N = 2400


def _reindex(store: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "crossmodal", "reindex", "old", "--store", str(store), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_kill_9_mid_reindex_then_rerun(tmp_path):
    from crossmodal.store.edge import EdgeStore

    before = old_points(N, seed=1, words=60)
    store = EdgeStore(tmp_path)
    store.create_collection("old", "m", 8, lexical=None)
    for start in range(0, N, 500):
        store.upsert("old", before[start:start + 500])
    store.close()

    kill_after_progress(_reindex(tmp_path, "--batch", "50"), N, 300)  # six batches written

    rerun = _reindex(tmp_path, "--json")
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err.decode()[-2000:]
    report = json.loads(out)
    assert report["resumed"] and report["vectors"]["total_done"] == N
    assert report["vectors"]["points"] < N, "the kill came after the reindex had finished: nothing was tested"
    reopened = EdgeStore(tmp_path)
    try:
        check_reindexed(reopened, "old", before)
        assert reopened.count("old") == N and reopened.get_collection("old").reindex is None
    finally:
        reopened.close()
