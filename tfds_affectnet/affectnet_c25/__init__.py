"""The ``affectnet_c25`` TFDS builder (importing it registers the dataset)."""

from tfds_affectnet.affectnet_c25.affectnet_c25_dataset_builder import AffectNetC25Config, Builder

__all__ = ["AffectNetC25Config", "Builder"]
