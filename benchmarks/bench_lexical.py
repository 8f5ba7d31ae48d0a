"""The lexical index (crossmodal/lexical/): exact-code and phrase retrieval under OCR noise, speed, collisions.

Retrieval: generated pages, each with a unique code among sentences, pass through a documented OCR noise
model (``NoiseModel``); the query is the clean code (or a clean Chinese phrase), and Recall@1 is the share
of queries whose own page scores strictly highest (a tie counts as a miss). The scorer is a pure-Python
BM25 over the sparse vectors (``ReferenceBm25``): the same sum of query value x document value x IDF that
Qdrant computes with ``Modifier.Idf`` (idf = ln(1 + (N - n + 0.5) / (n + 0.5))), so the figures measure the
analysis, not a store. Each term-family choice is measured against words alone, and against the engine's own
BM25 (qdrant-edge's ``Bm25``, multilingual tokenizer) in the same run.

    python benchmarks/bench_lexical.py [--docs 2000] [--zh-docs 1000] [--only retrieval,chinese,speed,...]
                                       [--analyzers "words,words + grams,default options"]

English sentences are the Python documentation's help topics (``pydoc_data``, in every CPython); Chinese
ones are drawn from jieba's dictionary by word frequency (which favours jieba's segmentation: its words
are the dictionary's).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import statistics
import string
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save, table  # noqa: E402
from crossmodal.lexical import options as lexical  # noqa: E402
from crossmodal.lexical.sparse import SparseTerms, document_vector, query_vector  # noqa: E402

LINE_CHARS = 72  # an A4 line of 11-pt text
ZH_LINE_CHARS = 36
ZH_PAGE_SENTENCES = (32, 48)  # about 1,000 characters: a page of 28 lines
PAGE_SENTENCES = (14, 22)  # about 1,700-2,300 characters: a scanned page of 25-35 lines
CODE_FORMATS = ("LL-DDDD-LD", "LLL-DDDDDD", "LDDDLLDD", "DDDD-DDDD-DD", "LL-DDD-LLL")
SIBLING_SHARE = 0.25  # pages whose code differs from another page's in one character: invoice series
CODE_LINES = ("Reference {code}: {sentence}", "{sentence} Part {code}", "Invoice {code} {sentence}",
              "{sentence} (serial {code}) {sentence}")
ZH_CODE_LINES = ("编号：{code}，{sentence}", "{sentence}（序列号 {code}）", "发票号码 {code} {sentence}")


# -- OCR noise ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NoiseModel:
    """What the shipped recognizer did to generated scans (issue 45), as rates:

    - ``spaceless_pages``: the share of pages whose lines are read without a single space
      (``referenceXH-4562-X5:therostkorbra``; two of four pages there);
    - ``confusion``: each character with a look-alike is misread as it with this probability: 1/l/I/|,
      0/O/o, 5/S, 8/B, 2/Z, rn/m, and a case flip of letters whose cases look alike (``PS`` -> ``Ps``). The
      analysis folds only 1/l/I and 0/O (Unicode's confusables), so 5/S, 8/B, 2/Z and rn/m stay errors;
    - ``separator``: a hyphen is dropped or read as another mark;
    - ``cut_lines``: the share of lines that lose their last 1-12 characters (a code at a line's end with
      them);
    - Chinese: ``zh_drop`` and ``zh_substitute``, per character, a character dropped or read as another.
    """
    spaceless_pages: float = 0.5
    confusion: float = 0.08
    separator: float = 0.1
    cut_lines: float = 0.1
    zh_drop: float = 0.02
    zh_substitute: float = 0.03

    LOOK_ALIKES = {"1": "lI|", "l": "1I", "I": "l1", "0": "Oo", "O": "0", "o": "0", "5": "S", "S": "5s",
                   "8": "B", "B": "8", "2": "Z", "Z": "2z"}
    ALIKE_CASES = set("cospuvwxzk")

    def page(self, lines: list[str], rng, han: str = "") -> str:
        spaceless = rng.random() < self.spaceless_pages
        return "\n".join(self.line(line, rng, spaceless, han) for line in lines)

    def line(self, line: str, rng, spaceless: bool, han: str) -> str:
        if spaceless:
            line = line.replace(" ", "")
        line = line.replace("rn", "m") if rng.random() < self.confusion else line
        out = []
        for ch in line:
            if han and "\u4e00" <= ch <= "\u9fff":
                if rng.random() < self.zh_drop:
                    continue
                if rng.random() < self.zh_substitute:
                    ch = han[rng.integers(len(han))]
            elif ch == "-" and rng.random() < self.separator:
                ch = str(rng.choice(["", "~", ".", "—", " "]))
            elif rng.random() < self.confusion:
                ch = self.misread(ch, rng)
            out.append(ch)
        line = "".join(out)
        if rng.random() < self.cut_lines:
            line = line[:max(0, len(line) - int(rng.integers(1, 13)))]
        return line

    def misread(self, ch: str, rng) -> str:
        if ch in self.LOOK_ALIKES:
            choices = self.LOOK_ALIKES[ch]
            return choices[rng.integers(len(choices))]
        if ch.lower() in self.ALIKE_CASES:
            return ch.swapcase()
        return ch


# -- generated pages ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Page:
    code: str
    clean: str
    noisy: str


def english_sentences() -> list[str]:
    from pydoc_data.topics import topics

    text = re.sub(r"\s+", " ", " ".join(topics[k] for k in sorted(topics)))
    sentences = re.split(r"(?<=[.!?])\s+", text)
    return [s for s in sentences if 6 <= len(s.split()) <= 30 and not re.search(r"[(){}\[\]=*>|~+]", s)]


def chinese_words() -> tuple[list[str], np.ndarray]:
    import jieba

    words, counts = [], []
    with open(os.path.join(os.path.dirname(jieba.__file__), "dict.txt"), encoding="utf-8") as f:
        for line in f:
            word, count, _ = line.split(" ")
            if 1 <= len(word) <= 4 and all("\u4e00" <= c <= "\u9fff" for c in word) and int(count) >= 20:
                words.append(word)
                counts.append(int(count))
    p = np.asarray(counts, dtype=np.float64) ** 0.75  # word2vec's smoothing: not only the commonest words
    return words, p / p.sum()


def unique_codes(count: int, rng) -> list[str]:
    codes: list[str] = []
    seen: set[str] = set()
    while len(codes) < count:
        if codes and rng.random() < SIBLING_SHARE:
            code = sibling(codes[rng.integers(len(codes))], rng)
        else:
            code = "".join(random_char(c, rng) for c in CODE_FORMATS[rng.integers(len(CODE_FORMATS))])
        if code not in seen:
            seen.add(code)
            codes.append(code)
    return codes


def random_char(kind: str, rng) -> str:
    if kind == "L":
        return string.ascii_uppercase[rng.integers(26)]
    if kind == "D":
        return string.digits[rng.integers(10)]
    return kind


def sibling(code: str, rng) -> str:
    digits = [i for i, c in enumerate(code) if c.isdigit()]
    i = digits[rng.integers(len(digits))]
    return code[:i] + str((int(code[i]) + 1 + rng.integers(8)) % 10) + code[i + 1:]


def english_pages(count: int, noise: NoiseModel, seed: int = 0) -> list[Page]:
    rng = np.random.default_rng(seed)
    sentences = english_sentences()
    pages = []
    for code in unique_codes(count, rng):
        chosen = [sentences[i] for i in rng.integers(len(sentences), size=rng.integers(*PAGE_SENTENCES))]
        template = CODE_LINES[rng.integers(len(CODE_LINES))]
        chosen.insert(rng.integers(len(chosen) + 1), template.format(
            code=code, sentence=sentences[rng.integers(len(sentences))].rstrip(".")))
        lines = textwrap.wrap(" ".join(chosen), LINE_CHARS, break_on_hyphens=False)
        pages.append(Page(code, "\n".join(lines), noise.page(lines, rng)))
    return pages


def chinese_pages(count: int, noise: NoiseModel, seed: int = 0) -> tuple[list[Page], list[list[str]]]:
    """Pages of generated Chinese sentences with a code line; also each page's words, for phrase queries."""
    rng = np.random.default_rng(seed)
    vocabulary, p = chinese_words()
    han = "".join(sorted({c for w in vocabulary[:5000] for c in w}))
    pages, page_words = [], []
    for code in unique_codes(count, rng):
        words: list[str] = []
        sentences = []
        for _ in range(rng.integers(*ZH_PAGE_SENTENCES)):
            sentence = [vocabulary[i] for i in rng.choice(len(vocabulary), size=rng.integers(6, 14), p=p)]
            words += sentence
            sentences.append("".join(sentence) + "。")
        template = ZH_CODE_LINES[rng.integers(len(ZH_CODE_LINES))]
        sentences.insert(rng.integers(len(sentences) + 1), template.format(code=code, sentence=sentences[0]))
        text = "".join(sentences)
        lines = [text[i:i + ZH_LINE_CHARS] for i in range(0, len(text), ZH_LINE_CHARS)]
        pages.append(Page(code, text, noise.page(lines, rng, han)))
        page_words.append(words)
    return pages, page_words


def chinese_phrase_queries(pages: list[Page], page_words: list[list[str]], seed: int = 0):
    """Per page, a phrase found on no other clean page: whole words (2-3 of the page's generated words) and
    a span of 4-6 characters cut anywhere (a query that splits jieba's words)."""
    rng = np.random.default_rng(seed)
    everything = "\n".join(p.clean for p in pages)
    aligned, spans = [], []
    for number, (page, words) in enumerate(zip(pages, page_words)):
        for _ in range(20):
            start = int(rng.integers(len(words) - 3))
            phrase = "".join(words[start:start + int(rng.integers(2, 4))])
            if len(phrase) >= 3 and everything.count(phrase) == 1:
                aligned.append((number, phrase))
                break
        for _ in range(20):
            size = int(rng.integers(4, 7))
            start = int(rng.integers(len(page.clean) - size))
            phrase = page.clean[start:start + size]
            if all("\u4e00" <= c <= "\u9fff" for c in phrase) and everything.count(phrase) == 1:
                spans.append((number, phrase))
                break
    return aligned, spans


# -- the reference scorer -----------------------------------------------------------------------------------------
class ReferenceBm25:
    """What Qdrant computes for a sparse vector with Modifier.Idf, in pure Python over an inverted index."""

    def __init__(self, vectors: list[SparseTerms]):
        self.count = len(vectors)
        self.postings: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for number, vector in enumerate(vectors):
            for index, value in zip(vector.indices, vector.values):
                self.postings[index].append((number, value))

    def idf(self, index: int) -> float:
        df = len(self.postings.get(index, ()))
        return math.log(1 + (self.count - df + 0.5) / (df + 0.5))

    def scores(self, query: SparseTerms) -> dict[int, float]:
        scores: dict[int, float] = defaultdict(float)
        for index, weight in zip(query.indices, query.values):
            idf = self.idf(index)
            for number, value in self.postings.get(index, ()):
                scores[number] += weight * value * idf
        return scores


def recall_at_1(index: ReferenceBm25, queries: list[tuple[int, SparseTerms]]) -> float:
    hits = 0
    for target, query in queries:
        scores = index.scores(query)
        own = scores.get(target, 0.0)
        hits += own > 0 and all(score < own for number, score in scores.items() if number != target)
    return hits / len(queries)


@dataclasses.dataclass(frozen=True)
class Analyzer:
    """One way of making sparse vectors: crossmodal's analysis with some options, or the engine's BM25."""
    name: str
    options: lexical.LexicalOptions | None = None  # None: qdrant-edge's Bm25 (multilingual tokenizer)

    def vectors(self):
        if self.options is not None:
            return (lambda text: document_vector(text, self.options)), (lambda text: query_vector(text, self.options))
        from qdrant_edge import Bm25, Bm25Config, TokenizerType

        model = Bm25(Bm25Config(tokenizer=TokenizerType.Multilingual))
        convert = lambda v: SparseTerms(list(v.indices), list(v.values))  # noqa: E731
        return (lambda text: convert(model.embed_document(text))), (lambda text: convert(model.embed_query(text)))


def options(**changes) -> lexical.LexicalOptions:
    return dataclasses.replace(lexical.DEFAULT_OPTIONS, **changes)


def per_family(field: str, **by_family) -> tuple[tuple[str, float], ...]:
    """The default options' per-family ``field`` with some families changed."""
    return tuple((dict(getattr(lexical.DEFAULT_OPTIONS, field)) | by_family).items())


W, G, C, B = lexical.WORDS, lexical.GRAMS, lexical.CODES, lexical.BIGRAMS
NORMALISED = per_family("length_normalization", g=0.75, c=0.75)
ENGLISH_ANALYZERS = (  # in the order the choices were made; "default options" is what ships
    Analyzer("engine Bm25 (multilingual)"),
    Analyzer("words", options(families=(W,))),
    Analyzer("words + grams, length-normalised", options(families=(W, G), length_normalization=NORMALISED)),
    Analyzer("words + grams", options(families=(W, G))),
    Analyzer("words + codes", options(families=(W, C))),
    Analyzer("words + grams + codes, fold none", options(families=(W, G, C), fold="none")),
    Analyzer("  fold skeleton (1/l/I, 0/O)", options(families=(W, G, C), fold="skeleton")),
    Analyzer("  fold ocr (+ 5/S, 8/B, 2/Z)", options(families=(W, G, C))),
    Analyzer("  grams weight 0.5", options(families=(W, G, C), weights=per_family("weights", g=0.5))),
    Analyzer("  4-grams", options(families=(W, G, C), gram_size=4)),
    Analyzer("  grams of every run", options(families=(W, G, C), gram_scope="all")),
    Analyzer("default options", lexical.DEFAULT_OPTIONS),
)
CHINESE_ANALYZERS = (
    Analyzer("engine Bm25 (multilingual)"),
    Analyzer("jieba words", options(families=(W,))),
    Analyzer("bigrams", options(families=(B,))),
    Analyzer("jieba words + bigrams weight 1", options(families=(W, B), weights=per_family("weights", b=1.0))),
    Analyzer("jieba words + bigrams weight 2", options(families=(W, B), weights=per_family("weights", b=2.0))),
    Analyzer("jieba words + bigrams weight 4", options(families=(W, B), weights=per_family("weights", b=4.0))),
    Analyzer("default options", lexical.DEFAULT_OPTIONS),
)


def measure(analyzer: Analyzer, pages: list[Page], query_sets: dict[str, list[tuple[int, str]]]) -> dict:
    embed_document, embed_query = analyzer.vectors()
    started = time.perf_counter()
    vectors = [embed_document(page.noisy) for page in pages]
    seconds = time.perf_counter() - started
    index = ReferenceBm25(vectors)
    row = {"analyzer": analyzer.name}
    for name, queries in query_sets.items():
        row[name] = round(recall_at_1(index, [(t, embed_query(q)) for t, q in queries]), 4)
    row["terms_per_page"] = round(statistics.fmean(len(v) for v in vectors), 1)
    row["pages_per_s"] = round(len(pages) / seconds, 1)
    return row


def chosen(analyzers, names: str | None):
    """The analyzers whose names are in ``names`` (comma-separated), or all."""
    wanted = None if not names else {n.strip() for n in names.split(",")}
    return [a for a in analyzers if wanted is None or a.name.strip() in wanted]


def retrieval(docs: int, names: str | None = None) -> dict:
    noise = NoiseModel()
    pages = english_pages(docs, noise)
    codes = [(number, page.code) for number, page in enumerate(pages)]
    clean_pages = [Page(p.code, p.clean, p.clean) for p in pages]
    rows = []
    for analyzer in chosen(ENGLISH_ANALYZERS, names):
        row = measure(analyzer, pages, {"code_recall@1": codes})
        row["clean_code_recall@1"] = measure(analyzer, clean_pages, {"r": codes})["r"]
        rows.append(row)
        print(table([row], list(row)), flush=True)
    return {"pages": docs, "noise": dataclasses.asdict(noise), "rows": rows}


def chinese(docs: int, names: str | None = None) -> dict:
    noise = NoiseModel()
    pages, page_words = chinese_pages(docs, noise)
    aligned, spans = chinese_phrase_queries(pages, page_words)
    query_sets = {"code_recall@1": [(n, p.code) for n, p in enumerate(pages)], "word_phrase_recall@1": aligned,
                  "char_span_recall@1": spans}
    rows = []
    for analyzer in chosen(CHINESE_ANALYZERS, names):
        rows.append(measure(analyzer, pages, query_sets))
        print(table(rows[-1:], list(rows[-1])), flush=True)
    return {"pages": docs, "queries": {k: len(v) for k, v in query_sets.items()}, "rows": rows}


# -- speed, footprint, collisions ---------------------------------------------------------------------------------
PAGE_CHARS = 2000


def pages_of(pages: list[Page], chars: int) -> list[str]:
    """As many texts of exactly ``chars`` characters as the pages' clean texts, run together, make."""
    text = "\n".join(p.clean for p in pages)
    return [text[i:i + chars] for i in range(0, len(text) - chars + 1, chars)]


def speed(repeat: int = 200) -> dict:
    """Texts per second for a 2,000-character page, English and Chinese, each side; the engine's Bm25
    (Rust) on the same texts as the baseline of the same run."""
    english = english_pages(repeat, NoiseModel(spaceless_pages=0.0))
    zh, _ = chinese_pages(repeat, NoiseModel(zh_drop=0, zh_substitute=0))
    texts = {"english": pages_of(english, PAGE_CHARS), "chinese": pages_of(zh, PAGE_CHARS)}
    document_vector(texts["chinese"][0])  # jieba's dictionary, loaded once per process
    rows = []
    for analyzer in (Analyzer("crossmodal (default options)", lexical.DEFAULT_OPTIONS),
                     Analyzer("engine Bm25 (multilingual)")):
        embed_document, embed_query = analyzer.vectors()
        for language, batch in texts.items():
            started = time.perf_counter()
            for text in batch:
                embed_document(text)
            per_s = len(batch) / (time.perf_counter() - started)
            started = time.perf_counter()
            queries = english if language == "english" else zh
            for page in queries:
                embed_query(page.code)
            query_ms = (time.perf_counter() - started) / len(queries) * 1000
            rows.append({"analyzer": analyzer.name, "language": language,
                         "chars": round(statistics.fmean(map(len, batch))), "pages_per_s": round(per_s, 1),
                         "code_query_ms": round(query_ms, 3)})
    engine = {r["language"]: r["pages_per_s"] for r in rows if r["analyzer"].startswith("engine")}
    for row in rows:
        row["vs_engine"] = round(row["pages_per_s"] / engine[row["language"]], 2)
    return {"rows": rows}


FOOTPRINT = """
import json, os, resource, sys, time
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = rss_mb()
started = time.perf_counter()
import crossmodal.lexical.sparse as sparse
sparse.document_vector("plain English text, no Chinese")
english = time.perf_counter() - started
middle = rss_mb()
started = time.perf_counter()
sparse.document_vector("我们在北京大学学习")
print(json.dumps({"import_and_english_s": round(english, 3), "english_rss_mb": round(middle - before, 1),
                  "jieba_load_s": round(time.perf_counter() - started, 3),
                  "jieba_rss_mb": round(rss_mb() - middle, 1)}))
"""


def footprint() -> dict:
    """jieba's dictionary load, in a fresh process: cold (no cache file yet: it builds one) and warm."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TMPDIR": tmp}  # jieba keeps its cache beside the system's temp files
        for state in ("cold", "warm"):
            out = subprocess.run([sys.executable, "-c", FOOTPRINT], env=env, capture_output=True, text=True,
                                 check=True, cwd=Path(__file__).resolve().parents[1]).stdout
            import json

            rows.append({"cache": state, **json.loads(out.strip().splitlines()[-1])})
        rows[-1]["cache_file_mb"] = round(os.path.getsize(os.path.join(tmp, "jieba.cache")) / 2**20, 1)
    return {"rows": rows}


def collisions(docs: int) -> dict:
    """Distinct terms that share an index: over jieba's whole dictionary as words, every 3-gram of [a-z0-9],
    and the terms of the generated pages; against the n^2 / 2^33 pairs a random 32-bit map gives."""
    import jieba

    from crossmodal.lexical.analysis import analyze
    from crossmodal.lexical.sparse import term_index

    terms: set[tuple[str, str]] = set()
    with open(os.path.join(os.path.dirname(jieba.__file__), "dict.txt"), encoding="utf-8") as f:
        terms |= {(lexical.WORDS, line.split(" ")[0].casefold()) for line in f}
    alphabet = string.ascii_lowercase + string.digits
    terms |= {(lexical.GRAMS, a + b + c) for a in alphabet for b in alphabet for c in alphabet}
    every = options(gram_scope="all")
    for page in english_pages(docs, NoiseModel()) + chinese_pages(docs // 2, NoiseModel())[0]:
        for family, found in analyze(page.noisy, every).items():
            terms |= {(family, t) for t in found}
    by_index: dict[int, int] = defaultdict(int)
    for family, term in terms:
        by_index[term_index(family, term)] += 1
    pairs = sum(k * (k - 1) // 2 for k in by_index.values())
    n = len(terms)
    return {"terms": n, "colliding_pairs": pairs, "expected_pairs": round(n * (n - 1) / 2 / 2**32, 1)}


SECTIONS = {"retrieval": lambda a: retrieval(a.docs, a.analyzers),
            "chinese": lambda a: chinese(a.zh_docs, a.analyzers),
            "speed": lambda a: speed(), "footprint": lambda a: footprint(), "collisions": lambda a: collisions(a.docs)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000, help="English pages (default 2000)")
    parser.add_argument("--zh-docs", type=int, default=1000, help="Chinese pages (default 1000)")
    parser.add_argument("--tag", help="a suffix for the result file's name (results/lexical-TAG.json)")
    parser.add_argument("--analyzers", help="comma-separated analyzer names to measure (default: all)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)}")
    args = parser.parse_args(argv)
    chosen = args.only.split(",")
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}")
    result = {}
    for name in chosen:
        started = time.perf_counter()
        result[name] = SECTIONS[name](args)
        print(f"== {name} ({time.perf_counter() - started:.0f} s)")
        rows = result[name].get("rows")
        print(table(rows, list(rows[0])) if rows else result[name], flush=True)
    print(f"saved {save('lexical' + ('-' + args.tag if args.tag else ''), result)}")
    return result


if __name__ == "__main__":
    main()
