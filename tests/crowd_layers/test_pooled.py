"""CrowdsPooled + PooledCrowdLikelihood, CrowdsGaussian + MaskedGaussianLikelihood, and the
confusion regularisers: values against NumPy, gradients, errors, save/load round trips."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hand_crowd import ANSWERS, K, R
from numpy.testing import assert_allclose

import crowd_layers
from crowd_layers import (
    ConfusionVolumeRegularizer,
    CrowdsConfusion,
    CrowdsGaussian,
    CrowdsPooled,
    MaskedGaussianLikelihood,
    PooledCrowdLikelihood,
    majority_vote_confusions,
    masked_gaussian_nll,
    pooled_crowd_nll,
)


def _confusions(seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.random((R, K, K)) + 2.0 * np.eye(K)
    return raw / raw.sum(axis=-1, keepdims=True)


def _priors(seed=1):
    rng = np.random.default_rng(seed)
    raw = rng.random((len(ANSWERS), K)) + 0.1
    return raw / raw.sum(axis=-1, keepdims=True)


def _numpy_marginals(priors, confusions, answers):
    """p(answers_i | x_i) = sum_k p_ik prod_{r answered} A_r[k, y_ir], by plain loops."""
    result = []
    for p, row in zip(priors, answers):
        total = 0.0
        for k in range(K):
            term = p[k]
            for r, answer in enumerate(row):
                if answer >= 0:
                    term *= confusions[r, k, answer]
            total += term
        result.append(total)
    return np.array(result)


def _numpy_posteriors(priors, confusions, answers):
    post = priors.copy()
    for i, row in enumerate(answers):
        for r, answer in enumerate(row):
            if answer >= 0:
                post[i] *= confusions[r, :, answer]
    return post / post.sum(axis=1, keepdims=True)


def _layer(confusions=None, **kwargs):
    layer = CrowdsPooled(K, R, init_confusions=confusions, **kwargs)
    layer.build((None, K))
    return layer


def test_pooled_loss_is_the_mean_negative_log_marginal_likelihood():
    priors, confusions = _priors(), _confusions()
    joint = _layer(confusions)(priors.astype("float32"))
    assert tuple(joint.shape) == (5, K, K, R)
    marginals = _numpy_marginals(priors, confusions, ANSWERS)
    answered = (ANSWERS >= 0).any(axis=1)
    expected = -np.log(marginals[answered]).mean()  # 4 answered items
    loss = float(PooledCrowdLikelihood()(ANSWERS, joint))
    assert_allclose(loss, expected, rtol=1e-5)
    per_item = np.asarray(PooledCrowdLikelihood(reduction="none")(ANSWERS, joint))
    # per-sample shares: -log p_i * batch / answered items; 0 for the unanswered item
    assert_allclose(per_item[answered], -np.log(marginals[answered]) * 5 / 4, rtol=1e-5)
    assert per_item[3] == 0.0


def test_pooled_loss_accepts_the_reference_one_hot_layout():
    priors, confusions = _priors(), _confusions()
    joint = _layer(confusions)(priors.astype("float32"))
    one_hot = np.full((5, K, R), -1.0)
    for i, r in zip(*np.nonzero(ANSWERS >= 0)):
        one_hot[i, :, r] = np.eye(K)[ANSWERS[i, r]]
    assert_allclose(
        float(pooled_crowd_nll(one_hot, joint).numpy().mean()),
        float(pooled_crowd_nll(ANSWERS, joint).numpy().mean()),
        rtol=1e-6,
    )


def test_gradient_is_the_dawid_skene_posterior_residual():
    """d loss / d logits = (softmax(logits) - posterior) / answered items, per item."""
    confusions = _confusions()
    logits = tf.Variable(np.log(_priors()).astype("float32"))
    layer = _layer(confusions)
    with tf.GradientTape() as tape:
        loss = PooledCrowdLikelihood()(ANSWERS, layer(tf.nn.softmax(logits)))
    gradient = tape.gradient(loss, logits).numpy()
    priors = tf.nn.softmax(logits).numpy().astype(np.float64)
    posterior = _numpy_posteriors(priors, confusions, ANSWERS)
    expected = (priors - posterior) / 4.0
    expected[3] = 0.0  # no answers: the posterior is the prior
    assert_allclose(gradient, expected, atol=1e-6)
    assert np.all(np.isfinite(gradient))


def test_items_without_answers_give_a_finite_zero_loss_and_gradients():
    layer = _layer()
    probabilities = tf.Variable(np.full((3, K), 1.0 / K, dtype="float32"))
    no_answers = -np.ones((3, R), dtype=int)
    with tf.GradientTape() as tape:
        loss = PooledCrowdLikelihood()(no_answers, layer(probabilities))
    gradients = tape.gradient(loss, [probabilities, layer.confusion_logits])
    assert float(loss) == 0.0
    for gradient in gradients:
        assert np.all(np.isfinite(gradient.numpy()))
        assert_allclose(gradient.numpy(), 0.0, atol=1e-7)


def test_single_answer_items_and_extreme_probabilities_stay_finite():
    layer = _layer()
    probabilities = tf.Variable(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype="float32"))
    answers = np.array([[2, -1, -1, -1], [-1, -1, -1, 0]])
    with tf.GradientTape() as tape:
        loss = PooledCrowdLikelihood()(answers, layer(probabilities))
    grads = tape.gradient(loss, [probabilities, layer.confusion_logits])
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)


def test_pooled_layer_starts_from_the_given_or_diagonal_confusions():
    confusions = _confusions()
    assert_allclose(_layer(confusions).confusion_matrices(), confusions, rtol=1e-5)
    diagonal = _layer(init_diagonal=0.7, logit_scale=5.0).confusion_matrices()
    assert_allclose(np.diagonal(diagonal, axis1=1, axis2=2), 0.7, rtol=1e-5)
    assert_allclose(diagonal[0, 0, 1], 0.15, rtol=1e-5)
    # logit_scale is a learning-rate multiplier: the stored logits are divided by it
    layer = _layer(confusions, logit_scale=10.0)
    assert_allclose(layer.confusion_logits.numpy() * 10.0, np.log(confusions), rtol=1e-5, atol=1e-6)


def test_logsumexp_of_the_joint_over_true_classes_is_the_confusion_layer_output():
    priors, confusions = _priors(), _confusions()
    joint = _layer(confusions)(priors.astype("float32"))
    per_answer = CrowdsConfusion(K, R, init_confusions=confusions)(priors.astype("float32"))
    assert_allclose(tf.reduce_logsumexp(joint, axis=1).numpy(), per_answer.numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 1}, "num_classes"),
        ({"init_diagonal": 0.2}, "init_diagonal"),
        ({"logit_scale": 0.0}, "logit_scale"),
        ({"trace_weight": -1.0}, "trace_weight"),
        ({"trace_weight": 0.1, "volume_weight": 0.1}, "one confusion regulariser"),
        ({"init_confusions": np.ones((R, K, K))}, "rows must sum to one"),
        ({"init_confusions": np.ones((2, K, K)) / K}, r"shape \(num_annotators"),
    ],
)
def test_pooled_layer_errors_name_the_argument(kwargs, match):
    arguments = {"num_classes": K, "num_annotators": R, **kwargs}
    with pytest.raises(ValueError, match=match):
        CrowdsPooled(**arguments)


def test_pooled_layer_rejects_inputs_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"\(batch, num_classes\)"):
        CrowdsPooled(K, R)(np.zeros((2, K + 1), dtype="float32"))


def test_pooled_loss_errors():
    joint = _layer()(np.full((2, K), 1.0 / K, dtype="float32"))
    with pytest.raises(ValueError, match="num_annotators"):
        pooled_crowd_nll(np.zeros((2, R + 1), dtype=int), joint)
    with pytest.raises(ValueError, match="joint log-probabilities"):
        pooled_crowd_nll(np.zeros((2, R), dtype=int), np.zeros((2, K, R)))


def _train_tiny(model, answers, epochs=2):
    x = np.random.default_rng(0).normal(size=(len(answers), 6)).astype("float32")
    model.fit(x, answers, epochs=epochs, batch_size=4, verbose=0)
    return x


def _pooled_model(seed=0, **layer_kwargs):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    probabilities = keras.layers.Dense(K, activation="softmax")(inputs)
    outputs = CrowdsPooled(K, R, name="crowd", **layer_kwargs)(probabilities)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.01), loss=PooledCrowdLikelihood())
    return model


def test_pooled_model_save_load_round_trip(tmp_path):
    model = _pooled_model(init_confusions=_confusions(), volume_weight=0.01)
    x = _train_tiny(model, np.tile(ANSWERS, (2, 1)))
    path = tmp_path / "pooled.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # nothing but the package imported
    assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    layer = loaded.get_layer("crowd")
    assert isinstance(layer, CrowdsPooled) and layer.volume_weight == 0.01
    assert_allclose(layer.confusion_matrices(), model.get_layer("crowd").confusion_matrices())
    assert isinstance(loaded.loss, PooledCrowdLikelihood)
    predictor = crowd_layers.prediction_model(loaded)
    assert predictor.output_shape == (None, K)


def test_pooled_training_recovers_the_truth_of_a_dense_noisy_crowd():
    """A linearly separable problem, 4 annotators right 60% of the time: the pooled model
    beats the majority vote of the answers and learns each annotator's diagonal."""
    rng = np.random.default_rng(0)
    n = 600
    truth = rng.integers(0, K, n)
    x = (np.eye(K)[truth] * 2.0 + rng.normal(scale=0.7, size=(n, K))).astype("float32")
    x = np.concatenate([x, rng.normal(size=(n, 3)).astype("float32")], axis=1)
    accuracy = np.array([0.6, 0.6, 0.45, 0.9])
    right = rng.random((n, R)) < accuracy
    wrong = (truth[:, None] + rng.integers(1, K, (n, R))) % K
    answers = np.where(right, truth[:, None], wrong)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    probabilities = keras.layers.Dense(K, activation="softmax")(inputs)
    layer = CrowdsPooled(K, R)
    model = keras.Model(inputs, layer(probabilities))
    model.compile(keras.optimizers.Adam(0.02), loss=PooledCrowdLikelihood())
    model.fit(x, answers, epochs=30, batch_size=32, verbose=0)
    predicted = crowd_layers.prediction_model(model).predict(x, verbose=0).argmax(1)
    vote = crowd_layers.majority_vote(answers, num_classes=K, tie_break="lowest")
    assert np.mean(predicted == truth) > np.mean(vote == truth) + 0.05
    diagonals = np.diagonal(layer.confusion_matrices(), axis1=1, axis2=2).mean(axis=1)
    assert np.argmax(diagonals) == 3 and np.argmin(diagonals) in (0, 2)
    assert_allclose(diagonals, accuracy, atol=0.15)


# --------------------------------------------------------------------------------------------
# Regression: CrowdsGaussian
# --------------------------------------------------------------------------------------------


def test_gaussian_loss_against_numpy():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(4, R))
    log_sigma = np.log(rng.uniform(0.1, 1.0, size=(4, R)))
    y = rng.normal(size=(4, R))
    y[0, 1:] = np.nan
    y[2] = np.nan  # no answers
    y[3, 0] = 999999999
    observed = np.isfinite(y) & (y != 999999999)
    terms = 0.5 * ((y - mean) / np.exp(log_sigma)) ** 2 + log_sigma + 0.5 * math.log(2 * math.pi)
    expected = terms[observed].mean()
    y_pred = np.stack([mean, log_sigma], axis=1).astype("float32")
    for normalize in (True, False):  # the same value either way
        loss = MaskedGaussianLikelihood(normalize_precision=normalize)
        assert_allclose(float(loss(y, y_pred)), expected, rtol=1e-5)
    values = masked_gaussian_nll(np.full((2, R), np.nan), y_pred[:2]).numpy()
    assert_allclose(values, 0.0)


def test_gaussian_gradients_likelihood_for_sigma_precision_weighted_mse_for_the_means():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(6, R)).astype("float32")
    y[0, 2] = np.nan
    sigma = np.array([0.2, 0.4, 0.4, 0.8])
    mean = tf.Variable(rng.normal(size=(6, R)).astype("float32"))
    log_sigma = tf.Variable(np.tile(np.log(sigma), (6, 1)).astype("float32"))
    observed = np.isfinite(y)
    count = observed.sum()
    gradients = {}
    for normalize in (True, False):
        with tf.GradientTape() as tape:
            y_pred = tf.stack([mean, log_sigma], axis=1)
            loss = MaskedGaussianLikelihood(normalize_precision=normalize)(y, y_pred)
        gradients[normalize] = [g.numpy() for g in tape.gradient(loss, [mean, log_sigma])]
    residual = np.where(observed, mean.numpy() - np.nan_to_num(y), 0.0)
    precision = 1.0 / sigma**2
    # plain likelihood: d/dmu = (mu - y) / sigma^2 / count
    assert_allclose(gradients[False][0], residual * precision / count, rtol=1e-4, atol=1e-6)
    # normalised: the weighted squared error's gradient 2 w (mu - y) / count, w mean 1
    weights = precision / precision.mean()
    assert_allclose(gradients[True][0], 2 * residual * weights / count, rtol=1e-4, atol=1e-6)
    # the noise levels get the likelihood's gradient either way
    assert_allclose(gradients[True][1], gradients[False][1], rtol=1e-5, atol=1e-7)
    # equal noise levels: exactly the masked squared error's gradient
    with tf.GradientTape() as tape:
        y_pred = tf.stack([mean, tf.zeros_like(log_sigma)], axis=1)
        loss = MaskedGaussianLikelihood()(y, y_pred)
    with tf.GradientTape() as tape_mse:
        mse = crowd_layers.MaskedMultiMSE()(y, mean)
    assert_allclose(
        tape.gradient(loss, mean).numpy(), tape_mse.gradient(mse, mean).numpy(), rtol=1e-5
    )


def test_gaussian_layer_output_and_noise_levels():
    layer = CrowdsGaussian(R, init_noise=0.5, min_noise=0.05)
    out = layer(np.array([[0.2], [-0.4]], dtype="float32")).numpy()
    assert out.shape == (2, 2, R)
    assert_allclose(out[:, 0], [[0.2] * R, [-0.4] * R], rtol=1e-6)  # scale 1, bias 0
    assert_allclose(np.exp(out[:, 1]), 0.5, rtol=1e-5)
    assert_allclose(layer.noise_levels(), 0.5, rtol=1e-5)
    layer.scale.assign(np.full((1, R), 2.0))
    layer.bias.assign(np.arange(R, dtype="float32")[None])
    out = layer(np.array([[0.5]], dtype="float32")).numpy()
    assert_allclose(out[0, 0], 1.0 + np.arange(R), rtol=1e-6)


def test_gaussian_layer_learns_which_annotator_is_noisy_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    x = rng.uniform(-1, 1, size=(n, 2)).astype("float32")
    truth = 0.8 * x[:, :1]
    noise = np.array([0.05, 0.05, 0.6, 0.1])
    answers = truth + rng.normal(size=(n, R)) * noise
    answers[rng.random((n, R)) < 0.2] = np.nan
    keras.utils.set_random_seed(0)
    inputs = keras.Input((2,))
    value = keras.layers.Dense(1)(inputs)
    layer = CrowdsGaussian(R, conn_type="none", name="crowd")
    model = keras.Model(inputs, layer(value))
    model.compile(keras.optimizers.Adam(0.05), loss=MaskedGaussianLikelihood())
    model.fit(x, answers.astype("float32"), epochs=40, batch_size=32, verbose=0)
    assert_allclose(layer.noise_levels(), noise, rtol=0.35, atol=0.03)
    path = tmp_path / "gaussian.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert_allclose(loaded.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0), atol=1e-6)
    assert loaded.get_layer("crowd").conn_type == "none"
    assert loaded.loss.get_config()["normalize_precision"] is True


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"conn_type": "X"}, "conn_type"),
        ({"min_noise": 0.0}, "min_noise"),
        ({"init_noise": 0.01, "min_noise": 0.02}, "init_noise"),
    ],
)
def test_gaussian_layer_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CrowdsGaussian(R, **kwargs)


def test_gaussian_loss_shape_error():
    with pytest.raises(ValueError, match="log standard deviations"):
        masked_gaussian_nll(np.zeros((2, R)), np.zeros((2, R)))


# --------------------------------------------------------------------------------------------
# Regularisers and the majority-vote start
# --------------------------------------------------------------------------------------------


def test_volume_regularizer_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(R, K, K)).astype("float32")
    confusions = np.exp(2.0 * logits) / np.exp(2.0 * logits).sum(-1, keepdims=True)
    stacked = np.concatenate([c.T for c in confusions], axis=0)  # (R * K, K)
    expected = -0.05 * np.linalg.slogdet(stacked.T @ stacked)[1]
    value = float(ConfusionVolumeRegularizer(0.05, logit_scale=2.0)(logits))
    assert_allclose(value, expected, rtol=1e-4)
    singular = np.zeros((R, K, K), dtype="float32")  # every row uniform: W^T W singular
    assert float(ConfusionVolumeRegularizer(0.05)(singular)) == 0.0
    config = ConfusionVolumeRegularizer(0.05, 2.0).get_config()
    assert ConfusionVolumeRegularizer.from_config(config).get_config() == config


def test_confusion_layer_takes_the_volume_regularizer():
    layer = CrowdsConfusion(K, R, trace_weight=0.0, volume_weight=0.01)
    layer.build((None, K))
    assert len(layer.losses) == 1 and float(layer.losses[0]) != 0.0
    with pytest.raises(ValueError, match="trace_weight=0"):
        CrowdsConfusion(K, R, trace_weight=0.5, volume_weight=0.01)


def test_majority_vote_confusions_against_hand_counts():
    confusions = majority_vote_confusions(ANSWERS, num_classes=K, smoothing=0.5)
    # annotator 2 answered 1, 2, 1, 1 on items whose votes are
    # item 0: (2/3, 1/3, 0), item 1: (0, 1/3, 2/3), item 2: (0, 1, 0), item 4: (1/4, 3/4, 0)
    counts = np.full((K, K), 0.5)
    counts[:, 1] += [2 / 3, 1 / 3, 0] + np.array([0, 1, 0]) + np.array([1 / 4, 3 / 4, 0])
    counts[:, 2] += [0, 1 / 3, 2 / 3]
    assert_allclose(confusions[2], counts / counts.sum(axis=1, keepdims=True))
    assert_allclose(confusions.sum(axis=-1), 1.0)
    with pytest.raises(ValueError, match="smoothing"):
        majority_vote_confusions(ANSWERS, num_classes=K, smoothing=0.0)
