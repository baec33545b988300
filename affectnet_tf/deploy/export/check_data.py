"""The images an export is checked on (the run's selection images by default) and the ``int8``
calibration images (its training images): read from the run's dataset as
``python -m affectnet_tf.evaluate`` reads them, or from a folder of image files."""

import logging
import os

import numpy as np

from affectnet_tf.data.images import load_image_file
from affectnet_tf.data.pipeline import load_label_table, prepared_builder, subset_mask
from affectnet_tf.deploy.export.converters import ExportError
from affectnet_tf.training.config import RunConfig, data_roles
from affectnet_tf.training.run_folder import load_run

__all__ = ["IMAGE_SUFFIXES", "folder_images", "check_images"]

logger = logging.getLogger(__name__)

#: The file names :func:`folder_images` reads (case does not matter).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def folder_images(folder, count, image_size):
    """``uint8`` ``(n, image_size, image_size, 3)``: the first ``count`` image files of a folder
    in name order, the unreadable ones skipped (and counted in a warning).

    Raises:
        ExportError: the folder holds no image file, or none could be read.
    """
    names = sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise ExportError(f"The folder {folder} holds no image files (.jpg, .png, ...).")
    images, skipped = [], []
    for name in names[:count]:
        try:
            images.append(load_image_file(os.path.join(folder, name), image_size))
        except ValueError as error:
            skipped.append(str(error))
    if skipped:
        logger.warning(
            "Skipped %d of %d files of %s that could not be read; first: %s",
            len(skipped),
            min(count, len(names)),
            folder,
            skipped[0],
        )
    if not images:
        raise ExportError(f"No image of {folder} could be read.")
    return np.stack(images)


def _run_data(model_dir, data, data_dir):
    """``(config, roles, role)``: the run's configuration, its data roles and the role
    (or ``SPLIT[:SUBSET]``) that ``data`` names."""
    run = load_run(model_dir)
    if not os.path.isfile(run.config_path):
        raise ExportError(
            f"{run.config_path} does not exist, so the run's data is unknown: give a folder of "
            f"images instead of {data!r}."
        )
    settings = dict(run.settings)
    if data_dir is not None:
        settings["data_dir"] = data_dir
    config = RunConfig.from_dict({**settings, "output_dir": os.fspath(model_dir)})
    roles = data_roles(config)
    if data in ("train", "selection", "test"):
        return config, roles, getattr(roles, data)
    split, _, subset = str(data).partition(":")
    return config, roles, type(roles.train)(split, subset or None)


def check_images(model_dir, data="selection", count=200, image_size=None, data_dir=None):
    """``uint8`` ``(n, image_size, image_size, 3)`` images for calibrating or checking.

    Args:
        model_dir: the run folder (its ``config.yaml`` names the dataset and its roles).
        data: a role of the run (``train``, ``selection``, ``test``), ``SPLIT[:SUBSET]`` of the
            run's dataset, or a folder of image files.
        count: at most this many images (the first of the role in file order).
        image_size: the side (default: the run's model's).
        data_dir: the TFDS data folder (default: the run's).

    Raises:
        ExportError: no ``config.yaml`` in the run, a split the dataset lacks, no image.
    """
    from affectnet_tf.evaluation.predictions import image_batches

    if os.path.isdir(os.fspath(data)):
        return folder_images(os.fspath(data), count, image_size)
    config, roles, role = _run_data(model_dir, data, data_dir)
    size = int(image_size or config.resolved_image_size)
    builder = prepared_builder(
        roles.dataset_name, data_dir=config.data_dir, config=roles.builder_config
    )
    if role.split not in builder.info.splits:
        raise ExportError(
            f"The dataset {roles.dataset_name} has no split {role.split!r}: "
            f"{sorted(builder.info.splits)}."
        )
    table = load_label_table(builder, role.split)
    rows = (
        subset_mask(table, role.subset, roles.partition_of(role, config.partition))
        if role.subset
        else np.ones(len(table["file_name"]), bool)
    )
    if rows.sum() > count:
        rows = rows & (np.cumsum(rows) <= count)
    logger.debug("Reading %d images of %s (%s).", int(rows.sum()), roles.dataset_name, role)
    options = dict(split=role.split, image_size=size, batch_size=64)
    images = [batch for batch, _ in image_batches(builder, table, rows, {}, options)]
    if not images:
        raise ExportError(f"The {data} data of {roles.dataset_name} ({role}) holds no image.")
    return np.concatenate([np.asarray(batch) for batch in images])
