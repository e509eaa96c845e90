"""Face alignment: a similarity transform from 5 landmarks to a canonical template.

Two layouts, each scaled to the requested crop size:
- `arcface`: the widely used 5-point layout for 112x112 face crops (eye
  centres, nose tip, mouth corners);
- `dlib`: dlib's face chip (150 px, padding 0.25), the crops dlib's face ResNet
  was trained on. dlib places a chip from its own 5 landmarks (eye corners and
  nose base); the template here is where MTCNN's 5 landmarks fall on dlib's
  chips, averaged over 360 CelebA photos (`benchmarks/dlib_chip_template.py`).
The same function aligns training crops (dataset preprocessing) and served
crops, so both look alike to the model.
"""

from __future__ import annotations

import numpy as np

# (x, y) in a 112x112 crop: left eye, right eye (as seen in the image), nose, left and right mouth corner.
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)

# The same points on dlib's 150x150 chip (padding 0.25), fitted from MTCNN landmarks.
TEMPLATE_DLIB_150 = np.array(
    [[47.032, 44.145], [100.234, 43.839], [72.905, 77.236], [49.611, 100.802], [97.451, 100.578]],
    dtype=np.float64,
)
# layout -> (points, the square crop size they are given for)
LAYOUTS = {"arcface": (TEMPLATE_112, 112.0), "dlib": (TEMPLATE_DLIB_150, 150.0)}

# Where BlazeFace's eyes (image left, image right), nose tip and mouth centre fall in each
# layout: mapped through MTCNN's alignment of the same faces and averaged over 287 CelebA
# photos (`benchmarks/blazeface_template.py`). BlazeFace's eyes sit ~3 px lower than MTCNN's
# and its mouth centre ~5 px below the corners' midpoint (112 px crops).
BLAZEFACE_POINTS = {
    "arcface": np.array([[38.669, 54.332], [73.965, 54.229], [56.223, 77.129], [56.423, 93.672]], dtype=np.float64),
    "dlib": np.array([[48.038, 47.366], [99.95, 47.45], [73.692, 81.076], [73.881, 105.358]], dtype=np.float64),
}
# Landmark sets: "mtcnn" (5 points: eyes, nose, mouth corners) or "blazeface" (4: eyes, nose, mouth centre).
POINT_SETS = ("mtcnn", "blazeface")


def template(size, face_scale=1.0, layout="arcface", points="mtcnn"):
    """The landmark template for a `(height, width)` crop.

    Args:
        size: `(height, width)` of the aligned crop, or one int for a square.
        face_scale: < 1 shrinks the face inside the crop (more context), > 1 zooms in.
        layout: `"arcface"` or `"dlib"` (see the module docstring).
        points: which detector's landmarks: `"mtcnn"` (5) or `"blazeface"` (4).

    Returns:
        `float64 [5, 2]` (or `[4, 2]` for BlazeFace) (x, y) points.

    Example:
        >>> template(150, layout="dlib")[0].round(1).tolist()
        [47.0, 44.1]
    """
    h, w = (size, size) if np.isscalar(size) else size
    if face_scale <= 0:
        raise ValueError(f"face_scale must be positive. Received: face_scale={face_scale}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}. Received: layout={layout!r}")
    if points not in POINT_SETS:
        raise ValueError(f"points must be one of {POINT_SETS}. Received: points={points!r}")
    base, side = LAYOUTS[layout]
    if points == "blazeface":
        base = BLAZEFACE_POINTS[layout]
    centred = (base - side / 2) * face_scale
    return centred * np.array([w / side, h / side]) + np.array([w / 2.0, h / 2.0])


def similarity_transform(src, dst):
    """Least-squares similarity (rotation, uniform scale, translation) mapping `src` onto `dst`.

    Umeyama's method; no reflection.

    Args:
        src, dst: `[n, 2]` corresponding points, n >= 2.

    Returns:
        A `2x3` affine matrix `M` with `dst ~= M @ [x, y, 1]`.

    Example:
        >>> M = similarity_transform([[0, 0], [1, 0]], [[0, 0], [0, 2]])
        >>> np.round(M @ [1, 0, 1], 6).tolist()
        [0.0, 2.0]
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"src and dst must both be [n>=2, 2]. Received: {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s < 1e-12:
        raise ValueError("Landmarks are degenerate (all at one point)")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / var_s
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def transform_points(matrix, points):
    """Applies a `2x3` affine matrix to `[n, 2]` points."""
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def align_face(image, landmarks, size=(112, 112), face_scale=1.0, layout="arcface", points="mtcnn"):
    """Warps a face so its landmarks land on the template.

    Args:
        image: `uint8 [h, w, 3]` photo.
        landmarks: `[5, 2]` (x, y): left eye, right eye, nose, mouth left, mouth
            right (as seen in the image); with `points="blazeface"`, `[4, 2]`:
            left eye, right eye, nose tip, mouth centre.
        size: `(height, width)` of the crop (or an int).
        face_scale, layout, points: see `template`.

    Returns:
        `(crop uint8 [height, width, 3], matrix 2x3)`.
    """
    import cv2

    h, w = (size, size) if np.isscalar(size) else size
    matrix = similarity_transform(landmarks, template((h, w), face_scale, layout, points))
    crop = cv2.warpAffine(np.ascontiguousarray(image), matrix, (int(w), int(h)), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)
    return crop, matrix


def landmarks_from_box(box):
    """Where the template's 5 points fall in a face box (for detectors without landmarks).

    The template's own crop is taken as the box, so aligning with these
    points is a plain crop-and-resize of the box.
    """
    x, y, w, h = box
    return template((h, w)) + np.array([x, y])
