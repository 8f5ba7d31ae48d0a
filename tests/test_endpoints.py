"""Every endpoint through the stdio protocol, as raw HTTP requests the way the daemon forwards them."""

import base64
import io
import json

import pytest
from PIL import Image

from stdio_harness import endpoint_request, http_response

pytestmark = pytest.mark.protocol

KEY = "endpoint-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture()
def settings(tmp_path):
    return {"api_key": KEY, "data_dir": str(tmp_path / "store"), "model": "demo-shapes", "default_collection": "kb"}


def call(plugin, settings, method, path, body=None, headers=AUTH, raw_body=None):
    status, response_headers, data = http_response(
        plugin.call(endpoint_request(settings, method, path, body, headers, raw_body), timeout=180))
    content_type = response_headers.get("Content-Type", "")
    return status, (json.loads(data) if content_type.startswith("application/json") else data)


def _scene_png(seed, objects=1):
    from crossmodal.scenes import generate_scene

    scene = generate_scene(seed, 384, 384, objects)
    buf = io.BytesIO()
    scene.image.save(buf, "PNG")
    return scene, base64.b64encode(buf.getvalue()).decode()


def test_auth_is_required_everywhere_but_the_viewer(plugin, settings):
    for method, path in (("POST", "/v1/search"), ("GET", "/v1/collections"), ("GET", "/openapi.json"),
                         ("GET", "/metrics"), ("POST", "/retrieval")):
        status, body = call(plugin, settings, method, path, {}, headers={})
        assert status == 401, (path, body)
        status, _ = call(plugin, settings, method, path, {}, headers={"Authorization": "Bearer wrong"})
        assert status == 401
    status, retrieval = call(plugin, settings, "POST", "/retrieval", {}, headers={"Authorization": "Bearer x"})
    assert retrieval["error_code"] == 1002 and "error_msg" in retrieval
    status, page = call(plugin, settings, "GET", "/viewer", headers={})
    assert status == 200 and b"Crossmodal viewer" in page and b"http" not in page.split(b"<script>")[1].split(b"fetch(")[0]


def test_ingest_search_align_rerank_collections_and_retrieval(plugin, settings):
    scenes = [_scene_png(880_000_000 + k) for k in range(6)]
    items = [{"image": png, "caption": scene.objects[0].phrase("en"), "tags": ["demo"],
              "metadata": {"album": "a1"}} for scene, png in scenes]
    items.append({"text": "a note about red circles"})
    status, report = call(plugin, settings, "POST", "/v1/ingest", {"collection": "kb", "items": items})
    assert status == 200 and report["added"] == 7, report

    target = scenes[2][0].objects[0]
    status, found = call(plugin, settings, "POST", "/v1/search",
                         {"query": f"a {target.color} {target.shape}", "top_k": 3, "with_thumbnails": True})
    assert status == 200 and len(found["results"]) == 3 and "thumbnail_jpeg" in found["results"][0]

    status, aligned = call(plugin, settings, "POST", "/v1/align",
                           {"image": scenes[2][1], "text": f"a {target.color} {target.shape}"})
    assert status == 200 and 0 <= aligned["match_probability"] <= 1 and aligned["phrases"][0]["box"]
    assert Image.open(io.BytesIO(base64.b64decode(aligned["overlay_png"]))).format == "PNG"

    status, reranked = call(plugin, settings, "POST", "/v1/rerank",
                            {"query": f"a {target.color} {target.shape}", "candidates": found, "method": "region"})
    assert status == 200 and reranked["method"] == "region" and len(reranked["results"]) == 3

    status, embedded = call(plugin, settings, "POST", "/v1/embed", {"texts": ["a red circle"], "images": [scenes[0][1]]})
    assert status == 200 and len(embedded["items"]) == 2

    status, listing = call(plugin, settings, "GET", "/v1/collections")
    assert status == 200 and [c["name"] for c in listing["collections"]] == ["kb"]

    status, knowledge = call(plugin, settings, "POST", "/retrieval",
                             {"knowledge_id": "kb", "query": "a red circle",
                              "retrieval_setting": {"top_k": 4, "score_threshold": 0.0}})
    assert status == 200 and 1 <= len(knowledge["records"]) <= 4
    for record in knowledge["records"]:
        assert set(record) >= {"content", "score", "title", "metadata"} and isinstance(record["metadata"], dict)
        assert record["metadata"]["id"] and "source" in record["metadata"]
    filtered = call(plugin, settings, "POST", "/retrieval", {
        "knowledge_id": "kb", "query": "a red circle", "retrieval_setting": {"top_k": 10},
        "metadata_condition": {"logical_operator": "and",
                               "conditions": [{"name": ["album"], "comparison_operator": "is", "value": "a1"}]}})[1]
    assert len(filtered["records"]) == 6 and all(r["metadata"]["kind"] == "image" for r in filtered["records"])

    status, missing = call(plugin, settings, "POST", "/retrieval", {"knowledge_id": "nope", "query": "x"})
    assert status == 404 and missing["error_code"] == 2001

    status, text = call(plugin, settings, "GET", "/metrics")
    assert status == 200
    assert b'crossmodal_collection_points{collection="kb"} 7.0' in text
    assert b'crossmodal_requests_total{kind="endpoint",name="search",status="200"}' in text
    load_lines = [line for line in text.splitlines() if line.startswith(b"crossmodal_model_load_seconds{")]
    assert load_lines and all(float(line.split()[-1]) > 0 for line in load_lines)


def test_seed_call_shape_and_the_python_client(plugin, settings, monkeypatch):
    """The seed's example runs as written apart from the import, against the endpoint."""
    import httpx

    from crossmodal.client import MultimodalProcessor

    _, png = _scene_png(881_000_000)

    def transport(request: httpx.Request) -> httpx.Response:  # the daemon's /e/{hook} hop, over stdio
        status, body = call(plugin, settings, request.method, request.url.path[len("/e/hook"):],
                            raw_body=request.content, headers={**AUTH, "Content-Type": "application/json"})
        return httpx.Response(status, json=body)

    monkeypatch.setattr("crossmodal.client.TRANSPORT", httpx.MockTransport(transport))
    processor = MultimodalProcessor(api_key=KEY, base_url="http://dify.local/e/hook")
    response = processor.align_image_text(image=base64.b64decode(png), text_query="一个红色圆形")
    assert isinstance(response["similarity_score"], float)
    assert response["attention_map"]["rows"] > 0 and len(response["attention_map"]["values"]) > 0


@pytest.mark.parametrize(
    "path, raw, status, needle",
    [("/v1/search", b"{not json", 400, "body"),
     ("/v1/search", json.dumps({"query": "x", "top_k": "ten"}).encode(), 400, "top_k"),
     ("/v1/search", json.dumps({"query": "x", "collection": "missing"}).encode(), 404, "missing"),
     ("/v1/align", json.dumps({"image": base64.b64encode(b"not an image").decode(), "text": "x"}).encode(), 422,
      "not an image"),
     ("/v1/align", json.dumps({"image": "%%%", "text": "x"}).encode(), 400, "base64"),
     ("/v1/ingest", b"x" * (10 * 1024 * 1024 + 10), 413, "10 MB")],
)
def test_bad_requests(plugin, settings, path, raw, status, needle):
    got, body = call(plugin, settings, "POST", path, raw_body=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert got == status and needle in body["error"]["message"], body


def test_a_collection_ingested_through_the_node_answers_retrieval(plugin, settings, tmp_path):
    """Done-when of the endpoints issue: Ingest node -> External Knowledge API records Dify accepts."""
    from stdio_harness import json_message

    creds = {"data_dir": settings["data_dir"], "model": "demo-shapes", "default_collection": "notes"}
    texts = "a red circle on the left\na small blue star\na large green square at the top"
    assert json_message(plugin.invoke_tool("ingest", {"texts": texts, "tags": "kb"}, creds))["added"] == 3
    status, answer = call(plugin, settings, "POST", "/retrieval",
                          {"knowledge_id": "notes", "query": "a blue star", "retrieval_setting": {"top_k": 2}})
    assert status == 200 and len(answer["records"]) == 2
    first = answer["records"][0]
    assert first["content"] == "a small blue star" and first["metadata"]["kind"] == "text"
    assert isinstance(first["score"], float) and first["title"] and first["metadata"]["tags"] == ["kb"]


def test_endpoints_against_the_hostile_corpus(plugin, settings):
    from hostile_corpus import corpus

    for name, (data, expectation) in corpus().items():
        status, body = call(plugin, settings, "POST", "/v1/align",
                            {"image": base64.b64encode(data).decode(), "text": "a red circle", "heatmap": False})
        assert status in (200, 400, 413, 422), (name, status, body)
        if expectation == "ok" and name != "one-pixel.png":
            assert status == 200, (name, body)
        elif not expectation.startswith("ok"):
            assert status in (413, 422) and body["error"]["param"] == "image", (name, body)


def test_multipart_ingest_and_the_corpus_through_ingest(plugin, settings):
    """Multipart image files, and one JSON ingest of the whole hostile corpus: bad files rejected one by one."""
    from hostile_corpus import corpus

    boundary = "crossmodal-boundary"
    _, png = _scene_png(882_000_000)
    parts = b""
    for k in range(2):
        data = base64.b64decode(png) if k == 0 else base64.b64decode(_scene_png(882_000_001)[1])
        parts += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"m{k}.png\"\r\n"
                  f"Content-Type: image/png\r\n\r\n").encode() + data + b"\r\n"
    parts += f"--{boundary}\r\nContent-Disposition: form-data; name=\"collection\"\r\n\r\nmulti\r\n".encode()
    parts += f"--{boundary}--\r\n".encode()
    status, report = call(plugin, settings, "POST", "/v1/ingest", raw_body=parts,
                          headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200 and report["added"] == 2 and report["collection"] == "multi", report

    items = [{"image": base64.b64encode(data).decode(), "source": name} for name, (data, _) in corpus().items()]
    status, report = call(plugin, settings, "POST", "/v1/ingest", {"collection": "hostile", "items": items})
    assert status == 200, report
    bad = {name for name, (_, expectation) in corpus().items() if not expectation.startswith("ok")}
    assert bad <= {r["source"] for r in report["rejected"]}
    assert report["added"] + len(report["rejected"]) == len(items)
