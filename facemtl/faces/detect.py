"""Face detectors by name: BlazeFace (the default, `facemtl.faces.blazeface`), MTCNN (5 landmarks) and OpenCV's
Haar cascade (no landmarks). Landmark names are the subject's sides under every detector.

What a detector returns, `Detection`, lives in `facemtl.faces.detection` (re-exported here)."""

from __future__ import annotations

import numpy as np

from facemtl.faces.align import landmarks_from_box
from facemtl.faces.blazeface import BlazeFaceDetector
from facemtl.faces.detection import DEFAULT_DETECTOR, Detection

__all__ = ["DEFAULT_DETECTOR", "DETECTORS", "Detection", "HaarDetector", "MTCNNDetector", "get_detector"]

# The `mtcnn` package's names for the same points (it names them after the image's sides).
_MTCNN_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


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


DETECTORS = {"mtcnn": MTCNNDetector, "haar": HaarDetector, "blazeface": BlazeFaceDetector}


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
