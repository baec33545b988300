"""Evaluation of a trained model: ``metrics.json`` and a report folder.

``python -m affectnet_tf.evaluate --model-dir RUN [--dataset NAME] [--split SPLIT]`` loads
``RUN/model.keras``, reads the run's ``config.yaml`` for every default (dataset, data folder,
image size, task, targets) and writes ``metrics.json`` and ``report/`` (``report.html``, which
embeds its images and opens offline, ``report.md`` and the PNGs). The training command calls
:func:`evaluate_model` on its in-memory model at the end of a run, so both write the same files.

The report holds AffectNet's metric table (:mod:`affectnet_tf.modeling.metrics`), the normalised
confusion matrix and a per-class precision / recall / F1 table, valence-arousal plots and error
histograms, a grid of correctly and incorrectly classified images, the training curves of
``history.csv``, the learned annotator confusion matrices of crowd runs (beside the true
simulated ones on ``synthetic_faces``), and, for splits with crowd answers, the model against
single annotators (:mod:`affectnet_tf.agreement`) and against AffectNet's original label.

The model runs once over the evaluated images (:func:`predict_split`); each image's
predictions are joined to the split's label table by its file name, and every section comes
from them. This module computes; :func:`affectnet_tf.evaluation.reports.evaluation_report` lays out.
"""

import argparse
import json
import os
import sys
import warnings

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_datasets as tfds

from affectnet_tf import agreement
from affectnet_tf.data import pipeline as data
from affectnet_tf.data.images import decode_image, resize_image
from affectnet_tf.evaluation import reports
from affectnet_tf.files import json_ready, write_json
from affectnet_tf.modeling import metrics, models
from affectnet_tf.training.config import RunConfig, data_roles, eval_targets
from affectnet_tf.training.run_folder import load_run
from tfds_affectnet import labels

__all__ = [
    "REPORT_DIR",
    "predict_split",
    "image_batches",
    "compute_metrics",
    "split_agreement",
    "evaluate_model",
    "evaluate_run",
    "build_parser",
    "main",
]

REPORT_DIR = "report"
_EXAMPLES_PER_KIND = 8  # correct and incorrect images in the examples grid


def predict_split(model, dataset, heads, keep_examples=0):
    """Runs ``model`` once over ``dataset`` of ``(images, targets)`` batches.

    Args:
        model: the prediction model (one output, or a dict keyed by head).
        dataset: batches of ``(images, targets)``; targets a tensor for one head, else a dict
            (keys other than the heads, such as a row index, are collected too).
        heads: the heads to collect (a single-output model's output is ``heads[0]``; a
            dict-output model may have more).
        keep_examples: keep up to this many correctly and as many incorrectly classified
            images (expression only) for the examples grid.

    Returns:
        ``(truths, predictions, examples)``: ``truths`` ``{key: array}`` for every target key,
        ``predictions`` ``{head: array}`` (valence/arousal flattened to ``(N,)``), and
        ``examples`` ``{"images", "true", "predicted"}`` or None.
    """
    truths = {}
    predictions = {head: [] for head in heads}
    kept = {True: [], False: []}
    # one traced graph for every batch (the last, smaller one traces once more): an eager
    # call per batch costs several times the model's own work on small images
    infer = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
    for images, targets in dataset:
        outputs = infer(images)
        if not isinstance(outputs, dict):
            outputs = {heads[0]: outputs}
        if not isinstance(targets, dict):
            targets = {heads[0]: targets}
        for key, value in targets.items():
            truth = np.asarray(value)
            if key in heads and key != "expression":
                truth = truth.reshape(len(truth), -1)
                truth = truth[:, 0] if truth.shape[1] == 1 else truth
            truths.setdefault(key, []).append(truth)
        for head in heads:
            output = np.asarray(outputs[head])
            predictions[head].append(output if head == "expression" else output.reshape(-1))
        if keep_examples and "expression" in heads:
            truth = np.asarray(targets["expression"])
            if truth.ndim == 1:
                guess = np.asarray(outputs["expression"]).argmax(axis=1)
                images = np.asarray(images)
                for k in np.flatnonzero(truth >= 0):
                    good = bool(truth[k] == guess[k])
                    if len(kept[good]) < keep_examples:
                        kept[good].append((images[k], truth[k], guess[k]))
    truths = {key: np.concatenate(values) for key, values in truths.items()}
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


# ---------------------------------------------------------------------------------------------
# The evaluated split: one pass of the model, joined to the split's label table by file name


def _builder(options):
    """The TFDS builder of ``dataset_options``, prepared (from its ``manual_dir``) if needed."""
    return data.prepared_builder(
        options["name"],
        data_dir=options.get("data_dir"),
        manual_dir=options.get("manual_dir"),
        config=options.get("config"),
    )


def image_batches(builder, table, rows, targets, options):
    """Batches of ``(images, targets)`` of the table's ``rows`` (a mask), read from the split.

    The images are decoded and resized as :func:`affectnet_tf.make_dataset` does; ``targets``
    ``{key: array over the table's rows}`` are joined to each image by its file name, so the
    order in which the files are read does not matter.
    """
    names = table["file_name"]
    index = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(names), tf.range(len(names), dtype=tf.int64)
        ),
        default_value=-1,
    )
    wanted = tf.constant(rows)
    values = {key: tf.constant(value) for key, value in targets.items()}
    image_size = int(options["image_size"])
    stored_size = tuple(builder.info.features["image"].shape[:2])

    def load(example):
        i = index.lookup(example["file_name"])
        image = decode_image(example["image"])
        if stored_size != (image_size, image_size):
            image = resize_image(image, image_size)
        image.set_shape([image_size, image_size, 3])
        return image, {key: tf.gather(value, i) for key, value in values.items()}

    dataset = builder.as_dataset(
        split=options["split"], shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    dataset = dataset.filter(lambda example: tf.gather(wanted, index.lookup(example["file_name"])))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(int(options["batch_size"])).prefetch(tf.data.AUTOTUNE)


def _predict_rows(model, heads, builder, table, rows, options, targets=None, keep_examples=0):
    """:func:`predict_split` over the images of the table's ``rows`` (a mask), in table order.

    Returns:
        ``(truths, predictions, examples)``; ``truths["row"]`` holds each image's table row.
    """
    targets = {**(targets or {}), "row": np.arange(len(rows), dtype=np.int64)}
    batches = image_batches(builder, table, rows, targets, options)
    truths, predictions, examples = predict_split(model, batches, heads, keep_examples)
    order = np.argsort(truths["row"], kind="stable")
    truths = {key: value[order] for key, value in truths.items()}
    predictions = {head: value[order] for head, value in predictions.items()}
    return truths, predictions, examples


def _evaluate_split(model, heads, task, builder, table, options, num_classes, keep_examples):
    """The model once over the evaluated images and the images the agreement sections need.

    Returns:
        ``(truths, predictions, examples, rows, outputs)``: the evaluation targets and the
        predictions of the images that have them, the examples grid, and every image's table
        row with the predictions ``{head: array}`` of all the images the model saw.
    """
    targets, keep, _, extras = data.build_targets(
        table,
        task=task,
        target=options["target"],
        va_target=options.get("va_target"),
        num_classes=num_classes,
    )
    in_subset = data.subset_mask(table, options.get("subset"), options.get("partition"))
    keep &= in_subset
    if not keep.any():
        raise ValueError(
            f"No examples left in {options['name']}/{options['split']} "
            f"(subset={options.get('subset')}) for task={task!r}, "
            f"target={options['target']!r}; dropped: {extras['dropped']}"
        )
    targets = dict(targets) if isinstance(targets, dict) else {heads[0]: targets}
    if "expression" in targets and np.ndim(targets["expression"]) == 1:
        # the examples grid shows evaluated images only
        targets["expression"] = np.where(keep, targets["expression"], -1)
    needed = keep | (in_subset & _agreement_rows(table, heads, num_classes))
    truths, outputs, examples = _predict_rows(
        model, heads, builder, table, needed, options, targets, keep_examples
    )
    rows = truths.pop("row")
    scored = keep[rows]
    truths = {head: value[scored] for head, value in truths.items()}
    predictions = {head: value[scored] for head, value in outputs.items()}
    return truths, predictions, examples, rows, outputs


def _crowd_answers(table, heads, num_classes):
    """``({head: (N, R) answers}, rows with answers)`` of the model's heads (target ``cv``)."""
    task = {tuple(h): t for t, h in models.TASK_HEADS.items()}.get(tuple(heads), "all")
    answers, answered, _, _ = data.build_targets(
        table, task=task, target="cv", va_target="cv", num_classes=num_classes
    )
    return (answers if isinstance(answers, dict) else {heads[0]: answers}), answered


def _original_labels(table, num_classes):
    """``(codes, rows with a label, dropped counts)`` of AffectNet's original labels."""
    codes, known, _, extras = data.build_targets(
        table, task="exp", target="original", num_classes=num_classes
    )
    return codes, known, extras["dropped"]


def _has_original(table, heads):
    return "crowd_expression" in table and "expression" in heads and "affectnet_expression" in table


def _agreement_rows(table, heads, num_classes):
    """The rows :func:`split_agreement` scores: crowd answers, or AffectNet's label."""
    rows = np.zeros(len(table["file_name"]), bool)
    if "crowd_expression" in table:
        rows |= _crowd_answers(table, heads, num_classes)[1]
    if _has_original(table, heads):
        rows |= _original_labels(table, num_classes)[1]
    return rows


def split_agreement(table, rows, predictions, options, num_classes=8):
    """Model against single annotators on a split with crowd answers, or None without them.

    Args:
        table: the split's label table (:func:`affectnet_tf.data.pipeline.load_label_table`).
        rows: the table row of each prediction (images of the evaluated subset).
        predictions: ``{head: array}`` of the model on those images (:func:`predict_split`).
        options: :func:`affectnet_tf.make_dataset` arguments of the evaluated split
            (``subset``, ``partition``).
        num_classes: the model's number of classes.

    Returns:
        :func:`affectnet_tf.agreement.annotator_agreement`'s dict on the predicted images with
        crowd answers, majority-vote ties broken by the file name as in training, with each
        annotator's and the model's agreement with AffectNet's original label where the split
        has it; None when none of the predicted images has crowd answers.
    """
    if "crowd_expression" not in table:
        return None
    heads = list(predictions)
    answers, answered = _crowd_answers(table, heads, num_classes)
    scored = answered[rows]
    if not scored.any():
        return None
    at = rows[scored]
    crowd = {head: answers[head][at] for head in answers}
    model = {head: value[scored] for head, value in predictions.items()}
    result = agreement.annotator_agreement(
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
    rows = data.subset_mask(table, options.get("subset"), options.get("partition"))
    answers = table["crowd_expression"][rows].astype(np.int64)
    if num_classes == 7:
        answers = np.where(answers == labels.CONTEMPT, -1, answers)
    human = agreement.annotator_agreement(
        answers,
        original_expression=table["affectnet_expression"][rows],
        num_classes=num_classes,
        file_names=table["file_name"][rows],
    )
    codes, known, dropped = _original_labels(table, num_classes)
    labelled = known[predicted_rows]
    if not labelled.any():  # no evaluated image has an original label
        result["original_note"] = (
            f"No evaluated image has an original label (subset={options.get('subset')}); "
            f"dropped: {dropped}"
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


# ---------------------------------------------------------------------------------------------
# The report's figures


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


def _annotator_figures(annotators, simulated):
    """The learned annotators of a crowd run beside the true simulated ones, as
    :func:`affectnet_tf.evaluation.reports.evaluation_report` lays them out."""
    figures = {"confusions": None, "true_confusions": None, "note": None, "parameters": []}
    figures["simulated"] = simulated is not None
    if "expression_confusions" in annotators:
        learned = np.asarray(annotators["expression_confusions"])
        figures["confusions"] = learned
        if simulated is not None and "expression_confusion" in simulated:
            confusions = np.asarray(simulated["expression_confusion"], np.float64)
            if confusions.shape == learned.shape:
                figures["true_confusions"] = confusions
            else:
                figures["note"] = (
                    f"The simulated confusions {confusions.shape} do not match the learned "
                    f"ones {learned.shape} (a 7-class run?); only the learned ones are shown."
                )
    for dimension in ("valence", "arousal"):
        for part in ("scale", "bias"):
            key = f"{dimension}_{part}"
            if key not in annotators:
                continue
            values = np.asarray(annotators[key], np.float64)
            row = {
                "parameter": key,
                "mean": values.mean(),
                "min": values.min(),
                "max": values.max(),
                "annotator_of_min": int(values.argmin()),
                "correlation": None,
            }
            true = None if simulated is None else simulated.get(key)
            if true is not None and np.shape(true) == values.shape:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    row["correlation"] = metrics.pearson(np.asarray(true, np.float64), values)
            figures["parameters"].append(row)
    return figures


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


def _report(
    *,
    title,
    result,
    notes,
    truths,
    predictions,
    examples,
    class_names,
    run_dir,
    simulated,
    agreement_result,
):
    """The :class:`affectnet_tf.evaluation.reports.Report` of an evaluation (see the module docstring)."""
    expression = {}
    if "expression" in truths:
        truth, guess = truths["expression"], predictions["expression"].argmax(axis=1)
        expression = {
            "confusion": metrics.confusion_matrix(truth, guess, len(class_names)),
            "per_class": metrics.per_class_report(truth, guess, len(class_names)),
            "examples": examples,
        }
    dimensions = [d for d in ("valence", "arousal") if d in truths]
    annotators = _read_annotators(run_dir)
    return reports.evaluation_report(
        title=title,
        metrics=result,
        class_names=class_names,
        notes=notes,
        **expression,
        va_truth={d: truths[d] for d in dimensions},
        va_predictions={d: predictions[d] for d in dimensions},
        history=_read_history(run_dir),
        annotators=_annotator_figures(annotators, simulated) if annotators else None,
        agreement=agreement_result,
    )


def evaluate_model(
    model,
    dataset=None,
    *,
    output_dir=None,
    run_dir=None,
    dataset_options=None,
    split=None,
    subset=None,
    report=True,
    extra=None,
):
    """Evaluates ``model`` and writes ``metrics.json`` and the report folder.

    The model runs once. With ``dataset_options`` naming the evaluation ``target`` (and
    ``va_target``), it runs over the evaluated images of the split, read here and joined to
    the split's label table by file name, and every section (the metrics, the model against
    single annotators, AffectNet's label) comes from those predictions. With a ``dataset``,
    the metrics come from it; ``dataset_options`` without a target then add the sections of the
    label table from a second pass over the images they need (pass ``dataset=None`` and the
    target instead to run the model once).

    Args:
        model: the prediction model (built by :func:`affectnet_tf.build_model`).
        dataset: batches of ``(images, targets)`` (class indices for expression), or None.
        output_dir: where ``metrics.json`` and ``report/`` go; None writes nothing.
        run_dir: the run folder with ``history.csv`` and ``annotators.npz`` (default:
            ``output_dir``).
        dataset_options: :func:`affectnet_tf.make_dataset` arguments of the evaluated split
            (``name``, ``split``, ``subset``, ``partition``, ``image_size``, ``batch_size``,
            ``data_dir``, ``config``, ``manual_dir``, and ``target`` / ``va_target``, the
            evaluation targets): enables the human-agreement section on splits with crowd
            answers, and the true annotators of synthetic_faces.
        split: recorded in ``metrics.json``.
        subset: recorded in ``metrics.json``.
        report: also write the report.
        extra: further JSON-able entries for ``metrics.json``.

    Returns:
        The per-head metrics (``{head: {metric: value}}``); ``metrics.json`` holds them with
        ``split``, ``subset``, ``agreement`` and ``extra``.
    """
    options = dict(dataset_options or {})
    if dataset is None and "target" not in options:
        raise ValueError(
            "evaluate_model needs a `dataset`, or `dataset_options` with the evaluation "
            f"`target`. Received: dataset=None, dataset_options={dataset_options!r}"
        )
    if dataset is not None and "target" in options:
        raise ValueError(
            "With the evaluation `target` in `dataset_options` the model runs over the split "
            "itself: pass dataset=None. Received: a dataset and "
            f"target={options['target']!r}"
        )
    metadata = models.model_metadata(model)
    heads = list(metadata["outputs"])
    num_classes = int(metadata["num_classes"])
    class_names = list(metadata["class_names"])
    run_dir = run_dir or output_dir
    keep_examples = _EXAMPLES_PER_KIND if report else 0
    builder = table = rows = outputs = None
    if dataset is None:
        builder = _builder(options)
        table = data.load_label_table(builder, options["split"])
        truths, predictions, examples, rows, outputs = _evaluate_split(
            model, heads, metadata["task"], builder, table, options, num_classes, keep_examples
        )
    else:
        truths, predictions, examples = predict_split(model, dataset, heads, keep_examples)
    notes = {}
    result = compute_metrics(truths, predictions, num_classes, notes)
    if output_dir is None:
        return result
    agreement_result = simulated = None
    if options:
        if table is None:  # the dataset has no file names: the images the agreement needs
            builder = _builder(options)
            table = data.load_label_table(builder, options["split"])
            needed = _agreement_rows(table, heads, num_classes)
            needed &= data.subset_mask(table, options.get("subset"), options.get("partition"))
            if needed.any():
                seen, outputs, _ = _predict_rows(model, heads, builder, table, needed, options)
                rows = seen["row"]
        if rows is not None:
            agreement_result = split_agreement(table, rows, outputs, options, num_classes)
        simulated = _simulated_annotators(options["name"], builder)
    record = {"split": split, "subset": subset, **(extra or {}), **result}
    if notes:
        record["notes"] = notes
    if agreement_result is not None:
        record["agreement"] = agreement_result
    os.makedirs(output_dir, exist_ok=True)
    write_json(os.path.join(output_dir, "metrics.json"), json_ready(record))
    if report:
        title = f"Evaluation of {metadata.get('backbone', model.name)}"
        if options:
            title += f" on {options['name']} {options['split']}"
            if options.get("subset"):
                title += f" ({options['subset']})"
        built = _report(
            title=title,
            result=result,
            notes=notes,
            truths=truths,
            predictions=predictions,
            examples=examples,
            class_names=class_names,
            run_dir=run_dir,
            simulated=simulated,
            agreement_result=agreement_result,
        )
        built.save(os.path.join(output_dir, REPORT_DIR))
    return result


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

    Defaults come from the run's ``config.yaml``: the dataset and its test data
    (:func:`affectnet_tf.training.config.data_roles`), data folder, stored image size, image size,
    targets. ``split`` (and ``subset``, a role of the split's cut: ``train``, ``selection``,
    ``test``, or ``all``) evaluates other data; data that overlaps the run's training or
    selection images is refused.

    Returns:
        The per-head metrics; ``metrics.json`` and ``report/`` are written to ``output_dir``
        (default: the run folder).
    """
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"The run folder {os.path.abspath(model_dir)} does not exist.")
    run = load_run(model_dir)
    model_dir = run.folder
    saved_roles, settings = run.roles, dict(run.settings)
    if run.ignored:
        print(f"Ignoring settings of an older version in {run.config_path}: {list(run.ignored)}")
    model = run.load_model()
    metadata = models.model_metadata(model)
    if num_classes is not None and int(num_classes) != int(metadata["num_classes"]):
        raise ValueError(
            f"The model predicts {metadata['num_classes']} classes; it cannot be evaluated "
            f"with num_classes={num_classes}."
        )
    num_classes = int(metadata["num_classes"])
    if dataset is not None and dataset != settings.get("dataset"):
        settings.update(dataset=dataset, split=None, val_split=None, eval_split=None)
    if split is not None:
        settings["eval_split"] = split if subset in (None, "all") else f"{split}:{subset}"
    elif subset is not None:
        raise ValueError("--subset needs --split (evaluate SPLIT:SUBSET).")
    if data_dir is not None:
        settings["data_dir"] = data_dir
    config = RunConfig.from_dict({**settings, "output_dir": model_dir})
    roles = data_roles(config)
    test = roles.test
    exp_target, default_va = eval_targets(config)
    image_size = int(metadata["image_size"])
    eval_split, eval_subset = test.split, test.subset
    options = dict(
        name=roles.dataset_name,
        split=eval_split,
        subset=eval_subset,
        partition=roles.partition_of(test, config.partition),
        image_size=image_size,
        batch_size=int(batch_size or config.batch_size),
        data_dir=config.data_dir,
        config=roles.builder_config,
    )
    dataset_options = dict(
        options,
        target=target or exp_target,
        va_target=va_target or default_va,
        manual_dir=config.manual_dir,
    )
    return evaluate_model(
        model,
        output_dir=output_dir or model_dir,
        run_dir=model_dir,
        dataset_options=dataset_options,
        split=eval_split,
        subset=eval_subset,
        report=report,
        extra={
            "dataset": roles.dataset_name,
            "target": target or exp_target,
            # the run's record of its images, when its own test data is evaluated
            **(
                {"data_roles": saved_roles}
                if saved_roles
                and saved_roles["test"]["split"] == eval_split
                and saved_roles["test"]["subset"] == eval_subset
                else {}
            ),
        },
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.evaluate",
        description="Evaluate a trained run: metrics.json and a report folder (HTML, Markdown).",
    )
    parser.add_argument("--model-dir", required=True, help="run folder holding model.keras")
    parser.add_argument("--dataset", help="TFDS dataset (default: the run's)")
    parser.add_argument("--split", help="split (default: the run's test data)")
    parser.add_argument(
        "--subset",
        choices=data.SUBSETS + ("all",),
        help="subset of --split's cut (train, selection, test) or all of it (default: all)",
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
    print(json.dumps(json_ready(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
