"""A collection remembers the weights its vectors came from: a model replaced under the same name
(retrained, updated) must not mix two vector spaces in one collection, silently."""

import shutil

import pytest
from qdrant_client import QdrantClient
from test_service import gallery, png

from crossmodal.encoders import models
from crossmodal.errors import CrossmodalError
from crossmodal.service import ImageInput, Service
from crossmodal.settings import Settings
from crossmodal.store.remote import RemoteStore
from tiny_models import save_tiny_clip


@pytest.fixture()
def fresh_encoders(monkeypatch):
    """Each load reads the files again, as a restarted plugin would."""
    monkeypatch.setattr(models, "_ENCODERS", {})


def retrain(directory, seed=1):
    """Other weights, same name and shapes: what a fine-tune written over a local model looks like."""
    save_tiny_clip(directory, seed=seed)
    models._ENCODERS.clear()


def test_the_fingerprint_follows_content_not_copies_or_calibration(tiny_clip_dir, tmp_path):
    copy = shutil.copytree(tiny_clip_dir, tmp_path / "copy")  # new paths and times, same bytes
    assert models.weights_fingerprint(copy) == models.weights_fingerprint(tiny_clip_dir)
    (copy / "crossmodal_calibration.json").write_text('{"a": 10, "b": -3}')
    assert models.weights_fingerprint(copy) == models.weights_fingerprint(tiny_clip_dir)
    retrain(copy)
    assert models.weights_fingerprint(copy) != models.weights_fingerprint(tiny_clip_dir)


@pytest.mark.parametrize("backend", ["embedded", "server"])
def test_replaced_weights_are_refused_and_nothing_stored_is_lost(backend, tiny_clip_dir, tmp_path, fresh_encoders):
    model_dir = shutil.copytree(tiny_clip_dir, tmp_path / "model")
    store = RemoteStore(url="local", client=QdrantClient(path=str(tmp_path / "q"))) if backend == "server" else None
    service = Service(Settings(data_dir=str(tmp_path / "store"), model=str(model_dir)), store=store)
    service.ingest(gallery(4), "c")
    made_with = service.collection_info("c")["weights"]
    assert made_with == models.weights_fingerprint(model_dir)
    query = ImageInput.from_bytes("q", png((10, 245, 74)))
    before = service.search(image=query, collection="c", top_k=4)["results"]

    retrain(model_dir)
    now = models.weights_fingerprint(model_dir)
    for attempt in (lambda: service.ingest(gallery(6), "c"), lambda: service.search("picture", collection="c")):
        with pytest.raises(CrossmodalError) as info:
            attempt()
        message = str(info.value)
        assert message.startswith("model:") and "'c'" in message
        assert made_with in message and now in message and "new collection" in message
    assert service.collection_info("c")["count"] == 4

    assert service.ingest(gallery(4), "c2")["added"] == 4  # a new collection takes the new weights
    assert service.collection_info("c2")["weights"] == now

    retrain(model_dir, seed=0)  # the files it was made with, restored
    after = service.search(image=query, collection="c", top_k=4)["results"]
    assert [(h["id"], h["score"]) for h in after] == [(h["id"], h["score"]) for h in before]
    service.store.close()


def test_collections_made_before_fingerprints_still_work(tiny_clip_dir, tmp_path, fresh_encoders):
    import json

    service = Service(Settings(data_dir=str(tmp_path / "store"), model=str(tiny_clip_dir)))
    service.ingest(gallery(3), "old")
    meta_path = tmp_path / "store" / "collections" / "old" / "collection.json"
    meta = json.loads(meta_path.read_text())
    del meta["weights"]
    meta_path.write_text(json.dumps(meta))
    assert service.collection_info("old")["weights"] is None
    assert len(service.search("picture", collection="old", top_k=3)["results"]) == 3
    assert service.ingest(gallery(5), "old")["added"] == 2
    service.store.close()


def test_the_demo_refills_its_own_collection_after_a_model_update(tiny_clip_dir, tmp_path, fresh_encoders):
    from crossmodal.lab.demo import GALLERY_SIZE, format_table, run_demo

    model_dir = shutil.copytree(tiny_clip_dir, tmp_path / "model")
    store, out = str(tmp_path / "store"), str(tmp_path / "demo.html")
    first = run_demo(model=str(model_dir), store=store, out=out)
    assert first["added"] == GALLERY_SIZE and first["note"] is None
    again = run_demo(model=str(model_dir), store=store, out=out)
    assert again["duplicates"] == GALLERY_SIZE and again["note"] is None

    retrain(model_dir)
    renewed = run_demo(model=str(model_dir), store=store, out=out)
    assert renewed["added"] == GALLERY_SIZE and renewed["points"] == GALLERY_SIZE
    assert "emptied and filled again" in renewed["note"] and "note:" in format_table(renewed)

    run_demo(model=str(model_dir), store=store, out=out, collection="mine")
    retrain(model_dir, seed=2)
    with pytest.raises(CrossmodalError, match="not comparable"):  # a collection of the user's is never emptied
        run_demo(model=str(model_dir), store=store, out=out, collection="mine")
    assert Service(Settings(data_dir=store)).collection_info("mine")["count"] == GALLERY_SIZE
