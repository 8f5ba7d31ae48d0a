"""Prometheus metrics (prometheus_client, text exposition format) for endpoints and nodes: requests and
errors per route and node, latency histograms, model load time, points per collection.

Counters and histograms are updated on the gevent loop (after the offloaded work returns); the scrape runs in
the query lane, since counting points opens the store (their locks are LoopSafeLocks: crossmodal/loop_safe.py).
Values that worker threads produce (model load times, lane waits, deadline misses, collection sizes) are read
at scrape time by collectors."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from crossmodal import lanes

REGISTRY = CollectorRegistry()
REQUESTS = Counter("crossmodal_requests_total", "Requests by kind (endpoint / node), name and status",
                   ["kind", "name", "status"], registry=REGISTRY)
ERRORS = Counter("crossmodal_errors_total", "Requests that ended in an error", ["kind", "name"], registry=REGISTRY)
LATENCY = Histogram("crossmodal_request_seconds", "Request latency", ["kind", "name"], registry=REGISTRY,
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))


def exposition(service) -> tuple[bytes, str]:
    """The registry plus a gauge of points per collection, read from the store at scrape time."""
    registry = CollectorRegistry()
    for collector in (REQUESTS, ERRORS, LATENCY):
        registry.register(collector)
    registry.register(_ModelLoadCollector())
    registry.register(_LaneCollector())
    registry.register(_PointsCollector(service))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _ModelLoadCollector:
    def collect(self):
        from crossmodal.encoders.models import LOAD_SECONDS

        family = GaugeMetricFamily("crossmodal_model_load_seconds", "Seconds the last load of each model took",
                                   labels=["model"])
        for model, seconds in list(LOAD_SECONDS.items()):
            family.add_metric([model], seconds)
        yield family


class _LaneCollector:
    """How long calls waited for a thread of their lane, and the calls that passed their deadline and why."""

    def collect(self):
        waits = SummaryMetricFamily("crossmodal_lane_wait_seconds", "Seconds calls waited for a thread of their "
                                    "lane (query, bulk, load)", labels=["lane"])
        for lane, (calls, seconds) in list(lanes.WAITS.items()):
            waits.add_metric([lane], count_value=calls, sum_value=seconds)
        yield waits
        misses = CounterMetricFamily("crossmodal_deadline_misses", "Calls that passed their deadline, by what held "
                                     "them: queue (no thread of the lane free), model (encoding), store, work, "
                                     "model_load (503 while a model loads)", labels=["name", "reason"])
        for (name, reason), calls in list(lanes.DEADLINE_MISSES.items()):
            misses.add_metric([name, reason], calls)
        yield misses


class _PointsCollector:
    def __init__(self, service):
        self.service = service

    def collect(self):
        family = GaugeMetricFamily("crossmodal_collection_points", "Points per collection", labels=["collection"])
        try:
            for info in self.service.store.list_collections():
                family.add_metric([info.name], info.count)
        except Exception:  # noqa: BLE001 - an unreachable store must not break the scrape
            pass
        yield family
