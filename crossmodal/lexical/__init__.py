"""The lexical index: text as sparse vectors for Qdrant's IDF modifier (BM25 scored in the engine).

``document_vector`` weighs an item's terms with BM25's term-frequency saturation and length normalisation;
``query_vector`` gives each query term weight 1; the engine multiplies in each term's IDF from the document
frequencies it keeps. Terms come in families (words, character n-grams of codes, normalised code tokens,
Chinese character bigrams) hashed to stable 32-bit indices: ``analysis.py`` says why each exists,
docs/lexical.md has the measurements that chose them and the engine API they feed.
"""

from crossmodal.lexical.fields import DEFAULT_TEXT_FIELDS, document_text
from crossmodal.lexical.sparse import (DEFAULT_OPTIONS, LexicalOptions, SparseTerms, document_vector, has_code,
                                       query_vector)

__all__ = ["DEFAULT_OPTIONS", "DEFAULT_TEXT_FIELDS", "LexicalOptions", "SparseTerms", "document_text",
           "document_vector", "has_code", "query_vector"]
