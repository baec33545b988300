"""Agreement between annotators: Fleiss' kappa and Krippendorff's alpha.

Class answers in either layout of :mod:`crowd_layers.aggregation.answers`; Krippendorff's alpha
at the ordinal, interval and ratio levels takes float answers, as
:mod:`crowd_layers.aggregation.continuous` does.
"""

import warnings

import krippendorff
import numpy as np

from crowd_layers.aggregation.answers import count_votes
from crowd_layers.checks import check_float_answers

__all__ = ["fleiss_kappa", "krippendorff_alpha"]

_ALPHA_LEVELS = ("nominal", "ordinal", "interval", "ratio")


def fleiss_kappa(answers, num_classes=None):
    r"""Fleiss' kappa for nominal answers, any number of raters per item.

    With ``n_ij`` the number of answers giving class ``j`` to item ``i`` and
    ``n_i = sum_j n_ij``:

    ``P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1))``, ``P_bar = mean_i P_i``,
    ``p_j = sum_i n_ij / sum_i n_i``, ``P_e = sum_j p_j^2``,
    ``kappa = (P_bar - P_e) / (1 - P_e)``.

    With the same number of raters on every item this is exactly Fleiss' formula; with varying
    numbers it is the usual generalisation (per-item agreement averaged over items, chance
    agreement from the pooled answers). Items with fewer than 2 answers carry no agreement
    information and are ignored (in ``P_bar`` and in ``p_j``). When no item has 2 answers, or
    all answers are the same class (``P_e = 1``), kappa is undefined: NaN with a
    ``RuntimeWarning``.

    J. L. Fleiss, "Measuring nominal scale agreement among many raters", Psychological
    Bulletin 76(5), 378-382, 1971. https://doi.org/10.1037/h0031619

    Args:
        answers: dense ``(n_items, n_annotators)`` int matrix with -1 for no answer, or a
            tuple ``(items, annotators, labels)``.
        num_classes: number of classes; inferred when None.

    Returns:
        kappa as a Python float.

    Examples:
        >>> round(fleiss_kappa([[0, 0, 0], [1, 1, 0], [1, 1, 1]]), 4)
        0.55
    """
    counts = count_votes(answers, num_classes).astype(np.float64)
    n_i = counts.sum(axis=1)
    counts, n_i = counts[n_i >= 2], n_i[n_i >= 2]
    if not len(n_i):
        warnings.warn(
            "fleiss_kappa: no item has 2 or more answers; kappa is NaN.", RuntimeWarning, 2
        )
        return float("nan")
    p_bar = np.mean(((counts**2).sum(axis=1) - n_i) / (n_i * (n_i - 1)))
    p_j = counts.sum(axis=0) / n_i.sum()
    p_e = float(np.sum(p_j**2))
    if np.isclose(p_e, 1.0):
        warnings.warn(
            "fleiss_kappa: every answer is the same class; kappa is NaN.", RuntimeWarning, 2
        )
        return float("nan")
    return float((p_bar - p_e) / (1.0 - p_e))


def krippendorff_alpha(answers, level="nominal", num_classes=None):
    """Krippendorff's alpha, computed by the ``krippendorff`` package.

    Args:
        answers: for ``level="nominal"``, class answers as in :func:`majority_vote` (dense int
            matrix with -1 for no answer, or a long-format tuple). For ``"ordinal"``,
            ``"interval"`` and ``"ratio"``, a float ``(n_items, n_annotators)`` matrix of values
            with NaN (or 999999999) for no answer; -1 is a value there, not a missing answer.
        level: level of measurement: ``"nominal"``, ``"ordinal"``, ``"interval"`` or
            ``"ratio"``.
        num_classes: number of classes (nominal only); inferred when None.

    Returns:
        alpha as a Python float; NaN with a ``RuntimeWarning`` when it is undefined (no item
        with 2 answers, or fewer than 2 distinct values among such items).

    K. Krippendorff, "Computing Krippendorff's Alpha-Reliability", 2011.
    https://repository.upenn.edu/asc_papers/43

    Examples:
        >>> round(krippendorff_alpha([[0, 0], [1, 1], [1, 0]]), 4)
        0.4444
    """
    if level not in _ALPHA_LEVELS:
        raise ValueError(f"`level` must be one of {_ALPHA_LEVELS}. Received: level={level!r}")
    if level == "nominal":
        value_counts = count_votes(answers, num_classes)
    else:
        reliability = check_float_answers(answers)
        values = np.unique(reliability[~np.isnan(reliability)])
        value_counts = (reliability[..., None] == values).sum(axis=1)
    pairable = value_counts[value_counts.sum(axis=1) >= 2]
    if (pairable.sum(axis=0) > 0).sum() < 2:
        warnings.warn(
            "krippendorff_alpha: fewer than 2 distinct values among items with 2 or more answers; "
            "alpha is NaN.",
            RuntimeWarning,
            2,
        )
        return float("nan")
    if level == "nominal":
        return float(krippendorff.alpha(value_counts=value_counts, level_of_measurement=level))
    return float(krippendorff.alpha(reliability_data=reliability.T, level_of_measurement=level))
