"""The store interface both backends implement, and the records that cross it."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from crossmodal.errors import CollectionExists, CrossmodalError, NotFoundError
from crossmodal.store.options import StorageOptions

VECTOR_NAME = "embedding"
# A late-interaction model's token vectors (MaxSim), kept beside the pooled vector, out of the HNSW graph: the
# pooled vector's HNSW search finds candidates, MaxSim on these rescores them (query_late).
MULTIVECTOR_NAME = "late"
# The lexical index: a sparse vector with Qdrant's IDF modifier (BM25 scored in the engine), made from the item's
# text (crossmodal/lexical/). A collection records how its sparse vectors were made (LexicalOptions.record).
LEXICAL_NAME = "lexical"
NEW_LEXICAL = "default"  # create_collection's default: a new collection gets the lexical index of today's analyzer
# Fusion of the dense and lexical candidate lists in the engine's Query API: reciprocal rank fusion, or
# distribution-based score fusion (each list's scores normalised by their mean +- 3 standard deviations, then
# summed). In both engines a point at 0-based rank r of a list of weight w adds 1 / ((r + 1) / w + k - 1) to its
# RRF score. With k = 1 that is w / (r + 1): a weight multiplies its list's share, so a lexical list of weight 3
# keeps its first place first against a point the dense list puts first and the lexical list second (3/2 + 1 <
# 3). With k > 1 no weight can (each share stays below 1 / (k - 1)). Qdrant's plain RRF (every server) is k = 2.
FUSIONS = ("rrf", "dbsf")
RRF_K = 1
PLAIN_RRF_K = 2
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# Payload fields that filters commonly use get an index when a collection is made.
KEYWORD_FIELDS = ("kind", "tags", "source", "sha256", "mime_type")
INTEGER_FIELDS = ("width", "height")


@dataclass
class CollectionInfo:
    name: str
    model: str
    dim: int
    count: int = 0
    created_at: str | None = None
    weights: str | None = None  # the model's weights_fingerprint when it was made; None: made before it was kept
    storage: StorageOptions = field(default_factory=StorageOptions)  # how its vectors are kept (store/options.py)
    multivector_dim: int | None = None  # a late-interaction model's token vectors, when it keeps them
    # Whether its points carry the typed readings that numeric and time conditions run on in the engine
    # (store/filters.py); collections made before them answer those conditions by a bounded check instead.
    filter_fields: bool = False
    # How its sparse vectors are made (LexicalOptions.record: identity, analyzer version, options, payload
    # fields) and whether some point has text beyond its file name ("text": text_beyond_names); None: a collection
    # made before the lexical index.
    lexical: dict | None = None
    reindex: dict | None = None  # a reindex under way: where it stands (crossmodal/ingest/reindex.py)

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "model": self.model, "dimension": self.dim, "count": self.count,
               "created_at": self.created_at, "weights": self.weights, "storage": self.storage.as_dict()}
        if self.multivector_dim:
            out["multivector_dimension"] = self.multivector_dim
        if self.lexical:
            out["lexical"] = {"identity": self.lexical.get("identity"), "fields": self.lexical.get("fields"),
                              "has_text": bool(self.lexical.get("text"))}
        if self.reindex:
            out["reindex"] = self.reindex
        return out

    def lexical_options(self):
        """The LexicalOptions its sparse vectors were made with; None when it has none, or when another analyzer
        version made them (then its queries cannot be analysed alike: it needs a reindex)."""
        from crossmodal.lexical.options import LexicalOptions

        return LexicalOptions.from_record(self.lexical) if self.lexical else None


@dataclass
class StoredPoint:
    id: str
    vector: list[float]
    payload: dict[str, Any]
    multivector: list[list[float]] | None = None  # token vectors, in a late-interaction collection
    sparse: Any = None  # its lexical vector (crossmodal.lexical.SparseTerms), in a collection with the lexical index


@dataclass
class TextUpdate:
    """A point's text made anew (crossmodal/ingest/reindex.py): payload fields set (merged into its payload), and
    its lexical vector replaced (``sparse``; None leaves it as it is)."""

    id: str
    payload: dict[str, Any] | None = None
    sparse: Any = None


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(float(self.score), 6), "payload": self.payload}


@dataclass(frozen=True)
class Condition:
    """One condition on a payload field, backend-neutral (both stores translate these, store/filters.py).

    ``key`` is a JSON path (``tags``, ``metadata.album``, ``metadata."my key"``: crossmodal.store.filters.field_path).
    ``op`` and ``value``:
      eq         one of the field's values equals ``value`` (a string, integer or boolean; no coercion)
      any        one of its values equals one of ``value`` (a list)
      range      one of its numbers lies within ``value`` ({"gt" | "gte" | "lt" | "lte": number})
      prefix     one of its strings starts with ``value``
      substring  one of its strings contains ``value``
      suffix     one of its strings ends with ``value``: no engine has this, so the searcher runs the
                 substring in the engine and checks the suffix on a bounded number of hits
      empty      the field is missing, null or an empty list (``value`` unused)
    """

    key: str
    op: str
    value: Any = None


@dataclass(frozen=True)
class AllOf:
    """Every condition holds (the empty group: everything)."""

    conditions: tuple = ()


@dataclass(frozen=True)
class AnyOf:
    """At least one condition holds (the empty group: nothing)."""

    conditions: tuple = ()


@dataclass(frozen=True)
class Not:
    """The condition does not hold."""

    condition: Any


@dataclass(frozen=True)
class PayloadFields:
    """What a store knows of a collection's payload fields, for deciding what its engine can filter on cheaply.

    ``indexed``: each indexed path and its kind ("keyword": prefix-enabled, serves eq, any, empty, prefix and
    substring; "keyword_exact": eq, any, empty; "float" and "integer": ranges). ``present``: every path under
    ``metadata`` and the typed readings that some point has, or None when the store does not know."""

    indexed: dict = field(default_factory=dict)
    present: frozenset | None = None

    def serves(self, condition: Condition) -> bool:
        kind = self.indexed.get(condition.key)
        if condition.op == "range":
            return kind in ("float", "integer")
        if condition.op in ("prefix", "substring"):
            return kind == "keyword"
        return condition.op in ("eq", "any", "empty") and kind in ("keyword", "keyword_exact")


def check_collection_name(name: str | None) -> str:
    name = (name or "").strip()
    if not COLLECTION_NAME.match(name):
        raise CrossmodalError(
            f"'{name}' is not a valid collection name; use 1-64 letters, digits, '_' or '-', starting with a letter or digit",
            param="collection",
        )
    return name


def missing_collection(name: str) -> NotFoundError:
    return NotFoundError(f"no collection named '{name}'; ingest into it first or list collections", param="collection")


class VectorStore(ABC):
    """A set of named collections of L2-normalised vectors with payloads."""

    backend = "abstract"

    @abstractmethod
    def create_collection(self, name: str, model: str, dim: int, weights: str | None = None,
                          storage: StorageOptions | None = None, multivector_dim: int | None = None,
                          lexical: dict | str | None = NEW_LEXICAL) -> CollectionInfo:
        """A new collection; ``storage`` is checked against the backend and the dimension first. With
        ``multivector_dim`` its points also keep token vectors (MaxSim, no HNSW graph; the same storage options).
        ``lexical``: the record of its sparse vectors (NEW_LEXICAL: today's analyzer; None: no lexical index)."""

    @abstractmethod
    def get_collection(self, name: str, with_count: bool = True) -> CollectionInfo:
        """Raise NotFoundError when the collection does not exist. ``with_count=False`` skips
        counting the points (searches only need the model)."""

    @abstractmethod
    def list_collections(self) -> list[CollectionInfo]:
        """Every collection with its record. The embedded store opens none of them for this: a count is the
        live one of a collection open and idle, else the one recorded when it was last written or closed."""

    @abstractmethod
    def delete_collection(self, name: str) -> bool: ...

    @abstractmethod
    def existing_ids(self, name: str, ids: list[str]) -> set[str]: ...

    @abstractmethod
    def retrieve(self, name: str, ids: list[str], with_thumbnails: bool = True) -> list[Hit]:
        """Stored points by id, with payload (score 0; image thumbnails unless ``with_thumbnails`` is False);
        missing ids are left out."""

    @abstractmethod
    def upsert(self, name: str, points: list[StoredPoint]) -> None: ...

    @abstractmethod
    def query(
        self,
        name: str,
        vector: list[float],
        limit: int,
        conditions: list[Condition] = (),
        score_threshold: float | None = None,
        exact: bool = False,
        with_thumbnails: bool = False,
    ) -> list[Hit]:
        """The ``limit`` nearest points that meet every condition (a Condition, AllOf, AnyOf or Not; ops the
        engine has no form for, such as "suffix", are refused: crossmodal.store.filters.engine_form relaxes
        them first), with their payloads; an image's thumbnail only ``with_thumbnails``."""

    @abstractmethod
    def query_late(self, name: str, vector: list[float], multivector: list[list[float]], limit: int,
                   prefetch: int, conditions: list[Condition] = (), score_threshold: float | None = None,
                   with_thumbnails: bool = False) -> list[Hit]:
        """Two stages in the engine: ``prefetch`` candidates by the pooled ``vector`` (HNSW), then the best
        ``limit`` of them by MaxSim of ``multivector`` against their token vectors (the score: the sum over
        query tokens of each one's best cosine)."""

    @abstractmethod
    def query_fused(self, name: str, vector: list[float] | None, sparse, limit: int, candidates: int,
                    conditions: list[Condition] = (), fusion: str = "rrf", multivector: list[list[float]] | None = None,
                    late_candidates: int | None = None, with_thumbnails: bool = False,
                    lexical_weight: float = 1.0) -> list[Hit]:
        """Lexical and dense candidates fused in the engine's Query API: the ``candidates`` best points by the
        sparse vector ``sparse`` (BM25) and, given ``vector``, the ``candidates`` nearest by it (with
        ``multivector``: the ``late_candidates`` nearest pooled vectors ranked by MaxSim), each list under the
        conditions, fused by ``fusion`` (FUSIONS), the lexical list weighted ``lexical_weight`` (RRF). Scores are on
        0-1: the engine's fused score over the best it could be (fused_score)."""

    @abstractmethod
    def count(self, name: str, conditions: list[Condition] = ()) -> int: ...

    @abstractmethod
    def scroll(self, name: str, offset=None, limit: int = 256, with_vectors: bool = True) -> tuple[list[StoredPoint], Any]:
        """Points in id order with their vectors (sparse ones included) and full payloads (thumbnails included),
        and the offset of the next page (None after the last): what a copy of the collection needs.
        ``with_vectors=False``: payloads only (empty vectors)."""

    @abstractmethod
    def add_lexical(self, name: str, record: dict) -> CollectionInfo:
        """Give a collection the lexical index (its sparse vector, empty) or, when it has one, record that its
        vectors are now made as ``record`` says (a reindex writes them)."""

    @abstractmethod
    def update_text(self, name: str, updates: list[TextUpdate]) -> None:
        """Set payload fields and lexical vectors of existing points (missing ids are skipped)."""

    @abstractmethod
    def update_record(self, name: str, changes: dict) -> None:
        """Merge ``changes`` into the collection's record (``reindex``: where a reindex stands; None removes)."""

    @abstractmethod
    def vectors(self, name: str, ids: list[str]) -> dict[str, list[float]]:
        """Stored vectors by id (missing ids are left out)."""

    def finish_writes(self, name: str) -> None:
        """Called after an ingest: build indexes, flush. Backends that index on their own do nothing."""

    def payload_fields(self, name: str, wanted: dict | None = None) -> PayloadFields:
        """The collection's indexed and present payload fields, after making the indexes ``wanted`` asks for
        ({path: "keyword" | "float"}; within the ``payload_indexes`` budget, none for a path no point has)."""
        return PayloadFields()

    def close(self) -> None:
        """Release files and connections."""

    def ensure_collection(self, name: str, model: str, dim: int, weights: str | None = None,
                          storage: StorageOptions | None = None, strict: bool = False,
                          multivector_dim: int | None = None, lexical: dict | str | None = NEW_LEXICAL) -> CollectionInfo:
        """The collection, made on first use (with ``storage``, and token vectors of ``multivector_dim`` for a
        late-interaction model); a clear error if another model, or other weights, made it, or (``strict``: the
        caller asked for these options) if it keeps its vectors otherwise."""
        try:
            info = self.get_collection(name, with_count=False)
        except NotFoundError:
            try:
                return self.create_collection(name, model, dim, weights, storage, multivector_dim, lexical)
            except CollectionExists:  # another call made it meanwhile (two first ingests at once): use it
                info = self.get_collection(name, with_count=False)
        check_model(info, model, dim)
        check_weights(info, weights)
        if strict and storage is not None and storage != info.storage:
            raise CrossmodalError(f"collection '{name}' exists with storage '{info.storage.describe()}'; storage "
                                  "options apply when a collection is made: leave them empty, or use a new "
                                  "collection (python -m crossmodal collections migrate copies one)", param="storage")
        return info


def check_model(info: CollectionInfo, model: str, dim: int) -> None:
    if info.model != model or info.dim != dim:
        raise CrossmodalError(
            f"collection '{info.name}' was made with model '{info.model}' ({info.dim}-d); "
            f"it cannot take vectors of '{model}' ({dim}-d). Use model '{info.model}' (or 'auto'), "
            "or another collection",
            param="model",
        )


def check_weights(info: CollectionInfo, weights: str | None) -> None:
    """Same model name, other files (a retrained local model, replaced weights): the old vectors and the
    new ones live in different spaces, so neither searching nor adding may mix them."""
    if info.weights and weights and info.weights != weights:
        raise CrossmodalError(
            f"collection '{info.name}' holds vectors of '{info.model}' with weights {info.weights}, but the "
            f"files of '{info.model}' now have weights {weights}: the model was replaced and the two sets of "
            f"vectors are not comparable. Ingest into a new collection (or delete '{info.name}' and ingest "
            "again), or restore the model files it was made with",
            param="model",
        )


def lexical_record(lexical: dict | str | None) -> dict | None:
    """create_collection's ``lexical``: NEW_LEXICAL (today's analyzer and payload fields), a record, or None."""
    if lexical == NEW_LEXICAL:
        from crossmodal.lexical import DEFAULT_OPTIONS, DEFAULT_TEXT_FIELDS

        return {**DEFAULT_OPTIONS.record(DEFAULT_TEXT_FIELDS), "text": False}
    return None if lexical is None else {**lexical, "text": bool(lexical.get("text"))}


def text_beyond_names(payloads, record: dict | None) -> bool:
    """Whether one of these payloads has text beyond its file name in the fields the lexical ``record`` reads: what
    makes a collection's default mode hybrid. Every picture has a file name; photos named IMG_0042.jpg are not a
    collection with text, and hybrid scores (ranks) would replace their dense ones (calibrated cosines) for nothing."""
    from crossmodal.lexical import document_text

    fields = [field for field in (record or {}).get("fields") or () if field != "source"]
    return bool(fields) and any(document_text(payload, fields) for payload in payloads)


def sparse_terms(vector):
    """An engine's sparse vector (either backend's) as SparseTerms; None when the point has none."""
    from crossmodal.lexical import SparseTerms

    return None if vector is None else SparseTerms(list(vector.indices), list(vector.values))


def fused_score(score: float, fusion: str, weights: tuple[float, ...], k: int = RRF_K) -> float:
    """A fused score on 0-1, for thresholds (Dify's included): the engine's score divided by the best one the
    fusion can give. RRF: a point first in every list scores 1, one first in the lexical list only w / (w + 1)
    of it (0.5 at equal weights, 0.75 at 3); it measures ranks, not similarity. DBSF: each list adds its
    normalised score (about 0-1; above 1 past three standard deviations), so the sum is divided by the number of
    lists and clipped."""
    if fusion == "rrf":
        best = sum(1.0 / (1.0 / w + k - 1) for w in weights)
        return min(1.0, max(0.0, score / best))
    return min(1.0, max(0.0, score / len(weights)))
