"""Text -> terms, by family (crossmodal/lexical/options.py names them).

Every text is first put in one form: Unicode NFKC (full-width letters and digits become ASCII, ligatures
split) and case folding. Then:

- words: Chinese runs are segmented by jieba in search mode (a long word also gives its shorter words);
  other runs of letters and digits are words, stop words dropped, stemmed by Snowball's English stemmer.
- grams and codes tolerate what OCR does to codes. It reads a line without spaces
  (``referenceXH-4562-X5:therostkorbra``), so a code may be glued to the words around it: character n-grams
  of the run still share most of their grams with the code. It confuses look-alike characters
  (``PS-1123-V7`` -> ``Ps-1l23-V7``): case folding and a fold of look-alikes (FOLDS) make them one. It drops or
  swaps separators: code tokens drop them.
- bigrams: overlapping character bigrams of Chinese runs, which match across jieba's word boundaries
  (a query cut mid-word, a misread character inside a word).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from crossmodal.lexical.languages import chinese_segmenter, stem_words, stop_words
from crossmodal.lexical.options import BIGRAMS, CODES, GRAMS, WORDS, LexicalOptions

# Look-alike characters folded into one in grams and code tokens (words keep their letters), by
# LexicalOptions.fold. "skeleton": as Unicode's confusables table (UTS #39, confusables.txt) folds them:
# DIGIT ONE, LATIN CAPITAL LETTER I (i after case folding) and VERTICAL LINE are skeleton "l", DIGIT ZERO is
# "O". "ocr": also 5/S, 8/B and 2/Z, which OCR confuses too but Unicode does not call confusable.
SKELETON_FOLD = {"1": "l", "i": "l", "|": "l", "0": "o"}
FOLDS = {"none": str.maketrans({}), "skeleton": str.maketrans(SKELETON_FOLD),
         "ocr": str.maketrans({**SKELETON_FOLD, "5": "s", "8": "b", "2": "z"})}
APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'"})  # typographic ones, as in "don’t"

# Han ideographs: CJK Unified Ideographs, Extension A, the compatibility block and the supplementary planes.
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
HAN_RUN = re.compile(f"[{HAN}]+")
# A code: alphanumeric runs joined by the separators codes are written with (XH-4562-X5, 2024/05/01, A.17).
CODE = re.compile(f"[^\\W_{HAN}]+(?:[-_/.#][^\\W_{HAN}]+)*")
NOT_ALNUM = re.compile(f"[\\W_{HAN}]+")

MAX_WORD_CHARS = 40  # longer "words" are lines read without spaces: the grams hold them
MIN_CODE_CHARS = 4  # shorter runs with a digit (v7, 3d) are words already
# Unicode puts marks in planes 0 (BMP), 1 and 14 (variation selectors) only.
MARK_PLANES = (range(0x0000, 0x20000), range(0xE0000, 0xF0000))


@lru_cache(maxsize=1)
def word_pattern() -> re.Pattern:
    """A word: letters, digits and marks of any script but Han (which jieba segments), inner apostrophes kept
    so that the stop-word list's "don't" and the stemmer's possessive "'s" apply. The marks (categories Mn,
    Mc, Me: the vowel signs of Indic scripts, the dot of a case-folded "İ") come from the standard library's
    Unicode database, since \\w leaves them out; reading it takes about 40 ms, once, on first use."""
    ranges = []
    for plane in MARK_PLANES:
        marks = [code for code in plane if unicodedata.category(chr(code)).startswith("M")]
        start = previous = marks[0]
        for code in marks[1:] + [None]:
            if code is not None and code == previous + 1:
                previous = code
                continue
            ranges.append(f"{chr(start)}-{chr(previous)}")
            if code is not None:
                start = previous = code
    letter = f"(?:[^\\W_{HAN}]|[{''.join(ranges)}])"
    return re.compile(f"{letter}+(?:'{letter}+)*")


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold().translate(APOSTROPHES)


def analyze(text: str, options: LexicalOptions) -> dict[str, list[str]]:
    """Each family's terms in ``text``, repeated as often as they occur."""
    text = normalize(text)
    analysers = {WORDS: words, GRAMS: grams, CODES: codes, BIGRAMS: bigrams}
    return {family: analysers[family](text, options) for family in options.families}


def words(text: str, options: LexicalOptions) -> list[str]:
    stop = stop_words()
    terms = []
    for run in HAN_RUN.findall(text):
        terms += [t for t in chinese_segmenter().cut_for_search(run) if t not in stop and not t.isspace()]
    latin = [w for w in word_pattern().findall(text) if w not in stop and len(w) <= MAX_WORD_CHARS]
    return terms + stem_words(latin)


def grams(text: str, options: LexicalOptions) -> list[str]:
    """n-grams of each whitespace-delimited chunk's letters and digits (Han ideographs split chunks)."""
    n = options.gram_size
    terms = []
    for chunk in text.split():
        for part in HAN_RUN.split(chunk):
            if options.gram_scope == "codes" and not any(c.isdigit() for c in part):
                continue
            run = NOT_ALNUM.sub("", part).translate(FOLDS[options.fold])
            terms += [run[i:i + n] for i in range(len(run) - n + 1)]
    return terms


def codes(text: str, options: LexicalOptions) -> list[str]:
    terms = []
    for code in CODE.findall(text):
        run = NOT_ALNUM.sub("", code)
        if len(run) >= MIN_CODE_CHARS and any(c.isdigit() for c in run):
            terms.append(run.translate(FOLDS[options.fold]))
    return terms


def bigrams(text: str, options: LexicalOptions) -> list[str]:
    return [run[i:i + 2] for run in HAN_RUN.findall(text) for i in range(len(run) - 1)]
