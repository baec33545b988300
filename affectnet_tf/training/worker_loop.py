"""The custom training loop for ``--strategy multi_worker``.

Keras 3 ``model.fit`` does not run under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585), so several machines train with ``strategy.run`` and
``tf.GradientTape``: a SUM-reduced loss divided by the global batch, a
``tf.train.CheckpointManager`` after every epoch (epoch, weights, optimizer and the best
selection loss), the selection loss after each epoch, ``best.weights.h5`` for the best one,
``history.csv`` and TensorBoard logs. It supports what ``model.fit`` does except a frozen
first phase, a ``--monitor`` other than ``val_loss``, XLA and mixed precision, which
:func:`check_config` refuses.
"""

import importlib.util
import logging
import os

import keras
import numpy as np
import tensorflow as tf

from affectnet_tf.files import write_atomically
from affectnet_tf.progress import progress
from affectnet_tf.training.backups import KEEP, DamagedRunError
from affectnet_tf.training.fit_loop import (
    FAIL_AT_STEP_ENV,
    HistoryLog,
    TrainingDivergedError,
    exit_now,
    reseed_layers,
    truncate_history,
)

__all__ = ["check_config", "restore_checkpoint", "make_train_step", "train_custom_loop"]

logger = logging.getLogger(__name__)


def check_config(config):
    """Refuses the settings this loop cannot honour, naming them."""
    unsupported = []
    if config.freeze_epochs:
        unsupported.append(f"--freeze-epochs {config.freeze_epochs} (a frozen first phase)")
    if config.monitor != "val_loss":
        unsupported.append(f"--monitor {config.monitor} (only val_loss is computed)")
    if config.jit_compile:
        unsupported.append("--jit-compile (XLA around the replicas' synchronised updates)")
    if config.mixed_precision:
        unsupported.append("--mixed-precision (loss scaling across workers)")
    if unsupported:
        raise ValueError(
            "--strategy multi_worker trains with a custom loop that does not support "
            + "; ".join(unsupported)
            + ". Leave these settings at their defaults for multi-worker training."
        )


def restore_checkpoint(checkpoint, folder, report=logger.warning):
    """Restores the newest checkpoint of ``folder`` that loads, saying which damaged ones it
    passed over; None when there is none, else its path.

    Raises:
        DamagedRunError: checkpoints exist but none loads.
    """
    try:
        state = tf.train.get_checkpoint_state(folder)
        paths = list(state.all_model_checkpoint_paths) if state else []
    except (tf.errors.OpError, ValueError) as error:  # the state file itself is damaged
        report(f"{os.path.join(folder, 'checkpoint')} is damaged ({error}); looking for files.")
        paths = []
    if not paths:
        indexes = tf.io.gfile.glob(os.path.join(folder, "ckpt-*.index"))
        paths = sorted((p[: -len(".index")] for p in indexes), key=lambda p: int(p.split("-")[-1]))
    paths = [p if os.path.isabs(p) else os.path.join(folder, p) for p in paths]
    problems = []
    for path in reversed(paths):
        try:
            checkpoint.restore(path)
        except Exception as error:  # OpError, IndexError ("Read less bytes"), ValueError ...
            problems.append(f"{path}: {type(error).__name__}: {str(error).splitlines()[0]}")
            report(f"Checkpoint {path} is damaged ({problems[-1]}); trying the one before.")
            continue
        return path
    if problems:
        raise DamagedRunError(
            f"Every checkpoint in {folder} is damaged ({'; '.join(problems)}). The run cannot "
            "resume: start it again with --overwrite."
        )
    return None


def _selection_loss(model, losses, heads, val_ds):
    """Mean per-image loss of ``model`` on the selection data (summed over heads), locally."""
    total, count = 0.0, 0
    for images, targets in val_ds:
        outputs = model(images, training=False)
        if len(heads) == 1:
            outputs, targets = {heads[0]: outputs}, {heads[0]: targets}
        per_sample = sum(losses[head](targets[head], outputs[head]) for head in heads)
        total += float(tf.reduce_sum(per_sample))
        count += int(tf.shape(images)[0])
    return total / max(count, 1)


def make_train_step(strategy, model, optimizer, losses, global_batch):
    """The distributed train step: ``train_step(iterator)`` runs one batch on every replica
    (a SUM-reduced per-sample loss over the global batch, plus the model's regularisation)
    and returns the loss summed over the replicas."""
    heads = list(losses)

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
        grads = tape.gradient(total, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return total

    @tf.function
    def train_step(iterator):
        per_replica = strategy.run(replica_step, args=next(iterator))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return train_step


def _loop_state(strategy, model, config, steps):
    """``(optimizer, epoch, best)`` made in the strategy's scope: Adam (cosine or constant
    schedule over the run), the next epoch and the best selection loss (variables, so that
    the checkpoint holds them)."""
    with strategy.scope():
        schedule = config.learning_rate
        if config.schedule == "cosine":
            schedule = keras.optimizers.schedules.CosineDecay(
                schedule, max(1, steps * int(config.epochs))
            )
        optimizer = keras.optimizers.Adam(schedule)
        optimizer.build(model.trainable_variables)
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        best_var = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
    return optimizer, epoch_var, best_var


def _summary_writer(run_dir):
    """A TensorBoard file writer in ``run_dir/logs``, or None without ``tensorboard``."""
    if importlib.util.find_spec("tensorboard") is None:
        logger.warning(
            "tensorboard is not installed: no TensorBoard logs (pip install tensorboard)."
        )
        return None
    return tf.summary.create_file_writer(os.path.join(run_dir, "logs"))


def _train_epoch(train_step, iterator, epoch, epochs, steps):
    """Runs one epoch's steps under a progress bar; returns the mean training loss.

    Raises:
        TrainingDivergedError: the loss is not finite.
    """
    fail_at = int(os.environ.get(FAIL_AT_STEP_ENV) or 0)
    total = 0.0
    bar = progress(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="step")
    with bar:
        for step in range(steps):
            loss = float(train_step(iterator))
            total += loss
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if fail_at and epoch * steps + step + 1 == fail_at:
                exit_now()
    if not np.isfinite(total):
        raise TrainingDivergedError(
            f"The training loss became {total / steps} in epoch {epoch + 1}; training "
            "stopped, the run folder keeps its last good checkpoint. Lower "
            "--learning-rate (or check the data), then start again with --overwrite."
        )
    return total / steps


def _write_summaries(writer, epoch, values):
    """One TensorBoard scalar per entry of ``values`` at step ``epoch``."""
    if writer is None:
        return
    with writer.as_default():
        for name, value in values.items():
            tf.summary.scalar(name, value, step=epoch)
    writer.flush()


def train_custom_loop(
    strategy, built, config, losses, train_data, val_ds, steps, run_dir, work_dir, restore_dir
):
    """Trains ``built.training_model`` for ``config.epochs`` epochs (arguments as
    :func:`affectnet_tf.training.fit_loop.fit_phases`; ``restore_dir`` is the chief's work folder, which
    every worker restores from).

    Returns:
        The history of the epochs trained in this call: ``loss`` and ``val_loss``.
    """
    check_config(config)
    model = built.training_model
    epochs = int(config.epochs)
    optimizer, epoch_var, best_var = _loop_state(strategy, model, config, steps)
    for loss in losses.values():
        loss.reduction = "none"
    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=optimizer, epoch=epoch_var, best_val_loss=best_var
    )
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(work_dir, "ckpt"), KEEP)
    restore_checkpoint(checkpoint, os.path.join(restore_dir, "ckpt"))
    start = int(epoch_var.numpy())
    iterator = iter(strategy.experimental_distribute_dataset(train_data(start, epochs)))
    train_step = make_train_step(strategy, model, optimizer, losses, int(config.batch_size))
    history = {}
    history_path = os.path.join(run_dir, "history.csv")
    truncate_history(history_path, start)
    writer = _summary_writer(run_dir)
    for epoch in range(start, epochs):
        logger.info("Epoch %d/%d", epoch + 1, epochs)
        reseed_layers(model, config.seed, epoch)
        values = {"loss": _train_epoch(train_step, iterator, epoch, epochs, steps)}
        values["val_loss"] = _selection_loss(model, losses, list(losses), val_ds)
        logger.info("loss %.4f - val_loss %.4f", values["loss"], values["val_loss"])
        for name, value in values.items():
            history.setdefault(name, []).append(value)
        if values["val_loss"] < float(best_var.numpy()):
            best_var.assign(values["val_loss"])
            write_atomically(os.path.join(run_dir, "best.weights.h5"), model.save_weights)
        _write_summaries(writer, epoch, values)
        HistoryLog(history_path).append(epoch, values)
        epoch_var.assign(epoch + 1)
        manager.save()
    return history
