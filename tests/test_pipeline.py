"""Worker-thread decoding (ordered_map) and dynamic batching of concurrent queries."""

import random
import threading
import time

import numpy as np
import pytest

from crossmodal.encoders.batching import DynamicBatcher
from crossmodal.ingest.pipeline import ordered_map


def test_ordered_map_keeps_input_order_and_overlaps_work():
    def slow(x):
        time.sleep(random.Random(x).uniform(0, 0.01))
        return x * x, threading.get_ident()

    results = list(ordered_map(slow, range(60), workers=4, window=8))
    assert [r for r, _ in results] == [x * x for x in range(60)]
    assert len({ident for _, ident in results}) > 1
    assert threading.get_ident() not in {ident for _, ident in results}


def test_ordered_map_keeps_at_most_window_items_in_flight():
    started, consumed = [], []
    lock = threading.Lock()

    def work(x):
        with lock:
            started.append(x)
        return x

    def source():
        for x in range(50):
            with lock:
                assert x - len(consumed) <= 5, "the stream was read ahead of the window"
            yield x

    for x in ordered_map(work, source(), workers=2, window=5):
        consumed.append(x)
    assert consumed == list(range(50))


def test_an_exception_arrives_at_its_item_and_stops_nothing_before_it():
    def work(x):
        if x == 7:
            raise ValueError("bad item 7")
        return x

    got = []
    with pytest.raises(ValueError, match="bad item 7"):
        for x in ordered_map(work, range(20), workers=3, window=4):
            got.append(x)
    assert got == list(range(7))


def test_workers_zero_runs_in_the_callers_thread():
    idents = list(ordered_map(lambda _: threading.get_ident(), range(5), workers=0, window=2))
    assert set(idents) == {threading.get_ident()}


def _concurrently(fn, args):
    results = [None] * len(args)
    barrier = threading.Barrier(len(args))

    def run(i):
        barrier.wait()
        results[i] = fn(args[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_concurrent_callers_share_forward_passes_and_get_their_own_results():
    sizes = []

    def run_batch(items):
        sizes.append(len(items))
        time.sleep(0.03)  # a forward pass
        return [x * 10 for x in items]

    batcher = DynamicBatcher(run_batch, max_batch=8)
    results = _concurrently(batcher.submit, list(range(24)))
    assert results == [x * 10 for x in range(24)]
    assert batcher.items == 24 and batcher.batches == len(sizes) < 24
    assert max(sizes) <= 8


def test_an_error_reaches_every_caller_of_its_batch_and_the_batcher_recovers():
    def run_batch(items):
        time.sleep(0.02)
        if any(x < 0 for x in items):
            raise RuntimeError("model failed")
        return items

    batcher = DynamicBatcher(run_batch)
    outcomes = _concurrently(lambda x: _outcome(batcher.submit, x), [-1, 1, 2, 3])
    assert all(o in ("error", x) for o, x in zip(outcomes, [-1, 1, 2, 3])) and outcomes[0] == "error"
    assert batcher.submit(5) == 5 and not batcher._busy


def _outcome(fn, x):
    try:
        return fn(x)
    except RuntimeError:
        return "error"


def test_batched_query_vectors_equal_unbatched_ones():
    from crossmodal.encoders.models import load_encoder
    from crossmodal.lab.scenes import generate_scene

    encoder = load_encoder("demo-shapes")
    texts = ["a red circle", "一个蓝色星形", "a small green heart on the left", "a black square and a white star",
             "a yellow triangle", "红色圆形"] * 3
    vectors = _concurrently(lambda t: encoder.query_text_vector(t), texts)
    for text, (vector, truncated) in zip(texts, vectors):
        assert not truncated
        assert np.allclose(vector, encoder.encode_texts([text]).vectors[0], atol=1e-5)
    assert encoder.text_queries.batches < len(texts)
    images = [generate_scene(k, 200, 200, 1).image for k in range(8)]
    image_vectors = _concurrently(encoder.query_image_vector, images)
    for image, vector in zip(images, image_vectors):
        assert np.allclose(vector, encoder.encode_images([image])[0], atol=1e-5)
