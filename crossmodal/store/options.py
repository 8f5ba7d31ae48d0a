"""How a collection keeps its vectors, chosen when it is made and recorded with it (``collections info``).

One text form everywhere (the Ingest node's ``storage``, the CLI's ``--storage``, the endpoint, the provider's
default): comma-separated ``key=value`` pairs, e.g. ``quantization=int8, on_disk=true``.

- ``vectors``: ``float32`` (default) or ``float16`` (half the memory; cosine rankings barely move);
- ``quantization``: ``none``, ``int8`` (scalar: a quarter of the memory, searched first, then rescored
  against the originals) or ``binary`` (one bit a dimension, 768-d models and larger, searched with
  oversampling and rescored);
- ``on_disk``: ``true`` keeps the originals and payloads memory-mapped on disk; with quantisation only the
  quantised copy stays in RAM;
- with nothing said, a new collection gets ``DEFAULT_FOR_NEW`` (int8, originals on disk; see below), and a
  collection made before options were recorded reads as ``StorageOptions()``, float32 in memory;
- on a Qdrant server only: ``shards``, ``replicas``, ``write_consistency``;
- for late-interaction models (their token vectors): ``pool_factor`` (2, 3, ...) merges similar token vectors
  into 1/pool_factor of them before they are stored (sentence-transformers' HierarchicalTokenPooling).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from crossmodal.errors import CrossmodalError

VECTOR_TYPES = ("float32", "float16")
QUANTIZATIONS = ("none", "int8", "binary")
SERVER_ONLY = ("shards", "replicas", "write_consistency")
# One bit a dimension keeps too little of a small embedding: Qdrant advises binary quantisation for large
# models, and with 512-d CLIP vectors it loses recall that oversampling does not win back.
BINARY_MIN_DIM = 768
INT8_QUANTILE = 0.99  # clip the 1 % extreme values before scaling to int8
BINARY_OVERSAMPLING = 3.0  # candidates fetched per result with binary codes, then rescored
LATE_PREFETCH, LATE_PREFETCH_ON_CODES = 100, 300  # see StorageOptions.late_prefetch
INT8_OVERSAMPLING = 1.5


@dataclass(frozen=True)
class StorageOptions:
    vectors: str = "float32"
    quantization: str = "none"
    on_disk: bool = False
    shards: int | None = None
    replicas: int | None = None
    write_consistency: int | None = None
    pool_factor: int | None = None

    @classmethod
    def parse(cls, value, param: str = "storage") -> "StorageOptions":
        """From ``"quantization=int8, on_disk=true"``, a dict, or nothing (the defaults)."""
        if value is None or value == "" or isinstance(value, StorageOptions):
            return value or cls()
        pairs = value if isinstance(value, dict) else _pairs(str(value), param)
        known = {"vectors", "quantization", "on_disk", "pool_factor", *SERVER_ONLY}
        unknown = sorted(set(pairs) - known)
        if unknown:
            raise CrossmodalError(f"unknown storage option(s) {unknown}; known: {', '.join(sorted(known))}",
                                  param=param)
        options = {}
        if "vectors" in pairs:
            options["vectors"] = _choice(pairs["vectors"], VECTOR_TYPES, "vectors", param)
        if "quantization" in pairs:
            options["quantization"] = _choice(pairs["quantization"], QUANTIZATIONS, "quantization", param)
        if "on_disk" in pairs:
            options["on_disk"] = _bool(pairs["on_disk"], param)
        for key in (*SERVER_ONLY, "pool_factor"):
            if key in pairs and pairs[key] not in (None, ""):
                options[key] = _positive(pairs[key], key, param)
        return cls(**options)

    def check(self, backend: str, dim: int, param: str = "storage") -> "StorageOptions":
        """Options the backend or the model cannot honour are errors, never silent defaults."""
        if backend != "qdrant":
            asked = self.server_options()
            if asked:
                raise CrossmodalError(f"{', '.join(asked)} need a Qdrant server or cluster (store_url); the "
                                      "embedded store is one shard on one machine", param=param)
        if self.quantization == "binary" and dim < BINARY_MIN_DIM:
            raise CrossmodalError(f"binary quantisation needs {BINARY_MIN_DIM}-d vectors or more; this model's are "
                                  f"{dim}-d: use quantization=int8", param=param)
        if self.replicas and self.write_consistency and self.write_consistency > self.replicas:
            raise CrossmodalError(f"write_consistency {self.write_consistency} exceeds replicas {self.replicas}",
                                  param=param)
        return self

    def server_options(self) -> list[str]:
        """The server-only options that are set (shards, replicas, write_consistency)."""
        return [k for k in SERVER_ONLY if getattr(self, k) is not None]

    @property
    def oversampling(self) -> float | None:
        return {"int8": INT8_OVERSAMPLING, "binary": BINARY_OVERSAMPLING}.get(self.quantization)

    @property
    def maxsim_on_codes(self) -> bool:
        """Late interaction's second stage scores its candidates on the int8 codes (kept in memory) when the
        original token vectors are on disk: there the originals cost a random read per candidate (100 pages of
        350 token vectors, 18 MB a query: p50 / p95 20 / 113 ms from a cold disk at 10,000 pages) and the codes
        rank about as well (recall@10 0.943 against 0.950) in 7 / 9 ms. In memory the originals are as quick,
        and exact. benchmarks/bench_late.py; docs/documents.md."""
        return self.on_disk and self.quantization == "int8"

    @property
    def late_prefetch(self) -> int:
        """First-stage candidates of a late-interaction search. MaxSim on the originals in memory: 100 (10,000
        pages of 700 float16 token vectors: recall@10 0.977 in 15 ms; 300 would take 42 ms for 1.000). On the
        codes a candidate costs far less: 300 (10,000 pages of 350: 0.980 in 16 ms; 100,000 pages in an 8 GB
        memory cgroup: 0.965 in 20 ms, against 0.935 at 100)."""
        return LATE_PREFETCH_ON_CODES if self.maxsim_on_codes else LATE_PREFETCH

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in self.as_dict().items())


def _pairs(text: str, param: str) -> dict:
    pairs = {}
    for part in filter(None, (p.strip() for p in text.replace(";", ",").split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise CrossmodalError(f"'{part}' is not key=value; example: quantization=int8, on_disk=true",
                                  param=param)
        pairs[key.strip().lower()] = value.strip()
    return pairs


def _choice(value, allowed: tuple, key: str, param: str) -> str:
    value = str(value).strip().lower()
    if value not in allowed:
        raise CrossmodalError(f"{key} '{value}' is not one of {', '.join(allowed)}", param=param)
    return value


def _bool(value, param: str) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise CrossmodalError(f"on_disk '{value}' is not true or false", param=param)


def _positive(value, key: str, param: str) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if number < 1:
        raise CrossmodalError(f"{key} '{value}' is not a positive whole number", param=param)
    return number


# What a new collection gets when neither the node nor the provider says otherwise, chosen from
# benchmarks/bench_storage.py (1M 512-d points, this 2-core machine; docs/scale.md): against float32 in memory,
# queries 2.8x faster (p50 2.0 against 5.6 ms after a restart), the index built 2.9x faster, 0.47x the serving
# memory, recall@10 0.988 against 0.998. Below 20,000 points a collection is searched exactly either way.
# Collections made before storage options were recorded read as StorageOptions(): float32 in memory.
DEFAULT_FOR_NEW = StorageOptions(quantization="int8", on_disk=True)
