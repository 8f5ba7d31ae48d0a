"""The bundled demo-shapes model: loaded through the production path, and genuinely trained.

Thresholds sit a little below what the model measured on these exact (deterministic) sets;
docs/evaluation.md gives the 1,000-scene figures from `python -m crossmodal eval`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crossmodal.encoders.models import DEMO_MODEL_DIR, get_encoder

ROOT = Path(__file__).resolve().parents[1]


def test_checkpoint_is_small_fp16_and_loads_like_a_hub_model():
    weights = DEMO_MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size <= 5 * 1024 * 1024
    encoder = get_encoder("demo-shapes", "cpu")
    assert encoder.identity == "demo-shapes" and encoder.model_type == "clip" and encoder.dim == 128
    from safetensors import safe_open

    with safe_open(weights, "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}


def test_it_knows_colours_and_positions():
    from crossmodal.lab.scenes import generate_scene

    encoder = get_encoder("demo-shapes", "cpu")
    scene = generate_scene(123_456_789, 320, 320, 1)
    o = scene.objects[0]
    image = encoder.encode_images([scene.image])[0]
    right = encoder.encode_texts([scene.captions["en"][0]]).vectors[0]
    other_colour = next(c for c in ("red", "blue", "green") if c != o.color)
    wrong = encoder.encode_texts([scene.captions["en"][0].replace(o.color, other_colour)]).vectors[0]
    assert float(image @ right) > float(image @ wrong) + 0.05


@pytest.fixture(scope="module")
def report():
    from crossmodal.lab.evaluation import run_eval

    return run_eval("demo-shapes", n=150, sets=("single_en", "single_zh", "double_en"))["sets"]


@pytest.mark.slow
def test_single_object_retrieval_in_english_and_chinese(report):
    for name in ("single_en", "single_zh"):
        assert report[name]["text_to_image"]["R@1"] >= 0.90, report[name]  # bundled model: 0.987 / 0.987
        assert report[name]["text_to_image"]["R@5"] >= 0.98, report[name]  # 1.0
        assert report[name]["image_to_text"]["R@1"] >= 0.90, report[name]  # 0.967 / 0.967


@pytest.mark.slow
def test_two_object_retrieval(report):
    assert report["double_en"]["text_to_image"]["R@5"] >= 0.95, report["double_en"]  # measured 0.993


def test_demo_command_runs_offline_and_is_idempotent(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "crossmodal", "demo", "--store", str(tmp_path / "store"),
               "--out", str(tmp_path / "demo.html"), "--json", "--pictures", str(tmp_path / "pictures")]
    first = json.loads(subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
                                      check=True).stdout)
    assert first["added"] == 60 and first["points"] == 60 and first["model"] == "demo-shapes"
    top1 = [row["hits"][0]["correct"] for row in first["queries"]]
    assert sum(top1) >= 5 and any("的" in row["query"] for row in first["queries"])
    html = (tmp_path / "demo.html").read_text()
    assert html.count("data:image/jpeg;base64,") == sum(len(r["hits"]) for r in first["queries"])
    from PIL import Image

    for name in ("align.png", "search.png"):
        picture = Image.open(tmp_path / "pictures" / name)
        assert picture.format == "PNG" and min(picture.size) >= 128
        assert (tmp_path / "pictures" / name).stat().st_size < 300_000
    second = json.loads(subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
                                       check=True).stdout)
    assert second["added"] == 0 and second["duplicates"] == 60 and second["points"] == 60
    assert np.isfinite([h["score"] for row in second["queries"] for h in row["hits"]]).all()
