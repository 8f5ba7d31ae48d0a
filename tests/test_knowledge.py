"""The External Knowledge API's pieces below the endpoint: records (text, scores, picture links), conditions, the
deadline-bound model load, the models remembered for a warm start."""

from __future__ import annotations


import pytest

from crossmodal.alignment.align import Calibration
from crossmodal.errors import CrossmodalError
from crossmodal.api.image_links import ImageLinks, LinkRefused, derived_key
from crossmodal.api.knowledge import knowledge_records, metadata_predicate


def test_records_carry_the_items_text_and_a_0_1_score():
    """content is the item's text (caption, page text, OCR text), never only its file name when it has text; a
    dense hit's score is the calibrated probability of its cosine, a fused hit's its 0-1 fused score."""
    calibration = Calibration(a=40.0, b=-10.0, source="test")
    hits = [{"id": "00000000-0000-0000-0000-000000000001", "score": 0.3,
             "payload": {"kind": "image", "source": "report.pdf#page=1", "ocr_text": "Invoice XH-4562-X5",
                         "ocr_lines": [{"text": "Invoice XH-4562-X5", "xyxy": [0, 0, 9, 9]}], "page": 1}},
            {"id": "00000000-0000-0000-0000-000000000002", "score": 0.25,
             "payload": {"kind": "image", "source": "cat.jpg", "caption": "a cat", "text": "a cat"}},
            {"id": "00000000-0000-0000-0000-000000000003", "score": 0.2, "payload": {"kind": "image", "source": "x.png"}}]
    dense = knowledge_records({"results": hits, "mode": "dense", "collection": "kb"}, calibration)
    assert [r["content"] for r in dense] == ["Invoice XH-4562-X5", "a cat", "x.png"]  # a name only without text
    assert dense[0]["score"] == pytest.approx(calibration.probability(0.3), abs=1e-6)
    assert dense[0]["metadata"]["cosine"] == 0.3 and "ocr_lines" not in dense[0]["metadata"]
    assert dense[0]["title"] == "report.pdf#page=1" and dense[0]["metadata"]["page"] == 1
    fused = knowledge_records({"results": hits, "mode": "hybrid", "fusion": "rrf", "collection": "kb"}, calibration)
    assert [r["score"] for r in fused] == [0.3, 0.25, 0.2]
    assert fused[0]["metadata"]["retrieval"] == {"mode": "hybrid", "fusion": "rrf"}


def test_records_link_their_pictures_when_asked():
    links = ImageLinks("https://dify.example.com/e/hook", derived_key({"api_key": "k"}))
    hits = [{"id": "00000000-0000-0000-0000-000000000001", "score": 0.9,
             "payload": {"kind": "image", "source": "a [b].png", "caption": "a red car"}},
            {"id": "00000000-0000-0000-0000-000000000002", "score": 0.8, "payload": {"kind": "text", "text": "a note"}}]
    image, text = knowledge_records({"results": hits, "mode": "hybrid", "collection": "kb"}, None, links)
    url = image["metadata"]["image_url"]
    assert url.startswith("https://dify.example.com/e/hook/v1/image?c=kb&id=00000000-0000-0000-0000-000000000001&e=")
    assert image["content"] == f"a red car\n\n![a  b .png]({url})"
    assert "image_url" not in text["metadata"] and text["content"] == "a note"
    query = dict(part.split("=", 1) for part in url.split("?", 1)[1].split("&"))
    assert links.check(query) == ("kb", "00000000-0000-0000-0000-000000000001")


@pytest.mark.parametrize("expires", ["³", "１２３", "٣", "-1", "1e9", "", "9" * 5000])
def test_a_link_with_a_non_ascii_or_odd_expiry_is_refused_not_a_crash(expires):
    # str.isdigit() holds for "³" and other Unicode digits that int() refuses: the fuzzer's 500 (e=%C2%B3)
    links = ImageLinks("https://dify.example.com/e/hook", derived_key({"api_key": "k"}))
    with pytest.raises(LinkRefused, match="expiry"):
        links.check({"c": "kb", "id": "00000000-0000-0000-0000-000000000001", "e": expires, "s": "x"})


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
    many = [{"name": f"k{n}", "comparison_operator": "is", "value": "x"} for n in range(33)]
    with pytest.raises(CrossmodalError, match="at most 32"):
        metadata_predicate({"conditions": many})
    with pytest.raises(CrossmodalError, match="double quote"):
        metadata_predicate({"conditions": [{"name": 'a"b', "comparison_operator": "is", "value": "x"}]})


DEADLINE_CHILD = """
import sys; sys.path.insert(0, "tests")
import dify_plugin  # noqa: F401  (patches the process with gevent, as in the plugin)
import time
import gevent
from crossmodal.runtime import StillRunning, install_loop_safe_locks, mark_loop_thread, offload_within
from crossmodal.workers.supervisor import engine
from worker_doubles import cached, slow_load

install_loop_safe_locks()
mark_loop_thread()
engine().ready.wait(120)
ticks = []
ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.05)) for _ in range(40)])

started = time.monotonic()
try:
    offload_within(0.3, slow_load)
    print("no-deadline")
except StillRunning:
    print("answered-after", round(time.monotonic() - started, 2))
print("loop-ticks-meanwhile", len(ticks))
# The load goes on in the worker after the caller's answer; a later call finds the lane free once it ends
# (1.5 s; polled, so that a loaded machine's slower worker is not a failure).
gevent.sleep(1.6)
until = time.monotonic() + 30
while True:
    try:
        print("later", offload_within(0.3, cached))
        break
    except StillRunning:
        if time.monotonic() > until:
            raise
        gevent.sleep(0.2)
engine().close()
"""


@pytest.mark.slow
def test_a_slow_model_load_answers_within_the_deadline():
    """The retrieval route's guard, in a process patched exactly as the plugin is: the caller gets its
    answer at the deadline, the loop keeps running, and the load finishes in the worker process."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", DEADLINE_CHILD], cwd=root, capture_output=True, text=True,
                         timeout=180)
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


@pytest.mark.parametrize("used", [False, True])
def test_a_misspelt_ocr_default_never_stops_the_worker_from_starting(tmp_path, monkeypatch, used):
    """The worker process warms remembered models right after it says ready; the OCR check read the admin's
    CROSSMODAL_OCR_DEFAULT, and a value check_ocr refuses raised there and ended the worker at every start (every
    call failed, not only those reading text). Calls report the bad default themselves; the warm-up skips OCR."""
    from crossmodal.encoders import warmup
    from crossmodal.ocr.models import USED_MARK

    monkeypatch.setenv("CROSSMODAL_HOME", str(tmp_path))
    monkeypatch.setenv("CROSSMODAL_OCR_DEFAULT", "disabled")
    if used:
        (tmp_path / USED_MARK).touch()
    assert warmup.ocr_remembered() is False
    assert warmup.warm_remembered() is None  # nothing to warm, nothing raised


RETRIEVAL_CHILD = """
import sys; sys.path.insert(0, "tests")
import dify_plugin  # noqa: F401  (patches the process with gevent, as in the plugin)
import json, time
import gevent
from crossmodal.runtime import install_loop_safe_locks, mark_loop_thread, offload
install_loop_safe_locks()
mark_loop_thread()
from crossmodal.api import http
from crossmodal.errors import CrossmodalError
from crossmodal.workers.supervisor import engine
import worker_doubles

engine().ready.wait(120)
http.route_retrieval = worker_doubles.route_retrieval
report = {}
for name, seconds in (("fast", 0.2), ("slow", 4.0)):
    service = worker_doubles.SlowModelService(name, seconds)
    started = time.monotonic()
    try:
        report[name] = http.retrieval_within_deadline(service, {"knowledge_id": "k"}, None, time.perf_counter() + 4.5)
    except CrossmodalError as exc:
        report[name] = [exc.status, str(exc)]
    report[name + "_seconds"] = round(time.monotonic() - started, 1)
gevent.sleep(3.0)  # the slow load goes on in its lane and ends
report["after"] = http.retrieval_within_deadline(service, {"knowledge_id": "k"}, None, time.perf_counter() + 4.5)
from crossmodal import lanes
report["misses"] = {f"{k[0]}/{k[1]}": v for k, v in lanes.DEADLINE_MISSES.items()}  # this process answered the 503
report["worker_misses"] = offload(worker_doubles.deadline_misses)
print(json.dumps(report), flush=True)
engine().close()
"""


@pytest.mark.slow
def test_retrieval_loads_a_missing_model_within_the_deadline_or_says_it_is_loading():
    """A loaded model is used at once (one lookup); a missing one is loaded in the load lane, within 3 s or
    503 'still loading' (counted as a model_load miss) while the load goes on for the next call."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", RETRIEVAL_CHILD], cwd=root, capture_output=True, text=True,
                         timeout=180)
    assert out.stdout.strip(), out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["fast"] == {"records": [{"content": "hit"}], "lookups": 2}  # not loaded, loaded, looked up again
    status, message = report["slow"]
    assert status == 503 and "still loading" in message and 2.5 <= report["slow_seconds"] < 4.5  # within Dify's 5 s
    assert report["after"]["records"] == [{"content": "hit"}]
    assert report["misses"] == {"retrieval/model_load": 1} and report["worker_misses"] == {}
