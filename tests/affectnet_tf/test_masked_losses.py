"""The masked single-label losses: one reduction rule with crowd_layers' losses."""

import numpy as np
import pytest

import crowd_layers
from affectnet_tf.modeling import losses


def _probabilities():
    return np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6]], "float32")


def test_sparse_cross_entropy_is_the_mean_over_observed_labels():
    y_pred = _probabilities()
    labels = np.array([0, -1, 2, -1])
    value = float(losses.MaskedSparseCategoricalCrossentropy(3)(labels, y_pred))
    expected = -(np.log(0.7) + np.log(0.4)) / 2  # two observed labels, not four images
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    assert float(losses.MaskedSparseCategoricalCrossentropy(3)(np.full(4, -1), y_pred)) == 0.0


def test_soft_cross_entropy_and_squared_error_use_the_same_rule():
    y_pred = _probabilities()
    targets = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]], "float32")
    value = float(losses.MaskedCategoricalCrossentropy()(targets, y_pred))
    np.testing.assert_allclose(value, -(np.log(0.7) + np.log(0.4)) / 2, rtol=1e-5)
    values = np.array([0.5, np.nan, -0.5, np.nan], "float32")
    predicted = np.array([[0.0], [0.9], [0.0], [0.3]], "float32")
    mse = float(losses.MaskedMeanSquaredError()(values, predicted))
    np.testing.assert_allclose(mse, 0.25, rtol=1e-6)
    # the crowd MSE on one annotator column gives the same number
    crowd = crowd_layers.MaskedMultiMSE()(values[:, None], predicted)
    np.testing.assert_allclose(float(crowd), mse, rtol=1e-6)


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 3.0]])
def test_class_weights_weight_the_observed_mean(weights):
    y_pred = _probabilities()
    labels = np.array([0, 1, 2, -1])
    loss = losses.MaskedSparseCategoricalCrossentropy(3, class_weights=weights)
    terms = -np.log([0.7, 0.8, 0.4]) * (np.ones(3) if weights is None else np.array(weights))
    np.testing.assert_allclose(float(loss(labels, y_pred)), terms.sum() / 3, rtol=1e-5)
