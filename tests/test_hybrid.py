"""Hybrid retrieval through the Search capability: modes (dense, lexical, hybrid, auto), fusion in the engine with
0-1 scores, and what keeps working with them (filters, External Knowledge conditions, regions, rerank, late
interaction), on both stores where the store matters; clear errors naming ``mode`` where a combination cannot be
served."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from crossmodal.errors import CrossmodalError
from crossmodal.inputs.images import encode_png
from crossmodal.lab.scenes import generate_scene
from crossmodal.service import ImageInput, IngestItem, Service
from crossmodal.settings import Settings

CODES = ["XH-4562-X5", "XH-4563-X5", "PS-1123-V7", "KB-8841-A2", "RT-2207-M9", "ZN-5150-C3"]


def scene_png(seed: int, side: int = 256) -> tuple[str, bytes]:
    scene = generate_scene(seed, side, side, 1)
    return scene.objects[0].phrase("en"), encode_png(scene.image)


@pytest.fixture(scope="module", params=["embedded", "qdrant-client"])
def service(request, tmp_path_factory):
    """A collection of pictures whose captions carry codes, a text item and two pictures without any text."""
    from qdrant_client import QdrantClient

    from crossmodal.store.remote import RemoteStore

    folder = tmp_path_factory.mktemp("hybrid")
    store = RemoteStore(url="local", client=QdrantClient(path=str(folder / "q"))) if request.param != "embedded" else None
    svc = Service(Settings(data_dir=str(folder / "store"), model="demo-shapes"), store=store)
    items = []
    for k, code in enumerate(CODES):
        phrase, png = scene_png(31_000 + k)
        items.append(IngestItem(image=ImageInput.from_bytes(f"scan-{k}.png", png), caption=f"{phrase}, part {code}",
                                tags=["even" if k % 2 == 0 else "odd"], metadata={"shelf": f"S{k}"}))
    items.append(IngestItem(text="The manual for the pump: serial QQ-7777-Z1, keep it dry.", tags=["odd"]))
    for k in range(2):
        _, png = scene_png(32_000 + k)
        items.append(IngestItem(image=ImageInput.from_bytes(f"photo-{k}.png", png)))
    report = svc.ingest(items, "kb")
    assert report["added"] == len(items)
    yield svc
    svc.store.close()


def test_auto_is_hybrid_when_the_collection_has_text_and_finds_exact_codes(service):
    for k, code in enumerate(CODES):
        found = service.search(code, collection="kb", top_k=3)
        assert found["mode"] == "hybrid" and found["fusion"] == "rrf"
        assert all(0.0 <= hit["score"] <= 1.0 for hit in found["results"])
        # A code's lexical list weighs 3: its first place stays first whatever the dense list says, siblings
        # one digit apart included.
        assert found["results"][0]["payload"]["source"] == f"scan-{k}.png", (code, found["results"])
        assert found["results"][0]["score"] >= 0.75 - 1e-9 and found["weights"]["lexical"] == 3.0
    for k, code in enumerate(CODES[:2]):  # siblings one digit apart: the words alone tell them apart
        lexical = service.search(code, collection="kb", top_k=3, mode="lexical")
        assert lexical["results"][0]["payload"]["source"] == f"scan-{k}.png" and lexical["results"][0]["score"] == 1.0
        assert lexical["results"][1]["payload"]["source"] == f"scan-{1 - k}.png"  # it shares most grams
    dense = service.search("XH-4563-X5", collection="kb", top_k=3, mode="dense")
    assert dense["mode"] == "dense" and "fusion" not in dense
    text = service.search("QQ-7777-Z1 manual", collection="kb", target="text", top_k=1)
    assert text["results"][0]["payload"]["kind"] == "text"


def test_words_in_metadata_are_found_and_scores_read_on_0_1(service):
    found = service.search("S4", collection="kb", top_k=1, mode="lexical")
    assert found["results"][0]["payload"]["metadata"]["shelf"] == "S4"
    every = service.search("part", collection="kb", top_k=10, mode="hybrid")["results"]  # all 9 items
    # Every caption has "part" once, so the lexical list is near a tie, which the engine may order either way:
    # the threshold sits between the best and the worst fused score of this run rather than at a fixed value.
    threshold = (every[0]["score"] + every[-1]["score"]) / 2
    assert every[0]["score"] > every[-1]["score"]
    kept = service.search("part", collection="kb", top_k=10, mode="hybrid", score_threshold=threshold)["results"]
    # (equal fused scores come back in either order: compared as sets)
    assert {h["id"] for h in kept} == {h["id"] for h in every if h["score"] >= threshold}
    assert 0 < len(kept) < len(every)
    dbsf = service.search("XH-4562-X5", collection="kb", top_k=3, mode="hybrid", fusion="dbsf")
    assert dbsf["fusion"] == "dbsf" and dbsf["results"][0]["payload"]["source"] == "scan-0.png"
    assert all(0.0 <= hit["score"] <= 1.0 for hit in dbsf["results"])


def test_filters_and_external_knowledge_conditions_hold_in_hybrid(service):
    from crossmodal.api.knowledge import metadata_predicate

    odd = service.search("XH-4562-X5", collection="kb", top_k=10, mode="hybrid", filter={"tags": ["odd"]})
    assert odd["results"] and all(h["payload"]["tags"] == ["odd"] for h in odd["results"])
    assert odd["results"][0]["payload"]["source"] == "scan-1.png"  # the sibling, since scan-0 is even
    for op, value, keep in (("is", "S2", {"S2"}), ("end with", "3", {"S3"}), ("not contains", "S", set())):
        where = metadata_predicate({"conditions": [{"name": "shelf", "comparison_operator": op, "value": value}]})
        found = service.search("PS-1123-V7 part", collection="kb", top_k=10, mode="hybrid", target="any", where=where)
        shelves = {h["payload"].get("metadata", {}).get("shelf") for h in found["results"]}
        assert shelves - {None} == keep and (op == "not contains" or None not in shelves), (op, shelves)


def test_rerank_runs_after_fusion(service):
    found = service.search("part XH-4562-X5", collection="kb", top_k=3, mode="hybrid", rerank="region", rerank_k=6)
    assert found["mode"] == "hybrid" and found["rerank"]["method"] == "region" and len(found["results"]) == 3
    assert all(0.0 <= h["first_stage_score"] <= 1.0 for h in found["results"])


def test_combinations_that_cannot_be_served_name_mode(service):
    _, png = scene_png(31_000)
    picture = ImageInput.from_bytes("q.png", png)
    cases = [dict(text="XH-4562-X5", image=picture, mode="lexical"), dict(text="XH-4562-X5", regions=True, mode="lexical"),
             dict(image=picture, mode="hybrid"), dict(image=picture, mode="lexical"), dict(text="x", mode="sparse"),
             dict(text="the and of", mode="lexical")]
    for case in cases:
        with pytest.raises(CrossmodalError) as refused:
            service.search(collection="kb", **case)
        assert refused.value.param == "mode" and "mode" in str(refused.value), case
    with pytest.raises(CrossmodalError) as fusion:
        service.search("XH-4562-X5", collection="kb", fusion="max")
    assert fusion.value.param == "fusion"
    stop_words = service.search("the and of", collection="kb", top_k=2)  # auto: no words to match, dense alone
    assert stop_words["mode"] == "dense" and "no searchable words" in stop_words["warnings"][0]
    image_only = service.search(image=picture, collection="kb", top_k=1)
    assert image_only["mode"] == "dense"
    fused = service.search("part", image=picture, collection="kb", top_k=2, mode="hybrid")  # the fused query vector
    assert fused["mode"] == "hybrid" and fused["query_kind"] == "fused"


def test_collections_without_text_or_made_before_search_dense(tmp_path):
    svc = Service(Settings(data_dir=str(tmp_path), model="demo-shapes"))
    _, png = scene_png(33_000)
    svc.ingest([IngestItem(image=ImageInput.from_bytes("a.png", png))], "photos")
    assert svc.collection_info("photos")["lexical"]["has_text"] is False
    assert svc.search("a red circle", collection="photos")["mode"] == "dense"  # no point has text
    svc.store.create_collection("old", "demo-shapes", svc.collection_info("photos")["dimension"], lexical=None)
    svc.store.upsert("old", [dataclasses.replace(p, sparse=None) for p in svc.store.scroll("photos", None, 10)[0]])
    assert svc.search("a red circle", collection="old")["mode"] == "dense"
    with pytest.raises(CrossmodalError, match="reindex") as refused:
        svc.search("a red circle", collection="old", mode="hybrid")
    assert refused.value.param == "mode"
    # Vectors made by another analyzer version: auto falls back to dense and says why; ingest writes none.
    info = svc.store.get_collection("photos")
    svc.store.update_record("photos", {"lexical": {**info.lexical, "analyzer_version": 0, "text": True}})
    stale = svc.search("a red circle", collection="photos")
    assert stale["mode"] == "dense" and "reindex" in stale["warnings"][-1]
    with pytest.raises(CrossmodalError, match="another analyzer version"):
        svc.search("a red circle", collection="photos", mode="lexical")
    svc.ingest([IngestItem(text="a caption with words")], "photos")
    assert [p.sparse for p in svc.store.scroll("photos", None, 10)[0] if p.payload["kind"] == "text"] == [None]
    svc.store.close()


def test_regions_keep_working_in_hybrid(tmp_path):
    from crossmodal.lab.evaluation import small_object_set

    svc = Service(Settings(data_dir=str(tmp_path), model="demo-shapes"))
    sets = small_object_set(3, side=1024)
    items = [IngestItem(image=ImageInput.from_bytes(f"big-{i}.png", encode_png(im)), caption=f"board {code}")
             for i, (im, code) in enumerate(zip(sets.images, CODES))]
    svc.ingest(items, "big", regions=True)
    found = svc.search(f"a small object {CODES[1]}", collection="big", top_k=3, regions=True, mode="hybrid")
    assert found["mode"] == "hybrid" and len(found["results"]) == 3
    assert found["results"][0]["payload"]["source"] == "big-1.png"  # found by its code, regions folded in
    assert {h["payload"]["matched"] for h in found["results"]} <= {"image", "region"}
    assert len({h["id"] for h in found["results"]}) == 3 and all("parent_id" not in h["payload"] for h in found["results"])
    svc.store.close()


def test_ingest_writes_lexical_vectors_from_the_text_read_in_a_picture(tmp_path):
    from crossmodal.lab.scans import fonts_available, screenshot

    if not fonts_available(("dejavu-sans", "dejavu-sans-bold")):
        pytest.skip("Debian's fonts-dejavu-core is not installed")
    svc = Service(Settings(data_dir=str(tmp_path), model="demo-shapes"))
    shot = screenshot(5, code="MV-3318-K4")
    _, other = scene_png(34_000)
    svc.ingest([IngestItem(image=ImageInput.from_bytes("shot.png", encode_png(shot.image))),
                IngestItem(image=ImageInput.from_bytes("other.png", other))], "shots", ocr="auto")
    found = svc.search("MV-3318-K4", collection="shots", top_k=2)
    assert found["mode"] == "hybrid" and found["results"][0]["payload"]["source"] == "shot.png"
    assert "MV-3318-K4" in found["results"][0]["payload"]["ocr_text"].upper().replace(" ", "")
    svc.store.close()


def rrf(lexical: list[str], dense: list[str], lexical_weight: float = 1.0) -> dict[str, float]:
    """Reciprocal rank fusion as both engines compute it (k = 1: a list of weight w gives w / (rank + 1)), on 0-1:
    what hybrid scores must equal."""
    fused: dict[str, float] = {}
    for ids, weight in ((lexical, lexical_weight), (dense, 1.0)):
        for rank, point_id in enumerate(ids):
            fused[point_id] = fused.get(point_id, 0.0) + weight / (rank + 1) / (lexical_weight + 1.0)
    return fused


def test_hybrid_scores_are_rrf_of_the_dense_and_lexical_lists(service):
    """The engine fuses exactly the two lists each mode returns on its own (no ties in either here), with the
    lexical list weighted 3 for a code, else by the dense model's confidence in its first hit."""
    from crossmodal.search.searcher import CONFIDENT_LEXICAL_WEIGHT, DENSE_CONFIDENT, dense_confidence

    temperature = service.encoder("demo-shapes").logit_scale
    for query in ("part pump heart", "a small blue circle", "part XH-4562-X5 pump"):
        lexical = service.search(query, collection="kb", top_k=20, mode="lexical", target="any")["results"]
        dense = service.search(query, collection="kb", top_k=20, mode="dense", target="any")["results"]
        confidence = dense_confidence([h["score"] for h in dense], temperature)
        weight = 3.0 if "XH" in query else CONFIDENT_LEXICAL_WEIGHT if confidence >= DENSE_CONFIDENT else 1.0
        expected = rrf([h["id"] for h in lexical], [h["id"] for h in dense], weight)
        found = service.search(query, collection="kb", top_k=20, mode="hybrid", target="any")
        assert found["weights"]["lexical"] == weight and found["weights"]["dense"] == 1.0
        if weight != 3.0:
            assert found["weights"]["dense_confidence"] == pytest.approx(confidence, abs=1e-3)
        assert {h["id"] for h in found["results"]} == set(expected)
        for hit in found["results"]:
            assert hit["score"] == pytest.approx(expected[hit["id"]], abs=1e-5)
        assert [h["score"] for h in found["results"]] == sorted((h["score"] for h in found["results"]), reverse=True)


def test_a_confident_dense_hit_keeps_first_place_and_words_decide_where_the_model_is_unsure(service):
    """Scene sets with captions lost 7 points of Recall@1 to hybrid: a wrong picture whose caption holds more of the
    query's words overtook the dense list's sure first hit. The lexical list now weighs by the dense model's
    confidence: a sure first hit keeps its place, and where the model cannot tell two pictures apart (two large
    red circles) the words still decide."""
    items = []
    for k in range(12):
        scene = generate_scene(41_000 + k, 256, 256, 1)
        caption = {6: "a large yellow hexagon sticker", 10: "a large red circle, the left one"}.get(k)
        items.append(IngestItem(image=ImageInput.from_bytes(f"p{k}.png", encode_png(scene.image)), caption=caption))
    assert [generate_scene(41_000 + k, 256, 256, 1).objects[0].phrase("en") for k in (2, 3, 6, 10)] == [
        "large yellow hexagon", "large red circle", "large green hexagon", "large red circle"]
    service.ingest(items, "mislead")
    sure = service.search("a large yellow hexagon", collection="mislead", top_k=3)
    unsure = service.search("a large red circle", collection="mislead", top_k=3)
    assert sure["mode"] == unsure["mode"] == "hybrid"
    assert [h["payload"]["source"] for h in sure["results"][:2]] == ["p2.png", "p6.png"]  # the caption comes next
    assert unsure["results"][0]["payload"]["source"] == "p10.png"
    assert sure["weights"]["lexical_by"] == "dense confidence"
    assert sure["weights"]["dense_confidence"] >= 0.9 and sure["weights"]["lexical"] < 0.5
    assert unsure["weights"]["dense_confidence"] < 0.7 and unsure["weights"]["lexical"] == 1.0


@pytest.mark.parametrize("backend", ["embedded", "server"])
def test_late_interaction_pages_fuse_with_their_words(tmp_path, backend):
    from qdrant_client import QdrantClient

    from crossmodal.lab.late_models import save_colqwen2
    from crossmodal.store.remote import RemoteStore

    model = save_colqwen2(tmp_path / "colqwen2")
    store = RemoteStore(url="local", client=QdrantClient(path=str(tmp_path / "q"))) if backend == "server" else None
    svc = Service(Settings(data_dir=str(tmp_path / "store"), model=str(model), device="cpu"), store=store)
    # Each page says "order" a different number of times (distinct BM25 scores), page 3 also its code.
    items = [IngestItem(image=ImageInput.from_bytes(f"page-{k}.png", scene_png(35_000 + k, 224)[1]),
                        caption=f"page {k}: {'order ' * (k + 1)}{code}") for k, code in enumerate(CODES[:4])]
    svc.ingest(items, "deck")
    query = "order KB-8841-A2"
    dense = svc.search(query, collection="deck", top_k=4, mode="dense")
    lexical = svc.search(query, collection="deck", top_k=4, mode="lexical")
    assert dense["scoring"] == "maxsim" and lexical["results"][0]["payload"]["source"] == "page-3.png"
    hybrid = svc.search(query, collection="deck", top_k=4)
    assert hybrid["mode"] == "hybrid"
    expected = rrf([h["id"] for h in lexical["results"]], [h["id"] for h in dense["results"]], 3.0)  # a code
    assert {h["id"]: round(h["score"], 5) for h in hybrid["results"]} == pytest.approx(expected, abs=1e-5)
    assert hybrid["results"][0]["payload"]["source"] == "page-3.png"  # first by its code, whatever MaxSim says
    svc.store.close()


def test_fused_score_maps_the_best_possible_to_one():
    from crossmodal.store.base import fused_score

    assert fused_score(2.0, "rrf", (1.0, 1.0)) == 1.0 and fused_score(1.0, "rrf", (1.0, 1.0)) == 0.5
    assert fused_score(1.0, "rrf", (1.0,)) == 1.0 and fused_score(0.5, "rrf", (1.0,)) == 0.5
    assert fused_score(3.0, "rrf", (3.0, 1.0)) == pytest.approx(0.75)  # first in the code-weighted lexical list only
    assert fused_score(1.0, "rrf", (1.0, 1.0), k=2) == 1.0  # Qdrant's plain RRF (k = 2), older servers
    assert fused_score(2.6, "dbsf", (1.0, 1.0)) == 1.0 and fused_score(0.8, "dbsf", (1.0, 1.0)) == 0.4


def test_dense_confidence_is_the_first_hits_share_of_the_models_softmax():
    """The library's softmax is the reference; the scores are large enough at CLIP's temperature (100) that a naive
    exp would overflow."""
    from scipy.special import softmax

    from crossmodal.search.searcher import dense_confidence

    for scores, temperature in (([0.31, 0.30, 0.12], 100.0), ([0.58, 0.579, 0.2, 0.1], 31.7), ([9.0, 1.0], 100.0)):
        reference = float(softmax(temperature * np.asarray(scores))[0])
        assert dense_confidence(scores, temperature) == pytest.approx(reference)
    assert dense_confidence([], 100.0) == 0.0 and dense_confidence([0.4], 100.0) == 1.0
