"""affectnet-tf: facial expression, valence and arousal models on AffectNet and AffectNetC25.

Importing the package registers the TFDS builders (``tfds_affectnet``) and the crowd layers and
losses (``crowd_layers``) with Keras.
"""

import crowd_layers  # noqa: F401  (registers the crowd layers and losses with Keras)
import tfds_affectnet  # noqa: F401  (registers the TFDS builders)
from affectnet_tf import faces, images, metrics, train, video
from affectnet_tf.backbones import BACKBONES, WeightsUnavailableError
from affectnet_tf.data import DatasetInfo, make_dataset
from affectnet_tf.faces import FaceCropper
from affectnet_tf.images import decode_image, load_image_file, resize_image
from affectnet_tf.models import build_model, load_model, model_metadata
from affectnet_tf.version import __version__
from tfds_affectnet import labels

__all__ = [
    "__version__",
    "DatasetInfo",
    "make_dataset",
    "decode_image",
    "resize_image",
    "load_image_file",
    "BACKBONES",
    "WeightsUnavailableError",
    "build_model",
    "load_model",
    "model_metadata",
    "FaceCropper",
    "faces",
    "video",
    "images",
    "metrics",
    "train",
    "labels",
]
