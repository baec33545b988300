"""The run folder: starting, resuming and finishing a run safely.

A run folder holds ``config.yaml`` from the start and a ``backup/`` work folder until the run
has finished (``metrics.json`` written). Starting the training command on a folder:

- empty or absent: a new run;
- holding an unfinished run (``config.yaml`` and ``backup/``) with the same settings: it
  resumes after the last finished epoch (``--resume`` requires this case);
- holding a run with other settings, a finished run, or files that are not a run: an error
  naming the differing settings or the files, unless ``--overwrite`` (which deletes it first).

Settings that say where things are (:data:`affectnet_tf.training.config.RESUME_NEUTRAL`) may differ.

Every file of the folder is written atomically (:mod:`affectnet_tf.files`); ``config.yaml``
ends with the SHA-256 of the lines above it, so a damaged copy is told from a run with other
settings. Partial files left by a killed writer are removed when the run resumes.
"""

import dataclasses
import hashlib
import os
import re
import shutil
import tempfile

import yaml

from affectnet_tf.files import atomic_open, json_ready, remove_partial_files
from affectnet_tf.training.backups import DamagedRunError
from affectnet_tf.training.config import DEFAULTS, config_differences, load_config

__all__ = [
    "SavedRun",
    "load_run",
    "RunFolder",
    "prepare_run_folder",
    "read_run_config",
    "check_run_config",
    "write_run_config",
]

ROLES_KEY = "data_roles"  # config.yaml's record of the images of each role (not a setting)
_HEADER = "# affectnet-tf run settings; the last line holds their checksum\n"
_CHECKSUM = re.compile(r"^# sha256 of the lines above: ([0-9a-f]{64})\n?$")


@dataclasses.dataclass
class RunFolder:
    """Where a run writes: ``output_dir`` (the chief's ``run_dir``; other workers write into a
    temporary ``run_dir``), its ``work_dir`` for backups, and whether it resumes."""

    output_dir: str
    run_dir: str
    work_dir: str
    resuming: bool
    chief: bool

    @property
    def restore_dir(self):
        """The chief's work folder, which every worker restores from."""
        return os.path.join(self.output_dir, "backup")


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """A trained run as evaluate, export, predict and serve read it (:func:`load_run`).

    Attributes:
        folder: the run folder.
        model_path: its prediction model (``model.keras``, or the ``.keras`` file given).
        settings: the settings of its ``config.yaml`` that this version knows (``{}`` without
            one).
        roles: the images of each data role recorded there (None without).
        ignored: settings of ``config.yaml`` this version does not know (an older version's).
    """

    folder: str
    model_path: str
    settings: dict
    roles: dict | None = None
    ignored: tuple = ()

    @property
    def config_path(self):
        """The run's ``config.yaml`` (it may not exist)."""
        return os.path.join(self.folder, "config.yaml")

    def load_model(self):
        """The prediction model (:func:`affectnet_tf.modeling.models.load_model`)."""
        from affectnet_tf.modeling.models import load_model

        return load_model(self.model_path)


def load_run(path):
    """The run folder (or ``.keras`` file) at ``path``: where its model is, its settings.

    Raises:
        FileNotFoundError: no such folder, or no ``model.keras`` in it (an unfinished run?).
    """
    given = os.fspath(path)
    model_path = os.path.join(given, "model.keras") if os.path.isdir(given) else given
    if not os.path.isfile(model_path):
        raise FileNotFoundError(
            f"No model.keras in the run folder: {model_path} does not exist (an unfinished "
            f"run?). Received: model_dir={given!r}"
        )
    model_path = os.path.abspath(model_path)
    folder = os.path.dirname(model_path)
    config_path = os.path.join(folder, "config.yaml")
    saved = load_config(config_path) if os.path.isfile(config_path) else {}
    roles = saved.pop(ROLES_KEY, None)
    ignored = tuple(sorted(set(saved) - set(DEFAULTS)))
    settings = {key: value for key, value in saved.items() if key in DEFAULTS}
    return SavedRun(folder, model_path, settings, roles, ignored)


def read_run_config(path):
    """The settings of a run's ``config.yaml`` (without its data-role record)."""
    settings = load_config(path)
    settings.pop(ROLES_KEY, None)
    return settings


def check_run_config(path):
    """Raises :class:`affectnet_tf.training.backups.DamagedRunError` when ``config.yaml`` does not end
    with the checksum of its lines (cut short or changed) or does not parse. Files written
    before the checksum existed (no header line) are only parsed."""
    recovery = (
        "Restore it from a copy, or start the run again with --overwrite (which deletes the "
        "folder)."
    )
    with open(path, "rb") as stream:
        lines = stream.read().splitlines(keepends=True)
    match = _CHECKSUM.match(lines[-1].decode("utf-8", "replace")) if lines else None
    if match:
        if hashlib.sha256(b"".join(lines[:-1])).hexdigest() != match.group(1):
            raise DamagedRunError(
                f"{path} is damaged: its lines do not match the checksum on its last line. "
                + recovery
            )
    elif not lines or lines[0].decode("utf-8", "replace") == _HEADER:
        raise DamagedRunError(f"{path} is damaged (cut short: no checksum line). {recovery}")
    try:
        read_run_config(path)
    except Exception as error:  # yaml.YAMLError, a mapping that is not one ...
        raise DamagedRunError(f"{path} is damaged ({error}). {recovery}") from error


def write_run_config(folder, config, roles_record=None):
    """Writes ``config.yaml``: every setting, then the images of each role."""
    record = json_ready(config.to_dict())
    if roles_record is not None:
        record[ROLES_KEY] = json_ready(roles_record)
    text = (_HEADER + yaml.safe_dump(record, sort_keys=False)).encode("utf-8")
    with atomic_open(os.path.join(folder, "config.yaml"), "wb") as stream:
        stream.write(text)
        stream.write(f"# sha256 of the lines above: {hashlib.sha256(text).hexdigest()}\n".encode())


def prepare_run_folder(config, chief=True, finished_marker="metrics.json"):
    """Checks ``config.output_dir`` as the module docstring says and returns a
    :class:`RunFolder`. Raises ``ValueError`` naming the problem."""
    output_dir = os.path.abspath(config.output_dir)
    work_dir_of_chief = os.path.join(output_dir, "backup")
    if not chief:  # workers follow the chief, which checked the folder
        run_dir = tempfile.mkdtemp(prefix="affectnet_tf_worker_")
        return RunFolder(
            output_dir,
            run_dir,
            os.path.join(run_dir, "backup"),
            os.path.isdir(work_dir_of_chief),
            chief,
        )
    if config.overwrite and os.path.isdir(output_dir):
        shutil.rmtree(output_dir)
    config_path = os.path.join(output_dir, "config.yaml")
    resuming = False
    if os.path.exists(config_path):
        check_run_config(config_path)
        differences = config_differences(read_run_config(config_path), config)
        if differences:
            listed = "; ".join(
                f"{name}: {old!r} there, {new!r} now" for name, old, new in differences
            )
            raise ValueError(
                f"The run folder {output_dir} holds a run with other settings ({listed}). "
                "Use the same settings to resume it, another --output-dir, or --overwrite to "
                "replace it."
            )
        if not os.path.isdir(work_dir_of_chief):
            state = (
                "a finished run"
                if os.path.exists(os.path.join(output_dir, finished_marker))
                else "a run without a backup to resume from"
            )
            raise ValueError(
                f"The run folder {output_dir} holds {state}; choose another --output-dir or "
                "pass --overwrite."
            )
        resuming = True
        remove_partial_files(output_dir)
    elif os.path.isdir(output_dir) and os.listdir(output_dir):
        raise ValueError(
            f"The folder {output_dir} is not empty and holds no run (no config.yaml): "
            f"{sorted(os.listdir(output_dir))[:5]}. Choose another --output-dir or pass "
            "--overwrite to delete it."
        )
    if config.resume and not resuming:
        raise ValueError(f"--resume: there is no interrupted run to resume in {output_dir}.")
    return RunFolder(output_dir, output_dir, work_dir_of_chief, resuming, chief)
