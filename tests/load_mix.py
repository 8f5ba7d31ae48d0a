"""A Dify's real load on one plugin process, over stdio: mixed requests with K in flight, as the daemon sends
them (no cap on how many, every workspace's at once). Used by tests/test_soak.py and benchmarks/bench_load.py."""

from __future__ import annotations

import base64
import io
import itertools
import json
import time
from dataclasses import dataclass, field

from stdio_harness import PluginProcess, endpoint_request, errors, http_response, tool_request

AUTH = {"Authorization": "Bearer k"}
TEXTS = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow", "purple") for s in ("circle", "square", "star")]
KINDS = ("search", "embed", "collections", "v1_search", "retrieval", "align")


def small_png(size: int = 96) -> str:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 255 // size, y * 255 // size, (x * y) % 256], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@dataclass
class Workspace:
    """One workspace's settings: the tools' credentials and the endpoint group's settings."""

    data_dir: str
    model: str = "demo-shapes"
    collection: str = "soak"

    @property
    def credentials(self) -> dict:
        return {"data_dir": self.data_dir, "model": self.model, "default_collection": self.collection}

    @property
    def settings(self) -> dict:
        return {"api_key": "k", **self.credentials}


def request(kind: str, k: int, space: Workspace, image: str) -> dict:
    """The k-th request of a kind (texts rotate, so that answers can be checked)."""
    text = TEXTS[k % len(TEXTS)]
    if kind == "search":
        return tool_request("search", {"query": text, "target": "text", "top_k": 3}, space.credentials)
    if kind == "embed":
        return tool_request("embed", {"texts": f"{text}\nthe {k}th note"}, space.credentials)
    if kind == "collections":
        return tool_request("collections", {"action": "list"}, space.credentials)
    if kind == "v1_search":
        return endpoint_request(space.settings, "POST", "/v1/search", {"query": text, "target": "text", "top_k": 3},
                                AUTH)
    if kind == "retrieval":
        return endpoint_request(space.settings, "POST", "/retrieval", {
            "knowledge_id": space.collection, "query": text, "retrieval_setting": {"top_k": 3, "score_threshold": 0.0}},
            AUTH)
    if kind == "align":
        return endpoint_request(space.settings, "POST", "/v1/align", {"image": image, "text": text, "heatmap": False},
                                AUTH)
    if kind == "viewer":
        return endpoint_request(space.settings, "GET", "/viewer", headers={})
    if kind == "ingest":
        return tool_request("ingest", {"texts": "\n".join(f"{text} (batch {k}, item {j})" for j in range(3))},
                            space.credentials)
    raise ValueError(kind)


def failure(kind: str, messages: list[dict]) -> str | None:
    """Why an answer is wrong (an error, a non-200 status, no answer), or None."""
    if errors(messages):
        return f"{kind}: {errors(messages)[0]}"
    if kind in ("v1_search", "retrieval", "align", "viewer"):
        if not any("status" in m.get("data", {}) for m in messages):
            return f"{kind}: the session ended without an HTTP response: {messages[:3]}"
        status, _, body = http_response(messages)
        if status != 200:
            return f"{kind}: HTTP {status} {body[:200]!r}"
        if kind == "retrieval" and not json.loads(body)["records"]:
            return "retrieval: no records"
    return None


@dataclass
class Outcome:
    latencies: dict = field(default_factory=dict)  # kind -> [seconds]
    failures: list = field(default_factory=list)
    parked: list = field(default_factory=list)  # (kind, session) never answered
    sent: int = 0
    seconds: float = 0.0


def run_mix(plugin: PluginProcess, space: Workspace, count: int, in_flight: int, kinds=KINDS,
            timeout: float = 300, pace: float = 0.0, start: int = 0) -> Outcome:
    """Send ``count`` requests of ``kinds`` in turn, keeping ``in_flight`` unanswered at once (``pace``: seconds
    between sends, for a stream); ``timeout``: after the last send, how long the rest may take."""
    image, outcome = small_png(), Outcome()
    pending: dict[str, tuple[str, float]] = {}
    order = itertools.cycle(kinds)
    started = time.monotonic()

    def harvest(wait: float) -> None:
        done = plugin.collect(list(pending), timeout=wait, partial=True, first=True)
        now = time.monotonic()
        for sid, messages in done.items():
            kind, sent_at = pending.pop(sid)
            outcome.latencies.setdefault(kind, []).append(now - sent_at)
            reason = failure(kind, messages)
            if reason:
                outcome.failures.append(reason)

    for k in range(start, start + count):
        while len(pending) >= in_flight:
            harvest(1.0)
        kind = next(order)
        pending[plugin.send(request(kind, k, space, image))] = (kind, time.monotonic())
        outcome.sent += 1
        if pace:
            time.sleep(pace)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        harvest(min(1.0, deadline - time.monotonic()))
    outcome.parked = [(kind, sid) for sid, (kind, _) in pending.items()]
    outcome.seconds = time.monotonic() - started
    return outcome


def seed_collection(plugin: PluginProcess, space: Workspace) -> None:
    """The collection the mix searches: TEXTS, ingested once."""
    from stdio_harness import json_message

    report = json_message(plugin.invoke_tool("ingest", {"texts": "\n".join(TEXTS)}, space.credentials))
    assert report["count"] >= len(TEXTS), report


def rss_mb(pid: int) -> float:
    """Resident memory of the plugin process and its worker processes (the work runs there)."""
    return sum(_rss_mb(each) for each in [pid, *descendants(pid)])


def _rss_mb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:  # it ended meanwhile
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    from pathlib import Path

    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    except OSError:
        pass
    return found


def max_heartbeat_gap(plugin: PluginProcess, since: float, until: float) -> float:
    beats = [t for t in plugin.heartbeats if since <= t <= until]
    window = [since, *beats, until]
    return max(b - a for a, b in zip(window, window[1:]))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")
