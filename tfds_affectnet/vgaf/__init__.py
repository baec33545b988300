"""The ``vgaf`` TFDS builder (importing it registers the dataset)."""

from tfds_affectnet.vgaf.vgaf_dataset_builder import (
    VGAF_CLASS_NAMES,
    Builder,
    VgafConfig,
    read_vgaf_labels,
)

__all__ = ["VGAF_CLASS_NAMES", "Builder", "VgafConfig", "read_vgaf_labels"]
