"""TFDS builders of AffectNet and AffectNetC25.

Importing the package registers the builders ``affectnet`` and ``affectnet_c25``::

    import tensorflow_datasets as tfds
    import tfds_affectnet  # noqa: F401  (registers the builders)

    builder = tfds.builder("affectnet", config="emotions8")

``tfds_affectnet.labels`` holds the label definitions shared with ``affectnet_tf``.
"""

from tfds_affectnet import labels
from tfds_affectnet.affectnet import AffectNetConfig
from tfds_affectnet.affectnet import Builder as AffectNet
from tfds_affectnet.affectnet_c25 import AffectNetC25Config
from tfds_affectnet.affectnet_c25 import Builder as AffectNetC25

__all__ = ["labels", "AffectNet", "AffectNetConfig", "AffectNetC25", "AffectNetC25Config"]
