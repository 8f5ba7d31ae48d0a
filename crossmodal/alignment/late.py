"""Align with a late-interaction model (ColQwen2, ColPali): where on a page each phrase matches, read from the
model's own MaxSim rather than by occlusion.

Every query token is compared with every image-patch token of the page (sentence-transformers'
``maxsim_similarity_map``); a phrase's map is the sum of its tokens' maps over the page's patch grid (the
grid the processor cut the page into), its box covers the cells at 60 % of the map's peak or more, and its
score is its MaxSim per query token, as Search ranks pages. The output keeps the Align node's contract.
"""

from __future__ import annotations

import time

import numpy as np

from crossmodal.alignment.align import _ms, _r, alignment_result, split_phrases

BOX_LEVEL = 0.6  # share of a phrase map's peak that a cell needs to be inside the phrase's box


def late_align(encoder, image, text: str, calibration=None) -> dict:
    width, height = image.size
    phrases, notes = split_phrases(text)
    clock = time.perf_counter()
    texts = [text.strip(), *phrases] if len(phrases) > 1 else [text.strip()]
    queries = encoder.query_tokens(texts)
    page, image_mask, (cols, rows) = encoder.page_patches(image)
    timings = {"encode_ms": _ms(clock)}
    clock = time.perf_counter()
    similarity = maxsim_per_token(queries[0], page)
    phrase_queries = queries[1:] if len(phrases) > 1 else queries
    maps, phrase_rows = [], []
    for phrase, tokens in zip(phrases, phrase_queries):
        grid = patch_map(tokens, page, image_mask, (cols, rows))
        maps.append(grid)
        phrase_rows.append({"text": phrase, "similarity_score": _r(maxsim_per_token(tokens, page)),
                            "box": peak_box(grid, width, height)})
    timings["maps_ms"] = _ms(clock)
    return alignment_result(encoder, similarity, [row["similarity_score"] for row in phrase_rows], phrase_rows, maps,
                            (width, height), calibration, mode="global", tiles=0,
                            view=(0.0, 0.0, float(width), float(height)),
                            timings=timings, scoring="maxsim",
                            notes=notes + ["a late-interaction model reads the whole page at its own resolution: "
                                           "no tiles"])


def maxsim_per_token(query: np.ndarray, page: np.ndarray) -> float:
    """MaxSim divided by the query's token count: the mean of each query token's best cosine."""
    return float((query @ page.T).max(axis=1).mean())


def patch_map(query: np.ndarray, page: np.ndarray, image_mask: np.ndarray, n_patches: tuple[int, int]) -> np.ndarray:
    """rows x cols: the phrase tokens' similarities summed at each image patch (negative ones as 0)."""
    import torch
    from sentence_transformers.multi_vector_encoder.interpretability import maxsim_similarity_map

    maps = maxsim_similarity_map(torch.from_numpy(query), torch.from_numpy(page), n_patches,
                                 image_mask=torch.from_numpy(image_mask))
    return np.clip(maps.numpy().sum(axis=0), 0, None)


def peak_box(grid: np.ndarray, width: int, height: int) -> list[int]:
    """The cells at BOX_LEVEL of the peak or more, as a box in the image's pixels."""
    rows, cols = grid.shape
    peak = float(grid.max())
    if peak <= 0:
        return [0, 0, width, height]
    ys, xs = np.nonzero(grid >= BOX_LEVEL * peak)
    return [int(xs.min() * width / cols), int(ys.min() * height / rows), int(round((xs.max() + 1) * width / cols)),
            int(round((ys.max() + 1) * height / rows))]
