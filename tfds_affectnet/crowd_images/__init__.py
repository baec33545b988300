"""The ``crowd_images`` TFDS builder (importing it registers the dataset)."""

from tfds_affectnet.crowd_images.crowd_images_dataset_builder import Builder, CrowdImagesConfig

__all__ = ["Builder", "CrowdImagesConfig"]
