"""The limits live in one place (crossmodal/limits.py): the admin sets them in the plugin's environment within
their caps, a workspace may only narrow them, and docs/reliability.md shows the registry as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossmodal import limits
from crossmodal.errors import CrossmodalError

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_table_is_the_registry():
    limits.load_all()
    assert len(limits.LIMITS) >= 20
    assert limits.limits_table() in (ROOT / "docs" / "reliability.md").read_text(), \
        "docs/reliability.md's table of limits differs from crossmodal.limits.limits_table(): paste it again"


def test_the_admin_sets_a_limit_within_its_cap(monkeypatch):
    limits.load_all()
    monkeypatch.setenv("CROSSMODAL_PDF_PAGES", "5000")
    assert limits.limit("pdf_pages") == 5000
    monkeypatch.setenv("CROSSMODAL_PDF_PAGES", "10000000")  # over the cap: logged, the default kept
    assert limits.limit("pdf_pages") == limits.LIMITS["pdf_pages"].default
    monkeypatch.setenv("CROSSMODAL_PDF_PAGES", "many")
    assert limits.limit("pdf_pages") == limits.LIMITS["pdf_pages"].default


def test_a_workspace_narrows_a_limit_and_never_widens_it(monkeypatch):
    limits.load_all()
    monkeypatch.setenv("CROSSMODAL_PDF_PAGES", "300")
    assert limits.parse_workspace_limits('{"pdf_pages": 50}') == {"pdf_pages": 50}
    with limits.narrowed_by({"pdf_pages": 50}):
        assert limits.limit("pdf_pages") == 50
    assert limits.limit("pdf_pages") == 300
    with pytest.raises(CrossmodalError, match="above the admin's limit of 300") as wider:
        limits.parse_workspace_limits({"pdf_pages": 1000})
    assert wider.value.param == "limits.pdf_pages"
    monkeypatch.setenv("CROSSMODAL_PDF_PAGES", "20")  # the admin lowered it after the workspace saved 50
    with limits.narrowed_by({"pdf_pages": 50}):
        assert limits.limit("pdf_pages") == 20
    with pytest.raises(CrossmodalError, match="not a limit a workspace can set"):
        limits.parse_workspace_limits({"worker_memory_mb": 10})  # the admin's alone
    with pytest.raises(CrossmodalError, match="not valid JSON"):
        limits.parse_workspace_limits("{pdf_pages: 5")
    with pytest.raises(CrossmodalError, match="out of range"):
        limits.parse_workspace_limits({"pdf_pages": -1})


def test_a_calls_limits_reach_the_threads_it_starts():
    import threading

    from crossmodal.lanes import call_context_runner

    limits.load_all()
    seen = []
    with limits.narrowed_by({"call_pixels": 123}):
        thread = threading.Thread(target=call_context_runner(lambda: seen.append(limits.limit("call_pixels"))))
        thread.start()
        thread.join()
    assert seen == [123]
