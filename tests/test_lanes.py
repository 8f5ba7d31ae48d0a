"""Lanes, deadlines and sessions that always end (crossmodal/lanes.py, crossmodal/dify/server.py).

In a process patched exactly as the plugin is: bulk work never takes the threads the SDK reads stdin with,
never delays a query, and a call past its deadline ends with a reason and its worker's stack in the log. Then
over stdio: queries answered while bulk work runs, an endpoint's own deadline, External Knowledge calls that
never hear "still loading" about a loaded model."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LANES_CHILD = textwrap.dedent("""
    import sys; sys.path.insert(0, "tests")
    import json, logging, os, time
    import dify_plugin  # noqa: F401  (patches the process with gevent, as in the plugin)
    import gevent
    from crossmodal.runtime import install_loop_safe_locks, mark_loop_thread, offload
    from crossmodal.lanes import BULK, QUERY, DeadlineExceeded
    from crossmodal.workers.supervisor import engine
    from worker_doubles import bulk_batch, lookup, stuck_in_a_load

    install_loop_safe_locks()
    mark_loop_thread()
    logging.basicConfig(stream=sys.stderr, level=logging.ERROR)
    engine().ready.wait(120)
    report = {}
    started = time.monotonic()
    bulk = [gevent.spawn(offload, bulk_batch, k, lane=BULK) for k in range(14)]
    gevent.sleep(0.1)
    # The SDK reads stdin with gevent.os.tp_read, in the hub's threadpool: it must still find a thread.
    report["reader"] = gevent.get_hub().threadpool.spawn(lambda: "read").get(timeout=1)
    kind, query_ended = offload(lookup, lane=QUERY)
    report["query"] = kind
    report["query_seconds"] = round(time.monotonic() - started, 2)
    try:
        offload(stuck_in_a_load, lane=QUERY, deadline=0.3)
        report["deadline"] = "none"
    except DeadlineExceeded as exc:
        report["deadline"] = [exc.status, str(exc)]
    ends = sorted([g.get()[1] for g in bulk] + [query_ended])
    report["first_end"] = "query" if ends[0] == query_ended else "bulk"
    print(json.dumps(report), flush=True)
    engine().close()
    os._exit(0)
""")


@pytest.mark.slow
def test_bulk_work_leaves_the_reader_and_queries_their_threads():
    result = subprocess.run([sys.executable, "-c", LANES_CHILD], cwd=ROOT, capture_output=True, text=True,
                            timeout=180)
    assert result.stdout.strip(), result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["reader"] == "read"  # 14 bulk calls did not take the stdin reader's threads
    assert report["query"] == "query" and report["first_end"] == "query"  # not queued behind 14 bulk calls
    status, message = report["deadline"]
    assert status == 504 and "within 0.3 s" in message
    # the log names where the stuck call was: its worker's stack
    assert "in stuck_in_a_load" in result.stderr, result.stderr[-2000:]


BASE_EXCEPTION_CHILD = textwrap.dedent("""
    import json, sys
    from greenlet import GreenletExit
    from dify_plugin.core.server.io_server import IOServer
    from crossmodal.dify.server import ending_every_session

    class Writer:
        def __init__(self):
            self.messages = []
        def session_message(self, session_id, data):
            self.messages.append(data)
        def stream_error_object(self, data):
            return {"type": "error", "data": data}
        def stream_end_object(self):
            return {"type": "end", "data": {}}
        def done(self):
            pass

    class Dying(IOServer):  # the SDK's own request runner, with a handler that dies of a BaseException
        def _execute_request(self, *args, **kwargs):
            raise GreenletExit()

    report = {}
    for name, server_class in (("sdk", Dying), ("ours", ending_every_session(Dying))):
        writer = Writer()
        try:
            object.__new__(server_class)._execute_request_in_thread("s1", {}, None, writer)
        except GreenletExit:
            pass
        report[name] = writer.messages
    print(json.dumps(report))
""")


def test_a_session_ends_even_when_its_handler_dies_of_a_base_exception():
    """GreenletExit or a stray gevent.Timeout escape the SDK's ``except Exception``: the session still ends."""
    result = subprocess.run([sys.executable, "-c", BASE_EXCEPTION_CHILD], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.strip(), result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [m["type"] for m in report["sdk"]] == []  # the SDK alone leaves the session open for good
    assert [m["type"] for m in report["ours"]] == ["error", "end"]
    error = report["ours"][0]["data"]
    assert error["error_type"] == "GreenletExit" and "interrupted" in error["message"]


def test_a_late_call_is_attributed_to_what_holds_it(tmp_path):
    """The reason a deadline names: the queue, our store code, our encoder code, or other work."""
    import importlib.util
    import threading

    from crossmodal.lanes import Job

    def module_at(relative: str):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("def wait(event):\n    event.wait(10)\n")
        spec = importlib.util.spec_from_file_location(relative.replace("/", "_")[:-3], path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    assert Job(print).held_by() == "queue"
    for relative, reason in (("crossmodal/store/slow.py", "store"), ("crossmodal/encoders/slow.py", "model"),
                             ("elsewhere/slow.py", "work")):
        event = threading.Event()
        job = Job(module_at(relative).wait, (event,))
        thread = threading.Thread(target=job.run)
        thread.start()
        while job.thread_ident is None:
            time.sleep(0.01)
        time.sleep(0.05)
        assert job.held_by() == reason, relative
        event.set()
        thread.join()


def test_lane_choice_by_route_and_size():
    from crossmodal.api.http import request_deadline, route_lane
    from crossmodal.errors import CrossmodalError
    from crossmodal.lanes import BULK, LOOKUP, QUERY

    assert route_lane("retrieval", {}) == route_lane("search", {}) == QUERY and route_lane("collections", {}) == LOOKUP
    assert route_lane("ingest", {}) == route_lane("align", {}) == BULK
    assert route_lane("embed", {"texts": ["a"] * 3}) == QUERY and route_lane("embed", {"texts": ["a"] * 40}) == BULK
    assert route_lane("rerank", {"candidates": ["a"]}) == QUERY and route_lane("rerank", {"images": ["x"]}) == BULK
    assert request_deadline("retrieval", {"request_timeout": "100"}) == 4.5  # Dify's 5 s, whatever the setting
    assert request_deadline("search", {}) == 300 and request_deadline("search", {"request_timeout": "20"}) == 20
    for bad in ("0", "-3", "soon", "601"):
        with pytest.raises(CrossmodalError, match="request_timeout"):
            request_deadline("search", {"request_timeout": bad})


# -- over stdio ---------------------------------------------------------------------------------------------
def gradient_png(size: int = 1536) -> bytes:
    """A large image that is small on the wire (Align's tiles cost the same as for a photo)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 255 // size, y * 255 // size, (x + y) % 256], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


LOOKUP_CHILD = textwrap.dedent("""
    import sys; sys.path.insert(0, "tests")
    import json, os, time, types
    import dify_plugin  # noqa: F401  (patches the process with gevent, as in the plugin)
    import gevent
    from werkzeug.test import EnvironBuilder
    from crossmodal.runtime import install_loop_safe_locks, mark_loop_thread, offload
    from crossmodal.lanes import QUERY
    from crossmodal.api import http
    from crossmodal.api.image_links import ImageLinks, derived_key
    from crossmodal.workers.supervisor import engine
    from tools.collections import CollectionsTool
    from worker_doubles import query_batch

    install_loop_safe_locks()
    mark_loop_thread()
    engine().ready.wait(120)
    settings = {"api_key": "k", "data_dir": sys.argv[1], "model": "demo-shapes"}
    def request(path, headers=None):
        return EnvironBuilder(path=path, method="GET", headers=headers or {}).get_request()
    report = {}
    http.respond("collections", request("/v1/collections", {"Authorization": "Bearer k"}), settings)  # worker warm
    searches = [gevent.spawn(offload, query_batch, k, lane=QUERY, deadline=60) for k in range(12)]
    gevent.sleep(0.2)  # four query threads busy, eight searches queued: about 4.5 s of work ahead
    started = time.monotonic()
    listed = http.respond("collections", request("/v1/collections", {"Authorization": "Bearer k"}), settings)
    report["list"] = [listed.status_code, round(time.monotonic() - started, 2)]
    link = ImageLinks("http://plugin", derived_key(settings)).url("docs", "00000000-0000-0000-0000-000000000001")
    started = time.monotonic()
    picture = http.respond("image", request(link.split("plugin", 1)[1]), settings)
    report["image"] = [picture.status_code, round(time.monotonic() - started, 2)]
    tool = types.SimpleNamespace(runtime=types.SimpleNamespace(credentials=settings), session=None,
                                 create_json_message=lambda value: value,
                                 create_variable_message=lambda name, value: value)
    started = time.monotonic()
    answer = list(CollectionsTool._invoke(tool, {"action": "list"}))
    report["tool"] = [sorted(answer[0]), round(time.monotonic() - started, 2)]
    report["searches_pending"] = sum(1 for g in searches if not g.ready())
    gevent.joinall(searches, timeout=60)
    print(json.dumps(report), flush=True)
    engine().close()
    os._exit(0)
""")


SHARE_CHILD = textwrap.dedent("""
    import sys; sys.path.insert(0, "tests")
    import json, os
    import dify_plugin  # noqa: F401  (patches the process with gevent, as in the plugin)
    import gevent
    from crossmodal.runtime import install_loop_safe_locks, mark_loop_thread, offload
    from crossmodal.errors import CrossmodalError
    from crossmodal.lanes import QUERY
    from crossmodal.settings import Settings
    from crossmodal.workers.supervisor import engine
    from worker_doubles import workspace_search

    install_loop_safe_locks()
    mark_loop_thread()
    engine().ready.wait(120)
    greedy, other = Settings.from_credentials({"data_dir": "greedy"}), Settings.from_credentials({"data_dir": "other"})

    def search(settings, k):
        try:
            return offload(workspace_search, settings, k, lane=QUERY, deadline=60)
        except CrossmodalError as exc:
            return [exc.status, str(exc)]

    calls = [gevent.spawn(search, greedy, k) for k in range(9)]  # some run, three wait, the rest refused
    gevent.sleep(0.3)
    theirs = gevent.spawn(search, other, 0)
    gevent.joinall(calls + [theirs], timeout=60)
    print(json.dumps({"greedy": [g.value for g in calls], "other": theirs.value}), flush=True)
    engine().close()
    os._exit(0)
""")


def test_one_workspace_cannot_take_a_lane_queue_from_the_others():
    """Through the worker process, as a plugin runs: one workspace's calls past its share of the query lane's
    queue are refused as busy (503, naming the workspace), while another workspace's call is still admitted."""
    import os

    env = {**os.environ, "CROSSMODAL_LANE_QUEUE_PER_CALLER": "3"}
    out = subprocess.run([sys.executable, "-c", SHARE_CHILD], cwd=ROOT, capture_output=True, text=True,
                         timeout=180, env=env)
    assert out.stdout.strip(), out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    refused = [r for r in report["greedy"] if isinstance(r, list)]
    # Admitted: its share (3), and up to the lane's four threads more when they took calls before the next came.
    assert 3 <= report["greedy"].count("greedy") <= 7 and len(refused) == 9 - report["greedy"].count("greedy")
    assert all(status == 503 and "of this workspace" in message for status, message in refused), report
    assert report["other"] == "other", report


def test_collection_lookups_do_not_wait_for_encoding_threads(tmp_path):
    """With every query thread encoding and more searches queued, a collection list (endpoint and tool) and a
    picture link are answered at once: they run in the lookup lane, which touches no model. In the soak
    they waited about 1 s for a query thread (docs/reliability.md)."""
    out = subprocess.run([sys.executable, "-c", LOOKUP_CHILD, str(tmp_path / "store")], cwd=ROOT,
                         capture_output=True, text=True, timeout=180)
    assert out.stdout.strip(), out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["searches_pending"] >= 8, report  # the query lane was still full when the lookups ended
    assert report["list"][0] == 200 and report["list"][1] < 1.0, report
    assert report["image"][0] == 404 and report["image"][1] < 1.0, report  # a valid link to an item not stored
    assert "collections" in report["tool"][0] and report["tool"][1] < 1.0, report


@pytest.mark.slow
@pytest.mark.protocol
def test_queries_are_answered_while_bulk_work_runs(plugin, tmp_path):
    """Align calls on large images fill the bulk lane; searches and External Knowledge calls sent after them
    all end before the bulk work does, and none hears 'still loading' about the loaded model."""
    import base64

    from stdio_harness import endpoint_request, errors, http_response, json_message, tool_request

    creds = {"data_dir": str(tmp_path / "store"), "model": "demo-shapes", "default_collection": "docs"}
    texts = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "star")]
    assert json_message(plugin.invoke_tool("ingest", {"texts": "\n".join(texts)}, creds))["added"] == len(texts)
    settings = {"api_key": "k", **creds}
    image = base64.b64encode(gradient_png()).decode()  # 256 px tiles: seconds of work per call here
    bulk = [plugin.send(endpoint_request(settings, "POST", "/v1/align", {"image": image, "text": "a red circle",
                                                                          "tile_size": 256},
                                         {"Authorization": "Bearer k"})) for _ in range(6)]
    queries = [plugin.send(tool_request("search", {"query": text, "target": "text", "top_k": 1}, creds))
               for text in texts[:6]]
    queries += [plugin.send(endpoint_request(settings, "POST", "/retrieval", {
        "knowledge_id": "docs", "query": text, "retrieval_setting": {"top_k": 2, "score_threshold": 0.0}},
        {"Authorization": "Bearer k"})) for text in texts[6:]]
    ended = []
    answers = {}
    pending = set(bulk + queries)
    while pending:
        done = plugin.collect(list(pending), timeout=300, partial=True)
        for sid in done:
            ended.append(sid)
        answers.update(done)
        pending -= set(done)
        if not done:
            break
    assert not pending, f"{len(pending)} sessions never ended"
    assert max(ended.index(q) for q in queries) < min(ended.index(b) for b in bulk), \
        "a query waited behind bulk work"
    for sid in queries[:6]:
        assert json_message(answers[sid])["results"][0]["payload"]["text"] in texts
    for sid in queries[6:] + bulk:
        status, _, body = http_response(answers[sid])
        assert status == 200, body[:300]
        assert not errors(answers[sid])


@pytest.mark.protocol
def test_an_endpoint_call_past_its_deadline_answers_504_with_the_reason(plugin, tmp_path):
    import base64

    from stdio_harness import endpoint_request, http_response

    settings = {"api_key": "k", "data_dir": str(tmp_path / "store"), "model": "demo-shapes", "request_timeout": "1"}
    image = base64.b64encode(gradient_png()).decode()
    started = time.monotonic()
    status, _, body = http_response(plugin.call(endpoint_request(
        settings, "POST", "/v1/align", {"image": image, "text": "a red circle", "tile_size": 256},
        {"Authorization": "Bearer k"})))
    assert status == 504 and json.loads(body)["error"]["param"] == "deadline", body
    assert "within 1 s" in json.loads(body)["error"]["message"]
    assert time.monotonic() - started < 30  # the answer came at the deadline, not when the work ended
    deadline = time.monotonic() + 10
    while not any("passed its 1 s deadline" in line for line in plugin.logs) and time.monotonic() < deadline:
        time.sleep(0.2)
    logged = next(line for line in plugin.logs if "passed its 1 s deadline" in line)
    assert "File " in logged  # the worker's stack
    from conftest import METRICS_ADMIN_KEY

    status, _, body = http_response(plugin.call(endpoint_request(
        settings, "GET", "/metrics", headers={"Authorization": f"Bearer {METRICS_ADMIN_KEY}"})))  # process-wide figures
    assert re.search(r'crossmodal_deadline_misses_total\{name="route_align",reason="(model|work)"\} 1', body.decode())

    status, _, body = http_response(plugin.call(endpoint_request(
        {**settings, "request_timeout": "later"}, "GET", "/v1/collections", headers={"Authorization": "Bearer k"})))
    assert status == 400 and json.loads(body)["error"]["param"] == "request_timeout"
