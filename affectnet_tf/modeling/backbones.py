"""Backbones: one registry of plain data, and the layers that put preprocessing in the model.

Each :data:`BACKBONES` entry names a ``keras.applications`` constructor, the input scaling its
ImageNet weights expect (``PREPROCESSING_MODES``), its default image size and the name of the
weights file that Keras downloads into its cache (``~/.keras/models/``, or
``$KERAS_HOME/models/``). Adding a backbone is adding one entry.

The preprocessing sits inside the model as registered layers (:class:`ImagePreprocessing`), so
a saved model takes raw RGB ``uint8`` images of any size, resizes them the way the data
pipeline does (:data:`affectnet_tf.data.images.RESIZE_METHOD`) and reloads with ``safe_mode=True``.
"""

import dataclasses
import os

import keras
from keras import ops

from affectnet_tf.data.images import RESIZE_METHOD

__all__ = [
    "BackboneSpec",
    "BACKBONES",
    "PREPROCESSING_MODES",
    "WeightsUnavailableError",
    "ImagePreprocessing",
    "ModelMetadata",
    "keras_cache_dir",
    "get_backbone_spec",
    "build_backbone",
    "compact_cnn",
    "import_function",
]

# mode -> (scale applied to 0..255 RGB, per-channel offset after scaling, BGR order)
PREPROCESSING_MODES = {
    # keras.applications "caffe": BGR, ImageNet means subtracted, no scaling (ResNet, VGG)
    "caffe": (1.0, (-103.939, -116.779, -123.68), True),
    # "tf": scaled to [-1, 1] (MobileNetV2)
    "tf": (1.0 / 127.5, (-1.0, -1.0, -1.0), False),
    # "raw": 0..255 floats, the application does its own preprocessing (EfficientNet,
    # MobileNetV3, ConvNeXt, EfficientNetV2 with include_preprocessing=True)
    "raw": (1.0, (0.0, 0.0, 0.0), False),
    # "unit": [0, 1] (the compact CNN)
    "unit": (1.0 / 255.0, (0.0, 0.0, 0.0), False),
}


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """One backbone: ``keras.applications`` constructor name (or ``None`` for
    :func:`compact_cnn` and the converted families), preprocessing mode, default image size,
    ImageNet weights file, and for :func:`compact_cnn` its width and BatchNormalization momentum.

    A converted published model (EmoNet, HSEmotion) names instead its ``builder``, a
    ``"module:function"`` called as ``function(image_size=..., name=...)`` that returns the
    headless backbone (preprocessed images in, pooled features out), and its
    ``weights_loader``, ``"module:function"`` called as ``function(backbone, path)`` that loads
    the user's downloaded weights file into it; ``pretrained`` names that file for messages, and
    ``min_size`` is the smallest input side the architecture takes.
    """

    constructor: str | None
    preprocessing: str
    default_size: int
    weights_file: str | None = None
    width: int = 32
    bn_momentum: float = 0.99
    builder: str | None = None
    weights_loader: str | None = None
    pretrained: str | None = None
    min_size: int = 32


BACKBONES = {
    "resnet50": BackboneSpec(
        "ResNet50", "caffe", 224, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
    "resnet152": BackboneSpec(
        "ResNet152", "caffe", 224, "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
    "vgg19": BackboneSpec(
        "VGG19", "caffe", 224, "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
    "mobilenet": BackboneSpec(
        "MobileNetV2",
        "tf",
        224,
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    ),
    "mobilenet_v3_small": BackboneSpec(
        "MobileNetV3Small", "raw", 224, "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
    ),
    "mobilenet_v3_large": BackboneSpec(
        "MobileNetV3Large", "raw", 224, "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"
    ),
    "efficientnet_b0": BackboneSpec("EfficientNetB0", "raw", 224, "efficientnetb0_notop.h5"),
    "efficientnet_b2": BackboneSpec("EfficientNetB2", "raw", 260, "efficientnetb2_notop.h5"),
    "efficientnet_v2_s": BackboneSpec("EfficientNetV2S", "raw", 384, "efficientnetv2-s_notop.h5"),
    "convnext_tiny": BackboneSpec("ConvNeXtTiny", "raw", 224, "convnext_tiny_notop.h5"),
    "compact_cnn": BackboneSpec(None, "unit", 64),
    # Published affect models, converted from the weights file the user downloaded
    # (affectnet_tf.published.emonet, affectnet_tf.published.hsemotion; python -m affectnet_tf.convert).
    "emonet": BackboneSpec(
        None,
        "unit",
        256,
        builder="affectnet_tf.published.emonet:emonet_backbone",
        weights_loader="affectnet_tf.published.emonet:load_backbone_weights",
        pretrained="emonet_8.pth or emonet_5.pth",
        min_size=64,
    ),
    "hsemotion_enet_b0": BackboneSpec(
        None,
        "raw",
        224,
        builder="affectnet_tf.published.hsemotion_model:hsemotion_backbone_b0",
        weights_loader="affectnet_tf.published.hsemotion:load_backbone_weights",
        pretrained="an HSEmotion enet_b0_*.onnx file",
    ),
    "hsemotion_enet_b2": BackboneSpec(
        None,
        "raw",
        260,
        builder="affectnet_tf.published.hsemotion_model:hsemotion_backbone_b2",
        weights_loader="affectnet_tf.published.hsemotion:load_backbone_weights",
        pretrained="an HSEmotion enet_b2_*.onnx file",
    ),
    # half the filters (about 4x fewer operations) and batch statistics that follow a short
    # run: the model of `make demo` (synthetic_faces in minutes on a laptop CPU)
    "compact_cnn_small": BackboneSpec(None, "unit", 64, width=16, bn_momentum=0.9),
}


class WeightsUnavailableError(RuntimeError):
    """The ImageNet weights could not be downloaded (offline) nor found in the Keras cache."""


def keras_cache_dir():
    """The folder where Keras keeps downloaded weights: ``$KERAS_HOME/models`` or
    ``~/.keras/models``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def get_backbone_spec(name):
    """The registry entry of ``name``; a ``ValueError`` listing the known ones otherwise."""
    if name not in BACKBONES:
        raise ValueError(
            f"Unknown model {name!r}; known models: {', '.join(sorted(BACKBONES))}. "
            f"Received: model={name!r}"
        )
    return BACKBONES[name]


def compact_cnn(input_shape=(64, 64, 3), width=32, name="compact_cnn", bn_momentum=0.99):
    """A small fast CNN for CPU demos, trained from scratch: 4 conv blocks, global pooling.

    Its BatchNormalization is synchronized across replicas, so a mirrored run computes the
    same batch statistics (and loss) as a single device.

    Args:
        input_shape: ``(size, size, 3)`` float inputs scaled to ``[0, 1]``.
        width: filters of the first block, doubled in each of the next blocks.
        bn_momentum: momentum of the BatchNormalization moving statistics (0.9 for runs of a
            few hundred steps, whose validation would otherwise see stale statistics).

    Returns:
        A functional model ``(batch, size, size, 3) -> (batch, 8 * width)``.
    """
    inputs = keras.Input(input_shape)
    x = inputs
    for block in range(4):
        filters = width * 2**block
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{block}")(x)
        x = keras.layers.BatchNormalization(
            momentum=bn_momentum, synchronized=True, name=f"bn{block}"
        )(x)
        x = keras.layers.Activation("relu", name=f"relu{block}")(x)
        if block < 3:
            x = keras.layers.MaxPooling2D(2, name=f"pool{block}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, x, name=name)


def build_backbone(name, weights="imagenet", image_size=None):
    """Builds a headless backbone with global average pooling.

    Args:
        name: a key of :data:`BACKBONES`.
        weights: ``"imagenet"`` (downloaded into the Keras cache the first time), ``None``
            (random), or the path of a weights file.
        image_size: input side (default: the backbone's default size).

    Returns:
        ``(backbone, spec)``: a model on preprocessed ``(size, size, 3)`` float inputs giving
        ``(batch, features)``, and its :class:`BackboneSpec`.

    Raises:
        ValueError: unknown name, or a weights file that does not exist.
        WeightsUnavailableError: the ImageNet weights could not be downloaded.
    """
    spec = get_backbone_spec(name)
    size = int(image_size or spec.default_size)
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    if spec.builder is not None:
        if weights == "imagenet":
            raise ValueError(
                f"{name!r} has no ImageNet weights: pass the published weights file you "
                f"downloaded ({spec.pretrained}) as weights (--weights PATH), or None to train "
                f"from scratch. Received: weights='imagenet'"
            )
        if size < spec.min_size:
            raise ValueError(
                f"{name!r} takes images of at least {spec.min_size}x{spec.min_size}. "
                f"Received: image_size={size}"
            )
        backbone = import_function(spec.builder)(image_size=size, name=name)
        if weights is not None:
            import_function(spec.weights_loader)(backbone, _check_weights_path(weights))
        return backbone, spec
    if spec.constructor is None:
        backbone = compact_cnn(
            (size, size, 3), width=spec.width, name=name, bn_momentum=spec.bn_momentum
        )
        if weights not in (None, "imagenet"):
            backbone.load_weights(_check_weights_path(weights))
        return backbone, spec
    if weights not in (None, "imagenet"):
        weights = _check_weights_path(weights)
    constructor = getattr(keras.applications, spec.constructor)
    try:
        backbone = constructor(
            include_top=False, weights=weights, input_shape=(size, size, 3), pooling="avg"
        )
    except Exception as error:
        if weights != "imagenet" or isinstance(error, ValueError):
            raise
        cache = keras_cache_dir()
        raise WeightsUnavailableError(
            f"Could not download the ImageNet weights of {name!r} ({spec.constructor}): "
            f"{error}. Without internet access, copy the file {spec.weights_file} into the "
            f"Keras cache folder {cache} (set KERAS_HOME to use another folder than "
            f"~/.keras), pass a weights file path, or train from scratch with --weights none."
        ) from error
    return backbone, spec


def import_function(reference):
    """The function named by ``"module:function"``."""
    import importlib

    module, _, function = reference.partition(":")
    return getattr(importlib.import_module(module), function)


def _check_weights_path(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(
            f"`weights` must be 'imagenet', None or an existing weights file. "
            f"Received: weights={path!r}"
        )
    return path


@keras.saving.register_keras_serializable(package="affectnet_tf")
class ImagePreprocessing(keras.layers.Layer):
    """Raw RGB images of any size -> the backbone's input: resize, then scale.

    Resizing is bilinear with anti-aliasing, rounded to whole ``uint8`` levels, exactly as
    :func:`affectnet_tf.data.images.resize_image` (``RESIZE_METHOD``), so a model sees the same
    pixels in training (images resized by the pipeline; resizing to the same size is the
    identity) and in use (images of any size). Then ``x * scale + offset`` per channel, after
    RGB -> BGR for the ``caffe`` mode.

    Args:
        image_size: side of the square model input.
        mode: a key of :data:`PREPROCESSING_MODES`.

    Input shape:
        ``(batch, height, width, 3)``, any dtype with values in 0..255.

    Output shape:
        ``(batch, image_size, image_size, 3)`` float32.
    """

    def __init__(self, image_size, mode="raw", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"`mode` must be one of {sorted(PREPROCESSING_MODES)}. Received: mode={mode!r}"
            )
        self.image_size = int(image_size)
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if tuple(x.shape[1:3]) != (self.image_size, self.image_size):
            # skipped when the size is already right (training batches): the anti-aliased
            # kernel has no XLA implementation, so jit-compiled training avoids it
            x = ops.image.resize(
                x, (self.image_size, self.image_size), interpolation="bilinear", antialias=True
            )
            x = ops.clip(ops.round(x), 0.0, 255.0)
        scale, offset, bgr = PREPROCESSING_MODES[self.mode]
        if bgr:
            x = ops.flip(x, axis=-1)
        return x * scale + ops.convert_to_tensor(offset, "float32")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.image_size, self.image_size, 3)

    def get_config(self):
        config = super().get_config()
        config.update({"image_size": self.image_size, "mode": self.mode})
        return config


@keras.saving.register_keras_serializable(package="affectnet_tf")
class ModelMetadata(keras.layers.Layer):
    """An identity layer that carries the model's metadata in its config.

    The metadata (class names, image size, resize method, task, target, package version ...)
    is a JSON-able dict stored by ``get_config``, so it is written into ``model.keras`` and
    comes back with ``keras.models.load_model`` (safe mode on) without any side file.
    """

    def __init__(self, metadata=None, **kwargs):
        super().__init__(**kwargs)
        self.metadata = dict(metadata or {})
        self.metadata.setdefault("resize_method", RESIZE_METHOD)

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"metadata": self.metadata})
        return config
