"""Decoding, face cropping and resizing shared by the AffectNet builders.

One path for every image: the bytes are decoded by their content with OpenCV (never by the file
extension: AffectNet stores PNG files under ``.jpg`` names), converted BGR -> RGB, cropped to a
square around the face box with a margin, resized with ``cv2.INTER_AREA`` when shrinking
(``cv2.INTER_CUBIC`` when enlarging), and re-encoded as JPEG.

Coordinates follow OpenCV's pixel-centre convention: pixel ``(u, v)`` covers
``[u - 0.5, u + 0.5]``, so a point ``p`` of the source maps to ``(p - origin + 0.5) * scale - 0.5``
in the stored image, which is where ``cv2.resize`` puts that pixel's content.
"""

import cv2
import numpy as np

__all__ = [
    "CorruptImageError",
    "JPEG_QUALITY",
    "decode_image",
    "encode_jpeg",
    "square_box",
    "crop_square",
    "resize_image",
    "transform_landmarks",
    "crop_face",
    "resize_face",
]

JPEG_QUALITY = 95
# A JPEG whose last bytes hold no end-of-image marker was cut short. OpenCV 5 refuses such files,
# OpenCV 4 decodes them with a grey bottom and only a warning, so the check is done here too.
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND"
_END_MARKER_WINDOW = 1024


class CorruptImageError(ValueError):
    """An image file that cannot be decoded (empty, truncated or not an image)."""


def decode_image(data):
    """Decodes image bytes by content into a uint8 RGB array of shape (height, width, 3).

    Args:
        data: the encoded file content (JPEG, PNG, BMP, ... whatever its file name says).

    Returns:
        `np.ndarray` of dtype uint8 and shape (height, width, 3), RGB. Grey images get three equal
        channels, an alpha channel is dropped, and EXIF orientation is ignored so that the pixel
        grid is the one AffectNet's face boxes and landmarks refer to.

    Raises:
        CorruptImageError: the bytes are empty, truncated or not a decodable image.
    """
    data = bytes(data)
    if not data:
        raise CorruptImageError("empty file")
    tail = data[-_END_MARKER_WINDOW:]
    if data.startswith(_JPEG_SOI) and _JPEG_EOI not in tail:
        raise CorruptImageError("truncated JPEG (no end-of-image marker)")
    if data.startswith(_PNG_SIGNATURE) and _PNG_IEND not in tail:
        raise CorruptImageError("truncated PNG (no IEND chunk)")
    try:
        image = cv2.imdecode(
            np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        )
    except cv2.error as error:
        raise CorruptImageError(f"OpenCV could not decode the file: {error}") from error
    if image is None:
        raise CorruptImageError("not a decodable image (cv2.imdecode returned None)")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise CorruptImageError(f"unexpected decoded shape {image.shape}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def encode_jpeg(image, quality=JPEG_QUALITY):
    """Encodes a uint8 RGB array as JPEG bytes."""
    ok, buffer = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}.")
    return buffer.tobytes()


def square_box(x, y, width, height, margin):
    """The square crop around a face box, in whole pixels.

    The square has the box's centre and side ``max(width, height) * (1 + 2 * margin)``: ``margin``
    is the fraction of the box size added on every side.

    Returns:
        `(x0, y0, side)`: top-left corner (may be negative) and side in pixels (at least 1).

    Raises:
        ValueError: the box has no area or the margin is negative.
    """
    if not (width > 0 and height > 0):
        raise ValueError(
            f"A face box needs a positive width and height. Received: width={width}, "
            f"height={height}"
        )
    if margin < 0:
        raise ValueError(f"`margin` must be >= 0. Received: margin={margin}")
    side = max(1, int(round(max(width, height) * (1.0 + 2.0 * margin))))
    x0 = int(round(x + width / 2.0 - side / 2.0))
    y0 = int(round(y + height / 2.0 - side / 2.0))
    return x0, y0, side


def crop_square(image, x0, y0, side):
    """Cuts the square ``[x0, x0 + side) x [y0, y0 + side)``; parts outside the image are black."""
    height, width = image.shape[:2]
    out = np.zeros((side, side) + image.shape[2:], dtype=image.dtype)
    left, top = max(x0, 0), max(y0, 0)
    right, bottom = min(x0 + side, width), min(y0 + side, height)
    if right > left and bottom > top:
        out[top - y0 : bottom - y0, left - x0 : right - x0] = image[top:bottom, left:right]
    return out


def resize_image(image, size):
    """Resizes to ``size x size``: ``INTER_AREA`` when shrinking, ``INTER_CUBIC`` when enlarging."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    shrinking = height * width > size * size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interpolation)


def transform_landmarks(points, origin, scale):
    """Maps source points into the cropped and resized image (pixel-centre convention).

    Args:
        points: array (..., 2) of (x, y) in the source image; NaN stays NaN.
        origin: (x0, y0), the crop's top-left corner in the source image.
        scale: (sx, sy), output size divided by crop size.

    Returns:
        float32 array of the same shape: ``(p - origin + 0.5) * scale - 0.5``.
    """
    points = np.asarray(points, dtype=np.float64)
    origin = np.asarray(origin, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    return ((points - origin + 0.5) * scale - 0.5).astype(np.float32)


def crop_face(image, box, margin, size, landmarks=None):
    """Square face crop of a full-release image, resized to ``size``, and its landmarks.

    Args:
        image: decoded RGB image.
        box: (x, y, width, height) of the face in ``image``.
        margin: fraction of the box size added on every side.
        size: side of the output image.
        landmarks: optional (68, 2) points in ``image``'s coordinates.

    Returns:
        `(face, landmarks)`: uint8 array (size, size, 3) and the points in its coordinates
        (None when no points were given).

    Raises:
        ValueError: the box has no area or lies entirely outside the image.
    """
    x0, y0, side = square_box(*box, margin)
    height, width = image.shape[:2]
    x, y, box_width, box_height = box
    if x >= width or y >= height or x + box_width <= 0 or y + box_height <= 0:
        raise ValueError(f"The face box {tuple(box)} lies outside the {width}x{height} image.")
    face = resize_image(crop_square(image, x0, y0, side), size)
    if landmarks is not None:
        landmarks = transform_landmarks(landmarks, (x0, y0), (size / side, size / side))
    return face, landmarks


def resize_face(image, size, landmarks=None):
    """Resizes an already cropped face (the 8-label release) and scales its landmarks."""
    height, width = image.shape[:2]
    face = resize_image(image, size)
    if landmarks is not None:
        landmarks = transform_landmarks(landmarks, (0, 0), (size / width, size / height))
    return face, landmarks
