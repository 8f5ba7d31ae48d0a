"""ONNX Runtime fp32 / int8 towers, their on-disk cache, and the precision fallback chain."""

import json

import numpy as np
import pytest
from PIL import Image

from int8_checks import cpu_branch, int8_weight_range, worst_case_matmul

from crossmodal.encoders import acceleration
from crossmodal.encoders.int8 import PRECISE_U8S8, U8S8_SAFE_WEIGHT, u8s8_may_saturate
from crossmodal.encoders.models import PRECISION_AGREEMENT, get_encoder, load_encoder
from crossmodal.lab.scenes import generate_scene


@pytest.fixture()
def onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSMODAL_ONNX_CACHE", str(tmp_path / "onnx"))
    return tmp_path / "onnx"


@pytest.fixture(scope="module")
def scenes():
    images = [generate_scene(880_000_000 + k, 300, 260, 2).image for k in range(6)]
    texts = ["a red circle", "a small blue star on the left", "一个红色圆形和一个蓝色星形", "a large green heart"]
    return images, texts


def _vectors(encoder, images, texts):
    return np.vstack([encoder.encode_images(images), encoder.encode_texts(texts).vectors])


@pytest.mark.parametrize("precision", ["onnx", "int8"])
def test_onnx_runtimes_agree_with_fp32_and_are_cached(precision, onnx_cache, scenes, record_property):
    """int8 holds the bar on any x86-64 CPU: quantised here, with 8-bit weights where the CPU has VNNI and 7-bit
    ones (which its u8s8 kernels cannot saturate) where it has not; the test reports the branch it checked."""
    encoder = load_encoder("demo-shapes")
    reference = _vectors(encoder, *scenes)
    assert encoder.use_precision(precision) == precision and encoder.precision_note is None
    assert encoder.precision_agreement >= PRECISION_AGREEMENT
    fresh = _vectors(encoder, *scenes)  # inputs other than the calibration batch
    assert np.mean(np.sum(reference * fresh, axis=1)) >= PRECISION_AGREEMENT
    (entry,) = [p for p in onnx_cache.iterdir() if p.name.startswith(f"demo-shapes-{precision}-")]
    assert acceleration.verify(entry) is None
    if precision == "int8":
        branch = cpu_branch()
        record_property("cpu_branch", branch)
        print(f"int8 cache entry checked on {branch}")
        limit = U8S8_SAFE_WEIGHT if u8s8_may_saturate() else 127
        assert json.loads((entry / "manifest.json").read_text())["int8_weight_bits"] == (7 if limit < 127 else 8)
        for tower in ("vision", "text"):
            count, low, high = int8_weight_range(entry / f"{tower}.onnx")
            assert count > 0 and -limit <= low and high <= limit and max(-low, high) > limit // 2, (tower, branch)
    built = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
    again = load_encoder("demo-shapes")
    assert again.use_precision(precision) == precision
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == built, "the cached export was rebuilt"


@pytest.mark.parametrize("weight", [U8S8_SAFE_WEIGHT, 127])
def test_int8_kernels_are_exact_for_7_bit_weights_on_any_cpu(weight, tmp_path, record_property):
    """The worst case of ONNX Runtime's u8s8 product (activations at 255, weights at the edge of their range)
    against exact integers. 7-bit weights: exact on every CPU. Full 8-bit ones: exact with VNNI; without it,
    the pairs saturate int16 unless the precise mode is on. The CPU's flags say which branch was checked."""
    import onnxruntime as ort

    path, activations, exact = worst_case_matmul(tmp_path, weight)
    branch = cpu_branch()
    record_property("cpu_branch", branch)
    print(f"weights at {weight}, checked on {branch}")
    results = {}
    for precise in (False, True):
        options = ort.SessionOptions()
        if precise:
            options.add_session_config_entry(PRECISE_U8S8, "1")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        results[precise] = session.run(None, {"a": activations})[0]
    assert np.array_equal(results[True], exact), branch
    if weight <= U8S8_SAFE_WEIGHT or not u8s8_may_saturate():
        assert np.array_equal(results[False], exact), branch
    else:  # the hazard the 7-bit exports and the precise mode avoid: pairs of products clipped to 32,767
        assert np.all(results[False][:, 0] < exact[:, 0]), branch


def test_int8_weights_are_smaller(onnx_cache):
    encoder = load_encoder("demo-shapes")
    encoder.use_precision("onnx")
    encoder.use_precision("int8")
    sizes = {p.name.split("-")[2]: (p / "vision.onnx").stat().st_size for p in onnx_cache.iterdir()}
    assert sizes["int8"] < 0.5 * sizes["onnx"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no-manifest", "missing-file"])
def test_a_corrupt_cached_export_is_rebuilt_not_trusted(damage, onnx_cache, scenes):
    encoder = load_encoder("demo-shapes")
    reference = _vectors(encoder, *scenes)
    encoder.use_precision("onnx")
    (entry,) = list(onnx_cache.iterdir())
    vision = entry / "vision.onnx"
    if damage == "truncate":
        vision.write_bytes(vision.read_bytes()[:1000])
    elif damage == "garbage":
        vision.write_bytes(b"\x00" * vision.stat().st_size)
    elif damage == "no-manifest":
        (entry / "manifest.json").unlink()
    else:
        vision.unlink()
    assert acceleration.verify(entry) is not None
    again = load_encoder("demo-shapes")
    assert again.use_precision("onnx") == "onnx"
    assert "corrupt" in again.precision_note and "rebuilt" in again.precision_note
    assert acceleration.verify(entry) is None
    assert np.mean(np.sum(reference * _vectors(again, *scenes), axis=1)) >= PRECISION_AGREEMENT


def test_disagreement_falls_back_along_the_chain_and_says_so(onnx_cache, monkeypatch):
    import crossmodal.encoders.models as models

    monkeypatch.setattr(models, "PRECISION_AGREEMENT", 1.01)  # nothing but fp32 itself can pass
    encoder = load_encoder("demo-shapes")
    assert encoder.use_precision("int8") == "fp32"
    note = encoder.precision_note
    assert note.startswith("int8: its embeddings agree with fp32 at mean cosine")
    assert "bf16:" in note and note.endswith("running fp32")


def test_an_export_failure_falls_back_without_failing(onnx_cache, monkeypatch):
    def broken(encoder, out):
        raise RuntimeError("exporter exploded\nwith a long trace")

    monkeypatch.setattr(acceleration, "export_towers", broken)
    encoder = load_encoder("demo-shapes")
    used = encoder.use_precision("int8")
    assert "int8: the ONNX export failed (RuntimeError: exporter exploded)" in encoder.precision_note
    assert used in ("bf16", "fp32") and "\n" not in encoder.precision_note
    assert list(onnx_cache.iterdir()) == []  # the half-built staging directory was removed


def test_bf16_on_a_cpu_without_bf16_falls_back(monkeypatch):
    import crossmodal.encoders.models as models

    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    encoder = load_encoder("demo-shapes")
    assert encoder.use_precision("bf16") == "fp32"
    assert encoder.precision_note == "bf16: this CPU has no bf16 support; running fp32"


def test_cuda_without_a_gpu_runs_on_the_cpu_with_a_note():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    encoder = get_encoder("demo-shapes", "cuda")
    assert encoder.device == "cpu"
    assert "no GPU is visible: running on the CPU" in encoder.precision_note
    assert encoder.encode_images([Image.new("RGB", (40, 40), "red")]).shape == (1, encoder.dim)


def test_every_output_says_when_precision_fell_back(tmp_path, monkeypatch):
    import crossmodal.encoders.models as models
    from crossmodal.service import IngestItem, Service
    from crossmodal.settings import Settings

    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(models, "_ENCODERS", {})
    service = Service(Settings(data_dir=str(tmp_path / "store"), model="demo-shapes", precision="bf16"))
    report = service.ingest([IngestItem(text="a red circle")], "c")
    assert report["precision"] == "fp32" and "bf16: this CPU has no bf16 support" in report["warnings"][0]
    found = service.search("a red circle", collection="c", target="text")
    assert "bf16: this CPU has no bf16 support" in found["warnings"][0]
    assert service.embed(texts=["a red circle"])["precision"] == "fp32"


@pytest.mark.parametrize("family", ["chinese_clip", "siglip"])
def test_onnx_export_covers_the_other_families(family, onnx_cache, tiny_chinese_clip_dir, tmp_path):
    from tiny_models import save_tiny_siglip

    directory = tiny_chinese_clip_dir if family == "chinese_clip" else save_tiny_siglip(tmp_path / "siglip")
    encoder = load_encoder(str(directory))
    images = [generate_scene(k, 120, 90, 1).image for k in range(3)]
    texts = ["a red circle", "红色圆形", "a small blue star on the left"]
    reference = _vectors(encoder, images, texts)
    assert encoder.use_precision("onnx") == "onnx", encoder.precision_note
    assert np.allclose(_vectors(encoder, images, texts), reference, atol=1e-4)


def test_the_export_follows_the_weights_not_the_files_times(onnx_cache, tiny_clip_dir, tmp_path):
    """A model retrained in place gets a new export (never the old weights' towers); the same files
    written again (a fresh clone, a re-download: new modification times) reuse the cached one."""
    import os
    import shutil

    from tiny_models import save_tiny_clip

    model_dir = shutil.copytree(tiny_clip_dir, tmp_path / "model")
    before = acceleration.cache_key(load_encoder(str(model_dir)), "onnx")
    for path in model_dir.iterdir():
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert acceleration.cache_key(load_encoder(str(model_dir)), "onnx") == before
    save_tiny_clip(model_dir, seed=1)
    assert acceleration.cache_key(load_encoder(str(model_dir)), "onnx") != before
