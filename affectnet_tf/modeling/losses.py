"""Masked losses for single-label targets: a missing label adds nothing to the loss.

Missing markers: ``-1`` for a class index, an all-zero row for a distribution, ``NaN`` for a
valence/arousal value (the markers of :func:`affectnet_tf.data.pipeline.make_dataset` for ``task="all"``).

One reduction rule for every masked loss of the package, these and ``crowd_layers``' alike: the
loss of a batch is the sum over its observed labels divided by their number (never by the batch
size, which would shrink the loss of a batch with missing labels), computed over the global
batch under ``tf.distribute`` (:func:`crowd_layers.losses.mean_over_observed`). A batch without
an observed label gives 0.
"""

import keras
from keras import ops

from crowd_layers.losses import mean_over_observed

__all__ = [
    "MaskedSparseCategoricalCrossentropy",
    "MaskedCategoricalCrossentropy",
    "MaskedMeanSquaredError",
]


@keras.saving.register_keras_serializable(package="affectnet_tf")
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Cross-entropy on class indices, ``-1`` masked; label smoothing and class weights.

    Args:
        num_classes: number of classes ``K``.
        label_smoothing: the target is ``(1 - s) * one_hot + s / K``.
        class_weights: optional list of ``K`` weights, one per true class.

    Input shape:
        ``y_true`` ``(batch,)`` integers (``-1`` missing); ``y_pred`` ``(batch, K)``
        probabilities.
    """

    def __init__(
        self,
        num_classes,
        label_smoothing=0.0,
        class_weights=None,
        reduction="sum_over_batch_size",
        name="masked_sparse_categorical_crossentropy",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        observed = ops.cast(labels >= 0, y_pred.dtype)
        one_hot = ops.one_hot(ops.maximum(labels, 0), self.num_classes, dtype=y_pred.dtype)
        smooth = one_hot * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        log_p = ops.log(ops.clip(y_pred, 1e-7, 1.0))
        loss = -ops.sum(smooth * log_p, axis=-1) * observed
        if self.class_weights is not None:
            loss = loss * ops.take(
                ops.convert_to_tensor(self.class_weights, y_pred.dtype), ops.maximum(labels, 0)
            )
        return mean_over_observed(loss, observed > 0)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "label_smoothing": self.label_smoothing,
                "class_weights": self.class_weights,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="affectnet_tf")
class MaskedCategoricalCrossentropy(keras.losses.Loss):
    """Cross-entropy on target distributions (``soft``, ``ds``); all-zero rows are missing.

    Args:
        label_smoothing: the target is ``(1 - s) * y_true + s / K``.
        class_weights: optional list of ``K`` weights, applied to the target's mass.
    """

    def __init__(
        self,
        label_smoothing=0.0,
        class_weights=None,
        reduction="sum_over_batch_size",
        name="masked_categorical_crossentropy",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.label_smoothing = float(label_smoothing)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        mass = ops.sum(y_true, axis=-1)
        observed = ops.cast(mass > 0, y_pred.dtype)
        k = ops.cast(ops.shape(y_pred)[-1], y_pred.dtype)
        target = y_true * (1.0 - self.label_smoothing) + self.label_smoothing / k
        if self.class_weights is not None:
            target = target * ops.convert_to_tensor(self.class_weights, y_pred.dtype)
        log_p = ops.log(ops.clip(y_pred, 1e-7, 1.0))
        return mean_over_observed(-ops.sum(target * log_p, axis=-1) * observed, observed > 0)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"label_smoothing": self.label_smoothing, "class_weights": self.class_weights}
        )
        return config


@keras.saving.register_keras_serializable(package="affectnet_tf")
class MaskedMeanSquaredError(keras.losses.Loss):
    """Squared error of one value per image, ``NaN`` targets masked.

    Input shape:
        ``y_true`` ``(batch,)`` or ``(batch, 1)``; ``y_pred`` ``(batch, 1)``.
    """

    def __init__(
        self, reduction="sum_over_batch_size", name="masked_mean_squared_error", dtype=None
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        y_true = ops.reshape(ops.cast(y_true, y_pred.dtype), (-1,))
        y_pred = ops.reshape(y_pred, (-1,))
        observed = ops.logical_not(ops.isnan(y_true))
        diff = ops.where(observed, y_pred - ops.where(observed, y_true, 0.0), 0.0)
        return mean_over_observed(ops.square(diff), observed)
