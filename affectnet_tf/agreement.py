"""Human agreement on AffectNetC25: each annotator, and the model, against the other annotators.

For annotator ``r`` the reference of an image is the majority vote of the *other* annotators
for expression and the mean of the other annotators' answers for valence and arousal
(leave-one-out). Annotator ``r`` is scored against those references on the images ``r``
answered (accuracy, macro F1; CCC), and the model is scored against the very same references
on the very same images: the two figures compare the model with one human on equal terms.
The crowd's Krippendorff's alpha and Fleiss' kappa, and each annotator's and the model's
agreement with AffectNet's original label, complete the picture.

Majority-vote ties are broken as everywhere in the package (``tie_break="keyed"``, the
default): by the image's file name (:func:`tfds_affectnet.labels.majority_labels`), so an
image's reference is the same in training, evaluation and this report, for every seed and
order. The leave-one-out votes use the same keys, and the vote of the whole crowd
(:func:`crowd_majority`) equals :func:`~tfds_affectnet.labels.majority_labels`. Answers
without file names can use ``"lowest"`` (the lowest tied class) or ``"prior"`` (the tied class
answered most often overall).

The figures of the real C25 CSVs alone (no images, no model) show the human ceiling before
any training:

```bash
python -m affectnet_tf.agreement --csv-dir DIR [--training-csv training.csv]
```
"""

import argparse
import collections
import json
import sys
import warnings

import numpy as np

import crowd_layers
from affectnet_tf.files import json_ready
from affectnet_tf.modeling import metrics
from tfds_affectnet import labels, sources

__all__ = [
    "TIE_BREAKS",
    "crowd_majority",
    "leave_one_out_majorities",
    "leave_one_out_means",
    "annotator_agreement",
    "read_c25_csvs",
    "csv_agreement",
    "format_agreement",
    "main",
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
    with crowd_layers.quiet_aggregation():
        for r in range(answers.shape[1]):
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
    """
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
    n_items, n_annotators = next(iter(shapes.values()))
    model = {
        "expression": _model_labels(model_expression, n_items, num_classes),
        "valence": _model_values(model_valence, n_items, "model_valence"),
        "arousal": _model_values(model_arousal, n_items, "model_arousal"),
    }
    original = None
    if original_expression is not None:
        original = np.asarray(original_expression).reshape(-1).astype(np.int64)
        if len(original) != n_items:
            raise ValueError(
                f"`original_expression` must hold one label per item ({n_items}). "
                f"Received: {len(original)}"
            )
        original = np.where((original >= 0) & (original < num_classes), original, -1)

    result = {"n_items": int(n_items), "n_annotators": int(n_annotators), "crowd": {}}
    references = {}
    if "expression" in matrices:
        answers = matrices["expression"].astype(np.int64)
        bad = (answers < -1) | (answers >= num_classes)
        if bad.any():
            raise ValueError(
                f"`crowd_expression` holds codes outside -1..{num_classes - 1}: "
                f"{np.unique(answers[bad]).tolist()}"
            )
        matrices["expression"] = answers
        result["crowd"]["alpha"] = _quiet(
            crowd_layers.krippendorff_alpha, answers, "nominal", num_classes
        )
        result["crowd"]["fleiss_kappa"] = _quiet(crowd_layers.fleiss_kappa, answers, num_classes)
        references["expression"] = leave_one_out_majorities(
            answers, num_classes, file_names=file_names, tie_break=tie_break
        )
    for dimension in ("valence", "arousal"):
        if dimension in matrices:
            values = matrices[dimension].astype(np.float64)
            matrices[dimension] = values
            result["crowd"][f"{dimension}_alpha"] = _quiet(
                crowd_layers.krippendorff_alpha, values, "interval"
            )
            references[dimension] = leave_one_out_means(values)

    rows = []
    for r in range(n_annotators):
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
            row[f"{dimension}_ccc"] = (
                _quiet(metrics.ccc, reference[scored], answered[scored])
                if scored.sum()
                else float("nan")
            )
            if model[dimension] is not None:
                row[f"model_{dimension}_ccc"] = (
                    _quiet(metrics.ccc, reference[scored], model[dimension][scored])
                    if scored.sum()
                    else float("nan")
                )
        rows.append(row)
    result["annotators"] = rows

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
                annotators = values[np.isfinite(values)]
                entry["model_above"] = (
                    float(np.mean(annotators < entry["model"])) if len(annotators) else None
                )
        summary[key] = entry
    if original is not None and model["expression"] is not None:
        known = original >= 0
        accuracy, f1_macro = _label_scores(original[known], model["expression"][known])
        result["model_vs_original"] = {"accuracy": accuracy, "f1_macro": f1_macro}
        if "original_accuracy" in summary:
            entry = summary["original_accuracy"]
            entry["model"] = accuracy
            annotators = np.array([row["original_accuracy"] for row in rows], np.float64)
            annotators = annotators[np.isfinite(annotators)]
            entry["model_above"] = (
                float(np.mean(annotators < accuracy)) if len(annotators) else None
            )
    result["summary"] = summary
    return json_ready(result)


# ---------------------------------------------------------------------------------------------
# The real C25 CSVs


def read_c25_csvs(csv_dir, sets=sources.C25_SETS):
    """The crowd answers of the C25 CSVs in ``csv_dir`` (or its ``AffectNetC25/``).

    Returns:
        ``({set: {"file_name", "affectnet_index", "crowd_expression", "crowd_valence",
        "crowd_arousal"}}, counts)``: arrays in the expression CSV's order, expression in the
        canonical order (-1 for no answer); ``counts`` the cleaned values per reason.
    """
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
    """:func:`annotator_agreement` of each C25 set from the CSVs alone (no images, no model).

    Args:
        csv_dir: folder of the six C25 CSVs (or its parent holding ``AffectNetC25/``).
        sets: the sets to score.
        num_classes: 8, or 7: contempt answers count as no answer and images whose 8-class
            majority is contempt are left out (as :func:`affectnet_tf.make_dataset` does).
        training_csv: AffectNet's ``training.csv``, for the original labels (optional).
        tie_break: the majority vote's tie rule (:func:`crowd_majority`); the default breaks
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


_LABELS = {
    "accuracy": "expression accuracy vs leave-one-out majority",
    "f1_macro": "expression macro F1 vs leave-one-out majority",
    "valence_ccc": "valence CCC vs leave-one-out mean",
    "arousal_ccc": "arousal CCC vs leave-one-out mean",
    "original_accuracy": "expression accuracy vs AffectNet's label",
}


def _cell(value, width=8):
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def format_agreement(result, title="", per_annotator=False):
    """A plain-text table of one :func:`annotator_agreement` result."""
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
        line = f"  {_LABELS.get(key, key):<46}" + "".join(
            _cell(entry[k]) for k in ("mean", "median", "min", "max")
        )
        if has_model:
            above = entry.get("model_above")
            line += _cell(entry.get("model")) + (
                f"{'-':>8}" if above is None else f"{above:>7.0%} "
            )
        lines.append(line)
    if result.get("model_vs_original"):
        original = result["model_vs_original"]
        lines.append(
            f"  model vs AffectNet's label: accuracy {_cell(original['accuracy'], 0)}, "
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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.agreement",
        description="Human agreement on AffectNetC25 from the CSVs alone: each annotator "
        "against the majority of the others, and the crowd's alpha and kappa.",
    )
    parser.add_argument("--csv-dir", required=True, help="folder of the six C25 CSVs")
    parser.add_argument(
        "--sets", nargs="+", default=list(sources.C25_SETS), help="sets (default: set1 set2)"
    )
    parser.add_argument("--num-classes", type=int, choices=(8, 7), default=8, help="(default: 8)")
    parser.add_argument(
        "--training-csv", help="AffectNet's training.csv, for the original labels (default: none)"
    )
    parser.add_argument(
        "--tie-break",
        choices=TIE_BREAKS,
        default="keyed",
        help="majority-vote tie rule: keyed (by the image's file name, as training and "
        "evaluation), lowest (the lowest tied class) or prior (the tied class answered most "
        "often) (default: keyed)",
    )
    parser.add_argument(
        "--per-annotator", action="store_true", help="also print one line per annotator"
    )
    parser.add_argument("--json", help="also write the figures to this JSON file")
    return parser


def main(argv=None):
    """Prints the agreement table of each set; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        results = csv_agreement(
            args.csv_dir,
            sets=args.sets,
            num_classes=args.num_classes,
            training_csv=args.training_csv,
            tie_break=args.tie_break,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for set_name, result in results.items():
        print(format_agreement(result, f"AffectNetC25 {set_name}", args.per_annotator))
        print()
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(results, stream, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
