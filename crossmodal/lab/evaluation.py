"""Evaluation through the real pipeline: Recall@K (text->image, image->text) via the store,
per-query latency, and the pointing game for heat maps.

On generated scenes several images can share one description, so a retrieved item
counts as relevant when it satisfies every attribute the query states (colour, shape,
size, position): "a red circle" is answered correctly by any scene holding a red circle.
For user pairs (JSONL) an item is relevant to its own pair and to pairs with the same caption.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from crossmodal.errors import CrossmodalError
from crossmodal.inputs.images import encode_png

KS = (1, 5, 10)
EVAL_SEED_BASE = 700_000_000  # far from the training seeds (seed * 10^6 + k, k < 10^6, seed < 100)


@dataclass
class EvalSet:
    """Images and queries with the relevance between them."""

    name: str
    images: list  # PIL images
    image_keys: list  # per image: what it shows (objects, or a caption key)
    queries: list[str]  # one text per image (its own caption)
    is_relevant: Callable  # (query index, image index) -> bool
    boxes: list = field(default_factory=list)


def scene_set(kind: str, n: int, lang: str = "en", seed: int = EVAL_SEED_BASE, sizes=(224, 512)) -> EvalSet:
    """``single``: one object, captions with size, colour, shape, position.
    ``double``: two objects, captions naming both by colour and shape."""
    import random

    from crossmodal.lab.scenes import canonical_caption, caption_specs, generate_scene, scene_satisfies

    if kind not in ("single", "double"):
        raise CrossmodalError(f"'{kind}' is not single or double", param="set")
    rng = random.Random(seed)
    images, objects, queries, specs, boxes = [], [], [], [], []
    for k in range(n):
        side = rng.randint(*sizes)
        scene = generate_scene(seed + k, side, side, 1 if kind == "single" else 2)
        images.append(scene.image)
        objects.append(scene.objects)
        boxes.append(scene.boxes)
        queries.append(canonical_caption(scene.objects, lang))
        specs.append(caption_specs(scene.objects, size=kind == "single", position=kind == "single"))
    return EvalSet(f"{kind}_{lang}", images, objects, queries,
                   lambda q, i: scene_satisfies(objects[i], specs[q]), boxes)


def jsonl_set(path: str) -> EvalSet:
    from crossmodal.inputs.images import decode_image

    images, keys, queries = [], [], []
    base = Path(path).parent
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        caption = str(row.get("caption") or "").strip()
        image_path = base / str(row.get("image") or "")
        if not caption or not image_path.is_file():
            continue
        images.append(decode_image(image_path.read_bytes()).image)
        keys.append(caption.lower())
        queries.append(caption)
    if not images:
        raise CrossmodalError(f"{path} holds no (image, caption) pairs to evaluate", param="pairs")
    return EvalSet(Path(path).stem, images, keys, queries, lambda q, i: keys[q] == keys[i])


def evaluate_set(service, eval_set: EvalSet, model: str, collection: str = "eval") -> dict:
    """Ingest the set's images and distinct captions, then query both ways through the service."""
    from crossmodal.service import ImageInput, IngestItem

    if not eval_set.images:
        raise CrossmodalError("the evaluation set has no pairs", param="set")
    pngs = [encode_png(im) for im in eval_set.images]  # encoded once: ingested, then used as queries
    items = [IngestItem(image=ImageInput.from_bytes(f"img-{i}", png), source=f"img-{i}") for i, png in enumerate(pngs)]
    distinct = sorted(set(eval_set.queries))
    items += [IngestItem(text=t, source=f"txt-{j}") for j, t in enumerate(distinct)]
    service.ingest(items, collection, model)
    query_of: dict[str, int] = {}  # a representative query index per caption: its first occurrence
    for q, text in enumerate(eval_set.queries):
        query_of.setdefault(text, q)
    top = max(KS)

    t2i_ranks, latencies = [], []
    for q, text in enumerate(eval_set.queries):
        started = time.perf_counter()
        hits = service.search(text=text, collection=collection, top_k=top, target="image")["results"]
        latencies.append((time.perf_counter() - started) * 1000)
        found = [int(h["payload"]["source"].split("-")[1]) for h in hits]
        t2i_ranks.append(_first_relevant(found, lambda i: eval_set.is_relevant(q, i)))

    i2t_ranks = []
    for i, png in enumerate(pngs):
        hits = service.search(image=ImageInput.from_bytes("query", png), collection=collection,
                              top_k=top, target="text")["results"]
        found = [h["payload"]["text"] for h in hits]
        i2t_ranks.append(_first_relevant(found, lambda t: eval_set.is_relevant(query_of[t], i)))
    return {
        "pairs": len(eval_set.images),
        "distinct_captions": len(distinct),
        "text_to_image": recall_at(t2i_ranks),
        "image_to_text": recall_at(i2t_ranks),
        "query_latency_ms": {"p50": round(float(np.percentile(latencies, 50)), 2),
                             "p95": round(float(np.percentile(latencies, 95)), 2)},
    }


def _first_relevant(found: list, relevant: Callable) -> int | None:
    for rank, item in enumerate(found):
        if relevant(item):
            return rank
    return None


def recall_at(ranks: list[int | None], ks=KS) -> dict[str, float]:
    n = max(1, len(ranks))
    return {f"R@{k}": round(sum(r is not None and r < k for r in ranks) / n, 4) for k in ks}


def pointing_game(eval_set: EvalSet, locate: Callable, lang: str = "en") -> dict:
    """Share of objects whose heat-map peak (``locate(image, phrase) -> (x, y)``) falls in the object's box.
    Each object is named by colour and shape ("a red circle"), as a user would name it."""
    from crossmodal.lab.scenes import article

    hits = total = 0
    for image, objects, boxes in zip(eval_set.images, eval_set.image_keys, eval_set.boxes):
        for obj, (x0, y0, x1, y1) in zip(objects, boxes):
            phrase = obj.phrase(lang, size=False)
            x, y = locate(image, f"{article(phrase)} {phrase}" if lang == "en" else phrase)
            hits += x0 <= x <= x1 and y0 <= y <= y1
            total += 1
    return {"objects": total, "accuracy": round(hits / max(1, total), 4)}


def align_locator(encoder) -> Callable:
    """The align node's heat map as a pointing-game locator (the peak of the phrase's own map)."""
    from crossmodal.alignment.align import align, peak_point

    def locate(image, phrase):
        result = align(encoder, image, phrase)
        return peak_point(result["phrase_maps"][0], *image.size)

    return locate


def run_pointing_game(model: str, n: int, side: int = 512) -> dict:
    """Pointing game of the align node on fresh single- and two-object scenes of side x side pixels."""
    from crossmodal.encoders.models import load_encoder, model_identity

    locate = align_locator(load_encoder(model_identity(model), "cpu"))
    out = {}
    for kind in ("single", "double"):
        eval_set = scene_set(kind, n, "en", seed=EVAL_SEED_BASE + 5_000_000, sizes=(side, side))
        out[f"{kind}_{side}"] = pointing_game(eval_set, locate)
    return out


def small_object_set(n: int, side: int = 2048, seed: int = EVAL_SEED_BASE + 7_000_000,
                     size_range=(0.035, 0.05)) -> EvalSet:
    """Large images each holding one small object (3.5-5 % of the side); queries name colour and shape."""
    from crossmodal.lab.scenes import article, caption_specs, generate_scene, scene_satisfies

    images, objects, queries, specs, boxes = [], [], [], [], []
    for k in range(n):
        scene = generate_scene(seed + k, side, side, 1, size_range=size_range)
        phrase = scene.objects[0].phrase("en", size=False)
        images.append(scene.image)
        objects.append(scene.objects)
        boxes.append(scene.boxes)
        queries.append(f"{article(phrase)} {phrase}")
        specs.append(caption_specs(scene.objects, size=False, position=False))
    return EvalSet(f"small_objects_{side}", images, objects, queries,
                   lambda q, i: scene_satisfies(objects[i], specs[q]), boxes)


def evaluate_small_objects(service, eval_set: EvalSet, model: str, collection: str = "small") -> dict:
    """Text->image recall with whole-image vectors only, and with stored regions, on the same collection."""
    from crossmodal.service import ImageInput, IngestItem

    items = [IngestItem(image=ImageInput.from_bytes(f"img-{i}", encode_png(im)), source=f"img-{i}")
             for i, im in enumerate(eval_set.images)]
    service.ingest(items, collection, model, regions=True)
    out = {"images": len(items)}
    for label, regions in (("global_only", False), ("regions", True)):
        ranks = []
        for q, text in enumerate(eval_set.queries):
            hits = service.search(text=text, collection=collection, top_k=max(KS), regions=regions)["results"]
            found = [int(h["payload"]["source"].split("-")[1]) for h in hits]
            ranks.append(_first_relevant(found, lambda i: eval_set.is_relevant(q, i)))
        out[label] = recall_at(ranks)
    return out



def rerank_lift(service, eval_set: EvalSet, model: str, collection: str = "rerank", rerank_k: int = 20,
                method: str = "region", queries: int | None = None) -> dict:
    """Text->image recall of the first stage and of the same first stage reranked (top ``rerank_k``).
    Every image of the set is the gallery; the first ``queries`` captions (all by default) are asked."""
    from crossmodal.service import ImageInput, IngestItem

    items = [IngestItem(image=ImageInput.from_bytes(f"img-{i}", encode_png(im)), source=f"img-{i}")
             for i, im in enumerate(eval_set.images)]
    service.ingest(items, collection, model)
    ranks = {"first_stage": [], "reranked": []}
    started = time.perf_counter()
    asked = eval_set.queries[:queries] if queries else eval_set.queries
    for q, text in enumerate(asked):
        first = service.search(text=text, collection=collection, top_k=rerank_k)
        second = service.rerank(text, first, method=method)
        for label, hits in (("first_stage", first["results"]), ("reranked", second["results"])):
            found = [int(h["payload"]["source"].split("-")[1]) for h in hits]
            ranks[label].append(_first_relevant(found, lambda i: eval_set.is_relevant(q, i)))
    seconds = time.perf_counter() - started
    return {"queries": len(asked), "gallery": len(eval_set.images), "candidates": rerank_k, "method": method,
            "first_stage": recall_at(ranks["first_stage"]), "reranked": recall_at(ranks["reranked"]),
            "ms_per_query": round(1000 * seconds / max(1, len(asked)), 1)}


def run_eval(model: str, n: int = 1000, pairs: str | None = None, out: str | None = None,
             sets=("single_en", "single_zh", "double_en", "double_zh"), pointing_n: int = 0,
             small_n: int = 0, rerank_n: int = 0, rerank_gallery: int = 1000) -> dict:
    from crossmodal.service import Service
    from crossmodal.settings import Settings

    report = {"model": model, "n": n, "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        service = Service(Settings(data_dir=tmp, model=model))
        if pairs:
            eval_sets = [jsonl_set(pairs)]
        else:
            eval_sets = [scene_set(s.split("_")[0], n, s.split("_")[1]) for s in sets]
        for k, eval_set in enumerate(eval_sets):
            report["sets"][eval_set.name] = evaluate_set(service, eval_set, model, f"eval{k}")
        if small_n and not pairs:
            report["small_objects"] = evaluate_small_objects(service, small_object_set(small_n), model)
        if rerank_n and not pairs:
            double = scene_set("double", max(rerank_n, rerank_gallery), "en", seed=EVAL_SEED_BASE + 9_000_000)
            report["region_rerank"] = rerank_lift(service, double, model, queries=rerank_n)
        service.store.close()
    if pointing_n and not pairs:
        report["pointing_game"] = run_pointing_game(model, pointing_n)
    if out:
        write_report(report, out)
    return report


def write_report(report: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    (out_path / "eval.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    names = list(report["sets"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, direction in zip(axes, ("text_to_image", "image_to_text")):
        width = 0.8 / len(KS)
        for j, k in enumerate(KS):
            values = [report["sets"][s][direction][f"R@{k}"] for s in names]
            ax.bar(np.arange(len(names)) + j * width, values, width, label=f"R@{k}")
        ax.set_xticks(np.arange(len(names)) + width, names, rotation=20)
        ax.set_title(direction.replace("_", " "))
        ax.set_ylim(0, 1)
        ax.axhline(0.9, color="grey", linestyle="--", linewidth=0.8)
    axes[0].legend(loc="lower left")
    fig.suptitle(f"Recall@K, {report['model']}")
    fig.tight_layout()
    fig.savefig(out_path / "eval.png", dpi=100)
    plt.close(fig)
