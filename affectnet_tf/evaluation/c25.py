"""Human agreement on the real AffectNetC25 CSVs alone: no images, no model.

:func:`read_c25_csvs` reads the crowd answers of the six C25 CSVs (expression, valence and
arousal of ``set1`` and ``set2``); :func:`csv_agreement` scores each set with
:func:`affectnet_tf.evaluation.agreement.annotator_agreement`, each annotator against the
others, with AffectNet's original label from ``training.csv`` when given: the human ceiling
before any training. ``python -m affectnet_tf.agreement`` is its command line.
"""

import collections
import logging

import numpy as np

from affectnet_tf.evaluation.agreement import annotator_agreement, crowd_majority
from tfds_affectnet import labels, sources

__all__ = ["read_c25_csvs", "csv_agreement"]

logger = logging.getLogger(__name__)


def read_c25_csvs(csv_dir, sets=sources.C25_SETS):
    """The crowd answers of the C25 CSVs in ``csv_dir`` (or its ``AffectNetC25/``).

    Returns:
        ``({set: {"file_name", "affectnet_index", "crowd_expression", "crowd_valence",
        "crowd_arousal"}}, counts)``: arrays in the expression CSV's order, expression in the
        canonical order (-1 for no answer); ``counts`` the cleaned values per reason.
    """
    logger.info("Reading the AffectNetC25 CSVs in %s", csv_dir)
    paths = sources.find_c25_csvs(str(csv_dir))
    if paths is None:
        expected = ", ".join(
            sources.c25_file_name(kind, set_name)
            for set_name in sources.C25_SETS
            for kind in sources.C25_KINDS
        )
        raise FileNotFoundError(
            f"The AffectNetC25 CSVs are not in {csv_dir} (nor in {csv_dir}/{sources.C25_DIR}); "
            f"expected all of: {expected}"
        )
    unknown = sorted(set(sets) - set(sources.C25_SETS))
    if unknown:
        raise ValueError(f"Unknown C25 sets {unknown}; known: {list(sources.C25_SETS)}")
    counts = collections.Counter()
    result = {}
    for set_name in sets:
        rows = sources.read_c25_set(
            {kind: paths[(kind, set_name)] for kind in sources.C25_KINDS}, counts
        )
        result[set_name] = {
            key: np.stack([row[key] for row in rows])
            if key.startswith("crowd")
            else np.array([row[key] for row in rows])
            for key in rows[0]
        }
    return result, counts


def _original_labels(training_csv, file_names):
    """``(codes, counts)``: AffectNet's expression code of each file name in
    ``training.csv`` (``-1`` where missing or unreadable), and the misses per reason."""
    found, duplicates = sources.lookup_training_rows(training_csv, file_names)
    codes = np.full(len(file_names), -1, np.int64)
    missing = unreadable = 0
    for k, name in enumerate(file_names):
        row = found.get(name)
        if row is None:
            missing += 1
            continue
        try:
            value = sources.parse_number(row["expression"])
        except ValueError:
            unreadable += 1
            continue
        codes[k] = int(value) if np.isfinite(value) else -1
    return codes, {
        "not_in_training_csv": missing,
        "unreadable_expression": unreadable,
        "duplicate_rows": duplicates,
    }


def csv_agreement(
    csv_dir,
    sets=sources.C25_SETS,
    num_classes=8,
    training_csv=None,
    tie_break="keyed",
):
    """:func:`~affectnet_tf.evaluation.agreement.annotator_agreement` of each C25 set from the CSVs alone (no images, no model).

    Args:
        csv_dir: folder of the six C25 CSVs (or its parent holding ``AffectNetC25/``).
        sets: the sets to score.
        num_classes: 8, or 7: contempt answers count as no answer and images whose 8-class
            majority is contempt are left out (as :func:`affectnet_tf.make_dataset` does).
        training_csv: AffectNet's ``training.csv``, for the original labels (optional).
        tie_break: the majority vote's tie rule
            (:func:`~affectnet_tf.evaluation.agreement.crowd_majority`); the default breaks
            ties by the image file names of the CSV rows, as training and evaluation do.

    Returns:
        ``{set: result}``, each result with ``cleaned`` (the values :mod:`tfds_affectnet`
        cleaned, per reason) and ``dropped`` (images left out, per reason).
    """
    data, counts = read_c25_csvs(csv_dir, sets)
    results = {}
    for set_name, table in data.items():
        answers = table["crowd_expression"]
        names = table["file_name"]
        keep = np.ones(len(answers), bool)
        dropped = {}
        original = None
        if training_csv:
            original, lookup = _original_labels(training_csv, list(table["file_name"]))
            dropped.update({k: v for k, v in lookup.items() if v})
        if num_classes == 7:
            majority8 = crowd_majority(answers, 8, file_names=names, tie_break=tie_break)
            keep = majority8 != labels.CONTEMPT
            dropped["majority_contempt"] = int((~keep).sum())
            answers = np.where(answers == labels.CONTEMPT, -1, answers)
        elif num_classes != 8:
            raise ValueError(f"`num_classes` must be 8 or 7. Received: num_classes={num_classes}")
        logger.info("Scoring %s: %d images, %d annotators", set_name, keep.sum(), answers.shape[1])
        result = annotator_agreement(
            answers[keep],
            crowd_valence=table["crowd_valence"][keep],
            crowd_arousal=table["crowd_arousal"][keep],
            original_expression=None if original is None else original[keep],
            num_classes=num_classes,
            file_names=names[keep],
            tie_break=tie_break,
        )
        result["cleaned"] = dict(counts)
        result["dropped"] = dropped
        results[set_name] = result
    return results
