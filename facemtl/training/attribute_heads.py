"""Age and gender heads on the release model's identity embedding, trained on a cache of embeddings.

The heads read the L2-normalised `embedding` (128 values) that the frozen
trunk and identity branch compute for every face anyway, so answering age and
gender costs two small dense heads per face, not a second network.
`benchmarks/age_gender_levels.py` measured the level (the embedding beat the
shared trunk's maps and the expression branch's stage 4 for both tasks).

As for the expression branch (`facemtl.training.feature_cache`), the frozen
part runs once per face and view: the faces are framed like served photos
(the serving detector on the crop, then the chip), and the embedding of each
framed face and of its mirror image is cached; the heads then train in
seconds per epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np

from facemtl.files import temporary_name

EMBEDDING_VIEWS = ("framed", "framed_mirror")
CACHE_FORMAT = 1


def embedding_cache(crops, model, cache_dir, name, views=EMBEDDING_VIEWS, batch_size=128, log=print):
    """The `embedding` output of `model` for every view of every framed face, cached in `cache_dir`.

    Args:
        crops: `uint8 [n, size, size, 3]` faces framed like served photos.
        model: a Keras model with an `embedding` output (e.g. `from_preset("release")`).
        cache_dir: where the cache file goes (keyed by the pixels, the views and the model's weights).
        name: the file name's prefix.
        views: `"framed"` and/or `"framed_mirror"`.

    Returns:
        `float32 [len(views), n, dim]`.
    """
    import keras
    import tensorflow as tf

    h = hashlib.sha1(json.dumps([CACHE_FORMAT, list(views)]).encode())
    crops = np.ascontiguousarray(crops)
    h.update(f"{crops.shape}".encode())
    h.update(crops.tobytes())
    for w in model.weights:
        h.update(np.ascontiguousarray(w.numpy()).tobytes())
    path = os.path.join(cache_dir, f"{name}-embedding-{h.hexdigest()[:16]}.npy")
    if os.path.isfile(path):
        log(f"{name}: embeddings cached ({path})")
        return np.load(path)
    embed = keras.Model(model.input, model.output["embedding"])
    run = tf.function(lambda x: embed(x, training=False), reduce_retracing=True)
    out = np.zeros((len(views), len(crops), embed.output_shape[-1]), np.float32)
    start = time.time()
    for v, view in enumerate(views):
        for s in range(0, len(crops), batch_size):
            x = crops[s:s + batch_size]
            x = x[:, :, ::-1] if view.endswith("_mirror") else x
            out[v, s:s + len(x)] = run(tf.constant(x, tf.float32)).numpy()
            if s // batch_size % 40 == 0:
                log(f"{name}: embeddings of view {view!r}: {s + len(x)}/{len(crops)} ({time.time() - start:.0f} s)")
    os.makedirs(cache_dir, exist_ok=True)
    tmp = temporary_name(path)
    try:
        np.save(tmp, out)  # the temporary name keeps the .npy ending
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out
