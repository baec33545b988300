"""Continuous answers (valence, arousal): each item's mean or median answer.

Answers are a float ``(n_items, n_annotators)`` matrix with NaN (or the reference code's
sentinel ``999999999``) for no answer.
"""

import warnings

import numpy as np

from crowd_layers.checks import check_float_answers

__all__ = ["mean_answer", "median_answer"]


def _reduce_float(answers, reduce, name):
    array = check_float_answers(answers)
    unanswered = np.all(np.isnan(array), axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice": reported below
        result = reduce(array, axis=1) if array.shape[1] else np.full(array.shape[0], np.nan)
    if unanswered.any():
        warnings.warn(
            f"{name}: {int(unanswered.sum())} of {array.shape[0]} items have no answer; "
            "their value is NaN.",
            UserWarning,
            stacklevel=3,
        )
    return result


def mean_answer(answers):
    """Mean of each item's answers, ignoring missing ones (NaN or 999999999).

    Items without any answer give NaN, reported (with their number) by a ``UserWarning``.

    Args:
        answers: float ``(n_items, n_annotators)`` matrix, NaN or 999999999 for no answer.

    Returns:
        float64 array of shape ``(n_items,)``.

    Examples:
        >>> mean_answer([[0.5, np.nan, 0.0], [1.0, 999999999, -1.0]])
        array([0.25, 0.  ])
    """
    return _reduce_float(answers, np.nanmean, "mean_answer")


def median_answer(answers):
    """Median of each item's answers, ignoring missing ones (NaN or 999999999).

    Items without any answer give NaN, reported (with their number) by a ``UserWarning``.

    Args:
        answers: float ``(n_items, n_annotators)`` matrix, NaN or 999999999 for no answer.

    Returns:
        float64 array of shape ``(n_items,)``.

    Examples:
        >>> median_answer([[0.5, np.nan, 0.0, 0.25]])
        array([0.25])
    """
    return _reduce_float(answers, np.nanmedian, "median_answer")
