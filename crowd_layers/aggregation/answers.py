"""The answer layouts every aggregator accepts, their vote counts, and the switch that quiets
the aggregators' reports.

Class answers come in one of two layouts:

- dense: an ``(n_items, n_annotators)`` integer matrix, ``-1`` where an annotator gave no
  answer (NaN in a float matrix is read as ``-1`` too);
- long: a **tuple** ``(items, annotators, labels)`` of three equal-length 1-D integer arrays,
  one entry per answer (``labels == -1`` entries are dropped). ``n_items`` is then
  ``items.max() + 1`` and ``n_annotators`` is ``annotators.max() + 1``.

Both are turned into the long layout (:func:`to_long`); nothing here builds an
``(n_items, n_annotators, K)`` tensor.
"""

import contextlib
import logging
import warnings

import numpy as np

from crowd_layers.checks import check_answers, check_long_format

__all__ = [
    "check_num_classes",
    "to_long",
    "vote_counts",
    "count_votes",
    "quiet_aggregation",
]

# The aggregators' modules log under this name (crowd_layers.aggregation.voting, ...).
PACKAGE_LOGGER = __name__.rpartition(".")[0]


def check_num_classes(num_classes):
    """``num_classes`` as an ``int`` (or None); ``ValueError`` unless a positive integer."""
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise ValueError(
            f"`num_classes` must be a positive integer or None. Received: num_classes={num_classes!r}"
        )
    if num_classes < 1:
        raise ValueError(
            f"`num_classes` must be a positive integer or None. Received: num_classes={num_classes}"
        )
    return int(num_classes)


def to_long(answers, num_classes=None, name="answers"):
    """The answers of either layout, checked, in the long layout.

    Args:
        answers: dense ``(n_items, n_annotators)`` int matrix with -1 for no answer, or a tuple
            ``(items, annotators, labels)``.
        num_classes: number of classes; inferred as ``max(label) + 1`` when None.
        name: the argument's name in error messages.

    Returns:
        ``(items, annotators, labels, n_items, n_annotators, num_classes)``.
    """
    num_classes = check_num_classes(num_classes)
    if isinstance(answers, tuple):
        items, annotators, labels = check_long_format(answers, num_classes, name=name)
        n_items = int(items.max()) + 1 if items.size else 0
        n_annotators = int(annotators.max()) + 1 if annotators.size else 0
    else:
        dense = check_answers(answers, num_classes, name=name)
        n_items, n_annotators = dense.shape
        items, annotators = np.nonzero(dense != -1)
        labels = dense[items, annotators]
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    return items, annotators, labels, n_items, n_annotators, num_classes


def vote_counts(items, labels, n_items, num_classes):
    """``(n_items, num_classes)`` matrix of how many answers gave each class to each item."""
    flat = np.bincount(items * num_classes + labels, minlength=n_items * num_classes)
    return flat.reshape(n_items, num_classes)


def count_votes(answers, num_classes, name="answers"):
    """:func:`vote_counts` of answers in either layout."""
    items, _, labels, n_items, _, num_classes = to_long(answers, num_classes, name=name)
    return vote_counts(items, labels, n_items, num_classes)


@contextlib.contextmanager
def quiet_aggregation():
    """Silences the aggregators' per-call tie log and unanswered-item ``UserWarning``, for
    callers that count ties and unanswered items themselves (``return_info=True``) and report
    them once."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)
