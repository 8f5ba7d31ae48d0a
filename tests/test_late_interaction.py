"""Late interaction in both stores: token vectors kept beside a pooled vector, found in two stages (HNSW on the
pooled vector, MaxSim on the tokens), checked against brute-force MaxSim over the same stored vectors."""

from __future__ import annotations

import numpy as np
import pytest

from crossmodal.store import Condition, StoredPoint
from crossmodal.store.options import StorageOptions

TOKENS, DIM = 24, 16


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def pages(n: int, seed: int = 0):
    """Multivectors with structure (tokens near a page's few topics), and their mean as the pooled vector."""
    rng = np.random.default_rng(seed)
    topics = unit(rng.normal(size=(12, DIM)))
    out = []
    for i in range(n):
        chosen = topics[rng.choice(12, size=3, replace=False)]
        tokens = unit(chosen[rng.integers(0, 3, TOKENS)] + 0.35 * rng.normal(size=(TOKENS, DIM)))
        out.append(StoredPoint(f"00000000-0000-0000-0000-{i:012d}", unit(tokens.mean(0)).tolist(),
                               {"kind": "image", "page": i + 1, "tags": ["even" if i % 2 == 0 else "odd"]},
                               tokens.tolist()))
    return out


def maxsim(query: np.ndarray, tokens) -> float:
    return float((query @ np.asarray(tokens, dtype=np.float32).T).max(axis=1).sum())


def test_two_stages_equal_brute_force_maxsim_over_the_stored_vectors(store):
    stored = pages(120)
    store.create_collection("pages", "late-model", DIM, multivector_dim=DIM)
    store.upsert("pages", stored)
    store.finish_writes("pages")
    assert store.get_collection("pages").multivector_dim == DIM
    rng = np.random.default_rng(7)
    for trial in range(5):
        query = unit(np.asarray(stored[trial * 7].multivector[:6]) + 0.2 * rng.normal(size=(6, DIM)))
        pooled = unit(query.mean(0))
        hits = store.query_late("pages", pooled.tolist(), query.tolist(), limit=10, prefetch=120)
        exhaustive = sorted(((maxsim(query, p.multivector), p.id) for p in stored), reverse=True)[:10]
        assert [h.id for h in hits] == [i for _, i in exhaustive]
        assert np.allclose([h.score for h in hits], [s for s, _ in exhaustive], atol=1e-4)
        # A smaller first stage: MaxSim orders exactly the candidates the pooled vector found.
        candidates = {h.id for h in store.query("pages", pooled.tolist(), 30, exact=True)}
        narrowed = store.query_late("pages", pooled.tolist(), query.tolist(), limit=10, prefetch=30)
        expected = sorted(((maxsim(query, p.multivector), p.id) for p in stored if p.id in candidates),
                          reverse=True)[:10]
        assert [h.id for h in narrowed] == [i for _, i in expected]
    odd = store.query_late("pages", pooled.tolist(), query.tolist(), limit=50, prefetch=120,
                           conditions=[Condition("tags", "eq", "odd")])
    assert odd and all(h.payload["tags"] == ["odd"] for h in odd)


def test_token_vectors_survive_a_scroll_and_float16_storage(store):
    stored = pages(10, seed=3)
    store.create_collection("half", "late-model", DIM, storage=StorageOptions.parse("vectors=float16"),
                            multivector_dim=DIM)
    store.upsert("half", stored)
    points, _ = store.scroll("half", None, 100)
    by_id = {p.id: p for p in points}
    for original in stored:
        kept = np.asarray(by_id[original.id].multivector, dtype=np.float32)
        assert kept.shape == (TOKENS, DIM)
        assert np.min(np.sum(unit(kept) * unit(original.multivector), axis=1)) > 0.999


def test_migration_keeps_the_token_vectors(tmp_path):
    from qdrant_client import QdrantClient

    from crossmodal.store.edge import EdgeStore
    from crossmodal.store.migrate import migrate
    from crossmodal.store.remote import RemoteStore

    source = EdgeStore(tmp_path / "edge")
    target = RemoteStore(url="local", client=QdrantClient(path=str(tmp_path / "server")))
    stored = pages(15, seed=5)
    source.create_collection("docs", "late-model", DIM, multivector_dim=DIM)
    source.upsert("docs", stored)
    report = migrate(source, target, "docs")
    assert report["copied"] == 15 and target.get_collection("docs").multivector_dim == DIM
    query = unit(np.asarray(stored[4].multivector[:5]))
    hits = target.query_late("docs", unit(query.mean(0)).tolist(), query.tolist(), limit=3, prefetch=15)
    assert hits[0].id == stored[4].id
    source.close()
    target.close()


# -- a late-interaction model (a tiny ColQwen2) through Ingest and Search ---------------------------------------
@pytest.fixture(scope="module")
def colqwen_dir(tmp_path_factory):
    from crossmodal.lab.vlm_models import save_colqwen2

    return save_colqwen2(tmp_path_factory.mktemp("colqwen2"))


def page_images(count: int):
    from crossmodal.lab.scenes import generate_scene

    return [generate_scene(7_000 + k, 224, 280, 2).image for k in range(count)]


@pytest.mark.parametrize("backend", ["embedded", "server"])
def test_pages_are_searched_by_maxsim_as_the_library_scores_them(colqwen_dir, tmp_path, backend):
    from qdrant_client import QdrantClient
    from sentence_transformers import MultiVectorEncoder

    from crossmodal.lab.pdfs import picture_pdf
    from crossmodal.service import ImageInput, IngestItem, Service
    from crossmodal.settings import Settings
    from crossmodal.store.remote import RemoteStore

    store = RemoteStore(url="local", client=QdrantClient(path=str(tmp_path / "q"))) if backend == "server" else None
    service = Service(Settings(data_dir=str(tmp_path / "store"), model=str(colqwen_dir), device="cpu"), store=store)
    images = page_images(6)
    report = service.ingest([IngestItem(image=ImageInput.from_bytes("deck.pdf", picture_pdf(images)))], "deck",
                            dpi=72)
    assert report["added"] == 6
    info = service.collection_info("deck")
    assert info["multivector_dimension"] == 16 and info["dimension"] == 16
    from crossmodal.inputs import pdf

    library = MultiVectorEncoder(str(colqwen_dir), device="cpu")
    query = library.encode_query(["a red circle"], convert_to_numpy=True)[0]
    document = picture_pdf(images)
    rendered = [pdf.render_page(document, k, 6, name="deck.pdf", dpi=72).image for k in range(1, 7)]
    pages = library.encode_document(rendered, convert_to_numpy=True)
    stored = {p.payload["page"]: np.asarray(p.multivector) for p in service.store.scroll("deck", None, 10)[0]}
    for k, tokens in enumerate(pages, start=1):  # the stored token vectors are the library's for each page
        assert stored[k].shape == tokens.shape and np.min(np.sum(unit(stored[k]) * unit(tokens), axis=1)) > 0.9999
    expected = sorted(((maxsim(unit(query), stored[k]) / len(query), k) for k in stored), reverse=True)
    found = service.search("a red circle", collection="deck", top_k=6)
    assert found["scoring"] == "maxsim"
    assert [h["payload"]["page"] for h in found["results"]] == [k for _, k in expected]
    assert np.allclose([h["score"] for h in found["results"]], [s for s, _ in expected], atol=1e-4)
    by_image = service.search(image=ImageInput.from_bytes("q.png", png(images[2])), collection="deck", top_k=1)
    assert by_image["results"][0]["payload"]["page"] == 3  # an image query: the pooled vectors
    service.store.close()


def test_pool_factor_stores_fewer_token_vectors(colqwen_dir, tmp_path):
    from crossmodal.service import ImageInput, IngestItem, Service
    from crossmodal.settings import Settings

    service = Service(Settings(data_dir=str(tmp_path / "store"), model=str(colqwen_dir), device="cpu"))
    image = page_images(1)[0]
    for name, storage in (("full", None), ("pooled", "pool_factor=2")):
        service.ingest([IngestItem(image=ImageInput.from_bytes("p.png", png(image)))], name, storage=storage)
    full, _ = service.store.scroll("full", None, 10)
    pooled, _ = service.store.scroll("pooled", None, 10)
    tokens = len(full[0].multivector)
    assert len(pooled[0].multivector) == tokens // 2
    assert service.collection_info("pooled")["storage"]["pool_factor"] == 2
    from crossmodal.errors import CrossmodalError

    with pytest.raises(CrossmodalError, match="late-interaction") as error:
        service.ingest([IngestItem(image=ImageInput.from_bytes("p.png", png(image)))], "clip", model="demo-shapes",
                       storage="pool_factor=2")
    assert error.value.param == "storage"
    service.store.close()


def png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_align_maps_each_phrase_over_the_pages_patch_grid(colqwen_dir, tmp_path):
    import torch
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.multi_vector_encoder.interpretability import get_n_patches, maxsim_similarity_map

    from crossmodal.service import ImageInput, Service
    from crossmodal.settings import Settings

    service = Service(Settings(data_dir=str(tmp_path / "store"), model=str(colqwen_dir), device="cpu"))
    image = page_images(1)[0]
    result = service.align(ImageInput.from_bytes("page.png", png(image)), "a red circle and a blue star")
    library = MultiVectorEncoder(str(colqwen_dir), device="cpu")
    cols, rows = get_n_patches(library, image.size)
    grid = result["attention_map"]
    assert (grid["rows"], grid["cols"], result["scoring"], result["mode"]) == (rows, cols, "maxsim", "global")
    assert [p["text"] for p in result["phrases"]] == ["a red circle", "a blue star"]
    assert len(result["phrase_maps"]) == 2 and 0 <= result["match_probability"] <= 1
    for phrase in result["phrases"]:
        x0, y0, x1, y1 = phrase["box"]
        assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
    # The map is the library's per-token MaxSim map over the image patches, summed over the phrase's tokens.
    query = library.encode_query(["a red circle"], convert_to_numpy=True)[0]
    raw = library.encode_document([image], output_value=None)[0]
    keep = raw["attention_mask"].bool()
    page = torch.nn.functional.normalize(raw["token_embeddings"][keep].float(), dim=-1)
    mask = raw["input_ids"][keep] == library[0].processor.image_token_id
    expected = maxsim_similarity_map(torch.from_numpy(query), page, (cols, rows), image_mask=mask).sum(0).clamp(min=0)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert np.allclose(result["phrase_maps"][0], expected.numpy(), atol=1e-3)
    service.store.close()
