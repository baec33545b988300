"""The check of an exported file: its outputs in its own runtime against the Keras model's on
the same images, and the thresholds each format must meet.

* SavedModel and ONNX: maximum absolute difference under :data:`MAX_ABS_DIFF` on every output
  (a SavedModel through both of its signatures);
* TFLite: top-1 agreement with the Keras model at least :data:`MIN_TOP1_AGREEMENT` (99.5% for
  float32 and float16, 97% for int8), and the mean absolute difference of valence and arousal
  under :data:`MAX_VA_MEAN_ABS_DIFF`.
"""

import json

import numpy as np
import tensorflow as tf

from affectnet_tf.deploy.export import onnx as onnx_export
from affectnet_tf.deploy.export import savedmodel, tflite
from affectnet_tf.deploy.export.converters import ExportError

__all__ = [
    "HEADS",
    "MAX_ABS_DIFF",
    "MIN_TOP1_AGREEMENT",
    "MAX_VA_MEAN_ABS_DIFF",
    "ParityError",
    "compare_outputs",
    "check_parity",
    "describe_comparison",
    "compare_export",
]

#: The heads a model may have, in the order the checks report them.
HEADS = ("expression", "valence", "arousal")
#: Largest absolute difference allowed between the Keras model and a SavedModel, an ONNX model.
MAX_ABS_DIFF = 1e-4
#: Smallest top-1 agreement with the Keras model allowed for each TFLite quantization.
MIN_TOP1_AGREEMENT = {"float32": 0.995, "float16": 0.995, "int8": 0.97}
#: Largest mean absolute difference of valence / arousal (range [-1, 1]) for each quantization.
MAX_VA_MEAN_ABS_DIFF = {"float32": 1e-3, "float16": 0.02, "int8": 0.1}


class ParityError(ExportError):
    """An exported file whose outputs differ from the Keras model's beyond the thresholds."""


def compare_outputs(reference, candidate):
    """Per-head differences: ``max_abs_diff``, ``mean_abs_diff`` and, for ``expression``,
    ``top1_agreement`` (share of images whose most likely class is the same).

    Args:
        reference: the Keras model's ``{head: array}``
            (:func:`affectnet_tf.deploy.export.model.run_keras`).
        candidate: the exported file's ``{head: array}`` on the same images.

    Raises:
        ParityError: the exported file lacks an output of the reference.
    """
    result = {"images": int(len(next(iter(reference.values()))))}
    for head, expected in reference.items():
        if head not in candidate:
            raise ParityError(f"The exported model has no output {head!r}: {sorted(candidate)}")
        got = np.asarray(candidate[head], np.float64).reshape(np.shape(expected))
        difference = np.abs(got - np.asarray(expected, np.float64))
        result[head] = {
            "max_abs_diff": float(difference.max()) if difference.size else 0.0,
            "mean_abs_diff": float(difference.mean()) if difference.size else 0.0,
        }
        if head == "expression":
            agree = np.argmax(got, axis=1) == np.argmax(expected, axis=1)
            result[head]["top1_agreement"] = float(agree.mean()) if agree.size else 1.0
    return result


def _rule(fmt, quantization, head, values):
    """``(met, text)`` of the threshold of one head of one format."""
    if fmt in ("saved_model", "onnx"):
        return values["max_abs_diff"] < MAX_ABS_DIFF, f"{head} max |diff| < {MAX_ABS_DIFF:g}"
    if head == "expression":
        need = MIN_TOP1_AGREEMENT[quantization]
        return values["top1_agreement"] >= need, f"top-1 agreement >= {need:.1%}"
    need = MAX_VA_MEAN_ABS_DIFF[quantization]
    return values["mean_abs_diff"] <= need, f"{head} mean |diff| <= {need:g}"


def check_parity(comparison, fmt, quantization=None):
    """The thresholds of the format (module docstring) that ``comparison`` meets, as text.

    Args:
        comparison: a :func:`compare_outputs` result.
        fmt: ``saved_model``, ``tflite`` or ``onnx``.
        quantization: the TFLite variant (``float32``, ``float16``, ``int8``).

    Raises:
        ParityError: a threshold is not met (the message names it, with the differences).
    """
    met, failed = [], []
    for head in HEADS:
        if head in comparison:
            passed, text = _rule(fmt, quantization, head, comparison[head])
            (met if passed else failed).append(text)
    if failed:
        name = fmt if quantization is None else f"{fmt} {quantization}"
        raise ParityError(
            f"The {name} export differs from the Keras model on {comparison['images']} "
            f"images: not met: {'; '.join(failed)}. Differences: "
            f"{json.dumps({h: comparison[h] for h in HEADS if h in comparison})}"
        )
    return met


def describe_comparison(name, comparison):
    """One status line of a :func:`compare_outputs` result of the export ``name``."""
    parts = []
    for head in HEADS:
        if head not in comparison:
            continue
        values = comparison[head]
        if head == "expression":
            parts.append(
                f"top-1 agreement {values['top1_agreement']:.2%}, "
                f"max |diff| {values['max_abs_diff']:.2g}"
            )
        else:
            parts.append(
                f"{head} mean |diff| {values['mean_abs_diff']:.2g} "
                f"(max {values['max_abs_diff']:.2g})"
            )
    return f"Check {name} vs Keras on {comparison['images']} images: " + "; ".join(parts)


def compare_export(fmt, path, images, reference):
    """The exported file at ``path`` run in its own runtime on ``images`` and compared with the
    Keras model's ``reference`` outputs (a progress bar over the batches of each run).

    Returns:
        ``{signature: comparison}``: for a SavedModel ``images`` and ``serving_default`` (the
        images encoded as PNG), else one comparison under ``""``.
    """
    if fmt == "saved_model":
        encoded = [tf.io.encode_png(image).numpy() for image in images]
        return {
            "images": compare_outputs(reference, savedmodel.run_saved_model(path, images)),
            "serving_default": compare_outputs(
                reference, savedmodel.run_saved_model(path, image_bytes=encoded)
            ),
        }
    if fmt == "onnx":
        return {"": compare_outputs(reference, onnx_export.run_onnx(path, images))}
    return {"": compare_outputs(reference, tflite.run_tflite(path, images))}
