"""Evaluation of a trained model: ``metrics.json`` and a report folder.

:func:`evaluate_run` evaluates the saved model of a run folder (``model.keras``) with every
default from the run's ``config.yaml`` (dataset, data folder, image size, task, targets) and
writes ``metrics.json`` and ``report/`` (``report.html``, which embeds its images and opens
offline, ``report.md`` and the PNGs); ``python -m affectnet_tf.evaluate`` is its command line.
The training command calls :func:`evaluate_model` on its in-memory model at the end of a run,
so both write the same files.

The report holds AffectNet's metric table (:mod:`affectnet_tf.modeling.metrics`), the normalised
confusion matrix and a per-class precision / recall / F1 table, valence-arousal plots and error
histograms, a grid of correctly and incorrectly classified images, the training curves of
``history.csv``, the learned annotator confusion matrices of crowd runs (beside the true
simulated ones on ``synthetic_faces``, :mod:`affectnet_tf.evaluation.annotators`), and, for
splits with crowd answers, the model against single annotators and against AffectNet's
original label (:mod:`affectnet_tf.evaluation.split_agreement`).

The model runs once over the evaluated images
(:func:`affectnet_tf.evaluation.predictions.evaluated_split`); each image's predictions are
joined to the split's label table by its file name, and every section comes from them. This
module computes; :func:`affectnet_tf.evaluation.reports.evaluation_report` lays out.
"""

import logging
import os
import warnings

import numpy as np
import pandas as pd

from affectnet_tf.data.partition import subset_mask
from affectnet_tf.data.tables import SplitTable
from affectnet_tf.evaluation import predictions as passes
from affectnet_tf.evaluation import reports
from affectnet_tf.evaluation.annotators import (
    annotator_figures,
    read_annotators,
    simulated_annotators,
)
from affectnet_tf.evaluation.options import EvaluationOptions
from affectnet_tf.evaluation.split_agreement import agreement_rows, split_agreement
from affectnet_tf.files import json_ready, write_json
from affectnet_tf.modeling import metrics, models
from affectnet_tf.training.config import RunConfig, data_roles
from affectnet_tf.training.crowd_folders import eval_reference
from affectnet_tf.training.run_folder import load_run

__all__ = [
    "REPORT_DIR",
    "EXAMPLES_PER_KIND",
    "compute_metrics",
    "evaluate_model",
    "evaluate_run",
]

logger = logging.getLogger(__name__)

REPORT_DIR = "report"
EXAMPLES_PER_KIND = 8  # correct and incorrect images in the examples grid


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


def _evaluation_options(dataset, dataset_options):
    """The :class:`EvaluationOptions` of ``evaluate_model``'s arguments (None without any),
    checked against ``dataset``."""
    options = dataset_options
    if options is not None and not isinstance(options, EvaluationOptions):
        options = EvaluationOptions.from_mapping(options) if options else None
    if dataset is None and (options is None or options.target is None):
        raise ValueError(
            "evaluate_model needs a `dataset`, or `dataset_options` with the evaluation "
            f"`target`. Received: dataset=None, dataset_options={dataset_options!r}"
        )
    if dataset is not None and options is not None and options.target is not None:
        raise ValueError(
            "With the evaluation `target` in `dataset_options` the model runs over the split "
            "itself: pass dataset=None. Received: a dataset and "
            f"target={options.target!r}"
        )
    return options


def _split_pass(model, metadata, options, keep_examples):
    """The model's one pass over the split of ``options``: ``(truths, predictions, examples,
    seen)``, ``seen`` the split's builder and table with the table row and predictions of
    every image the model saw (for :func:`_human_sections`)."""
    logger.info("Evaluating on %s", options.title)
    logger.debug("Evaluation options: %s", options)
    builder, table = passes.open_evaluated_split(options)
    _check_classes(metadata, SplitTable(options.name, options.split, builder, table))
    heads = list(metadata["outputs"])
    truths, predicted, examples, rows, outputs = passes.evaluated_split(
        model,
        heads,
        metadata["task"],
        builder,
        table,
        options,
        int(metadata["num_classes"]),
        keep_examples,
    )
    seen = {"builder": builder, "table": table, "rows": rows, "outputs": outputs}
    return truths, predicted, examples, seen


def _check_classes(metadata, split_table):
    """Raises ``ValueError`` when the model's classes are not the evaluated dataset's (in the
    same order; AffectNet's 7 of its 8 allowed)."""
    model_names = [str(name).lower() for name in metadata["class_names"]]
    try:
        expected = split_table.class_names(len(model_names))
    except ValueError as error:
        raise ValueError(
            f"The model predicts the classes {list(metadata['class_names'])}, which "
            f"{split_table.name} cannot be scored on: {error}"
        ) from None
    if model_names != [name.lower() for name in expected]:
        raise ValueError(
            f"The model predicts the classes {list(metadata['class_names'])}; "
            f"{split_table.name} has {list(expected)}. Evaluate it on data of its classes, "
            "in the same order."
        )


def _human_sections(model, heads, num_classes, options, seen):
    """``(agreement, simulated)``: the model against single annotators on the evaluated
    split (from the pass ``seen``, or a second pass over the images it needs when the
    caller's dataset had no file names) and the true simulated annotators, or Nones."""
    if options is None:
        return None, None
    if seen is None:
        builder, table = passes.open_evaluated_split(options)
        seen = {"builder": builder, "table": table, "rows": None, "outputs": None}
        needed = agreement_rows(table, heads, num_classes)
        needed &= subset_mask(table, options.subset, options.partition)
        if needed.any():
            rows, outputs, _ = passes.predict_rows(model, heads, builder, table, needed, options)
            seen.update(rows=rows["row"], outputs=outputs)
    agreement = None
    if seen["rows"] is not None:
        agreement = split_agreement(
            seen["table"], seen["rows"], seen["outputs"], options, num_classes
        )
    return agreement, simulated_annotators(options.name, seen["builder"])


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

    The model runs once. With ``dataset_options`` naming the evaluation ``target``, it runs
    over the evaluated images of the split, read here and joined to the split's label table
    by file name, and every section (the metrics, the model against single annotators,
    AffectNet's label) comes from those predictions. With a ``dataset``, the metrics come from
    it; ``dataset_options`` without a target then add the sections of the label table from a
    second pass over the images they need (pass ``dataset=None`` and the target instead to
    run the model once).

    Args:
        model: the prediction model (built by :func:`affectnet_tf.build_model`).
        dataset: batches of ``(images, targets)`` (class indices for expression), or None.
        output_dir: where ``metrics.json`` and ``report/`` go; None writes nothing.
        run_dir: the run folder with ``history.csv`` and ``annotators.npz`` (default:
            ``output_dir``).
        dataset_options: the evaluated split, an
            :class:`~affectnet_tf.evaluation.options.EvaluationOptions` (or a dict of its
            fields): enables the human-agreement section on splits with crowd answers, and
            the true annotators of synthetic_faces.
        split: recorded in ``metrics.json``.
        subset: recorded in ``metrics.json``.
        report: also write the report.
        extra: further JSON-able entries for ``metrics.json``.

    Returns:
        The per-head metrics (``{head: {metric: value}}``); ``metrics.json`` holds them with
        ``split``, ``subset``, ``agreement`` and ``extra``.

    Raises:
        ValueError: neither a dataset nor a ``target``, both, or a wrong option.
    """
    options = _evaluation_options(dataset, dataset_options)
    metadata = models.model_metadata(model)
    heads = list(metadata["outputs"])
    num_classes = int(metadata["num_classes"])
    keep_examples = EXAMPLES_PER_KIND if report else 0
    if dataset is None:
        truths, predicted, examples, seen = _split_pass(model, metadata, options, keep_examples)
    else:
        truths, predicted, examples = passes.predict_split(model, dataset, heads, keep_examples)
        seen = None
    notes = {}
    result = compute_metrics(truths, predicted, num_classes, notes)
    if output_dir is None:
        return result
    agreement, simulated = _human_sections(model, heads, num_classes, options, seen)
    record = {"split": split, "subset": subset, **(extra or {}), **result}
    _write_metrics(output_dir, record, notes, agreement)
    if report:
        built = _report(
            title=_title(model, metadata, options),
            result=result,
            notes=notes,
            evaluated=(truths, predicted, examples),
            class_names=list(metadata["class_names"]),
            run_dir=run_dir or output_dir,
            simulated=simulated,
            agreement=agreement,
        )
        paths = built.save(os.path.join(output_dir, REPORT_DIR))
        logger.info("Wrote the report %s", paths["html"])
    return result


def _title(model, metadata, options):
    """The report's title: the backbone, and the evaluated split."""
    title = f"Evaluation of {metadata.get('backbone', model.name)}"
    return title if options is None else f"{title} on {options.title}"


def _write_metrics(output_dir, record, notes, agreement):
    """Writes ``metrics.json``: ``record`` with the ``notes`` and ``agreement`` there are."""
    if notes:
        record["notes"] = notes
    if agreement is not None:
        record["agreement"] = agreement
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "metrics.json")
    write_json(path, json_ready(record))
    logger.info("Wrote %s", path)


def _read_history(run_dir):
    """The run folder's ``history.csv`` as a DataFrame, or None without one."""
    path = os.path.join(run_dir, "history.csv") if run_dir else None
    if not path or not os.path.exists(path):
        return None
    return pd.read_csv(path)


def _report(*, title, result, notes, evaluated, class_names, run_dir, simulated, agreement):
    """The :class:`affectnet_tf.evaluation.reports.Report` of an evaluation (see the module
    docstring); ``evaluated`` is ``(truths, predictions, examples)``."""
    truths, predicted, examples = evaluated
    expression = {}
    if "expression" in truths:
        truth, guess = truths["expression"], predicted["expression"].argmax(axis=1)
        expression = {
            "confusion": metrics.confusion_matrix(truth, guess, len(class_names)),
            "per_class": metrics.per_class_report(truth, guess, len(class_names)),
            "examples": examples,
        }
    dimensions = [d for d in ("valence", "arousal") if d in truths]
    annotators = read_annotators(run_dir)
    return reports.evaluation_report(
        title=title,
        metrics=result,
        class_names=class_names,
        notes=notes,
        **expression,
        va_truth={d: truths[d] for d in dimensions},
        va_predictions={d: predicted[d] for d in dimensions},
        history=_read_history(run_dir),
        annotators=annotator_figures(annotators, simulated) if annotators else None,
        agreement=agreement,
    )


def _evaluated_config(run, dataset, split, subset, data_dir):
    """The run's :class:`~affectnet_tf.training.config.RunConfig` with the data the command
    line asks for: another dataset, ``split[:subset]`` as the test data, another folder."""
    settings = dict(run.settings)
    if dataset is not None and dataset != settings.get("dataset"):
        settings.update(dataset=dataset, split=None, val_split=None, eval_split=None)
    if split is not None:
        settings["eval_split"] = split if subset in (None, "all") else f"{split}:{subset}"
    elif subset is not None:
        raise ValueError("--subset needs --split (evaluate SPLIT:SUBSET).")
    if data_dir is not None:
        settings["data_dir"] = data_dir
    return RunConfig.from_dict({**settings, "output_dir": run.folder})


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

    Defaults come from the run's ``config.yaml``
    (:meth:`~affectnet_tf.evaluation.options.EvaluationOptions.for_run`): the dataset and its
    test data (:func:`affectnet_tf.training.config.data_roles`), data folder, stored image
    size, image size, targets. ``split`` (and ``subset``, a role of the split's cut:
    ``train``, ``selection``, ``test``, or ``all``) evaluates other data; data that overlaps
    the run's training or selection images is refused.

    Returns:
        The per-head metrics; ``metrics.json`` and ``report/`` are written to ``output_dir``
        (default: the run folder).

    Raises:
        FileNotFoundError: no run folder, or no model in it.
        ValueError: a wrong ``num_classes``, ``subset`` without ``split``, or data that
            overlaps the run's training data.
    """
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"The run folder {os.path.abspath(model_dir)} does not exist.")
    run = load_run(model_dir)
    if run.ignored:
        logger.warning(
            "Ignoring settings of an older version in %s: %s", run.config_path, list(run.ignored)
        )
    logger.info("Loading the model of %s", run.folder)
    model = run.load_model()
    metadata = models.model_metadata(model)
    if num_classes is not None and int(num_classes) != int(metadata["num_classes"]):
        raise ValueError(
            f"The model predicts {metadata['num_classes']} classes; it cannot be evaluated "
            f"with num_classes={num_classes}."
        )
    config = _evaluated_config(run, dataset, split, subset, data_dir)
    options = EvaluationOptions.for_run(
        config,
        data_roles(config),
        int(metadata["image_size"]),
        target=target,
        va_target=va_target,
        batch_size=batch_size,
    )
    own_test = run.roles and (run.roles["test"]["split"], run.roles["test"]["subset"]) == (
        options.split,
        options.subset,
    )
    return evaluate_model(
        model,
        output_dir=output_dir or run.folder,
        run_dir=run.folder,
        dataset_options=options,
        split=options.split,
        subset=options.subset,
        report=report,
        extra={
            "dataset": options.name,
            "target": options.target,
            "evaluated_against": eval_reference(options.name, options.target, options.va_target),
            # the run's record of its images, when its own test data is evaluated
            **({"data_roles": run.roles} if own_test else {}),
        },
    )
