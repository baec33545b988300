"""The learned annotators of a crowd run beside the true simulated ones, for the report.

A crowd run (target ``cv``) saves its crowd layer's annotators in ``annotators.npz``
(:func:`read_annotators`): expression confusion matrices, valence/arousal scales and biases.
On ``synthetic_faces`` the true simulated annotators are known
(:func:`simulated_annotators`); :func:`annotator_figures` puts the two side by side as
:func:`affectnet_tf.evaluation.reports.evaluation_report` lays them out.
"""

import os
import warnings

import numpy as np

from affectnet_tf.modeling import metrics

__all__ = ["read_annotators", "simulated_annotators", "annotator_figures"]


def read_annotators(run_dir):
    """``{name: array}`` of the run folder's ``annotators.npz``, or None without one."""
    path = os.path.join(run_dir, "annotators.npz") if run_dir else None
    if not path or not os.path.exists(path):
        return None
    with np.load(path) as stored:
        return {key: stored[key] for key in stored.files}


def simulated_annotators(dataset_name, builder):
    """The true simulated annotators of synthetic_faces (``expression_confusion`` ``(R, 8, 8)``,
    ``valence_scale`` ...), or None for other datasets."""
    if not dataset_name.startswith("synthetic_faces"):
        return None
    try:
        from tfds_affectnet.synthetic_faces import simulated_annotators as simulated
    except ImportError:
        return None
    return simulated(builder.builder_config)


def annotator_figures(annotators, simulated):
    """The learned ``annotators`` of a crowd run beside the true ``simulated`` ones (or None).

    Returns:
        ``{"confusions", "true_confusions", "note", "parameters", "simulated"}``, the
        ``annotators`` argument of :func:`affectnet_tf.evaluation.reports.evaluation_report`.
    """
    figures = {"confusions": None, "true_confusions": None, "note": None, "parameters": []}
    figures["simulated"] = simulated is not None
    if "expression_confusions" in annotators:
        learned = np.asarray(annotators["expression_confusions"])
        figures["confusions"] = learned
        if simulated is not None and "expression_confusion" in simulated:
            confusions = np.asarray(simulated["expression_confusion"], np.float64)
            if confusions.shape == learned.shape:
                figures["true_confusions"] = confusions
            else:
                figures["note"] = (
                    f"The simulated confusions {confusions.shape} do not match the learned "
                    f"ones {learned.shape} (a 7-class run?); only the learned ones are shown."
                )
    for dimension in ("valence", "arousal"):
        for part in ("scale", "bias"):
            key = f"{dimension}_{part}"
            if key in annotators:
                figures["parameters"].append(_parameter_row(key, annotators[key], simulated))
    return figures


def _parameter_row(key, values, simulated):
    """One valence/arousal parameter's row: its spread over the annotators, and its
    correlation with the true simulated values where they are known."""
    values = np.asarray(values, np.float64)
    row = {
        "parameter": key,
        "mean": values.mean(),
        "min": values.min(),
        "max": values.max(),
        "annotator_of_min": int(values.argmin()),
        "correlation": None,
    }
    true = None if simulated is None else simulated.get(key)
    if true is not None and np.shape(true) == values.shape:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            row["correlation"] = metrics.pearson(np.asarray(true, np.float64), values)
    return row
