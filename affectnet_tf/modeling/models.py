"""Models: a backbone from :mod:`affectnet_tf.modeling.backbones`, task heads, and crowd layers.

The prediction model takes raw RGB ``uint8`` images of any size (input ``(None, None, 3)``):
a :class:`~affectnet_tf.modeling.backbones.ModelMetadata` layer (identity, carries the metadata), an
:class:`~affectnet_tf.modeling.backbones.ImagePreprocessing` layer (resize + the backbone's scaling),
the backbone (called with ``training=False`` when pretrained; Keras 3 still passes the outer
call's ``training=True`` on to it in ``fit`` (keras-team/keras#20285), so its BatchNorm
statistics stay fixed only while the backbone is frozen), global pooling, dropout and the heads:

* ``expression``: ``Dense(num_classes, softmax)``;
* ``valence`` / ``arousal``: ``Dense(1, tanh)``, values in ``[-1, 1]``, shape ``(batch, 1)``.

Tasks ``exp``, ``val``, ``aro`` give a single output; ``va`` and ``all`` a dict keyed by the
head names. For crowd training (``target="cv"``) the training model adds a crowd layer on each
head (:class:`crowd_layers.CrowdsConfusion` or :class:`crowd_layers.CrowdsClassification` for
expression, :class:`crowd_layers.CrowdsRegression` for valence/arousal) and shares every weight
with the prediction model.

Metadata: stored in the ``ModelMetadata`` layer's config inside ``model.keras``, so it needs no
side file and survives ``keras.models.load_model``; read it with :func:`model_metadata`.
"""

import collections

import keras
import numpy as np

import crowd_layers
from affectnet_tf.data.images import RESIZE_METHOD
from affectnet_tf.data.targets import TASK_HEADS
from affectnet_tf.modeling.backbones import ImagePreprocessing, ModelMetadata, build_backbone
from affectnet_tf.version import __version__
from tfds_affectnet import labels

__all__ = [
    "CROWD_LAYERS",
    "CONFUSION_CROWD_LAYERS",
    "VA_CROWD_LAYERS",
    "TASK_HEADS",
    "BuiltModel",
    "build_model",
    "model_metadata",
    "load_model",
    "crowd_layer_weights",
    "crowd_losses",
]

#: Expression crowd layers (:data:`crowd_layers.CROWD_METHODS`): ``pooled`` (the default: the
#: image's answers pooled in Dawid-Skene's likelihood), ``confusion``, ``geocrowdnet`` and the
#: reference layers; :func:`crowd_layers.crowd_method` builds each.
CROWD_LAYERS = crowd_layers.CROWD_METHODS
#: Layers that hold confusion matrices and so accept ``init_confusions``.
CONFUSION_CROWD_LAYERS = crowd_layers.CONFUSION_METHODS
#: Valence/arousal crowd layers: ``latent`` (:class:`crowd_layers.CrowdsLatentTruth`: the
#: network as the prior of the latent-truth model, each image's answers pooled in its marginal
#: likelihood), ``gaussian`` (:class:`crowd_layers.CrowdsGaussian`: scale, bias and noise per
#: annotator, each answer scored on its own) or a :class:`crowd_layers.CrowdsRegression`
#: connection.
VA_CROWD_LAYERS = ("latent", "gaussian", "S", "B", "S+B", "B+S")
#: The valence/arousal crowd layer of the training command by default.
DEFAULT_VA_CROWD_LAYER = "latent"

BuiltModel = collections.namedtuple(
    "BuiltModel", ["training_model", "prediction_model", "backbone"]
)


def _check_choice(value, choices, name):
    """Raises a ``ValueError`` naming ``name`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}. Received: {name}={value!r}")


def _check_crowd_arguments(
    crowd_heads, num_annotators, crowd_layer, va_crowd_layer, init_confusions
):
    """Checks what the crowd heads need: known layers, the annotators, fitting start matrices."""
    _check_choice(crowd_layer, CROWD_LAYERS, "crowd_layer")
    _check_choice(va_crowd_layer, VA_CROWD_LAYERS, "va_crowd_layer")
    if not num_annotators:
        raise ValueError(
            "Crowd targets ('cv') need the number of annotators of the dataset (a dataset with "
            f"crowd answers, such as affectnet_c25). Received: num_annotators={num_annotators!r}"
        )
    if init_confusions is not None and "expression" not in crowd_heads:
        raise ValueError("`init_confusions` needs an expression crowd head (target='cv').")
    if init_confusions is not None and crowd_layer not in CONFUSION_CROWD_LAYERS:
        raise ValueError(
            "`init_confusions` initialises a confusion crowd layer "
            f"({', '.join(CONFUSION_CROWD_LAYERS)}) only. Received: crowd_layer={crowd_layer!r}"
        )


def _model_info(model, task, class_names, target, crowd_heads, size, spec, metadata):
    """The metadata of a model (:func:`model_metadata`), ``metadata``'s entries added."""
    info = {
        "backbone": model,
        "image_size": size,
        "preprocessing": spec.preprocessing,
        "resize_method": RESIZE_METHOD,
        "input": "RGB uint8 images of any size, resized inside the model",
        "task": task,
        "outputs": list(TASK_HEADS[task]),
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "target": target,
        "crowd_heads": crowd_heads,
        "package": "affectnet-tf",
        "package_version": __version__,
    }
    info.update(metadata or {})
    return info


def _task_head(head, features, num_classes):
    """One head on the pooled features: softmax over the classes, or one tanh value."""
    if head == "expression":
        layer = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=head)
    else:
        layer = keras.layers.Dense(1, activation="tanh", dtype="float32", name=head)
    return layer(features)


def _outputs(heads, outputs):
    """A model's outputs: the only head's tensor, or the dict of heads."""
    return outputs[heads[0]] if len(heads) == 1 else outputs


def _prediction_model(backbone, spec, info, heads, num_classes, dropout, pretrained, name):
    """The prediction model: metadata, preprocessing, the backbone, dropout and the heads."""
    inputs = keras.Input((None, None, 3), dtype="uint8", name="image")
    x = ModelMetadata(info, name="metadata")(inputs)
    x = ImagePreprocessing(info["image_size"], spec.preprocessing, name="preprocessing")(x)
    features = backbone(x, training=False) if pretrained else backbone(x)
    if dropout:
        features = keras.layers.Dropout(dropout, name="head_dropout")(features)
    outputs = {head: _task_head(head, features, num_classes) for head in heads}
    return keras.Model(inputs, _outputs(heads, outputs), name=name)


def _crowd_layer(head, num_classes, num_annotators, crowd_layer, va_crowd_layer, starts):
    """The crowd layer of one head (``crowd_<head>``); ``starts`` holds ``init_confusions``
    and ``va_crowd_starts``."""
    options = {"dtype": "float32", "name": f"crowd_{head}"}
    if head == "expression":
        layer, _ = crowd_layers.crowd_method(
            crowd_layer, num_classes, num_annotators, starts["init_confusions"], **options
        )
        return layer
    if va_crowd_layer == "latent":
        start = (starts["va_crowd_starts"] or {}).get(head)
        if start is None:
            return crowd_layers.CrowdsLatentTruth(num_annotators, **options)
        if len(start.scale_) != num_annotators:
            raise ValueError(
                f"The {head} start has {len(start.scale_)} annotators, the dataset "
                f"{num_annotators}."
            )
        return crowd_layers.CrowdsLatentTruth.from_aggregator(
            start, annotator_weights=start.answer_counts_, **options
        )
    if va_crowd_layer == "gaussian":
        return crowd_layers.CrowdsGaussian(num_annotators, **options)
    return crowd_layers.CrowdsRegression(num_annotators, conn_type=va_crowd_layer, **options)


def _crowd_training_model(prediction, heads, crowd_heads, make_layer, name):
    """The training model: the prediction model with ``make_layer(head)`` on each crowd head
    (the other heads are trained on their single-value targets as they are)."""
    inputs = prediction.inputs[0]
    predicted = prediction(inputs)
    if len(heads) == 1:
        predicted = {heads[0]: predicted}
    outputs = {
        head: make_layer(head)(predicted[head]) if head in crowd_heads else predicted[head]
        for head in heads
    }
    return keras.Model(inputs, _outputs(heads, outputs), name=name)


def build_model(
    model="resnet50",
    *,
    task="exp",
    num_classes=None,
    class_names=None,
    target="mv",
    va_target=None,
    num_annotators=None,
    crowd_layer=crowd_layers.DEFAULT_CROWD_METHOD,
    va_crowd_layer=DEFAULT_VA_CROWD_LAYER,
    weights="imagenet",
    image_size=None,
    dropout=0.2,
    metadata=None,
    init_confusions=None,
    va_crowd_starts=None,
):
    """Builds the training model and the prediction model (sharing weights).

    Args:
        model: backbone name, a key of :data:`affectnet_tf.modeling.backbones.BACKBONES`.
        task: ``exp``, ``aro``, ``val``, ``va`` or ``all``.
        num_classes: 8 (default) or 7 (no contempt) of AffectNet's; None with ``class_names``.
        class_names: the expression classes in output order (a crowd folder's own, say).
        target: the expression training target; ``"cv"`` adds a crowd layer to that head.
        va_target: the valence/arousal target (default ``"cv"`` when ``target`` is, else a
            single value): each head's own target decides whether it has a crowd layer.
        num_annotators: number of annotators (needed for any ``cv`` head).
        crowd_layer: expression crowd layer (:data:`CROWD_LAYERS`): ``pooled`` (default,
            :class:`crowd_layers.CrowdsPooled` with :class:`crowd_layers.PooledCrowdLikelihood`),
            ``confusion`` (:class:`crowd_layers.CrowdsConfusion`), ``geocrowdnet`` (the same
            layer with GeoCrowdNet's volume regulariser), or ``MW``, ``VW``, ``VB``, ``VW+B``,
            ``SW`` (:class:`crowd_layers.CrowdsClassification`).
        va_crowd_layer: valence/arousal crowd layer (:data:`VA_CROWD_LAYERS`): ``latent``
            (default, :class:`crowd_layers.CrowdsLatentTruth`), ``gaussian``
            (:class:`crowd_layers.CrowdsGaussian`) or a :class:`crowd_layers.CrowdsRegression`
            connection ``S``, ``B``, ``S+B``, ``B+S``.
        va_crowd_starts: optional ``{head: fitted crowd_layers.LatentTruthRegression}``
            that a ``latent`` head starts from (scales, biases, noise, answer counts).
        init_confusions: optional ``(num_annotators, K, K)`` row-stochastic matrices that a
            confusion crowd layer starts from (e.g. Dawid-Skene's ``confusions_``).
        weights: ``"imagenet"``, ``None`` or a weights file of the backbone.
        image_size: model input side (default: the backbone's default size).
        dropout: dropout rate before the heads.
        metadata: extra JSON-able entries for the model's metadata.

    Returns:
        :class:`BuiltModel` ``(training_model, prediction_model, backbone)``; without crowd
        layers the training model is the prediction model.
    """
    _check_choice(task, TASK_HEADS, "task")
    class_names = labels.class_set(class_names, num_classes)
    num_classes = len(class_names)
    heads = TASK_HEADS[task]
    va_target = va_target or ("cv" if target == "cv" else "mean")
    crowd_heads = [h for h in heads if (target if h == "expression" else va_target) == "cv"]
    if crowd_heads:
        _check_crowd_arguments(
            crowd_heads, num_annotators, crowd_layer, va_crowd_layer, init_confusions
        )
    backbone, spec = build_backbone(model, weights=weights, image_size=image_size)
    size = int(backbone.input_shape[1])
    pretrained = weights is not None and str(weights).lower() != "none"
    info = _model_info(model, task, class_names, target, crowd_heads, size, spec, metadata)
    prediction = _prediction_model(
        backbone, spec, info, heads, num_classes, dropout, pretrained, name=f"{model}_{task}"
    )
    if not crowd_heads:
        return BuiltModel(prediction, prediction, backbone)
    starts = {"init_confusions": init_confusions, "va_crowd_starts": va_crowd_starts}
    layers = (num_classes, num_annotators, crowd_layer, va_crowd_layer, starts)
    training = _crowd_training_model(
        prediction,
        heads,
        crowd_heads,
        lambda head: _crowd_layer(head, *layers),
        name=f"{model}_{task}_crowd",
    )
    return BuiltModel(training, prediction, backbone)


def crowd_losses(crowd_layer, va_crowd_layer, training_model=None):
    """The losses that score a crowd head: ``{"expression": ..., "valence": ..., "arousal": ...}``.

    A ``latent`` head's :class:`crowd_layers.LatentTruthLikelihood` takes its
    ``mean_gradient_scale`` from the head's layer in ``training_model`` (``crowd_<head>``; its
    start's default without a model)."""
    result = {"expression": crowd_layers.crowd_loss(crowd_layer)}
    for head in ("valence", "arousal"):
        if va_crowd_layer == "latent":
            layer = _find_layer(training_model, f"crowd_{head}")
            if not isinstance(layer, crowd_layers.CrowdsLatentTruth):
                layer = crowd_layers.CrowdsLatentTruth(1)
            result[head] = crowd_layers.LatentTruthLikelihood(
                mean_gradient_scale=layer.mean_gradient_scale()
            )
        elif va_crowd_layer == "gaussian":
            result[head] = crowd_layers.MaskedGaussianLikelihood()
        else:
            result[head] = crowd_layers.MaskedMultiMSE()
    return result


def _find_layer(model, name):
    """The layer ``name`` of ``model`` (None without a model or such a layer)."""
    if model is None:
        return None
    return next((layer for layer in model.layers if layer.name == name), None)


def _find_metadata_layer(model):
    for layer in model.layers:
        if isinstance(layer, ModelMetadata):
            return layer
        if isinstance(layer, keras.Model):
            found = _find_metadata_layer(layer)
            if found is not None:
                return found
    return None


def model_metadata(model):
    """The metadata dict of a model built by :func:`build_model` (or loaded from a file).

    Keys: ``backbone``, ``image_size``, ``preprocessing``, ``resize_method``, ``task``,
    ``outputs``, ``num_classes``, ``class_names`` (in output order), ``target``,
    ``package_version``, and what the training run added (``va_target``, ``dataset`` ...).
    """
    layer = _find_metadata_layer(model)
    if layer is None:
        raise ValueError(
            f"`model` has no ModelMetadata layer (not built by affectnet_tf.build_model). "
            f"Received: model={model.name!r}"
        )
    return dict(layer.metadata)


def load_model(path, compile=False, safe_mode=True):
    """Loads a saved model (``model.keras``) with safe mode on; no custom objects needed."""
    return keras.models.load_model(path, compile=compile, safe_mode=safe_mode)


def crowd_layer_weights(training_model):
    """The learned annotator parameters of a crowd model, as a dict of NumPy arrays.

    ``<head>_confusions`` ``(R, K, K)`` for expression (from ``confusion_matrices()``),
    ``<head>_scale`` / ``<head>_bias`` ``(R,)`` for valence and arousal, and
    ``<head>_noise`` ``(R,)`` (each annotator's standard deviation) for the ``gaussian`` and
    ``latent`` layers, and ``<head>_prior_std`` (the network's residual spread) for ``latent``.
    """
    confusion_layers = (
        crowd_layers.CrowdsConfusion,
        crowd_layers.CrowdsClassification,
        crowd_layers.CrowdsPooled,
    )
    result = {}
    for layer in training_model.layers:
        head = layer.name.removeprefix("crowd_")
        if isinstance(layer, confusion_layers):
            result[f"{head}_confusions"] = np.asarray(layer.confusion_matrices())
        elif isinstance(layer, crowd_layers.CrowdsLatentTruth):
            for name, value in layer.annotator_parameters().items():
                result[f"{head}_{name}"] = np.asarray(value)
        elif isinstance(layer, crowd_layers.CrowdsGaussian):
            result[f"{head}_noise"] = layer.noise_levels()
            for name in ("scale", "bias"):
                weight = getattr(layer, name)
                if weight is not None:
                    result[f"{head}_{name}"] = np.asarray(weight.numpy()).reshape(-1)
        elif isinstance(layer, crowd_layers.CrowdsRegression):
            if layer.scale is not None:
                result[f"{head}_scale"] = np.asarray(layer.scale.numpy()).reshape(-1)
            if layer.bias is not None:
                result[f"{head}_bias"] = np.asarray(layer.bias.numpy()).reshape(-1)
    return result
