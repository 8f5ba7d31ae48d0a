"""Prometheus metrics (prometheus_client, text exposition format) for endpoints and nodes: requests and
errors per route and node, latency histograms, model load time, points per collection.

Counters and histograms of requests live in the plugin process (updated on the gevent loop); what the worker
process knows (model load times, lane waits and threads, deadline misses, collection sizes) is read from it at
scrape time, in its query lane."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from crossmodal import lanes

REGISTRY = CollectorRegistry()
REQUESTS = Counter("crossmodal_requests_total", "Requests by endpoint (a hash of its key; 'node' for tool "
                   "nodes), kind (endpoint / node), name and status", ["endpoint", "kind", "name", "status"],
                   registry=REGISTRY)
ERRORS = Counter("crossmodal_errors_total", "Requests that ended in an error", ["endpoint", "kind", "name"],
                 registry=REGISTRY)
LATENCY = Histogram("crossmodal_request_seconds", "Request latency", ["endpoint", "kind", "name"],
                    registry=REGISTRY, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
NODE = "node"
ADMIN_KEY_ENV = "CROSSMODAL_METRICS_KEY"


def endpoint_scope(settings) -> str:
    """A short, one-way name for an endpoint (its key's hash): what its own /metrics view is filtered by."""
    import hashlib

    key = str((settings or {}).get("api_key") or "")
    return hashlib.sha256(b"crossmodal-metrics\0" + key.encode()).hexdigest()[:12]


def exposition(service, scope: str | None) -> tuple[bytes, str]:
    """``scope`` None (the admin's key): the plugin process's counters and everything the worker process knows
    (model loads, lanes, deadline misses, every collection of this store). An endpoint's own key (``scope``:
    its endpoint_scope) sees only its own requests and the collections of the store its settings reach: one
    plugin serves every workspace, and model names (local paths among them) and other endpoints' traffic are
    theirs."""
    from crossmodal.runtime import offload

    figures = offload(worker_figures, service)
    registry = CollectorRegistry()
    for collector in (REQUESTS, ERRORS, LATENCY):
        registry.register(collector if scope is None else _OneEndpoint(collector, scope))
    registry.register(_FiguresCollector(figures, _worker_process_figures() if scope is None else {}, scope is None))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _OneEndpoint:
    """A collector's families with only one endpoint's samples."""

    def __init__(self, collector, scope: str):
        self.collector, self.scope = collector, scope

    def collect(self):
        for family in self.collector.collect():
            family.samples = [s for s in family.samples if s.labels.get("endpoint") == self.scope]
            yield family


def worker_figures(service) -> dict:
    """What the worker process knows (runs there): plain numbers, so that they travel back."""
    from crossmodal.encoders.models import LOAD_SECONDS

    points, open_collections = {}, None
    try:
        # The embedded store lists from each collection.json and opens no shard for it (store/edge.py): a
        # count is the live one of an open collection, else the one recorded at its last write or close.
        for info in service.store.list_collections():
            points[info.name] = info.count
        if hasattr(service.store, "open_shards"):
            open_collections = len(service.store.open_shards())
    except Exception:  # noqa: BLE001 - an unreachable store must not break the scrape
        pass
    return {"load_seconds": dict(LOAD_SECONDS), "waits": {k: list(v) for k, v in lanes.WAITS.items()},
            "misses": dict(lanes.DEADLINE_MISSES), "lanes": lanes.lane_figures(), "points": points,
            "open_collections": open_collections}


def _worker_process_figures() -> dict:
    from crossmodal.workers.supervisor import started

    engine = started()
    return engine.figures() if engine is not None else {}


class _FiguresCollector:
    def __init__(self, figures: dict, process: dict, everything: bool):
        self.figures = figures
        self.process = process
        self.everything = everything

    def collect(self):
        points = GaugeMetricFamily("crossmodal_collection_points", "Points per collection", labels=["collection"])
        for name, count in self.figures["points"].items():
            points.add_metric([name], count)
        yield points
        if self.everything:
            yield from self._process_wide()

    def _process_wide(self):
        loads = GaugeMetricFamily("crossmodal_model_load_seconds", "Seconds the last load of each model took",
                                  labels=["model"])
        for model, seconds in self.figures["load_seconds"].items():
            loads.add_metric([model], seconds)
        yield loads
        waits = SummaryMetricFamily("crossmodal_lane_wait_seconds", "Seconds calls waited for a thread of their "
                                    "lane (query, bulk, load)", labels=["lane"])
        for lane, (calls, seconds) in self.figures["waits"].items():
            waits.add_metric([lane], count_value=calls, sum_value=seconds)
        yield waits
        misses = CounterMetricFamily("crossmodal_deadline_misses", "Calls that passed their deadline, by what held "
                                     "them: queue (no thread of the lane free), model (encoding), store, work, "
                                     "model_load (503 while a model loads), worker (the worker process did not "
                                     "answer)", labels=["name", "reason"])
        merged = dict(self.figures["misses"])  # the worker's, and this process's own (503s it answered, timeouts)
        for key, calls in lanes.DEADLINE_MISSES.items():
            merged[key] = merged.get(key, 0) + calls
        for (name, reason), calls in merged.items():
            misses.add_metric([name, reason], calls)
        yield misses
        threads = GaugeMetricFamily("crossmodal_lane_threads", "Threads of each lane by state: running, stuck "
                                    "(past their call's deadline, replaced), and calls queued", labels=["lane", "state"])
        for lane, numbers in self.figures["lanes"].items():
            for state in ("queued", "running", "stuck"):
                threads.add_metric([lane, state], numbers[state])
        yield threads
        points = GaugeMetricFamily("crossmodal_collection_points", "Points per collection", labels=["collection"])
        for name, count in self.figures["points"].items():
            points.add_metric([name], count)
        yield points
        if self.figures.get("open_collections") is not None:
            yield GaugeMetricFamily("crossmodal_open_collections", "Embedded collections open now (at most the "
                                    "open_collections limit while no more calls than that use different ones)",
                                    value=self.figures["open_collections"])
        if self.process:
            worker = GaugeMetricFamily("crossmodal_worker_process", "The plugin's worker process: resident bytes, "
                                       "restarts, calls in flight", labels=["figure"])
            for figure in ("rss_bytes", "restarts", "in_flight"):
                worker.add_metric([figure], self.process[figure])
            yield worker
