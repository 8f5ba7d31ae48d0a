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
    import json, logging, os, sys, time
    import dify_plugin  # noqa: F401  (patches the process with gevent, as in the plugin)
    import gevent
    from gevent import monkey
    from crossmodal.runtime import install_loop_safe_locks, offload
    from crossmodal.lanes import BULK, QUERY, DeadlineExceeded

    install_loop_safe_locks()
    os_sleep = monkey.get_original("time", "sleep")
    report, ends = {}, []

    def bulk_batch(k):
        os_sleep(1.5)  # an ingest batch: an OS thread busy for a while
        ends.append(("bulk", time.monotonic()))

    def lookup():
        ends.append(("query", time.monotonic()))
        return "found"

    started = time.monotonic()
    bulk = [gevent.spawn(offload, bulk_batch, k, lane=BULK) for k in range(14)]
    gevent.sleep(0.1)
    # The SDK reads stdin with gevent.os.tp_read, in the hub's threadpool: it must still find a thread.
    report["reader"] = gevent.get_hub().threadpool.spawn(lambda: "read").get(timeout=1)
    report["query"] = offload(lookup, lane=QUERY)
    report["query_seconds"] = round(time.monotonic() - started, 2)

    def stuck_in_a_load():
        os_sleep(2.0)

    logging.basicConfig(stream=sys.stderr, level=logging.ERROR)
    try:
        offload(stuck_in_a_load, lane=QUERY, deadline=0.3)
        report["deadline"] = "none"
    except DeadlineExceeded as exc:
        report["deadline"] = [exc.status, str(exc)]
    gevent.joinall(bulk)
    report["first_end"] = ends[0][0]
    print(json.dumps(report), flush=True)
    os._exit(0)
""")


def test_bulk_work_leaves_the_reader_and_queries_their_threads():
    result = subprocess.run([sys.executable, "-c", LANES_CHILD], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip(), result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["reader"] == "read"  # 14 bulk calls did not take the stdin reader's threads
    assert report["query"] == "found" and report["first_end"] == "query"  # not queued behind 14 bulk calls
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
    from crossmodal.lanes import BULK, QUERY

    assert route_lane("retrieval", {}) == route_lane("search", {}) == route_lane("collections", {}) == QUERY
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
    status, _, body = http_response(plugin.call(endpoint_request(settings, "GET", "/metrics",
                                                                 headers={"Authorization": "Bearer k"})))
    assert re.search(r'crossmodal_deadline_misses_total\{name="route_align",reason="(model|work)"\} 1', body.decode())

    status, _, body = http_response(plugin.call(endpoint_request(
        {**settings, "request_timeout": "later"}, "GET", "/v1/collections", headers={"Authorization": "Bearer k"})))
    assert status == 400 and json.loads(body)["error"]["param"] == "request_timeout"
