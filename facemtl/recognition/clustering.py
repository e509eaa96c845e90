"""People in a collection: group faces by person with a neighbour search, no enrolment first.

Each face's nearest neighbours come from an HNSW index (usearch, the engine of the
embedded gallery store), never from an all-pairs matrix, so the cost grows as
`n log n` with the collection. Two faces are linked when their cosine similarity
reaches the model's verification threshold (calibrated at a false-accept rate of
1e-3); the linked faces are then grouped by Chinese whispers (Biemann 2006, the
algorithm dlib's `chinese_whispers_clustering` uses): each face takes the group
that weighs most among its links, until nothing changes, which does not chain two
people together through one stray link as connected components would.

Example:
    >>> labels = cluster_embeddings(embeddings, threshold=0.93)
    >>> labels[:6]
    array([ 0,  0,  1, -1,  1,  0])
"""

from __future__ import annotations

import io
import os
import re

import numpy as np

from facemtl.files import replaced_atomically
from facemtl.inference import analyze_files
from facemtl.recognition.gallery import model_info
from facemtl.recognition.metrics import model_threshold, normalize

UNCLUSTERED = -1
GROUP_NAME = re.compile(r"^person-(\d{4,})$")
_EXACT_BELOW = 4096  # below this many faces an exhaustive search is faster than building an index


def neighbours(embeddings, k):
    """Each unit embedding's `k` nearest others: `(ids [n, k], similarities [n, k])`, -1 where fewer exist."""
    from usearch.index import Index, search

    e = np.ascontiguousarray(normalize(embeddings))
    n, count = len(e), min(k + 1, len(e))
    if n < _EXACT_BELOW:
        matches = search(e, e, count, "ip", exact=True, threads=os.cpu_count() or 1)
    else:
        index = Index(ndim=e.shape[1], metric="ip", dtype="f32", connectivity=16, expansion_add=128,
                      expansion_search=max(128, 2 * count))
        index.add(np.arange(n, dtype=np.uint64), e, threads=os.cpu_count() or 1)
        matches = index.search(e, count, threads=os.cpu_count() or 1)
    keys = np.asarray(matches.keys, np.int64).reshape(n, -1)
    sims = 1.0 - np.asarray(matches.distances, np.float32).reshape(n, -1)
    valid = (keys >= 0) & (keys < n) & (keys != np.arange(n)[:, None])
    return np.where(valid, keys, -1), np.where(valid, sims, -np.inf)


def cluster_embeddings(embeddings, threshold, *, k=16, min_size=2, iterations=20, seed=0):
    """Groups face embeddings by person.

    Args:
        embeddings: `[n, D]` face embeddings.
        threshold: the similarity that links two faces (e.g. the model's
            verification threshold).
        k: neighbours looked at per face (a group can be larger: links chain).
        min_size: groups with fewer faces are left unclustered.
        iterations: Chinese-whispers rounds at most (it usually settles in a few).
        seed: the order faces are visited in each round.

    Returns:
        `int [n]`: a group number per face (0, 1, ... largest group first), or
        `UNCLUSTERED` (-1).
    """
    e = np.asarray(embeddings, np.float32)
    if e.ndim != 2:
        raise ValueError(f"Expected [n, D] embeddings. Received: shape={e.shape}")
    n = len(e)
    if n == 0:
        return np.zeros(0, np.int64)
    if min_size < 1:
        raise ValueError(f"min_size must be at least 1. Received: min_size={min_size}")
    ids, sims = neighbours(e, k)
    linked = sims >= threshold
    # Symmetric links: a face's neighbour list may miss a face that lists it.
    rows = np.repeat(np.arange(n), ids.shape[1])[linked.ravel()]
    cols, weights = ids.ravel()[linked.ravel()], sims.ravel()[linked.ravel()]
    edges = {}
    for a, b, w in zip(np.r_[rows, cols], np.r_[cols, rows], np.r_[weights, weights]):
        edges.setdefault(int(a), {})[int(b)] = float(w)
    labels = np.arange(n)
    rng = np.random.default_rng(seed)
    nodes = np.fromiter(edges, np.int64)
    for _ in range(iterations):
        changed = 0
        for node in rng.permutation(nodes):
            weight = {}
            for other, w in edges[node].items():
                weight[labels[other]] = weight.get(labels[other], 0.0) + w
            best = max(weight.items(), key=lambda x: (x[1], -x[0]))[0]
            if best != labels[node]:
                labels[node], changed = best, changed + 1
        if not changed:
            break
    groups, counts = np.unique(labels, return_counts=True)
    order = [g for g, c in sorted(zip(groups, counts), key=lambda x: (-x[1], x[0])) if c >= min_size]
    renumber = {int(g): i for i, g in enumerate(order)}
    return np.asarray([renumber.get(int(g), UNCLUSTERED) for g in labels], np.int64)


def pairwise_scores(labels, truth):
    """Pairwise precision, recall and F1 of predicted groups against true people, and the unclustered share.

    Unclustered faces (-1) count as groups of one (they pair with nobody).
    """
    labels, truth = np.asarray(labels), np.asarray(truth)
    singles = labels == UNCLUSTERED
    pred = np.where(singles, -2 - np.arange(len(labels)), labels)

    def pairs(x):
        _, counts = np.unique(x, return_counts=True)
        return float((counts * (counts - 1) // 2).sum())

    joint = pairs(np.char.add(pred.astype(str), np.char.add("|", truth.astype(str))))
    precision = joint / pairs(pred) if pairs(pred) else 1.0
    recall = joint / pairs(truth) if pairs(truth) else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "unclustered": float(singles.mean()),
            "groups": int(len(set(labels[~singles].tolist()))), "people": int(len(set(truth.tolist())))}


def next_group_names(existing, count):
    """`count` names `person-0001`, ... after the highest such name in `existing`."""
    start = max((int(m.group(1)) for name in existing if (m := GROUP_NAME.match(name))), default=0)
    return [f"person-{start + i + 1:04d}" for i in range(count)]


def contact_sheet(thumbnails, title, path, columns=6, size=96):
    """Writes one group's faces as a grid PNG with the group's name on top."""
    from PIL import Image, ImageDraw

    thumbs = [Image.open(io.BytesIO(t)).convert("RGB").resize((size, size)) for t in thumbnails]
    rows = max(1, -(-len(thumbs) // columns))
    sheet = Image.new("RGB", (columns * size, rows * size + 22), "white")
    ImageDraw.Draw(sheet).text((6, 5), title, fill="black")
    for i, thumb in enumerate(thumbs):
        sheet.paste(thumb, ((i % columns) * size, 22 + (i // columns) * size))
    with replaced_atomically(path) as tmp:  # the temporary name keeps the .png ending
        sheet.save(tmp)


def _thumbnail(image, box, size=96):
    from PIL import Image

    x, y, w, h = box
    side = max(w, h) * 1.2
    cx, cy = x + w / 2, y + h / 2
    crop = Image.fromarray(image).crop((int(cx - side / 2), int(cy - side / 2), int(cx + side / 2),
                                        int(cy + side / 2))).resize((size, size))
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def link_threshold(metadata, override=None):
    """The similarity that links two faces: `override`, else the export's `clustering.threshold` (chosen on a
    validation set by `benchmarks/cluster_people.py --choose`), else its 1:1 verification threshold."""
    chosen = (metadata.get("clustering") or {}).get("threshold")
    if override is None and chosen is not None:
        return float(chosen)
    return model_threshold(metadata, override)[0]


def cluster_photos(analyzer, paths, gallery, *, threshold=None, sheets=None, min_size=2, k=16, max_per_sheet=24,
                   progress=True):
    """Finds the people in photos and writes each group into `gallery` as `person-0001`, ...

    A group whose template matches a person already in the gallery (at the
    gallery's open-set threshold) joins that person instead of becoming a new one.

    Args:
        analyzer: a `facemtl.FaceAnalyzer` (detector, alignment, model).
        paths: photos, folders, videos (as `facemtl analyze` takes them).
        gallery: the `Gallery` to write the groups into (of the analyzer's model).
        threshold: the similarity linking two faces (default: `link_threshold`).
        sheets: a folder for one contact sheet PNG per group (`None`: none).
        min_size: smallest group written; smaller ones stay unclustered.
        k: neighbours per face.
        max_per_sheet: faces shown per contact sheet.
        progress: a progress bar on stderr while photos are analysed.

    Returns:
        `(faces, summary)`: one `{"path", ["frame"], "box", "group"}` per face
        found (`group` is a person's name in the gallery, or `None`), and
        `{"photos", "faces", "groups", "unclustered", "unreadable", "new_people", "joined"}`.

    Example:
        >>> faces, summary = cluster_photos(FaceAnalyzer(), ["holiday/"], Gallery.open("family", create=True, model=m))
    """
    metadata = analyzer.predictor.metadata
    gallery.check_model(model_info(metadata))
    link = link_threshold(metadata, threshold)
    faces, embeddings, thumbs, unreadable, photos = [], [], [], [], 0
    for record, image in analyze_files(analyzer, paths, progress=progress, ignored=[]):
        if "error" in record:
            unreadable.append({"path": record["path"], "error": record["error"]})
            continue
        photos += 1
        for face in record["faces"]:
            entry = {"path": record["path"], "box": face["box"]}
            if "frame" in record:
                entry["frame"] = record["frame"]
            faces.append(entry)
            embeddings.append(face["embedding"])
            thumbs.append(_thumbnail(image, face["box"]))
    labels = cluster_embeddings(np.asarray(embeddings, np.float32).reshape(len(faces), -1), link, k=k,
                                min_size=min_size) if faces else np.zeros(0, np.int64)
    groups = int(labels.max()) + 1 if len(labels) else 0
    names = [None] * groups
    joined = []
    if groups and len(gallery):
        e = normalize(np.asarray(embeddings, np.float32))
        templates = normalize(np.stack([e[labels == g].mean(0) for g in range(groups)]))
        limit = gallery.threshold_for(metadata)
        for g, match in enumerate(gallery.identify(templates, limit, k=1)):
            if match["name"] != "unknown":
                names[g] = match["name"]
                joined.append(match["name"])
    fresh = iter(next_group_names(gallery.people(), names.count(None)))
    names = [n or next(fresh) for n in names]
    items = []
    for g, name in enumerate(names):
        members = np.flatnonzero(labels == g)
        sources = [faces[i]["path"] + (f"#frame={faces[i]['frame']}" if "frame" in faces[i] else "") for i in members]
        items.append((name, np.asarray(embeddings, np.float32)[members], sources))
    if items:
        gallery.enroll_many(items)
    if sheets and groups:
        os.makedirs(sheets, exist_ok=True)
        for g, name in enumerate(names):
            members = np.flatnonzero(labels == g)[:max_per_sheet]
            contact_sheet([thumbs[i] for i in members], f"{name}: {int((labels == g).sum())} face(s)",
                          os.path.join(sheets, f"{name}.png"))
    for face, label in zip(faces, labels):
        face["group"] = names[label] if label != UNCLUSTERED else None
    summary = {"photos": photos, "faces": len(faces), "groups": groups,
               "unclustered": int((labels == UNCLUSTERED).sum()), "unreadable": unreadable,
               "new_people": [n for n in names if n not in joined], "joined": sorted(set(joined))}
    return faces, summary


__all__ = ["UNCLUSTERED", "cluster_embeddings", "cluster_photos", "contact_sheet",
           "next_group_names", "pairwise_scores"]
