"""Dynamic batching: concurrent requests share one forward pass.

TF Serving's idea (`max_batch_size`, `batch_timeout_micros`): the first
request waiting opens a batch; requests that arrive within `max_wait_ms` and
share its input kind join it, up to `max_batch_size` items; then one model call
answers them all. A model call on 32 crops costs far less than 32 calls on one.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time

import numpy as np


class _Job:
    __slots__ = ("key", "inputs", "future", "enqueued")

    def __init__(self, key, inputs):
        self.key = key
        self.inputs = inputs
        self.future = concurrent.futures.Future()
        self.enqueued = time.monotonic()


class DynamicBatcher:
    """Runs `fn` on batches gathered from concurrent `submit` calls, in one worker thread.

    Args:
        fn: `fn(key, inputs) -> dict of arrays`, each `[n, ...]` for the `n`
            items of `inputs` (a numpy array or a list, `[n, ...]`).
        max_batch_size: most items per call of `fn` (a bigger request runs
            alone, in chunks of this size).
        max_wait_ms: how long the first request of a batch waits for others.
            With 0, a batch takes the requests that queued while the model was
            busy with the previous one: no wait at low load, full batches under
            concurrency. `max_batch_size=1` gives batch-of-one serving.

    Example:
        >>> batcher = DynamicBatcher(lambda key, x: {"y": np.asarray(x) * 2}, max_batch_size=8)
        >>> batcher.submit("k", np.ones((2, 3))).result()["y"].shape
        (2, 3)
        >>> batcher.close()
    """

    def __init__(self, fn, *, max_batch_size=32, max_wait_ms=0.0):
        if int(max_batch_size) < 1:
            raise ValueError(f"max_batch_size must be >= 1. Received: max_batch_size={max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0. Received: max_wait_ms={max_wait_ms}")
        self._fn = fn
        self.max_batch_size = int(max_batch_size)
        self.max_wait = max_wait_ms / 1000.0
        self._queue = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        # Counters for /metrics-style introspection and the load benchmark.
        self.calls = 0
        self.items = 0
        self._thread = threading.Thread(target=self._loop, name="facemtl-batcher", daemon=True)
        self._thread.start()

    def submit(self, key, inputs):
        """Queues `inputs` (`[n, ...]`) under `key` (items of one key can share a batch).

        Returns:
            A `concurrent.futures.Future` of the dict of output arrays for these `n` items.

        Raises:
            RuntimeError: the batcher is closed.
        """
        job = _Job(key, inputs)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is shut down")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    def close(self, timeout=None):
        """Stops taking jobs, answers those already queued, and joins the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _take_batch(self):
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            batch = [self._queue.popleft()]
            size = len(batch[0].inputs)
            deadline = batch[0].enqueued + self.max_wait
            while size < self.max_batch_size:
                for job in list(self._queue):
                    if job.key == batch[0].key and size + len(job.inputs) <= self.max_batch_size:
                        self._queue.remove(job)
                        batch.append(job)
                        size += len(job.inputs)
                remaining = deadline - time.monotonic()
                if size >= self.max_batch_size or remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            return batch

    def _loop(self):
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                self._answer(batch)
            except BaseException as exc:  # a failed batch: each job alone, so one bad input fails only its request
                if len(batch) == 1:
                    batch[0].future.set_exception(exc)
                    continue
                for job in batch:
                    try:
                        self._answer([job])
                    except BaseException as job_exc:
                        job.future.set_exception(job_exc)

    def _run(self, key, inputs):
        if len(inputs) <= self.max_batch_size:
            self.calls += 1
            self.items += len(inputs)
            return self._fn(key, inputs)
        parts = [self._run(key, inputs[i:i + self.max_batch_size])
                 for i in range(0, len(inputs), self.max_batch_size)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _answer(self, batch):
        if len(batch) == 1:
            inputs = batch[0].inputs
        elif isinstance(batch[0].inputs, np.ndarray):
            inputs = np.concatenate([job.inputs for job in batch])
        else:
            inputs = [item for job in batch for item in job.inputs]
        out = self._run(batch[0].key, inputs)
        start = 0
        for job in batch:
            n = len(job.inputs)
            job.future.set_result({k: v[start:start + n] for k, v in out.items()})
            start += n
