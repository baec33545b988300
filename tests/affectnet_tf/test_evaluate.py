"""Evaluation end to end on tiny runs: metrics.json and the report folder written by training and
by ``python -m affectnet_tf.evaluate``, a self-contained HTML page, real PNGs of known sizes,
the typed evaluation options and the command's status lines."""

import base64
import dataclasses
import json
import logging
import math
import re
import struct

import numpy as np
import pandas as pd
import pytest

from affectnet_tf import evaluate as evaluate_command
from affectnet_tf import progress
from affectnet_tf.data import pipeline as data
from affectnet_tf.evaluation import annotators, evaluate, plots, predictions, split_agreement
from affectnet_tf.evaluation.options import EvaluationOptions
from affectnet_tf.modeling import metrics, models
from affectnet_tf.training.config import RunConfig, data_roles
from affectnet_tf.training.run import train
from tfds_affectnet import labels

STORED = 32  # the stored image side of the dummy data (tests/affectnet_tf/conftest.py)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(data):
    """(width, height) from a PNG's IHDR chunk; fails for anything that is not a PNG."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def command_logging():
    """Puts the package's logger back as it was after a command configured it (no bars)."""
    logger = logging.getLogger(progress.LOGGER_NAME)
    saved = list(logger.handlers), logger.level, logger.propagate
    yield
    progress.configure_logging(level=logging.WARNING)
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def _config(data_dir, output_dir, **overrides):
    config = {
        "dataset": "affectnet_c25/set1",
        "data_dir": str(data_dir),
        "stored_image_size": STORED,
        "selection_fraction": 0.25,
        "test_fraction": 0.25,
        "model": "compact_cnn",
        "weights": None,
        "image_size": 32,
        "epochs": 2,
        "batch_size": 4,
        "steps_per_epoch": 2,
        "output_dir": str(output_dir),
        "strategy": "default",
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def crowd_run(train_data_dir, tmp_path_factory):
    """A crowd run (target cv) on every head: expression, valence and arousal; one epoch."""
    run = tmp_path_factory.mktemp("evaluate") / "run"
    result = train(_config(train_data_dir, run, task="all", target="cv", epochs=1))
    return run, result


def test_training_writes_metrics_and_self_contained_report(crowd_run):
    run, result = crowd_run
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["split"] == "set1" and saved["subset"] == "test"
    assert set(metrics.EXPRESSION_KEYS) | {"count"} <= set(saved["expression"])
    for dimension in ("valence", "arousal"):
        assert set(metrics.AFFECT_KEYS) | {"count"} <= set(saved[dimension])
    assert saved["expression"]["count"] > 0
    assert saved["expression"]["accuracy"] == pytest.approx(
        result["metrics"]["expression"]["accuracy"]
    )
    # the held-out slice has crowd answers: the model against single annotators
    agreement = saved["agreement"]
    assert agreement["n_annotators"] == 25 and len(agreement["annotators"]) == 25
    assert {"accuracy", "f1_macro", "valence_ccc", "arousal_ccc"} <= set(agreement["summary"])
    assert agreement["summary"]["accuracy"]["model"] is not None
    # the few test images cannot hold all 8 classes: the partial or undefined AUC is noted,
    # not hidden
    assert any(note.startswith("auc: ") for note in saved["notes"]["expression"])

    folder = run / "report"
    expected_sizes = {
        "confusion_matrix": (700, 600),
        "valence_arousal": (2000, 500),  # valence, arousal, true and predicted circumplex
        "valence_arousal_errors": (1000, 400),
        "annotator_confusions": (1100, 1200),  # 25 annotators, 5 per row
        "history": (1350, 700),  # loss and the three head losses: 3 columns, 2 rows
        "agreement": (320 * len(agreement["summary"]), 420),
    }
    for name, size in expected_sizes.items():
        assert _png_size((folder / f"{name}.png").read_bytes()) == size, name
    examples = _png_size((folder / "examples.png").read_bytes())
    assert examples[0] == 1440 and examples[1] % 210 == 0

    page = (folder / "report.html").read_text()
    sources = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", page)
    assert len(sources) == len(list(folder.glob("*.png"))) == len(expected_sizes) + 1
    embedded = {}
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        data = base64.b64decode(source.split(",", 1)[1], validate=True)
        embedded[_png_size(data)] = data
    for name, size in expected_sizes.items():
        assert embedded[size] == (folder / f"{name}.png").read_bytes()
    # nothing else is fetched: no links, scripts, stylesheets or other src attributes
    assert page.count("src=") == len(sources)
    assert not re.search(r"<(link|script)\b|href=|url\(", page)

    markdown = (folder / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert sorted(linked) == sorted(p.name for p in folder.glob("*.png"))
    for heading in ("## Expression", "## Valence and arousal", "## Training curves"):
        assert heading in markdown
    assert "## Annotators (crowd layers)" in markdown
    assert "## The model against single annotators" in markdown
    assert "| contempt |" in markdown  # the per-class table
    assert "Note (expression): auc: " in markdown


def test_evaluate_command_reproduces_the_training_metrics(
    crowd_run, tmp_path, capsys, command_logging
):
    run, result = crowd_run
    out = tmp_path / "eval"
    assert (
        evaluate_command.main(["--model-dir", str(run), "--output-dir", str(out), "--no-report"])
        == 0
    )
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # the standard output holds the JSON only
    # status lines on the standard error; --quiet removes them, the results stay
    assert "Evaluating on affectnet_c25 set1 (test)" in captured.err
    assert f"Wrote {out / 'metrics.json'}" in captured.err
    quiet = tmp_path / "quiet"
    argv = ["--model-dir", str(run), "--output-dir", str(quiet), "--no-report", "--quiet"]
    assert evaluate_command.main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == printed
    assert "Evaluating on" not in captured.err and "Wrote" not in captured.err
    saved = json.loads((out / "metrics.json").read_text())
    trained = json.loads((run / "metrics.json").read_text())
    assert not (out / "report").exists()
    for head in ("expression", "valence", "arousal"):
        for key, value in trained[head].items():
            if value is None:
                assert saved[head][key] is None
            else:
                assert saved[head][key] == pytest.approx(value, abs=1e-5), (head, key)
                assert printed[head][key] == pytest.approx(value, abs=1e-5)
    assert saved["agreement"]["summary"]["accuracy"]["model"] == pytest.approx(
        trained["agreement"]["summary"]["accuracy"]["model"], abs=1e-6
    )


def test_evaluate_run_on_another_split_and_target(crowd_run, tmp_path):
    run, _ = crowd_run
    result = evaluate.evaluate_run(
        run, split="set2", subset="all", target="original", output_dir=tmp_path, report=False
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["split"] == "set2" and saved["subset"] is None
    assert saved["target"] == "original"
    assert saved["expression"]["count"] == result["expression"]["count"]
    # the whole of set 2 holds more images than the test slice of set 1
    trained = json.loads((run / "metrics.json").read_text())
    assert saved["expression"]["count"] > trained["expression"]["count"]
    # the images of the run's training set are refused
    with pytest.raises(ValueError, match="overlap"):
        evaluate.evaluate_run(run, split="set1", subset="all", output_dir=tmp_path)


def _history(run_dir, heads):
    """A run folder's ``history.csv`` of two epochs: the total loss and one per head."""
    run_dir.mkdir(parents=True, exist_ok=True)
    columns = ["loss"] + [f"{head}_loss" for head in heads]
    frame = {"epoch": [0, 1], **{c: [1.0, 0.5] for c in columns}}
    frame.update({f"val_{c}": [1.1, 0.6] for c in columns})
    pd.DataFrame(frame).to_csv(run_dir / "history.csv", index=False)


def test_exp_model_without_crowd_layer_has_no_annotator_section(train_data_dir, tmp_path):
    """A 7-class expression model (no crowd layer) on the C25 split: the agreement section but
    no annotator section, and no contempt row. An untrained model: the report is the subject
    (training's own evaluation is covered by ``crowd_run``)."""
    run = tmp_path / "run"
    _history(run, ["expression"])
    model = models.build_model(
        "compact_cnn", task="exp", target="mv", num_classes=7, weights=None, image_size=32
    ).prediction_model
    config = RunConfig(dataset="affectnet_c25/set1", stored_image_size=STORED, num_classes=7)
    options = dataclasses.replace(
        EvaluationOptions.for_run(config, data_roles(config), 32), data_dir=str(train_data_dir)
    )
    evaluate.evaluate_model(model, output_dir=run, dataset_options=options)
    saved = json.loads((run / "metrics.json").read_text())
    assert set(saved) >= {"expression", "agreement"} and "valence" not in saved
    assert len(saved["agreement"]["annotators"]) == 25
    pngs = {p.stem for p in (run / "report").glob("*.png")}
    assert pngs == {"confusion_matrix", "examples", "history", "agreement"}
    assert _png_size((run / "report" / "confusion_matrix.png").read_bytes()) == (700, 600)
    assert "| contempt |" not in (run / "report" / "report.md").read_text()


def test_errors_name_the_missing_path(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        evaluate.evaluate_run(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(empty / "model.keras"))):
        evaluate.evaluate_run(empty)
    assert evaluate_command.main(["--model-dir", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_annotator_grid_puts_true_matrices_beside_learned(rng):
    learned = rng.dirichlet(np.ones(8), size=(7, 8))
    alone = plots.plot_annotator_confusions(learned, ["a"] * 8, columns=5)
    assert plots.figure_size(alone) == (1100, 480)  # 5 per row, 2 rows
    beside = plots.plot_annotator_confusions(learned, ["a"] * 8, true=learned, columns=5)
    assert plots.figure_size(beside) == (2200, 480)
    assert len([a for a in beside.axes if a.images]) == 14
    with pytest.raises(ValueError, match="shape"):
        plots.plot_annotator_confusions(learned, ["a"] * 8, true=learned[:3])


def test_synthetic_crowd_run_shows_true_annotators_beside_learned(synthetic_faces_tiny, tmp_path):
    """A crowd model's annotators (``annotators.npz``, as training saves them) beside the true
    simulated ones of synthetic_faces, scored against the truth (the run's default)."""
    data_dir, _ = synthetic_faces_tiny
    run = tmp_path / "run"
    _history(run, ["expression", "valence", "arousal"])
    built = models.build_model(
        "compact_cnn", task="all", target="cv", num_annotators=25, weights=None, image_size=32
    )
    np.savez(run / "annotators.npz", **models.crowd_layer_weights(built.training_model))
    config = RunConfig(dataset="synthetic_faces/tiny", data_dir=str(data_dir), target="cv")
    options = EvaluationOptions.for_run(config, data_roles(config), 32, batch_size=16)
    evaluate.evaluate_model(
        built.prediction_model,
        output_dir=run,
        dataset_options=options,
        split=options.split,
        extra={"target": options.target},
    )
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["split"] == "test" and saved["target"] == "true"
    assert saved["agreement"]["n_annotators"] == 25
    # learned and true matrices side by side: twice the width of the learned grid alone
    assert _png_size((run / "report" / "annotator_confusions.png").read_bytes()) == (2200, 1200)
    markdown = (run / "report" / "report.md").read_text()
    assert "beside the true simulated ones" in markdown
    assert "correlation with the true simulated value" in markdown
    assert annotators.simulated_annotators("affectnet_c25", builder=None) is None


def test_va_plot_switches_to_densities(rng):
    many = {d: rng.uniform(-1, 1, plots.DENSITY_THRESHOLD + 1) for d in ("valence", "arousal")}
    figure = plots.plot_va(many, many)
    assert plots.figure_size(figure) == (2000, 500)
    assert all(axis.collections for axis in figure.axes)
    assert not any(type(c).__name__ == "PathCollection" for a in figure.axes for c in a.collections)
    one = plots.plot_va({"valence": many["valence"][:10]}, {"valence": many["valence"][:10]})
    assert plots.figure_size(one) == (500, 500)
    assert math.isclose(len(one.axes), 1)


def test_agreement_majority_breaks_ties_by_the_file_name():
    """The agreement's leave-one-out references are the package's majority labels: annotator
    0 answers a class outside every image's two tied classes, so the votes of the others are
    the crowd's, ties included, and a model predicting ``majority_labels`` matches all."""
    rng = np.random.default_rng(0)
    n = 60
    names = np.array([f"img{i:03d}.jpg".encode() for i in range(n)])
    tied = np.stack([rng.choice(7, 2, replace=False) for _ in range(n)])
    answers = np.stack([np.full(n, 7), tied[:, 0], tied[:, 0], tied[:, 1], tied[:, 1]], axis=1)
    majority, is_tied = labels.majority_labels(answers, names, 8)
    assert is_tied.all() and np.any(majority != tied.min(axis=1))  # not the lowest class
    table = {"file_name": names, "crowd_expression": answers}
    result = split_agreement.split_agreement(
        table, np.arange(n), {"expression": np.eye(8)[majority]}, None, num_classes=8
    )
    assert result["annotators"][0]["n"] == n
    assert result["annotators"][0]["model_accuracy"] == 1.0
    assert result["annotators"][0]["accuracy"] == 0.0


def test_model_runs_once_over_the_split(train_data_dir, tmp_path, monkeypatch):
    """One pass of the model over the split gives the metrics of the dataset path and the
    agreement sections, on the same images."""
    roles = data_roles(RunConfig(dataset="affectnet_c25/set1", stored_image_size=STORED))
    options = {
        "name": roles.dataset_name,
        "config": roles.builder_config,
        "split": "set1",
        "subset": None,
        "image_size": 32,
        "batch_size": 8,
        "data_dir": str(train_data_dir),
    }
    model = models.build_model(
        "compact_cnn", task="all", target="mv", weights=None, image_size=32
    ).prediction_model
    passes = []
    original = predictions.predict_split

    def counted(model, dataset, heads, keep_examples=0, total=None):
        passes.append(heads)
        return original(model, dataset, heads, keep_examples, total)

    monkeypatch.setattr(predictions, "predict_split", counted)
    once = evaluate.evaluate_model(
        model,
        dataset_options={**options, "target": "mv", "va_target": "mean"},
        output_dir=tmp_path / "once",
    )
    assert len(passes) == 1
    dataset = data.make_dataset(task="all", target="mv", va_target="mean", **options)
    plain = evaluate.evaluate_model(model, dataset, output_dir=tmp_path / "plain", report=False)
    for head, values in plain.items():
        for key, value in values.items():
            assert once[head][key] == pytest.approx(value, abs=1e-6, nan_ok=True), (head, key)
    saved = json.loads((tmp_path / "once" / "metrics.json").read_text())
    assert saved["agreement"]["n_annotators"] == 25
    assert saved["agreement"]["n_items"] == once["expression"]["count"]
    assert "model_vs_original" in saved["agreement"]
    with pytest.raises(ValueError, match="dataset=None"):
        evaluate.evaluate_model(model, dataset, dataset_options={**options, "target": "mv"})


def _options(**overrides):
    return EvaluationOptions(
        **{"name": "affectnet_c25/set1", "split": "set1", "image_size": 32, **overrides}
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("name", ""),
        ("split", None),
        ("image_size", 0),
        ("batch_size", 2.5),
        ("batch_size", True),
        ("subset", "validation"),
        ("target", "majority"),
        ("va_target", "mv"),
        ("partition", 0.25),
    ],
)
def test_evaluation_options_name_the_wrong_field(field, value):
    with pytest.raises(ValueError, match=rf"^`{field}` must .*Received: {field}={value!r}$"):
        _options(**{field: value})


def test_evaluation_options_are_frozen_and_read_from_a_dict():
    options = _options(subset="test", target="mv", data_dir=STORED)
    assert options.batch_size == 32 and options.data_dir == "32"
    assert options.title == "affectnet_c25/set1 set1 (test)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch_size = 8
    mapping = {"name": "affectnet_c25/set1", "split": "set1", "image_size": np.int64(32)}
    assert EvaluationOptions.from_mapping(mapping) == _options()
    assert isinstance(EvaluationOptions.from_mapping(mapping).image_size, int)
    with pytest.raises(ValueError, match=r"Unknown evaluation options \['image_sise'\]"):
        EvaluationOptions.from_mapping({**mapping, "image_sise": 32})
    with pytest.raises(ValueError, match=r"need \['split'\]"):
        EvaluationOptions.from_mapping({"name": "affectnet", "image_size": 32})


def test_evaluation_options_of_a_run_take_its_defaults_and_the_flags():
    config = RunConfig(
        dataset="affectnet_c25/set1", stored_image_size=STORED, target="cv", batch_size=4
    )
    roles = data_roles(config)
    options = EvaluationOptions.for_run(config, roles, 32)
    assert (options.name, options.split, options.subset) == (roles.dataset_name, "set1", "test")
    assert (options.target, options.va_target, options.batch_size) == ("mv", "mean", 4)
    assert options.partition == roles.partition_of(roles.test, config.partition)
    flagged = EvaluationOptions.for_run(
        config, roles, 64, target="original", va_target="median", batch_size=8
    )
    assert (flagged.target, flagged.va_target, flagged.batch_size) == ("original", "median", 8)
    assert flagged.image_size == 64
    synthetic = RunConfig(dataset="synthetic_faces/tiny")
    options = EvaluationOptions.for_run(synthetic, data_roles(synthetic), 32)
    assert (options.split, options.target, options.va_target) == ("test", "true", "true")
