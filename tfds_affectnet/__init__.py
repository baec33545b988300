"""TFDS builders of AffectNet and AffectNetC25.

Importing the package registers the builders ``affectnet``, ``affectnet_c25``,
``crowd_images`` (a user's folder of images and crowd answers: docs/crowd-images.md),
``synthetic_faces`` (drawn faces with a simulated crowd, built locally: no download), and the
video builders ``afew`` and ``vgaf`` (MTCNN face crops per frame, manual download):

```python
import tensorflow_datasets as tfds
import tfds_affectnet  # noqa: F401  (registers the builders)

builder = tfds.builder("affectnet", config="emotions8")
```

``tfds_affectnet.labels`` holds the label definitions shared with ``affectnet_tf``.
"""

from tfds_affectnet import labels
from tfds_affectnet.afew import AfewConfig
from tfds_affectnet.afew import Builder as Afew
from tfds_affectnet.affectnet import AffectNetConfig
from tfds_affectnet.affectnet import Builder as AffectNet
from tfds_affectnet.affectnet_c25 import AffectNetC25Config
from tfds_affectnet.affectnet_c25 import Builder as AffectNetC25
from tfds_affectnet.crowd_images import Builder as CrowdImages
from tfds_affectnet.crowd_images import CrowdImagesConfig
from tfds_affectnet.synthetic_faces import Builder as SyntheticFaces
from tfds_affectnet.synthetic_faces import SyntheticFacesConfig
from tfds_affectnet.vgaf import Builder as Vgaf
from tfds_affectnet.vgaf import VgafConfig

__all__ = [
    "labels",
    "AffectNet",
    "AffectNetConfig",
    "AffectNetC25",
    "AffectNetC25Config",
    "CrowdImages",
    "CrowdImagesConfig",
    "SyntheticFaces",
    "SyntheticFacesConfig",
    "Afew",
    "AfewConfig",
    "Vgaf",
    "VgafConfig",
]
