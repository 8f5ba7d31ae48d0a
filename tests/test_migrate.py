"""`collections migrate`: a collection copied from the embedded store to a Qdrant server's code path
(qdrant-client's local mode) and back, with thumbnails and its model record; resumable after a kill -9 or an
unreachable server; verified by count and by sampled vectors."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from crossmodal.errors import StoreUnavailableError
from crossmodal.store import StoredPoint
from crossmodal.store.edge import EdgeStore
from crossmodal.store.migrate import migrate
from crossmodal.store.options import StorageOptions
from crossmodal.store.remote import RemoteStore

ROOT = Path(__file__).resolve().parents[1]


def local_server(path: Path) -> RemoteStore:
    from qdrant_client import QdrantClient

    return RemoteStore(url=f"path:{path}", client=QdrantClient(path=str(path)))


def synthetic(store, name: str, n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.create_collection(name, "model-a", dim, "w1", StorageOptions(quantization="int8"))
    for start in range(0, n, 2_000):
        store.upsert(name, [StoredPoint(f"00000000-0000-0000-0000-{i:012d}", vectors[i].tolist(),
                                        {"kind": "text", "text": f"t{i}"}) for i in range(start, min(n, start + 2_000))])
    store.finish_writes(name)
    return vectors


def scene_items(n: int):
    from crossmodal.lab.scenes import generate_scene
    from crossmodal.service import ImageInput, IngestItem

    items = []
    for k in range(n):
        buffer = io.BytesIO()
        generate_scene(990_000_000 + k, 160, 160, 1).image.save(buffer, "PNG")
        items.append(IngestItem(image=ImageInput.from_bytes(f"s{k}.png", buffer.getvalue()), tags=[f"t{k % 2}"]))
    return items


def test_a_collection_goes_to_a_server_and_back_with_thumbnails_and_its_model(tmp_path):
    from crossmodal.service import Service
    from crossmodal.settings import Settings

    embedded = Service(Settings(data_dir=str(tmp_path / "edge"), model="demo-shapes"))
    embedded.ingest(scene_items(12), "photos", storage="vectors=float16")
    server = local_server(tmp_path / "server")
    report = migrate(embedded.store, server, "photos", batch=5)
    assert (report["copied"], report["already_there"], report["count"]) == (12, 0, 12)
    info = server.get_collection("photos")
    assert (info.model, info.weights, info.storage) == (embedded.store.get_collection("photos").model,
                                                        embedded.store.get_collection("photos").weights,
                                                        StorageOptions(vectors="float16"))
    on_server = Service(Settings(model="demo-shapes"), store=server)
    for query in ("a red circle", "a blue square", "a green triangle"):
        here = [r["id"] for r in embedded.search(query, collection="photos", top_k=10)["results"]]
        there = [r["id"] for r in on_server.search(query, collection="photos", top_k=10)["results"]]
        assert here == there
    with_thumbs = on_server.search("a red circle", collection="photos", top_k=3, with_thumbnails=True)
    assert with_thumbs["thumbnails"] and all(with_thumbs["thumbnails"].values())

    back = EdgeStore(tmp_path / "back")
    again = migrate(server, back, "photos", new_name="photos-again")
    assert again["count"] == 12 and back.get_collection("photos-again").storage == StorageOptions(vectors="float16")
    (first_id,) = [p.id for p in server.scroll("photos", None, 1)[0]]
    hit = back.query("photos-again", server.vectors("photos", [first_id])[first_id], 1, with_thumbnails=True)[0]
    assert hit.id == first_id and hit.payload["thumbnail"]  # served from the thumbnail file the copy wrote
    assert list((tmp_path / "back" / "collections" / "photos-again" / "thumbnails").rglob("*.jpg"))
    server.close()


@pytest.mark.slow
def test_an_unreachable_server_stops_the_copy_intact_and_a_rerun_finishes_it(tmp_path):
    source = EdgeStore(tmp_path / "edge")
    synthetic(source, "big", 1_500)
    server = local_server(tmp_path / "server")

    class GoesAway:
        """The server, until it stops answering after two batches."""

        def __init__(self, store):
            self.store, self.calls = store, 0

        def __getattr__(self, name):
            return getattr(self.store, name)

        def upsert(self, name, points):
            self.calls += 1
            if self.calls > 2:
                raise StoreUnavailableError("cannot reach Qdrant at http://qdrant:6333 (ConnectError)")
            self.store.upsert(name, points)

    with pytest.raises(StoreUnavailableError, match="Stopped after copying 512 points; what arrived is intact"):
        migrate(source, GoesAway(server), "big", batch=256)
    assert server.count("big") == 512
    report = migrate(source, server, "big", batch=256)
    assert (report["copied"], report["already_there"], report["count"]) == (1_500 - 512, 512, 1_500)


@pytest.mark.slow
def test_the_command_survives_a_kill_9_and_a_rerun(tmp_path):
    """The CLI killed with SIGKILL in the middle of a copy; the same command again completes it."""
    store = EdgeStore(tmp_path / "edge")
    synthetic(store, "big", 4_000, dim=64)  # 16 batches: the kill lands after the first and before the last
    store.close()
    command = [sys.executable, "-m", "crossmodal", "collections", "migrate", "big", "--store",
               str(tmp_path / "edge"), "--to", f"path:{tmp_path / 'server'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = []
    threading.Thread(target=lambda: [seen.append(chunk) for chunk in iter(lambda: first.stderr.read(64), b"")],
                     daemon=True).start()
    deadline = time.monotonic() + 120
    while not any(b"copying big:" in c and b" 0/" not in c for c in seen[-3:]) and time.monotonic() < deadline:
        assert first.poll() is None, b"".join(seen)[-2000:]
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL

    second = subprocess.run([*command, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    import json

    report = json.loads(second.stdout)
    assert report["already_there"] > 0 and report["copied"] > 0  # the kill came mid-copy
    assert report["copied"] + report["already_there"] == report["count"] == 4_000
    server = local_server(tmp_path / "server")
    assert server.count("big") == 4_000 and server.get_collection("big").weights == "w1"
    server.close()


def test_server_only_options_are_left_out_when_coming_back(tmp_path):
    from crossmodal.store.options import SERVER_ONLY

    server = local_server(tmp_path / "server")  # the options a real cluster applies are recorded here too
    server.create_collection("c", "model-a", 8, None, StorageOptions(quantization="int8", shards=2, replicas=2))
    server.upsert("c", [StoredPoint("00000000-0000-0000-0000-000000000001", [1.0] + [0.0] * 7, {"kind": "text"})])
    report = migrate(server, EdgeStore(tmp_path / "edge"), "c")
    assert report["storage"] == {"vectors": "float32", "quantization": "int8", "on_disk": False}
    assert "shards, replicas and write_consistency" in report["notes"][0]
    assert all(k not in report["storage"] for k in SERVER_ONLY)
