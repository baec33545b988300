"""Masked multi-annotator losses: the mean over the observed answers only.

Ports of the reference's ``MaskedMultiCrossEntropy``, ``MaskedMultiMSE`` and
``MaskedMultiSequenceCrossEntropy`` (github.com/fmpr/CrowdLayer) as Keras 3 losses, with two
changes: missing answers are left out of the mean (the reference averaged masked zeros in), and
the value is the same on one device and under ``tf.distribute`` (see ``Distribution`` below).

Missing answers:

- classification, compact (default): integer answers ``(batch, num_annotators)`` (or
  ``(batch, time, num_annotators)``), ``-1`` for "no answer";
- classification, the reference's layout: one-hot ``(batch, num_classes, num_annotators)``
  (or with a time axis), an all ``-1`` vector for "no answer" (any negative entry, or an
  all-zero vector, also counts as missing);
- regression: ``NaN`` for "no answer"; the reference's sentinel ``999999999`` is also read as
  missing.

The loss of a batch is the sum of the per-answer losses over the observed answers divided by
their number. A row without answers adds nothing; a batch without answers gives 0 (never NaN).

Distribution: the pure functions return one value per sample, scaled so that Keras'
``"sum_over_batch_size"`` reduction (divide by the local batch size, then by the number of
replicas in sync, whose per-replica losses and gradients are summed) yields the mean over all
observed answers of the global batch:

    value_i = loss_sum_i * local_batch_size * num_replicas / observed_count_global

where ``observed_count_global`` is summed across replicas with the replica context's
``all_reduce`` (TensorFlow backend, inside ``tf.distribute``; elsewhere it is the local count).
So ``model.fit`` under ``MirroredStrategy`` gives the loss and the updates of one device, even
when replicas see different numbers of answers. A per-replica mean averaged over replicas would
not. In a custom loop, use the loss classes (or sum the values and divide by the global batch
size, which is the same for equal per-replica batches).
"""

import numpy as np
from keras import backend, losses, ops, saving

__all__ = [
    "MISSING_SENTINEL",
    "MaskedMultiCrossEntropy",
    "MaskedMultiMSE",
    "MaskedMultiSequenceCrossEntropy",
    "check_reduction",
    "masked_multi_cross_entropy",
    "masked_multi_mse",
    "mean_over_observed",
]

MISSING_SENTINEL = 999999999
_EPSILON = 1e-7
_REDUCTIONS = ("sum_over_batch_size", "mean", "none", None)


def _replicas_and_global(count):
    """Sums ``count`` over the replicas in sync; returns ``(global_count, num_replicas)``."""
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            return context.all_reduce("sum", count), context.num_replicas_in_sync
    return count, 1


def mean_over_observed(loss_sum, observed):
    """Per-sample values whose Keras batch reduction is the mean over the observed labels.

    The one reduction rule of the package's masked losses (module docstring, "Distribution"):
    ``value_i = loss_sum_i * local_batch_size * num_replicas / observed_count_global``.

    Args:
        loss_sum: per-sample (or per-sample-and-label) losses, zero where unobserved.
        observed: boolean mask of the observed labels, the shape of ``loss_sum``.

    Returns:
        ``(batch,)`` values; a batch without observed labels gives zeros.
    """
    batch_axes = tuple(range(1, len(loss_sum.shape)))
    per_sample = ops.sum(loss_sum, axis=batch_axes) if batch_axes else loss_sum
    count = ops.stop_gradient(ops.sum(ops.cast(observed, per_sample.dtype)))
    count, num_replicas = _replicas_and_global(count)
    local_size = ops.cast(ops.shape(per_sample)[0], per_sample.dtype)
    return ops.divide_no_nan(per_sample * local_size * num_replicas, count)


def check_reduction(reduction):
    """``reduction`` if it is one the masked losses take; else ``ValueError`` naming it."""
    if reduction not in _REDUCTIONS:
        raise ValueError(
            "`reduction` must be 'sum_over_batch_size' (the mean over observed answers), "
            f"'mean' (the same) or 'none' (per-sample values). Received: reduction={reduction!r}"
        )
    return reduction


def masked_multi_cross_entropy(y_true, y_pred, from_logits=True, padding_label=None):
    """Cross-entropy of each annotator's answer, averaged over the observed answers.

    ``y_pred`` holds per-annotator scores ``(batch, [time,] num_classes, num_annotators)``,
    the layout of the crowd layers. ``y_true`` is either integer answers
    ``(batch, [time,] num_annotators)`` with ``-1`` for no answer, or the reference's one-hot
    layout ``(batch, [time,] num_classes, num_annotators)`` with all ``-1`` vectors for no
    answer (soft label vectors are accepted too). The format is told by the rank.

    Formula: ``sum_{(i, r) observed} -log softmax(y_pred[i, :, r])[y_true[i, r]]`` divided by
    the number of observed answers, returned as per-sample shares (see the module docstring).

    Args:
        y_true: Answers, in either format.
        y_pred: Per-annotator scores.
        from_logits: Whether ``y_pred`` are logits (softmax over the class axis, default: the
            reference's layers; :class:`~crowd_layers.layers.CrowdsConfusion`'s
            log-probabilities are logits too) or probabilities (clipped, then the log).
        padding_label: Optional class index that also counts as "no answer" (the reference's
            sequence loss treated 0 as padding). Integer answers only.

    Returns:
        Per-sample values ``(batch,)``; their sum over the global batch divided by its size is
        the mean cross-entropy over the observed answers (0 when there are none).
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    rank = len(y_pred.shape)
    if rank not in (3, 4):
        raise ValueError(
            "`y_pred` must have shape (batch, num_classes, num_annotators) or "
            f"(batch, time, num_classes, num_annotators). Received: y_pred.shape={y_pred.shape}"
        )
    if len(y_true.shape) == rank - 1:
        answers = ops.cast(y_true, "int32")
        observed = answers >= 0
        if padding_label is not None:
            observed = ops.logical_and(observed, ops.not_equal(answers, padding_label))
        num_classes = y_pred.shape[-2]
        one_hot = ops.one_hot(ops.where(observed, answers, 0), num_classes, axis=rank - 2)
        one_hot = ops.cast(one_hot, y_pred.dtype)
        if from_logits:
            # -log softmax(y)[a] = logsumexp(y) - y[a]: no (batch, K, R) log-softmax tensor
            picked = ops.sum(one_hot * y_pred, axis=-2) - ops.logsumexp(y_pred, axis=-2)
        else:
            picked = ops.sum(one_hot * ops.log(ops.clip(y_pred, _EPSILON, 1.0)), axis=-2)
        losses_ = ops.where(observed, -picked, ops.zeros_like(picked))
    elif len(y_true.shape) == rank:
        if from_logits:
            log_probs = ops.log_softmax(y_pred, axis=-2)
        else:
            log_probs = ops.log(ops.clip(y_pred, _EPSILON, 1.0))
        if padding_label is not None:
            raise ValueError(
                "`padding_label` needs integer answers, not one-hot vectors. "
                f"Received: padding_label={padding_label!r}"
            )
        y_true = ops.cast(y_true, log_probs.dtype)
        observed = ops.logical_and(ops.min(y_true, axis=-2) >= 0, ops.sum(y_true, axis=-2) > 0)
        targets = ops.where(ops.expand_dims(observed, -2), y_true, ops.zeros_like(y_true))
        losses_ = -ops.sum(targets * log_probs, axis=-2)
    else:
        raise ValueError(
            "`y_true` must be integer answers with one axis less than `y_pred` or one-hot "
            f"answers shaped like `y_pred`. Received: y_true.shape={y_true.shape}, "
            f"y_pred.shape={y_pred.shape}"
        )
    return mean_over_observed(losses_, observed)


def masked_multi_mse(y_true, y_pred):
    """Squared error of each annotator's answer, averaged over the observed answers.

    Formula: ``sum_{(i, r) observed} (y_pred[i, r] - y_true[i, r])^2`` divided by the number
    of observed answers, returned as per-sample shares (see the module docstring).

    Args:
        y_true: Answers ``(batch, num_annotators)``; ``NaN`` (or ``999999999``) for no answer.
        y_pred: Per-annotator predictions of the same shape.

    Returns:
        Per-sample values ``(batch,)``.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    if tuple(y_true.shape[1:]) != tuple(y_pred.shape[1:]) or len(y_pred.shape) < 2:
        raise ValueError(
            "`y_true` and `y_pred` must both have shape (batch, num_annotators). "
            f"Received: y_true.shape={y_true.shape}, y_pred.shape={y_pred.shape}"
        )
    sentinel = ops.cast(MISSING_SENTINEL, y_true.dtype)
    observed = ops.logical_and(ops.isfinite(y_true), ops.not_equal(y_true, sentinel))
    targets = ops.where(observed, y_true, ops.zeros_like(y_true))
    squared = ops.where(observed, ops.square(y_pred - targets), ops.zeros_like(y_pred))
    return mean_over_observed(squared, observed)


@saving.register_keras_serializable(package="crowd_layers")
class MaskedMultiCrossEntropy(losses.Loss):
    """Masked multi-annotator cross-entropy, the mean over the observed answers.

    Wraps :func:`masked_multi_cross_entropy`. Pairs with
    :class:`~crowd_layers.layers.CrowdsClassification` and
    :class:`~crowd_layers.layers.CrowdsConfusion`.

    Formula: ``mean_{(i, r) observed} -log softmax(y_pred[i, :, r])[y_true[i, r]]``.

    Reference: F. Rodrigues and F. Pereira, "Deep Learning from Crowds", AAAI 2018.

    Args:
        from_logits: Whether ``y_pred`` are logits (default; also right for log-probabilities)
            or probabilities.
        padding_label: Optional class index that also counts as "no answer".
        reduction: ``"sum_over_batch_size"`` (default, the mean over observed answers),
            ``"mean"`` (the same) or ``"none"`` (per-sample shares).
        name: Loss name.
        dtype: Computation dtype.

    Input shape:
        ``y_pred``: ``(batch, [time,] num_classes, num_annotators)``; ``y_true``:
        ``(batch, [time,] num_annotators)`` integers with ``-1`` missing, or one-hot like
        ``y_pred`` with all ``-1`` vectors missing.

    Output shape:
        A scalar (``(batch,)`` with ``reduction="none"``).

    Examples:
        >>> loss = MaskedMultiCrossEntropy()
        >>> y_pred = np.zeros((2, 3, 2))  # uniform over 3 classes, 2 annotators
        >>> float(loss(np.array([[0, -1], [-1, -1]]), y_pred))  # one observed answer
        1.0986...
    """

    def __init__(
        self,
        from_logits=True,
        padding_label=None,
        reduction="sum_over_batch_size",
        name="masked_multi_cross_entropy",
        dtype=None,
    ):
        super().__init__(name=name, reduction=check_reduction(reduction), dtype=dtype)
        self.from_logits = bool(from_logits)
        self.padding_label = None if padding_label is None else int(padding_label)

    def call(self, y_true, y_pred):
        return masked_multi_cross_entropy(
            y_true, y_pred, from_logits=self.from_logits, padding_label=self.padding_label
        )

    def get_config(self):
        config = super().get_config()
        config.update({"from_logits": self.from_logits, "padding_label": self.padding_label})
        return config


@saving.register_keras_serializable(package="crowd_layers")
class MaskedMultiSequenceCrossEntropy(MaskedMultiCrossEntropy):
    """Masked multi-annotator cross-entropy for sequence labelling.

    The sequence form of :class:`MaskedMultiCrossEntropy`: the mean over every observed
    ``(sequence, step, annotator)`` answer. The reference also treated class 0 as padding and
    averaged over all annotators; here padding is ``-1`` like a missing answer, or the class
    given as ``padding_label`` (``padding_label=0`` reproduces the reference's masking).

    Formula: ``mean_{(i, t, r) observed} -log softmax(y_pred[i, t, :, r])[y_true[i, t, r]]``.

    Reference: F. Rodrigues and F. Pereira, "Deep Learning from Crowds", AAAI 2018.

    Args:
        num_classes: Number of classes; ``y_pred``'s class axis must match.
        from_logits: Whether ``y_pred`` are logits (default) or probabilities.
        padding_label: Optional class index that also counts as "no answer".
        reduction: As for :class:`MaskedMultiCrossEntropy`.
        name: Loss name.
        dtype: Computation dtype.

    Input shape:
        ``y_pred``: ``(batch, time, num_classes, num_annotators)``; ``y_true``:
        ``(batch, time, num_annotators)`` integers with ``-1`` for missing (or one-hot like
        ``y_pred``).

    Output shape:
        A scalar (``(batch,)`` with ``reduction="none"``).

    Examples:
        >>> loss = MaskedMultiSequenceCrossEntropy(num_classes=5)
        >>> y_pred = np.zeros((2, 7, 5, 3))
        >>> y_true = np.full((2, 7, 3), -1)
        >>> y_true[0, :4, 0] = 2
        >>> float(loss(y_true, y_pred))  # log(5)
        1.6094...
    """

    def __init__(
        self,
        num_classes,
        from_logits=True,
        padding_label=None,
        reduction="sum_over_batch_size",
        name="masked_multi_sequence_cross_entropy",
        dtype=None,
    ):
        super().__init__(
            from_logits=from_logits,
            padding_label=padding_label,
            reduction=reduction,
            name=name,
            dtype=dtype,
        )
        if (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, int | np.integer)
            or num_classes < 1
        ):
            raise ValueError(
                f"`num_classes` must be an integer >= 1. Received: num_classes={num_classes!r}"
            )
        self.num_classes = int(num_classes)

    def call(self, y_true, y_pred):
        if len(y_pred.shape) != 4 or y_pred.shape[-2] not in (None, self.num_classes):
            raise ValueError(
                "`y_pred` must have shape (batch, time, num_classes, num_annotators) with "
                f"num_classes={self.num_classes}. Received: y_pred.shape={y_pred.shape}"
            )
        return super().call(y_true, y_pred)

    def get_config(self):
        config = super().get_config()
        config["num_classes"] = self.num_classes
        return config


@saving.register_keras_serializable(package="crowd_layers")
class MaskedMultiMSE(losses.Loss):
    """Masked multi-annotator mean squared error, the mean over the observed answers.

    Wraps :func:`masked_multi_mse`; pairs with :class:`~crowd_layers.layers.CrowdsRegression`.

    Formula: ``mean_{(i, r) observed} (y_pred[i, r] - y_true[i, r])^2``.

    Reference: F. Rodrigues and F. Pereira, "Deep Learning from Crowds", AAAI 2018.

    Args:
        reduction: As for :class:`MaskedMultiCrossEntropy`.
        name: Loss name.
        dtype: Computation dtype.

    Input shape:
        ``y_true`` and ``y_pred``: ``(batch, num_annotators)``; ``NaN`` (or ``999999999``)
        in ``y_true`` for no answer.

    Output shape:
        A scalar (``(batch,)`` with ``reduction="none"``).

    Examples:
        >>> loss = MaskedMultiMSE()
        >>> float(loss(np.array([[1.0, np.nan], [np.nan, 999999999]]), np.zeros((2, 2))))
        1.0
    """

    def __init__(self, reduction="sum_over_batch_size", name="masked_multi_mse", dtype=None):
        super().__init__(name=name, reduction=check_reduction(reduction), dtype=dtype)

    def call(self, y_true, y_pred):
        return masked_multi_mse(y_true, y_pred)
