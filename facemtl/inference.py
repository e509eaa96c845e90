"""Runs an exported facemtl SavedModel on face crops."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import threading
import time

import numpy as np

from facemtl.errors import FacemtlError, ModelFormatError
from facemtl.export.metadata import EXPORT_FILE, read_metadata
from facemtl.export.outputs import attribute_output, label_outputs
from facemtl.faces.detect import DEFAULT_DETECTOR, get_detector
from facemtl.images import decode_each, load_image
from facemtl.installed import resolve_model
from facemtl.litert import TFLitePredictor, split_cores
from facemtl.media import Progress, expand_paths, is_camera, is_video, video_frame_count, video_frames
from facemtl.models.presets import is_preset
from facemtl.preprocessing import Preprocessor
from facemtl.recognition.open_set import rule_for_export

_LOADED = collections.OrderedDict()  # (folder, its files' stats, fingerprint) -> the loaded SavedModel, newest last
_LOADED_KEEP = 4
_LOADED_LOCK = threading.Lock()


def load_saved_model(folder):
    """`tf.saved_model.load(folder)`, shared by the `Predictor`s of this process that run the same export.

    Loading rebuilds every signature's graphs, the in-graph detector's included (seconds for the release);
    a notebook, a gallery or a pipeline that makes several `Predictor`s or `FaceAnalyzer`s of one export
    pays it once. The key is the folder, the size and modification time of the files loading reads
    (`saved_model.pb`, `variables/variables.index`) and the export's `fingerprint.pb` (TensorFlow's hashes
    of its graph and weights), so an export written again is loaded again; the `_LOADED_KEEP` most
    recently used stay loaded. Signatures are stateless, safe to call from threads.

    Args:
        folder: a SavedModel folder.

    Returns:
        What `tf.saved_model.load` returns.
    """
    import tensorflow as tf  # heavy: imported when the SavedModel must run

    folder = os.path.realpath(folder)
    key = [folder]
    for name in ("saved_model.pb", os.path.join("variables", "variables.index")):
        try:
            st = os.stat(os.path.join(folder, name))
            key.append((st.st_size, st.st_mtime_ns))
        except OSError:
            key.append(None)  # tf.saved_model.load says what is missing
    try:
        with open(os.path.join(folder, "fingerprint.pb"), "rb") as f:
            key.append(f.read())  # TensorFlow's hashes of the graph and the weights
    except OSError:
        key.append(None)
    key = tuple(key)
    with _LOADED_LOCK:
        if key not in _LOADED:
            _LOADED[key] = tf.saved_model.load(folder)
            while len(_LOADED) > _LOADED_KEEP:
                _LOADED.popitem(last=False)
        _LOADED.move_to_end(key)
        return _LOADED[key]


class Predictor:
    """Loads a facemtl SavedModel and answers for face crops.

    Args:
        saved_model_dir: a version folder, e.g. `saved_models/quickstart/1`;
            `None` for the release model shipped with facemtl.
        batch_size: most crops per forward pass.
        backend: `"auto"` (the export's LiteRT copy, `assets.extra/model.tflite`,
            for every call when the export has one, else the SavedModel: one
            engine, so a face's answer never depends on how many faces it was
            sent with; the release's int8-weight copy is 2-4x faster than the
            SavedModel at every batch size on a CPU, see docs/serving.md),
            `"savedmodel"` (always the SavedModel, what TF Serving runs) or
            `"tflite"` (always the LiteRT copy; an error without one).
        align_crops: `predict` frames each crop as a photo is framed
            (`frame_crops`: the serving detector finds the face in the crop and
            it is aligned onto the model's layout; a crop in which no face is
            found is used as it is), so a crop and a photo of the same face get
            the same answer. `False`: crops go to the model as they are (what
            `serving_default` does with them).

    Example:
        >>> predictor = Predictor("saved_models/quickstart/1")
        >>> predictor.predict(["face.png"])[0]["expression"]["label"]
        'happy'
    """

    BACKENDS = ("auto", "savedmodel", "tflite")

    def __init__(self, saved_model_dir=None, batch_size=64, backend="auto", align_crops=True):
        if backend not in self.BACKENDS:
            raise ValueError(f"backend must be one of {self.BACKENDS}. Received: backend={backend!r}")

        # A shipped preset answers from its metadata and LiteRT copy: no SavedModel is written for that (the first
        # answer after an install takes seconds); the SavedModel is written and loaded only when it must run.
        folder = resolve_model(saved_model_dir, write=backend == "savedmodel")
        lite = os.path.join(folder, EXPORT_FILE)
        if not os.path.isfile(os.path.join(folder, "saved_model.pb")) and is_preset(folder) and not os.path.isfile(lite):
            folder = resolve_model(folder)  # a preset without a LiteRT copy runs its SavedModel
            lite = os.path.join(folder, EXPORT_FILE)
        self.metadata = read_metadata(folder)
        self.path = folder
        self.batch_size = batch_size
        self._saved_model = None
        self.expressions = self.metadata["expressions"]
        self.identities = self.metadata["identities"]
        self.attributes = self.metadata.get("attributes", [])  # age, gender... (exports with attribute heads)
        # The export's open-set rule (None for exports without one): the LiteRT copy's answers go through it here,
        # the SavedModel's inside its graph.
        self.open_set = rule_for_export(folder, self.metadata)
        self._lite = None
        if backend == "tflite" and not os.path.isfile(lite):
            raise ModelFormatError(f"{folder}: no LiteRT copy ({EXPORT_FILE}) for backend='tflite'")
        if backend != "savedmodel" and os.path.isfile(lite):
            self._lite = TFLitePredictor(lite, metadata=self.metadata)  # the copy's own: the same input size
        self.backend = backend
        self.align_crops = bool(align_crops)
        self._crop_detector = None

    def frame_crops(self, images):
        """Face crops framed as photos are (the photo path's detector and alignment), where a face is found.

        The export's `Preprocessor` says how: a square crop smaller than its
        `crop_upscale` is first upscaled to that side (the small photo it
        stands for, as the training crops were); its detector finds the face and
        the best-scoring one is aligned onto its layout and size. A crop in
        which no face is found is returned as it is.

        Args:
            images: list of `uint8 [h, w, 3]` arrays.

        Returns:
            `(list of uint8 arrays, bool array: a face was found and aligned)`.
        """
        p = Preprocessor.from_metadata(self.metadata)
        if self._crop_detector is None:  # the settings photo_framing trained the framed views with
            self._crop_detector = get_detector(p.detector, min_face_size=p.crop_min_face)
        out, found = [], np.zeros(len(images), bool)
        for i, image in enumerate(images):
            framed = p.frame(p.crop_photo(image), self._crop_detector)
            found[i] = framed is not None
            out.append(framed[0] if found[i] else image)
        return out, found

    def run(self, images):
        """Runs the serving signature on uint8 RGB arrays; returns numpy outputs per crop.

        Crops of the same size are batched together (a batch must share one
        shape); every crop goes through the graph's own resize.

        Args:
            images: list of `uint8 [h, w, 3]` arrays.

        Returns:
            A list (input order) of dicts of numpy values, keys as the signature's outputs.
        """
        results = [None] * len(images)
        groups = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape, []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                out = self.forward(np.stack([images[i] for i in chunk]))
                for j, i in enumerate(chunk):
                    results[i] = {k: v[j] for k, v in out.items()}
        return results

    @property
    def engine(self):
        """What answers `forward`: `"litert"` (the export's LiteRT copy, one invocation per face) or `"savedmodel"`."""
        return "litert" if self._lite is not None else "savedmodel"

    def forward(self, batch):
        """One call of `serving_default` (or the LiteRT copy, see `backend`) on `uint8 [n, h, w, 3]`.

        Returns:
            numpy outputs `[n, ...]`, keyed as `serving_default`'s.
        """
        if self._lite is not None:  # "auto" or "tflite" with a copy: one engine for every call shape
            return self._forward_lite(batch)
        import tensorflow as tf

        out = self.saved_model.signatures["serving_default"](images=tf.constant(batch, dtype=tf.uint8))
        return {k: v.numpy() for k, v in out.items()}

    @property
    def saved_model(self):
        """The loaded SavedModel (written first from a preset, the first time it is needed)."""
        if self._saved_model is None:
            self._saved_model = load_saved_model(resolve_model(self.path))
        return self._saved_model

    def _forward_lite(self, batch):
        rows = self._lite.run(list(batch))
        out = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        # The string outputs of serving_default, by the rule its graph decodes them with.
        return label_outputs(out, self.expressions, self.identities, self.attributes, self.open_set)

    def describe(self, raw):
        """Turns one crop's raw outputs into the JSON-able answer.

        `identity.label` is a trained name or "unknown" (the export's open-set
        rule, `facemtl.recognition.open_set`); `closest` is the nearest trained
        name whatever its score, `similarity` its cosine (exports with the
        rule) and `probability` the identity head's probability for it.
        """
        answer = {}
        if "expression_probs" in raw:
            answer["expression"] = {
                "label": raw["expression"].decode(),
                "probabilities": {name: round(float(p), 6) for name, p in zip(self.expressions,
                                                                               raw["expression_probs"])},
            }
        if "identity_probs" in raw:
            ident = raw["identity_probs"]
            closest = raw["identity_closest"].decode() if "identity_closest" in raw else \
                self.identities[int(np.argmax(ident))]
            answer["identity"] = {"label": raw["identity"].decode(), "closest": closest,
                                  "probability": round(float(ident[self.identities.index(closest)]), 6)}
            if "identity_similarity" in raw:
                answer["identity"]["similarity"] = round(float(raw["identity_similarity"]), 6)
            answer["embedding_size"] = int(raw["embedding"].shape[-1])
            answer["embedding"] = raw["embedding"].astype(float).round(6).tolist()
        for task in self.attributes:  # age: a number; gender: {"label", "probabilities"}
            name, key = task["name"], attribute_output(task)
            if key in raw and task["kind"] == "classification":
                label = raw[name]
                answer[name] = {"label": label.decode() if isinstance(label, bytes) else str(label),
                                "probabilities": {c: round(float(p), 6) for c, p in zip(task["classes"], raw[key])}}
            elif key in raw:
                answer[name] = round(float(raw[key]), 2)
        return answer

    # Crops are decoded at most this long (the graph resizes them to the model's size anyway), so
    # memory stays bounded whatever a file claims; JPEGs are decoded at reduced size directly.
    MAX_CROP_SIDE = 1024

    def predict(self, sources):
        """Answers for face crops given as paths, bytes or arrays (any size, gray/RGB/RGBA).

        Crops are decoded lazily, `batch_size` at a time, each at most
        `MAX_CROP_SIDE` pixels long; one that cannot be decoded gets an error
        entry and costs nothing to the others. With `align_crops` (the
        default) each crop is framed as a photo would be (`frame_crops`).

        Returns:
            One dict per source: expression label and probabilities, identity
            label and probability, embedding and its size; or `{"error": "<its name>: why"}`.
        """
        sources, results = list(sources), []
        for start in range(0, len(sources), self.batch_size):
            entries, images, owners = decode_each(sources[start:start + self.batch_size],
                                                  lambda s: load_image(s, max_side=self.MAX_CROP_SIDE))
            chunk = [None if e is None else {"error": str(e)} for e in entries]
            if self.align_crops:
                images, _ = self.frame_crops(images)
            for i, raw in zip(owners, self.run(images)):
                chunk[i] = self.describe(raw)
            results.extend(chunk)
        return results


def _make_detector(detector, min_score, min_face_size):
    """A detector object from a name (with the analyzer's thresholds) or as given."""
    if not isinstance(detector, str):
        return detector
    kwargs = {"min_face_size": min_face_size}
    if min_score is not None:
        kwargs["min_score"] = min_score
    return get_detector(detector, **kwargs)


class FaceAnalyzer:
    """Photos in, answers out: detect faces, align them, one batched forward pass.

    Args:
        saved_model_dir: a facemtl SavedModel version folder (or a `Predictor`
            of one); `None` for the release model shipped with facemtl.
        detector: `"blazeface"` (default: MediaPipe's BlazeFace, full range,
            6 keypoints, about 30x faster than MTCNN), `"mtcnn"` (5 landmarks),
            `"haar"` (landmarks placed from the box), or a detector object with
            `detect(image)`.
        fallback: a second detector (name or object), run on photos where the
            first finds no face (e.g. `"mtcnn"`); faces say which detector found
            them and `fallback_photos` counts the photos it was used on.
        min_score: detections below this confidence are dropped (default: the
            detector's own threshold: BlazeFace 0.6, MTCNN and Haar 0.9).
        min_face_size: smallest face side, in pixels of the analysed photo.
        max_side: photos are decoded/downscaled so their longer side is at most
            this (memory stays bounded for huge photos); boxes refer to the
            downscaled photo, whose size each result reports.
        face_scale: see `facemtl.faces.align.template` (the crop layout comes
            from the model's metadata: the one it was trained with).
        batch_size: most face crops per forward pass (all faces of one call go
            through in as few passes as this allows, normally one).
        gallery: an optional `facemtl.recognition.gallery.Gallery` of this model: each
            face then gets a `match` (the enrolled name, or `unknown`).
        threshold: similarity threshold for a match (default: the model's
            calibrated one, see `facemtl calibrate`).
        top_k: candidates listed per matched face.

    Example:
        >>> analyzer = FaceAnalyzer("saved_models/quickstart/1")
        >>> [face["expression"]["label"] for face in analyzer.analyze(["group.jpg"])[0]["faces"]]
        ['happy', 'neutral']
    """

    def __init__(self, saved_model_dir=None, detector=DEFAULT_DETECTOR, *, fallback=None, min_score=None,
                 min_face_size=20, max_side=2048, face_scale=1.0, batch_size=256, gallery=None, threshold=None,
                 top_k=3):
        self.predictor = (saved_model_dir if isinstance(saved_model_dir, Predictor)
                          else Predictor(saved_model_dir, batch_size=batch_size))
        self.gallery = gallery
        self.top_k = top_k
        if gallery is not None:
            self.threshold = gallery.threshold_for(self.predictor.metadata, threshold)
        self.detector = _make_detector(detector, min_score, min_face_size)
        self.fallback = _make_detector(fallback, min_score, min_face_size) if fallback else None
        self.fallback_photos = 0
        self.min_score = min_score
        self.max_side = max_side
        self.face_scale = face_scale
        self.preprocessor = dataclasses.replace(Preprocessor.from_metadata(self.predictor.metadata),
                                                face_scale=face_scale)
        self.crop_size = (self.preprocessor.height, self.preprocessor.width)
        self.layout = self.preprocessor.layout
        # Seconds spent per stage since creation (benchmarks read these), and the fallback count: photos are
        # analysed from several threads at once (`analyze_files`' workers, the server's pool).
        self.timings = {"detect": 0.0, "align": 0.0, "model": 0.0}
        self._counting = threading.Lock()

    def load(self, source):
        """Decodes one photo (path, bytes, array) at most `max_side` pixels long."""
        return load_image(source, max_side=self.max_side)

    def detect_and_align(self, image):
        """Detections and their aligned crops for one decoded photo."""
        t0 = time.perf_counter()
        detections = self._detect(self.detector, image)
        fell_back = not detections and self.fallback is not None
        if fell_back:
            detections = self._detect(self.fallback, image)
        t1 = time.perf_counter()
        crops = [self.preprocessor.align(image, d)[0] for d in detections]
        with self._counting:
            self.fallback_photos += fell_back
            self.timings["detect"] += t1 - t0
            self.timings["align"] += time.perf_counter() - t1
        return detections, crops

    def _detect(self, detector, image):
        found = detector.detect(image)
        if self.min_score is not None:
            found = [d for d in found if d.score >= self.min_score]
        name = getattr(detector, "name", type(detector).__name__)
        for d in found:
            d.detector = name
        return found

    def analyze_images(self, images, gallery=None, threshold=None, top_k=None):
        """Analyses decoded `uint8 [h, w, 3]` photos; returns per photo a list of face dicts.

        `gallery`, `threshold`, `top_k`: name the faces from this gallery for this call (default: the analyzer's).
        """
        per_photo, crops = [], []
        for image in images:
            detections, photo_crops = self.detect_and_align(image)
            per_photo.append(detections)
            crops.extend(photo_crops)
        t0 = time.perf_counter()
        raw = self.predictor.run(crops) if crops else []
        matches, gallery = [], self.gallery if gallery is None else gallery
        if gallery is not None and raw:
            limit = (self.threshold if gallery is self.gallery and threshold is None
                     else gallery.threshold_for(self.predictor.metadata, threshold))
            matches = gallery.identify(np.stack([r["embedding"] for r in raw]), limit, top_k or self.top_k)
        with self._counting:
            self.timings["model"] += time.perf_counter() - t0
        results, k = [], 0
        for detections in per_photo:
            faces = []
            for d in detections:
                faces.append({**d.to_dict(), **self.predictor.describe(raw[k])})
                if matches:
                    faces[-1]["match"] = matches[k]
                k += 1
            results.append(faces)
        return results

    def analyze(self, sources):
        """Analyses photos given as paths, bytes or arrays (any size; RGB, gray or RGBA; EXIF honoured).

        One bad photo never costs the answers for the others: a photo that
        cannot be decoded gets an `error` entry in its place.

        Returns:
            One dict per photo, in order: `{"faces": [...], "size": [h, w]}`,
            each face with box, landmarks, detection score, the detector that
            found it, expression (label, probabilities), identity (label,
            probability) and embedding, and with a gallery the `match` (`name` or
            `unknown`, `score`, `candidates`); a photo with no face has an empty
            list; a photo that could not be read has `{"error": "<its name>: why"}`.

        Example:
            >>> [r.get("error") for r in analyzer.analyze(["ok.jpg", "broken.jpg"])]
            [None, 'broken.jpg: not a readable image (...)']
        """
        entries, images, owners = decode_each(sources, self.load)
        results = [None if e is None else {"error": str(e)} for e in entries]
        for i, image, faces in zip(owners, images, self.analyze_images(images) if images else []):
            results[i] = {"size": list(image.shape[:2]), "faces": faces}
        return results


def photo_record(path, frame, image, faces, embedding=True):
    """The record `facemtl analyze` writes for a photo or a video frame.

    Args:
        path: the file. frame: the frame index (None for a photo).
        image: the decoded photo or frame. faces: `FaceAnalyzer`'s faces of it.
        embedding: keep each face's embedding (dropped in place otherwise).

    Returns:
        `{"path", "frame" (videos only), "size": [h, w], "faces"}`.
    """
    if not embedding:
        for face in faces:
            face.pop("embedding", None)
    return {"path": path, **({"frame": frame} if frame is not None else {}), "size": list(image.shape[:2]),
            "faces": faces}


def analyze_files(analyzer, paths, *, every=10, batch_photos=16, max_frames=None, progress=True, ignored=None,
                  workers=None):
    """Analyses photos, folders (walked recursively), videos and cameras; yields one record per photo or frame.

    Photos and frames are analysed `batch_photos` at a time (their faces in one
    forward pass); a file that cannot be read yields an error record and costs
    nothing to the others. A FIFO, device or symlink loop in a folder is
    reported, never opened.

    Args:
        analyzer: a `FaceAnalyzer`.
        paths: files, folders and cameras (`camera:0`, `/dev/video0`).
        every: analyse every `every`-th frame of videos and cameras.
        batch_photos: photos (or frames) per batch.
        max_frames: analyse at most this many frames of each video or camera
            (default: a video to its end; a camera until the caller stops).
        progress: show a progress bar on stderr; it counts photos and frames
            analysed (not merely decoded).
        ignored: a list to collect the files of walked folders that are
            neither images nor videos by name (skipped, not errors); `None`
            keeps every file (each non-image gets an error record).
        workers: batches analysed at once, each on its own thread with
            interpreters sharing the cores (`litert.split_cores`); default one
            per core, at most 4, and no more than there are batches of photos
            (one runs in the calling thread). The answers do not depend on it.

    Yields:
        `(record, image)`: `record` is `{"path", "frame" (videos), "size", "faces"}`
        (faces as `FaceAnalyzer.analyze` gives them) with the decoded `image`, or
        `{"path", "error"}` with `None`. Records come in input order.

    Example:
        >>> for record, image in analyze_files(FaceAnalyzer(), ["photos/", "clip.mp4"]):
        ...     print(record["path"], len(record.get("faces", [])))
    """
    if every < 1:
        raise ValueError(f"every must be a positive number of frames. Received: every={every}")
    if batch_photos < 1:
        raise ValueError(f"batch_photos must be positive. Received: batch_photos={batch_photos}")
    files = expand_paths(paths, ignored)
    bar = None
    if progress:
        def expected(path):  # frames to analyse, for the progress bar (a camera's is unknown: max_frames or 1)
            count = video_frame_count(path)
            frames = max(1, count // every) if count else (max_frames or 1)
            return min(frames, max_frames or frames)

        bar = Progress(sum(expected(p) if is_video(p) and not err else 1 for p, err in files), "analyze")
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    if not any(is_video(p) for p, err in files if not err):  # no more streams than batches of photos
        workers = min(workers, max(1, -(-len(files) // batch_photos)))
    # One stream runs in this thread, on the interpreters the analyzer already made (no start-up cost).
    pool = concurrent.futures.ThreadPoolExecutor(workers, initializer=split_cores, initargs=(workers,),
                                                 thread_name_prefix="facemtl-analyze") if workers > 1 else None
    batch, pending = [], collections.deque()  # pending: (items, future of their answers), in input order

    def ready(drain=False):
        """The answered batches at the head of the queue (all of them with `drain`), in input order."""
        while pending and (drain or len(pending) > workers or pending[0][1].done()):
            items, future = pending.popleft()
            results = future.result()
            if bar:
                bar.update(len(items))
            for (path, frame, img), faces in zip(items, results):
                yield photo_record(path, frame, img, faces), img

    def submit():
        if batch:
            items = list(batch)
            batch.clear()
            images = [img for _, _, img in items]
            if pool is None:
                future = concurrent.futures.Future()
                future.set_result(analyzer.analyze_images(images))
            else:
                future = pool.submit(analyzer.analyze_images, images)
            pending.append((items, future))
        yield from ready()

    def flush():  # everything queued, answered: what comes next keeps its place in the input order
        yield from submit()
        yield from ready(drain=True)

    try:
        for path, error in files:
            if error:
                yield {"path": path, "error": error}, None
                if bar:
                    bar.update()
                continue
            if is_video(path):
                try:
                    # A camera's frames are answered one by one, as they come; a file's in batches.
                    camera = is_camera(path)
                    for frame, img in video_frames(path, every, analyzer.max_side, max_frames):
                        batch.append((path, frame, img))
                        if camera:
                            yield from flush()
                        elif len(batch) >= batch_photos:
                            yield from submit()
                except FacemtlError as exc:
                    yield from flush()  # the frames read before the error keep their answers
                    yield {"path": path, "error": str(exc)}, None
                continue
            try:
                batch.append((path, None, analyzer.load(path)))
            except FacemtlError as exc:
                yield from flush()  # records stay in input order
                yield {"path": path, "error": str(exc)}, None
                if bar:
                    bar.update()
            if len(batch) >= batch_photos:
                yield from submit()
        yield from flush()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar:
            bar.close()
