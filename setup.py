"""Installation script of affectnet-tf."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "affectnet_tf" / "version.py").read_text()
).group(1)

INSTALL_REQUIRES = [
    "tensorflow>=2.16",
    "keras>=3.3",
    "tensorflow-datasets>=4.9",
    "numpy>=1.26",
    "pandas>=2.0",
    "scikit-learn>=1.3",
    "joblib>=1.2",  # saving the video classifiers (affectnet_tf.video_train)
    "scipy>=1.10",  # sparse matrices in crowd_layers.aggregation.DawidSkene
    # Headless OpenCV: servers and CI have no GUI libraries (libGL, GTK).
    "opencv-python-headless>=4.8",
    # libjpeg-turbo with its warnings as errors: the dataset builders refuse JPEGs corrupt
    # mid-stream, which OpenCV, TensorFlow and Pillow decode with only a warning on stderr.
    "simplejpeg>=1.9",
    "matplotlib>=3.7",
    "mtcnn>=1.0",
    "krippendorff>=0.6",
    "pyyaml>=6.0",
    "tensorboard>=2.16",  # the training logs; tensorflow no longer installs it
    # tensorflow-datasets uses it on every Python but declares it only below 3.9
    # (tensorflow/datasets#11212).
    "importlib_resources>=5",
]

# The Beam branch of the TFDS builders; mlcroissant because the `tfds` command of
# tensorflow-datasets 4.9.10 imports it at start-up.
BEAM_REQUIRES = ["apache-beam>=2.50", "mlcroissant"]

# The documentation site (`make docs`): minor versions pinned, since `mkdocs build --strict`
# fails on any new warning that a newer docstring parser or theme may bring.
DOCS_REQUIRES = [
    "mkdocs>=1.6,<1.7",
    "mkdocs-material>=9.8,<9.9",
    "mkdocstrings[python]>=1.0,<1.1",
    "mkdocstrings-python>=2.0,<2.1",
]

# `python -m affectnet_tf.export`: the ONNX converter for TensorFlow graphs, the ONNX format and
# its runtime (the parity check), and LiteRT's interpreter (the TFLite parity check; TensorFlow's
# own tf.lite.Interpreter is deprecated).
EXPORT_REQUIRES = ["tf2onnx>=1.16", "onnx>=1.15", "onnxruntime>=1.17", "ai-edge-litert>=1.2"]

# `python -m affectnet_tf.serve`: aiohttp, an asyncio HTTP server (request size limits, one event
# loop that gathers concurrent requests into one model batch); Pillow (also matplotlib's) reads
# an image's size from its header, so that an oversized image is refused before decoding.
SERVE_REQUIRES = ["aiohttp>=3.9", "pillow>=10"]

# `python -m affectnet_tf.convert --from hsemotion`: HSEmotion's weights are ONNX files, read with
# the onnx package (EmoNet's .pth files need nothing: the package reads them without PyTorch).
CONVERT_REQUIRES = ["onnx>=1.15"]

# Development only, never for the package or CI: remaking the parity fixtures of the converted
# models from the reference implementations (tests/make_emonet_fixture.py,
# tests/make_hsemotion_fixture.py). timm needs torchvision, which needs this torch; the EmoNet
# fixture was made with torch 2.13.0, the HSEmotion one with 2.14.1 (both CPU builds).
FIXTURES_REQUIRES = ["torch==2.14.1", "torchvision==0.29.1", "timm>=1.0"]

EXTRAS_REQUIRE = {
    "test": [
        "pytest>=7.4",
        "dill",  # tfds.testing needs it
        "ruff>=0.17,<0.18",  # pinned: formatter output changes between minor versions
        # Reference implementation the Dawid-Skene tests compare against.
        "crowd-kit>=1.2",
        # skimage.data.astronaut(): a real face for the face-crop tests, with no download.
        "scikit-image>=0.22",
        # The Beam generation test runs in `make test`, so that CI keeps that path working.
        *BEAM_REQUIRES,
        # `make test` builds the documentation, so that CI keeps it building.
        *DOCS_REQUIRES,
        *EXPORT_REQUIRES,
        *SERVE_REQUIRES,
        # The browser test of the serving page drives Debian's chromium through chromedriver.
        "selenium>=4.10",
    ],
    "export": EXPORT_REQUIRES,
    "convert": CONVERT_REQUIRES,
    "fixtures": FIXTURES_REQUIRES,
    "serve": SERVE_REQUIRES,
    "beam": BEAM_REQUIRES,
    "docs": DOCS_REQUIRES,
}

setup(
    name="affectnet-tf",
    version=VERSION,
    description=(
        "Facial expression, valence and arousal on AffectNet and AffectNetC25 with "
        "TensorFlow 2 / Keras 3, TFDS builders and crowd layers."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["affectnet_tf*", "tfds_affectnet*", "crowd_layers*"]),
    include_package_data=True,
    package_data={
        "tfds_affectnet": ["**/*.tsv", "**/*.npz", "**/*.json"],
        "affectnet_tf": ["static/*"],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
