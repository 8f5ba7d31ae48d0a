"""The External Knowledge API's pieces below the endpoint: the threshold's cosine bound, conditions, the
deadline-bound model load, the models remembered for a warm start."""

from __future__ import annotations

import math

import pytest

from crossmodal.alignment.align import Calibration
from crossmodal.errors import CrossmodalError
from crossmodal.api.knowledge import cosine_bound, metadata_predicate


def test_cosine_bound_is_where_the_relevance_reaches_the_threshold():
    calibration = Calibration(a=40.0, b=-10.0, source="test")
    for threshold in (0.1, 0.5, 0.9):
        bound = cosine_bound(threshold, calibration.a, calibration.b)
        assert calibration.probability(bound) == pytest.approx(threshold, abs=1e-9)
    assert cosine_bound(0.0, 40.0, -10.0) is None and cosine_bound(None, 40.0, -10.0) is None
    assert cosine_bound(1.0, 40.0, -10.0) == math.inf


def test_conditions_need_known_operators_and_fitting_values():
    assert metadata_predicate(None) is None and metadata_predicate({"conditions": None}) is None
    with pytest.raises(CrossmodalError, match="logical_operator"):
        metadata_predicate({"logical_operator": "xor", "conditions": [
            {"name": "a", "comparison_operator": "is", "value": "x"}]})
    with pytest.raises(CrossmodalError, match="times"):
        metadata_predicate({"conditions": [{"name": "d", "comparison_operator": "before", "value": "someday"}]})
    with pytest.raises(CrossmodalError, match="needs a value"):
        metadata_predicate({"conditions": [{"name": "d", "comparison_operator": "contains", "value": None}]})
    tags = metadata_predicate({"conditions": [{"name": "tags", "comparison_operator": "contains", "value": "ca"}]})
    assert tags({"tags": ["dog", "cat"]}) and not tags({"tags": ["dog"]}) and not tags({})


DEADLINE_CHILD = """
import dify_plugin  # noqa: F401  (patches the process with gevent, as in the plugin)
import time
import gevent
from gevent import monkey
from crossmodal.runtime import StillRunning, offload_within

real_sleep = monkey.get_original("time", "sleep")
ticks = []
ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.05)) for _ in range(40)])

def slow_load():
    real_sleep(1.5)  # a model load: an OS thread busy for a while
    return "loaded"

started = time.monotonic()
try:
    offload_within(0.3, slow_load)
    print("no-deadline")
except StillRunning:
    print("answered-after", round(time.monotonic() - started, 2))
print("loop-ticks-meanwhile", len(ticks))
gevent.sleep(1.6)
print("later", offload_within(0.3, lambda: "cached"))
"""


def test_a_slow_model_load_answers_within_the_deadline():
    """The retrieval route's guard, in a process patched exactly as the plugin is: the caller gets its
    answer at the deadline, the loop keeps running, and the load finishes in its worker thread."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", DEADLINE_CHILD], cwd=root, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert "answered-after" in lines, out.stdout
    assert 0.25 <= float(lines["answered-after"]) < 1.0
    assert int(lines["loop-ticks-meanwhile"]) >= 4  # heartbeats would have gone on
    assert lines["later"] == "cached"


def test_models_used_by_retrieval_are_remembered_for_the_next_start(tmp_path, monkeypatch):
    from crossmodal.encoders import warmup
    monkeypatch.setenv("CROSSMODAL_HOME", str(tmp_path))
    for model in ("a", "b", "a", "c", "d", "e"):
        warmup.remember(model, "cpu", "fp32")
    assert [e["model"] for e in warmup.remembered()] == ["e", "d", "c", "a"]
    (tmp_path / warmup.WARM_FILE).write_text("{broken")
    assert warmup.remembered() == []


RETRIEVAL_CHILD = """
import dify_plugin  # noqa: F401  (patches the process with gevent, as in the plugin)
import json, time
import gevent
from gevent import monkey
from crossmodal.runtime import install_loop_safe_locks
install_loop_safe_locks()
from crossmodal import lanes
from crossmodal.api import http
from crossmodal.context import ModelNotLoaded
from crossmodal.errors import CrossmodalError

os_sleep = monkey.get_original("time", "sleep")

class Service:  # what retrieval_within_deadline uses of the service: a model that loads in `seconds`
    def __init__(self, seconds):
        self.seconds, self.loaded, self.lookups = seconds, False, 0
    def encoder(self, model):
        os_sleep(self.seconds)
        self.loaded = True

def route_retrieval(service, body, request):
    service.lookups += 1
    if not service.loaded:
        raise ModelNotLoaded("the-model")
    return {"records": [{"content": "hit"}]}

http.route_retrieval = route_retrieval
report = {}
for name, seconds in (("fast", 0.2), ("slow", 4.0)):
    service = Service(seconds)
    started = time.monotonic()
    try:
        report[name] = http.retrieval_within_deadline(service, {"knowledge_id": "k"}, None, time.perf_counter() + 4.5)
    except CrossmodalError as exc:
        report[name] = [exc.status, str(exc)]
    report[name + "_seconds"] = round(time.monotonic() - started, 1)
    report[name + "_lookups"] = service.lookups
gevent.sleep(3.0)  # the slow load goes on in its lane and ends
report["after"] = http.retrieval_within_deadline(service, {"knowledge_id": "k"}, None, time.perf_counter() + 4.5)
report["misses"] = {f"{k[0]}/{k[1]}": v for k, v in lanes.DEADLINE_MISSES.items()}
print(json.dumps(report), flush=True)
import os
os._exit(0)  # the lanes' threads are not joined at exit
"""


def test_retrieval_loads_a_missing_model_within_the_deadline_or_says_it_is_loading():
    """A loaded model is used at once (one lookup); a missing one is loaded in the load lane, within 3 s or
    503 'still loading' (counted as a model_load miss) while the load goes on for the next call."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", RETRIEVAL_CHILD], cwd=root, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip(), out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["fast"] == {"records": [{"content": "hit"}]} and report["fast_lookups"] == 2
    status, message = report["slow"]
    assert status == 503 and "still loading" in message and 2.5 <= report["slow_seconds"] < 4.5  # within Dify's 5 s
    assert report["after"] == {"records": [{"content": "hit"}]}
    assert report["misses"] == {"retrieval/model_load": 1}
