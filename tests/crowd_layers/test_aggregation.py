"""Tests of crowd_layers.aggregation: majority vote, Dawid-Skene, mean/median, agreement."""

import logging
import subprocess
import sys
import time
from pathlib import Path

import krippendorff
import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from crowd_layers.aggregation import (
    DawidSkene,
    fleiss_kappa,
    krippendorff_alpha,
    majority_vote,
    mean_answer,
    median_answer,
    vote_distribution,
)

REPO = Path(__file__).resolve().parents[2]

# crowd-kit 1.4 calls pandas APIs that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:crowdkit")
EPS = 1e-10

# A tiny crowd: 5 items, 3 annotators, 3 classes, -1 = no answer.
TINY = np.array(
    [
        [0, 0, 1],
        [1, 1, 1],
        [0, 2, -1],
        [-1, 2, 2],
        [2, 1, 0],
    ]
)


def _to_long(answers):
    items, annotators = np.nonzero(answers != -1)
    return items, annotators, answers[items, annotators]


def _to_frame(answers):
    items, annotators, labels = _to_long(np.asarray(answers))
    return pd.DataFrame({"task": items, "worker": annotators, "label": labels})


def _simulate(n_items, n_annotators, k, answers_per_item, seed):
    """Sparse simulated crowd with known confusions; returns (long answers, truth, confusions)."""
    rng = np.random.default_rng(seed)
    accuracy = rng.uniform(0.55, 0.9, n_annotators)
    confusions = rng.dirichlet(np.ones(k), size=(n_annotators, k)) * (1 - accuracy)[:, None, None]
    confusions[:, np.arange(k), np.arange(k)] += accuracy[:, None]
    confusions /= confusions.sum(-1, keepdims=True)
    truth = rng.integers(0, k, n_items)
    annotators = rng.random((n_items, n_annotators)).argsort(axis=1)[:, :answers_per_item].ravel()
    items = np.repeat(np.arange(n_items), answers_per_item)
    cumulative = confusions.cumsum(-1)[annotators, truth[items]]
    labels = (rng.random(len(items))[:, None] > cumulative).sum(1).clip(max=k - 1)
    return (items, annotators, labels), truth, confusions


# --------------------------------------------------------------------------------------------
# Dawid-Skene
# --------------------------------------------------------------------------------------------


def _by_hand_one_iteration(answers, k):
    """One EM iteration written out with loops, independent of the implementation."""
    n_items, n_annotators = answers.shape
    # Initialisation: majority-vote vote fractions, priors, then one M-step.
    q0 = np.zeros((n_items, k))
    for i in range(n_items):
        for w in range(n_annotators):
            if answers[i, w] != -1:
                q0[i, answers[i, w]] += 1
        q0[i] /= q0[i].sum()

    def m_step(q):
        counts = np.zeros((n_annotators, k, k))  # [w, true c, answer l]
        used = np.zeros((n_annotators, k), dtype=bool)
        for i in range(n_items):
            for w in range(n_annotators):
                label = answers[i, w]
                if label != -1:
                    used[w, label] = True
                    for c in range(k):
                        counts[w, c, label] += q[i, c]
        for w in range(n_annotators):
            for label in range(k):
                if used[w, label]:
                    counts[w, :, label] = np.maximum(counts[w, :, label], EPS)
        return counts / counts.sum(axis=2, keepdims=True), q.mean(axis=0)

    pi0, p0 = m_step(q0)
    # E-step.
    log_q = np.zeros((n_items, k))
    log_likelihood = 0.0
    for i in range(n_items):
        for c in range(k):
            log_q[i, c] = np.log(max(p0[c], EPS))
            for w in range(n_annotators):
                if answers[i, w] != -1:
                    log_q[i, c] += np.log(pi0[w, c, answers[i, w]])
        z = np.log(np.sum(np.exp(log_q[i])))
        log_likelihood += z
        log_q[i] -= z
    q1 = np.exp(log_q)
    pi1, p1 = m_step(q1)
    return q1, pi1, p1, log_likelihood / np.sum(answers != -1)


def test_dawid_skene_one_iteration_by_hand():
    q1, pi1, p1, log_likelihood = _by_hand_one_iteration(TINY, 3)
    ds = DawidSkene(max_iter=1).fit(TINY)
    assert ds.n_iter_ == 1
    assert_allclose(ds.probas_, q1, rtol=1e-10)
    assert_allclose(ds.confusions_, pi1, rtol=1e-10, atol=1e-15)
    assert_allclose(ds.priors_, p1, rtol=1e-10)
    assert_allclose(ds.log_likelihoods_, [log_likelihood], rtol=1e-10)
    assert_array_equal(ds.labels_, np.argmax(q1, axis=1))
    assert_allclose(ds.probas_.sum(axis=1), 1.0)
    assert_allclose(ds.confusions_.sum(axis=2), 1.0)


def test_dawid_skene_zero_iterations_is_majority_vote_fractions():
    ds = DawidSkene(max_iter=0).fit(TINY)
    assert ds.n_iter_ == 0
    assert_allclose(ds.probas_, vote_distribution(TINY, num_classes=3))
    assert ds.log_likelihoods_.shape == (0,)


def test_dawid_skene_matches_crowdkit_objective_per_iteration():
    crowdkit = pytest.importorskip("crowdkit.aggregation")
    reference = crowdkit.DawidSkene(n_iter=5, tol=-1.0).fit(_to_frame(TINY))
    ds = DawidSkene(max_iter=5, tol=-1.0).fit(TINY)
    assert_allclose(ds.elbos_, reference.loss_history_, rtol=1e-12)
    probas = reference.probas_.sort_index()[[0, 1, 2]].to_numpy()
    assert_allclose(ds.probas_, probas, atol=2e-10)  # crowd-kit clips its output at 1e-10


def test_dawid_skene_dense_and_long_format_identical(rng):
    answers = rng.integers(-1, 4, size=(60, 7))
    answers[:, 0] = rng.integers(0, 4, size=60)  # every item and annotator answers
    answers[0] = np.arange(7) % 4
    items, annotators, labels = _to_long(answers)
    order = rng.permutation(len(items))
    dense = DawidSkene(num_classes=4).fit(answers)
    long = DawidSkene(num_classes=4).fit((items[order], annotators[order], labels[order]))
    assert_array_equal(dense.labels_, long.labels_)
    assert_array_equal(dense.probas_, long.probas_)
    assert_array_equal(dense.confusions_, long.confusions_)
    assert dense.n_iter_ == long.n_iter_


@pytest.mark.shared_data
@pytest.mark.parametrize("set_number", [1, 2])
def test_dawid_skene_agrees_with_crowdkit_on_affectnetc25(c25_csv_dir, set_number):
    crowdkit = pytest.importorskip("crowdkit.aggregation")
    frame = pd.read_csv(c25_csv_dir / f"expression_set{set_number}_C25.csv")
    answers = frame[[f"participant{i}" for i in range(25)]].to_numpy()
    reference = crowdkit.DawidSkene(n_iter=100, tol=1e-5).fit(_to_frame(answers))
    expected = reference.labels_.sort_index().to_numpy()
    ds = DawidSkene(max_iter=100, tol=1e-5).fit(answers)
    agreement = np.mean(ds.labels_ == expected)
    assert agreement >= 0.99, f"set {set_number}: {agreement:.4f} label agreement with crowd-kit"
    assert ds.n_iter_ == len(reference.loss_history_)


def test_dawid_skene_recovers_known_confusions():
    answers, truth, confusions = _simulate(3000, 8, 3, 8, seed=1)  # everyone answers everything
    ds = DawidSkene(convergence="log_likelihood").fit(answers)
    assert np.abs(ds.confusions_ - confusions).max() < 0.06
    assert np.mean(ds.labels_ == truth) >= np.mean(
        majority_vote(answers, tie_break="lowest") == truth
    )
    assert np.mean(ds.labels_ == truth) > 0.97
    assert np.all(np.diff(ds.log_likelihoods_) >= -1e-12)  # EM never decreases it


def test_dawid_skene_sparse_crowd_and_convergence_options():
    answers, truth, _ = _simulate(2000, 30, 4, 4, seed=2)
    default = DawidSkene().fit(answers)
    converged = DawidSkene(convergence="log_likelihood", max_iter=500).fit(answers)
    assert np.mean(default.labels_ == truth) > 0.85
    assert np.mean(converged.labels_ == truth) > 0.85
    assert converged.n_iter_ >= default.n_iter_
    assert converged.log_likelihoods_[-1] >= default.log_likelihoods_[-1] - 1e-12
    assert default.confusions_.shape == (30, 4, 4)
    assert default.probas_.shape == (2000, 4)


def test_dawid_skene_smoothing_gives_positive_confusions():
    answers = np.array([[0, 0], [1, 1], [1, 2], [0, 2]])  # annotator 0 never answers 2
    plain = DawidSkene(max_iter=3).fit(answers)
    smooth = DawidSkene(max_iter=3, smoothing=1.0).fit(answers)
    assert_array_equal(plain.confusions_[0, :, 2], 0.0)
    assert np.all(smooth.confusions_ > 0)
    assert_allclose(smooth.confusions_.sum(axis=2), 1.0)


def test_dawid_skene_fit_predict_and_proba():
    ds = DawidSkene()
    assert_array_equal(ds.fit_predict(TINY), ds.labels_)
    assert_array_equal(DawidSkene().fit_predict_proba(TINY), ds.probas_)
    assert DawidSkene().fit(TINY) is not None


def test_dawid_skene_items_and_annotators_without_answers():
    answers = np.array([[0, 0, -1], [-1, -1, -1], [1, 1, -1], [1, 0, -1]])
    with pytest.warns(UserWarning, match="1 of 4 items have no answer"):
        ds = DawidSkene().fit(answers)
    assert ds.labels_[1] == -1
    assert_allclose(ds.probas_[1], ds.priors_)
    assert_allclose(ds.confusions_[2], 0.5)  # the silent annotator: uniform rows
    assert np.all(ds.labels_[[0, 2]] == [0, 1])


def test_dawid_skene_all_missing_and_empty():
    with pytest.warns(UserWarning, match="3 of 3 items have no answer"):
        ds = DawidSkene(num_classes=4).fit(np.full((3, 2), -1))
    assert_array_equal(ds.labels_, [-1, -1, -1])
    assert_allclose(ds.probas_, 0.25)
    empty = DawidSkene(num_classes=3).fit(np.zeros((0, 4), dtype=int))
    assert empty.labels_.shape == (0,)
    assert empty.probas_.shape == (0, 3)
    assert empty.confusions_.shape == (4, 3, 3)
    long_empty = DawidSkene().fit((np.array([], int), np.array([], int), np.array([], int)))
    assert long_empty.labels_.shape == (0,)


def test_dawid_skene_single_annotator():
    answers = np.array([[0], [2], [1], [2], [-1]])
    with pytest.warns(UserWarning, match="1 of 5 items"):
        ds = DawidSkene().fit(answers)
    assert_array_equal(ds.labels_, [0, 2, 1, 2, -1])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_iter": -1}, "max_iter"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"tol": "x"}, "tol"),
        ({"tol": float("nan")}, "tol"),
        ({"smoothing": -1.0}, "smoothing"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2.0}, "num_classes"),
        ({"convergence": "elbo"}, "convergence"),
    ],
)
def test_dawid_skene_bad_settings(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        DawidSkene(**kwargs)


# --------------------------------------------------------------------------------------------
# Majority vote, vote distribution
# --------------------------------------------------------------------------------------------

# Item 0 ties {0, 1}, item 1 ties {1, 2}, item 2 is 2, item 3 has no answer, item 4 is 1.
# Over all answers, class 1 is the most frequent (5 answers), then 2 (3), then 0 (1).
TIES = np.array([[0, 1, -1], [1, 2, -1], [2, 2, 0], [-1, -1, -1], [1, 1, 1]])


@pytest.mark.parametrize(
    ("tie_break", "expected"),
    [("lowest", [0, 1, 2, -1, 1]), ("prior", [1, 1, 2, -1, 1])],
)
def test_majority_vote_deterministic_tie_breaks(tie_break, expected, caplog):
    with caplog.at_level(logging.WARNING, logger="crowd_layers.aggregation"):
        with pytest.warns(UserWarning, match="1 of 5 items have no answer"):
            labels, info = majority_vote(TIES, tie_break=tie_break, return_info=True)
    assert_array_equal(labels, expected)
    assert info["n_ties"] == 2
    assert_array_equal(info["tied_items"], [0, 1])
    assert info["n_unanswered"] == 1
    assert_array_equal(info["unanswered_items"], [3])
    assert "2 of 5 items have a tie" in caplog.text


def test_majority_vote_random_tie_break_is_seeded():
    answers = np.array([[0, 1]] * 200 + [[2, 2]])
    first = majority_vote(answers, tie_break="random", seed=3)
    assert_array_equal(first, majority_vote(answers, tie_break="random", seed=3))
    assert set(first[:200]) == {0, 1}  # both tied classes are drawn
    assert 60 < np.sum(first[:200] == 0) < 140
    assert first[200] == 2
    assert not np.array_equal(first, majority_vote(answers, tie_break="random", seed=4))
    _, info = majority_vote(answers, return_info=True)
    assert info["n_ties"] == 200


def test_majority_vote_long_format_and_single_annotator():
    items, annotators, labels = _to_long(TINY)
    assert_array_equal(
        majority_vote((items, annotators, labels), tie_break="lowest"),
        majority_vote(TINY, tie_break="lowest"),
    )
    assert_array_equal(majority_vote(np.array([[2], [0], [1]])), [2, 0, 1])


def test_majority_vote_all_missing_and_empty():
    with pytest.warns(UserWarning, match="2 of 2 items have no answer"):
        labels, info = majority_vote(np.full((2, 3), -1), num_classes=3, return_info=True)
    assert_array_equal(labels, [-1, -1])
    assert info["n_unanswered"] == 2 and info["n_ties"] == 0
    empty = majority_vote(np.zeros((0, 5), dtype=int))
    assert empty.shape == (0,) and empty.dtype == np.int64


def test_majority_vote_accepts_integral_floats_with_nan():
    answers = np.array([[0.0, 1.0, 1.0], [2.0, np.nan, 2.0]])
    assert_array_equal(majority_vote(answers), [1, 2])


def test_vote_distribution():
    distribution = vote_distribution(TINY, num_classes=4)
    assert distribution.shape == (5, 4)
    assert_allclose(distribution.sum(axis=1), 1.0)
    assert_allclose(distribution[0], [2 / 3, 1 / 3, 0, 0])
    assert_allclose(distribution[2], [0.5, 0, 0.5, 0])
    with pytest.warns(
        UserWarning, match="1 of 5 items have no answer; their distribution is uniform"
    ):
        with_missing = vote_distribution(TIES)
    assert_allclose(with_missing[3], [1 / 3] * 3)
    assert not np.any(np.isnan(with_missing))
    assert vote_distribution(np.zeros((0, 2), dtype=int), num_classes=3).shape == (0, 3)


# --------------------------------------------------------------------------------------------
# Mean and median of continuous answers
# --------------------------------------------------------------------------------------------


def test_mean_and_median_ignore_nan_and_sentinel():
    answers = np.array(
        [
            [0.5, np.nan, 0.0, 1.0],
            [-1.0, 999999999, 0.25, np.nan],
            [np.nan, np.nan, np.nan, 999999999],
        ]
    )
    with pytest.warns(UserWarning, match="1 of 3 items have no answer; their value is NaN"):
        means = mean_answer(answers)
    with pytest.warns(UserWarning, match="mean_answer|median_answer"):
        medians = median_answer(answers)
    assert_allclose(means[:2], [0.5, -0.375])
    assert_allclose(medians[:2], [0.5, -0.375])
    assert np.isnan(means[2]) and np.isnan(medians[2])
    assert_allclose(median_answer(np.array([[0.0, 1.0, 0.75]])), [0.75])


# --------------------------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------------------------

# Wikipedia's Fleiss kappa example: 10 items, 14 raters, 5 categories, kappa = 0.210.
FLEISS_COUNTS = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)


def _answers_from_counts(counts):
    return np.stack([np.repeat(np.arange(counts.shape[1]), row) for row in counts])


def test_fleiss_kappa_textbook_example():
    answers = _answers_from_counts(FLEISS_COUNTS)
    assert answers.shape == (10, 14)
    assert round(fleiss_kappa(answers), 3) == 0.210
    assert fleiss_kappa(answers) == pytest.approx(0.20993070442195522, abs=1e-12)


def test_fleiss_kappa_varying_raters_and_single_answers():
    answers = np.array([[0, 0, 0, -1], [1, 1, 0, 0], [1, 1, 1, 1], [2, -1, -1, -1]])
    # By hand: P_i = 1, 1/3, 1 (item 3 has one answer: ignored); p = (5/11, 6/11, 0).
    p_bar = (1 + 1 / 3 + 1) / 3
    p_e = (5 / 11) ** 2 + (6 / 11) ** 2
    assert fleiss_kappa(answers) == pytest.approx((p_bar - p_e) / (1 - p_e))
    assert fleiss_kappa(answers) == pytest.approx(fleiss_kappa(answers[:3]))


def test_fleiss_kappa_undefined_cases():
    with pytest.warns(RuntimeWarning, match="no item has 2 or more answers"):
        assert np.isnan(fleiss_kappa(np.array([[0], [1]])))
    with pytest.warns(RuntimeWarning, match="same class"):
        assert np.isnan(fleiss_kappa(np.zeros((3, 4), dtype=int)))
    with pytest.warns(RuntimeWarning):
        assert np.isnan(fleiss_kappa(np.zeros((0, 4), dtype=int)))


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 coders, 12 units.
KRIPPENDORFF_DATA = np.array(
    [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
        [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan],
    ]
).T  # (n_items, n_annotators)


@pytest.mark.parametrize(
    ("level", "published"),
    [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)],
)
def test_krippendorff_alpha_published_example(level, published):
    assert round(krippendorff_alpha(KRIPPENDORFF_DATA, level=level), 3) == published


def test_krippendorff_alpha_hand_example():
    # Coincidences o = [[2, 1], [1, 2]], n_0 = n_1 = 3: alpha = 1 - 5 * 2 / (3 * 3 * 2) = 4/9.
    assert krippendorff_alpha(np.array([[0, 0], [1, 1], [1, 0]])) == pytest.approx(4 / 9)


@pytest.mark.parametrize("level", ["nominal", "interval"])
def test_krippendorff_alpha_matches_package(rng, level):
    answers = rng.integers(-1, 5, size=(80, 6))
    reliability = np.where(answers == -1, np.nan, answers).T.astype(float)
    expected = krippendorff.alpha(reliability_data=reliability, level_of_measurement=level)
    given = answers if level == "nominal" else reliability.T
    assert krippendorff_alpha(given, level=level) == pytest.approx(expected, rel=1e-10)
    if level == "nominal":
        assert krippendorff_alpha(_to_long(answers)) == pytest.approx(expected, rel=1e-10)


def test_krippendorff_alpha_continuous_values_and_undefined():
    valence = np.array([[0.5, 0.25, np.nan], [-1.0, -0.75, 999999999], [0.0, 0.0, 0.25]])
    expected = krippendorff.alpha(
        reliability_data=np.where(valence == 999999999, np.nan, valence).T,
        level_of_measurement="interval",
    )
    assert krippendorff_alpha(valence, level="interval") == pytest.approx(expected)
    with pytest.warns(RuntimeWarning, match="alpha is NaN"):
        assert np.isnan(krippendorff_alpha(np.array([[1, 1], [1, 1]])))
    with pytest.warns(RuntimeWarning, match="alpha is NaN"):
        assert np.isnan(krippendorff_alpha(np.array([[1, -1], [0, -1]])))


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

CLASS_FUNCTIONS = [
    lambda a: majority_vote(a, num_classes=3),
    lambda a: vote_distribution(a, num_classes=3),
    lambda a: DawidSkene(num_classes=3).fit(a),
    lambda a: fleiss_kappa(a, num_classes=3),
    lambda a: krippendorff_alpha(a, num_classes=3),
]


@pytest.mark.parametrize("function", CLASS_FUNCTIONS)
@pytest.mark.parametrize(
    "answers",
    [
        np.array([[0, 3], [1, 1]]),  # class out of range
        np.array([[0, -2], [1, 1]]),  # negative other than -1
        np.array([[0.5, 1.0], [1.0, 1.0]]),  # fractional "classes"
        np.zeros((2, 2, 2), dtype=int),  # wrong rank
        np.array([0, 1, 2]),  # 1-D
        np.array([["a", "b"]]),  # not numbers
        (np.array([0, 1]), np.array([0, 1]), np.array([0])),  # unequal lengths
        (np.array([0, 1]), np.array([0, -3]), np.array([0, 1])),  # negative annotator
        (np.array([0, 1]), np.array([0, 1]), np.array([0, 5])),  # label out of range
        (np.array([0.5, 1]), np.array([0, 1]), np.array([0, 1])),  # fractional item
    ],
    ids=[
        "out-of-range",
        "negative",
        "fractional",
        "3-D",
        "1-D",
        "strings",
        "long-lengths",
        "long-negative",
        "long-range",
        "long-fractional",
    ],
)
def test_bad_class_answers_name_the_argument(function, answers):
    with pytest.raises(ValueError, match="`answers`"):
        function(answers)


@pytest.mark.parametrize("function", [mean_answer, median_answer])
@pytest.mark.parametrize(
    "answers", [np.array([0.5, 1.0]), np.array([[np.inf, 0.0]]), np.array([["x"]])]
)
def test_bad_float_answers_name_the_argument(function, answers):
    with pytest.raises(ValueError, match="`answers`"):
        function(answers)


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="`tie_break`"):
        majority_vote(TINY, tie_break="first")
    with pytest.raises(ValueError, match="`level`"):
        krippendorff_alpha(TINY, level="ratio-ish")
    with pytest.raises(ValueError, match="`num_classes`"):
        majority_vote(TINY, num_classes=-2)


# --------------------------------------------------------------------------------------------
# The benchmark script
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_benchmark_quick_runs():
    pytest.importorskip("crowdkit")
    start = time.perf_counter()
    result = subprocess.run(
        # 8 annotators, one step per call and 2,000 items: the reference loop traces and
        # crowd-kit fits in a fraction of the time of --quick's sizes (the same code paths)
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_crowd.py"),
            "--quick",
            "--annotators",
            "8",
            "--inner-steps",
            "1",
            "--items",
            "2000",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "speedup" in result.stdout
    assert "DawidSkene" in result.stdout
    assert time.perf_counter() - start < 300


def test_dawid_skene_predict_proba_is_the_fitted_posterior():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, 60)
    answers = np.where(rng.random((60, 5)) < 0.8, truth[:, None], rng.integers(0, 3, (60, 5)))
    answers[rng.random((60, 5)) < 0.3] = -1
    answers[0] = -1  # no answers: the priors
    model = DawidSkene(num_classes=3, convergence="log_likelihood").fit(answers)
    # after the last M-step the posteriors move slightly, so compare with a tolerance
    np.testing.assert_allclose(model.predict_proba(answers), model.probas_, atol=0.02)
    np.testing.assert_allclose(model.predict_proba(answers[:1])[0], model.priors_)
    held_out = model.predict_proba([[2, 2, 2, -1, -1]])
    assert held_out.shape == (1, 3) and held_out[0].argmax() == 2
    with pytest.raises(ValueError, match="fitted on 5"):
        model.predict_proba(np.zeros((2, 7), np.int64))
    with pytest.raises(ValueError, match="not fitted"):
        DawidSkene().predict_proba([[0]])


def test_majority_vote_keyed_ties_depend_on_the_key_only():
    answers = np.array([[0, 1], [0, 1], [2, 2], [1, 2]])
    keys = np.array([0, 1, 5, 3], np.uint64)
    labels = majority_vote(answers, 3, tie_break="keyed", keys=keys)
    np.testing.assert_array_equal(labels, [0, 1, 2, 2])
    # the same item and key give the same label in any order and company
    np.testing.assert_array_equal(
        majority_vote(answers[::-1], 3, tie_break="keyed", keys=keys[::-1]), labels[::-1]
    )
    with pytest.raises(ValueError, match="one integer key per item"):
        majority_vote(answers, 3, tie_break="keyed")
    with pytest.raises(ValueError, match="non-negative"):
        majority_vote(answers, 3, tie_break="keyed", keys=np.array([-1, 0, 0, 0]))
