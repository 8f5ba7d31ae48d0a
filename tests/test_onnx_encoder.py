"""The torch-free encoder (issue 30, first part): an export in the hub's ONNX layout, loaded with onnxruntime,
tokenizers and numpy only, gives the torch encoder's vectors; a corrupt file is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a red circle", "a small blue star on the left of a large green square", "一个蓝色星形",
         " ".join(["a red circle"] * 20)]  # past the demo model's 32-token context


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from crossmodal.encoders.onnx_export import export_model

    out = tmp_path_factory.mktemp("export") / "demo-onnx"
    export_model("demo-shapes", out)
    return out


def scenes(n: int = 4):
    from crossmodal.lab.scenes import generate_scene

    return [generate_scene(6_000 + k, 200 + 40 * k, 180, 2).image for k in range(n)]


def test_the_export_has_the_hub_layout(exported):
    names = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
    assert {"onnx/vision_model.onnx", "onnx/text_model.onnx", "tokenizer.json", "preprocessor_config.json",
            "config.json", "crossmodal_onnx.json"} <= names


def test_vectors_agree_with_the_torch_encoder(exported):
    from crossmodal.encoders.models import get_encoder
    from crossmodal.encoders.onnx_encoder import OnnxEncoder

    lean, full = OnnxEncoder(exported), get_encoder("demo-shapes", "cpu")
    assert (lean.identity, lean.dim, lean.context_length) == (full.identity, full.dim, full.context_length)
    ours, theirs = lean.encode_texts(TEXTS), full.encode_texts(TEXTS)
    assert ours.truncated == theirs.truncated == [3]
    assert lean.token_counts(TEXTS) == full.token_counts(TEXTS)
    assert np.min(np.sum(ours.vectors * theirs.vectors, axis=1)) >= 0.9999
    images = scenes()
    assert np.min(np.sum(lean.encode_images(images) * full.encode_images(images), axis=1)) >= 0.9999


def test_a_corrupt_export_is_refused(exported, tmp_path):
    import shutil

    from crossmodal.encoders.onnx_encoder import OnnxEncoder
    from crossmodal.errors import CrossmodalError

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    with open(copy / "onnx" / "text_model.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(CrossmodalError, match="text_model.onnx does not match its recorded sha256"):
        OnnxEncoder(copy)


def test_the_lean_encoder_runs_with_torch_and_transformers_unimportable(exported):
    code = f"""
import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "sentence_transformers"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Missing())
from crossmodal.encoders.onnx_encoder import OnnxEncoder
encoder = OnnxEncoder({str(exported)!r})
print(encoder.encode_texts(["a red circle"]).vectors.shape)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    dim = json.loads((exported / "crossmodal_onnx.json").read_text())["dimension"]
    assert result.stdout.strip() == f"(1, {dim})"


def test_the_export_command_writes_int8_towers_that_agree(tmp_path):
    """The CLI stage, with --int8: ONNX Runtime's dynamic quantisation, within the precision check's bound on
    any x86-64 CPU: its weights stay in 7 bits, which the u8s8 kernels without VNNI cannot saturate."""
    import json

    from int8_checks import int8_weight_range

    from crossmodal.encoders.int8 import U8S8_SAFE_WEIGHT, uses_precise_mode
    from crossmodal.encoders.models import get_encoder
    from crossmodal.encoders.onnx_encoder import OnnxEncoder

    out = tmp_path / "int8"
    result = subprocess.run([sys.executable, "-m", "crossmodal", "export", "demo-shapes", "--out", str(out), "--int8",
                             "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["quantized"] is True
    assert json.loads((out / "crossmodal_onnx.json").read_text())["int8_weight_bits"] == 7
    for tower in ("vision", "text"):
        count, low, high = int8_weight_range(out / "onnx" / f"{tower}_model_quantized.onnx")
        assert count > 0 and -U8S8_SAFE_WEIGHT <= low and high <= U8S8_SAFE_WEIGHT, (tower, low, high)
    lean, full = OnnxEncoder(out), get_encoder("demo-shapes", "cpu")
    assert lean.precision == "int8" and not uses_precise_mode(lean.vision)  # the fast kernels, on every CPU
    images = scenes()
    assert np.mean(np.sum(lean.encode_images(images) * full.encode_images(images), axis=1)) >= 0.999
    assert np.mean(np.sum(lean.encode_texts(TEXTS).vectors * full.encode_texts(TEXTS).vectors, axis=1)) >= 0.999
    again = subprocess.run([sys.executable, "-m", "crossmodal", "export", "demo-shapes", "--out", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "is not empty" in again.stderr


def published_layout(exported: Path, folder: Path, int8_from: Path | None = None, full_range: bool = False) -> Path:
    """Our export as a published one looks: no manifest or calibration, CLIP's output names (image_embeds,
    text_embeds, as optimum and transformers.js name them), optionally the _quantized towers beside: from
    ``int8_from``, or with ``full_range`` quantised here with full 8-bit weights, as published exports may be."""
    import shutil

    import onnx

    from crossmodal.encoders.int8 import quantize_int8

    shutil.copytree(exported, folder)
    for name in ("crossmodal_onnx.json", "crossmodal_calibration.json"):
        (folder / name).unlink(missing_ok=True)
    for tower, output in (("vision", "image_embeds"), ("text", "text_embeds")):
        path = folder / "onnx" / f"{tower}_model.onnx"
        graph = onnx.load(str(path))
        old = graph.graph.output[0].name
        for node in graph.graph.node:
            node.output[:] = [output if o == old else o for o in node.output]
        graph.graph.output[0].name = output
        onnx.save(graph, str(path))
        if int8_from is not None:
            shutil.copy(int8_from / "onnx" / f"{tower}_model_quantized.onnx", folder / "onnx")
        elif full_range:
            shutil.copy(path, folder / "onnx" / f"{tower}_model_quantized.onnx")
            quantize_int8(folder / "onnx" / f"{tower}_model_quantized.onnx", weight_bits=8)
    return folder


def test_a_published_export_loads_by_directory_and_by_hub_id(exported, tmp_path, monkeypatch):
    """The hub's layout without our manifest (the Xenova/ exports): read from config.json, by directory and, from
    the hub cache with offline mode on, by id."""
    import shutil

    from crossmodal.encoders.models import get_encoder
    from crossmodal.encoders.onnx_encoder import TRAINED_CLIP_SCALE, load_onnx_encoder

    monkeypatch.setenv("CROSSMODAL_ENGINE", "onnx")
    folder = published_layout(exported, tmp_path / "published")
    full = get_encoder("demo-shapes", "cpu")
    images = scenes()
    snapshot = tmp_path / "hub" / "models--Xenova--demo-shapes" / "snapshots" / "0123abcd"
    shutil.copytree(folder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in (str(folder), "Xenova/demo-shapes"):
        lean = load_onnx_encoder(name, None, "fp32")
        assert (lean.identity, lean.dim, lean.context_length, lean.precision) == (name, full.dim, full.context_length,
                                                                                   "onnx")
        assert lean.logit_scale == TRAINED_CLIP_SCALE and lean.logit_bias is None and lean.weights != full.weights
        assert np.min(np.sum(lean.encode_texts(TEXTS).vectors * full.encode_texts(TEXTS).vectors, axis=1)) >= 0.9999
        assert np.min(np.sum(lean.encode_images(images) * full.encode_images(images), axis=1)) >= 0.9999
    noted = load_onnx_encoder(str(folder), None, "int8")
    assert noted.precision == "onnx" and "no int8 towers" in noted.precision_note


@pytest.mark.parametrize("weights", ["ours (7-bit)", "full 8-bit"])
def test_int8_towers_are_checked_against_fp32_and_fall_back(weights, exported, tmp_path, monkeypatch,
                                                            record_property):
    """int8 towers in the published layout pass the agreement check on any x86-64 CPU: ours by their 7-bit
    weights, full 8-bit ones (as a published export may hold) by ONNX Runtime's precise kernels where the CPU
    has no VNNI, the branch this test reports."""
    from int8_checks import cpu_branch

    from crossmodal.encoders import catalog
    from crossmodal.encoders.int8 import u8s8_may_saturate, uses_precise_mode
    from crossmodal.encoders.onnx_encoder import load_onnx_encoder
    from crossmodal.encoders.onnx_export import export_model

    if weights == "full 8-bit":
        folder = published_layout(exported, tmp_path / "both", full_range=True)
    else:
        export_model("demo-shapes", tmp_path / "int8", int8=True)
        folder = published_layout(exported, tmp_path / "both", int8_from=tmp_path / "int8")
    monkeypatch.setenv("CROSSMODAL_ENGINE", "onnx")
    checked = load_onnx_encoder(str(folder), None, "int8")
    branch = cpu_branch()
    record_property("cpu_branch", branch)
    print(f"{weights} int8 weights, checked on {branch}")
    # A published export says nothing of its weights: on a CPU without VNNI its int8 runs the precise kernels.
    assert uses_precise_mode(checked.vision) == u8s8_may_saturate(), branch
    assert checked.precision == "int8" and checked.precision_agreement >= 0.999 and checked.precision_note is None, \
        (branch, checked.precision_note)
    monkeypatch.setattr(catalog, "PRECISION_AGREEMENT", 1.01)  # nothing but fp32 itself can pass
    fallen = load_onnx_encoder(str(folder), None, "int8")
    assert fallen.precision == "onnx" and "agree with fp32" in fallen.precision_note


@pytest.mark.parametrize("kind", ["siglip", "chinese_clip"])
def test_siglip_and_chinese_clip_exports_agree_and_calibrate_alike(kind, tmp_path):
    """SigLIP: padded to its context, no text mask, its own logit bias; Chinese-CLIP: a BERT tokenizer."""
    import tiny_models

    from crossmodal.alignment.calibration import default_calibration
    from crossmodal.encoders.models import load_encoder
    from crossmodal.encoders.onnx_encoder import OnnxEncoder
    from crossmodal.encoders.onnx_export import export_model

    model = getattr(tiny_models, f"save_tiny_{kind}")(tmp_path / kind)
    export_model(str(model), tmp_path / "onnx")
    lean, full = OnnxEncoder(tmp_path / "onnx"), load_encoder(str(model))
    texts = ["a red circle", "一个蓝色星形", "a " * 40]
    ours, theirs = lean.encode_texts(texts), full.encode_texts(texts)
    assert ours.truncated == theirs.truncated and lean.token_counts(texts) == full.token_counts(texts)
    assert np.min(np.sum(ours.vectors * theirs.vectors, axis=1)) >= 0.9999
    images = scenes(2)
    assert np.min(np.sum(lean.encode_images(images) * full.encode_images(images), axis=1)) >= 0.9999
    ours, theirs = default_calibration(lean), default_calibration(full)
    assert (ours.a, ours.b, ours.source) == (pytest.approx(theirs.a), pytest.approx(theirs.b), theirs.source)
    assert (lean.logit_bias is None) == (kind != "siglip")


def test_published_config_defaults_are_transformers_own():
    """A published config.json may leave out whatever equals the library's default; the lean runtime's table of
    those defaults must be the library's."""
    import transformers

    from crossmodal.encoders.onnx_encoder import CONFIG_DEFAULTS

    classes = {"clip": "CLIP", "chinese_clip": "ChineseCLIP", "siglip": "Siglip", "siglip2": "Siglip2"}
    for model_type, prefix in classes.items():
        expected = CONFIG_DEFAULTS[model_type]
        text, vision = getattr(transformers, f"{prefix}TextConfig")(), getattr(transformers, f"{prefix}VisionConfig")()
        for key, value in expected["text"].items():
            assert getattr(text, key) == value, (model_type, key)
        for key, value in expected["vision"].items():
            if model_type == "siglip2" and key == "image_size":
                continue  # SigLIP 2 (NaFlex) has no fixed image size; its exports give one in preprocessor_config
            assert getattr(vision, key) == value, (model_type, key)
        assert getattr(getattr(transformers, f"{prefix}Config")(), "projection_dim", None) == expected["projection_dim"]
