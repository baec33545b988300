"""Crash-safe backups of a training phase: what ``--resume`` (or the same command) restarts from.

A phase's backup folder holds *generations*, one per finished epoch, of which the last two are
kept: ``epoch_<N>.weights.h5`` (the model and optimizer state after ``N`` epochs) and
``epoch_<N>.json``, its record (the epoch, the size and SHA-256 of the weights file). Both are
written atomically (:func:`affectnet_tf.files.write_atomically`), the record last: a generation
without a valid record never existed. On restart the newest generation whose record parses and
whose weights file matches it is restored; a damaged one is named and passed over for the one
before it, which the training then replays exactly (each epoch's data order, augmentation and
dropout depend on the seed and the epoch only). When no generation is usable the run stops with
:class:`DamagedRunError`, naming the files and how to recover.

A phase is finished when its newest generation is at the phase's last epoch; the generations
stay until the run ends (they are the phase's result), so no separate marker file can be lost.
Folders written by earlier versions (Keras' ``BackupAndRestore``: ``latest.weights.h5`` and
``training_metadata.json``; ``<phase>.done.weights.h5`` markers) are read too.
"""

import json
import logging
import os
import re

import keras

from affectnet_tf.files import file_sha256, write_atomically, write_json

__all__ = [
    "DamagedRunError",
    "Generation",
    "list_generations",
    "latest_generation",
    "restore_weights",
    "RunBackup",
    "save_generation",
]

logger = logging.getLogger(__name__)

KEEP = 2  # generations kept per phase: the newest and the one to fall back to
_RECORD = re.compile(r"^epoch_(\d+)\.json$")


class DamagedRunError(ValueError):
    """A file of an interrupted run is damaged and nothing earlier can replace it."""


class Generation:
    """One restorable state: ``epoch`` epochs done, weights in ``weights_path``; ``problem``
    says why it cannot be used (None when it can)."""

    def __init__(self, epoch, weights_path, record_path=None, sha256=None, size=None):
        self.epoch, self.weights_path, self.record_path = int(epoch), weights_path, record_path
        self.sha256, self.size = sha256, size
        self.problem = None

    def check(self):
        """Sets and returns :attr:`problem`: None when the weights file is the one recorded."""
        if not os.path.isfile(self.weights_path):
            self.problem = f"{self.weights_path} is missing"
        elif self.size is not None and os.path.getsize(self.weights_path) != self.size:
            self.problem = (
                f"{self.weights_path} has {os.path.getsize(self.weights_path)} bytes, its "
                f"record {self.record_path} says {self.size} (truncated or damaged)"
            )
        elif self.sha256 is not None and file_sha256(self.weights_path) != self.sha256:
            self.problem = f"{self.weights_path} does not match its SHA-256 in {self.record_path}"
        return self.problem

    def __repr__(self):
        return f"Generation(epoch={self.epoch}, {self.weights_path!r})"


def _read_record(path):
    with open(path, encoding="utf-8") as stream:
        record = json.load(stream)
    if not isinstance(record, dict) or not {"epoch", "weights", "sha256", "size"} <= set(record):
        raise ValueError("not a backup record")
    return record


def list_generations(backup_dir, phase_stop=None, legacy_marker=None):
    """Every generation of a phase's backup folder, newest first, each checked
    (:attr:`Generation.problem` set on the damaged ones, records that do not parse included).

    Args:
        backup_dir: the phase's backup folder.
        phase_stop: the phase's last epoch, the epoch of ``legacy_marker``.
        legacy_marker: an earlier version's ``<phase>.done.weights.h5``, if any.
    """
    found = []
    names = sorted(os.listdir(backup_dir)) if os.path.isdir(backup_dir) else []
    for name in names:
        match = _RECORD.match(name)
        if not match:
            continue
        record_path = os.path.join(backup_dir, name)
        epoch = int(match.group(1))
        try:
            record = _read_record(record_path)
        except (OSError, ValueError) as error:
            generation = Generation(epoch, os.path.join(backup_dir, f"epoch_{epoch}.weights.h5"))
            generation.record_path = record_path
            generation.problem = f"{record_path} is damaged ({type(error).__name__}: {error})"
            found.append(generation)
            continue
        generation = Generation(
            record["epoch"],
            os.path.join(backup_dir, os.path.basename(record["weights"])),
            record_path,
            record["sha256"],
            record["size"],
        )
        generation.check()
        found.append(generation)
    # Keras' BackupAndRestore (versions before this one)
    legacy_weights = os.path.join(backup_dir, "latest.weights.h5")
    legacy_record = os.path.join(backup_dir, "training_metadata.json")
    if os.path.isfile(legacy_weights) and os.path.isfile(legacy_record):
        try:
            with open(legacy_record, encoding="utf-8") as stream:
                found.append(Generation(json.load(stream)["epoch"], legacy_weights, legacy_record))
        except (OSError, ValueError, KeyError, TypeError) as error:
            generation = Generation(0, legacy_weights, legacy_record)
            generation.problem = f"{legacy_record} is damaged ({error})"
            found.append(generation)
    if legacy_marker is not None and os.path.isfile(legacy_marker):
        found.append(Generation(phase_stop, legacy_marker))
    return sorted(found, key=lambda g: (g.epoch, g.problem is None), reverse=True)


def latest_generation(backup_dir, phase_stop=None, legacy_marker=None, report=logger.warning):
    """The newest usable generation of a phase, or None when the phase has none at all.

    Damaged generations passed over are reported (``report``, one line each: a warning).

    Raises:
        DamagedRunError: generations exist but none is usable.
    """
    generations = list_generations(backup_dir, phase_stop, legacy_marker)
    damaged = [g for g in generations if g.problem]
    usable = [g for g in generations if not g.problem]
    if usable:
        for generation in damaged:
            if generation.epoch > usable[0].epoch:
                report(
                    f"Backup after epoch {generation.epoch} is damaged: {generation.problem}; "
                    f"resuming from the backup after epoch {usable[0].epoch} instead."
                )
        return usable[0]
    if damaged:
        problems = "; ".join(g.problem for g in damaged)
        raise DamagedRunError(
            f"Every backup in {backup_dir} is damaged ({problems}). The run cannot resume: "
            "start it again with --overwrite (or restore the folder from a copy)."
        )
    return None


def restore_weights(model, generation):
    """Loads a generation into a compiled model (its optimizer built first, since the file
    holds the optimizer's state). Raises :class:`DamagedRunError` naming the file when the
    file does not load."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    try:
        model.load_weights(generation.weights_path)
    except Exception as error:  # h5py's OSError, Keras' ValueError on a mismatched file ...
        raise DamagedRunError(
            f"The backup {generation.weights_path} does not load ({type(error).__name__}: "
            f"{error}). Delete it (and its record {generation.record_path}) to resume from the "
            "backup before it, or start again with --overwrite."
        ) from error


class RunBackup(keras.callbacks.Callback):
    """Writes a generation at the end of every epoch and restores ``start`` when training
    begins. Put it last among the callbacks: an epoch is backed up only once every other
    callback has recorded it.

    Args:
        backup_dir: the phase's backup folder.
        start: the generation to restore (from :func:`latest_generation`), or None.
    """

    def __init__(self, backup_dir, start=None):
        super().__init__()
        self.backup_dir, self.start = backup_dir, start

    def on_train_begin(self, logs=None):
        if self.start is not None:
            restore_weights(self.model, self.start)

    def on_epoch_end(self, epoch, logs=None):
        save_generation(self.model, self.backup_dir, epoch + 1)


def save_generation(model, backup_dir, epoch):
    """Writes ``epoch_<epoch>.weights.h5`` and its record, then drops generations beyond the
    newest :data:`KEEP`."""
    os.makedirs(backup_dir, exist_ok=True)
    name = f"epoch_{epoch}.weights.h5"
    path = os.path.join(backup_dir, name)
    record = {}

    def write(partial):
        model.save_weights(partial)
        record.update(size=os.path.getsize(partial), sha256=file_sha256(partial))

    write_atomically(path, write)
    write_json(
        os.path.join(backup_dir, f"epoch_{epoch}.json"), {"epoch": epoch, "weights": name, **record}
    )
    older = sorted(
        int(match.group(1))
        for match in map(_RECORD.match, os.listdir(backup_dir))
        if match and int(match.group(1)) < epoch
    )
    for old in older[: max(0, len(older) - (KEEP - 1))]:
        for stale in (f"epoch_{old}.json", f"epoch_{old}.weights.h5"):
            try:
                os.remove(os.path.join(backup_dir, stale))
            except FileNotFoundError:
                pass
