"""Running LiteRT (TFLite) models on the CPU: one interpreter per thread, and the exported model's runner.

`BlazeFaceDetector` and `TFLitePredictor` (the LiteRT copy of an export, which
`facemtl.inference.Predictor` answers every call with) share `PerThread`:
a LiteRT interpreter must not be invoked from two threads at once.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading

import numpy as np

from facemtl.errors import ModelFormatError
from facemtl.preprocessing import prepare_images

_budget = threading.local()


def interpreter_threads(default):
    """The threads a LiteRT interpreter made in this thread gets: `default`, or this thread's share of the cores
    when it works in a pool that split them (`split_cores`)."""
    return getattr(_budget, "threads", None) or default


def split_cores(workers):
    """A thread pool's initializer: the interpreters its threads make share the cores (`cores // workers` threads
    each). On 2 cores, two photo streams on 1-thread interpreters answer 1.2-1.3x the photos of one stream on
    2-thread ones (`benchmarks/analyze_workers.py`, docs/benchmarks.md)."""
    _use_threads(max(1, (os.cpu_count() or 1) // max(1, workers)))


def _use_threads(threads):
    _budget.threads = threads


# The name of the metadata entry facemtl writes into a `.tflite` flatbuffer (`facemtl.export.tflite.add_metadata`).
METADATA_NAME = "facemtl"
# A mirror-gated model's second signature: the expression branches' answer for the mirror image of the crop.
MIRROR_SIGNATURE = "mirror"


class PerThread:
    """One object per thread, made by `factory` on a thread's first `get()`.

    A LiteRT interpreter must not be shared between threads (a server's pool
    calls from several). A plain dict keyed by thread id, owned by its user, so
    the interpreters are freed with it in reference order (a `threading.local`
    leaves them to the cyclic garbage collector, which freed a LiteRT runner's
    parts in an order that crashed the process). A dead thread's id may be
    reused by a new thread, which then takes over its object: never two at once.
    """

    def __init__(self, factory):
        self._factory, self._objects, self._lock = factory, {}, threading.Lock()

    def get(self):
        key = threading.get_ident()
        obj = self._objects.get(key)
        if obj is None:
            obj = self._factory()
            with self._lock:
                self._objects[key] = obj
        return obj


class TFLitePredictor:
    """Runs a facemtl `.tflite` on face crops (resized on the host with the SavedModel's own resize).

    Example:
        >>> predictor = TFLitePredictor("release.tflite")
        >>> predictor.run([crop])[0]["expression_probs"].shape
        (7,)
    """

    def __init__(self, path, threads=2, metadata=None):
        """`metadata`: the export's, when the caller has it (reading the file's own needs TensorFlow)."""
        self.metadata = read_tflite_metadata(path) if metadata is None else metadata
        path = os.fspath(path)

        # The mirror gate (`facemtl.models.multitask.split_mirror_gate`): the mirror pass for uncertain faces only.
        threshold = self.metadata.get("mirror_threshold", self.metadata.get("model_config", {}).get("mirror_threshold"))
        self.mirror_threshold = threshold

        def load():  # no reference to self: the predictor and its interpreters form no cycle
            from ai_edge_litert.interpreter import Interpreter

            try:
                interpreter = Interpreter(model_path=path, num_threads=interpreter_threads(threads))
                signatures = interpreter.get_signature_list()
            except (ValueError, RuntimeError) as exc:
                raise ModelFormatError(f"{path}: not a loadable TFLite model ({exc})") from None
            if (MIRROR_SIGNATURE in signatures) != (threshold is not None):
                raise ModelFormatError(f"{path}: its mirror pass and its metadata's mirror_threshold ({threshold}) "
                                       "do not go together")
            return (interpreter.get_signature_runner("serving_default"),
                    interpreter.get_signature_runner(MIRROR_SIGNATURE) if threshold is not None else None)

        self._runners = PerThread(load)
        self._runners.get()  # checks the file now, and serves the thread that made the predictor
        self.size = (self.metadata["input"]["height"], self.metadata["input"]["width"])
        self.threads = threads
        # A batch's crops go to as many one-thread interpreters at once as the calling thread's interpreter has
        # threads (`run`: the number of runs bounds the threads started; none starts before a batch comes).
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, threads, os.cpu_count() or 1),
                                                           initializer=_use_threads, initargs=(1,),
                                                           thread_name_prefix="facemtl-litert")

    def resize(self, images):
        """Crops of any size to the model's, as the SavedModel's graph does it (`prepare_images`)."""
        if all(img.shape[:2] == self.size for img in images):
            return images  # aligned crops are made at the model's size: TensorFlow is not even imported
        import tensorflow as tf

        return [np.asarray(tf.round(prepare_images(img, *self.size, 3))).astype(np.uint8)
                if img.shape[:2] != self.size else img for img in images]

    def run(self, images):
        """One dict of numpy outputs per `uint8 [h, w, 3]` crop, one invocation each (the model takes batch 1).

        With a mirror gate, a crop whose expression answer's top probability is
        below the threshold also runs the mirror pass and takes the mean of the two.
        Several crops are shared out, in contiguous runs, among as many
        one-thread interpreters as this thread's interpreter has threads, run at
        once: the same answers, 1.4x faster per face on 2 cores than one
        2-thread interpreter taking them in turn (docs/benchmarks.md). A thread
        of a pool that split the cores (`split_cores`) runs its own crops.
        """
        images = self.resize(images)
        threads = interpreter_threads(self.threads)  # 1 in a thread of a pool that split the cores
        if threads < 2 or len(images) < 2:
            return self._run(images)
        runs = np.array_split(np.arange(len(images)), min(threads, len(images)))
        return [r for part in self._pool.map(self._run, [[images[i] for i in run] for run in runs]) for r in part]

    def _run(self, images):
        runner, mirror = self._runners.get()
        results = []
        for img in images:
            out = {k: v[0] for k, v in runner(images=img[None]).items()}
            probs = out["expression_probs"]
            if mirror is not None and probs.max() < self.mirror_threshold:
                out["expression_probs"] = (probs + mirror(images=img[None])["expression_probs"][0]) / 2
            results.append(out)
        return results


def read_tflite_metadata(path):
    """The `facemtl` metadata of a `.tflite` file, with a clear error when it is not one of ours."""
    from tensorflow.lite.tools import flatbuffer_utils

    try:
        with open(path, "rb") as f:
            model = flatbuffer_utils.convert_bytearray_to_object(bytearray(f.read()))
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file") from None
    except Exception as exc:  # the flatbuffer reader raises whatever a broken buffer makes it hit
        raise ModelFormatError(f"{path}: not a TFLite model ({type(exc).__name__}: {exc})") from None
    for entry in model.metadata or []:
        if entry.name == METADATA_NAME.encode():
            return json.loads(bytes(model.buffers[entry.buffer].data).decode())
    raise ModelFormatError(f"{path}: a TFLite model, but not exported by facemtl (no '{METADATA_NAME}' metadata)")
