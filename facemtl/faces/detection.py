"""What every face detector returns: `Detection`, one face's box, score and landmarks."""

from __future__ import annotations

import dataclasses

import numpy as np

# FaceAnalyzer, the CLI, the server and training's framing use this detector unless told otherwise.
DEFAULT_DETECTOR = "blazeface"
# The 5 landmarks in image order (the eye on the image's left first), named after the *subject's* sides,
# as BlazeFace's keypoints are: the eye on the image's left is the subject's right eye.
LANDMARK_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_right", "mouth_left")


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
