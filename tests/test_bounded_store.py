"""Bounded open collections (issue 42, finding 5): the embedded store keeps at most ``open_collections`` shards
open (least recently used closed first), closes none under a call that uses it, holds each shard's file lock
exactly while it is open, and lists collections without opening them."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from crossmodal.errors import NotFoundError
from crossmodal.store import StoredPoint
from crossmodal.store.edge import EdgeStore

pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc (Linux)")
DIM = 8


def _point(k: int) -> StoredPoint:
    vector = np.random.default_rng(k).normal(size=DIM)
    return StoredPoint(f"00000000-0000-0000-0000-{k:012d}", (vector / np.linalg.norm(vector)).tolist(),
                       {"kind": "text", "text": f"note {k}", "metadata": {"album": "a"}})


def many_collections(root: Path, count: int) -> list[str]:
    """``count`` one-point collections: one made through the store, the others copies of its files (making
    each through the engine costs a second or more on two busy cores; opening them is what is tested)."""
    first = EdgeStore(root)
    first.create_collection("c0000", "m", DIM)
    first.upsert("c0000", [_point(0)])
    first.finish_writes("c0000")
    first.close()
    source = root / "collections" / "c0000"
    names = [f"c{k:04d}" for k in range(count)]
    for name in names[1:]:
        subprocess.run(["cp", "-a", "--sparse=always", str(source), str(root / "collections" / name)], check=True)
    return names


def collection_maps(root: Path) -> int:
    """Memory maps of this process onto the store's collection files."""
    prefix = str(root / "collections")
    with open("/proc/self/maps") as maps:
        return sum(prefix in line for line in maps)


def test_many_collections_in_use_keep_open_shards_and_memory_maps_within_the_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSMODAL_OPEN_COLLECTIONS", "8")
    names = many_collections(tmp_path, 60)
    store = EdgeStore(tmp_path)
    threads_before = len(os.listdir("/proc/self/task"))
    query = _point(0).vector
    for name in names:
        assert store.query(name, query, 1)[0].id == _point(0).id
        assert store.count(name) == 1
    with open("/proc/sys/vm/max_map_count") as limit:
        max_maps = int(limit.read())
    maps = collection_maps(tmp_path)
    assert maps <= 8 * 150, f"{maps} maps onto collection files with 8 shards open"  # all 60 open: about 5,100
    with open("/proc/self/maps") as all_maps:
        assert sum(1 for _ in all_maps) < 0.1 * max_maps
    assert len(store.open_shards()) <= 8
    assert len(os.listdir("/proc/self/task")) - threads_before <= 8 * 4  # search threads of the open ones only
    store.close()
    assert store.open_shards() == [] and collection_maps(tmp_path) == 0


def test_listing_opens_no_collection_and_shows_recorded_counts(tmp_path):
    names = many_collections(tmp_path, 40)
    store = EdgeStore(tmp_path)
    store.upsert("c0003", [_point(1), _point(2)])  # open now: its live count is shown
    listing = store.list_collections()
    assert [c.name for c in listing] == names
    assert {c.name: c.count for c in listing}["c0003"] == 3 and all(c.count == 1 for c in listing if c.name != "c0003")
    assert store.open_shards() == ["c0003"]
    store.close()  # closing records the count in collection.json
    assert {c.name: c.count for c in store.list_collections()}["c0003"] == 3 and store.open_shards() == []
    older = tmp_path / "collections" / "c0005" / "collection.json"  # made before counts were recorded
    older.write_text(json.dumps({k: v for k, v in json.loads(older.read_text()).items() if k != "count"}))
    assert {c.name: c.count for c in store.list_collections()}["c0005"] == 1 and store.open_shards() == ["c0005"]
    store.close()
    assert json.loads(older.read_text())["count"] == 1


def test_a_shard_is_closed_only_when_no_call_uses_it(tmp_path, monkeypatch):
    """Six threads over ten collections with a budget of three: queries, writes and counts interleave with
    closes and reopens; nothing fails, nothing is lost, and the open shards exceed the budget only by calls in
    flight."""
    monkeypatch.setenv("CROSSMODAL_OPEN_COLLECTIONS", "3")
    names = many_collections(tmp_path, 10)
    store = EdgeStore(tmp_path)
    written = {name: {_point(0).id} for name in names}
    errors, most_open, stop = [], [0], time.monotonic() + 3.0
    guard = threading.Lock()

    def work(seed: int):
        rng = random.Random(seed)
        k = 1000 * (seed + 1)
        try:
            while time.monotonic() < stop:
                name = rng.choice(names)
                store.query(name, _point(0).vector, 3)
                point = _point(k)
                k += 1
                store.upsert(name, [point])
                with guard:
                    written[name].add(point.id)
                store.count(name)
                most_open[0] = max(most_open[0], len(store.open_shards()))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    workers = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors, errors[:3]
    assert most_open[0] <= 3 + 6
    assert len(store.open_shards()) <= 3
    for name in names:
        assert store.count(name) == len(written[name])
    store.close()


def test_a_collection_deleted_while_another_call_uses_it_ends_that_call_cleanly(tmp_path):
    names = many_collections(tmp_path, 2)
    store = EdgeStore(tmp_path)
    outcomes, started = [], threading.Event()

    def keep_querying():
        started.set()
        try:
            while True:
                store.query(names[0], _point(0).vector, 1)
        except NotFoundError as exc:
            outcomes.append("gone: " + str(exc))
        except Exception as exc:  # noqa: BLE001
            outcomes.append(repr(exc))

    worker = threading.Thread(target=keep_querying)
    worker.start()
    started.wait(5)
    time.sleep(0.05)
    assert store.delete_collection(names[0])
    worker.join(10)
    assert len(outcomes) == 1 and outcomes[0].startswith("gone: ") and "no collection named" in outcomes[0]
    assert not (tmp_path / "collections" / names[0]).exists() and store.count(names[1]) == 1
    store.close()


OTHER_PROCESS = """
import sys
from crossmodal.store.edge import EdgeStore
from crossmodal.errors import CrossmodalError
try:
    print(EdgeStore(sys.argv[1]).count(sys.argv[2]))
except CrossmodalError as exc:
    print(exc)
"""


def test_the_file_lock_is_held_exactly_while_the_shard_is_open(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSMODAL_OPEN_COLLECTIONS", "2")
    names = many_collections(tmp_path, 4)
    store = EdgeStore(tmp_path)

    def other_process_reads(name: str) -> str:
        return subprocess.run([sys.executable, "-c", OTHER_PROCESS, str(tmp_path), name], capture_output=True,
                              text=True, timeout=60, cwd=Path(__file__).resolve().parents[1]).stdout.strip()

    assert store.count(names[0]) == 1
    assert "open in another process" in other_process_reads(names[0])
    store.count(names[1])
    store.count(names[2])  # past the budget: names[0], the least recently used, is closed and its lock released
    assert names[0] not in store.open_shards()
    assert other_process_reads(names[0]) == "1"
    assert store.count(names[0]) == 1  # and opens again here
    store.close()


def test_a_shard_left_unused_is_closed_at_the_next_call(tmp_path, monkeypatch):
    import crossmodal.store.edge as edge

    monkeypatch.setattr(edge, "IDLE_CLOSE_S", 0.5)
    names = many_collections(tmp_path, 2)
    store = EdgeStore(tmp_path)
    store.count(names[0])
    time.sleep(0.6)
    store.count(names[1])
    assert store.open_shards() == [names[1]]
    store.close()
