"""The model against single annotators, and against AffectNet's label, on an evaluated split.

On a split with crowd answers (AffectNetC25, synthetic_faces) the model's predictions on the
evaluated images are scored as one more annotator
(:func:`affectnet_tf.evaluation.agreement.annotator_agreement`): against the leave-one-out
references of the crowd, beside each annotator; where the split also holds AffectNet's original
label, each annotator and the model are scored against it too. :func:`agreement_rows` names the
images these sections need, so the model's one pass over the split covers them.
"""

import warnings

import numpy as np

from affectnet_tf.data.partition import subset_mask
from affectnet_tf.data.targets import TASK_HEADS, build_targets
from affectnet_tf.evaluation.agreement import annotator_agreement
from affectnet_tf.modeling import metrics
from tfds_affectnet import labels

__all__ = ["split_agreement", "agreement_rows", "crowd_answers", "original_labels"]


def crowd_answers(table, heads, num_classes):
    """``({head: (N, R) answers}, rows with answers)`` of the model's heads (target ``cv``)."""
    task = {tuple(h): t for t, h in TASK_HEADS.items()}.get(tuple(heads), "all")
    answers, answered, _, _ = build_targets(
        table, task=task, target="cv", va_target="cv", num_classes=num_classes
    )
    return (answers if isinstance(answers, dict) else {heads[0]: answers}), answered


def original_labels(table, num_classes):
    """``(codes, rows with a label, dropped counts)`` of AffectNet's original labels."""
    codes, known, _, extras = build_targets(
        table, task="exp", target="original", num_classes=num_classes
    )
    return codes, known, extras["dropped"]


def _has_original(table, heads):
    return "crowd_expression" in table and "expression" in heads and "affectnet_expression" in table


def agreement_rows(table, heads, num_classes):
    """The rows :func:`split_agreement` scores: crowd answers, or AffectNet's label."""
    rows = np.zeros(len(table["file_name"]), bool)
    if "crowd_expression" in table:
        rows |= crowd_answers(table, heads, num_classes)[1]
    if _has_original(table, heads):
        rows |= original_labels(table, num_classes)[1]
    return rows


def _subset_rows(table, options):
    """The table's rows in the evaluated subset of ``options`` (all of them for None)."""
    if options is None:
        return subset_mask(table, None)
    return subset_mask(table, options.subset, options.partition)


def split_agreement(table, rows, predictions, options=None, num_classes=8):
    """Model against single annotators on a split with crowd answers, or None without them.

    Args:
        table: the split's label table (:func:`affectnet_tf.data.tables.load_label_table`).
        rows: the table row of each prediction (images of the evaluated subset).
        predictions: ``{head: array}`` of the model on those images
            (:func:`affectnet_tf.evaluation.predictions.predict_split`).
        options: the :class:`~affectnet_tf.evaluation.options.EvaluationOptions` of the
            evaluated split (its ``subset`` and ``partition``), or None for the whole split.
        num_classes: the model's number of classes.

    Returns:
        :func:`~affectnet_tf.evaluation.agreement.annotator_agreement`'s dict on the predicted
        images with crowd answers, majority-vote ties broken by the file name as in training,
        with each annotator's and the model's agreement with AffectNet's original label where
        the split has it; None when none of the predicted images has crowd answers.
    """
    if "crowd_expression" not in table:
        return None
    heads = list(predictions)
    answers, answered = crowd_answers(table, heads, num_classes)
    scored = answered[rows]
    if not scored.any():
        return None
    at = rows[scored]
    crowd = {head: answers[head][at] for head in answers}
    model = {head: value[scored] for head, value in predictions.items()}
    result = annotator_agreement(
        crowd.get("expression"),
        crowd_valence=crowd.get("valence"),
        crowd_arousal=crowd.get("arousal"),
        model_expression=model.get("expression"),
        model_valence=model.get("valence"),
        model_arousal=model.get("arousal"),
        num_classes=num_classes,
        file_names=table["file_name"][at],
    )
    if _has_original(table, heads):
        _add_original(
            result, table, options, rows, predictions["expression"].argmax(axis=1), num_classes
        )
    return result


def _add_original(result, table, options, predicted_rows, guesses, num_classes):
    """Each annotator (from the label table) and the model (its ``guesses`` on the table's
    ``predicted_rows``) against AffectNet's label."""
    rows = _subset_rows(table, options)
    answers = table["crowd_expression"][rows].astype(np.int64)
    if num_classes == 7:
        answers = np.where(answers == labels.CONTEMPT, -1, answers)
    human = annotator_agreement(
        answers,
        original_expression=table["affectnet_expression"][rows],
        num_classes=num_classes,
        file_names=table["file_name"][rows],
    )
    codes, known, dropped = original_labels(table, num_classes)
    labelled = known[predicted_rows]
    if not labelled.any():  # no evaluated image has an original label
        subset = None if options is None else options.subset
        result["original_note"] = (
            f"No evaluated image has an original label (subset={subset}); dropped: {dropped}"
        )
        return
    truth, guess = codes[predicted_rows[labelled]], guesses[labelled]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model_vs = {
            "accuracy": metrics.accuracy(truth, guess),
            "f1_macro": metrics.f1(truth, guess, "macro"),
        }
    result["model_vs_original"] = model_vs
    for row, human_row in zip(result["annotators"], human["annotators"]):
        row["original_accuracy"] = human_row.get("original_accuracy")
        row["original_f1_macro"] = human_row.get("original_f1_macro")
    entry = dict(human["summary"].get("original_accuracy", {}))
    if entry:
        values = [r["original_accuracy"] for r in human["annotators"]]
        values = np.array([v for v in values if v is not None], np.float64)
        entry["model"] = model_vs["accuracy"]
        entry["model_above"] = (
            float(np.mean(values < model_vs["accuracy"])) if len(values) else None
        )
        result["summary"]["original_accuracy"] = entry
