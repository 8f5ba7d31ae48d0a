"""Model references with VLM options (crossmodal/encoders/model_ref.py): what a collection records, how settings
and a collection's record meet, and the lean build's refusal. Nothing here loads a model."""

from __future__ import annotations

import pytest

from crossmodal.context import check_same_options
from crossmodal.encoders.model_ref import ModelOptions, ModelRef
from crossmodal.errors import CrossmodalError
from crossmodal.settings import Settings


def test_a_reference_round_trips_and_records_what_decides_vectors():
    ref = ModelRef.parse("qwen3-vl-embedding-2b?dimension=512&max_pixels=401408&instruction=Find+the+red+one.")
    assert ref.name == "qwen3-vl-embedding-2b"
    assert ref.options == ModelOptions(512, 401408, "Find the red one.")
    assert ModelRef.parse(str(ref)) == ref
    # max_pixels sets what an image costs, not the space: a collection does not record it.
    assert ref.identity_part() == "qwen3-vl-embedding-2b?dimension=512&instruction=Find+the+red+one."
    assert ModelRef.parse("clip-vit-base-patch32") == ModelRef("clip-vit-base-patch32")
    assert str(ModelRef("clip-vit-base-patch32")) == "clip-vit-base-patch32"


@pytest.mark.parametrize("ref, param, needle", [
    ("m?dimension=abc", "dimension", "whole number"),
    ("m?dimension=8", "dimension", "at least 32"),
    ("m?max_pixels=100", "max_pixels", "at least 4096"),
    ("m?size=3", "model", "unknown model option"),
])
def test_bad_options_name_their_parameter(ref, param, needle):
    with pytest.raises(CrossmodalError, match=needle) as error:
        ModelRef.parse(ref)
    assert error.value.param == param


def test_settings_read_the_options_from_credentials():
    settings = Settings.from_credentials({"dimension": "256", "max_pixels": "", "instruction": "  "})
    assert settings.model_options == ModelOptions(dimension=256)
    assert not Settings.from_credentials({}).model_options
    with pytest.raises(CrossmodalError) as error:
        Settings.from_credentials({"dimension": "-1"})
    assert error.value.param == "dimension"


def test_a_collection_keeps_its_size_and_instruction():
    made = ModelRef.parse("qwen3-vl-embedding-2b?dimension=512")
    check_same_options(ModelRef("qwen3-vl-embedding-2b"), made)  # nothing asked: the collection's own
    check_same_options(ModelRef("qwen3-vl-embedding-2b", ModelOptions(512, 100_000)), made)
    with pytest.raises(CrossmodalError, match="512-d") as error:
        check_same_options(ModelRef("qwen3-vl-embedding-2b", ModelOptions(dimension=1024)), made)
    assert error.value.param == "dimension"
    with pytest.raises(CrossmodalError, match="prompt style") as error:
        check_same_options(ModelRef("qwen3-vl-embedding-2b", ModelOptions(instruction="Other.")), made)
    assert error.value.param == "instruction"


def test_options_on_a_dual_encoder_are_an_error(tmp_path):
    from crossmodal.encoders.models import get_encoder

    with pytest.raises(CrossmodalError, match="dual encoder, which takes no options"):
        get_encoder("demo-shapes?dimension=64", "cpu")


def test_the_lean_build_refuses_vlm_models_by_name(monkeypatch):
    from crossmodal.dify.validation import validate_model
    from crossmodal.encoders.models import get_encoder
    from crossmodal.rerank.scoring import load_cross_encoder

    monkeypatch.setenv("CROSSMODAL_ENGINE", "onnx")
    for name in ("qwen3-vl-embedding-2b", "qwen3-vl-embedding-8b?dimension=512"):
        with pytest.raises(CrossmodalError, match="full package"):
            get_encoder(name, "cpu")
    with pytest.raises(CrossmodalError, match="full package"):
        load_cross_encoder("qwen3-vl-reranker-2b")
    with pytest.raises(CrossmodalError, match="full package"):
        validate_model(Settings(model="qwen3-vl-embedding-2b"))
