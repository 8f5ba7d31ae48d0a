"""VLM retrieval models (Qwen3-VL-Embedding, Qwen3-VL-Reranker) behind the pack's interfaces: tiny random models of
the real architectures, saved as sentence-transformers saves the published ones, loaded through the production
path, and checked against sentence-transformers' own answers on the same model.

The Qwen3-VL processor needs torchvision built for the installed torch; where that pair does not install (this
workplace's Python 3.11), the module is skipped, and CI runs it on Python 3.12 (``-m "protocol or vlm"``).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image


def torchvision_matches_torch() -> bool:
    try:
        import torchvision  # noqa: F401 - a build for another torch fails here ("operator ... does not exist")
        return True
    except (ImportError, RuntimeError):
        return False


pytestmark = [pytest.mark.vlm, pytest.mark.skipif(not torchvision_matches_torch(),
                                                  reason="the Qwen3-VL processor needs torchvision built for "
                                                         "this torch (CI: the Python 3.12 job)")]


@pytest.fixture(scope="module")
def embedder_dir(tmp_path_factory):
    from tiny_models import save_tiny_qwen3_vl_embedding

    return save_tiny_qwen3_vl_embedding(tmp_path_factory.mktemp("qwen3-vl-embedding"))


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory):
    from tiny_models import save_tiny_qwen3_vl_reranker

    return save_tiny_qwen3_vl_reranker(tmp_path_factory.mktemp("qwen3-vl-reranker"))


@pytest.fixture(scope="module")
def library_embedder(embedder_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedder_dir), device="cpu")


def picture(seed: int, size=(320, 200)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"))


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def service_for(tmp_path, model, **settings):
    from crossmodal.service import Service
    from crossmodal.settings import Settings

    return Service(Settings(data_dir=str(tmp_path / "store"), model=str(model), device="cpu", **settings))


# -- the encoder -----------------------------------------------------------------------------------------------
def test_vectors_equal_sentence_transformers_with_the_models_prompts(embedder_dir, library_embedder):
    from crossmodal.encoders.models import get_encoder

    encoder = get_encoder(str(embedder_dir), "cpu")
    images = [picture(1), picture(2, (90, 300))]
    texts = ["a red circle", "一个蓝色星形"]
    assert encoder.query_prompt == library_embedder.prompts["query"]
    assert encoder.document_prompt == library_embedder.prompts["document"]
    pairs = [
        (encoder.encode_images(images), library_embedder.encode_document(images)),
        (encoder.encode_texts(texts).vectors, library_embedder.encode_document(texts)),
        (encoder.encode_texts(texts, input_type="query").vectors, library_embedder.encode_query(texts)),
        (encoder.encode_images(images, input_type="query"), library_embedder.encode_query(images)),
        (np.vstack([encoder.query_text_vector(t)[0] for t in texts]), library_embedder.encode_query(texts)),
        (encoder.encode_mixed([(images[0], "a caption")]),
         library_embedder.encode_document([{"image": images[0], "text": "a caption"}])),
    ]
    for ours, theirs in pairs:
        assert ours.shape == theirs.shape and ours.dtype == np.float32
        assert np.min(np.sum(ours * theirs, axis=1)) >= 0.9999
        assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # Queries and documents differ: the prompts were applied.
    assert float(pairs[1][0][0] @ pairs[2][0][0]) < 0.9999


def test_matryoshka_dimension_truncates_and_renormalises(embedder_dir, library_embedder):
    from crossmodal.encoders.models import get_encoder

    full = get_encoder(str(embedder_dir), "cpu")
    small = get_encoder(f"{embedder_dir}?dimension=32", "cpu")
    assert small.shared is full.shared  # one loaded model serves both sizes
    assert (full.dim, small.dim, small.identity) == (64, 32, f"{embedder_dir}?dimension=32")
    images = [picture(3)]
    vectors = small.encode_images(images)
    prefix = full.encode_images(images)[:, :32]
    assert np.allclose(vectors, prefix / np.linalg.norm(prefix, axis=1, keepdims=True), atol=1e-5)
    reference = library_embedder.encode_document(images, truncate_dim=32, normalize_embeddings=True)
    assert float(vectors[0] @ reference[0]) >= 0.9999
    with pytest.raises(Exception, match="dimension") as error:
        get_encoder(f"{embedder_dir}?dimension=128", "cpu")
    assert "64" in str(error.value)


def test_a_custom_instruction_changes_queries_only(embedder_dir, library_embedder):
    from crossmodal.encoders.models import get_encoder

    instruction = "Find the photo that shows the object named in the query."
    encoder = get_encoder(f"{embedder_dir}?instruction={instruction.replace(' ', '+')}", "cpu")
    assert encoder.query_prompt == instruction
    query = encoder.encode_texts(["a red circle"], input_type="query").vectors
    assert float(query[0] @ library_embedder.encode_query(["a red circle"], prompt=instruction)[0]) >= 0.9999
    assert float(query[0] @ library_embedder.encode_query(["a red circle"])[0]) < 0.9999
    document = encoder.encode_images([picture(4)])
    assert float(document[0] @ library_embedder.encode_document([picture(4)])[0]) >= 0.9999


def test_max_pixels_sets_what_an_image_costs(embedder_dir):
    from crossmodal.encoders.models import get_encoder

    budget = 32 * 32 * 16
    encoder = get_encoder(f"{embedder_dir}?max_pixels={budget}", "cpu")
    full = get_encoder(str(embedder_dir), "cpu")
    large = picture(5, (2048, 2048))
    assert encoder.visual_tokens(2048, 2048) <= 16 < full.visual_tokens(2048, 2048)
    # The processor (the library) makes as many visual tokens as the encoder counts, under this view's cap.
    processor = encoder.model[0].processor
    for view in (encoder, full):
        view._use_image_budget()
        grid = processor.image_processor(images=[large], return_tensors="pt")["image_grid_thw"][0]
        assert int(grid.prod()) // 4 == view.visual_tokens(2048, 2048)
    # Two views of one model keep their own budgets, and the larger budget is a different vector.
    capped, uncapped = encoder.encode_images([large]), full.encode_images([large])
    assert float(capped[0] @ uncapped[0]) < 0.9999
    later = get_encoder(f"{embedder_dir}?dimension=48", "cpu")  # made after the capped view set its budget
    assert later.visual_tokens(2048, 2048) == full.visual_tokens(2048, 2048)
    assert encoder.identity == full.identity  # the budget sets a cost; it does not change the vector space


def test_image_batches_are_cut_by_visual_tokens(embedder_dir, monkeypatch):
    from crossmodal.encoders.models import get_encoder

    encoder = get_encoder(str(embedder_dir), "cpu")
    sizes = []
    original = encoder._encode
    monkeypatch.setattr(encoder, "_encode", lambda items, kind, n: sizes.append(len(items)) or original(items, kind, n))
    large, small = encoder.visual_tokens(320, 320), encoder.visual_tokens(64, 64)
    assert large > 4 * small  # both capped by the tiny model's max_pixels: 64 and 4 tokens
    monkeypatch.setattr(encoder, "token_budget", 2 * large + 2 * small)
    images = ([picture(10 + k, (320, 320)) for k in range(3)] + [picture(20 + k, (64, 64)) for k in range(3)]
              + [picture(30, (320, 320))])
    vectors = encoder.encode_images(images)
    assert sizes == [2, 4, 1]  # 2 large | 1 large + 3 small | 1 large
    monkeypatch.setattr(encoder, "token_budget", small)
    sizes.clear()
    encoder.encode_images(images[:2])
    assert sizes == [1, 1]  # an image over the budget is a batch of its own
    one_by_one = np.vstack([original([im], "document", 1) for im in images])
    assert np.min(np.sum(vectors * one_by_one, axis=1)) >= 0.9999


@pytest.mark.parametrize("agreement, kept", [(0.0, "bf16"), (1.01, "fp32")])
def test_bf16_on_a_gpu_is_kept_only_when_it_agrees_with_fp32(tmp_path, monkeypatch, agreement, kept):
    """The CUDA branch of use_precision, run on the CPU (bf16 works there too): the threshold decides."""
    import torch

    from crossmodal.encoders import vlm_encoder
    from crossmodal.encoders.model_ref import ModelRef
    from crossmodal.encoders.catalog import weights_fingerprint
    from tiny_models import save_tiny_qwen3_vl_embedding

    directory = save_tiny_qwen3_vl_embedding(tmp_path / "m", seed=7)
    model = vlm_encoder.load_sentence_transformer(ModelRef(str(directory)), directory, "cpu")
    shared = vlm_encoder.SharedModel(model, "cuda")  # as loaded on a GPU
    encoder = vlm_encoder.VlmEncoder(ModelRef(str(directory)), shared, directory, weights_fingerprint(directory))
    monkeypatch.setattr(vlm_encoder, "PRECISION_AGREEMENT", agreement)
    assert encoder.use_precision("bf16") == kept
    dtype = next(model.parameters()).dtype
    assert dtype == (torch.bfloat16 if kept == "bf16" else torch.float32)
    if kept == "bf16":
        assert encoder.precision_agreement is not None and encoder.precision_note is None
    else:
        assert "agree with fp32" in encoder.precision_note and "running fp32" in encoder.precision_note
    other_view = vlm_encoder.VlmEncoder(ModelRef(str(directory), encoder.options), shared, directory, "w")
    assert other_view.use_precision("bf16") == kept  # checked once per loaded model


# -- the nodes' capabilities -------------------------------------------------------------------------------------
def test_ingest_search_and_the_collections_record(embedder_dir, tmp_path):
    from crossmodal.errors import CrossmodalError
    from crossmodal.encoders.model_ref import ModelOptions
    from crossmodal.service import ImageInput, IngestItem

    service = service_for(tmp_path, embedder_dir, model_options=ModelOptions(dimension=32))
    images = [picture(30 + k) for k in range(4)]
    items = [IngestItem(image=ImageInput.from_bytes(f"p{k}.png", png(im)), caption=f"picture {k}")
             for k, im in enumerate(images)] + [IngestItem(text="a red circle"), IngestItem(text="a blue star")]
    report = service.ingest(items, "c")
    assert (report["added"], report["rejected"]) == (6, [])
    info = service.collection_info("c")
    assert (info["model"], info["dimension"]) == (f"{embedder_dir}?dimension=32", 32)

    by_image = service.search(image=ImageInput.from_bytes("q", png(images[2])), collection="c", top_k=2)
    query = service.encoder(info["model"]).query_image_vector(images[2])
    assert by_image["results"][0]["score"] == pytest.approx(
        float(query @ service.encoder(info["model"]).encode_images([images[2]])[0]), abs=1e-4)
    to_text = service.search(image=ImageInput.from_bytes("q", png(images[0])), collection="c", target="text")
    assert {h["payload"]["kind"] for h in to_text["results"]} == {"text"}
    by_text = service.search("picture", collection="c", top_k=4)
    assert len(by_text["results"]) == 4 and by_text["model"] == info["model"]
    fused = service.search("picture", image=ImageInput.from_bytes("q", png(images[1])), collection="c")
    assert fused["query_kind"] == "fused"

    # Later settings do not change how the collection's queries are embedded; a conflicting one is an error.
    later = service_for(tmp_path, embedder_dir, model_options=ModelOptions(dimension=64))
    with pytest.raises(CrossmodalError, match="32-d") as error:
        later.search("picture", collection="c", model=str(embedder_dir))
    assert error.value.param == "dimension"
    plain = service_for(tmp_path, embedder_dir)
    assert plain.search("picture", collection="c", top_k=1)["model"] == info["model"]
    other_prompt = service_for(tmp_path, embedder_dir, model_options=ModelOptions(instruction="Find it."))
    with pytest.raises(CrossmodalError) as error:
        other_prompt.search("picture", collection="c", model=str(embedder_dir))
    assert error.value.param == "instruction"
    for s in (service, later, plain, other_prompt):
        s.store.close()


def test_an_image_and_its_caption_make_one_vector(embedder_dir, library_embedder, tmp_path, tiny_clip_dir):
    from crossmodal.errors import CrossmodalError
    from crossmodal.service import ImageInput, IngestItem

    service = service_for(tmp_path, embedder_dir)
    image = picture(45)
    report = service.ingest([IngestItem(image=ImageInput.from_bytes("a.png", png(image)), caption="a red circle"),
                             IngestItem(image=ImageInput.from_bytes("b.png", png(picture(46))))], "mixed",
                            embed_captions=True)
    assert report["added"] == 2
    hits = service.search(image=ImageInput.from_bytes("q", png(image)), collection="mixed", top_k=2)
    stored = {h["payload"]["source"]: h for h in hits["results"]}
    assert stored["a.png"]["payload"]["embedded_with_caption"] is True
    assert "embedded_with_caption" not in stored["b.png"]["payload"]
    query = library_embedder.encode_query([image])[0]
    together = library_embedder.encode_document([{"image": image, "text": "a red circle"}])[0]
    assert stored["a.png"]["score"] == pytest.approx(float(query @ together), abs=1e-4)
    clip = service_for(tmp_path / "clip", tiny_clip_dir)
    with pytest.raises(CrossmodalError) as error:
        clip.ingest([IngestItem(image=ImageInput.from_bytes("a.png", png(image)), caption="x")], embed_captions=True)
    assert error.value.param == "embed_captions"
    service.store.close()
    clip.store.close()


def test_embed_node_and_documents_take_query_or_document(embedder_dir, library_embedder, tmp_path):
    from crossmodal.service import ImageInput

    service = service_for(tmp_path, embedder_dir)
    image = picture(40)
    result = service.embed([ImageInput.from_bytes("a.png", png(image))], ["a red circle"], input_type="query")
    vectors = {item["kind"]: np.asarray(item["vector"]) for item in result["items"]}
    assert float(vectors["text"] @ library_embedder.encode_query(["a red circle"])[0]) >= 0.9999
    assert float(vectors["image"] @ library_embedder.encode_query([image])[0]) >= 0.9999
    documents = service.embed_documents([("text", "a red circle"),
                                         ("image", base64.b64encode(png(image)).decode())])
    assert float(np.asarray(documents["vectors"][0]) @ library_embedder.encode_document(["a red circle"])[0]) >= 0.9999
    assert documents["tokens"] > 0
    service.store.close()


def test_chinese_text_routes_to_a_vlm_model(embedder_dir, tiny_clip_dir, tmp_path):
    import json

    from crossmodal.service import Service
    from crossmodal.settings import Settings

    service = Service(Settings(data_dir=str(tmp_path / "store"), device="cpu",
                               routes=json.dumps({"default": str(tiny_clip_dir), "zh": str(embedder_dir)})))
    chinese = service.embed(texts=["一个红色的圆"])
    assert chinese["route"]["route"] == "zh" and chinese["model"] == f"{embedder_dir}?dimension=64"
    assert service.embed(texts=["a red circle"])["model"] == str(tiny_clip_dir)
    service.store.close()


def test_align_keeps_its_output_contract(embedder_dir, tmp_path):
    from crossmodal.service import ImageInput

    service = service_for(tmp_path, embedder_dir)
    scene = ImageInput.from_bytes("s.png", png(picture(50, (480, 360))))
    result = service.align(scene, "a red circle and a blue star")
    assert result["mode"] == "global" and result["view"] == [0.0, 0.0, 480.0, 360.0]
    assert 0.0 <= result["match_probability"] <= 1.0 and "default" in result["calibration"]
    assert [p["text"] for p in result["phrases"]] == ["a red circle", "a blue star"]
    assert all(len(p["box"]) == 4 for p in result["phrases"])
    assert len(result["phrase_maps"]) == 2 and result["attention_map"]["values"]
    encoder = service.encoder()
    whole = encoder.embed_pixels(encoder.preprocess([picture(50, (480, 360))]))[0]
    text = encoder.encode_texts(["a red circle and a blue star"], input_type="query").vectors[0]
    assert result["similarity_score"] == pytest.approx(float(text @ whole), abs=1e-4)
    tiled = service.align(ImageInput.from_bytes("big.png", png(picture(51, (1400, 700)))), "a red circle",
                          heatmap=False)
    assert tiled["mode"] == "tiled" and tiled["tiles"] > 1
    service.store.close()


def test_a_calibration_is_fitted_per_model_as_for_dual_encoders(embedder_dir, tmp_path):
    from crossmodal.alignment.calibration import calibration_path, load_calibration
    from crossmodal.encoders.models import get_encoder
    from crossmodal.lab.calibration_fit import fit_calibration, labelled_scene_pairs, save_calibration

    encoder = get_encoder(f"{embedder_dir}?dimension=32", "cpu")
    pairs = labelled_scene_pairs(12, seed=3, sizes=(96, 128))
    fitted = fit_calibration(encoder, pairs, f"{len(pairs)} generated pairs")
    assert fitted.metrics["pairs"] == len(pairs) >= 20
    save_calibration(fitted, calibration_path(encoder.identity, tmp_path))
    loaded = load_calibration(encoder, tmp_path)
    assert (loaded.a, loaded.b) == pytest.approx((fitted.a, fitted.b))
    assert "default" in load_calibration(get_encoder(str(embedder_dir), "cpu"), tmp_path).source  # per size


# -- the multimodal cross-encoder -----------------------------------------------------------------------------------
def test_reranker_scores_are_the_sigmoid_of_the_librarys_log_odds(reranker_dir):
    import torch
    from sentence_transformers import CrossEncoder

    from crossmodal.rerank import scoring

    model = scoring.load_cross_encoder(str(reranker_dir), None, "cpu")
    library = CrossEncoder(str(reranker_dir), device="cpu")
    images = [picture(60), picture(61, (100, 260))]
    texts = ["a red circle", "a blue star on the left"]
    cases = [("a red circle", [scoring.Candidate("0", image=images[0]), scoring.Candidate("1", image=images[1])]),
             ("a red circle", [scoring.Candidate(str(k), text=t) for k, t in enumerate(texts)]),
             (images[0], [scoring.Candidate(str(k), text=t) for k, t in enumerate(texts)]),
             (images[0], [scoring.Candidate("1", image=images[1])])]
    for instruction in (None, "Does the document show what the query names?"):
        for query, candidates in cases:
            ours = scoring.cross_encoder_scores(model, query, candidates, instruction=instruction)
            pairs = [(query, c.image if c.image is not None else c.text) for c in candidates]
            log_odds = library.predict(pairs, prompt=instruction, activation_fn=torch.nn.Identity())
            assert np.allclose(ours, 1 / (1 + np.exp(-np.asarray(log_odds))), atol=1e-5)
            assert np.all((ours > 0) & (ours < 1))
    plain = scoring.cross_encoder_scores(model, "a red circle", cases[0][1])
    other = scoring.cross_encoder_scores(model, "a red circle", cases[0][1], instruction="Something else.")
    assert not np.allclose(plain, other)  # the instruction reaches the model


def test_the_rerank_node_picks_a_multimodal_cross_encoder_for_images(reranker_dir, embedder_dir, tmp_path):
    import json

    from crossmodal.service import ImageInput

    service = service_for(tmp_path, embedder_dir, routes=json.dumps({"cross_encoder": str(reranker_dir)}))
    files = [ImageInput.from_bytes(f"f{k}.png", png(picture(70 + k))) for k in range(3)]
    result = service.rerank("a red circle", files=files)
    assert result["method"] == "cross-encoder" and result["model"] == str(reranker_dir)
    assert len(result["results"]) == 3 and all(0 < r["score"] < 1 for r in result["results"])
    by_image = service.rerank(query_image=files[0], candidates=["a red circle", "a blue star"])
    assert by_image["method"] == "cross-encoder" and len(by_image["results"]) == 2
    service.store.close()


# -- over stdio, as Dify's daemon drives both packages -------------------------------------------------------------
@pytest.mark.protocol
def test_the_tool_nodes_run_a_vlm_model(plugin, file_server, embedder_dir, reranker_dir, tmp_path,
                                        library_embedder):
    import json

    from stdio_harness import errors, variables

    creds = {"data_dir": str(tmp_path / "store"), "model": str(embedder_dir), "dimension": "32",
             "routes": json.dumps({"cross_encoder": str(reranker_dir)})}
    images = [picture(80 + k) for k in range(3)]
    files = [file_server(f"vlm{k}.png", png(im)) for k, im in enumerate(images)]
    embedded = variables(plugin.invoke_tool("embed", {"images": files[:1], "texts": "a red circle"}, creds))
    assert embedded["dimension"] == 32 and embedded["model"] == f"{embedder_dir}?dimension=32"
    reference = library_embedder.encode_document(images[:1], truncate_dim=32, normalize_embeddings=True)[0]
    image_item = next(i for i in embedded["items"] if i["kind"] == "image")
    assert float(np.asarray(image_item["vector"]) @ reference) >= 0.9999

    ingested = variables(plugin.invoke_tool("ingest", {"files": files, "collection": "vlm"}, creds))
    assert ingested["added"] == 3
    found = plugin.invoke_tool("search", {"query": "a red circle", "collection": "vlm", "top_k": 2}, creds)
    assert not errors(found) and len(variables(found)["results"]) == 2
    reranked = variables(plugin.invoke_tool("rerank", {"query": "a red circle", "files": files,
                                                        "instruction": "Find the red circle."}, creds))
    assert reranked["method"] == "cross-encoder" and len(reranked["results"]) == 3


@pytest.mark.protocol
def test_the_model_package_serves_vlm_embeddings_and_reranks(models_plugin, embedder_dir, reranker_dir,
                                                             library_embedder):
    from sentence_transformers import CrossEncoder

    from stdio_harness import errors, stream_messages

    def only(messages):
        assert not errors(messages), errors(messages)
        (result,) = stream_messages(messages)
        return result

    def request(action, model, model_type, **fields):
        return {"user_id": "u1", "type": "model", "action": action, "provider": "crossmodal_models",
                "model": str(model), "model_type": model_type,
                "credentials": {"device": "cpu", "precision": "fp32", "dimension": "32"}, **fields}

    assert only(models_plugin.call(request("validate_model_credentials", embedder_dir, "text-embedding")))["result"]
    schema = only(models_plugin.call(request("get_ai_model_schemas", embedder_dir, "text-embedding")))
    assert schema["model_schema"]["features"] == ["vision"]
    assert schema["model_schema"]["model_properties"]["context_size"] == 8192
    image = picture(90)
    b64 = base64.b64encode(png(image)).decode()
    documents = [{"content": "a red circle", "content_type": "text"}, {"content": b64, "content_type": "image"}]
    result = only(models_plugin.call(request("invoke_multimodal_embedding", embedder_dir, "text-embedding",
                                             documents=documents, input_type="document")))
    vectors = np.asarray(result["embeddings"], dtype=np.float32)
    reference = library_embedder.encode_document(["a red circle", image], truncate_dim=32, normalize_embeddings=True)
    assert vectors.shape == (2, 32) and np.min(np.sum(vectors * reference, axis=1)) >= 0.9999
    query = only(models_plugin.call(request("invoke_text_embedding", embedder_dir, "text-embedding",
                                            texts=["a red circle"], input_type="query")))
    expected = library_embedder.encode_query(["a red circle"], truncate_dim=32, normalize_embeddings=True)[0]
    assert float(np.asarray(query["embeddings"][0]) @ expected) >= 0.9999

    rerank_schema = only(models_plugin.call(request("get_ai_model_schemas", reranker_dir, "rerank")))
    assert rerank_schema["model_schema"]["features"] == ["vision"]
    docs = [{"content": b64, "content_type": "image"}, {"content": "a blue star", "content_type": "text"}]
    ranked = only(models_plugin.call(request("invoke_multimodal_rerank", reranker_dir, "rerank",
                                             query={"content": "a red circle", "content_type": "text"}, docs=docs,
                                             score_threshold=0.0, top_n=0)))
    library = CrossEncoder(str(reranker_dir), device="cpu").predict([("a red circle", image), ("a red circle",
                                                                                               "a blue star")])
    assert sorted(d["index"] for d in ranked["docs"]) == [0, 1]
    for doc in ranked["docs"]:
        assert doc["score"] == pytest.approx(float(library[doc["index"]]), abs=1e-5)
