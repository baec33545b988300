"""The ``tf.data`` input pipeline: ``make_dataset`` turns a prepared TFDS dataset into batches.

Targets are computed once per split from the label features alone (images are not decoded for
that: :mod:`affectnet_tf.data.tables`, :mod:`affectnet_tf.data.targets`), then joined to the
images by file name inside the pipeline, so file shuffling and sharding never misalign images
and labels. Images go through :mod:`affectnet_tf.data.images` (the same decode / resize path as
evaluation and prediction), training images through :mod:`affectnet_tf.data.augment`, and stay
RGB ``uint8``: the backbone's preprocessing lives inside the model.

The settings of a pipeline are a :class:`PipelineOptions`; :func:`make_dataset` takes them as
keyword arguments, :func:`dataset_from_split` as one object with a split already opened.
"""

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from affectnet_tf.data.augment import augment_batch
from affectnet_tf.data.augment import augment_image as augment_image
from affectnet_tf.data.images import decode_image, resize_image
from affectnet_tf.data.partition import SUBSETS as SUBSETS
from affectnet_tf.data.partition import Partition, subset_mask
from affectnet_tf.data.tables import load_label_table as load_label_table
from affectnet_tf.data.tables import names_digest, open_split
from affectnet_tf.data.tables import prepared_builder as prepared_builder
from affectnet_tf.data.targets import TARGETS as TARGETS
from affectnet_tf.data.targets import TASKS as TASKS
from affectnet_tf.data.targets import VA_TARGETS as VA_TARGETS
from affectnet_tf.data.targets import build_targets, default_va_target
from affectnet_tf.data.targets import crowd_answers as crowd_answers

__all__ = ["PipelineOptions", "DatasetInfo", "make_dataset", "dataset_from_split"]

# Also importable from here (imported above), for the code written before these names moved
# to the module of their concept: ``SUBSETS``, ``Partition``, ``subset_mask`` (partition);
# ``prepared_builder``, ``load_label_table``, ``names_digest`` (tables); ``TASKS``, ``TARGETS``,
# ``VA_TARGETS``, ``default_va_target``, ``build_targets``, ``crowd_answers`` (targets);
# ``augment_batch``, ``augment_image`` (augment).


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """How :func:`make_dataset` makes its batches: its keyword arguments but the dataset's
    location (``data_dir``, ``manual_dir``, ``config``) and ``return_info``.

    Attributes:
        task: ``exp`` (expression), ``aro``, ``val``, ``va`` or ``all`` (dict of outputs).
        target: expression target: ``mv`` (majority vote, class index; ties broken by the
            file name), ``soft`` (vote distribution), ``ds`` (Dawid-Skene posteriors, fitted
            on the training subset's answers), ``cv`` (the raw answer matrix, -1 for no
            answer), ``original`` (AffectNet's own label), ``true`` (synthetic data).
            ``mean`` / ``median`` / ``latent`` for valence/arousal tasks.
        va_target: valence/arousal target, ``mean``, ``median``, ``latent`` (the latent-truth
            model, fitted on the training subset's answers like ``ds``), ``cv`` (NaN for no
            answer), ``original`` or ``true``; by default derived from ``target``.
        image_size: side of the square RGB ``uint8`` images.
        batch_size: the global batch size.
        training: shuffle and augment (augmentation can be switched off with ``augment``).
        num_classes: None (all the dataset's classes: AffectNet's 8, or a ``crowd_images``
            folder's own), 8, or 7 to drop contempt from AffectNet's (crowd answers of contempt
            become "no answer"; images whose 8-class majority is contempt, or whose label is
            contempt, are dropped and counted). A dataset with its own class set takes only
            its count (:func:`tfds_affectnet.labels.class_set`).
        subset: ``None`` (the whole split), ``"train"``, ``"selection"`` or ``"test"``: a role
            of a split cut by ``partition`` (:class:`~affectnet_tf.data.partition.Partition`,
            :func:`~affectnet_tf.data.partition.subset_mask`).
        partition: the cut of the split (default ``Partition()``).
        augment: augment the images (default: when ``training``).
        class_balanced: resample to equal class frequencies (training only).
        seed: makes shuffling and augmentation deterministic.
        epochs: training only: ``stop`` or ``(start, stop)``. The dataset then holds exactly the
            batches of epochs ``start .. stop - 1``, ``steps_per_epoch`` each (default: one
            pass), and epoch ``e``'s order and augmentation depend on ``(seed, e)`` only, so a
            run resumed at epoch ``start`` sees the batches an uninterrupted run saw. Without
            ``epochs`` each iteration over the dataset is a new shuffled, augmented pass.
        steps_per_epoch: batches per epoch with ``epochs`` (default: one pass).
        shuffle_buffer: images shuffled together (in blocks of this many, training only).
        drop_remainder: leave out a last batch smaller than ``batch_size``.
        ds_convergence: Dawid-Skene's stopping rule for ``target="ds"``
            (:class:`crowd_layers.DawidSkene`).
        cache_bytes: a split whose decoded images take at most this many bytes is decoded
            once and kept in memory (augmentation still runs on every pass).
        pad_to_multiple: pads a last batch whose size is not a multiple of this with black
            images whose labels are all missing (-1, NaN, all-zero rows), which the masked
            losses and metrics ignore: several replicas then get equal shares (Keras and
            ``MirroredStrategy`` fail on unequal ones). For the validation data of a
            multi-replica run.
    """

    task: str = "exp"
    target: str = "mv"
    va_target: str | None = None
    image_size: int = 224
    batch_size: int = 32
    training: bool = False
    num_classes: int | None = None
    subset: str | None = None
    partition: Partition | None = None
    augment: bool | None = None
    class_balanced: bool = False
    seed: int | None = None
    epochs: int | tuple | None = None
    steps_per_epoch: int | None = None
    shuffle_buffer: int = 4096
    drop_remainder: bool = False
    ds_convergence: str = "log_likelihood"
    cache_bytes: int = 2**30
    pad_to_multiple: int | None = None

    def __post_init__(self):
        """Checks that ``epochs`` comes with ``training``."""
        if self.epochs is not None and not self.training:
            raise ValueError("`epochs` is for training datasets (training=True).")

    @property
    def augments(self):
        """Whether the images are augmented: ``augment``, by default ``training``."""
        return self.training if self.augment is None else self.augment

    @property
    def resolved_seed(self):
        """The seed of the passes: ``seed``, 0 for ``epochs`` without one."""
        return 0 if self.seed is None and self.epochs is not None else self.seed

    @property
    def seeded(self):
        """Whether the passes are seeded, and so their order and augmentation reproducible."""
        return self.resolved_seed is not None

    @property
    def resolved_va_target(self):
        """``va_target``, or the one that goes with ``target``."""
        return self.va_target or default_va_target(self.target)


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
        """The JSON-able record (without the element spec and the file names)."""
        record = dataclasses.asdict(self)
        record.pop("element_spec")
        record.pop("file_names")
        record["class_names"] = list(self.class_names)
        record["class_weights"] = {int(k): float(v) for k, v in self.class_weights.items()}
        return record


@dataclasses.dataclass
class _SplitLabels:
    """The targets of a split (:func:`~affectnet_tf.data.targets.build_targets`), the rows kept
    and the kept images per class."""

    targets: object
    keep: np.ndarray
    classes: np.ndarray
    extras: dict
    counts: np.ndarray

    @property
    def num_examples(self):
        """The number of images kept."""
        return int(self.keep.sum())

    @property
    def class_weights(self):
        """Inverse class frequencies scaled to a mean of 1 over the present classes (0 for the
        absent ones)."""
        present = self.counts > 0
        weights = np.zeros(len(self.counts))
        weights[present] = self.counts[present].sum() / (present.sum() * self.counts[present])
        return weights

    @property
    def acceptance(self):
        """Class-balanced sampling's chance of keeping an image of each class: the class
        weights over their largest (absent classes: 0)."""
        weights = self.class_weights
        return (weights / max(weights.max(), 1e-12)).astype(np.float32)


def _label_split(split_table, options, class_names):
    """The :class:`_SplitLabels` of ``options``' targets and subset of an opened split.

    Raises:
        ValueError: when no image is left.
    """
    table = split_table.table
    fit_rows = None if options.subset is None else subset_mask(table, "train", options.partition)
    targets, keep, classes, extras = build_targets(
        table,
        task=options.task,
        target=options.target,
        va_target=options.va_target,
        num_classes=len(class_names),
        fit_rows=fit_rows,
        ds_convergence=options.ds_convergence,
    )
    keep &= subset_mask(table, options.subset, options.partition)
    if not keep.any():
        raise ValueError(
            f"No examples left in {split_table.name}/{split_table.split} "
            f"(subset={options.subset}) for task={options.task!r}, target={options.target!r}; "
            f"dropped: {extras['dropped']}"
        )
    counts = np.bincount(classes[keep & (classes >= 0)], minlength=len(class_names))
    return _SplitLabels(targets, keep, classes, extras, counts)


def _missing_value(head, values):
    """The missing marker of one row of a head's targets: -1, NaN, or an all-zero row."""
    row = np.asarray(values)[:1]
    if row.dtype.kind in "iu":
        return tf.constant(np.full_like(row, -1))
    if head == "expression":  # a distribution (soft, ds)
        return tf.constant(np.zeros_like(row))
    return tf.constant(np.full_like(row, np.nan))


def _missing_markers(targets, task):
    """The missing markers of the targets' structure (a dict of heads, or one array)."""
    if isinstance(targets, dict):
        return {head: _missing_value(head, values) for head, values in targets.items()}
    return _missing_value("expression" if task == "exp" else "value", targets)


def _mixed_seed(seed, key):
    """A shape-[2] int64 stateless seed from the run's seed and a key (epoch or iteration)."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(key, tf.int64)])


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


class _Passes:
    """The ``tf.data`` stages of one pipeline: the kept records of a split in stored order
    (TFDS shuffles examples when it prepares a dataset), then :meth:`one_pass` over them."""

    def __init__(self, split_table, split_labels, options):
        self.options = options
        size = options.image_size
        stored_shape = split_table.builder.info.features["image"].shape
        # (None, None) for images of varying size
        self.resize = tuple(stored_shape[:2]) != (size, size)
        self.targets = tf.nest.map_structure(tf.constant, split_labels.targets)
        self.missing = _missing_markers(split_labels.targets, options.task)
        self.classes = tf.constant(np.maximum(split_labels.classes, 0))
        self.acceptance = tf.constant(split_labels.acceptance)
        # small splits are decoded once and kept in memory (the demo's 2,400 faces at 64x64
        # take 29 MB); larger ones are decoded in every pass
        self.cached = split_labels.num_examples * size * size * 3 <= options.cache_bytes
        self.records = self._records(split_table, split_labels.keep)

    def _records(self, split_table, keep):
        """``(encoded image or decoded image when cached, row index)`` of the kept rows."""
        index = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(split_table.table["file_name"]), tf.range(len(keep), dtype=tf.int64)
            ),
            default_value=-1,
        )
        keep = tf.constant(keep)
        records = split_table.builder.as_dataset(
            split=split_table.split,
            shuffle_files=False,
            read_config=tfds.ReadConfig(interleave_cycle_length=4),
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        records = records.map(lambda ex: (ex["image"], index.lookup(ex["file_name"])))
        records = records.filter(lambda encoded, i: tf.gather(keep, i))
        if self.cached:
            records = records.map(
                self.decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
            ).cache()
        return records

    def decode(self, encoded, i):
        """The RGB ``uint8`` image of an encoded one, at the pipeline's size."""
        size = self.options.image_size
        image = decode_image(encoded)
        if self.resize:
            image = resize_image(image, size)
        image.set_shape([size, size, 3])
        return image, i

    def load(self, payload, i):
        """``(image, targets)`` of a record."""
        image = payload if self.cached else self.decode(payload, i)[0]
        return image, tf.nest.map_structure(lambda values: tf.gather(values, i), self.targets)

    def balance(self, dataset, seed):
        """Rejection sampling: keeps an image of class c with probability
        (target_c / share_c) / max_c(target_c / share_c), drawn statelessly per position."""

        def accepted(position, element):
            draw = tf.random.stateless_uniform([], _mixed_seed(seed, position))
            return draw < tf.gather(self.acceptance, tf.gather(self.classes, element[1]))

        return dataset.enumerate().filter(accepted).map(lambda position, element: element)

    def pad(self, images, values):
        """Pads a batch to a multiple of ``pad_to_multiple`` with black images whose targets
        are the missing markers."""
        multiple, size = self.options.pad_to_multiple, self.options.image_size
        extra = (multiple - tf.shape(images)[0] % multiple) % multiple
        images = tf.concat([images, tf.zeros([extra, size, size, 3], images.dtype)], 0)

        def pad_rows(value, marker):
            rows = tf.repeat(marker, extra, axis=0)
            return tf.concat([value, tf.cast(rows, value.dtype)], 0)

        return images, tf.nest.map_structure(pad_rows, values, self.missing)

    def augment(self, dataset, seed):
        """Augments each batch with the stateless seed ``(seed, batch number)``."""
        size = self.options.image_size
        return dataset.enumerate().map(
            lambda step, batch: (augment_batch(batch[0], _mixed_seed(seed, step), size), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=self.options.seeded,
        )

    def one_pass(self, key):
        """One shuffled, augmented pass; ``key`` (epoch or random draw) seeds it with the
        options' seed."""
        options = self.options
        seeds = tf.random.experimental.stateless_split(
            _mixed_seed(options.resolved_seed or 0, key), 3
        )
        dataset = self.records
        if options.training:
            dataset = _block_shuffle(dataset, options.shuffle_buffer, seeds[0][0])
        if options.training and options.class_balanced:
            dataset = self.balance(dataset, seeds[1][0])
        dataset = dataset.map(
            self.load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=options.seeded
        )
        dataset = dataset.batch(options.batch_size, drop_remainder=options.drop_remainder)
        if options.pad_to_multiple and options.pad_to_multiple > 1:
            dataset = dataset.map(self.pad)
        if options.augments:
            dataset = self.augment(dataset, seeds[2][0])
        return dataset


def _arrange_passes(passes, options, num_examples):
    """The passes of the dataset and its number of batches (None when unknown): the epochs
    ``start .. stop - 1`` with ``epochs``, a new pass per iteration when training without,
    else one pass in file order."""
    batch_size = options.batch_size
    if options.drop_remainder:
        per_pass = num_examples // batch_size
    else:
        per_pass = -(-num_examples // batch_size)
    if options.epochs is not None:
        epochs = options.epochs
        start, stop = (0, epochs) if np.isscalar(epochs) else epochs
        steps = int(options.steps_per_epoch or max(1, per_pass))
        dataset = tf.data.Dataset.range(int(start), int(stop)).flat_map(
            lambda epoch: passes.one_pass(epoch).repeat().take(steps)
        )
        return dataset, (int(stop) - int(start)) * steps
    if options.training:
        # a new pass per iteration: its key is drawn from a seeded random stream
        dataset = (
            tf.data.Dataset.random(seed=options.resolved_seed, rerandomize_each_iteration=True)
            .take(1)
            .flat_map(passes.one_pass)
        )
        return dataset, None if options.class_balanced else per_pass
    return passes.one_pass(tf.constant(0, tf.int64)), per_pass


def _batched_dataset(split_table, split_labels, options):
    """The batched, prefetched dataset of a labelled split."""
    passes = _Passes(split_table, split_labels, options)
    dataset, batches = _arrange_passes(passes, options, split_labels.num_examples)
    if batches is not None:  # known length: Keras then neither guesses nor warns
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    tf_options = tf.data.Options()
    tf_options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    tf_options.deterministic = options.seeded or not options.training
    return dataset.with_options(tf_options).prefetch(tf.data.AUTOTUNE)


def _dataset_info(split_table, split_labels, options, element_spec, class_names):
    """The :class:`DatasetInfo` of a pipeline."""
    keep = split_labels.keep
    names = split_table.table["file_name"][keep]
    return DatasetInfo(
        name=split_table.name,
        split=split_table.split,
        task=options.task,
        target=options.target,
        va_target=options.resolved_va_target,
        num_classes=len(class_names),
        class_names=tuple(class_names),
        num_examples=split_labels.num_examples,
        num_annotators=split_table.num_annotators,
        class_counts=split_labels.counts.tolist(),
        class_weights={c: float(w) for c, w in enumerate(split_labels.class_weights)},
        dropped=split_labels.extras["dropped"],
        tied_items=int(split_labels.extras["tied"][keep].sum()),
        subset=options.subset,
        file_names_sha256=names_digest(names),
        element_spec=element_spec,
        file_names=names,
    )


def dataset_from_split(split_table, options=None, return_info=False):
    """:func:`make_dataset` of a split already opened.

    Args:
        split_table: a :class:`~affectnet_tf.data.tables.SplitTable`
            (:func:`~affectnet_tf.data.tables.open_split`).
        options: a :class:`PipelineOptions` (default ``PipelineOptions()``).
        return_info: also return a :class:`DatasetInfo`.

    Returns:
        The dataset, or ``(dataset, info)`` with ``return_info=True``.
    """
    options = options or PipelineOptions()
    class_names = split_table.class_names(options.num_classes)
    split_labels = _label_split(split_table, options, class_names)
    dataset = _batched_dataset(split_table, split_labels, options)
    if not return_info:
        return dataset
    info = _dataset_info(split_table, split_labels, options, dataset.element_spec, class_names)
    return dataset, info


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
    num_classes=None,
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

    The arguments not listed below are the settings of the batches, each described in
    :class:`PipelineOptions`.

    Args:
        name: TFDS name, with config if any (``"affectnet"``, ``"affectnet_c25"``,
            ``"synthetic_faces/c25_dense"``), and with the split when ``split`` is None
            (``"affectnet_c25/set1"``).
        split: split name (``"train"``, ``"validation"``, ``"set1"`` ...).
        data_dir: TFDS data folder.
        manual_dir: manual download folder, used only when the dataset is not prepared yet.
        config: a ``tfds.core.BuilderConfig`` instance for a custom configuration (another
            stored image size, for instance), instead of a config name in ``name``.
        return_info: also return a :class:`DatasetInfo`.

    Returns:
        The dataset, or ``(dataset, info)`` with ``return_info=True``.

    Example:
        >>> dataset = make_dataset("affectnet_c25/set1", task="exp", target="soft",
        ...                        image_size=224, batch_size=32, training=True, seed=0)
    """
    options = PipelineOptions(
        task=task,
        target=target,
        va_target=va_target,
        image_size=image_size,
        batch_size=batch_size,
        training=training,
        num_classes=num_classes,
        subset=subset,
        partition=partition,
        augment=augment,
        class_balanced=class_balanced,
        seed=seed,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        shuffle_buffer=shuffle_buffer,
        drop_remainder=drop_remainder,
        ds_convergence=ds_convergence,
        cache_bytes=cache_bytes,
        pad_to_multiple=pad_to_multiple,
    )
    split_table = open_split(name, split, data_dir=data_dir, manual_dir=manual_dir, config=config)
    return dataset_from_split(split_table, options, return_info=return_info)
