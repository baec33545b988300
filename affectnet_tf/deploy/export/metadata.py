"""The metadata embedded in every exported file: the model's metadata (class names, image size,
preprocessing, heads) plus the input's format and the outputs' shapes.

Where it travels: a SavedModel holds it in ``assets.extra/affectnet_tf_metadata.json`` (TF
Serving's folder for extra files), a TFLite flatbuffer as its metadata entry
:data:`METADATA_NAME`, an ONNX model in its ``metadata_props`` (the whole record under
:data:`METADATA_NAME`, and ``class_names``, ``image_size`` and ``input_format`` on their own).
"""

import json
import os

import numpy as np

from affectnet_tf.deploy.export.converters import ExportError, optional_import
from affectnet_tf.modeling.models import model_metadata
from affectnet_tf.version import __version__

__all__ = [
    "METADATA_NAME",
    "SAVED_MODEL_METADATA_FILE",
    "export_metadata",
    "write_saved_model_metadata",
    "read_saved_model_metadata",
    "with_tflite_metadata",
    "read_tflite_metadata",
    "set_onnx_metadata",
    "read_onnx_metadata",
]

#: Name of the metadata entry in a TFLite flatbuffer (and key in an ONNX model's properties).
METADATA_NAME = "affectnet_tf.metadata"
#: Where a SavedModel holds the metadata, relative to its folder.
SAVED_MODEL_METADATA_FILE = os.path.join("assets.extra", "affectnet_tf_metadata.json")


def export_metadata(model, input_size=None):
    """The model's metadata plus what a user of the exported file needs: the input's format
    and the outputs' shapes.

    Args:
        model: a prediction model of :func:`affectnet_tf.build_model`.
        input_size: the side of the fixed-size input of TFLite and ONNX (``None``: any size,
            the SavedModel).
    """
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


def write_saved_model_metadata(path, info):
    """Writes ``info`` as JSON into the SavedModel folder ``path``
    (:data:`SAVED_MODEL_METADATA_FILE`)."""
    extra = os.path.join(os.fspath(path), SAVED_MODEL_METADATA_FILE)
    os.makedirs(os.path.dirname(extra), exist_ok=True)
    with open(extra, "w", encoding="utf-8") as stream:
        json.dump(info, stream, indent=2)


def read_saved_model_metadata(path):
    """The metadata dict of a SavedModel written by
    :func:`affectnet_tf.deploy.export.savedmodel.export_saved_model`.

    Raises:
        ExportError: the folder holds no metadata file.
    """
    extra = os.path.join(os.fspath(path), SAVED_MODEL_METADATA_FILE)
    if not os.path.isfile(extra):
        raise ExportError(f"{path} is not a SavedModel of affectnet_tf: {extra} is missing.")
    with open(extra, encoding="utf-8") as stream:
        return json.load(stream)


def with_tflite_metadata(flatbuffer, info):
    """The flatbuffer with a metadata entry :data:`METADATA_NAME` holding ``info`` as JSON
    (an earlier entry of that name replaced)."""
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
    """The metadata dict stored in a ``.tflite`` file (a path, or its bytes) by
    :func:`affectnet_tf.deploy.export.tflite.export_tflite`.

    Raises:
        ExportError: the flatbuffer has no :data:`METADATA_NAME` entry.
    """
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


def set_onnx_metadata(model_proto, info, input_size):
    """Replaces the ``metadata_props`` of an ONNX ``ModelProto`` by ``info`` (see the module's
    docstring; ``image_size`` is the side of the model's input, ``input_size``) and names the
    producer."""
    del model_proto.metadata_props[:]
    properties = {
        METADATA_NAME: json.dumps(info),
        "class_names": json.dumps(info["class_names"]),
        "image_size": str(int(input_size)),
        "input_format": info["input_format"],
    }
    for key, value in properties.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    model_proto.producer_name = "affectnet-tf"
    model_proto.producer_version = __version__


def read_onnx_metadata(path):
    """The metadata dict stored in an ONNX file by
    :func:`affectnet_tf.deploy.export.onnx.export_onnx`.

    Raises:
        ExportError: the model has no :data:`METADATA_NAME` property.
    """
    onnx = optional_import("onnx")

    model_proto = onnx.load(os.fspath(path), load_external_data=False)
    for entry in model_proto.metadata_props:
        if entry.key == METADATA_NAME:
            return json.loads(entry.value)
    raise ExportError(f"{path} has no {METADATA_NAME} property (not exported by affectnet_tf).")
