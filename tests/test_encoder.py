import numpy as np
import pytest
from PIL import Image

from crossmodal.errors import CrossmodalError
from crossmodal.encoders.models import HubOptions, get_encoder, load_encoder, model_identity, resolve_model_dir


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return get_encoder(str(tiny_clip_dir), "cpu")


def test_loads_through_the_production_path_with_its_own_processor(encoder, tiny_clip_dir):
    assert encoder.identity == str(tiny_clip_dir.resolve())
    assert encoder.model_type == "clip" and encoder.dim == 16 and encoder.image_size == 32
    assert get_encoder(str(tiny_clip_dir), "cpu") is encoder  # one loaded encoder per (model, device)


def test_outputs_are_unit_float32_in_the_callers_order(encoder):
    images = [Image.new("RGB", (50, 30 + 10 * i), (40 * i, 0, 200)) for i in range(5)]
    texts = ["a red circle", "a blue star on the left", "红色圆形"]
    mixed = encoder.encode([texts[0], images[0], texts[1], images[1]], batch_size=2)
    assert mixed.dtype == np.float32 and mixed.shape == (4, 16)
    assert np.allclose(np.linalg.norm(mixed, axis=1), 1, atol=1e-5)
    one_by_one = np.stack([encoder.encode_images([im])[0] for im in images])
    assert np.allclose(encoder.encode_images(images, batch_size=2), one_by_one, atol=1e-5)
    assert np.allclose(mixed[0], encoder.encode_texts([texts[0]]).vectors[0], atol=1e-5)
    assert np.allclose(mixed[3], one_by_one[1], atol=1e-5)


def test_processor_output_matches_the_library(encoder, tiny_clip_dir):
    from transformers import AutoProcessor

    image = Image.new("RGB", (64, 40), (10, 200, 30))
    reference = AutoProcessor.from_pretrained(tiny_clip_dir)(images=[image], return_tensors="pt")["pixel_values"]
    ours = encoder.processor(images=[image], return_tensors="pt")["pixel_values"]
    assert np.allclose(reference.numpy(), ours.numpy())


def test_long_text_is_truncated_and_reported(encoder):
    result = encoder.encode_texts(["a red circle", "red " * 40])
    assert result.truncated == [1] and result.vectors.shape == (2, 16)


def test_model_names():
    assert model_identity("auto") == "clip-vit-base-patch32"
    assert model_identity("demo-shapes") == "demo-shapes"
    assert model_identity("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"


@pytest.mark.parametrize(
    "name, needle",
    [
        ("/definitely/not/here", "neither a preset"),
        ("no-slash-name", "neither a preset"),
        ("\u00c5\u00ff/\U0009c871\u00d9", "not a Hugging Face id"),  # the fuzzer's 500: the hub library's own error
        ("owner/" + "n" * 97, "not a Hugging Face id"),
        ("owner/na..me", "not a Hugging Face id"),
    ],
)
def test_unknown_models_are_clear_errors(name, needle):
    with pytest.raises(CrossmodalError) as info:
        resolve_model_dir(name)
    assert needle in str(info.value) and str(info.value).startswith("model:")


def test_offline_hub_miss_is_a_clear_error(tmp_path):
    hub = HubOptions(offline=True, cache_dir=str(tmp_path))
    with pytest.raises(CrossmodalError, match="not in the local cache and offline mode is on"):
        resolve_model_dir("openai/clip-vit-base-patch32", hub)


def test_hub_download_goes_to_the_configured_mirror(tmp_path, monkeypatch):
    """The endpoint, token and cache reach huggingface_hub (no network: the call is observed); a mirror's or a
    token's files go to a folder of their own under the cache (tests/test_workspaces_apart.py)."""
    import huggingface_hub

    seen = {}

    def fake_snapshot_download(repo_id, **kwargs):
        seen.update(kwargs, repo_id=repo_id)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    hub = HubOptions(endpoint="https://hf-mirror.example", token="hf_secret", cache_dir=str(tmp_path / "c"))
    assert resolve_model_dir("chinese-clip", hub) == tmp_path
    assert seen["repo_id"] == "OFA-Sys/chinese-clip-vit-base-patch16"
    assert (seen["endpoint"], seen["token"]) == ("https://hf-mirror.example", "hf_secret")
    assert seen["cache_dir"] == str(tmp_path / "c" / "scoped" / hub.scope())
    assert seen["local_files_only"] is False


def test_a_non_dual_encoder_is_refused(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(CrossmodalError, match="bert model"):
        load_encoder(str(tmp_path))


@pytest.mark.parametrize("family", ["chinese_clip", "siglip"])
def test_other_families_load_through_the_same_path(family, tmp_path):
    from tiny_models import save_tiny_chinese_clip, save_tiny_siglip

    directory = (save_tiny_chinese_clip if family == "chinese_clip" else save_tiny_siglip)(tmp_path / family)
    encoder = load_encoder(str(directory))
    assert encoder.model_type == family
    vectors = encoder.encode(["红色圆形", "a red circle", Image.new("RGB", (40, 40), "red")])
    assert vectors.shape == (3, encoder.dim) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_bf16_is_used_only_when_it_agrees_with_fp32(tiny_clip_dir):
    from crossmodal.encoders.models import PRECISION_AGREEMENT, load_encoder

    encoder = load_encoder(str(tiny_clip_dir), "cpu")
    used = encoder.use_precision("bf16")
    if used == "bf16":
        assert encoder.precision_agreement >= PRECISION_AGREEMENT and encoder.precision_note is None
    else:
        assert used == "fp32" and "fp32" in encoder.precision_note
    assert encoder.use_precision("fp32") == "fp32" and encoder.precision_note is None
    with pytest.raises(CrossmodalError, match="^precision"):
        encoder.use_precision("int3")


def test_a_loaded_model_is_found_while_another_loads_and_concurrent_loads_of_one_model_share_it(monkeypatch,
                                                                                              tiny_clip_dir):
    """A cheap lookup never waits behind another model's load (an External Knowledge call used to, behind a
    warm-up); two first uses of one model load it once; a failed load reaches its waiters and is retried."""
    import threading
    import time

    from crossmodal.encoders import models

    monkeypatch.setattr(models, "_ENCODERS", {})
    real_load, calls, gate = models.load_any_encoder, [], threading.Event()

    def slow_load(ref, device="cpu", hub=None):
        calls.append(ref.name)
        if ref.name == "slow-model":
            gate.wait(10)
            raise models.CrossmodalError("the hub is down", param="model")
        return real_load(ref, device, hub)

    monkeypatch.setattr(models, "load_any_encoder", slow_load)
    loaded = models.get_encoder(str(tiny_clip_dir), "cpu")
    outcomes = []

    def first_use():
        try:
            models.get_encoder("slow-model", "cpu")
        except models.CrossmodalError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=first_use) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # both wait on the slow load now
    found = []
    lookup = threading.Thread(target=lambda: found.append(models.get_encoder(str(tiny_clip_dir), "cpu")))
    lookup.start()
    lookup.join(5)
    assert found == [loaded] and all(t.is_alive() for t in threads)  # answered while the other load still runs
    assert models.loaded_encoder(str(tiny_clip_dir), "cpu") is loaded and models.loaded_encoder("slow-model") is None
    gate.set()
    for thread in threads:
        thread.join(10)
    assert calls.count("slow-model") == 1 and len(outcomes) == 2 and all("hub is down" in o for o in outcomes)
    with pytest.raises(models.CrossmodalError):
        models.get_encoder("slow-model", "cpu")  # a failure is not remembered: the next use tries again
    assert calls.count("slow-model") == 2
