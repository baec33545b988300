"""``--dataset crowd_images --manual-dir DIR``: every target on a generated crowd folder, the
three disjoint roles cut from its one split, evaluation against truth.csv or the crowd, and
``python -m affectnet_tf.agreement --crowd-dir DIR``."""

import csv
import json
from pathlib import Path

import cv2
import keras
import make_crowd_folder
import make_face_clips
import numpy as np
import pytest
import yaml

import affectnet_tf
from affectnet_tf import agreement as agreement_command
from affectnet_tf import evaluate as evaluate_command
from affectnet_tf import predict as predict_command
from affectnet_tf import train as train_module
from affectnet_tf.training.config import RunConfig, data_roles, eval_targets
from affectnet_tf.training.datasets import RunDatasets
from affectnet_tf.training.run import train
from tfds_affectnet import labels

NUM_IMAGES = 40
# a class set of the folder's own: more than AffectNet's 8, names with spaces, commas, accents
OWN_CLASSES = ["calme", "très tendu", "bored, tired", "Happy", "awe", "anger", "x", "y", "z", "w"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``{"truth": DIR, "crowd": DIR, "own": DIR, "data_dir": TFDS folder}``: a long folder with
    truth.csv, a wide one without, and a wide one of :data:`OWN_CLASSES` without."""
    root = tmp_path_factory.mktemp("crowd folders")
    make_crowd_folder.make_crowd_folder(root / "truth", num_images=NUM_IMAGES)
    make_crowd_folder.make_crowd_folder(
        root / "crowd", layout="wide", truth=False, num_images=NUM_IMAGES
    )
    make_crowd_folder.make_crowd_folder(
        root / "own", layout="wide", truth=False, num_images=NUM_IMAGES, class_names=OWN_CLASSES
    )
    return {
        "truth": root / "truth",
        "crowd": root / "crowd",
        "own": root / "own",
        "data_dir": root / "tfds",
    }


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
        ("exp", "ds", None, "own"),
        ("exp", "cv", None, "own"),
    ],
)
def test_every_target_trains_and_is_scored_against_truth_or_crowd(
    folders, tmp_path, task, target, va_target, folder
):
    crowd_init = {"crowd_init": "ds"} if target == "cv" and folder == "own" else {}
    settings = _settings(
        folders, tmp_path / "run", folder, task=task, target=target, va_target=va_target
    )
    result = train({**settings, **crowd_init})
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
    if folder == "own" and target == "cv":  # the folder's 10 classes
        with np.load(run / "annotators.npz") as learned:
            assert learned["expression_confusions"].shape == (4, 10, 10)


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
    own = tmp_path / "own classes"
    make_crowd_folder.make_crowd_folder(own, num_images=8, class_names=["calm", "tense", "sad"])
    with pytest.raises(ValueError, match=r"own classes.*own, 3 classes \(calm, tense, sad\)"):
        data_roles(
            RunConfig.from_dict(_settings(folders, tmp_path, manual_dir=str(own), num_classes=7))
        )
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


def test_a_truth_of_valence_alone_scores_a_va_run_against_the_crowd(folders, tmp_path):
    folder = tmp_path / "valence truth"
    make_crowd_folder.make_crowd_folder(folder, num_images=8)
    rows = (folder / "truth.csv").read_text().splitlines()
    (folder / "truth.csv").write_text(
        "\n".join(",".join(row.split(",")[:3]) for row in rows) + "\n"
    )  # image, expression, valence
    expected = {"va": ("true", "mean"), "all": ("true", "mean"), "val": ("true", "true")}
    for task, targets in expected.items():
        config = _settings(folders, tmp_path, manual_dir=str(folder), task=task, target="mv")
        assert eval_targets(RunConfig.from_dict({**config, "va_target": "mean"})) == targets


def test_a_seven_class_folder_trains_with_num_classes_7(folders, tmp_path):
    folder = tmp_path / "seven"
    make_crowd_folder.make_crowd_folder(
        folder, num_images=28, class_names=list(labels.EXPRESSION_NAMES_7), by_name=False
    )
    result = train(_settings(folders, tmp_path / "run", manual_dir=str(folder), num_classes=7))
    metrics = json.loads((Path(result["run_dir"]) / "metrics.json").read_text())
    assert metrics["evaluated_against"]["source"] == "truth.csv"
    assert len(metrics["expression"]) > 0


@pytest.fixture(scope="module")
def own_class_run(folders, tmp_path_factory):
    """``(settings, result)`` of a run on a folder of 10 classes of its own (names with spaces,
    commas, accents; more than AffectNet's 8), trained on the majority vote, scored against
    its truth.csv."""
    root = tmp_path_factory.mktemp("own clässes")
    make_crowd_folder.make_crowd_folder(root / "crowd", num_images=40, class_names=OWN_CLASSES)
    settings = _settings(folders, root / "run", manual_dir=str(root / "crowd"), epochs=2)
    return settings, train(settings)


def test_a_folder_of_its_own_classes_trains_and_is_scored_in_them(own_class_run):
    settings, result = own_class_run
    run = Path(result["run_dir"])
    model = keras.saving.load_model(run / "model.keras", compile=False)
    metadata = affectnet_tf.model_metadata(model)
    assert metadata["class_names"] == OWN_CLASSES and metadata["num_classes"] == 10
    assert model.output_shape == (None, 10)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["target"] == "true" and metrics["evaluated_against"]["source"] == "truth.csv"
    # every one of the 10 classes is a label (codes 8 and 9 are AffectNet's non-labels only)
    roles = metrics["data_roles"]
    assert sum(roles[r]["images"] for r in ("train", "selection", "test")) == 40
    assert all(not roles[r]["left_out"] for r in ("train", "selection", "test"))
    config = RunConfig.from_dict(settings)
    datasets = RunDatasets(config, data_roles(config))
    assert datasets.train_info.class_names == tuple(OWN_CLASSES)
    assert datasets.train_info.class_counts == [2] * 10  # stratified over all 10 classes
    assert metrics["expression"]["count"] == roles["test"]["images"] == 10


def test_a_run_of_its_own_classes_evaluates_predicts_and_is_refused_elsewhere(
    own_class_run, tmp_path, capsys
):
    _, result = own_class_run
    run = result["run_dir"]
    assert evaluate_command.main(["--model-dir", run, "--output-dir", str(tmp_path / "eval")]) == 0
    first = json.loads((Path(run) / "metrics.json").read_text())
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["expression"]["accuracy"] == pytest.approx(first["expression"]["accuracy"])
    # the report's per-class table and confusion matrix name the folder's classes
    report = (tmp_path / "eval" / "report" / "report.md").read_text(encoding="utf-8")
    assert all(f"| {name} |" in report for name in OWN_CLASSES)
    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), cv2.cvtColor(make_face_clips.astronaut(), cv2.COLOR_RGB2BGR))
    out = tmp_path / "predictions.csv"
    assert predict_command.main(["--model-dir", run, str(image), "--output", str(out)]) == 0
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(row["expression"] in OWN_CLASSES for row in rows)
    assert [k for k in rows[0] if k.startswith("prob_")] == [f"prob_{n}" for n in OWN_CLASSES]
    assert sum(float(rows[0][f"prob_{n}"]) for n in OWN_CLASSES) == pytest.approx(1.0, abs=1e-4)
    capsys.readouterr()
    # the model's classes are not another dataset's
    argv = ["--model-dir", run, "--dataset", "synthetic_faces/tiny"]
    assert evaluate_command.main(argv + ["--data-dir", str(tmp_path / "tfds")]) == 2
    assert "The model predicts the classes ['calme'" in capsys.readouterr().err


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
