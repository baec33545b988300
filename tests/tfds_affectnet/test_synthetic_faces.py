"""synthetic_faces: determinism, balance, features, calibration and the simulated crowd."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from affectnet_tf.data import pipeline as data
from affectnet_tf.training.config import RunConfig, data_roles, eval_targets
from crowd_layers.aggregation import DawidSkene
from tfds_affectnet import AffectNetC25, labels
from tfds_affectnet.synthetic_faces import (
    Builder,
    SyntheticFacesConfig,
    calibrate,
    draw_face,
    drawing,
    sample_face,
    simulate_answers,
    simulated_annotators,
)
from tfds_affectnet.synthetic_faces.synthetic_faces_dataset_builder import split_classes

CONFIGS = {config.name: config for config in Builder.BUILDER_CONFIGS}


def _records(data_dir, name):
    """{file name: bytes} of the TFRecord shards of a prepared config."""
    folder = next((data_dir / "synthetic_faces" / name).iterdir())
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if ".tfrecord" in p.name}


def _build(data_dir, config):
    builder = Builder(config=config, data_dir=data_dir)
    builder.download_and_prepare()
    return builder


def test_same_seed_same_bytes_other_seed_other_bytes(synthetic_faces_tiny, tmp_path):
    data_dir, _ = synthetic_faces_tiny
    again = _build(tmp_path / "again", CONFIGS["tiny"])
    reference = _records(data_dir, "tiny")
    assert len(reference) == 3  # one shard per split
    assert _records(tmp_path / "again", "tiny") == reference
    other = dataclasses.replace(CONFIGS["tiny"], name="tiny_seed1", seed=1)
    _build(tmp_path / "other", other)
    assert set(_records(tmp_path / "other", "tiny_seed1").values()).isdisjoint(reference.values())
    assert again.info.splits["train"].num_examples == 48


def test_features_are_those_of_affectnet_c25_plus_the_truth(synthetic_faces_tiny):
    _, builder = synthetic_faces_tiny
    c25 = AffectNetC25(config="default", data_dir="/nonexistent").info.features
    features = builder.info.features
    assert set(features) == set(c25) | {"true_expression", "true_valence", "true_arousal"}
    for key in c25:
        assert features[key].dtype == c25[key].dtype, key
    assert features["crowd_expression"].shape == (25,)
    assert features["image"].shape == (32, 32, 3)
    assert set(builder.info.splits) == {"train", "validation", "test"}


def test_splits_are_balanced_and_values_valid(synthetic_faces_tiny):
    _, builder = synthetic_faces_tiny
    for split in ("train", "validation", "test"):
        table = data.load_label_table(builder, split)
        assert np.bincount(table["true_expression"], minlength=8).tolist() == [6] * 8
        assert len(np.unique(table["file_name"])) == 48
        assert np.all(np.abs(table["true_valence"]) <= 1) and np.all(
            np.abs(table["true_arousal"]) <= 1
        )
        crowd = table["crowd_expression"]
        assert crowd.shape == (48, 25) and crowd.min() >= 0 and crowd.max() <= 7  # dense
        for key in ("crowd_valence", "crowd_arousal", "affectnet_valence", "affectnet_arousal"):
            values = table[key]
            assert np.all(np.isin(values, np.linspace(-1, 1, 9))), key
        assert np.isin(table["affectnet_expression"], np.arange(8)).all()
    # the big configs too, from their class lists (no build)
    for name in ("c25_dense", "sparse"):
        for split in ("train", "validation", "test"):
            classes = split_classes(CONFIGS[name], split)
            counts = np.bincount(classes, minlength=8)
            assert counts.max() - counts.min() <= 1 and counts.sum() == len(classes)


def test_valence_and_arousal_follow_the_circumplex_and_the_crowd_follows_the_truth(
    synthetic_faces_tiny,
):
    _, builder = synthetic_faces_tiny
    table = data.load_label_table(builder, "train")
    truth = table["true_expression"]
    happy, sad = truth == labels.EXPRESSION_NAMES.index("happy"), truth == 2
    assert table["true_valence"][happy].mean() > 0.4 > -0.4 > table["true_valence"][sad].mean()
    surprise, neutral = truth == 3, truth == 0
    assert table["true_arousal"][surprise].mean() > table["true_arousal"][neutral].mean() + 0.5
    majority = data.build_targets(table, task="exp", target="mv")[0]
    assert 0.6 < np.mean(majority == truth) < 1.0  # messy, but informative
    mean_valence = np.nanmean(table["crowd_valence"], axis=1)
    assert np.corrcoef(mean_valence, table["true_valence"])[0, 1] > 0.8


def test_faces_are_drawn_deterministically_and_differ_by_class():
    images = []
    for seed in (0, 0, 1):
        rng = np.random.default_rng(seed)
        images.append(draw_face(sample_face(3, rng), 48, rng))
    assert images[0].shape == (48, 48, 3) and images[0].dtype == np.uint8
    np.testing.assert_array_equal(images[0], images[1])
    assert not np.array_equal(images[0], images[2])
    rng = np.random.default_rng(0)
    surprise = [sample_face(3, rng) for _ in range(50)]
    sad = [sample_face(2, rng) for _ in range(50)]
    assert np.mean([f["mouth_open"] for f in surprise]) > 0.8
    assert np.mean([f["brow_angle"] for f in sad]) > 0.6
    with pytest.raises(ValueError, match="expression"):
        sample_face(8, rng)
    assert drawing.PROTOTYPES.shape == (8, len(drawing.FEATURES))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"answers_per_image": 30}, "answers_per_image"),
        ({"num_train": 0}, "num_train"),
        ({"image_size": 8}, "image_size"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        SyntheticFacesConfig(name="bad", **overrides)


def test_simulated_annotators_are_deterministic_and_drawn_from_the_calibration():
    with open(calibrate.CALIBRATION_FILE) as stream:
        calibration = json.load(stream)
    pool = np.asarray(calibration["expression_confusion"])
    dense = simulated_annotators(CONFIGS["c25_dense"])
    again = simulated_annotators(CONFIGS["c25_dense"])
    assert dense["expression_confusion"].shape == (25, 8, 8)
    np.testing.assert_array_equal(dense["profiles"], again["profiles"])
    assert len(set(dense["profiles"])) == 25
    assert dense["original"]["profiles"][0] not in dense["profiles"]
    np.testing.assert_array_equal(dense["expression_confusion"], pool[dense["profiles"]])
    np.testing.assert_allclose(dense["expression_confusion"].sum(-1), 1.0, atol=1e-9)
    for key in ("valence_scale", "valence_bias", "valence_noise", "arousal_noise"):
        assert dense[key].shape == (25,)
    sparse = simulated_annotators(CONFIGS["sparse"])
    np.testing.assert_array_equal(simulated_annotators("sparse")["profiles"], sparse["profiles"])
    with pytest.raises(ValueError, match="known"):
        simulated_annotators("huge")
    assert sorted(sparse["profiles"]) == list(range(50))  # all 50 calibrated profiles
    other_seed = simulated_annotators(dataclasses.replace(CONFIGS["c25_dense"], seed=3))
    assert not np.array_equal(other_seed["profiles"], dense["profiles"])
    many = simulated_annotators(dataclasses.replace(CONFIGS["sparse"], num_annotators=70))
    assert len(many["profiles"]) == 70 and len(set(many["profiles"])) == 50


def test_sparse_answers_have_exactly_the_requested_count():
    crowd = simulated_annotators(CONFIGS["sparse"])
    rng = np.random.default_rng(0)
    for _ in range(20):
        expression, valence, arousal = simulate_answers(crowd, 4, -0.5, 0.7, 3, rng)
        assert (expression >= 0).sum() == 3 and expression.shape == (50,)
        np.testing.assert_array_equal(np.isfinite(valence), expression >= 0)
        np.testing.assert_array_equal(np.isfinite(arousal), expression >= 0)


def test_dawid_skene_recovers_the_simulated_confusions():
    """Answers simulated from the calibrated profiles, estimated back by Dawid-Skene."""
    crowd = simulated_annotators(CONFIGS["c25_dense"])
    rng = np.random.default_rng(0)
    truth = np.arange(4000) % 8
    answers = np.stack([simulate_answers(crowd, c, 0.0, 0.0, 25, rng)[0] for c in truth])
    model = DawidSkene(max_iter=200, tol=1e-7, num_classes=8, convergence="log_likelihood")
    estimated = model.fit(answers).confusions_
    error = np.abs(estimated - crowd["expression_confusion"])
    assert error.mean() < 0.02, error.mean()
    diagonal = np.diagonal(error, axis1=1, axis2=2)
    assert diagonal.max() < 0.15, diagonal.max()
    assert np.mean(model.labels_ == truth) > 0.95


def test_calibration_file_reproduces_from_the_csvs(c25_csv_dir, tmp_path):
    output = tmp_path / "calibration.json"
    assert calibrate.main(["--csv-dir", str(c25_csv_dir), "--output", str(output)]) == 0
    with open(calibrate.CALIBRATION_FILE) as shipped:
        assert output.read_text() == shipped.read()
    result = json.loads(output.read_text())
    assert len(result["annotator"]) == 50
    assert result["annotator"][25] == "set2/participant0"
    confusion = np.asarray(result["expression_confusion"])
    # canonical order: happy answered as happy most of the time by the C25 crowd
    assert confusion[:, 1, 1].mean() > 0.6


def test_calibration_reports_a_missing_csv_folder(tmp_path, capsys):
    assert calibrate.main(["--csv-dir", str(tmp_path)]) == 2
    assert "expression_set1_C25.csv" in capsys.readouterr().err


def test_va_profiles_recover_scale_bias_and_noise():
    """The consensus regression of the calibration, on answers simulated with known values."""
    rng = np.random.default_rng(0)
    truth = rng.uniform(-0.6, 0.6, 3000)
    scale, bias, noise = rng.uniform(0.7, 1.2, 25), rng.uniform(-0.1, 0.1, 25), 0.2
    latent = scale * truth[:, None] + bias + noise * rng.standard_normal((3000, 25))
    answers = np.round(np.clip(latent, -1, 1) * 4) / 4
    answers[rng.random(answers.shape) < 0.05] = np.nan  # missing answers are left out
    estimated = calibrate.va_profiles(answers)
    # relative to the crowd's mean scale / bias, as the consensus is the crowd's mean answer
    np.testing.assert_allclose(estimated[0] * scale.mean(), scale, atol=0.08)
    np.testing.assert_allclose(estimated[2], noise, atol=0.04)


def test_training_paths_use_the_truth_and_three_splits():
    config = RunConfig(dataset="synthetic_faces/sparse", model="compact_cnn")
    roles = data_roles(config)
    assert (roles.name, roles.tfds_config) == ("synthetic_faces", "sparse")
    assert (str(roles.train), str(roles.selection), str(roles.test)) == (
        "train",
        "validation",
        "test",
    )
    assert eval_targets(RunConfig(dataset="synthetic_faces/sparse", target="cv")) == (
        "true",
        "true",
    )
    resized = data_roles(RunConfig(dataset="synthetic_faces/sparse", stored_image_size=48))
    config_48 = resized.builder_config
    assert (config_48.name, config_48.image_size, config_48.answers_per_image) == (
        "sparse_48",
        48,
        3,
    )
    with pytest.raises(ValueError, match="configs"):
        data_roles(RunConfig(dataset="synthetic_faces/huge", stored_image_size=48))
    c25 = data_roles(RunConfig(dataset="affectnet_c25/set1"))
    assert str(c25.selection) == "set1:selection" and str(c25.test) == "set1:test"
    assert eval_targets(RunConfig(dataset="affectnet_c25/set1", target="cv")) == ("mv", "mean")


@pytest.mark.parametrize("target", ["true", "mv", "ds", "cv", "original"])
def test_every_target_reads_the_tiny_config(synthetic_faces_tiny, target):
    data_dir, _ = synthetic_faces_tiny
    dataset, info = data.make_dataset(
        "synthetic_faces/tiny",
        "train",
        task="all",
        target=target,
        image_size=32,
        batch_size=16,
        data_dir=data_dir,
        return_info=True,
    )
    images, targets = next(iter(dataset))
    assert images.shape == (16, 32, 32, 3)
    assert info.num_examples == 48 and info.num_annotators == 25
    expected = {"true": (16,), "mv": (16,), "original": (16,), "ds": (16, 8), "cv": (16, 25)}
    assert tuple(targets["expression"].shape) == expected[target]
    assert tfds.builder("synthetic_faces/tiny", data_dir=data_dir).is_prepared()


def test_a_sparse_config_builds_with_the_requested_answers(tmp_path):
    config = dataclasses.replace(
        CONFIGS["tiny"], name="tiny_sparse", num_annotators=10, answers_per_image=3
    )
    builder = _build(tmp_path, config)
    table = data.load_label_table(builder, "test")
    answered = table["crowd_expression"] >= 0
    assert table["crowd_expression"].shape == (48, 10)
    assert (answered.sum(axis=1) == 3).all()
    np.testing.assert_array_equal(np.isfinite(table["crowd_valence"]), answered)
    assert answered.sum(axis=0).min() > 0  # every annotator answered something
    targets, keep, _, _ = data.build_targets(table, task="all", target="cv")
    assert keep.all() and targets["expression"].shape == (48, 10)
