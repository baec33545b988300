"""The model an export serves: the prediction model of a run (or of a crowd training model), its
outputs per head, the Keras export archive its serving functions go into, and its outputs on
images in batches (the reference every exported file is checked against)."""

import keras
import numpy as np
import tensorflow as tf

from affectnet_tf.data.images import decode_image, resize_image
from affectnet_tf.deploy.export.converters import ExportError
from affectnet_tf.modeling.backbones import ModelMetadata
from affectnet_tf.modeling.models import model_metadata
from affectnet_tf.progress import progress
from affectnet_tf.training.run_folder import load_run

__all__ = [
    "prediction_model_of",
    "load_export_model",
    "model_outputs",
    "decode_batch",
    "export_archive",
    "fixed_size_archive",
    "batches",
    "concatenate_outputs",
    "run_keras",
]


def _has_metadata(model):
    """Whether ``model`` holds the ``ModelMetadata`` layer of :func:`affectnet_tf.build_model`."""
    return any(isinstance(layer, ModelMetadata) for layer in model.layers)


def prediction_model_of(model):
    """The prediction model: ``model`` itself, or the one inside a crowd training model.

    A crowd run's ``crowd_model.keras`` calls its prediction model as a layer and adds crowd
    layers (one output per annotator); the export serves the prediction model only.

    Raises:
        ExportError: the model holds no model built by :func:`affectnet_tf.build_model`.
    """
    if _has_metadata(model):
        return model
    for layer in model.layers:
        if isinstance(layer, keras.Model) and _has_metadata(layer):
            return layer
    raise ExportError(
        f"The model {model.name!r} has no ModelMetadata layer: only models built by "
        "affectnet_tf.build_model (the model.keras of a run folder) can be exported."
    )


def load_export_model(model_dir):
    """The prediction model of a run folder (``RUN/model.keras``) or of a ``.keras`` file (the
    one inside, for a crowd training model).

    Raises:
        FileNotFoundError: no ``model.keras`` in the folder.
    """
    return prediction_model_of(load_run(model_dir).load_model())


def model_outputs(model, images):
    """``{head: tensor}``: ``expression`` ``(batch, K)``, ``valence``/``arousal`` ``(batch,)``."""
    heads = model_metadata(model)["outputs"]
    result = model(images, training=False)
    if not isinstance(result, dict):
        result = {heads[0]: result}
    return {
        head: tf.reshape(result[head], [-1]) if head != "expression" else result[head]
        for head in heads
    }


def decode_batch(image_bytes, image_size):
    """A ``uint8`` ``(batch, image_size, image_size, 3)`` tensor of a string tensor of encoded
    images, decoded and resized by the package's one decode path."""

    def decode(encoded):
        return resize_image(decode_image(encoded), image_size)

    return tf.map_fn(
        decode,
        image_bytes,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
    )


def export_archive(endpoints):
    """A ``keras.export.ExportArchive`` of a model's serving functions ``{name: (fn, spec)}``.

    The archive (rather than ``tf.saved_model.save`` of a module) turns Keras 3 variables into
    resource variables that the TFLite converter freezes. It holds the variables the functions
    use (``add_endpoint`` tracks them) and not the Keras model's object graph, which nothing
    reads back (TF Serving and the converters take the signatures) and which would double the
    time of writing it out.
    """
    archive = keras.export.ExportArchive()
    for name, (function, spec) in endpoints.items():
        archive.add_endpoint(name, function, input_signature=spec)
    return archive


def fixed_size_archive(model, input_size):
    """The archive of a fixed-size input ``image`` ``uint8`` ``[batch, S, S, 3]`` (TFLite and
    ONNX).

    Returns:
        ``(archive, serve, spec)``: the archive, its serving function and input signature.
    """
    size = int(input_size)

    def serve(image):
        return model_outputs(model, image)

    spec = [tf.TensorSpec([None, size, size, 3], tf.uint8, name="image")]
    return export_archive({"serving_default": (serve, spec)}), serve, spec


def batches(items, batch_size, desc=None):
    """Consecutive slices of ``batch_size`` items of ``items``, behind a progress bar over the
    batches named ``desc`` (see :func:`affectnet_tf.progress.progress`)."""
    for start in progress(range(0, len(items), batch_size), desc=desc, unit="batch"):
        yield items[start : start + batch_size]


def concatenate_outputs(parts, heads):
    """``{head: array}`` of the batches' ``{head: array}`` ``parts`` joined along the batch."""
    return {head: np.concatenate([part[head] for part in parts]) for head in heads}


def run_keras(model, images, batch_size=32):
    """The Keras model's ``{head: array}`` on ``uint8`` images (expression ``(n, K)``,
    valence/arousal ``(n,)``)."""
    model = prediction_model_of(model)
    heads = model_metadata(model)["outputs"]
    parts = [
        {head: np.asarray(value) for head, value in model_outputs(model, batch).items()}
        for batch in batches(np.asarray(images, np.uint8), batch_size, "Keras outputs")
    ]
    return concatenate_outputs(parts, heads)
