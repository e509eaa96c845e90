"""Face detectors by name: BlazeFace (the default, `facemtl.faces.blazeface`), MTCNN (5 landmarks) and OpenCV's
Haar cascade (no landmarks). Landmark names are the subject's sides under every detector."""

from __future__ import annotations

import dataclasses

import numpy as np

from facemtl.faces.align import landmarks_from_box

# The 5 landmarks in image order (the eye on the image's left first), named after the *subject's* sides,
# as BlazeFace's keypoints are: the eye on the image's left is the subject's right eye.
LANDMARK_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_right", "mouth_left")
# The `mtcnn` package's names for the same points (it names them after the image's sides).
_MTCNN_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# FaceAnalyzer, the CLI and the server use this detector unless told otherwise.
DEFAULT_DETECTOR = "blazeface"


@dataclasses.dataclass
class Detection:
    """One detected face.

    Attributes:
        box: `(x, y, width, height)` in the photo's pixels.
        score: detector confidence in [0, 1].
        landmarks: `float [5, 2]` (x, y) in `LANDMARK_NAMES` order.
        estimated_landmarks: true when the detector gave no landmarks and they
            were placed from the box (Haar).
        keypoints: the detector's own named points when they are not the 5
            landmarks (BlazeFace's 6 keypoints); reported instead of `landmarks`.
        points: the landmark set of `landmarks` (`"mtcnn"`: 5 points, or
            `"blazeface"`: 4), which picks the alignment template.
        detector: the name of the detector that found it (set by `FaceAnalyzer`).
    """

    box: tuple
    score: float
    landmarks: np.ndarray
    estimated_landmarks: bool = False
    keypoints: dict | None = None
    points: str = "mtcnn"
    detector: str | None = None

    def to_dict(self):
        points = self.keypoints if self.keypoints is not None else dict(zip(LANDMARK_NAMES, self.landmarks))
        out = {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": {n: [round(float(x), 1), round(float(y), 1)] for n, (x, y) in points.items()},
            "estimated_landmarks": self.estimated_landmarks,
        }
        if self.detector:
            out["detector"] = self.detector
        return out


class MTCNNDetector:
    """MTCNN from the `mtcnn` package (weights ship with it; runs on TensorFlow).

    Args:
        min_score: drop faces below this confidence.
        min_face_size: smallest face side in pixels to search for.
        device: TensorFlow device, e.g. `"CPU:0"` or `"GPU:0"`.
    """

    name = "mtcnn"

    def __init__(self, min_score=0.9, min_face_size=20, device=None):
        from mtcnn import MTCNN

        if device is None:
            import tensorflow as tf

            device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
        self.min_score = min_score
        self.min_face_size = min_face_size
        self._mtcnn = MTCNN(device=device)

    def detect(self, image):
        """Finds faces in one `uint8 [h, w, 3]` RGB photo; returns a list of `Detection`, best first."""
        if min(image.shape[:2]) < 12:  # below MTCNN's smallest window
            return []
        found = self._mtcnn.detect_faces(image, min_face_size=self.min_face_size)
        out = []
        for f in found:
            if f["confidence"] < self.min_score:
                continue
            kp = f["keypoints"]
            out.append(Detection(tuple(float(v) for v in f["box"]), float(f["confidence"]),
                                 np.array([kp[n] for n in _MTCNN_NAMES], dtype=np.float64)))
        return sorted(out, key=lambda d: -d.score)


class HaarDetector:
    """OpenCV's frontal-face Haar cascade: fast, no landmarks (placed from the box), lower recall.

    Args:
        min_face_size: smallest face side in pixels.
        min_neighbors: OpenCV's `minNeighbors` (higher: fewer false faces).
        min_score: drop faces whose score (the sigmoid of the cascade's level weight) is lower.
    """

    name = "haar"

    def __init__(self, min_face_size=20, min_neighbors=5, min_score=0.9):
        self.min_score = min_score
        import cv2

        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV could not load its Haar cascade from {path} (opencv-python-headless<5 ships it)")
        self.min_face_size = min_face_size
        self.min_neighbors = min_neighbors
        self._cv2 = cv2

    def detect(self, image):
        gray = self._cv2.cvtColor(np.ascontiguousarray(image), self._cv2.COLOR_RGB2GRAY)
        boxes, _, weights = self._cascade.detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=self.min_neighbors,
            minSize=(self.min_face_size, self.min_face_size), outputRejectLevels=True)
        out = []
        for (x, y, w, h), weight in zip(boxes, np.ravel(weights) if len(boxes) else []):
            score = float(1 / (1 + np.exp(-float(weight))))  # cascade level weight -> (0, 1)
            if score < self.min_score:
                continue
            box = (float(x), float(y), float(w), float(h))
            out.append(Detection(box, score, landmarks_from_box(box), estimated_landmarks=True))
        return sorted(out, key=lambda d: -d.score)


def _blazeface(**kwargs):
    from facemtl.faces.blazeface import BlazeFaceDetector

    return BlazeFaceDetector(**kwargs)


DETECTORS = {"mtcnn": MTCNNDetector, "haar": HaarDetector, "blazeface": _blazeface}


def get_detector(name=DEFAULT_DETECTOR, **kwargs):
    """Builds a detector by name (`"blazeface"`, the default, `"mtcnn"` or `"haar"`).

    Example:
        >>> detector = get_detector("haar")
        >>> detector.detect(np.zeros((64, 64, 3), np.uint8))
        []
    """
    if name not in DETECTORS:
        raise ValueError(f"Unknown detector. Expected one of {sorted(DETECTORS)}. Received: detector={name!r}")
    return DETECTORS[name](**kwargs)
