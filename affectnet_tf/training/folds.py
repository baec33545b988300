"""K-fold cross-validation (``--folds K``): the settings of each fold's run, the folds an
interrupted cross-validation has finished, and the summary over the folds.

:func:`affectnet_tf.training.run.cross_validate` trains the folds with these; fold ``k`` is
the test set of the run in ``RUN/fold_<k>``.
"""

import json
import os

import numpy as np

from affectnet_tf.training.config import RunConfig
from affectnet_tf.training.run_folder import read_run_config

__all__ = ["fold_dir", "fold_config", "finished_fold", "metric_leaves", "fold_summary"]


def fold_dir(output_dir, fold):
    """``RUN/fold_<fold>``."""
    return os.path.join(output_dir, f"fold_{fold}")


def fold_config(config, fold):
    """The :class:`RunConfig` of fold ``fold``'s run: the cross-validation's settings with
    ``fold`` set, in its own folder, neither overwriting nor requiring a resume."""
    return RunConfig.from_dict(
        {
            **config.to_dict(),
            "fold": fold,
            "output_dir": fold_dir(os.path.abspath(config.output_dir), fold),
            "overwrite": False,
            "resume": False,
        }
    )


def finished_fold(folder, fold):
    """``{"run_dir", "metrics"}`` of a fold whose run has finished (``metrics.json`` and no
    ``backup/``), else None.

    Raises:
        ValueError: the folder holds another fold's run, or its ``metrics.json`` is damaged
            (the message says how to redo the fold).
    """
    done = os.path.join(folder, "metrics.json")
    if not os.path.exists(done) or os.path.isdir(os.path.join(folder, "backup")):
        return None
    if read_run_config(os.path.join(folder, "config.yaml"))["fold"] != fold:
        raise ValueError(f"{folder} holds another fold's run.")
    try:
        with open(done, encoding="utf-8") as stream:
            return {"run_dir": folder, "metrics": json.load(stream)}
    except ValueError as error:
        raise ValueError(
            f"{done} is damaged ({error}): delete the folder {folder} and run the same "
            "command again to redo that fold."
        ) from error


def metric_leaves(metrics, prefix=""):
    """The numeric leaves of a metrics dict as ``{"head/metric": value}``."""
    result = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            result.update(metric_leaves(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            result[name] = float(value)
    return result


def fold_summary(folds, results):
    """The record of ``RUN/metrics.json``: ``folds``, ``fold_dirs`` and, for every metric all
    folds have, its ``mean``, sample standard deviation ``std`` and per-fold values."""
    per_fold = [metric_leaves(result["metrics"]) for result in results]
    keys = [key for key in per_fold[0] if all(key in values for values in per_fold)]
    summary = {
        key: {
            "mean": float(np.mean([values[key] for values in per_fold])),
            "std": float(np.std([values[key] for values in per_fold], ddof=1)),
            "folds": [values[key] for values in per_fold],
        }
        for key in keys
    }
    return {"folds": folds, "fold_dirs": [r["run_dir"] for r in results], **summary}
