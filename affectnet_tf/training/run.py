"""A training run: ``train(config)``, what ``python -m affectnet_tf.train`` runs.

A run folder holds ``config.yaml`` (every setting, and which images played which role),
``model.keras`` (the prediction model: raw RGB ``uint8`` images of any size in, metadata
inside), ``crowd_model.keras`` and ``annotators.npz`` when a head learns from the crowd
(``cv``), ``history.csv``, TensorBoard logs in ``logs/``, ``best.weights.h5`` (the best epoch
by ``--monitor`` on the selection data), and ``metrics.json`` and ``report/`` on the test data
(:func:`affectnet_tf.evaluation.evaluate.evaluate_model`).

The recipe (:func:`train`), one step each: resolve the settings
(:mod:`affectnet_tf.training.config`) and the three disjoint data roles, check the run folder
(:mod:`affectnet_tf.training.run_folder`: the same command resumes, other settings are an
error), build the datasets (:mod:`affectnet_tf.training.datasets`) and the model, train
(:mod:`affectnet_tf.training.fit_loop`, or :mod:`affectnet_tf.training.worker_loop` for several
machines), keep the best epoch, evaluate it on the test data once. ``--folds K`` repeats it per
fold (:func:`cross_validate`, :mod:`affectnet_tf.training.folds`).

Reproducibility: ``--seed`` seeds the initial weights (``keras.utils.set_random_seed``), the
order of the training images and the augmentation; epoch ``e``'s batches depend on
``(seed, e)`` only, so a resumed run sees what an uninterrupted one saw. On one machine and
one device a rerun gives the same weights; ``--deterministic`` also makes TensorFlow's ops
deterministic (GPU kernels included). Another machine, device count or library version may
give other figures within their seed-to-seed spread.

Example:

```python
from affectnet_tf.training.run import train

result = train({"dataset": "synthetic_faces/tiny", "model": "compact_cnn_small",
                "weights": None, "image_size": 32, "epochs": 1, "output_dir": "runs/tiny"})
print(result["metrics"]["expression"]["accuracy"])
```
"""

import dataclasses
import functools
import logging
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from affectnet_tf.evaluation.evaluate import evaluate_model
from affectnet_tf.files import write_atomically, write_json
from affectnet_tf.modeling import models
from affectnet_tf.training import fit_loop, folds, worker_loop
from affectnet_tf.training.config import RunConfig, data_roles
from affectnet_tf.training.crowd_folders import eval_reference
from affectnet_tf.training.datasets import RunDatasets, log_data_summary
from affectnet_tf.training.distribute import is_chief, make_strategy
from affectnet_tf.training.objectives import head_losses, initial_confusions, initial_va_crowds
from affectnet_tf.training.run_folder import prepare_run_folder, write_run_config

__all__ = ["PreparedRun", "prepare_run", "train", "cross_validate"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PreparedRun:
    """A run ready to train (:func:`prepare_run`).

    Attributes:
        config: its :class:`RunConfig`.
        strategy: the ``tf.distribute`` strategy.
        roles: its :class:`affectnet_tf.training.config.DataRoles`.
        folder: its :class:`affectnet_tf.training.run_folder.RunFolder`.
        datasets: its :class:`affectnet_tf.training.datasets.RunDatasets`.
        built: the model of :func:`affectnet_tf.build_model` (training and prediction models).
        losses: per-head losses (:func:`affectnet_tf.training.objectives.head_losses`).
        record: the record of the data roles (``RunDatasets.record()``).
    """

    config: RunConfig
    strategy: object
    roles: object
    folder: object
    datasets: RunDatasets
    built: object
    losses: dict
    record: dict

    @property
    def multi_worker(self):
        """Whether several machines train (the custom loop of ``worker_loop``)."""
        return isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)


def train(config):
    """Trains a model as ``config`` says (a :class:`RunConfig` or a dict of its fields; missing
    fields default). With ``folds`` and no ``fold``, runs every fold
    (:func:`cross_validate`).

    Returns:
        A dict: ``run_dir``, ``metrics`` (also in ``metrics.json``), ``info`` (the training
        data's :class:`affectnet_tf.DatasetInfo` as a dict), ``history``, ``data_roles``,
        ``chief`` and ``seconds`` (where the time went: preparation, training with its steps
        and validation, evaluation).
    """
    config = RunConfig.from_dict(config)
    if config.folds is not None and config.fold is None:
        return cross_validate(config)
    logger.debug("Settings: %s", config.to_dict())
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    previous_policy = keras.mixed_precision.global_policy().name
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return _train_run(config)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train_run(config):
    """The steps of one run, timed."""
    began = time.perf_counter()
    run = prepare_run(config)
    prepared = time.perf_counter()
    history = _fit(run)
    trained = time.perf_counter()
    _save_models(run)
    metrics = _evaluate(run)
    folder = run.folder
    # the backup goes last: a run killed before this point resumes and finishes
    shutil.rmtree(folder.work_dir if folder.chief else folder.run_dir, ignore_errors=True)
    return {
        "seconds": {
            "preparation": prepared - began,  # data, model, run folder
            "training": trained - prepared,  # everything in the loop, validation included
            "training_steps": sum(history.get("train_seconds", [])) or None,  # of that
            "validation": sum(history.get("val_seconds", [])) or None,  # of that
            "evaluation": time.perf_counter() - trained,  # saving, test metrics, report
        },
        "run_dir": folder.output_dir,
        "metrics": metrics,
        "info": run.datasets.train_info.to_dict(),
        "history": history,
        "data_roles": run.record,
        "chief": folder.chief,
    }


def prepare_run(config):
    """Everything before the first epoch: the strategy, the data roles, the run folder (new or
    resumed; ``config.yaml`` written by the chief), the datasets, the model and its losses.

    Raises:
        ValueError: bad settings, roles sharing images, a run folder that holds another run.
    """
    strategy = make_strategy(config.strategy)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        worker_loop.check_config(config)
    roles = data_roles(config)
    folder = prepare_run_folder(config, chief=is_chief(strategy))
    datasets = RunDatasets(config, roles, strategy.num_replicas_in_sync)
    datasets.check_disjoint()
    with strategy.scope():
        built = _build_model(config, roles, datasets.train_info)
    heads = list(models.TASK_HEADS[config.task])
    run = PreparedRun(
        config=config,
        strategy=strategy,
        roles=roles,
        folder=folder,
        datasets=datasets,
        built=built,
        losses=head_losses(config, heads, datasets.train_info, built.training_model),
        record=datasets.record(),
    )
    os.makedirs(folder.work_dir, exist_ok=True)
    if folder.chief:
        write_run_config(folder.run_dir, config, run.record)
        log_data_summary(config, datasets, strategy.num_replicas_in_sync, folder.resuming)
    return run


def _build_model(config, roles, info):
    """The run's model (:func:`affectnet_tf.build_model`), its metadata naming the data."""
    return models.build_model(
        config.model,
        task=config.task,
        class_names=info.class_names,
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
        va_crowd_starts=initial_va_crowds(config, roles),
    )


def _fit(run):
    """Trains through the run's epochs; returns the history of this call's epochs."""
    loop = fit_loop.fit_phases
    if run.multi_worker:  # model.fit does not run there; every worker restores the chief's state
        loop = functools.partial(worker_loop.train_custom_loop, restore_dir=run.folder.restore_dir)
    return loop(
        run.strategy,
        run.built,
        run.config,
        run.losses,
        run.datasets.train,
        run.datasets.selection,
        run.datasets.steps,
        run.folder.run_dir,
        run.folder.work_dir,
    )


def _save_models(run):
    """Loads the best epoch's weights, and (the chief) writes ``model.keras`` and, with crowd
    heads, ``crowd_model.keras`` and ``annotators.npz``."""
    built, folder = run.built, run.folder
    best = os.path.join(folder.run_dir, "best.weights.h5")
    if os.path.exists(best):
        built.training_model.load_weights(best)
    if not folder.chief:
        return
    write_atomically(os.path.join(folder.run_dir, "model.keras"), built.prediction_model.save)
    logger.info("Saved the model to %s.", os.path.join(folder.run_dir, "model.keras"))
    if run.config.crowd_heads:
        write_atomically(
            os.path.join(folder.run_dir, "crowd_model.keras"), built.training_model.save
        )
        annotators = models.crowd_layer_weights(built.training_model)
        write_atomically(
            os.path.join(folder.run_dir, "annotators.npz"),
            lambda path: _save_npz(path, annotators),
        )


def _save_npz(path, arrays):
    with open(path, "wb") as stream:  # a file object: np.savez adds no ".npz" to the name
        np.savez(stream, **arrays)


def _evaluate(run):
    """Scores the prediction model on the test data (``metrics.json`` and the report in the
    chief's run folder): the model runs once over the test images; every section of the
    report comes from that."""
    config, roles, folder, test = run.config, run.roles, run.folder, run.roles.test
    return evaluate_model(
        run.built.prediction_model,
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
            **run.datasets.eval_targets,
        },
        split=test.split,
        subset=test.subset,
        report=config.report,
        extra={
            "dataset": roles.dataset_name,
            "target": run.datasets.eval_targets["target"],
            "evaluated_against": eval_reference(config.dataset, **run.datasets.eval_targets),
            "data_roles": run.record,
        },
    )


def cross_validate(config):
    """``--folds K``: trains fold ``k`` (its test set) in ``RUN/fold_<k>`` for every ``k``
    and writes the mean and the sample standard deviation of each metric over the folds to
    ``RUN/metrics.json``. An interrupted cross-validation resumes fold by fold.

    Returns:
        ``{"run_dir", "metrics", "folds"}``: the summary (:func:`affectnet_tf.training.folds.fold_summary`) and each
        fold's result.
    """
    config = RunConfig.from_dict(config)
    output_dir = os.path.abspath(config.output_dir)
    parent = prepare_run_folder(config, finished_marker="metrics.json")
    os.makedirs(parent.work_dir, exist_ok=True)
    write_run_config(output_dir, config)
    results = []
    for fold in range(config.folds):
        done = folds.finished_fold(folds.fold_dir(output_dir, fold), fold)
        if done is not None:
            logger.info(
                "Fold %d/%d: finished before, its metrics are kept.", fold + 1, config.folds
            )
            results.append(done)
            continue
        logger.info("Fold %d/%d.", fold + 1, config.folds)
        results.append(train(folds.fold_config(config, fold)))
    record = folds.fold_summary(config.folds, results)
    write_json(os.path.join(output_dir, "metrics.json"), record)
    shutil.rmtree(parent.work_dir, ignore_errors=True)
    return {"run_dir": output_dir, "metrics": record, "folds": results}
