"""AffectNet: facial expression, valence and arousal in the wild (both official releases)."""

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

from tfds_affectnet import _examples, _generation, sources

__all__ = ["AffectNetConfig", "Builder"]

_DESCRIPTION = """\
AffectNet (Mollahosseini et al., 2019): face images from the web, manually annotated with one of
eight facial expressions (or none / uncertain / no face) and with continuous valence and arousal.

Built from either official release, detected in the manual folder:

* the full release (Manually_Annotated): whole images with a face box and 68 landmarks per row of
  training.csv / validation.csv; the face is cropped to a square with a margin around the box;
* the 8-label release (train_set/, val_set/): already cropped faces with .npy annotations.

The stored image is face-cropped RGB of image_size x image_size (JPEG), and `landmarks` are the
68 (x, y) points in the stored image's pixel coordinates (pixel-centre convention). Expression
codes follow AffectNet's order: 0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust,
6 anger, 7 contempt (8 none, 9 uncertain, 10 no-face in `all11`). Valence and arousal are in
-1..1; -2 means "not annotated" and only occurs in `all11`.

Rows that are not labels of the config are excluded and counted; corrupt (also mid-stream, with
the end marker intact), truncated or missing images and face boxes without area or outside the
image are skipped, counted and listed in skipped_<split>.tsv next to the generated dataset (with
the counts in report_<split>.json). A face box that extends past the image is clipped to it; such
examples are counted and listed in notes_<split>.tsv.
"""

_CITATION = sources.AFFECTNET_CITATION

_HOMEPAGE = "http://mohammadmahoor.com/affectnet/"
# Rows per Beam work item (a slice of training.csv read on one worker).
_BEAM_CHUNK_ROWS = 10_000
_BEAM_BATCH_ROWS = 2_000


@dataclasses.dataclass
class AffectNetConfig(tfds.core.BuilderConfig):
    """Settings of the ``affectnet`` builder.

    Attributes:
        label_set: "emotions8" (the eight expressions; rows with codes 8-10 or valence/arousal
            -2 are excluded and counted) or "all11" (all eleven categories; -2 values stay).
        image_size: side of the stored square image, in pixels.
        crop_margin: fraction of the face box added on every side of the square crop (full
            release only; the 8-label release is already cropped).
        release: "auto" (the full release when both are present), "full" or "eight_label".

    Examples:
        >>> config = AffectNetConfig(name="emotions8_112", image_size=112)
        >>> builder = tfds.builder("affectnet", config=config)
    """

    label_set: str = _examples.EMOTIONS8
    image_size: int = 224
    crop_margin: float = 0.1
    release: str = "auto"

    def __post_init__(self):
        _examples.label_names(self.label_set)  # validates
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
        if self.release not in ("auto",) + sources.RELEASES:
            raise ValueError(
                "`release` must be 'auto', 'full' or 'eight_label'. "
                f"Received: release={self.release!r}"
            )


class Builder(_generation.GenerationMixin, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for AffectNet (full or 8-label release, read from the manual folder)."""

    name = "affectnet"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: both official releases, emotions8 and all11."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
AffectNet is licensed: request it at http://mohammadmahoor.com/affectnet/ and extract ONE of the
two official releases into the manual folder (by default ~/tensorflow_datasets/downloads/manual/;
set another with `tfds build --manual_dir=DIR` or
`tfds.download.DownloadConfig(manual_dir=DIR)`):

(a) full release:
    <manual_dir>/Manually_Annotated_file_lists/training.csv
    <manual_dir>/Manually_Annotated_file_lists/validation.csv
    <manual_dir>/Manually_Annotated_Images/<subDirectory>/<file name>
    (the CSV column subDirectory_filePath names each image relative to Manually_Annotated_Images)

(b) 8-label release:
    <manual_dir>/train_set/images/<n>.jpg
    <manual_dir>/train_set/annotations/<n>_exp.npy, <n>_val.npy, <n>_aro.npy, <n>_lnd.npy
    <manual_dir>/val_set/images/<n>.jpg
    <manual_dir>/val_set/annotations/<n>_exp.npy, <n>_val.npy, <n>_aro.npy, <n>_lnd.npy

When both are present the full release is used (config field `release` chooses).
"""
    BUILDER_CONFIGS = [
        AffectNetConfig(
            name="emotions8",
            description=(
                "The 8 manually annotated expressions at 224x224; codes 8-10 and valence/arousal "
                "-2 excluded (counted)."
            ),
        ),
        AffectNetConfig(
            name="all11",
            label_set=_examples.ALL11,
            description=(
                "All 11 categories (8 none, 9 uncertain, 10 no-face) at 224x224; valence/arousal "
                "-2 (not annotated) kept as -2."
            ),
        ),
    ]
    DEFAULT_CONFIG_NAME = "emotions8"

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"),
                    "expression": tfds.features.ClassLabel(
                        names=list(_examples.label_names(self.builder_config.label_set))
                    ),
                    "valence": tfds.features.Scalar(dtype=np.float32),
                    "arousal": tfds.features.Scalar(dtype=np.float32),
                    "landmarks": tfds.features.Tensor(
                        shape=(sources.NUM_LANDMARKS, 2), dtype=np.float32
                    ),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "expression"),
            homepage=_HOMEPAGE,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        """Detects the release (failing before any generation) and returns one generator per split."""
        manual_dir = str(dl_manager.manual_dir)
        release = sources.detect_release(manual_dir, self.builder_config.release)
        print(f"affectnet: reading the {release} release from {manual_dir}", flush=True)
        return {
            split: self._generate_examples(release=release, split=split, manual_dir=manual_dir)
            for split in sources.SPLITS
        }

    def _generate_examples(self, release, split, manual_dir):
        """Streams ``(file name, example)`` pairs; Beam transforms when a pipeline was asked for."""
        config = self.builder_config
        dataset = f"{self.name}/{config.name}"
        log_dir = self.data_path
        if release == sources.FULL:
            paths = sources.full_release_paths(manual_dir)
            process = _examples.AffectNetRowProcessor(
                release, config.label_set, config.image_size, config.crop_margin, paths["images"]
            )
            if self._use_beam:
                chunks = sources.row_chunks(sources.count_csv_rows(paths[split]), _BEAM_CHUNK_ROWS)
                expand = functools.partial(sources.read_full_chunk, paths[split])
                return _generation.beam_generate(chunks, expand, process, log_dir, dataset, split)
            rows = sources.iter_full_rows(paths[split])
            extra = ()
        else:
            images_dir, annotations_dir = sources.eight_label_paths(manual_dir)[split]
            process = _examples.AffectNetRowProcessor(
                release,
                config.label_set,
                config.image_size,
                config.crop_margin,
                images_dir,
                annotations_dir,
            )
            rows, orphans = sources.list_eight_label_rows(images_dir, annotations_dir)
            extra = [
                _generation.skipped(f"{orphan}_exp.npy", "annotation without image")
                for orphan in orphans
            ]
            if self._use_beam:
                return _generation.beam_generate(
                    sources.batches(rows, _BEAM_BATCH_ROWS),
                    sources.identity,
                    process,
                    log_dir,
                    dataset,
                    split,
                    extra,
                )
        report = _generation.SplitReport(dataset, split, log_dir)
        return _generation.generate(rows, process, report, extra)
