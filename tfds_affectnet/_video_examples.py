"""What the video builders (``afew``, ``vgaf``) share: the config, the features, clip -> example.

Each clip becomes one example: its name, its label, ``has_face`` and ``num_frames`` (frames
sampled), and the sequence ``faces`` of face crops with their frame index, box (x, y, width,
height in the original frame) and MTCNN score. A clip where no face was found is kept with an
empty sequence and ``has_face=False``, and counted (with its name) in ``faces_<split>.json``; an
unreadable video is skipped, counted and listed in ``skipped_<split>.tsv``
(`_generation.SplitReport`). Boxes go into a per-video cache (`video_frames.BoxCache`), so a rebuild
with another crop size detects nothing.

Generation is plain (no Apache Beam path): MTCNN runs on TensorFlow in the builder's process, one
clip at a time, its frames in batches.
"""

import dataclasses
import json
import os
import sys

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tqdm.auto import tqdm

from tfds_affectnet import _generation, _images, face_crops, video_frames

__all__ = [
    "NO_FACE",
    "UNREADABLE_VIDEO",
    "NOT_A_VIDEO",
    "VideoFacesConfig",
    "ClipProcessor",
    "clip_feature_spec",
    "frame_bar",
    "generate_clips",
    "list_videos",
]

NO_FACE = "no face found in any sampled frame"
UNREADABLE_VIDEO = "unreadable video"
NOT_A_VIDEO = "not a video file"
NO_CACHE = "none"


@dataclasses.dataclass
class VideoFacesConfig(tfds.core.BuilderConfig):
    """Settings of a video builder.

    Attributes:
        crop_size: side of the stored face crops, in pixels.
        every_n: use every n-th frame (exclusive with ``fps``).
        fps: use about this many frames per second (exclusive with ``every_n``).
        working_size: MTCNN runs as on frames downscaled to this longer side (its pyramid starts
            there; boxes in full-frame pixels; 0: full size, plain MTCNN).
        min_face_size: smallest face side MTCNN looks for, in working-frame pixels.
        thresholds: MTCNN's PNet / RNet / ONet thresholds.
        margin: fraction of the box added on every side of the square crop.
        align: similarity-align the five landmarks instead of a square crop.
        box_cache_dir: folder of the per-video box cache; "" (default):
            ``<download_dir>/face_boxes/<dataset>``; "none": no cache.
    """

    crop_size: int = 112
    every_n: int | None = None
    fps: float | None = None
    # The detector's defaults are FaceCropper's.
    working_size: int = face_crops.FaceCropper.working_size
    min_face_size: int = face_crops.FaceCropper.min_face_size
    thresholds: tuple[float, float, float] = face_crops.FaceCropper.thresholds
    margin: float = face_crops.FaceCropper.margin
    align: bool = False
    box_cache_dir: str = ""

    def __post_init__(self):
        if isinstance(self.crop_size, bool) or not isinstance(self.crop_size, (int, np.integer)):
            raise ValueError(f"`crop_size` must be an int. Received: crop_size={self.crop_size!r}")
        self.sampler()  # validates every_n / fps
        self.cropper("largest")  # validates the detector settings

    def sampler(self):
        return video_frames.FrameSampler(every_n=self.every_n, fps=self.fps)

    def cropper(self, mode):
        return face_crops.FaceCropper(
            working_size=self.working_size,
            min_face_size=self.min_face_size,
            thresholds=tuple(self.thresholds),
            margin=self.margin,
            crop_size=self.crop_size,
            align=self.align,
            mode=mode,
        )


def clip_feature_spec(class_names, crop_size):
    """The FeaturesDict of a video builder."""
    return tfds.features.FeaturesDict(
        {
            "clip_name": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=list(class_names)),
            "has_face": tfds.features.Scalar(dtype=np.bool_),
            "num_frames": tfds.features.Scalar(dtype=np.int32),
            "faces": tfds.features.Sequence(
                {
                    "image": tfds.features.Image(
                        shape=(crop_size, crop_size, 3), encoding_format="jpeg"
                    ),
                    "frame": tfds.features.Scalar(dtype=np.int32),
                    "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                    "score": tfds.features.Scalar(dtype=np.float32),
                }
            ),
        }
    )


def list_videos(folder):
    """``(videos, others)``: sorted video paths (by extension) and the other files of a folder."""
    videos, others = [], []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or name.startswith("."):
            continue
        (videos if name.lower().endswith(video_frames.VIDEO_EXTENSIONS) else others).append(path)
    return videos, others


def frame_bar(name):
    """A progress bar over the frames of one clip (``tqdm`` on the standard error, its total
    set once the video is open, gone when done), shown only when the standard error is a
    terminal: TFDS's own bar counts the clips, this one the minutes inside a long clip."""
    return tqdm(
        desc=name, unit="frame", leave=False, disable=None, file=sys.stderr, dynamic_ncols=True
    )


def _advance(bar, stats):
    """Moves ``bar`` to the frames read so far (and sets its total from the container)."""
    if bar.total is None and stats.frame_count:
        bar.total = stats.frame_count
    bar.update(stats.frames_read - bar.n)


@dataclasses.dataclass
class ClipProcessor:
    """Turns one row ``{"file_name", "path", "label"}`` into an `_generation.Outcome`.

    Attributes:
        cropper: the `FaceCropper` (mode "largest" or "all").
        sampler: the `FrameSampler`.
        cache: a `BoxCache` or None.
        face_report: the split's `video_frames.FaceReport` (filled as clips are processed).
    """

    cropper: face_crops.FaceCropper
    sampler: video_frames.FrameSampler
    cache: video_frames.BoxCache | None
    face_report: video_frames.FaceReport

    def __call__(self, row):
        name = row["file_name"]
        stats = video_frames.VideoStats(name=name)
        images, frames, boxes, scores = [], [], [], []
        bar = frame_bar(name)
        try:
            for frame_faces in video_frames.iter_video_faces(
                row["path"], self.cropper, self.sampler, self.cache, stats
            ):
                faces = frame_faces.faces
                for i in range(len(faces)):
                    images.append(_images.encode_jpeg(faces.crops[i]))
                    frames.append(frame_faces.index)
                    boxes.append(faces.boxes[i])
                    scores.append(faces.scores[i])
                _advance(bar, stats)
        except video_frames.UnreadableVideoError as error:
            self.face_report.add_unreadable(name, error)
            return _generation.skipped(name, UNREADABLE_VIDEO, str(error))
        finally:
            bar.close()
        self.face_report.add(stats)
        example = {
            "clip_name": name,
            "label": row["label"],
            "has_face": bool(images),
            "num_frames": np.int32(stats.frames_sampled),
            "faces": {
                "image": images,
                "frame": np.asarray(frames, np.int32),
                "box": np.asarray(boxes, np.float32).reshape(-1, 4),
                "score": np.asarray(scores, np.float32),
            },
        }
        return _generation.example(name, example, "" if images else NO_FACE)


def cache_for(config, dl_manager, dataset):
    """The `BoxCache` of a config (None when ``box_cache_dir="none"``)."""
    folder = config.box_cache_dir
    if folder and folder.lower() == NO_CACHE:
        return None
    if not folder:
        download_dir = getattr(dl_manager, "download_dir", None)
        if download_dir is None:
            return None
        folder = os.path.join(os.fspath(download_dir), "face_boxes", dataset)
    return video_frames.BoxCache(folder)


def generate_clips(builder, split, mode, rows, cache, extra_outcomes=()):
    """Plain generation of a video builder's clips (``mode``: ``"largest"`` or ``"all"`` faces);
    writes the skip log, report and ``faces_<split>.json``."""
    config = builder.builder_config
    processor = ClipProcessor(
        config.cropper(mode), config.sampler(), cache, video_frames.FaceReport()
    )
    report = _generation.SplitReport(f"{builder.name}/{config.name}", split, builder.data_path)
    completed = False
    try:
        yield from _generation.generate(rows, processor, report, extra_outcomes, threads=1)
        completed = True
    finally:
        faces = processor.face_report
        path = report.log_dir / f"faces_{report.split}.json"
        report.log_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(faces.as_dict(), indent=2) + "\n")
        summary = f"{report.dataset} split '{report.split}' faces: {faces.summary()}"
        if not completed:
            summary += " (generation stopped early)"
        logging.info("%s", summary)
        print(summary, flush=True)
