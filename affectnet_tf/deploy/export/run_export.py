"""One run folder to one format, every file written checked: what ``python -m
affectnet_tf.export`` does.

The check images are the run's selection images by default (held out from training; the test
images are not needed to check a conversion), read from the run's dataset
(:func:`~affectnet_tf.deploy.export.check_data.check_images`); the ``int8`` calibration images
its training images. A crowd run exports its prediction model (``model.keras``); given
``crowd_model.keras``, the prediction model inside it is exported. Each export writes a JSON
record of its check beside the file (``<file>.check.json``; for a SavedModel, ``check.json`` in
its folder's parent).
"""

import logging
import os
import time

from affectnet_tf.deploy.export import onnx as onnx_export
from affectnet_tf.deploy.export import parity, savedmodel, tflite
from affectnet_tf.deploy.export.check_data import check_images
from affectnet_tf.deploy.export.model import load_export_model, run_keras
from affectnet_tf.files import write_json
from affectnet_tf.modeling.models import model_metadata

__all__ = ["FORMATS", "default_output", "check_record_path", "file_size", "export_run"]

logger = logging.getLogger(__name__)

#: The formats, as ``--format`` names them.
FORMATS = ("saved_model", "tflite", "onnx")


def default_output(model_dir, fmt, quantization=None):
    """Where the export of ``fmt`` goes without ``--output``: ``RUN/export/saved_model/1``,
    ``RUN/export/model_<quantization>.tflite``, ``RUN/export/model.onnx`` (``RUN``: the folder
    of ``model_dir``, or of the ``.keras`` file it names)."""
    root = os.fspath(model_dir)
    if not os.path.isdir(root):
        root = os.path.dirname(os.path.abspath(root))
    folder = os.path.join(root, "export")
    if fmt == "saved_model":
        return os.path.join(folder, "saved_model", "1")
    if fmt == "onnx":
        return os.path.join(folder, "model.onnx")
    return os.path.join(folder, f"model_{quantization}.tflite")


def check_record_path(path, fmt):
    """The JSON record of the check of the export at ``path``."""
    if fmt == "saved_model":
        return os.path.join(os.path.dirname(os.path.abspath(path)), "check.json")
    return f"{path}.check.json"


def file_size(path):
    """Bytes of a file, or of every file under a folder (a SavedModel)."""
    if os.path.isdir(path):
        return sum(
            os.path.getsize(os.path.join(root, name))
            for root, _, names in os.walk(path)
            for name in names
        )
    return os.path.getsize(path)


def _validate(fmt, quantizations, output, input_size):
    """Raises ``ValueError`` for a combination of arguments :func:`export_run` cannot take."""
    if fmt not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}. Received: format={fmt!r}")
    unknown = [q for q in quantizations if q not in tflite.QUANTIZATIONS]
    if unknown:
        raise ValueError(
            f"`quantization` takes {', '.join(tflite.QUANTIZATIONS)}. "
            f"Received: quantization={unknown}"
        )
    if fmt == "saved_model" and input_size:
        raise ValueError("--input-size applies to tflite and onnx (a SavedModel takes any size).")
    if output is not None and fmt == "tflite" and len(quantizations) > 1:
        raise ValueError(
            "--output names one file: with several --quantization values, leave it out "
            "(files RUN/export/model_<quantization>.tflite)."
        )


def _write(model, fmt, path, quantization, size, options):
    """Writes one file; returns its record (``check`` still ``None``)."""
    start = time.perf_counter()
    if fmt == "saved_model":
        savedmodel.export_saved_model(model, path)
    elif fmt == "onnx":
        onnx_export.export_onnx(model, path, opset=options["opset"], input_size=size)
    else:
        calibration = None
        if quantization == "int8":
            data = options["calibration_data"]
            calibration = check_images(
                options["model_dir"], data, options["calibration_count"], size, options["data_dir"]
            )
            logger.info("Calibrating int8 on %d images (%s).", len(calibration), data)
        tflite.export_tflite(model, path, quantization, calibration, input_size=size)
    seconds = time.perf_counter() - start
    record = {
        "format": fmt,
        "quantization": quantization,
        "path": os.path.abspath(path),
        "bytes": file_size(path),
        "seconds": round(seconds, 2),
        "check": None,
    }
    name = fmt if quantization is None else f"{fmt} {quantization}"
    logger.info("Wrote %s: %s (%.2f MB, %.1f s)", name, path, record["bytes"] / 1e6, seconds)
    return record


def _check(record, images, reference, check_data):
    """Runs the written file against the Keras model, fills ``record["check"]`` and writes
    the record beside the file (also when a threshold is missed: :class:`ParityError`)."""
    fmt, quantization, path = record["format"], record["quantization"], record["path"]
    name = fmt if quantization is None else f"{fmt} {quantization}"
    comparisons = parity.compare_export(fmt, path, images, reference)
    record["check"] = {"data": str(check_data), "met": []}
    for signature, comparison in comparisons.items():
        record["check"][signature or "outputs"] = comparison
        logger.info(parity.describe_comparison(f"{name} {signature}".strip(), comparison))
    try:
        for comparison in comparisons.values():
            record["check"]["met"] += parity.check_parity(comparison, fmt, quantization)
    finally:
        write_json(check_record_path(path, fmt), record)


def export_run(
    model_dir,
    fmt,
    output=None,
    quantizations=tflite.QUANTIZATIONS,
    check=True,
    check_data="selection",
    calibration_data="train",
    count=200,
    calibration_count=200,
    data_dir=None,
    opset=onnx_export.ONNX_OPSET,
    input_size=None,
):
    """Exports a run's model to ``fmt`` and checks each file (module docstring); status lines
    go to the ``logging`` logger of the module.

    Returns:
        A list of records, one per written file: ``format``, ``quantization`` (TFLite),
        ``path``, ``bytes``, ``seconds``, ``check`` (the
        :func:`~affectnet_tf.deploy.export.parity.compare_outputs` result and the thresholds
        met, or ``None`` with ``check=False``).

    Raises:
        ExportError: a format the model cannot take, missing data;
            :class:`~affectnet_tf.deploy.export.parity.ParityError` when a check fails (the
            file stays, so that it can be inspected).
    """
    _validate(fmt, quantizations, output, input_size)
    model = load_export_model(model_dir)
    size = int(input_size or model_metadata(model)["image_size"])
    images = reference = None
    if check:
        images = check_images(model_dir, check_data, count, size, data_dir)
        logger.info("Checking on %d images (%s).", len(images), check_data)
        reference = run_keras(model, images)
    options = dict(
        model_dir=model_dir,
        calibration_data=calibration_data,
        calibration_count=calibration_count,
        data_dir=data_dir,
        opset=opset,
    )
    records = []
    for quantization in [None] if fmt != "tflite" else list(quantizations):
        path = output or default_output(model_dir, fmt, quantization)
        records.append(_write(model, fmt, path, quantization, size, options))
        if check:
            _check(records[-1], images, reference, check_data)
    return records
