"""Fitting the align node's match probability (``python -m crossmodal calibrate``).

``fit_calibration`` labels image-caption pairs as true or false (generated scenes: checked against the ground
truth; a JSONL of pairs: its own caption is true, another pair's caption false), computes the align node's
match score for each, and fits a logistic regression (scikit-learn) on half of them; the other half measures
it (Brier score, expected calibration error, ROC AUC). crossmodal/alignment/calibration.py loads the result.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from crossmodal.alignment.align import AlignOptions, Calibration, align
from crossmodal.alignment.calibration import default_calibration
from crossmodal.errors import CrossmodalError


def labelled_scene_pairs(n: int, seed: int, sizes=(224, 512)) -> list[tuple[object, str, bool]]:
    """n generated scenes (1-3 objects), each with one true and one false caption."""
    from crossmodal.lab.scenes import generate_scene, sample_caption, scene_satisfies

    rng = random.Random(seed)
    scenes = [generate_scene(seed + k, rng.randint(*sizes), rng.randint(*sizes)) for k in range(n)]
    captions = [sample_caption(s.objects, rng) for s in scenes]
    pairs = []
    for k, scene in enumerate(scenes):
        pairs.append((scene.image, captions[k][0], True))
        for _ in range(50):  # a caption of another scene that is false here
            text, specs = captions[rng.randrange(n)]
            if not scene_satisfies(scene.objects, specs):
                pairs.append((scene.image, text, False))
                break
    return pairs


def labelled_jsonl_pairs(path: str, seed: int) -> list[tuple[object, str, bool]]:
    from crossmodal.lab.evaluation import jsonl_set

    eval_set = jsonl_set(path)
    rng = random.Random(seed)
    pairs = []
    for i, image in enumerate(eval_set.images):
        pairs.append((image, eval_set.queries[i], True))
        others = [q for q in range(len(eval_set.queries)) if not eval_set.is_relevant(q, i)]
        if others:
            pairs.append((image, eval_set.queries[rng.choice(others)], False))
    return pairs


def fit_calibration(encoder, pairs: list[tuple[object, str, bool]], source: str, seed: int = 0) -> Calibration:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss, roc_auc_score

    labels = np.array([y for _, _, y in pairs], dtype=int)
    if len(set(labels)) < 2 or len(pairs) < 20:
        raise CrossmodalError(f"{len(pairs)} pairs are too few to fit on (need at least 20, true and false)",
                              param="pairs")
    options = AlignOptions(mode="global", heatmap=False)
    scores = np.array([align(encoder, image, text, options)["match_score"] for image, text, _ in pairs])
    order = np.random.default_rng(seed).permutation(len(pairs))
    fit_rows, test_rows = order[: len(order) // 2], order[len(order) // 2:]
    model = LogisticRegression(C=1e4).fit(scores[fit_rows, None], labels[fit_rows])
    calibration = Calibration(float(model.coef_[0, 0]), float(model.intercept_[0]), source)
    held_out = np.array([calibration.probability(s) for s in scores[test_rows]])
    default = default_calibration(encoder)
    before = np.array([default.probability(s) for s in scores[test_rows]])
    calibration.metrics = {
        "pairs": len(pairs),
        "held_out": len(test_rows),
        "brier": round(float(brier_score_loss(labels[test_rows], held_out)), 4),
        "ece": round(expected_calibration_error(labels[test_rows], held_out), 4),
        "roc_auc": round(float(roc_auc_score(labels[test_rows], held_out)), 4),
        "unfitted_default": {"source": default.source.split(":")[0],
                             "brier": round(float(brier_score_loss(labels[test_rows], before)), 4),
                             "ece": round(expected_calibration_error(labels[test_rows], before), 4)},
        "mean_score_true": round(float(scores[labels == 1].mean()), 4),
        "mean_score_false": round(float(scores[labels == 0].mean()), 4),
    }
    return calibration


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width probability bins, weighted by bin size."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(labels[inside].mean() - probabilities[inside].mean())
    return float(total)


def save_calibration(calibration: Calibration, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"a": calibration.a, "b": calibration.b, "source": calibration.source,
                                "metrics": calibration.metrics}, indent=2))
    return path
