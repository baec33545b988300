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
* :func:`read_state_dict` reads a PyTorch checkpoint without PyTorch and without running any
  code from it: a restricted unpickler that rebuilds tensors as NumPy arrays and refuses every
  other global, with every size the file declares checked before it is allocated (the limits:
  :data:`MAX_PICKLE_BYTES` and the other ``MAX_*`` constants).

The weights are files the user downloads (:data:`EMONET_URLS`); the package ships neither them
nor a converted model. Their licence (:data:`LICENCE`) forbids commercial use and the
redistribution of derivatives, which a converted model is.
"""

import collections
import functools
import io
import math
import os
import pickle
import struct
import tarfile
import zipfile
import zlib

import keras
import numpy as np
from keras import ops

from affectnet_tf.data.images import RESIZE_METHOD
from affectnet_tf.files import file_sha256
from affectnet_tf.modeling.backbones import ImagePreprocessing, ModelMetadata
from affectnet_tf.version import __version__
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
    "read_state_dict",
    "convert_emonet",
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
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")


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
    # the same at every image size; built once per process at the smallest
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
    if isinstance(source, collections.abc.Mapping):
        return "the state dict"
    return os.path.basename(os.fspath(source))


def _load_source(source):
    """``(state dict, description)`` of a path or a mapping, prefixes removed."""
    if isinstance(source, collections.abc.Mapping):
        where = "the state dict"
        state = {k: np.asarray(v) for k, v in _strip_prefix(_unwrap(dict(source), where)).items()}
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
        class_names = EMONET_CLASS_NAMES[num_classes]
    if len(class_names) != num_classes:
        raise ValueError(
            f"`class_names` must name the {num_classes} expressions of {where}. "
            f"Received: class_names={tuple(class_names)!r}"
        )
    order, canonical = labels.canonical_order(class_names)
    _check_state(state, emonet_tensor_shapes(num_classes), where)

    backbone = emonet_backbone(IMAGE_SIZE, name="emonet")
    _assign(backbone, state)

    source_info = {"family": "emonet", "file": None, "sha256": None}
    if not isinstance(source, collections.abc.Mapping):
        source_info.update(file=os.path.basename(os.fspath(source)), sha256=file_sha256(source))
    source_info.update(licence=LICENCE, reference=REFERENCE)
    heads = ["expression", "valence", "arousal"]
    info = {
        "backbone": "emonet",
        "image_size": IMAGE_SIZE,
        "preprocessing": "unit",
        "resize_method": RESIZE_METHOD,
        "input": "RGB uint8 images of any size, resized inside the model",
        "task": "all",
        "outputs": heads,
        "num_classes": num_classes,
        "class_names": canonical,
        "target": "published",
        "crowd_heads": [],
        "package": "affectnet-tf",
        "package_version": __version__,
        "source": source_info,
    }
    inputs = keras.Input((None, None, 3), dtype="uint8", name="image")
    x = ModelMetadata(info, name="metadata")(inputs)
    x = ImagePreprocessing(IMAGE_SIZE, "unit", name="preprocessing")(x)
    features = backbone(x, training=False)
    layers = {
        "expression": keras.layers.Dense(
            num_classes, activation="softmax", dtype="float32", name="expression"
        ),
        "valence": keras.layers.Dense(1, dtype="float32", name="valence"),
        "arousal": keras.layers.Dense(1, dtype="float32", name="arousal"),
    }
    outputs = {head: layer(features) for head, layer in layers.items()}
    weight = state[f"{_FINAL}.weight"].astype(np.float32)
    bias = state[f"{_FINAL}.bias"].astype(np.float32)
    layers["expression"].set_weights([weight[order].T, bias[order]])
    layers["valence"].set_weights([weight[num_classes : num_classes + 1].T, bias[num_classes:][:1]])
    layers["arousal"].set_weights([weight[num_classes + 1 :].T, bias[num_classes + 1 :]])
    return keras.Model(inputs, outputs, name="emonet_all")


# --------------------------------------------------------------------------------------------
# Reading PyTorch checkpoints safely

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch.save's legacy format
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "BFloat16Storage": "bf16",  # read as uint16, widened to float32
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}

# Limits on what an untrusted file may make the reader hold in memory. Every size the file
# declares is checked against them, and against the sizes the pickle gives, before anything of
# that size is allocated or inflated.

#: The largest pickle read (``data.pkl``, or the legacy format's pickles in all): EmoNet's is
#: about 120 KB, 170 bytes a tensor. Unpickling holds up to some 70 times the pickle's size.
MAX_PICKLE_BYTES = 16 << 20
#: The most tensors in a state dict (EmoNet's have 682).
MAX_TENSORS = 100_000
#: The compressed storages of a zip file (``torch.save`` writes them uncompressed) may inflate
#: to this many times their compressed size in all, beyond :data:`INFLATION_ALLOWANCE`.
MAX_INFLATION = 20
#: What a file's compressed storages may inflate to whatever their ratio (zero-filled tensors
#: deflate a thousandfold).
INFLATION_ALLOWANCE = 16 << 20
#: The tensors may copy their storages' bytes this many times in all (several tensors may view
#: one storage: tied weights, views), beyond :data:`SHARING_ALLOWANCE`.
MAX_SHARING = 4
#: What the tensors may copy from shared storages whatever the number of copies.
SHARING_ALLOWANCE = 64 << 20
#: The most dimensions of a tensor.
MAX_DIMENSIONS = 64


class _Refused(ValueError):
    """What the safe reader refuses while unpickling (other errors mean a damaged pickle)."""


class _StorageType:
    """What a ``torch.<Type>Storage`` global stands for: the element type."""

    __slots__ = ("name", "dtype", "bfloat16")

    def __init__(self, name):
        self.name = name
        code = _STORAGE_DTYPES[name]
        self.dtype = np.dtype("u2" if code == "bf16" else code)
        self.bfloat16 = code == "bf16"


class _Storage:
    """One storage of a checkpoint: its elements once read (``array``), or a view of another
    (legacy files: ``numel`` elements of ``base`` from ``offset``)."""

    __slots__ = ("type", "key", "numel", "base", "offset", "array")

    def __init__(self, storage_type, key, numel, base=None, offset=0):
        self.type = storage_type
        self.key = key
        self.numel = numel
        self.base = base
        self.offset = offset
        self.array = None

    def root(self, name):
        """``(root storage, offset of this storage in it)``; the views checked, naming the
        tensor ``name``."""
        storage, start = self, 0
        while storage.base is not None:
            base = storage.base
            if not _is_int(storage.offset) or storage.offset < 0:
                raise ValueError(
                    f"tensor {name!r} is in a view of storage {base.key!r} at the offset "
                    f"{storage.offset!r}, which must be a non-negative integer"
                )
            if storage.offset + storage.numel > base.numel:
                raise ValueError(
                    f"tensor {name!r} is in a view of storage {base.key!r} that reaches past "
                    f"its end (elements {storage.offset} to {storage.offset + storage.numel} of "
                    f"{base.numel})"
                )
            start += storage.offset
            storage = base
        return storage, start


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(value, what, name):
    if not isinstance(value, (tuple, list)) or not all(_is_int(v) for v in value):
        raise ValueError(f"tensor {name!r} has a {what} that is not a tuple of integers: {value!r}")
    if len(value) > MAX_DIMENSIONS:
        raise ValueError(
            f"tensor {name!r} has {len(value)} dimensions, more than the {MAX_DIMENSIONS} read"
        )
    if any(v < 0 for v in value):
        raise ValueError(f"tensor {name!r} has a negative {what}: {tuple(value)}")
    return tuple(value)


class _Tensor:
    """A tensor to materialise once its storage is read."""

    __slots__ = ("storage", "offset", "size", "stride", "layout")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.layout = None

    def check(self, name):
        """Checks the tensor against its storage before any data is read; returns
        ``(root storage, elements copied)``."""
        if not isinstance(self.storage, _Storage):
            raise ValueError(f"tensor {name!r} has no storage")
        root, start = self.storage.root(name)
        size = _int_tuple(self.size, "size", name)
        stride = _int_tuple(self.stride, "stride", name)
        offset = self.offset
        if not _is_int(offset) or offset < 0:
            raise ValueError(
                f"tensor {name!r} has the storage offset {offset!r}, which must be a "
                "non-negative integer"
            )
        if len(size) != len(stride):
            raise ValueError(f"tensor {name!r} has the size {size} but the stride {stride}")
        numel = self.storage.numel
        count = math.prod(size)  # exact: no overflow
        if count > numel:
            raise ValueError(
                f"tensor {name!r} has more elements ({count}) than its storage ({numel}); "
                "expanded tensors are not read"
            )
        if count:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= numel:
                raise ValueError(
                    f"tensor {name!r} reads past its storage ({last + 1} > {numel} elements)"
                )
        elif offset > numel:
            raise ValueError(
                f"tensor {name!r} starts past its storage (offset {offset} > {numel} elements)"
            )
        self.layout = (start + offset, size, stride)
        return root, count

    def numpy(self, name, root):
        """A C-contiguous, writeable copy (``check`` first, then the root storage read)."""
        if root.array is None:
            raise ValueError(f"the data of tensor {name!r} (storage {root.key!r}) is missing")
        start, size, stride = self.layout
        flat = root.array
        count = math.prod(size)
        view = np.lib.stride_tricks.as_strided(
            flat[start:] if count else flat[:0],
            shape=size,
            strides=[s * flat.itemsize for s in stride],
            writeable=False,
        )
        array = np.array(view, order="C")  # a contiguous copy
        if root.type.bfloat16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array


class _Allowed:
    """An allowed global: calls the function it stands for; the pickle cannot change it."""

    __slots__ = ("function",)

    def __init__(self, function):
        self.function = function

    def __call__(self, *args):
        return self.function(*args)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, hooks=None, metadata=None
):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): _Allowed(collections.OrderedDict),
    ("torch._utils", "_rebuild_tensor_v2"): _Allowed(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _Allowed(_rebuild_parameter),
}


class _SafeUnpickler(pickle._Unpickler):
    """Python's own unpickler, which reads the bytes a string declares before it holds them
    (the C one allocates them first: a 10-byte pickle could ask for a terabyte), without the
    one opcode that allocates first here too (``BYTEARRAY8``, protocol 5, which torch.save
    does not write) and with no global at all."""

    dispatch = dict(pickle._Unpickler.dispatch)
    del dispatch[pickle.BYTEARRAY8[0]]

    def __init__(self, file, where):
        super().__init__(file, encoding="utf-8")
        self.where = where

    def find_class(self, module, name):
        raise _Refused(
            f"{self.where}: the safe reader refuses the global {module}.{name}. "
            f"Received: global={module}.{name}"
        )


class _RestrictedUnpickler(_SafeUnpickler):
    """Rebuilds ordered dicts and tensors; every other global is refused."""

    dispatch = dict(_SafeUnpickler.dispatch)

    def __init__(self, file, where, storages, legacy):
        super().__init__(file, where)
        self.storages = storages
        self.legacy = legacy

    def load_build(self):
        """``BUILD`` (set an object's state), refused on the reader's own objects."""
        target = self.stack[-2] if len(self.stack) > 1 else None
        if isinstance(target, (_Allowed, _StorageType, _Storage, _Tensor)):
            raise _Refused(
                f"{self.where} is not a plain state dict: its pickle changes the state of a "
                f"{type(target).__name__.lstrip('_')}, which a torch.save state dict never does."
            )
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[module, name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise _Refused(
            f"{self.where} is not a plain state dict: it asks for the global {module}.{name}, "
            "which the safe reader refuses (it rebuilds only tensors and ordered dicts). "
            f"Received: global={module}.{name}"
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid:
            raise _Refused(f"{self.where}: unknown persistent id {pid!r}")
        kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
        expected = 6 if self.legacy else 5
        if kind != "storage" or len(pid) != expected or not isinstance(pid[1], _StorageType):
            raise _Refused(
                f"{self.where} is not a plain state dict: it holds a {kind!r} object "
                "(a pickled module or another object), which the safe reader refuses."
            )
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        storage = self._storage(storage_type, key, numel)
        if self.legacy and pid[5] is not None:  # a view of the root storage
            view = pid[5]
            if not isinstance(view, tuple) or len(view) != 3:
                raise _Refused(f"{self.where}: storage {key!r} has an invalid view {view!r}")
            view_key, offset, view_numel = str(view[0]), view[1], view[2]
            if not _is_int(offset):
                raise _Refused(
                    f"{self.where}: the view {view_key!r} of storage {key!r} has an invalid "
                    f"offset {offset!r}"
                )
            storage = self._storage(storage_type, view_key, view_numel, storage, offset)
        return storage

    def _storage(self, storage_type, key, numel, base=None, offset=0):
        """The storage ``key``, made on its first mention; a second one must agree."""
        if not _is_int(numel) or numel < 0:
            raise _Refused(f"{self.where}: storage {key!r} has an invalid size {numel!r}")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(storage_type, key, numel, base, offset)
        elif (storage.type.name, storage.numel) != (storage_type.name, numel) or (
            base is not None and (storage.base, storage.offset) != (base, offset)
        ):
            raise _Refused(
                f"{self.where}: storage {key!r} is declared twice, as {storage.numel} "
                f"{storage.type.name} elements and as {numel} {storage_type.name} elements"
            )
        return storage


def read_state_dict(path):
    """Reads a PyTorch state dict file into NumPy arrays, without PyTorch and without running
    code from the file.

    Reads ``torch.save``'s zip format (PyTorch 1.6 and later) and its earlier "legacy" format.
    The pickle inside may only rebuild tensors (``torch._utils._rebuild_tensor_v2``, storages
    ``torch.FloatStorage`` ...) and ``collections.OrderedDict``; any other global (a class, a
    function such as ``os.system``) is refused before it is looked up. A dict wrapping the state
    dict (``{"state_dict": ...}``, ``"model_state_dict"``, ``"model"``, ``"net"``) is unwrapped,
    and a ``module.`` prefix (``nn.DataParallel``) removed.

    The file may come from anywhere: before any data is read, every tensor's size, stride and
    offset is checked against its storage, and every storage's size against the bytes the file
    holds for it (a zip entry must declare exactly the storage's bytes, and is inflated with a
    cap at that size). A pickle larger than :data:`MAX_PICKLE_BYTES`, more than
    :data:`MAX_TENSORS` tensors, compressed storages that inflate more than
    :data:`MAX_INFLATION` times (a zip bomb) and tensors that copy their storages more than
    :data:`MAX_SHARING` times are refused, so that a small file cannot fill the memory.

    Args:
        path: the ``.pth`` file.

    Returns:
        ``{name: numpy array}`` in the file's order; ``bfloat16`` tensors widened to float32.

    Raises:
        ValueError: a file that is not a PyTorch state dict, a TorchScript archive, a refused
            global (named), or damaged or oversized data (naming the tensor).

    Example:

    ```python
    state = read_state_dict("emonet_8.pth")
    state["conv1.weight"].shape  # (64, 3, 7, 7)
    ```
    """
    path = os.fspath(path)
    where = os.path.basename(path)
    if not os.path.isfile(path):
        raise ValueError(f"The weights file {path} does not exist.")
    if zipfile.is_zipfile(path):
        state, roots = _read_zip(path, where)
    else:
        state, roots = _read_legacy(path, where)
    arrays = collections.OrderedDict()
    for name, tensor in state.items():
        try:
            arrays[name] = tensor.numpy(name, roots[name])
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        except Exception as error:  # MemoryError and the like: not expected after the checks
            raise ValueError(
                f"{where}: tensor {name!r} cannot be read ({type(error).__name__}: {error})"
            ) from None
    return arrays


def _checked_state(result, where):
    """``(state, {name: root storage}, {root storage: first tensor name})``: the tensors of
    what the pickle gave, each checked against its storage, none read yet."""
    state = _strip_prefix(_unwrap(result, where))
    if len(state) > MAX_TENSORS:
        raise ValueError(
            f"{where} holds {len(state)} tensors, more than the {MAX_TENSORS} the reader reads."
        )
    roots, owners = {}, {}
    copied = 0
    for name, value in state.items():
        if not isinstance(value, _Tensor):
            raise ValueError(
                f"{where}: the entry {name!r} is not a tensor. Received: {type(value).__name__}"
            )
        try:
            root, count = value.check(name)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        roots[name] = root
        owners.setdefault(root, name)
        copied += count * root.type.dtype.itemsize
    stored = sum(root.numel * root.type.dtype.itemsize for root in owners)
    if copied > SHARING_ALLOWANCE + MAX_SHARING * stored:
        raise ValueError(
            f"{where}: its {len(state)} tensors copy {copied} bytes out of storages of "
            f"{stored} bytes, more than {MAX_SHARING} times (the same data named many times, "
            "which would fill the memory); the safe reader refuses it."
        )
    return state, roots, owners


def _nbytes(storage):
    return storage.numel * storage.type.dtype.itemsize


def _read_entry(archive, info, what):
    """The bytes of a zip entry, never more than it declares (``info.file_size``)."""
    try:
        with archive.open(info) as f:
            data = f.read(info.file_size + 1)  # inflates at most this much
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        RuntimeError,
        NotImplementedError,
    ) as error:
        raise ValueError(f"{what} cannot be read ({type(error).__name__}: {error})") from None
    if len(data) != info.file_size:
        raise ValueError(
            f"{what} holds {'more' if len(data) > info.file_size else len(data)} bytes, "
            f"not the {info.file_size} it declares"
        )
    return data


def _read_zip(path, where):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise ValueError(f"{where} is a damaged zip file ({error}).") from None
    with archive:
        infos = {info.filename: info for info in archive.infolist()}
        names = list(infos)
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if any(n.endswith("constants.pkl") for n in names):
            raise ValueError(
                f"{where} is a TorchScript archive (torch.jit.save), not a state dict: save the "
                "model's state_dict() with torch.save instead."
            )
        if len(pickles) != 1:
            raise ValueError(f"{where} is a zip file but not a PyTorch checkpoint (no data.pkl).")
        prefix = pickles[0][: -len("data.pkl")]
        order = "<"
        byteorder = infos.get(f"{prefix}byteorder")
        if byteorder is not None:
            if byteorder.file_size > 16:
                raise ValueError(f"{where}: its entry {byteorder.filename!r} is not a byte order")
            if (
                _read_entry(archive, byteorder, f"{where}: the entry {byteorder.filename!r}")
                == b"big"
            ):
                order = ">"
        info = infos[pickles[0]]
        if info.file_size > MAX_PICKLE_BYTES:
            raise ValueError(
                f"{where}: its pickle {info.filename!r} declares {info.file_size} bytes, more "
                f"than the {MAX_PICKLE_BYTES} the safe reader reads."
            )
        data = _read_entry(archive, info, f"{where}: its pickle {info.filename!r}")
        storages = {}
        unpickler = _RestrictedUnpickler(io.BytesIO(data), where, storages, legacy=False)
        result = _unpickle(unpickler, where)
        del data, unpickler
        state, roots, owners = _checked_state(result, where)
        records = {}
        for storage, name in owners.items():
            record = f"{prefix}data/{storage.key}"
            info = infos.get(record)
            what = f"{where}: the data of tensor {name!r} (zip entry {record!r})"
            if info is None:
                raise ValueError(f"{what} is missing")
            if info.file_size != _nbytes(storage):
                raise ValueError(
                    f"{what} declares {info.file_size} bytes; its storage of {storage.numel} "
                    f"{storage.type.name} elements has {_nbytes(storage)}. "
                    f"Received: file_size={info.file_size}"
                )
            records[storage] = (info, what)
        _check_inflation(records.values(), where)
        for storage, (info, what) in records.items():
            storage.array = _elements(_read_entry(archive, info, what), storage, order)
    return state, roots


def _check_inflation(records, where):
    """Refuses compressed entries that inflate more than :data:`MAX_INFLATION` times."""
    compressed = [
        (info, what) for info, what in records if info.compress_type != zipfile.ZIP_STORED
    ]
    inflated = sum(info.file_size for info, _ in compressed)
    packed = sum(info.compress_size for info, _ in compressed)
    if inflated > INFLATION_ALLOWANCE + MAX_INFLATION * packed:
        info, what = max(compressed, key=lambda r: r[0].file_size / max(r[0].compress_size, 1))
        raise ValueError(
            f"{what} inflates {info.compress_size} bytes to {info.file_size}, and the "
            f"compressed storages {packed} bytes to {inflated}: more than {MAX_INFLATION} times "
            "(a zip bomb? torch.save stores its tensors uncompressed); the safe reader refuses it."
        )


def _elements(data, storage, order):
    """The storage's elements, on the bytes read (copied only to swap the byte order)."""
    dtype = storage.type.dtype.newbyteorder(order)
    array = np.frombuffer(data, dtype, storage.numel)
    return array if dtype.isnative else array.astype(storage.type.dtype)


def _unpickle(unpickler, where):
    try:
        return unpickler.load()
    except _Refused as error:
        raise ValueError(str(error)) from None
    except Exception as error:  # a damaged pickle, MemoryError included
        raise ValueError(
            f"{where} is not a readable PyTorch checkpoint ({type(error).__name__}: {error})"
        ) from None


class _LimitedReader:
    """The reads of the legacy format's pickles: at most :data:`MAX_PICKLE_BYTES` in all, and
    never past the end of the file (a pickle that declares a longer string is refused)."""

    def __init__(self, file, size, where):
        self.file = file
        self.where = where
        self.capped = size - file.tell() > MAX_PICKLE_BYTES
        self.left = min(size - file.tell(), MAX_PICKLE_BYTES)

    def _take(self, n):
        if n > self.left:
            if self.capped:
                raise _Refused(
                    f"{self.where}: its pickles are larger than the {MAX_PICKLE_BYTES} bytes "
                    "the safe reader reads."
                )
            raise _Refused(f"{self.where} is truncated (a pickle reads past its end).")
        self.left -= n

    def read(self, n=-1):
        n = self.left if n is None or n < 0 else n
        self._take(n)
        return self.file.read(n)

    def readline(self, limit=-1):
        line = self.file.readline(self.left + 1)
        self._take(len(line))
        return line


def _read_legacy(path, where):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(2)
        if head[:1] != b"\x80":
            if tarfile.is_tarfile(path):
                raise ValueError(
                    f"{where} is in PyTorch's tar format (before version 0.1.10), which the safe "
                    "reader does not read: load it with that PyTorch and torch.save its "
                    "state_dict() again."
                )
            raise ValueError(f"{where} is not a PyTorch checkpoint (neither zip nor pickle).")
        f.seek(0)
        reader = _LimitedReader(f, size, where)
        magic = _unpickle(_SafeUnpickler(reader, where), where)
        if magic != _MAGIC_NUMBER:
            raise ValueError(
                f"{where} is a pickle but not a PyTorch checkpoint (no torch.save magic number); "
                "the safe reader reads only torch.save's formats."
            )
        protocol = _unpickle(_SafeUnpickler(reader, where), where)
        if protocol != _LEGACY_PROTOCOL:
            raise ValueError(f"{where}: unknown legacy checkpoint protocol {protocol!r}")
        sys_info = _unpickle(_SafeUnpickler(reader, where), where)
        little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
        storages = {}
        result = _unpickle(_RestrictedUnpickler(reader, where, storages, legacy=True), where)
        keys = _unpickle(_SafeUnpickler(reader, where), where)
        if not isinstance(keys, (list, tuple)):
            raise ValueError(f"{where}: its list of storages is a {type(keys).__name__}")
        state, roots, owners = _checked_state(result, where)
        order = "<" if little else ">"
        seen = set()
        for key in keys:
            storage = storages.get(str(key))
            if storage is None or storage.base is not None or storage.key in seen:
                raise ValueError(f"{where}: unknown storage {key!r} in the data section")
            seen.add(storage.key)
            name = owners.get(storage)
            what = f"{where}: the data of " + (
                f"tensor {name!r} (storage {storage.key!r})" if name else f"storage {storage.key!r}"
            )
            header = f.read(8)
            if len(header) != 8:
                raise ValueError(f"{what} is truncated")
            (numel,) = struct.unpack(f"{order}q", header)
            if numel != storage.numel:
                raise ValueError(f"{what} holds {numel} elements, not {storage.numel}")
            nbytes = _nbytes(storage)
            left = size - f.tell()
            if nbytes > left:
                raise ValueError(
                    f"{what} is truncated: its {numel} elements need {nbytes} bytes, the file "
                    f"has {left} left"
                )
            if name is None:  # a storage no tensor of the state dict reads
                f.seek(nbytes, os.SEEK_CUR)
                continue
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise ValueError(f"{what} is truncated")
            storage.array = _elements(data, storage, order)
    return state, roots


def _unwrap(result, where):
    """The state dict inside what a file holds (``{"state_dict": ...}`` and the like)."""
    if not isinstance(result, dict):
        raise ValueError(f"{where} does not hold a state dict. Received: {type(result).__name__}")
    if result and all(isinstance(v, (_Tensor, np.ndarray)) for v in result.values()):
        return result
    for key in _WRAPPER_KEYS:
        if isinstance(result.get(key), dict):
            return result[key]
    if not result:
        raise ValueError(f"{where} holds an empty dict, not a state dict.")
    return result  # the non-tensor entry is named later


def _strip_prefix(state):
    """Removes the ``module.`` prefix of ``nn.DataParallel`` models."""
    prefix = "module."
    return collections.OrderedDict(
        (k[len(prefix) :] if isinstance(k, str) and k.startswith(prefix) else k, v)
        for k, v in state.items()
    )
