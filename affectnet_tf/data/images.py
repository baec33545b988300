"""The one decode / resize path shared by training, evaluation and prediction.

Images are always RGB ``uint8``. Decoding goes by content (``tf.io.decode_image``), so a PNG
named ``.jpg`` decodes as well as a JPEG; resizing is bilinear with anti-aliasing, rounded back
to ``uint8``. The saved model's metadata records :data:`RESIZE_METHOD` so that users of the
model can tell how its inputs were made.
"""

import re

import numpy as np
import tensorflow as tf

__all__ = [
    "RESIZE_METHOD",
    "decode_image",
    "decode_error_reason",
    "resize_image",
    "load_image_file",
]

RESIZE_METHOD = "bilinear_antialias_uint8"
# TensorFlow's decorations of a kernel's error: the function node and the op name
_TF_ERROR_DECORATIONS = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\].*$")


def decode_image(encoded):
    """Decodes JPEG/PNG/BMP/GIF bytes (by content, not by name) to an RGB ``uint8`` tensor."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decode_error_reason(error):
    """The first line of a decoding error's message, without TensorFlow's decorations (e.g.
    ``Unknown image file format. One of JPEG, PNG, GIF, BMP required.``)."""
    return _TF_ERROR_DECORATIONS.sub("", error.message).strip().splitlines()[0]


def resize_image(image, image_size):
    """Resizes an RGB image (any size, any dtype in 0..255) to ``image_size`` square ``uint8``.

    Works on one image ``(H, W, 3)`` or a batch ``(N, H, W, 3)``.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    resized = tf.image.resize(
        tf.cast(image, tf.float32), size, method=tf.image.ResizeMethod.BILINEAR, antialias=True
    )
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def load_image_file(path, image_size=None):
    """Reads an image file into RGB ``uint8`` NumPy, resized when ``image_size`` is given.

    Raises:
        ValueError: naming the file when it is missing or cannot be decoded.
    """
    path = str(path)
    if not tf.io.gfile.exists(path):
        raise ValueError(f"Image file not found: {path}")
    try:
        image = decode_image(tf.io.read_file(path))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        reason = decode_error_reason(error)
        raise ValueError(f"Cannot decode image file {path}: {reason}") from None
    if image_size is not None:
        image = resize_image(image, image_size)
    return np.asarray(image)
