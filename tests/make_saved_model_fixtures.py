"""Writes the saved-model fixtures that ``tests/affectnet_tf/test_saved_models_load.py`` loads.

Models saved by the package must keep loading as the package changes (its modules move, its
layers get refactored): these files were saved by the code of 2026-12-06 and are kept, not
remade. Run this script only to add a fixture, never to "fix" a failing load test::

    python tests/make_saved_model_fixtures.py tests/affectnet_tf/data/saved_models

Written into the folder:

- ``crowd_model.keras``: the training model of ``compact_cnn_small`` (32x32, task ``all``) with
  the default crowd layers of every head (25 annotators), seeded random weights;
- ``model.keras``: its prediction model (no crowd layers);
- ``emonet_8.config.json.gz`` and ``emonet_8.metadata.json.gz``: the ``config.json`` and
  ``metadata.json`` of EmoNet converted from seeded random weights (its weights, 45 MB, are
  left out: the registered names and the configuration are what must keep loading);
- ``expected.npz``: the input images and each full model's outputs on them, EmoNet's number of
  parameters.
"""

import argparse
import gzip
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import keras  # noqa: E402
from emonet_weights import seeded_state_dict  # noqa: E402

import affectnet_tf  # noqa: E402
from affectnet_tf.published import emonet  # noqa: E402

SIZE = 32
SEED = 20261206


def _outputs(model, images):
    outputs = model.predict(images, verbose=0)
    if not isinstance(outputs, dict):
        outputs = {"output": outputs}
    return {name: np.asarray(value) for name, value in outputs.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir")
    args = parser.parse_args(argv)
    folder = Path(args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(SEED)
    built = affectnet_tf.build_model(
        "compact_cnn_small",
        task="all",
        target="cv",
        num_annotators=25,
        weights=None,
        image_size=SIZE,
        dropout=0.0,
    )
    images = np.random.default_rng(SEED).integers(0, 256, (4, SIZE, SIZE, 3)).astype("uint8")
    expected = {"images": images}
    for name, model in (
        ("model", built.prediction_model),
        ("crowd_model", built.training_model),
    ):
        model.save(folder / f"{name}.keras")
        for head, value in _outputs(model, images).items():
            expected[f"{name}/{head}"] = value
    shapes = list(emonet.emonet_tensor_shapes(8).items())
    converted = emonet.convert_emonet(seeded_state_dict(shapes, SEED))
    expected["emonet_8/params"] = np.asarray(converted.count_params())
    with tempfile.TemporaryDirectory() as temporary:
        path = os.path.join(temporary, "emonet_8.keras")
        converted.save(path)
        with zipfile.ZipFile(path) as archive:
            for member in ("config.json", "metadata.json"):
                with gzip.open(folder / f"emonet_8.{member}.gz", "wt", encoding="utf-8") as out:
                    json.dump(json.loads(archive.read(member)), out, indent=1)
    np.savez_compressed(folder / "expected.npz", **expected)
    for path in sorted(folder.iterdir()):
        print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
