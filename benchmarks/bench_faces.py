"""Frames per second of the face-crop stage against a plain MTCNN loop, with box agreement.

Both are measured in one run on the same generated clip: ``--frames`` frames of 640x480 (MJPG
AVI), a textured background and scikit-image's astronaut face (a real face, no download) moving
and changing size (about 130-230 pixels), every 10th frame blank.

* plain loop: ``cv2.VideoCapture`` frame by frame, BGR -> RGB, ``MTCNN().detect_faces(frame,
  output_type="numpy")`` on every full-size frame (mtcnn 1.0's defaults; unrounded boxes);
* face-crop stage: ``affectnet_tf.inference.video.iter_video_faces`` with ``FaceCropper(working_size=480,
  batch_size=16, mode="all", crop_size=224)``: detection at working size 480 (MTCNN's pyramid
  from 0.709 of the frame, 454x340, down: its finest level skipped), in batches of 16, and 224x224 crops cut from the full frames.
  No box cache (the cache would make the second pass free).

Both first run once on a few frames (TensorFlow's tracing). Boxes are matched per frame (each
face of the plain loop to the stage's face of highest IoU, the same face when IoU >= 0.3); the
target is a speed-up of at least
2x with IoU >= 0.9 on the faces both find. As a reference for the IoU figures, the plain loop
runs once more on the frames shifted right by 2 pixels (boxes shifted back): MTCNN's own jitter.

Usage::

    python benchmarks/bench_faces.py [--frames 120] [--frame-size 640x480] [--working-size 480]
        [--batch-size 16] [--no-reference] [--quick] [--output FILE.json]
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from affectnet_tf.inference.faces import FaceCropper, box_iou  # noqa: E402
from affectnet_tf.inference.video import FrameSampler, VideoStats, iter_video_faces  # noqa: E402

WIDTH, HEIGHT = 640, 480


def astronaut():
    from skimage import data

    return data.astronaut()


def write_clip(path, frames, seed=0, size=(WIDTH, HEIGHT)):
    """The benchmark clip; returns the number of frames with a pasted face."""
    rng = np.random.default_rng(seed)
    image = astronaut()
    head = image[0:256, 96:352]
    width, height = size
    background = cv2.resize(image[256:512], (width, height), interpolation=cv2.INTER_LINEAR)
    background = cv2.addWeighted(background, 0.5, np.full_like(background, 60), 0.5, 0)
    noise = rng.integers(0, 20, background.shape, dtype=np.uint8)
    background = cv2.add(background, noise)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25, (width, height))
    with_face = 0
    for step in range(frames):
        frame = background.copy()
        if step % 10 != 9:
            side = int(180 + 50 * np.sin(step / 7.0))
            x = int((width - side) * (0.5 + 0.45 * np.sin(step / 11.0)))
            y = int((height - side) * (0.5 + 0.4 * np.cos(step / 13.0)))
            frame[y : y + side, x : x + side] = cv2.resize(
                head, (side, side), interpolation=cv2.INTER_AREA
            )
            with_face += 1
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return with_face


def plain_loop(path, detector, limit=None, shift=0):
    """Frame index -> list of boxes, and the seconds it took.

    ``shift``: move each frame right by this many pixels (edge replicated) before detection and
    the boxes back (MTCNN's own jitter, the reference for the IoU figures).
    """
    start = time.perf_counter()
    capture = cv2.VideoCapture(path)
    boxes = {}
    index = 0
    while limit is None or index < limit:
        ok, frame = capture.read()
        if not ok:
            break
        frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        if shift:
            frame = cv2.copyMakeBorder(frame, 0, 0, shift, 0, cv2.BORDER_REPLICATE)[
                :, : frame.shape[1]
            ]
        # output_type="numpy": the unrounded boxes (the default JSON rounds them to whole
        # pixels, which alone moves the IoU of a 50-pixel face by up to 0.04).
        found = detector.detect_faces(frame, output_type="numpy")
        boxes[index] = [[x - shift, y, w, h] for x, y, w, h in found[:, 1:5].tolist()]
        index += 1
    capture.release()
    return boxes, time.perf_counter() - start


def face_stage(path, cropper, limit=None):
    """Frame index -> list of boxes, and the seconds it took (crops are made and discarded)."""
    start = time.perf_counter()
    boxes = {}
    stats = VideoStats()
    for frame_faces in iter_video_faces(path, cropper, FrameSampler(), stats=stats):
        boxes[frame_faces.index] = [list(b) for b in frame_faces.faces.boxes]
        assert frame_faces.faces.crops.shape[1:] == (cropper.crop_size, cropper.crop_size, 3)
        if limit is not None and len(boxes) >= limit:
            break
    return boxes, time.perf_counter() - start


def compare(plain, stage, same_face=0.3):
    """IoU of the faces both find, and the counts of faces only one of them finds.

    Each plain-loop face is paired with the stage's face of highest IoU in the same frame; a
    pair below ``same_face`` is not the same face (each counts as found by one side only).
    """
    ious, only_plain, only_stage = [], 0, 0
    for index in sorted(set(plain) | set(stage)):
        plain_boxes, stage_boxes = plain.get(index, []), stage.get(index, [])
        matched = set()
        for box in plain_boxes:
            scores = [box_iou(box, other) for other in stage_boxes]
            best = int(np.argmax(scores)) if scores else -1
            if best >= 0 and scores[best] >= same_face and best not in matched:
                matched.add(best)
                ious.append(scores[best])
            else:
                only_plain += 1
        only_stage += len(stage_boxes) - len(matched)
    return np.asarray(ious), only_plain, only_stage


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=120, help="clip length (default: 120)")
    parser.add_argument(
        "--frame-size",
        default=f"{WIDTH}x{HEIGHT}",
        help=f"clip frame size WIDTHxHEIGHT (default: {WIDTH}x{HEIGHT}; the face keeps its size)",
    )
    parser.add_argument("--working-size", type=int, default=480, help="(default: 480)")
    parser.add_argument("--batch-size", type=int, default=16, help="(default: 16)")
    parser.add_argument("--quick", action="store_true", help="24 frames (a smoke run)")
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the reference pass (the plain loop on frames shifted by 2 pixels)",
    )
    parser.add_argument("--output", default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    frames = 24 if args.quick else args.frames
    try:
        size = tuple(int(v) for v in args.frame_size.lower().split("x"))
        if len(size) != 2 or min(size) < 300:
            raise ValueError
    except ValueError:
        parser.error(
            f"--frame-size must be WIDTHxHEIGHT, both >= 300. Received: {args.frame_size!r}"
        )

    from mtcnn import MTCNN

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "bench.avi")
        with_face = write_clip(path, frames, size=size)
        print(f"clip: {frames} frames of {size[0]}x{size[1]}, {with_face} with a face")
        detector = MTCNN()
        cropper = FaceCropper(
            working_size=args.working_size, batch_size=args.batch_size, mode="all", crop_size=224
        )
        plain_loop(path, detector, limit=3)  # warm-up: TensorFlow tracing
        face_stage(path, cropper, limit=args.batch_size)
        plain, plain_seconds = plain_loop(path, detector)
        stage, stage_seconds = face_stage(path, cropper)
        shifted = None
        if not (args.quick or args.no_reference):
            shifted, _ = plain_loop(path, detector, shift=2)

    plain_fps = len(plain) / plain_seconds
    stage_fps = len(stage) / stage_seconds
    ious, only_plain, only_stage = compare(plain, stage)
    ratio = stage_fps / plain_fps
    plain_faces = sum(len(b) for b in plain.values())
    stage_faces = sum(len(b) for b in stage.values())
    print(f"{'plain MTCNN loop (full size, one frame at a time)':<58} {plain_fps:8.1f} frames/s")
    print(
        f"{f'face-crop stage (working size {args.working_size}, batch {args.batch_size})':<58} "
        f"{stage_fps:8.1f} frames/s"
    )
    print(f"speed-up: {ratio:.2f}x (target >= 2x)")
    print(
        f"faces found: plain {plain_faces}, stage {stage_faces}; only plain {only_plain}, "
        f"only stage {only_stage}"
    )
    if len(ious):
        print(
            f"IoU on the {len(ious)} faces both find: min {ious.min():.3f}, "
            f"mean {ious.mean():.3f}, >= 0.9: {np.mean(ious >= 0.9):.1%} (target: all)"
        )
    reference = None
    if shifted is not None:
        reference, _, _ = compare(plain, shifted)
        print(
            f"reference, plain loop on frames shifted by 2 pixels: IoU min {reference.min():.3f}, "
            f"mean {reference.mean():.3f}, >= 0.9: {np.mean(reference >= 0.9):.1%}"
        )
    result = {
        "frames": frames,
        "frame_size": list(size),
        "plain_fps": plain_fps,
        "stage_fps": stage_fps,
        "speed_up": ratio,
        "plain_faces": plain_faces,
        "stage_faces": stage_faces,
        "only_plain": only_plain,
        "only_stage": only_stage,
        "iou_min": float(ious.min()) if len(ious) else None,
        "iou_mean": float(ious.mean()) if len(ious) else None,
        "iou_fraction_090": float(np.mean(ious >= 0.9)) if len(ious) else None,
        "reference_iou_min": float(reference.min()) if reference is not None else None,
        "reference_iou_mean": float(reference.mean()) if reference is not None else None,
    }
    if args.output:
        with open(args.output, "w") as stream:
            json.dump(result, stream, indent=2)
    return result


if __name__ == "__main__":
    main()
