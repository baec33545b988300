"""Evaluation metrics against hand-computed values."""

import numpy as np
import pytest

from affectnet_tf import metrics


def test_expression_metrics_ignore_missing_labels():
    y_true = np.array([0, 0, 1, 2, -1])
    y_pred = np.array([0, 1, 1, 2, 0])
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(0.75)
    assert metrics.balanced_accuracy(y_true, y_pred) == pytest.approx((0.5 + 1 + 1) / 3)
    # F1: class 0 = 2/3, class 1 = 2/3, class 2 = 1
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    probabilities = np.eye(3)[y_pred]
    assert metrics.accuracy(y_true, probabilities) == pytest.approx(0.75)


def test_regression_metrics():
    y_true = np.array([0.0, 0.5, 1.0, np.nan])
    assert metrics.rmse(y_true, [0.0, 0.5, 1.0, 9.0]) == 0.0
    assert metrics.ccc(y_true, [0.0, 0.5, 1.0, 9.0]) == pytest.approx(1.0)
    assert metrics.rmse(y_true, [1.0, 1.0, 1.0, 0.0]) == pytest.approx(np.sqrt(1.25 / 3))
    # shifted prediction: 2 cov / (vt + vp + d^2) with vt = vp = cov = 1/6, d = 0.5
    assert metrics.ccc(y_true, [0.5, 1.0, 1.5, 0.0]) == pytest.approx((1 / 3) / (1 / 3 + 0.25))
