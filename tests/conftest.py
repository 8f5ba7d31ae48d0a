import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# ONNX exports made by tests (and by the plugin processes they start) go to a throwaway cache.
os.environ.setdefault("CROSSMODAL_ONNX_CACHE", tempfile.mkdtemp(prefix="crossmodal-test-onnx-"))
# The default data root (and what the plugin remembers to warm at start) stays out of the user's home.
os.environ.setdefault("CROSSMODAL_HOME", tempfile.mkdtemp(prefix="crossmodal-test-home-"))

from tiny_models import save_tiny_clip  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture()
def data_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("CROSSMODAL_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def tiny_chinese_clip_dir(tmp_path_factory) -> Path:
    from tiny_models import save_tiny_chinese_clip

    return save_tiny_chinese_clip(tmp_path_factory.mktemp("tiny-chinese-clip"))


@pytest.fixture(scope="module")
def plugin():
    """``python -m main`` as Dify's daemon runs it, one process per test module."""
    from stdio_harness import PluginProcess

    process = PluginProcess(heartbeat_interval=0.25)
    process.wait_ready()
    yield process
    process.close()
    assert not process.non_json, f"stdout carried non-protocol lines: {process.non_json[:3]}"
    assert not process.oversized, f"stdout lines over the daemon's 5 MiB limit: {process.oversized}"


@pytest.fixture(scope="module")
def file_server(tmp_path_factory):
    """Dify's file server stand-in: a loopback HTTP server over a folder."""
    import functools
    import http.server
    import threading

    from stdio_harness import dify_file

    root = tmp_path_factory.mktemp("files")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def publish(name: str, data: bytes) -> dict:
        (root / name).write_bytes(data)
        return dify_file(f"http://127.0.0.1:{server.server_port}/{name}", name, len(data))

    yield publish
    server.shutdown()


@pytest.fixture(scope="module")
def models_plugin(tmp_path_factory):
    """The model-provider package, built and unpacked into a version folder as the daemon does, over stdio."""
    import zipfile

    from crossmodal.dify.packaging import build_package
    from stdio_harness import ROOT, PluginProcess

    package = build_package(ROOT, str(tmp_path_factory.mktemp("pkg") / "models.difypkg"), models=True)
    folder = tmp_path_factory.mktemp("cwd") / "crossmodal-models-0.1.0@abc123"
    zipfile.ZipFile(package).extractall(folder)
    process = PluginProcess(cwd=folder, heartbeat_interval=0.25)
    process.wait_ready()
    yield process
    process.close()
    assert not process.non_json and not process.oversized
