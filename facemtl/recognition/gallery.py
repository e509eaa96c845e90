"""Galleries of enrolled people: one interface over the gallery stores, with open-set identification.

A gallery holds the embeddings of enrolled people, each person's template (the
normalised mean of their normalised embeddings, kept up to date by the store at
each enrolment) and the id of the model that made them; embeddings of another
model live in another space, so a gallery refuses them. Where it lives is the
store's business (`facemtl.recognition.stores`): by default the embedded store
(SQLite plus an HNSW index, no server), or a Milvus server or cluster by URI,
through the same calls. Face embeddings are biometric data: the embedded store
is readable by its owner only (0700 folders, 0600 files).

Galleries of the earlier format (one `<name>.npz` file) are converted on first
use into the embedded store beside them; the `.npz` file is left as it was.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import stat
import zipfile

import numpy as np

from facemtl.errors import GalleryError
from facemtl.files import file_lock
from facemtl.recognition.metrics import model_threshold, normalize
from facemtl.recognition.open_set import UNKNOWN, gallery_threshold
from facemtl.recognition.stores import default_store, open_store
from facemtl.recognition.stores.local import LocalStore

__all__ = ["Gallery", "GalleryError", "check_person_name", "default_store", "list_galleries", "model_info"]

LEGACY_FORMAT_VERSION = 1
_GALLERY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_gallery_name(name):
    """A gallery's name: 1-64 letters, digits, `.`, `_` or `-`, starting with a letter or digit, no `..`."""
    if not isinstance(name, str) or not _GALLERY_NAME.match(name) or ".." in name:
        raise GalleryError(f"Bad gallery name {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
                           "(starting with a letter or digit, no '..' and no path separators)")
    return name


def legacy_path(name, store=None):
    """The `.npz` file of gallery `name` in the earlier format (a folder store only), or `None`."""
    check_gallery_name(name)
    st = open_store(store)
    return os.path.join(st.folder, f"{name}.npz") if isinstance(st, LocalStore) else None


def list_galleries(store=None):
    """The names of the galleries in `store` (converted or not), sorted."""
    st = open_store(store)
    names = set(st.list())
    if isinstance(st, LocalStore) and os.path.isdir(st.folder):
        names |= {f[:-4] for f in os.listdir(st.folder) if f.endswith(".npz") and not f.startswith(".")}
    return sorted(names)


def check_person_name(name):
    """A person's name: printable text, 1-128 characters, no separators or control characters."""
    if (not isinstance(name, str) or not name.strip() or name != name.strip() or len(name) > 128
            or not name.isprintable() or "/" in name or "\\" in name or name in (".", "..")):
        raise GalleryError(f"Bad person name {name!r}: use 1-128 printable characters without '/' or '\\' "
                           "and without leading or trailing spaces")
    if name == UNKNOWN:
        raise GalleryError(f"{UNKNOWN!r} is reserved for faces that match nobody")
    return name


class Gallery:
    """Enrolled people of one model, with open-set identification.

    Every change is committed by the store as it is made (there is nothing to
    save): an enrolment is an insert, a removal deletes the person's rows.

    Args:
        backend: the store's gallery object (`LocalGallery`, `MilvusGallery`).
        name: the gallery's name.

    Example:
        >>> gallery = Gallery.open("family", model=model_info, create=True)
        >>> gallery.enroll("ann", embeddings_of_ann, sources=["ann1.jpg", "ann2.jpg"])
        2
        >>> gallery.identify(query_embeddings, threshold=0.42, k=3)[0]["name"]
        'ann'
    """

    def __init__(self, backend, name):
        self.backend = backend
        self.name = name
        self.path = backend.path
        self.model = dict(backend.model)

    # -- opening -------------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, name, store=None, *, model=None, create=False):
        """Opens gallery `name` of `store`; creates an empty one when `create` and it does not exist.

        Args:
            name: the gallery's name (see `check_gallery_name`).
            store: a folder or a store URI (`facemtl.recognition.stores.open_store`).
            model: the model info of the embeddings to be used with it; a gallery
                of another model is refused.
            create: make a new, empty gallery when none exists.

        Raises:
            GalleryError: missing (without `create`), corrupt, or of another model.
        """
        check_gallery_name(name)
        st = open_store(store)
        if st.exists(name):
            gallery = cls(st.open(name), name)
        elif (old := legacy_path(name, store)) and os.path.exists(old):
            gallery = cls._convert(st, name, old)
        elif not create:
            raise GalleryError(f"No gallery {name!r} in {st.uri} (enrol someone to create it)")
        elif model is None:
            raise GalleryError("A new gallery needs the model whose embeddings it will hold")
        else:
            gallery = cls(st.create(name, model_info(model, model.get("path"))), name)
        if model is not None:
            gallery.check_model(model)
        return gallery

    @classmethod
    def _convert(cls, st, name, old):
        """Converts an earlier `.npz` gallery into the store (once, under a lock); the file stays as it is."""
        with file_lock(os.path.join(st.folder, f".{name}.convert.lock")):
            if st.exists(name):  # another process converted it meanwhile
                return cls(st.open(name), name)
            meta, names, embeddings, sources = read_npz(old)
            items = [(person, embeddings[names == person], sources[names == person].tolist())
                     for person in dict.fromkeys(names.tolist())]
            backend = st.create(name, meta["model"], fill=lambda g: g.add(items, added=meta.get("created")))
        return cls(backend, name)

    def check_model(self, model):
        """Refuses embeddings of another model (their spaces are not comparable)."""
        mine, theirs = self.model, model
        if int(theirs.get("embedding_dim", -1)) != int(mine["embedding_dim"]):
            raise GalleryError(f"{self.path}: the gallery holds {mine['embedding_dim']}-d embeddings but the model "
                               f"makes {theirs.get('embedding_dim')}-d ones; enrol again with this model")
        if theirs.get("model_id") != mine.get("model_id"):
            raise GalleryError(f"{self.path}: the gallery was made with another model ({_describe(mine)}), not "
                               f"{_describe(theirs)}; embeddings of different models cannot be compared: "
                               "use that model or enrol again into a new gallery")

    def threshold_for(self, metadata, override=None):
        """Checks that an export made this gallery's embeddings; returns the match threshold to use.

        The threshold is `override`, else the export's 1:N threshold for a
        gallery of this many people (`open_set.gallery_thresholds`: a search
        over more people needs a higher one for the same false-positive
        identification rate), else its 1:1 verification threshold.

        Raises:
            GalleryError: another model. FacemtlError: no threshold at all.
        """
        self.check_model(model_info(metadata))
        table = (metadata.get("open_set") or {}).get("gallery_thresholds")
        if override is None and table:
            return gallery_threshold(table, max(len(self), 1))
        return model_threshold(metadata, override)[0]

    # -- contents ------------------------------------------------------------------------------------------------

    def __len__(self):
        """The number of people enrolled."""
        return self.backend.count()

    def people(self):
        """`{name: number of enrolled embeddings}`, sorted by name."""
        return self.backend.people()

    def sources(self, name):
        """The photos a person's embeddings came from, in enrolment order."""
        return self.backend.sources(name)

    def templates(self):
        """`(names, templates)`: one normalised mean embedding per person, sorted by name."""
        return self.backend.templates()

    def _embeddings(self, embeddings):
        e = np.asarray(embeddings, np.float32)
        if e.ndim != 2 or e.shape[1] != int(self.model["embedding_dim"]) or not len(e):
            raise GalleryError(f"Expected [n, {self.model['embedding_dim']}] embeddings. Received: shape={e.shape}")
        return normalize(e)

    def enroll(self, name, embeddings, sources=None):
        """Adds embeddings (one per photo) of person `name`; returns their count for that person."""
        return self.enroll_many([(name, embeddings, sources)])[0]

    def enroll_many(self, people):
        """Adds `[(name, embeddings, sources), ...]` in one commit; returns each person's count afterwards."""
        items = []
        for name, embeddings, sources in people:
            e = self._embeddings(embeddings)
            sources = [""] * len(e) if sources is None else [str(s) for s in sources]
            if len(sources) != len(e):
                raise GalleryError(f"One source per embedding. Received: {len(sources)} sources, {len(e)} embeddings")
            items.append((check_person_name(name), e, sources))
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        totals = self.backend.add(items, added=now)
        self.backend.compact()
        return totals

    def enroll_new(self, people):
        """`enroll_many` that skips the photos a person already has (by source): a rerun adds nothing twice.

        An enrolment pipeline whose bundle is retried after its commit, or a
        rerun of the same folders, leaves the gallery as one run would.

        Returns:
            `[(name, added, total)]`, one per person given.
        """
        fresh, out = [], []
        for name, embeddings, sources in people:
            have = self.sources(name)
            known = set(have)
            keep = [i for i, s in enumerate(sources) if str(s) not in known]
            out.append((name, len(keep), len(have)))  # a person with nothing new keeps the count they had
            if keep:
                fresh.append((name, np.asarray(embeddings)[keep], [sources[i] for i in keep]))
        totals = dict(zip([f[0] for f in fresh], self.enroll_many(fresh))) if fresh else {}
        return [(name, n, totals.get(name, had)) for name, n, had in out]

    def remove(self, name):
        """Removes every embedding of `name`; returns how many."""
        removed = self.backend.remove(name)
        if not removed:
            raise GalleryError(f"{name!r} is not enrolled in {self.path}")
        self.backend.compact()
        return removed

    def rename(self, old, new):
        """Gives person `old` the name `new` (e.g. a cluster's `person-0001` its real name)."""
        self.backend.rename(old, check_person_name(new))

    def merge(self, source, target):
        """Joins person `source` into `target` (their photos and template); returns `target`'s photo count."""
        if source == target:
            raise GalleryError(f"Cannot merge {source!r} with itself")
        total = self.backend.merge(source, target)
        self.backend.compact()
        return total

    def compact(self, force=True):
        """Folds the changes since the search index was written into a new index file (the embedded store)."""
        return self.backend.compact(force=force)

    # -- search --------------------------------------------------------------------------------------------------

    def search(self, queries, k=5, exact=False):
        """Top-k people per query by cosine similarity: one list of `(name, score)` per query, best first.

        Args:
            queries: `[q, D]` or `[D]` embeddings (normalised here).
            k: candidates per query.
            exact: compare with every template instead of the approximate index.
        """
        q = normalize(np.atleast_2d(np.asarray(queries, np.float32)))
        if q.shape[1] != int(self.model["embedding_dim"]):
            raise GalleryError(f"Expected {self.model['embedding_dim']}-d query embeddings. Received: shape={q.shape}")
        found = self.backend.search(q, max(1, int(k)), exact=exact)
        if not any(found):
            raise GalleryError(f"{self.path}: the gallery is empty; enrol someone first")
        return found

    def identify(self, queries, threshold, k=5, exact=False):
        """Names the people of query embeddings; `unknown` when the best score is below `threshold`.

        Returns:
            One dict per query: `name` (or `"unknown"`), `score` (the best
            similarity) and `candidates` (top-k `{name, score}`).
        """
        results = []
        for row in self.search(queries, k, exact):
            candidates = [{"name": name, "score": round(score, 6)} for name, score in row]
            best = candidates[0]
            results.append({"name": best["name"] if best["score"] >= threshold else UNKNOWN,
                            "score": best["score"], "threshold": float(threshold), "candidates": candidates})
        return results


def read_npz(path):
    """`(meta, names, embeddings, sources)` of a gallery file of the earlier `.npz` format."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            names, embeddings, sources = z["names"], z["embeddings"], z["sources"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise GalleryError(f"{path}: not a readable facemtl gallery ({type(exc).__name__}: {exc}); "
                           "the file was left as it is") from None
    if meta.get("format_version") != LEGACY_FORMAT_VERSION or "model" not in meta:
        raise GalleryError(f"{path}: unknown gallery format {meta.get('format_version')!r}")
    dim = int(meta["model"].get("embedding_dim", -1))
    if embeddings.ndim != 2 or embeddings.shape[1] != dim or not (len(names) == len(embeddings) == len(sources)):
        raise GalleryError(f"{path}: inconsistent gallery (embeddings {embeddings.shape}, {len(names)} names, "
                           f"embedding size {dim})")
    if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        import warnings

        warnings.warn(f"{path}: the old gallery file is readable by other users; its converted copy is not",
                      stacklevel=3)
    return meta, names.astype(str), normalize(embeddings), sources.astype(str)


def model_info(metadata, path=None):
    """The facts a gallery keeps about the model that made its embeddings (from export metadata)."""
    info = {k: metadata.get(k) for k in ("model_id", "name", "version", "embedding_dim")}
    if path:
        info["path"] = os.path.abspath(path)
    return info


def _describe(model):
    return f"{model.get('name')}/{model.get('version')} id {str(model.get('model_id'))[:8]}"
