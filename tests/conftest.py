import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
