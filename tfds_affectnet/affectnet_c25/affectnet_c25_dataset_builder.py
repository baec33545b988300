"""AffectNetC25: 1,600 AffectNet training images, each annotated by 25 people."""

import collections
import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from tfds_affectnet import _examples, _generation, sources

__all__ = ["AffectNetC25Config", "Builder"]

_DESCRIPTION = """\
AffectNetC25 (github.com/kdoodoo/affectnetc25): 1,600 images of AffectNet's training set, each
annotated by 25 participants with an expression, valence and arousal. Split `set1` holds 800
"confusing" images, `set2` 800 random images, each annotated by its own group of 25 people.

The crowd answers come from the AffectNetC25 CSVs (read from the manual folder, or downloaded
from the public repository with checksums); the images from the full AffectNet release, joined
by file name (the last part of training.csv's subDirectory_filePath) and face-cropped exactly
as the `affectnet` builder does.

`crowd_expression` holds the 25 answers in AffectNet's canonical order (0 neutral, 1 happy,
2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt), remapped from C25's order
(affectnet = (c25 + 1) % 8), -1 for no answer. `crowd_valence` and `crowd_arousal` are in
-1..1 in 0.25 steps, NaN for no answer. `affectnet_expression`, `affectnet_valence` and
`affectnet_arousal` are AffectNet's own labels of the image from training.csv (codes 8-10 and
-2 kept as they are). `affectnet_index` is the C25 CSV's `index` column (the image's row in
training.csv, counted from 0).
"""

_CITATION = (
    """\
@misc{affectnetc25,
  title        = {AffectNetC25: crowd annotations of AffectNet by 25 participants},
  howpublished = {\\url{https://github.com/kdoodoo/affectnetc25}},
}
"""
    + sources.AFFECTNET_CITATION
)

_HOMEPAGE = "https://github.com/kdoodoo/affectnetc25"
_MAX_NAMES_SHOWN = 10


@dataclasses.dataclass
class AffectNetC25Config(tfds.core.BuilderConfig):
    """Settings of the ``affectnet_c25`` builder.

    Attributes:
        image_size: side of the stored square image, in pixels.
        crop_margin: fraction of the face box added on every side of the square crop.
        allow_missing: build the images that are available and report the others (count and
            names, printed and in skipped_<split>.tsv) instead of failing.
    """

    image_size: int = 224
    crop_margin: float = 0.1
    allow_missing: bool = False

    def __post_init__(self):
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, (int, np.integer)):
            raise ValueError(
                f"`image_size` must be an int. Received: image_size={self.image_size!r}"
            )
        if self.image_size < 1:
            raise ValueError(f"`image_size` must be >= 1. Received: image_size={self.image_size}")
        if not self.crop_margin >= 0:
            raise ValueError(
                f"`crop_margin` must be >= 0. Received: crop_margin={self.crop_margin}"
            )


class Builder(_generation.GenerationMixin, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for AffectNetC25 (crowd labels joined to the full AffectNet release)."""

    name = "affectnet_c25"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: set1 and set2 with 25 answers per image."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
The images are those of the full AffectNet release (licensed: request it at
http://mohammadmahoor.com/affectnet/). Extract it into the manual folder (by default
~/tensorflow_datasets/downloads/manual/; set another with `tfds build --manual_dir=DIR` or
`tfds.download.DownloadConfig(manual_dir=DIR)`):

    <manual_dir>/Manually_Annotated_file_lists/training.csv
    <manual_dir>/Manually_Annotated_Images/<subDirectory>/<file name>

The 8-label release (train_set/, val_set/) cannot be used: it renamed the images, and AffectNetC25
names them by their original file names.

The six AffectNetC25 CSVs (expression_set1_C25.csv, expression_set2_C25.csv,
valence_set1_C25.csv, valence_set2_C25.csv, arousal_set1_C25.csv, arousal_set2_C25.csv) are read
from <manual_dir>/AffectNetC25/ or <manual_dir>/ when all six are there; otherwise they are
downloaded from https://github.com/kdoodoo/affectnetc25 (folder AffectNetC25/) and checked
against checksums.tsv.
"""
    BUILDER_CONFIGS = [
        AffectNetC25Config(
            name="default",
            description="All 1,600 images at 224x224; fails when any image is missing.",
        ),
        AffectNetC25Config(
            name="subset",
            allow_missing=True,
            description="The available images at 224x224; missing ones are reported and logged.",
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                _examples.crowd_features(
                    self.builder_config.image_size, sources.C25_NUM_PARTICIPANTS
                )
            ),
            supervised_keys=("image", "crowd_expression"),
            homepage=_HOMEPAGE,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        """Reads the CSVs, joins them to training.csv and checks every image before generating."""
        manual_dir = str(dl_manager.manual_dir)
        full = sources.full_release_paths(manual_dir)
        if not (tf.io.gfile.exists(full["train"]) and tf.io.gfile.isdir(full["images"])):
            raise FileNotFoundError(
                "affectnet_c25 needs the full AffectNet release in the manual folder:\n"
                f"    {full['train']}\n    {full['images']}/<subDirectory>/<file name>\n"
                "(the 8-label release renamed the images and cannot be joined).\n\n"
                + sources.expected_layout_message(manual_dir)
            )
        csv_paths = sources.find_c25_csvs(manual_dir)
        if csv_paths is None:
            keys = [(kind, s) for kind in sources.C25_KINDS for s in sources.C25_SETS]
            downloaded = dl_manager.download(
                {f"{kind}_{s}": sources.c25_url(kind, s) for kind, s in keys}
            )
            csv_paths = {(kind, s): str(downloaded[f"{kind}_{s}"]) for kind, s in keys}
        notes = {s: collections.Counter() for s in sources.C25_SETS}
        sets = {
            s: sources.read_c25_set(
                {kind: csv_paths[(kind, s)] for kind in sources.C25_KINDS}, notes[s]
            )
            for s in sources.C25_SETS
        }
        names = [row["file_name"] for rows in sets.values() for row in rows]
        found, duplicates = sources.lookup_training_rows(full["train"], names)
        if duplicates:
            print(
                f"affectnet_c25: {duplicates} rows of training.csv repeat a file name of "
                "AffectNetC25; the first row of each name is used.",
                flush=True,
            )
        missing = []
        for s, rows in sets.items():
            for row in rows:
                training = found.get(row["file_name"])
                if training is None:
                    row["missing"] = "not in training.csv"
                elif not tf.io.gfile.exists(f"{full['images']}/{training['file_name']}"):
                    row["missing"] = "missing image"
                    row["missing_detail"] = f"{full['images']}/{training['file_name']}"
                else:
                    row["training"] = training
                    if training["index"] != row["affectnet_index"]:
                        notes[s]["C25 index differs from the row number in training.csv"] += 1
                if row.get("missing"):
                    missing.append(f"{s}/{row['file_name']} ({row['missing']})")
        if missing:
            shown = ", ".join(missing[:_MAX_NAMES_SHOWN])
            more = (
                f" and {len(missing) - _MAX_NAMES_SHOWN} more"
                if len(missing) > _MAX_NAMES_SHOWN
                else ""
            )
            message = (
                f"{len(missing)} of {len(names)} AffectNetC25 images are not available in "
                f"{manual_dir}: {shown}{more}."
            )
            if not self.builder_config.allow_missing:
                raise FileNotFoundError(
                    message
                    + "\nCheck the full release's training.csv and Manually_Annotated_Images"
                    "/ folder, or build the available subset with the config 'subset' "
                    "(AffectNetC25Config(name=..., allow_missing=True)); the images left out are "
                    "then listed in skipped_<split>.tsv."
                )
            logging.warning("affectnet_c25 (subset): %s They are left out.", message)
            print(f"affectnet_c25 (subset): {message} They are left out.", flush=True)
        return {
            s: self._generate_examples(
                rows=sets[s], split=s, images_dir=full["images"], notes=notes[s]
            )
            for s in sources.C25_SETS
        }

    def _generate_examples(self, rows, split, images_dir, notes):
        """Yields ``(file name, example)`` pairs; Beam transforms when a pipeline was asked for."""
        config = self.builder_config
        dataset = f"{self.name}/{config.name}"
        process = _examples.C25RowProcessor(images_dir, config.image_size, config.crop_margin)
        if self._use_beam:
            return _generation.beam_generate(
                [[row] for row in rows], sources.identity, process, self.data_path, dataset, split
            )
        report = _generation.SplitReport(dataset, split, self.data_path)
        report.notes.update(notes)
        return _generation.generate(rows, process, report)
