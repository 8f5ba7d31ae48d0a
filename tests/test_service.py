import io

import pytest
from PIL import Image

from crossmodal.errors import CrossmodalError, NotFoundError
from crossmodal.service import ImageInput, IngestItem, Service
from crossmodal.settings import Settings


def png(color, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def service(tiny_clip_dir, tmp_path):
    s = Service(Settings(data_dir=str(tmp_path / "store"), model=str(tiny_clip_dir)))
    yield s
    s.store.close()


def gallery(n=50):
    return [IngestItem(image=ImageInput.from_bytes(f"img{i:02d}.png", png((5 * i, 255 - 5 * i, (37 * i) % 256))),
                       caption=f"picture {i}", tags=["even" if i % 2 == 0 else "odd"], metadata={"i": i})
            for i in range(n)]


def test_same_50_images_twice_are_50_added_then_50_duplicates(service):
    first = service.ingest(gallery(), "c")
    assert (first["added"], first["duplicates"], first["rejected"]) == (50, 0, [])
    second = service.ingest(gallery(), "c")
    assert (second["added"], second["duplicates"], second["count"]) == (0, 50, 50)
    assert service.collection_info("c")["count"] == 50


def test_one_bad_file_never_aborts_the_batch(service, tmp_path):
    items = gallery(4)
    items.insert(2, IngestItem(image=ImageInput.from_bytes("zero.png", b"")))
    items.insert(3, IngestItem(image=ImageInput.from_path(tmp_path / "missing.png")))
    report = service.ingest(items, "c")
    assert report["added"] == 4
    reasons = {r["source"]: r["reason"] for r in report["rejected"]}
    assert "empty" in reasons["zero.png"] and "file not found" in reasons[str(tmp_path / "missing.png")]
    assert [i["status"] for i in report["items"]].count("rejected") == 2


def test_payload_and_filters(service):
    service.ingest(gallery(10), "c")
    hits = service.search(image=ImageInput.from_bytes("q", png((15, 240, 111))), collection="c", top_k=3)
    top = hits["results"][0]
    assert top["payload"]["source"] == "img03.png" and top["score"] == pytest.approx(1.0, abs=1e-4)
    payload = top["payload"]
    assert set(payload) >= {"source", "sha256", "caption", "tags", "width", "height", "mime_type", "ingested_at",
                            "metadata", "kind"}
    assert (payload["width"], payload["height"], payload["mime_type"]) == (40, 30, "image/png")
    assert "thumbnail" not in payload
    odd = service.search("picture", collection="c", top_k=10, filter={"tags": "odd", "metadata.i": {"gte": 5}})
    assert sorted(h["payload"]["metadata"]["i"] for h in odd["results"]) == [5, 7, 9]


def test_image_to_text_and_fused_queries(service):
    service.ingest(gallery(6) + [IngestItem(text="first caption"), IngestItem(text="second caption")], "c")
    to_text = service.search(image=ImageInput.from_bytes("q", png((0, 255, 0))), collection="c", target="text")
    assert {h["payload"]["kind"] for h in to_text["results"]} == {"text"} and len(to_text["results"]) == 2
    # The captions give the collection text, so a query text would also be matched by its words (hybrid, the
    # default there): dense mode isolates the fused vector, whose text part weighs nothing here.
    fused = service.search("picture", image=ImageInput.from_bytes("q", png((0, 255, 0))), collection="c",
                           text_weight=0.0, mode="dense")
    by_image = service.search(image=ImageInput.from_bytes("q", png((0, 255, 0))), collection="c")
    assert fused["query_kind"] == "fused" and fused["mode"] == by_image["mode"] == "dense"
    assert [h["id"] for h in fused["results"]] == [h["id"] for h in by_image["results"]]
    hybrid = service.search("picture", image=ImageInput.from_bytes("q", png((0, 255, 0))), collection="c",
                            text_weight=0.0)
    assert hybrid["mode"] == "hybrid" and len(hybrid["results"]) == len(by_image["results"])
    anything = service.search("caption", collection="c", target="any", top_k=100)
    assert len(anything["results"]) == 8


def test_thumbnails_come_back_on_request(service):
    service.ingest(gallery(3), "c")
    result = service.search("picture", collection="c", top_k=2, with_thumbnails=True)
    assert len(result["thumbnails"]) == 2
    assert Image.open(io.BytesIO(next(iter(result["thumbnails"].values())))).format == "JPEG"


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"text": "  "}, "query"),
        ({"text": "x", "top_k": 0}, "top_k"),
        ({"text": "x", "top_k": 101}, "top_k"),
        ({"text": "x", "top_k": "ten"}, "top_k"),
        ({"text": "x", "target": "video"}, "target"),
        ({"text": "x", "score_threshold": 3}, "score_threshold"),
        ({"text": "x", "filter": "{bad"}, "filter"),
        ({"text": "x" * 10_001}, "query"),
        ({"text": "x", "collection": "Bad Name"}, "collection"),
    ],
)
def test_bad_search_input_names_the_parameter(service, kwargs, param):
    service.ingest(gallery(2), "c")
    with pytest.raises(CrossmodalError) as info:
        service.search(**{"collection": "c", **kwargs})
    assert str(info.value).startswith(param + ":")


def test_unknown_collection_and_other_model(service):
    with pytest.raises(NotFoundError):
        service.search("x", collection="nothing")
    service.ingest(gallery(2), "c")
    with pytest.raises(CrossmodalError, match="was made with"):
        service.search("x", collection="c", model="clip-vit-base-patch32")
    with pytest.raises(CrossmodalError, match="was made with"):
        service.ingest(gallery(1), "c", model="siglip")


def test_delete_needs_confirm_and_keeps_data_otherwise(service):
    service.ingest(gallery(3), "c")
    with pytest.raises(CrossmodalError, match="confirm"):
        service.delete_collection("c", confirm=False)
    assert service.collection_info("c")["count"] == 3
    assert service.delete_collection("c", confirm=True) == {"deleted": "c"}
    assert service.list_collections()["collections"] == []


def test_embed_reports_rejections_and_truncation(service):
    result = service.embed([ImageInput.from_bytes("ok.png", png("red")), ImageInput.from_bytes("bad.png", b"x")],
                           ["short", "word " * 50])
    assert [i["kind"] for i in result["items"]] == ["image", "text", "text"]
    assert result["rejected"][0]["source"] == "bad.png"
    assert any("truncated" in w for w in result["warnings"])


def test_server_backend_through_the_service(tiny_clip_dir, tmp_path):
    from qdrant_client import QdrantClient

    from crossmodal.store.remote import RemoteStore

    store = RemoteStore(url="local", client=QdrantClient(path=str(tmp_path / "q")))
    service = Service(Settings(model=str(tiny_clip_dir)), store=store)
    assert service.ingest(gallery(5), "c")["added"] == 5
    assert service.ingest(gallery(5), "c")["duplicates"] == 5
    hits = service.search(image=ImageInput.from_bytes("q", png((10, 245, 74))), collection="c", top_k=1)
    assert hits["results"][0]["payload"]["source"] == "img02.png"
    store.close()
