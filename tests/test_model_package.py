"""The model-provider package, built and unpacked as the daemon would, driven over stdio: Vision embedding
models whose vectors are the tool package's, in the caller's order, with every bad input a clear error."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest

from stdio_harness import errors, stream_messages, variables

pytestmark = pytest.mark.protocol

ROOT = Path(__file__).resolve().parents[1]
PROVIDER = "crossmodal_models"


def model_request(action: str, **fields) -> dict:
    return {"user_id": "u1", "type": "model", "action": action, "provider": PROVIDER, "model": "demo-shapes",
            "model_type": "text-embedding", "credentials": {"device": "cpu", "precision": "fp32"}, **fields}


def only_result(messages: list[dict]) -> dict:
    assert not errors(messages), errors(messages)
    (result,) = stream_messages(messages)
    return result


def png_b64(seed: int) -> tuple[str, object]:
    from crossmodal.lab.scenes import generate_scene

    scene = generate_scene(seed, 256, 256, 1)
    buf = io.BytesIO()
    scene.image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode(), scene


def test_the_package_holds_models_only():
    from crossmodal.dify.packaging import package_entries

    names = {name for _, name in package_entries(ROOT, models=True)}
    assert {"manifest.yaml", "main.py", "provider/crossmodal_models.yaml", "_assets/icon.svg", "requirements.txt",
            "models/text_embedding/text_embedding.py", "crossmodal/service.py"} <= names
    assert not any(n.startswith(("tools/", "endpoints/", "tests/", "model_provider/")) for n in names)
    assert not any(name.startswith("model_provider/") for _, name in package_entries(ROOT))


def test_credentials_are_checked_without_weights(models_plugin):
    ok = models_plugin.call({"user_id": "u1", "type": "model", "action": "validate_provider_credentials",
                             "provider": PROVIDER, "credentials": {"device": "cpu", "precision": "fp32"}})
    assert only_result(ok)["result"] is True
    bad = models_plugin.call({"user_id": "u1", "type": "model", "action": "validate_provider_credentials",
                              "provider": PROVIDER, "credentials": {"precision": "fp64"}})
    (error,) = errors(bad)
    assert error["error_type"] == "CredentialsValidateFailedError" and "precision" in error["message"]
    missing = models_plugin.call(model_request("validate_model_credentials", model="/no/such/model"))
    (error,) = errors(missing)
    assert error["error_type"] == "CredentialsValidateFailedError" and "model" in error["message"]


def test_texts_and_images_embed_in_order_and_match_the_embed_node(models_plugin, plugin, file_server, tmp_path):
    images = [png_b64(970_000_000 + k) for k in range(2)]
    documents = [{"content": "a red circle", "content_type": "text"},
                 {"content": images[0][0], "content_type": "image"},
                 {"content": "一个蓝色星形", "content_type": "text"},
                 {"content": images[1][0], "content_type": "image"}]
    result = only_result(models_plugin.call(model_request("invoke_multimodal_embedding", documents=documents,
                                                          input_type="document")))
    vectors = np.asarray(result["embeddings"], dtype=np.float32)
    assert result["model"] == "demo-shapes" and vectors.shape[0] == 4
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert result["usage"]["total_tokens"] > 2

    files = [file_server(f"mm{k}.png", base64.b64decode(b64)) for k, (b64, _) in enumerate(images)]
    creds = {"data_dir": str(tmp_path / "store"), "model": "demo-shapes"}
    node = variables(plugin.invoke_tool("embed", {"images": files, "texts": "a red circle\n一个蓝色星形"}, creds))
    by_kind = {"image": [i["vector"] for i in node["items"] if i["kind"] == "image"],
               "text": [i["vector"] for i in node["items"] if i["kind"] == "text"]}
    expected = np.asarray([by_kind["text"][0], by_kind["image"][0], by_kind["text"][1], by_kind["image"][1]])
    assert np.min(np.sum(vectors * expected, axis=1)) >= 0.9999

    texts = only_result(models_plugin.call(model_request("invoke_text_embedding", texts=["a red circle"],
                                                         input_type="query")))
    assert np.dot(texts["embeddings"][0], expected[0]) >= 0.9999


def test_a_text_finds_its_scene_among_images(models_plugin):
    scenes = [png_b64(971_000_000 + k) for k in range(6)]
    target = scenes[3][1].objects[0]
    documents = [{"content": b64, "content_type": "image"} for b64, _ in scenes]
    documents.append({"content": f"a {target.color} {target.shape}", "content_type": "text"})
    vectors = np.asarray(only_result(models_plugin.call(model_request(
        "invoke_multimodal_embedding", documents=documents)))["embeddings"])
    assert int(np.argmax(vectors[:6] @ vectors[6])) == 3


def test_token_counts_use_the_models_tokenizer(models_plugin):
    from crossmodal.encoders.models import get_encoder

    texts = ["a red circle", "a small blue star on the left of a large green square"]
    counts = only_result(models_plugin.call(model_request("get_text_embedding_num_tokens", texts=texts)))
    assert counts["num_tokens"] == get_encoder("demo-shapes", "cpu").token_counts(texts)


@pytest.mark.parametrize("documents, needle", [
    ([], "documents"),
    ([{"content": "a red circle", "content_type": "text"}, {"content": "%%%", "content_type": "image"}],
     "documents[1]: is not valid base64"),
    ([{"content": base64.b64encode(b"not an image").decode(), "content_type": "image"}], "documents[0]"),
    ([{"content": "   ", "content_type": "text"}], "documents[0]: is empty"),
])
def test_bad_documents_fail_the_call_naming_their_index(models_plugin, documents, needle):
    (error,) = errors(models_plugin.call(model_request("invoke_multimodal_embedding", documents=documents)))
    assert error["error_type"] == "InvokeBadRequestError" and needle in error["message"], error


def rerank_request(action: str, query, docs, **fields) -> dict:
    return {**model_request(action, query=query, docs=docs, score_threshold=None, top_n=None, **fields),
            "model_type": "rerank"}


def test_multimodal_rerank_puts_the_matching_scene_first(models_plugin):
    scenes = [png_b64(972_000_000 + k) for k in range(8)]
    docs = [{"content": b64, "content_type": "image"} for b64, _ in scenes]
    hits = 0
    for k in (1, 4, 6):
        target = scenes[k][1].objects[0]
        query = {"content": f"a {target.color} {target.shape}", "content_type": "text"}
        result = only_result(models_plugin.call(rerank_request("invoke_multimodal_rerank", query, docs)))
        ranked = result["docs"]
        assert sorted(d["index"] for d in ranked) == list(range(8))  # every document, by its request index
        assert [d["score"] for d in ranked] == sorted((d["score"] for d in ranked), reverse=True)
        assert all(0.0 <= d["score"] <= 1.0 for d in ranked)
        hits += ranked[0]["index"] == k
    assert hits >= 2

    # An image query over texts (captions of distinct colours, so that the demo model's weaker shape
    # reading is not what is measured): its own caption first.
    distinct = {}
    for b64, scene in scenes:
        distinct.setdefault(scene.objects[0].color, (b64, scene))
    chosen = list(distinct.values())[:5]
    captions = [{"content": f"a {s.objects[0].color} {s.objects[0].shape}", "content_type": "text"}
                for _, s in chosen]
    for k, (b64, scene) in enumerate(chosen):
        result = only_result(models_plugin.call(rerank_request(
            "invoke_multimodal_rerank", {"content": b64, "content_type": "image"}, captions)))
        assert result["docs"][0]["index"] == k, (k, captions, result["docs"])


def test_rerank_honours_threshold_and_top_n(models_plugin):
    docs = ["a red circle", "a blue star", "a green square", "a yellow heart"]
    full = only_result(models_plugin.call(rerank_request("invoke_rerank", "a red circle", docs)))["docs"]
    assert full[0]["index"] == 0 and full[0]["text"] == "a red circle"
    cut = (full[1]["score"] + full[2]["score"]) / 2
    request = rerank_request("invoke_rerank", "a red circle", docs)
    request.update(score_threshold=cut, top_n=None)
    assert [d["index"] for d in only_result(models_plugin.call(request))["docs"]] == [d["index"] for d in full[:2]]
    request.update(score_threshold=None, top_n=1)
    assert [d["index"] for d in only_result(models_plugin.call(request))["docs"]] == [full[0]["index"]]
    bad = rerank_request("invoke_multimodal_rerank", {"content": "a red circle", "content_type": "text"},
                         [{"content": "a blue star", "content_type": "text"},
                          {"content": "%%%", "content_type": "image"}])
    (error,) = errors(models_plugin.call(bad))
    assert "documents[2]" in error["message"]  # the query is documents[0]: the second doc is index 2


@pytest.mark.slow
def test_rerank_finds_the_scene_at_least_as_often_as_the_search_node(models_plugin, plugin, file_server, tmp_path):
    """The issue's target on 20 held-out scenes: a text query reranked over the scenes by
    invoke_multimodal_rerank puts the matching scene first at least as often as the Search node does."""
    from stdio_harness import json_message

    scenes = [png_b64(973_000_000 + k) for k in range(20)]
    creds = {"data_dir": str(tmp_path / "store"), "model": "demo-shapes", "default_collection": "held-out"}
    files = [file_server(f"held{k}.png", base64.b64decode(b64)) for k, (b64, _) in enumerate(scenes)]
    assert json_message(plugin.invoke_tool("ingest", {"files": files}, creds))["added"] == 20
    docs = [{"content": b64, "content_type": "image"} for b64, _ in scenes]
    search_hits = rerank_hits = 0
    for k, (_, scene) in enumerate(scenes):
        text = f"a {scene.objects[0].color} {scene.objects[0].shape}"
        found = json_message(plugin.invoke_tool("search", {"query": text, "top_k": 1}, creds))["results"]
        search_hits += found[0]["payload"]["source"] == f"held{k}.png"
        ranked = only_result(models_plugin.call(rerank_request(
            "invoke_multimodal_rerank", {"content": text, "content_type": "text"}, docs)))["docs"]
        rerank_hits += ranked[0]["index"] == k
    assert rerank_hits >= search_hits and rerank_hits >= 12, (rerank_hits, search_hits)


def test_a_text_cross_encoder_reranks_texts_as_the_library_scores(models_plugin, tmp_path):
    from sentence_transformers import CrossEncoder
    from tiny_models import save_tiny_cross_encoder

    model = str(save_tiny_cross_encoder(tmp_path / "ce"))
    ok = models_plugin.call({**model_request("validate_model_credentials", model=model), "model_type": "rerank"})
    assert only_result(ok)["result"] is True
    schema = only_result(models_plugin.call({**model_request("get_ai_model_schemas", model=model),
                                             "model_type": "rerank"}))
    assert not schema["model_schema"]["features"]  # no vision: Dify sends a text cross-encoder no images

    docs = ["a red circle", "a blue star", "a dog on the left", "the large green square", "a cat"]
    result = only_result(models_plugin.call(rerank_request("invoke_rerank", "a red circle", docs, model=model)))
    reference = CrossEncoder(model).predict([("a red circle", d) for d in docs])
    assert [d["index"] for d in result["docs"]] == list(np.argsort(-reference, kind="stable"))
    assert np.allclose([d["score"] for d in result["docs"]], np.sort(reference)[::-1], atol=1e-5)
    assert all(0.0 <= d["score"] <= 1.0 for d in result["docs"])

    image, _ = png_b64(974_000_000)
    mixed = rerank_request("invoke_multimodal_rerank", {"content": "a red circle", "content_type": "text"},
                           [{"content": "a blue star", "content_type": "text"},
                            {"content": image, "content_type": "image"}], model=model)
    (error,) = errors(models_plugin.call(mixed))
    assert "documents[2]" in error["message"] and "cross-encoder" in error["message"]


def test_an_itm_model_scores_the_image_text_pairs(models_plugin, tmp_path):
    import torch
    from PIL import Image
    from transformers import AutoProcessor, BlipForImageTextRetrieval
    from tiny_models import save_tiny_blip_itm

    blip = str(save_tiny_blip_itm(tmp_path / "blip"))
    credentials = {"device": "cpu", "precision": "fp32", "itm_model": blip}
    ok = models_plugin.call({**model_request("validate_model_credentials", credentials=credentials),
                             "model_type": "rerank"})
    assert only_result(ok)["result"] is True
    not_itm = {**credentials, "itm_model": str(ROOT / "crossmodal" / "assets" / "demo-shapes")}
    (error,) = errors(models_plugin.call({**model_request("validate_model_credentials", credentials=not_itm),
                                          "model_type": "rerank"}))
    assert "itm_model" in error["message"] and "BLIP" in error["message"]

    scenes = [png_b64(975_000_000 + k) for k in range(3)]
    docs = [{"content": b64, "content_type": "image"} for b64, _ in scenes]
    docs.append({"content": "a red circle", "content_type": "text"})
    query = {"content": "a red circle", "content_type": "text"}
    with_itm = only_result(models_plugin.call(rerank_request("invoke_multimodal_rerank", query, docs,
                                                             credentials=credentials)))["docs"]
    without = only_result(models_plugin.call(rerank_request("invoke_multimodal_rerank", query, docs)))["docs"]
    model, processor = BlipForImageTextRetrieval.from_pretrained(blip), AutoProcessor.from_pretrained(blip)
    pictures = [Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB") for b64, _ in scenes]
    inputs = processor(images=pictures, text=["a red circle"] * 3, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = torch.softmax(model(**inputs).itm_score, dim=-1)[:, 1].numpy()
    scores = {d["index"]: d["score"] for d in with_itm}
    assert np.allclose([scores[k] for k in range(3)], expected, atol=1e-4)
    assert scores[3] == pytest.approx({d["index"]: d["score"] for d in without}[3])  # text-text: the dual encoder


def test_the_model_package_installs_only_what_it_imports():
    """Its requirements are the tool package's lines minus the store and the endpoints; the stdio tests above
    run with every library that only the tool package installs made unimportable (tests/conftest.py)."""
    from conftest import tool_package_only_modules
    from crossmodal.dify.packaging import package_entries

    def lines(path):
        return {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}

    models, tools = lines(ROOT / "model_provider" / "requirements.txt"), lines(ROOT / "requirements.txt")
    assert models < tools  # the same pins, fewer libraries
    assert {"qdrant_edge", "qdrant_client", "prometheus_client"} <= set(tool_package_only_modules())
    shipped = dict((name, path) for path, name in package_entries(ROOT, models=True))
    assert shipped["requirements.txt"] == ROOT / "model_provider" / "requirements.txt"


def test_the_daemons_encoding_of_no_top_n_and_no_threshold_means_all_documents(models_plugin):
    """The daemon re-encodes model requests from Go structs: Dify's null top_n / score_threshold arrive as 0 and
    0.0. Both mean none: every document comes back, ranked."""
    docs = ["a red circle", "a blue star", "a green square", "a yellow heart"]
    expected = only_result(models_plugin.call(rerank_request("invoke_rerank", "a red circle", docs)))["docs"]
    request = rerank_request("invoke_rerank", "a red circle", docs)
    request.update(score_threshold=0.0, top_n=0)
    assert only_result(models_plugin.call(request))["docs"] == expected
    images = [{"content": png_b64(973_000_000 + k)[0], "content_type": "image"} for k in range(3)]
    request = rerank_request("invoke_multimodal_rerank", {"content": "a red circle", "content_type": "text"}, images)
    request.update(score_threshold=0.0, top_n=0)
    assert sorted(d["index"] for d in only_result(models_plugin.call(request))["docs"]) == [0, 1, 2]
