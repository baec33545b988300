"""Human agreement: each annotator, and the model, against the other annotators.

For annotator ``r`` the reference of an image is the majority vote of the *other* annotators
for expression and the mean of the other annotators' answers for valence and arousal
(leave-one-out). Annotator ``r`` is scored against those references on the images ``r``
answered (accuracy, macro F1; CCC), and the model is scored against the very same references
on the very same images: the two figures compare the model with one human on equal terms.
The crowd's Krippendorff's alpha and Fleiss' kappa, and each annotator's and the model's
agreement with AffectNet's original label, complete the picture
(:func:`annotator_agreement`; :func:`format_agreement` prints it as a table).

Majority-vote ties are broken as everywhere in the package (``tie_break="keyed"``, the
default): by the image's file name (:func:`tfds_affectnet.labels.majority_labels`), so an
image's reference is the same in training, evaluation and this report, for every seed and
order. The leave-one-out votes use the same keys, and the vote of the whole crowd
(:func:`crowd_majority`) equals :func:`~tfds_affectnet.labels.majority_labels`. Answers
without file names can use ``"lowest"`` (the lowest tied class) or ``"prior"`` (the tied class
answered most often overall).

The real C25 CSVs alone: :mod:`affectnet_tf.evaluation.c25`; the model on an evaluated split:
:mod:`affectnet_tf.evaluation.split_agreement`.
"""

import warnings

import numpy as np

import crowd_layers
from affectnet_tf.files import json_ready
from affectnet_tf.modeling import metrics
from affectnet_tf.progress import progress
from tfds_affectnet import labels

__all__ = [
    "TIE_BREAKS",
    "crowd_majority",
    "leave_one_out_majorities",
    "leave_one_out_means",
    "annotator_agreement",
    "format_agreement",
]

TIE_BREAKS = ("keyed", "lowest", "prior")

# per-annotator figures: (key, reference kind, metric function)
_FIGURES = (
    ("accuracy", "expression"),
    ("f1_macro", "expression"),
    ("valence_ccc", "valence"),
    ("arousal_ccc", "arousal"),
)


def _check_answers(answers, name):
    array = np.asarray(answers)
    if array.ndim != 2:
        raise ValueError(
            f"`{name}` must be an (n_items, n_annotators) matrix. Received: {name}.shape={array.shape}"
        )
    return array


def _tie_rule(tie_break, file_names, n_items):
    """:func:`crowd_layers.majority_vote`'s tie arguments for ``tie_break``."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(
            f"`tie_break` must be one of {TIE_BREAKS}. Received: tie_break={tie_break!r}"
        )
    if tie_break != "keyed":
        return {"tie_break": tie_break}
    if file_names is None:
        raise ValueError(
            "`tie_break='keyed'` breaks ties by the images' file names: pass `file_names`, or "
            "choose tie_break='lowest' or 'prior'. Received: file_names=None"
        )
    if len(file_names) != n_items:
        raise ValueError(
            f"`file_names` must hold one name per item ({n_items}). "
            f"Received: {len(file_names)} names"
        )
    return {"tie_break": "keyed", "keys": labels.tie_keys(file_names)}


def crowd_majority(answers, num_classes=8, *, file_names=None, tie_break="keyed"):
    """Majority vote of all annotators, with the package's tie rule by default.

    Args:
        answers: ``(N, R)`` class answers, ``-1`` for no answer.
        num_classes: number of classes.
        file_names: the ``N`` images' file names, the keys of ``tie_break="keyed"``.
        tie_break: ``"keyed"`` (by the file name: equals
            :func:`tfds_affectnet.labels.majority_labels`), ``"lowest"`` or ``"prior"``
            (:func:`crowd_layers.majority_vote`).

    Returns:
        ``(N,)`` int64, ``-1`` where nobody answered.
    """
    answers = _check_answers(answers, "answers").astype(np.int64)
    rule = _tie_rule(tie_break, file_names, len(answers))
    with crowd_layers.quiet_aggregation():
        return crowd_layers.majority_vote(answers, num_classes, **rule)


def leave_one_out_majorities(answers, num_classes=8, *, file_names=None, tie_break="keyed"):
    """Majority vote of the other annotators, for every (item, annotator) pair.

    Args:
        answers: ``(N, R)`` class answers, ``-1`` for no answer.
        num_classes: number of classes.
        file_names: the ``N`` images' file names, the keys of the ``"keyed"`` tie rule
            (:func:`crowd_majority`); every column breaks an item's ties with the same key.
        tie_break: the majority vote's tie rule, as in :func:`crowd_majority`.

    Returns:
        ``(N, R)`` int64: column ``r`` is the majority vote of all annotators but ``r``
        (``-1`` where nobody else answered).
    """
    answers = _check_answers(answers, "answers").astype(np.int64)
    rule = _tie_rule(tie_break, file_names, len(answers))
    result = np.full(answers.shape, -1, np.int64)
    columns = progress(range(answers.shape[1]), desc="leave-one-out votes", unit="annotator")
    with crowd_layers.quiet_aggregation():
        for r in columns:
            others = np.delete(answers, r, axis=1)
            result[:, r] = crowd_layers.majority_vote(others, num_classes, **rule)
    return result


def leave_one_out_means(values):
    """Mean answer of the other annotators for every (item, annotator) pair.

    Args:
        values: ``(N, R)`` float answers, NaN for no answer.

    Returns:
        ``(N, R)`` float64, NaN where nobody else answered.
    """
    values = _check_answers(values, "values").astype(np.float64)
    finite = np.isfinite(values)
    filled = np.where(finite, values, 0.0)
    total = filled.sum(axis=1, keepdims=True) - filled
    count = finite.sum(axis=1, keepdims=True) - finite
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _quiet(function, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return function(*args)


def _label_scores(truth, guess):
    if not len(truth):
        return float("nan"), float("nan")
    return _quiet(metrics.accuracy, truth, guess), _quiet(metrics.f1, truth, guess, "macro")


def _summary(values):
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    if not len(finite):
        return {"mean": None, "median": None, "min": None, "max": None, "std": None, "n": 0}
    return {
        "mean": float(finite.mean()),
        "median": float(np.median(finite)),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "std": float(finite.std()),
        "n": int(len(finite)),
    }


def _model_labels(model_expression, n_items, num_classes):
    if model_expression is None:
        return None
    predicted = np.asarray(model_expression)
    if predicted.ndim == 2:
        predicted = predicted.argmax(axis=1)
    predicted = predicted.reshape(-1).astype(np.int64)
    if len(predicted) != n_items:
        raise ValueError(
            f"`model_expression` must hold one prediction per item ({n_items}). "
            f"Received: {len(predicted)}"
        )
    return predicted


def _model_values(values, n_items, name):
    if values is None:
        return None
    values = np.asarray(values, np.float64).reshape(-1)
    if len(values) != n_items:
        raise ValueError(
            f"`{name}` must hold one prediction per item ({n_items}). Received: {len(values)}"
        )
    return values


def annotator_agreement(
    crowd_expression=None,
    *,
    crowd_valence=None,
    crowd_arousal=None,
    model_expression=None,
    model_valence=None,
    model_arousal=None,
    original_expression=None,
    num_classes=8,
    file_names=None,
    tie_break="keyed",
):
    """Per-annotator and model agreement with leave-one-out references, and crowd agreement.

    Args:
        crowd_expression: ``(N, R)`` class answers, ``-1`` for no answer (canonical order).
        crowd_valence: ``(N, R)`` float valence answers, NaN for no answer.
        crowd_arousal: ``(N, R)`` float arousal answers, NaN for no answer.
        model_expression: model class probabilities ``(N, K)`` or class indices ``(N,)``.
        model_valence: the model's valence predictions ``(N,)``.
        model_arousal: the model's arousal predictions ``(N,)``.
        original_expression: AffectNet's original label ``(N,)``; codes outside
            ``0..num_classes-1`` count as missing.
        num_classes: number of expression classes.
        file_names: the ``N`` images' file names: the keys of the default tie rule.
        tie_break: the majority vote's tie rule (:func:`crowd_majority`); ``"keyed"`` needs
            ``file_names``.

    Returns:
        A JSON-able dict: ``n_items``, ``n_annotators``, ``crowd`` (``alpha``,
        ``fleiss_kappa`` of expression; interval ``valence_alpha`` / ``arousal_alpha``),
        ``annotators`` (one dict per annotator: ``n`` answers scored, ``accuracy``,
        ``f1_macro``, ``valence_ccc``, ``arousal_ccc``, the same with a ``model_`` prefix on
        that annotator's images, and ``original_accuracy`` / ``original_f1_macro``),
        ``summary`` (per figure: the annotators' ``mean``/``median``/``min``/``max``/``std``,
        the ``model`` mean over annotators and ``model_above``, the share of annotators the
        model beats), and ``model_vs_original``.

    Raises:
        ValueError: no crowd matrix, matrices of different shapes, codes outside the classes,
            or model predictions / original labels not one per item.
    """
    matrices = _crowd_matrices(crowd_expression, crowd_valence, crowd_arousal, num_classes)
    n_items, n_annotators = next(iter(matrices.values())).shape
    model = {
        "expression": _model_labels(model_expression, n_items, num_classes),
        "valence": _model_values(model_valence, n_items, "model_valence"),
        "arousal": _model_values(model_arousal, n_items, "model_arousal"),
    }
    original = _original_codes(original_expression, n_items, num_classes)
    crowd, references = _crowd_figures(matrices, num_classes, file_names, tie_break)
    result = {"n_items": int(n_items), "n_annotators": int(n_annotators), "crowd": crowd}
    rows = [
        _annotator_row(r, matrices, references, model, original)
        for r in progress(range(n_annotators), desc="scoring annotators", unit="annotator")
    ]
    result["annotators"] = rows
    summary = _summaries(rows, matrices)
    if original is not None and model["expression"] is not None:
        result["model_vs_original"] = _model_vs_original(rows, summary, original, model)
    result["summary"] = summary
    return json_ready(result)


def _crowd_matrices(crowd_expression, crowd_valence, crowd_arousal, num_classes):
    """The given answer matrices ``{kind: (N, R) array}`` (expression int64, valence and
    arousal float64), checked: at least one, one shape, expression codes in ``-1..K-1``."""
    matrices = {
        "expression": crowd_expression,
        "valence": crowd_valence,
        "arousal": crowd_arousal,
    }
    matrices = {k: _check_answers(v, f"crowd_{k}") for k, v in matrices.items() if v is not None}
    if not matrices:
        raise ValueError("annotator_agreement needs at least one crowd answer matrix.")
    shapes = {k: v.shape for k, v in matrices.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"The crowd answer matrices differ in shape. Received: {shapes}")
    if "expression" in matrices:
        answers = matrices["expression"].astype(np.int64)
        bad = (answers < -1) | (answers >= num_classes)
        if bad.any():
            raise ValueError(
                f"`crowd_expression` holds codes outside -1..{num_classes - 1}: "
                f"{np.unique(answers[bad]).tolist()}"
            )
        matrices["expression"] = answers
    for dimension in ("valence", "arousal"):
        if dimension in matrices:
            matrices[dimension] = matrices[dimension].astype(np.float64)
    return matrices


def _original_codes(original_expression, n_items, num_classes):
    """AffectNet's labels as ``(N,)`` int64, ``-1`` outside the classes; None without any."""
    if original_expression is None:
        return None
    original = np.asarray(original_expression).reshape(-1).astype(np.int64)
    if len(original) != n_items:
        raise ValueError(
            f"`original_expression` must hold one label per item ({n_items}). "
            f"Received: {len(original)}"
        )
    return np.where((original >= 0) & (original < num_classes), original, -1)


def _crowd_figures(matrices, num_classes, file_names, tie_break):
    """``(crowd, references)``: the crowd's alpha and kappa, and the leave-one-out
    references ``{kind: (N, R)}`` (majorities for expression, means for valence/arousal)."""
    crowd, references = {}, {}
    if "expression" in matrices:
        answers = matrices["expression"]
        crowd["alpha"] = _quiet(crowd_layers.krippendorff_alpha, answers, "nominal", num_classes)
        crowd["fleiss_kappa"] = _quiet(crowd_layers.fleiss_kappa, answers, num_classes)
        references["expression"] = leave_one_out_majorities(
            answers, num_classes, file_names=file_names, tie_break=tie_break
        )
    for dimension in ("valence", "arousal"):
        if dimension in matrices:
            values = matrices[dimension]
            crowd[f"{dimension}_alpha"] = _quiet(
                crowd_layers.krippendorff_alpha, values, "interval"
            )
            references[dimension] = leave_one_out_means(values)
    return crowd, references


def _annotator_row(r, matrices, references, model, original):
    """Annotator ``r``'s figures, and the model's on the same images and references."""
    row = {"annotator": r}
    if "expression" in matrices:
        answered = matrices["expression"][:, r]
        reference = references["expression"][:, r]
        scored = (answered >= 0) & (reference >= 0)
        row["n"] = int(scored.sum())
        row["accuracy"], row["f1_macro"] = _label_scores(reference[scored], answered[scored])
        if model["expression"] is not None:
            row["model_accuracy"], row["model_f1_macro"] = _label_scores(
                reference[scored], model["expression"][scored]
            )
        if original is not None:
            known = (answered >= 0) & (original >= 0)
            row["original_accuracy"], row["original_f1_macro"] = _label_scores(
                original[known], answered[known]
            )
    for dimension in ("valence", "arousal"):
        if dimension not in matrices:
            continue
        answered = matrices[dimension][:, r]
        reference = references[dimension][:, r]
        scored = np.isfinite(answered) & np.isfinite(reference)
        row[f"n_{dimension}"] = int(scored.sum())
        row[f"{dimension}_ccc"] = _ccc(reference[scored], answered[scored])
        if model[dimension] is not None:
            row[f"model_{dimension}_ccc"] = _ccc(reference[scored], model[dimension][scored])
    return row


def _ccc(reference, values):
    """Lin's CCC without warnings; NaN without any value."""
    return _quiet(metrics.ccc, reference, values) if len(values) else float("nan")


def _summaries(rows, matrices):
    """Per figure: the annotators' spread, the model's mean over the annotators and the share
    of annotators below it."""
    summary = {}
    for key, kind in _FIGURES + (("original_accuracy", "expression"),):
        if kind not in matrices or key not in rows[0]:
            continue
        values = np.array([row[key] for row in rows], np.float64)
        entry = _summary(values)
        model_key = f"model_{key}"
        if model_key in rows[0]:
            model_values = np.array([row[model_key] for row in rows], np.float64)
            finite = np.isfinite(model_values)
            if finite.any():
                entry["model"] = float(model_values[finite].mean())
                entry["model_above"] = _share_below(values, entry["model"])
        summary[key] = entry
    return summary


def _share_below(values, model):
    """The share of the finite ``values`` below ``model`` (None without any)."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return float(np.mean(values < model)) if len(values) else None


def _model_vs_original(rows, summary, original, model):
    """The model's accuracy and macro F1 against AffectNet's label; it also goes into
    ``summary["original_accuracy"]`` beside the annotators'."""
    known = original >= 0
    accuracy, f1_macro = _label_scores(original[known], model["expression"][known])
    if "original_accuracy" in summary:
        entry = summary["original_accuracy"]
        entry["model"] = accuracy
        entry["model_above"] = _share_below([row["original_accuracy"] for row in rows], accuracy)
    return {"accuracy": accuracy, "f1_macro": f1_macro}


_LABELS = {
    "accuracy": "expression accuracy vs leave-one-out majority",
    "f1_macro": "expression macro F1 vs leave-one-out majority",
    "valence_ccc": "valence CCC vs leave-one-out mean",
    "arousal_ccc": "arousal CCC vs leave-one-out mean",
    "original_accuracy": "expression accuracy vs AffectNet's label",
}


def _cell(value, width=8):
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def format_agreement(result, title="", per_annotator=False, original_name="AffectNet's label"):
    """A plain-text table of one :func:`annotator_agreement` result; ``original_name`` says
    what ``original_expression`` was (e.g. "the truth" of a crowd folder)."""
    crowd = result["crowd"]
    lines = []
    if title:
        lines += [title, "=" * len(title)]
    lines.append(f"{result['n_items']} images, {result['n_annotators']} annotators")
    parts = []
    for key, name in (
        ("alpha", "Krippendorff's alpha (expression)"),
        ("fleiss_kappa", "Fleiss' kappa (expression)"),
        ("valence_alpha", "alpha (valence, interval)"),
        ("arousal_alpha", "alpha (arousal, interval)"),
    ):
        if key in crowd:
            value = crowd[key]
            parts.append(f"{name}: {'-' if value is None else f'{value:.3f}'}")
    lines.extend("  " + part for part in parts)
    has_model = any("model" in entry for entry in result["summary"].values())
    header = f"  {'per annotator':<46}{'mean':>8}{'median':>8}{'min':>8}{'max':>8}"
    if has_model:
        header += f"{'model':>8}{'beats':>8}"
    lines += ["", header]
    for key, entry in result["summary"].items():
        label = _LABELS.get(key, key).replace("AffectNet's label", original_name)
        line = f"  {label:<46}" + "".join(_cell(entry[k]) for k in ("mean", "median", "min", "max"))
        if has_model:
            above = entry.get("model_above")
            line += _cell(entry.get("model")) + (
                f"{'-':>8}" if above is None else f"{above:>7.0%} "
            )
        lines.append(line)
    if result.get("model_vs_original"):
        original = result["model_vs_original"]
        lines.append(
            f"  model vs {original_name}: accuracy {_cell(original['accuracy'], 0)}, "
            f"macro F1 {_cell(original['f1_macro'], 0)}"
        )
    for key in ("cleaned", "dropped"):
        if result.get(key):
            lines.append(f"  {key}: " + ", ".join(f"{k}: {v}" for k, v in result[key].items()))
    if per_annotator:
        keys = [k for k in result["annotators"][0] if k != "annotator"]
        lines += ["", "  annotator " + "".join(f"{k:>20}" for k in keys)]
        for row in result["annotators"]:
            cells = "".join(
                f"{row[k]:>20}" if isinstance(row[k], int) else _cell(row[k], 20) for k in keys
            )
            lines.append(f"  {row['annotator']:>9} " + cells)
    return "\n".join(lines)
