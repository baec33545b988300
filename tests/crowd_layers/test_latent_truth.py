"""The latent-truth model of continuous answers: the aggregator and the crowd head."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from numpy.testing import assert_allclose

import crowd_layers
from crowd_layers import CrowdsLatentTruth, LatentTruthLikelihood, LatentTruthRegression
from crowd_layers.aggregation.latent_truth import gaussian_marginal_nll


def _crowd(n=600, r=20, per=6, seed=0):
    """A simulated crowd with known scales, biases and noise levels (on the average answer's
    scale: count-weighted mean scale 1, mean bias 0)."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(-0.8, 0.8, n)
    scale = rng.uniform(0.5, 1.5, r)
    bias = rng.normal(0.0, 0.2, r)
    noise = rng.uniform(0.05, 0.5, r)
    observed = np.zeros((n, r), bool)
    for i in range(n):
        observed[i, rng.choice(r, per, replace=False)] = True
    weights = observed.sum(axis=0) / observed.sum()
    alpha, beta = weights @ scale, weights @ bias
    scale, bias = scale / alpha, bias - scale / alpha * beta  # then t' = alpha t + beta
    truth = alpha * truth + beta
    answers = scale * truth[:, None] + bias + noise * rng.standard_normal((n, r))
    return np.where(observed, answers, np.nan), truth, scale, bias, noise


def _ccc(a, b):
    return 2 * np.cov(a, b, bias=True)[0, 1] / (a.var() + b.var() + (a.mean() - b.mean()) ** 2)


# -- a plain NumPy EM, item by item and annotator by annotator, to check the vectorised one ----


def _reference_em(answers, iterations, k, truth_prior, min_noise=1e-3):
    n, r = answers.shape
    obs = np.isfinite(answers)
    mean = np.array([answers[i, obs[i]].mean() for i in range(n)])
    resid = [answers[i, j] - mean[i] for i in range(n) for j in range(r) if obs[i, j]]
    pooled = max(np.mean(np.square(resid)), min_noise**2)
    var = np.array([pooled / obs[i].sum() for i in range(n)])
    s, b, nv = np.ones(r), np.zeros(r), np.full(r, pooled)
    tau2 = max(mean.var(), min_noise**2)
    for _ in range(iterations):
        sse = np.zeros(r)
        counts = obs.sum(axis=0).astype(float)
        for j in range(r):
            rows = np.flatnonzero(obs[:, j])
            y, m, v = answers[rows, j], mean[rows], var[rows]
            a = np.array([[np.sum(m**2 + v) + k * tau2, m.sum()], [m.sum(), len(rows) + k]])
            rhs = np.array([np.sum(y * m) + k * tau2, y.sum()])
            s[j], b[j] = np.linalg.solve(a, rhs) if len(rows) + k > 0 else (1.0, 0.0)
            e = np.sum((y - s[j] * m - b[j]) ** 2 + s[j] ** 2 * v)
            sse[j] = e + k * tau2 * (s[j] - 1) ** 2 + k * b[j] ** 2
        pooled = max(sse.sum() / counts.sum(), min_noise**2)
        nv = np.maximum((sse + k * pooled) / (counts + k), min_noise**2)
        mu = mean.mean()
        tau2 = max(np.mean(mean**2 + var) - mu**2, min_noise**2)
        w = counts / counts.sum()
        alpha, beta = w @ s, w @ b
        s = s / alpha
        b = b - s * beta
        mu, tau2 = alpha * mu + beta, alpha**2 * tau2
        for i in range(n):
            cols = np.flatnonzero(obs[i])
            precision = np.sum(s[cols] ** 2 / nv[cols]) + (1 / tau2 if truth_prior else 0)
            num = np.sum(s[cols] * (answers[i, cols] - b[cols]) / nv[cols])
            num += mu / tau2 if truth_prior else 0
            mean[i], var[i] = num / precision, 1 / precision
    return mean, s, b, np.sqrt(nv)


@pytest.mark.parametrize("truth_prior", [True, False])
def test_aggregator_matches_a_plain_numpy_em(truth_prior):
    answers = _crowd(n=60, r=7, per=3, seed=1)[0]
    model = LatentTruthRegression(max_iter=25, tol=0.0, truth_prior=truth_prior).fit(answers)
    truth, scale, bias, noise = _reference_em(answers, 25, 5.0, truth_prior)
    assert model.n_iter_ == 25
    assert_allclose(model.truth_, truth, rtol=1e-9, atol=1e-9)
    assert_allclose(model.scale_, scale, rtol=1e-9)
    assert_allclose(model.bias_, bias, atol=1e-9)
    assert_allclose(model.noise_, noise, rtol=1e-9)


def test_aggregator_recovers_scales_biases_noise_and_beats_the_mean():
    answers, truth, scale, bias, noise = _crowd()
    model = LatentTruthRegression().fit(answers)
    assert model.n_iter_ < model.max_iter
    assert np.abs(model.scale_ - scale).mean() < 0.06
    assert np.abs(model.bias_ - bias).mean() < 0.03
    assert np.abs(model.noise_ - noise).mean() < 0.03
    mean = crowd_layers.mean_answer(answers)
    rmse_mean = np.sqrt(np.mean((mean - truth) ** 2))
    rmse_latent = np.sqrt(np.mean((model.truth_ - truth) ** 2))
    assert rmse_latent < 0.75 * rmse_mean
    assert _ccc(model.truth_, truth) > _ccc(mean, truth) + 0.01
    # the truth is on the scale of the average answer
    weights = model.answer_counts_ / model.answer_counts_.sum()
    assert_allclose([weights @ model.scale_, weights @ model.bias_], [1.0, 0.0], atol=1e-12)
    assert np.all(model.truth_std_ > 0) and np.isfinite(model.log_likelihood_)
    assert_allclose(model.predict(answers), model.truth_, atol=1e-12)  # truth_: the last E-step


def test_one_answer_items_silent_annotators_and_unanswered_items():
    answers = _crowd(n=200, r=10, per=3, seed=2)[0]
    answers[:20, :] = np.nan
    answers[:20, 0] = 0.5  # twenty items with one answer each
    answers[:, 9] = np.nan  # an annotator who never answers
    answers[25] = np.nan  # an item nobody answered
    answers[26, 3] = 999999999  # the reference code's sentinel is no answer too
    with pytest.warns(UserWarning, match="1 of 200 items have no answer"):
        model = LatentTruthRegression(truth_prior=True).fit(answers)
    assert np.isnan(model.truth_[25]) and np.isnan(model.truth_std_[25])
    assert np.all(np.isfinite(np.delete(model.truth_, 25)))
    assert model.scale_[9] == 1.0 and model.bias_[9] == 0.0 and np.isfinite(model.noise_[9])
    assert model.answer_counts_[9] == 0
    # one-answer items sit between that answer (corrected) and the crowd's mean
    corrected = (0.5 - model.bias_[0]) / model.scale_[0]
    low, high = sorted([corrected, model.prior_mean_])
    assert np.all((model.truth_[:20] >= low - 1e-9) & (model.truth_[:20] <= high + 1e-9))
    flat = LatentTruthRegression().fit(answers[np.arange(200) != 25])  # no prior: the default
    assert_allclose(flat.truth_[:20], (0.5 - flat.bias_[0]) / flat.scale_[0])
    assert flat.prior_std_ == float("inf")


def test_priors_keep_rare_annotators_near_the_plain_mean():
    answers = _crowd(n=300, r=12, per=4, seed=3)[0]
    rare = np.full((300, 1), np.nan)
    rare[:2, 0] = [0.9, -0.7]  # two answers only
    answers = np.hstack([answers, rare])
    loose = LatentTruthRegression(prior_answers=0.0).fit(answers)
    firm = LatentTruthRegression(prior_answers=50.0).fit(answers)
    assert abs(firm.scale_[-1] - 1.0) < abs(loose.scale_[-1] - 1.0)
    assert abs(firm.scale_[-1] - 1.0) < 0.1 and abs(firm.bias_[-1]) < 0.05


def test_predict_uses_the_fitted_annotators_on_new_items():
    answers, truth, *_ = _crowd(n=400, seed=4)
    model = LatentTruthRegression().fit(answers[:300])
    new = model.predict(answers[300:])
    assert_allclose(new, LatentTruthRegression().fit(answers[:300]).predict(answers[300:]))
    assert np.sqrt(np.mean((new - truth[300:]) ** 2)) < np.sqrt(
        np.mean((np.nanmean(answers[300:], axis=1) - truth[300:]) ** 2)
    )
    assert model.predict_std(answers[300:]).shape == (100,)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: LatentTruthRegression(max_iter=0), "max_iter"),
        (lambda: LatentTruthRegression(prior_answers=-1), "prior_answers"),
        (lambda: LatentTruthRegression(min_noise=0), "min_noise"),
        (lambda: LatentTruthRegression().fit(np.full((3, 2), np.nan)), "no answer at all"),
        (lambda: LatentTruthRegression().predict(np.zeros((2, 2))), "not fitted"),
        (
            lambda: LatentTruthRegression().fit(np.eye(3)).predict(np.zeros((2, 4))),
            "3 annotator columns",
        ),
    ],
)
def test_aggregator_errors_name_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- the crowd head -----------------------------------------------------------------------------


def _head_outputs(seed=0, n=6, r=5, **kwargs):
    rng = np.random.default_rng(seed)
    layer = CrowdsLatentTruth(
        r,
        init_scale=rng.uniform(0.5, 1.5, r),
        init_bias=rng.normal(0, 0.2, r),
        init_noise=rng.uniform(0.1, 0.5, r),
        init_prior_std=0.4,
        annotator_weights=rng.integers(1, 5, r),
        **kwargs,
    )
    f = tf.constant(rng.uniform(-1, 1, (n, 1)), tf.float32)
    y = rng.normal(0, 0.5, (n, r)).astype("float32")
    y[rng.random((n, r)) < 0.4] = np.nan
    y[0] = np.nan  # no answer
    y[1, :] = np.nan
    y[1, 2] = 0.3  # one answer
    y[2, 0] = 999999999
    return layer, f, y


def _dense_nll(y, f, params):
    """The item's NLL with its full answer covariance, by NumPy's solve and slogdet."""
    values = []
    for i in range(len(y)):
        o = np.isfinite(y[i]) & (y[i] != 999999999)
        if not o.any():
            continue
        s = params["scale"][o]
        cov = np.diag(params["noise"][o] ** 2) + params["prior_std"] ** 2 * np.outer(s, s)
        z = y[i, o] - s * f[i, 0] - params["bias"][o]
        values.append(0.5 * (z @ np.linalg.solve(cov, z) + np.linalg.slogdet(2 * np.pi * cov)[1]))
    return np.mean(values)


def test_head_loss_is_the_mean_marginal_nll_of_the_answered_items():
    layer, f, y = _head_outputs()
    out = layer(f)
    params = layer.annotator_parameters()
    expected = _dense_nll(y, f.numpy(), params)
    assert_allclose(float(LatentTruthLikelihood()(y, out)), expected, rtol=1e-5)
    assert_allclose(
        float(LatentTruthLikelihood(mean_gradient_scale=0.3)(y, out)), expected, rtol=1e-5
    )
    # the aggregator's NumPy formula gives the same per item
    obs = np.isfinite(y) & (y != 999999999)
    per_item = gaussian_marginal_nll(
        np.where(obs, y, 0), obs, f.numpy()[:, 0], params["prior_std"] ** 2,
        params["scale"], params["bias"], params["noise"] ** 2,
    )  # fmt: skip
    assert_allclose(per_item[obs.any(axis=1)].mean(), expected, rtol=1e-9)


def test_head_gradients_finite_and_the_pooled_residual():
    layer, f, y = _head_outputs()
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(f)
        loss = LatentTruthLikelihood()(y, layer(f))
    grads = tape.gradient(loss, [f, *layer.trainable_weights])
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    assert grads[0].numpy()[0, 0] == 0.0  # the item without answers
    p = layer.annotator_parameters()
    obs = np.isfinite(y) & (y != 999999999)
    answered = obs.any(axis=1).sum()
    for i in range(1, len(y)):
        o = obs[i]
        z = y[i, o] - p["scale"][o] * f.numpy()[i, 0] - p["bias"][o]
        c = np.sum(p["scale"][o] * z / p["noise"][o] ** 2)
        u = 1 + p["prior_std"] ** 2 * np.sum(p["scale"][o] ** 2 / p["noise"][o] ** 2)
        assert_allclose(grads[0].numpy()[i, 0], -c / u / answered, rtol=1e-4, atol=1e-7)


def test_mean_gradient_scale_scales_the_means_gradients_only():
    layer, f, y = _head_outputs()
    results = []
    for factor in (1.0, 0.25):
        with tf.GradientTape() as tape:
            tape.watch(f)
            loss = LatentTruthLikelihood(mean_gradient_scale=factor)(y, layer(f))
        grads = dict(
            zip(["f", "scale", "bias", "noise", "prior_std"], tape.gradient(loss, [f, *layer.weights]))
        )  # fmt: skip
        results.append((float(loss), {k: v.numpy() for k, v in grads.items()}))
    (value_1, g1), (value_2, g2) = results
    assert_allclose(value_1, value_2, rtol=1e-6)
    for name in ("f", "scale", "bias"):
        assert_allclose(g2[name], 0.25 * g1[name], rtol=1e-4, atol=1e-8)
    for name in ("noise", "prior_std"):
        assert_allclose(g2[name], g1[name], rtol=1e-5)


def test_head_keeps_the_truth_on_the_average_answers_scale():
    layer, f, _ = _head_outputs()
    layer(f)
    layer.scale.assign(layer.scale * 1.7)
    layer.bias.assign(layer.bias + 0.3)
    p = layer.annotator_parameters()
    w = layer.annotator_weights
    assert_allclose([w @ p["scale"], w @ p["bias"]], [1.0, 0.0], atol=1e-6)
    free, f, _ = _head_outputs(normalize_scale=False)
    free(f)
    assert not np.isclose(free.annotator_weights @ free.annotator_parameters()["scale"], 1.0)


def test_head_starts_from_the_aggregator():
    answers = _crowd(n=200, r=8, per=4, seed=5)[0]
    model = LatentTruthRegression(truth_prior=True).fit(answers)
    layer = CrowdsLatentTruth.from_aggregator(
        model, annotator_weights=model.answer_counts_, learning_rate_multiplier=10.0
    )
    layer(np.zeros((1, 1), "float32"))
    p = layer.annotator_parameters()
    assert_allclose(p["scale"], model.scale_, rtol=1e-5)
    assert_allclose(p["bias"], model.bias_, atol=1e-6)
    assert_allclose(p["noise"], model.noise_, rtol=1e-5)
    assert_allclose(p["prior_std"], model.prior_std_, rtol=1e-5)
    assert_allclose(layer.scale.numpy() * 10.0, model.scale_.reshape(1, -1), rtol=1e-5)
    assert_allclose(layer.mean_gradient_scale(), 2 * model.prior_std_**2)


def test_head_model_save_load_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    value = keras.layers.Dense(1, activation="tanh")(inputs)
    layer = CrowdsLatentTruth(4, init_noise=[0.1, 0.2, 0.3, 0.4], annotator_weights=[1, 2, 3, 4])
    model = keras.Model(inputs, layer(value))
    model.compile("adam", loss=LatentTruthLikelihood(mean_gradient_scale=0.5))
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    y = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    y[::2, 1:] = np.nan
    model.fit(x, y, epochs=2, verbose=0)
    model.save(tmp_path / "latent.keras")
    loaded = keras.models.load_model(tmp_path / "latent.keras")
    assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert loaded.loss.mean_gradient_scale == 0.5
    assert_allclose(loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6)
    restored = loaded.layers[-1]
    assert_allclose(restored.annotator_weights, [0.1, 0.2, 0.3, 0.4])


def test_head_learns_each_annotators_bias_and_noise():
    """A linear network trained through the head finds a biased and a noisy annotator."""
    rng = np.random.default_rng(6)
    x = rng.uniform(-1, 1, (1200, 1)).astype("float32")
    truth = 0.8 * x[:, 0]
    bias = np.array([0.0, 0.0, 0.4, -0.1, 0.0])
    noise = np.array([0.1, 0.1, 0.1, 0.1, 0.6])
    answers = truth[:, None] + bias + noise * rng.standard_normal((1200, 5))
    answers[rng.random((1200, 5)) < 0.4] = np.nan
    keras.utils.set_random_seed(0)
    inputs = keras.Input((1,))
    value = keras.layers.Dense(1)(inputs)
    layer = CrowdsLatentTruth(5)
    model = keras.Model(inputs, layer(value))
    model.compile(keras.optimizers.Adam(0.03), loss=LatentTruthLikelihood())
    model.fit(x, answers.astype("float32"), epochs=15, batch_size=64, verbose=0)
    p = layer.annotator_parameters()
    assert np.argmax(p["noise"]) == 4 and p["noise"][4] > 0.45
    assert np.argmax(p["bias"]) == 2 and p["bias"][2] - np.median(p["bias"]) > 0.3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_annotators": 0}, "num_annotators"),
        ({"num_annotators": 3, "init_scale": [1.0, 1.0]}, "init_scale"),
        ({"num_annotators": 2, "init_noise": 0.01}, "min_noise"),
        ({"num_annotators": 2, "annotator_weights": [0, 0]}, "annotator_weights"),
        ({"num_annotators": 2, "learning_rate_multiplier": 0}, "learning_rate_multiplier"),
    ],
)
def test_head_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CrowdsLatentTruth(**kwargs)


def test_head_loss_shape_errors():
    with pytest.raises(ValueError, match="CrowdsLatentTruth"):
        LatentTruthLikelihood()(np.zeros((2, 3)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="same number of annotators"):
        LatentTruthLikelihood()(np.zeros((2, 4)), np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match="mean_gradient_scale"):
        LatentTruthLikelihood(mean_gradient_scale=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="inputs of shape"):
            CrowdsLatentTruth(2)(np.zeros((2, 3)))
