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
    top = store.query("t", pts[0].vector, 1, with_thumbnails=True)[0]
    assert top.id == pts[0].id and top.payload["thumbnail"] == thumb
    plain = store.query("t", pts[0].vector, 1)[0]  # a search that returns no thumbnail reads none
    assert plain.id == pts[0].id and "thumbnail" not in plain.payload and plain.payload["source"] == "a.jpg"
    assert "thumbnail" not in store.retrieve("t", [pts[0].id], with_thumbnails=False)[0].payload


def test_embedded_store_keeps_thumbnails_out_of_the_engine(tmp_path, monkeypatch):
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
    with store._locked("t") as opened:
        (raw,) = opened.shard.retrieve([p.id], with_payload=True, with_vector=False)
    assert "thumbnail" not in raw.payload
    assert (tmp_path / "collections" / "t" / "thumbnails" / p.id[:2] / f"{p.id}.jpg").read_bytes() == b"thumbnail bytes"
    assert store.retrieve("t", [p.id])[0].payload["thumbnail"] == thumb
    old_id = "00000000-0000-0000-0000-00000000beef"
    legacy = base64.b64encode(b"old layout").decode()
    with store._locked("t") as opened:
        opened.shard.update(qe.UpdateOperation.upsert_points(
            [qe.Point(old_id, {VECTOR_NAME: p.vector}, {"kind": "image", "thumbnail": legacy})]))
    assert store.retrieve("t", [old_id])[0].payload["thumbnail"] == legacy
    assert store.retrieve("t", [p.id])[0].payload["thumbnail"] == thumb
    assert "thumbnail" not in store.query("t", p.vector, 2)[1].payload  # nor from an older payload, unless asked
    assert store.query("t", p.vector, 2, with_thumbnails=True)[1].payload["thumbnail"] in (thumb, legacy)

    def no_file(*args):
        raise AssertionError("a thumbnail file was read for a hit that does not return it")

    monkeypatch.setattr(EdgeStore, "_thumbnail_path", no_file)
    assert all("thumbnail" not in h.payload for h in store.query("t", p.vector, 2))
    assert store.delete_collection("t") and not (tmp_path / "collections" / "t").exists()


# -- the lexical index: sparse vectors with the IDF modifier, fused queries -----------------------------------------
TEXTS = ["Invoice XH-4562-X5 for the red pump", "the blue valve was replaced", "", "red car, part PS-1123-V7",
         "Reference XH-4563-X5: the red pump again", "a quiet garden by the river"]


def texts(n=6, dim=8):
    """Points with text (and one without), their lexical vectors made as ingest makes them."""
    from crossmodal.lexical import document_vector

    rng = np.random.default_rng(5)
    return [StoredPoint(f"00000000-0000-0000-0000-{i:012d}", unit(rng.normal(size=dim)),
                        {"kind": "image" if i % 2 == 0 else "text", "caption": TEXTS[i % len(TEXTS)], "tags": [f"t{i % 2}"]},
                        sparse=document_vector(TEXTS[i % len(TEXTS)])) for i in range(n)]


def bm25(query, stored):
    """BM25 as the engine computes it with Modifier.Idf: sum over shared terms of q x d x idf (docs/lexical.md)."""
    import math

    with_vector = [p for p in stored if p.sparse is not None and len(p.sparse)]
    n = len(with_vector)
    frequency = {}
    for p in with_vector:
        for index in p.sparse.indices:
            frequency[index] = frequency.get(index, 0) + 1
    scores = {}
    for p in with_vector:
        weights = dict(zip(p.sparse.indices, p.sparse.values))
        score = sum(q * weights[i] * math.log(1 + (n - frequency[i] + 0.5) / (frequency[i] + 0.5))
                    for i, q in zip(query.indices, query.values) if i in weights)
        if score > 0:
            scores[p.id] = score
    return scores


def test_new_collections_record_their_lexical_index_and_keep_its_vectors(store):
    from crossmodal.lexical import DEFAULT_OPTIONS

    info = store.create_collection("lx", "m", 8)
    assert info.lexical["identity"] == DEFAULT_OPTIONS.identity() and info.lexical["text"] is False
    assert info.lexical_options() == DEFAULT_OPTIONS
    data = texts()
    store.upsert("lx", data)
    again = store.get_collection("lx")
    assert again.lexical["text"] is True and again.as_dict()["lexical"]["has_text"] is True
    scrolled = {p.id: p for p in store.scroll("lx", None, 10)[0]}
    for p in data:  # a point without text has no lexical vector at all
        if len(p.sparse):
            assert scrolled[p.id].sparse.indices == p.sparse.indices
            assert np.allclose(scrolled[p.id].sparse.values, p.sparse.values, atol=1e-5)
        else:
            assert scrolled[p.id].sparse is None
    payloads_only, _ = store.scroll("lx", None, 10, with_vectors=False)
    assert payloads_only[0].vector == [] and payloads_only[0].payload["caption"] == TEXTS[0]
    assert store.create_collection("plain", "m", 8, lexical=None).lexical is None
    store.create_collection("named", "m", 8)
    store.upsert("named", [StoredPoint(p.id, p.vector, {"kind": "image", "source": "IMG_0042.jpg"},
                                       sparse=p.sparse) for p in data[:2]])
    assert store.get_collection("named").lexical["text"] is False  # a file name is not text enough for hybrid


def test_lexical_queries_score_bm25_and_fuse_in_the_engine(store):
    from crossmodal.lexical import query_vector

    store.create_collection("lx", "m", 8)
    data = texts()
    store.upsert("lx", data)
    query = query_vector("XH-4562-X5")
    expected = bm25(query, data)
    # One list through the fusion: ranked as BM25 ranks, the first scoring 1 on 0-1 (then 1/2, 1/3, ...).
    lexical = store.query_fused("lx", None, query, 10, 50)
    assert [h.id for h in lexical] == sorted(expected, key=expected.get, reverse=True)
    assert [h.score for h in lexical] == pytest.approx([1 / (r + 1) for r in range(len(lexical))])
    # Two lists: the point first in both scores 1; a point first in one list only scores 0.5.
    fused = store.query_fused("lx", data[0].vector, query, 10, 50)
    assert fused[0].id == data[0].id and fused[0].score == pytest.approx(1.0)
    alone = store.query_fused("lx", data[5].vector, query_vector("PS-1123-V7"), 10, 50)
    scores = {h.id: h.score for h in alone}
    assert scores[data[5].id] == pytest.approx(0.5) and scores[data[3].id] >= 0.5
    # The lexical list weighted 3: its first place alone is worth 3/4, more than second there and first in dense.
    weighted = {h.id: h.score for h in store.query_fused("lx", data[5].vector, query_vector("PS-1123-V7"), 10, 50,
                                                         lexical_weight=3.0)}
    assert weighted[data[5].id] == pytest.approx(0.25) and weighted[data[3].id] >= 0.75 - 1e-9
    dbsf = store.query_fused("lx", data[0].vector, query, 10, 50, fusion="dbsf")
    assert dbsf[0].id == data[0].id and all(0 <= h.score <= 1 for h in dbsf)


def test_fused_queries_keep_the_conditions_in_both_lists(store):
    from crossmodal.lexical import query_vector
    from crossmodal.store.base import AnyOf, Not

    store.create_collection("lx", "m", 8)
    data = texts(12)
    store.upsert("lx", data)
    query = query_vector("red pump XH-4562-X5")
    texts_only = store.query_fused("lx", data[0].vector, query, 12, 50, [Condition("kind", "eq", "text")])
    assert texts_only and all(h.payload["kind"] == "text" for h in texts_only)
    either = store.query_fused("lx", data[0].vector, query, 12, 50,
                               [AnyOf((Condition("tags", "eq", "t1"), Not(Condition("caption", "substring", "red"))))])
    assert either and all(h.payload["tags"] == ["t1"] or "red" not in h.payload["caption"] for h in either)
    nothing = store.query_fused("lx", None, query, 12, 50, [Condition("tags", "eq", "none")])
    assert nothing == []


def test_late_interaction_lists_fuse_with_the_lexical_list(store):
    from crossmodal.lexical import document_vector, query_vector

    rng = np.random.default_rng(2)
    store.create_collection("late", "m", 8, multivector_dim=8)
    data = []
    for i in range(8):
        tokens = np.asarray([unit(rng.normal(size=8)) for _ in range(5)])
        data.append(StoredPoint(f"00000000-0000-0000-0000-{i:012d}", unit(tokens.mean(0)), {"kind": "image", "page": i},
                                tokens.tolist(), document_vector(f"page {i} serial AB-{1000 + i}-Q{i}")))
    store.upsert("late", data)
    query = np.asarray(data[6].multivector[:3])
    hits = store.query_fused("late", unit(query.mean(0)), query_vector("AB-1006-Q6"), 4, 8,
                             multivector=query.tolist(), late_candidates=8)
    assert hits[0].id == data[6].id  # first by MaxSim and by its code
    assert store.scroll("late", None, 10)[0][6].sparse.indices == data[6].sparse.indices


def test_a_collection_made_before_gets_the_lexical_index(store):
    import dataclasses

    from crossmodal.lexical import DEFAULT_OPTIONS, DEFAULT_TEXT_FIELDS, query_vector
    from crossmodal.store.base import TextUpdate

    store.create_collection("old", "m", 8, lexical=None)
    data = texts()
    store.upsert("old", [dataclasses.replace(p, sparse=None) for p in data])
    record = DEFAULT_OPTIONS.record(DEFAULT_TEXT_FIELDS)
    info = store.add_lexical("old", record)
    assert info.lexical["identity"] == record["identity"] and info.lexical["text"] is False
    assert store.query_fused("old", None, query_vector("XH-4562-X5"), 5, 10) == []  # no vector written yet
    missing = TextUpdate("00000000-0000-0000-0000-000000000999", {"ocr_text": "x"}, data[0].sparse)
    store.update_text("old", [TextUpdate(p.id, {"ocr_text": f"read {p.id[-1]}"}, p.sparse) for p in data] + [missing])
    assert store.count("old") == len(data)  # a missing id is skipped, never made
    top = store.query_fused("old", None, query_vector("XH-4562-X5"), 5, 10)[0]
    assert top.id == data[0].id and top.payload["ocr_text"] == "read 0" and top.payload["caption"] == TEXTS[0]
    assert store.get_collection("old").lexical["text"] is False  # a reindex records it when it ends
    assert store.vectors("old", [data[0].id])[data[0].id] == pytest.approx(data[0].vector, abs=1e-6)
    store.update_record("old", {"reindex": {"offset": data[3].id, "done": 3}})
    assert store.get_collection("old").reindex == {"offset": data[3].id, "done": 3}
    store.update_record("old", {"reindex": None})
    assert store.get_collection("old").reindex is None
    store.update_record("old", {"lexical": {**record, "text": True}})
    assert store.add_lexical("old", record).lexical["text"] is True  # again: the record, nothing lost


def test_migration_keeps_lexical_vectors_and_the_record(tmp_path):
    from qdrant_client import QdrantClient

    from crossmodal.store.migrate import migrate

    source = EdgeStore(tmp_path / "edge")
    target = RemoteStore(url="local", client=QdrantClient(path=str(tmp_path / "local")))
    source.create_collection("lx", "m", 8)
    data = texts()
    source.upsert("lx", data)
    report = migrate(source, target, "lx")
    assert report["copied"] == len(data)
    copied = {p.id: p for p in target.scroll("lx", None, 10)[0]}
    assert all((copied[p.id].sparse is None) == (not len(p.sparse)) for p in data)
    assert copied[data[0].id].sparse.indices == data[0].sparse.indices
    assert target.get_collection("lx").lexical == source.get_collection("lx").lexical
    back = EdgeStore(tmp_path / "back")
    migrate(target, back, "lx")
    assert back.get_collection("lx").lexical["identity"] == source.get_collection("lx").lexical["identity"]
    for s in (source, target, back):
        s.close()


def test_the_lexical_record_survives_a_reopen(tmp_path):
    first = EdgeStore(tmp_path)
    first.create_collection("lx", "m", 8)
    first.upsert("lx", texts())
    first.close()
    again = EdgeStore(tmp_path)
    assert again.get_collection("lx").lexical["text"] is True and again.list_collections()[0].lexical
    again.close()


def test_a_server_without_weighted_rrf_gets_its_plain_rrf(tmp_path, caplog):
    """qdrant-client 1.20 and a recent server take RRF's k and weights; an older server refuses the query: the store
    falls back to Qdrant's plain RRF (k = 2, equal weights), scores normalised as such, and says so in the log."""
    from qdrant_client import QdrantClient, models
    from qdrant_client.http.exceptions import UnexpectedResponse

    from crossmodal.lexical import query_vector

    store = RemoteStore(url="local", client=QdrantClient(path=str(tmp_path / "local")))
    store.create_collection("lx", "m", 8)
    data = texts()
    store.upsert("lx", data)
    real = store.client.query_points

    def old_server(*args, query=None, **kwargs):
        if isinstance(query, models.RrfQuery):
            raise UnexpectedResponse(400, "Bad Request", b'{"status":{"error":"unknown variant rrf"}}', {})
        return real(*args, query=query, **kwargs)

    store.client.query_points = old_server
    hits = store.query_fused("lx", data[0].vector, query_vector("XH-4562-X5"), 10, 50, lexical_weight=3.0)
    assert hits[0].id == data[0].id and hits[0].score == pytest.approx(1.0)  # first in both: 1/2 + 1/2, over 1
    assert all(0 <= h.score <= 1 for h in hits) and "plain RRF" in caplog.text
    assert store._weighted_rrf is False
    store.close()
