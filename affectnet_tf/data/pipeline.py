"""The ``tf.data`` input pipeline: ``make_dataset`` turns a prepared TFDS dataset into batches.

Targets are computed once per split from the label features alone (images are not decoded for
that), then joined to the images by file name inside the pipeline, so file shuffling and
sharding never misalign images and labels. Images go through :mod:`affectnet_tf.data.images` (the
same decode / resize path as evaluation and prediction) and stay RGB ``uint8``: the backbone's
preprocessing lives inside the model.
"""

import dataclasses
import hashlib
import logging
import warnings

import cv2
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import crowd_layers
from affectnet_tf.data.images import decode_image, resize_image
from crowd_layers.checks import check_float_answers
from tfds_affectnet import labels

__all__ = [
    "TASKS",
    "TARGETS",
    "VA_TARGETS",
    "SUBSETS",
    "DatasetInfo",
    "default_va_target",
    "Partition",
    "subset_mask",
    "names_digest",
    "prepared_builder",
    "load_label_table",
    "build_targets",
    "augment_batch",
    "augment_image",
    "make_dataset",
    "crowd_answers",
]

TASKS = ("exp", "aro", "val", "va", "all")
TARGETS = ("mv", "soft", "cv", "ds", "original", "true", "mean", "median")
VA_TARGETS = ("mean", "median", "cv", "original", "true")
_DEFAULT_VA_TARGET = {
    "mv": "mean",
    "soft": "mean",
    "ds": "mean",
    "cv": "cv",
    "original": "original",
    "true": "true",
    "mean": "mean",
    "median": "median",
}
_CROWD_TARGETS = ("mv", "soft", "cv", "ds", "mean", "median")


def default_va_target(target):
    """The valence/arousal target that goes with an expression ``target`` by default."""
    if target not in _DEFAULT_VA_TARGET:
        raise ValueError(f"`target` must be one of {TARGETS}. Received: target={target!r}")
    return _DEFAULT_VA_TARGET[target]


@dataclasses.dataclass
class DatasetInfo:
    """What ``make_dataset`` built, for the training code and the run's records."""

    name: str
    split: str
    task: str
    target: str
    va_target: str
    num_classes: int
    class_names: tuple
    num_examples: int
    num_annotators: int | None
    class_counts: list
    class_weights: dict
    dropped: dict
    tied_items: int = 0
    subset: str | None = None
    file_names_sha256: str = ""
    element_spec: object = None
    file_names: object = None

    def to_dict(self):
        record = dataclasses.asdict(self)
        record.pop("element_spec")
        record.pop("file_names")
        record["class_names"] = list(self.class_names)
        record["class_weights"] = {int(k): float(v) for k, v in self.class_weights.items()}
        return record


class _SkipCustomConfigNotice(logging.Filter):
    """TFDS logs "Using custom data configuration" whenever a configuration object is passed,
    which this package does on purpose (another stored image size): not worth a warning."""

    def filter(self, record):
        return "Using custom data configuration" not in record.getMessage()


logging.getLogger("absl").addFilter(_SkipCustomConfigNotice())


def prepared_builder(name, data_dir=None, manual_dir=None, config=None):
    """The TFDS builder of ``name`` (a ``BuilderConfig`` instance in ``config``, or a name
    with its configuration), prepared from ``manual_dir`` first if it is not prepared yet."""
    kwargs = {"config": config} if config is not None and not isinstance(config, str) else {}
    builder = tfds.builder(name, data_dir=data_dir, **kwargs)
    if not builder.is_prepared():
        config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
        builder.download_and_prepare(download_config=config)
    return builder


def load_label_table(builder, split):
    """Reads every feature but the image of a split into NumPy arrays, in file order."""
    if split not in builder.info.splits:
        raise ValueError(
            f"Dataset {builder.info.full_name} has no split {split!r}; it has "
            f"{sorted(builder.info.splits)}. Received: split={split!r}"
        )
    dataset = builder.as_dataset(
        split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    dataset = dataset.map(lambda ex: {k: v for k, v in ex.items() if k != "image"})
    parts = {}
    for batch in dataset.batch(4096).as_numpy_iterator():
        for key, value in batch.items():
            parts.setdefault(key, []).append(value)
    table = {key: np.concatenate(values) for key, values in parts.items()}
    names = table["file_name"]
    if len(np.unique(names)) != len(names):
        raise ValueError(f"Split {split!r} of {builder.info.full_name} has duplicate file names.")
    return table


def _valid_va(values):
    values = np.asarray(values, np.float64)
    return np.isfinite(values) & (values >= -1.0) & (values <= 1.0)


def _expression_target(table, target, num_classes, dropped, fit_rows, ds_convergence):
    """Returns (targets, valid mask, class per row for weights/sampling, tied-vote mask)."""
    single_key = {"original": "affectnet_expression", "true": "true_expression"}
    if target in ("original", "true"):
        key = single_key[target]
        if target == "original" and key not in table:
            key = "expression"
        if key not in table:
            raise ValueError(
                f"This dataset has no {'truth' if target == 'true' else 'original label'} "
                f"feature ({key}). Received: target={target!r}"
            )
        codes = table[key].astype(np.int64)
        valid = (codes >= 0) & (codes < num_classes)
        dropped["expression_not_a_label"] = int(np.sum((codes >= 8) | (codes < 0)))
        if num_classes == 7:
            dropped["expression_contempt"] = int(np.sum(codes == labels.CONTEMPT))
        no_ties = np.zeros(len(codes), bool)
        return np.where(valid, codes, -1), valid, np.where(valid, codes, -1), no_ties

    answers = table["crowd_expression"].astype(np.int64)
    names = table["file_name"]
    if num_classes == 7:
        majority8, _ = labels.majority_labels(answers, names, 8)
        contempt_items = majority8 == labels.CONTEMPT
        dropped["expression_majority_contempt"] = int(contempt_items.sum())
        answers = np.where(answers == labels.CONTEMPT, -1, answers)
        answers[contempt_items] = -1
    answered = (answers >= 0).any(axis=1)
    dropped["expression_no_answers"] = int((~answered).sum())
    majority, tied = labels.majority_labels(answers, names, num_classes)
    if target == "mv":
        values = majority
    elif target == "soft":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # unanswered rows: counted above
            values = crowd_layers.vote_distribution(answers, num_classes)
        values = np.where(answered[:, None], np.nan_to_num(values), 0.0).astype(np.float32)
    elif target == "ds":
        # fitted on the training rows' answers only; the other rows get its posteriors
        fit = answers if fit_rows is None else answers[fit_rows]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # unanswered rows: counted above
            model = crowd_layers.DawidSkene(
                num_classes=num_classes, convergence=ds_convergence, max_iter=1000
            ).fit(fit)
        values = np.where(answered[:, None], model.predict_proba(answers), 0.0)
        values = values.astype(np.float32)
    elif target == "cv":
        values = answers
    else:
        raise ValueError(
            f"Target {target!r} is for valence/arousal; expression targets are "
            f"mv, soft, ds, cv, original, true. Received: target={target!r}"
        )
    return values, answered, majority, tied


def _va_target(table, dimension, va_target, dropped):
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
    reduce = crowd_layers.mean_answer if va_target == "mean" else crowd_layers.median_answer
    values = np.full(len(answers), np.nan, np.float32)
    values[valid] = reduce(answers[valid])
    return values, valid


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

    Returns:
        ``(targets, keep, classes, extras)``: ``targets`` an array or a dict of arrays (one row
        per table row), ``keep`` the rows that have the requested labels (for ``task="all"`` a
        row is kept when any label is present and the others hold missing markers: -1 / NaN /
        an all-zero distribution), ``classes`` a hard class per row for class weights and
        balanced sampling (-1 where none), and ``extras`` with the dropped counts and ties.
    """
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")
    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {TARGETS}. Received: target={target!r}")
    if num_classes not in (7, 8):
        raise ValueError(f"`num_classes` must be 8 or 7. Received: num_classes={num_classes}")
    va_target = va_target or _DEFAULT_VA_TARGET[target]
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
    dropped, targets, valid = {}, {}, {}
    classes = np.full(len(table["file_name"]), -1, np.int64)
    tied = np.zeros(len(classes), bool)
    if task in ("exp", "all"):
        if target in ("mean", "median"):
            raise ValueError(
                f"Target {target!r} is for valence/arousal tasks. Received: task={task!r}"
            )
        targets["expression"], valid["expression"], classes, tied = _expression_target(
            table, target, num_classes, dropped, fit_rows, ds_convergence
        )
    dimensions = {"aro": ["arousal"], "val": ["valence"], "va": ["valence", "arousal"]}
    for dimension in dimensions.get(task, ["valence", "arousal"] if task == "all" else []):
        targets[dimension], valid[dimension] = _va_target(table, dimension, va_target, dropped)
    if task == "all":
        keep = np.logical_or.reduce(list(valid.values()))
    else:
        keep = np.logical_and.reduce(list(valid.values()))
    if task != "all" and len(targets) == 1:
        targets = next(iter(targets.values()))
    extras = {
        "dropped": {k: v for k, v in dropped.items() if v},
        "tied_items": int(tied.sum()),
        "tied": tied,
    }
    return targets, keep, classes, extras


SUBSETS = ("train", "selection", "test")


@dataclasses.dataclass(frozen=True)
class Partition:
    """How one split is cut into the three data roles: ``train``, ``selection`` (the data that
    picks the best epoch) and ``test`` (the data that is reported).

    The cut is stratified by each image's 8-class majority vote (or its single label) and
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
    """Each row's class for the stratified cut: the 8-class majority vote, else the label."""
    if "crowd_expression" in table:
        answers = np.asarray(table["crowd_expression"], np.int64)
        return labels.majority_labels(answers, table["file_name"], 8)[0]
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


def names_digest(file_names):
    """SHA-256 of the sorted file names (one per line): identifies a set of images."""
    text = "\n".join(
        sorted(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in file_names)
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _warp_transforms(seed, batch, input_size, output_size, max_rotation_degrees):
    """Per-image projective transforms combining random resized crop, flip and rotation.

    One bilinear warp per image replaces crop + resize + flip + rotate: for an output pixel
    ``(x, y)`` the input pixel is ``centre + S R F (x - c, y - c)`` with ``c`` the output centre,
    ``F`` an optional horizontal flip, ``R`` a rotation and ``S`` the crop's scale.
    """
    height = tf.cast(input_size[0], tf.float32)
    width = tf.cast(input_size[1], tf.float32)
    u = tf.random.stateless_uniform([batch, 6], seed)
    area = 0.7 + 0.3 * u[:, 0]
    aspect = tf.exp(np.log(0.9) + (np.log(1.1) - np.log(0.9)) * u[:, 1])
    crop_w = tf.minimum(width, width * tf.sqrt(area * aspect))
    crop_h = tf.minimum(height, height * tf.sqrt(area / aspect))
    centre_x = crop_w / 2 - 0.5 + (width - crop_w) * u[:, 2]
    centre_y = crop_h / 2 - 0.5 + (height - crop_h) * u[:, 3]
    flip = tf.where(u[:, 4] < 0.5, -1.0, 1.0)
    angle = (2.0 * u[:, 5] - 1.0) * (max_rotation_degrees * np.pi / 180.0)
    scale_x = crop_w / output_size
    scale_y = crop_h / output_size
    cos, sin = tf.cos(angle), tf.sin(angle)
    a0, a1 = scale_x * cos * flip, -scale_x * sin
    b0, b1 = scale_y * sin * flip, scale_y * cos
    c = (output_size - 1) / 2.0
    a2 = centre_x - (a0 + a1) * c
    b2 = centre_y - (b0 + b1) * c
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


# Luma and the YIQ basis, for saturation and hue as one linear colour map per image.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def _colour_matrices(seed, batch, saturation, hue_degrees):
    """Per-image 3x3 RGB maps: scale chroma (saturation) and rotate it in YIQ (hue)."""
    u = tf.random.stateless_uniform([batch, 2], seed)
    sat = 1.0 + saturation * (2.0 * u[:, 0] - 1.0)
    theta = (2.0 * u[:, 1] - 1.0) * (hue_degrees * np.pi / 180.0)
    cos, sin = sat * tf.cos(theta), sat * tf.sin(theta)
    ones, zeros = tf.ones_like(cos), tf.zeros_like(cos)
    yiq = tf.stack(
        [
            tf.stack([ones, zeros, zeros], axis=1),
            tf.stack([zeros, cos, -sin], axis=1),
            tf.stack([zeros, sin, cos], axis=1),
        ],
        axis=1,
    )
    return tf.einsum("ij,bjk,kl->bil", _YIQ_TO_RGB, yiq, _RGB_TO_YIQ)


def _augment_with_opencv(images, transforms, contrast, shift, colour, image_size):
    """NumPy side of :func:`augment_batch`: one ``warpAffine`` and one ``transform`` per image.

    OpenCV's kernels are faster than TensorFlow's ``ImageProjectiveTransformV3`` on CPU and
    release the GIL, so ``tf.data`` still runs several batches in parallel (figures on the
    Benchmarks page). The warp runs on RGBA: OpenCV's bilinear warp has a SIMD path for 4
    channels and not for 3, which outweighs the two channel conversions.
    """
    size = int(image_size)
    out = np.empty((len(images), size, size, 3), np.uint8)
    rgba = np.empty(images.shape[1:3] + (4,), np.uint8)
    warped = np.empty((size, size, 4), np.uint8)
    for k, image in enumerate(images):
        cv2.cvtColor(image, cv2.COLOR_RGB2RGBA, dst=rgba)
        cv2.warpAffine(
            rgba,
            transforms[k, :6].reshape(2, 3),
            (size, size),
            dst=warped,
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT_101,
        )
        cv2.cvtColor(warped, cv2.COLOR_RGBA2RGB, dst=out[k])
        # contrast around the image mean, brightness, then saturation and hue: one 3x4 map
        offset = (1.0 - contrast[k]) * np.mean(cv2.mean(out[k])[:3]) + shift[k]
        matrix = np.concatenate(
            [contrast[k] * colour[k], colour[k].sum(1, keepdims=True) * offset], 1
        )
        cv2.transform(out[k], matrix, dst=out[k])  # saturates to 0..255
    return out


def augment_batch(
    images,
    seed,
    image_size,
    max_rotation_degrees=10.0,
    brightness=0.1,
    contrast=0.2,
    saturation=0.2,
    hue_degrees=7.0,
):
    """Training augmentation of a batch: random resized crop, flip, rotation, colour jitter.

    Each image gets its own random crop (70-100% of the area, aspect 0.9-1.1), horizontal flip,
    rotation (up to ``max_rotation_degrees``, edges reflected), brightness (up to
    ``brightness`` x 255), contrast, saturation (factors 1 +/- ``contrast``/``saturation``) and
    hue (up to ``hue_degrees``, rotated in YIQ space). The random parameters are drawn with
    TensorFlow's stateless ops, so the same ``seed`` (a shape-[2] int tensor) gives the same
    batch; the geometry is one bilinear warp per image and the colour one affine 3x4 map per
    image, both applied with OpenCV.

    Args:
        images: ``uint8`` batch ``(N, H, W, 3)``.
        seed: shape-[2] integer seed.
        image_size: side of the square output.

    Returns:
        ``uint8`` batch ``(N, image_size, image_size, 3)``.
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    batch = tf.shape(images)[0]
    transforms = _warp_transforms(
        seeds[0], batch, tf.shape(images)[1:3], image_size, max_rotation_degrees
    )
    u = tf.random.stateless_uniform([batch, 2], seeds[1])
    contrast_factor = 1.0 + contrast * (2.0 * u[:, 0] - 1.0)
    shift = brightness * 255.0 * (2.0 * u[:, 1] - 1.0)
    colour = _colour_matrices(seeds[2], batch, saturation, hue_degrees)
    augmented = tf.numpy_function(
        _augment_with_opencv,
        [tf.cast(images, tf.uint8), transforms, contrast_factor, shift, colour, image_size],
        tf.uint8,
        stateful=False,
    )
    augmented.set_shape([None, image_size, image_size, 3])
    return augmented


def augment_image(image, seed, image_size, **kwargs):
    """:func:`augment_batch` for one image ``(H, W, 3)``."""
    return augment_batch(image[None], seed, image_size, **kwargs)[0]


def _split_name(name, split):
    """Accepts ``name="affectnet_c25/set1"`` with ``split=None`` as well as separate values."""
    if split is None:
        if "/" not in name or name.count("/") > 2:
            raise ValueError(
                f"Give a split, or a name like 'affectnet_c25/set1'. Received: name={name!r}"
            )
        name, split = name.rsplit("/", 1)
    return name, split


def crowd_answers(
    name,
    split=None,
    *,
    num_classes=8,
    data_dir=None,
    manual_dir=None,
    config=None,
    subset=None,
    partition=None,
):
    """The expression answer matrix ``(N, R)`` (-1: no answer) of the images ``make_dataset``
    trains on with ``target="cv"``: the same split, subset and class set (with 7 classes,
    contempt answers are no answers). For aggregators, or to initialise crowd layers.
    """
    name, split = _split_name(name, split)
    builder = prepared_builder(name, data_dir=data_dir, manual_dir=manual_dir, config=config)
    table = load_label_table(builder, split)
    if "crowd_expression" not in table:
        raise ValueError(
            f"{builder.info.full_name} has no crowd answers (feature crowd_expression). "
            f"Received: name={name!r}"
        )
    answers, keep, _, _ = build_targets(table, task="exp", target="cv", num_classes=num_classes)
    keep &= subset_mask(table, subset, partition)
    return np.asarray(answers)[keep]


def _block_shuffle(dataset, block_size, seed):
    """Shuffles ``(encoded, index)`` elements within consecutive blocks of ``block_size``,
    each block by a stateless permutation keyed by ``(seed, block number)``: the order is a
    function of the seed alone (TFDS stores examples in a shuffled order, so the blocks mix
    well). ``Dataset.shuffle`` cannot take a per-epoch seed tensor inside ``flat_map``."""

    def permute(block_number, block):
        encoded, index = block
        order = tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(index)[0]), _mixed_seed(seed, block_number)
        )
        return tf.data.Dataset.from_tensor_slices(
            (tf.gather(encoded, order), tf.gather(index, order))
        )

    return dataset.batch(block_size).enumerate().flat_map(permute)


def _mixed_seed(seed, key):
    """A shape-[2] int64 stateless seed from the run's seed and a key (epoch or iteration)."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(key, tf.int64)])


def make_dataset(
    name,
    split=None,
    *,
    task="exp",
    target="mv",
    va_target=None,
    image_size=224,
    batch_size=32,
    training=False,
    num_classes=8,
    data_dir=None,
    manual_dir=None,
    config=None,
    subset=None,
    partition=None,
    augment=None,
    class_balanced=False,
    seed=None,
    epochs=None,
    steps_per_epoch=None,
    shuffle_buffer=4096,
    drop_remainder=False,
    ds_convergence="log_likelihood",
    cache_bytes=2**30,
    pad_to_multiple=None,
    return_info=False,
):
    """A batched, prefetched ``tf.data.Dataset`` of ``(image, targets)`` ready for ``model.fit``.

    Args:
        name: TFDS name, with config if any (``"affectnet"``, ``"affectnet_c25"``,
            ``"synthetic_faces/c25_dense"``).
        split: split name (``"train"``, ``"validation"``, ``"set1"`` ...).
        task: ``exp`` (expression), ``aro``, ``val``, ``va`` or ``all`` (dict of outputs).
        target: expression target: ``mv`` (majority vote, class index; ties broken by the
            file name), ``soft`` (vote distribution), ``ds`` (Dawid-Skene posteriors, fitted
            on the training subset's answers), ``cv`` (the raw answer matrix, -1 for no
            answer), ``original`` (AffectNet's own label), ``true`` (synthetic data).
            ``mean`` / ``median`` for valence/arousal tasks.
        va_target: valence/arousal target, ``mean``, ``median``, ``cv`` (NaN for no answer),
            ``original`` or ``true``; by default derived from ``target``.
        image_size: side of the square RGB ``uint8`` images.
        batch_size: the global batch size.
        training: shuffle and augment (augmentation can be switched off with ``augment``).
        num_classes: 8, or 7 to drop contempt (crowd answers of contempt become "no answer";
            images whose 8-class majority is contempt, or whose label is contempt, are dropped
            and counted).
        data_dir: TFDS data folder.
        manual_dir: manual download folder, used only when the dataset is not prepared yet.
        config: a ``tfds.core.BuilderConfig`` instance for a custom configuration (another
            stored image size, for instance), instead of a config name in ``name``.
        subset: ``None`` (the whole split), ``"train"``, ``"selection"`` or ``"test"``: a role
            of a split cut by ``partition`` (:class:`Partition`, :func:`subset_mask`).
        class_balanced: resample to equal class frequencies (training only).
        seed: makes shuffling and augmentation deterministic.
        epochs: training only: ``stop`` or ``(start, stop)``. The dataset then holds exactly the
            batches of epochs ``start .. stop - 1``, ``steps_per_epoch`` each (default: one
            pass), and epoch ``e``'s order and augmentation depend on ``(seed, e)`` only, so a
            run resumed at epoch ``start`` sees the batches an uninterrupted run saw. Without
            ``epochs`` each iteration over the dataset is a new shuffled, augmented pass.
        ds_convergence: Dawid-Skene's stopping rule for ``target="ds"``
            (:class:`crowd_layers.DawidSkene`).
        cache_bytes: a split whose decoded images take at most this many bytes is decoded
            once and kept in memory (augmentation still runs on every pass).
        pad_to_multiple: pads a last batch whose size is not a multiple of this with black
            images whose labels are all missing (-1, NaN, all-zero rows), which the masked
            losses and metrics ignore: several replicas then get equal shares (Keras and
            ``MirroredStrategy`` fail on unequal ones). For the validation data of a
            multi-replica run.
        return_info: also return a :class:`DatasetInfo`.

    Returns:
        The dataset, or ``(dataset, info)`` with ``return_info=True``.
    """
    name, split = _split_name(name, split)
    builder = prepared_builder(name, data_dir=data_dir, manual_dir=manual_dir, config=config)
    table = load_label_table(builder, split)
    in_subset = subset_mask(table, subset, partition)
    fit_rows = None if subset is None else subset_mask(table, "train", partition)
    targets, keep, classes, extras = build_targets(
        table,
        task=task,
        target=target,
        va_target=va_target,
        num_classes=num_classes,
        fit_rows=fit_rows,
        ds_convergence=ds_convergence,
    )
    keep &= in_subset
    if not keep.any():
        raise ValueError(
            f"No examples left in {name}/{split} (subset={subset}) for task={task!r}, "
            f"target={target!r}; dropped: {extras['dropped']}"
        )
    counts = np.bincount(classes[keep & (classes >= 0)], minlength=num_classes)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    num_annotators = table["crowd_expression"].shape[1] if "crowd_expression" in table else None
    num_examples = int(keep.sum())
    seed = 0 if seed is None and epochs is not None else seed

    index = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(table["file_name"]), tf.range(len(keep), dtype=tf.int64)
        ),
        default_value=-1,
    )
    keep_t = tf.constant(keep)
    classes_t = tf.constant(np.maximum(classes, 0))
    # class-balanced sampling's acceptance probability of each class (absent classes: 0)
    ratio = np.where(present, counts.sum() / (max(present.sum(), 1) * np.maximum(counts, 1)), 0.0)
    accept_t = tf.constant((ratio / max(ratio.max(), 1e-12)).astype(np.float32))
    targets_t = tf.nest.map_structure(tf.constant, targets)
    augment = training if augment is None else augment
    stored_shape = builder.info.features["image"].shape
    stored_size = tuple(stored_shape[:2])  # (None, None) for images of varying size

    # files in stored order (TFDS shuffles examples when it prepares a dataset); the order of
    # an epoch comes from the shuffle buffer below, seeded per epoch
    read_config = tfds.ReadConfig(interleave_cycle_length=4)
    records = builder.as_dataset(
        split=split,
        shuffle_files=False,
        read_config=read_config,
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    records = records.map(lambda ex: (ex["image"], index.lookup(ex["file_name"])))
    records = records.filter(lambda encoded, i: tf.gather(keep_t, i))

    def _targets(i):
        return tf.nest.map_structure(lambda values: tf.gather(values, i), targets_t)

    def _missing_value(head, values):
        """The missing marker of one row of a head's targets: -1, NaN, or an all-zero row."""
        row = np.asarray(values)[:1]
        if row.dtype.kind in "iu":
            return tf.constant(np.full_like(row, -1))
        if head == "expression":  # a distribution (soft, ds)
            return tf.constant(np.zeros_like(row))
        return tf.constant(np.full_like(row, np.nan))

    if isinstance(targets, dict):
        missing = {head: _missing_value(head, values) for head, values in targets.items()}
    else:
        missing = _missing_value("expression" if task == "exp" else "value", targets)

    def _pad_batch(images, values, markers):
        size = tf.shape(images)[0]
        extra = (pad_to_multiple - size % pad_to_multiple) % pad_to_multiple
        images = tf.concat([images, tf.zeros([extra, image_size, image_size, 3], images.dtype)], 0)

        def pad(value, marker):
            rows = tf.repeat(marker, extra, axis=0)
            return tf.concat([value, tf.cast(rows, value.dtype)], 0)

        return images, tf.nest.map_structure(pad, values, markers)

    def _decode(encoded, i):
        image = decode_image(encoded)
        if stored_size != (image_size, image_size):
            image = resize_image(image, image_size)
        image.set_shape([image_size, image_size, 3])
        return image, i

    # small splits are decoded once and kept in memory (the demo's 2,400 faces at 64x64 take
    # 29 MB); larger ones are decoded in every pass
    cached = num_examples * image_size * image_size * 3 <= cache_bytes
    if cached:
        records = records.map(
            _decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        ).cache()

    def _load(payload, i):
        image = payload if cached else _decode(payload, i)[0]
        return image, _targets(i)

    def one_pass(key):
        """One shuffled, augmented pass; ``key`` (epoch or random draw) seeds it with ``seed``."""
        dataset = records
        pass_seeds = tf.random.experimental.stateless_split(_mixed_seed(seed or 0, key), 3)
        if training:
            dataset = _block_shuffle(dataset, shuffle_buffer, pass_seeds[0][0])
        if training and class_balanced:
            # rejection sampling: keep an image of class c with probability
            # (target_c / share_c) / max_c(target_c / share_c), drawn statelessly per position
            dataset = dataset.enumerate().filter(
                lambda position, element: (
                    tf.random.stateless_uniform([], _mixed_seed(pass_seeds[1][0], position))
                    < tf.gather(accept_t, tf.gather(classes_t, element[1]))
                )
            )
            dataset = dataset.map(lambda position, element: element)
        dataset = dataset.map(
            _load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=seed is not None
        )
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
        if pad_to_multiple and pad_to_multiple > 1:
            dataset = dataset.map(lambda images, values: _pad_batch(images, values, missing))
        if augment:
            dataset = dataset.enumerate().map(
                lambda step, batch: (
                    augment_batch(batch[0], _mixed_seed(pass_seeds[2][0], step), image_size),
                    batch[1],
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=seed is not None,
            )
        return dataset

    per_pass = (num_examples // batch_size) if drop_remainder else -(-num_examples // batch_size)
    if epochs is not None:
        if not training:
            raise ValueError("`epochs` is for training datasets (training=True).")
        start, stop = (0, epochs) if np.isscalar(epochs) else epochs
        steps = int(steps_per_epoch or max(1, per_pass))
        dataset = tf.data.Dataset.range(int(start), int(stop)).flat_map(
            lambda epoch: one_pass(epoch).repeat().take(steps)
        )
        batches = (int(stop) - int(start)) * steps
    elif training:
        # a new pass per iteration: its key is drawn from a seeded random stream
        dataset = (
            tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
            .take(1)
            .flat_map(one_pass)
        )
        batches = None if class_balanced else per_pass
    else:
        dataset = one_pass(tf.constant(0, tf.int64))
        batches = per_pass
    if batches is not None:  # known length: Keras then neither guesses nor warns
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = seed is not None or not training
    dataset = dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
    if not return_info:
        return dataset
    names = table["file_name"][keep]
    info = DatasetInfo(
        name=name,
        split=split,
        task=task,
        target=target,
        va_target=va_target or _DEFAULT_VA_TARGET[target],
        num_classes=num_classes,
        class_names=labels.expression_names(num_classes),
        num_examples=num_examples,
        num_annotators=num_annotators,
        class_counts=counts.tolist(),
        class_weights={c: float(w) for c, w in enumerate(weights)},
        dropped=extras["dropped"],
        tied_items=int(extras["tied"][keep].sum()),
        subset=subset,
        file_names_sha256=names_digest(names),
        element_spec=dataset.element_spec,
        file_names=names,
    )
    return dataset, info
