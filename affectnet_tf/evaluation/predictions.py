"""The model's one pass over an evaluated split, joined to the split's label table.

:func:`image_batches` reads the images of chosen rows of a split's label table (decoded and
resized as :func:`affectnet_tf.make_dataset` does) with targets joined by file name;
:func:`predict_split` runs the model once over batches and collects its predictions (with a
progress bar over the batches); :func:`evaluated_split` does both for an evaluation: the
evaluated images and the ones the agreement sections need
(:mod:`affectnet_tf.evaluation.split_agreement`), in one pass.
"""

import math

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from affectnet_tf.data.images import decode_image, resize_image
from affectnet_tf.data.partition import subset_mask
from affectnet_tf.data.tables import open_split
from affectnet_tf.data.targets import build_targets
from affectnet_tf.evaluation.split_agreement import agreement_rows
from affectnet_tf.progress import progress

__all__ = [
    "predict_split",
    "open_evaluated_split",
    "image_batches",
    "predict_rows",
    "evaluated_split",
]


def predict_split(model, dataset, heads, keep_examples=0, total=None):
    """Runs ``model`` once over ``dataset`` of ``(images, targets)`` batches.

    Args:
        model: the prediction model (one output, or a dict keyed by head).
        dataset: batches of ``(images, targets)``; targets a tensor for one head, else a dict
            (keys other than the heads, such as a row index, are collected too).
        heads: the heads to collect (a single-output model's output is ``heads[0]``; a
            dict-output model may have more).
        keep_examples: keep up to this many correctly and as many incorrectly classified
            images (expression only) for the examples grid.
        total: the number of batches, for the progress bar (default: the dataset's
            cardinality where it is known).

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
    for images, targets in progress(
        dataset, total=_batch_count(dataset, total), desc="evaluating", unit="batch"
    ):
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
            _keep_examples(kept, images, targets["expression"], outputs, keep_examples)
    truths = {key: np.concatenate(values) for key, values in truths.items()}
    predictions = {head: np.concatenate(values) for head, values in predictions.items()}
    return truths, predictions, _examples(kept[True] + kept[False])


def _batch_count(dataset, total):
    """``total``, else the dataset's number of batches where TensorFlow knows it."""
    if total is not None:
        return total
    try:
        count = int(dataset.cardinality())
    except (AttributeError, TypeError):
        return None
    return count if count >= 0 else None


def _keep_examples(kept, images, truth, outputs, limit):
    """Adds a batch's correctly and incorrectly classified images to ``kept`` (up to
    ``limit`` of each); soft or crowd targets (not one class per image) add nothing."""
    truth = np.asarray(truth)
    if truth.ndim != 1:
        return
    guess = np.asarray(outputs["expression"]).argmax(axis=1)
    images = np.asarray(images)
    for k in np.flatnonzero(truth >= 0):
        good = bool(truth[k] == guess[k])
        if len(kept[good]) < limit:
            kept[good].append((images[k], truth[k], guess[k]))


def _examples(chosen):
    """The examples grid's ``{"images", "true", "predicted"}`` of ``(image, true, predicted)``
    tuples, or None without any."""
    if not chosen:
        return None
    return {
        "images": np.stack([c[0] for c in chosen]),
        "true": np.array([c[1] for c in chosen]),
        "predicted": np.array([c[2] for c in chosen]),
    }


def open_evaluated_split(options):
    """``(builder, table)``: the TFDS builder of the split of the
    :class:`~affectnet_tf.evaluation.options.EvaluationOptions` ``options``, prepared (from
    its ``manual_dir``) if needed, and its label table
    (:func:`affectnet_tf.data.tables.open_split`)."""
    opened = open_split(
        options.name,
        options.split,
        data_dir=options.data_dir,
        manual_dir=options.manual_dir,
        config=options.config,
    )
    return opened.builder, opened.table


def image_batches(builder, table, rows, targets, options):
    """Batches of ``(images, targets)`` of the table's ``rows`` (a mask), read from the split.

    The images are decoded and resized as :func:`affectnet_tf.make_dataset` does; ``targets``
    ``{key: array over the table's rows}`` are joined to each image by its file name, so the
    order in which the files are read does not matter.

    Args:
        builder: the split's TFDS builder (:func:`open_evaluated_split`).
        table: the split's label table (with ``file_name``).
        rows: a boolean mask over the table's rows: the images read.
        targets: ``{key: array over the table's rows}`` (may be empty).
        options: an :class:`~affectnet_tf.evaluation.options.EvaluationOptions` (``split``,
            ``image_size``, ``batch_size``), or a dict with those keys.
    """
    split, image_size, batch_size = _reading(options)
    names = table["file_name"]
    index = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(names), tf.range(len(names), dtype=tf.int64)
        ),
        default_value=-1,
    )
    wanted = tf.constant(rows)
    values = {key: tf.constant(value) for key, value in targets.items()}
    stored_size = tuple(builder.info.features["image"].shape[:2])

    def load(example):
        i = index.lookup(example["file_name"])
        image = decode_image(example["image"])
        if stored_size != (image_size, image_size):
            image = resize_image(image, image_size)
        image.set_shape([image_size, image_size, 3])
        return image, {key: tf.gather(value, i) for key, value in values.items()}

    dataset = builder.as_dataset(
        split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    dataset = dataset.filter(lambda example: tf.gather(wanted, index.lookup(example["file_name"])))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _reading(options):
    """``(split, image_size, batch_size)`` of an EvaluationOptions or a dict."""
    if isinstance(options, dict):
        return options["split"], int(options["image_size"]), int(options["batch_size"])
    return options.split, options.image_size, options.batch_size


def predict_rows(model, heads, builder, table, rows, options, targets=None, keep_examples=0):
    """:func:`predict_split` over the images of the table's ``rows`` (a mask), in table order.

    Returns:
        ``(truths, predictions, examples)``; ``truths["row"]`` holds each image's table row.
    """
    targets = {**(targets or {}), "row": np.arange(len(rows), dtype=np.int64)}
    batches = image_batches(builder, table, rows, targets, options)
    total = math.ceil(int(np.sum(rows)) / _reading(options)[2])
    truths, predictions, examples = predict_split(model, batches, heads, keep_examples, total)
    order = np.argsort(truths["row"], kind="stable")
    truths = {key: value[order] for key, value in truths.items()}
    predictions = {head: value[order] for head, value in predictions.items()}
    return truths, predictions, examples


def evaluated_split(model, heads, task, builder, table, options, num_classes, keep_examples):
    """The model once over the evaluated images and the images the agreement sections need.

    Args:
        options: the :class:`~affectnet_tf.evaluation.options.EvaluationOptions`, with its
            ``target``.

    Returns:
        ``(truths, predictions, examples, rows, outputs)``: the evaluation targets and the
        predictions of the images that have them, the examples grid, and every image's table
        row with the predictions ``{head: array}`` of all the images the model saw.
    """
    targets, keep, _, extras = build_targets(
        table,
        task=task,
        target=options.target,
        va_target=options.va_target,
        num_classes=num_classes,
    )
    in_subset = subset_mask(table, options.subset, options.partition)
    keep &= in_subset
    if not keep.any():
        raise ValueError(
            f"No examples left in {options.name}/{options.split} "
            f"(subset={options.subset}) for task={task!r}, "
            f"target={options.target!r}; dropped: {extras['dropped']}"
        )
    targets = dict(targets) if isinstance(targets, dict) else {heads[0]: targets}
    if "expression" in targets and np.ndim(targets["expression"]) == 1:
        # the examples grid shows evaluated images only
        targets["expression"] = np.where(keep, targets["expression"], -1)
    needed = keep | (in_subset & agreement_rows(table, heads, num_classes))
    truths, outputs, examples = predict_rows(
        model, heads, builder, table, needed, options, targets, keep_examples
    )
    rows = truths.pop("row")
    scored = keep[rows]
    truths = {head: value[scored] for head, value in truths.items()}
    predictions = {head: value[scored] for head, value in outputs.items()}
    return truths, predictions, examples, rows, outputs
