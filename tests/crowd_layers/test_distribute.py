"""Two replicas (MirroredStrategy over two logical CPUs) train exactly like one device."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from numpy.testing import assert_allclose

from crowd_layers.latent_truth import CrowdsLatentTruth, LatentTruthLikelihood
from crowd_layers.layers import CrowdsClassification, CrowdsConfusion, CrowdsRegression
from crowd_layers.losses import MaskedMultiCrossEntropy, MaskedMultiMSE
from crowd_layers.pooled import (
    CrowdsGaussian,
    CrowdsPooled,
    MaskedGaussianLikelihood,
    PooledCrowdLikelihood,
)

K, R, D, N = 3, 4, 5, 16
GLOBAL_BATCH = 8


@pytest.fixture(scope="module")
def strategy():
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs two logical CPU devices (tests/conftest.py configures them)")
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def _data(kind, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)).astype("float32")
    if kind in ("regression", "gaussian", "latent", "latent_scaled"):
        y = rng.normal(size=(N, R)).astype("float32")
        y[rng.random((N, R)) < 0.3] = np.nan
        y[:4, 1:] = np.nan  # first half of the first batch: far fewer answers
        y[8:12] = 999999999
        return x, y
    y = rng.integers(0, K, size=(N, R))
    y[:4, 1:] = -1  # replica 0 of batch 1 sees 4 + 4 * 4 answers, replica 1 sees 16
    y[8:12] = -1  # replica 0 of batch 2 sees no answer at all
    y[13, 2] = -1
    return x, y


def _model(kind, seed=1):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((D,))
    if kind == "regression":
        outputs = CrowdsRegression(R, conn_type="S+B")(keras.layers.Dense(1)(inputs))
        loss = MaskedMultiMSE()
    elif kind == "gaussian":
        outputs = CrowdsGaussian(R)(keras.layers.Dense(1)(inputs))
        loss = MaskedGaussianLikelihood()
    elif kind in ("latent", "latent_scaled"):
        layer = CrowdsLatentTruth(R, annotator_weights=[3.0, 1.0, 2.0, 2.0])
        outputs = layer(keras.layers.Dense(1)(inputs))
        loss = LatentTruthLikelihood(
            mean_gradient_scale=layer.mean_gradient_scale() if kind == "latent_scaled" else 1.0
        )
    elif kind in ("pooled", "pooled_volume"):
        probabilities = keras.layers.Dense(K, activation="softmax")(inputs)
        volume = 0.05 if kind == "pooled_volume" else 0.0
        outputs = CrowdsPooled(K, R, logit_scale=3.0, volume_weight=volume)(probabilities)
        loss = PooledCrowdLikelihood()
    else:
        probabilities = keras.layers.Dense(K, activation="softmax")(inputs)
        layer = (
            CrowdsConfusion(K, R, trace_weight=0.3)
            if kind == "confusion"
            else CrowdsClassification(K, R, conn_type=kind)
        )
        outputs = layer(probabilities)
        loss = MaskedMultiCrossEntropy()
    model = keras.Model(inputs, outputs)
    # the likelihood's gradients are about 1 / tau^2 times larger: a smaller step keeps it
    # away from the float32 rounding that a step of 0.5 amplifies
    rate = 0.05 if kind.startswith("latent") else 0.5
    model.compile(keras.optimizers.SGD(learning_rate=rate), loss=loss)
    return model


def _fit(kind, x, y, strategy=None):
    scope = strategy.scope() if strategy is not None else tf.distribute.get_strategy().scope()
    with scope:
        model = _model(kind)
        initial = [np.array(w) for w in model.get_weights()]
        history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
        evaluation = model.evaluate(x, y, batch_size=GLOBAL_BATCH, verbose=0)
    return initial, model.get_weights(), history.history["loss"][0], evaluation


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind",
    [
        "MW",
        "VW+B",
        "confusion",
        "regression",
        "pooled",
        "pooled_volume",
        "gaussian",
        "latent",
        "latent_scaled",
    ],
)
def test_two_replicas_equal_one_device(kind, strategy):
    x, y = _data(kind)
    initial_1, weights_1, loss_1, eval_1 = _fit(kind, x, y)
    initial_2, weights_2, loss_2, eval_2 = _fit(kind, x, y, strategy)
    for a, b in zip(initial_1, initial_2):
        assert_allclose(a, b)
    for before, a, b in zip(initial_1, weights_1, weights_2):
        assert not np.allclose(before, a)  # the weights did move...
        assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # ...and identically
    assert_allclose(loss_2, loss_1, rtol=1e-5)
    assert_allclose(eval_2, eval_1, rtol=1e-5)


def test_replica_shares_sum_to_the_global_mean(strategy):
    """strategy.run on two halves with different answer counts: SUM of the losses."""
    x, y = _data("MW")
    logits = np.random.default_rng(3).normal(size=(GLOBAL_BATCH, K, R)).astype("float32")
    answers = y[:GLOBAL_BATCH]
    observed = answers >= 0
    assert observed[:4].sum() != observed[4:].sum()  # the halves really differ
    expected = float(MaskedMultiCrossEntropy()(answers, logits))  # one device
    dataset = tf.data.Dataset.from_tensor_slices((answers, logits)).batch(GLOBAL_BATCH)
    options = tf.distribute.InputOptions(experimental_fetch_to_device=False)
    distributed = strategy.experimental_distribute_dataset(dataset, options)
    loss = MaskedMultiCrossEntropy()
    per_replica = strategy.run(lambda a, b: loss(a, b), args=next(iter(distributed)))
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    assert_allclose(float(total), expected, rtol=1e-5)
    # The naive alternative (a mean per replica, averaged) differs on this batch.
    halves = [float(loss(answers[s], logits[s])) for s in (slice(0, 4), slice(4, 8))]
    assert not np.isclose(np.mean(halves), expected, rtol=1e-3)
