"""Sparse vectors for Qdrant's IDF modifier: BM25 document weights, query terms of weight 1.

With ``Modifier.Idf`` on the sparse vector, the engine scores a point as the sum over shared indices of
query value x document value x idf, idf = ln(1 + (N - n + 0.5) / (n + 0.5)) from the document frequencies it
keeps. So the document side carries BM25's term-frequency part, tf (k1 + 1) / (tf + k1 (1 - b + b len/avg)),
and the query side 1 per distinct term: together, BM25.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter

from crossmodal.lexical.analysis import analyze, codes, normalize
from crossmodal.lexical.options import DEFAULT_OPTIONS, LexicalOptions

# A text longer than this is cut before analysis: a page's text is a few thousand characters; the cap keeps
# one pasted book from holding a worker for seconds and from making a vector of a hundred thousand terms.
MAX_TEXT_CHARS = 100_000


@dataclasses.dataclass(frozen=True)
class SparseTerms:
    """Indices ascending and unique, as the engine wants them; values > 0."""
    indices: list[int]
    values: list[float]

    def __len__(self) -> int:
        return len(self.indices)


def term_index(family: str, term: str) -> int:
    """A term's 32-bit index: BLAKE2b with a 4-byte digest of ``family:term`` in UTF-8, read little-endian.

    Python's hash() is salted per process (PYTHONHASHSEED), so it cannot name a stored dimension. BLAKE2b is
    in the standard library (no dependency), specified (RFC 7693: the same on every platform and version) and
    uniform, so collisions are those of any random 32-bit map: about n^2 / 2^33 pairs for n distinct terms
    (measured in docs/lexical.md). The family prefix keeps a word and an n-gram of the same letters apart."""
    digest = hashlib.blake2b(f"{family}:{term}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def document_vector(text: str, options: LexicalOptions = DEFAULT_OPTIONS) -> SparseTerms:
    """BM25's document side: each term's saturated, length-normalised frequency times its family's weight.
    Each family is normalised by its own length, so a page's many n-grams do not shrink its words' weights."""
    weights: dict[int, float] = {}
    for family, terms in analyze(text[:MAX_TEXT_CHARS], options).items():
        if not terms:
            continue
        b = options.b(family)
        norm = options.k1 * (1 - b + b * len(terms) / options.average_length(family))
        share = options.weight(family)
        for term, tf in Counter(terms).items():
            index = term_index(family, term)
            # Two terms hashed to one index (rare: see term_index) add up, as the engine would have them.
            weights[index] = weights.get(index, 0.0) + share * tf * (options.k1 + 1) / (tf + norm)
    return _sorted(weights)


def query_vector(text: str, options: LexicalOptions = DEFAULT_OPTIONS) -> SparseTerms:
    """BM25's query side: every distinct term once, weight 1 (the engine adds its IDF)."""
    indices = {term_index(family, term) for family, terms in analyze(text[:MAX_TEXT_CHARS], options).items()
               for term in terms}
    return _sorted(dict.fromkeys(indices, 1.0))


def has_code(text: str, options: LexicalOptions = DEFAULT_OPTIONS) -> bool:
    """Whether ``text`` holds a code token (analysis.codes: letters and digits, 4 characters or more, such as a part
    or invoice number): a query that asks for an exact string."""
    return bool(codes(normalize(text[:MAX_TEXT_CHARS]), options))


def _sorted(weights: dict[int, float]) -> SparseTerms:
    indices = sorted(weights)
    return SparseTerms(indices, [weights[i] for i in indices])
