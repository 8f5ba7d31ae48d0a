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
    from sentence_transformers import CrossEncoder

    from crossmodal.encoders.onnx_export import export_model
    from crossmodal.rerank.onnx_cross_encoder import OnnxCrossEncoder

    report = export_model(str(cross_encoder), tmp_path / "onnx-ce", int8=int8)
    assert report["kind"] == "cross-encoder" and "onnx/model.onnx" in report["files"]
    expected = CrossEncoder(str(cross_encoder), device="cpu").predict(PAIRS, show_progress_bar=False)
    ours = OnnxCrossEncoder(tmp_path / "onnx-ce").predict(PAIRS, batch_size=3)
    assert ours.shape == (len(PAIRS),) and np.abs(ours - expected).max() <= tolerance, (ours, expected)
    if not int8:
        assert list(np.argsort(-ours)) == list(np.argsort(-expected))


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
