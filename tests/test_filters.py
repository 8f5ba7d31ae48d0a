import pytest

from crossmodal.errors import CrossmodalError
from crossmodal.store import Condition, parse_filter


def test_grammar():
    conditions = parse_filter('{"tags": ["cat", "dog"], "kind": "image", "width": {"gte": 10}, "metadata.a": 3}')
    assert conditions == [
        Condition("tags", "any", ["cat", "dog"]),
        Condition("kind", "eq", "image"),
        Condition("width", "range", {"gte": 10}),
        Condition("metadata.a", "eq", 3),
    ]
    assert parse_filter("") == [] and parse_filter(None) == []


@pytest.mark.parametrize(
    "raw, needle",
    [
        ("{oops", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"bad key!": 1}', "not a valid name"),
        ('{"tags": []}', "non-empty list"),
        ('{"tags": ["a", 1]}', "non-empty list"),
        ('{"width": {"near": 3}}', "gt, gte, lt, lte"),
        ('{"width": {"gte": "x"}}', "must be numbers"),
        ('{"width": 1.5}', "not float"),
    ],
)
def test_malformed_filters_name_the_parameter(raw, needle):
    with pytest.raises(CrossmodalError) as info:
        parse_filter(raw)
    assert str(info.value).startswith("filter:") and needle in str(info.value)


# -- Dify's metadata conditions in the engine, the same on both stores -------------------------------------
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402

from crossmodal.api.knowledge import metadata_predicate  # noqa: E402
from crossmodal.search.searcher import query_where  # noqa: E402
from crossmodal.store import StoredPoint  # noqa: E402
from crossmodal.store.base import AllOf, AnyOf, Not  # noqa: E402
from crossmodal.store.filters import MATCH_ALL, engine_form, filter_fields  # noqa: E402

NOTES = [  # colour, metadata: strings, numbers stored as text, lists, a millisecond timestamp, a spaced key
    ("red", {"team": "alpha", "year": "2023", "pages": 3, "date": "2024-01-05T00:00:00Z"}),
    ("blue", {"team": "beta", "year": "2024", "pages": 12, "date": "2024-06-01T00:00:00Z"}),
    ("green", {"team": "alphabet", "year": "2025", "pages": 30, "date": "2025-02-01T00:00:00Z"}),
    ("yellow", {"team": "", "year": "2025", "pages": "7", "date": "2025-09-01T00:00:00Z"}),
    ("violet", {"team": ["gamma", "alpha-2"], "pages": [1, 40], "date": 1767225600000, "my key": "spaced"}),
    ("grey", {}),
]


def _note_points(dim=8):
    rng = np.random.default_rng(5)
    out = []
    for k, (colour, metadata) in enumerate(NOTES):
        vector = rng.normal(size=dim)
        out.append(StoredPoint(f"00000000-0000-0000-0000-{k:012d}", (vector / np.linalg.norm(vector)).tolist(),
                               {"kind": "text", "text": f"a {colour} note", "tags": [colour],
                                "source": f"{colour}.txt", "metadata": metadata}))
    return out


def _one(name, operator, value=None):
    return {"logical_operator": "and", "conditions": [{"name": name, "comparison_operator": operator, "value": value}]}


DIFY_CASES = [
    (_one("team", "contains", "alph"), {"red", "green", "violet"}),  # substring, not equality; one of a list
    (_one("team", "not contains", "alph"), {"blue", "yellow", "grey"}),
    (_one("team", "start with", "alpha"), {"red", "green", "violet"}),
    (_one("team", "end with", "bet"), {"green"}),
    (_one("team", "is", "alpha"), {"red"}),
    (_one("team", "is not", "alpha"), {"blue", "green", "yellow", "violet", "grey"}),
    (_one("team", "empty"), {"yellow", "grey"}),
    (_one("team", "not empty"), {"red", "blue", "green", "violet"}),
    (_one("pages", ">", "10"), {"blue", "green", "violet"}),  # numbers sent as strings; a list: one of its values
    (_one("pages", "≤", 7), {"red", "yellow", "violet"}),  # a stored "7" compares as a number
    (_one("year", "=", "2024"), {"blue"}),
    (_one("year", "≠", 2024), {"red", "green", "yellow", "violet", "grey"}),
    (_one("date", "before", "2024-12-31"), {"red", "blue"}),
    (_one("date", "after", 1735689600), {"green", "yellow", "violet"}),  # 2025-01-01; violet's is milliseconds
    (_one("my key", "is", "spaced"), {"violet"}),
    (_one("tags", "contains", "re"), {"red", "green", "grey"}),  # a built-in field
    (_one(["team", "tags"], "is", "blue"), {"blue"}),  # Dify's older shape: several names
    ({"logical_operator": "or", "conditions": [
        {"name": "team", "comparison_operator": "is", "value": "beta"},
        {"name": "pages", "comparison_operator": "≥", "value": 30}]}, {"blue", "green", "violet"}),
    ({"logical_operator": "and", "conditions": [
        {"name": "team", "comparison_operator": "start with", "value": "alpha"},
        {"name": "pages", "comparison_operator": ">", "value": 10}]}, {"green", "violet"}),
    ({"logical_operator": "and", "conditions": [
        {"name": "team", "comparison_operator": "not contains", "value": "zzz"},
        {"name": "team", "comparison_operator": "end with", "value": "a"}]}, {"red", "blue", "violet"}),
    ({"logical_operator": "or", "conditions": [
        {"name": "team", "comparison_operator": "is not", "value": "beta"},
        {"name": "team", "comparison_operator": "end with", "value": "et"}]}, {c for c, _ in NOTES} - {"blue"}),
]


@pytest.fixture(scope="module", params=["embedded", "qdrant-client"])
def notes(request, tmp_path_factory):
    """Both stores, each with the notes twice: "notes" as written now, "old" as written before the typed
    readings existed (none in the payloads)."""
    from unittest import mock

    from qdrant_client import QdrantClient

    import crossmodal.store.edge as edge
    import crossmodal.store.remote as remote
    from crossmodal.store.edge import EdgeStore
    from crossmodal.store.remote import RemoteStore

    root = tmp_path_factory.mktemp(request.param)
    store = EdgeStore(root) if request.param == "embedded" else RemoteStore(
        url="local", client=QdrantClient(path=str(root)))
    points = _note_points()
    store.create_collection("notes", "m", 8)
    store.upsert("notes", points)
    store.create_collection("old", "m", 8)
    with mock.patch.object(edge, "with_filter_fields", lambda p: p), \
            mock.patch.object(remote, "with_filter_fields", lambda p: p):
        store.upsert("old", points)
    yield SimpleNamespace(store=store), points
    store.close()


def _colours(hits):
    return {hit.payload["tags"][0] for hit in hits}


# Sets sorted in the ids: every test process (xdist) must collect the same ids, whatever its hash seed.
@pytest.mark.parametrize("condition, expected", DIFY_CASES,
                         ids=lambda c: str(sorted(c) if isinstance(c, set) else c)[:60])
def test_dify_conditions_run_in_either_engine_as_in_python(notes, condition, expected):
    """Each of Dify's operators, in the engine's query on both stores (typed readings: exact, one query), and
    the same answers for points written without typed readings (the bounded check); the payload test (what the
    bounded check runs) agrees on every point."""
    ctx, points = notes
    where = metadata_predicate(condition)
    query = np.asarray(points[0].vector, dtype=np.float32)
    assert _colours(query_where(ctx, "notes", query, 10, [], None, where)) == expected
    assert _colours(query_where(ctx, "notes", query, 10, [], None, where, typed=False)) == expected
    assert _colours(query_where(ctx, "old", query, 10, [], None, where, typed=False)) == expected
    assert {p.payload["tags"][0] for p in points if where(p.payload)} == expected


def test_past_the_index_budget_conditions_are_checked_on_bounded_hits_with_the_same_answers(store, monkeypatch):
    monkeypatch.setenv("CROSSMODAL_PAYLOAD_INDEXES", "8")  # the built-in fields' seven and one more
    points = _note_points()
    store.create_collection("few", "m", 8)
    store.upsert("few", points)
    ctx, query = SimpleNamespace(store=store), np.asarray(points[0].vector, dtype=np.float32)
    for condition, expected in DIFY_CASES:
        assert _colours(query_where(ctx, "few", query, 10, [], None, metadata_predicate(condition))) == expected
    assert len(store.payload_fields("few").indexed) <= 8


def test_filtered_fields_get_payload_indexes_on_both_stores(store):
    """Metadata keys and typed readings are indexed as they arrive; a built-in field a condition names (here
    caption) is indexed when first filtered on; old keyword indexes gain the prefixes substring matches need."""
    store.create_collection("notes", "m", 8)
    store.upsert("notes", _note_points())
    indexed = store.payload_fields("notes").indexed
    assert indexed["metadata.team"] == "keyword" and indexed['metadata."my key"'] == "keyword"
    assert indexed["_filter.number.pages"] == "float" and indexed["_filter.time.date"] == "float"
    assert "caption" not in indexed
    where = metadata_predicate(_one("caption", "contains", "x"))
    query_where(SimpleNamespace(store=store), "notes", np.ones(8, dtype=np.float32), 3, [], None, where)
    assert store.payload_fields("notes").indexed["caption"] == "keyword"


def test_typed_readings_are_stored_indexed_and_never_returned(store):
    store.create_collection("notes", "m", 8)
    points = _note_points()
    store.upsert("notes", points)
    hits = store.retrieve("notes", [p.id for p in points])
    assert hits and all("_filter" not in h.payload for h in hits)
    assert all("_filter" not in p.payload for p in store.scroll("notes", None, 10)[0])
    assert filter_fields(points[3].payload)["number"]["pages"] == [7.0]
    assert filter_fields(points[4].payload)["number"]["date"] == [1767225600000.0]
    assert filter_fields(points[0].payload)["time"]["date"] == [1704412800.0]
    assert store.get_collection("notes", with_count=False).filter_fields


def test_engine_form_widens_what_the_engine_cannot_say_and_narrows_it_under_a_not():
    from crossmodal.store.filters import ABSENT, CHECK, ENGINE

    suffix = Condition("metadata.team", "suffix", "bet")

    def served(leaf):
        return CHECK if leaf.op == "suffix" else ENGINE

    engine, exact = engine_form([suffix], served)
    assert engine == [Condition("metadata.team", "substring", "bet")] and not exact
    engine, exact = engine_form([suffix], lambda leaf: CHECK)  # the substring is not served either
    assert engine == [] and not exact
    engine, exact = engine_form([Not(suffix), Condition("kind", "eq", "text")], served)
    assert engine == [Condition("kind", "eq", "text")] and not exact  # Not(a subset of nothing): no restriction
    engine, _ = engine_form([AnyOf((suffix, Condition("kind", "eq", "x")))], lambda leaf: CHECK)
    assert engine == []  # one branch may be anything: the engine cannot narrow it
    assert engine_form([AllOf((Not(MATCH_ALL),))], served)[0] is None  # nothing can meet it
    assert engine_form([Condition("kind", "eq", "x")], served) == ([Condition("kind", "eq", "x")], True)
    missing = Condition("metadata.nobody", "eq", "x")
    assert engine_form([missing], lambda leaf: ABSENT) == (None, True)  # known false: no query at all
    assert engine_form([Not(missing)], lambda leaf: ABSENT) == ([], True)
    assert engine_form([Condition("metadata.nobody", "empty")], lambda leaf: ABSENT) == ([], True)


def test_a_condition_nothing_meets_is_one_engine_query_over_20000_points(tmp_path):
    """The issue's repro: a metadata_condition that no point meets used to widen x4 until the collection ran out
    (six queries reading all 20,000 payloads); now one query reads nothing. A condition the engine cannot say
    exactly ("end with") reads at most the filter_candidates budget, never the collection."""
    from crossmodal.limits import limit
    from crossmodal.store.edge import EdgeStore

    store = EdgeStore(tmp_path)
    store.create_collection("big", "m", 4)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(20_000, 4)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for start in range(0, 20_000, 5_000):
        store.upsert("big", [StoredPoint(f"00000000-0000-0000-0000-{i:012d}", vectors[i].tolist(),
                                         {"kind": "text", "metadata": {"album": f"a{i % 7}"}})
                             for i in range(start, start + 5_000)])

    class Counting:
        def __init__(self, inner):
            self.inner, self.queries, self.read = inner, 0, 0

        def query(self, *args, **kwargs):
            hits = self.inner.query(*args, **kwargs)
            self.queries, self.read = self.queries + 1, self.read + len(hits)
            return hits

        def __getattr__(self, name):
            return getattr(self.inner, name)

    counting = Counting(store)
    ctx = SimpleNamespace(store=counting)
    nothing = metadata_predicate(_one("album", "is", "nope"))
    assert query_where(ctx, "big", vectors[0], 10, [Condition("kind", "any", ["text"])], None, nothing) == []
    assert (counting.queries, counting.read) == (1, 0)
    counting.queries = counting.read = 0
    assert query_where(ctx, "big", vectors[0], 10, [], None, metadata_predicate(_one("album", "end with", "zz"))) == []
    assert counting.queries <= 4 and counting.read <= limit("filter_candidates")
    counting.queries = counting.read = 0
    nobody = metadata_predicate(_one("document_name", "is", "x"))  # a key no point has: known without a query
    assert query_where(ctx, "big", vectors[0], 10, [], None, nobody) == [] and counting.queries == 0
    store.close()
