"""The ONNX export (opset :data:`ONNX_OPSET`, converted by ``tf2onnx``), and its outputs in
``onnxruntime``.

The input ``image`` and the outputs are those of the TFLite export (RGB ``uint8``
``[batch, S, S, 3]``, outputs named per head); the class names and the metadata are in the
model's ``metadata_props`` (:func:`~affectnet_tf.deploy.export.metadata.read_onnx_metadata`
reads them). ``tf2onnx``, ``onnx`` and ``onnxruntime`` (the ``export`` extra) are imported when
first used.
"""

import os

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from affectnet_tf.deploy.export.converters import (
    ExportError,
    converter_output_hidden,
    first_error_line,
    optional_import,
    unsupported_ops,
)
from affectnet_tf.deploy.export.metadata import export_metadata, set_onnx_metadata
from affectnet_tf.deploy.export.model import (
    batches,
    concatenate_outputs,
    fixed_size_archive,
    prediction_model_of,
)
from affectnet_tf.files import write_atomically
from affectnet_tf.modeling.models import model_metadata

__all__ = ["ONNX_OPSET", "export_onnx", "run_onnx"]

#: ONNX opset of the exported graphs: run by onnxruntime 1.17 and later.
ONNX_OPSET = 17


def _frozen_graph(model, size):
    """``(frozen, outputs)``: the serving function with its variables as constants, and
    ``{head: output tensor}`` of it.

    Frozen here rather than by ``tf2onnx.convert.from_function``, which leaves the constants a
    function captures (the mean and variance of EfficientNet's Normalization layer) as graph
    inputs; this is the freezing tf2onnx itself applies to variables.
    """
    _, serve, spec = fixed_size_archive(model, size)
    concrete = tf.function(serve, input_signature=spec).get_concrete_function()
    with converter_output_hidden():  # TF's notice on the default graph's lookup tables
        frozen = convert_variables_to_constants_v2(concrete)
    return frozen, dict(zip(sorted(concrete.structured_outputs), frozen.outputs))


def _converted(frozen, outputs, opset, backbone):
    """The ``ModelProto`` tf2onnx makes of the frozen graph, or an :class:`ExportError` naming
    the ops it has no conversion for."""
    tf2onnx = optional_import("tf2onnx")

    logger = tf2onnx.logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel("CRITICAL")  # an unconvertible op is reported below, by name
    try:
        with converter_output_hidden():
            model_proto, _ = tf2onnx.convert.from_graph_def(
                frozen.graph.as_graph_def(),
                input_names=[frozen.inputs[0].name],
                output_names=[tensor.name for tensor in outputs.values()],
                opset=int(opset),
            )
    except Exception as error:
        ops = unsupported_ops(str(error))
        named = f"op(s) {', '.join(ops)}" if ops else "an op"
        raise ExportError(
            f"The {backbone} model cannot be exported to ONNX opset {opset}: {named} "
            "has no ONNX conversion"
            + ("." if ops else f". tf2onnx: {first_error_line(str(error))}")
        ) from None
    finally:
        logger.setLevel(level)
    return model_proto


def _rename_tensor(model_proto, old, new):
    """Renames a tensor of an ONNX graph wherever it appears (nodes, inputs, outputs)."""
    graph = model_proto.graph
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.input, *graph.output):
        if value.name == old:
            value.name = new


def _unknown_nodes(model_proto):
    """Node types of an ONNX graph that ONNX does not define (tf2onnx leaves a TF op that it
    cannot convert in the graph under its TF name)."""
    onnx = optional_import("onnx")

    found = []
    for node in model_proto.graph.node:
        if node.domain == "com.microsoft":  # onnxruntime's contrib ops
            continue
        if not onnx.defs.has(node.op_type, node.domain or "") and node.op_type not in found:
            found.append(node.op_type)
    return found


def _check_no_tf_ops(model_proto, frozen, backbone, opset):
    """Raises an :class:`ExportError` naming the TF ops tf2onnx left in the graph, and what the
    function calls among them are."""
    custom = _unknown_nodes(model_proto)
    if not custom:
        return
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
            f"{op} ({len(calls)} {what}, e.g. {calls[0]})" if op.endswith("PartitionedCall") else op
            for op in custom
        ]
    raise ExportError(
        f"The {backbone} model cannot be exported to ONNX opset {opset}: op(s) "
        f"{', '.join(custom)} have no ONNX conversion (tf2onnx)."
    )


def export_onnx(model, path, opset=ONNX_OPSET, input_size=None):
    """Writes an ONNX model (module docstring) to ``path`` with ``tf2onnx``.

    Args:
        model: a prediction model (or a crowd training model holding one).
        path: the ``.onnx`` file.
        opset: the ONNX opset.
        input_size: input side (default: the model's ``image_size``).

    Returns:
        ``path``.

    Raises:
        ExportError: ops that have no ONNX conversion (named).
    """
    onnx = optional_import("onnx")
    optional_import("tf2onnx")  # missing: said before the model is traced

    model = prediction_model_of(model)
    size = int(input_size or model_metadata(model)["image_size"])
    info = export_metadata(model, size)
    frozen, outputs = _frozen_graph(model, size)
    model_proto = _converted(frozen, outputs, opset, info["backbone"])
    _rename_tensor(model_proto, frozen.inputs[0].name, "image")
    for head, tensor in outputs.items():
        _rename_tensor(model_proto, tensor.name, head)
    _check_no_tf_ops(model_proto, frozen, info["backbone"], opset)
    set_onnx_metadata(model_proto, info, size)
    onnx.checker.check_model(model_proto)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, lambda partial: onnx.save(model_proto, partial))
    return path


def run_onnx(path, images, batch_size=32):
    """An ONNX model's ``{head: array}`` in ``onnxruntime`` (CPU)."""
    onnxruntime = optional_import("onnxruntime")

    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    heads = [output.name for output in session.get_outputs()]
    parts = [
        dict(zip(heads, session.run(None, {name: batch})))
        for batch in batches(np.asarray(images, np.uint8), batch_size, "ONNX outputs")
    ]
    return concatenate_outputs(parts, heads)
