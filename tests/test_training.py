import json
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from crossmodal.errors import CrossmodalError
from crossmodal.lab.training import JsonlPairs, TrainConfig, TrainReport, multi_positive_infonce, train


def test_loss_equals_clip_loss_when_only_the_diagonal_is_positive():
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(math.log(10.0))
    logits = 10.0 * text @ image.t()
    labels = torch.arange(6)
    reference = (torch.nn.functional.cross_entropy(logits, labels)
                 + torch.nn.functional.cross_entropy(logits.t(), labels)) / 2
    assert torch.allclose(multi_positive_infonce(image, text, scale, torch.eye(6)), reference, atol=1e-6)


def test_repeated_captions_are_not_pushed_apart():
    """Pairs 0 and 1 share a caption. Without the mask, pulling their embeddings apart lowers the
    loss (they are treated as negatives); with the mask, keeping them together is as good or better."""
    scale = torch.tensor(math.log(100.0))
    norm = torch.nn.functional.normalize
    together = norm(torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]]), dim=-1)
    apart = norm(torch.tensor([[1.0, 0.3, 0], [1.0, -0.3, 0], [0, 0, 1.0]]), dim=-1)
    mask = torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]])
    eye = torch.eye(3)
    assert multi_positive_infonce(apart, apart, scale, eye) < multi_positive_infonce(together, together, scale, eye)
    assert multi_positive_infonce(together, together, scale, mask) <= multi_positive_infonce(apart, apart, scale, mask)


def write_pairs(tmp_path, n=12):
    from crossmodal.lab.scenes import generate_scene

    lines = []
    for k in range(n):
        scene = generate_scene(k, 96, 96, 1)
        scene.image.save(tmp_path / f"{k}.png")
        lines.append(json.dumps({"image": f"{k}.png", "caption": scene.captions["en"][0]}))
    lines += [json.dumps({"image": "missing.png", "caption": "x"}), json.dumps({"image": "0.png", "caption": " "}),
              "{not json"]
    (tmp_path / "bad.png").write_bytes(b"nope")
    lines.append(json.dumps({"image": "bad.png", "caption": "a thing"}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines))
    return tmp_path / "pairs.jsonl"


def test_jsonl_bad_lines_are_skipped_with_reasons(tmp_path, tiny_clip_dir):
    from crossmodal.encoders.models import load_encoder

    report = TrainReport()
    data = JsonlPairs(str(write_pairs(tmp_path)), load_encoder(str(tiny_clip_dir)).processor, 0, report)
    assert len(data) == 12 and report.skipped == 4
    assert any("missing file" in r for r in report.skip_reasons)
    assert any("empty caption" in r for r in report.skip_reasons)
    images, captions, mask = data.batch(8)
    assert images.shape[0] == 8 and mask.shape == (8, 8) and torch.all(mask.diagonal() == 1)


def test_jsonl_without_usable_pairs_is_a_clear_error(tmp_path, tiny_clip_dir):
    (tmp_path / "empty.jsonl").write_text('{"image": "none.png", "caption": "x"}\n')
    with pytest.raises(CrossmodalError, match="no usable"):
        train(TrainConfig(out=str(tmp_path / "out"), init=str(tiny_clip_dir), pairs=str(tmp_path / "empty.jsonl")))


def test_fine_tuning_a_checkpoint_on_pairs_lowers_the_loss(tmp_path, tiny_clip_dir):
    from crossmodal.encoders.models import load_encoder

    out = tmp_path / "tuned"
    report = train(TrainConfig(out=str(out), init=str(tiny_clip_dir), pairs=str(write_pairs(tmp_path)), steps=40,
                   batch_size=12, lr=3e-3, warmup=2, log_every=5, bf16=False))
    first, last = report.history[0][1], report.history[-1][1]
    assert report.pairs == 12 and last < first * 0.7, report.history
    tuned = load_encoder(str(out))  # the production path reads what training wrote
    assert tuned.dim == 16


def test_new_demo_model_trains_on_generated_scenes(tmp_path):
    report = train(TrainConfig(out=str(tmp_path / "demo"), steps=3, batch_size=8, scenes=16, warmup=1, log_every=1))
    assert report.steps == 3 and math.isfinite(report.final_loss)
    assert (tmp_path / "demo" / "model.safetensors").stat().st_size < 5_000_000
    assert (tmp_path / "demo" / "tokenizer.json").is_file()


def test_resize_input_shows_the_tower_larger_images_through_the_production_path(tmp_path, tiny_clip_dir):
    from crossmodal.encoders.models import load_encoder
    from crossmodal.lab.training import resize_input, save_checkpoint

    encoder = load_encoder(str(tiny_clip_dir))
    model, processor = encoder.model.float(), encoder.processor
    old = model.config.vision_config.image_size
    patch = model.config.vision_config.patch_size
    with pytest.raises(CrossmodalError) as err:
        resize_input(model, processor, old + patch // 2 + 1)
    assert err.value.param == "image_size"
    new = old + 2 * patch
    resize_input(model, processor, new)
    assert model.vision_model.embeddings.position_embedding.weight.shape[0] == (new // patch) ** 2 + 1
    save_checkpoint(model, processor, str(tmp_path / "bigger"), fp16=False)
    bigger = load_encoder(str(tmp_path / "bigger"))
    assert bigger.image_size == new
    assert bigger.preprocess([Image.new("RGB", (300, 200), "red")]).shape[-1] == new
    vectors = bigger.encode_images([Image.new("RGB", (300, 200), "red")])
    assert np.isfinite(vectors).all() and abs(float(np.linalg.norm(vectors[0])) - 1) < 1e-4
    assert torch.equal(model.vision_model.embeddings.position_ids[0, -1], torch.tensor((new // patch) ** 2))


def test_grown_vision_tower_computes_the_same_vectors_and_then_learns(tmp_path, tiny_clip_dir):
    from crossmodal.encoders.models import load_encoder
    from crossmodal.lab.training import grow_vision_layers, save_checkpoint

    encoder = load_encoder(str(tiny_clip_dir))
    model = encoder.model.float()
    images = [Image.new("RGB", (90, 70), "red"), Image.new("RGB", (64, 64), "blue")]
    before = encoder.encode_images(images)
    layers = model.config.vision_config.num_hidden_layers
    with pytest.raises(CrossmodalError) as err:
        grow_vision_layers(model, layers - 1)
    assert err.value.param == "vision_layers"
    grow_vision_layers(model, layers + 2)
    save_checkpoint(model, encoder.processor, str(tmp_path / "deeper"), fp16=False)
    deeper = load_encoder(str(tmp_path / "deeper"))
    assert len(deeper.model.vision_model.encoder.layers) == layers + 2
    np.testing.assert_allclose(deeper.encode_images(images), before, atol=1e-5)
    # The new layers are not dead: their zeroed projections receive gradients.
    colours = ("red", "blue", "green", "white")
    for colour in colours:
        Image.new("RGB", (64, 64), colour).save(tmp_path / f"{colour}.png")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"image": f"{c}.png", "caption": f"a {c} picture"}) for c in colours))
    train(TrainConfig(out=str(tmp_path / "trained"), init=str(tmp_path / "deeper"), pairs=str(pairs), steps=2,
                      batch_size=4, warmup=1, lr=1e-2, save_fp16=False))
    trained = load_encoder(str(tmp_path / "trained")).model
    assert trained.vision_model.encoder.layers[-1].mlp.fc2.weight.abs().sum() > 0


def test_pruned_text_mlp_keeps_the_units_that_carry_the_text(tmp_path, tiny_clip_dir):
    from crossmodal.encoders.models import load_encoder
    from crossmodal.lab.training import prune_text_mlp, save_checkpoint

    encoder = load_encoder(str(tiny_clip_dir))
    model = encoder.model.float()
    have = model.config.text_config.intermediate_size
    keep = have // 2
    # Silence every other unit: what it writes back is zero, so the text vectors are the kept units' alone.
    with torch.no_grad():
        for layer in model.text_model.encoder.layers:
            layer.mlp.fc2.weight[:, 1::2] = 0
    texts = ["a red circle", "a blue star on the left"]
    before = encoder.encode_texts(texts).vectors
    for bad in (0, have + 1):
        with pytest.raises(CrossmodalError) as err:
            prune_text_mlp(model, bad)
        assert err.value.param == "text_mlp"
    prune_text_mlp(model, keep)
    save_checkpoint(model, encoder.processor, str(tmp_path / "narrow"), fp16=False)
    narrow = load_encoder(str(tmp_path / "narrow"))
    assert narrow.model.config.text_config.intermediate_size == keep
    assert all(layer.mlp.fc1.out_features == keep for layer in narrow.model.text_model.encoder.layers)
    np.testing.assert_allclose(narrow.encode_texts(texts).vectors, before, atol=1e-5)
    # A narrower tower still computes something else when live units go.
    prune_text_mlp(narrow.model.float(), keep // 2)
    assert not np.allclose(narrow.encode_texts(texts).vectors, before, atol=1e-3)


def test_generated_batches_mix_crops_and_two_object_hard_negatives():
    from crossmodal.encoders.models import load_encoder, model_identity
    from crossmodal.lab.training import GeneratedPairs

    processor = load_encoder(model_identity("demo-shapes")).processor
    data = GeneratedPairs(400, 3, 32, processor)
    crops = [i for i in range(len(data)) if not data.relative[i]]
    assert len(crops) >= 40  # about one per two multi-object scenes
    images, captions, mask = data.batch(96)
    assert images.shape == (96, 3, 32, 32) and mask.shape == (96, 96)
    assert all(mask[i, i] == 1 for i in range(96))  # every caption is true of its own image
    chosen = data._indexes(96)
    pairs = [i for i in chosen if data.relative[i] and len(data.objects[i]) == 2]
    shape_pairs = [tuple(sorted(o.shape for o in data.objects[i])) for i in pairs]
    assert max(shape_pairs.count(k) for k in set(shape_pairs)) >= 4  # groups sharing both shapes


def test_texts_past_the_images_are_negatives_only():
    """Rows after the paired captions that are true of no image are not text->image queries (no target),
    but every image must rank its caption above them: a negative close to an image raises the loss."""
    scale = torch.tensor(math.log(100.0))
    norm = torch.nn.functional.normalize
    images = norm(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), dim=-1)
    captions = images.clone()
    far, near = norm(torch.tensor([[0, 0, 1.0]]), dim=-1), norm(torch.tensor([[1.0, 0.1, 0]]), dim=-1)
    mask = torch.tensor([[1.0, 0], [0, 1], [0, 0]])
    paired_only = multi_positive_infonce(images, captions, scale, torch.eye(2))
    with_far = multi_positive_infonce(images, torch.cat([captions, far]), scale, mask)
    with_near = multi_positive_infonce(images, torch.cat([captions, near]), scale, mask)
    assert torch.isfinite(with_near) and paired_only <= with_far < with_near
    # Exactly CLIP's loss with the extra column: text->image over the paired rows, image->text over all.
    texts = torch.cat([captions, near])
    logits = 100.0 * texts @ images.t()
    labels = torch.arange(2)
    reference = (torch.nn.functional.cross_entropy(logits[:2], labels)
                 + torch.nn.functional.cross_entropy(logits.t(), labels)) / 2
    assert torch.allclose(with_near, reference, atol=1e-6)


def test_shape_negatives_change_one_shape_word_and_are_false_of_their_image():
    from crossmodal.encoders.models import load_encoder, model_identity
    from crossmodal.lab.scenes import SHAPES, ZH_SHAPES
    from crossmodal.lab.training import GeneratedPairs

    processor = load_encoder(model_identity("demo-shapes")).processor
    data = GeneratedPairs(400, 4, 32, processor, shape_negatives=True)
    images, captions, mask = data.batch(48)
    assert images.shape[0] == 48 and len(captions) == 96 and mask.shape == (96, 48)
    assert all(mask[i, i] == 1 for i in range(48))
    shape_words = set(SHAPES) | set(ZH_SHAPES.values())
    false_of_own = 0
    for k in range(48):
        caption, negative = captions[k], captions[48 + k]
        assert caption != negative
        # Same template: the texts differ only where a shape word was replaced by another.
        rest_caption, rest_negative = caption, negative
        for word in sorted(shape_words, key=len, reverse=True):
            rest_caption, rest_negative = rest_caption.replace(word, "#"), rest_negative.replace(word, "#")
        assert rest_caption == rest_negative, (caption, negative)
        false_of_own += mask[48 + k, k] == 0
    assert false_of_own >= 44  # true only when the changed object's twin (same colour, new shape) is there


def test_mined_negatives_are_the_one_shape_swap_the_model_puts_closest_to_each_image():
    from crossmodal.encoders.models import load_encoder, model_identity
    from crossmodal.lab.scenes import SHAPES, ZH_SHAPES, scene_satisfies
    from crossmodal.lab.training import GeneratedPairs, _features, closest_swaps

    encoder = load_encoder(model_identity("demo-shapes"))
    model, tokenizer = encoder.model.float().eval(), encoder.processor.tokenizer
    data = GeneratedPairs(300, 5, 160, encoder.processor)
    batch = data.batch_with_swaps(24)
    shape_words = sorted(set(SHAPES) | set(ZH_SHAPES.values()), key=len, reverse=True)

    def without_shapes(text):
        for word in shape_words:
            text = text.replace(word, "#")
        return text

    for t, options in enumerate(batch.swaps):
        assert options, batch.captions[t]
        for text, spec in options:  # same words but one shape, and never true of the caption's own scene
            assert text != batch.captions[t] and without_shapes(text) == without_shapes(batch.captions[t])
            assert not scene_satisfies(batch.scenes[t], spec)
    with torch.no_grad():
        image_emb = torch.nn.functional.normalize(_features(model.get_image_features(pixel_values=batch.images)),
                                                  dim=-1)
    chosen = closest_swaps(model, tokenizer, image_emb, batch.swaps)
    for t in (0, 7, 23):  # the reference: every swap encoded on its own
        texts = [text for text, _ in batch.swaps[t]]
        vectors = torch.from_numpy(encoder.encode_texts(texts).vectors)
        assert chosen[t] == int((vectors @ image_emb[t]).argmax()), t
    images, captions, mask = batch.add(chosen)
    assert len(captions) == 48 and mask.shape == (48, 24) and captions[24:] == [
        batch.swaps[t][c][0] for t, c in enumerate(chosen)]
    assert all(mask[24 + t, t] == 0 for t in range(24)) and all(mask[t, t] == 1 for t in range(24))


def test_mined_negatives_with_user_pairs_are_a_clear_error(tmp_path, tiny_clip_dir):
    with pytest.raises(CrossmodalError, match="mine_negatives|mined"):
        train(TrainConfig(out=str(tmp_path / "out"), init=str(tiny_clip_dir), pairs=str(write_pairs(tmp_path)),
                          mine_negatives=True))


@pytest.mark.slow
def test_training_with_mined_negatives_runs_through_the_cli_flag(tmp_path):
    from crossmodal.cli import main

    out = tmp_path / "mined"
    assert main(["train", "--init", "demo-shapes", "--out", str(out), "--steps", "2", "--warmup", "1",
                 "--lr", "1e-5", "--scenes", "40", "--batch-size", "16", "--mine-negatives"]) == 0
    assert (out / "model.safetensors").is_file()


def test_averaged_checkpoints_hold_the_mean_of_each_parameter_and_load_through_the_production_path(tmp_path):
    from crossmodal.encoders.models import load_encoder
    from crossmodal.lab.training import average_checkpoints
    from tiny_models import save_tiny_clip

    a, b = save_tiny_clip(tmp_path / "a", seed=1), save_tiny_clip(tmp_path / "b", seed=2)
    out = average_checkpoints([str(a), str(b)], str(tmp_path / "soup"), fp16=False)
    state_a, state_b = (load_encoder(str(d)).model.float().state_dict() for d in (a, b))
    soup = load_encoder(str(out))
    for name, tensor in soup.model.float().state_dict().items():
        assert torch.allclose(tensor, (state_a[name] + state_b[name]) / 2, atol=1e-6), name
    assert not torch.equal(state_a["visual_projection.weight"], state_b["visual_projection.weight"])  # seeds differ
    assert soup.encode_texts(["a red circle"]).vectors.shape == (1, 16)


def test_averaging_needs_two_checkpoints_of_one_architecture(tmp_path, tiny_clip_dir):
    from crossmodal.lab.training import average_checkpoints
    from tiny_models import save_tiny_clip

    other = save_tiny_clip(tmp_path / "wider", projection_dim=24)
    with pytest.raises(CrossmodalError, match="not the same architecture"):
        average_checkpoints([str(tiny_clip_dir), str(other)], str(tmp_path / "soup"))
    with pytest.raises(CrossmodalError, match="at least two"):
        average_checkpoints([str(tiny_clip_dir)], str(tmp_path / "soup"))


def test_small_generated_sets_fill_batches_instead_of_hanging():
    """Too few scenes to fill the hard-negative groups: random scenes fill the batch (this once looped forever)."""
    from crossmodal.encoders.models import load_encoder, model_identity
    from crossmodal.lab.training import GeneratedPairs

    data = GeneratedPairs(60, 77, 32, load_encoder(model_identity("demo-shapes")).processor)
    images, captions, mask = data.batch(16)
    assert images.shape[0] == 16 and len(set(data._indexes(16))) == 16
    assert data.batch(10_000)[0].shape[0] == len(data)


def test_object_windows_hold_one_whole_object_at_the_scale_the_model_sees_it():
    from crossmodal.encoders.models import load_encoder, model_identity
    from crossmodal.lab.scenes import _inside_share, window_around
    from crossmodal.lab.training import GeneratedPairs, shape_phrase_keys, shape_phrases

    data = GeneratedPairs(150, 7, 160, load_encoder(model_identity("demo-shapes")).processor)
    cuts = data.window_cuts(60, 80)
    assert len(cuts) == 60 and len({(i, k) for i, k, _, _ in cuts}) > 40
    for i, k, x0, y0 in cuts:
        assert data.relative[i] and 0 <= x0 <= 80 and 0 <= y0 <= 80
        boxes = [tuple(v * data.scales[i] for v in o.box) for o in data.objects[i]]
        window = (x0, y0, x0 + 80, y0 + 80)
        assert _inside_share(boxes[k], window) == 1.0
        assert all(_inside_share(b, window) <= 0.05 for n, b in enumerate(boxes) if n != k)
    images, labels = data.object_windows(8, 80)
    assert images.shape == (8, 3, 80, 80)
    keys = shape_phrase_keys()
    assert len(keys) == 48 and shape_phrases("en")[keys.index(("orange", "star"))] == "an orange star"
    assert shape_phrases("zh")[keys.index(("red", "circle"))] == "红色圆形"
    # An object larger than the window, or one the window cannot hold without another: no window.
    assert window_around([(0, 0, 90, 90)], 0, 80, 160, random.Random(0)) is None
    assert window_around([(10, 10, 40, 40), (45, 10, 75, 40)], 0, 80, 80, random.Random(0)) is None
    assert window_around([(10, 10, 40, 40), (120, 120, 150, 150)], 0, 80, 160, random.Random(0)) is not None


@pytest.mark.slow
def test_shape_window_loss_is_lower_for_the_true_phrases_and_trains_through_the_cli_flag(tmp_path):
    from crossmodal.cli import main
    from crossmodal.encoders.models import load_encoder, model_identity
    from crossmodal.lab.training import GeneratedPairs, shape_window_loss

    encoder = load_encoder(model_identity("demo-shapes"))
    model = encoder.model.float().eval()
    data = GeneratedPairs(200, 8, 160, encoder.processor)
    images, labels = data.object_windows(64)

    class Fixed:  # the same windows, labelled truly or by another object's phrase
        def __init__(self, labels):
            self.labels = labels

        def object_windows(self, size):
            return images, self.labels

    shuffled = labels[1:] + labels[:1]
    with torch.no_grad():
        true_loss = shape_window_loss(model, encoder.processor.tokenizer, Fixed(labels), 64, False)
        wrong_loss = shape_window_loss(model, encoder.processor.tokenizer, Fixed(shuffled), 64, False)
    assert math.isfinite(true_loss.item()) and true_loss < wrong_loss - 1.0
    out = tmp_path / "windows"
    assert main(["train", "--init", "demo-shapes", "--out", str(out), "--steps", "2", "--warmup", "1",
                 "--lr", "1e-5", "--scenes", "40", "--batch-size", "16", "--shape-crops", "16"]) == 0
    assert (out / "model.safetensors").is_file()
    with pytest.raises(CrossmodalError, match="shape"):
        train(TrainConfig(out=str(tmp_path / "x"), init="demo-shapes", pairs=str(write_pairs(tmp_path)),
                          shape_crops=8))


def test_scene_side_sets_the_largest_generated_scene_and_is_checked(tmp_path):
    from crossmodal.encoders.models import load_encoder, model_identity
    from crossmodal.lab.training import GeneratedPairs

    processor = load_encoder(model_identity("demo-shapes")).processor
    sides = [round(32 / scale) for scale in GeneratedPairs(60, 4, 32, processor, crops=False, max_side=512).scales]
    assert min(sides) >= 224 and max(sides) <= 512 and max(sides) > 384  # beyond the default range
    default = [round(32 / scale) for scale in GeneratedPairs(60, 4, 32, processor, crops=False).scales]
    assert max(default) <= 384
    with pytest.raises(CrossmodalError) as err:
        train(TrainConfig(out=str(tmp_path / "x"), scene_side=200))
    assert err.value.param == "scene_side"
