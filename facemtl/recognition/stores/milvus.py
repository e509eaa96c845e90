"""Galleries in Milvus: a Milvus server or cluster by URI, or Milvus Lite (a local folder) for trying and tests.

Each gallery is two collections, `facemtl_<name>_people` (the primary key is the
person's name; the running sum of their unit embeddings, their template under an
HNSW index, their number of faces) and `facemtl_<name>_faces` (one row per
enrolled embedding with its source photo), plus a row in `facemtl_galleries`
naming the model whose embeddings it holds. Milvus shards and replicates
collections over its query and data nodes, so the same code serves a gallery of
hundreds of millions of people from a cluster (docs/identity.md).

Milvus has no multi-row transactions: an enrolment writes the faces first, then
recomputes the person's template from all of their face rows, so a crash between
the two is repaired by the next enrolment of that person, and two enrolments of
the *same* person at the same instant can leave the template one photo behind
until the next one (faces are never lost). Writes of different people do not
interact.
"""

from __future__ import annotations

import json
import threading

import numpy as np

from facemtl.errors import GalleryError
from facemtl.recognition.metrics import normalize

REGISTRY = "facemtl_galleries"
EF_SEARCH = 256
_PAGE = 4096


def _collection_base(name):
    """A gallery name (letters, digits, `.`, `_`, `-`) as the letters, digits and `_` Milvus allows."""
    return "facemtl_" + name.replace("_", "__").replace(".", "_d").replace("-", "_h")


def _literal(text):
    """A string literal of Milvus' filter expressions (JSON's escaping is theirs)."""
    return json.dumps(str(text))


class MilvusStore:
    """Galleries in one Milvus database.

    Args:
        uri: `http(s)://host:port` of a Milvus server, or a local Milvus Lite path.
        token: `user:password` or an API key, where the server needs one.
        db_name: the Milvus database (default `default`).
        display: how the store is named in messages (the URI as the user gave it).
    """

    scheme = "milvus"

    def __init__(self, uri, token=None, db_name=None, display=None):
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise GalleryError('A Milvus store needs pymilvus: pip install "facemtl[milvus]"') from None
        kwargs = {"uri": uri}
        if token:
            kwargs["token"] = token
        if db_name:
            kwargs["db_name"] = db_name
        try:
            self.client = MilvusClient(**kwargs)
        except Exception as exc:  # pymilvus raises its own types, and OSError for Lite's lock
            raise GalleryError(f"Cannot open the Milvus store {display or uri}: {type(exc).__name__}: {exc}") from None
        self.uri = display or uri
        self._lite_path = uri if uri.endswith(".db") else None
        self._lock = threading.RLock()
        if not self.client.has_collection(REGISTRY):
            from pymilvus import DataType

            schema = self.client.create_schema(auto_id=False)
            schema.add_field("name", DataType.VARCHAR, is_primary=True, max_length=128)
            schema.add_field("meta", DataType.VARCHAR, max_length=8192)
            schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants a vector field in every collection
            index = self.client.prepare_index_params()
            index.add_index("v", index_type="FLAT", metric_type="L2")
            self.client.create_collection(REGISTRY, schema=schema, index_params=index, consistency_level="Strong")
        self.client.load_collection(REGISTRY)  # a no-op where loaded; Milvus Lite reopens collections released

    def location(self, name):
        return f"{self.uri}#{name}"

    def _meta(self, name):
        rows = self.client.query(REGISTRY, filter=f"name == {_literal(name)}", output_fields=["meta"])
        return json.loads(rows[0]["meta"]) if rows else None

    def list(self):
        rows = self.client.query(REGISTRY, filter='name != ""', output_fields=["name"], limit=16384)
        return sorted(r["name"] for r in rows)

    def exists(self, name):
        return self._meta(name) is not None

    def open(self, name):
        meta = self._meta(name)
        if meta is None:
            raise GalleryError(f"No gallery {name!r} in {self.uri}")
        return MilvusGallery(self, name, meta["model"])

    def create(self, name, model, fill=None):
        """Makes gallery `name` (its collections, then its registry row: a half-made one is not listed)."""
        from pymilvus import DataType

        dim = int(model["embedding_dim"])
        base = _collection_base(name)
        people = self.client.create_schema(auto_id=False)
        people.add_field("name", DataType.VARCHAR, is_primary=True, max_length=512)
        people.add_field("faces", DataType.INT64)
        people.add_field("sum", DataType.FLOAT_VECTOR, dim=dim)
        people.add_field("template", DataType.FLOAT_VECTOR, dim=dim)
        index = self.client.prepare_index_params()
        index.add_index("template", index_type="HNSW", metric_type="IP", params={"M": 16, "efConstruction": 128})
        index.add_index("sum", index_type="FLAT", metric_type="IP")
        faces = self.client.create_schema(auto_id=True)
        faces.add_field("id", DataType.INT64, is_primary=True)
        faces.add_field("person", DataType.VARCHAR, max_length=512)
        faces.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
        faces.add_field("source", DataType.VARCHAR, max_length=4096)
        faces.add_field("added", DataType.VARCHAR, max_length=64)
        face_index = self.client.prepare_index_params()
        face_index.add_index("embedding", index_type="HNSW", metric_type="IP", params={"M": 16, "efConstruction": 128})
        with self._lock:
            for suffix, schema, idx in (("_people", people, index), ("_faces", faces, face_index)):
                if not self.client.has_collection(base + suffix):
                    self.client.create_collection(base + suffix, schema=schema, index_params=idx,
                                                  consistency_level="Strong")
            gallery = MilvusGallery(self, name, model)
            if fill is not None:
                fill(gallery)
            self.client.upsert(REGISTRY, [{"name": name, "meta": json.dumps({"model": model}), "v": [0.0, 0.0]}])
        return gallery

    def close(self):
        self.client.close()
        if self._lite_path:  # Milvus Lite's in-process server holds the folder's lock until released
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self._lite_path)


class MilvusGallery:
    """One gallery in Milvus: the same operations as the embedded store's `LocalGallery`."""

    def __init__(self, store, name, model):
        self.store, self.client = store, store.client
        self.model = dict(model)
        self.dim = int(self.model["embedding_dim"])
        base = _collection_base(name)
        self.people_collection, self.faces_collection = base + "_people", base + "_faces"
        self.path = store.location(name)
        self._lock = store._lock
        for collection in (self.people_collection, self.faces_collection):
            self.client.load_collection(collection)

    def _paged(self, collection, expression, fields):
        """Every row of `collection` matching `expression` (Milvus answers at most a page per query)."""
        rows, offset = [], 0
        while True:
            page = self.client.query(collection, filter=expression, output_fields=fields, limit=_PAGE, offset=offset)
            rows += page
            if len(page) < _PAGE:
                return rows
            offset += _PAGE

    def _faces_of(self, name, fields):
        return self._paged(self.faces_collection, f"person == {_literal(name)}", fields)

    def _set_template(self, name):
        """Recomputes a person's template from all of their face rows (see the module docstring)."""
        rows = self._faces_of(name, ["embedding"])
        if not rows:
            self.client.delete(self.people_collection, filter=f"name == {_literal(name)}")
            return 0
        total = np.asarray([r["embedding"] for r in rows], np.float32).sum(0)
        self.client.upsert(self.people_collection, [{"name": name, "faces": len(rows), "sum": total.tolist(),
                                                     "template": normalize(total).tolist()}])
        return len(rows)

    def add(self, items, added=None):
        """Adds `[(name, unit embeddings, sources), ...]`: the faces in one insert, then the templates."""
        totals = {}
        with self._lock:
            rows, sums = [], {}
            for name, embeddings, sources in items:
                e = np.asarray(embeddings, np.float32).reshape(-1, self.dim)
                rows += [{"person": name, "embedding": v.tolist(), "source": str(s), "added": added or ""}
                         for v, s in zip(e, sources)]
                count, total = sums.get(name, (0, 0))
                sums[name] = (count + len(e), total + e.sum(0))
            for start in range(0, len(rows), _PAGE):
                self.client.insert(self.faces_collection, rows[start:start + _PAGE])
            names = list(sums)
            known = set()
            for start in range(0, len(names), _PAGE):
                known |= {r["name"] for r in self.client.get(self.people_collection, ids=names[start:start + _PAGE],
                                                             output_fields=["name"])}
            new = [{"name": n, "faces": sums[n][0], "sum": sums[n][1].tolist(), "template": normalize(sums[n][1]).tolist()}
                   for n in names if n not in known]
            for start in range(0, len(new), _PAGE):
                self.client.upsert(self.people_collection, new[start:start + _PAGE])
            totals = {n: sums[n][0] for n in names if n not in known}
            totals.update({n: self._set_template(n) for n in known})
        return [totals[name] for name, _, _ in items]

    def remove(self, name):
        with self._lock:
            n = len(self._faces_of(name, ["id"]))
            if not n:
                return 0
            self.client.delete(self.faces_collection, filter=f"person == {_literal(name)}")
            self.client.delete(self.people_collection, filter=f"name == {_literal(name)}")
        return n

    def _move(self, source, target):
        rows = self._faces_of(source, ["embedding", "source", "added"])
        if not rows:
            raise GalleryError(f"{source!r} is not enrolled")
        self.client.insert(self.faces_collection, [{**{k: r[k] for k in ("embedding", "source", "added")},
                                                    "person": target} for r in rows])
        self.client.delete(self.faces_collection, filter=f"person == {_literal(source)}")
        self.client.delete(self.people_collection, filter=f"name == {_literal(source)}")
        return self._set_template(target)

    def rename(self, old, new):
        with self._lock:
            if self.client.get(self.people_collection, ids=[new], output_fields=["name"]):
                raise GalleryError(f"{new!r} is already enrolled; merge the two instead")
            self._move(old, new)

    def merge(self, source, target):
        with self._lock:
            if not self.client.get(self.people_collection, ids=[target], output_fields=["name"]):
                raise GalleryError(f"{target!r} is not enrolled")
            return self._move(source, target)

    def count(self):
        rows = self.client.query(self.people_collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def _all(self, fields):
        return self._paged(self.people_collection, 'name != ""', fields)

    def people(self):
        return {r["name"]: int(r["faces"]) for r in sorted(self._all(["name", "faces"]), key=lambda r: r["name"])}

    def sources(self, name):
        return [r["source"] for r in sorted(self._faces_of(name, ["id", "source"]), key=lambda r: r["id"])]

    def templates(self):
        rows = sorted(self._all(["name", "template"]), key=lambda r: r["name"])
        matrix = np.asarray([r["template"] for r in rows], np.float32).reshape(-1, self.dim)
        return np.asarray([r["name"] for r in rows], dtype=str), matrix

    def pending(self):
        return 0  # Milvus indexes its own segments

    def search(self, queries, k, exact=False):
        q = np.asarray(queries, np.float32).reshape(-1, self.dim)
        if exact:
            names, matrix = self.templates()
            scores = q @ matrix.T
            order = np.argsort(-scores, axis=1)[:, :k]
            return [[(str(names[c]), float(scores[r, c])) for c in row] for r, row in enumerate(order)]
        hits = self.client.search(self.people_collection, data=q.tolist(), anns_field="template", limit=k,
                                  output_fields=["name"], search_params={"metric_type": "IP",
                                                                         "params": {"ef": max(EF_SEARCH, k)}})
        return [[(h["entity"]["name"], float(h["distance"])) for h in row] for row in hits]

    def compact(self, force=False):
        return False

    def close(self):
        pass
