"""The External Knowledge API's pieces that need no plugin process: the threshold's cosine bound, the
deadline-bound model load, the models remembered for a warm start."""

from __future__ import annotations

import math
import time

import pytest

from crossmodal.align import Calibration
from crossmodal.errors import CrossmodalError
from crossmodal.knowledge import cosine_bound, metadata_predicate


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


def test_a_slow_model_load_answers_within_the_deadline(monkeypatch):
    from crossmodal import models

    class Loaded:
        precision_note = None

        def use_precision(self, wanted):
            return wanted

    def slow_load(identity, device="cpu", hub=None):
        time.sleep(1.5)
        return Loaded()

    monkeypatch.setattr(models, "load_encoder", slow_load)
    models.pick_device("cpu")  # imports torch: not what is timed
    started = time.monotonic()
    assert models.encoder_within(0.2, "/tmp/slow-model-for-test", "cpu") is None
    assert time.monotonic() - started < 1.0  # the caller got its answer; the load goes on
    encoder = models.encoder_within(5.0, "/tmp/slow-model-for-test", "cpu")
    assert isinstance(encoder, Loaded)
    assert models.encoder_within(0.0, "/tmp/slow-model-for-test", "cpu") is encoder


def test_models_used_by_retrieval_are_remembered_for_the_next_start(tmp_path, monkeypatch):
    from crossmodal import warmup

    monkeypatch.setenv("CROSSMODAL_HOME", str(tmp_path))
    for model in ("a", "b", "a", "c", "d", "e"):
        warmup.remember(model, "cpu", "fp32")
    assert [e["model"] for e in warmup.remembered()] == ["e", "d", "c", "a"]
    (tmp_path / warmup.WARM_FILE).write_text("{broken")
    assert warmup.remembered() == []
