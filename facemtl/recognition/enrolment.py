"""Enrolling a labelled folder tree (`<person>/<photos>`) into a gallery: in this process, or on Beam.

The Beam pipeline (`facemtl.pipelines.enroll`) and `enroll_folders` share
the rules here: a person is the first folder under the root, each photo gives
its largest face (`Embedder`), and `Gallery.enroll_new` adds only the photos a
person does not already have, so a rerun or a retried bundle adds nothing twice.
"""

from __future__ import annotations

import re

from facemtl.data.folders import read_identity_folders
from facemtl.errors import FacemtlError
from facemtl.recognition.embed import NO_FACE
from facemtl.recognition.gallery import check_person_name


def person_of(rel):
    """The person of a photo at `rel` (relative to the root): its first folder.

    Raises:
        FacemtlError: a photo directly under the root, or a folder name that is
            not a valid person name.
    """
    parts = [p for p in re.split(r"[/\\]", rel) if p]
    if len(parts) < 2:
        raise FacemtlError(f"{rel}: not in a person's folder (expected <person>/<photo>)")
    return check_person_name(parts[0])


def unused_photo(face, path):
    """The report line of a photo that gave no embedding: `{"path", "status": "no face" | "unreadable", "error"}`."""
    error = face.error if face.error.startswith(f"{path}:") else f"{path}: {face.error}"
    return {"path": path, "status": "no face" if face.error == NO_FACE else "unreadable", "error": error}


def enrolment_summary(gallery, counts, report):
    """The JSON summary `facemtl gallery enroll-folders` prints (both runners)."""
    return {"gallery": gallery.path, **counts, "skipped": [r for r in report if r["status"] != "several faces"],
            "several_faces": [r["path"] for r in report if r["status"] == "several faces"]}


def enroll_folders(gallery, root, embedder, *, chunk=16):
    """Enrols every `root/<person>/<photo>` into `gallery`, in this process.

    Args:
        gallery: a `Gallery` of `embedder`'s model.
        root: the labelled folder tree (e.g. LFW, VGGFace2's `train/`).
        embedder: a `facemtl.recognition.embed.Embedder`.
        chunk: photos per forward pass.

    Returns:
        `(counts, report)`: `counts` has `people`, `enrolled` (photos added),
        `already` (photos the gallery had from an earlier run), `no_face`,
        `unreadable`; `report` lists `{"path", "status", "error"?}` for every
        photo that was not used or had several faces.

    Example:
        >>> counts, report = enroll_folders(Gallery.open("staff", create=True, model=...), "photos/", Embedder(None))
    """
    import os

    source = read_identity_folders(root)
    counts = {"people": 0, "enrolled": 0, "already": 0, "no_face": 0, "unreadable": 0}
    report = []
    for name in sorted(os.listdir(root)):  # photos beside the person folders have no name to go under
        if not name.startswith(".") and os.path.isfile(os.path.join(root, name)):
            counts["unreadable"] += 1
            report.append({"path": os.path.join(root, name), "status": "unreadable",
                           "error": f"{name}: not in a person's folder (expected <person>/<photo>)"})
    by_person = {}
    for path, label in zip(source.paths, source.identity):
        by_person.setdefault(source.identity_names[label], []).append(path)
    for person, paths in by_person.items():
        check_person_name(person)
        embeddings, sources = [], []
        for start in range(0, len(paths), chunk):
            for face in embedder.embed(paths[start:start + chunk]):
                if face.embedding is None:
                    report.append(unused_photo(face, face.source))
                    counts["no_face" if report[-1]["status"] == "no face" else "unreadable"] += 1
                    continue
                if face.faces > 1:
                    report.append({"path": face.source, "status": "several faces"})
                embeddings.append(face.embedding)
                sources.append(face.source)
        if embeddings:
            [(_, added, _)] = gallery.enroll_new([(person, embeddings, sources)])
            counts["people"] += 1
            counts["enrolled"] += added
            counts["already"] += len(sources) - added
    return counts, report
