"""Evaluation metrics: AffectNet's table as NumPy functions, and streaming Keras metrics.

Expression (Mollahosseini et al., 2019, Table 7): accuracy, balanced accuracy, F1 (macro and
weighted), Cohen's kappa, Krippendorff's alpha (model and label as two coders), AUC (one-vs-rest,
macro) and AUC-PR (macro average precision). Valence and arousal: RMSE, Pearson correlation
(CORR), sign agreement (SAGR) and Lin's concordance correlation coefficient (CCC).

Conventions: expression labels ``-1`` are ignored; valence/arousal targets that are not finite
are ignored. ``y_pred`` of the label metrics may be class indices or probabilities ``(N, K)``
(argmax taken). Where a metric is undefined (one class only, constant predictions, no example)
the value is NaN **and** a ``RuntimeWarning`` says why; nothing returns NaN silently.

The label metrics are computed by ``sklearn.metrics`` (``accuracy_score``,
``balanced_accuracy_score``, ``f1_score``, ``cohen_kappa_score``, ``confusion_matrix``,
``precision_recall_fscore_support``, and ``roc_auc_score`` / ``average_precision_score`` per
class for the one-vs-rest averages), Pearson's correlation by ``scipy.stats.pearsonr``; this
module adds the conventions above (missing labels, the classes left out, NaN with a warning)
and Krippendorff's alpha of two raters (:func:`krippendorff_alpha_pair`, by
:func:`crowd_layers.krippendorff_alpha`). The tests check the values against scikit-learn's
multi-class calls and the ``krippendorff`` package.

Reference: A. Mollahosseini, B. Hasani, M. H. Mahoor, "AffectNet: A Database for Facial
Expression, Valence, and Arousal Computing in the Wild", IEEE Trans. Affective Computing 10(1),
2019. https://doi.org/10.1109/TAFFC.2017.2740923
"""

import warnings

import keras
import numpy as np
from keras import ops
from scipy import stats
from sklearn import metrics as sk_metrics

import crowd_layers

__all__ = [
    "EXPRESSION_KEYS",
    "AFFECT_KEYS",
    "accuracy",
    "balanced_accuracy",
    "f1",
    "macro_f1",
    "cohen_kappa",
    "krippendorff_alpha_pair",
    "auc",
    "aucpr",
    "confusion_matrix",
    "per_class_report",
    "rmse",
    "pearson",
    "sagr",
    "ccc",
    "expression_metrics",
    "affect_metrics",
    "ConcordanceCorrelation",
    "SignAgreement",
    "PearsonCorrelation",
    "MaskedAccuracy",
    "BalancedAccuracy",
    "MacroF1",
]

EXPRESSION_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "f1_weighted",
    "kappa",
    "alpha",
    "auc",
    "aucpr",
)
AFFECT_KEYS = ("rmse", "corr", "sagr", "ccc")


def _undefined(message):
    warnings.warn(message + "; the value is NaN.", RuntimeWarning, stacklevel=3)
    return float("nan")


# ---------------------------------------------------------------------------------------------
# Expression


def _labels(y_true, y_pred):
    y_true = np.asarray(y_true).reshape(-1).astype(np.int64)
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 2:
        y_pred = y_pred.argmax(axis=-1)
    y_pred = y_pred.reshape(-1).astype(np.int64)
    if len(y_true) != len(y_pred):
        raise ValueError(
            "`y_true` and `y_pred` must hold the same number of examples. "
            f"Received: len(y_true)={len(y_true)}, len(y_pred)={len(y_pred)}"
        )
    keep = y_true >= 0
    return y_true[keep], y_pred[keep]


def _probabilities(y_true, probabilities, num_classes):
    y_true = np.asarray(y_true).reshape(-1).astype(np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != num_classes:
        raise ValueError(
            f"`probabilities` must be an (N, num_classes={num_classes}) array of class scores. "
            f"Received: probabilities.shape={probabilities.shape}"
        )
    if len(y_true) != len(probabilities):
        raise ValueError(
            "`y_true` and `probabilities` must hold the same number of examples. "
            f"Received: len(y_true)={len(y_true)}, len(probabilities)={len(probabilities)}"
        )
    if np.any(y_true >= num_classes):
        raise ValueError(
            f"`y_true` holds labels outside 0..{num_classes - 1}. "
            f"Received: {np.unique(y_true[y_true >= num_classes]).tolist()}"
        )
    keep = y_true >= 0
    return y_true[keep], probabilities[keep]


def _sklearn(function, *args, **kwargs):
    """A ``sklearn.metrics`` function with its warnings silenced: the undefined cases are
    checked, warned about and set to NaN here, by the module's own rule."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(function(*args, **kwargs))


def confusion_matrix(y_true, y_pred, num_classes=None):
    """Counts ``C[i, j]`` of true class ``i`` predicted as ``j`` (rows true, columns predicted)."""
    y_true, y_pred = _labels(y_true, y_pred)
    if num_classes is None:
        num_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1)) + 1)
    bad = (y_pred < 0) | (y_pred >= num_classes) | (y_true >= num_classes)
    if bad.any():
        raise ValueError(
            f"Labels must be in 0..{num_classes - 1}. Received: "
            f"{np.unique(np.concatenate([y_true, y_pred])[np.concatenate([bad, bad])]).tolist()}"
        )
    return sk_metrics.confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))


def accuracy(y_true, y_pred):
    """Share of correct predictions; ``y_pred`` class indices or probabilities."""
    y_true, y_pred = _labels(y_true, y_pred)
    if not len(y_true):
        return _undefined("accuracy: no labelled example")
    return _sklearn(sk_metrics.accuracy_score, y_true, y_pred)


def balanced_accuracy(y_true, y_pred):
    """Mean per-class recall over the classes present in ``y_true`` (scikit-learn's rule)."""
    y_true, y_pred = _labels(y_true, y_pred)
    if not len(y_true):
        return _undefined("balanced_accuracy: no labelled example")
    return _sklearn(sk_metrics.balanced_accuracy_score, y_true, y_pred)


def f1(y_true, y_pred, average="macro", num_classes=None):
    """F1 averaged over classes: ``"macro"`` (unweighted) or ``"weighted"`` (by support).

    The classes are those in ``y_true`` or ``y_pred`` (scikit-learn's default), or
    ``0..num_classes-1`` when given; a class never true nor predicted scores 0 there.
    """
    if average not in ("macro", "weighted"):
        raise ValueError(f"`average` must be 'macro' or 'weighted'. Received: average={average!r}")
    y_true, y_pred = _labels(y_true, y_pred)
    if not len(y_true):
        return _undefined(f"f1 ({average}): no labelled example")
    classes = None if num_classes is None else np.arange(num_classes)
    return _sklearn(
        sk_metrics.f1_score, y_true, y_pred, labels=classes, average=average, zero_division=0
    )


def macro_f1(y_true, y_pred, num_classes=None):
    """Unweighted mean F1 (``f1(..., average="macro")``)."""
    return f1(y_true, y_pred, "macro", num_classes)


def cohen_kappa(y_true, y_pred):
    """Cohen's kappa ``(p_o - p_e) / (1 - p_e)`` between labels and predictions.

    ``p_o`` is the observed agreement, ``p_e = sum_k p_true(k) p_pred(k)`` the agreement
    expected by chance. Undefined (NaN, warned) when ``p_e = 1`` (one and the same class in
    both).
    """
    y_true, y_pred = _labels(y_true, y_pred)
    if not len(y_true):
        return _undefined("cohen_kappa: no labelled example")
    if len(np.union1d(y_true, y_pred)) == 1:
        return _undefined("cohen_kappa: labels and predictions are all one class")
    return _sklearn(sk_metrics.cohen_kappa_score, y_true, y_pred)


def krippendorff_alpha_pair(y_true, y_pred, num_classes=None):
    """Nominal Krippendorff's alpha of two raters: the labels and the predictions as the two
    coders of each example (:func:`crowd_layers.krippendorff_alpha` scores many raters).

    Args:
        y_true: class indices ``(N,)``; ``-1`` (no label) is ignored.
        y_pred: class indices ``(N,)`` or probabilities ``(N, K)`` (argmax taken).
        num_classes: the number of classes (default: the largest index seen, plus one).

    Returns:
        The alpha; NaN (warned) without a labelled example or with fewer than 2 distinct labels.

    Example:
        >>> round(krippendorff_alpha_pair([0, 1, 1], [0, 1, 0]), 4)
        0.4444
    """
    y_true, y_pred = _labels(y_true, y_pred)
    if not len(y_true):
        return _undefined("krippendorff_alpha_pair: no labelled example")
    if num_classes is None:
        num_classes = int(max(y_true.max(), y_pred.max()) + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = crowd_layers.krippendorff_alpha(
            np.stack([y_true, y_pred], axis=1), num_classes=num_classes
        )
    if np.isnan(value):
        return _undefined("krippendorff_alpha_pair: fewer than 2 distinct labels")
    return value


def _one_vs_rest(name, score, y_true, probabilities, num_classes):
    """Macro average of ``score(is_class_k, probabilities[:, k])`` over the classes present."""
    y_true, probabilities = _probabilities(y_true, probabilities, num_classes)
    if not len(y_true):
        return _undefined(f"{name}: no labelled example")
    present = [k for k in range(num_classes) if 0 < np.sum(y_true == k) < len(y_true)]
    if not present:
        return _undefined(f"{name}: only one class present in y_true")
    absent = [k for k in range(num_classes) if not np.any(y_true == k)]
    if absent:
        warnings.warn(
            f"{name}: classes {absent} have no true example and are left out of the macro "
            f"average over {len(present)} classes.",
            RuntimeWarning,
            stacklevel=3,
        )
    values = [_sklearn(score, y_true == k, probabilities[:, k]) for k in present]
    return float(np.mean(values))


def auc(y_true, probabilities, num_classes=8):
    """One-vs-rest ROC AUC, macro-averaged over the classes present in ``y_true``.

    Equals ``sklearn.metrics.roc_auc_score(y_true, p, multi_class="ovr", average="macro")``
    when every class is present; absent classes are left out with a warning.
    """
    return _one_vs_rest("auc", sk_metrics.roc_auc_score, y_true, probabilities, num_classes)


def aucpr(y_true, probabilities, num_classes=8):
    """Macro average precision (area under the precision-recall curve) over present classes.

    Equals ``sklearn.metrics.average_precision_score(one_hot(y_true), p, average="macro")``
    when every class is present; absent classes are left out with a warning.
    """
    return _one_vs_rest(
        "aucpr", sk_metrics.average_precision_score, y_true, probabilities, num_classes
    )


def per_class_report(y_true, y_pred, num_classes=8):
    """Per-class ``precision``, ``recall``, ``f1`` and ``support`` arrays of length K (0 where
    a class was never predicted, or never true)."""
    y_true, y_pred = _labels(y_true, y_pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        precision, recall, scores, support = sk_metrics.precision_recall_fscore_support(
            y_true, y_pred, labels=np.arange(num_classes), zero_division=0
        )
    return {
        "precision": precision,
        "recall": recall,
        "f1": scores,
        "support": support.astype(np.int64),
    }


def expression_metrics(y_true, probabilities, num_classes=8):
    """AffectNet's expression table as a dict with the keys of :data:`EXPRESSION_KEYS`.

    Args:
        y_true: class indices ``(N,)``; ``-1`` (no label) is ignored.
        probabilities: class probabilities ``(N, num_classes)``.
        num_classes: 8, or 7 without contempt.

    Returns:
        ``{"accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "kappa", "alpha",
        "auc", "aucpr"}`` as Python floats.
    """
    y_labels, probabilities = _probabilities(y_true, probabilities, num_classes)
    return {
        "accuracy": accuracy(y_labels, probabilities),
        "balanced_accuracy": balanced_accuracy(y_labels, probabilities),
        "f1_macro": f1(y_labels, probabilities, "macro"),
        "f1_weighted": f1(y_labels, probabilities, "weighted"),
        "kappa": cohen_kappa(y_labels, probabilities),
        "alpha": krippendorff_alpha_pair(y_labels, probabilities, num_classes),
        "auc": auc(y_labels, probabilities, num_classes),
        "aucpr": aucpr(y_labels, probabilities, num_classes),
    }


# ---------------------------------------------------------------------------------------------
# Valence and arousal


def _values(y_true, y_pred):
    y_true = np.asarray(y_true, np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, np.float64).reshape(-1)
    if len(y_true) != len(y_pred):
        raise ValueError(
            "`y_true` and `y_pred` must hold the same number of values. "
            f"Received: len(y_true)={len(y_true)}, len(y_pred)={len(y_pred)}"
        )
    keep = np.isfinite(y_true)
    if not np.all(np.isfinite(y_pred[keep])):
        raise ValueError("`y_pred` holds NaN or infinite values where `y_true` is finite.")
    return y_true[keep], y_pred[keep]


def rmse(y_true, y_pred):
    """Root mean squared error over the finite targets."""
    y_true, y_pred = _values(y_true, y_pred)
    if not len(y_true):
        return _undefined("rmse: no finite target")
    return float(np.sqrt(sk_metrics.mean_squared_error(y_true, y_pred)))


def pearson(y_true, y_pred):
    """Pearson correlation (CORR); NaN with a warning when either side is constant."""
    y_true, y_pred = _values(y_true, y_pred)
    if len(y_true) < 2:
        return _undefined("pearson: fewer than 2 finite targets")
    if np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        return _undefined("pearson: targets or predictions are constant")
    return float(stats.pearsonr(y_true, y_pred).statistic)


def sagr(y_true, y_pred):
    """Sign agreement ``mean(sign(y_true) == sign(y_pred))`` (0 is its own sign)."""
    y_true, y_pred = _values(y_true, y_pred)
    if not len(y_true):
        return _undefined("sagr: no finite target")
    return float(np.mean(np.sign(y_true) == np.sign(y_pred)))


def ccc(y_true, y_pred):
    """Lin's concordance correlation ``2 cov / (var_t + var_p + (mean_t - mean_p)^2)``.

    Population (1/N) moments. NaN with a warning when the denominator is 0 (targets and
    predictions one and the same constant).
    """
    y_true, y_pred = _values(y_true, y_pred)
    if not len(y_true):
        return _undefined("ccc: no finite target")
    mt, mp = y_true.mean(), y_pred.mean()
    cov = np.mean((y_true - mt) * (y_pred - mp))
    denominator = y_true.var() + y_pred.var() + (mt - mp) ** 2
    if denominator <= 0:
        return _undefined("ccc: targets and predictions are the same constant")
    return float(2 * cov / denominator)


def _affect_one(y_true, y_pred):
    return {
        "rmse": rmse(y_true, y_pred),
        "corr": pearson(y_true, y_pred),
        "sagr": sagr(y_true, y_pred),
        "ccc": ccc(y_true, y_pred),
    }


def affect_metrics(y_true, y_pred):
    """RMSE, CORR, SAGR and CCC of valence or arousal predictions.

    Args:
        y_true: the targets of one dimension as an ``(N,)`` or ``(N, 1)`` array; or valence
            and arousal together, as an ``(N, 2)`` array (columns valence, arousal) or a dict
            ``{"valence": ..., "arousal": ...}``.
        y_pred: the predictions, in the same form as ``y_true``.

    Returns:
        ``{"rmse", "corr", "sagr", "ccc"}``; for both dimensions
        ``{"valence": {...}, "arousal": {...}}``.
    """
    if isinstance(y_true, dict) or isinstance(y_pred, dict):
        if not (isinstance(y_true, dict) and isinstance(y_pred, dict)):
            raise ValueError("`y_true` and `y_pred` must both be dicts, or both arrays.")
        if set(y_true) != set(y_pred):
            raise ValueError(
                f"`y_true` and `y_pred` must have the same keys. Received: {sorted(y_true)} "
                f"and {sorted(y_pred)}"
            )
        return {key: _affect_one(y_true[key], y_pred[key]) for key in y_true}
    y_true = np.asarray(y_true, np.float64)
    y_pred = np.asarray(y_pred, np.float64)
    if y_true.ndim == 2 and y_true.shape[1] == 2:
        if y_pred.shape != y_true.shape:
            raise ValueError(
                f"`y_pred` must have the shape of `y_true` {y_true.shape}. "
                f"Received: y_pred.shape={y_pred.shape}"
            )
        return {
            name: _affect_one(y_true[:, k], y_pred[:, k])
            for k, name in enumerate(("valence", "arousal"))
        }
    return _affect_one(y_true, y_pred)


# ---------------------------------------------------------------------------------------------
# Keras metrics (streaming; any backend)


class _MomentMetric(keras.metrics.Metric):
    """Running sums of a regression metric over batches; non-finite targets are ignored."""

    _SUMS = ("n", "t", "p", "tt", "pp", "tp")

    def __init__(self, name, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self._sums = [
            self.add_variable(shape=(), initializer="zeros", name=key, dtype="float64")
            for key in self._SUMS
        ]

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.reshape(ops.cast(y_true, "float64"), (-1,))
        y_pred = ops.reshape(ops.cast(y_pred, "float64"), (-1,))
        mask = ops.cast(ops.isfinite(y_true), "float64")
        if sample_weight is not None:
            mask = mask * ops.reshape(ops.cast(sample_weight, "float64"), (-1,))
        t = ops.where(mask > 0, y_true, 0.0)
        p = ops.where(mask > 0, y_pred, 0.0)
        for variable, value in zip(
            self._sums, (mask, t * mask, p * mask, t * t * mask, p * p * mask, t * p * mask)
        ):
            variable.assign_add(ops.sum(value))

    def _moments(self):
        n, t, p, tt, pp, tp = self._sums
        n_safe = ops.maximum(n, 1.0)
        mean_t, mean_p = t / n_safe, p / n_safe
        var_t = tt / n_safe - mean_t**2
        var_p = pp / n_safe - mean_p**2
        cov = tp / n_safe - mean_t * mean_p
        return mean_t, mean_p, var_t, var_p, cov

    def reset_state(self):
        for variable in self._sums:
            variable.assign(ops.zeros((), "float64"))

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="affectnet_tf")
class ConcordanceCorrelation(_MomentMetric):
    """Lin's concordance correlation coefficient over all batches seen (see :func:`ccc`).

    Non-finite targets are ignored. The result is NaN while the denominator is 0 (targets and
    predictions one and the same constant; :func:`ccc` warns about it).

    Examples:
        >>> model.compile(loss="mse", metrics=[ConcordanceCorrelation()])
    """

    def __init__(self, name="ccc", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def result(self):
        mean_t, mean_p, var_t, var_p, cov = self._moments()
        value = 2 * cov / (var_t + var_p + (mean_t - mean_p) ** 2)
        return ops.cast(value, self.dtype)


@keras.saving.register_keras_serializable(package="affectnet_tf")
class PearsonCorrelation(_MomentMetric):
    """Pearson correlation (CORR) over all batches seen (see :func:`pearson`).

    Non-finite targets are ignored. The result is NaN while targets or predictions are constant
    (a streaming metric cannot warn from inside a compiled step; :func:`pearson` does).
    """

    def __init__(self, name="corr", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def result(self):
        _, _, var_t, var_p, cov = self._moments()
        return ops.cast(cov / ops.sqrt(var_t * var_p), self.dtype)


@keras.saving.register_keras_serializable(package="affectnet_tf")
class SignAgreement(keras.metrics.MeanMetricWrapper):
    """Sign agreement (SAGR) over all batches seen (see :func:`sagr`); non-finite targets ignored."""

    def __init__(self, name="sagr", dtype=None):
        super().__init__(fn=_sign_agreement, name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        y_pred = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
        mask = ops.cast(ops.isfinite(y_true), "float32")
        if sample_weight is not None:
            mask = mask * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        return super().update_state(ops.where(mask > 0, y_true, 0.0), y_pred, mask)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


def _sign_agreement(y_true, y_pred):
    return ops.cast(ops.equal(ops.sign(y_true), ops.sign(y_pred)), "float32")


class _ConfusionMetric(keras.metrics.Metric):
    """A running ``(K, K)`` confusion matrix of sparse labels (``-1`` ignored) and scores."""

    def __init__(self, num_classes, name, dtype=None):
        super().__init__(name=name, dtype=dtype)
        if isinstance(num_classes, bool) or int(num_classes) < 2:
            raise ValueError(
                f"`num_classes` must be an integer >= 2. Received: num_classes={num_classes!r}"
            )
        self.num_classes = int(num_classes)
        self.matrix = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            name="confusion",
            dtype="float64",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        k = self.num_classes
        y_true = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        y_pred = ops.reshape(ops.argmax(ops.reshape(y_pred, (-1, k)), axis=-1), (-1,))
        weight = ops.cast(y_true >= 0, "float64")
        if sample_weight is not None:
            weight = weight * ops.reshape(ops.cast(sample_weight, "float64"), (-1,))
        index = ops.maximum(y_true, 0) * k + ops.cast(y_pred, "int32")
        counts = ops.segment_sum(weight, index, num_segments=k * k)
        self.matrix.assign_add(ops.reshape(counts, (k, k)))

    def reset_state(self):
        self.matrix.assign(ops.zeros((self.num_classes, self.num_classes), "float64"))

    def get_config(self):
        return {"num_classes": self.num_classes, "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="affectnet_tf")
class MaskedAccuracy(_ConfusionMetric):
    """Accuracy over the labelled rows (``-1`` ignored, unlike ``sparse_categorical_accuracy``,
    which counts them as wrong): for multi-task batches where some images lack the label."""

    def __init__(self, num_classes=8, name="accuracy", dtype=None):
        super().__init__(num_classes, name=name, dtype=dtype)

    def result(self):
        total = ops.sum(self.matrix)
        return ops.cast(ops.sum(ops.diagonal(self.matrix)) / ops.maximum(total, 1.0), self.dtype)


@keras.saving.register_keras_serializable(package="affectnet_tf")
class BalancedAccuracy(_ConfusionMetric):
    """Mean recall over the classes with a true example (see :func:`balanced_accuracy`).

    ``y_true``: class indices (``-1`` ignored); ``y_pred``: class scores ``(batch, K)``.
    """

    def __init__(self, num_classes=8, name="balanced_accuracy", dtype=None):
        super().__init__(num_classes, name=name, dtype=dtype)

    def result(self):
        support = ops.sum(self.matrix, axis=1)
        present = ops.cast(support > 0, "float64")
        recall = ops.diagonal(self.matrix) / ops.maximum(support, 1.0)
        return ops.cast(ops.sum(recall * present) / ops.sum(present), self.dtype)


@keras.saving.register_keras_serializable(package="affectnet_tf")
class MacroF1(_ConfusionMetric):
    """Unweighted mean F1 over the classes true or predicted at least once (see :func:`f1`)."""

    def __init__(self, num_classes=8, name="f1_macro", dtype=None):
        super().__init__(num_classes, name=name, dtype=dtype)

    def result(self):
        tp = ops.diagonal(self.matrix)
        total = ops.sum(self.matrix, axis=0) + ops.sum(self.matrix, axis=1)
        seen = ops.cast(total > 0, "float64")
        scores = 2 * tp / ops.maximum(total, 1.0)
        return ops.cast(ops.sum(scores * seen) / ops.sum(seen), self.dtype)
