"""The language resources the analysis reads: jieba's Chinese dictionary, a Snowball stemmer, stop words.

jieba builds its prefix dictionary on first use (2-3 s and about 65 MB on a 2-core machine, from its text file
or from the 9 MB cache it writes beside the system's temp files alike): it is loaded once per process, by the
first thread that meets Chinese text, so a process that never sees Chinese never pays for it. PyStemmer's
stemmer objects are not thread-safe, so each thread has its own (they are small).
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache

from crossmodal.runtime import os_lock

STEMMER_LANGUAGE = "english"
# The stop-word lists of the `stopwords` package (Snowball's English list, 174 words; a 125-word Chinese list).
# `stop-words` was measured too and refused: its English list has 1,333 entries, among them numbers ("10",
# "39") and content words ("act", "added", "affected"), which would drop exactly what people search for.
STOP_WORD_LANGUAGES = ("english", "chinese")

_JIEBA_LOCK = os_lock()
_jieba_tokenizer = None
_thread_state = threading.local()


def chinese_segmenter():
    """The process's jieba tokenizer, its dictionary loaded (the first caller loads it; others wait for it)."""
    global _jieba_tokenizer
    if _jieba_tokenizer is not None:
        return _jieba_tokenizer
    with _JIEBA_LOCK:
        if _jieba_tokenizer is None:
            import jieba

            # jieba logs its dictionary loading at DEBUG on a stderr handler of its own.
            jieba.setLogLevel(logging.WARNING)
            tokenizer = jieba.Tokenizer()
            tokenizer.initialize()
            _jieba_tokenizer = tokenizer
    return _jieba_tokenizer


def chinese_segmenter_loaded() -> bool:
    return _jieba_tokenizer is not None


def stem_words(words: list[str]) -> list[str]:
    """Snowball (Porter 2) English stems, by this thread's stemmer."""
    stemmer = getattr(_thread_state, "stemmer", None)
    if stemmer is None:
        import Stemmer

        stemmer = _thread_state.stemmer = Stemmer.Stemmer(STEMMER_LANGUAGE)
    return stemmer.stemWords(words)


@lru_cache(maxsize=1)
def stop_words() -> frozenset[str]:
    import stopwords

    return frozenset(word.casefold() for language in STOP_WORD_LANGUAGES
                     for word in stopwords.get_stopwords(language))
