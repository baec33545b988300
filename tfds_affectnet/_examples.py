"""Row -> `Outcome` functions of the AffectNet and AffectNetC25 builders.

They are small picklable objects holding the config's settings, so the plain loop and Apache
Beam workers call exactly the same code. Labels are parsed before the image is read, so rows
that a config excludes cost no decoding.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tfds_affectnet import _generation, _images, labels, sources

__all__ = [
    "EMOTIONS8",
    "ALL11",
    "LABEL_SETS",
    "label_names",
    "parse_expression",
    "parse_va",
    "exclusion_reason",
    "read_bytes",
    "decode_file",
    "AffectNetRowProcessor",
    "C25RowProcessor",
    "crowd_features",
]

EMOTIONS8 = "emotions8"
ALL11 = "all11"
LABEL_SETS = (EMOTIONS8, ALL11)
BOX_COLUMNS = ("face_x", "face_y", "face_width", "face_height")
VA_TOLERANCE = 1e-3

MISSING_IMAGE = "missing image"
CORRUPT_IMAGE = "corrupt or truncated image"
CORRUPT_JPEG_DATA = "corrupt JPEG data mid-stream"
BAD_ANNOTATION = "bad annotation"
MISSING_ANNOTATION = "missing annotation file"
BAD_FACE_BOX = "face box empty or outside the image"
# Notes of kept examples (counted and listed in notes_<split>.tsv).
LANDMARKS_NAN = "landmarks unreadable, stored as NaN"
BOX_CLIPPED = "face box clipped to the image"
JPEG_NOT_CHECKED = _images.JPEG_NOT_CHECKED


def crowd_features(image_size, num_annotators, encoding_format="jpeg"):
    """The features of a crowd-labelled dataset (``affectnet_c25`` and ``synthetic_faces``).

    ``image``, ``file_name``, ``affectnet_index``, the raw answers (``crowd_expression``:
    ``num_annotators`` ints, -1 for no answer; ``crowd_valence`` / ``crowd_arousal``: floats,
    NaN for no answer) and AffectNet's own single label of the image.
    """
    import tensorflow_datasets as tfds

    crowd = (int(num_annotators),)
    image_shape = (image_size, image_size, 3)
    return {
        "image": tfds.features.Image(shape=image_shape, encoding_format=encoding_format),
        "file_name": tfds.features.Text(),
        "affectnet_index": tfds.features.Scalar(dtype=np.int64),
        "crowd_expression": tfds.features.Tensor(shape=crowd, dtype=np.int64),
        "crowd_valence": tfds.features.Tensor(shape=crowd, dtype=np.float32),
        "crowd_arousal": tfds.features.Tensor(shape=crowd, dtype=np.float32),
        "affectnet_expression": tfds.features.Scalar(dtype=np.int64),
        "affectnet_valence": tfds.features.Scalar(dtype=np.float32),
        "affectnet_arousal": tfds.features.Scalar(dtype=np.float32),
    }


def label_names(label_set):
    """The ClassLabel names of a label set, in AffectNet's canonical order."""
    if label_set == EMOTIONS8:
        return labels.EXPRESSION_NAMES
    if label_set == ALL11:
        return labels.ALL_CATEGORY_NAMES
    raise ValueError(f"`label_set` must be one of {LABEL_SETS}. Received: label_set={label_set!r}")


def parse_expression(value):
    """AffectNet's expression code 0..10 from a number or numeric string."""
    number = sources.parse_number(value)
    if not float(number).is_integer() or not 0 <= number <= max(labels.NON_LABEL_CODES):
        raise ValueError(f"expression code {value!r} is not an integer in 0..10")
    return int(number)


def parse_va(value, name):
    """Valence or arousal in -1..1, or AffectNet's -2 (not annotated)."""
    number = sources.parse_number(value)
    if number == labels.VA_MISSING:
        return float(number)
    if not np.isfinite(number) or abs(number) > 1.0 + VA_TOLERANCE:
        raise ValueError(f"{name} {value!r} is outside -1..1 and not -2")
    return float(np.clip(number, -1.0, 1.0))


def exclusion_reason(code, valence, arousal, label_set):
    """Why a row is not an example of the label set ('' when it is one)."""
    if label_set == EMOTIONS8:
        if code in labels.NON_LABEL_CODES:
            return f"expression {code} ({labels.ALL_CATEGORY_NAMES[code]})"
        if valence == labels.VA_MISSING or arousal == labels.VA_MISSING:
            return "valence/arousal -2 (not annotated)"
    return ""


def read_bytes(path):
    with tf.io.gfile.GFile(path, "rb") as handle:
        return handle.read()


def _parse_box(row):
    return tuple(float(row[column]) for column in BOX_COLUMNS)


def _nan_landmarks():
    return np.full((sources.NUM_LANDMARKS, 2), np.nan, np.float32)


def decode_file(name, path, notes):
    """(image, None) or (None, skipped Outcome); the decode's note goes into ``notes``.

    The whole image is decoded once, strictly (`_images.decode_source_image_checked`): a JPEG
    corrupt mid-stream is skipped as `CORRUPT_JPEG_DATA`, other undecodable files as
    `CORRUPT_IMAGE`.
    """
    try:
        data = read_bytes(path)
    except tf.errors.NotFoundError as error:
        return None, _generation.skipped(name, MISSING_IMAGE, error.message)
    try:
        decoded = _images.decode_source_image_checked(data)
    except _images.CorruptJpegDataError as error:
        return None, _generation.skipped(name, CORRUPT_JPEG_DATA, str(error))
    except _images.CorruptImageError as error:
        return None, _generation.skipped(name, CORRUPT_IMAGE, str(error))
    if decoded.note:
        notes.append(_generation.Note(decoded.note, decoded.detail))
    return decoded.image, None


def _box_text(box):
    return "(" + ", ".join(f"{float(value):g}" for value in box) + ")"


def _full_release_face(name, row, images_dir, crop_margin, image_size, landmarks, notes):
    """Face crop of a full-release row: (jpeg, landmarks, None) or (None, None, skipped).

    The box is bounded by the image: a clipped box adds a `BOX_CLIPPED` note to ``notes`` (with
    the box before and after); a box without area or overlap with the image is skipped as
    `BAD_FACE_BOX`.
    """
    image, failure = decode_file(name, f"{images_dir}/{row['file_name']}", notes)
    if failure is not None:
        return None, None, failure
    height, width = image.shape[:2]
    try:
        box = _parse_box(row)
        clipped, was_clipped = _images.clip_box(box, width, height)
        face, landmarks = _images.crop_face(image, clipped, crop_margin, image_size, landmarks)
    except ValueError as error:
        return None, None, _generation.skipped(name, BAD_FACE_BOX, str(error))
    if was_clipped:
        detail = f"{_box_text(box)} clipped to {_box_text(clipped)} in the {width}x{height} image"
        notes.append(_generation.Note(BOX_CLIPPED, detail))
    return _images.encode_jpeg(face), landmarks, None


@dataclasses.dataclass(frozen=True)
class AffectNetRowProcessor:
    """Turns one row of either release into an `Outcome` for the ``affectnet`` builder.

    Attributes:
        release: `sources.FULL` or `sources.EIGHT_LABEL`.
        label_set: "emotions8" or "all11".
        image_size: side of the stored image.
        crop_margin: fraction of the face box added on every side (full release).
        images_dir: ``Manually_Annotated_Images`` (full release) or ``<split>_set/images``.
        annotations_dir: ``<split>_set/annotations`` (8-label release).
    """

    release: str
    label_set: str
    image_size: int
    crop_margin: float
    images_dir: str
    annotations_dir: str = ""

    def __call__(self, row):
        if self.release == sources.FULL:
            return self._full(row)
        return self._eight_label(row)

    def _labels(self, name, expression, valence, arousal):
        """((code, valence, arousal), None) or (None, excluded / skipped Outcome)."""
        try:
            code = parse_expression(expression)
            valence = parse_va(valence, "valence")
            arousal = parse_va(arousal, "arousal")
        except ValueError as error:
            return None, _generation.skipped(name, BAD_ANNOTATION, str(error))
        reason = exclusion_reason(code, valence, arousal, self.label_set)
        if reason:
            return None, _generation.excluded(name, reason)
        return (code, valence, arousal), None

    def _example(self, name, jpeg, label_values, landmarks, notes):
        code, valence, arousal = label_values
        return _generation.example(
            name,
            {
                "image": jpeg,
                "expression": code,
                "valence": np.float32(valence),
                "arousal": np.float32(arousal),
                "landmarks": landmarks,
                "file_name": name,
            },
            notes,
        )

    def _full(self, row):
        name = row["file_name"]
        label_values, outcome = self._labels(
            name, row["expression"], row["valence"], row["arousal"]
        )
        if outcome is not None:
            return outcome
        try:
            _parse_box(row)
        except ValueError as error:
            return _generation.skipped(name, BAD_ANNOTATION, f"face box: {error}")
        notes = []
        try:
            landmarks = sources.parse_landmarks(row["facial_landmarks"])
        except ValueError:
            landmarks = None
            notes.append(_generation.Note(LANDMARKS_NAN))
        jpeg, landmarks, outcome = _full_release_face(
            name, row, self.images_dir, self.crop_margin, self.image_size, landmarks, notes
        )
        if outcome is not None:
            return outcome
        if landmarks is None:
            landmarks = _nan_landmarks()
        return self._example(name, jpeg, label_values, landmarks, notes)

    def _eight_label(self, row):
        name = row["file_name"]
        paths = sources.eight_label_annotation_paths(self.annotations_dir, name)
        try:
            values = [sources.load_npy(paths[suffix]) for suffix in ("exp", "val", "aro")]
        except tf.errors.NotFoundError as error:
            return _generation.skipped(name, MISSING_ANNOTATION, error.message)
        except ValueError as error:
            return _generation.skipped(name, BAD_ANNOTATION, str(error))
        label_values, outcome = self._labels(name, *values)
        if outcome is not None:
            return outcome
        notes = []
        try:
            landmarks = sources.parse_landmarks(sources.load_npy(paths["lnd"]))
        except (tf.errors.NotFoundError, ValueError):
            landmarks = None
            notes.append(_generation.Note(LANDMARKS_NAN))
        image, outcome = decode_file(name, f"{self.images_dir}/{name}", notes)
        if outcome is not None:
            return outcome
        face, landmarks = _images.resize_face(image, self.image_size, landmarks)
        if landmarks is None:
            landmarks = _nan_landmarks()
        return self._example(name, _images.encode_jpeg(face), label_values, landmarks, notes)


@dataclasses.dataclass(frozen=True)
class C25RowProcessor:
    """Turns one joined AffectNetC25 row into an `Outcome` for the ``affectnet_c25`` builder.

    A row holds the crowd answers (`sources.read_c25_set`), "training" (its row of
    training.csv) or "missing" (why the image is not available, for subset builds).
    """

    images_dir: str
    image_size: int
    crop_margin: float

    def __call__(self, row):
        name = row["file_name"]
        if row.get("missing"):
            return _generation.skipped(name, row["missing"], row.get("missing_detail", ""))
        training = row["training"]
        try:
            code = parse_expression(training["expression"])
            valence = parse_va(training["valence"], "valence")
            arousal = parse_va(training["arousal"], "arousal")
            _parse_box(training)
        except ValueError as error:
            return _generation.skipped(name, f"{BAD_ANNOTATION} in training.csv", str(error))
        notes = []
        jpeg, _, outcome = _full_release_face(
            name, training, self.images_dir, self.crop_margin, self.image_size, None, notes
        )
        if outcome is not None:
            return outcome
        return _generation.example(
            name,
            {
                "image": jpeg,
                "file_name": name,
                "affectnet_index": np.int64(row["affectnet_index"]),
                "crowd_expression": row["crowd_expression"],
                "crowd_valence": row["crowd_valence"],
                "crowd_arousal": row["crowd_arousal"],
                "affectnet_expression": np.int64(code),
                "affectnet_valence": np.float32(valence),
                "affectnet_arousal": np.float32(arousal),
            },
            notes,
        )
