"""Training targets computed from a split's label table, without any image.

Expression: the majority vote (``mv``, ties broken by the file name), the vote distribution
(``soft``), Dawid-Skene posteriors (``ds``), the raw answer matrix for crowd layers (``cv``), or
a single label (``original``: AffectNet's own, ``true``: the truth of synthetic data).
Valence/arousal: the ``mean`` or ``median`` answer, the latent-truth model's estimate
(``latent``: :class:`crowd_layers.LatentTruthRegression`, each annotator's scale, bias and
noise), the answer matrix (``cv``), or a single value (``original``, ``true``). Rows without the requested labels are dropped and counted.
"""

import logging
import warnings

import numpy as np

import crowd_layers
from affectnet_tf.data.partition import subset_mask
from affectnet_tf.data.tables import open_split
from crowd_layers.checks import check_float_answers
from tfds_affectnet import labels

__all__ = [
    "TASK_HEADS",
    "TASKS",
    "TARGETS",
    "VA_TARGETS",
    "default_va_target",
    "build_targets",
    "crowd_answers",
]

logger = logging.getLogger(__name__)

#: The heads (model outputs, target keys) of each task.
TASK_HEADS = {
    "exp": ("expression",),
    "aro": ("arousal",),
    "val": ("valence",),
    "va": ("valence", "arousal"),
    "all": ("expression", "valence", "arousal"),
}
TASKS = tuple(TASK_HEADS)
TARGETS = ("mv", "soft", "cv", "ds", "original", "true", "mean", "median", "latent")
VA_TARGETS = ("mean", "median", "latent", "cv", "original", "true")
_DEFAULT_VA_TARGET = {
    "mv": "mean",
    "soft": "mean",
    "ds": "mean",
    "cv": "cv",
    "original": "original",
    "true": "true",
    "mean": "mean",
    "median": "median",
    "latent": "latent",
}
_CROWD_TARGETS = ("mv", "soft", "cv", "ds", "mean", "median", "latent")


def default_va_target(target):
    """The valence/arousal target that goes with an expression ``target`` by default."""
    if target not in _DEFAULT_VA_TARGET:
        raise ValueError(f"`target` must be one of {TARGETS}. Received: target={target!r}")
    return _DEFAULT_VA_TARGET[target]


def _valid_va(values):
    """Where valence/arousal values are values: finite and in ``[-1, 1]``."""
    values = np.asarray(values, np.float64)
    return np.isfinite(values) & (values >= -1.0) & (values <= 1.0)


def _single_label_expression(table, target, num_classes, dropped):
    """``(targets, valid, classes, tied)`` of one label per image (``original``, ``true``)."""
    key = {"original": "affectnet_expression", "true": "true_expression"}[target]
    if target == "original" and key not in table:
        key = "expression"
    if key not in table:
        raise ValueError(
            f"This dataset has no {'truth' if target == 'true' else 'original label'} "
            f"feature ({key}). Received: target={target!r}"
        )
    codes = table[key].astype(np.int64)
    valid = (codes >= 0) & (codes < num_classes)
    # AffectNet's codes 8-10 are no labels; another class set's codes are all labels
    labelled = max(num_classes, len(labels.EXPRESSION_NAMES))
    dropped["expression_not_a_label"] = int(np.sum((codes >= labelled) | (codes < 0)))
    if num_classes == 7:
        dropped["expression_contempt"] = int(np.sum(codes == labels.CONTEMPT))
    no_ties = np.zeros(len(codes), bool)
    return np.where(valid, codes, -1), valid, np.where(valid, codes, -1), no_ties


def _expression_answers(table, num_classes, dropped):
    """The answer matrix of the class set: with 7 classes contempt answers are no answers and
    images whose 8-class majority is contempt have none."""
    answers = table["crowd_expression"].astype(np.int64)
    if num_classes == 7:
        majority8, _ = labels.majority_labels(answers, table["file_name"], 8)
        contempt_items = majority8 == labels.CONTEMPT
        dropped["expression_majority_contempt"] = int(contempt_items.sum())
        answers = np.where(answers == labels.CONTEMPT, -1, answers)
        answers[contempt_items] = -1
    return answers


def _dawid_skene_posteriors(answers, answered, num_classes, fit_rows, ds_convergence):
    """Dawid-Skene fitted on the ``fit_rows``' answers; every answered row gets its posterior."""
    fit = answers if fit_rows is None else answers[fit_rows]
    logger.debug("Fitting Dawid-Skene on %d images' answers", len(fit))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unanswered rows: counted by the caller
        model = crowd_layers.DawidSkene(
            num_classes=num_classes, convergence=ds_convergence, max_iter=1000
        ).fit(fit)
    values = np.where(answered[:, None], model.predict_proba(answers), 0.0)
    return values.astype(np.float32)


def _crowd_expression(table, target, num_classes, dropped, fit_rows, ds_convergence):
    """``(targets, answered, majority, tied)`` of the crowd targets ``mv``, ``soft``, ``ds``
    and ``cv``."""
    answers = _expression_answers(table, num_classes, dropped)
    answered = (answers >= 0).any(axis=1)
    dropped["expression_no_answers"] = int((~answered).sum())
    majority, tied = labels.majority_labels(answers, table["file_name"], num_classes)
    if target == "mv":
        values = majority
    elif target == "soft":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # unanswered rows: counted above
            values = crowd_layers.vote_distribution(answers, num_classes)
        values = np.where(answered[:, None], np.nan_to_num(values), 0.0).astype(np.float32)
    elif target == "ds":
        values = _dawid_skene_posteriors(answers, answered, num_classes, fit_rows, ds_convergence)
    elif target == "cv":
        values = answers
    else:
        raise ValueError(
            f"Target {target!r} is for valence/arousal; expression targets are "
            f"mv, soft, ds, cv, original, true. Received: target={target!r}"
        )
    return values, answered, majority, tied


def _expression_target(table, target, num_classes, dropped, fit_rows, ds_convergence):
    """Returns (targets, valid mask, class per row for weights/sampling, tied-vote mask)."""
    if target in ("original", "true"):
        return _single_label_expression(table, target, num_classes, dropped)
    return _crowd_expression(table, target, num_classes, dropped, fit_rows, ds_convergence)


def _va_target(table, dimension, va_target, dropped, fit_rows=None):
    """``(targets, valid)`` of one of ``valence`` / ``arousal``."""
    if va_target in ("original", "true"):
        key = {"original": f"affectnet_{dimension}", "true": f"true_{dimension}"}[va_target]
        if va_target == "original" and key not in table:
            key = dimension
        if key not in table:
            raise ValueError(
                f"This dataset has no {key} feature. Received: va_target={va_target!r}"
            )
        values = table[key].astype(np.float32)
        valid = _valid_va(values)
        dropped[f"{dimension}_not_a_label"] = int((~valid).sum())
        return np.where(valid, values, np.nan).astype(np.float32), valid
    key = f"crowd_{dimension}"
    answers = check_float_answers(table[key], name=key)
    answers[~_valid_va(np.nan_to_num(answers, nan=-5.0))] = np.nan
    valid = np.isfinite(answers).any(axis=1)
    dropped[f"{dimension}_no_answers"] = int((~valid).sum())
    if va_target == "cv":
        return answers.astype(np.float32), valid
    values = np.full(len(answers), np.nan, np.float32)
    if va_target == "latent":
        values[valid] = _latent_truths(answers, valid, fit_rows, key)
        return values, valid
    reduce = crowd_layers.mean_answer if va_target == "mean" else crowd_layers.median_answer
    values[valid] = reduce(answers[valid])
    return values, valid


def _latent_truths(answers, valid, fit_rows, key):
    """The latent-truth model fitted on the ``fit_rows``' answers; every answered row gets its
    bias- and scale-corrected, precision-weighted mean (the answers of other rows never move
    the annotators' parameters).

    Without the truths' prior (``truth_prior=False``): the network's regression already pools
    similar images, and targets shrunk toward the crowd's mean train a network whose outputs
    are shrunk too (measured: lower CCC on sparse crowds)."""
    fit = valid if fit_rows is None else valid & np.asarray(fit_rows, bool)
    if not fit.any():
        raise ValueError(
            f"The latent-truth target needs answered training rows, and {key} has none."
        )
    logger.debug("Fitting the latent-truth model on %d images' %s", int(fit.sum()), key)
    model = crowd_layers.LatentTruthRegression(truth_prior=False).fit(answers[fit])
    # the scale's own range (a corrected value may leave it; the heads are tanh)
    return np.clip(model.predict(answers[valid]), -1.0, 1.0)


def _check_arguments(table, task, target, va_target, num_classes):
    """Checks the choices of :func:`build_targets` and that the table has what they need."""
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")
    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {TARGETS}. Received: target={target!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"`num_classes` must be an integer. Received: num_classes={num_classes!r}")
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be at least 2. Received: num_classes={num_classes}")
    for key in ("crowd_expression", "true_expression") if num_classes not in (7, 8) else ():
        codes = np.asarray(table.get(key, ()), np.int64)
        if codes.size and codes.max() >= num_classes:
            raise ValueError(
                f"`num_classes` must count every class of the dataset, and {key} holds the "
                f"class {int(codes.max())} (AffectNet's classes: 8, or 7 without contempt). "
                f"Received: num_classes={num_classes}"
            )
    if va_target not in VA_TARGETS:
        raise ValueError(
            f"`va_target` must be one of {VA_TARGETS}. Received: va_target={va_target!r}"
        )
    has_crowd = "crowd_expression" in table
    for name, value in (("target", target), ("va_target", va_target)):
        if value in _CROWD_TARGETS and not has_crowd:
            if name == "va_target" and task == "exp":
                continue
            if name == "target" and task in ("val", "aro", "va"):
                continue
            raise ValueError(
                f"Target {value!r} needs crowd answers, and this dataset has none (a single "
                f"label per image): use target='original'. Received: {name}={value!r}"
            )
    if "expression" in TASK_HEADS[task] and target in ("mean", "median", "latent"):
        raise ValueError(f"Target {target!r} is for valence/arousal tasks. Received: task={task!r}")


def build_targets(
    table,
    *,
    task="exp",
    target="mv",
    va_target=None,
    num_classes=8,
    fit_rows=None,
    ds_convergence="log_likelihood",
):
    """Computes the targets of a split from its label table.

    Majority votes break ties by the file name (:func:`tfds_affectnet.labels.majority_labels`),
    so no label depends on a seed. ``target="ds"``: Dawid-Skene is fitted on the answers of
    ``fit_rows`` (a boolean mask; default all rows) until its log-likelihood converges
    (``ds_convergence="crowdkit"`` stops as crowd-kit does), and every row gets its posterior.
    ``va_target="latent"`` likewise fits :class:`crowd_layers.LatentTruthRegression` on the
    ``fit_rows`` only.

    ``num_classes``: the classes' count; 7 drops contempt from AffectNet's codes (a class set
    of the dataset's own has codes ``0..num_classes-1`` only, so nothing is dropped there).

    Returns:
        ``(targets, keep, classes, extras)``: ``targets`` an array or a dict of arrays (one row
        per table row), ``keep`` the rows that have the requested labels (for ``task="all"`` a
        row is kept when any label is present and the others hold missing markers: -1 / NaN /
        an all-zero distribution), ``classes`` a hard class per row for class weights and
        balanced sampling (-1 where none), and ``extras`` with the dropped counts and ties.
    """
    va_target = va_target or _DEFAULT_VA_TARGET.get(target)
    _check_arguments(table, task, target, va_target, num_classes)
    dropped, targets, valid = {}, {}, {}
    classes = np.full(len(table["file_name"]), -1, np.int64)
    tied = np.zeros(len(classes), bool)
    for head in TASK_HEADS[task]:
        if head == "expression":
            targets[head], valid[head], classes, tied = _expression_target(
                table, target, num_classes, dropped, fit_rows, ds_convergence
            )
        else:
            targets[head], valid[head] = _va_target(table, head, va_target, dropped, fit_rows)
    reduce = np.logical_or if task == "all" else np.logical_and
    keep = reduce.reduce(list(valid.values()))
    if task != "all" and len(targets) == 1:
        targets = next(iter(targets.values()))
    extras = {
        "dropped": {k: v for k, v in dropped.items() if v},
        "tied_items": int(tied.sum()),
        "tied": tied,
    }
    return targets, keep, classes, extras


def crowd_answers(
    name,
    split=None,
    *,
    num_classes=None,
    data_dir=None,
    manual_dir=None,
    config=None,
    subset=None,
    partition=None,
    head="expression",
):
    """The answer matrix ``(N, R)`` of the images ``make_dataset`` trains on with
    ``target="cv"``: the same split, subset and class set (``num_classes`` as there: None for
    all the dataset's; with AffectNet's 7, contempt answers are no answers). For aggregators,
    or to initialise crowd layers.

    ``head``: ``"expression"`` (integers, -1: no answer), ``"valence"`` or ``"arousal"``
    (floats, NaN: no answer; the images with an answer of that head).
    """
    opened = open_split(name, split, data_dir=data_dir, manual_dir=manual_dir, config=config)
    table = opened.table
    if "crowd_expression" not in table:
        raise ValueError(
            f"{opened.builder.info.full_name} has no crowd answers (feature crowd_expression). "
            f"Received: name={opened.name!r}"
        )
    if head not in ("expression", "valence", "arousal"):
        raise ValueError(f"`head` must be expression, valence or arousal. Received: head={head!r}")
    task = {"expression": "exp", "valence": "val", "arousal": "aro"}[head]
    answers, keep, _, _ = build_targets(
        table,
        task=task,
        target="cv",
        va_target="cv",
        num_classes=len(opened.class_names(num_classes)),
    )
    keep &= subset_mask(table, subset, partition)
    return np.asarray(answers)[keep]
