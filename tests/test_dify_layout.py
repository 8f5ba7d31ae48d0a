"""What a stock Dify does to the plugin's files: the daemon runs each version in its own folder under
<storage>/cwd, with $HOME outside the persisted volume, and one process serves every workspace."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from crossmodal.errors import CrossmodalError
from stdio_harness import PluginProcess, errors, json_message, stream_messages, tool_request, validate_request

pytestmark = pytest.mark.protocol

ROOT = Path(__file__).resolve().parents[1]


def install_version(storage: Path, package: Path, version: str, checksum: str) -> Path:
    """Unpack the .difypkg where the daemon would: <storage>/cwd/<author>/<name>-<version>@<checksum>."""
    folder = storage / "cwd" / "crossmodal" / f"crossmodal-{version}@{checksum}"
    zipfile.ZipFile(package).extractall(folder)
    return folder


def daemon_plugin(storage: Path, folder: Path, home: Path) -> PluginProcess:
    process = PluginProcess(env={"PLUGIN_WORKING_PATH": str(storage / "cwd"), "HOME": str(home)}, cwd=folder,
                            unset=("CROSSMODAL_HOME", "HF_HOME", "HF_HUB_CACHE", "CROSSMODAL_ALLOW_PATHS"))
    process.wait_ready()
    return process


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    from crossmodal.dify.packaging import build_package

    return build_package(ROOT, str(tmp_path_factory.mktemp("pkg") / "crossmodal.difypkg"))


def test_collections_survive_an_upgrade_and_stay_out_of_home(tmp_path, package):
    storage, home = tmp_path / "storage", tmp_path / "root-home"
    home.mkdir()
    creds = {"model": "demo-shapes", "default_collection": "notes"}
    first = daemon_plugin(storage, install_version(storage, package, "0.1.0", "a1b2c3"), home)
    try:
        report = json_message(first.invoke_tool("ingest", {"texts": "a red circle\na small blue star"}, creds))
        assert report["added"] == 2
        team = json_message(first.invoke_tool("ingest", {"texts": "a green square"},
                                              {**creds, "data_dir": "team-a"}))
        assert team["count"] == 1
    finally:
        first.close()
    second = daemon_plugin(storage, install_version(storage, package, "0.1.1", "d4e5f6"), home)
    try:
        found = json_message(second.invoke_tool("search", {"query": "a blue star", "target": "text", "top_k": 1},
                                                creds))
        assert found["results"][0]["payload"]["text"] == "a small blue star"
        listing = json_message(second.invoke_tool("collections", {"action": "list"}, {**creds, "data_dir": "team-a"}))
        assert [(c["name"], c["count"]) for c in listing["collections"]] == [("notes", 1)]
    finally:
        second.close()
    data = storage / "crossmodal-data"
    assert (data / "collections" / "notes").is_dir()
    assert (data / "workspaces" / "team-a" / "collections" / "notes").is_dir()
    assert not any(home.iterdir()), f"files landed in $HOME: {list(home.iterdir())}"
    assert not any(p.name == "notes" for p in (storage / "cwd").rglob("*")), "data inside a version folder"


def test_data_dir_is_a_name_inside_dify(tmp_path, package):
    storage, home = tmp_path / "storage", tmp_path / "root-home"
    home.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (storage / "crossmodal-data" / "workspaces").mkdir(parents=True)
    (storage / "crossmodal-data" / "workspaces" / "escape").symlink_to(outside)
    plugin = daemon_plugin(storage, install_version(storage, package, "0.1.0", "a1b2c3"), home)
    try:
        for bad in ("../other", "/etc", "a/b", "..", str(outside), "escape"):
            (error,) = errors(plugin.call(validate_request({"model": "demo-shapes", "data_dir": bad})))
            assert error["error_type"] == "ToolProviderCredentialValidationError", error
            assert "data_dir" in error["message"], (bad, error)
            (error,) = errors(plugin.call(tool_request("ingest", {"texts": "x"},
                                                       {"model": "demo-shapes", "data_dir": bad})))
            assert "data_dir" in error["message"], (bad, error)
        ok = plugin.call(validate_request({"model": "demo-shapes", "data_dir": "marketing_2"}))
        assert stream_messages(ok) == [{"result": True}]
    finally:
        plugin.close()
    assert not any(outside.iterdir())


def test_locations_outside_and_inside_dify(tmp_path, monkeypatch):
    from crossmodal import locations

    monkeypatch.delenv("CROSSMODAL_HOME", raising=False)
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CROSSMODAL_ALLOW_PATHS", raising=False)
    monkeypatch.delenv("INSTALL_METHOD", raising=False)
    monkeypatch.chdir(tmp_path)  # the CLI in a checkout: paths are the operator's
    assert locations.resolve_data_dir(str(tmp_path / "mine")) == tmp_path / "mine"
    monkeypatch.setenv("INSTALL_METHOD", "local")  # a plugin in a checkout: its defaults, but never a path
    assert locations.data_root() == tmp_path / "home" / ".crossmodal"
    assert locations.model_cache_dir() is None
    with pytest.raises(CrossmodalError, match="data_dir"):  # the rule fails closed, whatever the directory
        locations.resolve_data_dir(str(tmp_path / "mine"))
    monkeypatch.setenv("CROSSMODAL_ALLOW_PATHS", "1")  # the admin's switch (a plugin for one workspace, tests)
    assert locations.resolve_data_dir(str(tmp_path / "mine")) == tmp_path / "mine"
    monkeypatch.delenv("CROSSMODAL_ALLOW_PATHS")

    version = tmp_path / "storage" / "cwd" / "acme" / "crossmodal-0.2.0@0123abcd"
    version.mkdir(parents=True)
    monkeypatch.chdir(version)
    monkeypatch.delenv("PLUGIN_WORKING_PATH", raising=False)
    root = tmp_path / "storage" / "crossmodal-data"
    assert locations.data_root() == root
    assert locations.model_cache_dir() == str(root / "huggingface" / "hub")
    assert locations.resolve_data_dir("") == root
    assert locations.resolve_data_dir("team-b") == root / "workspaces" / "team-b"
    with pytest.raises(CrossmodalError, match="data_dir"):
        locations.resolve_data_dir("../team-b")
    monkeypatch.setenv("INSTALL_METHOD", "remote")  # debugging from a developer's machine: its own defaults
    assert locations.data_root() == tmp_path / "home" / ".crossmodal"


def test_models_used_for_external_knowledge_load_at_the_next_start(tmp_path):
    """A retrieval call remembers its model; the next plugin start loads it before any call arrives."""
    import json
    import time

    from stdio_harness import endpoint_request, http_response

    home = tmp_path / "home"
    settings = {"api_key": "k" * 20, "data_dir": str(tmp_path / "store"), "model": "demo-shapes"}
    creds = {"data_dir": settings["data_dir"], "model": "demo-shapes", "default_collection": "kb"}
    first = PluginProcess(env={"CROSSMODAL_HOME": str(home)})
    first.wait_ready()
    try:
        json_message(first.invoke_tool("ingest", {"texts": "a red circle"}, creds))
        status, _, body = http_response(first.call(endpoint_request(
            settings, "POST", "/retrieval", {"knowledge_id": "kb", "query": "a red circle"},
            {"Authorization": "Bearer " + "k" * 20})))
        assert status == 200, body
    finally:
        first.close()
    assert json.loads((home / "warm-models.json").read_text())[0]["model"] == "demo-shapes"
    second = PluginProcess(env={"CROSSMODAL_HOME": str(home)})
    second.wait_ready()
    try:
        deadline = time.monotonic() + 60
        while not any("warmed demo-shapes" in line for line in second.logs) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any("warmed demo-shapes" in line for line in second.logs), second.logs
    finally:
        second.close()


KEY_A, KEY_B = "a3f1c9e27b5d4e60", "0d9e8c7b6a5f4e3d2c1b"


def test_workspaces_with_different_store_keys_see_different_stores(tmp_path, package):
    """One plugin process serves every workspace: a store name is not a secret, a store key is. Different keys
    with the same name (or no name): different stores; the same key and name: the same store."""
    storage, home = tmp_path / "storage", tmp_path / "root-home"
    home.mkdir()
    plugin = daemon_plugin(storage, install_version(storage, package, "0.1.0", "a1b2c3"), home)
    base = {"model": "demo-shapes", "default_collection": "notes", "data_dir": "team"}
    alice, bob, alice_again = {**base, "store_key": KEY_A}, {**base, "store_key": KEY_B}, {**base, "store_key": KEY_A}
    try:
        json_message(plugin.invoke_tool("ingest", {"texts": "a red circle\na blue star"}, alice))
        json_message(plugin.invoke_tool("ingest", {"texts": "a green square"}, bob))

        def listing(creds):
            result = json_message(plugin.invoke_tool("collections", {"action": "list"}, creds))
            return [(c["name"], c["count"]) for c in result["collections"]]

        assert listing(alice) == [("notes", 2)] and listing(bob) == [("notes", 1)]
        assert listing(alice_again) == [("notes", 2)]  # the same key: a deliberate share
        assert listing(base) == [] and listing({**base, "data_dir": ""}) == []  # the name alone reaches nothing
        hits = json_message(plugin.invoke_tool("search", {"query": "a red circle", "target": "text"}, bob))
        assert [h["payload"]["text"] for h in hits["results"]] == ["a green square"]
        (error,) = errors(plugin.call(validate_request({**base, "store_key": "short"})))
        assert "store_key" in error["message"] and "16" in error["message"]
    finally:
        plugin.close()
    keyed = storage / "crossmodal-data" / "keyed"
    assert len(list(keyed.iterdir())) == 2
    assert not any(part in p.name for p in keyed.iterdir() for part in ("team", KEY_A, KEY_B))


def test_a_store_made_before_keys_moves_under_a_key(tmp_path, package):
    import json
    import os
    import subprocess
    import sys

    storage, home = tmp_path / "storage", tmp_path / "root-home"
    home.mkdir()
    creds = {"model": "demo-shapes", "default_collection": "notes", "data_dir": "team"}
    folder = install_version(storage, package, "0.1.0", "a1b2c3")
    plugin = daemon_plugin(storage, folder, home)
    try:
        json_message(plugin.invoke_tool("ingest", {"texts": "a red circle\na blue star"}, creds))
        # while the plugin holds the collection open, the move is refused and nothing moves
        busy = subprocess.run([sys.executable, "-m", "crossmodal", "move-store", "team", "--data-root",
                               str(storage / "crossmodal-data")], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "CROSSMODAL_STORE_KEY": KEY_A})
        assert busy.returncode == 2 and "open in a running plugin" in busy.stderr, busy.stderr
    finally:
        plugin.close()
    moved = subprocess.run([sys.executable, "-m", "crossmodal", "move-store", "team", "--json", "--data-root",
                            str(storage / "crossmodal-data")], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "CROSSMODAL_STORE_KEY": KEY_A})
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["collections"] == ["notes"]
    plugin = daemon_plugin(storage, folder, home)
    try:
        found = json_message(plugin.invoke_tool("search", {"query": "a blue star", "target": "text", "top_k": 1},
                                                {**creds, "store_key": KEY_A}))
        assert found["results"][0]["payload"]["text"] == "a blue star"
        gone = json_message(plugin.invoke_tool("collections", {"action": "list"}, creds))
        assert gone["collections"] == []
    finally:
        plugin.close()


def test_store_keys_outside_dify_and_their_errors(tmp_path, monkeypatch):
    from crossmodal import locations

    monkeypatch.setenv("CROSSMODAL_HOME", str(tmp_path / "home"))
    plain = locations.resolve_data_dir(str(tmp_path / "mine"))
    keyed_a = locations.resolve_data_dir(str(tmp_path / "mine"), KEY_A)
    assert plain == tmp_path / "mine" and keyed_a.parent == tmp_path / "mine" / "keyed"
    assert keyed_a != locations.resolve_data_dir(str(tmp_path / "mine"), KEY_B)
    assert keyed_a == locations.resolve_data_dir(str(tmp_path / "mine"), f"  {KEY_A} ")
    with pytest.raises(CrossmodalError, match="store_key"):
        locations.resolve_data_dir("", "tooshort")
    with pytest.raises(CrossmodalError, match="no store"):
        locations.move_store_under_key(tmp_path / "empty", "team", KEY_A)
