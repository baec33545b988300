"""crowd_images: your own folder of images and crowd answers, as a TFDS dataset.

The folder's layout and its checks: :mod:`tfds_affectnet.crowd_folder`.

The features depend on the folder (its number of annotators, its classes), so the builder's
configuration is derived from the folder when the builder is made: ``CrowdImagesConfig.
from_folder(DIR)``, or ``tfds.builder("crowd_images", manual_dir=DIR)``, which does the same.
The configuration's name holds the folder's content digest (`crowd_folder.folder_digest`) and
the stored image size, so two folders (or one folder edited) never share a prepared dataset in
one data_dir. The class names, the annotator axis, the tasks answered and whether a truth was
given are in the dataset's metadata (``builder.info.metadata``).
"""

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tfds_affectnet import _examples, _generation, _images, crowd_folder

__all__ = ["CrowdImagesConfig", "Builder"]

_DESCRIPTION = """\
A folder of images with crowd answers (see docs/crowd-images.md): one example per answered
image, the whole image resized (no aspect ratio kept) to a square of `image_size`.

`crowd_expression` holds one answer per annotator (the fixed annotator axis of the metadata's
`annotators`) as a class index of the metadata's `class_names`, -1 for no answer;
`crowd_valence` and `crowd_arousal` in [-1, 1], NaN for no answer. `true_expression` (-1: no
truth), `true_valence` and `true_arousal` (NaN: no truth) come from truth.csv when the folder
has one (metadata `has_truth`). One split, `train`: the roles are cut from it by the user.
"""

_DIGEST_CHARS = 16


@dataclasses.dataclass
class CrowdImagesConfig(tfds.core.BuilderConfig):
    """The configuration of one crowd folder (make it with `from_folder`).

    Attributes:
        folder: the crowd folder.
        image_size: side of the stored square image, in pixels.
        digest: the folder's content digest (`crowd_folder.folder_digest`).
        class_names: the classes, in index order.
        annotators: the annotator axis.
        tasks: the tasks with answers.
        has_truth: whether the folder has truth.csv.
        truth_tasks: the tasks with a truth for at least one image.
    """

    folder: str = ""
    image_size: int = 224
    digest: str = ""
    class_names: tuple = ()
    annotators: tuple = ()
    tasks: tuple = ()
    has_truth: bool = False
    truth_tasks: tuple = ()

    @classmethod
    def from_folder(cls, folder, image_size=224):
        """Reads and checks ``folder`` (label errors raise here) and names the configuration
        ``folder_<digest>_<image_size>``."""
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
            raise ValueError(f"`image_size` must be an int. Received: image_size={image_size!r}")
        if image_size < 1:
            raise ValueError(f"`image_size` must be >= 1. Received: image_size={image_size}")
        folder = str(folder).rstrip("/")
        content = crowd_folder.read_crowd_folder(folder)
        digest = crowd_folder.folder_digest(folder)
        return cls(
            name=f"folder_{digest[:_DIGEST_CHARS]}_{int(image_size)}",
            description=f"The crowd folder {folder} at {image_size}x{image_size}.",
            folder=folder,
            image_size=int(image_size),
            digest=digest,
            class_names=content.class_names,
            annotators=content.annotators,
            tasks=content.tasks,
            has_truth=content.truth is not None,
            truth_tasks=content.truth_tasks,
        )


def _has_crowd_files(folder):
    names = [crowd_folder.LONG_FILE, *crowd_folder.WIDE_FILES.values()]
    return any(tf.io.gfile.exists(f"{str(folder).rstrip('/')}/{name}") for name in names)


@dataclasses.dataclass(frozen=True)
class CrowdImageRowProcessor:
    """Turns one row (an image and its answers, or the reason it is skipped) into an
    `Outcome`: the image decoded strictly, resized to ``image_size`` and stored as JPEG."""

    images_dir: str
    image_size: int

    def __call__(self, row):
        name = row["file_name"]
        if row.get("skip"):
            return _generation.skipped(name, row["skip"], row.get("detail", ""))
        notes = []
        image, outcome = _examples.decode_file(name, f"{self.images_dir}/{name}", notes)
        if outcome is not None:
            return outcome
        face, _ = _images.resize_face(image, self.image_size)
        features = {"image": _images.encode_jpeg(face), "file_name": name}
        features.update({key: row[key] for key in row if key.startswith(("crowd_", "true_"))})
        return _generation.example(name, features, notes)


class Builder(_generation.GenerationMixin, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder of a user's crowd folder (images and crowd answers)."""

    name = "crowd_images"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: one train split of the answered images."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Point the builder at your folder (docs/crowd-images.md):

    DIR/images/...                     the images (subfolders allowed)
    DIR/answers.csv                    long answers: image, annotator, expression/valence/arousal
      or DIR/answers_expression.csv, answers_valence.csv, answers_arousal.csv (wide: image,
         then one column per annotator)
    DIR/truth.csv                      optional known labels (evaluation only)
    DIR/classes.txt                    optional class names, one per line (default AffectNet's 8)

with `tfds.builder("crowd_images", manual_dir=DIR)` or
`tfds.builder("crowd_images", config=tfds_affectnet.CrowdImagesConfig.from_folder(DIR))`
(the features depend on the folder, so it is needed when the builder is made), or
`python -m affectnet_tf.train --dataset crowd_images --manual-dir DIR`.
"""

    def __init__(self, *, config=None, manual_dir=None, image_size=224, data_dir=None, **kwargs):
        if config is None or isinstance(config, str):
            folder = manual_dir
            if folder is None:
                default = f"{data_dir or tfds.core.constants.DATA_DIR}/downloads/manual"
                folder = default if _has_crowd_files(default) else None
            if folder is None:
                raise ValueError(
                    "crowd_images needs its folder when the builder is made (its features "
                    "depend on it): tfds.builder('crowd_images', manual_dir=DIR) or "
                    "config=CrowdImagesConfig.from_folder(DIR). Received: manual_dir=None"
                    + (f", config={config!r}" if config else "")
                )
            config = CrowdImagesConfig.from_folder(folder, image_size=image_size)
        super().__init__(config=config, data_dir=data_dir, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        crowd = (len(config.annotators),)
        size = config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"),
                    "file_name": tfds.features.Text(),
                    "crowd_expression": tfds.features.Tensor(shape=crowd, dtype=np.int64),
                    "crowd_valence": tfds.features.Tensor(shape=crowd, dtype=np.float32),
                    "crowd_arousal": tfds.features.Tensor(shape=crowd, dtype=np.float32),
                    "true_expression": tfds.features.Scalar(dtype=np.int64),
                    "true_valence": tfds.features.Scalar(dtype=np.float32),
                    "true_arousal": tfds.features.Scalar(dtype=np.float32),
                }
            ),
            supervised_keys=("image", "crowd_expression"),
            metadata=tfds.core.MetadataDict(
                folder=config.folder,
                digest=config.digest,
                class_names=list(config.class_names),
                annotators=list(config.annotators),
                tasks=list(config.tasks),
                has_truth=bool(config.has_truth),
                truth_tasks=list(config.truth_tasks),
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        """Checks that the folder is still the configuration's, then one ``train`` split."""
        config = self.builder_config
        try:
            manual = str(dl_manager.manual_dir)
        except AssertionError:  # TFDS: no manual folder there
            manual = None
        if manual and _has_crowd_files(manual) and manual.rstrip("/") != config.folder:
            if crowd_folder.folder_digest(manual) != config.digest:
                raise ValueError(
                    f"This builder was made for the crowd folder {config.folder} and the "
                    f"download config's manual_dir is another folder ({manual}): make the "
                    f"builder with tfds.builder('crowd_images', manual_dir={str(manual)!r})."
                )
        if crowd_folder.folder_digest(config.folder) != config.digest:
            raise ValueError(
                f"The crowd folder {config.folder} changed since the builder was made: "
                "make the builder again (its configuration names the content)."
            )
        content = crowd_folder.read_crowd_folder(config.folder)
        return {"train": self._generate_examples(rows=_rows(content), split="train")}

    def _generate_examples(self, rows, split):
        """Yields ``(file name, example)``; Beam transforms when a pipeline was asked for."""
        config = self.builder_config
        dataset = f"{self.name}/{config.name}"
        images_dir = f"{config.folder}/{crowd_folder.IMAGES_DIR}"
        process = CrowdImageRowProcessor(images_dir, config.image_size)
        if self._use_beam:
            return _generation.beam_generate(
                [[row] for row in rows], _identity, process, self.data_path, dataset, split
            )
        report = _generation.SplitReport(dataset, split, self.data_path)
        return _generation.generate(rows, process, report)


def _identity(items):
    return items


_NO_TRUTH = {"true_expression": -1, "true_valence": np.nan, "true_arousal": np.nan}


def _rows(content):
    """The rows of every image named anywhere: answered and present ones carry their answers
    and truth; the others carry why they are skipped (counted in the skip log)."""
    present = set(content.images)
    answered = set(content.answered)
    rows = []
    for name in sorted(present | set(content.answers)):
        if name not in present:
            rows.append(
                {
                    "file_name": name,
                    "skip": "answered image missing under images/",
                    "detail": f"{content.folder}/{crowd_folder.IMAGES_DIR}/{name}",
                }
            )
        elif name not in answered:
            rows.append({"file_name": name, "skip": "image without answers"})
        else:
            truth = (content.truth or {}).get(name, _NO_TRUTH)
            row = {"file_name": name, **content.answers[name]}
            row["true_expression"] = np.int64(truth["true_expression"])
            row["true_valence"] = np.float32(truth["true_valence"])
            row["true_arousal"] = np.float32(truth["true_arousal"])
            rows.append(row)
    return rows
