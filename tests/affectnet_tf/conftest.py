"""Fixtures of the affectnet_tf tests: dummy AffectNet / AffectNetC25 prepared once per session."""

import logging

import make_dummy_data
import pytest
import tensorflow_datasets as tfds

from affectnet_tf.training.config import RunConfig, data_roles

STORED = 32  # side of the stored dummy images


@pytest.fixture(scope="session")
def train_data_dir(tmp_path_factory):
    """A TFDS folder holding ``affectnet_c25/default_32`` and ``affectnet/emotions8_32``, the
    configurations that ``--stored-image-size 32`` reads."""
    root = tmp_path_factory.mktemp("manual")
    make_dummy_data.make_all(root)
    data_dir = tmp_path_factory.mktemp("tfds")
    for dataset in ("affectnet_c25/set1", "affectnet"):
        roles = data_roles(RunConfig(dataset=dataset, stored_image_size=STORED))
        builder = tfds.builder(roles.name, config=roles.builder_config, data_dir=data_dir)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(root))
        )
    return data_dir


@pytest.fixture(scope="session")
def tiny_settings(train_data_dir):
    """``make(output_dir, **overrides)``: a fast training configuration (compact CNN, 32x32,
    one epoch of two steps) writing to ``output_dir``; for module- and session-scoped runs."""

    def make(output_dir, **overrides):
        config = {
            "dataset": "affectnet_c25/set1",
            "data_dir": str(train_data_dir),
            "stored_image_size": STORED,
            "selection_fraction": 0.25,
            "test_fraction": 0.25,
            "model": "compact_cnn",
            "weights": None,
            "image_size": 32,
            "epochs": 1,
            "batch_size": 4,
            "steps_per_epoch": 2,
            "output_dir": str(output_dir),
            "strategy": "default",
            "report": False,  # the evaluation tests look at reports
        }
        config.update(overrides)
        return config

    return make


@pytest.fixture
def tiny_config(tiny_settings, tmp_path):
    """A fast training configuration: compact CNN, 32x32, one epoch of two steps, in
    ``tmp_path / "run"`` unless ``output_dir`` is given."""

    def make(**overrides):
        return tiny_settings(overrides.pop("output_dir", tmp_path / "run"), **overrides)

    return make


@pytest.fixture
def restore_logging():
    """Restores the ``affectnet_tf`` logger's handlers, level and propagation after the test
    (a command's ``main`` run in the test process configures them)."""
    logger = logging.getLogger("affectnet_tf")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture
def status_log(restore_logging):
    """The messages the package logs at INFO and above during the test (a list that fills
    as it runs), whatever level an earlier ``configure_logging`` chose (a ``--quiet`` run
    within the test still silences them)."""
    messages = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    restore_logging.addHandler(handler)
    if not restore_logging.isEnabledFor(logging.INFO):
        restore_logging.setLevel(logging.INFO)
    return messages
