"""The ``model.fit`` training loop: phases, the best epoch, backups, and what stops a run.

A run has one phase (``train``) or two (``frozen``: the backbone frozen, then ``fine_tune`` at
``learning_rate * fine_tune_factor``). Each phase backs up every epoch into its own folder
(:mod:`affectnet_tf.training.backups`: the last two epochs, written atomically and checked on restart)
and resumes from the newest usable backup; a phase whose newest backup is at its last epoch is
finished (not when ``TerminateOnNaN`` stopped it: that is an error).

The best epoch by ``--monitor`` on the selection data is kept in ``best.weights.h5`` by
:class:`BestCheckpoint`, whose best value (and the weights file's SHA-256) lives in a file next
to the backups, so it survives both phases and restarts (a fresh ``ModelCheckpoint`` would start
again from ``inf`` and overwrite a better epoch). Every file is written atomically
(:mod:`affectnet_tf.files`): a run killed at any moment resumes.
"""

import contextlib
import csv
import importlib.util
import json
import logging
import os
import shutil
import sys
import time

import keras
import numpy as np

from affectnet_tf.files import atomic_open, file_sha256, partial_path, write_json
from affectnet_tf.modeling import metrics
from affectnet_tf.training.backups import (
    DamagedRunError,
    RunBackup,
    latest_generation,
    restore_weights,
)

__all__ = [
    "Phase",
    "phases",
    "monitor_mode",
    "restored_epoch",
    "reseed_layers",
    "BestCheckpoint",
    "EpochTimer",
    "HistoryLog",
    "TrainingDivergedError",
    "compile_model",
    "truncate_history",
    "exit_now",
    "fit_verbosity",
    "resume_point",
    "phase_callbacks",
    "fit_phases",
]

logger = logging.getLogger(__name__)

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
    """The phases of a run (:class:`affectnet_tf.training.config.RunConfig`)."""
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
    """The epoch a phase's backup folder resumes at (0 without a usable backup)."""
    generation = latest_generation(backup_dir, report=lambda line: None)
    return 0 if generation is None else generation.epoch


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
        self.best, self.best_epoch, self._state = None, None, None
        if os.path.exists(state_path):
            self._state = self._read_state()
            if self._state is not None:
                self.best, self.best_epoch = self._state["value"], self._state["epoch"]

    def _read_state(self):
        """The recorded best epoch that ``best.weights.h5`` holds: the newest record, or the
        one before it when a kill came between the two steps of a write (the record is written
        before the weights file is put in place); None when that kill came at the first best
        epoch."""
        recovery = (
            "The best epoch so far cannot be recovered: start the run again with --overwrite, "
            f"or delete {self.state_path} and {self.weights_path} to resume choosing the best "
            "among the epochs still to come only."
        )
        try:
            with open(self.state_path, encoding="utf-8") as stream:
                state = json.load(stream)
            previous = state.get("previous")
            for record in (state, previous) if previous else (state,):
                float(record["value"]), int(record["epoch"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise DamagedRunError(
                f"{self.state_path} is damaged ({type(error).__name__}: {error}). {recovery}"
            ) from error
        if not os.path.isfile(self.weights_path):
            if previous is None:  # killed before the first best epoch's file was in place
                return None
            raise DamagedRunError(f"{self.weights_path} is missing. {recovery}")
        digest = file_sha256(self.weights_path)
        if digest == state.get("sha256"):
            return state
        if previous is not None and digest == previous.get("sha256"):
            return previous  # killed between the two steps: the file is the one before
        raise DamagedRunError(
            f"{self.weights_path} is damaged (it does not match the SHA-256 recorded in "
            f"{self.state_path}). {recovery}"
        )

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
        # two steps, each atomic: the weights into a partial file, the record (naming the
        # file's SHA-256 and keeping the record before it), then the file into place
        partial = partial_path(self.weights_path)
        try:
            self.model.save_weights(partial)
            previous = None
            if self._state is not None:
                previous = {k: v for k, v in self._state.items() if k != "previous"}
            state = {
                "monitor": self.monitor,
                "value": value,
                "epoch": int(epoch),
                "sha256": file_sha256(partial),
                "previous": previous,
            }
            write_json(self.state_path, state)
            os.replace(partial, self.weights_path)
        except BaseException:
            if os.path.exists(partial):
                os.remove(partial)
            raise
        self._state = state


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
            exit_now()


def exit_now(code=3):
    """Ends the process at once, as a kill would (the tests' ``AFFECTNET_TF_FAIL_AT_STEP``),
    after flushing what it printed."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    os._exit(code)


def _history_rows(path):
    """``(header, rows)`` of ``history.csv``, leaving out rows a crash cut short (and saying
    so); ``(None, [])`` without a file or with a damaged header."""
    if not os.path.exists(path):
        return None, []
    with open(path, newline="", encoding="utf-8", errors="replace") as stream:
        rows = list(csv.reader(stream))
    if not rows or not rows[0] or rows[0][0] != "epoch":
        if rows:
            logger.warning(
                "%s is damaged (no header): its rows are dropped, new ones follow.", path
            )
        return None, []
    header, kept, cut = rows[0], [], 0
    for row in rows[1:]:
        if len(row) == len(header) and row[0].isdigit():
            kept.append(row)
        elif row:
            cut += 1
    if cut:
        logger.warning("%s: %d damaged row(s) dropped (cut short by an interruption).", path, cut)
    return header, kept


def truncate_history(path, epoch):
    """Drops the rows of epochs ``>= epoch`` from ``history.csv`` (an epoch redone after a
    restart is logged once), and rows an interruption cut short."""
    header, rows = _history_rows(path)
    if header is None:
        if os.path.exists(path):
            os.remove(path)
        return
    kept = [row for row in rows if int(row[0]) < epoch]
    with atomic_open(path, newline="") as stream:
        csv.writer(stream).writerows([header, *kept])


class HistoryLog(keras.callbacks.Callback):
    """``history.csv``: one row per epoch (``epoch`` and the epoch's logs, sorted by name, as
    ``keras.callbacks.CSVLogger`` writes them), the whole file rewritten atomically each epoch
    so an interruption never leaves half a row."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        self.append(epoch, logs)

    def append(self, epoch, logs):
        """Adds (or replaces) the row of ``epoch``."""
        logs = {key: float(value) for key, value in (logs or {}).items()}
        header, rows = _history_rows(self.path)
        names = sorted(logs)
        if header is not None and header[1:] != names:  # another phase logs other metrics
            old = [dict(zip(header, row)) for row in rows]
            names = sorted(set(names) | set(header[1:]))
            rows = [[row["epoch"], *(row.get(name, "") for name in names)] for row in old]
        elif header is None:
            rows = []
        rows = [row for row in rows if int(row[0]) != epoch]
        rows.append([str(epoch), *(repr(logs[name]) if name in logs else "" for name in names)])
        with atomic_open(self.path, newline="") as stream:
            csv.writer(stream).writerows([["epoch", *names], *rows])


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
            k = int(losses["expression"].num_classes)  # the run's classes
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
    # the optimizer's variables made now: made inside the first train step, they would make
    # TensorFlow trace that step twice
    model.optimizer.build(model.trainable_variables)


def _tensorboard(run_dir):
    """A TensorBoard callback, or None without the ``tensorboard`` package."""
    if importlib.util.find_spec("tensorboard") is None:
        logger.warning(
            "tensorboard is not installed: no TensorBoard logs (pip install tensorboard)."
        )
        return None
    return keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"))


def fit_verbosity():
    """Keras' ``verbose`` for ``model.fit``: its progress bar on a terminal (1), one line per
    epoch elsewhere (2), nothing (0) when this package's status lines are off (``--quiet``, or
    a library call without :func:`affectnet_tf.progress.configure_logging` or other logging
    set up at INFO)."""
    if not logger.isEnabledFor(logging.INFO):
        return 0
    return 1 if sys.stderr.isatty() else 2


def resume_point(run_phases, work_dir):
    """``(index, generation)``: the newest phase with a usable backup and that backup (the
    phases before it are finished), or ``(0, None)`` for a new run.

    A damaged phase whose phase before is finished starts again from that phase's end (its
    backups are deleted, a warning says so).
    """
    for number in reversed(range(len(run_phases))):
        phase = run_phases[number]
        backup_dir = os.path.join(work_dir, f"backup_{phase.name}")
        try:
            generation = latest_generation(
                backup_dir,
                phase.stop,
                os.path.join(work_dir, f"{phase.name}.done.weights.h5"),  # earlier versions
            )
        except DamagedRunError as error:
            if number == 0:
                raise
            # the end of the phase before stands in: this phase starts again from there
            logger.warning(
                "%s\nStarting phase %s again from the end of the phase before.", error, phase.name
            )
            shutil.rmtree(backup_dir)
            continue
        if generation is not None:
            return number, generation
    return 0, None


def phase_callbacks(config, phase, steps, run_dir, work_dir, generation=None, tensorboard=None):
    """The callbacks of one phase's ``model.fit``, in order: timing, reseeding, the NaN stops,
    the best epoch, ``history.csv``, TensorBoard, the tests' kill switch, and the backup last
    (an epoch is only backed up once everything before has recorded it; it restores
    ``generation`` when training begins)."""
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
        HistoryLog(os.path.join(run_dir, "history.csv")),
    ]
    if tensorboard is not None:
        callbacks.append(tensorboard)
    if os.environ.get(FAIL_AT_STEP_ENV):
        callbacks.append(_FailAtStep(os.environ[FAIL_AT_STEP_ENV], steps))
    callbacks.append(RunBackup(os.path.join(work_dir, f"backup_{phase.name}"), generation))
    return callbacks


def fit_phases(strategy, built, config, losses, train_data, val_ds, steps, run_dir, work_dir):
    """Trains ``built.training_model`` through the run's phases with ``model.fit``.

    Keras' progress output (:func:`fit_verbosity`) goes to the standard error, with the status
    lines, so that the standard output keeps the command's results.

    Args:
        train_data: ``train_data(start, stop)`` returns the training batches of epochs
            ``start .. stop - 1`` (:func:`affectnet_tf.data.pipeline.make_dataset` with ``epochs``).
        val_ds: the selection data (validated after each epoch).
        steps: training steps per epoch.
        run_dir: where ``best.weights.h5``, ``history.csv`` and ``logs/`` go.
        work_dir: backups and the best value (deleted when the run ends).

    Returns:
        The history of the epochs trained in this call, a dict of lists.

    Raises:
        TrainingDivergedError: the loss became NaN (the phase is not finished; the run
            folder keeps its last good backup).
        DamagedRunError: a file of the interrupted run is damaged and no earlier backup can
            stand in for it (the message names the file and how to recover).
    """
    model = built.training_model
    history = {}
    tensorboard = _tensorboard(run_dir)
    run_phases = phases(config)
    resume_at, generation = resume_point(run_phases, work_dir)
    for phase in run_phases[resume_at:]:
        start = max(phase.start, generation.epoch if generation is not None else 0)
        built.backbone.trainable = phase.trainable
        with strategy.scope():
            compile_model(
                model, config, losses, phase.learning_rate, steps * (phase.stop - phase.start)
            )
        if start >= phase.stop:  # finished before an interruption: its result goes on
            restore_weights(model, generation)
        else:
            truncate_history(os.path.join(run_dir, "history.csv"), start)
            callbacks = phase_callbacks(
                config, phase, steps, run_dir, work_dir, generation, tensorboard
            )
            with contextlib.redirect_stdout(sys.stderr):
                fitted = model.fit(
                    train_data(start, phase.stop),
                    validation_data=val_ds,
                    epochs=phase.stop,
                    initial_epoch=start,
                    steps_per_epoch=steps,
                    callbacks=callbacks,
                    shuffle=False,  # the dataset is shuffled per epoch by its seed
                    verbose=fit_verbosity(),
                )
            for key, values in fitted.history.items():
                history.setdefault(key, []).extend(float(v) for v in values)
        generation = None
    built.backbone.trainable = True
    return history
