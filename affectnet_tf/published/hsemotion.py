"""HSEmotion's EfficientNets (Savchenko) in Keras 3, converted from the published ONNX files.

HSEmotion (github.com/av-savchenko/face-emotion-recognition, Apache-2.0) fine-tuned timm's
``tf_efficientnet_b0_ns`` and ``tf_efficientnet_b2_ns`` (TensorFlow "same" padding, BatchNorm
epsilon 1e-3: the architecture of ``keras.applications.EfficientNetB0`` / ``B2`` layer for
layer), pre-trained on VGGFace2, on AffectNet, with a new classifier on the pooled features:
``nn.Sequential(nn.Linear(1280 or 1408, K))`` for 8 or 7 expressions, or
``nn.Linear(1280, 8 + 2)`` for the multitask model whose last two outputs are valence and
arousal (linear, trained with a CCC loss). The outputs are in alphabetical order of the class
folders (``Anger, Contempt, Disgust, Fear, Happiness, Neutral, Sadness, Surprise``; without
``Contempt`` for 7), the input is RGB resized to 224 (B0) or 260 (B2), ``x / 255``, then the
ImageNet mean and standard deviation, channels first.

    A. V. Savchenko. Facial expression and attributes recognition based on multi-task learning
    of lightweight neural networks. SISY 2021. https://arxiv.org/abs/2103.17107
    A. V. Savchenko, L. V. Savchenko, I. Makarov. Classifying emotions and engagement in online
    learning based on a single facial expression recognition neural network. IEEE Transactions
    on Affective Computing (2022). https://doi.org/10.1109/TAFFC.2022.3188390

Their ONNX files (:data:`HSEMOTION_FILES`) were exported with ``torch.onnx.export`` (opset 11,
constant folding: every BatchNorm folded into the convolution before it, whose weights then
have generic names such as ``onnx::Conv_1086``; input ``input`` ``(batch, 3, S, S)``; output
``output`` ``(batch, K)``), so the converter maps the graph by structure, not by name: the
``Conv`` nodes in graph order onto the Keras convolutions in block order, each checked for its
shape, groups, stride, padding and activation, and the one ``Gemm`` onto the heads.

* :func:`hsemotion_backbone_b0` / :func:`hsemotion_backbone_b2` build the headless network
  (float RGB 0..255 in, ImageNet normalisation inside, pooled features out), the registry's
  ``hsemotion_enet_b0`` / ``hsemotion_enet_b2`` backbones;
* :func:`read_hsemotion_onnx` reads a file into :class:`HSEmotionWeights` (NumPy arrays in the
  Keras layout, the variant, classes and multitask head detected from the shapes);
* :func:`load_backbone_weights` fills a backbone from a file (``--weights enet_b0_8.onnx``);
* :func:`convert_hsemotion` gives the prediction model in the package's structure.

The file is read with ``onnx.load`` only (no external data, nothing executed), so a file from
anywhere is safe to read. The package downloads and ships no weights.
"""

import dataclasses
import hashlib
import math
import os

import keras
import numpy as np

from affectnet_tf.data.images import RESIZE_METHOD
from affectnet_tf.modeling.backbones import ImagePreprocessing, ModelMetadata
from affectnet_tf.version import __version__
from tfds_affectnet import labels

__all__ = [
    "HSEMOTION_LABELS",
    "HSEMOTION_CLASS_NAMES",
    "HSEMOTION_VARIANTS",
    "HSEMOTION_FILES",
    "HSEmotionFile",
    "HSEmotionWeights",
    "LICENCE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "hsemotion_backbone",
    "hsemotion_backbone_b0",
    "hsemotion_backbone_b2",
    "read_hsemotion_onnx",
    "load_backbone_weights",
    "convert_hsemotion",
    "MAX_ALIAS_CHAIN",
]

#: HSEmotion's class names in its output order (``idx_to_class`` of ``hsemotion_onnx``).
HSEMOTION_LABELS = {
    8: ("Anger", "Contempt", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise"),
    7: ("Anger", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise"),
}
_VOCABULARY = {
    "Anger": "anger",
    "Contempt": "contempt",
    "Disgust": "disgust",
    "Fear": "fear",
    "Happiness": "happy",
    "Neutral": "neutral",
    "Sadness": "sad",
    "Surprise": "surprise",
}
#: The same in the package's vocabulary (:data:`tfds_affectnet.labels.EXPRESSION_NAMES`), still
#: in HSEmotion's output order.
HSEMOTION_CLASS_NAMES = {
    k: tuple(_VOCABULARY[name] for name in names) for k, names in HSEMOTION_LABELS.items()
}
LICENCE = "Apache-2.0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class _Variant:
    backbone: str  # the registry name
    constructor: str  # keras.applications
    timm_name: str
    image_size: int
    width: float
    depth: float
    features: int


#: ``"b0"`` / ``"b2"``: registry name, Keras constructor, timm architecture, input side, width
#: and depth multipliers, pooled features.
HSEMOTION_VARIANTS = {
    "b0": _Variant(
        "hsemotion_enet_b0", "EfficientNetB0", "tf_efficientnet_b0_ns", 224, 1.0, 1.0, 1280
    ),
    "b2": _Variant(
        "hsemotion_enet_b2", "EfficientNetB2", "tf_efficientnet_b2_ns", 260, 1.1, 1.2, 1408
    ),
}


@dataclasses.dataclass(frozen=True)
class HSEmotionFile:
    """One released HSEmotion model: its variant, classes, multitask head, input side, the
    published figures of its README (accuracy in percent on the validation sets of AffectNet
    with 8 and 7 classes, AFEW and VGAF; valence and arousal CCC on AffectNet for the multitask
    model, from its training notebook) and the URL of its ONNX file."""

    variant: str
    num_classes: int
    multitask: bool
    image_size: int
    published: dict
    url: str


_ONNX_URL = (
    "https://github.com/HSE-asavchenko/face-emotion-recognition/blob/main/models/"
    "affectnet_emotions/onnx/{}.onnx?raw=true"
)


#: The released ONNX files (``hsemotion-onnx``'s ``model_name`` values and ``enet_b2_8_best``),
#: name -> :class:`HSEmotionFile`. ``enet_b0_7`` is released as PyTorch only (``.pt``).
HSEMOTION_FILES = {
    "enet_b0_8_best_afew": HSEmotionFile(
        "b0",
        8,
        False,
        224,
        {
            "affectnet8_accuracy": 60.95,
            "affectnet7_accuracy": 64.63,
            "afew_accuracy": 59.89,
            "vgaf_accuracy": 66.80,
        },
        _ONNX_URL.format("enet_b0_8_best_afew"),
    ),
    "enet_b0_8_best_vgaf": HSEmotionFile(
        "b0",
        8,
        False,
        224,
        {
            "affectnet8_accuracy": 61.32,
            "affectnet7_accuracy": 64.57,
            "afew_accuracy": 55.14,
            "vgaf_accuracy": 68.29,
        },
        _ONNX_URL.format("enet_b0_8_best_vgaf"),
    ),
    "enet_b0_8_va_mtl": HSEmotionFile(
        "b0",
        8,
        True,
        224,
        {
            "affectnet8_accuracy": 61.93,
            "affectnet7_accuracy": 64.94,
            "afew_accuracy": 56.73,
            "vgaf_accuracy": 66.58,
            "affectnet_valence_ccc": 0.594,
            "affectnet_arousal_ccc": 0.549,
        },
        _ONNX_URL.format("enet_b0_8_va_mtl"),
    ),
    "enet_b2_7": HSEmotionFile(
        "b2",
        7,
        False,
        260,
        {"affectnet7_accuracy": 66.34, "afew_accuracy": 59.63, "vgaf_accuracy": 69.84},
        _ONNX_URL.format("enet_b2_7"),
    ),
    "enet_b2_8": HSEmotionFile(
        "b2",
        8,
        False,
        260,
        {
            "affectnet8_accuracy": 63.03,
            "affectnet7_accuracy": 66.29,
            "afew_accuracy": 57.78,
            "vgaf_accuracy": 70.23,
        },
        _ONNX_URL.format("enet_b2_8"),
    ),
    "enet_b2_8_best": HSEmotionFile(
        "b2",
        8,
        False,
        260,
        {
            "affectnet8_accuracy": 63.125,
            "affectnet7_accuracy": 66.51,
            "afew_accuracy": 56.73,
            "vgaf_accuracy": 71.12,
        },
        _ONNX_URL.format("enet_b2_8_best"),
    ),
}

_KERAS_EPSILON = 1e-3  # BatchNormalization epsilon of keras.applications.EfficientNet
# EfficientNet-B0's stages: kernel, repeats, filters in, filters out, expansion, stride (the
# same table in keras.applications and timm); SE ratio 0.25 of the block's input filters.
_STAGES = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)


def _variant(variant):
    if variant not in HSEMOTION_VARIANTS:
        raise ValueError(
            f"`variant` must be one of {tuple(HSEMOTION_VARIANTS)}. Received: variant={variant!r}"
        )
    return HSEMOTION_VARIANTS[variant]


# --------------------------------------------------------------------------------------------
# The backbone


def hsemotion_backbone(variant="b0", image_size=None, name=None):
    """HSEmotion's headless EfficientNet: ``keras.applications`` with ImageNet normalisation.

    ``keras.applications.EfficientNetB0`` / ``B2`` (``weights=None``, ``include_top=False``,
    ``pooling="avg"``) is timm's ``tf_efficientnet_b0_ns`` / ``b2_ns`` layer for layer
    (TensorFlow "same" padding, BatchNorm epsilon 1e-3, swish, squeeze-and-excitation on a
    quarter of the block's input filters). Its own ``Rescaling(1 / 255)`` and ``Normalization``
    layers are set to HSEmotion's preprocessing: ``(x / 255 - mean) / std`` with the ImageNet
    mean ``(0.485, 0.456, 0.406)`` and standard deviation ``(0.229, 0.224, 0.225)``.

    Args:
        variant: ``"b0"`` or ``"b2"``.
        image_size: input side (default: 224 for B0, 260 for B2, the published models').
        name: the model's name (default: the registry name, ``hsemotion_enet_b0`` / ``_b2``).

    Input shape:
        ``(batch, image_size, image_size, 3)`` float RGB in 0..255 (preprocessing mode
        ``"raw"``).

    Output shape:
        ``(batch, 1280)`` for B0, ``(batch, 1408)`` for B2: the pooled features that HSEmotion's
        classifier reads.
    """
    spec = _variant(variant)
    size = int(image_size or spec.image_size)
    if size < 32:
        raise ValueError(
            f"HSEmotion's EfficientNet takes images of at least 32x32. Received: image_size={size}"
        )
    constructor = getattr(keras.applications, spec.constructor)
    backbone = constructor(
        include_top=False,
        weights=None,
        input_shape=(size, size, 3),
        pooling="avg",
        name=name or spec.backbone,
    )
    normalization = next(
        layer for layer in backbone.layers if isinstance(layer, keras.layers.Normalization)
    )
    normalization.adapt_mean.assign(np.asarray(IMAGENET_MEAN, np.float32))
    normalization.adapt_variance.assign(np.square(np.asarray(IMAGENET_STD, np.float32)))
    normalization.finalize_state()
    return backbone


def hsemotion_backbone_b0(image_size=224, name="hsemotion_enet_b0"):
    """HSEmotion's EfficientNet-B0 without its classifier (:func:`hsemotion_backbone`):
    ``(batch, S, S, 3)`` RGB 0..255 -> ``(batch, 1280)``."""
    return hsemotion_backbone("b0", image_size, name)


def hsemotion_backbone_b2(image_size=260, name="hsemotion_enet_b2"):
    """HSEmotion's EfficientNet-B2 without its classifier (:func:`hsemotion_backbone`):
    ``(batch, S, S, 3)`` RGB 0..255 -> ``(batch, 1408)``."""
    return hsemotion_backbone("b2", image_size, name)


@dataclasses.dataclass(frozen=True)
class _Conv:
    """One convolution of the Keras EfficientNet, in the order of the ONNX graph."""

    layer: str
    batch_norm: str | None  # the BatchNormalization after it; None for the SE convolutions
    filters: int
    channels: int  # input channels per group
    kernel: int = 1
    stride: int = 1
    depthwise: bool = False
    activation: bool = True  # followed by swish or sigmoid: a Sigmoid node in the graph


def _round_filters(filters, width):
    """keras.applications.EfficientNet's (and timm's) rounding to multiples of 8."""
    filters *= width
    rounded = max(8, int(filters + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * filters else rounded)


def _layer_plan(variant):
    """The convolutions of HSEmotion's EfficientNet, in graph order, by Keras layer name."""
    spec = _variant(variant)
    plan = [_Conv("stem_conv", "stem_bn", _round_filters(32, spec.width), 3, kernel=3, stride=2)]
    for i, (kernel, repeats, filters_in, filters_out, expand, stride) in enumerate(_STAGES):
        filters_in = _round_filters(filters_in, spec.width)
        filters_out = _round_filters(filters_out, spec.width)
        for j in range(int(math.ceil(spec.depth * repeats))):
            block_in = filters_in if j == 0 else filters_out
            name = f"block{i + 1}{chr(97 + j)}_"
            filters = block_in * expand
            squeezed = max(1, int(block_in * 0.25))
            if expand != 1:
                plan.append(_Conv(f"{name}expand_conv", f"{name}expand_bn", filters, block_in))
            plan += [
                _Conv(
                    f"{name}dwconv",
                    f"{name}bn",
                    filters,
                    1,
                    kernel=kernel,
                    stride=stride if j == 0 else 1,
                    depthwise=True,
                ),
                _Conv(f"{name}se_reduce", None, squeezed, filters),
                _Conv(f"{name}se_expand", None, filters, squeezed),
                _Conv(
                    f"{name}project_conv",
                    f"{name}project_bn",
                    filters_out,
                    filters,
                    activation=False,
                ),
            ]
    plan.append(_Conv("top_conv", "top_bn", spec.features, _round_filters(320, spec.width)))
    return plan


# --------------------------------------------------------------------------------------------
# Reading the ONNX file


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


#: The longest chain of ``Identity`` nodes followed to a tensor's value (``torch.onnx.export``
#: writes chains of one); a longer one, or a cycle, is refused.
MAX_ALIAS_CHAIN = 64
#: ONNX element types a weight may have: ``{TensorProto type: (name, bytes per element, field
#: holding the values when they are not raw bytes)}``.
_FLOAT_TYPES = {
    1: ("FLOAT", 4, "float_data"),
    10: ("FLOAT16", 2, "int32_data"),
    11: ("DOUBLE", 8, "double_data"),
    16: ("BFLOAT16", 2, "int32_data"),
}
#: The attributes read, and the ``AttributeProto`` type each must have (1 FLOAT, 2 INT,
#: 3 STRING, 4 TENSOR, 7 INTS).
_ATTRIBUTE_TYPES = {
    "alpha": 1,
    "beta": 1,
    "epsilon": 1,
    "transA": 2,
    "transB": 2,
    "group": 2,
    "auto_pad": 3,
    "value": 4,
    "strides": 7,
    "dilations": 7,
    "pads": 7,
}


class _Graph:
    """The tensors and the node links of an ONNX graph."""

    def __init__(self, model, where):
        self.where = where
        graph = model.graph
        self.nodes = list(graph.node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.constants = {}
        self.aliases = {}
        self.producers = {}
        self.consumers = {}
        for node in self.nodes:
            for name in node.output:
                self.producers[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
            if node.op_type in ("Constant", "Identity"):
                inputs = 0 if node.op_type == "Constant" else 1
                if len(node.input) != inputs or len(node.output) != 1:
                    raise ValueError(
                        f"{where}: the {node.op_type} node {node.name!r} must have "
                        f"{('no input', 'one input')[inputs]} and one output. Received: "
                        f"inputs={list(node.input)}, outputs={list(node.output)}"
                    )
            if node.op_type == "Constant":
                value = self.attributes(node, node.output[0]).get("value")
                self.constants[node.output[0]] = value  # None: a constant of another kind
            elif node.op_type == "Identity":
                self.aliases[node.output[0]] = node.input[0]
        self.inputs = [i for i in graph.input if i.name not in self.initializers]

    def _source(self, name, what):
        """The tensor that ``name`` is an alias of (through ``Identity`` nodes)."""
        chain = [name]
        while chain[-1] in self.aliases:
            source = self.aliases[chain[-1]]
            if source in chain:
                cycle = " -> ".join(chain[chain.index(source) :] + [source])
                raise ValueError(
                    f"{self.where}: {what} is an alias of itself (a cycle of Identity nodes: "
                    f"{cycle}). Received: tensor={name!r}"
                )
            chain.append(source)
            if len(chain) > MAX_ALIAS_CHAIN:
                raise ValueError(
                    f"{self.where}: {what} is reached through more than {MAX_ALIAS_CHAIN} "
                    f"Identity nodes. Received: tensor={name!r}"
                )
        return chain[-1]

    def array(self, name, node, role):
        """The float32 value of a constant tensor, or a ValueError naming it."""
        from onnx import TensorProto, numpy_helper

        what = f"the tensor {name!r} ({role} of {node.op_type} node {node.name!r})"
        source = self._source(name, what)
        tensor = self.initializers.get(source, self.constants.get(source))
        if tensor is None:
            detail = (
                "a Constant node without a tensor value"
                if source in self.constants
                else "neither an initializer nor a constant"
            )
            raise ValueError(
                f"{self.where}: {what} is missing from the file ({detail}). "
                f"Received: tensor={name!r}"
            )
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            raise ValueError(
                f"{self.where}: {what} is stored in an external file, which is not read; "
                f"HSEmotion's files hold every tensor. Received: tensor={name!r}"
            )
        _check_tensor(tensor, f"{self.where}: {what}", name)
        try:
            value = numpy_helper.to_array(tensor)
            return np.asarray(value, np.float32)
        except Exception as error:  # not expected after the checks
            raise ValueError(
                f"{self.where}: {what} cannot be read ({error}). Received: tensor={name!r}"
            ) from None

    def attributes(self, node, tensor):
        """``{name: value}`` of a node's attributes; one the reader reads must be of its
        type (a ValueError names the node and ``tensor``)."""
        from onnx import AttributeProto, helper

        values = {}
        for attribute in node.attribute:
            expected = _ATTRIBUTE_TYPES.get(attribute.name)
            if expected is not None and attribute.type != expected:
                raise ValueError(
                    f"{self.where}: the attribute {attribute.name!r} of {node.op_type} node "
                    f"{node.name!r} (tensor {tensor!r}) must be of type "
                    f"{AttributeProto.AttributeType.Name(expected)}. Received: "
                    f"type={_type_name(AttributeProto.AttributeType, attribute.type)}"
                )
            if expected is not None:
                values[attribute.name] = helper.get_attribute_value(attribute)
        return values


def _type_name(enum, value):
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


def _check_tensor(tensor, what, name):
    """Checks a tensor's element type, shape and values against each other, before NumPy
    holds it: a float type, non-negative dims, exactly the values the dims need."""
    from onnx import TensorProto

    spec = _FLOAT_TYPES.get(tensor.data_type)
    if spec is None:
        raise ValueError(
            f"{what} has the element type "
            f"{_type_name(TensorProto.DataType, tensor.data_type)}; a weight is a float. "
            f"Received: tensor={name!r}"
        )
    type_name, itemsize, field = spec
    dims = tuple(tensor.dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"{what} has a negative dimension. Received: {name}.dims={dims}")
    numel = math.prod(dims)
    if tensor.HasField("raw_data"):
        found, needed, unit = len(tensor.raw_data), numel * itemsize, "bytes"
    else:
        found, needed, unit = len(getattr(tensor, field)), numel, "values"
    if found != needed:
        raise ValueError(
            f"{what} cannot be read: it holds {found} {unit}; its shape {dims} of {type_name} "
            f"needs {needed}. Received: tensor={name!r}"
        )


def _load_onnx(path):
    """``(onnx.ModelProto, bytes)`` of a file, parsed only (no external data, nothing run)."""
    try:
        import onnx
    except ImportError as error:  # the "export" extra
        raise ImportError(
            "Reading HSEmotion's ONNX files needs the `onnx` package: "
            "pip install 'affectnet-tf[convert]' (or pip install onnx)."
        ) from error
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"The HSEmotion ONNX file does not exist. Received: path={path!r}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as error:
        raise ValueError(
            f"{path} is not an ONNX model file ({type(error).__name__}: {error}). "
            f"Received: path={path!r}"
        ) from None
    return model, data


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
        variance = np.full(conv.filters, 1.0 - _KERAS_EPSILON, np.float32)
    else:
        gamma, beta, mean, variance, epsilon = batch_norm
        mean = mean - shift  # a convolution bias before the BatchNorm
        # the same function with Keras's epsilon: var + eps - 1e-3 where that stays positive,
        # else the scale folded into gamma over a unit variance
        adjusted = variance.astype(np.float64) + epsilon - _KERAS_EPSILON
        folded = adjusted <= 0
        gamma = np.where(folded, gamma / np.sqrt(variance.astype(np.float64) + epsilon), gamma)
        variance = np.where(folded, 1.0 - _KERAS_EPSILON, adjusted)
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
    plan = _layer_plan(variant)
    convs = [n for n in graph.nodes if n.op_type == "Conv"]
    name = f"EfficientNet-{variant.upper()}"
    layers, sources = {}, {}
    for index, (node, conv) in enumerate(zip(convs, plan)):
        tensor = node.input[1] if len(node.input) > 1 else ""
        where = f"{graph.where}: the tensor {tensor!r} (weight of Conv node {node.name!r})"
        weight = graph.array(tensor, node, "weight")
        if len(node.output) != 1:
            raise ValueError(f"{where} must have one output. Received: outputs={list(node.output)}")
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
        output = node.output[0]
        batch_norm = None
        following = graph.consumers.get(output, [])
        if len(following) == 1 and following[0].op_type == "BatchNormalization":
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
            batch_norm = (*params, float(graph.attributes(bn, tensor).get("epsilon", 1e-5)))
            output = bn.output[0]
        activations = sorted({n.op_type for n in graph.consumers.get(output, [])})
        if conv.activation != ("Sigmoid" in activations):
            expected_activation = "swish or sigmoid" if conv.activation else "no activation"
            raise ValueError(
                f"{where} is followed by {activations or 'nothing'}; layer {conv.layer!r} has "
                f"{expected_activation} after it. Received: consumers={activations}"
            )
        layers.update(_keras_conv_weights(conv, weight, bias, batch_norm, where))
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
    model, data = _load_onnx(path)
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
    graph = _Graph(model, path)
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


# --------------------------------------------------------------------------------------------
# Loading into Keras


def load_backbone_weights(backbone, path):
    """Fills a backbone of :func:`hsemotion_backbone` from an HSEmotion ONNX file.

    The registry's loader (``build_backbone("hsemotion_enet_b0", weights="enet_b0_8.onnx")``,
    ``--model hsemotion_enet_b0 --weights enet_b0_8_best_vgaf.onnx``); the classifier of the
    file is not used (the task heads are new).

    Args:
        backbone: the Keras backbone (EfficientNet-B0 or B2 of :func:`hsemotion_backbone`).
        path: the ``.onnx`` file, or the :class:`HSEmotionWeights` read from it.

    Returns:
        The :class:`HSEmotionWeights` of the file.

    Raises:
        ValueError: a file that :func:`read_hsemotion_onnx` refuses, or of the other variant
            than the backbone, or a backbone without the layer or shape a tensor needs (the
            message names both).
    """
    weights = path if isinstance(path, HSEmotionWeights) else read_hsemotion_onnx(path)
    spec = HSEMOTION_VARIANTS[weights.variant]
    features = backbone.output_shape[-1]
    if features != spec.features:
        raise ValueError(
            f"{weights.path} is HSEmotion's EfficientNet-{weights.variant.upper()} "
            f"({spec.backbone}, {spec.features} features); the backbone {backbone.name!r} gives "
            f"{features} features. Received: backbone={backbone.name!r}"
        )
    for layer_name, values in weights.layers.items():
        try:
            layer = backbone.get_layer(layer_name)
        except ValueError:
            raise ValueError(
                f"{weights.path}: the backbone {backbone.name!r} has no layer {layer_name!r} for "
                f"the {weights.sources[layer_name]}; build it with hsemotion_backbone_"
                f"{weights.variant}. Received: backbone={backbone.name!r}"
            ) from None
        for variable_name, value in values.items():
            variable = getattr(layer, variable_name, None)
            if variable is None or tuple(variable.shape) != value.shape:
                shape = None if variable is None else tuple(variable.shape)
                raise ValueError(
                    f"{weights.path}: the {weights.sources[layer_name]} gives "
                    f"{layer_name}.{variable_name} the shape {value.shape}; the backbone "
                    f"{backbone.name!r} has {shape}. Received: backbone={backbone.name!r}"
                )
            variable.assign(value)
    return weights


def _published(file_name, weights):
    """The published figures of a released file, known by its name (``None`` otherwise)."""
    stem = os.path.splitext(file_name)[0]
    known = HSEMOTION_FILES.get(stem)
    if known is None or (known.variant, known.num_classes, known.multitask) != (
        weights.variant,
        weights.num_classes,
        weights.multitask,
    ):
        return None
    return dict(known.published)


def convert_hsemotion(path):
    """Converts an HSEmotion ONNX file into the package's prediction model.

    The model takes RGB ``uint8`` images of any size:
    :class:`~affectnet_tf.modeling.backbones.ImagePreprocessing` resizes them to the file's input side
    (224 for B0, 260 for B2) as the data pipeline does
    (:data:`affectnet_tf.data.images.RESIZE_METHOD`), and the backbone normalises them with the
    ImageNet mean and standard deviation, as HSEmotion does. Its outputs:

    * ``expression``: ``(batch, K)`` probabilities, the softmax of HSEmotion's logits with the
      columns in the package's class order (:data:`tfds_affectnet.labels.EXPRESSION_NAMES`),
      mapped from HSEmotion's alphabetical order by name;
    * for a multitask file, ``valence`` and ``arousal``: ``(batch, 1)``, linear, as HSEmotion
      outputs them (a dict keyed by head).

    The metadata holds the keys of :func:`affectnet_tf.build_model` (backbone
    ``hsemotion_enet_b0`` / ``hsemotion_enet_b2``, ``target`` ``"published"``) and ``source``:
    family, file name, SHA-256, licence, HSEmotion's class order, and the published figures
    when the file is known by name (:data:`HSEMOTION_FILES`).

    Args:
        path: the ``.onnx`` file, or the :class:`HSEmotionWeights` read from it.

    Returns:
        A ``keras.Model`` that saves and reloads as ``.keras`` (with ``import affectnet_tf``).

    Raises:
        ValueError: see :func:`read_hsemotion_onnx`.

    Example:

    ```python
    model = convert_hsemotion("enet_b2_8.onnx")
    model.save("enet_b2_8.keras")
    probabilities = model(images)  # uint8 (batch, height, width, 3) -> (batch, 8)
    ```
    """
    weights = path if isinstance(path, HSEmotionWeights) else read_hsemotion_onnx(path)
    spec = HSEMOTION_VARIANTS[weights.variant]
    size = weights.image_size
    backbone = hsemotion_backbone(weights.variant, size, name=spec.backbone)
    load_backbone_weights(backbone, weights)
    order, canonical = labels.canonical_order(HSEMOTION_CLASS_NAMES[weights.num_classes])
    heads = ["expression", "valence", "arousal"] if weights.multitask else ["expression"]
    task = "all" if weights.multitask else "exp"
    file_name = os.path.basename(weights.path)
    info = {
        "backbone": spec.backbone,
        "image_size": size,
        "preprocessing": "raw",
        "normalization": "imagenet mean/std inside the backbone",
        "resize_method": RESIZE_METHOD,
        "input": "RGB uint8 images of any size, resized inside the model",
        "task": task,
        "outputs": heads,
        "num_classes": weights.num_classes,
        "class_names": canonical,
        "target": "published",
        "crowd_heads": [],
        "package": "affectnet-tf",
        "package_version": __version__,
        "source": {
            "family": "hsemotion",
            "file": file_name,
            "sha256": weights.sha256,
            "licence": LICENCE,
            "published": _published(file_name, weights),
            "architecture": spec.timm_name,
            "class_order": list(HSEMOTION_LABELS[weights.num_classes]),
            "preprocessing": "RGB, resize to the input side, x / 255, ImageNet mean/std",
        },
    }
    if weights.multitask:
        info["va_activation"] = "linear"
    inputs = keras.Input((None, None, 3), dtype="uint8", name="image")
    x = ModelMetadata(info, name="metadata")(inputs)
    x = ImagePreprocessing(size, "raw", name="preprocessing")(x)
    features = backbone(x, training=False)
    k = weights.num_classes
    layers = {
        "expression": keras.layers.Dense(
            k, activation="softmax", dtype="float32", name="expression"
        )
    }
    if weights.multitask:
        layers["valence"] = keras.layers.Dense(1, dtype="float32", name="valence")
        layers["arousal"] = keras.layers.Dense(1, dtype="float32", name="arousal")
    outputs = {head: layer(features) for head, layer in layers.items()}
    kernel, bias = weights.classifier_kernel, weights.classifier_bias
    layers["expression"].set_weights([kernel[:, order], bias[order]])
    if weights.multitask:
        layers["valence"].set_weights([kernel[:, k : k + 1], bias[k : k + 1]])
        layers["arousal"].set_weights([kernel[:, k + 1 : k + 2], bias[k + 1 : k + 2]])
    return keras.Model(
        inputs,
        outputs if weights.multitask else outputs["expression"],
        name=f"{spec.backbone}_{task}",
    )
