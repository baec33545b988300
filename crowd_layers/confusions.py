"""Confusion-matrix parameters shared by the confusion crowd layers: start values, checks,
regularisers (Tanno et al.'s trace, GeoCrowdNet's volume).

The layers store free logits ``L`` of shape ``(num_annotators, K, K)`` divided by a
``logit_scale`` and read ``A_r = softmax(logit_scale * L_r, axis=-1)``: row ``k`` is the
distribution of annotator ``r``'s answers for an item of true class ``k``.
"""

import numpy as np
from keras import ops, regularizers, saving

from crowd_layers.checks import check_non_negative, check_positive

__all__ = [
    "ConfusionTraceRegularizer",
    "ConfusionVolumeRegularizer",
    "check_confusions",
    "confusion_regularizer",
    "initial_confusion_logits",
]

_EPSILON = 1e-7


def check_confusions(confusions, num_annotators, num_classes, name="init_confusions"):
    """Validates row-stochastic ``(num_annotators, K, K)`` matrices; returns float64."""
    array = np.asarray(confusions, dtype=np.float64)
    expected = (num_annotators, num_classes, num_classes)
    if array.shape != expected:
        raise ValueError(
            f"`{name}` must have shape (num_annotators, num_classes, num_classes)={expected}. "
            f"Received: {name}.shape={array.shape}"
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(
            f"`{name}` must hold finite non-negative probabilities. "
            f"Received: {name} with min={np.nanmin(array)!r}"
        )
    if not np.allclose(array.sum(axis=-1), 1.0, atol=1e-4):
        raise ValueError(
            f"`{name}` rows must sum to one (row-stochastic). Received: row sums between "
            f"{array.sum(axis=-1).min():.4g} and {array.sum(axis=-1).max():.4g}"
        )
    return array


def initial_confusion_logits(num_annotators, num_classes, init_diagonal, init_confusions):
    """Logits ``(R, K, K)`` whose row softmax is ``init_confusions`` (or the diagonal start)."""
    if init_confusions is not None:
        return np.log(np.clip(init_confusions, _EPSILON, None))
    off = (1.0 - init_diagonal) / (num_classes - 1)
    matrix = np.full((num_classes, num_classes), off)
    np.fill_diagonal(matrix, init_diagonal)
    return np.broadcast_to(np.log(matrix), (num_annotators, num_classes, num_classes)).copy()


@saving.register_keras_serializable(package="crowd_layers")
class ConfusionVolumeRegularizer(regularizers.Regularizer):
    """GeoCrowdNet's (W) volume term on confusion matrices given by their logits.

    ``penalty = -volume_weight * log det(W^T W)``, ``W = [A_1^T; ...; A_R^T]`` of shape
    ``(R * K, K)`` with ``A_r = softmax(logit_scale * L_r, axis=-1)`` (rows: true class), so
    ``W^T W = sum_r A_r A_r^T``. Minimising it spreads the columns of the stacked confusion
    matrices apart (the "sufficiently scattered" condition under which Ibrahim et al. prove
    the annotators and the classifier identifiable). As in their code, a non-finite value or
    one above 100 (a near-singular ``W``) adds nothing.

    Reference: S. Ibrahim, T. Nguyen, X. Fu, "Deep Learning From Crowdsourced Labels: Coupled
    Cross-Entropy Minimization, Identifiability, and Regularization", ICLR 2023.

    Args:
        volume_weight: Weight ``>= 0`` of ``-log det(W^T W)``.
        logit_scale: Multiplier of the stored logits (as in the layers).
    """

    def __init__(self, volume_weight=0.01, logit_scale=1.0):
        self.volume_weight = check_non_negative(volume_weight, "volume_weight")
        self.logit_scale = check_positive(logit_scale, "logit_scale")

    def __call__(self, logits):
        confusions = ops.softmax(logits * self.logit_scale, axis=-1)
        gram = ops.sum(ops.matmul(confusions, ops.transpose(confusions, (0, 2, 1))), axis=0)
        value = -ops.logdet(gram)
        keep = ops.logical_and(ops.isfinite(value), value <= 100.0)
        return self.volume_weight * ops.where(keep, value, ops.zeros_like(value))

    def get_config(self):
        return {"volume_weight": self.volume_weight, "logit_scale": self.logit_scale}


@saving.register_keras_serializable(package="crowd_layers")
class ConfusionTraceRegularizer(regularizers.Regularizer):
    """Mean diagonal of row-stochastic confusion matrices given by their logits.

    ``penalty = trace_weight * mean_r trace(A_r) / K`` with
    ``A_r = softmax(logit_scale * L_r, axis=-1)`` for stored logits ``L`` of shape
    ``(num_annotators, K, K)``: the trace regulariser of Tanno et al. (CVPR 2019), divided by
    ``K`` so that a weight means the same for any number of classes. Used by
    :class:`CrowdsConfusion`.

    Args:
        trace_weight: Weight of the mean diagonal entry.
        logit_scale: Multiplier of the stored logits (as in :class:`CrowdsConfusion`).
    """

    def __init__(self, trace_weight=0.5, logit_scale=1.0):
        self.trace_weight = float(trace_weight)
        self.logit_scale = float(logit_scale)

    def __call__(self, logits):
        confusions = ops.softmax(logits * self.logit_scale, axis=-1)
        eye = ops.eye(ops.shape(confusions)[-1], dtype=confusions.dtype)
        return self.trace_weight * ops.mean(ops.sum(confusions * eye, axis=-1))

    def get_config(self):
        return {"trace_weight": self.trace_weight, "logit_scale": self.logit_scale}


def confusion_regularizer(trace_weight, volume_weight, logit_scale):
    """The regulariser of a layer's confusion logits: the trace term, the volume term or none.

    Raises:
        ValueError: when both weights are non-zero (one regulariser at a time).
    """
    if trace_weight and volume_weight:
        raise ValueError(
            "Use one confusion regulariser: set trace_weight=0 to use `volume_weight`, or "
            f"volume_weight=0. Received: trace_weight={trace_weight!r}, "
            f"volume_weight={volume_weight!r}"
        )
    if trace_weight:
        return ConfusionTraceRegularizer(trace_weight, logit_scale)
    if volume_weight:
        return ConfusionVolumeRegularizer(volume_weight, logit_scale)
    return None
