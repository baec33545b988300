"""Procedurally drawn faces with a known expression, valence and arousal (OpenCV, no assets).

A face is a set of parameters (:func:`sample_face`), drawn by :func:`draw_face`:

- the expression (one of the 8 canonical classes) sets the features' prototype: mouth
  curvature and openness, mouth width, a one-sided smile for contempt, eye openness, brow
  angle and height, and a nose wrinkle for disgust (:data:`PROTOTYPES`);
- valence and arousal follow the usual circumplex position of the class
  (:data:`CIRCUMPLEX`) plus a per-face variation, and move the features with them: the mouth
  curves up with valence, the eyes and the mouth open and the brows rise with arousal, so that
  both can be read off the image;
- nuisance variation: face size, position and rotation, skin tone, lighting (brightness and a
  directional gradient), background colour and clutter shapes, pixel noise and, sometimes, a
  partial occlusion of the face.

Everything is drawn from one ``numpy.random.Generator``: the same generator state gives the
same image, byte for byte.
"""

import cv2
import numpy as np

from tfds_affectnet import labels

__all__ = [
    "CIRCUMPLEX",
    "PROTOTYPES",
    "FEATURES",
    "sample_face",
    "draw_face",
]

# (valence, arousal) of each class, canonical order, after the circumplex model of affect
# (Russell 1980) and the class means of AffectNet's manual annotations.
CIRCUMPLEX = np.array(
    [
        [0.0, 0.0],  # neutral
        [0.7, 0.35],  # happy
        [-0.6, -0.35],  # sad
        [0.2, 0.75],  # surprise
        [-0.55, 0.7],  # fear
        [-0.65, 0.25],  # disgust
        [-0.5, 0.6],  # anger
        [-0.4, 0.15],  # contempt
    ]
)
VA_SPREAD = 0.12  # standard deviation of a face's valence / arousal around its class position

FEATURES = (
    "mouth_curve",  # corners up (+) or down (-)
    "mouth_open",  # 0 closed .. 1 wide open
    "mouth_width",  # relative to neutral
    "smirk",  # one-sided smile: left corner up, right corner flat
    "eye_open",  # 0 shut .. 1 wide
    "brow_angle",  # inner ends up (+, sad / fear) or down (-, anger)
    "brow_height",  # raised (+) or lowered (-)
    "nose_wrinkle",  # 0 .. 1
)
# Prototype feature values per class (rows: canonical order; columns: FEATURES).
PROTOTYPES = np.array(
    [
        [0.0, 0.0, 1.0, 0.0, 0.5, 0.0, 0.0, 0.0],  # neutral
        [1.0, 0.35, 1.25, 0.0, 0.35, 0.0, 0.1, 0.0],  # happy
        [-0.9, 0.0, 0.95, 0.0, 0.3, 0.9, -0.1, 0.0],  # sad
        [0.0, 1.0, 0.6, 0.0, 1.0, 0.0, 1.0, 0.0],  # surprise
        [-0.4, 0.6, 1.2, 0.0, 0.95, 0.8, 0.6, 0.0],  # fear
        [-0.6, 0.25, 1.0, 0.0, 0.25, -0.3, -0.4, 1.0],  # disgust
        [-0.5, 0.15, 0.9, 0.0, 0.5, -1.0, -0.6, 0.2],  # anger
        [0.0, 0.0, 1.0, 1.0, 0.45, 0.0, 0.0, 0.0],  # contempt
    ]
)
# How a face's deviation from its class position moves the features (valence, arousal).
_VA_EFFECT = {
    "mouth_curve": (0.6, 0.0),
    "mouth_open": (0.0, 0.35),
    "eye_open": (0.0, 0.35),
    "brow_height": (0.0, 0.3),
}
_FEATURE_JITTER = 0.06
_SKIN_TONES = np.array(  # RGB, light to dark
    [
        [255, 224, 196],
        [241, 194, 160],
        [224, 172, 130],
        [198, 134, 96],
        [160, 102, 66],
        [110, 70, 45],
        [80, 52, 36],
    ],
    np.float64,
)
_SHIFT = 4  # sub-pixel precision of OpenCV's drawing (coordinates times 16)


def sample_face(expression, rng):
    """Draws the parameters of one face of class ``expression``.

    Returns:
        dict with ``expression``, ``valence``, ``arousal`` (floats in [-1, 1]) and the
        feature values ``FEATURES``.
    """
    if not 0 <= int(expression) < len(labels.EXPRESSION_NAMES):
        raise ValueError(f"`expression` must be 0..7. Received: expression={expression!r}")
    centre = CIRCUMPLEX[expression]
    valence, arousal = np.clip(centre + rng.normal(0.0, VA_SPREAD, 2), -1.0, 1.0)
    delta = (valence - centre[0], arousal - centre[1])
    face = {"expression": int(expression), "valence": float(valence), "arousal": float(arousal)}
    for index, name in enumerate(FEATURES):
        value = PROTOTYPES[expression, index] + rng.normal(0.0, _FEATURE_JITTER)
        effect = _VA_EFFECT.get(name, (0.0, 0.0))
        value += effect[0] * delta[0] + effect[1] * delta[1]
        face[name] = float(value)
    face["mouth_open"] = float(np.clip(face["mouth_open"], 0.0, 1.2))
    face["eye_open"] = float(np.clip(face["eye_open"], 0.12, 1.2))
    face["nose_wrinkle"] = float(np.clip(face["nose_wrinkle"], 0.0, 1.0))
    face["smirk"] = float(np.clip(face["smirk"], 0.0, 1.2))
    return face


def _points(xy, transform):
    """Face coordinates (unit: the face's half width, y down) -> int32 image points << SHIFT."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    image = xy @ transform[:, :2].T + transform[:, 2]
    return np.round(image * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def _ellipse(cx, cy, rx, ry, start=0.0, stop=2 * np.pi, n=40):
    t = np.linspace(start, stop, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _colour(rgb):
    return tuple(int(v) for v in np.clip(np.round(rgb), 0, 255))


def _clutter(image, rng, size):
    """Random shapes behind the face."""
    for _ in range(int(rng.integers(3, 9))):
        colour = _colour(rng.uniform(0, 255, 3))
        kind = int(rng.integers(3))
        x, y = rng.uniform(0, size, 2)
        extent = rng.uniform(0.05, 0.3) * size
        if kind == 0:
            cv2.circle(image, (int(x), int(y)), int(extent), colour, -1, cv2.LINE_AA)
        elif kind == 1:
            w, h = rng.uniform(0.3, 1.0, 2) * extent
            cv2.rectangle(image, (int(x), int(y)), (int(x + w), int(y + h)), colour, -1)
        else:
            x2, y2 = rng.uniform(0, size, 2)
            width = max(1, int(rng.uniform(0.01, 0.04) * size))
            cv2.line(image, (int(x), int(y)), (int(x2), int(y2)), colour, width, cv2.LINE_AA)


def _mouth(face):
    """Upper and lower lip curves of the mouth, in face coordinates."""
    width = 0.36 * face["mouth_width"]
    t = np.linspace(-1.0, 1.0, 21)
    x = width * t
    curve = -0.16 * face["mouth_curve"] * t**2  # corners up for a positive curve
    smirk = -0.2 * face["smirk"] * np.clip(-t, 0.0, None) ** 2  # left (image) corner up
    centre_y = 0.5
    opening = 0.22 * face["mouth_open"] * (1.0 - t**2)
    upper = np.stack([x, centre_y + curve + smirk - 0.3 * opening], axis=1)
    lower = np.stack([x, centre_y + curve + smirk + opening], axis=1)
    return upper, lower


def _fill(image, xy, colour, transform):
    """Fills the polygon ``xy`` (face coordinates), anti-aliased."""
    cv2.fillPoly(image, [_points(xy, transform)], colour, cv2.LINE_AA, _SHIFT)


def _stroke(image, xy, closed, colour, thickness, transform):
    """Draws the polyline ``xy`` (face coordinates), anti-aliased."""
    cv2.polylines(image, [_points(xy, transform)], closed, colour, thickness, cv2.LINE_AA, _SHIFT)


def _background(size, rng):
    """A ``size`` x ``size`` image of one random colour with clutter shapes."""
    background = rng.uniform(30, 230, 3)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = _colour(background)
    _clutter(image, rng, size)
    return image


def _pose(size, rng):
    """``(half_width, centre, transform)``: the face's size, position and rotation; the
    transform maps face coordinates to image pixels."""
    half_width = rng.uniform(0.26, 0.36) * size
    centre = np.array([size / 2, size / 2]) + rng.uniform(-0.1, 0.1, 2) * size
    angle = np.deg2rad(rng.uniform(-15.0, 15.0))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    transform = np.concatenate([half_width * rotation, centre[:, None]], axis=1)
    return half_width, centre, transform


def _draw_head(image, transform, skin, rng):
    """The head, the ears and the hair (its colour drawn from ``rng``)."""
    _fill(image, _ellipse(0, 0.05, 1.0, 1.3), skin, transform)
    for side in (-1, 1):  # ears
        _fill(image, _ellipse(side * 0.98, 0.0, 0.14, 0.25), skin, transform)
    hair = np.concatenate(
        [_ellipse(0, 0.05, 1.02, 1.32, np.pi, 2 * np.pi), [[0.8, -0.7], [-0.8, -0.7]]]
    )
    _fill(image, hair, _colour(rng.uniform(10, 120, 3)), transform)


def _draw_eyes(image, face, transform, dark, thick):
    """Eyes: white ellipse, iris; openness scales the height."""
    eye_height = 0.16 * face["eye_open"]
    for side in (-1, 1):
        eye = _ellipse(side * 0.4, -0.15, 0.2, eye_height)
        _fill(image, eye, (245, 245, 245), transform)
        _fill(image, _ellipse(side * 0.4, -0.15, 0.085, min(0.085, eye_height)), dark, transform)
        _stroke(image, eye, True, dark, thick, transform)


def _draw_brows(image, face, transform, dark, thick):
    """Brows: the inner end (near the nose) moves with the angle, both ends with the height."""
    brow_y = -0.45 - 0.16 * face["brow_height"]
    for side in (-1, 1):
        inner = [side * 0.14, brow_y - 0.13 * face["brow_angle"]]
        outer = [side * 0.66, brow_y + 0.05 * face["brow_angle"]]
        middle = [side * 0.4, min(inner[1], outer[1]) - 0.05]
        _stroke(image, np.array([inner, middle, outer]), False, dark, 2 * thick, transform)


def _draw_nose(image, face, transform, dark, thick):
    """The nose, and the wrinkle lines of disgust beside it."""
    nose = np.array([[-0.02, -0.1], [-0.1, 0.22], [0.08, 0.25]])
    _stroke(image, nose, False, dark, thick, transform)
    if face["nose_wrinkle"] <= 0.15:
        return
    for side in (-1, 1):
        for k in range(2):
            y0 = 0.0 + 0.09 * k
            line = np.array(
                [[side * 0.12, y0], [side * (0.12 + 0.2 * face["nose_wrinkle"]), y0 - 0.06]]
            )
            _stroke(image, line, False, dark, thick, transform)


def _draw_mouth(image, face, transform, inside, lip, thick):
    """The mouth: an open one filled with ``inside`` and outlined, a closed one a lip line."""
    upper, lower = _mouth(face)
    if face["mouth_open"] > 0.08:
        polygon = np.concatenate([upper, lower[::-1]])
        _fill(image, polygon, inside, transform)
        _stroke(image, polygon, True, lip, 2 * thick, transform)
    else:
        _stroke(image, upper, False, lip, 2 * thick, transform)


def _occlude(image, rng, centre, half_width):
    """A patch over part of the face, on a quarter of the faces."""
    if rng.random() < 0.25:
        side = rng.uniform(0.25, 0.45) * 2 * half_width
        x, y = centre + rng.uniform(-1.0, 1.0, 2) * half_width - side / 2
        corners = (int(x), int(y)), (int(x + side), int(y + side * rng.uniform(0.5, 1.0)))
        cv2.rectangle(image, *corners, _colour(rng.uniform(0, 255, 3)), -1)


def _light(image, rng):
    """Lighting (brightness and a directional gradient), then sensor noise: the final image."""
    size = image.shape[0]
    light = rng.uniform(0.65, 1.25)
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-12
    grid = (np.arange(size) - size / 2) / size
    gradient = 1.0 + rng.uniform(0.0, 0.5) * (
        direction[0] * grid[None, :] + direction[1] * grid[:, None]
    )
    noisy = image * (light * gradient)[..., None] + rng.normal(0.0, rng.uniform(2, 10), image.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def draw_face(face, size, rng):
    """Draws ``face`` (from :func:`sample_face`) on a ``size`` x ``size`` RGB ``uint8`` image.

    The nuisance variables (pose, skin, lighting, background, noise, occlusion) are drawn from
    ``rng``, always in the same order: background, pose, skin tone, hair, occlusion, light.
    """
    size = int(size)
    image = _background(size, rng)
    half_width, centre, transform = _pose(size, rng)
    thick = max(1, int(round(size / 40)))
    tone = _SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))] * rng.uniform(0.9, 1.1, 3)
    dark = _colour(tone * 0.3)
    _draw_head(image, transform, _colour(tone), rng)
    _draw_eyes(image, face, transform, dark, thick)
    _draw_brows(image, face, transform, dark, thick)
    _draw_nose(image, face, transform, dark, thick)
    lip = _colour(tone * np.array([0.75, 0.45, 0.45]))
    _draw_mouth(image, face, transform, _colour(tone * 0.15), lip, thick)
    _occlude(image, rng, centre, half_width)
    return _light(image, rng)
