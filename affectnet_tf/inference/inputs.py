"""Prediction over the inputs of ``python -m affectnet_tf.predict``: images, folders (walked
in name order) and videos (their sampled frames streamed), one record per face of every used
frame (:mod:`affectnet_tf.inference.predictor`).

A progress bar (:func:`affectnet_tf.progress.progress`) counts the files, and another the frames
of each video of at least ``progress_min_frames`` frames. Inputs that are missing, of another
type or unreadable become a record with an ``error`` key and are returned as problems
(:func:`log_problems` reports them).

For example:

```python
from affectnet_tf.inference.inputs import predict_inputs
from affectnet_tf.inference.predictor import Predictor, load_run_model

records = []
summaries, problems = predict_inputs(
    Predictor(load_run_model("runs/exp")), ["photos/", "talk.mp4"], records.append
)
```
"""

import logging
import os

from affectnet_tf.data.images import load_image_file
from affectnet_tf.inference import video as video_module
from affectnet_tf.inference.outputs import Annotator, ClipSummary, draw_records
from affectnet_tf.inference.predictor import empty_record
from affectnet_tf.progress import progress

__all__ = [
    "IMAGE_EXTENSIONS",
    "input_kind",
    "expand_inputs",
    "predict_inputs",
    "predict_image",
    "predict_video",
    "log_problems",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_PROBLEMS_SHOWN = 10


def input_kind(path):
    """``"image"``, ``"video"`` or ``"unknown"``, by the file name's extension."""
    lower = os.fspath(path).lower()
    if lower.endswith(IMAGE_EXTENSIONS):
        return "image"
    if lower.endswith(video_module.VIDEO_EXTENSIONS):
        return "video"
    return "unknown"


def expand_inputs(inputs):
    """``[(path, kind)]`` with kind ``image``, ``video`` or ``unknown``; folders are walked in
    name order (files of other types in a folder are left out)."""
    result = []
    for item in inputs:
        path = os.fspath(item)
        if not os.path.isdir(path):
            result.append((path, input_kind(path)))
            continue
        for folder, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                kind = input_kind(name)
                if kind != "unknown":
                    result.append((os.path.join(folder, name), kind))
    return result


def predict_image(predictor, path, emit, annotator=None):
    """Emits the records of one image file (one with an ``error`` when it cannot be read)."""
    try:
        image = load_image_file(path)
    except ValueError as error:
        emit(empty_record(path, 0, error))
        return
    faces = predictor.cropper.process([image])[0]
    records = predictor.records(path, 0, faces)
    for record in records:
        emit(record)
    if annotator is not None:
        annotator.write_image(path, image, records)


def _annotated_fps(sampler, stats):
    """The frame rate of an annotated video: the source's, divided as the sampler thins it."""
    fps = stats.fps or 25.0
    if sampler.every_n:
        return max(1.0, fps / sampler.every_n)
    if sampler.fps:
        return max(1.0, min(fps, sampler.fps))
    return fps


def _frame_bar(path, progress_min_frames):
    """A progress bar over the frames of a video of at least ``progress_min_frames`` frames
    (None for a shorter video, or when ``progress_min_frames`` is None)."""
    if progress_min_frames is None:
        return None
    frame_count = video_module.video_properties(path)[0]
    if frame_count < progress_min_frames:
        return None
    return progress(total=frame_count, desc=os.path.basename(path), unit="frame")


class _VideoAnnotation:
    """The annotated copy of one video, opened at its first frame."""

    def __init__(self, annotator, path, sampler, stats):
        self.annotator, self.path, self.sampler, self.stats = annotator, path, sampler, stats
        self.writer = None

    def add(self, frame, records):
        image = draw_records(frame, records)
        if self.writer is None:
            height, width = image.shape[:2]
            fps = _annotated_fps(self.sampler, self.stats)
            self.writer = self.annotator.video_writer(self.path, fps, width, height)
        self.writer.write(image)

    def close(self):
        if self.writer is not None:
            self.writer.release()


def predict_video(
    predictor, path, emit, sampler, cache=None, annotator=None, progress_min_frames=250
):
    """Emits the records of every sampled frame of a video.

    Returns:
        The clip summary (:class:`~affectnet_tf.inference.outputs.ClipSummary`'s dict with
        ``frames_read`` and ``frames_detected``), or None for an unreadable video (one record
        with an ``error`` emitted).
    """
    stats = video_module.VideoStats(name=path)
    summary = ClipSummary(path, predictor.class_names)
    annotation = _VideoAnnotation(annotator, path, sampler, stats) if annotator else None
    bar = None
    try:
        bar = _frame_bar(path, progress_min_frames)
        for frame_faces in video_module.iter_video_faces(
            path, predictor.cropper, sampler, cache, stats, keep_frames=annotator is not None
        ):
            records = predictor.records(path, frame_faces.index, frame_faces.faces)
            for record in records:
                emit(record)
            summary.add_frame(records)
            if annotation is not None:
                annotation.add(frame_faces.frame, records)
            if bar is not None:
                bar.update(stats.frames_read - bar.n)
    except video_module.UnreadableVideoError as error:
        emit(empty_record(path, 0, error))
        return None
    finally:
        if annotation is not None:
            annotation.close()
        if bar is not None:
            bar.close()
    logger.debug("%s: %d frames read, %d detected", path, stats.frames_read, stats.frames_detected)
    return dict(
        summary.as_dict(), frames_read=stats.frames_read, frames_detected=stats.frames_detected
    )


def _not_a_media_file():
    return (
        f"not an image ({', '.join(IMAGE_EXTENSIONS)}) or video "
        f"({', '.join(video_module.VIDEO_EXTENSIONS)}) file name"
    )


def predict_inputs(
    predictor,
    inputs,
    emit,
    sampler=None,
    cache=None,
    annotate_dir=None,
    progress_min_frames=250,
):
    """Runs ``predictor`` on images, folders and videos, calling ``emit(record)`` per record.

    Args:
        predictor: a :class:`~affectnet_tf.inference.predictor.Predictor`.
        inputs: paths of images, folders and videos.
        emit: called with each record, in input order.
        sampler: a :class:`~affectnet_tf.inference.video.FrameSampler` (default: every frame).
        cache: a :class:`~affectnet_tf.inference.video.BoxCache`, or None.
        annotate_dir: folder for annotated copies
            (:class:`~affectnet_tf.inference.outputs.Annotator`), or None.
        progress_min_frames: videos of at least this many frames get a progress bar over
            their frames (None: never).

    Returns:
        ``(clip_summaries, problems)``: one summary dict per video read, and
        ``[(path, reason)]`` of inputs that were not found, not an image or video, or unreadable.
    """
    sampler = sampler or video_module.FrameSampler()
    annotator = Annotator(annotate_dir) if annotate_dir else None
    summaries, problems = [], []

    def emit_checked(record):
        if record.get("error"):
            problems.append((record["source"], record["error"]))
        emit(record)

    expanded = expand_inputs(inputs)
    for path, kind in progress(expanded, desc="predicting", unit="file"):
        if not os.path.exists(path):
            emit_checked(empty_record(path, 0, f"input not found: {path}"))
        elif kind == "image":
            predict_image(predictor, path, emit_checked, annotator)
        elif kind == "video":
            summary = predict_video(
                predictor, path, emit_checked, sampler, cache, annotator, progress_min_frames
            )
            if summary is not None:
                summaries.append(summary)
        else:
            emit_checked(empty_record(path, 0, _not_a_media_file()))
    return summaries, problems


def log_problems(problems):
    """Logs a warning naming the inputs that could not be read (the first ten)."""
    if not problems:
        return
    names = ", ".join(path for path, _ in problems[:_PROBLEMS_SHOWN])
    more = len(problems) - _PROBLEMS_SHOWN
    logger.warning(
        "%d inputs could not be read (records with an 'error' key): %s%s",
        len(problems),
        names,
        f" and {more} more" if more > 0 else "",
    )
