"""Fixtures shared by the crowd-layer tests."""

import pytest
import tensorflow as tf


@pytest.fixture(scope="session")
def two_replica_strategy():
    """A factory of two-replica ``MirroredStrategy`` objects on the two logical CPUs.

    ``two_replica_strategy(key_base)`` gives the strategy collective keys of its own.
    TensorFlow caches each collective instance by (group key, instance key), and every
    ``MirroredStrategy`` starts from the same keys: a later strategy in the same process whose
    all-reduce at a reused key has another shape fails ("Shape mismatch in the collective
    instance"; for example a synchronised batch norm's (1, E) sums against a scalar count). An
    own group key base per test module, the knob TensorFlow's own tests use, keeps the modules'
    collectives apart.
    """

    def make(key_base):
        if len(tf.config.list_logical_devices("CPU")) < 2:
            pytest.skip("needs two logical CPU devices (tests/conftest.py configures them)")
        base = tf.distribute.MirroredStrategy._collective_key_base
        tf.distribute.MirroredStrategy._collective_key_base = key_base
        try:
            return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        finally:
            tf.distribute.MirroredStrategy._collective_key_base = base

    return make
