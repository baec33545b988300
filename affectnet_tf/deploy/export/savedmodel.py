"""The SavedModel export for TF Serving, and its outputs read back in TensorFlow.

Signatures: ``serving_default`` takes ``image_bytes``, a batch of encoded JPEG/PNG images
(decoded by content and resized with :func:`affectnet_tf.data.images.decode_image` and
:func:`~affectnet_tf.data.images.resize_image`, the package's one decode path), and ``images``
takes ``images``, RGB ``uint8`` ``[batch, height, width, 3]`` of any size (resized inside the
model the same way). Outputs named per head: ``expression`` ``[batch, K]`` probabilities in
``class_names`` order, ``valence`` and ``arousal`` ``[batch]``. The metadata is in
``assets.extra/affectnet_tf_metadata.json``
(:func:`~affectnet_tf.deploy.export.metadata.read_saved_model_metadata` reads it).
"""

import os
import shutil

import numpy as np
import tensorflow as tf

from affectnet_tf.deploy.export.converters import converter_output_hidden
from affectnet_tf.deploy.export.metadata import export_metadata, write_saved_model_metadata
from affectnet_tf.deploy.export.model import (
    batches,
    concatenate_outputs,
    decode_batch,
    export_archive,
    model_outputs,
    prediction_model_of,
)

__all__ = ["export_saved_model", "run_saved_model"]


def export_saved_model(model, path):
    """Writes the SavedModel of the module's docstring to the folder ``path`` (replaced).

    Args:
        model: a prediction model (or a crowd training model holding one).
        path: the folder (TF Serving's version folder, e.g. ``.../saved_model/1``).

    Returns:
        ``path``.
    """
    model = prediction_model_of(model)
    info = export_metadata(model)
    size = int(info["image_size"])

    def serve_bytes(image_bytes):
        return model_outputs(model, decode_batch(image_bytes, size))

    def serve_images(images):
        return model_outputs(model, images)

    archive = export_archive(
        {
            "serving_default": (
                serve_bytes,
                [tf.TensorSpec([None], tf.string, name="image_bytes")],
            ),
            "images": (serve_images, [tf.TensorSpec([None, None, None, 3], tf.uint8, "images")]),
        },
    )
    path = os.fspath(path)
    if os.path.exists(path):
        shutil.rmtree(path)
    with converter_output_hidden():  # TF's notice on the default graph's lookup tables
        archive.write_out(path, verbose=False)
    write_saved_model_metadata(path, info)
    return path


def run_saved_model(path, images=None, image_bytes=None, batch_size=32):
    """A SavedModel's ``{head: array}`` on ``uint8`` images (signature ``images``) or on
    encoded images (``image_bytes``, a list of bytes, signature ``serving_default``)."""
    loaded = tf.saved_model.load(os.fspath(path))
    if image_bytes is not None:
        function, inputs, key = loaded.signatures["serving_default"], image_bytes, "image_bytes"
    else:
        function, inputs, key = loaded.signatures["images"], np.asarray(images, np.uint8), "images"
    parts = []
    for batch in batches(inputs, batch_size, f"SavedModel {key}"):
        tensor = tf.constant(list(batch) if key == "image_bytes" else batch)
        parts.append({k: v.numpy() for k, v in function(**{key: tensor}).items()})
    return concatenate_outputs(parts, list(parts[0]))
