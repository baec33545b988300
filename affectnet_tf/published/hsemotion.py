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

Their ONNX files (:data:`HSEMOTION_FILES`), exported with ``torch.onnx.export`` and constant
folding, are mapped onto the Keras EfficientNet by structure, not by name: each ``Conv`` node
checked against the Keras convolution of its rank, the one ``Gemm`` onto the heads.

* :func:`load_backbone_weights` fills a backbone from a file (``--weights enet_b0_8.onnx``);
* :func:`convert_hsemotion` gives the prediction model in the package's structure.

They use the modules beside this one, whose public names are re-exported here:
:mod:`~affectnet_tf.published.hsemotion_model` (:func:`hsemotion_backbone_b0` /
:func:`hsemotion_backbone_b2`: the headless network, float RGB 0..255 in, ImageNet
normalisation inside, pooled features out; the registry's ``hsemotion_enet_b0`` /
``hsemotion_enet_b2`` backbones), :mod:`~affectnet_tf.published.hsemotion_onnx`
(:func:`read_hsemotion_onnx` reads a file into :class:`HSEmotionWeights`: NumPy arrays in the
Keras layout, the variant, classes and multitask head detected from the shapes),
:mod:`~affectnet_tf.published.onnx_weights` (the file parsed only, no external data, nothing
executed, so a file from anywhere is safe to read) and
:mod:`~affectnet_tf.published.hsemotion_files` (the released files, :data:`HSEMOTION_FILES`).
The package downloads and ships no weights.
"""

import os

from affectnet_tf.published.hsemotion_files import (
    HSEMOTION_CLASS_NAMES,
    HSEMOTION_FILES,
    HSEMOTION_LABELS,
    LICENCE,
    HSEmotionFile,
)
from affectnet_tf.published.hsemotion_model import (
    HSEMOTION_VARIANTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    hsemotion_backbone,
    hsemotion_backbone_b0,
    hsemotion_backbone_b2,
)
from affectnet_tf.published.hsemotion_onnx import HSEmotionWeights, read_hsemotion_onnx
from affectnet_tf.published.onnx_weights import MAX_ALIAS_CHAIN
from affectnet_tf.published.prediction import prediction_model, published_metadata
from tfds_affectnet import labels

__all__ = [
    "load_backbone_weights",
    "convert_hsemotion",
    # re-exported from the modules beside this one
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
    "MAX_ALIAS_CHAIN",
]


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
    backbone = hsemotion_backbone(weights.variant, weights.image_size, name=spec.backbone)
    load_backbone_weights(backbone, weights)
    order, canonical = labels.canonical_order(HSEMOTION_CLASS_NAMES[weights.num_classes])
    heads = ("expression", "valence", "arousal") if weights.multitask else ("expression",)
    extra = {"va_activation": "linear"} if weights.multitask else {}
    info = published_metadata(
        spec.backbone,
        weights.image_size,
        "raw",
        heads,
        canonical,
        _source_info(weights),
        normalization="imagenet mean/std inside the backbone",
        **extra,
    )
    kernel, bias = weights.classifier_kernel, weights.classifier_bias
    k = weights.num_classes
    columns = {"expression": (kernel[:, order], bias[order])}
    if weights.multitask:
        columns["valence"] = (kernel[:, k : k + 1], bias[k : k + 1])
        columns["arousal"] = (kernel[:, k + 1 : k + 2], bias[k + 1 : k + 2])
    return prediction_model(backbone, info, columns, name=f"{spec.backbone}_{info['task']}")


def _source_info(weights):
    """The metadata's ``source``: family, file name, SHA-256, licence, the published figures
    when the file is known by name, the architecture, HSEmotion's class order and
    preprocessing."""
    file_name = os.path.basename(weights.path)
    return {
        "family": "hsemotion",
        "file": file_name,
        "sha256": weights.sha256,
        "licence": LICENCE,
        "published": _published(file_name, weights),
        "architecture": HSEMOTION_VARIANTS[weights.variant].timm_name,
        "class_order": list(HSEMOTION_LABELS[weights.num_classes]),
        "preprocessing": "RGB, resize to the input side, x / 255, ImageNet mean/std",
    }


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
