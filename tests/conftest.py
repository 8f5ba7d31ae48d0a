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
# Reading text in pictures is asked for by the tests that check it (tests/test_ingest_ocr.py and the stdio tests
# that name ocr); the rest ingest as an admin who turned the default off would (CROSSMODAL_OCR_DEFAULT), so
# that thousands of generated images do not each pay for the text test.
os.environ.setdefault("CROSSMODAL_OCR_DEFAULT", "false")

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


METRICS_ADMIN_KEY = "admin-metrics-key-0123456789"  # the plugin's CROSSMODAL_METRICS_KEY in the tests


@pytest.fixture(scope="module")
def plugin():
    """``python -m main`` as Dify's daemon runs it, one process per test module."""
    from stdio_harness import PluginProcess

    process = PluginProcess(heartbeat_interval=0.25, env={"CROSSMODAL_METRICS_KEY": METRICS_ADMIN_KEY})
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
    # The libraries that only the tool package installs are missing here, as in a model package's environment.
    process = PluginProcess(cwd=folder, heartbeat_interval=0.25, missing=tool_package_only_modules())
    process.wait_ready()
    yield process
    process.close()
    assert not process.non_json and not process.oversized


def requirement_names(path) -> set[str]:
    import re

    lines = [line.split("#")[0].strip() for line in open(path, encoding="utf-8")]
    return {re.split(r"[<>=!~\[ ;]", line)[0].lower().replace("_", "-") for line in lines if line}


def tool_package_only_modules() -> tuple[str, ...]:
    """Top-level modules of the distributions in requirements.txt that model_provider/requirements.txt
    neither lists nor pulls in (its requirements' own dependencies, followed through installed metadata)."""
    from stdio_harness import ROOT

    return modules_outside(ROOT / "model_provider" / "requirements.txt", requirement_names(ROOT / "requirements.txt"))


def modules_outside(requirements, candidates: set[str] | None = None) -> tuple[str, ...]:
    """Top-level modules installed here whose distributions (among ``candidates``; default: all installed) the
    ``requirements`` file neither lists nor pulls in (their own dependencies, followed through installed
    metadata): what a plugin installed from that file could not import."""
    import re
    from importlib import metadata

    def normal(name: str) -> str:
        return re.split(r"[<>=!~\[ ;(]", name.strip())[0].lower().replace("_", "-")

    pulled, queue = set(), list(requirement_names(requirements))
    while queue:
        name = queue.pop()
        if name in pulled:
            continue
        pulled.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        queue += [normal(r) for r in requires if "extra ==" not in r]
    owners = metadata.packages_distributions()
    if candidates is None:
        candidates = {normal(d.metadata["Name"]) for d in metadata.distributions()}
    outside = set(candidates) - pulled
    return tuple(sorted(module for module, dists in owners.items()
                        if module.isidentifier() and {normal(d) for d in dists} <= outside))


@pytest.fixture(params=["embedded", "qdrant-client"])
def store(request, tmp_path):
    """Each store test runs against both backends: the embedded engine, and qdrant-client's local mode for the
    server's code path."""
    from qdrant_client import QdrantClient

    from crossmodal.store.edge import EdgeStore
    from crossmodal.store.remote import RemoteStore

    if request.param == "embedded":
        s = EdgeStore(tmp_path / "edge")
    else:
        s = RemoteStore(url="local", client=QdrantClient(path=str(tmp_path / "local")))
    yield s
    s.close()
