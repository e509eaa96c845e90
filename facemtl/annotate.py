"""Drawing boxes, landmarks and labels on photos, and naming the annotated files."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw


def annotate(image, faces):
    """Returns a copy of `image` with each face's box, landmarks and labels drawn.

    Args:
        image: `uint8 [h, w, 3]`.
        faces: face dicts as returned by `FaceAnalyzer.analyze`.

    Returns:
        A PIL image.
    """
    pil = Image.fromarray(np.asarray(image))
    draw = ImageDraw.Draw(pil)
    line = max(2, round(max(pil.size) / 300))
    for face in faces:
        x, y, w, h = face["box"]
        draw.rectangle([x, y, x + w, y + h], outline=(0, 255, 0), width=line)
        r = line + 1
        for px, py in face["landmarks"].values():
            draw.ellipse([px - r, py - r, px + r, py + r], fill=(255, 64, 64))
        expr = face["expression"]["label"]
        p_expr = face["expression"]["probabilities"][expr]
        if "match" in face:  # a gallery's answer names open-set people; the softmax only training ones
            who = f"{face['match']['name']} {face['match']['score']:.2f}"
        else:  # the API's own open-set answer: a trained name, or "unknown"
            ident = face["identity"]
            who = ident["label"] + (f" {ident['similarity']:.2f}" if "similarity" in ident else "")
        text = f"{expr} {p_expr:.2f} | {who}"
        bbox = draw.textbbox((x, y), text)
        ty = y - (bbox[3] - bbox[1]) - 4 if y > (bbox[3] - bbox[1]) + 4 else y + h + 2
        draw.rectangle([x, ty, x + (bbox[2] - bbox[0]) + 4, ty + (bbox[3] - bbox[1]) + 4], fill=(0, 0, 0))
        draw.text((x + 2, ty + 1), text, fill=(255, 255, 255))
    return pil


class AnnotationNames:
    """Unique file names for annotated photos and video frames (`photo.jpg`, `clip_frame000010.jpg`, `photo_2.jpg`).

    Photos of the same name in different folders get `_2`, `_3`... instead of
    overwriting each other.

    Example:
        >>> names = AnnotationNames()
        >>> names("a/face.png"), names("b/face.jpg"), names("clip.mp4", frame=10)
        ('face.jpg', 'face_2.jpg', 'clip_frame000010.jpg')
    """

    def __init__(self):
        self._used = set()

    def __call__(self, path, frame=None):
        stem = os.path.splitext(os.path.basename(path))[0]
        base = f"{stem}_frame{frame:06d}" if frame is not None else stem
        name, k = f"{base}.jpg", 1
        while name in self._used:
            k += 1
            name = f"{base}_{k}.jpg"
        self._used.add(name)
        return name
