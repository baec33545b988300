"""Targets of every kind computed from a label table, without any images."""

import numpy as np
import pytest

from affectnet_tf.data.targets import build_targets


def _table():
    # 5 images, 4 annotators, AffectNet canonical codes; -1 = no answer.
    crowd = np.array(
        [
            [1, 1, 1, 2],  # happy
            [7, 7, 7, 0],  # contempt majority
            [3, 3, 4, 4],  # tie surprise / fear
            [-1, -1, -1, -1],  # nobody answered
            [2, 7, 2, -1],  # sad, one contempt answer
        ]
    )
    valence = np.array(
        [
            [0.5, 0.75, 1.0, np.nan],
            [-0.25, -0.5, -0.25, -0.5],
            [0.0, 0.0, 0.25, -2.0],  # -2 is not a value
            [np.nan] * 4,
            [-1.0, -0.75, -0.75, -0.5],
        ]
    )
    return {
        "file_name": np.array([b"a.jpg", b"b.png", b"c.jpg", b"d.jpg", b"e.JPG"]),
        "crowd_expression": crowd,
        "crowd_valence": valence.astype(np.float32),
        "crowd_arousal": (valence * 0.5).astype(np.float32),
        "affectnet_expression": np.array([1, 7, 9, 0, 2]),
        "affectnet_valence": np.array([0.6, -0.3, -2.0, 0.1, -0.7], np.float32),
        "affectnet_arousal": np.array([0.2, 0.1, -2.0, 0.0, 0.4], np.float32),
    }


def test_majority_vote_target_drops_rows_without_answers():
    targets, keep, classes, extras = build_targets(_table(), task="exp", target="mv")
    np.testing.assert_array_equal(keep, [True, True, True, False, True])
    assert targets[0] == 1 and targets[1] == 7 and targets[4] == 2
    assert targets[2] in (3, 4)
    assert extras["tied_items"] == 1
    assert extras["dropped"] == {"expression_no_answers": 1}
    np.testing.assert_array_equal(classes[keep], targets[keep])


def test_soft_and_ds_targets_are_distributions():
    for target in ("soft", "ds"):
        targets, keep, _, _ = build_targets(_table(), task="exp", target=target)
        assert targets.shape == (5, 8)
        np.testing.assert_allclose(targets[keep].sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(targets[3], 0.0)
    soft, _, _, _ = build_targets(_table(), task="exp", target="soft")
    np.testing.assert_allclose(soft[0], [0, 0.75, 0.25, 0, 0, 0, 0, 0])


def test_crowd_target_is_the_answer_matrix():
    targets, keep, _, _ = build_targets(_table(), task="exp", target="cv")
    np.testing.assert_array_equal(targets, _table()["crowd_expression"])
    assert not keep[3]


def test_seven_classes_drop_contempt():
    targets, keep, _, extras = build_targets(_table(), task="exp", target="mv", num_classes=7)
    assert not keep[1]  # majority contempt
    assert targets[4] == 2
    assert extras["dropped"]["expression_majority_contempt"] == 1
    cv, _, _, _ = build_targets(_table(), task="exp", target="cv", num_classes=7)
    assert (cv != 7).all()
    np.testing.assert_array_equal(cv[4], [2, -1, 2, -1])
    original, keep, _, extras = build_targets(
        _table(), task="exp", target="original", num_classes=7
    )
    np.testing.assert_array_equal(keep, [True, False, False, True, True])
    assert extras["dropped"] == {"expression_not_a_label": 1, "expression_contempt": 1}


def test_original_expression_excludes_codes_8_to_10():
    targets, keep, _, extras = build_targets(_table(), task="exp", target="original")
    np.testing.assert_array_equal(keep, [True, True, False, True, True])
    assert extras["dropped"] == {"expression_not_a_label": 1}


def test_va_mean_median_ignore_missing_and_invalid():
    mean, keep, _, _ = build_targets(_table(), task="val", target="mean")
    np.testing.assert_allclose(mean[0], 0.75)
    np.testing.assert_allclose(mean[2], 0.25 / 3)  # the -2 answer is not a value
    assert not keep[3]
    median, _, _, _ = build_targets(_table(), task="val", target="median")
    np.testing.assert_allclose(median[4], -0.75)


def test_va_original_drops_minus_two():
    targets, keep, _, extras = build_targets(_table(), task="va", target="original")
    assert set(targets) == {"valence", "arousal"}
    np.testing.assert_array_equal(keep, [True, True, False, True, True])
    assert extras["dropped"] == {"valence_not_a_label": 1, "arousal_not_a_label": 1}


def test_va_crowd_target_masks_invalid_answers():
    targets, _, _, _ = build_targets(_table(), task="val", target="cv")
    assert targets.shape == (5, 4)
    assert np.isnan(targets[2, 3])  # -2 is not a value
    assert np.isnan(targets[0, 3])  # no answer
    arousal, _, _, _ = build_targets(_table(), task="aro", target="cv")
    assert arousal[2, 3] == -1.0  # half of -2 is a valid arousal


def test_all_task_keeps_partial_rows_with_missing_markers():
    targets, keep, _, _ = build_targets(_table(), task="all", target="mv")
    assert set(targets) == {"expression", "valence", "arousal"}
    assert not keep[3]  # nothing at all
    table = _table()
    targets, keep, _, _ = build_targets(table, task="all", target="original")
    assert not keep[2]  # expression 9 and valence/arousal -2: no label at all
    table["affectnet_arousal"][2] = 0.3
    targets, keep, _, _ = build_targets(table, task="all", target="original")
    assert keep[2]
    assert targets["expression"][2] == -1 and np.isnan(targets["valence"][2])
    np.testing.assert_allclose(targets["arousal"][2], 0.3)


def test_a_class_set_of_its_own_keeps_every_class_as_a_label():
    """10 classes of a crowd folder: codes 8 and 9 are labels there (AffectNet's non-labels
    only), nothing is dropped as contempt, and the vote runs over all 10."""
    answers = np.array([[9, 9, 1], [8, 8, -1], [7, 7, 7], [-1, -1, -1]])
    table = {
        "file_name": np.array([b"a", b"b", b"c", b"d"]),
        "crowd_expression": answers,
        "true_expression": np.array([9, 8, 7, -1]),
    }
    majority, keep, classes, extras = build_targets(table, target="mv", num_classes=10)
    assert majority.tolist() == [9, 8, 7, -1] and keep.tolist() == [True, True, True, False]
    assert extras["dropped"] == {"expression_no_answers": 1}
    truth, keep, _, extras = build_targets(table, target="true", num_classes=10)
    assert truth.tolist() == [9, 8, 7, -1] and keep.tolist() == [True, True, True, False]
    assert extras["dropped"] == {"expression_not_a_label": 1}
    soft, _, _, _ = build_targets(table, target="soft", num_classes=10)
    assert soft.shape == (4, 10) and soft[0, 9] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"crowd_expression holds the class 9.*num_classes=6"):
        build_targets(table, target="mv", num_classes=6)


def test_crowd_target_on_single_label_dataset_is_an_error():
    table = {
        "file_name": np.array([b"x.jpg"]),
        "expression": np.array([1]),
        "valence": np.array([0.1], np.float32),
        "arousal": np.array([0.1], np.float32),
    }
    with pytest.raises(ValueError, match="needs crowd answers.*target='cv'"):
        build_targets(table, task="exp", target="cv")
    targets, keep, _, _ = build_targets(table, task="exp", target="original")
    assert targets[0] == 1 and keep[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"task": "emotion"}, "task='emotion'"),
        ({"target": "majority"}, "target='majority'"),
        ({"num_classes": 6}, "num_classes=6"),
        ({"va_target": "soft", "task": "va"}, "va_target='soft'"),
        ({"task": "exp", "target": "mean"}, "valence/arousal"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_targets(_table(), **kwargs)


def test_ties_are_broken_by_the_file_name_in_every_order():
    from tfds_affectnet import labels

    table = _table()
    targets, _, _, extras = build_targets(table, task="exp", target="mv")
    expected, tied = labels.majority_labels(table["crowd_expression"], table["file_name"], 8)
    assert targets[2] == expected[2] and tied.tolist() == [False, False, True, False, False]
    # no seed argument any more, and reversing the rows keeps each image's label
    reversed_table = {key: value[::-1] for key, value in table.items()}
    again, _, _, _ = build_targets(reversed_table, task="exp", target="mv")
    np.testing.assert_array_equal(again[::-1], targets)
    # a tie's label follows the name's hash: over many names both tied classes occur
    names = np.array([f"tie{i}.jpg".encode() for i in range(200)])
    votes, tied = labels.majority_labels(np.tile([3, 3, 4, 4], (200, 1)), names, 8)
    assert tied.all() and set(votes) == {3, 4} and 70 < (votes == 3).sum() < 130


def test_dawid_skene_targets_are_fitted_on_the_training_rows_only():
    import crowd_layers

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 8, 60)
    answers = np.where(rng.random((60, 6)) < 0.7, truth[:, None], rng.integers(0, 8, (60, 6)))
    table = {
        "file_name": np.array([f"{i}.jpg".encode() for i in range(60)]),
        "crowd_expression": answers,
    }
    fit_rows = np.arange(60) < 40
    targets, _, _, _ = build_targets(table, task="exp", target="ds", fit_rows=fit_rows)
    model = crowd_layers.DawidSkene(num_classes=8, convergence="log_likelihood", max_iter=1000)
    model.fit(answers[fit_rows])
    assert model.n_iter_ > 2  # run to convergence, not crowd-kit's early stop
    np.testing.assert_allclose(targets, model.predict_proba(answers), rtol=1e-5, atol=1e-6)
    # the held-out rows' answers do not move the training rows' targets
    changed = answers.copy()
    changed[~fit_rows] = (changed[~fit_rows] + 1) % 8
    other, _, _, _ = build_targets(
        {**table, "crowd_expression": changed}, task="exp", target="ds", fit_rows=fit_rows
    )
    np.testing.assert_allclose(other[fit_rows], targets[fit_rows])
    crowdkit, _, _, _ = build_targets(
        table, task="exp", target="ds", fit_rows=fit_rows, ds_convergence="crowdkit"
    )
    assert not np.allclose(crowdkit, targets)


def test_latent_va_targets_are_fitted_on_the_training_rows_only():
    import crowd_layers

    rng = np.random.default_rng(1)
    truth = rng.uniform(-0.8, 0.8, 80)
    bias = np.array([0.3, -0.2, 0.0, 0.1, -0.1])
    answers = np.clip(truth[:, None] + bias + 0.1 * rng.standard_normal((80, 5)), -1, 1)
    answers[rng.random((80, 5)) < 0.3] = np.nan
    answers[5] = np.nan  # no answer: dropped, counted
    answers[6, 0] = -2.0  # not a value
    table = {
        "file_name": np.array([f"{i}.jpg".encode() for i in range(80)]),
        "crowd_expression": np.zeros((80, 5), np.int64),
        "crowd_valence": answers.astype(np.float32),
    }
    fit_rows = np.arange(80) < 60
    targets, keep, _, extras = build_targets(table, task="val", target="latent", fit_rows=fit_rows)
    assert not keep[5] and np.isnan(targets[5]) and extras["dropped"]["valence_no_answers"] == 1
    clean = answers.astype(np.float32).copy()
    clean[6, 0] = np.nan
    fit = fit_rows & keep
    model = crowd_layers.LatentTruthRegression(truth_prior=False).fit(clean[fit])
    expected = np.clip(model.predict(clean[keep]), -1, 1)
    np.testing.assert_allclose(targets[keep], expected, rtol=1e-5, atol=1e-6)
    assert np.nanmax(np.abs(targets)) <= 1.0
    # closer to the truth than the mean answer, which keeps every annotator's bias
    mean, _, _, _ = build_targets(table, task="val", target="mean")
    assert np.abs(targets[keep] - truth[keep]).mean() < np.abs(mean[keep] - truth[keep]).mean()
    changed = answers.copy()
    changed[~fit_rows] = -changed[~fit_rows]
    other, _, _, _ = build_targets(
        {**table, "crowd_valence": changed.astype(np.float32)},
        task="val",
        target="latent",
        fit_rows=fit_rows,
    )
    np.testing.assert_allclose(other[fit_rows], targets[fit_rows])
    with pytest.raises(ValueError, match="'latent' is for valence/arousal tasks"):
        build_targets(table, task="all", target="latent")


def test_default_va_target_follows_the_expression_target():
    from affectnet_tf.data import targets

    assert [targets.default_va_target(t) for t in ("mv", "cv", "original", "median")] == [
        "mean",
        "cv",
        "original",
        "median",
    ]
    with pytest.raises(ValueError, match="target='vote'"):
        targets.default_va_target("vote")
    assert targets.TASKS == tuple(targets.TASK_HEADS) == ("exp", "aro", "val", "va", "all")


def test_truth_target_needs_the_truth_feature():
    with pytest.raises(ValueError, match=r"no truth feature \(true_expression\)"):
        build_targets(_table(), task="exp", target="true")
    with pytest.raises(ValueError, match="no true_valence feature"):
        build_targets(_table(), task="val", target="true")
