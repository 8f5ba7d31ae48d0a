"""Hybrid retrieval (issue 45): exact codes in scanned pages and screenshots, lexical against hybrid against dense,
latency at 10,000 and 1,000,000 points, and hybrid against dense on the natural-language scene sets.

    python benchmarks/bench_hybrid.py --only ocr-sample [--sample 150]   # real OCR of a sample (slow: seconds a page)
    python benchmarks/bench_hybrid.py --only codes [--docs 10000]         # needs the sample's results
    python benchmarks/bench_hybrid.py --only million [--points 1000000]
    python benchmarks/bench_hybrid.py --only words [--docs 10000]         # word queries over the codes' pages
    python benchmarks/bench_hybrid.py --only scenes [--scenes 1000]
    python benchmarks/bench_hybrid.py --only thumbnails [--thumbnails 30] # OCR of the store's thumbnails

The sample: ``coded_documents`` (crossmodal/lab/scans.py: A4 pages at 144 dpi, English, mixed and Chinese, tilted,
blurred and noisy, and application screenshots, each with its own code) read by crossmodal.ocr, each reading kept
beside its ground truth (``results/hybrid-ocr-sample.jsonl``, appended as it goes, so an interrupted run goes on).
The noise model (``CalibratedNoise``) is the character edits that alignment finds between truth and reading there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.common import RESULTS, save  # noqa: E402

SAMPLE_SEED = 45  # the OCR sample's pictures; the 10,000 pages use other seeds
SAMPLE_FILE = RESULTS / "hybrid-ocr-sample.jsonl"


# -- the real OCR sample ------------------------------------------------------------------------------------------
def ocr_sample(count: int) -> dict:
    """Read ``count`` generated pictures with crossmodal.ocr; each reading is appended to SAMPLE_FILE."""
    from crossmodal.lab.scans import coded_documents
    from crossmodal.ocr import read_text

    done = {json.loads(line)["index"] for line in SAMPLE_FILE.read_text().splitlines()} if SAMPLE_FILE.exists() else set()
    RESULTS.mkdir(exist_ok=True)
    pictures = coded_documents(count, SAMPLE_SEED)
    seconds = []
    with SAMPLE_FILE.open("a") as out:
        for index, picture in enumerate(pictures):
            if index in done:
                continue
            started = time.perf_counter()
            result = read_text(picture.image)
            seconds.append(time.perf_counter() - started)
            out.write(json.dumps({"index": index, "kind": picture.kind, "seed": picture.seed, "code": picture.code,
                                  "language": picture.meta.get("language", "en"), "truth": picture.text,
                                  "read": result.text, "seconds": round(seconds[-1], 2)}, ensure_ascii=False) + "\n")
            out.flush()
            print(f"{index + 1}/{count} {picture.kind} {seconds[-1]:.1f} s", file=sys.stderr, flush=True)
    return {"read": len(seconds), "file": str(SAMPLE_FILE)}


# -- the noise the real reader makes, measured line by line --------------------------------------------------------
def sample_rows() -> list[dict]:
    if not SAMPLE_FILE.exists():
        raise SystemExit(f"{SAMPLE_FILE} is missing: run --only ocr-sample first")
    return [json.loads(line) for line in SAMPLE_FILE.read_text().splitlines()]


def paired_lines(truth: str, read: str) -> list[tuple[str, str | None]]:
    """Each true line with the read line most like it (whitespace ignored), or None when no read line is: the
    reader's order (a sidebar read between a panel's lines) then costs nothing, as it costs the lexical index
    nothing."""
    from difflib import SequenceMatcher

    guesses = [line for line in read.splitlines() if line.strip()]
    bare_guesses = ["".join(g.split()) for g in guesses]
    pairs = []
    for line in truth.splitlines():
        bare = "".join(line.split())
        best, best_ratio = None, 0.5
        for guess, bare_guess in zip(guesses, bare_guesses):
            matcher = SequenceMatcher(None, bare, bare_guess, autojunk=False)
            if matcher.real_quick_ratio() > best_ratio and matcher.quick_ratio() > best_ratio:
                ratio = matcher.ratio()
                if ratio > best_ratio:
                    best, best_ratio = guess, ratio
        pairs.append((line, best))
    return pairs


def line_edits(truth: str, guess: str) -> dict:
    """What the reader did to one line: substitutions (pairs), deletions and insertions per character, a cut tail,
    and the spaces between words it kept, dropped or added (whitespace aligned as crossmodal.lab.scans does)."""
    from crossmodal.lab.scans import bare_and_cuts, edit_alignment

    t, t_cuts = bare_and_cuts(truth)
    g, g_cuts = bare_and_cuts(guess)
    _, mapping = edit_alignment(t, g)
    substitutions, deletions = [], []
    for i, j in enumerate(mapping):
        if j is None:
            deletions.append(i)
        elif g[j] != t[i]:
            substitutions.append((t[i], g[j]))
    tail = 0
    while tail < len(t) and mapping[len(t) - 1 - tail] is None:
        tail += 1
    used = {j for j in mapping if j is not None}
    inserted = [g[j] for j in range(len(g)) if j not in used]
    kept_cuts = {c for c in t_cuts if c < len(mapping) and mapping[c] is not None and mapping[c] in g_cuts}
    mapped = {mapping[c] for c in t_cuts if c < len(mapping) and mapping[c] is not None}
    return {"chars": t, "substitutions": substitutions, "deleted": [t[i] for i in deletions if i < len(t) - tail],
            "tail": tail if tail >= 2 else 0, "inserted": inserted, "spaces": len(t_cuts),
            "spaces_kept": len(kept_cuts), "spaces_added": len(g_cuts - mapped)}


class CalibratedNoise:
    """The reader's noise as rates measured on the sample, applied to ground truth line by line: a line missed; a
    line's tail cut; each character substituted (by what the reader read it as, for that character), deleted, or
    followed by an inserted one; spaces between words dropped or added. Smoothed towards the overall rate for
    characters seen rarely (``SMOOTHING`` characters' worth)."""

    SMOOTHING = 200

    def __init__(self, stats: dict):
        self.stats = stats
        chars = stats["chars"]
        self.substitution = {c: (stats["substituted"].get(c, 0) + self.SMOOTHING * stats["substitution_rate"])
                             / (chars.get(c, 0) + self.SMOOTHING) for c in chars}
        self.targets = stats["targets"]

    @classmethod
    def measure(cls, rows: list[dict]) -> "CalibratedNoise":
        from collections import Counter

        chars, substituted, targets, inserted = Counter(), Counter(), {}, Counter()
        lines = missed = cut = deleted = spaces = kept = added = 0
        tails = []
        for row in rows:
            for truth, guess in paired_lines(row["truth"], row["read"]):
                lines += 1
                if guess is None:
                    missed += 1
                    continue
                edits = line_edits(truth, guess)
                chars.update(edits["chars"])
                for true, read in edits["substitutions"]:
                    substituted[true] += 1
                    targets.setdefault(true, Counter())[read] += 1
                deleted += len(edits["deleted"])
                inserted.update(edits["inserted"])
                if edits["tail"]:
                    cut += 1
                    tails.append(edits["tail"])
                spaces, kept, added = spaces + edits["spaces"], kept + edits["spaces_kept"], added + edits["spaces_added"]
        total = sum(chars.values())
        return cls({"lines": lines, "missed_lines": missed / lines, "cut_lines": cut / lines, "cut_tails": tails,
                    "chars": dict(chars), "substituted": dict(substituted),
                    "substitution_rate": sum(substituted.values()) / total, "deletion_rate": deleted / total,
                    "insertion_rate": sum(inserted.values()) / total, "inserted": dict(inserted),
                    "targets": {c: dict(t) for c, t in targets.items()},
                    "space_drop_rate": 1 - kept / max(1, spaces), "space_add_rate": added / total})

    def summary(self) -> dict:
        s = self.stats
        top = sorted(((n, f"{c}->{t}") for c, ts in s["targets"].items() for t, n in ts.items()), reverse=True)[:12]
        return {"lines": s["lines"], "characters": sum(s["chars"].values()),
                **{k: round(s[k], 5) for k in ("missed_lines", "cut_lines", "substitution_rate", "deletion_rate",
                                               "insertion_rate", "space_drop_rate", "space_add_rate")},
                "commonest_substitutions": [f"{name} x{n}" for n, name in top]}

    def page(self, text: str, rng) -> str:
        return "\n".join(filter(None, (self.line(line, rng) for line in text.splitlines())))

    def line(self, line: str, rng) -> str | None:
        s = self.stats
        if rng.random() < s["missed_lines"]:
            return None
        out = []
        inserted = list(s["inserted"]) or ["."]
        weights = np.asarray([s["inserted"].get(c, 1) for c in inserted], dtype=np.float64)
        for char in line:
            if char.isspace():
                if rng.random() >= s["space_drop_rate"]:
                    out.append(char)
                continue
            roll = rng.random()
            if roll < s["deletion_rate"]:
                continue
            if roll < s["deletion_rate"] + self.substitution.get(char, s["substitution_rate"]):
                char = self.substitute(char, rng)
            out.append(char)
            if rng.random() < s["insertion_rate"]:
                out.append(inserted[rng.choice(len(inserted), p=weights / weights.sum())])
            if rng.random() < s["space_add_rate"]:
                out.append(" ")
        text = "".join(out)
        if s["cut_tails"] and rng.random() < s["cut_lines"]:
            text = text[: max(0, len(text) - int(rng.choice(s["cut_tails"])))]
        return text

    def substitute(self, char: str, rng) -> str:
        seen = self.targets.get(char)
        if seen:
            options = list(seen)
            weights = np.asarray([seen[o] for o in options], dtype=np.float64)
            return options[rng.choice(len(options), p=weights / weights.sum())]
        if char.isalpha() and char.isascii():  # never seen misread: a case flip, the reader's commonest error
            return char.swapcase()
        return char


def calibrate() -> dict:
    """The noise model from the sample, and a check of it: the same ground truth through the model (five draws)
    against what the reader made of it."""
    rows = sample_rows()
    noise = CalibratedNoise.measure(rows)
    (RESULTS / "hybrid-noise.json").write_text(json.dumps(noise.stats))

    def measures(readings: list[str]) -> dict:
        from crossmodal.lab.scans import character_errors

        edits = chars = exact = folded = 0
        for row, read in zip(rows, readings):
            for truth, guess in paired_lines(row["truth"], read):
                e, c = character_errors(truth, guess or "")
                edits, chars = edits + e, chars + c
            bare = "".join(read.split())
            exact += row["code"] in bare
            folded += row["code"].casefold() in bare.casefold()
        return {"character_accuracy": round(1 - edits / chars, 5), "codes_read_exactly": round(exact / len(rows), 4),
                "codes_read_but_for_case": round(folded / len(rows), 4)}

    real = measures([row["read"] for row in rows])
    modelled = [measures([noise.page(row["truth"], np.random.default_rng(draw * 1000 + k)) for k, row in enumerate(rows)])
                for draw in range(5)]
    mean = {key: round(float(np.mean([m[key] for m in modelled])), 4) for key in modelled[0]}
    seconds = [row["seconds"] for row in rows]
    kinds = {kind: sum(row["kind"] == kind for row in rows) for kind in ("page", "screenshot")}
    return {"sample": {"pictures": len(rows), **kinds, "ocr_seconds_median": round(float(np.median(seconds)), 2)},
            "noise": noise.summary(), "real_reader": real, "noise_model_mean_of_5": mean}


# -- what OCR reads in the store's thumbnails (reindex without the original files) ----------------------------------
def thumbnails(count: int) -> dict:
    """The sample's first ``count`` pictures as the store keeps them (a 384-px JPEG, crossmodal/ingest/items.py),
    read by crossmodal.ocr: what a reindex could read without the original files."""
    import base64
    import io

    from PIL import Image

    from crossmodal.ingest.items import thumbnail_b64
    from crossmodal.lab.scans import coded_documents, page_errors
    from crossmodal.ocr import read_text

    rows = {row["index"]: row for row in sample_rows()}
    report = {"pictures": 0, "lines_true": 0, "lines_read": 0, "codes_found": 0, "codes_found_full_size": 0,
              "edits": 0, "characters": 0, "seconds": 0.0}
    for index, picture in enumerate(coded_documents(count, SAMPLE_SEED)):
        thumb = Image.open(io.BytesIO(base64.b64decode(thumbnail_b64(picture.image))))
        scale = thumb.width / picture.image.width
        started = time.perf_counter()
        result = read_text(thumb)
        report["seconds"] += time.perf_counter() - started
        guesses = [(line.text, [(x / scale, y / scale) for x, y in line.box]) for line in result.lines]
        edits, chars = page_errors(picture.lines, guesses)
        report["pictures"] += 1
        report["lines_true"] += len(picture.lines)
        report["lines_read"] += len(result.lines)
        report["edits"] += edits
        report["characters"] += chars
        report["codes_found"] += picture.code.casefold() in "".join(result.text.split()).casefold()
        report["codes_found_full_size"] += picture.code.casefold() in "".join(rows[index]["read"].split()).casefold()
    report["character_accuracy"] = round(1 - report.pop("edits") / report.pop("characters"), 4)
    report["seconds_per_picture"] = round(report.pop("seconds") / report["pictures"], 2)
    return report


# -- exact codes over 10,000 pages -------------------------------------------------------------------------------
CORPUS_SEED = 10_000_000  # item seeds of the 10,000 (the sample's are 45 * 1,000,003 + index)
SCREENSHOT_SHARE, LANGUAGES = 0.3, ("en", "en", "mixed", "zh")  # as crossmodal.lab.scans.coded_documents
SIBLING_SHARE = 0.25  # codes one digit from another page's: an invoice series (benchmarks/bench_lexical.py)
QUERIES = 2000
MODEL = "demo-shapes"


def corpus_codes(count: int, rng) -> list[str]:
    from benchmarks.bench_lexical import sibling
    from crossmodal.lab.scans import unique_codes

    codes = unique_codes(count, CORPUS_SEED)
    seen = set(codes)
    for k in range(1, count):
        if rng.random() < SIBLING_SHARE:
            seen.discard(codes[k])
            while (candidate := sibling(codes[int(rng.integers(k))], rng)) in seen:
                pass
            codes[k] = candidate
            seen.add(candidate)
    return codes


def build_corpus(count: int, cache: Path) -> dict:
    """The pages' ground truth (code, kind, language, text) and their dense vectors. Pages are the generators'
    (crossmodal/lab/scans.py), rendered without tilt and sensor noise: the model sees a 128-px copy, on which
    neither shows, and a tilted, noisy A4 page costs 12x the time to draw (0.9 s against 0.075 s here)."""
    from crossmodal.encoders.models import get_encoder
    from crossmodal.lab.scans import scanned_page, screenshot

    path = cache / f"corpus-{count}.npz"
    if path.exists():
        data = np.load(path, allow_pickle=False)
        return {"vectors": data["vectors"], **json.loads(str(data["meta"]))}
    rng = np.random.default_rng(CORPUS_SEED)
    codes = corpus_codes(count, rng)
    encoder = get_encoder(MODEL, "cpu")
    meta = {"codes": codes, "kinds": [], "languages": [], "texts": []}
    vectors = np.zeros((count, encoder.dim), np.float32)
    batch, started = [], time.perf_counter()
    for index, code in enumerate(codes):
        seed = CORPUS_SEED + index
        if rng.random() < SCREENSHOT_SHARE:
            picture, language = screenshot(seed, code), "en"
        else:
            language = LANGUAGES[index % len(LANGUAGES)]
            picture = scanned_page(seed, language, code, tilt=False, noise=False)
        meta["kinds"].append(picture.kind)
        meta["languages"].append(language)
        meta["texts"].append(picture.text)
        picture.image.thumbnail((4 * encoder.image_size, 4 * encoder.image_size))
        batch.append(picture.image)
        if len(batch) == 64 or index == count - 1:
            vectors[index + 1 - len(batch): index + 1] = encoder.encode_images(batch)
            batch = []
            print(f"corpus {index + 1}/{count} {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, vectors=vectors, meta=json.dumps(meta))
    return {"vectors": vectors, **meta}


def noisy_texts(corpus: dict, noise: str) -> list[str]:
    """Each page's text as read: clean, through the calibrated model of the real reader, or through the issue's
    description of rapidocr's defaults (benchmarks/bench_lexical.py's NoiseModel: half the pages without a space,
    look-alikes, rn/m, separators, cut lines)."""
    rng = np.random.default_rng(7)
    if noise == "clean":
        return list(corpus["texts"])
    if noise == "calibrated":
        model = CalibratedNoise(json.loads((RESULTS / "hybrid-noise.json").read_text()))
        return [model.page(text, rng) for text in corpus["texts"]]
    from benchmarks.bench_lexical import NoiseModel, chinese_words

    han = "".join(w for w in chinese_words()[0] if len(w) == 1)
    return [NoiseModel().page(text.splitlines(), rng, han) for text in corpus["texts"]]


def load_collection(service, name: str, corpus: dict, texts: list[str]) -> dict:
    """The pages as ingest writes them (a new collection's storage, the read text as ocr_text, its lexical vector)."""
    from crossmodal.lexical import document_text, document_vector
    from crossmodal.store import StoredPoint
    from crossmodal.store.options import DEFAULT_FOR_NEW

    encoder = service.encoder(MODEL)
    store = service.store
    if name in {c.name for c in store.list_collections()}:
        store.delete_collection(name)
    store.create_collection(name, encoder.identity, encoder.dim, encoder.weights, DEFAULT_FOR_NEW)
    analysis, terms, batch = 0.0, 0, []
    for index, text in enumerate(texts):
        payload = {"kind": "image", "source": f"doc-{index:05d}.png", "ocr_text": text}
        started = time.perf_counter()
        sparse = document_vector(document_text(payload))
        analysis += time.perf_counter() - started
        terms += len(sparse)
        batch.append(StoredPoint(str(uuid.UUID(int=index + 1)), corpus["vectors"][index].tolist(), payload,
                                 sparse=sparse))
        if len(batch) == 512 or index == len(texts) - 1:
            store.upsert(name, batch)
            batch = []
    store.finish_writes(name)
    return {"analysis_ms_per_page": round(1000 * analysis / len(texts), 2), "terms_per_page": round(terms / len(texts))}


def recall_at_1(service, name: str, corpus: dict, queries: list[int], mode: str, fusion: str = "rrf") -> dict:
    """Recall@1 of each page's clean code, and the search call's latency (query analysis, the text's vector, the
    engine), through the Search capability as the node calls it."""
    found, latencies = 0, []
    for index in queries:
        started = time.perf_counter()
        hits = service.search(corpus["codes"][index], collection=name, top_k=10, mode=mode, fusion=fusion)["results"]
        latencies.append(1000 * (time.perf_counter() - started))
        found += bool(hits) and hits[0]["payload"]["source"] == f"doc-{index:05d}.png"
    return {"recall_at_1": round(found / len(queries), 4), "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p95_ms": round(float(np.percentile(latencies, 95)), 2)}


def engine_variants(service, name: str, corpus: dict, queries: list[int]) -> dict:
    """Recall@1 of each fusion the engine offers, on the same queries' vectors (the search path adds only the
    query's analysis and its text vector), and the engine's own latency of the shipped one."""
    from crossmodal.lexical import query_vector

    encoder, store = service.encoder(MODEL), service.store
    prepared = [(index, encoder.query_text_vector(corpus["codes"][index])[0].tolist(),
                 query_vector(corpus["codes"][index])) for index in queries]
    variants = {"dense": lambda v, q: store.query(name, v, 10),
                "lexical": lambda v, q: store.query_fused(name, None, q, 10, 100),
                "hybrid rrf, equal weights": lambda v, q: store.query_fused(name, v, q, 10, 100),
                "hybrid rrf, lexical x3 (shipped for codes)": lambda v, q: store.query_fused(name, v, q, 10, 100,
                                                                                              lexical_weight=3.0),
                "hybrid dbsf": lambda v, q: store.query_fused(name, v, q, 10, 100, fusion="dbsf")}
    out = {}
    for label, run in variants.items():
        found, latencies = 0, []
        for index, vector, sparse in prepared:
            started = time.perf_counter()
            hits = run(vector, sparse)
            latencies.append(1000 * (time.perf_counter() - started))
            found += bool(hits) and hits[0].payload["source"] == f"doc-{index:05d}.png"
        out[label] = {"recall_at_1": round(found / len(prepared), 4),
                      "engine_p50_ms": round(float(np.percentile(latencies, 50)), 2),
                      "engine_p95_ms": round(float(np.percentile(latencies, 95)), 2)}
    return out


def codes(count: int, cache: Path, noises: list[str]) -> dict:
    from crossmodal.service import Service
    from crossmodal.settings import Settings

    corpus = build_corpus(count, cache)
    service = Service(Settings(data_dir=str(cache / "store"), model=MODEL))
    queries = sorted(np.random.default_rng(3).choice(count, size=min(QUERIES, count), replace=False).tolist())
    report = {"pages": count, "queries": len(queries),
              "screenshots": sum(k == "screenshot" for k in corpus["kinds"]),
              "languages": {lang: corpus["languages"].count(lang) for lang in set(corpus["languages"])},
              "sibling_share": SIBLING_SHARE, "model": MODEL}
    for noise in noises:
        name = f"codes-{noise}"
        row = load_collection(service, name, corpus, noisy_texts(corpus, noise))
        row["engine"] = engine_variants(service, name, corpus, queries)
        row["search_hybrid"] = recall_at_1(service, name, corpus, queries, "hybrid")  # the node's whole call
        print(noise, json.dumps(row), file=sys.stderr, flush=True)
        report[noise] = row
    service.store.close()
    return report


# -- words, not codes, over the same pages ------------------------------------------------------------------------
PHRASE_WORDS = 5  # a query: this many consecutive words (numbers included) of one line of an English page, as
PHRASE_QUERIES = 300  # someone recalls them, found in that page's text only; never the code's line


def phrase_queries(corpus: dict, count: int) -> list[tuple[int, str]]:
    """(page, phrase) pairs: words someone recalls from a page (no code in them), each phrase on one page only.
    The generator's vocabulary is small (about 150 words), so few phrases are unique, and most of those hold a
    number (``and 27 pumps were returned``)."""
    import re

    rng = np.random.default_rng(5)
    folded = [" ".join(re.findall(r"[a-z0-9]+", text.casefold())) for text in corpus["texts"]]
    english = [i for i, lang in enumerate(corpus["languages"]) if lang == "en"]
    queries = []
    for index in rng.permutation(english):
        lines = [re.findall(r"[A-Za-z0-9]+", line) for line in corpus["texts"][index].splitlines()
                 if corpus["codes"][index] not in line]
        lines = [line for line in lines if len(line) >= PHRASE_WORDS]
        if not lines:
            continue
        line = lines[int(rng.integers(len(lines)))]
        start = int(rng.integers(len(line) - PHRASE_WORDS + 1))
        phrase = " ".join(line[start: start + PHRASE_WORDS])
        if sum(f" {phrase.casefold()} " in f" {text} " for text in folded) == 1:
            queries.append((int(index), phrase))
        if len(queries) == count:
            break
    return queries


def words(count: int, cache: Path, noise: str) -> dict:
    """Recall@1 of word queries (PHRASE_WORDS words of a line, no code) over the exact-code corpus read with
    ``noise``: dense, lexical, RRF with the lexical list weighted LEXICAL_WEIGHTS_TRIED and DBSF, in the engine,
    and the search call as shipped: where a collection of pages, unlike the scene sets' pictures, needs its
    lexical list."""
    from crossmodal.lexical import query_vector
    from crossmodal.service import Service
    from crossmodal.settings import Settings

    corpus = build_corpus(count, cache)
    service = Service(Settings(data_dir=str(cache / "store"), model=MODEL))
    name = f"codes-{noise}"
    if name not in {c.name for c in service.store.list_collections()}:
        load_collection(service, name, corpus, noisy_texts(corpus, noise))
    encoder, store = service.encoder(MODEL), service.store
    options = store.get_collection(name).lexical_options()
    queries = phrase_queries(corpus, PHRASE_QUERIES)
    prepared = [(index, encoder.query_text_vector(text)[0].tolist(), query_vector(text, options))
                for index, text in queries]
    variants = {"dense": lambda v, q: store.query(name, v, 10),
                "lexical": lambda v, q: store.query_fused(name, None, q, 10, 100)}
    for weight in LEXICAL_WEIGHTS_TRIED:
        variants[f"hybrid rrf, lexical x{weight:g}"] = (
            lambda w: lambda v, q: store.query_fused(name, v, q, 10, 100, lexical_weight=w))(weight)
    variants["hybrid dbsf"] = lambda v, q: store.query_fused(name, v, q, 10, 100, fusion="dbsf")
    report = {"pages": count, "noise": noise, "queries": len(queries), "example": queries[0][1]}
    for label, run in variants.items():
        found = 0
        for index, vector, sparse in prepared:
            hits = sorted(run(vector, sparse), key=lambda hit: (-round(hit.score, 9), hit.id))
            found += bool(hits) and hits[0].payload["source"] == f"doc-{index:05d}.png"
        report[label] = round(found / len(prepared), 4)
    found, modes, confidences = 0, set(), []
    for index, text in queries:
        result = service.search(text, collection=name, top_k=10, mode="hybrid")
        weights = result.get("weights") or {}
        modes.add(f"lexical x{weights.get('lexical')} by {weights.get('lexical_by')}")
        confidences += [weights["dense_confidence"]] if "dense_confidence" in weights else []
        found += bool(result["results"]) and result["results"][0]["payload"]["source"] == f"doc-{index:05d}.png"
    report["search_hybrid (as shipped)"] = {
        "recall_at_1": round(found / len(queries), 4), "weights": sorted(modes),
        "dense_confidence_max": round(max(confidences), 4) if confidences else None}
    report["code query search call, by torch threads"] = latency_by_threads(service, name, corpus["codes"][:250])
    service.store.close()
    return report


def latency_by_threads(service, name: str, texts: list[str], rounds: int = 2) -> dict:
    """The hybrid search call's p50 and p95 with torch's intra-op threads at the default and at 1, in alternating
    rounds (the load of a shared machine changes): a one-text query's encoding is small work, and on a busy
    machine threads that wait for each other cost more than they share."""
    import torch

    default = torch.get_num_threads()
    latencies = {default: [], 1: []}
    per_round = len(texts) // (2 * rounds)
    try:
        for k in range(2 * rounds):
            threads = default if k % 2 == 0 else 1
            torch.set_num_threads(threads)
            for text in texts[k * per_round: (k + 1) * per_round]:
                started = time.perf_counter()
                service.search(text, collection=name, top_k=10, mode="hybrid")
                latencies[threads].append(1000 * (time.perf_counter() - started))
    finally:
        torch.set_num_threads(default)
    return {f"{threads} thread(s)": {"p50_ms": round(float(np.percentile(v, 50)), 2),
                                     "p95_ms": round(float(np.percentile(v, 95)), 2)}
            for threads, v in latencies.items()}


# -- 1,000,000 points with synthetic lexical vectors ---------------------------------------------------------------
SYNTHETIC_DIM = 64  # dense vectors: 1M x 64-d, kept as a new collection keeps them (int8 in RAM, originals on disk)
VOCABULARY = 2_000_000  # distinct terms (the 10,000 pages' analysis gave 1.3M over words, grams, codes, bigrams)
ZIPF = 1.1  # term frequencies of text
CODE_TERMS = 12  # a page's code: its own rare terms (grams and the code token), as a code query has them


def synthetic_points(start: int, count: int, terms: int, rng, vectors: np.ndarray):
    """Pages of ``terms`` lexical terms: Zipf-distributed common terms and CODE_TERMS of the page's own (its code),
    with BM25 document weights in the range the analysis gives (1 for a gram seen once, up to 2.2)."""
    from crossmodal.lexical import SparseTerms
    from crossmodal.store import StoredPoint

    points = []
    for k in range(count):
        common = np.minimum(rng.zipf(ZIPF, terms - CODE_TERMS), VOCABULARY) - 1
        own = VOCABULARY + (start + k) * CODE_TERMS + np.arange(CODE_TERMS)
        indices = np.unique(np.concatenate([scramble(common), scramble(own)]))
        values = rng.uniform(0.8, 2.2, len(indices)).round(3)
        points.append(StoredPoint(str(uuid.UUID(int=start + k + 1)), vectors[k].tolist(), {"kind": "image"},
                                  sparse=SparseTerms(indices.tolist(), values.tolist())))
    return points


def scramble(terms: np.ndarray) -> np.ndarray:
    """Term numbers spread over u32 as hashed indices are (a fixed odd multiplier is a bijection mod 2^32)."""
    return ((terms.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2 ** 32)).astype(np.int64)


def million(points: int, terms: int, cache: Path) -> dict:
    """Hybrid and lexical latency at ``points`` synthetic pages, and Recall@1 of their code queries."""
    import resource

    from benchmarks.common import embedding_like
    from crossmodal.lexical import SparseTerms
    from crossmodal.store.edge import EdgeStore
    from crossmodal.store.options import DEFAULT_FOR_NEW

    root = cache / f"million-{points}-{terms}"
    store = EdgeStore(root)
    name = "pages"
    rng = np.random.default_rng(11)
    chunk = 2000
    timings = {}
    if name not in {c.name for c in store.list_collections()}:
        store.create_collection(name, "synthetic", SYNTHETIC_DIM, storage=DEFAULT_FOR_NEW)
        started = time.perf_counter()
        for start in range(0, points, chunk):
            vectors = embedding_like(min(chunk, points - start), SYNTHETIC_DIM, seed=start, basis_seed=1)
            store.upsert(name, synthetic_points(start, len(vectors), terms, rng, vectors))
            if start % 100_000 == 0:
                print(f"million {start}/{points} {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        timings["upsert_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        store.finish_writes(name)  # HNSW and the sparse index built by the optimizer
        timings["index_s"] = round(time.perf_counter() - started, 1)
    query_rng = np.random.default_rng(12)
    targets = query_rng.choice(points, size=300, replace=False)
    code_queries, word_queries = [], []
    for target in targets:
        own = scramble(VOCABULARY + target * CODE_TERMS + np.arange(CODE_TERMS))
        noisy = embedding_like(1, SYNTHETIC_DIM, seed=int(target) + 10**7, basis_seed=1)[0]
        code_queries.append((int(target), noisy.tolist(), SparseTerms(sorted(own.tolist()), [1.0] * CODE_TERMS)))
        common = np.unique(scramble(np.minimum(query_rng.zipf(ZIPF, 3), 1000) - 1))  # three frequent words
        word_queries.append((int(target), noisy.tolist(), SparseTerms(common.tolist(), [1.0] * len(common))))

    def measure(label, queries, run):
        """p50 and p95; for code queries also whether the page with the code came first."""
        latencies, found = [], 0
        for target, vector, sparse in queries:
            started = time.perf_counter()
            hits = run(vector, sparse)
            latencies.append(1000 * (time.perf_counter() - started))
            found += bool(hits) and hits[0].id == str(uuid.UUID(int=target + 1))
        timings[label] = {"p50_ms": round(float(np.percentile(latencies, 50)), 2),
                          "p95_ms": round(float(np.percentile(latencies, 95)), 2)}
        if "code" in label:
            timings[label]["recall_at_1"] = round(found / len(queries), 4)
        print(label, timings[label], file=sys.stderr, flush=True)

    for _ in range(2):  # the first round warms the page cache after a restart; the second is reported
        measure("hybrid, code query (lexical x3)", code_queries,
                lambda v, q: store.query_fused(name, v, q, 10, 100, lexical_weight=3.0))
        measure("hybrid, three frequent words", word_queries, lambda v, q: store.query_fused(name, v, q, 10, 100))
        measure("lexical, code query", code_queries, lambda v, q: store.query_fused(name, None, q, 10, 100))
        measure("lexical, three frequent words", word_queries, lambda v, q: store.query_fused(name, None, q, 10, 100))
        measure("dense alone", code_queries, lambda v, q: store.query(name, v, 10))
    store.close()
    disk = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    return {"points": points, "terms_per_page": terms,
            "dense_vectors": f"{SYNTHETIC_DIM}-d, {DEFAULT_FOR_NEW.describe()}",
            "vocabulary": VOCABULARY, "zipf": ZIPF, **timings, "disk_gb": round(disk / 1e9, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}


# -- natural-language queries: hybrid against dense on the scene sets ----------------------------------------------
SCENE_SETS = (("single", "en"), ("double", "en"), ("single", "zh"), ("double", "zh"))


def scene_sets(n: int, cache: Path, seed: int | None = None) -> dict:
    """Text-to-image Recall@K of the evaluation's scene sets (crossmodal/lab/evaluation.py, the demo model), dense
    against hybrid (the default a collection with text gets), in two galleries: pictures alone, as the evaluation
    ingests them (beside the sets' captions as text items), and pictures that each carry a caption of their own, a
    paraphrase drawn apart from the queries (crossmodal.lab.scenes.sample_caption), so that the lexical list has
    words to match, some of them misleading (the right colour with another shape)."""
    import random

    from crossmodal.inputs.images import encode_png
    from crossmodal.lab.evaluation import recall_at, scene_set
    from crossmodal.lab.scenes import sample_caption
    from crossmodal.service import ImageInput, IngestItem, Service
    from crossmodal.settings import Settings

    draw = f"scenes-{n}" + (f"-seed-{seed}" if seed is not None else "")
    service = Service(Settings(data_dir=str(cache / draw), model=MODEL))  # a store for each draw
    report = {"scenes_per_set": n, "model": MODEL, "seed": seed if seed is not None else "the evaluation's"}
    for kind, lang in SCENE_SETS:
        eval_set = scene_set(kind, n, lang) if seed is None else scene_set(kind, n, lang, seed=seed)
        objects = eval_set.image_keys
        pngs = [encode_png(image) for image in eval_set.images]
        draws = [random.Random(f"gallery-{k}" if seed is None else f"gallery-{seed}-{k}") for k in range(n)]
        captions = [sample_caption(objs, rng, lang)[0] for objs, rng in zip(objects, draws)]
        texts = sorted(set(eval_set.queries))
        for gallery in ("pictures alone", "pictures with their own captions"):
            name = f"{kind}-{lang}-{'bare' if gallery == 'pictures alone' else 'captioned'}"
            if name not in {c.name for c in service.store.list_collections()}:
                items = [IngestItem(image=ImageInput.from_bytes(f"img-{i}", png), source=f"img-{i}",
                                    caption=captions[i] if gallery != "pictures alone" else None)
                         for i, png in enumerate(pngs)]
                items += [IngestItem(text=t, source=f"txt-{j}") for j, t in enumerate(texts)]
                service.ingest(items, name, MODEL)
            row = {}
            for mode in ("dense", "hybrid", "auto"):
                ranks, latencies, used = [], [], set()
                for q, text in enumerate(eval_set.queries):
                    started = time.perf_counter()
                    found = service.search(text, collection=name, top_k=10, target="image", mode=mode)
                    latencies.append(1000 * (time.perf_counter() - started))
                    used.add(found["mode"])
                    indices = [int(h["payload"]["source"].split("-")[1]) for h in found["results"]]
                    ranks.append(next((r for r, i in enumerate(indices) if eval_set.is_relevant(q, i)), None))
                row[mode] = {**recall_at(ranks), "ran_as": sorted(used),
                             "p50_ms": round(float(np.percentile(latencies, 50)), 2)}
            prepared = engine_queries(service, name, eval_set)
            row["engine: rrf by the lexical list's weight"] = fusion_weights(service, name, eval_set, prepared)
            if gallery != "pictures alone":
                row["engine: lexical weight by dense confidence, by threshold"] = confidence_sweep(
                    service, name, eval_set, prepared)
            report[f"{kind}_{lang}: {gallery}"] = row
            print(name, row, file=sys.stderr, flush=True)
    service.store.close()
    return report


def engine_queries(service, name: str, eval_set) -> list[tuple[int, list[float], object]]:
    """Each query's vector and lexical terms (its index first), made once for the engine-only variants."""
    from crossmodal.lexical import query_vector

    encoder, options = service.encoder(MODEL), service.store.get_collection(name).lexical_options()
    return [(q, encoder.query_text_vector(text)[0].tolist(), query_vector(text, options))
            for q, text in enumerate(eval_set.queries)]


def first_relevant(eval_set, q: int, hits) -> int | None:
    """The rank of the first picture in ``hits`` that query ``q`` is about."""
    indices = [int(h.payload["source"].split("-")[1]) for h in hits]
    return next((r for r, i in enumerate(indices) if eval_set.is_relevant(q, i)), None)


def fusion_weights(service, name: str, eval_set, prepared) -> dict:
    """Recall@K in the engine of RRF with the lexical list weighted each of LEXICAL_WEIGHTS_TRIED (the dense list
    weighs 1), and of DBSF, on the same queries' vectors (``prepared``: engine_queries), pictures only: what a
    query without a code could use."""
    from crossmodal.lab.evaluation import recall_at
    from crossmodal.store import Condition

    store, pictures = service.store, [Condition("kind", "any", ["image"])]
    out = {}
    for weight in LEXICAL_WEIGHTS_TRIED:
        ranks = []
        for q, vector, terms in prepared:
            hits = store.query_fused(name, vector, terms, 10, 100, pictures, lexical_weight=weight)
            hits.sort(key=lambda hit: (-round(hit.score, 9), hit.id))  # as the searcher orders ties
            ranks.append(first_relevant(eval_set, q, hits))
        out[f"lexical x{weight:g}"] = recall_at(ranks)
    out["dbsf"] = recall_at([first_relevant(eval_set, q, store.query_fused(name, vector, terms, 10, 100, pictures,
                                                                           fusion="dbsf"))
                             for q, vector, terms in prepared])
    return out


def confidence_sweep(service, name: str, eval_set, prepared) -> dict:
    """Recall@1 in the engine of the shipped rule for a query without a code (the lexical list weighs
    CONFIDENT_LEXICAL_WEIGHT where the dense model's softmax gives its first hit the threshold or more, else 1),
    for each threshold in CONFIDENCE_THRESHOLDS: how DENSE_CONFIDENT was chosen, on a validation draw
    (--scene-seed), and what it gives on the reported sets. ``prepared``: engine_queries."""
    from crossmodal.search.searcher import CONFIDENT_LEXICAL_WEIGHT, FUSION_CANDIDATES, dense_confidence
    from crossmodal.store import Condition

    store, pictures = service.store, [Condition("kind", "any", ["image"])]
    temperature = service.encoder(MODEL).logit_scale
    firsts = []  # (confidence, first hit right at weight 1, first hit right at the confident weight)
    for q, vector, terms in prepared:
        dense = store.query(name, vector, FUSION_CANDIDATES, pictures)
        right = []
        for weight in (1.0, CONFIDENT_LEXICAL_WEIGHT):
            # Ten, not one: RRF ties often and the engine breaks them differently from call to call; the first
            # after ordering ties by id, as the searcher does, is what a search returns.
            hits = store.query_fused(name, vector, terms, 10, FUSION_CANDIDATES, pictures, lexical_weight=weight)
            hits.sort(key=lambda hit: (-round(hit.score, 9), hit.id))
            right.append(first_relevant(eval_set, q, hits[:1]) == 0)
        firsts.append((dense_confidence([h.score for h in dense], temperature), *right))

    def recall_at_1(threshold: float) -> float:
        return round(sum(sure if c >= threshold else equal for c, equal, sure in firsts) / len(firsts), 4)

    return {f"{threshold:g}": recall_at_1(threshold) for threshold in CONFIDENCE_THRESHOLDS}


LEXICAL_WEIGHTS_TRIED = (1.0, 0.75, 0.5, 0.25)
CONFIDENCE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


SECTIONS = {"ocr-sample": lambda a: ocr_sample(a.sample), "calibrate": lambda a: calibrate(),
            "scenes": lambda a: scene_sets(a.scenes, Path(a.cache), a.scene_seed),
            "thumbnails": lambda a: thumbnails(a.thumbnails),
            "codes": lambda a: codes(a.docs, Path(a.cache), a.noise.split(",")),
            "words": lambda a: words(a.docs, Path(a.cache), a.noise.split(",")[0]),
            "million": lambda a: million(a.points, a.terms, Path(a.cache))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="codes", help=f"comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--sample", type=int, default=150, help="pictures read by real OCR")
    parser.add_argument("--docs", type=int, default=10_000, help="pages of the exact-code corpus")
    parser.add_argument("--noise", default="calibrated,issue,clean", help="calibrated, issue, clean")
    parser.add_argument("--cache", default="/tmp/crossmodal-bench-hybrid", help="generated corpus and stores")
    parser.add_argument("--points", type=int, default=1_000_000, help="synthetic points of the latency run")
    parser.add_argument("--terms", type=int, default=190, help="lexical terms a synthetic page has")
    parser.add_argument("--scenes", type=int, default=1000, help="scenes per scene set")
    parser.add_argument("--scene-seed", type=int, default=None, help="another draw of the scene sets (validation: "
                        "e.g. 700012345; the evaluation's own seed by default)")
    parser.add_argument("--thumbnails", type=int, default=30, help="sample pictures read from their thumbnails")
    args = parser.parse_args(argv)
    report = {}
    for name in args.only.split(","):
        report[name] = SECTIONS[name](args)
        print(json.dumps(report[name], indent=2, ensure_ascii=False))
        if name != "ocr-sample":
            suffix = {"codes": f"-{args.docs}", "words": f"-{args.docs}", "million": f"-{args.points}",
                      "scenes": f"-{args.scenes}" + (f"-seed-{args.scene_seed}" if args.scene_seed else "")
                      }.get(name, "")
            save(f"hybrid-{name}{suffix}", {"section": name, "others_running_beside": True, **report[name]})
    return report


if __name__ == "__main__":
    main()
