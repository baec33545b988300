"""The ``affectnet`` TFDS builder (importing it registers the dataset)."""

from tfds_affectnet.affectnet.affectnet_dataset_builder import AffectNetConfig, Builder

__all__ = ["AffectNetConfig", "Builder"]
