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
    from crossmodal.lab.scenes import generate_scene

    scene = generate_scene(seed, 384, 384, objects)
    buf = io.BytesIO()
    scene.image.save(buf, "PNG")
    return scene, base64.b64encode(buf.getvalue()).decode()


def test_auth_is_required_everywhere_but_the_viewer(plugin, settings):
    for method, path in (("POST", "/v1/search"), ("GET", "/v1/collections"), ("GET", "/openapi.json"),
                         ("GET", "/metrics")):
        status, body = call(plugin, settings, method, path, {}, headers={})
        assert status == 401, (path, body)
        status, _ = call(plugin, settings, method, path, {}, headers={"Authorization": "Bearer wrong"})
        assert status == 401
    # The External Knowledge API: 403, since Dify's connection check treats only 403/404/502 as failures.
    status, missing = call(plugin, settings, "POST", "/retrieval", {}, headers={})
    assert (status, missing["error_code"]) == (403, 1001) and "Bearer" in missing["error_msg"]
    status, malformed = call(plugin, settings, "POST", "/retrieval", {}, headers={"Authorization": "Basic abc"})
    assert (status, malformed["error_code"]) == (403, 1001)
    status, wrong = call(plugin, settings, "POST", "/retrieval", {}, headers={"Authorization": "Bearer x"})
    assert (status, wrong["error_code"]) == (403, 1002) and "wrong" in wrong["error_msg"]
    status, unset = call(plugin, {**settings, "api_key": ""}, "POST", "/retrieval", {}, headers=AUTH)
    assert (status, unset["error_code"]) == (403, 1002)
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

    from crossmodal.api.metrics import endpoint_scope
    from conftest import METRICS_ADMIN_KEY

    mine = endpoint_scope(settings).encode()
    status, text = call(plugin, settings, "GET", "/metrics")  # the endpoint's own key: its own figures only
    assert status == 200
    assert b'crossmodal_collection_points{collection="kb"} 7.0' in text
    assert b'crossmodal_requests_total{endpoint="%s",kind="endpoint",name="search",status="200"}' % mine in text
    other = call(plugin, {**settings, "api_key": "another-workspaces-key"}, "POST", "/v1/search",
                 {"query": "x", "collection": "nope"}, headers={"Authorization": "Bearer another-workspaces-key"})
    assert other[0] == 404
    status, text = call(plugin, settings, "GET", "/metrics")
    scopes = {line.split(b'endpoint="')[1].split(b'"')[0] for line in text.splitlines()
              if line.startswith(b"crossmodal_requests_total{")}
    assert scopes == {mine}  # nor another endpoint's traffic, nor the nodes'
    assert b"crossmodal_model_load_seconds" not in text and b"crossmodal_lane" not in text  # model ids, paths
    status, text = call(plugin, settings, "GET", "/metrics", headers={"Authorization": f"Bearer {METRICS_ADMIN_KEY}"})
    assert status == 200 and b'endpoint="%s"' % endpoint_scope({"api_key": "another-workspaces-key"}).encode() in text
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
     ("/v1/ingest", b"x" * (9 * 1024 * 1024 + 10), 413, "9 MB"),
     ("/v1/ingest", b"x" * (12 * 1024 * 1024), 413, "exactly Dify's cut")],  # cut by the daemon: still a clear 413
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


def test_retrieval_scores_are_calibrated_relevances_and_conditions_work_as_dify_sends_them(plugin, settings):
    from crossmodal.alignment.calibration import load_calibration
    from crossmodal.encoders.models import get_encoder

    creds = {"data_dir": settings["data_dir"], "model": "demo-shapes", "default_collection": "notes"}
    items = [("a red circle on the left", {"team": "alpha", "year": "2023", "pages": 3,
                                           "date": "2024-01-05T00:00:00Z"}),
             ("a small blue star", {"team": "beta", "year": "2024", "pages": 12, "date": "2024-06-01T00:00:00Z"}),
             ("a large green square at the top", {"team": "alphabet", "year": "2025", "pages": 30,
                                                 "date": "2025-02-01T00:00:00Z"}),
             ("a yellow triangle", {"team": "", "year": "2025", "pages": "7", "date": "2025-09-01T00:00:00Z"})]
    for text, metadata in items:
        plugin.invoke_tool("ingest", {"texts": text, "metadata": json.dumps(metadata)}, creds)

    def retrieve(condition=None, threshold=None, top_k=10):
        body = {"knowledge_id": "notes", "query": "a blue star", "retrieval_setting": {"top_k": top_k}}
        if threshold is not None:
            body["retrieval_setting"]["score_threshold"] = threshold
        if condition is not None:
            body["metadata_condition"] = condition
        status, answer = call(plugin, {**settings, "retrieval_mode": "dense"}, "POST", "/retrieval", body)
        assert status == 200, answer
        return answer["records"]

    status, auto = call(plugin, settings, "POST", "/retrieval", {"knowledge_id": "notes", "query": "a blue star"})
    assert auto["records"][0]["metadata"]["retrieval"]["mode"] == "hybrid"  # the texts make it hybrid by default
    everything = retrieve()
    assert len(everything) == 4 and everything[0]["content"] == "a small blue star"
    calibration = load_calibration(get_encoder("demo-shapes"), None)
    for record in everything:
        assert 0.0 <= record["score"] <= 1.0
        assert record["score"] == pytest.approx(calibration.probability(record["metadata"]["cosine"]), abs=1e-6)
    middle = (everything[0]["score"] + everything[1]["score"]) / 2
    assert [r["content"] for r in retrieve(threshold=middle)] == ["a small blue star"]
    assert retrieve(threshold=1.0) == []

    def colour(content):
        return next(word for word in content.split() if word in ("red", "blue", "green", "yellow"))

    def contents(operator, value, name="team", logic="and"):
        condition = {"logical_operator": logic,
                     "conditions": [{"name": name, "comparison_operator": operator, "value": value}]}
        return sorted(colour(r["content"]) for r in retrieve(condition))

    assert contents("contains", "alph") == ["green", "red"]  # substring, not equality
    assert contents("not contains", "alph") == ["blue", "yellow"]
    assert contents("start with", "alpha") == ["green", "red"]
    assert contents("end with", "bet") == ["green"]
    assert contents("is", "alpha") == ["red"]
    assert contents("is not", "alpha") == ["blue", "green", "yellow"]
    assert contents("empty", None) == ["yellow"]
    assert contents("not empty", None) == ["blue", "green", "red"]
    assert contents(">", "10", name="pages") == ["blue", "green"]  # numbers sent as strings
    assert contents("≤", 7, name="pages") == ["red", "yellow"]  # a stored "7" compares as a number
    assert contents("=", "2024", name="year") == ["blue"]
    assert contents("≠", 2024, name="year") == ["green", "red", "yellow"]
    assert contents("before", "2024-12-31", name="date") == ["blue", "red"]
    assert contents("after", 1735689600, name="date") == ["green", "yellow"]  # a Unix timestamp: 2025-01-01
    either = {"logical_operator": "or", "conditions": [
        {"name": "team", "comparison_operator": "is", "value": "beta"},
        {"name": "pages", "comparison_operator": "≥", "value": 30}]}
    assert sorted(colour(r["content"]) for r in retrieve(either)) == ["blue", "green"]
    assert len(retrieve({"logical_operator": "or", "conditions": None})) == 4  # null: no filter

    status, refused = call(plugin, settings, "POST", "/retrieval", {
        "knowledge_id": "notes", "query": "x", "metadata_condition": {
            "conditions": [{"name": "team", "comparison_operator": "sounds like", "value": "a"}]}})
    assert status == 400 and "sounds like" in refused["error_msg"] and "conditions[0]" in refused["error_msg"]
    status, refused = call(plugin, settings, "POST", "/retrieval", {
        "knowledge_id": "notes", "query": "x", "metadata_condition": {
            "conditions": [{"name": "pages", "comparison_operator": ">", "value": "many"}]}})
    assert status == 400 and "compares numbers" in refused["error_msg"]


def test_large_replies_stream_under_the_daemons_line_limit(plugin, settings):
    """A detailed 1600 px JPEG's align reply (overlay PNG) and a search with 100 thumbnails: the latter is
    several MB of hex when sent as one line, which the daemon would answer by killing the plugin."""
    import numpy as np

    from crossmodal.api.http import STREAM_CHUNK_BYTES
    from stdio_harness import MAX_LINE_BYTES

    noise = np.random.default_rng(7).integers(0, 256, (1600, 1600, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=95)
    status, aligned = call(plugin, settings, "POST", "/v1/align",
                           {"image": base64.b64encode(buf.getvalue()).decode(), "text": "a red circle"})
    assert status == 200, aligned
    assert len(json.dumps(aligned)) > STREAM_CHUNK_BYTES  # sent as a stream of chunks
    assert not plugin.oversized and plugin.longest_line < MAX_LINE_BYTES

    for start in (0, 50):  # two requests: 100 noise JPEGs are over the 9 MB request cap
        items = [{"image": base64.b64encode(_noise_jpeg(k)).decode(), "source": f"n{k}.jpg"}
                 for k in range(start, start + 50)]
        status, report = call(plugin, settings, "POST", "/v1/ingest", {"collection": "noise", "items": items})
        assert status == 200 and report["added"] == 50, report
    status, found = call(plugin, settings, "POST", "/v1/search", {"collection": "noise", "query": "noise",
                                                                  "top_k": 100, "with_thumbnails": True})
    assert status == 200 and len(found["results"]) == 100
    assert len(json.dumps(found)) > MAX_LINE_BYTES // 2
    assert not plugin.oversized and plugin.longest_line < MAX_LINE_BYTES


def _noise_jpeg(seed: int) -> bytes:
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (384, 384, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_retrieval_records_carry_the_items_text_and_signed_picture_links(plugin, settings):
    """External Knowledge content is the item's text; with record_images each picture's record carries a markdown
    image served by GET /v1/image under a signed, expiring link: no bearer key needed, 403 without a valid one."""
    import time
    from urllib.parse import parse_qs, urlsplit

    from crossmodal.api.image_links import derived_key, sign

    scenes = [_scene_png(890_000_000 + k) for k in range(3)]
    codes = ["XH-4562-X5", "PS-1123-V7", "KB-8841-A2"]  # no gram in common: each first whatever dense says
    items = [{"image": png, "caption": f"{scene.objects[0].phrase('en')}, invoice {code}", "source": f"scan-{k}.png"}
             for k, ((scene, png), code) in enumerate(zip(scenes, codes))]
    items.append({"image": _scene_png(890_000_009)[1], "source": "IMG_0001.png"})
    status, report = call(plugin, settings, "POST", "/v1/ingest", {"collection": "docs", "items": items})
    assert status == 200 and report["added"] == 4, report

    linked = {**settings, "record_images": True, "public_url": "https://dify.example.com/e/hook123/"}
    status, found = call(plugin, linked, "POST", "/retrieval", {"knowledge_id": "docs", "query": "PS-1123-V7",
                                                               "retrieval_setting": {"top_k": 4}})
    assert status == 200, found
    first = found["records"][0]
    assert first["title"] == "scan-1.png" and first["metadata"]["retrieval"] == {"mode": "hybrid", "fusion": "rrf"}
    url = first["metadata"]["image_url"]
    assert url.startswith("https://dify.example.com/e/hook123/v1/image?c=docs&id=")
    assert first["content"] == f"{items[1]['caption']}\n\n![scan-1.png]({url})"  # the text, then the picture
    bare = [r for r in found["records"] if r["title"] == "IMG_0001.png"]
    assert all(r["content"].startswith("IMG_0001.png\n\n![") for r in bare)  # no text: its name is all there is

    path = url[len("https://dify.example.com/e/hook123"):]
    status, picture = call(plugin, settings, "GET", path, headers={})  # a browser: no Authorization header
    assert status == 200 and Image.open(io.BytesIO(picture)).format == "JPEG"
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    key = derived_key(settings)
    past = int(time.time()) - 10
    tampered = [{**query, "s": query["s"][:-2] + ("AA" if not query["s"].endswith("AA") else "BB")},
                {**query, "id": "00000000-0000-0000-0000-000000000001"},  # another point, the same signature
                {**query, "e": past, "s": sign(key, "docs", query["id"], past)},  # signed, but expired
                {**query, "e": int(time.time()) + 10**8, "s": sign(key, "docs", query["id"], int(time.time()) + 10**8)},
                {"c": "docs", "id": "../collection.json", "e": query["e"], "s": sign(key, "docs", "../collection.json",
                                                                                     int(query["e"]))},
                {}]
    for bad in tampered:
        target = "/v1/image?" + "&".join(f"{k}={v}" for k, v in bad.items())
        status, body = call(plugin, settings, "GET", target, headers={})
        assert status == 403 and body["error"]["code"] == "forbidden", (bad, body)
    other_key = {**settings, "api_key": "another-endpoints-key"}  # a link of one endpoint opens nothing at another
    assert call(plugin, other_key, "GET", path, headers={})[0] == 403
    traversal = sign(key, "../../etc", query["id"], int(query["e"]))
    status, _ = call(plugin, settings, "GET", f"/v1/image?c=../../etc&id={query['id']}&e={query['e']}&s={traversal}",
                     headers={})
    assert status == 400  # a signed link to no collection: refused by name, no file read

    # Without public_url the daemon's Dify-Hook-Url gives the base; without either, the request's own Host.
    hooked = {**settings, "record_images": True}
    status, found = call(plugin, hooked, "POST", "/retrieval", {"knowledge_id": "docs", "query": "XH-4562-X5"},
                         headers={**AUTH, "Dify-Hook-Url": "http://nginx/e/hook9/retrieval"})
    assert found["records"][0]["metadata"]["image_url"].startswith("http://nginx/e/hook9/v1/image?c=docs&id=")
    status, found = call(plugin, hooked, "POST", "/retrieval", {"knowledge_id": "docs", "query": "XH-4562-X5"})
    assert found["records"][0]["metadata"]["image_url"].startswith("http://dify.local/v1/image?")

    # The endpoint's retrieval settings: the mode, and errors naming the setting.
    status, dense = call(plugin, {**settings, "retrieval_mode": "dense"}, "POST", "/retrieval",
                         {"knowledge_id": "docs", "query": "XH-4562-X5"})
    assert status == 200 and "cosine" in dense["records"][0]["metadata"] and "image_url" not in dense["records"][0]["metadata"]
    status, bad = call(plugin, {**settings, "retrieval_mode": "bm25"}, "POST", "/retrieval",
                       {"knowledge_id": "docs", "query": "x"})
    assert status == 400 and "bm25" in bad["error_msg"] and "auto, hybrid, dense, lexical" in bad["error_msg"]
    status, bad = call(plugin, {**linked, "public_url": "dify.example.com"}, "POST", "/retrieval",
                       {"knowledge_id": "docs", "query": "x"})
    assert status == 400 and "browsers" in bad["error_msg"]
    status, lexical = call(plugin, settings, "POST", "/v1/search", {"collection": "docs", "query": "KB-8841-A2",
                                                                    "mode": "lexical", "top_k": 2})
    assert status == 200 and lexical["mode"] == "lexical" and lexical["results"][0]["payload"]["source"] == "scan-2.png"
