"""``train()`` and its command line on the dummy datasets: targets, tasks, outputs, strategies,
an interrupted run that resumes, two local workers, and the errors of bad settings."""

import csv
import json
import os
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
from affectnet_tf import train as train_module
from affectnet_tf.train import DEFAULTS, _initial_confusions, train

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
    assert ("crowd_model.keras" in files) == (target == "cv")
    assert ("annotators.npz" in files) == (target == "cv")
    heads = affectnet_tf.models.TASK_HEADS[task]
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
        assert (f"val_{va_prefix}ccc" in history) == (target != "cv")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["task"] == task and config["target"] == target
    model = affectnet_tf.load_model(run / "model.keras")
    meta = affectnet_tf.model_metadata(model)
    assert meta["task"] == task and meta["target"] == target
    assert len(meta["class_names"]) == extra.get("num_classes", 8)
    if target == "cv":
        annotators = np.load(run / "annotators.npz")
        if "expression" in heads:
            assert annotators["expression_confusions"].shape[0] == 25
        if "valence" in heads:
            assert annotators["valence_bias"].shape == (25,)
            assert annotators["valence_noise"].shape == (25,)  # the default gaussian layer
        if "expression" in heads and not extra:  # the default crowd layer
            crowd_model = keras.models.load_model(run / "crowd_model.keras")
            layer = crowd_model.get_layer("crowd_expression")
            assert isinstance(layer, crowd_layers.CrowdsPooled)


def test_one_device_strategy_and_class_balanced_sampling(tiny_config):
    result = train(tiny_config(strategy="one_device", class_balanced=True, seed=2))
    run = Path(result["run_dir"])
    assert (run / "model.keras").exists() and (run / "metrics.json").exists()
    with open(run / "config.yaml") as stream:
        saved = yaml.safe_load(stream)
    assert saved["strategy"] == "one_device" and saved["class_balanced"] is True
    assert np.isfinite(result["history"]["loss"][0])


def test_two_phase_fine_tuning(tiny_config):
    result = train(tiny_config(epochs=2, freeze_epochs=1, schedule="constant"))
    assert len(result["history"]["loss"]) == 2
    with open(Path(result["run_dir"]) / "history.csv") as stream:
        assert [row["epoch"] for row in csv.DictReader(stream)] == ["0", "1"]


_MIRRORED_SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from affectnet_tf.train import train
losses = [train(config)["history"]["loss"][0] for config in json.loads(sys.argv[1])]
print("LOSSES", json.dumps(losses))
"""


def test_mirrored_first_step_loss_equals_one_device(tiny_config, tmp_path):
    # In its own process: collective ops of MirroredStrategy objects made by earlier tests in
    # this process would share instance keys with this one's.
    settings = dict(epochs=1, steps_per_epoch=1, augment=False, dropout=0.0, seed=5)
    configs = [
        tiny_config(output_dir=str(tmp_path / "one"), strategy="default", **settings),
        tiny_config(output_dir=str(tmp_path / "two"), strategy="mirrored", **settings),
    ]
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
    one, two = json.loads(line.split(" ", 1)[1])
    np.testing.assert_allclose(two, one, rtol=1e-4)
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


@pytest.mark.slow
def test_interrupted_run_resumes_at_the_next_epoch(tiny_config):
    config = tiny_config(epochs=2, schedule="constant")
    command = _flags(config)
    killed = _cli(command, env={"AFFECTNET_TF_FAIL_AFTER_EPOCH": "1"})
    assert killed.returncode == 3, killed.stderr[-3000:]
    run = Path(config["output_dir"])
    assert not (run / "model.keras").exists() and (run / "backup").is_dir()
    resumed = _cli(command + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = resumed.stdout + resumed.stderr
    assert "Resuming: True" in output
    assert "Epoch 1/2" not in output and "Epoch 2/2" in output
    with open(run / "history.csv") as stream:
        assert [row["epoch"] for row in csv.DictReader(stream)] == ["0", "1"]
    assert (run / "model.keras").exists()


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
        epochs=2, strategy="multi_worker", output_dir=str(tmp_path / "mw"), augment=False
    )
    codes, outputs = _run_workers(config, env={"AFFECTNET_TF_FAIL_AFTER_EPOCH": "1"})
    assert codes == [3, 3], outputs[0][-3000:]
    codes, outputs = _run_workers(config)
    for code, output in zip(codes, outputs):
        assert code == 0, output[-3000:]
    assert "2 replica(s)" in outputs[0] and "Resuming: True" in outputs[0]
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


def test_monitor_mode_maximises_scores_and_minimises_losses():
    from affectnet_tf.train import _monitor_mode

    for name in ("val_loss", "val_expression_loss", "val_valence_rmse"):
        assert _monitor_mode(name) == "min"
    for name in ("val_f1_macro", "val_accuracy", "val_arousal_ccc"):
        assert _monitor_mode(name) == "max"


def test_config_file_values_are_overridden_by_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": "vgg19", "epochs": 3, "batch-size": 8}))
    config = train_module.parse_config(["--config", str(path), "--epochs", "5"])
    assert config["model"] == "vgg19" and config["epochs"] == 5 and config["batch_size"] == 8
    assert config["task"] == "exp"  # default
    path.write_text(yaml.safe_dump({"epoch": 3}))
    with pytest.raises(ValueError, match="Unknown settings"):
        train_module.parse_config(["--config", str(path)])


def test_help_lists_groups_and_defaults(capsys):
    with pytest.raises(SystemExit):
        train_module.build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for group in ("Data", "Model", "Crowd", "Optimization", "Distribution", "Output"):
        assert f"{group}:" in text
    assert "(default: resnet50)" in text and "--crowd-layer" in text


def test_dataset_resolution():
    resolve = train_module.resolve_dataset
    base = train_module.DEFAULTS
    assert resolve({**base, "dataset": "affectnet_c25/set1"})[2:] == (
        ("set1", "train"),
        ("set1", "validation"),
    )
    assert resolve({**base, "dataset": "affectnet_c25/set1", "eval_split": "set2"})[2:] == (
        ("set1", None),
        ("set2", None),
    )
    assert resolve({**base, "dataset": "affectnet"})[:4] == (
        "affectnet",
        None,
        ("train", None),
        ("validation", None),
    )
    with pytest.raises(ValueError, match="needs a set"):
        resolve({**base, "dataset": "affectnet_c25"})


def test_bad_settings(tiny_config, capsys):
    with pytest.raises(ValueError, match="known models: .*resnet50"):
        train(tiny_config(model="resnet18"))
    with pytest.raises(ValueError, match="crowd answers"):
        train(tiny_config(dataset="affectnet", target="cv"))
    with pytest.raises(ValueError, match="Unknown settings"):
        train(tiny_config(learning_rat=0.1))
    assert train_module.main(["--model", "resnet18"]) == 2
    assert "known models" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_module.parse_config(["--task", "emotion"])


def test_finished_run_is_not_overwritten_by_accident(tiny_config):
    config = tiny_config(steps_per_epoch=1)
    train(config)
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
    answers = affectnet_tf.data.crowd_answers("synthetic_faces/tiny", "train", data_dir=data_dir)
    table = affectnet_tf.data.load_label_table(builder, "train")
    assert answers.shape == table["crowd_expression"].shape
    np.testing.assert_array_equal(answers, table["crowd_expression"])
    seven = affectnet_tf.data.crowd_answers(
        "synthetic_faces/tiny", "train", num_classes=7, data_dir=data_dir
    )
    # 7 classes: contempt answers become no answers, images voted contempt are dropped
    blanked = {tuple(row) for row in np.where(answers == 7, -1, answers)}
    assert not (seven == 7).any() and 0 < len(seven) < len(answers)
    assert all(tuple(row) in blanked for row in seven)

    expected = crowd_layers.DawidSkene(num_classes=8, smoothing=1.0).fit(answers).confusions_
    config = {
        **DEFAULTS,
        "dataset": "synthetic_faces/tiny",
        "data_dir": str(data_dir),
        "target": "cv",
        "crowd_init": "ds",
        "model": "compact_cnn",
        "weights": None,
    }
    heads = ["expression"]
    start = _initial_confusions(config, heads, "synthetic_faces/tiny", "train", None, None)
    np.testing.assert_allclose(start, expected)
    assert (
        _initial_confusions({**config, "crowd_init": "diagonal"}, heads, "x", "y", None, None)
        is None
    )
    assert _initial_confusions({**config, "target": "mv"}, heads, "x", "y", None, None) is None
    with pytest.raises(ValueError, match="--crowd-init ds initialises a confusion crowd layer"):
        _initial_confusions(
            {**config, "crowd_layer": "MW", "crowd_init": "ds"}, heads, "x", "y", None, None
        )
    from_votes = _initial_confusions(
        {**config, "crowd_init": "mv"}, heads, "synthetic_faces/tiny", "train", None, None
    )
    np.testing.assert_allclose(
        from_votes, crowd_layers.majority_vote_confusions(answers, num_classes=8)
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
