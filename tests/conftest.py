"""Test configuration shared by the whole suite.

Two logical CPU devices are configured before TensorFlow creates its context, so that
``tf.distribute.MirroredStrategy`` tests can run with two replicas on a CPU-only machine.
The default strategy still places everything on the first device.
"""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
except RuntimeError:  # the context was already initialised by an earlier import
    pass

SHARED_C25 = Path(__file__).resolve().parents[2] / "shared" / "data" / "affectnetc25"
SHARED_C25 = Path(os.environ.get("AFFECTNETC25_CSV_DIR", SHARED_C25))


@pytest.fixture
def c25_csv_dir():
    """The real AffectNetC25 CSV folder, or a skip when it is absent (user machines)."""
    if not (SHARED_C25 / "expression_set1_C25.csv").exists():
        pytest.skip(f"real AffectNetC25 CSVs not found in {SHARED_C25} (set AFFECTNETC25_CSV_DIR)")
    return SHARED_C25


@pytest.fixture(autouse=True)
def _package_logging_reset():
    """A command's ``main`` configures the package's logger (its handler, level, no
    propagation): each test starts and ends with Python's defaults, so ``caplog`` sees records."""
    from affectnet_tf import progress

    progress.reset_logging()
    yield
    progress.reset_logging()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def synthetic_faces_tiny(tmp_path_factory):
    """``(data_dir, builder)`` of ``synthetic_faces/tiny`` (48 drawn faces per split at 32x32,
    25 simulated answers each, with the truth), built once per session in about a second."""
    import tensorflow_datasets as tfds

    import tfds_affectnet  # noqa: F401  (registers the builders)

    data_dir = tmp_path_factory.mktemp("synthetic_faces")
    builder = tfds.builder("synthetic_faces/tiny", data_dir=data_dir)
    builder.download_and_prepare()
    return data_dir, builder
