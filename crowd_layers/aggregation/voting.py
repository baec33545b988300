"""Majority vote with four tie rules, the vote distribution (soft labels), and each annotator's
confusion matrix against the votes.

Answers in either layout of :mod:`crowd_layers.aggregation.answers`.
"""

import logging
import warnings

import numpy as np

from crowd_layers.aggregation.answers import count_votes, to_long, vote_counts

__all__ = ["majority_vote", "vote_distribution", "majority_vote_confusions"]

logger = logging.getLogger(__name__)

_TIE_BREAKS = ("random", "lowest", "prior", "keyed")


def majority_vote(
    answers, num_classes=None, tie_break="random", seed=0, return_info=False, keys=None
):
    """Most frequent answer per item.

    Ties between the most frequent classes are broken by ``tie_break``:

    - ``"random"``: uniformly among the tied classes, with ``np.random.default_rng(seed)``;
    - ``"lowest"``: the lowest class index (what ``np.argmax`` does);
    - ``"prior"``: the tied class answered most often over the whole data set (then lowest);
    - ``"keyed"``: by a fixed key of each item (``keys``, e.g. a hash of its file name): the
      tied classes in index order, the one at position ``key mod n_tied``. An item's label
      then depends on its own answers and key only, never on the other items, their order or
      a seed.

    The number of tied items is logged (``logging`` WARNING under ``crowd_layers.aggregation``)
    and returned with ``return_info=True``. Items without any answer get label ``-1``; they
    are counted and reported with a ``UserWarning``.

    Args:
        answers: dense ``(n_items, n_annotators)`` int matrix with -1 for no answer, or a
            tuple ``(items, annotators, labels)`` (see :mod:`crowd_layers.aggregation`).
        num_classes: number of classes; inferred as ``max(label) + 1`` when None.
        tie_break: ``"random"``, ``"lowest"``, ``"prior"`` or ``"keyed"``.
        seed: seed of the random tie break.
        keys: non-negative integer key per item, for ``tie_break="keyed"``.
        return_info: also return a dict with ``n_ties``, ``tied_items`` (indices),
            ``n_unanswered`` and ``unanswered_items``.

    Returns:
        ``labels`` of shape ``(n_items,)`` (int64, -1 for unanswered items), or
        ``(labels, info)`` when ``return_info`` is True.

    Examples:
        >>> majority_vote([[0, 1, 1], [2, 2, -1]], num_classes=3)
        array([1, 2])
    """
    if tie_break not in _TIE_BREAKS:
        raise ValueError(
            f"`tie_break` must be one of {_TIE_BREAKS}. Received: tie_break={tie_break!r}"
        )
    counts = count_votes(answers, num_classes)
    if tie_break == "keyed":
        keys = _checked_keys(keys, counts.shape[0])
    answered = counts.sum(axis=1) > 0
    if counts.shape[1] == 0:
        labels = np.full(counts.shape[0], -1, dtype=np.int64)
        is_max = np.zeros_like(counts, dtype=bool)
    else:
        is_max = counts == counts.max(axis=1, keepdims=True)
        labels = _break_ties(counts, is_max, tie_break, seed, keys)
        labels = np.where(answered, labels, -1).astype(np.int64)
    info = _vote_info(answered, is_max)
    _report(info, counts.shape[0], tie_break)
    return (labels, info) if return_info else labels


def _checked_keys(keys, n_items):
    """``keys`` as an array of one non-negative integer per item, or a ``ValueError``."""
    if keys is None or np.shape(keys) != (n_items,):
        raise ValueError(
            "`tie_break='keyed'` needs one integer key per item. Received: keys with shape "
            f"{None if keys is None else np.shape(keys)} for {n_items} items"
        )
    keys = np.asarray(keys)
    if keys.dtype.kind not in "iu" or (keys.dtype.kind == "i" and np.any(keys < 0)):
        raise ValueError(f"`keys` must be non-negative integers. Received dtype {keys.dtype}")
    return keys


def _break_ties(counts, is_max, tie_break, seed, keys):
    """The chosen class of each item among its most frequent ones (``is_max``)."""
    if tie_break == "lowest":
        return np.argmax(is_max, axis=1)
    if tie_break == "prior":
        totals = counts.sum(axis=0)
        return np.argmax(np.where(is_max, totals, -1), axis=1)
    if tie_break == "keyed":
        position = keys % np.maximum(is_max.sum(axis=1), 1).astype(keys.dtype)
        rank = np.cumsum(is_max, axis=1) - 1  # index among the tied classes
        return np.argmax(is_max & (rank == position[:, None]), axis=1)
    noise = np.random.default_rng(seed).random(counts.shape)
    return np.argmax(np.where(is_max, noise, -1.0), axis=1)


def _vote_info(answered, is_max):
    """The ``info`` dict of :func:`majority_vote`: tied and unanswered items."""
    tied = answered & (is_max.sum(axis=1) > 1)
    return {
        "n_ties": int(tied.sum()),
        "tied_items": np.flatnonzero(tied),
        "n_unanswered": int((~answered).sum()),
        "unanswered_items": np.flatnonzero(~answered),
    }


def _report(info, n_items, tie_break):
    """Logs the ties and warns of the unanswered items (at the caller of :func:`majority_vote`)."""
    if info["n_ties"]:
        logger.warning(
            "majority_vote: %d of %d items have a tie for the most frequent class "
            "(broken with tie_break=%r).",
            info["n_ties"],
            n_items,
            tie_break,
        )
    if info["n_unanswered"]:
        warnings.warn(
            f"majority_vote: {info['n_unanswered']} of {n_items} items have no answer; "
            "their label is -1.",
            UserWarning,
            stacklevel=3,
        )


def vote_distribution(answers, num_classes=None):
    """Soft labels: the fraction of each item's answers that gave each class.

    Rows sum to 1. An item without any answer gets the uniform distribution ``1 / K`` (never
    NaN), and a ``UserWarning`` gives how many items that was.

    Args:
        answers: dense ``(n_items, n_annotators)`` int matrix with -1 for no answer, or a
            tuple ``(items, annotators, labels)``.
        num_classes: number of classes ``K``; inferred as ``max(label) + 1`` when None.

    Returns:
        float64 array of shape ``(n_items, K)``.

    Examples:
        >>> vote_distribution([[0, 1, 1, -1]], num_classes=2)
        array([[0.33333333, 0.66666667]])
    """
    counts = count_votes(answers, num_classes).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    unanswered = totals[:, 0] == 0
    if counts.shape[1] == 0:
        return counts
    if unanswered.any():
        warnings.warn(
            f"vote_distribution: {int(unanswered.sum())} of {counts.shape[0]} items have no "
            "answer; their distribution is uniform.",
            UserWarning,
            stacklevel=2,
        )
    uniform = np.full_like(counts, 1.0 / counts.shape[1])
    return np.where(unanswered[:, None], uniform, counts / np.where(totals == 0, 1.0, totals))


def majority_vote_confusions(answers, num_classes=None, smoothing=1.0):
    """Each annotator's confusion matrix against the (soft) majority vote.

    ``C_r[k, j] ∝ smoothing + sum_{i: y_ir = j} v_ik`` with ``v`` the vote distribution
    (:func:`vote_distribution`): one M-step of Dawid-Skene from the votes, with no tie to
    break. A start for the crowd layers' confusion matrices
    (``CrowdsPooled(init_confusions=...)``) that needs no EM.

    Args:
        answers: dense ``(n_items, n_annotators)`` int matrix with -1 for no answer, or a
            tuple ``(items, annotators, labels)``.
        num_classes: number of classes ``K``; inferred as ``max(label) + 1`` when None.
        smoothing: pseudo-count ``> 0`` added to every cell (an annotator without answers
            gets uniform rows).

    Returns:
        float64 array ``(n_annotators, K, K)``: rows the true class, columns the answer, rows
        sum to one.

    Examples:
        >>> majority_vote_confusions([[0, 0], [1, 0]], num_classes=2, smoothing=1.0)[1]
        array([[0.71428571, 0.28571429],
               [0.6       , 0.4       ]])
    """
    if not np.isscalar(smoothing) or not smoothing > 0:
        raise ValueError(
            f"`smoothing` must be a positive number. Received: smoothing={smoothing!r}"
        )
    items, annotators, labels, n_items, n_annotators, k = to_long(answers, num_classes)
    counts = vote_counts(items, labels, n_items, k).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    votes = counts / np.where(totals == 0, 1.0, totals)
    confusions = np.full((n_annotators, k, k), float(smoothing))
    # confusions[r, :, j] += votes[i] for every answer (i, r, j)
    np.add.at(confusions, (annotators, slice(None), labels), votes[items])
    return confusions / confusions.sum(axis=-1, keepdims=True)
