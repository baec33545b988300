"""EmoNet (Toisoul et al. 2021) in Keras 3, converted from the published PyTorch weights.

EmoNet estimates a facial expression and continuous valence and arousal from a 256x256 RGB face
scaled to ``[0, 1]``. It is a face-alignment network (two stacked hourglasses of depth 4 over
residual "ConvBlocks" of three 3x3 convolutions whose outputs are concatenated) followed by an
emotion branch: the hourglasses' features, weighted by the sum of the 68 landmark heatmaps
(the attention), concatenated with the stem's features, reduced by a 1x1 convolution, four
ConvBlocks each followed by 2x2 max pooling, average pooling, and ``Linear(256, 128)``,
``BatchNorm1d``, ReLU, ``Linear(128, K + 2)`` whose outputs are the expression logits, the
valence and the arousal (neither squashed).

    A. Toisoul, J. Kossaifi, A. Bulat, G. Tzimiropoulos, M. Pantic. Estimation of continuous
    valence and arousal levels from faces in naturalistic conditions. Nature Machine
    Intelligence 3, 42-50 (2021). https://doi.org/10.1038/s42256-020-00280-0

The architecture here is written for this package from the paper and from reading the reference
implementation (github.com/face-analysis/emonet); its layers are named by the PyTorch module
paths (``m0.b1_4.conv1``, ``emo_fc_2.1`` ...) so that each tensor of a state dict has one home.

* :func:`emonet_backbone` builds the network up to the features that the last ``Linear`` reads
  (128 values after the ReLU), the registry's ``emonet`` backbone;
* :func:`load_backbone_weights` fills it from an ``emonet_5.pth`` / ``emonet_8.pth`` file;
* :func:`convert_emonet` gives the prediction model in the package's structure (``uint8``
  images of any size, resized and scaled inside, ``expression``/``valence``/``arousal``
  outputs, metadata);
* :func:`~affectnet_tf.published.state_dict.read_state_dict` (re-exported here, with its
  limits :data:`~affectnet_tf.published.state_dict.MAX_PICKLE_BYTES` and the other ``MAX_*``
  constants) reads a PyTorch checkpoint without PyTorch and without running any code from it
  (:mod:`affectnet_tf.published.state_dict`).

The weights are files the user downloads (:data:`EMONET_URLS`); the package ships neither them
nor a converted model. Their licence (:data:`LICENCE`) forbids commercial use and the
redistribution of derivatives, which a converted model is.
"""

import collections
import functools
import os

import keras
import numpy as np
from keras import ops

from affectnet_tf.files import file_sha256
from affectnet_tf.published.prediction import prediction_model, published_metadata
from affectnet_tf.published.state_dict import (
    INFLATION_ALLOWANCE,
    MAX_DIMENSIONS,
    MAX_INFLATION,
    MAX_PICKLE_BYTES,
    MAX_SHARING,
    MAX_TENSORS,
    SHARING_ALLOWANCE,
    read_state_dict,
    unwrap_state_dict,
)
from tfds_affectnet import labels

__all__ = [
    "EMONET_CLASS_NAMES",
    "EMONET_URLS",
    "LICENCE",
    "REFERENCE",
    "IMAGE_SIZE",
    "emonet_backbone",
    "emonet_tensor_shapes",
    "load_backbone_weights",
    "convert_emonet",
    # re-exported from affectnet_tf.published.state_dict
    "read_state_dict",
    "MAX_PICKLE_BYTES",
    "MAX_TENSORS",
    "MAX_INFLATION",
    "INFLATION_ALLOWANCE",
    "MAX_SHARING",
    "SHARING_ALLOWANCE",
    "MAX_DIMENSIONS",
]

#: The expression outputs of the published models, in EmoNet's own output order (its README's
#: "class number to expression name"), in the package's vocabulary.
EMONET_CLASS_NAMES = {
    5: ("neutral", "happy", "sad", "surprise", "fear"),
    8: ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"),
}
#: Where the user downloads the weights (the reference repository's ``pretrained`` folder).
EMONET_URLS = {
    5: "https://github.com/face-analysis/emonet/raw/master/pretrained/emonet_5.pth",
    8: "https://github.com/face-analysis/emonet/raw/master/pretrained/emonet_8.pth",
}
LICENCE = "CC BY-NC-ND 4.0 (non-commercial; no redistribution of derivatives)"
REFERENCE = "Toisoul et al. 2021"
#: The input side the published weights were trained at.
IMAGE_SIZE = 256

_BN_EPSILON = 1e-5  # PyTorch's BatchNorm default
_FINAL = "emo_fc_2.3"  # the Linear that gives the expression logits, valence and arousal
_NUM_MODULES = 2  # stacked hourglasses
_DEPTH = 4  # levels of each hourglass
_EMO_BLOCKS = 4  # ConvBlock + max pooling pairs of the emotion branch
_HEATMAPS = 68  # landmarks


# --------------------------------------------------------------------------------------------
# The architecture


class _Builder:
    """Functional-API helpers whose layer names are the PyTorch module paths."""

    def conv(self, x, filters, kernel, name, strides=1, padding=0, use_bias=True):
        """``nn.Conv2d``: symmetric zero padding, then a 'valid' convolution."""
        if padding:
            x = keras.layers.ZeroPadding2D(padding, name=f"{name}.pad")(x)
        return keras.layers.Conv2D(
            filters, kernel, strides=strides, padding="valid", use_bias=use_bias, name=name
        )(x)

    def bn_relu(self, x, name):
        """``nn.BatchNorm2d`` (or ``1d``) then ReLU."""
        x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, momentum=0.9, name=name)(x)
        return keras.layers.ReLU(name=f"{name}.relu")(x)

    def conv_block(self, x, out_planes, name):
        """The residual block: three pre-activated 3x3 convolutions (``out/2``, ``out/4``,
        ``out/4`` filters) concatenated, plus the input (through a pre-activated 1x1
        convolution when the widths differ)."""
        in_planes = x.shape[-1]
        out1 = self.conv(
            self.bn_relu(x, f"{name}.bn1"), out_planes // 2, 3, f"{name}.conv1", 1, 1, False
        )
        out2 = self.conv(
            self.bn_relu(out1, f"{name}.bn2"), out_planes // 4, 3, f"{name}.conv2", 1, 1, False
        )
        out3 = self.conv(
            self.bn_relu(out2, f"{name}.bn3"), out_planes // 4, 3, f"{name}.conv3", 1, 1, False
        )
        out = keras.layers.Concatenate(name=f"{name}.cat")([out1, out2, out3])
        residual = x
        if in_planes != out_planes:
            residual = self.bn_relu(x, f"{name}.downsample.0")
            residual = self.conv(residual, out_planes, 1, f"{name}.downsample.2", use_bias=False)
        return keras.layers.Add(name=f"{name}.add")([out, residual])

    def hourglass(self, x, level, name):
        """One hourglass level: a block at this resolution plus the upsampled result of
        max pooling, a block, the next level (or a block at the lowest) and a block."""
        up1 = self.conv_block(x, 256, f"{name}.b1_{level}")
        low = keras.layers.MaxPooling2D(2, name=f"{name}.pool_{level}")(x)
        low = self.conv_block(low, 256, f"{name}.b2_{level}")
        if level > 1:
            low = self.hourglass(low, level - 1, name)
        else:
            low = self.conv_block(low, 256, f"{name}.b2_plus_{level}")
        low = self.conv_block(low, 256, f"{name}.b3_{level}")
        up2 = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{name}.up_{level}")(low)
        return keras.layers.Add(name=f"{name}.add_{level}")([up1, up2])


def _check_image_size(image_size):
    """``image_size`` as an int, a multiple of 64 (at least 64), or a ValueError."""
    size = int(image_size)
    if size < 64 or size % 64:
        raise ValueError(
            "`image_size` must be a multiple of 64, at least 64 (EmoNet divides the side by 4 "
            "in its stem and by 16 in each hourglass and in its emotion branch; the published "
            f"weights were trained at {IMAGE_SIZE}). Received: image_size={image_size!r}"
        )
    return size


def emonet_backbone(image_size=IMAGE_SIZE, name="emonet"):
    """EmoNet up to the features that its last fully-connected layer reads.

    The face-alignment network (7x7 stride-2 convolution, three ConvBlocks with a max pooling,
    two hourglasses of depth 4 with their heatmap heads and the links between them), the
    attention (the second hourglass' features and the linked first ones, multiplied by the sum
    of the last 68 heatmaps, concatenated after the stem's features), the emotion branch
    (1x1 convolution to 256 channels, four ConvBlocks each followed by 2x2 max pooling), average
    pooling, then ``Dense(128)``, ``BatchNormalization`` and ReLU.

    At 256x256 the emotion branch ends on 4x4 maps, which the reference averages with a 4x4
    window; here the average is global, the same at 256 and defined at every multiple of 64
    (the reference itself only runs at 256 to 448, and above 256 its window drops the maps'
    right and bottom edges).

    Args:
        image_size: input side, a multiple of 64 (at least 64); 256 for the published weights.
        name: the model's name.

    Input shape:
        ``(batch, image_size, image_size, 3)`` RGB floats scaled to ``[0, 1]``.

    Output shape:
        ``(batch, 128)``.

    Example:

    ```python
    backbone = emonet_backbone()
    load_backbone_weights(backbone, "emonet_8.pth")
    features = backbone(images / 255.0)  # (batch, 128)
    ```
    """
    size = _check_image_size(image_size)
    b = _Builder()
    inputs = keras.Input((size, size, 3), name="images")
    x = b.conv(inputs, 64, 7, "conv1", strides=2, padding=3)
    x = b.bn_relu(x, "bn1")
    x = b.conv_block(x, 128, "conv2")
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = b.conv_block(x, 128, "conv3")
    stem = b.conv_block(x, 256, "conv4")

    previous = stem
    hg_features = []
    for i in range(_NUM_MODULES):
        ll = b.hourglass(previous, _DEPTH, f"m{i}")
        ll = b.conv_block(ll, 256, f"top_m_{i}")
        ll = b.bn_relu(b.conv(ll, 256, 1, f"conv_last{i}"), f"bn_end{i}")
        heatmaps = b.conv(ll, _HEATMAPS, 1, f"l{i}")
        if i < _NUM_MODULES - 1:
            ll = b.conv(ll, 256, 1, f"bl{i}")
            linked = b.conv(heatmaps, 256, 1, f"al{i}")
            previous = keras.layers.Add(name=f"link{i}")([previous, ll, linked])
        hg_features.append(ll)  # the linked features of the first hourglass, as the reference

    features = keras.layers.Concatenate(name="hg_features")(hg_features)
    attention = ops.sum(heatmaps, axis=-1, keepdims=True)
    features = ops.multiply(features, attention)
    x = keras.layers.Concatenate(name="emo_feat")([stem, features])
    x = b.conv(x, 256, 1, "conv1x1_input_emo_2")
    for j in range(_EMO_BLOCKS):
        x = b.conv_block(x, 256, f"emo_net_2.{2 * j}")
        x = keras.layers.MaxPooling2D(2, name=f"emo_net_2.{2 * j + 1}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool_2")(x)
    x = keras.layers.Dense(128, name="emo_fc_2.0")(x)
    x = b.bn_relu(x, "emo_fc_2.1")
    return keras.Model(inputs, x, name=name)


# --------------------------------------------------------------------------------------------
# Tensors of a state dict <-> Keras variables

# Keras variable -> (PyTorch tensor suffix, conversion of the PyTorch array)
_CONV = (("kernel", "weight", lambda w: np.transpose(w, (2, 3, 1, 0))), ("bias", "bias", None))
_DENSE = (("kernel", "weight", lambda w: np.transpose(w)), ("bias", "bias", None))
_BN = (
    ("gamma", "weight", None),
    ("beta", "bias", None),
    ("moving_mean", "running_mean", None),
    ("moving_variance", "running_var", None),
)


def _layer_tensors(layer):
    """``[(tensor name, variable, conversion)]`` of one backbone layer (empty if it has none)."""
    if isinstance(layer, keras.layers.Conv2D):
        table = _CONV
    elif isinstance(layer, keras.layers.Dense):
        table = _DENSE
    elif isinstance(layer, keras.layers.BatchNormalization):
        table = _BN
    else:
        return []
    result = []
    for attribute, suffix, convert in table:
        variable = getattr(layer, attribute, None)
        if variable is not None:
            result.append((f"{layer.name}.{suffix}", variable, convert))
    return result


def _torch_shape(variable, convert):
    """The shape in PyTorch's layout of the tensor that fills ``variable``."""
    shape = tuple(variable.shape)
    if convert is None:
        return shape
    if len(shape) == 4:  # (kh, kw, in, out) -> (out, in, kh, kw)
        return (shape[3], shape[2], shape[0], shape[1])
    return shape[::-1]


def _backbone_shapes(backbone):
    """``{tensor name: PyTorch shape}`` of the variables of an :func:`emonet_backbone`."""
    shapes = {}
    for layer in backbone.layers:
        for name, variable, convert in _layer_tensors(layer):
            shapes[name] = _torch_shape(variable, convert)
    return shapes


@functools.lru_cache(maxsize=1)
def _reference_shapes():
    """:func:`_backbone_shapes` of the backbone: the same at every image size, so built once
    per process at the smallest."""
    return _backbone_shapes(emonet_backbone(64, name="emonet_shapes"))


def emonet_tensor_shapes(num_classes=8):
    """The tensors of an EmoNet state dict that this implementation reads: ``{name: shape}``
    in PyTorch's layout, the backbone's then the final layer's (``emo_fc_2.3``), without the
    BatchNorm ``num_batches_tracked`` counters (accepted, not needed).

    Args:
        num_classes: expression outputs of the final layer (5 or 8 for the published files).
    """
    shapes = dict(_reference_shapes())
    shapes[f"{_FINAL}.weight"] = (num_classes + 2, 128)
    shapes[f"{_FINAL}.bias"] = (num_classes + 2,)
    return shapes


def _describe(source):
    """What ``source`` is, for messages: the file name or "the state dict"."""
    if isinstance(source, collections.abc.Mapping):
        return "the state dict"
    return os.path.basename(os.fspath(source))


def _load_source(source):
    """``(state dict, description)`` of a path or a mapping, prefixes removed."""
    if isinstance(source, collections.abc.Mapping):
        where = "the state dict"
        state = {k: np.asarray(v) for k, v in unwrap_state_dict(dict(source), where).items()}
        for key, value in state.items():
            if value.dtype.kind not in "biuf":
                raise ValueError(
                    f"{where}: the entry {key!r} is not a numeric tensor. Received: {value.dtype}"
                )
        return state, where
    return read_state_dict(source), _describe(source)


def _check_state(state, expected, where, optional=()):
    """Raises a ``ValueError`` naming the first tensor that is missing, of another shape or
    unexpected; ``optional`` names may be absent."""
    counters = {  # BatchNorm's step counters: accepted beside a BatchNorm, not read
        k
        for k in state
        if k.endswith(".num_batches_tracked")
        and k.replace(".num_batches_tracked", ".running_mean") in expected
    }
    known = set(expected) | set(optional)
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in known and k not in counters]
    if len(missing) > len(expected) // 2:
        raise ValueError(
            f"{where} is not an EmoNet state dict (wrong architecture?): {len(missing)} of its "
            f"{len(expected)} tensors are missing, the first {missing[0]!r}"
            + (f"; it has tensors EmoNet lacks, the first {unexpected[0]!r}" if unexpected else "")
            + f". Received: {len(state)} tensors"
        )
    if missing:
        raise ValueError(
            f"{where} lacks the EmoNet tensor {missing[0]!r} (expected shape "
            f"{tuple(expected[missing[0]])}). Received: {len(missing)} missing tensors"
        )
    if unexpected:
        raise ValueError(
            f"{where} has a tensor that EmoNet lacks: {unexpected[0]!r} (wrong architecture?). "
            f"Received: {len(unexpected)} unexpected tensors"
        )
    for key, shape in expected.items():
        if key in state and tuple(state[key].shape) != tuple(shape):
            raise ValueError(
                f"{where}: the tensor {key!r} has shape {tuple(state[key].shape)}, EmoNet's "
                f"has {tuple(shape)}. Received: {key}.shape={tuple(state[key].shape)}"
            )


def load_backbone_weights(backbone, path):
    """Loads EmoNet's weights into an :func:`emonet_backbone`.

    The final layer's tensors (``emo_fc_2.3``) may be in the file; they are not read here.

    Args:
        backbone: the model of :func:`emonet_backbone` (any image size).
        path: an ``emonet_5.pth`` / ``emonet_8.pth`` file, or a state dict (tensor name ->
            array).

    Raises:
        ValueError: naming the tensor (and the file) that is missing, of another shape or
            unknown to EmoNet, or the global that an unsafe file asked for.
    """
    state, where = _load_source(path)
    expected = _backbone_shapes(backbone)
    final = {f"{_FINAL}.weight": None, f"{_FINAL}.bias": None}  # any shape, not read
    _check_state(state, expected, where, optional=final)
    _assign(backbone, state)


def _assign(backbone, state):
    """Assigns the (checked) tensors of ``state`` to the backbone's variables."""
    for layer in backbone.layers:
        for name, variable, convert in _layer_tensors(layer):
            value = state[name].astype(np.float32)
            variable.assign(convert(value) if convert else value)


# --------------------------------------------------------------------------------------------
# The prediction model


def convert_emonet(source, class_names=None):
    """Converts EmoNet's published weights into the package's prediction model.

    The model takes RGB ``uint8`` images of any size (``ImagePreprocessing`` resizes them to
    256x256 as the data pipeline does and scales them to ``[0, 1]``) and returns
    ``{"expression": (batch, K) probabilities, "valence": (batch, 1), "arousal": (batch, 1)}``:
    EmoNet's last ``Linear`` split into three ``Dense`` heads on the backbone's 128 features,
    the expression columns in the package's class order (mapped by name), the softmax of
    EmoNet's logits; valence and arousal as EmoNet gives them (linear, not clipped).

    Args:
        source: an ``emonet_8.pth`` / ``emonet_5.pth`` file, or a state dict (tensor name ->
            array).
        class_names: the expression outputs of the file in its own order (default:
            :data:`EMONET_CLASS_NAMES` for its number of outputs).

    Returns:
        A ``keras.Model`` with metadata (``backbone`` ``"emonet"``, ``target`` ``"published"``,
        ``source``: file, SHA-256, licence, reference) that saves and reloads as ``.keras``.

    Raises:
        ValueError: naming the tensor (and file) that is missing, of another shape or unknown
            to EmoNet, a number of classes without names, or a refused global of an unsafe file.

    Example:

    ```python
    model = convert_emonet("emonet_8.pth")
    model.save("emonet_8.keras")
    outputs = model(images)  # uint8 (batch, height, width, 3)
    ```
    """
    state, where = _load_source(source)
    class_names = _class_names(state, where, class_names)
    num_classes = len(class_names)
    order, canonical = labels.canonical_order(class_names)
    _check_state(state, emonet_tensor_shapes(num_classes), where)
    backbone = emonet_backbone(IMAGE_SIZE, name="emonet")
    _assign(backbone, state)
    heads = ("expression", "valence", "arousal")
    info = published_metadata("emonet", IMAGE_SIZE, "unit", heads, canonical, _source_info(source))
    weight = state[f"{_FINAL}.weight"].astype(np.float32)
    bias = state[f"{_FINAL}.bias"].astype(np.float32)
    k = num_classes
    columns = {
        "expression": (weight[order].T, bias[order]),
        "valence": (weight[k : k + 1].T, bias[k : k + 1]),
        "arousal": (weight[k + 1 :].T, bias[k + 1 :]),
    }
    return prediction_model(backbone, info, columns, name="emonet_all")


def _class_names(state, where, class_names):
    """The expression outputs of the final layer in the file's order: ``class_names`` checked
    against its shape, or the published names for its number of outputs."""
    final_weight = state.get(f"{_FINAL}.weight")
    if final_weight is None or final_weight.ndim != 2:
        _check_state(state, emonet_tensor_shapes(), where)  # names the problem
        raise ValueError(
            f"{where}: the tensor '{_FINAL}.weight' must be a matrix. "
            f"Received: shape={getattr(final_weight, 'shape', None)}"
        )
    num_classes = int(final_weight.shape[0]) - 2
    if class_names is None:
        if num_classes not in EMONET_CLASS_NAMES:
            raise ValueError(
                f"{where}: the tensor '{_FINAL}.weight' gives {num_classes} expressions; the "
                f"published EmoNets have {sorted(EMONET_CLASS_NAMES)} (pass `class_names` for "
                f"another). Received: {_FINAL}.weight.shape={tuple(final_weight.shape)}"
            )
        return EMONET_CLASS_NAMES[num_classes]
    if len(class_names) != num_classes:
        raise ValueError(
            f"`class_names` must name the {num_classes} expressions of {where}. "
            f"Received: class_names={tuple(class_names)!r}"
        )
    return tuple(class_names)


def _source_info(source):
    """The metadata's ``source``: family, file name and SHA-256 (``None`` for a state dict
    given as a mapping), licence, reference."""
    info = {"family": "emonet", "file": None, "sha256": None}
    if not isinstance(source, collections.abc.Mapping):
        info.update(file=os.path.basename(os.fspath(source)), sha256=file_sha256(source))
    info.update(licence=LICENCE, reference=REFERENCE)
    return info
