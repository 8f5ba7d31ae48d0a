"""Text as evidence in Align: a phrase that a line read in the picture spells out (an invoice number, a sign, a
label) points at that line's box, in the phrase's row and in its map.

Vision-language models see such text only roughly; the reader (crossmodal/ocr) knows where it is. A phrase
matches a line when most of its characters, compared without case, spaces and punctuation, appear in order in
the line in runs of three or more (difflib's matching blocks): a code the reader read with a space too many, or
one character confused, still matches.
"""

from __future__ import annotations

import difflib
import unicodedata

import numpy as np

MIN_MATCH = 0.8  # share of a phrase's characters that must appear in order in a line
MIN_PHRASE_CHARS = 4  # shorter phrases ("a", "red") match too many lines by chance
MIN_RUN = 3  # characters in a row that count: single letters scattered along a sentence spell nothing


def comparable(text: str) -> str:
    """Letters and digits only, NFKC-folded and case-folded."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in folded if c.isalnum())


def match(phrase: str, line: str) -> float:
    """The share of the phrase's characters found in order in the line (0 for a phrase too short to tell)."""
    wanted, seen = comparable(phrase), comparable(line)
    if len(wanted) < MIN_PHRASE_CHARS or not seen:
        return 0.0
    blocks = difflib.SequenceMatcher(None, wanted, seen, autojunk=False).get_matching_blocks()
    return sum(block.size for block in blocks if block.size >= MIN_RUN) / len(wanted)


def add_text_evidence(result: dict, lines: list[dict]) -> dict:
    """Each phrase of an Align result (``result["phrases"]``) that matches one of ``lines`` (dicts with text,
    xyxy, confidence, as crossmodal/ocr reads them) gets ``text_evidence`` and that line's box, and its map
    (when there is one) its highest value over the line; the combined map follows."""
    maps = result.get("phrase_maps")
    grid = result.get("attention_map")
    changed = False
    for k, row in enumerate(result["phrases"]):
        scored = [(match(row["text"], line["text"]), line) for line in lines]
        score, line = max(scored, key=lambda pair: pair[0], default=(0.0, None))
        if line is None or score < MIN_MATCH:
            continue
        box = [int(round(v)) for v in line["xyxy"]]
        row["text_evidence"] = {"line": line["text"], "box": box, "confidence": line["confidence"],
                                "match": round(score, 4)}
        row["box"] = box
        if maps and grid:
            maps[k] = _raised(np.asarray(maps[k]), box, grid["width"], grid["height"]).round(4).tolist()
            changed = True
    if changed:  # as alignment_result combines the phrase maps
        from crossmodal.alignment.align import normalise

        grid["values"] = normalise(np.mean([normalise(np.asarray(m)) for m in maps], axis=0)).round(4).tolist()
    return result


def _raised(values: np.ndarray, box: list[int], width: int, height: int) -> np.ndarray:
    """The map with the cells under ``box`` (picture pixels) at the map's highest value."""
    rows, cols = values.shape
    x0, y0, x1, y1 = box
    c0, c1 = int(x0 * cols / width), max(int(np.ceil(x1 * cols / width)), int(x0 * cols / width) + 1)
    r0, r1 = int(y0 * rows / height), max(int(np.ceil(y1 * rows / height)), int(y0 * rows / height) + 1)
    raised = values.copy()
    raised[r0:r1, c0:c1] = max(float(values.max()), 1e-9)
    return raised
