"""The text cross-encoder on ONNX Runtime (the lean build's) against sentence-transformers' CrossEncoder."""

from __future__ import annotations

import numpy as np
import pytest

from crossmodal.errors import CrossmodalError

PAIRS = [("a red circle", "a circle that is red"), ("a red circle", "a blue star on the left"),
         ("一个红色的圆", "a red circle"), ("short", "a long passage " * 40)]  # the last is truncated


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory):
    from tiny_models import save_tiny_cross_encoder

    return save_tiny_cross_encoder(tmp_path_factory.mktemp("ce"))


@pytest.mark.parametrize("int8, tolerance", [(False, 1e-5), (True, 2e-2)])
def test_onnx_scores_equal_the_librarys(cross_encoder, tmp_path, int8, tolerance):
    """int8 within its bound on any x86-64 CPU: 7-bit weights, which u8s8 kernels without VNNI cannot saturate."""
    from int8_checks import int8_weight_range
    from sentence_transformers import CrossEncoder

    from crossmodal.encoders.int8 import U8S8_SAFE_WEIGHT, uses_precise_mode
    from crossmodal.encoders.onnx_export import export_model
    from crossmodal.rerank.onnx_cross_encoder import OnnxCrossEncoder

    report = export_model(str(cross_encoder), tmp_path / "onnx-ce", int8=int8)
    assert report["kind"] == "cross-encoder" and "onnx/model.onnx" in report["files"]
    expected = CrossEncoder(str(cross_encoder), device="cpu").predict(PAIRS, show_progress_bar=False)
    loaded = OnnxCrossEncoder(tmp_path / "onnx-ce")
    ours = loaded.predict(PAIRS, batch_size=3)
    assert ours.shape == (len(PAIRS),) and np.abs(ours - expected).max() <= tolerance, (ours, expected)
    assert not uses_precise_mode(loaded.session)  # our export, fp32 or 7-bit: the fast kernels on every CPU
    if int8:
        count, low, high = int8_weight_range(tmp_path / "onnx-ce" / "onnx" / "model.onnx")
        assert count > 0 and -U8S8_SAFE_WEIGHT <= low and high <= U8S8_SAFE_WEIGHT, (low, high)
    else:
        assert list(np.argsort(-ours)) == list(np.argsort(-expected))


def test_a_published_int8_graph_runs_the_precise_kernels_without_vnni(cross_encoder, tmp_path, record_property):
    """A published graph carries no manifest: should it hold full 8-bit int8 weights, a CPU without VNNI runs
    it with ONNX Runtime's precise u8u8 kernels (and one with VNNI with its fast ones), within the same bound."""
    from int8_checks import cpu_branch
    from sentence_transformers import CrossEncoder

    from crossmodal.encoders.int8 import quantize_int8, u8s8_may_saturate, uses_precise_mode
    from crossmodal.encoders.onnx_encoder import MANIFEST
    from crossmodal.encoders.onnx_export import export_model
    from crossmodal.rerank.onnx_cross_encoder import GRAPH, OnnxCrossEncoder

    export_model(str(cross_encoder), tmp_path / "published")
    (tmp_path / "published" / MANIFEST).unlink()
    quantize_int8(tmp_path / "published" / GRAPH, weight_bits=8)
    loaded = OnnxCrossEncoder(tmp_path / "published")
    branch = cpu_branch()
    record_property("cpu_branch", branch)
    print(f"checked on {branch}")
    assert uses_precise_mode(loaded.session) == u8s8_may_saturate(), branch
    expected = CrossEncoder(str(cross_encoder), device="cpu").predict(PAIRS, show_progress_bar=False)
    assert np.abs(loaded.predict(PAIRS, batch_size=3) - expected).max() <= 2e-2, branch


def test_the_scoring_layer_runs_an_export_without_torch_code(cross_encoder, tmp_path):
    from crossmodal.encoders.onnx_export import export_model
    from crossmodal.rerank import scoring

    export_model(str(cross_encoder), tmp_path / "onnx-ce")
    loaded = scoring.load_cross_encoder(str(tmp_path / "onnx-ce"))
    assert type(loaded).__name__ == "OnnxCrossEncoder"
    candidates = [scoring.Candidate(str(i), text=t) for i, (_, t) in enumerate(PAIRS[:2])]
    via_library = scoring.cross_encoder_scores(scoring.load_cross_encoder(str(cross_encoder)), "a red circle",
                                               candidates)
    assert np.allclose(scoring.cross_encoder_scores(loaded, "a red circle", candidates), via_library, atol=1e-5)


def test_a_corrupt_export_is_refused(cross_encoder, tmp_path):
    from crossmodal.encoders.onnx_export import export_model
    from crossmodal.rerank.onnx_cross_encoder import OnnxCrossEncoder

    export_model(str(cross_encoder), tmp_path / "onnx-ce")
    graph = tmp_path / "onnx-ce" / "onnx" / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(CrossmodalError, match="model.onnx does not match"):
        OnnxCrossEncoder(tmp_path / "onnx-ce")
    with pytest.raises(CrossmodalError, match="holds no onnx/model.onnx"):
        OnnxCrossEncoder(cross_encoder)
