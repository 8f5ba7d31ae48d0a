"""Requests that arrive while the torch build loads models: every one is dispatched and answered.

The hang this guards against: the SDK dispatches each request from one listener greenlet through
``ThreadPoolExecutor.submit``, which takes ``concurrent.futures.thread._global_shutdown_lock``, one lock for
the whole process. transformers loads a checkpoint with a thread pool of its own (a ``submit`` per tensor)
from the worker thread that runs the load. Under gevent's patching that lock was a greenlet lock, bound to
one thread's hub: a worker holding it while the listener asked for it left the listener asleep for good,
with heartbeats still flowing, so the daemon never restarted the plugin. ``crossmodal.runtime.loop_safe``
makes every lock in the process one that OS threads and greenlets can share.

Each test streams requests every 20 ms while models load (at first use, and in the warm-up of remembered
models at start). Models now load in the plugin's worker process, not in threads of the process that speaks
the protocol, which the last test checks: the control that showed the stall (the same run with the lock
installation disabled, which parked requests) has no stall left to show.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from stdio_harness import PluginProcess, endpoint_request, errors, http_response, tool_request
from tiny_models import save_tiny_clip

pytestmark = pytest.mark.protocol

MODELS = 3


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> list[str]:
    """Three distinct models (each load runs transformers' own thread pool once per tensor).

    Twelve layers a tower, about 400 tensors a model: each tensor's submit is a window for the race, and with
    two layers the control parked in only one run of three."""
    root = tmp_path_factory.mktemp("models-to-load")
    return [str(save_tiny_clip(root / f"m{k}", seed=k, image_size=32 + 16 * k, layers=12)) for k in range(MODELS)]


def start_plugin(home, python_code: str | None = None) -> PluginProcess:
    process = PluginProcess(env={"CROSSMODAL_HOME": str(home)}, heartbeat_interval=0.25,
                            command=python_code and ["-c", python_code])
    process.wait_ready()
    return process


def stream_requests(plugin: PluginProcess, count: int, make) -> list[str]:
    sessions = []
    for k in range(count):
        sessions.append(plugin.send(make(k)))
        time.sleep(0.02)
    return sessions


def answered(plugin: PluginProcess, sessions: list[str], timeout: float,
             quiet: float | None = None) -> tuple[dict, list[str]]:
    """The sessions that ended within ``timeout`` (or before ``quiet`` seconds passed without news from any of
    them), and those that never did (parked)."""
    done = plugin.collect(sessions, timeout=timeout, partial=True, quiet=quiet)
    return done, [s for s in sessions if s not in done]


def requests_during_first_loads(home, models: list[str], python_code: str | None, timeout: float,
                                quiet: float | None = None):
    """Every model's first use at once, with cheap requests streaming in while they load."""
    plugin = start_plugin(home, python_code)
    try:
        loads = [plugin.send(tool_request("embed", {"texts": "a red circle"}, {"model": m, "data_dir": str(home)}))
                 for m in models]
        settings = {"api_key": "k", "data_dir": str(home)}
        cheap = stream_requests(plugin, 120, lambda k: endpoint_request(
            settings, "GET", "/v1/collections", headers={"Authorization": "Bearer k"}))
        return plugin, *answered(plugin, loads + cheap, timeout, quiet)
    except BaseException:
        plugin.close()
        raise


def requests_during_warm_up(home, models: list[str], python_code: str | None, timeout: float,
                            quiet: float | None = None):
    """A start with three remembered models: their warm-up loads run while requests stream in."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "warm-models.json").write_text(json.dumps([{"model": m, "device": "cpu", "precision": "fp32"}
                                                      for m in models]))
    plugin = start_plugin(home, python_code)
    try:
        creds = {"data_dir": str(home), "model": models[0]}
        sessions = stream_requests(plugin, 150, lambda k: tool_request(
            "collections", {"action": "list"}, creds) if k % 2 else tool_request("embed", {"texts": f"t {k}"}, creds))
        return plugin, *answered(plugin, sessions, timeout, quiet)
    except BaseException:
        plugin.close()
        raise


@pytest.mark.parametrize("scenario", [requests_during_first_loads, requests_during_warm_up])
def test_requests_arriving_while_models_load_are_all_answered(scenario, model_dirs, tmp_path):
    plugin, done, parked = scenario(tmp_path / "home", model_dirs, None, timeout=180)
    try:
        assert not parked, f"{len(parked)} of {len(done) + len(parked)} requests never answered" + plugin.stacks()
        for sid, messages in done.items():
            assert not errors(messages), errors(messages)
            status = [http_response(messages)[0]] if any("status" in m.get("data", {}) for m in messages) else []
            assert status in ([], [200]), status
    finally:
        plugin.close()


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_plugin_process_loads_no_model_library(model_dirs, tmp_path):
    """The stall above needs a model load in a thread of the process that serves the protocol (transformers'
    per-tensor submit and the SDK's listener meeting on one lock). Models load in the worker process
    (crossmodal/workers/): after three first loads the plugin process has mapped neither torch nor
    transformers' native code, while its worker has. Before the worker process, the plugin process loaded them
    in its own threads (the control of this test: the stall parked requests in five runs of six)."""
    plugin, done, parked = requests_during_first_loads(tmp_path / "home", model_dirs[:1], None, timeout=180)
    try:
        assert not parked
        workers = children(plugin.proc.pid)
        assert workers, "the plugin started no worker process"
        assert "libtorch" not in mapped_libraries(plugin.proc.pid)
        assert any("libtorch" in mapped_libraries(pid) for pid in workers)
    finally:
        plugin.close()
