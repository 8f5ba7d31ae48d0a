"""Late interaction in both stores: token vectors kept beside a pooled vector, found in two stages (HNSW on the
pooled vector, MaxSim on the tokens), checked against brute-force MaxSim over the same stored vectors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def test_maxsim_reads_the_int8_codes_only_when_the_originals_are_on_disk(tmp_path, monkeypatch):
    """On disk, the second stage scores its candidates on the int8 codes in memory (no random read per
    candidate); in memory, on the originals (exact). Codes exist once the optimizer has indexed a segment."""
    import crossmodal.store.edge as edge

    monkeypatch.setattr(edge, "INDEXING_THRESHOLD", 10)
    store = edge.EdgeStore(tmp_path / "edge")
    stored = pages(60, seed=11)
    query = unit(np.asarray(stored[9].multivector[:6]))
    exact = {p.id: maxsim(query, p.multivector) for p in stored}
    for name, storage in (("memory", "quantization=int8"), ("disk", "quantization=int8, on_disk=true")):
        store.create_collection(name, "late-model", DIM, storage=StorageOptions.parse(storage), multivector_dim=DIM)
        store.upsert(name, stored)
        store.finish_writes(name)
        hits = store.query_late(name, unit(query.mean(0)).tolist(), query.tolist(), limit=10, prefetch=60)
        errors = np.abs([h.score - exact[h.id] for h in hits])
        assert hits[0].id == stored[9].id
        if name == "memory":
            assert errors.max() < 1e-4
        else:
            assert 1e-4 < errors.max() < 0.05 * len(query)  # int8 codes: close, not exact
    store.close()


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


def colqwen_sized_pages(count: int, seed: int, batch: int = 50):
    """Batches of points with 350 random token vectors of 128 dimensions (ColQwen2's pages pooled by 2)."""
    rng = np.random.default_rng(seed)
    for start in range(0, count, batch):
        tokens = unit(rng.normal(size=(batch, 350, 128)))
        yield [StoredPoint(f"00000000-0000-0000-0000-{start + i:012d}", unit(t.mean(0)).tolist(), {"page": start + i},
                           t.tolist()) for i, t in enumerate(tokens)]


OPEN_AND_REPORT = """
import json, sys
def anonymous_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
from crossmodal.store.edge import EdgeStore
store = EdgeStore(sys.argv[1])
before = anonymous_mb()
store.get_collection("pages")
print(json.dumps({"before": before, "opened": anonymous_mb()}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_opening_a_late_collection_does_not_keep_its_logs_replay(tmp_path):
    """Opening a shard replays its write-ahead log (here 400 pages of 350 token vectors, 72 MB): glibc kept the
    600 MB that decoding freed until the store returned them (crossmodal/store/heap.py)."""
    from crossmodal.store.edge import EdgeStore

    store = EdgeStore(tmp_path / "edge")
    store.create_collection("pages", "late-model", 128, storage=StorageOptions.parse("vectors=float16"),
                            multivector_dim=128)
    for batch in colqwen_sized_pages(400, seed=0):
        store.upsert("pages", batch)
    store.finish_writes("pages")
    store.close()
    report = subprocess.run([sys.executable, "-c", OPEN_AND_REPORT, str(tmp_path / "edge")], capture_output=True,
                            text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    sizes = json.loads(report.stdout)
    assert sizes["opened"] - sizes["before"] < 100, sizes  # the token vectors are mapped files, not heap


@pytest.mark.slow
def test_a_long_ingest_keeps_the_write_ahead_log_bounded(tmp_path, monkeypatch):
    """The log holds every write until a flush: the store flushes along the way (here every 16 MB; 256 MB in
    use), so 600 pages of token vectors leave a log of its few segments, not a second copy of everything (224
    MB unflushed), and all of them are there after a reopen."""
    import crossmodal.store.edge as edge

    monkeypatch.setattr(edge, "FLUSH_AFTER_BYTES", 16 * 2**20)
    store = edge.EdgeStore(tmp_path / "edge")
    store.create_collection("pages", "late-model", 128, storage=StorageOptions.parse("vectors=float16"),
                            multivector_dim=128)
    for start, batch in enumerate(colqwen_sized_pages(600, seed=1)):
        store.upsert("pages", batch)
        log = sum(f.stat().st_size for f in (tmp_path / "edge").rglob("*") if "wal" in f.parts)
        assert log < 130 * 2**20, (start, log)
    store.close()
    reopened = edge.EdgeStore(tmp_path / "edge")
    assert reopened.get_collection("pages").count == 600
    reopened.close()


# -- a late-interaction model (a tiny ColQwen2) through Ingest and Search ---------------------------------------
@pytest.fixture(scope="module")
def colqwen_dir(tmp_path_factory):
    from crossmodal.lab.late_models import save_colqwen2

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


# -- ColModernVBert: a processor that tiles pages (Idefics3) ------------------------------------------------------
@pytest.fixture(scope="module")
def colmodernvbert_dir(tmp_path_factory):
    from crossmodal.lab.late_models import save_colmodernvbert

    return save_colmodernvbert(tmp_path_factory.mktemp("colmodernvbert"))


def library_tokens(model_dir, batch_of) -> list[np.ndarray]:
    """transformers' own path for ColModernVBert: its processor's process_images / process_queries, the
    model's embeddings at the attended positions."""
    import torch
    from transformers import ColModernVBertForRetrieval, ColModernVBertProcessor

    processor = ColModernVBertProcessor.from_pretrained(model_dir)
    model = ColModernVBertForRetrieval.from_pretrained(model_dir).eval()
    batch = batch_of(processor)
    with torch.no_grad():
        embeddings = model(**batch).embeddings
    return [e[m.bool()].numpy() for e, m in zip(embeddings, batch["attention_mask"])]


def test_colmodernvbert_pages_are_stored_and_searched_as_the_model_embeds_them(colmodernvbert_dir, tmp_path):
    from crossmodal.inputs import pdf
    from crossmodal.lab.pdfs import picture_pdf
    from crossmodal.service import ImageInput, IngestItem, Service
    from crossmodal.settings import Settings

    service = Service(Settings(data_dir=str(tmp_path / "store"), model=str(colmodernvbert_dir), device="cpu"))
    document = picture_pdf(page_images(3))
    report = service.ingest([IngestItem(image=ImageInput.from_bytes("deck.pdf", document))], "deck", dpi=72)
    assert report["added"] == 3 and not report.get("errors")
    rendered = [pdf.render_page(document, k, 3, name="deck.pdf", dpi=72).image for k in range(1, 4)]
    pages = library_tokens(colmodernvbert_dir, lambda p: p.process_images(rendered))
    stored = {p.payload["page"]: np.asarray(p.multivector) for p in service.store.scroll("deck", None, 10)[0]}
    for k, tokens in enumerate(pages, start=1):
        assert stored[k].shape == tokens.shape and np.min(np.sum(unit(stored[k]) * unit(tokens), axis=1)) > 0.9999
    query = unit(library_tokens(colmodernvbert_dir, lambda p: p.process_queries(["a red circle"]))[0])
    expected = sorted(((maxsim(query, stored[k]) / len(query), k) for k in stored), reverse=True)
    found = service.search("a red circle", collection="deck", top_k=3)
    assert [h["payload"]["page"] for h in found["results"]] == [k for _, k in expected]
    assert np.allclose([h["score"] for h in found["results"]], [s for s, _ in expected], atol=1e-4)
    service.store.close()


def test_a_tiled_pages_heat_map_puts_each_token_in_its_tile(colmodernvbert_dir):
    from PIL import Image

    from crossmodal.alignment.late import patch_map
    from crossmodal.encoders.models import get_encoder

    encoder = get_encoder(str(colmodernvbert_dir), "cpu")
    page = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 150, 3), dtype=np.uint8))
    tokens, mask, (cols, rows) = encoder.page_patches(page)
    processor = encoder.model[0].processor
    layout = processor.image_processor(images=[[page]], return_row_col_info=True)
    tile_rows, tile_cols = layout["rows"][0][0], layout["cols"][0][0]
    side = int(np.sqrt(processor.image_seq_len))
    assert (rows, cols) == (tile_rows * side, tile_cols * side) and mask.sum() == rows * cols
    # Idefics3's order: tile after tile, row by row, each tile's tokens row-major; then the global view.
    with_ids = encoder.model.encode_document([page], output_value=None)[0]
    keep = with_ids["attention_mask"].bool()
    in_order = unit(with_ids["token_embeddings"][keep].float().numpy())
    positions = np.nonzero((with_ids["input_ids"][keep] == processor.image_token_id).numpy())[0]
    for index in (0, side + 1, side * side, 5 * side * side + 2, rows * cols - 1):
        tile, within = divmod(index, side * side)
        cell = (tile // tile_cols * side + within // side, tile % tile_cols * side + within % side)
        grid = patch_map(in_order[positions[index]][None], tokens, mask, (cols, rows))
        assert np.unravel_index(grid.argmax(), grid.shape) == cell
