"""Every output Dify parses, checked against the Dify (and daemon) code that reads it.

Each test names the source it follows: repository, release or commit, file and lines, read with the tools of this
workplace (docs/dify-compat.md lists them all). The behaviour of that code is described and reproduced in our own
words (tests/dify_side.py for Dify's upload and indexing steps); Dify's code stays in Dify. Real outputs come from
the plugin processes as the daemon drives them (tests/stdio_harness.py), one of each package for the module.

Sources: langgenius/dify 1.11.0 063b39a ... 1.15.0 3aa26fb (tests/dify_side.py RELEASES; read from a fork carrying
upstream's tags, as langgenius/dify is over this workplace's snapshot limit), langgenius/graphon 0.2.2-0.5.3,
langgenius/dify-plugin-daemon bdb5642 (0.6.10+), langgenius/dify-official-plugins 7af2283.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dify_side import RELEASES, DifyFiles, format_preview, index_chunks
from stdio_harness import (MAX_LINE_BYTES, PluginProcess, endpoint_request, errors, http_response, stream_messages,
                           variables)

ROOT = Path(__file__).resolve().parents[1]
PROVIDER = "crossmodal_models"
KEY = "contract-key-0123456789"
CREDENTIALS = {"device": "cpu", "precision": "fp32"}


# -- shared processes ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dify():
    files = DifyFiles()
    yield files
    files.close()


@pytest.fixture(scope="module")
def tools(dify):
    """The tool package over stdio, with Dify answering its uploads."""
    process = PluginProcess(dify=dify.answer, heartbeat_interval=0.25)
    process.wait_ready()
    yield process
    process.close()
    assert not process.non_json and not process.oversized


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pipeline_results(tools, file_server):
    """Document chunks' ``result`` for a three-page PDF, a PNG, and a PDF whose pages hold figures."""
    from crossmodal.lab.pdfs import picture_pdf, text_pdf

    inputs = {
        "report.pdf": text_pdf(["Revenue grew (a red block)", "Costs fell", "Outlook"]),
        "photo.png": png(Image.new("RGB", (320, 240), (30, 160, 60))),
        "figures.pdf": picture_pdf([Image.new("RGB", (300, 200), (200, 30, 30)),
                                    Image.new("RGB", (200, 300), (30, 30, 200))]),
    }
    results = {}
    for name, data in inputs.items():
        messages = tools.invoke_tool("document_chunks", {"file": file_server(name, data), "dpi": 72}, {})
        assert not errors(messages), errors(messages)
        results[name] = (messages, variables(messages)["result"])
    return results


def model_request(action: str, model_type: str = "text-embedding", **fields) -> dict:
    return {"user_id": "u1", "type": "model", "action": action, "provider": PROVIDER, "model": "demo-shapes",
            "model_type": model_type, "credentials": CREDENTIALS, **fields}


def only_result(messages: list[dict]) -> dict:
    assert not errors(messages), errors(messages)
    (result,) = stream_messages(messages)
    return result


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- Knowledge Pipeline chunks ---------------------------------------------------------------------------------------
@pytest.mark.protocol
@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.tag)
def test_every_picture_becomes_an_attachment_in_dify_s_indexer(pipeline_results, dify, release):
    """langgenius/dify ParagraphIndexProcessor.index (processor/paragraph_index_processor.py: 1.11.0 153-216,
    1.12.1 199-262, 1.15.0 185-248) with _get_content_files and _download_tool_file (index_processor_base.py: 1.12.1
    143-222 and 300-316), FileService.upload_file (services/file_service.py 1.12.1 49-110) and
    Vector.create_multimodal (datasource/vdb/vector_factory.py 1.12.1 214-253), as tests/dify_side.py reproduces
    them for each release: no error, one attachment per picture, each found as an UploadFile and embedded, no
    remote download, and each chunk's text still its page's."""
    for name, (_, result) in pipeline_results.items():
        outcome = index_chunks(result, dify, release)
        pictures = [content.count("](/files/tools/") for content in (c["content"] for c in result["general_chunks"])]
        assert [len(segment.attachments) for segment in outcome.segments] == pictures == [1] * len(pictures), name
        assert len(outcome.embedded) == len(pictures) and not outcome.skipped and not outcome.downloads, name
        for uploaded in outcome.embedded:
            assert Image.open(io.BytesIO(uploaded.data)).format == "JPEG" and len(uploaded.data) <= 2 * 1024 ** 2
    texts = [c["content"].split("\n\n")[0] for c in pipeline_results["report.pdf"][1]["general_chunks"]]
    assert texts == ["Revenue grew (a red block)", "Costs fell", "Outlook"]
    figures = [c["content"].split("\n\n")[0] for c in pipeline_results["figures.pdf"][1]["general_chunks"]]
    assert figures[1] == "Figure 1 on figures.pdf, page 1 of 2." and len(figures) == 4


@pytest.mark.protocol
def test_the_form_dify_s_schema_publishes_is_what_its_code_refuses(dify):
    """What the Document chunks node used to send, kept as the check that tests/dify_side.py can fail: files listed
    as Dify's published multimodal_general_structure.json names them (api/core/schemas/builtin/schemas/v1/) fail
    File's constructor (api/core/file/models.py 1.12.1 lines 61-96: TypeError on 'name'; graphon 0.5.3
    src/graphon/file/models.py 115-143 likewise), and with the keys mended the tool file's id is looked up as an
    UploadFile (vector_factory.py 1.12.1 225-247) and skipped: nothing is embedded."""
    tool_file = dify.store_tool_file("page.jpg", "image/jpeg", b"\xff\xd8 not really a jpeg")
    listed = {"id": tool_file["id"], "related_id": tool_file["id"], "name": "page.jpg", "filename": "page.jpg",
              "size": 10, "extension": ".jpg", "mime_type": "image/jpeg", "type": "image",
              "transfer_method": "tool_file", "url": tool_file["preview_url"]}
    chunks = {"general_chunks": [{"content": "a page", "files": [listed]}]}
    for release in RELEASES:
        with pytest.raises(TypeError, match="unexpected keyword argument"):
            index_chunks(chunks, dify, release)
    mended = {k: v for k, v in listed.items() if k != "name"}
    outcome = index_chunks({"general_chunks": [{"content": "a page", "files": [{**mended, "tenant_id": "t1"}]}]},
                           dify, RELEASES[1])
    assert outcome.embedded == [] and outcome.skipped == [tool_file["id"]]


@pytest.mark.protocol
def test_a_test_run_preview_refuses_the_chunks_that_real_runs_index(pipeline_results):
    """KnowledgeIndexNode in a debugger run (api/core/workflow/nodes/knowledge_index/knowledge_index_node.py 1.12.1
    lines 59-101) calls format_preview (paragraph_index_processor.py 1.12.1 264-275, 1.15.0 251-263), which takes a
    list of texts only: every multimodal processor's dict fails there with 'Chunks is not a list'. A list of texts
    is no way out: index() then reads tool files without a user and takes none (index_processor_base.py 1.12.1
    173-183). docs/dify-compat.md tells users to index with a real run."""
    _, result = pipeline_results["report.pdf"]
    with pytest.raises(ValueError, match="Chunks is not a list"):
        format_preview(result)


@pytest.mark.protocol
def test_the_pictures_are_embedded_and_found_by_retrieval(tools, file_server, dify, models_plugin):
    """A three-page PDF and a PNG through Document chunks, then through the indexer's steps, and their attachments
    embedded as Vector.create_multimodal does (vector_factory.py 1.12.1 214-253: the UploadFile's bytes as base64,
    content_type image, in calls of the model's max_chunks, cached_embedding.py 1.12.1 107-163) by the model
    package; then an image query (RetrievalService embeds the query file and searches the attachment vectors;
    retrieval_service.py 1.12.1 format_retrieval_documents 378-480 maps an attachment hit to its segment through
    SegmentAttachmentBinding; dataset_retrieval.py 1.12.1 258-281 returns the segment's UploadFiles as its files):
    each picture finds its own attachment first, and so its chunk with its page's text."""
    from crossmodal.lab.pdfs import picture_pdf

    colours = [(220, 30, 30), (30, 200, 40), (30, 40, 220), (240, 220, 20)]
    pages = picture_pdf([Image.new("RGB", (240, 240), colour) for colour in colours[:3]])
    outputs = [variables(tools.invoke_tool("document_chunks", {"file": file_server(name, data), "dpi": 72,
                                                                "figures": False}, {}))["result"]
               for name, data in (("scenes.pdf", pages), ("scene.png", png(Image.new("RGB", (240, 240),
                                                                                     colours[3]))))]
    release = RELEASES[-1]
    segments, attachments = [], []
    for result in outputs:
        outcome = index_chunks(result, dify, release)
        segments += outcome.segments
        attachments += outcome.embedded
    assert len(attachments) == 4 and len(segments) == 4  # three pages and the picture
    documents = [{"content": b64(a.data), "content_type": "image"} for a in attachments]
    vectors = np.asarray(only_result(models_plugin.call(model_request(
        "invoke_multimodal_embedding", documents=documents, input_type="document")))["embeddings"])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for k, attachment in enumerate(attachments):
        query = np.asarray(only_result(models_plugin.call(model_request(
            "invoke_multimodal_embedding", documents=[documents[k]], input_type="query")))["embeddings"][0])
        best = int(np.argmax(vectors @ (query / np.linalg.norm(query))))
        assert attachments[best].id == attachment.id
        (segment,) = [s for s in segments if attachment.id in s.attachments]
        assert segment.content.startswith(("scenes.pdf, page", "scene.png"))


@pytest.mark.protocol
def test_the_tool_declares_its_chunks_as_dify_s_multimodal_general_structure():
    """The Knowledge Base node offers a processor's output when its output_schema's ``result`` refers to
    https://dify.ai/schemas/v1/multimodal_general_structure.json (api/core/schemas/builtin/schemas/v1/, 1.15.0); the
    node then reads the variable itself (knowledge_index_node.py 1.12.1 lines 56-65)."""
    declared = yaml.safe_load((ROOT / "tools" / "document_chunks.yaml").read_text())["output_schema"]
    assert declared["properties"]["result"]["$ref"] == "https://dify.ai/schemas/v1/multimodal_general_structure.json"


# -- tool messages and variables ---------------------------------------------------------------------------------------
@pytest.mark.protocol
def test_tool_messages_are_what_dify_s_tool_node_accepts(pipeline_results):
    """api/core/tools/entities/tool_entities.py (1.12.1 lines 132-187): a json message's json_object is a dict or a
    list; a variable's value a basic type, list or None (a stream variable a string); the names json, text and files
    are reserved. The tool node (api/core/workflow/nodes/tool/tool_node.py 1.12.1 lines 307-354) keeps text, json
    and variables by name; blob chunks are merged under 8 KB a chunk and 30 MB a file
    (api/core/plugin/utils/chunk_merger.py 1.12.1 lines 25-71)."""
    for messages, _ in pipeline_results.values():
        for message in stream_messages(messages):
            body = message["message"]
            if message["type"] == "variable":
                assert body["variable_name"] not in {"json", "text", "files"}
                assert isinstance(body["variable_value"], (dict, list, str, int, float, bool, type(None)))
                assert not body.get("stream") or isinstance(body["variable_value"], str)
            elif message["type"] == "json":
                assert isinstance(body["json_object"], (dict, list))
            elif message["type"] == "blob_chunk":
                assert len(base64.b64decode(body["blob"])) <= 8192
            else:
                assert message["type"] == "text" and isinstance(body["text"], str)


# -- replies within the daemon's line ------------------------------------------------------------------------------------
def noise_png(seed: int, side: int = 790) -> bytes:
    """An incompressible PNG just under Dify's 2 MB attachment limit (ATTACHMENT_IMAGE_FILE_SIZE_LIMIT)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return png(Image.fromarray(pixels))


@pytest.mark.protocol
def test_an_image_query_rerank_of_ten_2_mb_images_answers_a_short_line(models_plugin):
    """The daemon reads plugin stdout with a 5 MiB line limit and kills the plugin past it (dify-plugin-daemon
    internal/core/local_runtime/instance.go lines 151-198; PLUGIN_RUNTIME_MAX_BUFFER_SIZE 5242880,
    internal/types/app/config.go 229-234). Dify's multimodal rerank sends every candidate image as base64 of the
    stored file (api/core/rag/rerank/rerank_model.py 1.12.1 lines 132-186) and rebuilds each result from its own
    metadata by ``index``, the text read by nothing for an image (lines 54-68; retrieval_service.py
    format_retrieval_documents reads images by doc_id). So an image result's ``text`` is a short stand-in:
    ten images of 1.9 MB, 25 MB of request, answer one line of a few hundred bytes."""
    images = [noise_png(seed) for seed in range(10)]
    assert all(1.8e6 < len(image) < 2 * 1024 ** 2 for image in images)
    request = model_request("invoke_multimodal_rerank", "rerank", query={"content": b64(images[3]),
                                                                         "content_type": "image"},
                            docs=[{"content": b64(image), "content_type": "image"} for image in images],
                            score_threshold=0.0, top_n=0)
    models_plugin.longest_line = 0
    result = only_result(models_plugin.call(request, timeout=300))
    reply = models_plugin.longest_line
    print(f"rerank of 10 images of {min(map(len, images))}-{max(map(len, images))} bytes: "
          f"request {len(json.dumps(request))} bytes, longest reply line {reply} bytes")
    assert reply < 4096 and not models_plugin.oversized
    assert sorted(d["index"] for d in result["docs"]) == list(range(10)) and result["docs"][0]["index"] == 3
    assert all(d["text"].startswith("image sha256:") for d in result["docs"])


@pytest.mark.protocol
def test_embedding_replies_fit_the_line_or_are_refused_naming_how_many_would(models_plugin):
    """Dify's knowledge base sends a model at most its max_chunks documents a call (cached_embedding.py 1.12.1
    lines 136-147), 64 for the CLIP family here: that reply is measured. Another plugin's invocation may send any
    number: past 4 MiB the call is refused with how many fit, and the plugin lives on. The largest preset's reply
    (Qwen3-VL-Embedding-8B, 16 x 4096) is sized as the SDK writes it. (dify_plugin is not imported here: it patches
    the process with gevent.)"""
    from pydantic import TypeAdapter

    scenes = [{"content": b64(png(Image.new("RGB", (64, 64), (k * 3, 255 - k * 3, 90)))), "content_type": "image"}
              for k in range(64)]
    models_plugin.longest_line = 0
    result = only_result(models_plugin.call(model_request("invoke_multimodal_embedding", documents=scenes,
                                                          input_type="document")))
    assert len(result["embeddings"]) == 64 and models_plugin.longest_line < 1024 ** 2
    # The SDK writes a result with pydantic's JSON encoder (its model_dump_json); the vectors are nearly all of it.
    largest = TypeAdapter(list[list[float]]).dump_json(
        (np.random.default_rng(0).standard_normal((16, 4096)) / 64).tolist())
    print(f"64 demo-shapes vectors: {models_plugin.longest_line} bytes; 16 x 4096: {len(largest)} bytes")
    assert len(largest) < MAX_LINE_BYTES // 2

    texts = [f"note number {k}" for k in range(3000)]
    (error,) = errors(models_plugin.call(model_request("invoke_text_embedding", texts=texts, input_type="document")))
    assert "send at most" in error["message"] and "MiB" in error["message"]
    assert not models_plugin.oversized and models_plugin.proc.poll() is None
    assert only_result(models_plugin.call(model_request("invoke_text_embedding", texts=["ok"],
                                                        input_type="query")))["embeddings"]


@pytest.mark.protocol
def test_a_tool_s_largest_output_stays_within_the_line(tools):
    """A variable message is one line (tool_entities.py 1.12.1 VariableMessage; the daemon's 5 MiB line). The
    Embed node's vectors are the pack's largest tool output per unit of work: 2,000 of them answer within the line
    (past 4 MiB the node answers an error naming the fix instead: crossmodal/dify/adapter.py variable_message,
    tests/test_settings.py), and the plugin lives on."""
    texts = "\n".join(f"note number {k}" for k in range(2000))
    tools.longest_line = 0
    messages = tools.invoke_tool("embed", {"texts": texts}, {"model": "demo-shapes"}, timeout=300)
    print(f"Embed of 2,000 texts: longest line {tools.longest_line} bytes")
    assert not tools.oversized and tools.proc.poll() is None and tools.longest_line < MAX_LINE_BYTES
    assert [e for e in errors(messages) if "fewer items per call" not in e["message"]] == []
    assert errors(messages) or len(variables(messages)["items"]) == 2000


# -- model-provider results ----------------------------------------------------------------------------------------------
@pytest.mark.protocol
def test_model_results_survive_dify_s_post_processing(models_plugin):
    """Embeddings: Dify normalises each vector and skips NaN ones, then zips them with its documents, so a zero vector
    would shift every later one (cached_embedding.py 1.12.1 lines 150-167): one finite, non-zero vector per input,
    in order. Rerank: Dify looks each result up by ``index`` among the documents it sent, keeps ``score >=
    threshold`` and the first top_n (rerank_model.py 1.12.1 lines 54-68); the daemon sends a null threshold and top_n
    as 0 (dify-plugin-daemon pkg/entities/requests/model.go lines 53-54, 68-69). Token counts: one int per text."""
    texts = ["a red circle", "a blue star", "a green square"]
    vectors = np.asarray(only_result(models_plugin.call(model_request(
        "invoke_multimodal_embedding", input_type="document",
        documents=[{"content": t, "content_type": "text"} for t in texts])))["embeddings"])
    assert vectors.shape[0] == len(texts) and np.isfinite(vectors).all() and (np.linalg.norm(vectors, axis=1) > 0).all()
    counts = only_result(models_plugin.call(model_request("get_text_embedding_num_tokens", texts=texts)))
    assert [isinstance(n, int) and n >= 0 for n in counts["num_tokens"]] == [True] * len(texts)
    docs = ["a red circle", "a blue star", "a green square"]
    ranked = only_result(models_plugin.call(model_request("invoke_rerank", "rerank", query="a red circle", docs=docs,
                                                          score_threshold=0.0, top_n=0)))["docs"]
    assert sorted(d["index"] for d in ranked) == [0, 1, 2]
    assert all(d["text"] == docs[d["index"]] and 0 <= d["score"] <= 1 for d in ranked)


# -- External Knowledge and endpoints ------------------------------------------------------------------------------------
@pytest.mark.protocol
def test_external_knowledge_records_are_what_dify_builds_documents_from(tools, tmp_path):
    """ExternalDatasetService.fetch_external_knowledge_retrieval (api/services/external_knowledge_service.py 1.12.1
    lines 287-331) posts knowledge_id, query, retrieval_setting and metadata_condition (null when none) with the key
    as Bearer, and reads ``records`` from a 200 only. dataset_retrieval.py (1.12.1 lines 392-407) makes each record a
    Document: page_content = content (a string), metadata = the record's metadata (an object), then sets score and
    title from the record. The daemon passes the endpoint's first message's status and headers and the hex chunks'
    bytes on (internal/core/io_tunnel/endpoint_service.go lines 15-90; internal/service/endpoint.go 186-219)."""
    settings = {"api_key": KEY, "data_dir": str(tmp_path / "store"), "model": "demo-shapes",
                "default_collection": "kb"}
    auth = {"Authorization": f"Bearer {KEY}"}
    status, headers, body = http_response(tools.call(endpoint_request(settings, "POST", "/v1/ingest", {
        "collection": "kb", "items": [{"text": "a note about red circles"}, {"text": "a note about blue stars"}]},
        auth)))
    assert status == 200 and headers["Content-Type"].startswith("application/json") and json.loads(body)["added"] == 2
    for condition in (None, {"logical_operator": "and", "conditions": [
            {"name": ["kind"], "comparison_operator": "is", "value": "text"}]}):
        status, _, body = http_response(tools.call(endpoint_request(settings, "POST", "/retrieval", {
            "knowledge_id": "kb", "query": "red circles", "metadata_condition": condition,
            "retrieval_setting": {"top_k": 2, "score_threshold": 0.0}}, auth)))
        records = json.loads(body)["records"]
        assert status == 200 and len(records) == 2
        for record in records:
            assert isinstance(record["content"], str) and isinstance(record["metadata"], dict)
            assert isinstance(record["score"], float) and 0 <= record["score"] <= 1 and isinstance(record["title"], str)
    status, _, body = http_response(tools.call(endpoint_request(settings, "POST", "/retrieval", {}, {})))
    assert status == 403 and json.loads(body)["error_code"] == 1001  # Dify's connection check fails on 403


# -- forms, parameter types and manifests as Dify renders them -----------------------------------------------------------
# api/core/entities/parameter_entities.py (1.12.1 lines 5-28): the parameter types Dify knows.
PARAMETER_TYPES = {"string", "number", "boolean", "select", "secret-input", "file", "files", "system-files",
                   "app-selector", "model-selector", "array[tools]", "any", "dynamic-select", "checkbox", "array",
                   "object"}
# api/core/entities/provider_entities.py BasicProviderConfig.Type (1.12.1 lines 173-180): tool-provider credentials
# and endpoint settings.
CONFIG_TYPES = {"secret-input", "text-input", "select", "boolean", "app-selector", "model-selector", "array[tools]"}
# api/core/model_runtime/entities/provider_entities.py FormType and CredentialFormSchema (1.12.1 lines 24-28, 56-69).
MODEL_FORM_TYPES = {"text-input", "secret-input", "select", "radio", "switch"}


def yaml_of(*parts) -> dict:
    return yaml.safe_load(ROOT.joinpath(*parts).read_text(encoding="utf-8"))


def test_tool_parameters_are_types_dify_s_form_renders():
    """PluginParameter (api/core/plugin/entities/parameters.py 1.12.1 lines 71-90) and the tool parameter forms
    schema, form, llm (api/core/tools/entities/tool_entities.py 311-314); init_frontend_parameter and
    cast_parameter_value (parameters.py 103-214) cast a default by its type and refuse a select value outside its
    options."""
    for path in sorted((ROOT / "tools").glob("*.yaml")):
        for parameter in yaml_of("tools", path.name).get("parameters") or []:
            where = f"{path.name}:{parameter['name']}"
            assert parameter["type"] in PARAMETER_TYPES and parameter.get("form", "llm") in {"schema", "form", "llm"}
            assert parameter["label"]["en_US"], where
            default = parameter.get("default")
            if parameter["type"] == "number" and default is not None:
                assert isinstance(default, (int, float)), where
            if parameter["type"] == "boolean" and default is not None:
                assert isinstance(default, bool), where
            if parameter["type"] == "select":
                values = [option["value"] for option in parameter["options"]]
                assert all(option["label"]["en_US"] for option in parameter["options"]), where
                assert default is None or default in values, where
            for bound in ("min", "max"):
                assert parameter.get(bound) is None or isinstance(parameter[bound], (int, float)), where


def test_credential_and_setting_forms_are_types_dify_renders():
    """Tool-provider credentials and endpoint settings are BasicProviderConfig/ProviderConfig (provider_entities.py
    1.12.1 lines 168-196); model-provider credentials CredentialFormSchema, whose ``default`` is a string or null
    (lines 56-69)."""
    provider = yaml_of("provider", "crossmodal.yaml")
    for name, field in provider["credentials_for_provider"].items():
        assert field["type"] in CONFIG_TYPES and field["label"]["en_US"], name
    for field in yaml_of("endpoints", "crossmodal.yaml")["settings"]:
        assert field["type"] in CONFIG_TYPES and field["name"] and field["label"]["en_US"], field
    models = yaml_of("model_provider", "provider", "crossmodal_models.yaml")
    forms = models["provider_credential_schema"]["credential_form_schemas"]
    forms += models.get("model_credential_schema", {}).get("credential_form_schemas", [])
    for field in forms:
        assert field["type"] in MODEL_FORM_TYPES and field["label"]["en_US"], field
        assert field.get("default") is None or isinstance(field["default"], str), field
        if field["type"] in {"select", "radio"}:
            assert field["default"] is None or field["default"] in [o["value"] for o in field["options"]], field


def test_model_schemas_declare_what_dify_reads():
    """AIModelEntity (api/core/model_runtime/entities/model_entities.py, 1.12.1): Dify batches embeddings by
    model_properties.max_chunks (cached_embedding.py 136-147), and a knowledge base is multimodal and a reranker gets
    images only when ``vision`` is among the model's features (model_manager.py check_model_support_vision, 1.12.1
    lines 545-548)."""
    for path in sorted((ROOT / "model_provider" / "models").glob("*/*.yaml")):
        model = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert model["model_type"] in {"text-embedding", "rerank"} and model["label"]["en_US"], path.name
        assert set(model.get("features") or []) <= {"vision"}, path.name
        if model["model_type"] == "text-embedding":
            properties = model["model_properties"]
            assert isinstance(properties["max_chunks"], int) and properties["max_chunks"] >= 1, path.name
            assert isinstance(properties["context_size"], int) and "vision" in model["features"], path.name


@pytest.mark.parametrize("manifest", ["manifest.yaml", "model_provider/manifest.yaml"])
def test_manifests_pass_the_daemon_s_declaration_checks(manifest):
    """dify-plugin-daemon pkg/entities/plugin_entities/plugin_declaration.go (bdb5642, lines 112-161 and 265-311):
    version as VERSION_PATTERN (pkg/entities/manifest_entities/version.go 24-29), type plugin, author and name
    lowercase letters, digits, - and _, label, description, icon, resource.memory, meta.version, arch amd64/arm64,
    runner python with a version and entrypoint, created_at; a model provider alone in its package."""
    import re

    declared = yaml_of(*manifest.split("/"))
    assert re.fullmatch(r"\d{1,4}(\.\d{1,4}){2}(-\w{1,16})?", str(declared["version"]))
    assert declared["type"] == "plugin" and re.fullmatch(r"[a-z0-9_-]{1,64}", declared["author"])
    assert re.fullmatch(r"[a-z0-9_-]{1,128}", declared["name"])
    assert declared["label"]["en_US"] and declared["description"]["en_US"] and declared["icon"]
    assert isinstance(declared["resource"]["memory"], int) and declared["created_at"]
    meta = declared["meta"]
    assert re.fullmatch(r"\d{1,4}(\.\d{1,4}){2}(-\w{1,16})?", str(meta["version"]))
    assert set(meta["arch"]) <= {"amd64", "arm64"} and meta["runner"]["language"] == "python"
    assert meta["runner"]["version"] and meta["runner"]["entrypoint"]
    plugins = declared["plugins"]
    assert plugins.get("models") and not (plugins.get("tools") or plugins.get("endpoints")) if "models" in plugins \
        else plugins.get("tools") or plugins.get("endpoints")
