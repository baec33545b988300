"""Evaluation metrics: parity with scikit-learn and ``krippendorff`` on random inputs, values
computed by hand on small cases, edge cases, and the Keras metrics against the NumPy functions."""

import warnings

import keras
import krippendorff
import numpy as np
import pytest
from sklearn import metrics as sk

from affectnet_tf.modeling import metrics


def _random_case(rng, n=300, k=8, ties=True):
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    if ties:
        logits = np.round(logits, 1)  # tied scores, as a softmax in float16 gives
    probabilities = np.exp(logits)
    return y, probabilities / probabilities.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_classes", [8, 7])
def test_expression_metrics_equal_sklearn_and_krippendorff(seed, num_classes):
    y, p = _random_case(np.random.default_rng(seed), k=num_classes)
    guess = p.argmax(axis=1)
    result = metrics.expression_metrics(y, p, num_classes)
    assert tuple(result) == metrics.EXPRESSION_KEYS
    expected = {
        "accuracy": sk.accuracy_score(y, guess),
        "balanced_accuracy": sk.balanced_accuracy_score(y, guess),
        "f1_macro": sk.f1_score(y, guess, average="macro"),
        "f1_weighted": sk.f1_score(y, guess, average="weighted"),
        "kappa": sk.cohen_kappa_score(y, guess),
        "alpha": krippendorff.alpha(
            reliability_data=np.stack([y, guess]), level_of_measurement="nominal"
        ),
        "auc": sk.roc_auc_score(y, p, multi_class="ovr", average="macro"),
        "aucpr": sk.average_precision_score(np.eye(num_classes)[y], p, average="macro"),
    }
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-12), key
        assert isinstance(result[key], float)


def test_krippendorff_alpha_pair_scores_labels_and_predictions_as_two_raters():
    # 3 examples, raters (0, 0), (1, 1), (1, 0): alpha = 4/9 by hand
    assert metrics.krippendorff_alpha_pair([0, 1, 1], [0, 1, 0]) == pytest.approx(4 / 9)
    # probabilities are argmaxed and unlabelled examples (-1) left out
    probabilities = np.eye(3)[[0, 1, 0, 2]]
    assert metrics.krippendorff_alpha_pair([0, 1, 1, -1], probabilities, 3) == pytest.approx(4 / 9)
    with pytest.warns(RuntimeWarning, match="krippendorff_alpha_pair: no labelled example"):
        assert np.isnan(metrics.krippendorff_alpha_pair([-1], [0]))
    # the name no longer clashes with crowd_layers.krippendorff_alpha (many raters)
    assert not hasattr(metrics, "krippendorff_alpha")


def test_missing_labels_are_ignored_and_predictions_may_be_indices():
    y_true = np.array([0, 0, 1, 2, -1])
    y_pred = np.array([0, 1, 1, 2, 0])
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(0.75)
    assert metrics.balanced_accuracy(y_true, y_pred) == pytest.approx((0.5 + 1 + 1) / 3)
    # F1: class 0 = 2/3, class 1 = 2/3, class 2 = 1; supports 2, 1, 1
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert metrics.f1(y_true, y_pred, "weighted") == pytest.approx((2 * 2 / 3 + 2 / 3 + 1) / 4)
    assert metrics.accuracy(y_true, np.eye(3)[y_pred]) == pytest.approx(0.75)
    # kappa: p_o = 3/4; p_true = (1/2, 1/4, 1/4), p_pred = (1/4, 1/2, 1/4) -> p_e = 5/16
    assert metrics.cohen_kappa(y_true, y_pred) == pytest.approx((3 / 4 - 5 / 16) / (11 / 16))
    np.testing.assert_array_equal(
        metrics.confusion_matrix(y_true, y_pred, 3), [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    )


def test_auc_and_average_precision_by_hand():
    # class 0 against the rest, scores 0.9 0.8 0.7 0.6 for labels 0 1 0 1
    y = np.array([0, 1, 0, 1])
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    # class 0: positives ranked 1st and 3rd: AUC = 3/4; AP = (1/2)(1) + (1/2)(2/3)
    # class 1: scores 0.2 and 0.4 among 0.1, 0.3: AUC = 3/4; AP = (1/2)(1) + (1/2)(2/3)
    assert metrics.auc(y, p, 2) == pytest.approx(0.75)
    assert metrics.aucpr(y, p, 2) == pytest.approx(0.5 + 1 / 3)
    # tied scores: a tie between a positive and a negative counts one half
    tied = np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1], [0.1, 0.9]])
    assert metrics.auc(y, tied, 2) == pytest.approx(sk.roc_auc_score(y, tied[:, 1]), abs=1e-12)


def test_affect_metrics_by_hand():
    y_true = np.array([0.0, 0.5, 1.0, np.nan])
    assert metrics.rmse(y_true, [0.0, 0.5, 1.0, 9.0]) == 0.0
    assert metrics.ccc(y_true, [0.0, 0.5, 1.0, 9.0]) == pytest.approx(1.0)
    assert metrics.rmse(y_true, [1.0, 1.0, 1.0, 0.0]) == pytest.approx(np.sqrt(1.25 / 3))
    # shifted prediction: 2 cov / (vt + vp + d^2) with vt = vp = cov = 1/6, d = 0.5
    assert metrics.ccc(y_true, [0.5, 1.0, 1.5, 0.0]) == pytest.approx((1 / 3) / (1 / 3 + 0.25))
    assert metrics.pearson(y_true, [0.5, 1.0, 1.5, 0.0]) == pytest.approx(1.0)
    # signs: true (-, +, +, 0) predicted (-, -, +, +): 2 of 4 agree (0 is its own sign)
    assert metrics.sagr([-0.5, 0.5, 0.2, 0.0], [-0.1, -0.3, 0.9, 0.1]) == pytest.approx(0.5)
    result = metrics.affect_metrics(y_true, [0.5, 1.0, 1.5, 0.0])
    assert tuple(result) == metrics.AFFECT_KEYS


def test_affect_metrics_on_random_inputs_match_scipy(rng):
    from scipy import stats

    t, p = rng.uniform(-1, 1, 200), rng.uniform(-1, 1, 200)
    p = 0.5 * t + 0.3 * p + 0.1
    assert metrics.pearson(t, p) == pytest.approx(stats.pearsonr(t, p).statistic)
    assert metrics.rmse(t, p) == pytest.approx(np.sqrt(sk.mean_squared_error(t, p)))
    # CCC = 2 r s_t s_p / (s_t^2 + s_p^2 + (m_t - m_p)^2), population moments
    r, st, sp = stats.pearsonr(t, p).statistic, t.std(), p.std()
    expected = 2 * r * st * sp / (st**2 + sp**2 + (t.mean() - p.mean()) ** 2)
    assert metrics.ccc(t, p) == pytest.approx(expected)


def test_valence_and_arousal_together():
    t = np.array([[0.1, -0.2], [0.4, 0.3], [-0.5, 0.9]])
    p = np.array([[0.0, -0.1], [0.5, 0.2], [-0.4, 0.7]])
    both = metrics.affect_metrics(t, p)
    assert set(both) == {"valence", "arousal"}
    assert both["arousal"]["ccc"] == pytest.approx(metrics.ccc(t[:, 1], p[:, 1]))
    as_dicts = metrics.affect_metrics(
        {"valence": t[:, 0], "arousal": t[:, 1]}, {"valence": p[:, 0], "arousal": p[:, 1]}
    )
    assert as_dicts == both
    with pytest.raises(ValueError, match="same keys"):
        metrics.affect_metrics({"valence": t[:, 0]}, {"arousal": p[:, 1]})


def test_undefined_values_warn_and_never_silently_nan():
    with pytest.warns(RuntimeWarning, match="constant"):
        assert np.isnan(metrics.pearson([0.1, 0.2, 0.3], [0.5, 0.5, 0.5]))
    with pytest.warns(RuntimeWarning, match="same constant"):
        assert np.isnan(metrics.ccc([0.5, 0.5], [0.5, 0.5]))
    # constant predictions against varying targets: CCC is defined (0), no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.ccc([0.1, 0.3], [0.2, 0.2]) == 0.0
    with pytest.warns(RuntimeWarning, match="all one class"):
        assert np.isnan(metrics.cohen_kappa([2, 2, 2], [2, 2, 2]))
    with pytest.warns(RuntimeWarning, match="only one class"):
        assert np.isnan(metrics.auc([1, 1], np.full((2, 3), 1 / 3), 3))
    with pytest.warns(RuntimeWarning, match=r"classes \[2\] have no true example"):
        assert metrics.auc([0, 1, 0, 1], [[0.9, 0.05, 0.05]] * 2 + [[0.2, 0.7, 0.1]] * 2, 3) == 0.5
    with pytest.warns(RuntimeWarning, match="no labelled example"):
        assert np.isnan(metrics.accuracy([-1, -1], [0, 1]))
    with pytest.warns(RuntimeWarning, match="no finite target"):
        assert np.isnan(metrics.rmse([np.nan], [0.0]))
    # one class present, all predicted right: accuracy and F1 are 1, kappa undefined (warned)
    with pytest.warns(RuntimeWarning):
        result = metrics.expression_metrics([3, 3, 3], np.eye(8)[[3, 3, 3]])
    assert result["accuracy"] == result["f1_macro"] == result["balanced_accuracy"] == 1.0
    assert np.isnan(result["kappa"]) and np.isnan(result["auc"])


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"probabilities.shape=\(3,\)"):
        metrics.expression_metrics([0, 1, 2], [0, 1, 2])
    with pytest.raises(ValueError, match="same number of examples"):
        metrics.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="outside 0..6"):
        metrics.expression_metrics([7], np.full((1, 7), 1 / 7), num_classes=7)
    with pytest.raises(ValueError, match="NaN or infinite"):
        metrics.rmse([0.0, 1.0], [np.nan, 0.0])
    with pytest.raises(ValueError, match="average"):
        metrics.f1([0], [0], average="micro")


def _batches(*arrays, size=7):
    for start in range(0, len(arrays[0]), size):
        yield tuple(a[start : start + size] for a in arrays)


@pytest.mark.parametrize(
    "metric, function",
    [
        (metrics.ConcordanceCorrelation, metrics.ccc),
        (metrics.PearsonCorrelation, metrics.pearson),
        (metrics.SignAgreement, metrics.sagr),
    ],
)
def test_keras_regression_metrics_stream_to_the_numpy_value(rng, metric, function):
    t = rng.uniform(-1, 1, (40, 1)).astype(np.float32)
    p = (0.6 * t + 0.3 * rng.normal(size=(40, 1))).astype(np.float32)
    t[[3, 17]] = np.nan  # missing targets are ignored
    streaming = metric()
    for batch_t, batch_p in _batches(t, p):
        streaming.update_state(batch_t, batch_p)
    assert float(streaming.result()) == pytest.approx(function(t, p), abs=1e-5)
    streaming.reset_state()
    streaming.update_state(t[:10], p[:10])
    assert float(streaming.result()) == pytest.approx(function(t[:10], p[:10]), abs=1e-5)
    clone = metric.from_config(streaming.get_config())
    assert clone.name == streaming.name


@pytest.mark.parametrize(
    "metric, function",
    [
        (metrics.MaskedAccuracy, metrics.accuracy),
        (metrics.BalancedAccuracy, metrics.balanced_accuracy),
        (metrics.MacroF1, metrics.macro_f1),
    ],
)
def test_keras_label_metrics_stream_to_the_numpy_value(rng, metric, function):
    y, p = _random_case(rng, n=50, k=8, ties=False)
    y[[0, 9]] = -1
    streaming = metric(num_classes=8)
    for batch_y, batch_p in _batches(y, p.astype(np.float32)):
        streaming.update_state(batch_y, batch_p)
    assert float(streaming.result()) == pytest.approx(function(y, p), abs=1e-6)
    assert metric.from_config(streaming.get_config()).num_classes == 8
    with pytest.raises(ValueError, match="num_classes"):
        metric(num_classes=1)


def test_keras_metrics_in_compile_and_a_saved_model(tmp_path):
    inputs = keras.Input((4,))
    outputs = {
        "expression": keras.layers.Dense(3, activation="softmax", name="expression")(inputs),
        "valence": keras.layers.Dense(1, activation="tanh", name="valence")(inputs),
    }
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer="adam",
        loss={"expression": "sparse_categorical_crossentropy", "valence": "mse"},
        metrics={
            "expression": [metrics.BalancedAccuracy(3), metrics.MacroF1(3)],
            "valence": [metrics.ConcordanceCorrelation(), metrics.SignAgreement()],
        },
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = {"expression": rng.integers(0, 3, 32), "valence": rng.uniform(-1, 1, (32, 1))}
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # a trained model, its optimizer built
    logs = model.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    predicted = model.predict(x, verbose=0)
    assert logs["valence_ccc"] == pytest.approx(
        metrics.ccc(y["valence"], predicted["valence"]), abs=1e-4
    )
    assert logs["expression_f1_macro"] == pytest.approx(
        metrics.macro_f1(y["expression"], predicted["expression"]), abs=1e-4
    )
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    again = reloaded.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    assert again["valence_ccc"] == pytest.approx(logs["valence_ccc"], abs=1e-6)
