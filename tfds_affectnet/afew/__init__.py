"""The ``afew`` TFDS builder (importing it registers the dataset)."""

from tfds_affectnet.afew.afew_dataset_builder import AFEW_FOLDERS, AfewConfig, Builder

__all__ = ["AFEW_FOLDERS", "AfewConfig", "Builder"]
