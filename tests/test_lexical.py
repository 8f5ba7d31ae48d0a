"""The lexical index's analysis and sparse vectors (crossmodal/lexical/), and the engine APIs they feed: sparse
vectors with the IDF modifier, sparse and hybrid (RRF, DBSF) queries with filters, in the embedded engine and
in qdrant-client's local mode (docs/lexical.md, "Engine API")."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossmodal.errors import CrossmodalError
from crossmodal.lexical import DEFAULT_OPTIONS, DEFAULT_TEXT_FIELDS, document_text, document_vector, query_vector
from crossmodal.lexical.analysis import analyze
from crossmodal.lexical.options import BIGRAMS, CODES, GRAMS, WORDS, LexicalOptions
from crossmodal.lexical.sparse import MAX_TEXT_CHARS, term_index

ROOT = Path(__file__).resolve().parents[1]


def terms(text: str, family: str, options: LexicalOptions = DEFAULT_OPTIONS) -> list[str]:
    return analyze(text, options)[family]


# -- analysis -------------------------------------------------------------------------------------------------------
def test_english_words_are_stemmed_and_stop_words_dropped():
    assert terms("The running dogs don’t see it's jumping", WORDS) == ["run", "dog", "see", "jump"]
    # NFKC and case folding first: full-width letters, ligatures, capitals.
    assert terms("ＲＵＮＮＩＮＧ ﬁles", WORDS) == ["run", "file"]


def test_words_of_other_scripts_keep_their_marks():
    assert terms("Café résumé हिन्दी", WORDS) == ["café", "résumé", "हिन्दी"]


def test_chinese_is_segmented_by_jieba_in_search_mode():
    words = terms("我们在北京大学学习自然语言处理", WORDS)
    assert {"北京大学", "北京", "大学", "自然语言", "自然", "语言", "处理"} <= set(words)
    assert "在" not in words  # a Chinese stop word
    assert terms("北京大学", BIGRAMS) == ["北京", "京大", "大学"]


def test_mixed_text_gives_words_to_each_language():
    words = terms("编号ＰＳ－１１２３的零件 is shipping", WORDS)
    assert {"编号", "零件", "ps", "1123", "ship"} <= set(words)


def test_codes_lose_separators_and_fold_look_alikes():
    # 1/l/I -> l, 0/O -> o, 5/S -> s, 2/Z -> z, 8/B -> b
    assert terms("Part PS-1123-V7, order 2024/05/01.", CODES) == ["psllz3v7", "zoz4osol"]
    clean, misread = terms("PS-1123-V7", CODES), terms("Ps-1l23-V7", CODES)
    assert clean == misread and len(clean) == 1
    assert terms("PS 1123 V7", CODES) == ["llz3"]  # the parts alone: only the one with four characters
    assert terms("v7 and 3d", CODES) == []  # short runs with a digit are words


def test_a_code_glued_to_words_keeps_its_grams():
    """OCR read the line without spaces and cut its end: the code's 3-grams are still there, mostly."""
    code = set(terms("XH-4562-X5", GRAMS))
    assert len(code) == 6
    assert code <= set(terms("referenceXH-4562-X5:therostkorbra", GRAMS))
    assert len(code & set(terms("PartXH-4562-", GRAMS))) == 4
    assert len(code & set(terms("PartXH-4S62-X5", GRAMS))) == 6  # 5/S folded


def test_gram_scope_codes_skips_runs_without_digits():
    assert terms("plain words only", GRAMS) == []
    every = dataclasses.replace(DEFAULT_OPTIONS, gram_scope="all")
    assert "pla" in terms("plain words only", GRAMS, every)


def test_the_noisy_page_outranks_its_clean_sibling():
    """A clean code query finds its page read with OCR noise before a page holding a code one digit away, with
    BM25 scored as the engine scores it (benchmarks/bench_lexical.py's reference scorer)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_lexical import ReferenceBm25

    pages = ["Invoice referenceXH-4562-X5:therostkorbra of the\nnamespace is searched",
             "Invoice XH-4662-X5 for the red bicycle", "Invoice XH-4561-X5 for a blue car",
             "Ps-1l23-V7 shipped on time"]
    index = ReferenceBm25([document_vector(p) for p in pages])
    for target, query in ((0, "XH-4562-X5"), (3, "PS-1123-V7")):
        scores = index.scores(query_vector(query))
        assert max(scores, key=scores.get) == target


def test_grams_and_codes_measure_better_than_words_alone_under_noise():
    """The benchmark's choice in small: generated pages with OCR noise, exact-code Recall@1."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_lexical import NoiseModel, ReferenceBm25, english_pages, recall_at_1

    pages = english_pages(100, NoiseModel(), seed=3)

    def recall(options):
        index = ReferenceBm25([document_vector(p.noisy, options) for p in pages])
        return recall_at_1(index, [(n, query_vector(p.code, options)) for n, p in enumerate(pages)])

    words_only = recall(dataclasses.replace(DEFAULT_OPTIONS, families=(WORDS,)))
    assert recall(DEFAULT_OPTIONS) >= words_only + 0.1


# -- sparse vectors -------------------------------------------------------------------------------------------------
def test_document_side_is_bm25_term_frequency_and_query_side_is_ones():
    options = DEFAULT_OPTIONS
    document = document_vector("dog dog cat")
    assert document.indices == sorted(set(document.indices))
    weight = dict(zip(document.indices, document.values))
    k1, b, average = options.k1, options.b(WORDS), options.average_length(WORDS)
    norm = k1 * (1 - b + b * 3 / average)
    assert weight[term_index(WORDS, "dog")] == pytest.approx(2 * (k1 + 1) / (2 + norm))
    assert weight[term_index(WORDS, "cat")] == pytest.approx(1 * (k1 + 1) / (1 + norm))
    query = query_vector("dog dog cat")
    assert query.indices == sorted([term_index(WORDS, "dog"), term_index(WORDS, "cat")])
    assert query.values == [1.0, 1.0]


def test_words_are_length_normalised_and_grams_are_not():
    short, long = document_vector("PS-1123-V7 bicycle"), document_vector("PS-1123-V7 bicycle " + "tree " * 300)
    word, gram = term_index(WORDS, "bicycl"), term_index(GRAMS, "psl")
    assert dict(zip(short.indices, short.values))[word] > dict(zip(long.indices, long.values))[word]
    assert dict(zip(short.indices, short.values))[gram] == dict(zip(long.indices, long.values))[gram]


def test_empty_and_stop_word_texts_give_empty_vectors():
    assert len(document_vector("")) == 0 and len(query_vector("the of and")) == 0


def test_a_huge_text_is_cut_before_analysis():
    tail = " XH-4562-X5"
    assert term_index(CODES, "xh4s6zx5") not in document_vector("a " * MAX_TEXT_CHARS + tail).indices


def test_indices_are_stable_across_processes_and_threads():
    """Pinned values (a stored collection depends on them), and the same vectors in a process with another hash
    seed, analysing Chinese in four threads at once (jieba loaded once, by whichever thread comes first)."""
    assert term_index(WORDS, "dog") == 146710480
    texts = ["我们在北京大学学习 PS-1123-V7"] * 4 + ["running dogs"]
    script = ("import json, sys, concurrent.futures as cf\n"
              "from crossmodal.lexical import query_vector\n"
              "with cf.ThreadPoolExecutor(4) as pool:\n"
              "    print(json.dumps([v.indices for v in pool.map(query_vector, json.loads(sys.argv[1]))]))\n")
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    run = subprocess.run([sys.executable, "-c", script, json.dumps(texts)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONHASHSEED": seed})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [query_vector(t).indices for t in texts]


def test_options_are_checked_and_named():
    with pytest.raises(ValueError, match="families"):
        LexicalOptions(families=("w", "x"))
    with pytest.raises(ValueError, match="fold"):
        LexicalOptions(fold="all")
    changed = dataclasses.replace(DEFAULT_OPTIONS, gram_size=4)
    assert DEFAULT_OPTIONS.identity().startswith("lexical-v1-") and changed.identity() != DEFAULT_OPTIONS.identity()


# -- document_text --------------------------------------------------------------------------------------------------
def test_document_text_reads_the_default_fields_in_order():
    payload = {"source": "scan-PS-1123.pdf#page=2", "caption": "A receipt", "text": "A receipt", "tags": ["paper", " "],
               "ocr_text": "Total 12.50", "metadata": {"sku": "XH-4562-X5", "count": 3, "paid": True,
                                                       "vendor": {"name": "ACME"}},
               "thumbnail": "iVBORw0KGgo", "width": 640}
    assert DEFAULT_TEXT_FIELDS == ("caption", "text", "ocr_text", "tags", "metadata", "source")
    assert document_text(payload).split("\n") == ["A receipt", "Total 12.50", "paper", "XH-4562-X5", "3", "ACME",
                                                  "scan-PS-1123.pdf#page=2"]


def test_document_text_picks_dotted_fields_and_refuses_bad_lists():
    payload = {"caption": None, "metadata": {"sku": "XH-4562-X5", "note": "internal"}}
    assert document_text(payload, ["caption", "metadata.sku", "missing.field"]) == "XH-4562-X5"
    for bad in ("caption", [], ["caption", 3], [" "]):
        with pytest.raises(CrossmodalError) as caught:
            document_text(payload, bad)
        assert caught.value.param == "fields"


# -- the engine APIs the store integration relies on ----------------------------------------------------------------
TEXTS = ["invoice XH-4562-X5 for the red bicycle", "part PS-1123-V7 blue car", "the red car and a blue bicycle",
         "nothing here at all"]
DENSE = [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0.7, 0.7, 0, 0], [0, 0, 1.0, 0]]


def reference_score(query, document, documents) -> float:
    """Qdrant's IDF modifier: sum over shared indices of query x document x ln(1 + (N - n + 0.5) / (n + 0.5)),
    N and n over the points that have the sparse vector."""
    values = dict(zip(document.indices, document.values))
    score = 0.0
    for index, weight in zip(query.indices, query.values):
        if index in values:
            df = sum(index in d.indices for d in documents)
            score += weight * values[index] * math.log(1 + (len(documents) - df + 0.5) / (df + 0.5))
    return score


class EdgeEngine:
    def __init__(self, path):
        from qdrant_edge import (Distance, EdgeConfig, EdgeShard, EdgeSparseVectorParams, EdgeVectorParams,
                                 Modifier)

        self.shard = EdgeShard.create(str(path), EdgeConfig(
            vectors={"image": EdgeVectorParams(size=4, distance=Distance.Cosine)},
            sparse_vectors={"lexical": EdgeSparseVectorParams(modifier=Modifier.Idf)}))

    def upsert(self, rows):
        from qdrant_edge import Point, SparseVector, UpdateOperation

        self.shard.update(UpdateOperation.upsert_points([
            Point(pid, {"image": dense} | ({"lexical": SparseVector(s.indices, s.values)} if s else {}), payload)
            for pid, dense, s, payload in rows]))

    def sparse(self, query, limit=5):
        from qdrant_edge import Query, QueryRequest, SparseVector

        return self.shard.query(QueryRequest(limit=limit, query=Query.Nearest(
            SparseVector(query.indices, query.values), using="lexical")))

    def hybrid(self, dense, query, fusion, tag, k=2, weights=None):
        from qdrant_edge import FieldCondition, Filter, Fusion, MatchValue, Prefetch, Query, QueryRequest, SparseVector

        fused = Fusion.Dbsf() if fusion == "dbsf" else Fusion.Rrf(k=k, weights=weights)
        return self.shard.query(QueryRequest(
            limit=5, query=fused, filter=Filter(must=[FieldCondition(key="tag", match=MatchValue(tag))]),
            prefetches=[Prefetch(limit=10, query=Query.Nearest(dense, using="image")),
                        Prefetch(limit=10, query=Query.Nearest(SparseVector(query.indices, query.values),
                                                               using="lexical"))]))

    def close(self):
        self.shard.close()


class LocalClientEngine:
    def __init__(self, path):
        from qdrant_client import QdrantClient, models

        self.models = models
        self.client = QdrantClient(path=str(path))
        self.client.create_collection(
            "c", vectors_config={"image": models.VectorParams(size=4, distance=models.Distance.COSINE)},
            sparse_vectors_config={"lexical": models.SparseVectorParams(modifier=models.Modifier.IDF)})

    def upsert(self, rows):
        m = self.models
        self.client.upsert("c", [m.PointStruct(id=pid, payload=payload, vector={"image": dense} | (
            {"lexical": m.SparseVector(indices=s.indices, values=s.values)} if s else {}))
            for pid, dense, s, payload in rows])

    def sparse(self, query, limit=5):
        m = self.models
        return self.client.query_points("c", query=m.SparseVector(indices=query.indices, values=query.values),
                                        using="lexical", limit=limit).points

    def hybrid(self, dense, query, fusion, tag, k=2, weights=None):
        m = self.models
        fused = m.FusionQuery(fusion=m.Fusion.DBSF) if fusion == "dbsf" else m.RrfQuery(rrf=m.Rrf(k=k, weights=weights))
        return self.client.query_points(
            "c", query=fused, limit=5,
            query_filter=m.Filter(must=[m.FieldCondition(key="tag", match=m.MatchValue(value=tag))]),
            prefetch=[m.Prefetch(query=dense, using="image", limit=10),
                      m.Prefetch(query=m.SparseVector(indices=query.indices, values=query.values), using="lexical",
                                 limit=10)]).points

    def close(self):
        self.client.close()


@pytest.fixture(params=[EdgeEngine, LocalClientEngine], ids=["qdrant-edge", "qdrant-client-local"])
def engine(request, tmp_path):
    store = request.param(tmp_path)
    documents = [document_vector(t) for t in TEXTS]
    rows = [(i + 1, d, s, {"tag": "even" if i % 2 == 0 else "odd"}) for i, (d, s) in enumerate(zip(DENSE, documents))]
    store.upsert(rows + [(9, [0, 0, 0, 1.0], None, {"tag": "even"})])  # a point without text: no sparse vector
    yield store, documents
    store.close()


def test_the_engine_applies_the_idf_modifier(engine):
    store, documents = engine
    query = query_vector("red bicycle")
    hits = store.sparse(query)
    expected = {i + 1: reference_score(query, d, documents) for i, d in enumerate(documents)}
    assert {h.id for h in hits} == {pid for pid, score in expected.items() if score > 0} == {1, 3}
    for hit in hits:  # N counts the four points with a sparse vector, not point 9
        assert hit.score == pytest.approx(expected[hit.id], rel=1e-4)
    assert store.sparse(query_vector("PS-1123-V7"))[0].id == 2


def test_full_u32_indices_and_empty_vectors_are_accepted(engine):
    store, _ = engine
    top = dataclasses.replace(query_vector("x"), indices=[2**32 - 1], values=[1.0])
    store.upsert([(20, [0, 0, 1.0, 1.0], top, {"tag": "odd"}),
                  (21, [0, 0, 1.0, 1.0], dataclasses.replace(top, indices=[], values=[]), {"tag": "odd"})])
    assert [h.id for h in store.sparse(top)] == [20]


def test_rrf_fuses_prefetches_under_the_filter(engine):
    """Each prefetch adds 1 / (k + r) for a point at 0-based rank r (with a weight w: 1 / ((r + 1) / w + k - 1)),
    so with k = 2 a point first in both prefetches scores 1. The top-level filter reaches the prefetches: only
    "even" points come back, point 9 (no text) through the dense prefetch alone."""
    store, _ = engine
    scores = {h.id: h.score for h in store.hybrid([1.0, 0, 0, 0], query_vector("red bicycle"), "rrf", "even")}
    # dense ranks 1, 3, 9; lexical ranks 3 (shorter: its words weigh more), then 1
    assert scores == pytest.approx({1: 1 / 2 + 1 / 3, 3: 1 / 3 + 1 / 2, 9: 1 / 4})
    weighted = {h.id: h.score for h in store.hybrid([0, 1.0, 0, 0], query_vector("PS-1123-V7"), "rrf", "odd",
                                                      weights=[1.0, 3.0])}
    assert weighted == pytest.approx({2: 1 / (1 / 1 + 1) + 1 / (1 / 3 + 1), 4: 1 / (2 / 1 + 1)})


def test_dbsf_fuses_normalised_scores(engine):
    store, _ = engine
    hits = store.hybrid([1.0, 0, 0, 0], query_vector("red bicycle"), "dbsf", "even")
    assert {h.id for h in hits} == {1, 3, 9}
    assert all(0 <= h.score <= 2 for h in hits)  # each prefetch adds a score in [0, 1] (mean +- 3 sigma)
