"""``tf.distribute`` strategies for the training command (``--strategy``)."""

import logging
import os

import tensorflow as tf

__all__ = ["make_strategy", "is_chief", "find_tpu"]

logger = logging.getLogger(__name__)


def _tpu_hinted():
    """Whether a TPU may be present: Cloud TPU variables, or ``/dev/accel*`` device files
    (which Intel NPU and Habana drivers create too, so a hint is only a reason to ask)."""
    if os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"):
        return True
    return os.path.isdir("/dev") and any(name.startswith("accel") for name in os.listdir("/dev"))


_TPU_ERRORS = (ValueError, RuntimeError, tf.errors.OpError)


def _connect_tpu():
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return resolver


def find_tpu():
    """A connected ``TPUClusterResolver`` if the TPU resolver finds a TPU, else None."""
    if not _tpu_hinted():
        return None
    try:
        return _connect_tpu()
    except _TPU_ERRORS as error:
        logger.info("No TPU found (%s: %s); not using a TPU.", type(error).__name__, error)
        return None


def make_strategy(name="auto"):
    """The ``tf.distribute`` strategy for ``--strategy``.

    ``auto``: a TPU if the TPU resolver finds one, multi-worker if ``TF_CONFIG`` is set,
    mirrored on more than one GPU, else the default strategy. ``mirrored`` without GPUs
    mirrors over the logical CPU devices. ``tpu`` fails with the resolver's error when there
    is no TPU.
    """
    if name == "auto":
        resolver = find_tpu()
        if resolver is not None:
            return tf.distribute.TPUStrategy(resolver)
        if os.environ.get("TF_CONFIG"):
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        return tf.distribute.MirroredStrategy(
            devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        )
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            return tf.distribute.TPUStrategy(_connect_tpu())
        except _TPU_ERRORS as error:
            raise ValueError(f"--strategy tpu: no TPU found ({error}).") from error
    raise ValueError(f"Unknown strategy. Received: strategy={name!r}")


def is_chief(strategy):
    """Whether this process writes the run folder (always, except non-chief workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return (
        task_type is None
        or task_type == "chief"
        or (
            task_type == "worker"
            and task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict()
        )
    )
