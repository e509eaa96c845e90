"""Deterministic generator of drawn faces that carry an identity and an expression.

Each identity has a fixed geometry and appearance (face shape, eye spacing,
nose, skin tone, hair, glasses, beard); each of the seven FER2013 expressions
moves the mouth, brows and eyes the way the real expression does. Every image
gets a random background, pose (rotation, scale, shift), lighting gradient and
sensor noise, so no single pixel gives either label away.

The faces feed the quickstart recipe and the tests. They are not a substitute
for real data: see `facemtl.data` readers for FER2013, VGGFace2 and friends.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

from facemtl.labels import EXPRESSIONS

_CANVAS = 128  # drawing resolution; images are downsampled to the requested size

# Per-expression muscle settings:
#   eye: eye opening factor; brow_in/brow_out: vertical shift of the inner and
#   outer brow ends (negative = up); mouth_curve: corner height relative to the
#   centre (negative = corners up, a smile); mouth_open: lip gap in canvas px;
#   mouth_width: factor on the identity's mouth width.
_MUSCLES = {
    "angry": dict(eye=0.7, brow_in=8.0, brow_out=-4.0, mouth_curve=1.5, mouth_open=0.0, mouth_width=0.7),
    "disgust": dict(eye=0.5, brow_in=3.0, brow_out=1.0, mouth_curve=3.0, mouth_open=2.0, mouth_width=0.85),
    "fear": dict(eye=1.45, brow_in=-6.0, brow_out=-2.0, mouth_curve=2.5, mouth_open=5.0, mouth_width=1.15),
    "happy": dict(eye=0.55, brow_in=-1.0, brow_out=-1.0, mouth_curve=-9.0, mouth_open=4.0, mouth_width=1.2),
    "sad": dict(eye=0.75, brow_in=-8.0, brow_out=5.0, mouth_curve=10.0, mouth_open=0.0, mouth_width=0.9),
    "surprise": dict(eye=1.6, brow_in=-8.0, brow_out=-8.0, mouth_curve=0.0, mouth_open=11.0, mouth_width=0.6),
    "neutral": dict(eye=1.0, brow_in=0.0, brow_out=0.0, mouth_curve=0.0, mouth_open=0.0, mouth_width=1.0),
}
assert tuple(_MUSCLES) == EXPRESSIONS


@dataclasses.dataclass(frozen=True)
class IdentityStyle:
    """Fixed look of one generated person (canvas units, RGB tuples)."""

    face_w: float
    face_h: float
    skin: tuple
    hair: tuple
    hair_style: int
    eye_dx: float
    eye_y: float
    eye_size: float
    iris: tuple
    brow_thickness: int
    nose_length: float
    nose_width: float
    mouth_width: float
    mouth_y: float
    glasses: bool
    beard: bool


def identity_styles(num_identities, seed=0):
    """Draws `num_identities` distinct, reproducible identity styles.

    Args:
        num_identities: how many people to make (>= 1).
        seed: the same seed always gives the same people.

    Returns:
        A list of `IdentityStyle`.
    """
    if num_identities < 1:
        raise ValueError(f"num_identities must be >= 1. Received: num_identities={num_identities}")
    rng = np.random.default_rng([seed, 7919])
    styles = []
    for _ in range(num_identities):
        tone = rng.uniform(0.25, 1.0)
        skin = tuple(int(v) for v in np.array([235, 190, 160]) * tone + rng.uniform(-20, 20, 3) * (1 - tone) + np.array([15, 10, 5]))
        styles.append(
            IdentityStyle(
                face_w=rng.uniform(29, 40),
                face_h=rng.uniform(38, 48),
                skin=tuple(int(np.clip(v, 40, 255)) for v in skin),
                hair=tuple(int(v) for v in rng.integers(10, 230, 3)),
                hair_style=int(rng.integers(0, 4)),
                eye_dx=rng.uniform(11, 18),
                eye_y=rng.uniform(-5, 3),
                eye_size=rng.uniform(5.5, 8.5),
                iris=tuple(int(v) for v in rng.integers(20, 160, 3)),
                brow_thickness=int(rng.integers(4, 7)),
                nose_length=rng.uniform(6, 14),
                nose_width=rng.uniform(3, 7),
                mouth_width=rng.uniform(9, 15),
                mouth_y=rng.uniform(-3, 4),
                glasses=bool(rng.random() < 0.3),
                beard=bool(rng.random() < 0.25),
            )
        )
    return styles


def _curve(x0, x1, y_centre, corner_rise, n=9):
    """Points of a parabola from x0 to x1 whose ends sit `corner_rise` below the centre."""
    xs = np.linspace(x0, x1, n)
    half = (x1 - x0) / 2
    mid = (x0 + x1) / 2
    ys = y_centre + corner_rise * ((xs - mid) / half) ** 2
    return list(zip(xs.tolist(), ys.tolist()))


def _draw_face(style, expression, rng):
    """Draws one face on a transparent RGBA canvas, centred, upright."""
    m = _MUSCLES[expression]
    strength = rng.uniform(0.85, 1.2)  # how strongly the expression is shown
    img = Image.new("RGBA", (_CANVAS, _CANVAS), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    cx, cy = _CANVAS / 2, _CANVAS / 2 + 2
    fw, fh = style.face_w, style.face_h
    hair = style.hair + (255,)
    skin = style.skin + (255,)
    dark = tuple(int(c * 0.45) for c in style.skin) + (255,)

    if style.hair_style == 1:  # long hair behind the face
        d.rectangle([cx - fw - 6, cy - fh * 0.6, cx + fw + 6, cy + fh * 0.9], fill=hair)
    # ears
    d.ellipse([cx - fw - 5, cy - 8, cx - fw + 5, cy + 10], fill=skin)
    d.ellipse([cx + fw - 5, cy - 8, cx + fw + 5, cy + 10], fill=skin)
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin)
    if style.hair_style in (0, 1):  # cap of hair
        d.chord([cx - fw - 1, cy - fh - 3, cx + fw + 1, cy + fh * 0.2], 180, 360, fill=hair)
    elif style.hair_style == 3:  # bun on top
        d.chord([cx - fw, cy - fh - 2, cx + fw, cy - fh * 0.2], 180, 360, fill=hair)
        d.ellipse([cx - 10, cy - fh - 16, cx + 10, cy - fh + 2], fill=hair)
    if style.beard:
        d.chord([cx - fw, cy - fh * 0.1, cx + fw, cy + fh], 0, 180, fill=hair)

    eye_y = cy - 6 + style.eye_y
    open_f = 1 + (m["eye"] - 1) * strength
    ew = style.eye_size
    eh = max(1.0, ew * 0.6 * open_f)
    for side in (-1, 1):
        ex = cx + side * style.eye_dx
        d.ellipse([ex - ew, eye_y - eh, ex + ew, eye_y + eh], fill=(250, 250, 250, 255))
        r = min(ew * 0.55, eh)
        d.ellipse([ex - r, eye_y - r, ex + r, eye_y + r], fill=style.iris + (255,))
        d.ellipse([ex - r * 0.4, eye_y - r * 0.4, ex + r * 0.4, eye_y + r * 0.4], fill=(10, 10, 10, 255))
        # brows: inner end near the nose, outer end near the temple
        base = eye_y - ew * 0.6 * max(open_f, 0.8) - 6
        inner = (ex - side * ew * 0.9, base + m["brow_in"] * strength)
        outer = (ex + side * ew * 1.3, base + m["brow_out"] * strength)
        d.line([inner, outer], fill=hair if style.hair_style != 2 else dark, width=style.brow_thickness)
        if style.glasses:
            d.ellipse([ex - ew - 4, eye_y - ew - 2, ex + ew + 4, eye_y + ew + 2], outline=(20, 20, 20, 255), width=2)
    if style.glasses:
        d.line([(cx - style.eye_dx + ew + 4, eye_y), (cx + style.eye_dx - ew - 4, eye_y)], fill=(20, 20, 20, 255), width=2)

    nose_top = eye_y + 2
    nose_tip = eye_y + 8 + style.nose_length
    d.polygon([(cx, nose_top), (cx - style.nose_width, nose_tip), (cx + style.nose_width, nose_tip)], fill=dark)
    if expression == "disgust":  # wrinkled nose bridge
        for k in (-1, 1):
            d.line([(cx + k * 3, nose_top + 2), (cx + k * 7, nose_top + 5)], fill=dark, width=2)

    mouth_y = cy + fh * 0.5 + style.mouth_y
    mw = style.mouth_width * (1 + (m["mouth_width"] - 1) * strength)
    curve = m["mouth_curve"] * strength
    gap = m["mouth_open"] * strength
    lip = (150, 40, 50, 255)
    upper = _curve(cx - mw, cx + mw, mouth_y - gap / 2, curve)
    if expression == "disgust":  # one side of the upper lip raised
        upper = [(x, y - 4 * strength * max(0.0, (x - cx) / mw)) for x, y in upper]
    if gap >= 1.5:
        lower = _curve(cx - mw, cx + mw, mouth_y + gap / 2, curve * (0.3 if expression == "surprise" else 1.0))
        if expression == "surprise":  # a round "O"
            d.ellipse([cx - mw, mouth_y - gap / 2 - 2, cx + mw, mouth_y + gap / 2 + 2], fill=(60, 10, 15, 255), outline=lip, width=2)
        else:
            d.polygon(upper + lower[::-1], fill=(60, 10, 15, 255), outline=lip)
            if expression == "happy":  # teeth
                d.line(_curve(cx - mw * 0.7, cx + mw * 0.7, mouth_y - gap / 2 + 1.5, curve * 0.5), fill=(245, 245, 245, 255), width=2)
    else:
        d.line(upper, fill=lip, width=6 if expression == "angry" else 4, joint="curve")
    return img


def _background(rng):
    base = rng.uniform(0, 255, 3)
    direction = rng.uniform(-1, 1, 2)
    yy, xx = np.mgrid[0:_CANVAS, 0:_CANVAS] / _CANVAS - 0.5
    ramp = (xx * direction[0] + yy * direction[1])[..., None] * rng.uniform(0, 160)
    blotches = rng.normal(0, 25, (8, 8, 3))
    blotches = np.kron(blotches, np.ones((_CANVAS // 8, _CANVAS // 8, 1)))
    return np.clip(base + ramp + blotches, 0, 255)


def render_face(style, expression, rng, size=64):
    """Renders one face of `style` showing `expression`, with random pose and lighting.

    Args:
        style: an `IdentityStyle` from `identity_styles`.
        expression: a name from `facemtl.labels.EXPRESSIONS`.
        rng: a `numpy.random.Generator` for pose, lighting and noise.
        size: output side length in pixels.

    Returns:
        A `uint8` array of shape `(size, size, 3)`.
    """
    if expression not in _MUSCLES:
        raise ValueError(f"Unknown expression. Expected one of {EXPRESSIONS}. Received: expression={expression!r}")
    face = _draw_face(style, expression, rng)
    angle = np.deg2rad(rng.uniform(-14, 14))
    scale = rng.uniform(0.9, 1.15)
    tx, ty = rng.uniform(-7, 7, 2)
    # Inverse affine map (output -> input) for PIL, rotating about the centre.
    c, s = np.cos(angle) / scale, np.sin(angle) / scale
    ox = oy = _CANVAS / 2
    a, b = c, s
    dd, e = -s, c
    coeffs = (a, b, ox - a * (ox + tx) - b * (oy + ty), dd, e, oy - dd * (ox + tx) - e * (oy + ty))
    face = face.transform(face.size, Image.AFFINE, coeffs, resample=Image.BILINEAR)
    rgba = np.asarray(face, dtype=np.float32)
    alpha = rgba[..., 3:4] / 255.0
    img = rgba[..., :3] * alpha + _background(rng) * (1 - alpha)
    # Directional light and global exposure.
    direction = rng.uniform(-1, 1, 2)
    yy, xx = np.mgrid[0:_CANVAS, 0:_CANVAS] / _CANVAS - 0.5
    light = 1 + (xx * direction[0] + yy * direction[1]) * rng.uniform(0, 0.8)
    img = img * light[..., None] * rng.uniform(0.65, 1.25)
    img = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR, reducing_gap=2.0)
    out = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(2, 9), (size, size, 3))
    return np.clip(out, 0, 255).astype(np.uint8)


def generate_faces(num_identities, samples_per_pair, *, size=64, seed=0, style_seed=0):
    """Generates a balanced set of faces: every identity shows every expression.

    Args:
        num_identities: number of people.
        samples_per_pair: images per (identity, expression) pair.
        size: side length of the square images.
        seed: seed for pose, lighting and noise (use different seeds for
            train/val/test splits of the same people).
        style_seed: seed for the people themselves (keep it fixed across splits).

    Returns:
        `(images, identity, expression)`: `uint8 [n, size, size, 3]`,
        `int32 [n]` and `int32 [n]`, shuffled.

    Example:
        >>> images, ids, exprs = generate_faces(3, 2, size=48, seed=1)
        >>> images.shape
        (42, 48, 48, 3)
    """
    if samples_per_pair < 1:
        raise ValueError(f"samples_per_pair must be >= 1. Received: samples_per_pair={samples_per_pair}")
    styles = identity_styles(num_identities, style_seed)
    rng = np.random.default_rng([seed, 104729])
    ids = np.repeat(np.arange(num_identities), len(EXPRESSIONS) * samples_per_pair)
    exprs = np.tile(np.repeat(np.arange(len(EXPRESSIONS)), samples_per_pair), num_identities)
    order = rng.permutation(len(ids))
    ids, exprs = ids[order].astype(np.int32), exprs[order].astype(np.int32)
    images = np.empty((len(ids), size, size, 3), np.uint8)
    for i, (p, e) in enumerate(zip(ids, exprs)):
        images[i] = render_face(styles[p], EXPRESSIONS[e], rng, size)
    return images, ids, exprs


def identity_names(num_identities):
    """Names of generated people, `person_000`, `person_001`, ..."""
    return [f"person_{i:03d}" for i in range(num_identities)]
