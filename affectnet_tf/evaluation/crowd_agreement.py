"""Human agreement on a crowd folder (:mod:`tfds_affectnet.crowd_folder`) from its answers
alone: no images, no model, no TFDS preparation.

:func:`folder_agreement` scores the folder's answered images with
:func:`affectnet_tf.evaluation.agreement.annotator_agreement`: each annotator against the
leave-one-out majority (mean) of the others, the crowd's alpha and kappa, and each annotator
against the truth of ``truth.csv`` when the folder has one. ``python -m affectnet_tf.agreement
--crowd-dir DIR`` is its command line.
"""

import logging

import numpy as np

from affectnet_tf.evaluation.agreement import annotator_agreement
from tfds_affectnet import crowd_folder

__all__ = ["folder_agreement"]

logger = logging.getLogger(__name__)


def folder_agreement(folder, tie_break="keyed"):
    """:func:`~affectnet_tf.evaluation.agreement.annotator_agreement` of a crowd folder.

    Args:
        folder: the crowd folder (``images/``, ``answers.csv`` or ``answers_<task>.csv``,
            optional ``truth.csv`` and ``classes.txt``).
        tie_break: the majority vote's tie rule; the default breaks ties by the image's file
            name, as training and evaluation do.

    Returns:
        The result, with ``class_names``, ``annotator_names`` (the annotator axis: annotator
        ``r`` of the result is ``annotator_names[r]``), ``tasks``, ``truth`` (whether the
        ``original_*`` figures are against truth.csv) and ``dropped`` (images left out, per
        reason).
    """
    content = crowd_folder.read_crowd_folder(folder)
    names = content.answered
    dropped = {"no_answer": len(content.answers) - len(names)}
    logger.info("Scoring %s: %d images, %d annotators", folder, len(names), len(content.annotators))
    if not names:
        raise ValueError(f"The crowd folder {folder} has no answered image to score.")

    def stack(key):
        return np.stack([content.answers[name][key] for name in names])

    truth = None
    if content.truth is not None and "expression" in content.truth_tasks:
        no_truth = {"true_expression": -1}
        truth = np.array([content.truth.get(n, no_truth)["true_expression"] for n in names])
    matrices = {
        f"crowd_{task}": stack(f"crowd_{task}") for task in content.tasks if task != "expression"
    }
    result = annotator_agreement(
        stack("crowd_expression") if "expression" in content.tasks else None,
        **matrices,
        original_expression=truth,
        num_classes=len(content.class_names),
        file_names=np.array(names),
        tie_break=tie_break,
    )
    result.update(
        class_names=list(content.class_names),
        annotator_names=list(content.annotators),
        tasks=list(content.tasks),
        truth=truth is not None,
        dropped={k: v for k, v in dropped.items() if v},
    )
    return result
