"""Region-aware retrieval: tile vectors stored as child points of large images, found by region search."""

import pytest

from crossmodal.errors import CrossmodalError
from crossmodal.lab.evaluation import evaluate_small_objects, small_object_set
from crossmodal.inputs.images import encode_png
from crossmodal.service import ImageInput, IngestItem, Service
from crossmodal.settings import Settings


@pytest.fixture()
def service(tmp_path):
    return Service(Settings(data_dir=str(tmp_path), model="demo-shapes"))


@pytest.mark.slow
def test_small_objects_are_found_through_regions(service):
    report = evaluate_small_objects(service, small_object_set(12, side=1024, size_range=(0.045, 0.05)),
                                    "demo-shapes", "small")
    assert report["regions"]["R@5"] >= 0.75
    assert report["regions"]["R@5"] > report["global_only"]["R@5"]


def test_regions_are_children_stored_once_and_resolved_to_their_image(service):
    sets = small_object_set(3, side=1024)
    items = [IngestItem(image=ImageInput.from_bytes(f"big-{i}.png", encode_png(im)), tags=["big"])
             for i, im in enumerate(sets.images)]
    small = IngestItem(image=ImageInput.from_bytes("small.png", encode_png(sets.images[0].resize((200, 200)))))
    first = service.ingest([*items, small], "c", regions=True)
    assert [row.get("regions") for row in first["items"]] == [25, 25, 25, 0]
    assert first["count"] == 4 + 75
    again = service.ingest(items, "c", regions=True)
    assert (again["added"], again["duplicates"], again["count"]) == (0, 3, 79)

    query = sets.queries[1]
    found = service.search(text=query, collection="c", top_k=4, regions=True, filter={"tags": "big"})["results"]
    assert len({hit["id"] for hit in found}) == len(found) == 3  # one row per image, never a region
    best = found[0]["payload"]
    assert best["source"] == "big-1.png" and best["matched"] == "region" and len(best["region_box"]) == 4
    assert "thumbnail" not in best
    plain = service.search(text=query, collection="c", top_k=10)["results"]
    assert all(hit["payload"]["kind"] == "image" for hit in plain) and len(plain) == 4
    with pytest.raises(CrossmodalError, match="^regions"):
        service.search(text=query, collection="c", target="text", regions=True)
