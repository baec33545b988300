"""The face-crop stage: MTCNN detection and face crops, in batches, on downscaled frames.

The implementation lives in :mod:`tfds_affectnet.face_crops` because the video builders (``afew``,
``vgaf``) crop faces with it and ``tfds_affectnet`` never imports ``affectnet_tf``; this module is
its public home. :func:`crops_for_model` resizes crops to a model's input size the way the data
pipeline resizes training images (:func:`affectnet_tf.data.images.resize_image`).

For example:

```python
from affectnet_tf.inference.faces import FaceCropper

cropper = FaceCropper(working_size=480, mode="all", crop_size=224)
faces = cropper.process([rgb_frame])[0]  # boxes, scores, landmarks, crops
```
"""

import numpy as np

from affectnet_tf.data.images import resize_image
from tfds_affectnet.face_crops import (
    ALL,
    CANONICAL_LANDMARKS_112,
    LANDMARK_NAMES,
    LARGEST,
    MODES,
    Detections,
    FaceCropper,
    Faces,
    box_iou,
    empty_detections,
    similarity_transform,
)

__all__ = [
    "ALL",
    "CANONICAL_LANDMARKS_112",
    "LANDMARK_NAMES",
    "LARGEST",
    "MODES",
    "Detections",
    "FaceCropper",
    "Faces",
    "box_iou",
    "crops_for_model",
    "empty_detections",
    "similarity_transform",
]


def crops_for_model(crops, image_size):
    """Face crops ``(n, s, s, 3)`` uint8 resized to ``image_size`` with the training resize."""
    crops = np.asarray(crops)
    if crops.shape[0] == 0:
        return np.zeros((0, image_size, image_size, 3), np.uint8)
    if crops.shape[1:3] == (image_size, image_size):
        return crops.astype(np.uint8)
    return np.asarray(resize_image(crops, image_size))
