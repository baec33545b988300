"""Label tables: every feature but the image of a prepared TFDS split, as NumPy arrays.

The targets of a split (:mod:`affectnet_tf.data.targets`) and its cut into roles
(:mod:`affectnet_tf.data.partition`) are computed from its label table alone, without decoding
an image; the input pipeline then joins them to the images by file name.
"""

import dataclasses
import hashlib
import logging

import numpy as np
import tensorflow_datasets as tfds

from affectnet_tf.progress import progress
from tfds_affectnet import labels

__all__ = [
    "SplitTable",
    "prepared_builder",
    "load_label_table",
    "split_name",
    "open_split",
    "names_digest",
]

logger = logging.getLogger(__name__)

# Rows read from the TFDS records at a time.
_READ_BATCH = 4096


class _SkipCustomConfigNotice(logging.Filter):
    """TFDS logs "Using custom data configuration" whenever a configuration object is passed,
    which this package does on purpose (another stored image size): not worth a warning."""

    def filter(self, record):
        """Drops the notice, passes every other record."""
        return "Using custom data configuration" not in record.getMessage()


logging.getLogger("absl").addFilter(_SkipCustomConfigNotice())


def prepared_builder(name, data_dir=None, manual_dir=None, config=None):
    """The TFDS builder of ``name`` (a ``BuilderConfig`` instance in ``config``, or a name
    with its configuration), prepared from ``manual_dir`` first if it is not prepared yet."""
    kwargs = {"config": config} if config is not None and not isinstance(config, str) else {}
    builder = tfds.builder(name, data_dir=data_dir, **kwargs)
    if not builder.is_prepared():
        logger.info("Preparing %s in %s", builder.info.full_name, builder.data_dir)
        config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
        builder.download_and_prepare(download_config=config)
    return builder


def load_label_table(builder, split):
    """Reads every feature but the image of a split into NumPy arrays, in file order.

    Raises:
        ValueError: when the builder has no such split, or the split repeats a file name.
    """
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
    total = builder.info.splits[split].num_examples
    with progress(total=total, desc=f"reading labels of {split}", unit="image") as bar:
        for batch in dataset.batch(_READ_BATCH).as_numpy_iterator():
            for key, value in batch.items():
                parts.setdefault(key, []).append(value)
            bar.update(len(batch["file_name"]))
    table = {key: np.concatenate(values) for key, values in parts.items()}
    names = table["file_name"]
    if len(np.unique(names)) != len(names):
        raise ValueError(f"Split {split!r} of {builder.info.full_name} has duplicate file names.")
    return table


def split_name(name, split=None):
    """``(name, split)``: accepts ``name="affectnet_c25/set1"`` with ``split=None`` as well as
    separate values.

    Raises:
        ValueError: without a split, when ``name`` does not end with one.
    """
    if split is None:
        if "/" not in name or name.count("/") > 2:
            raise ValueError(
                f"Give a split, or a name like 'affectnet_c25/set1'. Received: name={name!r}"
            )
        name, split = name.rsplit("/", 1)
    return name, split


@dataclasses.dataclass
class SplitTable:
    """One prepared split: its dataset ``name`` and ``split``, the TFDS ``builder`` and the
    label ``table`` (:func:`load_label_table`)."""

    name: str
    split: str
    builder: object
    table: dict

    @property
    def num_annotators(self):
        """The number of crowd annotators (columns of ``crowd_expression``), or None."""
        answers = self.table.get("crowd_expression")
        return None if answers is None else answers.shape[1]

    @property
    def dataset_classes(self):
        """The dataset's own class names (a ``crowd_images`` folder's, in its metadata), or
        None for AffectNet's (:func:`tfds_affectnet.labels.class_set`)."""
        metadata = self.builder.info.metadata or {}
        names = metadata.get("class_names")
        return None if names is None else tuple(names)

    def class_names(self, num_classes=None):
        """The classes learnt from the split: ``num_classes`` of its dataset's class set
        (:func:`tfds_affectnet.labels.class_set`; an error names the dataset)."""
        try:
            return labels.class_set(self.dataset_classes, num_classes)
        except ValueError as error:
            raise ValueError(f"{self.name}: {error}") from None


def open_split(name, split=None, *, data_dir=None, manual_dir=None, config=None):
    """The :class:`SplitTable` of a split, the dataset prepared first if it is not yet.

    Args:
        name: TFDS name, with config if any, and with the split when ``split`` is None
            (``"affectnet_c25/set1"``).
        split: the split's name.
        data_dir: TFDS data folder.
        manual_dir: manual download folder, used only when the dataset is not prepared yet.
        config: a ``tfds.core.BuilderConfig`` instance (instead of a config name in ``name``).
    """
    name, split = split_name(name, split)
    builder = prepared_builder(name, data_dir=data_dir, manual_dir=manual_dir, config=config)
    return SplitTable(name, split, builder, load_label_table(builder, split))


def names_digest(file_names):
    """SHA-256 of the sorted file names (one per line): identifies a set of images."""
    text = "\n".join(
        sorted(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in file_names)
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
