"""Decoding, face cropping and resizing shared by the AffectNet builders.

One path for every image: the bytes are decoded by their content (never by the file extension:
AffectNet stores PNG files under ``.jpg`` names) into RGB, the face box is bounded by the image
(`clip_box`), the image is cropped to a square around that box with a margin, resized with
``cv2.INTER_AREA`` when shrinking (``cv2.INTER_CUBIC`` when enlarging), and re-encoded as JPEG.

Decoding is strict, in one pass per image: a JPEG goes through libjpeg-turbo with its warnings
made errors (``simplejpeg.decode_jpeg(strict=True)``), every other format through OpenCV. A JPEG
damaged inside its entropy-coded data with its end marker intact is what a lenient decoder lets
through: OpenCV's ``imdecode`` (and ``tf.io.decode_jpeg`` and Pillow) return an image and at most
print "Corrupt JPEG data: 94 extraneous bytes before marker 0xd9" or "premature end of data
segment" on stderr; here it raises `CorruptJpegDataError`. The strict decode gives OpenCV's pixels
bit for bit (the same library, the same IDCT and upsampling), and a PNG's zlib and CRC checks
already make OpenCV refuse a damaged PNG. Damage that leaves a valid Huffman stream (a flipped bit
that decodes to other coefficients) makes no decoder warn; it cannot be told from an image.

Coordinates follow OpenCV's pixel-centre convention: pixel ``(u, v)`` covers
``[u - 0.5, u + 0.5]``, so a point ``p`` of the source maps to ``(p - origin + 0.5) * scale - 0.5``
in the stored image, which is where ``cv2.resize`` puts that pixel's content.
"""

from typing import NamedTuple

import cv2
import numpy as np
import simplejpeg

__all__ = [
    "CorruptImageError",
    "CorruptJpegDataError",
    "DecodedImage",
    "JPEG_NOT_CHECKED",
    "JPEG_QUALITY",
    "decode_source_image",
    "decode_source_image_checked",
    "encode_jpeg",
    "clip_box",
    "square_box",
    "crop_square",
    "resize_for_storage",
    "transform_landmarks",
    "crop_face",
    "resize_face",
]

JPEG_QUALITY = 95
# A JPEG whose last bytes hold no end-of-image marker was cut short. OpenCV 5 refuses such files,
# OpenCV 4 decodes them with a grey bottom and only a warning, so the check is done here too (the
# strict decode would refuse them as well, with a less telling message).
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND"
_END_MARKER_WINDOW = 1024
# libjpeg warnings about header fields that it then ignores: the fields are set to the values
# libjpeg decodes with anyway, and the strict decode runs again on that copy (so that these
# warnings neither drop a clean image nor hide a corruption further on).
_JFIF_REVISION_WARNING = "Warning: unknown JFIF revision number"
_SOS_WARNING = "Invalid SOS parameters for sequential JPEG"
_SEQUENTIAL_SOF = (0xC0, 0xC1)  # baseline and extended sequential, Huffman-coded
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_NOT_CHECKED = "JPEG not checked for mid-stream corruption"


class CorruptImageError(ValueError):
    """An image file that cannot be decoded (empty, truncated or not an image)."""


class CorruptJpegDataError(CorruptImageError):
    """A JPEG whose entropy-coded data is damaged: libjpeg only recovers from it with a warning.

    Typically bytes overwritten or lost inside the file with its end marker intact. Lenient
    decoders (OpenCV, TensorFlow, Pillow) return an image with grey, shifted or smeared blocks.
    """


class DecodedImage(NamedTuple):
    """A decoded image and what the check could not say about it.

    Attributes:
        image: uint8 RGB array (height, width, 3).
        note: "" when the decode was checked and clean, else `JPEG_NOT_CHECKED` (a JPEG that
            libjpeg-turbo's strict decoder refuses outright and OpenCV decodes).
        detail: the strict decoder's message for a note.
    """

    image: np.ndarray
    note: str = ""
    detail: str = ""


def decode_source_image(data):
    """Decodes the bytes of a source image file (AffectNet's) by content, strictly, into a uint8
    RGB array of shape (height, width, 3). Not the runtime decode of training and serving
    (``affectnet_tf.decode_image``): this one refuses damaged files so a builder can skip them.

    Args:
        data: the encoded file content (JPEG, PNG, BMP, ... whatever its file name says).

    Returns:
        `np.ndarray` of dtype uint8 and shape (height, width, 3), RGB. Grey images get three equal
        channels, an alpha channel is dropped, and EXIF orientation is ignored so that the pixel
        grid is the one AffectNet's face boxes and landmarks refer to.

    Raises:
        CorruptJpegDataError: a JPEG corrupt inside its data (libjpeg decodes it with warnings).
        CorruptImageError: the bytes are empty, truncated or not a decodable image.
    """
    return decode_source_image_checked(data).image


def decode_source_image_checked(data):
    """`decode_source_image`, and whether the strict JPEG check ran: a `DecodedImage`.

    A JPEG is decoded with libjpeg-turbo's warnings as errors. The warning "unknown JFIF revision
    number" and, in a sequential JPEG, "Invalid SOS parameters" are about header fields libjpeg
    ignores: they are set to the values it decodes with and the strict decode is run again. A
    JPEG that libjpeg-turbo still decodes when its warnings are allowed is corrupt
    (`CorruptJpegDataError`, with libjpeg's message). One that it refuses even then (a header or
    layout that its TurboJPEG interface does not take) goes to OpenCV, and is noted
    `JPEG_NOT_CHECKED` when OpenCV decodes it.

    Raises:
        CorruptJpegDataError: a JPEG corrupt inside its data.
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
    if data.startswith(_JPEG_SOI):
        return _decode_jpeg(data)
    return DecodedImage(_decode_opencv(data))


def _decode_jpeg(data):
    """Strict libjpeg-turbo decode of JPEG bytes (see `decode_source_image_checked`)."""
    for _ in range(3):  # at most two harmless header warnings to correct
        try:
            return DecodedImage(simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True))
        except ValueError as error:
            message = str(error)
        corrected = _ignored_header_fields_set(data, message)
        if corrected is None:
            break
        data = corrected
    try:
        simplejpeg.decode_jpeg(data, colorspace="RGB", strict=False)
    except ValueError:
        # Refused even with warnings allowed: not a warning about the data. OpenCV decides.
        return DecodedImage(_decode_opencv(data), JPEG_NOT_CHECKED, f"libjpeg-turbo: {message}")
    raise CorruptJpegDataError(
        f"JPEG data corrupt mid-stream, libjpeg: {message} (OpenCV would decode it with only a "
        "warning)"
    )


def _ignored_header_fields_set(data, message):
    """A copy of ``data`` with the header field of a harmless warning set to what libjpeg
    decodes with, or None when ``message`` is not such a warning (or nothing was changed)."""
    if message.startswith(_JFIF_REVISION_WARNING):
        return _patched_segments(data, jfif=True)
    if message.startswith(_SOS_WARNING):
        return _patched_segments(data, sos=True)
    return None


def _patched_segments(data, jfif=False, sos=False):
    """Walks the JPEG markers: sets the JFIF major revision to 1 and (sequential JPEG) every
    scan's spectral selection and successive approximation to 0..63, 0, 0. None if unchanged."""
    out = bytearray(data)
    size, pos, sequential, changed = len(out), 2, False, False
    while pos + 4 <= size:
        if out[pos] != 0xFF:
            return None  # not where a marker should be: leave the file to the decoder
        marker = out[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        end = pos + 2 + int.from_bytes(out[pos + 2 : pos + 4], "big")
        if end > size or end < pos + 4:
            return None
        if marker in _SOF_MARKERS:
            sequential = marker in _SEQUENTIAL_SOF
        elif jfif and marker == 0xE0 and out[pos + 4 : pos + 9] == b"JFIF\x00" and end > pos + 9:
            if out[pos + 9] != 1:
                out[pos + 9], changed = 1, True
        elif sos and marker == 0xDA and sequential and out[end - 3 : end] != b"\x00\x3f\x00":
            out[end - 3 : end], changed = b"\x00\x3f\x00", True
        pos = end
        if marker == 0xDA:  # skip the entropy-coded data up to the next marker
            while True:
                pos = out.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= size:
                    return bytes(out) if changed else None
                following = out[pos + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    pos += 2
                elif following == 0xFF:
                    pos += 1
                else:
                    break
    return bytes(out) if changed else None


def _decode_opencv(data):
    """OpenCV's decode by content into RGB (PNG, BMP, WebP, ...; JPEGs the strict path refuses)."""
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


def clip_box(box, width, height):
    """Bounds a face box by the image: the part of the box inside ``[0, width] x [0, height]``.

    Args:
        box: (x, y, box_width, box_height) in the image's pixels (floats or ints).
        width: the image's width.
        height: the image's height.

    Returns:
        `(clipped, was_clipped)`: the box cut to the image, with the input's values where no side
        crosses a border, and whether any side did.

    Raises:
        ValueError: a value is not finite, the box has no positive width and height, or it has no
            overlap with the image (touching a border is no overlap).
    """
    x, y, box_width, box_height = box
    if not all(np.isfinite(value) for value in box):
        raise ValueError(f"A face box needs finite values. Received: box={tuple(box)}")
    if not (box_width > 0 and box_height > 0):
        raise ValueError(
            f"A face box needs a positive width and height. Received: width={box_width}, "
            f"height={box_height}"
        )
    left, top = max(x, 0), max(y, 0)
    right, bottom = min(x + box_width, width), min(y + box_height, height)
    if right <= left or bottom <= top:
        raise ValueError(f"The face box {tuple(box)} lies outside the {width}x{height} image.")
    was_clipped = (left, top, right, bottom) != (x, y, x + box_width, y + box_height)
    if not was_clipped:
        return (x, y, box_width, box_height), False
    return (left, top, right - left, bottom - top), True


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


def resize_for_storage(image, size):
    """Resizes a crop to the stored ``size x size`` of a builder: ``INTER_AREA`` when shrinking,
    ``INTER_CUBIC`` when enlarging (``affectnet_tf.resize_image`` is the runtime resize)."""
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

    The box is first bounded by the image (`clip_box`): a box past a border is cropped around
    its part inside the image, not around a centre outside it. The square around the clipped
    box (with the margin) may still cross a border; that part is black.

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
        ValueError: the box has no area, a non-finite value or lies entirely outside the image.
    """
    height, width = image.shape[:2]
    box, _ = clip_box(box, width, height)
    x0, y0, side = square_box(*box, margin)
    face = resize_for_storage(crop_square(image, x0, y0, side), size)
    if landmarks is not None:
        landmarks = transform_landmarks(landmarks, (x0, y0), (size / side, size / side))
    return face, landmarks


def resize_face(image, size, landmarks=None):
    """Resizes an already cropped face (the 8-label release) and scales its landmarks."""
    height, width = image.shape[:2]
    face = resize_for_storage(image, size)
    if landmarks is not None:
        landmarks = transform_landmarks(landmarks, (0, 0), (size / width, size / height))
    return face, landmarks
