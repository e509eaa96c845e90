"""BlazeFace: MediaPipe's fast face detector, from its `.tflite` files, with facemtl's own decoding.

The networks (`facemtl/faces/models/`, Apache-2.0, see NOTICE.md there) give, for
each of a fixed grid of SSD anchors, one raw score and 16 regressed numbers: the
box centre and size, then 6 keypoints (x, y). Decoding follows MediaPipe's
`TensorsToDetectionsCalculator` settings for each model (anchor grids from
`SsdAnchorsCalculator`, scales = the input size, fixed anchor size), and
overlapping detections are merged by MediaPipe's *weighted* non-maximum
suppression: each kept face is the score-weighted mean of the detections that
overlap it.

Keypoints, in the subject's terms (a frontal, unmirrored photo shows the
subject's right eye on the image's left): right eye, left eye, nose tip, mouth
centre, right ear tragion, left ear tragion.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from facemtl.errors import FacemtlError
from facemtl.faces.detection import Detection
from facemtl.litert import PerThread, interpreter_threads

MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear")


@dataclasses.dataclass(frozen=True)
class BlazeFaceModel:
    """One BlazeFace variant: its file, input side and SSD anchor layers."""

    file: str
    size: int
    strides: tuple
    anchors_per_layer: int  # 2 with MediaPipe's interpolated aspect ratio, else 1
    min_score: float


MODELS = {
    # Faces within ~2 m of a phone camera: faces that fill a good part of the photo.
    "short": BlazeFaceModel("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2, 0.5),
    # Faces up to ~5 m away: small faces in group photos too.
    "full": BlazeFaceModel("face_detection_full_range.tflite", 192, (4,), 1, 0.6),
}


class DetectorModelError(FacemtlError):
    """A detector's model file is missing or cannot be loaded."""


def ssd_anchors(size, strides, anchors_per_layer):
    """Anchor centres `[n, 2]` (x, y in [0, 1]) in MediaPipe's order.

    Consecutive layers with the same stride share one grid, each adding its anchors per cell.

    Example:
        >>> ssd_anchors(128, (8, 16, 16, 16), 2).shape
        (896, 2)
    """
    anchors, i = [], 0
    while i < len(strides):
        stride, count = strides[i], 0
        while i < len(strides) and strides[i] == stride:
            count += anchors_per_layer
            i += 1
        cells = int(np.ceil(size / stride))
        ys, xs = np.meshgrid((np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        anchors.append(np.repeat(grid, count, axis=0))
    return np.concatenate(anchors).astype(np.float32)


def decode(raw_boxes, raw_scores, anchors, size):
    """Raw network outputs -> `(boxes [n, 4] (xmin, ymin, xmax, ymax), keypoints [n, 6, 2], scores [n])`, in [0, 1]."""
    raw = raw_boxes.reshape(len(anchors), -1) / size
    centre = raw[:, 0:2] + anchors
    half = raw[:, 2:4] / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
    scores = 1 / (1 + np.exp(-np.clip(raw_scores.reshape(-1).astype(np.float64), -100, 100)))
    return boxes, keypoints, scores


def _iou(box, boxes):
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


def weighted_nms(boxes, keypoints, scores, min_score, iou_threshold=0.3):
    """MediaPipe's weighted non-maximum suppression.

    Candidates above `min_score`, best first: the best one and every remaining
    candidate overlapping it by more than `iou_threshold` are merged into one
    detection (box and keypoints averaged with score weights, the best score kept).

    Returns:
        A list of `(box [4], keypoints [6, 2], score)`, best first.
    """
    order = np.argsort(-scores)
    order = order[scores[order] >= min_score]
    out = []
    while len(order):
        merged = _iou(boxes[order[0]], boxes[order]) > iou_threshold
        merged[0] = True  # the best one, even when its box is degenerate
        group = order[merged]
        w = scores[group]
        out.append(((boxes[group] * w[:, None]).sum(0) / w.sum(),
                    (keypoints[group] * w[:, None, None]).sum(0) / w.sum(), float(scores[order[0]])))
        order = order[~merged]
    return out


def _interpreter(path, threads):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # LiteRT not installed: TensorFlow's own (deprecated) interpreter runs the same file
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    if not os.path.isfile(path):
        raise DetectorModelError(f"{path}: no such BlazeFace model file (reinstall facemtl)")
    try:
        interpreter = Interpreter(model_path=path, num_threads=interpreter_threads(threads))
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise DetectorModelError(f"{path}: not a loadable TFLite model ({exc})") from None
    return interpreter


class BlazeFaceDetector:
    """MediaPipe's BlazeFace (short or full range), run by the TFLite interpreter.

    Args:
        model: `"auto"` (default: the full-range model; on photos where it
            finds nothing, e.g. a face filling the frame, the full-range model
            again on the photo inside a black border of half its size, then the
            short-range model, whose keypoints are less precise),
            `"full"` (faces up to ~5 m, small faces in group photos), `"short"`
            (faces within ~2 m, twice as fast), or a path to a BlazeFace
            `.tflite` file of the full-range layout.
        min_score: drop faces below this confidence (default: the model's, 0.6 / 0.5).
        min_face_size: smallest face side in pixels to keep.
        threads: interpreter threads.

    Example:
        >>> detector = BlazeFaceDetector()
        >>> [d.box for d in detector.detect(photo)]
    """

    name = "blazeface"

    def __init__(self, model="auto", min_score=None, min_face_size=20, threads=2):
        # Full range misses faces that fill the photo (close-ups, face crops); short range catches them.
        self._second = (BlazeFaceDetector("short", min_score, min_face_size, threads) if model == "auto" else None)
        model = "full" if model == "auto" else model
        spec = MODELS.get(model)
        path = os.path.join(MODEL_DIR, spec.file) if spec else model
        if spec is None:
            if not str(model).endswith(".tflite"):
                raise ValueError(f"model must be one of {sorted(MODELS)} or a .tflite path. Received: model={model!r}")
            spec = MODELS["full"]
        self.spec = spec
        self.min_score = spec.min_score if min_score is None else float(min_score)
        self.min_face_size = min_face_size
        # One interpreter per thread: a LiteRT interpreter must not be shared between threads (a server's pool).
        self._interpreters = PerThread(lambda: _interpreter(path, threads))
        inputs = self._interpreter.get_input_details()
        if len(inputs) != 1 or list(inputs[0]["shape"]) != [1, spec.size, spec.size, 3]:
            raise DetectorModelError(f"{path}: expected one input [1, {spec.size}, {spec.size}, 3]. "
                                     f"Received {[list(i['shape']) for i in inputs]}")
        self._input = inputs[0]["index"]
        outputs = sorted(self._interpreter.get_output_details(), key=lambda o: o["shape"][-1])
        self._scores, self._boxes = outputs[0]["index"], outputs[-1]["index"]
        self._anchors = ssd_anchors(spec.size, spec.strides, spec.anchors_per_layer)
        if outputs[-1]["shape"][1] != len(self._anchors):
            raise DetectorModelError(f"{path}: {outputs[-1]['shape'][1]} anchors, expected {len(self._anchors)}")

    def _letterbox(self, image):
        """The photo scaled to fit the input square, centred, padded with zeros; and how to map back."""
        import cv2

        h, w = image.shape[:2]
        size = self.spec.size
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        resized = cv2.resize(np.ascontiguousarray(image), (nw, nh), interpolation=cv2.INTER_AREA)
        canvas = np.zeros((size, size, 3), np.float32)
        top, left = (size - nh) // 2, (size - nw) // 2
        canvas[top:top + nh, left:left + nw] = resized
        return canvas / 127.5 - 1.0, scale, left, top

    @property
    def _interpreter(self):
        return self._interpreters.get()

    def detect(self, image):
        """Finds faces in one `uint8 [h, w, 3]` RGB photo; returns a list of `Detection`, best first."""
        if min(image.shape[:2]) < 2:
            return []
        found = self._detect(image)
        if not found and self._second is not None:
            found = self._detect_padded(image) or self._second.detect(image)
        return found

    def _detect_padded(self, image):
        """Full range on the photo inside a black border: a face that filled the frame now fills half of it."""
        import cv2

        pad = max(image.shape[:2]) // 2
        padded = cv2.copyMakeBorder(np.ascontiguousarray(image), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        found = self._detect(padded)
        for d in found:
            x, y, w, h = d.box
            d.box = (x - pad, y - pad, w, h)
            d.landmarks = d.landmarks - pad
            d.keypoints = {k: v - pad for k, v in d.keypoints.items()}
        return found

    def _detect(self, image):
        tensor, scale, left, top = self._letterbox(image)
        self._interpreter.set_tensor(self._input, tensor[None])
        self._interpreter.invoke()
        boxes, keypoints, scores = decode(self._interpreter.get_tensor(self._boxes)[0],
                                          self._interpreter.get_tensor(self._scores)[0], self._anchors, self.spec.size)
        offset = np.array([left, top], np.float64)
        out = []
        for box, points, score in weighted_nms(boxes, keypoints, scores, self.min_score):
            (x0, y0), (x1, y1) = (box[:2] * self.spec.size - offset) / scale, (box[2:] * self.spec.size - offset) / scale
            if min(x1 - x0, y1 - y0) < self.min_face_size:
                continue
            points = (points * self.spec.size - offset) / scale
            out.append(Detection((float(x0), float(y0), float(x1 - x0), float(y1 - y0)), score,
                                 landmarks_from_keypoints(points), keypoints=dict(zip(KEYPOINT_NAMES, points)),
                                 points="blazeface"))
        return out


def landmarks_from_keypoints(points):
    """The 4 alignment landmarks (`points="blazeface"` in `facemtl.faces.align`) from BlazeFace's 6 keypoints.

    In image order: the eye on the image's left (the subject's right), the other
    eye, the nose tip and the mouth centre; the ears are not used.
    """
    return np.asarray(points[:4], np.float64)
