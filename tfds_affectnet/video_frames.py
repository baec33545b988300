"""Videos as streams of sampled RGB frames, faces per frame, and a per-video box cache.

A video is read frame by frame with OpenCV (``cv2.VideoCapture``; never the whole video in
memory); frames that are not sampled are only grabbed, not decoded into arrays. Sampled frames
are converted BGR -> RGB, collected into batches of the cropper's ``batch_size``, detected (or
looked up in the box cache) and cropped, and yielded one `FrameFaces` at a time.

The box cache holds one ``.npz`` file per video and detector settings (named by a hash of the
video's absolute path, size, modification time and `FaceCropper.settings`): every face MTCNN found
on each detected frame, whatever the cropper's mode. A second pass over the video (another crop
size, the other mode, a builder rerun) detects nothing; frames not yet in the cache are detected
and added.

Problems are reported, never raised in the middle of a dataset: `UnreadableVideoError` for a video
OpenCV cannot open or decode a single frame of (the caller counts it), and `VideoStats` of each
video (frames read, sampled, detected, without a face). `FaceReport` gathers them over many videos
with names.
"""

import dataclasses
import hashlib
import json
import os
from typing import NamedTuple

import cv2
import numpy as np
from absl import logging

from tfds_affectnet import face_crops

__all__ = [
    "VIDEO_EXTENSIONS",
    "UnreadableVideoError",
    "FrameSampler",
    "VideoStats",
    "FrameFaces",
    "BoxCache",
    "video_properties",
    "iter_frames",
    "iter_video_faces",
    "FaceReport",
]

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv")
_CACHE_FORMAT = 1


class UnreadableVideoError(ValueError):
    """A video that OpenCV cannot open, or that yields no frame at all."""


@dataclasses.dataclass(frozen=True)
class FrameSampler:
    """Which frames of a video are used: every ``every_n``-th, or about ``fps`` per second.

    With ``fps``, frame ``i`` is kept when ``floor(i * fps / video_fps)`` increases (the first
    frame of each 1/fps interval); a video whose rate OpenCV cannot tell keeps every frame
    (counted in `VideoStats.unknown_fps`). Neither set: every frame.
    """

    every_n: int | None = None
    fps: float | None = None

    def __post_init__(self):
        if self.every_n is not None and self.fps is not None:
            raise ValueError(
                "Give `every_n` or `fps`, not both. "
                f"Received: every_n={self.every_n}, fps={self.fps}"
            )
        if self.every_n is not None and int(self.every_n) < 1:
            raise ValueError(f"`every_n` must be >= 1. Received: every_n={self.every_n}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"`fps` must be > 0. Received: fps={self.fps}")

    def keep(self, index, video_fps):
        if self.every_n:
            return index % int(self.every_n) == 0
        if self.fps and video_fps and video_fps > 0:
            ratio = float(self.fps) / float(video_fps)
            if ratio >= 1.0:
                return True
            return index == 0 or int(np.floor(index * ratio)) > int(np.floor((index - 1) * ratio))
        return True

    def describe(self):
        if self.every_n:
            return f"every {self.every_n} frame(s)"
        if self.fps:
            return f"{self.fps} frame(s) per second"
        return "every frame"


@dataclasses.dataclass
class VideoStats:
    """What happened to one video."""

    name: str = ""
    frames_read: int = 0
    frames_sampled: int = 0
    frames_detected: int = 0  # MTCNN ran on them (the others came from the cache)
    frames_without_face: int = 0
    faces: int = 0
    frame_count: int = 0  # what the container claims (0: unknown)
    fps: float = 0.0
    width: int = 0
    height: int = 0
    unknown_fps: bool = False

    @property
    def truncated(self):
        """Fewer frames decoded than the container announced (a cut or damaged file)."""
        return bool(self.frame_count) and self.frames_read < self.frame_count


class FrameFaces(NamedTuple):
    """The faces of one sampled frame (``index`` counts every frame of the video from 0)."""

    index: int
    faces: face_crops.Faces
    frame: np.ndarray | None = None


def _open(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UnreadableVideoError(f"Video file not found: {path}")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        capture.release()
        raise UnreadableVideoError(f"OpenCV cannot open the video {path} (corrupt or unsupported)")
    return capture


def video_properties(path):
    """``(frame_count, fps, width, height)`` as the container states them (0 when unknown)."""
    capture = _open(path)
    try:
        return (
            max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))),
            max(0.0, float(capture.get(cv2.CAP_PROP_FPS))),
            int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
    finally:
        capture.release()


def iter_frames(path, sampler=None, stats=None):
    """Streams ``(index, rgb_frame)`` of the sampled frames of a video.

    Raises:
        UnreadableVideoError: the file is missing, cannot be opened, or yields no frame (raised
            before anything is yielded).
    """
    sampler = sampler or FrameSampler()
    stats = stats if stats is not None else VideoStats()
    stats.name = stats.name or os.path.basename(os.fspath(path))
    capture = _open(path)
    try:
        stats.frame_count = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        stats.fps = max(0.0, float(capture.get(cv2.CAP_PROP_FPS)))
        stats.unknown_fps = sampler.fps is not None and not stats.fps
        index = 0
        while True:
            if not capture.grab():
                break
            stats.frames_read += 1
            if sampler.keep(index, stats.fps):
                ok, frame = capture.retrieve()
                if not ok or frame is None or frame.ndim != 3:
                    break
                stats.frames_sampled += 1
                stats.height, stats.width = frame.shape[:2]
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()
    if stats.frames_read == 0:
        raise UnreadableVideoError(f"No frame could be decoded from the video {path}")


class BoxCache:
    """Every face found per detected frame of a video, in ``<cache_dir>/<hash>.npz``.

    Args:
        cache_dir: folder of the cache files (created on first write).
    """

    def __init__(self, cache_dir):
        self.cache_dir = os.fspath(cache_dir)

    def path(self, video_path, settings):
        video_path = os.path.abspath(os.fspath(video_path))
        stat = os.stat(video_path)
        identity = json.dumps(
            [_CACHE_FORMAT, video_path, stat.st_size, stat.st_mtime_ns, settings], sort_keys=True
        )
        digest = hashlib.sha1(identity.encode("utf-8")).hexdigest()[:20]
        stem = os.path.splitext(os.path.basename(video_path))[0]
        return os.path.join(self.cache_dir, f"{stem}.{digest}.npz")

    def load(self, video_path, settings):
        """``{frame index: Detections}`` (empty when nothing is cached or the file is damaged)."""
        path = self.path(video_path, settings)
        if not os.path.exists(path):
            return {}
        try:
            with np.load(path) as data:
                frames, counts = data["frames"], data["counts"]
                boxes, scores, landmarks = data["boxes"], data["scores"], data["landmarks"]
        except (OSError, ValueError, KeyError) as error:
            logging.warning("Ignoring the damaged box cache %s: %s", path, error)
            return {}
        result = {}
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        for frame, start, end in zip(frames.tolist(), offsets[:-1], offsets[1:]):
            result[int(frame)] = face_crops.Detections(
                boxes[start:end], scores[start:end], landmarks[start:end]
            )
        return result

    def save(self, video_path, settings, detections):
        """Writes ``{frame index: Detections}`` atomically (a temporary file renamed)."""
        os.makedirs(self.cache_dir, exist_ok=True)
        path = self.path(video_path, settings)
        frames = sorted(detections)
        found = [detections[f] for f in frames]
        empty = face_crops.empty_detections()
        temporary = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(
            temporary,
            frames=np.asarray(frames, np.int64),
            counts=np.asarray([len(d) for d in found], np.int64),
            boxes=np.concatenate([d.boxes for d in found] or [empty.boxes]).astype(np.float32),
            scores=np.concatenate([d.scores for d in found] or [empty.scores]).astype(np.float32),
            landmarks=np.concatenate([d.landmarks for d in found] or [empty.landmarks]).astype(
                np.float32
            ),
        )
        os.replace(temporary, path)
        return path


def iter_video_faces(
    path, cropper, sampler=None, cache=None, stats=None, keep_frames=False, crop=True
):
    """Streams the faces of a video's sampled frames, detected in batches or read from a cache.

    Args:
        path: the video file.
        cropper: a `FaceCropper` (its ``batch_size`` frames are detected together).
        sampler: a `FrameSampler` (default: every frame).
        cache: a `BoxCache`, or None.
        stats: a `VideoStats` filled while iterating (read it after the loop).
        keep_frames: also yield the RGB frame (to draw on it).
        crop: cut the crops (False: empty crops, detections only).

    Yields:
        `FrameFaces` in frame order; a frame without a face has empty arrays.

    Raises:
        UnreadableVideoError: see `iter_frames` (raised before anything is yielded when the file
            cannot be opened; a video that opens but has no decodable frame raises at the end).
    """
    stats = stats if stats is not None else VideoStats()
    settings = cropper.settings()
    cached = cache.load(path, settings) if cache is not None else {}
    added = False
    batch = []

    def flush():
        nonlocal added
        todo = [i for i, (index, _) in enumerate(batch) if index not in cached]
        if todo:
            found = cropper.detect([batch[i][1] for i in todo], apply_mode=False)
            for i, detections in zip(todo, found):
                cached[batch[i][0]] = detections
            stats.frames_detected += len(todo)
            added = True
        for index, frame in batch:
            detections = cropper.select(cached[index])
            if crop:
                faces = cropper.process([frame], [detections])[0]
            else:
                size = int(cropper.crop_size)
                faces = face_crops.Faces(*detections, np.zeros((0, size, size, 3), np.uint8))
            stats.faces += len(faces)
            stats.frames_without_face += len(faces) == 0
            yield FrameFaces(index, faces, frame if keep_frames else None)
        batch.clear()

    try:
        for index, frame in iter_frames(path, sampler, stats):
            batch.append((index, frame))
            if len(batch) >= int(cropper.batch_size):
                yield from flush()
        yield from flush()
    finally:
        if cache is not None and added:
            cache.save(path, settings, cached)


class FaceReport:
    """Counts, with names, over many videos: unreadable ones, those without any face, and frames
    without a face."""

    def __init__(self):
        self.videos = 0
        self.unreadable = []  # (name, reason)
        self.without_face = []
        self.truncated = []
        self.frames_sampled = 0
        self.frames_without_face = 0
        self.frames_detected = 0

    def add(self, stats):
        self.videos += 1
        self.frames_sampled += stats.frames_sampled
        self.frames_without_face += stats.frames_without_face
        self.frames_detected += stats.frames_detected
        if stats.faces == 0:
            self.without_face.append(stats.name)
        if stats.truncated:
            self.truncated.append(stats.name)

    def add_unreadable(self, name, reason):
        self.videos += 1
        self.unreadable.append((name, str(reason)))

    def as_dict(self):
        return {
            "videos": self.videos,
            "unreadable_videos": len(self.unreadable),
            "unreadable": [{"name": n, "reason": r} for n, r in self.unreadable],
            "videos_without_face": len(self.without_face),
            "without_face": list(self.without_face),
            "truncated_videos": list(self.truncated),
            "frames_sampled": self.frames_sampled,
            "frames_without_face": self.frames_without_face,
            "frames_detected": self.frames_detected,
        }

    def summary(self):
        def names(items):
            shown = ", ".join(items[:10])
            return shown + (f" and {len(items) - 10} more" if len(items) > 10 else "")

        lines = [
            f"{self.videos} videos, {self.frames_sampled} frames sampled, "
            f"{self.frames_without_face} frames without a face, "
            f"{self.frames_detected} frames detected (the others from the box cache)."
        ]
        if self.unreadable:
            lines.append(
                f"  unreadable videos: {len(self.unreadable)}: "
                + names([n for n, _ in self.unreadable])
            )
        if self.without_face:
            lines.append(
                f"  videos without any face: {len(self.without_face)}: {names(self.without_face)}"
            )
        if self.truncated:
            lines.append(
                f"  videos shorter than their header says: {len(self.truncated)}: "
                f"{names(self.truncated)}"
            )
        return "\n".join(lines)
