"""Every node through `python -m main` over stdio, as Dify's daemon drives it."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from stdio_harness import (
    blobs,
    errors,
    json_message,
    stream_messages,
    tool_request,
    validate_request,
    variables,
)

pytestmark = pytest.mark.protocol


@pytest.fixture()
def creds(tiny_clip_dir, tmp_path):
    return {"data_dir": str(tmp_path / "store"), "model": str(tiny_clip_dir), "default_collection": "photos"}


def png(color, size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def test_validate_credentials_ok(plugin, creds):
    messages = plugin.call(validate_request(creds))
    assert not errors(messages)
    assert stream_messages(messages) == [{"result": True}]


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"model": "/no/such/model/dir"}, "model"),
        ({"store_url": "http://127.0.0.1:9"}, "store_url"),
        ({"default_collection": "bad name!"}, "collection"),
    ],
)
def test_validate_credentials_fails_with_actionable_message(plugin, creds, bad, needle):
    started = time.monotonic()
    messages = plugin.call(validate_request({**creds, **bad}))
    (error,) = errors(messages)
    assert error["error_type"] == "ToolProviderCredentialValidationError"
    assert needle in error["message"]
    assert time.monotonic() - started < 30  # an unreachable store fails fast, it does not hang


def test_ingest_search_embed_collections(plugin, creds, file_server):
    files = [file_server(f"p{i}.png", png((30 * i, 200 - 20 * i, 90))) for i in range(6)]
    files.append(file_server("broken.png", b"not an image"))
    params = {"files": files, "tags": "demo, shapes", "metadata": '{"album": "a1"}', "texts": "a red circle"}
    messages = plugin.invoke_tool("ingest", params, creds)
    assert not errors(messages)
    report = json_message(messages)
    assert (report["added"], report["duplicates"]) == (7, 0)
    assert [r["source"] for r in report["rejected"]] == ["broken.png"]
    assert "not an image" in report["rejected"][0]["reason"]
    assert variables(messages)["count"] == 7

    again = json_message(plugin.invoke_tool("ingest", {"files": files[:6]}, creds))
    assert (again["added"], again["duplicates"], again["count"]) == (0, 6, 7)

    search = plugin.invoke_tool("search", {"query": "a red circle", "top_k": 3, "filter": '{"tags": "demo"}',
                                           "return_images": True}, creds)
    result = json_message(search)
    assert len(result["results"]) == 3
    assert all(hit["payload"]["kind"] == "image" and "demo" in hit["payload"]["tags"] for hit in result["results"])
    assert variables(search)["results"] == result["results"]
    images = blobs(search)
    assert len(images) == 3 and all(meta["mime_type"] == "image/jpeg" for _, meta in images)
    assert Image.open(io.BytesIO(images[0][0])).size == (48, 40)

    by_image = json_message(plugin.invoke_tool("search", {"image": files[2], "top_k": 1}, creds))
    assert by_image["results"][0]["payload"]["source"] == "p2.png"  # the same picture is its own nearest
    to_text = json_message(plugin.invoke_tool("search", {"image": files[0], "target": "text", "top_k": 5}, creds))
    assert [h["payload"]["text"] for h in to_text["results"]] == ["a red circle"]

    embed = plugin.invoke_tool("embed", {"images": files[:2], "texts": "one\ntwo"}, creds)
    embedded, vectors = json_message(embed), variables(embed)["items"]
    assert embedded["dimension"] == 16 and len(embedded["items"]) == len(vectors) == 4
    assert all("vector" not in item for item in embedded["items"])  # the LLM gets no vectors ...
    assert all(len(item["vector"]) == 16 for item in vectors)  # ... the workflow variable has them

    listing = json_message(plugin.invoke_tool("collections", {"action": "list"}, creds))
    assert [(c["name"], c["count"]) for c in listing["collections"]] == [("photos", 7)]
    refused = plugin.invoke_tool("collections", {"action": "delete", "collection": "photos"}, creds)
    assert "confirm" in errors(refused)[0]["message"]
    deleted = json_message(plugin.invoke_tool("collections", {"action": "delete", "collection": "photos",
                                                              "confirm": True}, creds))
    assert deleted == {"deleted": "photos"}


@pytest.mark.parametrize(
    "tool, params, needle",
    [
        ("search", {"query": "x", "collection": "missing"}, "no collection named 'missing'"),
        ("search", {"query": "", "collection": "photos"}, "query"),
        ("search", {"query": "x", "top_k": 500}, "top_k"),
        ("search", {"query": "x", "filter": "{not json"}, "filter"),
        ("ingest", {"texts": "x", "metadata": "[1, 2]"}, "metadata"),
        ("collections", {"action": "info", "collection": "nope"}, "nope"),
    ],
)
def test_bad_input_is_a_clear_error(plugin, creds, tool, params, needle):
    plugin.invoke_tool("ingest", {"texts": "seed text"}, creds)
    messages = plugin.invoke_tool(tool, params, creds)
    (error,) = errors(messages)
    assert needle in error["message"]


def test_heartbeats_and_other_sessions_continue_during_a_slow_call(plugin, creds, file_server):
    big = [file_server(f"big{i}.png", png((i, 2 * i, 3 * i), size=(2400, 2400))) for i in range(30)]
    slow = plugin.send(tool_request("ingest", {"files": big}, creds))
    time.sleep(0.3)
    quick = plugin.send(tool_request("collections", {"action": "list"}, creds))
    beats_before = len(plugin.heartbeats)
    started = time.monotonic()
    done_order = []
    results = {}
    for _ in range(2):
        got = plugin.collect([s for s in (slow, quick) if s not in results], timeout=240)
        for sid, messages in got.items():
            results[sid] = messages
            done_order.append((sid, time.monotonic() - started))
    assert not errors(results[slow]) and json_message(results[slow])["added"] == 30
    assert done_order[0][0] == quick, "a quick call waited behind the slow one: the loop was blocked"
    slow_seconds = dict(done_order)[slow]
    beats = [t for t in plugin.heartbeats[beats_before:]]
    assert slow_seconds > 1.0, "the slow call was too quick to prove anything"
    assert len(beats) >= int(slow_seconds / 0.25) // 2, (len(beats), slow_seconds)


def test_align_node_scores_locates_and_draws(plugin, tmp_path, file_server):
    from crossmodal.lab.scenes import generate_scene

    scene = generate_scene(800_000_123, 512, 512, 1)
    obj = scene.objects[0]
    buf = io.BytesIO()
    scene.image.save(buf, "PNG")
    creds = {"data_dir": str(tmp_path / "store"), "model": "demo-shapes"}
    messages = plugin.invoke_tool("align", {"image": file_server("scene.png", buf.getvalue()),
                                            "text": f"a {obj.color} {obj.shape}"}, creds)
    assert not errors(messages)
    result, found = json_message(messages), variables(messages)
    for key in ("similarity_score", "match_probability", "phrases", "model", "mode"):
        assert found[key] == result[key]
    assert 0.0 <= result["match_probability"] <= 1.0 and result["mode"] == "global"
    grid = found["attention_map"]
    assert (grid["rows"], grid["cols"], grid["width"], grid["height"]) == (48, 48, 512, 512)
    assert len(grid["values"]) == 48 and len(grid["values"][0]) == 48
    # The JSON message is what an agent's LLM reads: the grid stays in the variable.
    assert result["attention_map"] == {k: v for k, v in grid.items() if k != "values"}
    x0, y0, x1, y1 = result["phrases"][0]["box"]
    ox0, oy0, ox1, oy1 = obj.box
    assert x0 < ox1 and ox0 < x1 and y0 < oy1 and oy0 < y1, "the peak box misses the object"
    ((png_bytes, meta),) = blobs(messages)
    assert meta["mime_type"] == "image/png" and len(png_bytes) <= 2 * 1024 * 1024
    assert Image.open(io.BytesIO(png_bytes)).size == (512, 512)


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"text": "  "}, "text: is empty"),
        ({"text": "x" * 1001}, "1000"),
        ({"text": "a cat", "mode": "zoom"}, "mode"),
        ({"text": "a cat", "overlap": 0.9}, "overlap"),
        ({"text": "a cat", "image": "1x1"}, "at least 8 px"),
    ],
)
def test_align_bad_input(plugin, creds, file_server, params, needle):
    image = png((255, 0, 0), (1, 1)) if params.get("image") == "1x1" else png((255, 0, 0))
    params = {**params, "image": file_server("align-in.png", image)}
    (error,) = errors(plugin.invoke_tool("align", params, creds))
    assert needle in error["message"]


def test_align_by_url_refuses_internal_hosts_even_when_a_workspace_allows_them(plugin, tmp_path, file_server):
    """The SSRF policy is the admin's: a workspace's url_allowlist only narrows it (the admin's own list lets
    the host in: tests/test_bounded.py, over stdio)."""
    file = file_server("by-url.png", png((200, 30, 30), (300, 300)))
    creds = {"data_dir": str(tmp_path / "store"), "model": "demo-shapes"}
    (error,) = errors(plugin.invoke_tool("align", {"image_url": file["url"], "text": "a red square"}, creds))
    assert "image_url" in error["message"] and "loopback" in error["message"]
    widened = plugin.invoke_tool("align", {"image_url": file["url"], "text": "a red square", "heatmap": False},
                                 {**creds, "url_allowlist": "127.0.0.1"})
    (error,) = errors(widened)
    assert "loopback" in error["message"] and "CROSSMODAL_URL_ALLOWLIST" in error["message"]
    (refused,) = errors(plugin.call(validate_request({**creds, "url_allowlist": "127.0.0.1, 169.254.169.254"})))
    assert "url_allowlist" in refused["message"] and "169.254.169.254" in refused["message"]


def test_routes_send_chinese_and_english_queries_to_their_models(plugin, tmp_path, file_server,
                                                                 tiny_clip_dir, tiny_chinese_clip_dir):
    import json

    creds = {"data_dir": str(tmp_path / "store"), "model": "auto",
             "routes": json.dumps({"default": str(tiny_clip_dir), "zh": str(tiny_chinese_clip_dir)})}
    image = file_server("route.png", png((200, 30, 30), (64, 64)))
    english = json_message(plugin.invoke_tool("align", {"image": image, "text": "a red circle", "heatmap": False},
                                              creds))
    chinese = json_message(plugin.invoke_tool("align", {"image": image, "text": "红色圆形", "heatmap": False}, creds))
    assert english["route"]["route"] == "default" and english["model"] == str(tiny_clip_dir)
    assert chinese["route"]["route"] == "zh" and chinese["model"] == str(tiny_chinese_clip_dir)
    assert "CJK" in chinese["route"]["reason"]
    broken = {**creds, "routes": json.dumps({"zh": "/no/such/model"})}
    (error,) = errors(plugin.invoke_tool("align", {"image": image, "text": "红色圆形"}, broken))
    assert "route 'zh'" in error["message"] and "/no/such/model" in error["message"]


def test_rerank_node_and_search_with_rerank(plugin, tmp_path, file_server):
    import json

    from tiny_models import save_tiny_cross_encoder

    ce = save_tiny_cross_encoder(tmp_path / "ce")
    creds = {"data_dir": str(tmp_path / "store"), "model": "demo-shapes", "default_collection": "shapes",
             "routes": json.dumps({"cross_encoder": str(ce)})}
    texts = "a red circle\na blue star\na green square\na yellow heart"
    plugin.invoke_tool("ingest", {"texts": texts}, creds)
    reranked = plugin.invoke_tool("rerank", {"query": "a red circle", "candidates": texts, "top_n": 2}, creds)
    assert not errors(reranked)
    result = json_message(reranked)
    assert result["method"] == "cross-encoder" and result["model"] == str(ce) and len(result["results"]) == 2
    assert variables(reranked)["results"] == result["results"]

    first = json_message(plugin.invoke_tool("search", {"query": "a red circle", "target": "text", "top_k": 4},
                                            creds))
    from_search = json_message(plugin.invoke_tool("rerank", {"query": "a red circle",
                                                             "candidates": json.dumps(first)}, creds))
    assert {r["id"] for r in from_search["results"]} == {r["id"] for r in first["results"]}
    assert all(r["first_stage_score"] is not None for r in from_search["results"])

    one_node = json_message(plugin.invoke_tool("search", {"query": "a red circle", "target": "text", "top_k": 2,
                                                          "rerank": "cross-encoder", "rerank_k": 4}, creds))
    assert one_node["rerank"]["method"] == "cross-encoder" and len(one_node["results"]) == 2
    assert [r["id"] for r in one_node["results"]] == [r["id"] for r in from_search["results"][:2]]

    (error,) = errors(plugin.invoke_tool("rerank", {"query": "x", "candidates": '{"hits": []}'}, creds))
    assert "candidates" in error["message"] and "Search node" in error["message"]
    (error,) = errors(plugin.invoke_tool("rerank", {"query": "x", "candidates": "a\nb", "method": "region"}, creds))
    assert "needs image candidates" in error["message"]
    empty = json_message(plugin.invoke_tool("rerank", {"query": "x", "candidates": "[]"}, creds))
    assert empty["results"] == []


def test_int8_precision_through_the_plugin(plugin, tmp_path, file_server):
    """The precision credential reaches the encoder: int8 (ONNX Runtime) ingests and searches, and says so."""
    from crossmodal.lab.scenes import generate_scene

    creds = {"data_dir": str(tmp_path / "store"), "model": "demo-shapes", "precision": "int8"}
    files = []
    for k, colour in enumerate(["red", "blue"]):
        buf = io.BytesIO()
        generate_scene(890_000_000 + k, 400, 300, 1).image.save(buf, "JPEG")
        files.append(file_server(f"int8-{k}.jpg", buf.getvalue()))
    messages = plugin.invoke_tool("ingest", {"files": files, "collection": "int8"}, creds)
    assert not errors(messages)
    report = json_message(messages)
    assert report["precision"] == "int8" and report["added"] == 2 and report["warnings"] == []
    messages = plugin.invoke_tool("search", {"query": "a circle", "collection": "int8"}, creds)
    assert not errors(messages) and len(json_message(messages)["results"]) == 2


def test_relative_file_urls_name_the_files_url_fix(plugin, creds):
    """Dify with FILES_URL / INTERNAL_FILES_URL unset hands out URLs without a host: one clear error per node."""
    from stdio_harness import dify_file

    file = dify_file("/files/7f3a/file-preview?timestamp=1&sign=x", "p.png", 100)
    for tool, params in (("embed", {"images": [file]}), ("ingest", {"files": [file]}),
                         ("search", {"image": file}), ("align", {"image": file, "text": "a red circle"}),
                         ("rerank", {"query": "a red circle", "files": [file]})):
        (error,) = errors(plugin.invoke_tool(tool, params, creds))
        assert "FILES_URL" in error["message"] and "INTERNAL_FILES_URL" in error["message"], (tool, error)
        assert "http://api:5001" in error["message"] and "plugin_daemon" in error["message"]


def test_one_slow_file_does_not_sink_the_batch(plugin, creds, file_server):
    """The SDK gives each download 5 s; a file server slower than that costs that file, not the others."""
    import http.server
    import threading

    from stdio_harness import dify_file

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(8)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        slow = dify_file(f"http://127.0.0.1:{server.server_port}/slow.png", "slow.png", 100)
        fast = [file_server(f"fast{i}.png", png((10 * i, 90, 200))) for i in range(2)]
        report = json_message(plugin.invoke_tool("ingest", {"files": [fast[0], slow, fast[1]],
                                                            "collection": "slowfiles"}, creds))
    finally:
        server.shutdown()
    assert report["added"] == 2
    (rejected,) = report["rejected"]
    assert rejected["source"] == "slow.png" and "5 s" in rejected["reason"]


def test_every_variable_a_node_yields_is_declared(plugin, creds, file_server):
    """Dify offers downstream nodes only what a tool's output_schema declares."""
    from pathlib import Path

    import yaml

    tools = Path(__file__).resolve().parents[1] / "tools"
    schemas = {path.stem: yaml.safe_load(path.read_text())["output_schema"] for path in tools.glob("*.yaml")}
    declared = {name: set(schema["properties"]) for name, schema in schemas.items()}
    grid = schemas["align"]["properties"]["attention_map"]["properties"]["values"]
    assert grid["items"] == {"type": "array", "items": {"type": "number"}}
    image = file_server("declared.png", png((200, 30, 30)))
    calls = [("ingest", {"texts": "a red circle\na blue star"}), ("search", {"query": "a red circle"}),
             ("embed", {"texts": "a red circle"}), ("align", {"image": image, "text": "a red circle"}),
             ("rerank", {"query": "a red circle", "files": [image], "method": "region"}),
             ("rerank", {"query": "a red circle", "candidates": ""}), ("collections", {"action": "list"})]
    for tool, params in calls:
        messages = plugin.invoke_tool(tool, params, creds)
        assert not errors(messages), (tool, errors(messages))
        found = variables(messages)
        assert found and set(found) <= declared[tool], (tool, set(found) - declared[tool])
        if tool == "rerank" and "files" not in params:  # nothing to rescore: the same variables, as strings
            assert (found["results"], found["method"], found["model"], found["rejected"]) == ([], "none", "", [])


def test_sigusr1_writes_the_plugins_stacks_to_stderr_only(plugin, tmp_path):
    """What a plugin that stopped answering waits for: every thread's and greenlet's stack, on stderr (stdout is
    the protocol's), and the plugin answers on afterwards."""
    dump = plugin.stacks()
    assert "stacks on SIGUSR1" in dump and "-- thread" in dump and "-- greenlet" in dump and "plugin.run()" in dump
    assert not plugin.non_json
    assert not errors(plugin.call(validate_request({"model": "demo-shapes", "data_dir": str(tmp_path)}), timeout=60))
