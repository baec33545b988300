"""EM trainers (the reference's crowd_aggregators): steps against loops, and improvement."""

import keras
import numpy as np
import pytest
from numpy.testing import assert_allclose

from crowd_layers.trainers import CrowdsBinaryAggregator, CrowdsCategoricalAggregator

K, R, N = 3, 6, 240


def _problem(seed=0, num_classes=K):
    """Gaussian blobs and a crowd: two good annotators, the rest answering mostly class 0."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(num_classes, 2))
    y = rng.integers(0, num_classes, size=N)
    x = (centers[y] + rng.normal(size=(N, 2))).astype("float32")
    confusions = np.empty((R, num_classes, num_classes))
    for r in range(R):
        good = r < 2
        matrix = np.full((num_classes, num_classes), 0.05 if good else 0.1)
        np.fill_diagonal(matrix, 0.9 if good else 0.3)
        if not good:
            matrix[:, 0] += 0.5  # biased towards class 0
        confusions[r] = matrix / matrix.sum(axis=1, keepdims=True)
    answers = np.array([[rng.choice(num_classes, p=confusions[r, t]) for r in range(R)] for t in y])
    answers[rng.random((N, R)) < 0.2] = -1
    return x, y, answers, confusions


def _classifier(num_classes=K, seed=0, outputs=None, loss="categorical_crossentropy"):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(
                outputs or num_classes, activation="sigmoid" if outputs == 1 else "softmax"
            ),
        ]
    )
    model.compile(keras.optimizers.Adam(0.02), loss)
    return model


def _accuracy(model, x, y):
    predictions = model.predict(x, verbose=0)
    if predictions.shape[1] == 1:
        return float(np.mean((predictions[:, 0] > 0.5) == y))
    return float(np.mean(predictions.argmax(axis=1) == y))


def test_categorical_steps_match_the_reference_loops():
    x, _, answers, _ = _problem()
    trainer = CrowdsCategoricalAggregator(_classifier(), x, answers, batch_size=32, pi_prior=0.5)
    # Majority vote initialisation, ties to the lowest class.
    votes = np.stack([(answers == k).sum(axis=1) for k in range(K)], axis=1)
    assert_allclose(trainer.ground_truth_est, np.eye(K)[votes.argmax(axis=1)])
    model, pi = trainer.m_step()
    assert model is trainer.model
    predictions = trainer.ground_truth_est.copy()
    expected_pi = np.full((K, K, R), 0.5)
    normalizer = np.full((K, R), 0.5 * K)
    for i in range(N):
        for r in range(R):
            if answers[i, r] != -1:
                expected_pi[:, answers[i, r], r] += predictions[i]
                normalizer[:, r] += predictions[i]
    expected_pi /= normalizer[:, None, :]
    assert_allclose(pi, expected_pi, rtol=1e-6)
    assert_allclose(pi.sum(axis=1), 1.0)
    posteriors = trainer.e_step()
    expected = predictions.copy()
    for i in range(N):
        for r in range(R):
            if answers[i, r] != -1:
                expected[i] *= pi[:, answers[i, r], r]
    expected /= expected.sum(axis=1, keepdims=True)
    assert_allclose(posteriors, expected, rtol=1e-5, atol=1e-9)
    assert_allclose(trainer.confusion_matrices(), np.transpose(pi, (2, 0, 1)))


@pytest.mark.slow
def test_categorical_em_improves_over_majority_vote():
    x, y, answers, confusions = _problem()
    majority = CrowdsCategoricalAggregator(_classifier(), x, answers, batch_size=32)
    majority.m_step(epochs=5)  # trained on majority-vote targets only
    mv_accuracy = _accuracy(majority.model, x, y)
    mv_error = np.abs(majority.confusion_matrices() - confusions).mean()
    trainer = CrowdsCategoricalAggregator(_classifier(), x, answers, batch_size=32)
    model, pi = trainer.run(epochs=5, fit_epochs=1)
    assert len(trainer.losses) == 5
    assert _accuracy(model, x, y) > mv_accuracy + 0.05
    assert np.abs(trainer.confusion_matrices() - confusions).mean() < mv_error
    assert np.mean(trainer.ground_truth_est.argmax(axis=1) == y) > 0.9


def test_categorical_accepts_the_one_hot_layout():
    x, _, answers, _ = _problem()
    one_hot = np.moveaxis(np.eye(K)[np.maximum(answers, 0)], -1, 1)
    one_hot[np.broadcast_to((answers < 0)[:, None, :], one_hot.shape)] = -1
    compact = CrowdsCategoricalAggregator(_classifier(), x, answers)
    layout = CrowdsCategoricalAggregator(_classifier(), x, one_hot)
    assert_allclose(layout.answers, compact.answers)


@pytest.mark.slow
@pytest.mark.parametrize(
    "outputs, loss", [(2, "categorical_crossentropy"), (1, "binary_crossentropy")]
)
def test_binary_em_improves_and_estimates_sensitivity(outputs, loss):
    x, y, answers, confusions = _problem(seed=1, num_classes=2)
    trainer = CrowdsBinaryAggregator(
        _classifier(2, outputs=outputs, loss=loss), x, answers, batch_size=32
    )
    assert_allclose(trainer.alpha, 0.5)
    model, alpha, beta = trainer.m_step()
    p = trainer.ground_truth_est[:, 1]
    ones, answered = (answers == 1), (answers >= 0)
    assert_allclose(alpha, (1 + p @ ones) / (2 + p @ answered), rtol=1e-6)
    assert_allclose(beta, (1 + (1 - p) @ (answers == 0)) / (2 + (1 - p) @ answered), rtol=1e-6)
    first_accuracy = _accuracy(model, x, y)
    mu = trainer.e_step()
    a = np.prod(np.where(answers == 1, alpha, np.where(answers == 0, 1 - alpha, 1.0)), axis=1)
    b = np.prod(np.where(answers == 1, 1 - beta, np.where(answers == 0, beta, 1.0)), axis=1)
    assert_allclose(mu[:, 1], a * p / (a * p + b * (1 - p)), rtol=1e-5, atol=1e-9)
    model, alpha, beta = trainer.run(epochs=4)
    assert _accuracy(model, x, y) >= first_accuracy
    assert _accuracy(model, x, y) > 0.85
    good = slice(0, 2)
    assert np.all(alpha[good] > alpha[2:].mean())  # the good annotators are found
    assert_allclose(alpha[good], confusions[good, 1, 1], atol=0.15)


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: CrowdsCategoricalAggregator(
                _classifier(), np.zeros((5, 2)), np.full((4, R), -1)
            ),
            r"Received: len\(data_train\)=5, answers.shape\[0\]=4",
        ),
        (
            lambda: CrowdsCategoricalAggregator(_classifier(), np.zeros((4, 2)), np.zeros(4)),
            r"answers.*Received: answers.shape=\(4,\)",
        ),
        (
            lambda: CrowdsCategoricalAggregator(_classifier(), np.zeros((2, 2)), [[0, 3], [1, -1]]),
            r"classes 0..2",
        ),
        (
            lambda: CrowdsCategoricalAggregator(
                _classifier(), np.zeros((1, 2)), [[0]], pi_prior=-1
            ),
            r"Received: pi_prior=-1",
        ),
        (
            lambda: CrowdsBinaryAggregator(_classifier(3), np.zeros((1, 2)), [[0]]),
            r"Received: model.output_shape=\(None, 3\)",
        ),
    ],
)
def test_bad_input_raises_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
