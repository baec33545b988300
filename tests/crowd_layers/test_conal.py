"""CrowdsCoNAL and its difference regulariser: values against NumPy, missing answers, the
start, save/load, errors, a simulated crowd, and two replicas against one device."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hand_crowd import ANSWERS, K, R, softmax
from numpy.testing import assert_allclose

from crowd_layers.conal import CONAL_MIXTURES, ConfusionDifferenceRegularizer, CrowdsCoNAL
from crowd_layers.losses import MaskedMultiCrossEntropy

D = 5


def _unit(v):
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _hand_weights(seed=0):
    """Random weights of a (K, R, D) layer with hidden_units=6, embedding_dim=4, in build order."""
    rng = np.random.default_rng(seed)
    return {
        "confusion_logits": rng.normal(size=(R + 1, K, K)) + 2.0 * np.eye(K),
        "instance_kernel_1": rng.normal(size=(D, 6)),
        "instance_bias_1": rng.normal(size=6),
        "instance_kernel_2": rng.normal(size=(6, 4)),
        "instance_bias_2": rng.normal(size=4),
        "annotator_embedding": rng.normal(size=(R, 4)),
        "annotator_bias": rng.normal(size=4),
    }


def _numpy_forward(weights, probabilities, features, mixture, logit_scale=1.0):
    """The layer's formula in NumPy: omega, then the mixture of the two confusions."""
    w = weights
    instance = (features @ w["instance_kernel_1"] + w["instance_bias_1"]) @ w[
        "instance_kernel_2"
    ] + w["instance_bias_2"]
    annotators = w["annotator_embedding"] + w["annotator_bias"]
    omega = 1.0 / (1.0 + np.exp(-_unit(instance) @ _unit(annotators).T))  # (B, R)
    scaled = logit_scale * w["confusion_logits"]
    matrices = softmax(scaled) if mixture == "probabilities" else scaled
    common = probabilities @ matrices[-1]  # (B, J)
    individual = np.einsum("bk,rkj->bjr", probabilities, matrices[:-1])
    mixed = omega[:, None, :] * common[:, :, None] + (1.0 - omega[:, None, :]) * individual
    return np.log(mixed) if mixture == "probabilities" else mixed, omega


def _layer(weights=None, **kwargs):
    layer = CrowdsCoNAL(K, R, hidden_units=6, embedding_dim=4, **kwargs)
    layer.build([(None, K), (None, D)])
    if weights is not None:
        layer.set_weights([weights[name] for name in _hand_weights()])
    return layer


def _inputs(n=5, seed=1):
    rng = np.random.default_rng(seed)
    probabilities = softmax(rng.normal(size=(n, K)))
    return probabilities.astype("float32"), rng.normal(size=(n, D)).astype("float32")


def _numpy_cross_entropy(logits, answers):
    log_probs = np.log(softmax(logits, axis=1))
    terms = [-log_probs[i, a, r] for (i, r), a in np.ndenumerate(answers) if a >= 0]
    return float(np.mean(terms))


@pytest.mark.parametrize("mixture", CONAL_MIXTURES)
def test_output_and_loss_match_numpy(mixture):
    weights = _hand_weights()
    layer = _layer(weights, mixture=mixture, logit_scale=2.0)
    probabilities, features = _inputs()
    out = np.asarray(layer([probabilities, features]))
    expected, omega = _numpy_forward(weights, probabilities, features, mixture, logit_scale=2.0)
    assert out.shape == (len(ANSWERS), K, R)
    assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert_allclose(layer.common_rates(features), omega, rtol=1e-5)
    loss = float(MaskedMultiCrossEntropy()(ANSWERS, out))
    assert_allclose(loss, _numpy_cross_entropy(expected, ANSWERS), rtol=1e-5)
    if mixture == "probabilities":  # log-probabilities: each column is a distribution
        assert_allclose(np.exp(out).sum(axis=1), 1.0, rtol=1e-5)


def test_common_rates_lie_between_the_sigmoids_of_minus_one_and_one():
    layer = _layer(_hand_weights(3))
    omega = layer.common_rates(np.random.default_rng(0).normal(size=(50, D)) * 10)
    assert omega.shape == (50, R)
    assert np.all(omega >= 1 / (1 + np.e) - 1e-6) and np.all(omega <= 1 / (1 + np.exp(-1)) + 1e-6)


def test_features_of_any_rank_are_flattened():
    layer = CrowdsCoNAL(K, R, hidden_units=6)
    probabilities, _ = _inputs(2)
    out = layer([probabilities, np.ones((2, 2, 3), "float32")])
    assert out.shape == (2, K, R)
    assert layer.instance_kernel_1.shape == (6, 6)
    assert layer.compute_output_shape([(None, K), (None, 2, 3)]) == (None, K, R)


@pytest.mark.parametrize("mixture", CONAL_MIXTURES)
def test_missing_answers_are_ignored_and_gradients_finite(mixture):
    """The item without answers changes neither the loss nor the gradients; at the common
    2 * I start (individual = common, where the norm has no derivative) they are finite."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((D,))
    probabilities = keras.layers.Dense(K, activation="softmax")(inputs)
    layer = CrowdsCoNAL(K, R, mixture=mixture, difference_weight=0.1)
    model = keras.Model(inputs, layer([probabilities, inputs]))
    loss_fn = MaskedMultiCrossEntropy()
    _, features = _inputs()

    def loss_and_grads(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x)) + tf.add_n(model.losses)
        return float(loss), tape.gradient(loss, model.trainable_weights)

    loss_all, grads_all = loss_and_grads(features, ANSWERS)
    keep = np.array([0, 1, 2, 4])
    loss_kept, grads_kept = loss_and_grads(features[keep], ANSWERS[keep])
    assert_allclose(loss_all, loss_kept, rtol=1e-6)
    for a, b in zip(grads_all, grads_kept):
        assert np.all(np.isfinite(a.numpy()))
        assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    assert float(tf.add_n(model.losses)) == 0.0  # every matrix starts at 2 * I


@pytest.mark.parametrize("mixture", CONAL_MIXTURES)
def test_difference_regularizer_matches_numpy(mixture):
    logits = _hand_weights()["confusion_logits"]
    regularizer = ConfusionDifferenceRegularizer(0.3, mixture=mixture, logit_scale=2.0)
    matrices = 2.0 * logits
    matrices = softmax(matrices) if mixture == "probabilities" else matrices
    norms = np.linalg.norm((matrices[:-1] - matrices[-1:]).reshape(R, -1), axis=1)
    assert_allclose(float(regularizer(logits.astype("float32"))), -0.3 * norms.sum(), rtol=1e-5)
    config = regularizer.get_config()
    assert config == {"difference_weight": 0.3, "mixture": mixture, "logit_scale": 2.0}
    assert ConfusionDifferenceRegularizer.from_config(config).get_config() == config


def test_the_layer_adds_the_regulariser_of_its_weights():
    weights = _hand_weights()
    layer = _layer(weights, difference_weight=0.2)
    expected = ConfusionDifferenceRegularizer(0.2)(weights["confusion_logits"].astype("float32"))
    assert_allclose(float(layer.losses[0]), float(expected), rtol=1e-6)
    assert not _layer(weights, difference_weight=0.0).losses


def test_start_values():
    default = _layer()
    assert_allclose(
        np.asarray(default.confusion_logits), np.broadcast_to(2 * np.eye(K), (R + 1, K, K))
    )
    diagonal = np.e**2 / (np.e**2 + K - 1)
    assert_allclose(
        np.diagonal(default.confusion_matrices(), axis1=1, axis2=2), diagonal, rtol=1e-6
    )
    assert_allclose(np.diag(_layer(init_diagonal=0.8).common_confusion_matrix()), 0.8, rtol=1e-6)
    rng = np.random.default_rng(0)
    given = rng.random((R, K, K)) + np.eye(K)
    given /= given.sum(axis=-1, keepdims=True)
    layer = _layer(init_confusions=given, logit_scale=5.0)
    assert_allclose(layer.confusion_matrices(), given, rtol=1e-5)
    assert_allclose(layer.common_confusion_matrix(), given.mean(axis=0), rtol=1e-5)


def test_code_start_equals_its_diagonal_probability_in_the_logits_mixture():
    """2 * I and init_diagonal = e^2 / (e^2 + K - 1) differ by a constant per row: the same
    answer distributions (the softmax ignores it)."""
    weights = _hand_weights()
    probabilities, features = _inputs()
    outputs = []
    for init_diagonal in (None, np.e**2 / (np.e**2 + K - 1)):
        layer = _layer(init_diagonal=init_diagonal)
        layer.set_weights(
            [layer.confusion_logits.numpy()] + [weights[n] for n in list(weights)[1:]]
        )
        outputs.append(softmax(np.asarray(layer([probabilities, features])), axis=1))
    assert_allclose(outputs[0], outputs[1], rtol=1e-5)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    given = rng.random((R, K, K)) + np.eye(K)
    given /= given.sum(axis=-1, keepdims=True)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((D,))
    probabilities = keras.layers.Dense(K, activation="softmax")(inputs)
    layer = CrowdsCoNAL(
        K, R, mixture="probabilities", init_confusions=given, embedding_dim=3, name="crowd"
    )
    model = keras.Model(inputs, layer([probabilities, inputs]))
    model.compile(keras.optimizers.Adam(0.05), loss=MaskedMultiCrossEntropy())
    _, features = _inputs()
    model.fit(features, ANSWERS, epochs=2, verbose=0)
    path = tmp_path / "conal.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # nothing but the module imported
    assert_allclose(
        loaded.predict(features, verbose=0), model.predict(features, verbose=0), atol=1e-6
    )
    crowd = loaded.get_layer("crowd")
    assert isinstance(crowd, CrowdsCoNAL) and crowd.mixture == "probabilities"
    assert crowd.embedding_dim == 3 and crowd.difference_weight == 1e-5
    assert_allclose(crowd.init_confusions, given)
    assert_allclose(crowd.confusion_matrices(), layer.confusion_matrices())
    assert isinstance(loaded.loss, MaskedMultiCrossEntropy)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_annotators": 0}, "num_annotators"),
        ({"mixture": "softmax"}, "mixture"),
        ({"difference_weight": -1.0}, "difference_weight"),
        ({"init_diagonal": 0.2}, "init_diagonal"),
        ({"init_diagonal": 1.0}, "init_diagonal"),
        ({"init_confusions": np.ones((R, K, 2))}, "init_confusions"),
        ({"init_confusions": np.ones((R, K, K))}, "init_confusions"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"hidden_units": 2.5}, "hidden_units"),
        ({"logit_scale": 0.0}, "logit_scale"),
    ],
)
def test_argument_errors_name_the_argument(kwargs, match):
    arguments = {"num_classes": K, "num_annotators": R, **kwargs}
    with pytest.raises(ValueError, match=match):
        CrowdsCoNAL(**arguments)


@pytest.mark.parametrize(
    "input_shape",
    [
        (None, K),
        [(None, K)],
        [(None, K + 1), (None, D)],
        [(None, K), (None, None)],
        [(None, K), (None,)],
    ],
)
def test_input_shape_errors(input_shape):
    with pytest.raises(ValueError, match="CrowdsCoNAL"):
        CrowdsCoNAL(K, R).build(input_shape)


def test_regularizer_errors_and_unbuilt_layer():
    with pytest.raises(ValueError, match="difference_weight"):
        ConfusionDifferenceRegularizer(-0.1)
    with pytest.raises(ValueError, match="mixture"):
        ConfusionDifferenceRegularizer(mixture="none")
    with pytest.raises(ValueError, match="logit_scale"):
        ConfusionDifferenceRegularizer(logit_scale=-1.0)
    with pytest.raises(ValueError, match="must be built"):
        CrowdsCoNAL(K, R).confusion_matrices()


# --------------------------------------------------------------------------------------------
# A simulated crowd
# --------------------------------------------------------------------------------------------


def simulate_crowd(n, seed):
    """3 classes of 2-D Gaussians; 5 annotators, each answering 80% of the items: two experts
    (right 90%), two who answer 1 for most items of class 0 (a confusion they share), one
    adversary who answers the next class 90% of the time. The majority vote calls most items of
    class 0 "1"."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    angles = 2 * np.pi * np.arange(3) / 3
    means = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    x = (means[truth] + rng.normal(size=(n, 2))).astype("float32")
    expert = 0.85 * np.eye(3) + 0.05
    confuser = expert.copy()
    confuser[0] = [0.2, 0.8, 0.0]
    confusions = np.stack([expert, expert, confuser, confuser, expert[[1, 2, 0]]])
    cumulative = confusions[:, truth].cumsum(axis=-1)  # (R, n, K)
    answers = (rng.random((5, n, 1)) > cumulative).sum(axis=-1).T
    answers[rng.random(answers.shape) < 0.2] = -1
    return x, truth, answers


def _classifier(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))


def _accuracy(classifier, x, truth):
    return float(np.mean(classifier.predict(x, verbose=0).argmax(axis=1) == truth))


def _majority_vote_accuracy(x, answers, x_test, y_test, epochs):
    votes = np.stack([(answers == k).sum(axis=1) for k in range(3)], axis=1)
    classifier = _classifier(0)
    classifier.compile(keras.optimizers.Adam(1e-2), loss="categorical_crossentropy")
    classifier.fit(x, np.eye(3)[votes.argmax(axis=1)], epochs=epochs, batch_size=32, verbose=0)
    return _accuracy(classifier, x_test, y_test)


@pytest.mark.slow
@pytest.mark.parametrize("mixture", CONAL_MIXTURES)
def test_conal_beats_the_majority_vote_on_a_simulated_crowd(mixture):
    x, _, answers = simulate_crowd(300, 0)
    x_test, y_test, _ = simulate_crowd(600, 1)
    epochs = 40
    majority = _majority_vote_accuracy(x, answers, x_test, y_test, epochs)
    accuracies = []
    for seed in (0, 1, 2):
        classifier = _classifier(seed)
        layer = CrowdsCoNAL(3, 5, mixture=mixture)
        model = keras.Model(classifier.inputs, layer([classifier.output, classifier.inputs[0]]))
        model.compile(keras.optimizers.Adam(1e-2), loss=MaskedMultiCrossEntropy())
        model.fit(x, answers, epochs=epochs, batch_size=32, verbose=0)
        accuracies.append(_accuracy(classifier, x_test, y_test))
    assert majority < 0.75  # class 0 is lost to the shared confusion
    assert np.median(accuracies) > majority + 0.15, (accuracies, majority)


# --------------------------------------------------------------------------------------------
# Two replicas
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strategy(two_replica_strategy):
    """Two replicas on the two logical CPUs, with this module's own collective keys."""
    return two_replica_strategy(2000)


def _fit(mixture, x, y, strategy=None):
    scope = strategy.scope() if strategy is not None else tf.distribute.get_strategy().scope()
    with scope:
        keras.utils.set_random_seed(1)
        inputs = keras.Input((D,))
        probabilities = keras.layers.Dense(K, activation="softmax")(inputs)
        layer = CrowdsCoNAL(K, R, mixture=mixture, difference_weight=0.05, logit_scale=3.0)
        model = keras.Model(inputs, layer([probabilities, inputs]))
        model.compile(keras.optimizers.SGD(learning_rate=0.5), loss=MaskedMultiCrossEntropy())
        initial = [np.array(w) for w in model.get_weights()]
        history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return initial, model.get_weights(), history.history["loss"][0]


@pytest.mark.slow
@pytest.mark.parametrize("mixture", CONAL_MIXTURES)
def test_two_replicas_equal_one_device(mixture, strategy):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, D)).astype("float32")
    y = rng.integers(0, K, size=(16, R))
    y[:4, 1:] = -1  # the replicas of batch 1 see different numbers of answers
    y[8:12] = -1  # replica 0 of batch 2 sees none
    initial, weights_1, loss_1 = _fit(mixture, x, y)
    _, weights_2, loss_2 = _fit(mixture, x, y, strategy)
    for before, a, b in zip(initial, weights_1, weights_2):
        assert not np.allclose(before, a)
        assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert_allclose(loss_2, loss_1, rtol=1e-5)
