"""Contrastive (InfoNCE) training of CLIP-family dual encoders.

The loss is CLIP's symmetric InfoNCE with a learnable temperature (``logit_scale``),
with one change: in-batch pairs that are also true are not pushed apart. Each text
row's target spreads evenly over every image in the batch that the text describes
(and each image column over every text that describes it). For generated scenes
"describes" is checked against the ground truth (a caption "a red circle" is true of
every scene holding a red circle); for user pairs (JSONL) two pairs count as the same
when their captions are identical after trimming and lower-casing.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from crossmodal.errors import CrossmodalError

logger = logging.getLogger(__name__)

DEMO_IMAGE_SIZE = 128
MIN_SCENE_SIDE, DEFAULT_SCENE_SIDE = 224, 384  # generated training scenes, px before downscaling
SHAPE_WINDOW = 80  # px of the model's input: 10 x 10 patches of 8, about a quarter of a 160-px step's cost


@dataclass
class TrainConfig:
    out: str
    steps: int = 3000
    batch_size: int = 192
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 150
    seed: int = 0
    scenes: int = 20000  # generated scenes rendered up front (seeds seed*10^6 .. +scenes)
    init: str | None = None  # a checkpoint to fine-tune (preset, hub id, directory); None: a new demo model
    pairs: str | None = None  # JSONL of {"image": path, "caption": text}
    bf16: bool = True
    log_every: int = 50
    save_every: int = 0  # also write the checkpoint every N steps (0: only at the end)
    save_fp16: bool = True
    patch_size: int | None = None  # with init: re-cut the vision tower into finer patches (e.g. 16 -> 8)
    image_size: int | None = None  # with init: show the vision tower larger images (e.g. 128 -> 160)
    crops: bool = True  # generated data: also train on tile-sized crops captioned by colour and shape
    shape_negatives: bool = False  # generated data: add each caption again with one shape changed, as a negative
    mine_negatives: bool = False  # generated data: add each caption's one-shape swap the model finds closest
    vision_layers: int | None = None  # with init: grow the vision tower to this many layers (new ones start as identity)
    text_mlp: int | None = None  # with init: keep this many hidden units in each text MLP (frees bytes for vision)
    scene_side: int = DEFAULT_SCENE_SIDE  # generated data: scenes are 224..scene_side px square before downscaling (eval: 224..512)
    shape_crops: int = 0  # generated data: also N object windows a step at the scenes' own scale, vs every colour-shape


@dataclass
class TrainReport:
    steps: int = 0
    seconds: float = 0.0
    final_loss: float = float("nan")
    pairs: int = 0
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    history: list[tuple[int, float]] = field(default_factory=list)


def build_demo_model(tokenizer, image_size: int = DEMO_IMAGE_SIZE):
    """A small CLIP (about 1.6 M parameters) sized to learn colours, shapes, sizes and positions."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                           image_size=image_size, patch_size=16),
        projection_dim=128,
    )
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                           crop_size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
    )
    model = CLIPModel(config)
    _init_sincos_positions(model)
    return model, processor


def _init_sincos_positions(model) -> None:
    """Start from 2-D sine-cosine patch positions (1-D for text) instead of small random ones:
    "where" is then visible from the first step, and spatial words are learned far sooner."""
    import torch

    vision = model.vision_model.embeddings
    grid = int(round((vision.num_positions - 1) ** 0.5))
    dim = vision.embed_dim
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                            indexing="ij")
    table = torch.cat([_sincos(ys.flatten(), dim // 2), _sincos(xs.flatten(), dim // 2)], dim=1)
    with torch.no_grad():
        vision.position_embedding.weight[1:] = table
        vision.position_embedding.weight[0] = 0
        text = model.text_model.embeddings.position_embedding
        text.weight.copy_(_sincos(torch.arange(text.num_embeddings, dtype=torch.float32), text.embedding_dim))


def resize_patches(model, patch_size: int) -> None:
    """Re-cut a trained CLIP vision tower into smaller patches without losing what it learned.

    Each new kernel is the sum of the old kernel's blocks (16 -> 8: 2x2 block sums), so an 8-px patch
    gives the token that the old 16-px kernel gave for the same pixels shown twice as large. Position
    embeddings are resized bicubically to the finer grid. Then the model sees every object at twice the
    number of tokens, which is what small shapes need."""
    import torch

    embeddings = model.vision_model.embeddings
    old = embeddings.patch_size
    if patch_size == old:
        return
    if old % patch_size:
        raise CrossmodalError(f"patch size {patch_size} must divide the model's {old}", param="patch_size")
    factor = old // patch_size
    conv = embeddings.patch_embedding
    weight = conv.weight.data.float()  # (dim, 3, old, old)
    dim = weight.shape[0]
    new_weight = weight.reshape(dim, 3, patch_size, factor, patch_size, factor).sum(dim=(3, 5))
    new_conv = torch.nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size, bias=False)
    new_conv.weight.data.copy_(new_weight)
    embeddings.patch_embedding = new_conv
    embeddings.patch_size = patch_size
    _resize_positions(embeddings, embeddings.image_size // patch_size)
    model.config.vision_config.patch_size = patch_size


def resize_input(model, processor, image_size: int) -> None:
    """Show a trained CLIP vision tower larger images (e.g. 128 -> 160 px): same patches, more of them, the
    position table resized bicubically, and the processor set to the new size. Small objects then span more
    patches, which is what tells a small hexagon from a small circle."""
    embeddings = model.vision_model.embeddings
    if image_size == embeddings.image_size:
        return
    if image_size % embeddings.patch_size:
        raise CrossmodalError(f"image size {image_size} must be a multiple of the patch size "
                              f"{embeddings.patch_size}", param="image_size")
    embeddings.image_size = image_size
    _resize_positions(embeddings, image_size // embeddings.patch_size)
    model.config.vision_config.image_size = image_size
    image_processor = processor.image_processor
    image_processor.size = {"shortest_edge": image_size}
    image_processor.crop_size = {"height": image_size, "width": image_size}


def grow_vision_layers(model, layers: int) -> None:
    """Deepen a trained CLIP vision tower without changing what it computes: each new layer is appended
    with its attention output and second MLP projection zeroed, so its residual branches add nothing until
    training moves them. The model starts exactly where the trained one was and gains capacity."""
    import copy

    import torch

    encoder = model.vision_model.encoder
    have = len(encoder.layers)
    if layers < have:
        raise CrossmodalError(f"vision_layers {layers} is fewer than the model's {have}; "
                              f"layers can be added, not removed", param="vision_layers")
    for _ in range(layers - have):
        layer = copy.deepcopy(encoder.layers[-1])  # trained q/k/v and fc1: useful features from the first step
        with torch.no_grad():
            for linear in (layer.self_attn.out_proj, layer.mlp.fc2):
                linear.weight.zero_()
                linear.bias.zero_()
        encoder.layers.append(layer)
    model.config.vision_config.num_hidden_layers = layers


def prune_text_mlp(model, width: int) -> None:
    """Narrow every text-tower MLP to ``width`` hidden units, keeping in each layer the units that carry the
    most (|fc1 row| x |fc2 column|: a unit's input weight times what it writes back). The demo model's bytes are
    capped, and the text tower reads captions of a 73-word vocabulary: its width pays for vision layers."""
    import torch

    layers = model.text_model.encoder.layers
    have = layers[0].mlp.fc1.out_features
    if not 0 < width <= have:
        raise CrossmodalError(f"text_mlp {width} must be between 1 and the model's {have} hidden units; "
                              f"units can be removed, not added", param="text_mlp")
    for layer in layers:
        fc1, fc2 = layer.mlp.fc1, layer.mlp.fc2
        with torch.no_grad():
            weight = fc1.weight.float().norm(dim=1) * fc2.weight.float().norm(dim=0)
            keep = weight.topk(width).indices.sort().values
            narrow1 = torch.nn.Linear(fc1.in_features, width, dtype=fc1.weight.dtype)
            narrow1.weight.copy_(fc1.weight[keep])
            narrow1.bias.copy_(fc1.bias[keep])
            narrow2 = torch.nn.Linear(width, fc2.out_features, dtype=fc2.weight.dtype)
            narrow2.weight.copy_(fc2.weight[:, keep])
            narrow2.bias.copy_(fc2.bias)
        layer.mlp.fc1, layer.mlp.fc2 = narrow1, narrow2
    model.config.text_config.intermediate_size = width


def _resize_positions(embeddings, new_grid: int) -> None:
    import torch
    import torch.nn.functional as F

    table = embeddings.position_embedding.weight.data.float()
    dim = table.shape[1]
    old_grid = int(round((table.shape[0] - 1) ** 0.5))
    patches = table[1:].reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    new_table = torch.cat([table[:1], patches.permute(0, 2, 3, 1).reshape(new_grid * new_grid, dim)])
    embeddings.num_patches = new_grid * new_grid
    embeddings.num_positions = embeddings.num_patches + 1
    embeddings.position_embedding = torch.nn.Embedding(embeddings.num_positions, dim)
    embeddings.position_embedding.weight.data.copy_(new_table)
    embeddings.register_buffer("position_ids", torch.arange(embeddings.num_positions).expand((1, -1)),
                               persistent=False)


def _sincos(positions, dim: int):
    import torch

    freqs = 1.0 / (100.0 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim // 2)))
    angles = positions[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


# -- data ---------------------------------------------------------------------------
class GeneratedPairs:
    """Scenes rendered once; every step draws fresh true captions for them.

    Besides whole scenes, a crop of every other multi-object scene is rendered (one object whole, sized like
    Align's and region rerank's tiles) and captioned by colour and shape only: the model then knows objects
    seen at tile scale, which is the evidence region rerank and heat maps rely on."""

    def __init__(self, n: int, seed: int, image_size: int, processor, crops: bool = True,
                 shape_negatives: bool = False, max_side: int = DEFAULT_SCENE_SIDE):
        from crossmodal.lab.scenes import crop_around, generate_scene

        self.rng = random.Random(seed)
        self.shape_negatives = shape_negatives
        self.objects, self.relative, self.scales, pixels = [], [], [], []
        mean, std = _norm_stats(processor)

        def add(image, objects, relative):
            small = image.resize((image_size, image_size), resample=3)  # bicubic, as the processor does
            pixels.append(np.asarray(small, dtype=np.uint8))
            self.objects.append(objects)
            self.relative.append(relative)
            self.scales.append(image_size / image.width)

        for k in range(n):
            scene = generate_scene(seed * 1_000_000 + k, width=self.rng.randint(MIN_SCENE_SIDE, max_side))
            add(scene.image, scene.objects, True)
            if crops and len(scene.objects) > 1 and k % 2 == 0:
                crop = crop_around(scene, self.rng)
                if crop is not None:
                    add(*crop, False)
        self.pixels = np.stack(pixels)
        self.window_targets = [(i, k) for i, objects in enumerate(self.objects) if self.relative[i]
                               for k in range(len(objects))]  # (scene, object) pairs a shape window may hold
        self.mean, self.std = mean, std
        # Hard negatives, mixed into every batch in small groups:
        # single-object scenes sharing colour and shape (size and position tell them apart), and
        # two-object scenes sharing both shapes (which colour goes with which shape tells them apart).
        self.groups: dict[tuple, list[int]] = {}
        self.pair_groups: dict[tuple, list[int]] = {}
        for i, objects in enumerate(self.objects):
            if not self.relative[i]:
                continue
            if len(objects) == 1:
                self.groups.setdefault((objects[0].color, objects[0].shape), []).append(i)
            elif len(objects) == 2:
                self.pair_groups.setdefault(tuple(sorted(o.shape for o in objects)), []).append(i)

    def __len__(self):
        return len(self.objects)

    def batch(self, size: int):
        """Images, captions and mask[t, i] (caption t is true of image i). With shape negatives the captions
        run on past the images: each scene's caption again, same words but one shape changed (NegCLIP's
        hard negatives), so an image must tell its own caption from one that differs only in the shape."""
        import torch

        from crossmodal.lab.scenes import sample_caption

        idx = self._indexes(size)
        captions, specs, negatives, negative_specs = [], [], [], []
        for i in idx:
            state = self.rng.getstate()
            caption, spec = sample_caption(self.objects[i], self.rng, relative=self.relative[i])
            captions.append(caption)
            specs.append(spec)
            if self.shape_negatives:
                negative, negative_spec = self._shape_negative(self.objects[i], self.relative[i], spec, state)
                negatives.append(negative)
                negative_specs.append(negative_spec)
        mask = truth_mask(specs + negative_specs, [self.objects[j] for j in idx])
        return self._pixels(idx), captions + negatives, torch.from_numpy(mask)

    def batch_with_swaps(self, size: int) -> "SwapBatch":
        """Like ``batch`` without negatives; instead, per caption, every caption that differs from it only in one
        named object's shape and is false of its scene, for the trainer to choose from (``SwapBatch.add``)."""
        from crossmodal.lab.scenes import SHAPES, object_matches, sample_caption, scene_satisfies

        idx = self._indexes(size)
        captions, specs, swaps = [], [], []
        for i in idx:
            state = self.rng.getstate()
            caption, spec = sample_caption(self.objects[i], self.rng, relative=self.relative[i])
            captions.append(caption)
            specs.append(spec)
            options = []
            for named in spec:
                k = next(n for n, o in enumerate(self.objects[i]) if object_matches(o, named))
                for shape in SHAPES:
                    if shape != named["shape"]:
                        text, swapped_spec = self._swapped_caption(self.objects[i], k, shape, self.relative[i], state)
                        if not scene_satisfies(self.objects[i], swapped_spec):
                            options.append((text, swapped_spec))
            swaps.append(options)
        scenes = [self.objects[j] for j in idx]
        return SwapBatch(self._pixels(idx), captions, truth_mask(specs, scenes), swaps, scenes)

    def _shape_negative(self, objects, relative: bool, spec, state) -> tuple[str, list[dict]]:
        """The caption drawn from ``state``, redrawn with the same choices for the scene in which one named
        object has another shape: the same template, order and words except that shape."""
        from crossmodal.lab.scenes import SHAPES, object_matches

        named = self.rng.choice(spec)
        k = next(n for n, o in enumerate(objects) if object_matches(o, named))
        shape = self.rng.choice([s for s in SHAPES if s != named["shape"]])
        return self._swapped_caption(objects, k, shape, relative, state)

    @staticmethod
    def _swapped_caption(objects, k: int, shape: str, relative: bool, state) -> tuple[str, list[dict]]:
        from crossmodal.lab.scenes import sample_caption

        swapped = list(objects)
        swapped[k] = replace(objects[k], shape=shape)
        replay = random.Random()
        replay.setstate(state)
        return sample_caption(swapped, replay, relative=relative)

    def _pixels(self, idx):
        return self._normalise(self.pixels[idx])

    def _normalise(self, pixels: np.ndarray):
        import torch

        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
        return (images - self.mean) / self.std

    def object_windows(self, size: int, side: int = SHAPE_WINDOW):
        """``size`` windows of ``side`` px cut from the scenes as the model sees them (no rescaling, so each object
        keeps its own pixel scale), each holding one object whole and no more than 5 % of any other, with the
        index of that object's colour-shape phrase in ``shape_phrases()``."""
        keys = {key: n for n, key in enumerate(shape_phrase_keys())}
        cuts = self.window_cuts(size, side)
        pixels = np.stack([self.pixels[i, y0:y0 + side, x0:x0 + side] for i, _, x0, y0 in cuts])
        labels = [keys[(self.objects[i][k].color, self.objects[i][k].shape)] for i, k, _, _ in cuts]
        return self._normalise(pixels), labels

    def window_cuts(self, size: int, side: int = SHAPE_WINDOW) -> list[tuple[int, int, int, int]]:
        """(scene, object, x0, y0) of ``size`` windows; objects too large or too crowded are drawn again."""
        from crossmodal.lab.scenes import window_around

        cuts = []
        for _ in range(20 * size):
            if len(cuts) == size:
                return cuts
            i, k = self.rng.choice(self.window_targets)
            boxes = [tuple(v * self.scales[i] for v in o.box) for o in self.objects[i]]
            window = window_around(boxes, k, side, self.pixels.shape[1], self.rng)
            if window is not None:
                cuts.append((i, k, *window))
        raise CrossmodalError(f"too few objects fit {side}-px windows in these scenes", param="shape_crops")

    def _indexes(self, size: int, group: int = 4) -> list[int]:
        """A quarter of the batch at random, a quarter in groups of single-object scenes sharing colour and
        shape, a sixth in groups sharing colour only (shape tells them apart), a third in groups of two-object
        scenes with the same two shapes."""
        size = min(size, len(self))
        chosen: set[int] = set()
        tries = 4 * size  # small data sets run out of unchosen group members: then random scenes fill up
        keys = [k for k, v in self.groups.items() if len(v) >= group]
        while keys and len(chosen) < size // 4 and (tries := tries - 1) > 0:
            chosen.update(self.rng.sample(self.groups[self.rng.choice(keys)], group))
        colours = sorted({colour for colour, _ in keys})
        while keys and len(chosen) < 5 * size // 12 and (tries := tries - 1) > 0:
            colour = self.rng.choice(colours)
            same_colour = [k for k in keys if k[0] == colour]
            for shape_key in self.rng.sample(same_colour, min(3, len(same_colour))):
                chosen.update(self.rng.sample(self.groups[shape_key], 2))
        pair_keys = [k for k, v in self.pair_groups.items() if len(v) >= group]
        while pair_keys and len(chosen) < 3 * size // 4 and (tries := tries - 1) > 0:
            chosen.update(self.rng.sample(self.pair_groups[self.rng.choice(pair_keys)], group))
        while len(chosen) < size:
            chosen.add(self.rng.randrange(len(self)))
        return list(chosen)[:size]


def shape_phrase_keys() -> list[tuple[str, str]]:
    from crossmodal.lab.scenes import COLORS, SHAPES

    return [(colour, shape) for colour in COLORS for shape in SHAPES]


def shape_phrases(lang: str) -> list[str]:
    """Every colour-shape phrase ("a red circle", "红色圆形"), in ``shape_phrase_keys()`` order, worded as the
    scene captions word them."""
    from crossmodal.lab.scenes import UNKNOWN, SceneObject, article

    bare = [SceneObject(shape, colour, UNKNOWN, UNKNOWN, (0, 0, 0, 0), 0.0).phrase(lang, size=False)
            for colour, shape in shape_phrase_keys()]
    return bare if lang == "zh" else [f"{article(text)} {text}" for text in bare]


def truth_mask(specs: list[list[dict]], scenes: list) -> np.ndarray:
    """mask[t, i] = 1 where the caption constraints ``specs[t]`` hold in scene i (shape (len(specs), len(scenes)))."""
    from crossmodal.lab.scenes import scene_satisfies

    rows = [[scene_satisfies(objects, spec) for objects in scenes] for spec in specs]
    return np.array(rows, dtype=np.float32).reshape(len(specs), len(scenes))


@dataclass
class SwapBatch:
    """A generated batch whose hard negatives are still to be chosen, one per caption, among its ``swaps``."""

    images: object  # normalised pixels, (n, 3, side, side)
    captions: list[str]  # caption t is drawn for image t
    mask: np.ndarray  # mask[t, i]: caption t is true of image i
    swaps: list[list[tuple[str, list[dict]]]]  # per caption: (text, constraints) of each one-shape swap
    scenes: list  # per image: its objects

    def add(self, chosen: list[int | None]):
        """Images, captions followed by the chosen swap of each caption (None: none), and the mask over both."""
        import torch

        picked = [self.swaps[t][c] for t, c in enumerate(chosen) if c is not None]
        mask = np.concatenate([self.mask, truth_mask([spec for _, spec in picked], self.scenes)])
        return self.images, self.captions + [text for text, _ in picked], torch.from_numpy(mask)


def closest_swaps(model, tokenizer, image_emb, swaps, bf16: bool = False) -> list[int | None]:
    """For each image t, the index of the swap in ``swaps[t]`` whose text the model puts closest to it: the
    hardest one-shape negative now (mined with the current weights, without gradient)."""
    import torch

    texts = [text for options in swaps for text, _ in options]
    if not texts:
        return [None] * len(swaps)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        text_emb = _features(model.get_text_features(input_ids=tokens["input_ids"],
                                                     attention_mask=tokens["attention_mask"]))
    text_emb = torch.nn.functional.normalize(text_emb.float(), dim=-1)
    chosen, start = [], 0
    for t, options in enumerate(swaps):
        if not options:
            chosen.append(None)
            continue
        sims = text_emb[start : start + len(options)] @ image_emb[t].float()
        chosen.append(int(sims.argmax()))
        start += len(options)
    return chosen


class JsonlPairs:
    """User pairs; bad lines are skipped with a count and the first reasons, never a crash."""

    def __init__(self, path: str, processor, seed: int, report: TrainReport):
        from crossmodal.inputs.images import decode_image

        self.rng = random.Random(seed)
        self.processor = processor
        self.items: list[tuple[Path, str]] = []
        base = Path(path).parent
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise CrossmodalError(f"cannot read {path}: {exc.strerror}", param="pairs") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            reason = None
            try:
                row = json.loads(line)
                image = base / str(row.get("image") or row.get("image_path") or "")
                caption = str(row.get("caption") or row.get("text") or "").strip()
                if not caption:
                    reason = "empty caption"
                elif not image.is_file():
                    reason = f"missing file {image}"
                else:
                    decode_image(image.read_bytes(), param="image")
            except json.JSONDecodeError as exc:
                reason = f"not JSON ({exc.msg})"
            except CrossmodalError as exc:
                reason = str(exc)
            if reason:
                report.skipped += 1
                if len(report.skip_reasons) < 5:
                    report.skip_reasons.append(f"line {n}: {reason}")
                continue
            self.items.append((image, caption))
        if not self.items:
            raise CrossmodalError(f"{path} holds no usable (image, caption) pairs; "
                                  f"first problems: {report.skip_reasons}", param="pairs")
        report.pairs = len(self.items)

    def __len__(self):
        return len(self.items)

    def batch(self, size: int):
        import torch

        from crossmodal.inputs.images import decode_image

        idx = self.rng.sample(range(len(self)), min(size, len(self)))
        images = [decode_image(self.items[i][0].read_bytes()).image for i in idx]
        captions = [self.items[i][1] for i in idx]
        keys = [c.lower() for c in captions]
        mask = torch.tensor([[a == b for b in keys] for a in keys], dtype=torch.float32)
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return pixels, captions, mask


def _norm_stats(processor):
    import torch

    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    return mean, std


# -- loss and loop ------------------------------------------------------------------
def multi_positive_infonce(image_emb, text_emb, logit_scale, mask):
    """Symmetric InfoNCE; mask[t, i] = 1 where text t truly describes image i (diagonal included).

    There may be more texts than images (hard negatives after the paired captions): every text is a
    candidate for every image, but only texts true of some image in the batch are text->image queries."""
    import torch.nn.functional as F

    logits = logit_scale.exp().clamp(max=100) * text_emb @ image_emb.t()
    queries = mask.sum(1) > 0
    t2i_target = mask[queries] / mask[queries].sum(1, keepdim=True)
    i2t_target = (mask / mask.sum(0, keepdim=True)).t()
    loss_t2i = -(t2i_target * F.log_softmax(logits[queries], dim=1)).sum(1).mean()
    loss_i2t = -(i2t_target * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return (loss_t2i + loss_i2t) / 2


def train(config: TrainConfig, progress=None) -> TrainReport:
    import torch

    from crossmodal.encoders.models import cpu_has_bf16, load_encoder, model_identity
    from crossmodal.lab.scenes import vocabulary_texts
    from crossmodal.lab.tokenizer import train_tokenizer

    if config.scene_side < MIN_SCENE_SIDE:
        raise CrossmodalError(f"{config.scene_side} px is below the smallest generated scene ({MIN_SCENE_SIDE} px); "
                              f"give {MIN_SCENE_SIDE} or more", param="scene_side")
    if config.shape_crops and config.pairs:
        raise CrossmodalError("object windows need generated scenes: drop --shape-crops or --pairs", param="shape_crops")
    if config.mine_negatives and config.pairs:
        raise CrossmodalError("mined shape negatives need generated scenes: drop --mine-negatives or --pairs",
                              param="mine_negatives")
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    report = TrainReport()
    if config.init:
        encoder = load_encoder(model_identity(config.init), "cpu")
        model, processor = encoder.model.float().train(), encoder.processor
        if config.patch_size:
            resize_patches(model, config.patch_size)
        if config.image_size:
            resize_input(model, processor, config.image_size)
        if config.vision_layers:
            grow_vision_layers(model, config.vision_layers)
        if config.text_mlp:
            prune_text_mlp(model, config.text_mlp)
    else:
        tokenizer = train_tokenizer(vocabulary_texts(), context_length=32)
        model, processor = build_demo_model(tokenizer)
    if config.pairs:
        data = JsonlPairs(config.pairs, processor, config.seed, report)
    else:
        image_size = model.config.vision_config.image_size
        data = GeneratedPairs(config.scenes, config.seed, image_size, processor, crops=config.crops,
                              shape_negatives=config.shape_negatives, max_side=config.scene_side)
        report.pairs = len(data)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config.warmup, config.steps))
    use_bf16 = config.bf16 and cpu_has_bf16()
    started = time.time()
    for step in range(1, config.steps + 1):
        if config.mine_negatives:
            pending = data.batch_with_swaps(config.batch_size)
            images = pending.images
        else:
            images, captions, mask = data.batch(config.batch_size)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            image_emb = _features(model.get_image_features(pixel_values=images))
        image_emb = torch.nn.functional.normalize(image_emb.float(), dim=-1)
        if config.mine_negatives:  # chosen with this step's image vectors, so the vision tower runs once
            chosen = closest_swaps(model, processor.tokenizer, image_emb.detach(), pending.swaps, use_bf16)
            images, captions, mask = pending.add(chosen)
        tokens = processor.tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            text_emb = _features(model.get_text_features(input_ids=tokens["input_ids"],
                                                         attention_mask=tokens["attention_mask"]))
        text_emb = torch.nn.functional.normalize(text_emb.float(), dim=-1)
        loss = multi_positive_infonce(image_emb, text_emb, model.logit_scale, mask)
        if config.shape_crops:
            loss = loss + shape_window_loss(model, processor.tokenizer, data, config.shape_crops, use_bf16)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        report.final_loss = loss.item()
        if step % config.log_every == 0 or step == config.steps:
            report.history.append((step, round(report.final_loss, 4)))
            logger.info("step %d loss %.4f scale %.1f", step, report.final_loss, model.logit_scale.exp().item())
            if progress:
                progress(step, report.final_loss)
        if config.save_every and step % config.save_every == 0 and step < config.steps:
            save_checkpoint(model, processor, config.out, fp16=config.save_fp16)
            model.train()
    report.steps = config.steps
    report.seconds = round(time.time() - started, 1)
    save_checkpoint(model, processor, config.out, fp16=config.save_fp16)
    return report


def shape_window_loss(model, tokenizer, data: "GeneratedPairs", size: int, bf16: bool):
    """Object windows at the scenes' own pixel scale against every colour-shape phrase, in English and Chinese:
    each window has all five other shapes of its colour as negatives at once, and a window costs about a quarter
    of a scene (fewer patches; the position table is interpolated to the window's grid)."""
    import torch

    images, labels = data.object_windows(size)
    phrases = shape_phrases("en") + shape_phrases("zh")
    n = len(phrases) // 2
    mask = torch.zeros(len(phrases), len(labels))
    for column, label in enumerate(labels):
        mask[label, column] = mask[n + label, column] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        image_emb = _features(model.get_image_features(pixel_values=images, interpolate_pos_encoding=True))
        tokens = tokenizer(phrases, padding=True, return_tensors="pt")
        text_emb = _features(model.get_text_features(input_ids=tokens["input_ids"],
                                                     attention_mask=tokens["attention_mask"]))
    image_emb = torch.nn.functional.normalize(image_emb.float(), dim=-1)
    text_emb = torch.nn.functional.normalize(text_emb.float(), dim=-1)
    return multi_positive_infonce(image_emb, text_emb, model.logit_scale, mask)


def _features(output):
    return output if hasattr(output, "shape") else output.pooler_output


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))



def average_checkpoints(sources: list[str], out: str, *, fp16: bool = True) -> Path:
    """A uniform weight average of checkpoints fine-tuned from one start ("model soup", Wortsman et al. 2022),
    written with the first one's processor. Each is loaded through the production path; their parameters must
    have the same names and shapes."""
    import torch

    from crossmodal.encoders.models import load_encoder, model_identity

    if len(sources) < 2:
        raise CrossmodalError("averaging needs at least two checkpoints", param="checkpoints")
    first = load_encoder(model_identity(sources[0]), "cpu")
    model = first.model.float()
    total = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    for source in sources[1:]:
        state = load_encoder(model_identity(source), "cpu").model.float().state_dict()
        mismatched = [n for n in total if n not in state or state[n].shape != total[n].shape]
        if mismatched or len(state) != len(total):
            raise CrossmodalError(f"{source} is not the same architecture as {sources[0]} "
                                  f"(differs at {(mismatched or sorted(set(state) - set(total)))[:3]})",
                                  param="checkpoints")
        for name in total:
            total[name] += state[name]
    with torch.no_grad():
        model.load_state_dict({name: tensor / len(sources) for name, tensor in total.items()})
    return save_checkpoint(model, first.processor, out, fp16=fp16)


def save_checkpoint(model, processor, out: str, *, fp16: bool = True) -> Path:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    if fp16:
        model = model.half()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    if fp16:
        model.float()
    return out_dir
