"""Evaluation of a trained model: ``metrics.json`` and a report folder.

``python -m affectnet_tf.evaluate --model-dir RUN [--dataset NAME] [--split SPLIT]`` loads
``RUN/model.keras``, reads the run's ``config.yaml`` for every default (dataset, data folder,
image size, task, targets) and writes ``metrics.json`` and ``report/`` (``report.html``, which
embeds its images and opens offline, ``report.md`` and the PNGs). The training command calls
:func:`evaluate_model` on its in-memory model at the end of a run, so both write the same files.

The report holds AffectNet's metric table (:mod:`affectnet_tf.metrics`), the normalised
confusion matrix and a per-class precision / recall / F1 table, valence-arousal plots and error
histograms, a grid of correctly and incorrectly classified images, the training curves of
``history.csv``, the learned annotator confusion matrices of crowd runs (beside the true
simulated ones on ``synthetic_faces``), and, for splits with crowd answers, the model against
single annotators (:mod:`affectnet_tf.agreement`).
"""

import argparse
import json
import os
import sys
import warnings

import numpy as np
import pandas as pd
import tensorflow_datasets as tfds
import yaml

from affectnet_tf import agreement, data, metrics, models, reports
from tfds_affectnet import labels

__all__ = [
    "REPORT_DIR",
    "predict",
    "compute_metrics",
    "split_agreement",
    "build_report",
    "evaluate_model",
    "evaluate_run",
    "build_parser",
    "main",
]

REPORT_DIR = "report"
_EXAMPLES_PER_KIND = 8  # correct and incorrect images in the examples grid


def predict(model, dataset, heads, keep_examples=0):
    """Runs ``model`` over ``dataset`` of ``(images, targets)`` batches.

    Args:
        model: the prediction model (one output, or a dict keyed by head).
        dataset: batches of ``(images, targets)``; targets a tensor for one head, else a dict.
        heads: the heads to collect (a single-output model's output is ``heads[0]``; a
            dict-output model may have more).
        keep_examples: keep up to this many correctly and as many incorrectly classified
            images (expression only) for the examples grid.

    Returns:
        ``(truths, predictions, examples)``: dicts ``{head: array}`` (valence/arousal
        flattened to ``(N,)``) and ``examples`` ``{"images", "true", "predicted"}`` or None.
    """
    truths = {head: [] for head in heads}
    predictions = {head: [] for head in heads}
    kept = {True: [], False: []}
    for images, targets in dataset:
        outputs = model(images, training=False)
        if not isinstance(outputs, dict):
            outputs = {heads[0]: outputs}
        if not isinstance(targets, dict):
            targets = {heads[0]: targets}
        for head in heads:
            truth, output = np.asarray(targets[head]), np.asarray(outputs[head])
            if head != "expression":
                truth, output = truth.reshape(len(truth), -1), output.reshape(-1)
                truth = truth[:, 0] if truth.shape[1] == 1 else truth
            truths[head].append(truth)
            predictions[head].append(output)
        if keep_examples and "expression" in heads:
            truth = np.asarray(targets["expression"])
            if truth.ndim == 1:
                guess = np.asarray(outputs["expression"]).argmax(axis=1)
                images = np.asarray(images)
                for k in np.flatnonzero(truth >= 0):
                    good = bool(truth[k] == guess[k])
                    if len(kept[good]) < keep_examples:
                        kept[good].append((images[k], truth[k], guess[k]))
    truths = {head: np.concatenate(values) for head, values in truths.items()}
    predictions = {head: np.concatenate(values) for head, values in predictions.items()}
    chosen = kept[True] + kept[False]
    examples = None
    if chosen:
        examples = {
            "images": np.stack([c[0] for c in chosen]),
            "true": np.array([c[1] for c in chosen]),
            "predicted": np.array([c[2] for c in chosen]),
        }
    return truths, predictions, examples


def compute_metrics(truths, predictions, num_classes=8, notes=None):
    """Per head: :func:`metrics.expression_metrics` or :func:`metrics.affect_metrics`, with
    ``count`` (the labelled images scored).

    Args:
        notes: a dict that receives ``{head: [message, ...]}``: the warnings of undefined or
            partial values (a class without a true example, a constant prediction), which are
            also re-issued.
    """
    result = {}
    for head, truth in truths.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result[head] = _head_metrics(head, truth, predictions[head], num_classes)
        for warning in caught:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
            if notes is not None:
                notes.setdefault(head, []).append(str(warning.message))
    return result


def _head_metrics(head, truth, prediction, num_classes):
    if head != "expression":
        entry = metrics.affect_metrics(truth, prediction)
        entry["count"] = int(np.sum(np.isfinite(truth)))
        return entry
    if truth.ndim != 1:
        raise ValueError(
            "Expression evaluation needs one class index per image (targets mv, original or "
            f"true). Received targets of shape {truth.shape}"
        )
    entry = metrics.expression_metrics(truth, prediction, num_classes)
    entry["count"] = int(np.sum(truth >= 0))
    return entry


def _builder(name, data_dir=None, config=None):
    kwargs = {"config": config} if config is not None and not isinstance(config, str) else {}
    return tfds.builder(name, data_dir=data_dir, **kwargs)


def split_agreement(model, heads, dataset_options, num_classes=8):
    """Model against single annotators on a split with crowd answers, or None without them.

    Args:
        model: the prediction model.
        heads: its heads.
        dataset_options: :func:`affectnet_tf.make_dataset` arguments of the evaluated split
            (``name``, ``split``, ``subset``, ``image_size``, ``batch_size``, ``data_dir``,
            ``config``, ``validation_fraction``).
        num_classes: the model's number of classes.

    Returns:
        :func:`affectnet_tf.agreement.annotator_agreement`'s dict, with each annotator's and
        the model's agreement with AffectNet's original label where the split has it; None
        when the split has no crowd answers.
    """
    options = dict(dataset_options)
    builder = _builder(options["name"], options.get("data_dir"), options.get("config"))
    if "crowd_expression" not in builder.info.features:
        return None
    task = {
        ("expression",): "exp",
        ("valence",): "val",
        ("arousal",): "aro",
        ("valence", "arousal"): "va",
    }.get(tuple(heads), "all")
    common = dict(options, num_classes=num_classes)
    crowd_ds = data.make_dataset(task=task, target="cv", va_target="cv", **common)
    truths, predictions, _ = predict(model, crowd_ds, heads)
    result = agreement.annotator_agreement(
        truths.get("expression"),
        crowd_valence=truths.get("valence"),
        crowd_arousal=truths.get("arousal"),
        model_expression=predictions.get("expression"),
        model_valence=predictions.get("valence"),
        model_arousal=predictions.get("arousal"),
        num_classes=num_classes,
    )
    if "expression" in heads and "affectnet_expression" in builder.info.features:
        _add_original(result, model, builder, common, num_classes)
    return result


def _add_original(result, model, builder, options, num_classes):
    """Each annotator (from the label table) and the model against AffectNet's label."""
    table = data.load_label_table(builder, options["split"])
    rows = data._in_subset(
        table["file_name"], options.get("subset"), options.get("validation_fraction", 0.1)
    )
    answers = table["crowd_expression"][rows].astype(np.int64)
    if num_classes == 7:
        answers = np.where(answers == labels.CONTEMPT, -1, answers)
    human = agreement.annotator_agreement(
        answers, original_expression=table["affectnet_expression"][rows], num_classes=num_classes
    )
    try:
        original_ds = data.make_dataset(task="exp", target="original", **options)
    except ValueError as error:  # no image of the split has an original label
        result["original_note"] = str(error)
        return
    truths, predictions, _ = predict(model, original_ds, ["expression"])
    truth, guess = truths["expression"], predictions["expression"].argmax(axis=1)
    keep = truth >= 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model_vs = {
            "accuracy": metrics.accuracy(truth[keep], guess[keep]),
            "f1_macro": metrics.f1(truth[keep], guess[keep], "macro"),
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


def _simulated_annotators(dataset_name, builder):
    """The true simulated annotators of synthetic_faces (``expression_confusion`` ``(R, 8, 8)``,
    ``valence_scale`` ...), or None for other datasets."""
    if not dataset_name.startswith("synthetic_faces"):
        return None
    try:
        from tfds_affectnet.synthetic_faces import simulated_annotators
    except ImportError:
        return None
    return simulated_annotators(builder.builder_config)


def _metric_rows(result):
    rows = []
    for head, values in result.items():
        for key, value in values.items():
            rows.append([head, key, value])
    return rows


def build_report(
    *,
    title,
    result,
    truths,
    predictions,
    examples,
    class_names,
    history=None,
    annotators=None,
    simulated=None,
    agreement_result=None,
    notes=None,
):
    """The :class:`affectnet_tf.reports.Report` of an evaluation (see the module docstring)."""
    report = reports.Report(title)
    report.section("Metrics")
    report.table(["head", "metric", "value"], _metric_rows(result))
    for head, messages in (notes or {}).items():
        for message in messages:
            report.text(f"Note ({head}): {message}")
    num_classes = len(class_names)
    if "expression" in truths:
        truth, probabilities = truths["expression"], predictions["expression"]
        report.section("Expression")
        guess = probabilities.argmax(axis=1)
        matrix = metrics.confusion_matrix(truth, guess, num_classes)
        report.figure(
            "confusion_matrix",
            reports.plot_confusion_matrix(matrix, class_names),
            "Normalised confusion matrix (each row sums to 1; counts beside the class names).",
        )
        per_class = metrics.per_class_report(truth, guess, num_classes)
        report.table(
            ["class", "precision", "recall", "F1", "support"],
            [
                [
                    name,
                    per_class["precision"][k],
                    per_class["recall"][k],
                    per_class["f1"][k],
                    int(per_class["support"][k]),
                ]
                for k, name in enumerate(class_names)
            ],
        )
        if examples is not None:
            report.figure(
                "examples",
                reports.plot_examples(
                    examples["images"], examples["true"], examples["predicted"], class_names
                ),
                "Correctly (green) and incorrectly (red) classified images.",
            )
    dimensions = [d for d in ("valence", "arousal") if d in truths]
    if dimensions:
        report.section("Valence and arousal")
        va_truth = {d: truths[d] for d in dimensions}
        va_pred = {d: predictions[d] for d in dimensions}
        report.figure(
            "valence_arousal",
            reports.plot_va(va_truth, va_pred),
            "Predicted against true (hexbin densities above "
            f"{reports.DENSITY_THRESHOLD} images), and the circumplex.",
        )
        report.figure(
            "valence_arousal_errors",
            reports.plot_va_errors(va_truth, va_pred),
            "Prediction errors.",
        )
    if history is not None and len(history):
        report.section("Training curves")
        report.figure("history", reports.plot_history(history), "From history.csv.")
    if annotators:
        report.section("Annotators (crowd layers)")
        if "expression_confusions" in annotators:
            learned = np.asarray(annotators["expression_confusions"])
            true = None
            if simulated is not None and "expression_confusion" in simulated:
                confusions = np.asarray(simulated["expression_confusion"], np.float64)
                if confusions.shape == learned.shape:
                    true = confusions
                else:
                    report.text(
                        f"The simulated confusions {confusions.shape} do not match the learned "
                        f"ones {learned.shape} (a 7-class run?); only the learned ones are shown."
                    )
            report.figure(
                "annotator_confusions",
                reports.plot_annotator_confusions(learned, class_names, true=true),
                "Learned annotator confusion matrices"
                + (" beside the true simulated ones" if true is not None else "")
                + " (colour: probability, 0 dark to 1 yellow).",
            )
        va_rows = []
        for dimension in ("valence", "arousal"):
            for part in ("scale", "bias"):
                key = f"{dimension}_{part}"
                if key in annotators:
                    values = np.asarray(annotators[key], np.float64)
                    row = [key, values.mean(), values.min(), values.max(), int(values.argmin())]
                    true = None if simulated is None else simulated.get(key)
                    if true is not None and np.shape(true) == values.shape:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore", RuntimeWarning)
                            row.append(metrics.pearson(np.asarray(true, np.float64), values))
                    elif simulated is not None:
                        row.append(None)
                    va_rows.append(row)
        if va_rows:
            header = ["parameter", "mean", "min", "max", "annotator of min"]
            if simulated is not None:
                header.append("correlation with the true simulated value")
            report.table(header, va_rows)
    if agreement_result is not None:
        report.section("The model against single annotators")
        crowd = agreement_result["crowd"]
        report.text(
            f"{agreement_result['n_items']} images, {agreement_result['n_annotators']} "
            "annotators. Each annotator is scored against the majority (mean for valence and "
            "arousal) of the other annotators; the model against the same references on the "
            "same images. Crowd agreement: "
            + ", ".join(f"{k} {reports._cell(v)}" for k, v in crowd.items())
        )
        rows = []
        for key, entry in agreement_result["summary"].items():
            rows.append(
                [
                    key,
                    entry["mean"],
                    entry["min"],
                    entry["max"],
                    entry.get("model"),
                    entry.get("model_above"),
                ]
            )
        report.table(
            ["figure", "annotators mean", "min", "max", "model", "share of annotators below"],
            rows,
        )
        report.figure(
            "agreement",
            reports.plot_agreement(agreement_result),
            "Annotators (dots, box) and the model (star).",
        )
    return report


def _read_history(run_dir):
    path = os.path.join(run_dir, "history.csv") if run_dir else None
    if not path or not os.path.exists(path):
        return None
    return pd.read_csv(path)


def _read_annotators(run_dir):
    path = os.path.join(run_dir, "annotators.npz") if run_dir else None
    if not path or not os.path.exists(path):
        return None
    with np.load(path) as stored:
        return {key: stored[key] for key in stored.files}


def evaluate_model(
    model,
    dataset,
    *,
    output_dir=None,
    run_dir=None,
    dataset_options=None,
    split=None,
    subset=None,
    report=True,
    extra=None,
):
    """Evaluates ``model`` on ``dataset`` and writes ``metrics.json`` and the report folder.

    Args:
        model: the prediction model (built by :func:`affectnet_tf.build_model`).
        dataset: batches of ``(images, targets)`` (class indices for expression).
        output_dir: where ``metrics.json`` and ``report/`` go; None writes nothing.
        run_dir: the run folder with ``history.csv`` and ``annotators.npz`` (default:
            ``output_dir``).
        dataset_options: :func:`affectnet_tf.make_dataset` arguments of the evaluated split
            (``name``, ``split``, ``subset``, ``image_size``, ``batch_size``, ``data_dir``,
            ``config``, ``validation_fraction``): enables the human-agreement section on splits
            with crowd answers, and the true annotators of synthetic_faces.
        split, subset: recorded in ``metrics.json``.
        report: also write the report.
        extra: further JSON-able entries for ``metrics.json``.

    Returns:
        The per-head metrics (``{head: {metric: value}}``); ``metrics.json`` holds them with
        ``split``, ``subset``, ``agreement`` and ``extra``.
    """
    metadata = models.model_metadata(model)
    heads = list(metadata["outputs"])
    num_classes = int(metadata["num_classes"])
    class_names = list(metadata["class_names"])
    run_dir = run_dir or output_dir
    truths, predictions, examples = predict(
        model, dataset, heads, keep_examples=_EXAMPLES_PER_KIND if report else 0
    )
    notes = {}
    result = compute_metrics(truths, predictions, num_classes, notes)
    if output_dir is None:
        return result
    agreement_result = None
    simulated = None
    if dataset_options is not None:
        agreement_result = split_agreement(model, heads, dataset_options, num_classes)
        builder = _builder(
            dataset_options["name"], dataset_options.get("data_dir"), dataset_options.get("config")
        )
        simulated = _simulated_annotators(dataset_options["name"], builder)
    record = {"split": split, "subset": subset, **(extra or {}), **result}
    if notes:
        record["notes"] = notes
    if agreement_result is not None:
        record["agreement"] = agreement_result
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "metrics.json"), "w") as stream:
        json.dump(_json_ready(record), stream, indent=2)
    if report:
        title = f"Evaluation of {metadata.get('backbone', model.name)}"
        if dataset_options is not None:
            title += f" on {dataset_options['name']} {dataset_options['split']}"
            if dataset_options.get("subset"):
                title += f" ({dataset_options['subset']})"
        built = build_report(
            title=title,
            result=result,
            truths=truths,
            predictions=predictions,
            examples=examples,
            class_names=class_names,
            history=_read_history(run_dir),
            annotators=_read_annotators(run_dir),
            simulated=simulated,
            agreement_result=agreement_result,
            notes=notes,
        )
        built.save(os.path.join(output_dir, REPORT_DIR))
    return result


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else float(value)
    return value


def evaluate_run(
    model_dir,
    *,
    dataset=None,
    split=None,
    subset=None,
    num_classes=None,
    target=None,
    va_target=None,
    data_dir=None,
    batch_size=None,
    output_dir=None,
    report=True,
):
    """Evaluates the saved model of a run folder (``model.keras`` + ``config.yaml``).

    Defaults come from the run's ``config.yaml``: the dataset and its evaluation split
    (:func:`affectnet_tf.train.resolve_dataset`), data folder, stored image size, image size,
    targets. ``--split`` equal to an affectnet_c25 training set evaluates its held-out slice.

    Returns:
        The per-head metrics; ``metrics.json`` and ``report/`` are written to ``output_dir``
        (default: the run folder).
    """
    from affectnet_tf import train as train_module

    model_dir = os.path.abspath(model_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"The run folder {model_dir} does not exist.")
    model_path = os.path.join(model_dir, "model.keras")
    if not os.path.exists(model_path):
        raise FileNotFoundError(
            f"No trained model in the run folder: {model_path} does not exist (an unfinished run?)."
        )
    config_path = os.path.join(model_dir, "config.yaml")
    config = dict(train_module.DEFAULTS)
    if os.path.exists(config_path):
        with open(config_path) as stream:
            config.update(yaml.safe_load(stream) or {})
    model = models.load_model(model_path)
    metadata = models.model_metadata(model)
    if num_classes is not None and int(num_classes) != int(metadata["num_classes"]):
        raise ValueError(
            f"The model predicts {metadata['num_classes']} classes; it cannot be evaluated "
            f"with num_classes={num_classes}."
        )
    num_classes = int(metadata["num_classes"])
    if dataset is not None and dataset != config["dataset"]:
        config.update(dataset=dataset, split=None, eval_split=None)
    if split is not None:
        config["eval_split"] = split
    if data_dir is not None:
        config["data_dir"] = data_dir
    name, tfds_config, _, (eval_split, eval_subset) = train_module.resolve_dataset(config)
    if subset is not None:
        eval_subset = None if subset == "all" else subset
    if isinstance(tfds_config, str):
        name, tfds_config = f"{name}/{tfds_config}", None
    exp_target, default_va = train_module._eval_targets(config)
    image_size = int(metadata["image_size"])
    options = dict(
        name=name,
        split=eval_split,
        subset=eval_subset,
        image_size=image_size,
        batch_size=int(batch_size or config["batch_size"]),
        data_dir=config["data_dir"],
        config=tfds_config,
        validation_fraction=config["validation_fraction"],
    )
    eval_ds = data.make_dataset(
        task=metadata["task"],
        target=target or exp_target,
        va_target=va_target or default_va,
        num_classes=num_classes,
        manual_dir=config.get("manual_dir"),
        **options,
    )
    return evaluate_model(
        model,
        eval_ds,
        output_dir=output_dir or model_dir,
        run_dir=model_dir,
        dataset_options=options,
        split=eval_split,
        subset=eval_subset,
        report=report,
        extra={"dataset": name, "target": target or exp_target},
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.evaluate",
        description="Evaluate a trained run: metrics.json and a report folder (HTML, Markdown).",
    )
    parser.add_argument("--model-dir", required=True, help="run folder holding model.keras")
    parser.add_argument("--dataset", help="TFDS dataset (default: the run's)")
    parser.add_argument("--split", help="split (default: the run's evaluation split)")
    parser.add_argument(
        "--subset",
        choices=("train", "validation", "all"),
        help="slice of an affectnet_c25 set (default: the held-out slice of the training set)",
    )
    parser.add_argument(
        "--num-classes", type=int, choices=(8, 7), help="must match the model (default: model's)"
    )
    parser.add_argument(
        "--target",
        choices=("mv", "original", "true"),
        help="expression label to score against (default: as the training run)",
    )
    parser.add_argument(
        "--va-target",
        choices=("mean", "median", "original", "true"),
        help="valence/arousal label to score against (default: as the training run)",
    )
    parser.add_argument("--data-dir", help="TFDS data folder (default: the run's)")
    parser.add_argument("--batch-size", type=int, help="(default: the run's)")
    parser.add_argument("--output-dir", help="where metrics.json and report/ go (default: RUN)")
    parser.add_argument(
        "--no-report", action="store_true", help="write metrics.json only (default: report too)"
    )
    return parser


def main(argv=None):
    """The command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        result = evaluate_run(
            args.model_dir,
            dataset=args.dataset,
            split=args.split,
            subset=args.subset,
            num_classes=args.num_classes,
            target=args.target,
            va_target=args.va_target,
            data_dir=args.data_dir,
            batch_size=args.batch_size,
            output_dir=args.output_dir,
            report=not args.no_report,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(_json_ready(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
