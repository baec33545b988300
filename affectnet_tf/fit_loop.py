"""The ``model.fit`` training loop: phases, the best epoch, backups, and what stops a run.

A run has one phase (``train``) or two (``frozen``: the backbone frozen, then ``fine_tune`` at
``learning_rate * fine_tune_factor``). Each phase resumes from its own
``keras.callbacks.BackupAndRestore`` folder and leaves a ``<phase>.done.weights.h5`` marker
when it ends normally (not when ``TerminateOnNaN`` stopped it: that is an error).

The best epoch by ``--monitor`` on the selection data is kept in ``best.weights.h5`` by
:class:`BestCheckpoint`, whose best value lives in a file next to the backups, so it survives
both phases and restarts (a fresh ``ModelCheckpoint`` would start again from ``inf`` and
overwrite a better epoch).
"""

import csv
import importlib.util
import json
import os
import sys
import time

import keras
import numpy as np

from affectnet_tf import metrics

__all__ = [
    "Phase",
    "phases",
    "monitor_mode",
    "restored_epoch",
    "reseed_layers",
    "BestCheckpoint",
    "EpochTimer",
    "TrainingDivergedError",
    "compile_model",
    "fit_phases",
]

FAIL_AT_STEP_ENV = "AFFECTNET_TF_FAIL_AT_STEP"  # tests: kill the process after this train step


class TrainingDivergedError(ValueError):
    """The loss became NaN or infinite."""


class Phase:
    """A stretch of epochs ``[start, stop)`` at one learning rate, backbone trainable or not."""

    def __init__(self, name, start, stop, learning_rate, trainable):
        self.name, self.start, self.stop = name, int(start), int(stop)
        self.learning_rate, self.trainable = float(learning_rate), bool(trainable)

    def __repr__(self):
        return f"Phase({self.name!r}, {self.start}, {self.stop})"


def phases(config):
    """The phases of a run (:class:`affectnet_tf.config.RunConfig`)."""
    if config.freeze_epochs:
        tuned = config.learning_rate * config.fine_tune_factor
        return [
            Phase("frozen", 0, config.freeze_epochs, config.learning_rate, False),
            Phase("fine_tune", config.freeze_epochs, config.epochs, tuned, True),
        ]
    return [Phase("train", 0, config.epochs, config.learning_rate, True)]


def monitor_mode(monitor):
    """``max`` for scores (accuracy, F1, CCC ...), ``min`` for losses and errors."""
    scores = ("acc", "f1", "ccc", "corr", "sagr", "auc", "kappa", "alpha")
    return "max" if any(score in monitor for score in scores) else "min"


def restored_epoch(backup_dir):
    """The epoch a ``BackupAndRestore`` folder resumes at (0 without a backup)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as stream:
        return int(json.load(stream)["epoch"])


def _write_atomically(path, write):
    stem, extension = path.split(".", 1) if "." in os.path.basename(path) else (path, "")
    partial = f"{stem}.partial.{extension}" if extension else f"{path}.partial"
    write(partial)
    os.replace(partial, path)


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the weights of the best epoch by ``monitor``; the best value persists in
    ``state_path`` (JSON), so a new instance (a later phase, a restarted run) goes on from it.

    Args:
        weights_path: the ``.weights.h5`` file of the best epoch.
        state_path: JSON file holding ``{"monitor", "value", "epoch"}`` of the best epoch.
        monitor: a key of the epoch's logs (``val_loss``, ``val_expression_accuracy`` ...).
    """

    def __init__(self, weights_path, state_path, monitor):
        super().__init__()
        self.weights_path, self.state_path, self.monitor = weights_path, state_path, monitor
        self.mode = monitor_mode(monitor)
        self.best, self.best_epoch = None, None
        if os.path.exists(state_path):
            with open(state_path) as stream:
                state = json.load(stream)
            self.best, self.best_epoch = state["value"], state["epoch"]

    def _better(self, value):
        if not np.isfinite(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise ValueError(
                f"--monitor {self.monitor!r} is not among this run's epoch metrics: "
                f"{sorted(k for k in logs if k.startswith('val_'))}"
            )
        value = float(logs[self.monitor])
        if not self._better(value):
            return
        self.best, self.best_epoch = value, int(epoch)
        _write_atomically(self.weights_path, lambda path: self.model.save_weights(path))
        state = {"monitor": self.monitor, "value": value, "epoch": int(epoch)}

        def write_state(path):
            with open(path, "w") as stream:
                json.dump(state, stream)

        _write_atomically(self.state_path, write_state)


def _seed_generators(layer, found=None):
    """Every ``keras.random.SeedGenerator`` of a layer and its sublayers (dropout ...)."""
    found = [] if found is None else found
    for value in vars(layer).values():
        if isinstance(value, keras.random.SeedGenerator) and not any(
            value is other for other in found
        ):
            found.append(value)
    for sublayer in getattr(layer, "layers", []):
        _seed_generators(sublayer, found)
    return found


def reseed_layers(model, seed, epoch):
    """Sets the state of the model's random layers (dropout ...) from ``(seed, epoch)``.

    Their state is not part of the saved weights, so without this a resumed run would draw
    other dropout masks than an uninterrupted one.
    """
    for number, generator in enumerate(_seed_generators(model)):
        state = np.array([seed % 2**31, epoch * 4096 + number], np.int64)
        generator.state.assign(state.astype(generator.state.dtype))


class _ReseedLayers(keras.callbacks.Callback):
    """:func:`reseed_layers` at the start of every epoch."""

    def __init__(self, seed):
        super().__init__()
        self.seed = int(seed)

    def on_epoch_begin(self, epoch, logs=None):
        reseed_layers(self.model, self.seed, epoch)


class EpochTimer(keras.callbacks.Callback):
    """Adds ``train_seconds`` (the epoch's training steps) and ``val_seconds`` (its
    validation) to the epoch's logs, so ``history.csv`` shows where the time goes. Put it
    first in the callback list: later callbacks see the entries."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._validation = None

    def on_test_begin(self, logs=None):
        if getattr(self, "_start", None) is not None:
            self._validation = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end = time.perf_counter()
        validation = self._validation or end
        if logs is not None:
            logs["train_seconds"] = validation - self._start
            logs["val_seconds"] = end - validation


class _DivergenceGuard(keras.callbacks.Callback):
    """Raises :class:`TrainingDivergedError` at the end of an epoch whose loss is not finite,
    before the later callbacks record it (``TerminateOnNaN`` ends that epoch early)."""

    def __init__(self, phase):
        super().__init__()
        self.phase = phase

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            raise TrainingDivergedError(
                f"The training loss became {loss} in epoch {epoch + 1} (phase "
                f"{self.phase}); training stopped, the run folder keeps its last good backup. "
                "Lower --learning-rate (or check the data), then start again with --overwrite."
            )


class _FailAtStep(keras.callbacks.Callback):
    """Tests: ends the process at once after global training step N, as a kill would."""

    def __init__(self, step, steps_per_epoch):
        super().__init__()
        self.step, self.steps_per_epoch, self.epoch = int(step), int(steps_per_epoch), 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch * self.steps_per_epoch + batch + 1 == self.step:
            sys.stdout.flush()
            os._exit(3)


def truncate_history(path, epoch):
    """Drops the rows of epochs ``>= epoch`` from ``history.csv`` (an epoch redone after a
    restart is logged once)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as stream:
        rows = list(csv.reader(stream))
    if not rows:
        return
    kept = [rows[0]] + [row for row in rows[1:] if row and int(row[0]) < epoch]
    with open(path, "w", newline="") as stream:
        csv.writer(stream).writerows(kept)


def compile_model(model, config, losses, learning_rate, steps):
    """Compiles with Adam (cosine or constant schedule over ``steps``) and the heads' metrics:
    accuracy and macro F1 for hard expression labels, CCC for valence/arousal means."""
    single = len(losses) == 1
    loss = next(iter(losses.values())) if single else losses
    targets = config.head_targets
    metric_list = {}
    if "expression" in losses and targets["expression"] in ("mv", "original", "true"):
        if config.strategy == "tpu":  # the package's streaming metrics keep float64 sums
            metric_list["expression"] = ["sparse_categorical_accuracy"]
        else:
            k = int(config.num_classes)
            metric_list["expression"] = [metrics.MaskedAccuracy(k), metrics.MacroF1(k)]
    for head in ("valence", "arousal"):
        if head in losses and targets[head] != "cv" and config.strategy != "tpu":
            metric_list[head] = [metrics.ConcordanceCorrelation()]
    schedule = learning_rate
    if config.schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, steps))
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=loss,
        metrics=(next(iter(metric_list.values()), None) if single else metric_list) or None,
        jit_compile=bool(config.jit_compile),
    )


def _tensorboard(run_dir):
    """A TensorBoard callback, or None without the ``tensorboard`` package."""
    if importlib.util.find_spec("tensorboard") is None:
        print("tensorboard is not installed: no TensorBoard logs (pip install tensorboard).")
        return None
    return keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"))


def fit_phases(strategy, built, config, losses, train_data, val_ds, steps, run_dir, work_dir):
    """Trains ``built.training_model`` through the run's phases with ``model.fit``.

    Args:
        train_data: ``train_data(start, stop)`` returns the training batches of epochs
            ``start .. stop - 1`` (:func:`affectnet_tf.data.make_dataset` with ``epochs``).
        val_ds: the selection data (validated after each epoch).
        steps: training steps per epoch.
        run_dir: where ``best.weights.h5``, ``history.csv`` and ``logs/`` go.
        work_dir: backups, the best value and phase markers (deleted when the run ends).

    Returns:
        The history of the epochs trained in this call, a dict of lists.

    Raises:
        TrainingDivergedError: the loss became NaN (the phase is not marked done; the run
            folder keeps its last good backup).
    """
    model = built.training_model
    history = {}
    history_path = os.path.join(run_dir, "history.csv")
    tensorboard = _tensorboard(run_dir)
    for phase in phases(config):
        done = os.path.join(work_dir, f"{phase.name}.done.weights.h5")
        if os.path.exists(done):  # finished before an interruption
            model.load_weights(done)
            continue
        backup_dir = os.path.join(work_dir, f"backup_{phase.name}")
        start = max(phase.start, restored_epoch(backup_dir))
        truncate_history(history_path, start)
        built.backbone.trainable = phase.trainable
        with strategy.scope():
            compile_model(
                model, config, losses, phase.learning_rate, steps * (phase.stop - phase.start)
            )
        callbacks = [
            EpochTimer(),
            _ReseedLayers(config.seed),
            keras.callbacks.TerminateOnNaN(),
            _DivergenceGuard(phase.name),
            BestCheckpoint(
                os.path.join(run_dir, "best.weights.h5"),
                os.path.join(work_dir, "best.json"),
                config.monitor,
            ),
            keras.callbacks.CSVLogger(history_path, append=True),
        ]
        if tensorboard is not None:
            callbacks.append(tensorboard)
        if os.environ.get(FAIL_AT_STEP_ENV):
            callbacks.append(_FailAtStep(os.environ[FAIL_AT_STEP_ENV], steps))
        # last, so that an epoch is only marked done once everything above has recorded it
        callbacks.append(keras.callbacks.BackupAndRestore(backup_dir))
        fitted = model.fit(
            train_data(start, phase.stop),
            validation_data=val_ds,
            epochs=phase.stop,
            initial_epoch=start,
            steps_per_epoch=steps,
            callbacks=callbacks,
            shuffle=False,  # the dataset is shuffled per epoch by its seed
            verbose=1 if sys.stdout.isatty() else 2,
        )
        for key, values in fitted.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        model.save_weights(done)
    built.backbone.trainable = True
    return history
