"""Training: ``train(config)`` and its command line ``python -m affectnet_tf.train``.

A run folder holds ``config.yaml`` (every setting, and which images played which role),
``model.keras`` (the prediction model: raw RGB ``uint8`` images of any size in, metadata
inside), ``crowd_model.keras`` and ``annotators.npz`` when a head learns from the crowd
(``cv``), ``history.csv``, TensorBoard logs in ``logs/``, ``best.weights.h5`` (the best epoch
by ``--monitor`` on the selection data), and ``metrics.json`` and ``report/`` on the test data
(:func:`affectnet_tf.evaluate.evaluate_model`).

The recipe (:func:`train`): resolve the settings (:mod:`affectnet_tf.training.config`) and the three
disjoint data roles, check the run folder (:mod:`affectnet_tf.training.run_folder`: the same command
resumes, other settings are an error), build the datasets and the model, train
(:mod:`affectnet_tf.training.fit_loop`, or :mod:`affectnet_tf.training.worker_loop` for several machines), keep
the best epoch, evaluate it on the test data once. ``--folds K`` repeats it per fold.

Reproducibility: ``--seed`` seeds the initial weights (``keras.utils.set_random_seed``), the
order of the training images and the augmentation; epoch ``e``'s batches depend on
``(seed, e)`` only, so a resumed run sees what an uninterrupted one saw. On one machine and
one device a rerun gives the same weights; ``--deterministic`` also makes TensorFlow's ops
deterministic (GPU kernels included). Another machine, device count or library version may
give other figures within their seed-to-seed spread.
"""

import functools
import json
import math
import os
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

import crowd_layers
from affectnet_tf import evaluate
from affectnet_tf.data import pipeline as data
from affectnet_tf.files import write_atomically, write_json
from affectnet_tf.modeling import losses as losses_module
from affectnet_tf.modeling import models
from affectnet_tf.modeling.backbones import WeightsUnavailableError
from affectnet_tf.training import fit_loop, worker_loop
from affectnet_tf.training.config import (
    DEFAULTS,
    RunConfig,
    build_parser,
    data_roles,
    eval_targets,
    parse_config,
)
from affectnet_tf.training.distribute import is_chief, make_strategy
from affectnet_tf.training.run_folder import prepare_run_folder, read_run_config, write_run_config

__all__ = [
    "DEFAULTS",
    "RunConfig",
    "RunDatasets",
    "build_parser",
    "parse_config",
    "initial_confusions",
    "head_losses",
    "train",
    "cross_validate",
    "main",
]


def head_losses(config, heads, info=None):
    """Per-head Keras losses, each from its head's own target (masked where a label can be
    missing). ``info`` (the training data's :class:`affectnet_tf.DatasetInfo`) is needed for
    ``class_weights``."""
    targets = config.head_targets
    crowd_losses = models.crowd_losses(config.crowd_layer, config.va_crowd_layer)
    weights = None
    if config.class_weights:
        weights = [info.class_weights[k] for k in range(config.num_classes)]
    result = {}
    for head in heads:
        if targets[head] == "cv":
            result[head] = crowd_losses[head]
        elif head != "expression":
            result[head] = losses_module.MaskedMeanSquaredError()
        elif targets[head] in ("soft", "ds"):
            result[head] = losses_module.MaskedCategoricalCrossentropy(
                label_smoothing=config.label_smoothing, class_weights=weights
            )
        else:
            result[head] = losses_module.MaskedSparseCategoricalCrossentropy(
                config.num_classes, label_smoothing=config.label_smoothing, class_weights=weights
            )
    return result


class RunDatasets:
    """The data of a run: ``train(start, stop)`` (the training batches of those epochs), the
    ``selection`` batches, the infos of all three roles (the test images are read by the
    evaluation), and the record of the roles."""

    def __init__(self, config, roles, replicas=1):
        self.config, self.roles = config, roles
        exp_target, va_target = eval_targets(config)
        self.eval_targets = {"target": exp_target, "va_target": va_target}
        training = dict(target=config.target, va_target=config.va_target)
        self._train_options = dict(
            training=True,
            augment=config.augment,
            class_balanced=config.class_balanced,
            # Keras and tf.distribute fail on a last batch split unequally over replicas: a
            # multi-replica run skips the few images of a partial training batch (a new draw
            # each epoch) and pads its validation batches with images marked missing
            drop_remainder=replicas > 1 or config.strategy == "tpu",
            seed=config.seed,
            **training,
        )
        _, self.train_info = self._make(roles.train, epochs=(0, 1), **self._train_options)
        self.selection, self.selection_info = self._make(
            roles.selection, pad_to_multiple=replicas, **training
        )
        _, self.test_info = self._make(roles.test, **self.eval_targets)
        batches = self.train_info.num_examples / config.batch_size
        drop = self._train_options["drop_remainder"]
        if drop and batches < 1:
            raise ValueError(
                f"{self.train_info.num_examples} training images make no full batch of "
                f"--batch-size {config.batch_size}, and a run on {replicas} replicas (or a TPU) "
                "trains on full batches only: lower --batch-size."
            )
        per_pass = math.floor(batches) if drop else math.ceil(batches)
        self.steps = int(config.steps_per_epoch or max(1, per_pass))

    def _make(self, role, **kwargs):
        config = self.config
        size = config.resolved_image_size
        dataset, info = data.make_dataset(
            self.roles.dataset_name,
            role.split,
            subset=role.subset,
            partition=self.roles.partition_of(role, config.partition),
            task=config.task,
            num_classes=config.num_classes,
            data_dir=config.data_dir,
            manual_dir=config.manual_dir,
            config=self.roles.builder_config,
            batch_size=config.batch_size,
            image_size=size,
            ds_convergence=config.ds_convergence,
            return_info=True,
            **kwargs,
        )
        # static image shapes: the model then skips its resize, whose kernel XLA cannot compile
        dataset = dataset.map(lambda x, y: (tf.ensure_shape(x, [None, size, size, 3]), y))
        return dataset, info

    def train(self, start, stop):
        dataset, _ = self._make(
            self.roles.train,
            epochs=(start, stop),
            steps_per_epoch=self.steps,
            **self._train_options,
        )
        return dataset

    def check_disjoint(self):
        """Raises ``ValueError`` if two roles share an image (by file name)."""
        names = {
            "train": self.train_info.file_names,
            "selection": self.selection_info.file_names,
            "test": self.test_info.file_names,
        }
        sets = {role: set(values) for role, values in names.items()}
        for first, second in (("train", "selection"), ("train", "test"), ("selection", "test")):
            shared = sets[first] & sets[second]
            if shared:
                raise ValueError(
                    f"The {first} and {second} data share {len(shared)} images (e.g. "
                    f"{sorted(shared)[0]!r}): {first}={getattr(self.roles, first)}, "
                    f"{second}={getattr(self.roles, second)}. Choose disjoint roles."
                )

    def record(self):
        """Split, subset, image count and file-name hash of each role (config.yaml,
        metrics.json)."""
        partition = self.config.partition
        record = {}
        for role_name, info in (
            ("train", self.train_info),
            ("selection", self.selection_info),
            ("test", self.test_info),
        ):
            role = getattr(self.roles, role_name)
            entry = {
                "split": role.split,
                "subset": role.subset,
                "images": info.num_examples,
                "file_names_sha256": info.file_names_sha256,
                "tied_majority_votes": info.tied_items,
                "left_out": info.dropped,  # images of the role without the needed labels
            }
            if role.subset is not None:
                cut = self.roles.partition_of(role, partition)
                entry["cut"] = {
                    "selection": cut.selection,
                    "test": cut.test,
                    "seed": cut.seed,
                    "folds": cut.folds,
                    "fold": cut.fold if cut.folds else None,
                }
            record[role_name] = entry
        return record


def initial_confusions(config, roles):
    """Start of a confusion crowd layer: ``--crowd-init ds`` from Dawid-Skene's confusion
    matrices of the training answers (one pseudo-answer per cell keeps every logit finite),
    ``mv`` from each annotator's confusions against the vote distribution."""
    if config.crowd_init == "diagonal" or "expression" not in config.crowd_heads:
        return None
    if config.crowd_layer not in models.CONFUSION_CROWD_LAYERS:
        raise ValueError(
            f"--crowd-init {config.crowd_init} initialises a confusion crowd layer "
            f"({', '.join(models.CONFUSION_CROWD_LAYERS)}) only. "
            f"Received: crowd_layer={config.crowd_layer!r}"
        )
    answers = data.crowd_answers(
        roles.dataset_name,
        roles.train.split,
        num_classes=config.num_classes,
        data_dir=config.data_dir,
        manual_dir=config.manual_dir,
        config=roles.builder_config,
        subset=roles.train.subset,
        partition=roles.partition_of(roles.train, config.partition),
    )
    if config.crowd_init == "mv":
        return crowd_layers.majority_vote_confusions(answers, num_classes=config.num_classes)
    aggregator = crowd_layers.DawidSkene(num_classes=config.num_classes, smoothing=1.0)
    return aggregator.fit(answers).confusions_


def train(config):
    """Trains a model as ``config`` says (a :class:`RunConfig` or a dict of its fields; missing
    fields default). With ``folds`` and no ``fold``, runs every fold
    (:func:`cross_validate`).

    Returns:
        A dict: ``run_dir``, ``metrics`` (also in ``metrics.json``), ``info`` (the training
        data's :class:`affectnet_tf.DatasetInfo` as a dict), ``history``, ``data_roles`` and
        ``seconds`` (where the time went: preparation, training with its steps and
        validation, evaluation).
    """
    config = RunConfig.from_dict(config)
    if config.folds is not None and config.fold is None:
        return cross_validate(config)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    previous_policy = keras.mixed_precision.global_policy().name
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return _train(config)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(config):
    began = time.perf_counter()
    strategy = make_strategy(config.strategy)
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if multi_worker:
        worker_loop.check_config(config)
    roles = data_roles(config)
    folder = prepare_run_folder(config, chief=is_chief(strategy))
    datasets = RunDatasets(config, roles, strategy.num_replicas_in_sync)
    datasets.check_disjoint()
    info = datasets.train_info
    heads = list(models.TASK_HEADS[config.task])
    with strategy.scope():
        built = models.build_model(
            config.model,
            task=config.task,
            num_classes=config.num_classes,
            target=config.target,
            va_target=config.head_targets["valence"],
            num_annotators=info.num_annotators,
            crowd_layer=config.crowd_layer,
            va_crowd_layer=config.va_crowd_layer,
            weights=config.weights,
            image_size=config.resolved_image_size,
            dropout=config.dropout,
            metadata={
                "dataset": config.dataset,
                "va_target": info.va_target,
                "training_examples": info.num_examples,
            },
            init_confusions=initial_confusions(config, roles),
        )
    losses = head_losses(config, heads, info)
    roles_record = datasets.record()
    os.makedirs(folder.work_dir, exist_ok=True)
    if folder.chief:
        write_run_config(folder.run_dir, config, roles_record)
        _print_summary(config, datasets, strategy, folder.resuming)
    prepared = time.perf_counter()
    loop = fit_loop.fit_phases
    if multi_worker:  # model.fit does not run there; every worker restores the chief's state
        loop = functools.partial(worker_loop.train_custom_loop, restore_dir=folder.restore_dir)
    history = loop(
        strategy,
        built,
        config,
        losses,
        datasets.train,
        datasets.selection,
        datasets.steps,
        folder.run_dir,
        folder.work_dir,
    )
    trained = time.perf_counter()
    best = os.path.join(folder.run_dir, "best.weights.h5")
    if os.path.exists(best):
        built.training_model.load_weights(best)
    if folder.chief:
        write_atomically(os.path.join(folder.run_dir, "model.keras"), built.prediction_model.save)
        if config.crowd_heads:
            write_atomically(
                os.path.join(folder.run_dir, "crowd_model.keras"), built.training_model.save
            )
            annotators = models.crowd_layer_weights(built.training_model)
            write_atomically(
                os.path.join(folder.run_dir, "annotators.npz"),
                lambda path: _save_npz(path, annotators),
            )
    test = roles.test
    # the model runs once over the test images; every section of the report comes from that
    result_metrics = evaluate.evaluate_model(
        built.prediction_model,
        None,
        output_dir=folder.run_dir if folder.chief else None,
        dataset_options={
            "name": roles.dataset_name,
            "split": test.split,
            "subset": test.subset,
            "partition": roles.partition_of(test, config.partition),
            "image_size": config.resolved_image_size,
            "batch_size": config.batch_size,
            "data_dir": config.data_dir,
            "manual_dir": config.manual_dir,
            "config": roles.builder_config,
            **datasets.eval_targets,
        },
        split=test.split,
        subset=test.subset,
        report=config.report,
        extra={
            "dataset": roles.dataset_name,
            "target": datasets.eval_targets["target"],
            "data_roles": roles_record,
        },
    )
    # the backup goes last: a run killed before this point resumes and finishes
    shutil.rmtree(folder.work_dir if folder.chief else folder.run_dir, ignore_errors=True)
    fit_seconds = trained - prepared
    epoch_seconds = sum(history.get("train_seconds", [])) or None
    validation_seconds = sum(history.get("val_seconds", [])) or None
    return {
        "seconds": {
            "preparation": prepared - began,  # data, model, run folder
            "training": fit_seconds,  # everything in the loop, validation included
            "training_steps": epoch_seconds,  # of that, the training steps
            "validation": validation_seconds,  # of that, validating after each epoch
            "evaluation": time.perf_counter() - trained,  # saving, test metrics, report
        },
        "run_dir": folder.output_dir,
        "metrics": result_metrics,
        "info": info.to_dict(),
        "history": history,
        "data_roles": roles_record,
        "chief": folder.chief,
    }


def _save_npz(path, arrays):
    with open(path, "wb") as stream:  # a file object: np.savez adds no ".npz" to the name
        np.savez(stream, **arrays)


def _print_summary(config, datasets, strategy, resuming):
    roles = datasets.roles
    infos = {
        "train": datasets.train_info,
        "selection": datasets.selection_info,
        "test": datasets.test_info,
    }
    counts = ", ".join(
        f"{name} {info.num_examples} ({getattr(roles, name)})" for name, info in infos.items()
    )
    ties = sum(info.tied_items for info in infos.values())
    print(
        f"Training {config.model} on {roles.dataset_name}: {counts}; "
        f"{strategy.num_replicas_in_sync} replica(s); "
        f"{'resuming' if resuming else 'new run'} in {os.path.abspath(config.output_dir)}."
    )
    for name, info in infos.items():
        if info.dropped:
            print(f"Left out of the {name} data (no usable label), by reason: {info.dropped}")
    if ties:
        print(
            "Majority-vote ties broken by file name: "
            + ", ".join(f"{name} {info.tied_items}" for name, info in infos.items())
            + " images."
        )


def _numbers(metrics, prefix=""):
    """The numeric leaves of a metrics dict as ``{"head/metric": value}``."""
    result = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            result.update(_numbers(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            result[name] = float(value)
    return result


def cross_validate(config):
    """``--folds K``: trains fold ``k`` (its test set) in ``RUN/fold_<k>`` for every ``k``
    and writes the mean and the sample standard deviation of each metric over the folds to
    ``RUN/metrics.json``. An interrupted cross-validation resumes fold by fold."""
    config = RunConfig.from_dict(config)
    output_dir = os.path.abspath(config.output_dir)
    parent = prepare_run_folder(config, finished_marker="metrics.json")
    os.makedirs(parent.work_dir, exist_ok=True)
    write_run_config(output_dir, config)
    results = []
    for fold in range(config.folds):
        fold_dir = os.path.join(output_dir, f"fold_{fold}")
        fold_config = RunConfig.from_dict(
            {
                **config.to_dict(),
                "fold": fold,
                "output_dir": fold_dir,
                "overwrite": False,
                "resume": False,
            }
        )
        done = os.path.join(fold_dir, "metrics.json")
        if os.path.exists(done) and not os.path.isdir(os.path.join(fold_dir, "backup")):
            if read_run_config(os.path.join(fold_dir, "config.yaml"))["fold"] != fold:
                raise ValueError(f"{fold_dir} holds another fold's run.")
            try:
                with open(done, encoding="utf-8") as stream:
                    results.append({"run_dir": fold_dir, "metrics": json.load(stream)})
            except ValueError as error:
                raise ValueError(
                    f"{done} is damaged ({error}): delete the folder {fold_dir} and run the "
                    "same command again to redo that fold."
                ) from error
            continue
        results.append(train(fold_config))
    per_fold = [_numbers(result["metrics"]) for result in results]
    keys = [key for key in per_fold[0] if all(key in values for values in per_fold)]
    summary = {
        key: {
            "mean": float(np.mean([values[key] for values in per_fold])),
            "std": float(np.std([values[key] for values in per_fold], ddof=1)),
            "folds": [values[key] for values in per_fold],
        }
        for key in keys
    }
    record = {"folds": config.folds, "fold_dirs": [r["run_dir"] for r in results], **summary}
    write_json(os.path.join(output_dir, "metrics.json"), record)
    shutil.rmtree(parent.work_dir, ignore_errors=True)
    return {"run_dir": output_dir, "metrics": record, "folds": results}


def main(argv=None):
    """The command line: parses the flags and calls :func:`train`."""
    try:
        result = train(parse_config(argv))
    except (ValueError, WeightsUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"run_dir": result["run_dir"], "metrics": result["metrics"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
