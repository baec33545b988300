"""Evaluation metrics as plain functions on NumPy arrays.

Expression: accuracy, balanced accuracy, macro F1 (labels ``-1`` are ignored). Valence and
arousal: RMSE and Lin's concordance correlation coefficient (``NaN`` targets are ignored).
"""

import numpy as np

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "rmse",
    "ccc",
    "expression_metrics",
    "regression_metrics",
]


def _labels(y_true, y_pred):
    y_true = np.asarray(y_true).reshape(-1).astype(np.int64)
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 2:
        y_pred = y_pred.argmax(axis=-1)
    y_pred = y_pred.reshape(-1).astype(np.int64)
    keep = y_true >= 0
    return y_true[keep], y_pred[keep]


def accuracy(y_true, y_pred):
    """Share of correct predictions; ``y_pred`` class indices or probabilities."""
    y_true, y_pred = _labels(y_true, y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def balanced_accuracy(y_true, y_pred, num_classes=None):
    """Mean per-class recall over the classes present in ``y_true``."""
    y_true, y_pred = _labels(y_true, y_pred)
    recalls = [np.mean(y_pred[y_true == k] == k) for k in np.unique(y_true)]
    return float(np.mean(recalls)) if recalls else float("nan")


def macro_f1(y_true, y_pred, num_classes=None):
    """Unweighted mean F1 over the classes present in ``y_true`` or ``y_pred``."""
    y_true, y_pred = _labels(y_true, y_pred)
    classes = np.union1d(y_true, y_pred) if num_classes is None else np.arange(num_classes)
    scores = []
    for k in classes:
        tp = np.sum((y_pred == k) & (y_true == k))
        fp = np.sum((y_pred == k) & (y_true != k))
        fn = np.sum((y_pred != k) & (y_true == k))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def _values(y_true, y_pred):
    y_true = np.asarray(y_true, np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, np.float64).reshape(-1)
    keep = np.isfinite(y_true)
    return y_true[keep], y_pred[keep]


def rmse(y_true, y_pred):
    """Root mean squared error over the finite targets."""
    y_true, y_pred = _values(y_true, y_pred)
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2))) if len(y_true) else float("nan")


def ccc(y_true, y_pred):
    """Lin's concordance correlation coefficient ``2 cov / (var_t + var_p + (mean_t - mean_p)^2)``."""
    y_true, y_pred = _values(y_true, y_pred)
    if len(y_true) == 0:
        return float("nan")
    mt, mp = y_true.mean(), y_pred.mean()
    cov = np.mean((y_true - mt) * (y_pred - mp))
    denominator = y_true.var() + y_pred.var() + (mt - mp) ** 2
    return float(2 * cov / denominator) if denominator > 0 else float("nan")


def expression_metrics(y_true, y_pred):
    """``accuracy``, ``balanced_accuracy``, ``macro_f1`` and the count of labels."""
    return {
        "accuracy": accuracy(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred),
        "count": int(np.sum(np.asarray(y_true).reshape(-1) >= 0)),
    }


def regression_metrics(y_true, y_pred):
    """``rmse``, ``ccc`` and the count of finite targets."""
    return {
        "rmse": rmse(y_true, y_pred),
        "ccc": ccc(y_true, y_pred),
        "count": int(np.sum(np.isfinite(np.asarray(y_true, np.float64)))),
    }
