"""``train()`` and its command line on the dummy datasets: targets, tasks, outputs, strategies,
an interrupted run that resumes, two local workers, and the errors of bad settings."""

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

import affectnet_tf
import crowd_layers
from affectnet_tf import files
from affectnet_tf import train as train_module
from affectnet_tf.data import pipeline as data
from affectnet_tf.evaluation.evaluate import evaluate_run
from affectnet_tf.training import backups, distribute, fit_loop, run_folder, worker_loop
from affectnet_tf.training.config import (
    RunConfig,
    build_parser,
    config_differences,
    config_from_args,
    data_roles,
    parse_config,
)
from affectnet_tf.training.datasets import RunDatasets
from affectnet_tf.training.objectives import initial_confusions
from affectnet_tf.training.run import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "dataset, task, target, extra",
    [
        ("affectnet_c25/set1", "exp", "mv", {"class_weights": True, "label_smoothing": 0.1}),
        ("affectnet_c25/set1", "exp", "soft", {}),
        ("affectnet_c25/set1", "exp", "ds", {}),
        ("affectnet_c25/set1", "exp", "cv", {"crowd_layer": "VW+B"}),
        ("affectnet_c25/set1", "aro", "mean", {}),
        ("affectnet_c25/set1", "val", "median", {}),
        ("affectnet_c25/set1", "va", "cv", {}),
        ("affectnet_c25/set1", "all", "mv", {"num_classes": 7}),
        ("affectnet_c25/set1", "all", "cv", {}),
        ("affectnet_c25/set1", "all", "mv", {"va_target": "cv"}),
        ("affectnet_c25/set1", "all", "cv", {"va_target": "mean"}),
        ("affectnet_c25/set1", "all", "ds", {"va_target": "latent"}),
        ("affectnet_c25/set1", "va", "cv", {"va_crowd_layer": "gaussian"}),
        ("affectnet_c25/set1", "exp", "original", {"schedule": "constant"}),
        ("affectnet", "exp", "original", {}),
        ("affectnet", "va", "original", {}),
        ("affectnet", "all", "original", {}),
    ],
)
def test_every_target_and_task(tiny_config, dataset, task, target, extra):
    result = train(tiny_config(dataset=dataset, task=task, target=target, **extra))
    run = Path(result["run_dir"])
    files = {p.name for p in run.iterdir()}
    assert {"model.keras", "config.yaml", "history.csv", "metrics.json"} <= files
    assert "backup" not in files  # removed once the run ended
    heads = affectnet_tf.modeling.models.TASK_HEADS[task]
    va_target = extra.get("va_target", "cv" if target == "cv" else "mean")
    crowd_heads = [h for h in heads if (target if h == "expression" else va_target) == "cv"]
    assert ("crowd_model.keras" in files) == bool(crowd_heads)
    assert ("annotators.npz" in files) == bool(crowd_heads)
    saved_metrics = json.loads((run / "metrics.json").read_text())
    for head in heads:
        keys = {"accuracy", "f1_macro"} if head == "expression" else {"rmse", "ccc"}
        assert keys <= set(saved_metrics[head])
    assert all(np.isfinite(v) for v in result["history"]["loss"])
    # streaming Keras metrics during training: macro F1 for class targets, CCC for VA values
    history = set(result["history"])
    prefix = "expression_" if len(heads) > 1 else ""
    if "expression" in heads and target in ("mv", "original"):
        assert {f"val_{prefix}f1_macro", f"val_{prefix}accuracy"} <= history
    for head in set(heads) & {"valence", "arousal"}:
        va_prefix = f"{head}_" if len(heads) > 1 else ""
        assert (f"val_{va_prefix}ccc" in history) == (head not in crowd_heads)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["task"] == task and config["target"] == target
    model = affectnet_tf.load_model(run / "model.keras")
    meta = affectnet_tf.model_metadata(model)
    assert meta["task"] == task and meta["target"] == target
    assert meta["crowd_heads"] == crowd_heads
    assert len(meta["class_names"]) == extra.get("num_classes", 8)
    if crowd_heads:
        annotators = np.load(run / "annotators.npz")
        assert ("expression_confusions" in annotators) == ("expression" in crowd_heads)
        if "expression" in crowd_heads:
            assert annotators["expression_confusions"].shape[0] == 25
        if "valence" in crowd_heads:
            assert annotators["valence_bias"].shape == (25,)
            assert annotators["valence_noise"].shape == (25,)
            if "va_crowd_layer" not in extra:  # the default latent layer
                assert np.isfinite(annotators["valence_prior_std"])
        if "expression" in crowd_heads and not extra:  # the default crowd layer
            crowd_model = keras.models.load_model(run / "crowd_model.keras")
            layer = crowd_model.get_layer("crowd_expression")
            assert isinstance(layer, crowd_layers.CrowdsPooled)


# a finished run shared by the tests that only read it (or copy it)
_SEEDED = dict(epochs=2, steps_per_epoch=2, seed=7, class_balanced=True, strategy="one_device")


@pytest.fixture(scope="module")
def seeded_run(tiny_settings, tmp_path_factory):
    """``(config, result)`` of a finished run of ``_SEEDED``."""
    config = tiny_settings(tmp_path_factory.mktemp("seeded") / "a", **_SEEDED)
    return config, train(config)


def test_one_device_strategy_and_class_balanced_sampling(seeded_run):
    result = seeded_run[1]
    run = Path(result["run_dir"])
    assert (run / "model.keras").exists() and (run / "metrics.json").exists()
    with open(run / "config.yaml") as stream:
        saved = yaml.safe_load(stream)
    assert saved["strategy"] == "one_device" and saved["class_balanced"] is True
    assert np.isfinite(result["history"]["loss"][0])


# a two-phase run of 4 epochs (the first one frozen) of 2 steps: the killed runs below resume
# to the weights of its uninterrupted run
_FOUR_EPOCHS = dict(epochs=4, freeze_epochs=1, steps_per_epoch=2, seed=4)


@pytest.fixture(scope="module")
def uninterrupted_run(tiny_settings, tmp_path_factory):
    """``(config, result)`` of the two-phase run of ``_FOUR_EPOCHS``, not interrupted."""
    config = tiny_settings(tmp_path_factory.mktemp("uninterrupted") / "whole", **_FOUR_EPOCHS)
    return config, train(config)


def test_two_phase_fine_tuning(uninterrupted_run):
    _, result = uninterrupted_run
    assert len(result["history"]["loss"]) == 4  # the frozen epoch, then the fine-tuning ones
    with open(Path(result["run_dir"]) / "history.csv") as stream:
        assert [row["epoch"] for row in csv.DictReader(stream)] == ["0", "1", "2", "3"]


_MIRRORED_SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from affectnet_tf.training.run import train
losses = [train(config)["history"]["loss"][0] for config in json.loads(sys.argv[1])]
print("LOSSES", json.dumps(losses))
"""


def test_mirrored_first_step_loss_equals_one_device(tiny_config, tmp_path):
    # The mirrored run in its own process: collective ops of MirroredStrategy objects made by
    # earlier tests in this process would share instance keys with this one's. The one-device
    # run needs no process of its own (the same seed gives the same loss in any process).
    # 3 training and 3 selection images: uneven shares of the replicas are handled (the
    # training batch drops its remainder, the selection batches are padded with missing rows)
    settings = dict(
        epochs=1,
        steps_per_epoch=1,
        augment=False,
        dropout=0.0,
        seed=5,
        selection_fraction=0.4,
        batch_size=2,
    )
    one = train(tiny_config(output_dir=str(tmp_path / "one"), strategy="default", **settings))
    configs = [tiny_config(output_dir=str(tmp_path / "two"), strategy="mirrored", **settings)]
    completed = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT, json.dumps(configs)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = [row for row in completed.stdout.splitlines() if row.startswith("LOSSES")][-1]
    (two,) = json.loads(line.split(" ", 1)[1])
    np.testing.assert_allclose(two, one["history"]["loss"][0], rtol=1e-4)
    assert (tmp_path / "two" / "model.keras").exists()


def _cli(args, env=None, timeout=300):
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "affectnet_tf.train", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=timeout,
    )


def _flags(config):
    flags = []
    for key, value in config.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            value = "none"
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags


def _weights(path):
    """The arrays of a ``.weights.h5`` or ``.keras`` file, in order."""
    import h5py

    arrays = []
    with h5py.File(path, "r") if str(path).endswith(".h5") else _keras_weights(path) as store:
        store.visititems(
            lambda name, item: (
                arrays.append((name, np.array(item))) if isinstance(item, h5py.Dataset) else None
            )
        )
    return arrays


def _keras_weights(path):
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(path) as archive:
        return h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")


def _assert_same_weights(first, second):
    a, b = _weights(first), _weights(second)
    assert [name for name, _ in a] == [name for name, _ in b]
    for (name, x), (_, y) in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_weights(
    uninterrupted_run, tmp_path, capsys, restore_logging
):
    """Killed after step 3 (inside epoch 2 of 4, the first of the fine-tuning phase), the same
    command resumes after epoch 1 and ends with the weights, best epoch and metrics of an
    uninterrupted run; the standard output holds the results' JSON only."""
    settings, whole = uninterrupted_run
    config = {**settings, "output_dir": str(tmp_path / "killed")}
    command = _flags(config)
    killed = _cli(command, env={fit_loop.FAIL_AT_STEP_ENV: "3"})  # a kill needs its own process
    assert killed.returncode == 3, killed.stderr[-3000:]
    run = Path(config["output_dir"])
    assert not (run / "model.keras").exists() and (run / "backup").is_dir()
    capsys.readouterr()
    assert train_module.main(command) == 0  # the same command, no flag needed
    captured = capsys.readouterr()
    assert "resuming in" in captured.err  # a status line, shown by default
    assert "Epoch 1/4" not in captured.err and "Epoch 2/4" in captured.err
    resumed = json.loads(captured.out)
    assert resumed["run_dir"] == str(run)
    with open(run / "history.csv") as stream:
        assert [row["epoch"] for row in csv.DictReader(stream)] == ["0", "1", "2", "3"]
    whole_run = Path(whole["run_dir"])
    _assert_same_weights(whole_run / "best.weights.h5", run / "best.weights.h5")
    _assert_same_weights(whole_run / "model.keras", run / "model.keras")
    metrics = json.loads((run / "metrics.json").read_text())
    np.testing.assert_allclose(
        metrics["expression"]["accuracy"], whole["metrics"]["expression"]["accuracy"]
    )
    assert resumed["metrics"]["expression"]["accuracy"] == metrics["expression"]["accuracy"]


def test_the_run_folder_is_resumed_only_with_the_same_settings(tmp_path):
    config = RunConfig(output_dir=str(tmp_path / "run"), epochs=3, model="compact_cnn")
    with pytest.raises(ValueError, match="no interrupted run to resume"):
        run_folder.prepare_run_folder(RunConfig(**{**config.to_dict(), "resume": True}))
    folder = run_folder.prepare_run_folder(config)
    assert not folder.resuming
    os.makedirs(folder.work_dir)
    run_folder.write_run_config(folder.run_dir, config, {"train": {"images": 3}})
    assert run_folder.prepare_run_folder(config).resuming  # the same settings: resume
    other = RunConfig(**{**config.to_dict(), "epochs": 5, "learning_rate": 0.1})
    with pytest.raises(ValueError, match=r"epochs: 3 there, 5 now; learning_rate: 0.001"):
        run_folder.prepare_run_folder(other)
    # where the data lives may change
    moved = RunConfig(**{**config.to_dict(), "data_dir": str(tmp_path)})
    assert run_folder.prepare_run_folder(moved).resuming
    assert (
        run_folder.prepare_run_folder(RunConfig(**{**other.to_dict(), "overwrite": True})).resuming
        is False
    )
    assert not os.path.exists(folder.run_dir)  # --overwrite deleted it
    os.makedirs(tmp_path / "notes")
    (tmp_path / "notes" / "todo.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no run.*todo.txt"):
        run_folder.prepare_run_folder(RunConfig(output_dir=str(tmp_path / "notes")))


def test_best_epoch_survives_new_callbacks_and_only_improves(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    weights, state = str(tmp_path / "best.weights.h5"), str(tmp_path / "best.json")
    first = fit_loop.BestCheckpoint(weights, state, "val_loss")
    first.set_model(model)
    first.on_epoch_end(0, {"val_loss": 0.5})
    saved = [np.array(w) for w in model.get_weights()]
    model.set_weights([w + 1 for w in saved])
    first.on_epoch_end(1, {"val_loss": 0.7})  # worse: not saved
    # a new phase or a restarted run: a fresh callback still knows the best value
    second = fit_loop.BestCheckpoint(weights, state, "val_loss")
    second.set_model(model)
    second.on_epoch_end(2, {"val_loss": 0.6})
    second.on_epoch_end(3, {"val_loss": float("nan")})
    model.load_weights(weights)
    for expected, actual in zip(saved, model.get_weights()):
        np.testing.assert_array_equal(expected, actual)
    record = json.loads(Path(state).read_text())
    assert record.pop("sha256") == files.file_sha256(weights)
    assert record == {"monitor": "val_loss", "value": 0.5, "epoch": 0, "previous": None}
    with pytest.raises(ValueError, match="val_f1_macro.*val_loss"):
        fit_loop.BestCheckpoint(weights, state, "val_f1_macro").on_epoch_end(4, {"val_loss": 0.1})


def test_best_checkpoint_under_folders_with_dots_spaces_and_accents(tmp_path):
    """Atomic writes take apart the file name only: parents like ``tmp.AbC``, ``a.b c`` or
    ``ü`` are ordinary (the first epoch used to crash with FileNotFoundError there)."""
    folder = tmp_path / "tmp.AbC12" / "a.b c" / "ü"
    folder.mkdir(parents=True)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    best = fit_loop.BestCheckpoint(
        str(folder / "best.weights.h5"), str(folder / "b.json"), "val_loss"
    )
    best.set_model(model)
    best.on_epoch_end(0, {"val_loss": 0.5})
    assert sorted(p.name for p in folder.iterdir()) == ["b.json", "best.weights.h5"]


@pytest.mark.parametrize("kill_at", [1, 2])
def test_a_kill_while_saving_the_best_epoch_leaves_a_consistent_pair(
    tmp_path, monkeypatch, kill_at
):
    """A new best epoch writes two files (its record, its weights), each put in place by one
    rename: killed before either rename, a restart finds a record that its weights file
    matches (the epoch before, here) and no error."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    weights, state = str(tmp_path / "best.weights.h5"), str(tmp_path / "best.json")
    first = fit_loop.BestCheckpoint(weights, state, "val_loss")
    first.set_model(model)
    first.on_epoch_end(0, {"val_loss": 0.5})
    saved = [np.array(w) for w in model.get_weights()]
    model.set_weights([w + 1 for w in saved])
    real_replace, renames = os.replace, []

    def killed(source, target):
        if str(target) in (weights, state):
            renames.append(target)
            if len(renames) == kill_at:
                raise KeyboardInterrupt  # the kill, before this rename
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        first.on_epoch_end(1, {"val_loss": 0.3})
    monkeypatch.setattr(os, "replace", real_replace)
    restarted = fit_loop.BestCheckpoint(weights, state, "val_loss")
    assert (restarted.best, restarted.best_epoch) == (0.5, 0)
    model.load_weights(weights)
    for expected, actual in zip(saved, model.get_weights()):
        np.testing.assert_array_equal(expected, actual)


def test_a_kill_at_the_first_best_epoch_leaves_no_best(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    weights, state = str(tmp_path / "best.weights.h5"), str(tmp_path / "best.json")
    first = fit_loop.BestCheckpoint(weights, state, "val_loss")
    first.set_model(model)
    real_replace = os.replace

    def killed(source, target):
        if str(target) == weights:
            raise KeyboardInterrupt  # after the record, before the weights file
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        first.on_epoch_end(0, {"val_loss": 0.5})
    monkeypatch.setattr(os, "replace", real_replace)
    assert Path(state).exists() and not Path(weights).exists()
    assert fit_loop.BestCheckpoint(weights, state, "val_loss").best is None


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "runs.v2" / "metrics.json"
    target.parent.mkdir()
    files.write_json(target, {"old": 1})

    def half_then_crash(path):
        Path(path).write_text('{"new": ')
        raise KeyboardInterrupt  # a kill that Python sees

    with pytest.raises(KeyboardInterrupt):
        files.write_atomically(target, half_then_crash)
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]
    # a writer killed for real leaves its partial file, which a resumed run removes
    stale = target.parent / f"{files.PARTIAL_PREFIX}123-abcd-metrics.json"
    stale.write_text("{")
    assert files.remove_partial_files(tmp_path) == [str(stale)]


def test_backups_fall_back_to_the_generation_before_a_damaged_one(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    model.optimizer.build(model.trainable_variables)  # as after a training epoch
    folder = tmp_path / "backup_train"
    for epoch in (1, 2, 3):
        model.set_weights([np.full_like(w, epoch) for w in model.get_weights()])
        backups.save_generation(model, str(folder), epoch)
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch_2.json",
        "epoch_2.weights.h5",
        "epoch_3.json",
        "epoch_3.weights.h5",
    ]
    assert fit_loop.restored_epoch(folder) == 3
    weights = folder / "epoch_3.weights.h5"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    lines = []
    generation = backups.latest_generation(str(folder), report=lines.append)
    assert generation.epoch == 2 and "epoch_3.weights.h5" in lines[0]
    backups.restore_weights(model, generation)
    assert all(np.all(w == 2) for w in model.get_weights())
    (folder / "epoch_2.json").write_text('{"epoch": 2, "weig')
    with pytest.raises(backups.DamagedRunError, match="epoch_2.json is damaged.*--overwrite"):
        backups.latest_generation(str(folder))


# the files of the interrupted run below -> what resuming with one of them cut in half gives:
# None (resumes, falling back where needed, to the weights of an uninterrupted run) or the
# message of the error that names the file
_DAMAGE = {
    "config.yaml": "config.yaml is damaged",
    "history.csv": None,
    "best.weights.h5": "best.weights.h5 is damaged.*--overwrite",
    "backup/best.json": "best.json is damaged.*--overwrite",
    "backup/backup_frozen/epoch_1.json": None,
    "backup/backup_frozen/epoch_1.weights.h5": None,
    "backup/backup_fine_tune/epoch_2.json": None,
    "backup/backup_fine_tune/epoch_2.weights.h5": None,
    "backup/backup_fine_tune/epoch_3.json": None,
    "backup/backup_fine_tune/epoch_3.weights.h5": None,
    "logs": None,  # TensorBoard's event files: written by TensorFlow, never read back
}


@pytest.fixture(scope="module")
def interrupted_run(uninterrupted_run, tmp_path_factory):
    """``(config, folder, whole)``: the settings and folder of a run killed in epoch 4 of 4
    (frozen phase done, fine-tuning backed up after epochs 2 and 3), and the folder of the
    same run uninterrupted."""
    config, whole = uninterrupted_run
    killed = {**config, "output_dir": str(tmp_path_factory.mktemp("interrupted") / "killed")}
    result = _cli(_flags(killed), env={fit_loop.FAIL_AT_STEP_ENV: "7"})
    assert result.returncode == 3, result.stderr[-3000:]
    return killed, Path(killed["output_dir"]), Path(whole["run_dir"])


def test_the_interrupted_run_holds_the_files_the_damage_test_covers(interrupted_run):
    _, folder, _ = interrupted_run
    found = {
        "logs" if path.relative_to(folder).parts[0] == "logs" else str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file()
    }
    assert found == set(_DAMAGE)


@pytest.mark.slow
@pytest.mark.parametrize("damaged", sorted(_DAMAGE))
def test_resume_with_each_file_cut_in_half(interrupted_run, tmp_path, damaged, status_log):
    """Each file of an interrupted run truncated in turn: the run resumes from the newest good
    backup to the weights of an uninterrupted run, or stops naming the damaged file and the
    way out; never an h5py or JSON traceback."""
    config, folder, whole = interrupted_run
    copy = tmp_path / "run.v1 ü"
    shutil.copytree(folder, copy)
    targets = [p for p in (copy / damaged).rglob("*") if p.is_file()] or [copy / damaged]
    for path in targets:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    config = {**config, "output_dir": str(copy)}
    expected = _DAMAGE[damaged]
    if expected is not None:
        with pytest.raises(backups.DamagedRunError, match=expected):
            train(config)
        return
    result = train(config)
    assert any("resuming" in line for line in status_log)
    _assert_same_weights(whole / "model.keras", Path(result["run_dir"]) / "model.keras")
    assert not (copy / "backup").exists()


def test_quiet_shows_no_status_and_still_prints_the_results(
    interrupted_run, tmp_path, capsys, restore_logging
):
    """``--quiet`` drops the status lines (the "resuming" one the killed-run test sees by
    default) and Keras' epoch lines; the results' JSON still prints. ``--quiet`` is no setting
    of the run: the run saved without it resumes, and its config.yaml does not get it."""
    config, folder, whole = interrupted_run
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    capsys.readouterr()
    assert train_module.main([*_flags({**config, "output_dir": str(copy)}), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "resuming" not in captured.err and "Training compact_cnn" not in captured.err
    assert "Epoch" not in captured.err + captured.out
    result = json.loads(captured.out)
    assert result["run_dir"] == str(copy) and "accuracy" in result["metrics"]["expression"]
    _assert_same_weights(whole / "model.keras", copy / "model.keras")
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    assert "quiet" not in saved and "verbose" not in saved


def test_verbosity_flags_are_no_run_settings():
    args = build_parser().parse_args(["--model", "compact_cnn", "--verbose"])
    assert args.verbose and not args.quiet
    config = config_from_args(args)
    assert "verbose" not in config.to_dict() and "quiet" not in config.to_dict()
    quiet = parse_config(["--model", "compact_cnn", "--quiet"])
    assert config_differences(config.to_dict(), quiet) == []
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--verbose", "--quiet"])


def test_a_diverged_run_stops_with_an_error_and_no_backup_of_its_epoch(tiny_config):
    config = tiny_config(learning_rate=1e30, epochs=2, schedule="constant", steps_per_epoch=2)
    with pytest.raises(fit_loop.TrainingDivergedError, match="became nan"):
        train(config)
    run = Path(config["output_dir"])
    assert (run / "backup").is_dir()  # the phase is not finished: nothing to resume past
    assert fit_loop.restored_epoch(run / "backup" / "backup_train") == 0
    assert not (run / "model.keras").exists()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _run_workers(config, env=None):
    workers = [f"localhost:{_free_port()}" for _ in range(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        environment = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "TF_CONFIG": json.dumps(tf_config),
            **(env or {}),
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "affectnet_tf.train", *_flags(config)],
                cwd=ROOT,
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    return [process.returncode for process in processes], outputs


@pytest.mark.slow
def test_multi_worker_with_two_local_workers_killed_and_resumed(tiny_config, tmp_path):
    """Two workers (TF_CONFIG on free localhost ports), killed after epoch 1, started again:
    the custom loop restores its CheckpointManager checkpoint and ends at epoch 2."""
    config = tiny_config(
        epochs=2,
        strategy="multi_worker",
        output_dir=str(tmp_path / "mw"),
        augment=False,
    )
    # killed after step 3: inside epoch 2 (2 steps per epoch), after epoch 1's checkpoint
    codes, outputs = _run_workers(config, env={fit_loop.FAIL_AT_STEP_ENV: "3"})
    assert codes == [3, 3], outputs[0][-3000:]
    codes, outputs = _run_workers(config)
    for code, output in zip(codes, outputs):
        assert code == 0, output[-3000:]
    assert "2 replica(s)" in outputs[0] and "resuming in" in outputs[0]
    assert "Epoch 1/2" not in outputs[0] and "Epoch 2/2" in outputs[0]
    run = tmp_path / "mw"
    assert {p.name for p in tmp_path.iterdir()} == {"mw"}  # one run folder, the chief's
    assert {"model.keras", "metrics.json", "config.yaml", "history.csv", "best.weights.h5"} <= {
        p.name for p in run.iterdir()
    }
    with open(run / "history.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert all(np.isfinite(float(row["val_loss"])) for row in rows)


def test_multi_worker_loop_refuses_what_it_cannot_do():
    worker_loop.check_config(RunConfig(model="compact_cnn", class_weights=True))
    with pytest.raises(ValueError, match="--freeze-epochs 1.*--monitor val_f1_macro.*XLA"):
        worker_loop.check_config(
            RunConfig(
                model="compact_cnn",
                epochs=3,
                freeze_epochs=1,
                monitor="val_f1_macro",
                jit_compile=True,
            )
        )
    with pytest.raises(ValueError, match="--mixed-precision"):
        worker_loop.check_config(RunConfig(model="compact_cnn", mixed_precision=True))


def test_auto_strategy_asks_the_tpu_resolver(monkeypatch, status_log):
    import tensorflow as tf

    def no_tpu(*args, **kwargs):
        raise ValueError("Please provide a TPU Name to connect to.")

    monkeypatch.setattr(distribute, "_tpu_hinted", lambda: True)  # e.g. /dev/accel0 of an NPU
    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", no_tpu)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = distribute.make_strategy("auto")
    assert not isinstance(strategy, tf.distribute.TPUStrategy)
    assert any("No TPU found" in line for line in status_log)
    with pytest.raises(ValueError, match="--strategy tpu: no TPU found"):
        distribute.make_strategy("tpu")


def test_monitor_mode_maximises_scores_and_minimises_losses():
    for name in ("val_loss", "val_expression_loss", "val_valence_rmse"):
        assert fit_loop.monitor_mode(name) == "min"
    for name in ("val_f1_macro", "val_accuracy", "val_arousal_ccc"):
        assert fit_loop.monitor_mode(name) == "max"


def test_config_file_values_are_overridden_by_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": "vgg19", "epochs": 3, "batch-size": 8}))
    config = parse_config(["--config", str(path), "--epochs", "5"])
    assert config.model == "vgg19" and config.epochs == 5 and config.batch_size == 8
    assert config.task == "exp"  # default
    path.write_text(yaml.safe_dump({"epoch": 3}))
    with pytest.raises(ValueError, match="Unknown settings"):
        parse_config(["--config", str(path)])


def test_help_lists_groups_and_defaults(capsys):
    with pytest.raises(SystemExit):
        train_module.build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for group in ("Data", "Model", "Crowd", "Optimization", "Distribution", "Output"):
        assert f"{group}:" in text
    assert "--crowd-layer" in text
    for words in (
        "(default: resnet50)",
        "train, selection",
        "--overwrite",
        "continues an interrupted run",
        "--folds",
        "--quiet",
    ):
        assert words in " ".join(text.split())


def test_data_roles_of_every_dataset():
    def roles(**settings):
        found = data_roles(RunConfig(model="compact_cnn", **settings))
        return str(found.train), str(found.selection), str(found.test)

    assert roles(dataset="affectnet_c25/set1") == ("set1:train", "set1:selection", "set1:test")
    assert roles(dataset="affectnet") == ("train:train", "train:selection", "validation")
    assert roles(dataset="synthetic_faces/tiny") == ("train", "validation", "test")
    assert roles(dataset="affectnet_c25/set1", eval_split="set2") == (
        "set1:train",
        "set1:selection",
        "set2",
    )
    assert roles(
        dataset="affectnet", val_split="validation:selection", eval_split="validation:test"
    )[1:] == ("validation:selection", "validation:test")
    with pytest.raises(ValueError, match="needs a set"):
        roles(dataset="affectnet_c25")
    with pytest.raises(ValueError, match="selection, test data overlap"):
        roles(dataset="affectnet_c25/set1", val_split="set1:test")
    with pytest.raises(ValueError, match="train, selection, test data overlap: .*test=train"):
        roles(dataset="affectnet", eval_split="train")
    with pytest.raises(ValueError, match="SPLIT:SUBSET"):
        roles(dataset="affectnet", val_split="train:validation")
    with pytest.raises(ValueError, match="--folds cross-validates"):
        roles(dataset="affectnet_c25/set1", folds=3, eval_split="set2")


@pytest.mark.parametrize("dataset", ["affectnet_c25/set1", "affectnet", "synthetic_faces/tiny"])
def test_the_three_roles_hold_disjoint_images(dataset, train_data_dir, synthetic_faces_tiny):
    data_dir = synthetic_faces_tiny[0] if dataset.startswith("synthetic") else train_data_dir
    stored = None if dataset.startswith("synthetic") else 32
    config = RunConfig(
        dataset=dataset,
        data_dir=str(data_dir),
        stored_image_size=stored,
        model="compact_cnn",
        target="original" if dataset == "affectnet" else "mv",
        selection_fraction=0.25,
        test_fraction=0.25,
    )
    datasets = RunDatasets(config, data_roles(config))
    datasets.check_disjoint()
    names = [
        set(info.file_names)
        for info in (datasets.train_info, datasets.selection_info, datasets.test_info)
    ]
    assert all(names) and not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    record = datasets.record()
    for role, info in zip(("train", "selection", "test"), names):
        assert record[role]["images"] == len(info)
        assert record[role]["file_names_sha256"] == data.names_digest(info)


def test_bad_settings(tiny_config, capsys, restore_logging):
    with pytest.raises(ValueError, match="known models: .*resnet50"):
        train(tiny_config(model="resnet18"))
    with pytest.raises(ValueError, match="crowd answers"):
        train(tiny_config(dataset="affectnet", target="cv"))
    with pytest.raises(ValueError, match="Unknown settings"):
        train(tiny_config(learning_rat=0.1))
    with pytest.raises(ValueError, match="--target mean is a valence/arousal target"):
        train(tiny_config(task="all", target="mean"))
    with pytest.raises(ValueError, match="--va-target cv needs a valence/arousal task"):
        train(tiny_config(task="exp", va_target="cv"))
    assert train_module.main(["--model", "resnet18"]) == 2
    assert "known models" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(["--task", "emotion"])


def test_finished_run_is_not_overwritten_by_accident(seeded_run, tmp_path):
    settings, result = seeded_run
    shutil.copytree(result["run_dir"], tmp_path / "run")
    config = {**settings, "output_dir": str(tmp_path / "run")}
    with pytest.raises(ValueError, match="finished run"):
        train(config)
    assert train({**config, "overwrite": True})["metrics"]


def test_mixed_precision_and_xla(tiny_config):
    result = train(tiny_config(steps_per_epoch=1, mixed_precision=True, jit_compile=True))
    assert np.isfinite(result["history"]["loss"][0])
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    model = affectnet_tf.load_model(Path(result["run_dir"]) / "model.keras")
    assert model.output.dtype == "float32"


def test_confusion_layer_starts_from_dawid_skene_of_the_training_answers(synthetic_faces_tiny):
    data_dir, builder = synthetic_faces_tiny
    answers = affectnet_tf.data.pipeline.crowd_answers(
        "synthetic_faces/tiny", "train", data_dir=data_dir
    )
    table = affectnet_tf.data.pipeline.load_label_table(builder, "train")
    assert answers.shape == table["crowd_expression"].shape
    np.testing.assert_array_equal(answers, table["crowd_expression"])
    seven = affectnet_tf.data.pipeline.crowd_answers(
        "synthetic_faces/tiny", "train", num_classes=7, data_dir=data_dir
    )
    # 7 classes: contempt answers become no answers, images voted contempt are dropped
    blanked = {tuple(row) for row in np.where(answers == 7, -1, answers)}
    assert not (seven == 7).any() and 0 < len(seven) < len(answers)
    assert all(tuple(row) in blanked for row in seven)

    expected = crowd_layers.DawidSkene(num_classes=8, smoothing=1.0).fit(answers).confusions_
    config = {
        "dataset": "synthetic_faces/tiny",
        "data_dir": str(data_dir),
        "target": "cv",
        "crowd_init": "ds",
        "model": "compact_cnn",
        "weights": None,
    }

    def start(**changes):
        run_config = RunConfig.from_dict({**config, **changes})
        return initial_confusions(run_config, data_roles(run_config))

    np.testing.assert_allclose(start(), expected)
    assert start(crowd_init="diagonal") is None
    assert start(target="mv") is None
    with pytest.raises(ValueError, match="--crowd-init ds initialises a confusion crowd layer"):
        start(crowd_layer="MW")
    np.testing.assert_allclose(
        start(crowd_init="mv"), crowd_layers.majority_vote_confusions(answers, num_classes=8)
    )

    # the crowd layer of a run starts there: zero epochs of training would keep it; one short
    # epoch at a tiny learning rate keeps it close
    run = train(
        {
            **config,
            "epochs": 1,
            "steps_per_epoch": 1,
            "learning_rate": 1e-6,
            "image_size": 32,
            "batch_size": 8,
            "output_dir": str(data_dir / "run"),
        }
    )
    learned = np.load(Path(run["run_dir"]) / "annotators.npz")["expression_confusions"]
    np.testing.assert_allclose(learned, expected, atol=1e-3)


def test_a_rerun_with_the_same_seed_gives_the_same_weights(seeded_run, tiny_config, tmp_path):
    settings = _SEEDED
    first = seeded_run[1]
    second = train(tiny_config(output_dir=str(tmp_path / "b"), **settings))
    _assert_same_weights(
        Path(first["run_dir"]) / "model.keras", Path(second["run_dir"]) / "model.keras"
    )
    assert first["history"]["loss"] == second["history"]["loss"]
    other = train(tiny_config(output_dir=str(tmp_path / "c"), **{**settings, "seed": 8}))
    assert other["history"]["loss"] != first["history"]["loss"]
    # the data roles and the test labels do not depend on the training seed
    assert other["data_roles"] == first["data_roles"]


def test_evaluation_labels_do_not_depend_on_the_training_seed(seeded_run, tmp_path):
    result = seeded_run[1]
    again = evaluate_run(result["run_dir"], report=False, output_dir=str(tmp_path))
    for head, values in result["metrics"].items():
        if isinstance(values, dict) and "accuracy" in values:
            assert again[head]["accuracy"] == values["accuracy"]
            assert again[head]["f1_macro"] == values["f1_macro"]
    saved = json.loads((Path(result["run_dir"]) / "metrics.json").read_text())
    assert saved["data_roles"] == result["data_roles"]
    assert {"train", "selection", "test"} == set(saved["data_roles"])
    config = yaml.safe_load((Path(result["run_dir"]) / "config.yaml").read_text())
    assert config["data_roles"] == result["data_roles"]


def test_k_fold_cross_validation_reports_mean_and_spread(tiny_config):
    config = tiny_config(folds=2, steps_per_epoch=1, selection_fraction=0.5)
    result = train(config)
    run = Path(result["run_dir"])
    assert {"fold_0", "fold_1", "metrics.json", "config.yaml"} <= {p.name for p in run.iterdir()}
    summary = json.loads((run / "metrics.json").read_text())
    accuracy = summary["expression/accuracy"]
    assert len(accuracy["folds"]) == 2
    np.testing.assert_allclose(accuracy["mean"], np.mean(accuracy["folds"]))
    np.testing.assert_allclose(accuracy["std"], np.std(accuracy["folds"], ddof=1))
    tests = [
        json.loads((run / f"fold_{k}" / "metrics.json").read_text())["data_roles"]["test"]
        for k in range(2)
    ]
    assert tests[0]["cut"]["fold"] == 0 and tests[1]["cut"]["fold"] == 1
    assert tests[0]["file_names_sha256"] != tests[1]["file_names_sha256"]
    with pytest.raises(ValueError, match="finished run"):
        train(config)


def test_multi_worker_checkpoints_fall_back_past_a_damaged_one(tmp_path):
    import tensorflow as tf

    value = tf.Variable(0.0)
    checkpoint = tf.train.Checkpoint(value=value)
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path / "run.v1" / "ckpt"), 2)
    for number in (1.0, 2.0, 3.0):
        value.assign(number)
        manager.save()
    folder = tmp_path / "run.v1" / "ckpt"
    newest = sorted(folder.glob("ckpt-3.data-*"))[0]
    newest.write_bytes(newest.read_bytes()[:2])
    lines = []
    restored = worker_loop.restore_checkpoint(checkpoint, str(folder), report=lines.append)
    assert restored.endswith("ckpt-2") and float(value.numpy()) == 2.0
    assert "ckpt-3" in lines[0]
    older = sorted(folder.glob("ckpt-2.data-*"))[0]
    older.write_bytes(b"")
    with pytest.raises(backups.DamagedRunError, match="Every checkpoint.*--overwrite"):
        worker_loop.restore_checkpoint(checkpoint, str(folder), report=lines.append)
