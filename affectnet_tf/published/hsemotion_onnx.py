"""HSEmotion's ONNX files read into the Keras layout, mapped by structure, without PyTorch.

HSEmotion's ONNX files were exported with ``torch.onnx.export`` (opset 11, constant folding:
every BatchNorm folded into the convolution before it, whose weights then have generic names
such as ``onnx::Conv_1086``; input ``input`` ``(batch, 3, S, S)``; output ``output``
``(batch, K)``), so :func:`read_hsemotion_onnx` maps the graph by structure, not by name: the
``Conv`` nodes in graph order onto the Keras convolutions in block order
(:func:`~affectnet_tf.published.hsemotion_model.layer_plan`), each checked for its shape,
groups, stride, padding and activation, and the one ``Gemm`` onto the heads. The file is read
through :mod:`affectnet_tf.published.onnx_weights` (parsed only, every tensor checked), so a
file from anywhere is safe to read.
"""

import dataclasses
import hashlib
import os

import numpy as np

from affectnet_tf.published.hsemotion_files import HSEMOTION_CLASS_NAMES
from affectnet_tf.published.hsemotion_model import HSEMOTION_VARIANTS, KERAS_EPSILON, layer_plan
from affectnet_tf.published.onnx_weights import OnnxGraph, load_onnx

__all__ = ["HSEmotionWeights", "read_hsemotion_onnx"]


@dataclasses.dataclass(frozen=True)
class HSEmotionWeights:
    """The weights of an HSEmotion ONNX file, in the Keras layout, without PyTorch.

    Attributes:
        path: the file.
        sha256: its SHA-256 (hex).
        variant: ``"b0"`` or ``"b2"`` (from the classifier's and the convolutions' shapes).
        image_size: the input side of the exported graph (224 or 260).
        num_classes: 8 or 7 expressions.
        multitask: whether two more outputs follow the logits: valence, then arousal.
        layers: Keras layer name -> ``{variable name: array}`` (``kernel``, ``bias``;
            ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``), for every convolution
            and BatchNormalization of the backbone.
        sources: Keras layer name -> the ONNX tensor and node it comes from (for messages).
        classifier_kernel: ``(features, outputs)``, outputs in HSEmotion's order.
        classifier_bias: ``(outputs,)``.
        classifier_tensor: the ONNX name of the classifier's weight.
    """

    path: str
    sha256: str
    variant: str
    image_size: int
    num_classes: int
    multitask: bool
    layers: dict
    sources: dict
    classifier_kernel: np.ndarray
    classifier_bias: np.ndarray
    classifier_tensor: str

    @property
    def class_names(self):
        """The expression outputs in HSEmotion's order, in the package's vocabulary."""
        return HSEMOTION_CLASS_NAMES[self.num_classes]


def _read_classifier(graph):
    """``(kernel (features, outputs), bias, tensor name)`` of the graph's one linear layer."""
    gemms = [n for n in graph.nodes if n.op_type == "Gemm"]
    matmuls = [n for n in graph.nodes if n.op_type == "MatMul"]
    if len(gemms) + len(matmuls) != 1:
        found = ", ".join(repr(n.name) for n in gemms + matmuls) or "none"
        raise ValueError(
            f"{graph.where} is not an HSEmotion EfficientNet: its classifier must be one Gemm "
            f"(or MatMul) node on the pooled features. Received: linear nodes {found}"
        )
    node = (gemms + matmuls)[0]
    if len(node.input) < 2 or len(node.output) != 1:
        raise ValueError(
            f"{graph.where}: the classifier node {node.name!r} ({node.op_type}) must have an "
            f"input and a weight, and one output. Received: inputs={list(node.input)}, "
            f"outputs={list(node.output)}"
        )
    weight = graph.array(node.input[1], node, "weight")
    if weight.ndim != 2:
        raise ValueError(
            f"{graph.where}: the classifier tensor {node.input[1]!r} (weight of {node.op_type} "
            f"node {node.name!r}) must be a matrix. Received: shape={weight.shape}"
        )
    if node.op_type == "Gemm":
        attributes = graph.attributes(node, node.input[1])
        if attributes.get("transA", 0):
            raise ValueError(
                f"{graph.where}: the classifier node {node.name!r} transposes its input "
                "(transA=1), which a Linear layer's export does not. Received: transA=1"
            )
        kernel = weight.T if attributes.get("transB", 0) else weight
        kernel = kernel * attributes.get("alpha", 1.0)
        bias = np.zeros(kernel.shape[1], np.float32)
        if len(node.input) > 2 and node.input[2]:
            bias = bias + graph.array(node.input[2], node, "bias") * attributes.get("beta", 1.0)
    else:
        kernel = weight
        bias = np.zeros(kernel.shape[1], np.float32)
        adds = [n for n in graph.consumers.get(node.output[0], []) if n.op_type == "Add"]
        if adds:
            others = [i for i in adds[0].input if i != node.output[0]]
            if len(others) != 1:
                raise ValueError(
                    f"{graph.where}: the Add node {adds[0].name!r} after the classifier node "
                    f"{node.name!r} must add one bias tensor. Received: "
                    f"inputs={list(adds[0].input)}"
                )
            bias = bias + graph.array(others[0], adds[0], "bias")
    return kernel.astype(np.float32), bias.astype(np.float32), node.input[1]


def _check_padding(graph, node, conv, tensor):
    """TensorFlow "same" padding: symmetric ``k // 2`` at stride 1; at stride 2 a ``Pad`` node
    before an unpadded convolution (timm's ``Conv2dSame``) or ``auto_pad=SAME_UPPER``."""
    attributes = graph.attributes(node, tensor)
    auto_pad = attributes.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    pads = [int(p) for p in attributes.get("pads", [0, 0, 0, 0])]
    half = conv.kernel // 2
    producer = graph.producers.get(node.input[0])
    padded = producer is not None and producer.op_type == "Pad"
    if auto_pad == "SAME_UPPER" or (auto_pad == "SAME_LOWER" and conv.stride == 1):
        return
    if conv.stride == 1 and pads == [half] * 4 and not padded:
        return
    if conv.stride == 2 and padded and pads == [0, 0, 0, 0]:
        return
    if conv.stride == 2 and pads == [half] * 4:
        raise ValueError(
            f"{graph.where}: the Conv node {node.name!r} (tensor {tensor!r}) pads symmetrically "
            f"by {half} at stride 2, PyTorch's padding (timm's efficientnet_b0/b2), not the "
            f"TensorFlow 'same' padding of HSEmotion's tf_efficientnet_*_ns that the Keras "
            f"EfficientNet has. Received: pads={pads}"
        )
    raise ValueError(
        f"{graph.where}: the Conv node {node.name!r} (tensor {tensor!r}) does not have the "
        f"'same' padding of layer {conv.layer!r} (kernel {conv.kernel}, stride {conv.stride}). "
        f"Received: pads={pads}, auto_pad={auto_pad}, after a Pad node: {padded}"
    )


def _keras_conv_weights(conv, weight, bias, batch_norm, where):
    """``{layer: {variable: array}}`` for one convolution and its BatchNormalization."""
    if conv.depthwise:
        kernel = np.transpose(weight, (2, 3, 0, 1))  # (C, 1, k, k) -> (k, k, C, 1)
    else:
        kernel = np.transpose(weight, (2, 3, 1, 0))  # (O, I, k, k) -> (k, k, I, O)
    if conv.batch_norm is None:  # squeeze-and-excitation: a convolution with its bias
        if batch_norm is not None:
            raise ValueError(
                f"{where}: a BatchNormalization follows the squeeze-and-excitation convolution "
                f"of layer {conv.layer!r}, which has none in HSEmotion's EfficientNet."
            )
        return {
            conv.layer: {
                "kernel": kernel,
                "bias": np.zeros(conv.filters, np.float32) if bias is None else bias,
            }
        }
    shift = np.zeros(conv.filters, np.float32) if bias is None else bias
    if batch_norm is None:  # folded into the convolution by the export: an identity BatchNorm
        gamma = np.ones(conv.filters, np.float32)
        beta = shift
        mean = np.zeros(conv.filters, np.float32)
        variance = np.full(conv.filters, 1.0 - KERAS_EPSILON, np.float32)
    else:
        gamma, beta, mean, variance, epsilon = batch_norm
        mean = mean - shift  # a convolution bias before the BatchNorm
        # the same function with Keras's epsilon: var + eps - 1e-3 where that stays positive,
        # else the scale folded into gamma over a unit variance
        adjusted = variance.astype(np.float64) + epsilon - KERAS_EPSILON
        folded = adjusted <= 0
        gamma = np.where(folded, gamma / np.sqrt(variance.astype(np.float64) + epsilon), gamma)
        variance = np.where(folded, 1.0 - KERAS_EPSILON, adjusted)
    return {
        conv.layer: {"kernel": kernel},
        conv.batch_norm: {
            "gamma": np.asarray(gamma, np.float32),
            "beta": np.asarray(beta, np.float32),
            "moving_mean": np.asarray(mean, np.float32),
            "moving_variance": np.asarray(variance, np.float32),
        },
    }


def _read_convs(graph, variant):
    """The backbone's weights in the Keras layout, each Conv node checked against the plan."""
    plan = layer_plan(variant)
    convs = [n for n in graph.nodes if n.op_type == "Conv"]
    name = f"EfficientNet-{variant.upper()}"
    layers, sources = {}, {}
    for index, (node, conv) in enumerate(zip(convs, plan)):
        layers.update(_read_conv(graph, node, conv, index, name))
        tensor = node.input[1] if len(node.input) > 1 else ""
        sources[conv.layer] = f"tensor {tensor!r} (Conv node {node.name!r})"
        if conv.batch_norm:
            sources[conv.batch_norm] = sources[conv.layer]
    if len(convs) != len(plan):
        if len(convs) < len(plan):
            missing = plan[len(convs)].layer
            detail = (
                f"nothing for Keras layer {missing!r} and the {len(plan) - len(convs) - 1} after it"
            )
        else:
            extra = convs[len(plan)]
            detail = f"an extra Conv node {extra.name!r} (tensor {extra.input[1]!r})"
        raise ValueError(
            f"{graph.where} has {len(convs)} Conv nodes; HSEmotion's {name} has {len(plan)}: "
            f"{detail}. Received: {len(convs)} Conv nodes"
        )
    return layers, sources


def _read_conv(graph, node, conv, index, name):
    """``{layer: {variable: array}}`` of one Conv node (and the BatchNormalization node after
    it, if any), checked against ``conv``, convolution ``index`` of the plan of the
    EfficientNet ``name``."""
    tensor = node.input[1] if len(node.input) > 1 else ""
    where = f"{graph.where}: the tensor {tensor!r} (weight of Conv node {node.name!r})"
    weight = graph.array(tensor, node, "weight")
    if len(node.output) != 1:
        raise ValueError(f"{where} must have one output. Received: outputs={list(node.output)}")
    _check_conv_attributes(graph, node, conv, weight, where, index, name)
    _check_padding(graph, node, conv, tensor)
    bias = None
    if len(node.input) > 2 and node.input[2]:
        bias = graph.array(node.input[2], node, "bias")
        if bias.shape != (conv.filters,):
            raise ValueError(
                f"{graph.where}: the tensor {node.input[2]!r} (bias of Conv node "
                f"{node.name!r}) must have shape {(conv.filters,)}. Received: "
                f"{node.input[2]}.shape={bias.shape}"
            )
    batch_norm, output = _batch_norm_after(graph, node, conv, tensor)
    activations = sorted({n.op_type for n in graph.consumers.get(output, [])})
    if conv.activation != ("Sigmoid" in activations):
        expected_activation = "swish or sigmoid" if conv.activation else "no activation"
        raise ValueError(
            f"{where} is followed by {activations or 'nothing'}; layer {conv.layer!r} has "
            f"{expected_activation} after it. Received: consumers={activations}"
        )
    return _keras_conv_weights(conv, weight, bias, batch_norm, where)


def _check_conv_attributes(graph, node, conv, weight, where, index, name):
    """The weight's shape, the groups, the strides and dilations of a Conv node against the
    plan's ``conv``."""
    tensor = node.input[1]
    attributes = graph.attributes(node, tensor)
    group = int(attributes.get("group", 1))
    strides = [int(s) for s in attributes.get("strides", [1, 1])]
    expected = (conv.filters, conv.channels, conv.kernel, conv.kernel)
    expected_group = conv.filters if conv.depthwise else 1
    if tuple(weight.shape) != expected or group != expected_group:
        raise ValueError(
            f"{where} has shape {tuple(weight.shape)} with {group} group(s); convolution "
            f"{index} of HSEmotion's {name} (Keras layer {conv.layer!r}) has shape "
            f"{expected} with {expected_group} group(s): not an HSEmotion {name} file. "
            f"Received: {tensor}.shape={tuple(weight.shape)}"
        )
    if strides != [conv.stride] * 2 or any(
        int(d) != 1 for d in attributes.get("dilations", [1, 1])
    ):
        raise ValueError(
            f"{where} has strides {strides}; layer {conv.layer!r} has stride {conv.stride} "
            f"and no dilation. Received: strides={strides}"
        )


def _batch_norm_after(graph, node, conv, tensor):
    """``(batch_norm, output)``: the ``(scale, shift, mean, variance, epsilon)`` of the
    BatchNormalization node that alone reads the Conv node's output (``None`` when the export
    folded it into the convolution), and the tensor the activation reads."""
    output = node.output[0]
    following = graph.consumers.get(output, [])
    if len(following) != 1 or following[0].op_type != "BatchNormalization":
        return None, output
    bn = following[0]
    if len(bn.input) != 5 or len(bn.output) < 1:
        raise ValueError(
            f"{graph.where}: the BatchNormalization node {bn.name!r} after the Conv node "
            f"{node.name!r} (tensor {tensor!r}) must have an input, a scale, a shift, a "
            f"mean and a variance, and an output. Received: inputs={list(bn.input)}"
        )
    roles = ("scale", "shift", "mean", "variance")
    params = [graph.array(bn.input[i + 1], bn, role) for i, role in enumerate(roles)]
    for param, role, input_name in zip(params, roles, bn.input[1:]):
        if param.shape != (conv.filters,):
            raise ValueError(
                f"{graph.where}: the tensor {input_name!r} ({role} of BatchNormalization "
                f"node {bn.name!r}) must have shape {(conv.filters,)}. Received: "
                f"{input_name}.shape={param.shape}"
            )
    epsilon = float(graph.attributes(bn, tensor).get("epsilon", 1e-5))
    return (*params, epsilon), bn.output[0]


def _image_size(graph, variant):
    """The input side of the exported graph, or the variant's when it is not fixed."""
    if len(graph.inputs) != 1:
        names = [i.name for i in graph.inputs]
        raise ValueError(
            f"{graph.where} must have one input, the image batch. Received: inputs={names}"
        )
    dims = graph.inputs[0].type.tensor_type.shape.dim
    values = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(values) != 4 or values[1] not in (3, None):
        raise ValueError(
            f"{graph.where}: the input {graph.inputs[0].name!r} must be (batch, 3, size, size), "
            f"channels first. Received: shape={values}"
        )
    if values[2] and values[2] == values[3]:
        return int(values[2])
    return HSEMOTION_VARIANTS[variant].image_size


def read_hsemotion_onnx(path):
    """Reads an HSEmotion ONNX file into NumPy arrays in the Keras layout, without PyTorch.

    The file is parsed with ``onnx`` only: tensors stored outside the file are refused and no
    operator is run. The file may come from anywhere: a tensor is read only if its element type
    is a float, its dims are non-negative and it holds exactly the values they need; a chain of
    ``Identity`` nodes is followed at most :data:`MAX_ALIAS_CHAIN` steps and a cycle refused;
    every attribute read must be of its type. The variant comes from the features the classifier reads (1280: B0, 1408:
    B2), the classes and the multitask head from its outputs (7 or 8; 9 or 10 with valence and
    arousal); then every ``Conv`` node, in graph order, is checked against the Keras
    EfficientNet's convolution in block order (shape, groups, stride, TensorFlow "same"
    padding, activation after it) and converted: a BatchNorm folded into it by the export
    becomes an identity BatchNorm (gamma 1, beta the folded bias, mean 0, variance ``1 - eps``),
    a BatchNorm node is kept (its epsilon matched to Keras's 1e-3).

    Args:
        path: the ``.onnx`` file (``enet_b0_8_best_vgaf.onnx`` ...).

    Returns:
        :class:`HSEmotionWeights`.

    Raises:
        ValueError: a missing file, not an ONNX file, a graph of another architecture or a
            malformed one: the message names the tensor (and node) that is missing, damaged or
            does not fit.
        ImportError: the ``onnx`` package is not installed.

    Example:

    ```python
    weights = read_hsemotion_onnx("enet_b0_8_va_mtl.onnx")
    weights.variant, weights.num_classes, weights.multitask  # ("b0", 8, True)
    ```
    """
    model, data = load_onnx(path)
    try:
        return _read_weights(model, data, os.fspath(path))
    except ValueError:
        raise
    except Exception as error:  # a malformed graph that the checks do not foresee
        raise ValueError(
            f"{path}: the graph cannot be read ({type(error).__name__}: {error}). "
            f"Received: path={os.fspath(path)!r}"
        ) from None


def _read_weights(model, data, path):
    """:class:`HSEmotionWeights` of a parsed file: the classifier gives the variant and the
    heads, then the convolutions are read against the variant's plan."""
    graph = OnnxGraph(model, path)
    kernel, bias, tensor = _read_classifier(graph)
    features, outputs = kernel.shape
    variant = {spec.features: key for key, spec in HSEMOTION_VARIANTS.items()}.get(features)
    if variant is None:
        raise ValueError(
            f"{graph.where}: the classifier tensor {tensor!r} reads {features} features; "
            "HSEmotion's EfficientNet-B0 and B2 give 1280 and 1408: not an HSEmotion "
            f"EfficientNet file. Received: {tensor}.shape (features, outputs)={kernel.shape}"
        )
    heads = {7: (7, False), 8: (8, False), 9: (7, True), 10: (8, True)}
    if outputs not in heads:
        raise ValueError(
            f"{graph.where}: the classifier tensor {tensor!r} has {outputs} outputs; HSEmotion's "
            "have 8 or 7 expressions, plus valence and arousal for a multitask model (10 or 9). "
            f"Received: {tensor}.shape (features, outputs)={kernel.shape}"
        )
    num_classes, multitask = heads[outputs]
    layers, sources = _read_convs(graph, variant)
    return HSEmotionWeights(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        variant=variant,
        image_size=_image_size(graph, variant),
        num_classes=num_classes,
        multitask=multitask,
        layers=layers,
        sources=sources,
        classifier_kernel=kernel,
        classifier_bias=bias,
        classifier_tensor=tensor,
    )
