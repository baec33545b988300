"""affectnet-tf: facial expression, valence and arousal models on AffectNet and AffectNetC25.

Importing the package registers the TFDS builders (``tfds_affectnet``) and the crowd layers and
losses (``crowd_layers``) with Keras.

Importing the package changes nothing else in the process: no environment variable, no file
descriptor. Its commands (``python -m affectnet_tf.train`` ..., the ``affectnet-train`` ...
console scripts) start quietly: TensorFlow's C++ start-up notices (no CUDA driver, CPU
instructions, oneDNN) would flood every command's output, so a command sets
``TF_CPP_MIN_LOG_LEVEL=2`` before TensorFlow is imported (a default only: a value the user set
wins), which hides TensorFlow's C++ INFO and WARNING lines while its errors and Python warnings
still print; the "Could not find cuda drivers" notice ignores that variable (TensorFlow 2.19 and
later), so that line and absl's header before it are filtered out of what ``import tensorflow``
writes to the standard error, everything else being passed on. Set ``TF_CPP_MIN_LOG_LEVEL=0``
to see everything.

The command-line modules (``train``, ``evaluate``, ``predict``, ``agreement``, ``video_train``,
``export``, ``serve``, ``convert``) are imported on first attribute access
(``affectnet_tf.train``), not with the package, so that ``python -m affectnet_tf.train`` runs
its module once. So are the converters of published models (``emonet``, ``hsemotion``): a
converted model reloads from its ``.keras`` file without them.
"""

import importlib

from affectnet_tf import _startup

if _startup.started_as_command():  # a library import leaves the process as it is
    _startup.import_tensorflow_quietly()

import crowd_layers  # noqa: F401  (registers the crowd layers and losses with Keras)
import tfds_affectnet  # noqa: F401  (registers the TFDS builders)
from affectnet_tf.data import images
from affectnet_tf.data.images import decode_image, load_image_file, resize_image
from affectnet_tf.data.pipeline import DatasetInfo, make_dataset
from affectnet_tf.inference import faces, video
from affectnet_tf.inference.faces import FaceCropper
from affectnet_tf.modeling import metrics
from affectnet_tf.modeling.backbones import BACKBONES, WeightsUnavailableError
from affectnet_tf.modeling.models import build_model, load_model, model_metadata
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

# Command-line modules: importing one with the package would make ``python -m`` run it twice
# (runpy's "found in sys.modules" RuntimeWarning).
_COMMANDS = (
    "agreement",
    "convert",
    "evaluate",
    "export",
    "predict",
    "serve",
    "train",
    "video_train",
)


# Converters of published models, imported on first use too.
_CONVERTERS = ("emonet", "hsemotion")


def __getattr__(name):
    if name in _COMMANDS or name in _CONVERTERS:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_COMMANDS) | set(_CONVERTERS))
