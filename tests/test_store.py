"""The same behaviour checked against both backends: the embedded engine and qdrant-client."""

import subprocess
import sys
import time

import numpy as np
import pytest

from crossmodal.errors import CrossmodalError, NotFoundError, StoreUnavailableError
from crossmodal.store import Condition, StoredPoint
from crossmodal.store.edge import EdgeStore
from crossmodal.store.remote import RemoteStore


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return (v / np.linalg.norm(v)).tolist()


def points(n=20, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    return [StoredPoint(f"00000000-0000-0000-0000-{i:012d}", unit(rng.normal(size=dim)),
                        {"kind": "image" if i % 2 == 0 else "text", "tags": [f"t{i % 3}"], "width": 100 * i,
                         "metadata": {"album": "a" if i < 10 else "b"}}) for i in range(n)]


def test_collection_lifecycle(store):
    info = store.create_collection("c1", "model-a", 8)
    assert (info.name, info.model, info.dim, info.count) == ("c1", "model-a", 8, 0)
    with pytest.raises(CrossmodalError, match="already exists"):
        store.create_collection("c1", "model-a", 8)
    store.upsert("c1", points())
    assert store.get_collection("c1").count == 20
    assert [c.name for c in store.list_collections()] == ["c1"]
    assert store.delete_collection("c1") is True
    assert store.delete_collection("c1") is False
    with pytest.raises(NotFoundError):
        store.get_collection("c1")


def test_model_mismatch_is_refused(store):
    store.create_collection("c1", "model-a", 8)
    with pytest.raises(CrossmodalError, match="made with model 'model-a'"):
        store.ensure_collection("c1", "model-b", 8)
    assert store.ensure_collection("c1", "model-a", 8).model == "model-a"


def test_query_filters_and_threshold(store):
    store.create_collection("c1", "m", 8)
    data = points()
    store.upsert("c1", data)
    query = data[4].vector
    top = store.query("c1", query, 5)
    assert top[0].id == data[4].id and top[0].score == pytest.approx(1.0, abs=1e-5)
    scores = [h.score for h in top]
    assert scores == sorted(scores, reverse=True)
    images = store.query("c1", query, 20, [Condition("kind", "eq", "image")])
    assert len(images) == 10 and all(h.payload["kind"] == "image" for h in images)
    tagged = store.query("c1", query, 20, [Condition("tags", "any", ["t1", "t2"])])
    assert {h.payload["tags"][0] for h in tagged} == {"t1", "t2"} and len(tagged) == 13
    ranged = store.query("c1", query, 20, [Condition("width", "range", {"gte": 500, "lt": 900})])
    assert sorted(h.payload["width"] for h in ranged) == [500, 600, 700, 800]
    nested = store.query("c1", query, 20, [Condition("metadata.album", "eq", "b")])
    assert len(nested) == 10
    assert all(h.score >= 0.5 for h in store.query("c1", query, 20, score_threshold=0.5))
    assert store.count("c1", [Condition("kind", "eq", "text")]) == 10


def test_existing_ids_and_idempotent_upsert(store):
    store.create_collection("c1", "m", 8)
    data = points(6)
    store.upsert("c1", data[:3])
    assert store.existing_ids("c1", [p.id for p in data]) == {p.id for p in data[:3]}
    store.upsert("c1", data)
    assert store.count("c1") == 6


def test_exact_search_matches_numpy(store):
    store.create_collection("c1", "m", 8)
    data = points(200, seed=3)
    store.upsert("c1", data)
    store.finish_writes("c1")
    matrix = np.array([p.vector for p in data])
    query = unit(np.arange(8))
    expected = [data[i].id for i in np.argsort(-(matrix @ np.array(query)))[:10]]
    assert [h.id for h in store.query("c1", query, 10, exact=True)] == expected


def test_unknown_collection(store):
    with pytest.raises(NotFoundError, match="no collection named 'nope'"):
        store.query("nope", unit([1] * 8), 3)
    with pytest.raises(CrossmodalError, match="not a valid collection name"):
        store.get_collection("../etc")


def test_embedded_store_persists_across_reopen(tmp_path):
    first = EdgeStore(tmp_path)
    first.create_collection("c1", "m", 8)
    first.upsert("c1", points(5))
    first.finish_writes("c1")
    first.close()
    again = EdgeStore(tmp_path)
    assert again.get_collection("c1").count == 5
    again.close()


def test_embedded_store_refuses_a_second_process(tmp_path):
    store = EdgeStore(tmp_path)
    store.create_collection("c1", "m", 8)
    store.upsert("c1", points(3))
    code = (
        "import sys\nfrom crossmodal.store.edge import EdgeStore\nfrom crossmodal.errors import CrossmodalError\n"
        f"try:\n    EdgeStore({str(tmp_path)!r}).count('c1')\nexcept CrossmodalError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=".", timeout=60)
    assert "open in another process" in out.stdout
    assert store.count("c1") == 3  # the owner is unaffected
    store.close()


def test_unreachable_server_fails_fast():
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="cannot reach Qdrant"):
        RemoteStore(url="http://127.0.0.1:9").list_collections()
    assert time.monotonic() - started < 10


def test_thumbnails_round_trip_on_both_backends(store):
    import base64

    store.create_collection("t", "m", 8)
    thumb = base64.b64encode(b"\xff\xd8 jpeg bytes \xff\xd9").decode()
    pts = points(3)
    pts[0] = StoredPoint(pts[0].id, pts[0].vector, {"kind": "image", "thumbnail": thumb, "source": "a.jpg"})
    store.upsert("t", pts)
    hit = store.retrieve("t", [pts[0].id])[0]
    assert hit.payload["thumbnail"] == thumb and hit.payload["source"] == "a.jpg"
    top = store.query("t", pts[0].vector, 1)[0]
    assert top.id == pts[0].id and top.payload["thumbnail"] == thumb


def test_embedded_store_keeps_thumbnails_out_of_the_engine(tmp_path):
    """The engine holds payloads in memory: thumbnails go to files beside the shard instead (memory stays
    flat as a collection grows); collections written with thumbnails in the payload still serve them."""
    import base64

    import qdrant_edge as qe

    from crossmodal.store.base import VECTOR_NAME

    store = EdgeStore(str(tmp_path))
    store.create_collection("t", "m", 8)
    thumb = base64.b64encode(b"thumbnail bytes").decode()
    (p,) = points(1)
    store.upsert("t", [StoredPoint(p.id, p.vector, {"kind": "image", "thumbnail": thumb})])
    shard = store._shard("t").shard
    (raw,) = shard.retrieve([p.id], with_payload=True, with_vector=False)
    assert "thumbnail" not in raw.payload
    assert (tmp_path / "collections" / "t" / "thumbnails" / p.id[:2] / f"{p.id}.jpg").read_bytes() == b"thumbnail bytes"
    assert store.retrieve("t", [p.id])[0].payload["thumbnail"] == thumb
    old_id = "00000000-0000-0000-0000-00000000beef"
    legacy = base64.b64encode(b"old layout").decode()
    shard.update(qe.UpdateOperation.upsert_points(
        [qe.Point(old_id, {VECTOR_NAME: p.vector}, {"kind": "image", "thumbnail": legacy})]))
    assert store.retrieve("t", [old_id])[0].payload["thumbnail"] == legacy
    assert store.retrieve("t", [p.id])[0].payload["thumbnail"] == thumb
    assert store.delete_collection("t") and not (tmp_path / "collections" / "t").exists()
