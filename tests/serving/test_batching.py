"""Dynamic batching: concurrent requests share calls, never mix keys, and one bad input fails alone."""

import threading

import numpy as np
import pytest

from facemtl.serving.batching import DynamicBatcher


class Recorder:
    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, key, inputs):
        inputs = np.asarray(inputs)
        with self.lock:
            self.calls.append((key, len(inputs)))
        if (inputs < 0).any():
            raise ValueError("negative input")
        return {"double": inputs * 2, "key": np.asarray([str(key)] * len(inputs))}


def submit_concurrently(batcher, jobs):
    """Submits (key, inputs) jobs from one thread each, released together; returns their futures."""
    futures = [None] * len(jobs)
    gate = threading.Barrier(len(jobs))

    def send(i):
        gate.wait()
        futures[i] = batcher.submit(*jobs[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return futures


def test_concurrent_requests_share_calls_and_get_their_own_answers():
    fn = Recorder()
    batcher = DynamicBatcher(fn, max_batch_size=16, max_wait_ms=300)
    jobs = [("a", np.full((2, 3), i, np.float32)) for i in range(8)]
    futures = submit_concurrently(batcher, jobs)
    for (_, inputs), future in zip(jobs, futures):
        np.testing.assert_array_equal(future.result(timeout=10)["double"], inputs * 2)
    batcher.close()
    assert sum(n for _, n in fn.calls) == 16
    assert len(fn.calls) < len(jobs)  # batched: fewer model calls than requests
    assert batcher.calls == len(fn.calls) and batcher.items == 16


def test_max_batch_size_and_keys_are_respected():
    fn = Recorder()
    batcher = DynamicBatcher(fn, max_batch_size=4, max_wait_ms=200)
    jobs = [("a" if i % 2 else "b", np.ones((1, 2))) for i in range(12)] + [("a", np.ones((9, 2)))]
    futures = submit_concurrently(batcher, jobs)
    for (key, _), future in zip(jobs, futures):
        out = future.result(timeout=10)
        assert set(out["key"]) == {key}  # never answered from another key's batch
    batcher.close()
    assert max(n for _, n in fn.calls) <= 4  # the 9-item request ran alone, in chunks of 4
    assert sum(n for _, n in fn.calls) == 12 + 9


def test_a_bad_input_fails_only_its_own_request():
    fn = Recorder()
    batcher = DynamicBatcher(fn, max_batch_size=8, max_wait_ms=300)
    jobs = [("a", np.ones((1, 2))), ("a", -np.ones((1, 2))), ("a", np.ones((1, 2)))]
    futures = submit_concurrently(batcher, jobs)
    with pytest.raises(ValueError, match="negative"):
        futures[1].result(timeout=10)
    for i in (0, 2):
        np.testing.assert_array_equal(futures[i].result(timeout=10)["double"], 2 * np.ones((1, 2)))
    batcher.close()


def test_zero_wait_never_delays_a_lone_request_and_batches_what_queued():
    fn = Recorder()
    batcher = DynamicBatcher(fn, max_batch_size=32, max_wait_ms=0)
    for i in range(5):
        batcher.submit("a", np.ones((1, 1))).result(timeout=10)
    assert [n for _, n in fn.calls] == [1] * 5
    busy, release = threading.Event(), threading.Event()

    def blocking(key, inputs):
        busy.set()
        release.wait(5)
        return fn(key, inputs)

    batcher._fn = blocking
    first = batcher.submit("a", np.ones((1, 1)))
    busy.wait(5)  # the model is busy: these queue up and go together next
    queued = [batcher.submit("a", np.ones((1, 1))) for _ in range(6)]
    release.set()
    for f in [first, *queued]:
        f.result(timeout=10)
    batcher.close()
    assert [n for _, n in fn.calls][5:] == [1, 6]


def test_batch_of_one():
    fn = Recorder()
    batcher = DynamicBatcher(fn, max_batch_size=1, max_wait_ms=100)
    futures = submit_concurrently(batcher, [("a", np.ones((1, 1)))] * 4)
    for f in futures:
        f.result(timeout=10)
    batcher.close()
    assert [n for _, n in fn.calls] == [1] * 4


def test_close_answers_queued_jobs_then_refuses_new_ones():
    release = threading.Event()

    def slow(key, inputs):
        release.wait(5)
        return {"y": np.asarray(inputs)}

    batcher = DynamicBatcher(slow, max_batch_size=1, max_wait_ms=0)
    futures = [batcher.submit("a", np.ones((1, 1))) for _ in range(3)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    release.set()
    closer.join(10)
    assert all(f.result(timeout=1)["y"].shape == (1, 1) for f in futures)
    with pytest.raises(RuntimeError, match="shut down"):
        batcher.submit("a", np.ones((1, 1)))


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_wait_ms": -1}])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError, match="Received"):
        DynamicBatcher(lambda k, x: {}, **kwargs)
