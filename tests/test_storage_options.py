"""Storage options (float16 vectors, int8 / binary quantisation with rescoring, on-disk originals, server
sharding): parsed with clear errors, refused where the backend or the model cannot honour them, recorded with
the collection, and the same on both backends."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from crossmodal.errors import CrossmodalError
from crossmodal.store import StoredPoint
from crossmodal.store.edge import EdgeStore
from crossmodal.store.options import StorageOptions
from crossmodal.store.remote import RemoteStore


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Embedding-like vectors: a few hundred directions with noise (real embeddings have a low intrinsic
    dimension; uniformly random vectors are every index's worst case)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, dim))
    v = centres[rng.integers(0, 200, n)] + 0.35 * rng.normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def ids(n: int) -> list[str]:
    return [f"00000000-0000-0000-0000-{i:012d}" for i in range(n)]


@pytest.mark.parametrize("text, expected", [
    ("", StorageOptions()),
    ("quantization=int8", StorageOptions(quantization="int8")),
    ("vectors=float16; on_disk=yes", StorageOptions(vectors="float16", on_disk=True)),
    (" Quantization = BINARY , on_disk=false ", StorageOptions(quantization="binary")),
    ("shards=3, replicas=2, write_consistency=2", StorageOptions(shards=3, replicas=2, write_consistency=2)),
    ({"quantization": "int8", "on_disk": True}, StorageOptions(quantization="int8", on_disk=True)),
])
def test_storage_options_parse(text, expected):
    assert StorageOptions.parse(text) == expected
    assert StorageOptions.parse(expected.as_dict()) == expected  # what a collection records reads back


@pytest.mark.parametrize("text, needle", [
    ("quantisation=int8", "unknown storage option"),
    ("quantization=pq", "quantization 'pq' is not one of none, int8, binary"),
    ("vectors=int4", "vectors 'int4' is not one of float32, float16"),
    ("on_disk=maybe", "on_disk 'maybe' is not true or false"),
    ("int8", "not key=value"),
    ("shards=0", "shards '0' is not a positive whole number"),
])
def test_bad_storage_options_are_named(text, needle):
    with pytest.raises(CrossmodalError, match=needle) as caught:
        StorageOptions.parse(text)
    assert caught.value.param == "storage"


def test_options_the_backend_or_model_cannot_honour_are_errors():
    with pytest.raises(CrossmodalError, match="shards, replicas need a Qdrant server"):
        StorageOptions(shards=2, replicas=2).check("embedded", 512)
    StorageOptions(shards=2, replicas=2).check("qdrant", 512)
    with pytest.raises(CrossmodalError, match="binary quantisation needs 768-d vectors or more; this model's are 512-d"):
        StorageOptions(quantization="binary").check("embedded", 512)
    StorageOptions(quantization="binary").check("embedded", 768)
    with pytest.raises(CrossmodalError, match="write_consistency 3 exceeds replicas 2"):
        StorageOptions(replicas=2, write_consistency=3).check("qdrant", 512)


@pytest.mark.parametrize("text", ["vectors=float16", "quantization=int8", "quantization=int8, on_disk=true",
                                  "vectors=float16, quantization=binary, on_disk=true"])
def test_each_option_is_recorded_and_searches_alike_on_both_backends(store, text):
    dim = 768 if "binary" in text else 64
    options = StorageOptions.parse(text)
    store.create_collection("opts", "model-a", dim, None, options)
    vectors = clustered(400, dim)
    store.upsert("opts", [StoredPoint(i, v.tolist(), {"kind": "image"}) for i, v in zip(ids(400), vectors)])
    store.finish_writes("opts")
    info = store.get_collection("opts")
    assert info.storage == options and info.as_dict()["storage"] == options.as_dict() and info.count == 400
    for k in (3, 150, 399):
        hits = store.query("opts", vectors[k].tolist(), 5)
        assert hits[0].id == ids(400)[k] and hits[0].score == pytest.approx(1.0, abs=2e-3)


def test_the_embedded_store_reads_the_options_back_after_a_restart(tmp_path):
    first = EdgeStore(tmp_path)
    first.create_collection("kept", "model-a", 64, None, StorageOptions(quantization="int8", on_disk=True))
    first.close()
    assert EdgeStore(tmp_path).get_collection("kept").storage == StorageOptions(quantization="int8", on_disk=True)


def test_an_existing_collection_keeps_its_options(store):
    store.ensure_collection("c", "model-a", 64, None, StorageOptions(quantization="int8"))
    # the provider's default (not strict) never touches an existing collection
    assert store.ensure_collection("c", "model-a", 64, None, StorageOptions()).storage.quantization == "int8"
    with pytest.raises(CrossmodalError, match="exists with storage 'vectors=float32, quantization=int8") as caught:
        store.ensure_collection("c", "model-a", 64, None, StorageOptions(vectors="float16"), strict=True)
    assert caught.value.param == "storage"


def test_int8_with_rescoring_keeps_recall_once_the_graph_is_built(tmp_path):
    """Past the indexing threshold the optimizer builds HNSW over the int8 codes; searches rescore the
    best candidates against the originals, so recall@10 against exact search stays high."""
    from crossmodal.store.edge import INDEXING_THRESHOLD

    n, dim = INDEXING_THRESHOLD + 2_000, 64
    store = EdgeStore(tmp_path)
    store.create_collection("big", "model-a", dim, None, StorageOptions(quantization="int8"))
    vectors = clustered(n, dim, seed=1)
    names = ids(n)
    for start in range(0, n, 5_000):
        store.upsert("big", [StoredPoint(i, v.tolist(), {"kind": "image"})
                             for i, v in zip(names[start:start + 5_000], vectors[start:start + 5_000])])
    store.finish_writes("big")
    queries = clustered(30, dim, seed=2)
    found = 0
    for q in queries:
        exact = {h.id for h in store.query("big", q.tolist(), 10, exact=True)}
        found += len(exact & {h.id for h in store.query("big", q.tolist(), 10)})
    assert found / (10 * len(queries)) >= 0.9
    store.close()


def test_a_cluster_that_cannot_satisfy_the_options_is_a_clear_error():
    class Refusing:
        def collection_exists(self, name):
            return False

        def create_collection(self, *args, **kwargs):
            from qdrant_client.http.exceptions import UnexpectedResponse

            raise UnexpectedResponse(400, "Bad Request", b'{"status":{"error":"Wrong input: replication factor 3 '
                                     b'is greater than the number of peers 1"}}', httpx.Headers())

    store = RemoteStore(url="http://cluster:6333", client=Refusing())
    with pytest.raises(CrossmodalError, match="Qdrant refused it: .*replication factor 3") as caught:
        store.create_collection("c", "model-a", 512, None, StorageOptions(shards=2, replicas=3))
    assert caught.value.param == "storage"


def test_ingest_takes_storage_from_the_node_or_the_provider(tmp_path):
    from crossmodal.service import IngestItem, Service
    from crossmodal.settings import Settings

    from crossmodal.store.options import DEFAULT_FOR_NEW

    texts = [IngestItem(text=t) for t in ("a red circle", "a blue star")]
    plain = Service(Settings(data_dir=str(tmp_path / "plain"), model="demo-shapes"))
    plain.ingest(texts, "new")
    assert plain.collection_info("new")["storage"] == DEFAULT_FOR_NEW.as_dict() == {
        "vectors": "float32", "quantization": "int8", "on_disk": True}
    found = plain.search("a red circle", collection="new", target="text", top_k=1)["results"][0]
    assert found["payload"]["text"] == "a red circle" and found["score"] == pytest.approx(1.0, abs=1e-5)
    service = Service(Settings(data_dir=str(tmp_path), model="demo-shapes", storage="vectors=float16"))
    service.ingest(texts, "by-default")
    assert service.collection_info("by-default")["storage"]["vectors"] == "float16"
    service.ingest(texts, "asked", storage="quantization=int8")
    assert service.collection_info("asked")["storage"] == {"vectors": "float32", "quantization": "int8",
                                                           "on_disk": False}
    with pytest.raises(CrossmodalError, match="storage options apply when a collection is made"):
        service.ingest(texts, "asked", storage="quantization=none")
    with pytest.raises(CrossmodalError, match="shards need a Qdrant server"):
        service.ingest(texts, "sharded", storage="shards=2")
