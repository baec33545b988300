"""The ``synthetic_faces`` TFDS builder (importing it registers the dataset).

Drawn faces with a known expression, valence and arousal, and a simulated crowd calibrated
on AffectNetC25 (:func:`simulated_annotators`). Configs ``c25_dense``, ``sparse``, ``tiny``.
"""

from tfds_affectnet.synthetic_faces.annotators import (
    load_calibration,
    simulate_answers,
    simulated_annotators,
)
from tfds_affectnet.synthetic_faces.drawing import draw_face, sample_face
from tfds_affectnet.synthetic_faces.synthetic_faces_dataset_builder import (
    Builder,
    SyntheticFacesConfig,
)

__all__ = [
    "Builder",
    "SyntheticFacesConfig",
    "draw_face",
    "load_calibration",
    "sample_face",
    "simulate_answers",
    "simulated_annotators",
]
