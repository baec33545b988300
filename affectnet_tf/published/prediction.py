"""The package's prediction model around a converted backbone, shared by EmoNet and HSEmotion.

A converted published model has the structure of a trained run's ``model.keras``: RGB
``uint8`` images of any size in, a ``ModelMetadata`` layer holding :func:`published_metadata`,
``ImagePreprocessing`` (resize to the published input side, then the family's scaling), the
backbone in inference mode, and one ``Dense`` head per output (``expression`` a softmax,
``valence`` and ``arousal`` linear) cut from the published classifier's columns
(:func:`prediction_model`).
"""

import keras

from affectnet_tf.data.images import RESIZE_METHOD
from affectnet_tf.modeling.backbones import ImagePreprocessing, ModelMetadata
from affectnet_tf.version import __version__

__all__ = ["published_metadata", "prediction_model"]


def published_metadata(backbone, image_size, preprocessing, outputs, class_names, source, **extra):
    """The metadata of a converted model: the keys of :func:`affectnet_tf.build_model`'s, with
    ``target`` ``"published"``, and the ``source`` of the weights.

    Args:
        backbone: the registry name (``"emonet"``, ``"hsemotion_enet_b0"`` ...).
        image_size: the input side the model resizes images to.
        preprocessing: the scaling mode of ``ImagePreprocessing`` (``"unit"``, ``"raw"``).
        outputs: the heads, ``["expression"]`` or ``["expression", "valence", "arousal"]``.
        class_names: the expression outputs in the package's order.
        source: ``{"family", "file", "sha256", "licence", ...}`` of the weights.
        **extra: more keys (``normalization``, ``va_activation`` ...).

    Returns:
        The metadata dict.
    """
    info = {
        "backbone": backbone,
        "image_size": image_size,
        "preprocessing": preprocessing,
        "resize_method": RESIZE_METHOD,
        "input": "RGB uint8 images of any size, resized inside the model",
        "task": "all" if len(outputs) > 1 else "exp",
        "outputs": list(outputs),
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "target": "published",
        "crowd_heads": [],
        "package": "affectnet-tf",
        "package_version": __version__,
        "source": source,
    }
    info.update(extra)
    return info


def prediction_model(backbone, info, heads, name):
    """The prediction model: ``uint8`` images -> metadata -> preprocessing -> ``backbone`` ->
    one ``Dense`` head per entry of ``heads``.

    Args:
        backbone: the converted headless backbone (preprocessed images -> features).
        info: its :func:`published_metadata` (``image_size`` and ``preprocessing`` read).
        heads: ``{head: (kernel (features, units), bias (units,))}`` in output order; the
            ``expression`` head gets a softmax, the others stay linear.
        name: the model's name.

    Returns:
        A ``keras.Model`` whose output is a dict keyed by head, or the one head's tensor.
    """
    inputs = keras.Input((None, None, 3), dtype="uint8", name="image")
    x = ModelMetadata(info, name="metadata")(inputs)
    x = ImagePreprocessing(info["image_size"], info["preprocessing"], name="preprocessing")(x)
    features = backbone(x, training=False)
    outputs = {}
    for head, (kernel, bias) in heads.items():
        layer = keras.layers.Dense(
            kernel.shape[1],
            activation="softmax" if head == "expression" else None,
            dtype="float32",
            name=head,
        )
        outputs[head] = layer(features)
        layer.set_weights([kernel, bias])
    if len(outputs) == 1:
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs, name=name)
