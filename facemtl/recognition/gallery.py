"""Galleries of enrolled people: embeddings on disk, vectorised search.

A gallery is one file, `<store>/<gallery>.npz`, holding every enrolled
embedding with its person's name and the id of the model that made it. Face
embeddings are biometric data, so the file is readable by its owner only
(mode 0600, in a 0700 store) and it is replaced atomically: it is written to a
temporary file beside it and renamed over the old one, so a crash mid-write
leaves the previous gallery intact. Embeddings from another model live in
another space: a gallery refuses to mix them.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import re
import stat
import tempfile
import zipfile

import numpy as np

from facemtl.errors import FacemtlError
from facemtl.recognition.metrics import normalize
from facemtl.recognition.open_set import UNKNOWN

FORMAT_VERSION = 1
_GALLERY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class GalleryError(FacemtlError):
    """A gallery is missing, corrupt, made by another model, or asked something it cannot do."""


def default_store():
    """`$FACEMTL_GALLERIES`, else `~/.facemtl/galleries`."""
    return os.environ.get("FACEMTL_GALLERIES") or os.path.join(os.path.expanduser("~"), ".facemtl", "galleries")


def gallery_path(name, store=None):
    """The file of gallery `name` inside `store`; a name cannot point outside it.

    Raises:
        GalleryError: for names with path separators, `..`, or other characters
            than letters, digits, `.`, `_` and `-`.
    """
    store = store or default_store()
    if not isinstance(name, str) or not _GALLERY_NAME.match(name) or ".." in name:
        raise GalleryError(f"Bad gallery name {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
                           "(starting with a letter or digit, no '..' and no path separators)")
    path = os.path.join(store, f"{name}.npz")
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(store):
        raise GalleryError(f"Bad gallery name {name!r}: it resolves outside the store {store}")
    return path


def list_galleries(store=None):
    """The names of the galleries in `store` (hidden temporary and lock files left out), sorted."""
    store = store or default_store()
    if not os.path.isdir(store):
        return []
    return sorted(f[:-4] for f in os.listdir(store) if f.endswith(".npz") and not f.startswith("."))


@contextlib.contextmanager
def gallery_lock(name, store=None):
    """Holds an exclusive lock on gallery `name` for a read-modify-write (enrol, remove).

    Concurrent `facemtl gallery enroll` processes (or servers) on one store then
    lose nothing: each reads the gallery only after the previous one saved it.
    The lock is `fcntl.flock` on a hidden file beside the gallery, released when
    the block ends or the process dies.

    Example:
        >>> with gallery_lock("office"):
        ...     g = Gallery.open("office", model=info, create=True); g.enroll("Ann", e); g.save()
    """
    import fcntl

    path = gallery_path(name, store)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(folder, f".{os.path.basename(path)}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


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
    """Enrolled people of one model, with vectorised identification.

    Several photos of one person are combined into one template: the
    normalised mean of their normalised embeddings.

    Args:
        path: the gallery file.
        model: `{"model_id", "embedding_dim", ...}` of the model whose embeddings it holds.

    Example:
        >>> gallery = Gallery.open("family", model=model_info, create=True)
        >>> gallery.enroll("ann", embeddings_of_ann, sources=["ann1.jpg", "ann2.jpg"])
        >>> gallery.save()
        >>> gallery.identify(query_embeddings, threshold=0.42, k=3)[0]["name"]
        'ann'
    """

    def __init__(self, path, model, names=(), embeddings=None, sources=(), created=None):
        self.path = path
        self.model = dict(model)
        dim = int(self.model["embedding_dim"])
        self.names = np.asarray(list(names), dtype=str)
        self.embeddings = (np.zeros((0, dim), np.float32) if embeddings is None
                           else np.asarray(embeddings, np.float32).reshape(-1, dim))
        self.sources = np.asarray(list(sources) or [""] * len(self.names), dtype=str)
        self.created = created or _now()
        self._templates = None

    # -- files ---------------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, name, store=None, *, model=None, create=False):
        """Opens gallery `name` of `store`; creates an empty one when `create` and it does not exist.

        Args:
            name: the gallery's name (see `gallery_path`).
            store: the gallery folder (default `default_store()`).
            model: the model info of the embeddings to be used with it; a gallery
                of another model is refused.
            create: make a new, empty gallery when none exists.

        Raises:
            GalleryError: missing (without `create`), corrupt, or of another model.
        """
        path = gallery_path(name, store)
        if not os.path.exists(path):
            if not create:
                raise GalleryError(f"No gallery {name!r} in {os.path.dirname(path)} (enrol someone to create it)")
            if model is None:
                raise GalleryError("A new gallery needs the model whose embeddings it will hold")
            return cls(path, model)
        gallery = cls.load(path)
        if model is not None:
            gallery.check_model(model)
        return gallery

    @classmethod
    def load(cls, path):
        """Reads a gallery file, with a clear error when it is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                names, embeddings, sources = z["names"], z["embeddings"], z["sources"]
        except FileNotFoundError:
            raise GalleryError(f"{path}: no such gallery file") from None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise GalleryError(f"{path}: not a readable facemtl gallery ({type(exc).__name__}: {exc}); "
                               "the file was left as it is") from None
        if meta.get("format_version") != FORMAT_VERSION or "model" not in meta:
            raise GalleryError(f"{path}: unknown gallery format {meta.get('format_version')!r}")
        dim = int(meta["model"].get("embedding_dim", -1))
        if embeddings.ndim != 2 or embeddings.shape[1] != dim or not (len(names) == len(embeddings) == len(sources)):
            raise GalleryError(f"{path}: inconsistent gallery (embeddings {embeddings.shape}, {len(names)} names, "
                               f"embedding size {dim})")
        mode = os.stat(path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            import warnings

            warnings.warn(f"{path}: the gallery is readable by other users (mode {stat.S_IMODE(mode):o}); "
                          "it will be written back as 0600", stacklevel=2)
        return cls(path, meta["model"], names, embeddings, sources, meta.get("created"))

    def save(self):
        """Writes the gallery atomically, readable by its owner only."""
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, mode=0o700, exist_ok=True)
        meta = {"format_version": FORMAT_VERSION, "model": self.model, "created": self.created, "updated": _now(),
                "people": len(set(self.names.tolist())), "embeddings": len(self.names)}
        buf = io.BytesIO()
        np.savez(buf, meta=json.dumps(meta), names=self.names, embeddings=self.embeddings, sources=self.sources)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getvalue())
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    # -- contents ------------------------------------------------------------------------------------------------

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

        Args:
            metadata: the export's metadata (`read_metadata`).
            override: an explicit threshold (else the export's calibrated one).

        Raises:
            GalleryError: another model. FacemtlError: no threshold at all.
        """
        from facemtl.recognition.metrics import model_threshold
        from facemtl.recognition.open_set import gallery_threshold

        self.check_model(model_info(metadata))
        table = (metadata.get("open_set") or {}).get("gallery_thresholds")
        if override is None and table:
            return gallery_threshold(table, max(len(self.people()), 1))
        return model_threshold(metadata, override)[0]

    def people(self):
        """`{name: number of enrolled embeddings}`, sorted by name."""
        names, counts = np.unique(self.names, return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts)}

    def enroll(self, name, embeddings, sources=None):
        """Adds embeddings (one per photo) of person `name`; returns their count for that person."""
        check_person_name(name)
        e = np.asarray(embeddings, np.float32)
        if e.ndim != 2 or e.shape[1] != self.embeddings.shape[1] or not len(e):
            raise GalleryError(f"Expected [n, {self.embeddings.shape[1]}] embeddings. Received: shape={e.shape}")
        sources = list(sources) if sources is not None else [""] * len(e)
        self.names = np.concatenate([self.names, np.asarray([name] * len(e), dtype=str)])
        self.embeddings = np.concatenate([self.embeddings, normalize(e)])
        self.sources = np.concatenate([self.sources, np.asarray(sources, dtype=str)])
        self._templates = None
        return int((self.names == name).sum())

    def remove(self, name):
        """Removes every embedding of `name`; returns how many."""
        keep = self.names != name
        removed = int((~keep).sum())
        if not removed:
            raise GalleryError(f"{name!r} is not enrolled in {self.path}")
        self.names, self.embeddings, self.sources = self.names[keep], self.embeddings[keep], self.sources[keep]
        self._templates = None
        return removed

    def templates(self):
        """`(names, templates)`: one normalised mean embedding per person."""
        if self._templates is None:
            people, inverse = np.unique(self.names, return_inverse=True)
            sums = np.zeros((len(people), self.embeddings.shape[1]), np.float32)
            np.add.at(sums, inverse, self.embeddings)
            self._templates = (people, normalize(sums))
        return self._templates

    def search(self, queries, k=5):
        """Top-k people per query by cosine similarity: `(indices [q, k], scores [q, k])`, best first.

        One matrix product against all templates, then a partial sort:
        linear in the gallery size, no loop over people.
        """
        people, templates = self.templates()
        if not len(people):
            raise GalleryError(f"{self.path}: the gallery is empty; enrol someone first")
        q = normalize(np.atleast_2d(queries))
        if q.shape[1] != templates.shape[1]:
            raise GalleryError(f"Expected {templates.shape[1]}-d query embeddings. Received: shape={q.shape}")
        k = max(1, min(int(k), len(people)))
        scores = q @ templates.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < len(people) else np.tile(
            np.arange(len(people)), (len(q), 1))
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1)
        return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)

    def identify(self, queries, threshold, k=5):
        """Names the people of query embeddings; `unknown` when the best score is below `threshold`.

        Returns:
            One dict per query: `name` (or `"unknown"`), `score` (the best
            similarity) and `candidates` (top-k `{name, score}`).
        """
        people, _ = self.templates()
        indices, scores = self.search(queries, k)
        results = []
        for idx, sc in zip(indices, scores):
            candidates = [{"name": str(people[i]), "score": round(float(s), 6)} for i, s in zip(idx, sc)]
            best = candidates[0]
            results.append({"name": best["name"] if best["score"] >= threshold else UNKNOWN,
                            "score": best["score"], "threshold": float(threshold), "candidates": candidates})
        return results


def model_info(metadata, path=None):
    """The facts a gallery keeps about the model that made its embeddings (from export metadata)."""
    info = {k: metadata.get(k) for k in ("model_id", "name", "version", "embedding_dim")}
    if path:
        info["path"] = os.path.abspath(path)
    return info


def _describe(model):
    return f"{model.get('name')}/{model.get('version')} id {str(model.get('model_id'))[:8]}"


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
