"""The embedded gallery store: SQLite for people and faces, an HNSW index (usearch) for search.

One gallery is one folder, `<store>/<name>.gallery/`, readable by its owner only:

- `gallery.sqlite` (WAL mode) is the truth: `people` (id, name, number of faces,
  the running sum of their unit embeddings, so a template is kept up to date by
  each enrolment instead of rebuilt at each search), `faces` (one row per
  enrolled embedding with its source photo) and `changes` (a log: one row per
  person whose template changed or who was removed, written by triggers).
- `index-<seq>.usearch` is an HNSW index over the templates as of change `seq`.
  It is memory-mapped on open (no load time), and the people changed since `seq`
  are searched exactly beside it, their stale index entries filtered out. So an
  enrolment is one SQLite transaction (a few rows), never an index rewrite; the
  index is brought up to date (`compact`) when the log has grown, by writing a
  new file and renaming it into place: a crash at any point leaves the old file,
  and replaying the log is idempotent (it reads the people's current templates).

Concurrent writers (processes or threads) are serialised by SQLite's write lock
(`BEGIN IMMEDIATE`); compactions by a file lock. Small galleries (below
`INDEX_MIN_PEOPLE`) are never indexed: their exact search is the fastest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import tempfile
import threading

import numpy as np

from facemtl.errors import GalleryError
from facemtl.files import file_lock, writable_folder
from facemtl.recognition.metrics import normalize

FORMAT_VERSION = 2
SUFFIX = ".gallery"
DB_FILE = "gallery.sqlite"
INDEX_MIN_PEOPLE = 2048
# HNSW settings, chosen by benchmarks/gallery_scale.py (docs/identity.md): at a million face-like people, 32 links
# per node and efSearch 256 agree with exact search on 99.6% of queries in 4.4 ms (16 links: 97.6%).
CONNECTIVITY = 32
EXPANSION_ADD = 128
EXPANSION_SEARCH = 256
SERIAL_START = 1024  # a graph's first nodes are added by one thread (see LocalStore.compact)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS people (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, faces INTEGER NOT NULL, sum BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS faces (
    id INTEGER PRIMARY KEY, person INTEGER NOT NULL, embedding BLOB NOT NULL, source TEXT NOT NULL, added TEXT);
CREATE INDEX IF NOT EXISTS faces_person ON faces (person);
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, person INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counts (one INTEGER PRIMARY KEY CHECK (one = 1), people INTEGER NOT NULL);
INSERT OR IGNORE INTO counts VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS people_added AFTER INSERT ON people BEGIN
    INSERT INTO changes (person) VALUES (new.id); UPDATE counts SET people = people + 1; END;
CREATE TRIGGER IF NOT EXISTS people_changed AFTER UPDATE OF sum ON people BEGIN
    INSERT INTO changes (person) VALUES (new.id); END;
CREATE TRIGGER IF NOT EXISTS people_removed AFTER DELETE ON people BEGIN
    INSERT INTO changes (person) VALUES (old.id); UPDATE counts SET people = people - 1;
    DELETE FROM faces WHERE person = old.id; END;
"""


def _blob(vector):
    return np.asarray(vector, np.float32).tobytes()


def _vector(blob):
    return np.frombuffer(blob, np.float32)


class LocalStore:
    """A folder of galleries.

    Args:
        folder: the store's folder (created 0700 on the first write).

    Example:
        >>> store = LocalStore("/home/ann/.facemtl/galleries")
        >>> g = store.create("office", {"model_id": "...", "embedding_dim": 128})
    """

    scheme = "local"

    def __init__(self, folder):
        self.folder = os.path.abspath(folder)
        self.uri = self.folder

    def location(self, name):
        return os.path.join(self.folder, name + SUFFIX)

    def list(self):
        if not os.path.isdir(self.folder):
            return []
        return sorted(f[:-len(SUFFIX)] for f in os.listdir(self.folder)
                      if f.endswith(SUFFIX) and not f.startswith(".")
                      and os.path.isfile(os.path.join(self.folder, f, DB_FILE)))

    def exists(self, name):
        return os.path.isfile(os.path.join(self.location(name), DB_FILE))

    def open(self, name):
        return LocalGallery(self.location(name))

    def create(self, name, model, fill=None):
        """Makes gallery `name` for `model`'s embeddings; `fill(gallery)` may add rows before it appears.

        The gallery is built in a hidden folder and renamed into place, so a
        crash during creation (or a conversion from an old file) leaves nothing
        half-made under its name; when another process created it meanwhile,
        theirs is kept and opened.
        """
        writable_folder(self.folder, "galleries", "FACEMTL_GALLERIES or FACEMTL_HOME (or --store)", 0o700)
        tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=self.folder)  # mode 0700
        try:
            gallery = LocalGallery(tmp, model=model)
            if fill is not None:
                fill(gallery)
            gallery.close()
            try:
                os.rename(tmp, self.location(name))
            except OSError:
                if not self.exists(name):
                    raise
        finally:
            if os.path.isdir(tmp):
                for f in os.listdir(tmp):
                    os.remove(os.path.join(tmp, f))
                os.rmdir(tmp)
        return self.open(name)

    def close(self):
        pass


class LocalGallery:
    """One gallery of the embedded store (see the module docstring).

    Thread-safe: one connection per object, used under a lock.
    """

    def __init__(self, folder, model=None):
        self.folder = folder
        self.path = os.path.join(folder, DB_FILE)
        creating = model is not None
        if not creating and not os.path.isfile(self.path):
            raise GalleryError(f"{folder}: no gallery database {DB_FILE}")
        if creating:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # SQLite's -wal/-shm files copy this mode
            os.close(fd)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, timeout=120, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            if creating:
                self._db.executescript(_SCHEMA)
                with self._write():
                    self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                         [("format_version", str(FORMAT_VERSION)), ("model", json.dumps(model))])
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"{self.path}: not a readable facemtl gallery ({exc}); the file was left as it is") \
                from None
        if meta.get("format_version") != str(FORMAT_VERSION) or "model" not in meta:
            raise GalleryError(f"{self.path}: unknown gallery format {meta.get('format_version')!r}")
        self.model = json.loads(meta["model"])
        self.dim = int(self.model["embedding_dim"])
        self._index, self._index_seq = None, 0
        self._seen_seq = 0
        self._tail = {}  # person id -> current template (None: removed) for people changed since the index
        self._tail_ids = np.zeros(0, np.int64)
        self._tail_matrix = np.zeros((0, self.dim), np.float32)
        self._exact = None

    # -- writing -------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self):
        """One write transaction, taking SQLite's write lock first (concurrent writers queue here)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def add(self, items, added=None):
        """Adds `[(name, unit embeddings [n, D], sources), ...]` in one transaction.

        Returns:
            Each name's number of enrolled faces afterwards, in order.
        """
        totals = []
        with self._write() as db:
            for name, embeddings, sources in items:
                e = np.asarray(embeddings, np.float32).reshape(-1, self.dim)
                row = db.execute("SELECT id, faces, sum FROM people WHERE name = ?", (name,)).fetchone()
                if row is None:
                    pid = db.execute("INSERT INTO people (name, faces, sum) VALUES (?, ?, ?)",
                                     (name, len(e), _blob(e.sum(0)))).lastrowid
                    total = len(e)
                else:
                    pid, total = row[0], row[1] + len(e)
                    db.execute("UPDATE people SET faces = ?, sum = ? WHERE id = ?",
                               (total, _blob(_vector(row[2]) + e.sum(0)), pid))
                db.executemany("INSERT INTO faces (person, embedding, source, added) VALUES (?, ?, ?, ?)",
                               [(pid, _blob(v), str(s), added) for v, s in zip(e, sources)])
                totals.append(total)
        return totals

    def remove(self, name):
        """Deletes a person and their faces; returns how many faces, or 0 when not enrolled."""
        with self._write() as db:
            row = db.execute("SELECT id, faces FROM people WHERE name = ?", (name,)).fetchone()
            if row is None:
                return 0
            db.execute("DELETE FROM people WHERE id = ?", (row[0],))
        return row[1]

    def rename(self, old, new):
        """Renames a person (their template and index entry stay: only the name changes)."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM people WHERE name = ?", (new,)).fetchone():
                raise GalleryError(f"{new!r} is already enrolled; merge the two instead")
            if not db.execute("UPDATE people SET name = ? WHERE name = ?", (new, old)).rowcount:
                raise GalleryError(f"{old!r} is not enrolled")

    def merge(self, source, target):
        """Moves every face of `source` to `target` (whose template becomes their joint mean); returns the total."""
        with self._write() as db:
            a = db.execute("SELECT id, faces, sum FROM people WHERE name = ?", (source,)).fetchone()
            b = db.execute("SELECT id, faces, sum FROM people WHERE name = ?", (target,)).fetchone()
            for who, row in ((source, a), (target, b)):
                if row is None:
                    raise GalleryError(f"{who!r} is not enrolled")
            db.execute("UPDATE faces SET person = ? WHERE person = ?", (b[0], a[0]))
            db.execute("UPDATE people SET faces = ?, sum = ? WHERE id = ?",
                       (a[1] + b[1], _blob(_vector(a[2]) + _vector(b[2])), b[0]))
            db.execute("DELETE FROM people WHERE id = ?", (a[0],))
        return a[1] + b[1]

    # -- reading -------------------------------------------------------------------------------------------------

    def count(self):
        with self._lock:
            return int(self._db.execute("SELECT people FROM counts").fetchone()[0])

    def people(self):
        with self._lock:
            return {n: int(c) for n, c in self._db.execute("SELECT name, faces FROM people ORDER BY name")}

    def sources(self, name):
        with self._lock:
            return [s for (s,) in self._db.execute(
                "SELECT f.source FROM faces f JOIN people p ON p.id = f.person WHERE p.name = ? ORDER BY f.id",
                (name,))]

    def templates(self):
        """`(names, unit templates [N, D])` of every person, by name."""
        with self._lock:
            rows = self._db.execute("SELECT name, sum FROM people ORDER BY name").fetchall()
        matrix = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(-1, self.dim)
        return np.asarray([r[0] for r in rows], dtype=str), normalize(matrix)

    def _names(self, ids):
        ids = sorted({int(i) for i in ids})
        names = {}
        with self._lock:
            for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
                chunk = ids[start:start + 900]
                names.update(self._db.execute(
                    f"SELECT id, name FROM people WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        return names

    def _refresh(self):
        """Follows other writers: a newer index file, and the people changed since the one in use."""
        with self._lock:
            self._follow()

    def _follow(self):
        newest = _newest_index(self.folder)
        reset = False
        if newest is not None and newest[0] > self._index_seq:
            from usearch.index import Index

            self._index = Index.restore(newest[1], view=True)  # memory-mapped: no load time at a million
            self._index_seq, reset = newest[0], True
        elif newest is None and self._index is not None:
            self._index, self._index_seq, reset = None, 0, True
        if reset:
            self._tail, self._seen_seq = {}, self._index_seq
        self._db.execute("BEGIN")  # one snapshot for both reads
        try:
            last = self._db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
            rows = [] if last == self._seen_seq else self._db.execute(
                "SELECT c.person, p.sum FROM (SELECT DISTINCT person FROM changes WHERE seq > ?) c "
                "LEFT JOIN people p ON p.id = c.person", (self._seen_seq,)).fetchall()
        finally:
            self._db.execute("COMMIT")
        if not rows and not reset:
            return
        for pid, blob in rows:
            self._tail[pid] = None if blob is None else _vector(blob)
        self._seen_seq = last
        live = [(pid, v) for pid, v in self._tail.items() if v is not None]
        self._tail_ids = np.asarray([p for p, _ in live], np.int64)
        self._tail_matrix = normalize(np.stack([v for _, v in live])) if live else np.zeros((0, self.dim), np.float32)
        self._exact = None

    def pending(self):
        """How many people changed since the index file was written (searched exactly meanwhile)."""
        self._refresh()
        return len(self._tail)

    def search(self, queries, k, exact=False):
        """Top-k `(name, score)` per unit query, best first (cosine similarity of the person's template).

        Args:
            queries: `[q, D]` unit embeddings.
            k: candidates per query.
            exact: compare with every template (ignores the index).
        """
        q = np.asarray(queries, np.float32).reshape(-1, self.dim)
        with self._lock:  # one search at a time per gallery object: the server's threads share it
            self._refresh()
            if exact or self._index is None:
                if exact and self._index is not None:
                    ids, matrix = self._all_templates()
                else:
                    ids, matrix = self._tail_ids, self._tail_matrix
                found = _top_k(q @ matrix.T, ids, k)
            else:
                found = self._search_index(q, k)
        names = self._names(pid for row in found for pid, _ in row)
        return [[(names[pid], score) for pid, score in row if pid in names] for row in found]

    def _all_templates(self):
        if self._exact is None:
            with self._lock:
                rows = self._db.execute("SELECT id, sum FROM people").fetchall()
            ids = np.asarray([r[0] for r in rows], np.int64)
            matrix = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(-1, self.dim)
            self._exact = (ids, normalize(matrix))
        return self._exact

    def _search_index(self, q, k):
        stale = self._tail  # every changed person: its index entry (if any) is out of date
        extra = (_top_k(q @ self._tail_matrix.T, self._tail_ids, k) if len(self._tail_ids)
                 else [[] for _ in range(len(q))])
        count = k + min(len(stale), 64)
        while True:
            self._index.expansion_search = max(EXPANSION_SEARCH, count)
            matches = self._index.search(q, count, threads=1)
            keys = np.asarray(matches.keys).reshape(len(q), -1)
            dist = np.asarray(matches.distances).reshape(len(q), -1)
            rows, short = [], False
            for r in range(len(q)):
                got = [(int(key), float(1 - d)) for key, d in zip(keys[r], dist[r])
                       if int(key) not in stale and key != np.iinfo(np.uint64).max]
                short |= len(got) < k and count < len(self._index)
                rows.append(sorted(got + extra[r], key=lambda x: -x[1])[:k])
            if not short:
                return rows
            count *= 4

    # -- the index -----------------------------------------------------------------------------------------------

    def compact(self, force=False):
        """Writes a new index file with every change folded in, when worth it; returns True if written.

        Worth it when at least `INDEX_MIN_PEOPLE` people are enrolled and the
        changes since the last file reach 1% of them (or `force`). Another
        process compacting at the same time waits for the file lock, then finds
        nothing left to do.
        """
        from usearch.index import Index

        with file_lock(os.path.join(self.folder, "compact.lock")):
            with self._lock:  # a consistent snapshot of the changes; the index is built outside the lock
                self._refresh()
                tail, tail_ids, tail_matrix, seq = set(self._tail), self._tail_ids, self._tail_matrix, self._seen_seq
            people = self.count()
            if not tail or (not force and (people < INDEX_MIN_PEOPLE or len(tail) < max(64, people // 100))):
                return False
            newest = _newest_index(self.folder)
            if newest is None:
                index = Index(ndim=self.dim, metric="ip", dtype="f32", connectivity=CONNECTIVITY,
                              expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
            else:
                index = Index.restore(newest[1])
            gone = np.asarray([p for p in tail if index.contains(p)], np.uint64)
            if len(gone):
                index.remove(gone)
            if len(tail_ids):
                keys, first = tail_ids.astype(np.uint64), max(0, SERIAL_START - len(index))
                # A new graph's first nodes are linked one at a time: threads inserting into a graph of a
                # few nodes link it poorly, and approximate search then missed up to 7% of the nearest people
                # on a busy machine (tests/recognition/test_gallery.py's agreement check, seen under load).
                index.add(keys[:first], tail_matrix[:first], threads=1)
                index.add(keys[first:], tail_matrix[first:], threads=os.cpu_count() or 1)
            tmp = os.path.join(self.folder, f".index-{seq}.usearch.tmp")
            index.save(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, os.path.join(self.folder, f"index-{seq}.usearch"))
            _fsync_dir(self.folder)
            for old_seq, old in _indexes(self.folder):
                if old_seq < seq:
                    os.remove(old)
            return True

    def close(self):
        with self._lock:
            self._db.close()
        self._index = None


_INDEX_FILE = re.compile(r"^index-(\d+)\.usearch$")


def _indexes(folder):
    return [(int(m.group(1)), os.path.join(folder, f)) for f in os.listdir(folder) if (m := _INDEX_FILE.match(f))]


def _newest_index(folder):
    found = _indexes(folder)
    return max(found) if found else None


def _fsync_dir(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _top_k(scores, ids, k):
    """Per row of `scores [q, N]`, the best k `(id, score)` pairs, best first."""
    if not scores.shape[1]:
        return [[] for _ in range(len(scores))]
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    out = []
    for r, cols in enumerate(top):
        cols = cols[np.argsort(-scores[r, cols], kind="stable")]
        out.append([(int(ids[c]), float(scores[r, c])) for c in cols])
    return out
