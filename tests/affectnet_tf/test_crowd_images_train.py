"""``--dataset crowd_images --manual-dir DIR``: every target on a generated crowd folder, the
three disjoint roles cut from its one split, evaluation against truth.csv or the crowd, and
``python -m affectnet_tf.agreement --crowd-dir DIR``."""

import json
from pathlib import Path

import make_crowd_folder
import numpy as np
import pytest
import yaml

from affectnet_tf import agreement as agreement_command
from affectnet_tf import train as train_module
from affectnet_tf.training.config import RunConfig, data_roles
from affectnet_tf.training.datasets import RunDatasets
from affectnet_tf.training.run import train
from tfds_affectnet import labels

NUM_IMAGES = 40


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``{"truth": DIR, "crowd": DIR, "data_dir": TFDS folder}``: a long folder with truth.csv
    and a wide one without."""
    root = tmp_path_factory.mktemp("crowd folders")
    make_crowd_folder.make_crowd_folder(root / "truth", num_images=NUM_IMAGES)
    make_crowd_folder.make_crowd_folder(
        root / "crowd", layout="wide", truth=False, num_images=NUM_IMAGES
    )
    return {"truth": root / "truth", "crowd": root / "crowd", "data_dir": root / "tfds"}


def _settings(folders, output_dir, folder="truth", **overrides):
    config = {
        "dataset": "crowd_images",
        "manual_dir": str(folders[folder]),
        "data_dir": str(folders["data_dir"]),
        "stored_image_size": 32,
        "selection_fraction": 0.25,
        "test_fraction": 0.25,
        "model": "compact_cnn_small",
        "weights": None,
        "image_size": 32,
        "epochs": 1,
        "batch_size": 8,
        "steps_per_epoch": 2,
        "output_dir": str(output_dir),
        "strategy": "default",
        "report": False,
    }
    config.update(overrides)
    return config


@pytest.mark.parametrize(
    "task, target, va_target, folder",
    [
        ("exp", "mv", None, "truth"),
        ("exp", "soft", None, "crowd"),
        ("exp", "ds", None, "truth"),
        ("exp", "cv", None, "crowd"),
        ("va", "mean", "mean", "truth"),
        ("va", "median", "median", "crowd"),
        ("va", "latent", "latent", "truth"),
        ("va", "cv", "cv", "crowd"),
        ("all", "ds", "latent", "truth"),
    ],
)
def test_every_target_trains_and_is_scored_against_truth_or_crowd(
    folders, tmp_path, task, target, va_target, folder
):
    result = train(
        _settings(folders, tmp_path / "run", folder, task=task, target=target, va_target=va_target)
    )
    run = Path(result["run_dir"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert all(np.isfinite(v) for v in result["history"]["loss"])
    against = metrics["evaluated_against"]
    if folder == "truth":
        assert against["source"] == "truth.csv" and against["expression"] == "the truth"
        assert metrics["target"] == "true"
    else:
        assert against == {
            "expression": "the crowd's majority vote",
            "valence_arousal": "the crowd's mean answer",
            "source": "the crowd",
        }
        assert metrics["target"] == "mv"
    roles = metrics["data_roles"]
    assert sum(roles[r]["images"] for r in ("train", "selection", "test")) == NUM_IMAGES
    assert roles["test"]["images"] == metrics.get("expression", metrics.get("valence"))["count"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["dataset"] == "crowd_images" and config["manual_dir"] == str(folders[folder])
    if target == "cv" or va_target == "cv":
        assert (run / "annotators.npz").exists()


def test_roles_are_disjoint_stratified_seeded_and_fold(folders, tmp_path):
    config = RunConfig.from_dict(_settings(folders, tmp_path / "run"))
    roles = data_roles(config)
    datasets = RunDatasets(config, roles)
    datasets.check_disjoint()
    names = {role: set(info.file_names) for role, info in datasets.infos.items()}
    assert sum(len(v) for v in names.values()) == NUM_IMAGES
    assert len(names["test"]) == len(names["selection"]) == NUM_IMAGES // 4
    # stratified: each role holds its share of every majority-vote class (5 images each)
    counts = {role: sum(info.class_counts) for role, info in datasets.infos.items()}
    assert counts["train"] == NUM_IMAGES // 2
    assert max(datasets.infos["test"].class_counts) - min(datasets.infos["test"].class_counts) <= 1
    again = RunDatasets(config, data_roles(config))
    assert set(again.infos["test"].file_names) == names["test"]  # the same seed, the same cut
    seeded = RunConfig.from_dict(_settings(folders, tmp_path / "r", split_seed=1))
    moved = RunDatasets(seeded, data_roles(seeded))
    assert set(moved.infos["test"].file_names) != names["test"]
    tests = []
    for fold in range(4):
        folded = RunConfig.from_dict(_settings(folders, tmp_path / "f", folds=4, fold=fold))
        tests.append(set(RunDatasets(folded, data_roles(folded)).infos["test"].file_names))
    assert set().union(*tests) == names["train"] | names["selection"] | names["test"]
    assert sum(len(t) for t in tests) == NUM_IMAGES


def test_front_door_errors(folders, tmp_path):
    with pytest.raises(ValueError, match="give it with --manual-dir DIR"):
        data_roles(RunConfig.from_dict(_settings(folders, tmp_path, manual_dir=None)))
    with pytest.raises(ValueError, match=r"training takes AffectNet's classes.*--num-classes 7"):
        data_roles(RunConfig.from_dict(_settings(folders, tmp_path, num_classes=7)))
    expression_only = tmp_path / "expression only"
    make_crowd_folder.make_crowd_folder(expression_only, num_images=8, tasks=("expression",))
    with pytest.raises(ValueError, match=r"has no valence answers .*task='val'"):
        data_roles(
            RunConfig.from_dict(
                _settings(folders, tmp_path, manual_dir=str(expression_only), task="val")
            )
        )
    with pytest.raises(ValueError, match=r"--split train:SUBSET"):
        data_roles(RunConfig.from_dict(_settings(folders, tmp_path, split="validation")))


def test_a_seven_class_folder_trains_with_num_classes_7(folders, tmp_path):
    folder = tmp_path / "seven"
    make_crowd_folder.make_crowd_folder(
        folder, num_images=28, class_names=list(labels.EXPRESSION_NAMES_7), by_name=False
    )
    result = train(_settings(folders, tmp_path / "run", manual_dir=str(folder), num_classes=7))
    metrics = json.loads((Path(result["run_dir"]) / "metrics.json").read_text())
    assert metrics["evaluated_against"]["source"] == "truth.csv"
    assert len(metrics["expression"]) > 0


def test_the_command_line_and_agreement_on_a_crowd_folder(folders, tmp_path, capsys):
    status = train_module.main(
        [
            "--dataset", "crowd_images",
            "--manual-dir", str(folders["crowd"]),
            "--data-dir", str(folders["data_dir"]),
            "--stored-image-size", "32",
            "--model", "compact_cnn_small",
            "--weights", "none",
            "--image-size", "32",
            "--epochs", "1",
            "--steps-per-epoch", "1",
            "--batch-size", "8",
            "--no-report",
            "--output-dir", str(tmp_path / "run"),
        ]
    )  # fmt: skip
    assert status in (0, None)
    assert (tmp_path / "run" / "metrics.json").exists()
    capsys.readouterr()
    out = tmp_path / "agreement.json"
    assert agreement_command.main(["--crowd-dir", str(folders["truth"]), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "expression accuracy vs the truth" in printed
    result = json.loads(out.read_text())
    assert result["n_items"] == NUM_IMAGES and result["n_annotators"] == 4 and result["truth"]
    # annotator worker_r is wrong where (k + r) % 5 == 0 and silent where (k*3 + r) % 7 == 0
    names, codes, answers, *_ = make_crowd_folder.crowd_values(NUM_IMAGES, 4, 8)
    for row, annotator in zip(result["annotators"], result["annotator_names"]):
        r = int(annotator.split("_")[1])
        answered = answers[:, r] >= 0
        expected = np.mean(answers[answered, r] == codes[answered])
        assert row["n"] == answered.sum()
        assert row["original_accuracy"] == pytest.approx(expected)
