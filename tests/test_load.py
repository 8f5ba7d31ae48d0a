"""Load through the stdio protocol, on loopback only: 50 concurrent searches and 5 concurrent ingests in one
plugin process, plus 20 searches through the HTTP endpoint at the same time. Every answer is right and belongs to its own session, heartbeats never stop, memory stays
bounded."""

import json
import time

import pytest

from load_mix import rss_mb as _rss_mb  # the plugin process and its worker processes
from stdio_harness import endpoint_request, errors, http_response, json_message, tool_request

pytestmark = pytest.mark.protocol

SEARCHES, INGESTS, TEXTS_PER_INGEST, ENDPOINT_SEARCHES = 50, 5, 20, 20


def test_concurrent_searches_and_ingests(plugin, tiny_clip_dir, tmp_path):
    creds = {"data_dir": str(tmp_path / "store"), "model": str(tiny_clip_dir), "default_collection": "load"}
    import itertools

    words = itertools.product(["red", "green", "blue", "yellow", "purple"], ["circle", "square", "star", "heart"],
                              ["left", "right", "top"])  # words the tiny tokenizer knows: distinct vectors
    stored = [f"a {c} {s} on the {p}" for c, s, p in itertools.islice(words, SEARCHES)]
    first = json_message(plugin.invoke_tool("ingest", {"texts": "\n".join(stored)}, creds))
    assert first["added"] == SEARCHES
    rss_before = _rss_mb(plugin.proc.pid)
    beats_before = len(plugin.heartbeats)
    started = time.monotonic()

    sessions = {}
    for k in range(INGESTS):
        texts = "\n".join(f"cat {k} dog {j}" for j in range(TEXTS_PER_INGEST))  # distinct content per line
        sessions[plugin.send(tool_request("ingest", {"texts": texts}, creds))] = ("ingest", k)
    for k, text in enumerate(stored):
        request = tool_request("search", {"query": text, "target": "text", "top_k": 1}, creds)
        sessions[plugin.send(request)] = ("search", k)
    endpoint_settings = {"api_key": "k", "data_dir": creds["data_dir"], "model": creds["model"],
                         "default_collection": "load"}
    for k in range(ENDPOINT_SEARCHES):
        request = endpoint_request(endpoint_settings, "POST", "/v1/search",
                                   {"query": stored[k], "target": "text", "top_k": 1}, {"Authorization": "Bearer k"})
        sessions[plugin.send(request)] = ("endpoint", k)
    answers = plugin.collect(list(sessions), timeout=300)
    seconds = time.monotonic() - started

    for sid, (kind, k) in sessions.items():
        messages = answers[sid]
        assert not errors(messages), errors(messages)
        if kind == "endpoint":
            status, _, body = http_response(messages)
            assert status == 200 and json.loads(body)["results"][0]["payload"]["text"] == stored[k]
            continue
        result = json_message(messages)
        if kind == "search":  # the stored twin of this session's own query, not another session's
            assert result["results"][0]["payload"]["text"] == stored[k]
            assert result["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
        else:
            assert result["added"] == TEXTS_PER_INGEST
    final = json_message(plugin.invoke_tool("collections", {"action": "info", "collection": "load"}, creds))
    assert final["count"] == SEARCHES + INGESTS * TEXTS_PER_INGEST

    beats = [t for t in plugin.heartbeats[beats_before:] if t <= started + seconds]
    # Gaps from the start through every heartbeat to the end: none may exceed 5 s (a load that ends within
    # one heartbeat interval, as it can with batched queries, has no beat to show and no pause either).
    window = [started, *beats, started + seconds]
    gaps = [b - a for a, b in zip(window, window[1:])]
    assert max(gaps) < 5.0, f"heartbeats paused {max(gaps):.1f} s under load"
    assert _rss_mb(plugin.proc.pid) - rss_before < 300, "memory grew by more than 300 MB under load"
    print(f"load: {len(sessions)} sessions in {seconds:.1f} s, max heartbeat gap {max(gaps):.2f} s")
