"""The concurrency soak: a Dify's real load on each build's plugin over stdio, bounded in time.

A cold start with requests streaming in while three remembered models load, then rounds of mixed requests
(Search, Embed, Collections, /v1/search, /retrieval, Align) with 24 in flight. Nothing parks, no request gets
an error, heartbeats are never silent for 10 s, and memory after 2,000 requests is within 10 % of memory
after 200. CI runs it on Python 3.11 (SDK 0.7.4) and 3.12 (SDK 0.10.x), for the torch and the lean build.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from load_mix import (KINDS, Workspace, max_heartbeat_gap, rss_mb, run_mix, seed_collection)
from stdio_harness import PluginProcess
from tiny_models import save_tiny_clip

pytestmark = [pytest.mark.protocol, pytest.mark.slow]

COLD_REQUESTS, IN_FLIGHT, ROUND, FIRST, TOTAL = 400, 24, 300, 200, 2000


def start(build: str, home, tmp_path_factory) -> PluginProcess:
    env = {"CROSSMODAL_HOME": str(home)}
    if build == "torch":
        return PluginProcess(env=env, heartbeat_interval=0.5)
    from conftest import modules_outside
    from test_lean_build import ROOT, unpacked

    return PluginProcess(env=env, cwd=unpacked(tmp_path_factory, models=False), heartbeat_interval=0.5,
                         python=os.environ.get("CROSSMODAL_LEAN_PYTHON"),
                         missing=modules_outside(ROOT / "requirements-onnx.txt"))


@pytest.mark.parametrize("build", ["torch", "onnx"])
def test_soak(build, tmp_path, tmp_path_factory):
    home = tmp_path / "home"
    home.mkdir()
    models = [str(save_tiny_clip(tmp_path / f"m{k}", seed=k)) for k in range(2)] + ["demo-shapes"]
    if build == "onnx":  # the lean build loads ONNX exports only: its warm-up is the bundled demo model
        models = ["demo-shapes"]
    (home / "warm-models.json").write_text(json.dumps([{"model": m, "device": "cpu", "precision": "fp32"}
                                                       for m in models]))
    plugin = start(build, home, tmp_path_factory)
    space = Workspace(str(tmp_path / "store"))
    try:
        plugin.wait_ready()
        began = time.monotonic()
        cold = run_mix(plugin, space, COLD_REQUESTS, IN_FLIGHT, kinds=("ingest", "embed", "collections"), pace=0.01)
        assert not cold.parked and not cold.failures, (cold.parked[:3], cold.failures[:3], plugin.stacks())
        seed_collection(plugin, space)
        sent, rss_first, rounds = 0, None, []
        while sent < TOTAL:
            outcome = run_mix(plugin, space, ROUND, IN_FLIGHT, start=sent)
            rounds.append(outcome)
            assert not outcome.parked, f"{len(outcome.parked)} parked: {outcome.parked[:3]}" + plugin.stacks()
            assert not outcome.failures, outcome.failures[:5]
            assert set(outcome.latencies) == set(KINDS)
            sent += outcome.sent
            if rss_first is None and sent >= FIRST:
                rss_first = rss_mb(plugin.proc.pid)
        rss_last = rss_mb(plugin.proc.pid)
        gap = max_heartbeat_gap(plugin, began, time.monotonic())
        assert gap < 10, f"heartbeats silent for {gap:.1f} s"
        assert rss_last <= 1.10 * rss_first, f"RSS grew from {rss_first:.0f} MB to {rss_last:.0f} MB"
        seconds = sum(r.seconds for r in rounds)
        print(f"soak {build}: {sent} requests in {seconds:.0f} s ({sent / seconds:.0f}/s), RSS {rss_first:.0f} -> "
              f"{rss_last:.0f} MB, longest heartbeat gap {gap:.1f} s")
    finally:
        plugin.close()
    assert not plugin.non_json and not plugin.oversized
