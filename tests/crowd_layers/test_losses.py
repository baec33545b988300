"""Masked losses against NumPy: both answer formats, missing answers, sentinels, gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from numpy.testing import assert_allclose

from crowd_layers.layers import CrowdsConfusion
from crowd_layers.losses import (
    MaskedMultiCrossEntropy,
    MaskedMultiMSE,
    MaskedMultiSequenceCrossEntropy,
    masked_multi_cross_entropy,
    masked_multi_mse,
)

K, R = 4, 5


def _log_softmax(x, axis):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def _numpy_masked_ce(answers, logits):
    """Mean over observed answers of -log softmax(logits[..., :, r])[answer] (loops)."""
    log_probs = _log_softmax(logits, axis=-2)
    total, count = 0.0, 0
    for index in np.ndindex(answers.shape):
        if answers[index] >= 0:
            total -= log_probs[index[:-1] + (answers[index], index[-1])]
            count += 1
    return total / count if count else 0.0


def _one_hot_reference_layout(answers, num_classes):
    """Compact answers -> the reference's one-hot (..., K, R) with all -1 vectors missing."""
    one_hot = np.eye(num_classes)[np.maximum(answers, 0)]  # (..., R, K)
    one_hot[answers < 0] = -1
    return np.moveaxis(one_hot, -1, -2)


def _answers(rng, shape, missing=0.4, num_classes=K):
    answers = rng.integers(0, num_classes, size=shape)
    answers[rng.random(shape) < missing] = -1
    return answers


def test_cross_entropy_matches_numpy_in_both_formats(rng):
    answers = _answers(rng, (8, R))
    answers[3] = -1  # a row without answers
    logits = rng.normal(size=(8, K, R)).astype("float32")
    expected = _numpy_masked_ce(answers, logits)
    loss = MaskedMultiCrossEntropy()
    assert_allclose(float(loss(answers, logits)), expected, rtol=1e-5)
    one_hot = _one_hot_reference_layout(answers, K)
    assert_allclose(float(loss(one_hot, logits)), expected, rtol=1e-5)


def test_cross_entropy_per_sample_shares(rng):
    answers = _answers(rng, (6, R))
    answers[0] = -1
    logits = rng.normal(size=(6, K, R)).astype("float32")
    values = keras.ops.convert_to_numpy(masked_multi_cross_entropy(answers, logits))
    assert values.shape == (6,)
    assert values[0] == 0.0  # the row without answers adds nothing
    log_probs = _log_softmax(logits, axis=1)
    row_sums = [
        -sum(log_probs[i, answers[i, r], r] for r in range(R) if answers[i, r] >= 0)
        for i in range(6)
    ]
    assert_allclose(values, np.array(row_sums) * 6 / (answers >= 0).sum(), rtol=1e-5)
    none = MaskedMultiCrossEntropy(reduction="none")
    assert_allclose(keras.ops.convert_to_numpy(none(answers, logits)), values, rtol=1e-6)


def test_cross_entropy_from_probabilities_and_log_probabilities(rng):
    answers = _answers(rng, (7, R))
    probabilities = rng.dirichlet(np.ones(K), size=(7, R)).transpose(0, 2, 1).astype("float32")
    expected = _numpy_masked_ce(answers, np.log(probabilities))
    from_probs = MaskedMultiCrossEntropy(from_logits=False)(answers, probabilities)
    assert_allclose(float(from_probs), expected, rtol=1e-5)
    # Log-probabilities (CrowdsConfusion's output) are logits: the default scores them exactly.
    from_log = MaskedMultiCrossEntropy()(answers, np.log(probabilities))
    assert_allclose(float(from_log), expected, rtol=1e-5)
    layer = CrowdsConfusion(K, R)
    x = rng.dirichlet(np.ones(K), size=7).astype("float32")
    log_probs = keras.ops.convert_to_numpy(layer(x))
    assert_allclose(
        float(MaskedMultiCrossEntropy()(answers, log_probs)),
        float(MaskedMultiCrossEntropy(from_logits=False)(answers, np.exp(log_probs))),
        rtol=1e-5,
    )


def test_all_missing_batch_gives_zero_and_finite_gradients(rng):
    logits = tf.Variable(rng.normal(size=(4, K, R)).astype("float32"))
    for y_true in (np.full((4, R), -1), -np.ones((4, K, R))):
        with tf.GradientTape() as tape:
            value = MaskedMultiCrossEntropy()(y_true, logits)
        gradient = tape.gradient(value, logits)
        assert float(value) == 0.0
        assert np.all(np.asarray(gradient) == 0.0)


def test_missing_answers_get_no_gradient(rng):
    answers = _answers(rng, (5, R))
    logits = tf.Variable(rng.normal(size=(5, K, R)).astype("float32"))
    with tf.GradientTape() as tape:
        value = MaskedMultiCrossEntropy()(answers, logits)
    gradient = np.asarray(tape.gradient(value, logits))
    assert np.all(np.isfinite(gradient))
    missing = np.broadcast_to((answers < 0)[:, None, :], gradient.shape)
    assert np.all(gradient[missing] == 0.0)
    assert np.any(gradient[~missing] != 0.0)


def test_one_hot_soft_labels_and_zero_vectors(rng):
    logits = rng.normal(size=(3, K, 2)).astype("float32")
    y_true = np.zeros((3, K, 2), "float32")
    y_true[0, :, 0] = [0.5, 0.5, 0.0, 0.0]  # a soft answer
    y_true[1, 2, 1] = 1.0
    # y_true[2] and y_true[0, :, 1] are all-zero vectors: missing, not counted
    log_probs = _log_softmax(logits, axis=1)
    expected = -(0.5 * log_probs[0, 0, 0] + 0.5 * log_probs[0, 1, 0] + log_probs[1, 2, 1]) / 2
    assert_allclose(float(MaskedMultiCrossEntropy()(y_true, logits)), expected, rtol=1e-5)


def test_sequence_cross_entropy(rng):
    answers = _answers(rng, (3, 6, R), missing=0.5)
    answers[1, 4:] = -1  # padding
    logits = rng.normal(size=(3, 6, K, R)).astype("float32")
    loss = MaskedMultiSequenceCrossEntropy(K)
    assert_allclose(float(loss(answers, logits)), _numpy_masked_ce(answers, logits), rtol=1e-5)
    one_hot = _one_hot_reference_layout(answers, K)
    assert_allclose(float(loss(one_hot, logits)), _numpy_masked_ce(answers, logits), rtol=1e-5)
    # The reference's padding convention: class 0 masked as well.
    padded = MaskedMultiSequenceCrossEntropy(K, padding_label=0)
    expected = _numpy_masked_ce(np.where(answers == 0, -1, answers), logits)
    assert_allclose(float(padded(answers, logits)), expected, rtol=1e-5)
    # MaskedMultiCrossEntropy accepts the time axis as well.
    assert_allclose(float(MaskedMultiCrossEntropy()(answers, logits)), float(loss(answers, logits)))


def test_mse_matches_numpy_with_nan_and_sentinel(rng):
    y_true = rng.normal(size=(6, R))
    y_true[rng.random((6, R)) < 0.3] = np.nan
    y_true[0, :2] = 999999999
    y_true[2] = np.nan  # a row without answers
    y_pred = rng.normal(size=(6, R)).astype("float32")
    observed = np.isfinite(y_true) & (y_true != 999999999)
    expected = np.mean((y_pred[observed] - y_true[observed]) ** 2)
    assert_allclose(float(MaskedMultiMSE()(y_true, y_pred)), expected, rtol=1e-5)
    assert_allclose(float(keras.ops.mean(masked_multi_mse(y_true, y_pred))), expected, rtol=1e-5)
    sentinel_only = np.where(observed, y_true, 999999999)
    assert_allclose(float(MaskedMultiMSE()(sentinel_only, y_pred)), expected, rtol=1e-5)


def test_mse_all_missing_is_zero_with_finite_gradients(rng):
    y_pred = tf.Variable(rng.normal(size=(3, R)).astype("float32"))
    with tf.GradientTape() as tape:
        value = MaskedMultiMSE()(np.full((3, R), np.nan), y_pred)
    assert float(value) == 0.0
    assert np.all(np.asarray(tape.gradient(value, y_pred)) == 0.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: masked_multi_cross_entropy(np.zeros((2, 3)), np.zeros((2, 3))),
            r"y_pred.*Received: y_pred.shape=\(2, 3\)",
        ),
        (
            lambda: masked_multi_cross_entropy(np.zeros((2,)), np.zeros((2, K, R))),
            r"y_true.*Received: y_true.shape=\(2,\)",
        ),
        (
            lambda: masked_multi_cross_entropy(
                -np.ones((2, K, R)), np.zeros((2, K, R)), padding_label=0
            ),
            r"padding_label.*Received: padding_label=0",
        ),
        (
            lambda: masked_multi_mse(np.zeros((2, R)), np.zeros((2, R + 1))),
            r"Received: y_true.shape=\(2, 5\), y_pred.shape=\(2, 6\)",
        ),
        (lambda: MaskedMultiCrossEntropy(reduction="sum"), r"Received: reduction='sum'"),
        (lambda: MaskedMultiSequenceCrossEntropy(0), r"Received: num_classes=0"),
        (
            lambda: MaskedMultiSequenceCrossEntropy(K)(np.zeros((2, R)), np.zeros((2, K, R))),
            r"num_classes=4.*Received: y_pred.shape",
        ),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "loss",
    [
        MaskedMultiCrossEntropy(from_logits=False, padding_label=2, name="ce"),
        MaskedMultiSequenceCrossEntropy(7, reduction="none"),
        MaskedMultiMSE(),
    ],
)
def test_loss_config_round_trip(loss):
    config = loss.get_config()
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(clone) is type(loss)
    assert clone.get_config() == config
