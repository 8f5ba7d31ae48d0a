"""What the lexical analysis does and how BM25 weighs it: one frozen value, recorded by a collection.

The defaults were chosen by benchmarks/bench_lexical.py on generated pages with OCR noise (docs/lexical.md):
change one only with a new measurement, and bump ANALYZER_VERSION when the terms a text gives change, since
a collection's stored vectors must be rebuilt (reindexed) to match its queries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

ANALYZER_VERSION = 1

WORDS = "w"  # jieba's search-mode terms for Chinese; stemmed, stop-word-free words for other scripts
GRAMS = "g"  # character n-grams of alphanumeric runs, separators dropped, OCR confusables folded
CODES = "c"  # code tokens (a run with a digit, inner separators dropped, confusables folded)
BIGRAMS = "b"  # overlapping Chinese character bigrams
FAMILIES = (WORDS, GRAMS, CODES, BIGRAMS)

GRAM_SCOPES = ("codes", "all")  # grams of runs holding a digit only, or of every run
FOLD_NAMES = ("none", "skeleton", "ocr")  # which look-alike characters grams and codes fold (analysis.FOLDS)


@dataclasses.dataclass(frozen=True)
class LexicalOptions:
    families: tuple[str, ...] = (WORDS, GRAMS, CODES, BIGRAMS)
    gram_size: int = 3
    gram_scope: str = "codes"
    fold: str = "ocr"
    # Each family's share of a document's score (the query side weighs every term 1).
    weights: tuple[tuple[str, float], ...] = ((WORDS, 1.0), (GRAMS, 1.0), (CODES, 1.0), (BIGRAMS, 4.0))
    # BM25: term-frequency saturation k1; each family's length normalisation b (0: none) and expected document
    # length in terms (the engine keeps document frequencies, not lengths, so the average is a constant).
    # Grams and codes are not length-normalised: a page read without spaces has ten times the grams of the same
    # page read with them, and normalising would rank a clean sibling code above the noisy page that has it.
    k1: float = 1.2
    length_normalization: tuple[tuple[str, float], ...] = ((WORDS, 0.75), (GRAMS, 0.0), (CODES, 0.0),
                                                           (BIGRAMS, 0.75))
    average_lengths: tuple[tuple[str, float], ...] = ((WORDS, 256.0), (GRAMS, 256.0), (CODES, 8.0),
                                                      (BIGRAMS, 512.0))

    def __post_init__(self):
        unknown = set(self.families) - set(FAMILIES)
        if unknown or not self.families:
            raise ValueError(f"families must be some of {FAMILIES}, got {self.families}")
        if self.gram_scope not in GRAM_SCOPES:
            raise ValueError(f"gram_scope must be one of {GRAM_SCOPES}, got {self.gram_scope!r}")
        if self.fold not in FOLD_NAMES:
            raise ValueError(f"fold must be one of {FOLD_NAMES}, got {self.fold!r}")
        if self.gram_size < 2:
            raise ValueError(f"gram_size must be at least 2, got {self.gram_size}")
        for name in ("weights", "length_normalization", "average_lengths"):
            missing = set(self.families) - set(dict(getattr(self, name)))
            if missing:
                raise ValueError(f"{name} needs every family; missing {sorted(missing)}")

    def weight(self, family: str) -> float:
        return dict(self.weights)[family]

    def b(self, family: str) -> float:
        return dict(self.length_normalization)[family]

    def average_length(self, family: str) -> float:
        return dict(self.average_lengths)[family]

    def identity(self) -> str:
        """A short name for these options and the analyzer's version: stored with a collection's sparse
        vectors, so that a query is analysed as its documents were, and a change asks for a reindex."""
        fields = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return f"lexical-v{ANALYZER_VERSION}-{hashlib.sha256(fields.encode()).hexdigest()[:12]}"

    def record(self, fields: tuple[str, ...]) -> dict:
        """What a collection keeps of how its sparse vectors were made: these options, the analyzer's version and
        the payload ``fields`` whose text they read (crossmodal/lexical/fields.py)."""
        return {"identity": self.identity(), "analyzer_version": ANALYZER_VERSION,
                "options": dataclasses.asdict(self), "fields": list(fields)}

    @classmethod
    def from_record(cls, record: dict) -> "LexicalOptions | None":
        """The options a collection's record names, or None when another analyzer version made its vectors (its
        queries cannot be analysed as its documents were: the collection needs a reindex)."""
        if record.get("analyzer_version") != ANALYZER_VERSION:
            return None
        options = {key: tuple(tuple(v) if isinstance(v, list) else v for v in value) if isinstance(value, list)
                   else value for key, value in record["options"].items()}
        made = cls(**options)
        return made if made.identity() == record.get("identity") else None


DEFAULT_OPTIONS = LexicalOptions()
