"""HSEmotion's EfficientNet-B0 / B2 in Keras, and the order of its convolutions.

HSEmotion fine-tuned timm's ``tf_efficientnet_b0_ns`` and ``tf_efficientnet_b2_ns``
(TensorFlow "same" padding, BatchNorm epsilon 1e-3): the architecture of
``keras.applications.EfficientNetB0`` / ``B2`` layer for layer. :func:`hsemotion_backbone`
builds the headless network with HSEmotion's ImageNet normalisation inside, the registry's
``hsemotion_enet_b0`` / ``hsemotion_enet_b2`` backbones; :func:`layer_plan` lists its
convolutions in the order of the exported ONNX graph (:class:`ConvSpec`), which the reader of
:mod:`affectnet_tf.published.hsemotion_onnx` maps the graph's ``Conv`` nodes onto.
"""

import dataclasses
import math

import keras
import numpy as np

__all__ = [
    "HSEMOTION_VARIANTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KERAS_EPSILON",
    "ConvSpec",
    "variant_spec",
    "hsemotion_backbone",
    "hsemotion_backbone_b0",
    "hsemotion_backbone_b2",
    "layer_plan",
]

#: HSEmotion's input normalisation (after ``x / 255``): the ImageNet mean and standard
#: deviation of R, G, B.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class _Variant:
    """One EfficientNet of HSEmotion (a value of :data:`HSEMOTION_VARIANTS`)."""

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


#: The BatchNormalization epsilon of ``keras.applications.EfficientNet``.
KERAS_EPSILON = 1e-3
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


def variant_spec(variant):
    """The :data:`HSEMOTION_VARIANTS` entry of ``"b0"`` / ``"b2"``, or a ValueError."""
    if variant not in HSEMOTION_VARIANTS:
        raise ValueError(
            f"`variant` must be one of {tuple(HSEMOTION_VARIANTS)}. Received: variant={variant!r}"
        )
    return HSEMOTION_VARIANTS[variant]


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
    spec = variant_spec(variant)
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
class ConvSpec:
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


def layer_plan(variant):
    """The convolutions of HSEmotion's EfficientNet, in graph order, by Keras layer name."""
    spec = variant_spec(variant)
    plan = [ConvSpec("stem_conv", "stem_bn", _round_filters(32, spec.width), 3, kernel=3, stride=2)]
    for i, (kernel, repeats, filters_in, filters_out, expand, stride) in enumerate(_STAGES):
        filters_in = _round_filters(filters_in, spec.width)
        filters_out = _round_filters(filters_out, spec.width)
        for j in range(int(math.ceil(spec.depth * repeats))):
            block_in = filters_in if j == 0 else filters_out
            name = f"block{i + 1}{chr(97 + j)}_"
            filters = block_in * expand
            squeezed = max(1, int(block_in * 0.25))
            if expand != 1:
                plan.append(ConvSpec(f"{name}expand_conv", f"{name}expand_bn", filters, block_in))
            plan += [
                ConvSpec(
                    f"{name}dwconv",
                    f"{name}bn",
                    filters,
                    1,
                    kernel=kernel,
                    stride=stride if j == 0 else 1,
                    depthwise=True,
                ),
                ConvSpec(f"{name}se_reduce", None, squeezed, filters),
                ConvSpec(f"{name}se_expand", None, filters, squeezed),
                ConvSpec(
                    f"{name}project_conv",
                    f"{name}project_bn",
                    filters_out,
                    filters,
                    activation=False,
                ),
            ]
    plan.append(ConvSpec("top_conv", "top_bn", spec.features, _round_filters(320, spec.width)))
    return plan
