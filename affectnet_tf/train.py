"""Training: ``train(config)`` and its command line ``python -m affectnet_tf.train``.

A run folder holds ``config.yaml`` (the resolved configuration), ``model.keras`` (the prediction
model: raw RGB ``uint8`` images of any size in, metadata inside), ``crowd_model.keras`` and
``annotators.npz`` for crowd runs (``--target cv``), ``history.csv``, TensorBoard logs in
``logs/``, ``best.weights.h5`` (the best epoch by ``--monitor``), and ``metrics.json`` and
``report/`` on the evaluation split (:func:`affectnet_tf.evaluate.evaluate_model`).

Fault tolerance: the same command started again (or with ``--resume``) continues after the
last finished epoch: ``keras.callbacks.BackupAndRestore`` for ``model.fit``, and a
``tf.train.CheckpointManager`` in the custom loop used for ``--strategy multi_worker`` (Keras 3
``model.fit`` does not run under ``MultiWorkerMirroredStrategy``, keras-team/keras#20585).
Only the chief writes the run folder; other workers write into temporary folders.
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf
import yaml

import crowd_layers
from affectnet_tf import data, metrics, models
from affectnet_tf import losses as losses_module
from affectnet_tf.backbones import BACKBONES, WeightsUnavailableError
from tfds_affectnet import AffectNetC25Config, AffectNetConfig, SyntheticFaces

__all__ = [
    "DEFAULTS",
    "build_parser",
    "parse_config",
    "resolve_dataset",
    "make_strategy",
    "train",
    "main",
]

_FAIL_AFTER_EPOCH_ENV = "AFFECTNET_TF_FAIL_AFTER_EPOCH"  # tests: kill the process after epoch N

# (group, flag, default, type or action, choices, help)
_FLAGS = [
    (
        "Data",
        "dataset",
        "affectnet_c25/set1",
        str,
        None,
        "TFDS dataset: affectnet_c25/<set> (trains on a held-out slice of the set), affectnet, "
        "or synthetic_faces/<config> (train / validation / test, evaluated against the truth)",
    ),
    ("Data", "split", None, str, None, "training split (default: inferred from --dataset)"),
    ("Data", "eval-split", None, str, None, "evaluation split (default: inferred)"),
    (
        "Data",
        "val-split",
        None,
        str,
        None,
        "validation split of the epochs (default: synthetic_faces' validation, else the "
        "evaluation split)",
    ),
    ("Data", "data-dir", None, str, None, "TFDS data folder"),
    ("Data", "manual-dir", None, str, None, "manual download folder (first preparation only)"),
    (
        "Data",
        "stored-image-size",
        None,
        int,
        None,
        "prepare/read a dataset configuration storing images of this side",
    ),
    (
        "Data",
        "validation-fraction",
        0.1,
        float,
        None,
        "held-out share of an affectnet_c25 set for evaluation",
    ),
    ("Data", "task", "exp", str, data.TASKS, "exp, aro, val, va or all"),
    (
        "Data",
        "target",
        "mv",
        str,
        ("mv", "cv", "soft", "ds", "original", "true", "mean", "median"),
        "training target",
    ),
    (
        "Data",
        "va-target",
        None,
        str,
        data.VA_TARGETS,
        "valence/arousal target (default: derived from --target)",
    ),
    ("Data", "num-classes", 8, int, (7, 8), "8 expressions, or 7 without contempt"),
    ("Data", "class-balanced", False, "bool", None, "resample to equal class frequencies"),
    ("Data", "augment", True, "bool", None, "training augmentation"),
    ("Model", "model", "resnet50", str, None, "backbone: " + ", ".join(BACKBONES)),
    ("Model", "weights", "imagenet", str, None, "imagenet, none, or a weights file"),
    ("Model", "image-size", None, int, None, "model input side (default: the backbone's)"),
    ("Model", "dropout", 0.2, float, None, "dropout before the heads"),
    (
        "Crowd",
        "crowd-layer",
        crowd_layers.DEFAULT_CROWD_METHOD,
        str,
        models.CROWD_LAYERS,
        "expression crowd layer for --target cv: pooled (Dawid-Skene likelihood of each "
        "image's answers), confusion, geocrowdnet, or a reference layer",
    ),
    (
        "Crowd",
        "crowd-init",
        "diagonal",
        str,
        ("diagonal", "ds", "mv"),
        "start of a confusion crowd layer (pooled, confusion, geocrowdnet): diagonal (the "
        "layer's own start), ds (Dawid-Skene's matrices of the training answers) or mv (the "
        "annotators' confusions against the vote distribution)",
    ),
    (
        "Crowd",
        "va-crowd-layer",
        "gaussian",
        str,
        models.VA_CROWD_LAYERS,
        "valence/arousal crowd layer for --target cv: gaussian (scale, bias and noise per "
        "annotator) or a reference connection",
    ),
    ("Optimization", "epochs", 10, int, None, "training epochs"),
    ("Optimization", "batch-size", 32, int, None, "global batch size (all replicas)"),
    ("Optimization", "learning-rate", 1e-3, float, None, "Adam learning rate"),
    ("Optimization", "schedule", "cosine", str, ("constant", "cosine"), "learning-rate schedule"),
    (
        "Optimization",
        "freeze-epochs",
        0,
        int,
        None,
        "epochs training the head only, the backbone frozen, before fine-tuning it",
    ),
    (
        "Optimization",
        "fine-tune-factor",
        0.1,
        float,
        None,
        "learning-rate factor after unfreezing the backbone",
    ),
    ("Optimization", "class-weights", False, "bool", None, "weight the loss by class"),
    ("Optimization", "label-smoothing", 0.0, float, None, "label smoothing of expression"),
    ("Optimization", "steps-per-epoch", None, int, None, "steps per epoch (default: one pass)"),
    ("Optimization", "monitor", "val_loss", str, None, "validation metric of the best epoch"),
    ("Optimization", "seed", 0, int, None, "random seed"),
    (
        "Distribution",
        "strategy",
        "auto",
        str,
        ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu"),
        "tf.distribute strategy",
    ),
    ("Distribution", "mixed-precision", False, "bool", None, "mixed_float16 (GPU) training"),
    ("Distribution", "jit-compile", False, "bool", None, "XLA compilation of the train step"),
    ("Output", "output-dir", "runs/run", str, None, "run folder"),
    (
        "Output",
        "resume",
        False,
        "bool",
        None,
        "continue an interrupted run (also automatic when its backup exists)",
    ),
    ("Output", "overwrite", False, "bool", None, "delete an existing run folder first"),
]

DEFAULTS = {flag.replace("-", "_"): default for _, flag, default, _, _, _ in _FLAGS}


def build_parser():
    """The argparse parser; every default is ``None`` so that set flags can be told apart."""
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.train",
        description="Train an expression / valence / arousal model on AffectNet or AffectNetC25.",
    )
    parser.add_argument("--config", help="YAML file of settings; flags override it")
    groups = {}
    for group, flag, default, kind, choices, help_text in _FLAGS:
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        if "(default:" not in help_text:
            help_text = f"{help_text} (default: {default})"
        if kind == "bool":
            groups[group].add_argument(
                f"--{flag}", action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            groups[group].add_argument(
                f"--{flag}", type=kind, choices=choices, default=None, help=help_text
            )
    return parser


def parse_config(argv=None):
    """Defaults, then the ``--config`` YAML, then the flags given: the resolved dict."""
    args = build_parser().parse_args(argv)
    config = dict(DEFAULTS)
    if args.config:
        with open(args.config) as stream:
            loaded = yaml.safe_load(stream) or {}
        loaded = {key.replace("-", "_"): value for key, value in loaded.items()}
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"Unknown settings in {args.config}: {unknown}")
        config.update(loaded)
    config.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    return config


def resolve_dataset(config):
    """``(name, tfds_config, train (split, subset), eval (split, subset))`` of a run."""
    parts = config["dataset"].split("/")
    base = parts[0]
    set_name = None
    if base == "affectnet_c25" and len(parts) > 1 and parts[-1].startswith("set"):
        set_name = parts.pop()
    if len(parts) > 2:
        raise ValueError(
            f"`dataset` must be NAME[/CONFIG]. Received: dataset={config['dataset']!r}"
        )
    config_name = parts[1] if len(parts) == 2 else None
    tfds_config = config_name
    if config.get("stored_image_size"):
        size = int(config["stored_image_size"])
        if base == "synthetic_faces":
            named = {c.name: c for c in SyntheticFaces.BUILDER_CONFIGS}
            if (config_name or "c25_dense") not in named:
                raise ValueError(
                    f"synthetic_faces has the configs {sorted(named)}. "
                    f"Received: dataset={config['dataset']!r}"
                )
            tfds_config = named[config_name or "c25_dense"].with_image_size(size)
        elif base == "affectnet_c25":
            tfds_config = AffectNetC25Config(
                name=f"{config_name or 'default'}_{size}",
                image_size=size,
                allow_missing=config_name == "subset",
            )
        else:
            tfds_config = AffectNetConfig(
                name=f"{config_name or 'emotions8'}_{size}",
                image_size=size,
                label_set=config_name or "emotions8",
            )
    split, eval_split = config.get("split"), config.get("eval_split")
    if base == "affectnet_c25":
        split = split or set_name
        if split is None:
            raise ValueError(
                "affectnet_c25 needs a set: --dataset affectnet_c25/set1 or --split set1. "
                f"Received: dataset={config['dataset']!r}"
            )
        if eval_split is None or eval_split == split:
            return base, tfds_config, (split, "train"), (split, "validation")
        return base, tfds_config, (split, None), (eval_split, None)
    if base == "synthetic_faces":
        return base, tfds_config, (split or "train", None), (eval_split or "test", None)
    return base, tfds_config, (split or "train", None), (eval_split or "validation", None)


def _validation_split(config, eval_split, eval_subset):
    """The ``(split, subset)`` validated on after each epoch: ``--val-split``, synthetic_faces'
    validation split, or else the evaluation split."""
    if config.get("val_split"):
        return config["val_split"], None
    if config["dataset"].split("/")[0] == "synthetic_faces":
        return "validation", None
    return eval_split, eval_subset


def _tpu_available():
    return bool(os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")) or any(
        name.startswith("accel") for name in (os.listdir("/dev") if os.path.isdir("/dev") else [])
    )


def make_strategy(name="auto"):
    """The ``tf.distribute`` strategy for ``--strategy``.

    ``auto``: TPU if one is found, multi-worker if ``TF_CONFIG`` is set, mirrored on more than
    one GPU, else the default strategy. ``mirrored`` without GPUs mirrors over the logical CPU
    devices.
    """
    if name == "auto":
        if _tpu_available():
            name = "tpu"
        elif os.environ.get("TF_CONFIG"):
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        return tf.distribute.MirroredStrategy(
            devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        )
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy. Received: strategy={name!r}")


def _is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return (
        task_type is None
        or task_type == "chief"
        or (
            task_type == "worker"
            and task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict()
        )
    )


def _losses(config, heads, info):
    """Per-head Keras losses for the target (masked where a label can be missing)."""
    crowd = config["target"] == "cv"
    crowd_losses = models.crowd_losses(config["crowd_layer"], config["va_crowd_layer"])
    va_target = info.va_target
    weights = None
    if config["class_weights"]:
        weights = [info.class_weights[k] for k in range(config["num_classes"])]
    result = {}
    for head in heads:
        if head == "expression":
            if crowd:
                result[head] = crowd_losses[head]
            elif config["target"] in ("soft", "ds"):
                result[head] = losses_module.MaskedCategoricalCrossentropy(
                    label_smoothing=config["label_smoothing"], class_weights=weights
                )
            else:
                result[head] = losses_module.MaskedSparseCategoricalCrossentropy(
                    config["num_classes"],
                    label_smoothing=config["label_smoothing"],
                    class_weights=weights,
                )
        elif crowd or va_target == "cv":
            result[head] = crowd_losses[head]
        else:
            result[head] = losses_module.MaskedMeanSquaredError()
    return result


def _schedule(config, learning_rate, steps):
    if config["schedule"] == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, max(1, steps))
    return learning_rate


def _monitor_mode(monitor):
    """``max`` for scores (accuracy, F1, CCC ...), ``min`` for losses and errors."""
    scores = ("acc", "f1", "ccc", "corr", "sagr", "auc", "kappa", "alpha")
    return "max" if any(score in monitor for score in scores) else "min"


def _compile(model, config, losses, learning_rate, steps):
    single = len(losses) == 1
    loss = next(iter(losses.values())) if single else losses
    metric_list = {}
    if "expression" in losses and config["target"] in ("mv", "original", "true"):
        if config["strategy"] == "tpu":  # the package's streaming metrics keep float64 sums
            metric_list["expression"] = ["sparse_categorical_accuracy"]
        else:
            k = int(config["num_classes"])
            metric_list["expression"] = [metrics.MaskedAccuracy(k), metrics.MacroF1(k)]
    for head in ("valence", "arousal"):
        crowd = config["target"] == "cv" or config.get("va_target") == "cv"
        if head in losses and not crowd and config["strategy"] != "tpu":
            metric_list[head] = [metrics.ConcordanceCorrelation()]
    model.compile(
        optimizer=keras.optimizers.Adam(_schedule(config, learning_rate, steps)),
        loss=loss,
        metrics=(next(iter(metric_list.values()), None) if single else metric_list) or None,
        jit_compile=bool(config["jit_compile"]),
    )


def _tensorboard_installed():
    """TensorBoard logs need the ``tensorboard`` package; without it they are skipped."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        print("tensorboard is not installed: no TensorBoard logs (pip install tensorboard).")
        return False
    return True


class _FailAfterEpoch(keras.callbacks.Callback):
    """Tests: ends the process at once after epoch N, as a kill would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = int(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            sys.stdout.flush()
            os._exit(3)


def _fit(strategy, built, config, losses, train_ds, val_ds, steps, run_dir, work_dir):
    """``model.fit`` with BackupAndRestore, in one or two phases (frozen backbone first)."""
    model = built.training_model
    epochs, freeze = int(config["epochs"]), int(config["freeze_epochs"])
    phases = []
    if 0 < freeze < epochs:
        phases.append(("frozen", 0, freeze, config["learning_rate"], False))
        lr = config["learning_rate"] * config["fine_tune_factor"]
        phases.append(("fine_tune", freeze, epochs, lr, True))
    else:
        phases.append(("train", 0, epochs, config["learning_rate"], True))
    history = {}
    for phase, start, stop, learning_rate, trainable in phases:
        done = os.path.join(work_dir, f"{phase}.done.weights.h5")
        if os.path.exists(done):  # finished before an interruption
            model.load_weights(done)
            continue
        built.backbone.trainable = trainable
        with strategy.scope():
            _compile(model, config, losses, learning_rate, steps * (stop - start))
        callbacks = [
            keras.callbacks.BackupAndRestore(os.path.join(work_dir, f"backup_{phase}")),
            keras.callbacks.TerminateOnNaN(),
            keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True),
            keras.callbacks.ModelCheckpoint(
                os.path.join(run_dir, "best.weights.h5"),
                monitor=config["monitor"],
                mode=_monitor_mode(config["monitor"]),
                save_best_only=True,
                save_weights_only=True,
            ),
        ]
        if _tensorboard_installed():
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")))
        if os.environ.get(_FAIL_AFTER_EPOCH_ENV):
            callbacks.append(_FailAfterEpoch(os.environ[_FAIL_AFTER_EPOCH_ENV]))
        fitted = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=stop,
            initial_epoch=start,
            steps_per_epoch=steps,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
        )
        for key, values in fitted.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        model.save_weights(done)
    built.backbone.trainable = True
    return history


def _validation_loss(model, losses, heads, val_ds):
    """Mean per-image loss of ``model`` on ``val_ds`` (summed over heads), computed locally."""
    total, count = 0.0, 0
    for images, targets in val_ds:
        outputs = model(images, training=False)
        if len(heads) == 1:
            outputs, targets = {heads[0]: outputs}, {heads[0]: targets}
        per_sample = sum(losses[head](targets[head], outputs[head]) for head in heads)
        total += float(tf.reduce_sum(per_sample))
        count += int(tf.shape(images)[0])
    return total / max(count, 1)


def _custom_loop(
    strategy, built, config, losses, train_ds, val_ds, steps, run_dir, work_dir, restore_dir
):
    """Training loop for ``MultiWorkerMirroredStrategy`` (and any strategy): ``strategy.run``
    with ``tf.GradientTape``, a SUM-reduced loss divided by the global batch, and a
    ``tf.train.CheckpointManager`` for fault tolerance. After each epoch the validation loss is
    computed (on every worker, locally), the best weights are kept in ``best.weights.h5``,
    ``history.csv`` gets ``epoch,loss,val_loss`` and TensorBoard (when installed) both losses."""
    model = built.training_model
    epochs = int(config["epochs"])
    global_batch = int(config["batch_size"])
    heads = list(losses)
    with strategy.scope():
        optimizer = keras.optimizers.Adam(
            _schedule(config, config["learning_rate"], steps * epochs)
        )
        optimizer.build(model.trainable_variables)
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        best_var = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
    for loss in losses.values():
        loss.reduction = "none"
    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=optimizer, epoch=epoch_var, best_val_loss=best_var
    )
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(work_dir, "ckpt"), 1)
    # every worker restores the chief's checkpoint (the others save into temporary folders)
    latest = tf.train.latest_checkpoint(os.path.join(restore_dir, "ckpt"))
    if latest:
        checkpoint.restore(latest)
    dist_ds = strategy.experimental_distribute_dataset(train_ds)
    iterator = iter(dist_ds)

    def replica_step(images, targets):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            if len(heads) == 1:
                outputs, targets = {heads[0]: outputs}, {heads[0]: targets}
            total = 0.0
            for head in heads:
                per_sample = losses[head](targets[head], outputs[head])
                total += tf.nn.compute_average_loss(per_sample, global_batch_size=global_batch)
            if model.losses:
                total += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        variables = model.trainable_variables
        grads = tape.gradient(total, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return total

    @tf.function
    def train_step(iterator):
        per_replica = strategy.run(replica_step, args=next(iterator))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    history = {}
    fail_after = os.environ.get(_FAIL_AFTER_EPOCH_ENV)
    writer = (
        tf.summary.create_file_writer(os.path.join(run_dir, "logs"))
        if _tensorboard_installed()
        else None
    )
    for epoch in range(int(epoch_var.numpy()), epochs):
        print(f"Epoch {epoch + 1}/{epochs}")
        progress = keras.utils.Progbar(steps)
        total = 0.0
        for step in range(steps):
            loss = float(train_step(iterator))
            total += loss
            progress.update(step + 1, [("loss", loss)])
        val_loss = _validation_loss(model, losses, heads, val_ds)
        print(f"loss {total / steps:.4f} - val_loss {val_loss:.4f}")
        history.setdefault("loss", []).append(total / steps)
        history.setdefault("val_loss", []).append(val_loss)
        if val_loss < float(best_var.numpy()):
            best_var.assign(val_loss)
            model.save_weights(os.path.join(run_dir, "best.weights.h5"))
        if writer is not None:
            with writer.as_default():
                tf.summary.scalar("loss", total / steps, step=epoch)
                tf.summary.scalar("val_loss", val_loss, step=epoch)
            writer.flush()
        epoch_var.assign(epoch + 1)
        manager.save()
        with open(os.path.join(run_dir, "history.csv"), "a") as stream:
            if epoch == 0:
                stream.write("epoch,loss,val_loss\n")
            stream.write(f"{epoch},{total / steps},{val_loss}\n")
        if fail_after and epoch + 1 == int(fail_after):
            sys.stdout.flush()
            os._exit(3)
    return history


def _eval_targets(config):
    """The targets of the final evaluation: the truth on synthetic_faces, else the crowd's
    majority vote / mean (or the single label for ``original`` and ``true`` runs)."""
    if config["dataset"].split("/")[0] == "synthetic_faces":
        return "true", "true"
    target = config["target"]
    exp_target = target if target in ("original", "true") else "mv"
    va = config.get("va_target") or target
    va_target = va if va in ("original", "true", "median") else "mean"
    if target in ("mean", "median"):
        exp_target = "mv"
    return exp_target, va_target


def _plain(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def train(config):
    """Trains a model as ``config`` says (keys of :data:`DEFAULTS`; missing keys default).

    Returns:
        A dict: ``run_dir``, ``metrics`` (also in ``metrics.json``), ``info`` (the training
        data's :class:`affectnet_tf.DatasetInfo` as a dict) and ``history``.
    """
    config = {**DEFAULTS, **{k.replace("-", "_"): v for k, v in config.items()}}
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown settings: {unknown}. Known: {sorted(DEFAULTS)}")
    if config["model"] not in BACKBONES:
        raise ValueError(
            f"Unknown model {config['model']!r}; known models: {', '.join(BACKBONES)}. "
            f"Received: model={config['model']!r}"
        )
    if str(config["weights"]).lower() == "none":
        config["weights"] = None
    keras.utils.set_random_seed(int(config["seed"]))
    previous_policy = keras.mixed_precision.global_policy().name
    if config["mixed_precision"]:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return _train(config)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(config):
    strategy = make_strategy(config["strategy"])
    chief = _is_chief(strategy)
    output_dir = os.path.abspath(config["output_dir"])
    if config["overwrite"] and chief and os.path.isdir(output_dir):
        shutil.rmtree(output_dir)
    finished = os.path.exists(os.path.join(output_dir, "model.keras"))
    if finished and not os.path.isdir(os.path.join(output_dir, "backup")):
        raise ValueError(
            f"The run folder {output_dir} holds a finished run; choose another --output-dir or "
            f"pass --overwrite. Received: output_dir={config['output_dir']!r}"
        )
    run_dir = output_dir if chief else tempfile.mkdtemp(prefix="affectnet_tf_worker_")
    work_dir = os.path.join(run_dir, "backup")
    resuming = os.path.isdir(os.path.join(output_dir, "backup"))
    if config["resume"] and not resuming and chief:
        print(f"--resume: no backup in {work_dir}; starting a new run.")

    name, tfds_config, (split, subset), (eval_split, eval_subset) = resolve_dataset(config)
    common = dict(
        task=config["task"],
        num_classes=int(config["num_classes"]),
        data_dir=config["data_dir"],
        manual_dir=config["manual_dir"],
        config=tfds_config if not isinstance(tfds_config, str) else None,
        validation_fraction=config["validation_fraction"],
        batch_size=int(config["batch_size"]),
        seed=int(config["seed"]),
        return_info=True,
    )
    if isinstance(tfds_config, str):
        name = f"{name}/{tfds_config}"
    targets = dict(target=config["target"], va_target=config["va_target"])
    train_ds, info = data.make_dataset(
        name,
        split,
        subset=subset,
        training=True,
        augment=bool(config["augment"]),
        class_balanced=bool(config["class_balanced"]),
        drop_remainder=config["strategy"] == "tpu",
        image_size=_image_size(config),
        **targets,
        **common,
    )
    val_split, val_subset = _validation_split(config, eval_split, eval_subset)
    val_ds, _ = data.make_dataset(
        name, val_split, subset=val_subset, image_size=_image_size(config), **targets, **common
    )
    exp_target, va_target = _eval_targets(config)
    eval_ds, eval_info = data.make_dataset(
        name,
        eval_split,
        subset=eval_subset,
        image_size=_image_size(config),
        target=exp_target,
        va_target=va_target,
        **common,
    )
    # static image shapes (make_dataset leaves them unknown when the stored size is the model
    # size): the model then skips its resize, whose kernel XLA cannot compile
    size = _image_size(config)
    train_ds, val_ds, eval_ds = (
        dataset.map(lambda x, y: (tf.ensure_shape(x, [None, size, size, 3]), y))
        for dataset in (train_ds, val_ds, eval_ds)
    )
    steps = config["steps_per_epoch"] or max(1, math.ceil(info.num_examples / config["batch_size"]))
    heads = list(models.TASK_HEADS[config["task"]])
    metadata = {
        "dataset": config["dataset"],
        "va_target": info.va_target,
        "training_examples": info.num_examples,
    }
    with strategy.scope():
        built = models.build_model(
            config["model"],
            task=config["task"],
            num_classes=int(config["num_classes"]),
            target=config["target"],
            num_annotators=info.num_annotators,
            crowd_layer=config["crowd_layer"],
            va_crowd_layer=config["va_crowd_layer"],
            weights=config["weights"],
            image_size=_image_size(config),
            dropout=config["dropout"],
            metadata=metadata,
            init_confusions=_initial_confusions(config, heads, name, split, subset, tfds_config),
        )
    losses = _losses(config, heads, info)
    os.makedirs(work_dir, exist_ok=True)
    resolved = {key: _plain(value) for key, value in config.items()}
    if chief:
        with open(os.path.join(run_dir, "config.yaml"), "w") as stream:
            yaml.safe_dump(resolved, stream, sort_keys=False)
        print(
            f"Training {config['model']} on {info.num_examples} images of {name} {split}"
            f"{f' ({subset})' if subset else ''}; evaluating on {eval_info.num_examples} of "
            f"{eval_split}{f' ({eval_subset})' if eval_subset else ''}; "
            f"{strategy.num_replicas_in_sync} replica(s). Resuming: {resuming}"
        )
    train_ds = train_ds.repeat()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        history = _custom_loop(
            strategy,
            built,
            config,
            losses,
            train_ds,
            val_ds,
            steps,
            run_dir,
            work_dir,
            restore_dir=os.path.join(output_dir, "backup"),
        )
    else:
        history = _fit(strategy, built, config, losses, train_ds, val_ds, steps, run_dir, work_dir)
    best = os.path.join(run_dir, "best.weights.h5")
    if os.path.exists(best):
        built.training_model.load_weights(best)
    if chief:
        built.prediction_model.save(os.path.join(run_dir, "model.keras"))
        if config["target"] == "cv":
            built.training_model.save(os.path.join(run_dir, "crowd_model.keras"))
            np.savez(
                os.path.join(run_dir, "annotators.npz"),
                **models.crowd_layer_weights(built.training_model),
            )
    # metrics.json and report/ (the chief only; other workers compute the metrics alone).
    # Imported here so that `python -m affectnet_tf.evaluate` / `.agreement` run cleanly.
    from affectnet_tf import evaluate

    result_metrics = evaluate.evaluate_model(
        built.prediction_model,
        eval_ds,
        output_dir=run_dir if chief else None,
        dataset_options={
            "name": name,
            "split": eval_split,
            "subset": eval_subset,
            "image_size": _image_size(config),
            "batch_size": int(config["batch_size"]),
            "data_dir": config["data_dir"],
            "config": common["config"],
            "validation_fraction": config["validation_fraction"],
        },
        split=eval_split,
        subset=eval_subset,
        extra={"dataset": name, "target": exp_target},
    )
    if chief:
        shutil.rmtree(work_dir, ignore_errors=True)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "run_dir": output_dir,
        "metrics": result_metrics,
        "info": info.to_dict(),
        "history": history,
        "chief": chief,
    }


def _initial_confusions(config, heads, name, split, subset, tfds_config):
    """Dawid-Skene's confusion matrices of the training answers, to start the confusion layer.

    ``--crowd-init ds``: the crowd layer starts where the classic aggregator ends instead of at a
    generic diagonal (one pseudo-answer per cell keeps every logit finite); ``--crowd-init mv``:
    from each annotator's confusions against the vote distribution.
    """
    init = config.get("crowd_init") or "diagonal"
    if config["target"] != "cv" or "expression" not in heads or init == "diagonal":
        return None
    if config["crowd_layer"] not in models.CONFUSION_CROWD_LAYERS:
        raise ValueError(
            f"--crowd-init {init} initialises a confusion crowd layer "
            f"({', '.join(models.CONFUSION_CROWD_LAYERS)}) only. "
            f"Received: crowd_layer={config['crowd_layer']!r}"
        )
    answers = data.crowd_answers(
        name,
        split,
        num_classes=int(config["num_classes"]),
        data_dir=config["data_dir"],
        manual_dir=config["manual_dir"],
        config=tfds_config if not isinstance(tfds_config, str) else None,
        subset=subset,
        validation_fraction=config["validation_fraction"],
    )
    if init == "mv":
        return crowd_layers.majority_vote_confusions(
            answers, num_classes=int(config["num_classes"])
        )
    aggregator = crowd_layers.DawidSkene(num_classes=int(config["num_classes"]), smoothing=1.0)
    return aggregator.fit(answers).confusions_


def _image_size(config):
    if config["image_size"]:
        return int(config["image_size"])
    return BACKBONES[config["model"]].default_size


def main(argv=None):
    """The command line: parses the flags and calls :func:`train`."""
    try:
        config = parse_config(argv)
        result = train(config)
    except (ValueError, WeightsUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"run_dir": result["run_dir"], "metrics": result["metrics"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
