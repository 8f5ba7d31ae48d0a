"""Copying a collection between stores (the embedded store to a Qdrant server or cluster, or back): points,
payloads, thumbnails, lexical vectors and the collection's model and lexical records, in batches.

Resumable by construction: each batch first asks the target which of its ids already arrived and sends only the
others, so rerunning the same command after an interruption (a kill, an unreachable server) goes on where it
stopped, and nothing that arrived is written twice. At the end the copy is verified: the same number of points,
and a sample of vectors equal on both sides.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Callable

import numpy as np

from crossmodal.errors import CrossmodalError, NotFoundError, StoreUnavailableError
from crossmodal.store.base import VectorStore
from crossmodal.store.options import SERVER_ONLY

BATCH = 256
SAMPLE = 50
# float16 storage keeps about three decimal digits: vectors equal to that precision are the same vectors.
SAME_VECTOR = 0.999


def migrate(source: VectorStore, target: VectorStore, name: str, new_name: str | None = None,
            batch: int = BATCH, progress: Callable[[int], None] | None = None, sample: int = SAMPLE) -> dict:
    info = source.get_collection(name)
    new_name = new_name or name
    storage = info.storage
    notes = []
    if target.backend != "qdrant" and storage.server_options():
        storage = replace(storage, **{k: None for k in SERVER_ONLY})
        notes.append("shards, replicas and write_consistency have no meaning in the embedded store: left out")
    # The lexical index's record goes with the points' sparse vectors, which scroll returns and upsert writes.
    target.ensure_collection(new_name, info.model, info.dim, info.weights, storage,
                             multivector_dim=info.multivector_dim, lexical=info.lexical)
    copied = skipped = 0
    offset = None
    sampled = Reservoir(sample)
    try:
        while True:
            points, offset = source.scroll(name, offset, batch)
            sampled.add(p.id for p in points)
            if points:
                arrived = target.existing_ids(new_name, [p.id for p in points])
                missing = [p for p in points if p.id not in arrived]
                target.upsert(new_name, missing)
                copied, skipped = copied + len(missing), skipped + len(arrived)
                progress and progress(len(points))
            if offset is None:
                break
    except StoreUnavailableError as exc:
        raise StoreUnavailableError(f"{exc}. Stopped after copying {copied} points; what arrived is intact: run "
                                    "the same command again to go on from there") from None
    target.finish_writes(new_name)
    verified = verify(source, target, name, new_name, sampled.items)
    return {"collection": name, "to": new_name, "copied": copied, "already_there": skipped,
            "count": verified["count"], "sampled": verified["sampled"], "model": info.model,
            "storage": storage.as_dict(), "notes": notes}


def verify(source: VectorStore, target: VectorStore, name: str, new_name: str, ids: list[str]) -> dict:
    """Counts equal, and the sampled points with the same vectors on both sides."""
    count, copied = source.count(name), target.count(new_name)
    if count != copied:
        raise CrossmodalError(f"the copy holds {copied} points, the source {count}; run the command again",
                              param="collection")
    theirs, ours = target.vectors(new_name, ids), source.vectors(name, ids)
    for point_id in ids:
        if point_id not in theirs:
            raise NotFoundError(f"point {point_id} is missing from the copy; run the command again",
                                param="collection")
        a, b = np.asarray(ours[point_id]), np.asarray(theirs[point_id])
        cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
        if cosine < SAME_VECTOR:
            raise CrossmodalError(f"point {point_id} has another vector in the copy (cosine {cosine:.4f})",
                                  param="collection")
    return {"count": count, "sampled": len(ids)}


class Reservoir:
    """A uniform random sample of ``size`` ids from a stream seen once (reservoir sampling)."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.items, self.seen, self.rng = size, [], 0, random.Random(seed)

    def add(self, ids) -> None:
        for point_id in ids:
            self.seen += 1
            if len(self.items) < self.size:
                self.items.append(point_id)
            elif (k := self.rng.randrange(self.seen)) < self.size:
                self.items[k] = point_id
