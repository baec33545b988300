"""The cut of a split into the three data roles: ``train``, ``selection`` and ``test``.

The cut is stratified by each image's majority vote over all its dataset's classes (or its
single label) and seeded (:class:`Partition`); it depends on the file names, the labels and
the seed only, so a run, its resumption and its evaluation all see the same images in each
role.
"""

import dataclasses

import numpy as np

from tfds_affectnet import labels

__all__ = ["SUBSETS", "Partition", "subset_mask"]

SUBSETS = ("train", "selection", "test")


@dataclasses.dataclass(frozen=True)
class Partition:
    """How one split is cut into the three data roles: ``train``, ``selection`` (the data that
    picks the best epoch) and ``test`` (the data that is reported).

    The cut is stratified by each image's majority vote over every class of its dataset
    (AffectNet's 8 whatever ``num_classes``; a crowd folder's own) or its single label, and
    seeded: the images are listed class by class, each class in an order shuffled with
    ``seed`` (from file-name order), and every ``1 / fraction``-th image of that list goes to
    the test set, then likewise to the selection set, so each role holds its share of every
    class (within one image). The roles depend on the file names, the labels and ``seed``
    only, never on the training seed, the task, the target or the order of the files. With
    ``folds``, the list is dealt into ``folds`` folds in turn; fold ``fold`` is the test set
    and ``selection`` of the rest the selection set.

    Args:
        selection: share of the split (of the non-test images with ``folds``) for selection.
        test: share of the split for testing (0 when the test images come from elsewhere).
        seed: seed of the cut.
        folds: number of cross-validation folds (``None``: one cut).
        fold: which fold is the test set, ``0 <= fold < folds``.
    """

    selection: float = 0.1
    test: float = 0.2
    seed: int = 0
    folds: int | None = None
    fold: int = 0

    def __post_init__(self):
        """Checks the fractions and the fold."""
        if not 0.0 <= self.selection < 1.0 or not 0.0 <= self.test < 1.0:
            raise ValueError(
                "The selection and test fractions must be in [0, 1). Received: "
                f"selection={self.selection}, test={self.test}"
            )
        if self.folds is None and self.selection + self.test >= 1.0:
            raise ValueError(
                "The selection and test fractions leave no training images. Received: "
                f"selection={self.selection}, test={self.test}"
            )
        if self.folds is not None and not (self.folds >= 2 and 0 <= self.fold < self.folds):
            raise ValueError(
                f"`folds` must be >= 2 and 0 <= fold < folds. Received: folds={self.folds}, "
                f"fold={self.fold}"
            )


def _strata(table):
    """Each row's class for the stratified cut: the majority vote over all the stored classes
    (AffectNet's 8, or a crowd folder's own, maybe more), else the label."""
    if "crowd_expression" in table:
        answers = np.asarray(table["crowd_expression"], np.int64)
        stored = max(len(labels.EXPRESSION_NAMES), int(answers.max(initial=-1)) + 1)
        return labels.majority_labels(answers, table["file_name"], stored)[0]
    for key in ("expression", "affectnet_expression", "true_expression"):
        if key in table:
            return np.asarray(table[key], np.int64)
    return np.zeros(len(table["file_name"]), np.int64)


def subset_mask(table, subset, partition=None):
    """The rows of a label table that form ``subset`` of its split under ``partition``.

    Args:
        table: a label table (:func:`load_label_table`), with ``file_name``.
        subset: ``None`` (every row), ``"train"``, ``"selection"`` or ``"test"``.
        partition: a :class:`Partition` (default ``Partition()``).

    Returns:
        A boolean mask over the table's rows.
    """
    names = table["file_name"]
    if subset is None:
        return np.ones(len(names), bool)
    if subset not in SUBSETS:
        raise ValueError(f"`subset` must be None or one of {SUBSETS}. Received: subset={subset!r}")
    partition = partition or Partition()
    rng = np.random.default_rng(partition.seed)
    strata = _strata(table)
    # the rows class by class (classes in order), each class in a seeded random order
    order = []
    for stratum in np.unique(strata):
        rows = np.flatnonzero(strata == stratum)
        rows = rows[np.argsort(names[rows], kind="stable")]
        order.append(rows[rng.permutation(len(rows))])
    order = np.concatenate(order)
    role = np.full(len(names), "train", object)
    if partition.folds is None:
        test = _systematic(len(order), partition.test, rng)
        role[order[test]] = "test"
        rest = order[~test]
        fraction = partition.selection / (1.0 - partition.test)
    else:
        folds = (np.arange(len(order)) + rng.integers(partition.folds)) % partition.folds
        role[order[folds == partition.fold]] = "test"
        rest = order[folds != partition.fold]
        fraction = partition.selection
    role[rest[_systematic(len(rest), fraction, rng)]] = "selection"
    return role == subset


def _systematic(n, fraction, rng):
    """Systematic sample: ``fraction`` of ``n`` positions, evenly spaced, random phase."""
    phase = rng.random()
    steps = np.floor((np.arange(n + 1) + phase) * fraction)
    return np.diff(steps) > 0
