"""Export a trained model to SavedModel, TFLite (LiteRT) and ONNX: ``python -m affectnet_tf.export``.

```bash
python -m affectnet_tf.export --model-dir RUN --format saved_model|tflite|onnx [--output PATH]
    [--quantization float32 float16 int8] [--check-data selection] [--calibration-data train]
```

Every format is checked after it is written, by running the file in its own runtime on held-out
images and comparing with the Keras model (the check fails the command when a threshold is not
met; ``--no-check`` skips it):

* **SavedModel** (for TF Serving; ``RUN/export/saved_model/1`` by default, the version folder
  TF Serving expects). Signatures: ``serving_default`` takes ``image_bytes``, a batch of encoded
  JPEG/PNG images (decoded by content and resized with
  :func:`affectnet_tf.data.images.decode_image` and :func:`~affectnet_tf.data.images.resize_image`, the
  package's one decode path), and ``images`` takes ``images``, RGB ``uint8``
  ``[batch, height, width, 3]`` of any size (resized inside the model the same way). Outputs
  named per head: ``expression`` ``[batch, K]`` probabilities in ``class_names`` order,
  ``valence`` and ``arousal`` ``[batch]``. The metadata (class names, image size,
  preprocessing, heads) is in ``assets.extra/affectnet_tf_metadata.json`` (TF Serving's folder
  for extra files; :func:`read_saved_model_metadata` reads it). Check: maximum absolute difference under
  :data:`MAX_ABS_DIFF` on every output, through both signatures.
* **TFLite** in ``float32``, ``float16`` (weights) and ``int8`` (full-integer kernels calibrated
  on a representative set of the run's training images; input stays ``uint8`` and outputs
  ``float32``), ``RUN/export/model_<quantization>.tflite``. The input is RGB ``uint8``
  ``[batch, S, S, 3]`` already resized to the model's side ``S`` (``image_size`` in the
  metadata; :func:`~affectnet_tf.data.images.resize_image` does it as training did), one signature
  ``serving_default`` with the outputs above. The metadata travels inside the flatbuffer (entry
  :data:`METADATA_NAME`, read with :func:`read_tflite_metadata`). Check in the LiteRT
  interpreter (``ai-edge-litert``): top-1 agreement with the Keras model at least
  :data:`MIN_TOP1_AGREEMENT` (99.5% for float32 and float16, 97% for int8), and the mean
  absolute difference of valence and arousal under :data:`MAX_VA_MEAN_ABS_DIFF`.
* **ONNX** (opset :data:`ONNX_OPSET`, which onnxruntime 1.17 and later run), converted by
  ``tf2onnx``, ``RUN/export/model.onnx``: the same input and outputs as TFLite, class names and
  the metadata in the model's ``metadata_props``. Check with ``onnxruntime``: maximum absolute
  difference under :data:`MAX_ABS_DIFF`.

The check images are the run's selection images by default (held out from training; the test
images are not needed to check a conversion), read from the run's dataset as
``python -m affectnet_tf.evaluate`` reads them; ``--check-data`` and ``--calibration-data`` take
another ``SPLIT[:SUBSET]`` of that dataset or a folder of image files. A crowd run exports its
prediction model (``model.keras``); given ``crowd_model.keras``, the prediction model inside it
is exported. An op that a format cannot take gives an :class:`ExportError` naming it.

Each export writes a JSON record of its check beside the file (``<file>.check.json``; for a
SavedModel, ``check.json`` in its folder's parent).
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from affectnet_tf.data.images import decode_image, load_image_file, resize_image
from affectnet_tf.files import atomic_open, write_atomically, write_json
from affectnet_tf.modeling.backbones import ModelMetadata
from affectnet_tf.modeling.models import model_metadata
from affectnet_tf.predict import load_run_model
from affectnet_tf.version import __version__

__all__ = [
    "FORMATS",
    "QUANTIZATIONS",
    "ONNX_OPSET",
    "METADATA_NAME",
    "MAX_ABS_DIFF",
    "MIN_TOP1_AGREEMENT",
    "MAX_VA_MEAN_ABS_DIFF",
    "ExportError",
    "ParityError",
    "prediction_model_of",
    "export_metadata",
    "export_saved_model",
    "export_tflite",
    "export_onnx",
    "read_saved_model_metadata",
    "read_tflite_metadata",
    "read_onnx_metadata",
    "file_size",
    "run_keras",
    "run_saved_model",
    "run_tflite",
    "run_onnx",
    "compare_outputs",
    "check_parity",
    "check_images",
    "export_run",
    "build_parser",
    "main",
]

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = ("float32", "float16", "int8")
#: ONNX opset of the exported graphs: run by onnxruntime 1.17 and later.
ONNX_OPSET = 17
#: Name of the metadata entry in a TFLite flatbuffer (and key in an ONNX model's properties).
METADATA_NAME = "affectnet_tf.metadata"
SAVED_MODEL_METADATA_FILE = os.path.join("assets.extra", "affectnet_tf_metadata.json")
#: Largest absolute difference allowed between the Keras model and a SavedModel, an ONNX model.
MAX_ABS_DIFF = 1e-4
#: Smallest top-1 agreement with the Keras model allowed for each TFLite quantization.
MIN_TOP1_AGREEMENT = {"float32": 0.995, "float16": 0.995, "int8": 0.97}
#: Largest mean absolute difference of valence / arousal (range [-1, 1]) for each quantization.
MAX_VA_MEAN_ABS_DIFF = {"float32": 1e-3, "float16": 0.02, "int8": 0.1}
HEADS = ("expression", "valence", "arousal")


def _optional(module):
    """Imports a library of the ``export`` extra, or says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"Exporting needs {module.split('.')[0]}, which the package's `export` extra "
            f"installs: pip install 'affectnet-tf[export]' ({error})"
        ) from error


class ExportError(RuntimeError):
    """A model that cannot be exported to a format (the message names the ops), or bad input."""


class ParityError(ExportError):
    """An exported file whose outputs differ from the Keras model's beyond the thresholds."""


# ---------------------------------------------------------------------------------------------
# The model and its serving functions


def _has_metadata(model):
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
    one inside, for a crowd training model)."""
    return prediction_model_of(load_run_model(model_dir))


def export_metadata(model, input_size=None):
    """The model's metadata plus what a user of the exported file needs: the input's format
    and the outputs' shapes. ``input_size`` is the side of the fixed-size input of TFLite and
    ONNX (``None``: any size, the SavedModel)."""
    info = model_metadata(model)
    heads = list(info["outputs"])
    info["exported_with"] = f"affectnet-tf {__version__}"
    info["input_format"] = "RGB uint8, channels last" + (
        f", {input_size}x{input_size} (resize with {info['resize_method']})"
        if input_size
        else ", any size (resized inside)"
    )
    info["output_shapes"] = {
        head: ["batch", int(info["num_classes"])] if head == "expression" else ["batch"]
        for head in heads
    }
    return info


def _outputs(model, images):
    """``{head: tensor}``: ``expression`` ``(batch, K)``, ``valence``/``arousal`` ``(batch,)``."""
    heads = model_metadata(model)["outputs"]
    result = model(images, training=False)
    if not isinstance(result, dict):
        result = {heads[0]: result}
    return {
        head: tf.reshape(result[head], [-1]) if head != "expression" else result[head]
        for head in heads
    }


def _decode_batch(image_bytes, image_size):
    def decode(encoded):
        return resize_image(decode_image(encoded), image_size)

    return tf.map_fn(
        decode,
        image_bytes,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
    )


@contextlib.contextmanager
def _tf_warnings_hidden():
    """Hides what a converter writes besides its result: TensorFlow's Python warnings
    (deprecation notices of the TF1 graph tools the converters use), Python warnings, and the
    C++ notices on the standard error (the TFLite converter's errors are in its exception)."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        logger.setLevel(level)


def _archive(model, endpoints):
    """A ``keras.export.ExportArchive`` tracking ``model`` with ``{name: (fn, spec)}``.

    The archive (rather than ``tf.saved_model.save`` of a module) turns Keras 3 variables into
    resource variables that the TFLite converter freezes.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (function, spec) in endpoints.items():
        archive.add_endpoint(name, function, input_signature=spec)
    return archive


def _fixed_size_archive(model, input_size):
    size = int(input_size)

    def serve(image):
        return _outputs(model, image)

    spec = [tf.TensorSpec([None, size, size, 3], tf.uint8, name="image")]
    return _archive(model, {"serving_default": (serve, spec)}), serve, spec


# ---------------------------------------------------------------------------------------------
# Writers and metadata readers


def export_saved_model(model, path):
    """Writes the SavedModel of the module docstring to the folder ``path`` (replaced).

    Returns:
        ``path``.
    """
    model = prediction_model_of(model)
    info = export_metadata(model)
    size = int(info["image_size"])

    def serve_bytes(image_bytes):
        return _outputs(model, _decode_batch(image_bytes, size))

    def serve_images(images):
        return _outputs(model, images)

    archive = _archive(
        model,
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
    with _tf_warnings_hidden():  # TF's notice on the default graph's lookup tables (not ours)
        archive.write_out(path, verbose=False)
    extra = os.path.join(path, SAVED_MODEL_METADATA_FILE)
    os.makedirs(os.path.dirname(extra), exist_ok=True)
    with open(extra, "w", encoding="utf-8") as stream:
        json.dump(info, stream, indent=2)
    return path


def read_saved_model_metadata(path):
    """The metadata dict of a SavedModel written by :func:`export_saved_model`."""
    extra = os.path.join(os.fspath(path), SAVED_MODEL_METADATA_FILE)
    if not os.path.isfile(extra):
        raise ExportError(f"{path} is not a SavedModel of affectnet_tf: {extra} is missing.")
    with open(extra, encoding="utf-8") as stream:
        return json.load(stream)


def _unsupported_ops(message):
    """Op names out of a converter's error message (TFLite's and tf2onnx's wordings)."""
    names = []
    for listed in re.findall(r"(?:Custom|Flex|Unsupported) ops: ([^\n]+)", message):
        names += re.findall(r"(\w+)'?:\s*\d+", listed) or re.split(r",\s*", listed.strip())
    names += re.findall(r"'tf\.(\w+)' op is neither", message)
    found = []
    for name in names:
        name = name.strip().removeprefix("Flex")
        if name and name not in found:
            found.append(name)
    return found


def _first_error_line(message):
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return (errors or lines or ["(no message)"])[0][:300]


def _tflite_converter(saved_model_dir, quantization, representative_images):
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


def _with_tflite_metadata(flatbuffer, info):
    """The flatbuffer with a metadata entry :data:`METADATA_NAME` holding ``info`` as JSON."""
    from tensorflow.lite.tools import flatbuffer_utils

    schema = flatbuffer_utils.schema_fb
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(info).encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_NAME] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_tflite_metadata(path_or_bytes):
    """The metadata dict stored in a ``.tflite`` file by :func:`export_tflite`."""
    from tensorflow.lite.tools import flatbuffer_utils

    if isinstance(path_or_bytes, bytes | bytearray):
        content, name = bytes(path_or_bytes), "the flatbuffer"
    else:
        with open(path_or_bytes, "rb") as stream:
            content, name = stream.read(), os.fspath(path_or_bytes)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    for entry in model.metadata or []:
        entry_name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if entry_name == METADATA_NAME:
            return json.loads(bytes(model.buffers[entry.buffer].data).decode("utf-8"))
    raise ExportError(f"{name} has no {METADATA_NAME} entry (not exported by affectnet_tf).")


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
    archive, _, _ = _fixed_size_archive(model, size)
    with tempfile.TemporaryDirectory(prefix="affectnet_tf_tflite_") as folder:
        with _tf_warnings_hidden():
            archive.write_out(folder, verbose=False)
        converter = _tflite_converter(folder, quantization, representative_images)
        try:
            with _tf_warnings_hidden():
                flatbuffer = converter.convert()
        except Exception as error:  # ConverterError and friends; the message lists the ops
            message = str(error)
            ops = _unsupported_ops(message)
            named = f"op(s) {', '.join(ops)}" if ops else "an op"
            raise ExportError(
                f"The {info['backbone']} model cannot be exported to TFLite {quantization}: "
                f"{named} not supported by TFLite's builtin "
                f"{'int8 ' if quantization == 'int8' else ''}kernels"
                + ("." if ops else f". Converter: {_first_error_line(message)}")
            ) from None
    flatbuffer = _with_tflite_metadata(flatbuffer, info)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_open(path, "wb") as stream:
        stream.write(flatbuffer)
    return path


def _onnx_unknown_nodes(model_proto):
    """Node types of an ONNX graph that ONNX does not define (tf2onnx leaves a TF op that it
    cannot convert in the graph under its TF name)."""
    onnx = _optional("onnx")

    found = []
    for node in model_proto.graph.node:
        if node.domain == "com.microsoft":  # onnxruntime's contrib ops
            continue
        if not onnx.defs.has(node.op_type, node.domain or "") and node.op_type not in found:
            found.append(node.op_type)
    return found


def _rename_onnx_tensor(model_proto, old, new):
    graph = model_proto.graph
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.input, *graph.output):
        if value.name == old:
            value.name = new


def export_onnx(model, path, opset=ONNX_OPSET, input_size=None):
    """Writes an ONNX model (module docstring) to ``path`` with ``tf2onnx``.

    Raises:
        ExportError: ops that have no ONNX conversion (named).
    """
    onnx = _optional("onnx")
    tf2onnx = _optional("tf2onnx")

    model = prediction_model_of(model)
    size = int(input_size or model_metadata(model)["image_size"])
    info = export_metadata(model, size)
    _, serve, spec = _fixed_size_archive(model, size)
    # Frozen here rather than by tf2onnx.convert.from_function, which leaves the constants a
    # function captures (the mean and variance of EfficientNet's Normalization layer) as graph
    # inputs; this is the freezing tf2onnx itself applies to variables.
    concrete = tf.function(serve, input_signature=spec).get_concrete_function()
    with _tf_warnings_hidden():  # TF's notice on the default graph's lookup tables (not ours)
        frozen = convert_variables_to_constants_v2(concrete)
    outputs = dict(zip(sorted(concrete.structured_outputs), frozen.outputs))
    logger = tf2onnx.logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel("CRITICAL")  # an unconvertible op is reported below, by name
    try:
        with _tf_warnings_hidden():
            model_proto, _ = tf2onnx.convert.from_graph_def(
                frozen.graph.as_graph_def(),
                input_names=[frozen.inputs[0].name],
                output_names=[tensor.name for tensor in outputs.values()],
                opset=int(opset),
            )
    except Exception as error:
        ops = _unsupported_ops(str(error))
        named = f"op(s) {', '.join(ops)}" if ops else "an op"
        raise ExportError(
            f"The {info['backbone']} model cannot be exported to ONNX opset {opset}: {named} "
            "has no ONNX conversion"
            + ("." if ops else f". tf2onnx: {_first_error_line(str(error))}")
        ) from None
    finally:
        logger.setLevel(level)
    _rename_onnx_tensor(model_proto, frozen.inputs[0].name, "image")
    for head, tensor in outputs.items():
        _rename_onnx_tensor(model_proto, tensor.name, head)
    custom = _onnx_unknown_nodes(model_proto)
    if custom:
        calls = sorted(
            node.attr["f"].func.name
            for node in frozen.graph.as_graph_def().node
            if node.op in ("StatefulPartitionedCall", "PartitionedCall")
        )
        if calls:  # a function call TensorFlow kept in the frozen graph: say what it is
            what = (
                "grouped convolutions, which Keras runs as XLA-compiled functions"
                if all("_conv_xla" in name for name in calls)
                else "function calls that TensorFlow did not inline"
            )
            custom = [
                f"{op} ({len(calls)} {what}, e.g. {calls[0]})"
                if op.endswith("PartitionedCall")
                else op
                for op in custom
            ]
        raise ExportError(
            f"The {info['backbone']} model cannot be exported to ONNX opset {opset}: op(s) "
            f"{', '.join(custom)} have no ONNX conversion (tf2onnx)."
        )
    del model_proto.metadata_props[:]
    properties = {
        METADATA_NAME: json.dumps(info),
        "class_names": json.dumps(info["class_names"]),
        "image_size": str(size),
        "input_format": info["input_format"],
    }
    for key, value in properties.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    model_proto.producer_name = "affectnet-tf"
    model_proto.producer_version = __version__
    onnx.checker.check_model(model_proto)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, lambda partial: onnx.save(model_proto, partial))
    return path


def read_onnx_metadata(path):
    """The metadata dict stored in an ONNX file by :func:`export_onnx`."""
    onnx = _optional("onnx")

    model_proto = onnx.load(os.fspath(path), load_external_data=False)
    for entry in model_proto.metadata_props:
        if entry.key == METADATA_NAME:
            return json.loads(entry.value)
    raise ExportError(f"{path} has no {METADATA_NAME} property (not exported by affectnet_tf).")


# ---------------------------------------------------------------------------------------------
# Runners: each format in its own runtime, ``{head: array}`` as the Keras model gives


def _batches(images, batch_size):
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


def _concatenate(parts, heads):
    return {head: np.concatenate([part[head] for part in parts]) for head in heads}


def run_keras(model, images, batch_size=32):
    """The Keras model's ``{head: array}`` on ``uint8`` images (expression ``(n, K)``,
    valence/arousal ``(n,)``)."""
    model = prediction_model_of(model)
    heads = model_metadata(model)["outputs"]
    parts = [
        {head: np.asarray(value) for head, value in _outputs(model, batch).items()}
        for batch in _batches(np.asarray(images, np.uint8), batch_size)
    ]
    return _concatenate(parts, heads)


def run_saved_model(path, images=None, image_bytes=None, batch_size=32):
    """A SavedModel's outputs on ``uint8`` images (signature ``images``) or on encoded
    images (``image_bytes``, a list of bytes, signature ``serving_default``)."""
    loaded = tf.saved_model.load(os.fspath(path))
    if image_bytes is not None:
        function, inputs, key = loaded.signatures["serving_default"], image_bytes, "image_bytes"
    else:
        function, inputs, key = loaded.signatures["images"], np.asarray(images, np.uint8), "images"
    parts = []
    for batch in _batches(inputs, batch_size):
        tensor = tf.constant(list(batch) if key == "image_bytes" else batch)
        parts.append({k: v.numpy() for k, v in function(**{key: tensor}).items()})
    return _concatenate(parts, list(parts[0]))


def run_tflite(path, images, batch_size=32):
    """A TFLite model's outputs in the LiteRT interpreter (``ai_edge_litert``)."""
    Interpreter = _optional("ai_edge_litert.interpreter").Interpreter  # noqa: N806

    interpreter = Interpreter(model_path=os.fspath(path), num_threads=os.cpu_count())
    runner = interpreter.get_signature_runner("serving_default")
    parts = [
        runner(image=np.ascontiguousarray(batch))
        for batch in _batches(np.asarray(images, np.uint8), batch_size)
    ]
    return _concatenate(parts, list(parts[0]))


def run_onnx(path, images, batch_size=32):
    """An ONNX model's outputs in ``onnxruntime`` (CPU)."""
    onnxruntime = _optional("onnxruntime")

    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    heads = [output.name for output in session.get_outputs()]
    parts = [
        dict(zip(heads, session.run(None, {name: batch})))
        for batch in _batches(np.asarray(images, np.uint8), batch_size)
    ]
    return _concatenate(parts, heads)


# ---------------------------------------------------------------------------------------------
# The check


def compare_outputs(reference, candidate):
    """Per-head differences: ``max_abs_diff``, ``mean_abs_diff`` and, for ``expression``,
    ``top1_agreement`` (share of images whose most likely class is the same)."""
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


def check_parity(comparison, fmt, quantization=None):
    """Raises :class:`ParityError` when ``comparison`` misses the format's thresholds
    (module docstring); returns the list of the thresholds met, as text."""
    met, failed = [], []
    for head in HEADS:
        if head not in comparison:
            continue
        values = comparison[head]
        if fmt in ("saved_model", "onnx"):
            rule = (values["max_abs_diff"] < MAX_ABS_DIFF, f"{head} max |diff| < {MAX_ABS_DIFF:g}")
        elif head == "expression":
            need = MIN_TOP1_AGREEMENT[quantization]
            rule = (values["top1_agreement"] >= need, f"top-1 agreement >= {need:.1%}")
        else:
            need = MAX_VA_MEAN_ABS_DIFF[quantization]
            rule = (values["mean_abs_diff"] <= need, f"{head} mean |diff| <= {need:g}")
        (met if rule[0] else failed).append(rule[1])
    if failed:
        name = fmt if quantization is None else f"{fmt} {quantization}"
        raise ParityError(
            f"The {name} export differs from the Keras model on {comparison['images']} "
            f"images: not met: {'; '.join(failed)}. Differences: "
            f"{json.dumps({h: comparison[h] for h in HEADS if h in comparison})}"
        )
    return met


# ---------------------------------------------------------------------------------------------
# Images for calibration and checking


def _folder_images(folder, count, image_size):
    names = sorted(
        name
        for name in os.listdir(folder)
        if name.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".gif"))
    )
    if not names:
        raise ExportError(f"The folder {folder} holds no image files (.jpg, .png, ...).")
    images, skipped = [], []
    for name in names[:count]:
        try:
            images.append(load_image_file(os.path.join(folder, name), image_size))
        except ValueError as error:
            skipped.append(str(error))
    if skipped:
        print(
            f"Skipped {len(skipped)} of {min(count, len(names))} files of {folder} that could "
            f"not be read; first: {skipped[0]}",
            file=sys.stderr,
        )
    if not images:
        raise ExportError(f"No image of {folder} could be read.")
    return np.stack(images)


def check_images(model_dir, data="selection", count=200, image_size=None, data_dir=None):
    """``uint8`` ``(n, image_size, image_size, 3)`` images for calibrating or checking.

    Args:
        model_dir: the run folder (its ``config.yaml`` names the dataset and its roles).
        data: a role of the run (``train``, ``selection``, ``test``), ``SPLIT[:SUBSET]`` of the
            run's dataset, or a folder of image files.
        count: at most this many images (the first of the role in file order).
        image_size: the side (default: the run's model's).
        data_dir: the TFDS data folder (default: the run's).
    """
    from affectnet_tf import evaluate
    from affectnet_tf.data import pipeline as data_module
    from affectnet_tf.training.config import RunConfig, data_roles
    from affectnet_tf.training.run_folder import load_run

    if os.path.isdir(os.fspath(data)):
        return _folder_images(os.fspath(data), count, image_size)
    run = load_run(model_dir)
    if not os.path.isfile(run.config_path):
        raise ExportError(
            f"{run.config_path} does not exist, so the run's data is unknown: give a folder of "
            f"images instead of {data!r}."
        )
    settings = dict(run.settings)
    if data_dir is not None:
        settings["data_dir"] = data_dir
    config = RunConfig.from_dict({**settings, "output_dir": os.fspath(model_dir)})
    roles = data_roles(config)
    if data in ("train", "selection", "test"):
        role = getattr(roles, data)
    else:
        split, _, subset = str(data).partition(":")
        role = type(roles.train)(split, subset or None)
    size = int(image_size or config.resolved_image_size)
    builder = data_module.prepared_builder(
        roles.dataset_name, data_dir=config.data_dir, config=roles.builder_config
    )
    if role.split not in builder.info.splits:
        raise ExportError(
            f"The dataset {roles.dataset_name} has no split {role.split!r}: "
            f"{sorted(builder.info.splits)}."
        )
    table = data_module.load_label_table(builder, role.split)
    rows = (
        data_module.subset_mask(table, role.subset, roles.partition_of(role, config.partition))
        if role.subset
        else np.ones(len(table["file_name"]), bool)
    )
    if rows.sum() > count:
        rows = rows & (np.cumsum(rows) <= count)
    options = dict(split=role.split, image_size=size, batch_size=64)
    images = [batch for batch, _ in evaluate.image_batches(builder, table, rows, {}, options)]
    if not images:
        raise ExportError(f"The {data} data of {roles.dataset_name} ({role}) holds no image.")
    return np.concatenate([np.asarray(batch) for batch in images])


# ---------------------------------------------------------------------------------------------
# The command


def _default_output(model_dir, fmt, quantization=None):
    root = os.fspath(model_dir)
    if not os.path.isdir(root):
        root = os.path.dirname(os.path.abspath(root))
    folder = os.path.join(root, "export")
    if fmt == "saved_model":
        return os.path.join(folder, "saved_model", "1")
    if fmt == "onnx":
        return os.path.join(folder, "model.onnx")
    return os.path.join(folder, f"model_{quantization}.tflite")


def file_size(path):
    """Bytes of a file, or of every file under a folder (a SavedModel)."""
    if os.path.isdir(path):
        return sum(
            os.path.getsize(os.path.join(root, name))
            for root, _, names in os.walk(path)
            for name in names
        )
    return os.path.getsize(path)


def _check_record_path(path, fmt):
    if fmt == "saved_model":
        return os.path.join(os.path.dirname(os.path.abspath(path)), "check.json")
    return f"{path}.check.json"


def _encoded(images):
    return [tf.io.encode_png(image).numpy() for image in images]


def export_run(
    model_dir,
    fmt,
    output=None,
    quantizations=QUANTIZATIONS,
    check=True,
    check_data="selection",
    calibration_data="train",
    count=200,
    calibration_count=200,
    data_dir=None,
    opset=ONNX_OPSET,
    input_size=None,
    log=print,
):
    """Exports a run's model to ``fmt`` and checks it (module docstring).

    Returns:
        A list of records, one per written file: ``format``, ``quantization`` (TFLite),
        ``path``, ``bytes``, ``seconds``, ``check`` (the :func:`compare_outputs` result and the
        thresholds met, or ``None`` with ``check=False``).

    Raises:
        ExportError: a format the model cannot take, missing data; :class:`ParityError` when a
            check fails (the file stays, so that it can be inspected).
    """
    if fmt not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}. Received: format={fmt!r}")
    unknown = [q for q in quantizations if q not in QUANTIZATIONS]
    if unknown:
        raise ValueError(
            f"`quantization` takes {', '.join(QUANTIZATIONS)}. Received: quantization={unknown}"
        )
    model = load_export_model(model_dir)
    info = model_metadata(model)
    size = int(input_size or info["image_size"])
    if fmt == "saved_model" and input_size:
        raise ValueError("--input-size applies to tflite and onnx (a SavedModel takes any size).")
    if output is not None and fmt == "tflite" and len(quantizations) > 1:
        raise ValueError(
            "--output names one file: with several --quantization values, leave it out "
            "(files RUN/export/model_<quantization>.tflite)."
        )
    images = None
    if check:
        images = check_images(model_dir, check_data, count, size, data_dir)
        log(f"Checking on {len(images)} images ({check_data}).")
        reference = run_keras(model, images)
    records = []
    jobs = [None] if fmt != "tflite" else list(quantizations)
    for quantization in jobs:
        path = output or _default_output(model_dir, fmt, quantization)
        start = time.perf_counter()
        if fmt == "saved_model":
            export_saved_model(model, path)
        elif fmt == "onnx":
            export_onnx(model, path, opset=opset, input_size=size)
        else:
            calibration = None
            if quantization == "int8":
                calibration = check_images(
                    model_dir, calibration_data, calibration_count, size, data_dir
                )
                log(f"Calibrating int8 on {len(calibration)} images ({calibration_data}).")
            export_tflite(model, path, quantization, calibration, input_size=size)
        seconds = time.perf_counter() - start
        name = fmt if quantization is None else f"{fmt} {quantization}"
        record = {
            "format": fmt,
            "quantization": quantization,
            "path": os.path.abspath(path),
            "bytes": file_size(path),
            "seconds": round(seconds, 2),
            "check": None,
        }
        records.append(record)
        log(f"Wrote {name}: {path} ({record['bytes'] / 1e6:.2f} MB, {seconds:.1f} s)")
        if not check:
            continue
        if fmt == "saved_model":
            comparisons = {
                "images": compare_outputs(reference, run_saved_model(path, images)),
                "serving_default": compare_outputs(
                    reference, run_saved_model(path, image_bytes=_encoded(images))
                ),
            }
        elif fmt == "onnx":
            comparisons = {"": compare_outputs(reference, run_onnx(path, images))}
        else:
            comparisons = {"": compare_outputs(reference, run_tflite(path, images))}
        record["check"] = {"data": str(check_data), "met": []}
        for signature, comparison in comparisons.items():
            record["check"][signature or "outputs"] = comparison
            log(_check_line(f"{name} {signature}".strip(), comparison))
        try:
            for comparison in comparisons.values():
                record["check"]["met"] += check_parity(comparison, fmt, quantization)
        finally:
            write_json(_check_record_path(path, fmt), record)
    return records


def _check_line(name, comparison):
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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.export",
        description=(
            "Export a trained run's model to SavedModel (TF Serving), TFLite (LiteRT) or ONNX, "
            "and check the file in its own runtime against the Keras model."
        ),
    )
    parser.add_argument(
        "--model-dir", required=True, help="run folder holding model.keras (or a .keras file)"
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="the file format")
    parser.add_argument(
        "--output",
        help=(
            "file or folder to write (default: RUN/export/saved_model/1, "
            "RUN/export/model_<quantization>.tflite, RUN/export/model.onnx)"
        ),
    )
    parser.add_argument(
        "--quantization",
        nargs="+",
        choices=QUANTIZATIONS,
        default=list(QUANTIZATIONS),
        help="TFLite variants to write (default: all three)",
    )
    parser.add_argument(
        "--check-data",
        default="selection",
        help=(
            "images the check runs on: a role of the run (train, selection, test), "
            "SPLIT[:SUBSET] of its dataset, or a folder of images (default: selection)"
        ),
    )
    parser.add_argument(
        "--calibration-data",
        default="train",
        help="int8 calibration images, given as --check-data is (default: train)",
    )
    parser.add_argument(
        "--check-count", type=int, default=200, help="images checked at most (default: 200)"
    )
    parser.add_argument(
        "--calibration-count",
        type=int,
        default=200,
        help="int8 calibration images at most (default: 200)",
    )
    parser.add_argument("--data-dir", help="TFDS data folder (default: the run's)")
    parser.add_argument(
        "--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default: {ONNX_OPSET})"
    )
    parser.add_argument(
        "--input-size",
        type=int,
        help=(
            "input side of the TFLite/ONNX model (default: the model's image size; another "
            "side puts the anti-aliased resize into the graph, which neither format takes)"
        ),
    )
    parser.add_argument("--no-check", action="store_true", help="write the file without checking")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        export_run(
            args.model_dir,
            args.format,
            output=args.output,
            quantizations=args.quantization,
            check=not args.no_check,
            check_data=args.check_data,
            calibration_data=args.calibration_data,
            count=args.check_count,
            calibration_count=args.calibration_count,
            data_dir=args.data_dir,
            opset=args.opset,
            input_size=args.input_size,
        )
    except (ExportError, FileNotFoundError, ValueError) as error:
        print(f"Error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
