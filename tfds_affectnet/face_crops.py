"""The MTCNN face-crop stage: detection, square or aligned crops, in batches.

It lives in ``tfds_affectnet`` because the video builders (``afew``, ``vgaf``) need it and this
package never imports ``affectnet_tf``; ``affectnet_tf.inference.faces`` re-exports it for prediction.

Frames are RGB ``uint8`` arrays ``(height, width, 3)`` (a BGR frame from OpenCV must be converted
first, or passed with ``channel_order="bgr"``: MTCNN on BGR input loses much of its recall).

Detection runs mtcnn 1.0's three stages itself (``MTCNN().stages``, weights from the wheel):

* the working size: plain MTCNN resizes each frame to a pyramid of scales (factor 0.709),
  starting from the largest (the frame times ``12 / min_face_size``), and the finest levels,
  the largest images, take most of its time. A frame downscaled to ``working_size`` by a power
  of 0.709 would have exactly the levels from that power down; PNet runs on those levels only,
  each resized straight from the full frame (one resize, not two), so what it sees there is
  exactly what plain MTCNN sees at the same level;
* PNet runs on up to ``batch_size`` frames of one shape stacked into one batch;
* RNet and ONet (24x24 and 48x48 patches, cheap) refine the proposals on the full frames.

Boxes are in full-frame pixels throughout. With ``working_size=None`` this is plain
``MTCNN().detect_faces``, box for box; with a working size the only difference is the skipped
levels: faces smaller than ``min_face_size / working_scale`` full-frame pixels are not looked
for, and a face near that size can end up with a slightly different box (see
``benchmarks/bench_faces.py``).

Crops are cut from the original frame: a square around the box with a margin
(``tfds_affectnet._images.crop_face``, the path the AffectNet builders crop with), or, with
``align=True``, a similarity transform of the five landmarks onto the canonical positions of the
112x112 ArcFace template.

mtcnn 1.0 notes (checked on its source): ``detect_faces`` on a batch of images of different
shapes pads them and shifts the boxes back by the padding of the wrong image when one image has
no face (``fix_bboxes_offsets`` zips the unique image ids with every image's padding), so only
frames of one shape are batched here; a stage with no proposal left raises
``InvalidArgumentError``, which means "no face".
"""

import dataclasses
from typing import NamedTuple

import cv2
import numpy as np

from tfds_affectnet import _images

__all__ = [
    "MODES",
    "LARGEST",
    "ALL",
    "LANDMARK_NAMES",
    "CANONICAL_LANDMARKS_112",
    "Detections",
    "Faces",
    "FaceCropper",
    "similarity_transform",
    "box_iou",
    "empty_detections",
]

LARGEST = "largest"
ALL = "all"
MODES = (LARGEST, ALL)
# Frames are stacked as float32 for MTCNN: at most this many values (177 MB) at once, i.e.
# `batch_size` frames up to 1280x720 and 7 of 1920x1080.
_BATCH_VALUES = 16 * 1280 * 720 * 3
# Order of the five points of mtcnn 1.0 (columns 6-10 hold x, 11-15 y). "left" is the left of
# the image, i.e. the person's right eye.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# The ArcFace (insightface) 112x112 alignment template, in the same point order.
CANONICAL_LANDMARKS_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


class Detections(NamedTuple):
    """The faces found in one frame, in the original frame's pixels.

    Attributes:
        boxes: float32 ``(n, 4)``: x, y, width, height.
        scores: float32 ``(n,)``: MTCNN's final (ONet) confidence.
        landmarks: float32 ``(n, 5, 2)``: (x, y) of `LANDMARK_NAMES`.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self):
        return int(self.boxes.shape[0])

    def select(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        return Detections(self.boxes[indices], self.scores[indices], self.landmarks[indices])


class Faces(NamedTuple):
    """`Detections` plus the face crops ``(n, crop_size, crop_size, 3)`` uint8 RGB."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    crops: np.ndarray

    def __len__(self):
        return int(self.boxes.shape[0])


def empty_detections():
    return Detections(
        np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
    )


def box_iou(a, b):
    """Intersection over union of two boxes ``(x, y, width, height)``."""
    ax, ay, aw, ah = (float(v) for v in a)
    bx, by, bw, bh = (float(v) for v in b)
    width = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    height = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = width * height
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def similarity_transform(source, target):
    """Least-squares similarity transform (rotation, uniform scale, shift) from points to points.

    Umeyama's method (IEEE TPAMI 13(4), 1991, doi:10.1109/34.88573) without reflection.

    Args:
        source: ``(n, 2)`` points.
        target: ``(n, 2)`` points.

    Returns:
        float64 ``(2, 3)`` matrix ``M`` with ``target ~ M @ [x, y, 1]``, for ``cv2.warpAffine``.
    """
    source = np.asarray(source, np.float64)
    target = np.asarray(target, np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2:
        raise ValueError(
            "`source` and `target` must both have shape (n, 2). "
            f"Received: source.shape={source.shape}, target.shape={target.shape}"
        )
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    centred_s, centred_t = source - mean_s, target - mean_t
    covariance = centred_t.T @ centred_s / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    variance = (centred_s**2).sum() / len(source)
    scale = (singular * sign).sum() / variance if variance > 0 else 1.0
    shift = mean_t - scale * rotation @ mean_s
    return np.hstack([scale * rotation, shift[:, None]])


def _check_frame(frame, name="frame"):
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
        raise ValueError(
            f"A {name} must be a uint8 RGB array of shape (height, width, 3). "
            f"Received: dtype={frame.dtype}, shape={frame.shape}"
        )
    return frame


@dataclasses.dataclass
class FaceCropper:
    """MTCNN face detection and cropping, batched and at a working size.

    Attributes:
        working_size: detection runs as on the frame downscaled so that its longer side is
            about this (MTCNN's image pyramid starts there: see `pyramid_scales`); boxes are in
            the original frame's pixels. ``None`` or 0: full size (plain MTCNN).
        min_face_size: smallest face side MTCNN looks for, in pixels of the working frame
            (``min_face_size / working_scale`` pixels of the original frame).
        thresholds: MTCNN's PNet, RNet and ONet confidence thresholds (the last one is the
            minimum final score).
        scale_factor: MTCNN's image pyramid factor.
        margin: square crops: fraction of the box size added on every side (as the AffectNet
            builders' ``crop_margin``); aligned crops: the canonical points are shrunk towards
            the centre by ``1 / (1 + 2 * margin)`` (0 gives the ArcFace crop).
        crop_size: side of the crops (resize the crops to a model's size where it differs).
        align: similarity-align the five landmarks instead of a plain square crop.
        mode: ``"largest"`` (one face per frame, the largest box: AFEW) or ``"all"`` (VGAF).
        batch_size: frames per MTCNN call (one shape per call).
        device: TensorFlow device MTCNN runs on (``"CPU:0"``, ``"GPU:0"``).
    """

    working_size: int | None = 480
    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8)
    scale_factor: float = 0.709
    margin: float = 0.1
    crop_size: int = 224
    align: bool = False
    mode: str = LARGEST
    batch_size: int = 16
    device: str = "CPU:0"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}. Received: mode={self.mode!r}")
        if self.working_size is not None and int(self.working_size) < 0:
            raise ValueError(
                f"`working_size` must be None, 0 or positive. Received: working_size={self.working_size}"
            )
        if self.working_size is not None and 0 < int(self.working_size) < 24:
            raise ValueError(
                "`working_size` must be at least 24 (MTCNN's smallest network input is 12 pixels "
                f"and ONet's 48). Received: working_size={self.working_size}"
            )
        if not self.min_face_size >= 12:
            raise ValueError(
                f"`min_face_size` must be >= 12 (PNet's window). Received: min_face_size={self.min_face_size}"
            )
        thresholds = tuple(float(t) for t in self.thresholds)
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(
                "`thresholds` must be three probabilities (PNet, RNet, ONet). "
                f"Received: thresholds={self.thresholds!r}"
            )
        self.thresholds = thresholds
        if not 0.0 < self.scale_factor < 1.0:
            raise ValueError(
                f"`scale_factor` must be in (0, 1). Received: scale_factor={self.scale_factor}"
            )
        if not self.margin >= 0:
            raise ValueError(f"`margin` must be >= 0. Received: margin={self.margin}")
        if int(self.crop_size) < 1:
            raise ValueError(f"`crop_size` must be >= 1. Received: crop_size={self.crop_size}")
        if int(self.batch_size) < 1:
            raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={self.batch_size}")
        self._mtcnn = None

    def settings(self):
        """The settings that decide the boxes (the key of a box cache)."""
        return {
            "working_size": int(self.working_size or 0),
            "min_face_size": int(self.min_face_size),
            "thresholds": list(self.thresholds),
            "scale_factor": float(self.scale_factor),
            # How the working size is applied (the boxes of version 1, PNet on frames resized
            # with cv2 first, differ slightly): a cache of other boxes is not reused.
            "pyramid": 2,
        }

    @property
    def detector(self):
        """The ``mtcnn.MTCNN`` instance, created (and its weights loaded) on first use."""
        if self._mtcnn is None:
            try:
                from mtcnn import MTCNN
            except ImportError as error:
                raise ImportError(
                    "FaceCropper needs the `mtcnn` package (pip install 'mtcnn>=1.0')."
                ) from error
            self._mtcnn = MTCNN(device=self.device)
        return self._mtcnn

    # -- detection ---------------------------------------------------------------------------

    def skipped_levels(self, height, width):
        """How many of plain MTCNN's pyramid levels the working size skips: the power of
        `scale_factor` nearest to ``working_size / max(height, width)`` (0 at full size)."""
        if not self.working_size:
            return 0
        target = float(self.working_size) / max(height, width)
        if target >= 1.0:
            return 0
        return max(0, int(round(np.log(target) / np.log(self.scale_factor))))

    def working_scale(self, height, width):
        """Factor (<= 1) from the original frame to the working frame (the pyramid's first level
        relative to plain MTCNN's): ``scale_factor ** skipped_levels``, so that the levels MTCNN
        would build on a frame downscaled by it are exactly levels of the pyramid on the full
        frame (see `pyramid_scales`).
        """
        return float(self.scale_factor) ** self.skipped_levels(height, width)

    def pyramid_scales(self, height, width):
        """The scales (of the full frame) PNet runs at: MTCNN's pyramid from the working size down.

        Plain MTCNN resizes the frame to ``12 / min_face_size * scale_factor ** k`` for
        ``k = 0, 1, ...``; downscaling the frame by ``working_scale = scale_factor ** s`` first
        would give the levels ``k >= s`` of that pyramid. They are made here by resizing the
        full frame straight to those scales (one resize instead of two): what PNet sees at a
        level is then exactly what it sees in plain full-size MTCNN, and the finer levels (the
        largest images, most of MTCNN's time) are skipped. In full-frame pixels the smallest
        face looked for is ``min_face_size / working_scale``.
        """
        from mtcnn.utils.images import build_scale_pyramid

        scales = build_scale_pyramid(
            int(width),
            int(height),
            min_face_size=int(self.min_face_size),
            scale_factor=float(self.scale_factor),
        )
        scales = np.asarray(scales, np.float64)[self.skipped_levels(height, width) :]
        # A level must leave PNet at least its 12x12 window.
        return scales[np.minimum(height, width) * scales >= 12]

    def _normalized(self, frames):
        """MTCNN's input scaling, ``(x - 127.5) / 128``, as float32 (mtcnn's own is float64)."""
        stacked = np.stack(frames).astype(np.float32)
        return (stacked - 127.5) / 128.0

    def _pnet(self, pnet, normalized, scales, threshold):
        """PNet proposals of frames of one shape: (m, 6) rows [image, x1, y1, x2, y2, score].

        mtcnn 1.0's `StagePNet` with the pyramid given (`pyramid_scales`) instead of built from
        the frame: per level PNet, proposals, NMS 0.5 per level, NMS 0.7 across levels, squares.
        """
        from mtcnn.utils.bboxes import (
            generate_bounding_box,
            resize_to_square,
            smart_nms_from_bboxes,
            upscale_bboxes,
        )
        from mtcnn.utils.images import scale_images

        count = normalized.shape[0]
        per_level = []
        for scale in scales:
            scores = pnet.model(scale_images(normalized, float(scale)))
            proposals = generate_bounding_box(scores[0], scores[1], threshold)
            proposals = upscale_bboxes(proposals, np.asarray([scale] * count))
            per_level.append(
                smart_nms_from_bboxes(proposals, threshold=0.5, method="union", initial_sort=False)
            )
        if not per_level:
            return np.zeros((0, 6))
        proposals = np.concatenate(per_level, axis=0)
        proposals = smart_nms_from_bboxes(
            proposals, threshold=0.7, method="union", initial_sort=True
        )
        return np.asarray(resize_to_square(proposals), np.float64).reshape(-1, 6)

    def _run_mtcnn(self, frames):
        """MTCNN on frames of one shape: one (m, 16) array per frame.

        PNet runs on `pyramid_scales` of the whole batch (the levels from the working size
        down), then RNet and ONet (24x24 and 48x48 patches of the full frames) refine its
        proposals as in plain MTCNN.
        """
        import tensorflow as tf
        from mtcnn.utils.bboxes import limit_bboxes

        pnet, rnet, onet = self.detector.stages
        first, second, third = self.thresholds
        height, width = frames[0].shape[:2]
        scales = self.pyramid_scales(height, width)
        results = [np.zeros((0, 16))] * len(frames)
        with tf.device(self.device):
            normalized = self._normalized(frames)
            try:  # mtcnn raises InvalidArgumentError when a stage has no proposal left
                rows = self._pnet(pnet, normalized, scales, first)
                if len(rows):
                    rows = rnet(
                        images_normalized=normalized, bboxes_batch=rows, threshold_rnet=second
                    )
                if len(rows):
                    rows = onet(
                        images_normalized=normalized, bboxes_batch=rows, threshold_onet=third
                    )
            except tf.errors.InvalidArgumentError:
                rows = np.zeros((0, 16))
        rows = np.asarray(rows, np.float64).reshape(-1, 16) if len(rows) else np.zeros((0, 16))
        if not len(rows):
            return results
        shapes = np.asarray([frame.shape for frame in frames])
        rows = limit_bboxes(rows, images_shapes=shapes, limit_landmarks=False)
        return [rows[rows[:, 0] == index] for index in range(len(frames))]

    def _chunks(self, frames):
        """Indices of frames of one shape, at most `batch_size` and `_BATCH_VALUES` per chunk."""
        groups = {}
        for index, frame in enumerate(frames):
            groups.setdefault(frame.shape, []).append(index)
        for shape, indices in groups.items():
            step = max(1, min(int(self.batch_size), _BATCH_VALUES // int(np.prod(shape))))
            for start in range(0, len(indices), step):
                yield indices[start : start + step]

    def detect(self, frames, channel_order="rgb", apply_mode=True):
        """Detects the faces of a list of frames.

        Args:
            frames: list of uint8 ``(height, width, 3)`` arrays (any sizes).
            channel_order: ``"rgb"`` or ``"bgr"`` (converted to RGB first).
            apply_mode: apply `select` (``False`` keeps every face whatever the mode: what a box
                cache stores, so one cache serves both modes).

        Returns:
            list of `Detections`, one per frame (empty when no face), boxes in original pixels,
            sorted by decreasing box area.
        """
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(
                f"`channel_order` must be 'rgb' or 'bgr'. Received: channel_order={channel_order!r}"
            )
        checked = []
        for frame in frames:
            frame = _check_frame(frame)
            if channel_order == "bgr":
                frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            checked.append(frame)
        results = [None] * len(checked)
        for chunk in self._chunks(checked):
            rows = self._run_mtcnn([checked[i] for i in chunk])
            for i, frame_rows in zip(chunk, rows):
                results[i] = self._to_detections(frame_rows)
        return [self.select(found) for found in results] if apply_mode else results

    def select(self, detections):
        """Applies `mode`: the largest face only (``"largest"``) or every face (``"all"``)."""
        if self.mode == LARGEST and len(detections) > 1:
            areas = detections.boxes[:, 2] * detections.boxes[:, 3]
            return detections.select([int(np.argmax(areas))])
        return detections

    @staticmethod
    def _to_detections(rows):
        if not len(rows):
            return empty_detections()
        x1, y1, x2, y2 = rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4]
        boxes = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
        landmarks = np.stack([rows[:, 6:11], rows[:, 11:16]], axis=2)
        keep = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
        boxes, scores, landmarks = boxes[keep], rows[keep, 5], landmarks[keep]
        order = np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")
        return Detections(
            boxes[order].astype(np.float32),
            scores[order].astype(np.float32),
            landmarks[order].astype(np.float32),
        )

    # -- cropping ----------------------------------------------------------------------------

    def canonical_landmarks(self):
        """Where `align` puts the five points in a crop of ``crop_size``."""
        unit = CANONICAL_LANDMARKS_112 / 112.0
        unit = (unit - 0.5) / (1.0 + 2.0 * self.margin) + 0.5
        return unit * self.crop_size

    def crop(self, frame, detections):
        """The crops of one frame's detections: uint8 ``(n, crop_size, crop_size, 3)``."""
        frame = _check_frame(frame)
        size = int(self.crop_size)
        crops = np.zeros((len(detections), size, size, 3), np.uint8)
        for i in range(len(detections)):
            if self.align:
                matrix = similarity_transform(detections.landmarks[i], self.canonical_landmarks())
                crops[i] = cv2.warpAffine(
                    frame,
                    matrix,
                    (size, size),
                    flags=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT,
                    borderValue=0,
                )
            else:
                crops[i], _ = _images.crop_face(frame, detections.boxes[i], self.margin, size)
        return crops

    def process(self, frames, detections=None, channel_order="rgb"):
        """Detects (unless ``detections`` are given, e.g. from a cache) and crops.

        Returns:
            list of `Faces`, one per frame.
        """
        if channel_order == "bgr":
            frames = [cv2.cvtColor(_check_frame(f), cv2.COLOR_BGR2RGB) for f in frames]
        if detections is None:
            detections = self.detect(frames)
        elif len(detections) != len(frames):
            raise ValueError(
                f"Got {len(detections)} detections for {len(frames)} frames; they must match."
            )
        else:
            detections = [self.select(found) for found in detections]
        return [
            Faces(found.boxes, found.scores, found.landmarks, self.crop(frame, found))
            for frame, found in zip(frames, detections)
        ]

    __call__ = process
