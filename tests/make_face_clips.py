"""Real faces without a download: scikit-image's ``astronaut`` (Eileen Collins) in generated clips.

Used by the face-crop, prediction, video builder and video training tests. Clips are tiny MJPG
AVI or MPEG-4 (mp4v) files (OpenCV writes both without any extra codec); the face moves and changes scale from
frame to frame, chosen frames are blank (no face), and `write_corrupt_clip` writes a file that
OpenCV cannot open. `save_tiny_run` writes the run folder of an untrained tiny model for the
prediction and video training tests.
"""

import os

import cv2
import numpy as np

# The astronaut's face box in skimage.data.astronaut() (512x512), as MTCNN finds it (x, y, w, h).
ASTRONAUT_FACE_BOX = (182.0, 64.0, 83.0, 107.0)
# The square around her face that `face_frame` pastes.
_FACE_SQUARE = (96, 0, 352, 256)  # x0, y0, x1, y1


def astronaut():
    from skimage import data

    return data.astronaut()


def face_patch(side, background=90):
    """The astronaut's head, ``side`` x ``side`` RGB."""
    x0, y0, x1, y1 = _FACE_SQUARE
    patch = astronaut()[y0:y1, x0:x1]
    return cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA)


def face_frame(step, width=160, height=120, blank=False, background=90):
    """One RGB frame: a grey background and, unless ``blank``, the face moving right and
    changing scale with ``step``.

    Returns:
        (frame, box): the frame and the pasted square ``(x, y, side, side)`` (None when blank).
    """
    frame = np.full((height, width, 3), background, np.uint8)
    if blank:
        return frame, None
    side = int(round(min(width, height) * (0.75 + 0.15 * np.sin(step))))
    x = int(round((width - side) * (0.1 + 0.8 * (step % 5) / 4)))
    y = (height - side) // 2
    frame[y : y + side, x : x + side] = face_patch(side)
    return frame, (x, y, side, side)


def write_clip(path, frames=12, width=160, height=120, blank_frames=(), fps=10, background=90):
    """Writes an MJPG AVI clip; returns the list of pasted face squares (None on blank frames)."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    codec = "mp4v" if os.fspath(path).lower().endswith(".mp4") else "MJPG"
    writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*codec), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    boxes = []
    try:
        for step in range(frames):
            frame, box = face_frame(step, width, height, step in blank_frames, background)
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            boxes.append(box)
    finally:
        writer.release()
    return boxes


def write_corrupt_clip(path):
    """A file named like a video that OpenCV cannot open."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(path, "wb") as stream:
        stream.write(b"RIFF\x00\x00\x00\x00AVI not really a video" * 8)


def make_afew_layout(root, frames=4):
    """Train_AFEW/ and Val_AFEW/ with Happy (bright) and Sad (dark) face clips, a Neutral clip
    without any face, and in Train_AFEW a corrupt Angry clip.

    Returns:
        dict split -> {clip name: canonical label name or "corrupt"}.
    """
    layout = {
        "Train_AFEW": [
            ("Happy", "happy_1", 200),
            ("Happy", "happy_2", 210),
            ("Sad", "sad_1", 30),
            ("Sad", "sad_2", 40),
            ("Neutral", "blank_1", None),
        ],
        "Val_AFEW": [("Happy", "happy_3", 205), ("Sad", "sad_3", 35), ("Neutral", "blank_2", None)],
    }
    for split, clips in layout.items():
        for emotion, name, background in clips:
            path = os.path.join(root, split, emotion, f"{name}.avi")
            if background is None:
                write_clip(path, frames, blank_frames=range(frames))
            else:
                write_clip(path, frames, background=background)
    write_corrupt_clip(os.path.join(root, "Train_AFEW", "Angry", "broken.avi"))
    return layout


def make_vgaf_layout(root, frames=4):
    """Train/, Val/ and the label files: positive (bright) / negative (dark) face clips, a
    neutral clip without faces, a corrupt clip, a video without label and a label without video."""
    clips = {
        "Train": [
            ("1_1", 1, 200),
            ("2_1", 1, 210),
            ("3_1", 3, 30),
            ("4_1", 3, 40),
            ("5_1", 2, None),
        ],
        "Val": [("6_1", 1, 205), ("7_1", 3, 35), ("8_1", 2, None)],
    }
    for split, items in clips.items():
        lines = ["Vid_name Label"]
        for name, label, background in items:
            path = os.path.join(root, split, f"{name}.mp4")
            if background is None:
                write_clip(path, frames, blank_frames=range(frames))
            else:
                write_clip(path, frames, background=background)
            lines.append(f"{name} {label}")
        if split == "Train":
            write_corrupt_clip(os.path.join(root, split, "9_1.mp4"))
            lines.append("9_1 2")
            write_clip(os.path.join(root, split, "unlabelled.mp4"), 2)
            lines.append("10_1 1")  # no video
        with open(os.path.join(root, f"{split}_labels.txt"), "w") as stream:
            stream.write("\n".join(lines) + "\n")
    return clips


def save_tiny_run(folder, task):
    """A run folder (``model.keras``, ``config.yaml``) of an untrained 32x32 compact CNN."""
    import yaml

    import affectnet_tf

    built = affectnet_tf.build_model(
        "compact_cnn", weights=None, task=task, image_size=32, dropout=0.0
    )
    os.makedirs(folder, exist_ok=True)
    built.prediction_model.save(os.path.join(folder, "model.keras"))
    with open(os.path.join(folder, "config.yaml"), "w") as stream:
        yaml.safe_dump({"model": "compact_cnn", "task": task, "image_size": 32}, stream)
    return str(folder)
