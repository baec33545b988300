"""The TFLite (LiteRT) export in ``float32``, ``float16`` and ``int8``, and its outputs in the
LiteRT interpreter.

``float16`` stores the weights in half precision; ``int8`` runs full-integer kernels calibrated
on a representative set of images (the run's training images), its input staying ``uint8`` and
its outputs ``float32``. The input is RGB ``uint8`` ``[batch, S, S, 3]`` already resized to the
model's side ``S`` (``image_size`` in the metadata;
:func:`~affectnet_tf.data.images.resize_image` does it as training did), one signature
``serving_default`` with the outputs named per head. The metadata travels inside the
flatbuffer (:func:`~affectnet_tf.deploy.export.metadata.read_tflite_metadata` reads it).
"""

import os
import tempfile

import numpy as np
import tensorflow as tf

from affectnet_tf.deploy.export.converters import (
    ExportError,
    converter_output_hidden,
    first_error_line,
    optional_import,
    unsupported_ops,
)
from affectnet_tf.deploy.export.metadata import export_metadata, with_tflite_metadata
from affectnet_tf.deploy.export.model import (
    batches,
    concatenate_outputs,
    fixed_size_archive,
    prediction_model_of,
)
from affectnet_tf.files import atomic_open
from affectnet_tf.modeling.models import model_metadata

__all__ = ["QUANTIZATIONS", "tflite_converter", "export_tflite", "run_tflite"]

#: The TFLite variants, in the order the command writes them.
QUANTIZATIONS = ("float32", "float16", "int8")


def tflite_converter(saved_model_dir, quantization, representative_images=None):
    """The ``tf.lite.TFLiteConverter`` of a fixed-size SavedModel for one quantization.

    Raises:
        ExportError: ``int8`` without representative images.
        ValueError: an unknown quantization.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=["serving_default"]
    )
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        if representative_images is None or len(representative_images) == 0:
            raise ExportError(
                "int8 quantization needs representative images (calibration data): the run's "
                "training images, or --calibration-data SPLIT[:SUBSET] / a folder of images."
            )
        images = np.asarray(representative_images, np.uint8)

        def representative():
            for image in images:
                yield {"image": image[None]}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif quantization != "float32":
        raise ValueError(
            f"`quantization` must be one of {QUANTIZATIONS}. Received: quantization={quantization!r}"
        )
    return converter


def _convert(converter, backbone, quantization):
    """The converter's flatbuffer, or an :class:`ExportError` naming the ops it cannot take."""
    try:
        with converter_output_hidden():
            return converter.convert()
    except Exception as error:  # ConverterError and friends; the message lists the ops
        message = str(error)
        ops = unsupported_ops(message)
        named = f"op(s) {', '.join(ops)}" if ops else "an op"
        raise ExportError(
            f"The {backbone} model cannot be exported to TFLite {quantization}: "
            f"{named} not supported by TFLite's builtin "
            f"{'int8 ' if quantization == 'int8' else ''}kernels"
            + ("." if ops else f". Converter: {first_error_line(message)}")
        ) from None


def export_tflite(model, path, quantization="float32", representative_images=None, input_size=None):
    """Writes a TFLite model (module docstring) to ``path``.

    Args:
        model: a prediction model (or a crowd training model holding one).
        path: the ``.tflite`` file.
        quantization: ``float32``, ``float16`` or ``int8``.
        representative_images: ``uint8`` ``(n, S, S, 3)`` images for the ``int8`` calibration
            (a hundred or more of the training images).
        input_size: input side (default: the model's ``image_size``; another side puts the
            anti-aliased resize into the graph, which TFLite's builtin ops cannot take).

    Returns:
        ``path``.

    Raises:
        ExportError: an op TFLite cannot take (named), or ``int8`` without images.
    """
    model = prediction_model_of(model)
    size = int(input_size or model_metadata(model)["image_size"])
    info = dict(export_metadata(model, size), quantization=quantization)
    archive, _, _ = fixed_size_archive(model, size)
    with tempfile.TemporaryDirectory(prefix="affectnet_tf_tflite_") as folder:
        with converter_output_hidden():
            archive.write_out(folder, verbose=False)
        converter = tflite_converter(folder, quantization, representative_images)
        flatbuffer = _convert(converter, info["backbone"], quantization)
    flatbuffer = with_tflite_metadata(flatbuffer, info)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_open(path, "wb") as stream:
        stream.write(flatbuffer)
    return path


def run_tflite(path, images, batch_size=32):
    """A TFLite model's ``{head: array}`` in the LiteRT interpreter (``ai_edge_litert``)."""
    Interpreter = optional_import("ai_edge_litert.interpreter").Interpreter  # noqa: N806

    interpreter = Interpreter(model_path=os.fspath(path), num_threads=os.cpu_count())
    runner = interpreter.get_signature_runner("serving_default")
    parts = [
        runner(image=np.ascontiguousarray(batch))
        for batch in batches(np.asarray(images, np.uint8), batch_size, "TFLite outputs")
    ]
    return concatenate_outputs(parts, list(parts[0]))
