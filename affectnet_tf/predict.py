"""Prediction on images, folders and videos: ``python -m affectnet_tf.predict``.

```bash
python -m affectnet_tf.predict --model-dir runs/exp INPUT... [--output FILE.jsonl|FILE.csv]
    [--annotate OUT_DIR] [--fps 5 | --every-n 2] [--cache-dir boxes/]
```

Every face of every used frame becomes one record with the keys ``source``, ``frame`` (0 for an
image), ``box`` (x, y, width, height in the original frame), ``score`` (MTCNN's), ``expression``
(class name), ``probabilities`` (class name -> probability), ``valence`` and ``arousal``. A frame
where no face was found is one record with ``box`` null (and no prediction), so no frame
disappears; a file that cannot be read is one record with ``box`` null and an ``error`` key.
Outputs a model does not have (an expression-only or a valence/arousal-only model) are null.

For a video, a clip summary follows: mean probabilities over the faces, the most likely
expression, mean valence and arousal, and the frame counts. With ``--output``, records go to the
file (JSON lines, or CSV with one ``prob_<class>`` column per class) and summaries to
``<output stem>_clips.json``; without, records are printed as JSON lines and summaries to
stderr. ``--annotate OUT_DIR`` writes each image or video with boxes and labels drawn. A progress
bar (``keras.utils.Progbar``, on stderr) is shown on videos of at least
``--progress-min-frames`` frames.

Faces are cropped by :class:`affectnet_tf.inference.faces.FaceCropper` to ``--crop-size`` (224, the stored
size of the AffectNet builders) and resized to the model's input with
:func:`affectnet_tf.data.images.resize_image`, the path training images take; images are read with
:func:`affectnet_tf.data.images.load_image_file`.
"""

import argparse
import contextlib
import csv
import json
import os
import sys

import cv2
import keras
import numpy as np

from affectnet_tf.data.images import load_image_file
from affectnet_tf.inference import faces as faces_module
from affectnet_tf.inference import video as video_module
from affectnet_tf.modeling.models import model_metadata
from affectnet_tf.training.run_folder import load_run

__all__ = [
    "IMAGE_EXTENSIONS",
    "Predictor",
    "ClipSummary",
    "RecordWriter",
    "expand_inputs",
    "load_run_model",
    "predict_inputs",
    "bounded_number",
    "add_face_arguments",
    "face_cropper",
    "build_parser",
    "main",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
RECORD_KEYS = (
    "source",
    "frame",
    "box",
    "score",
    "expression",
    "probabilities",
    "valence",
    "arousal",
)


def load_run_model(model_dir):
    """The prediction model of a run folder (``<model_dir>/model.keras``, or that file):
    :func:`affectnet_tf.training.run_folder.load_run`'s ``load_model()``."""
    return load_run(model_dir).load_model()


def _float(value):
    return None if value is None else float(value)


class Predictor:
    """Runs a trained model on the faces of frames.

    Args:
        model: a prediction model of :func:`affectnet_tf.build_model` (metadata inside).
        cropper: a :class:`~affectnet_tf.inference.faces.FaceCropper` (default: every face, 224 crops).
        batch_size: faces per model call.
    """

    def __init__(self, model, cropper=None, batch_size=32):
        self.model = model
        self.metadata = model_metadata(model)
        self.heads = tuple(self.metadata["outputs"])
        self.class_names = tuple(self.metadata["class_names"])
        self.image_size = int(self.metadata["image_size"])
        self.cropper = cropper or faces_module.FaceCropper(mode=faces_module.ALL)
        self.batch_size = int(batch_size)

    def predict_crops(self, crops):
        """``{head: array}`` for face crops ``(n, s, s, 3)``: ``expression`` ``(n, K)``,
        ``valence`` / ``arousal`` ``(n,)``; the heads the model lacks are absent."""
        crops = faces_module.crops_for_model(crops, self.image_size)
        result = {head: [] for head in self.heads}
        for start in range(0, len(crops), self.batch_size):
            outputs = self.model(crops[start : start + self.batch_size], training=False)
            if not isinstance(outputs, dict):
                outputs = {self.heads[0]: outputs}
            for head in self.heads:
                result[head].append(np.asarray(outputs[head], np.float32))
        shapes = {"expression": (0, len(self.class_names)), "valence": (0, 1), "arousal": (0, 1)}
        arrays = {
            head: np.concatenate(parts) if parts else np.zeros(shapes[head], np.float32)
            for head, parts in result.items()
        }
        for head in ("valence", "arousal"):
            if head in arrays:
                arrays[head] = arrays[head].reshape(-1)
        return arrays

    def records(self, source, frame_index, faces):
        """The records of one frame's `Faces` (one with ``box`` None when there is none)."""
        if len(faces) == 0:
            return [_empty_record(source, frame_index)]
        predictions = self.predict_crops(faces.crops)
        records = []
        for i in range(len(faces)):
            probabilities = None
            expression = None
            if "expression" in predictions:
                row = predictions["expression"][i]
                probabilities = {n: float(p) for n, p in zip(self.class_names, row)}
                expression = self.class_names[int(np.argmax(row))]
            records.append(
                {
                    "source": source,
                    "frame": int(frame_index),
                    "box": [round(float(v), 2) for v in faces.boxes[i]],
                    "score": float(faces.scores[i]),
                    "expression": expression,
                    "probabilities": probabilities,
                    "valence": _float(predictions["valence"][i])
                    if "valence" in predictions
                    else None,
                    "arousal": _float(predictions["arousal"][i])
                    if "arousal" in predictions
                    else None,
                }
            )
        return records


def _empty_record(source, frame_index, error=None):
    record = dict.fromkeys(RECORD_KEYS)
    record.update(source=source, frame=int(frame_index))
    if error is not None:
        record["error"] = str(error)
    return record


class ClipSummary:
    """Running means over a video's face records."""

    def __init__(self, source, class_names):
        self.source = source
        self.class_names = tuple(class_names)
        self.frames = 0
        self.frames_with_face = 0
        self.faces = 0
        self._probabilities = np.zeros(len(self.class_names))
        self._expression_faces = 0
        self._sums = {"valence": [0.0, 0], "arousal": [0.0, 0]}

    def add_frame(self, records):
        self.frames += 1
        found = [r for r in records if r["box"] is not None]
        self.frames_with_face += bool(found)
        self.faces += len(found)
        for record in found:
            if record["probabilities"] is not None:
                self._probabilities += [record["probabilities"][n] for n in self.class_names]
                self._expression_faces += 1
            for key, total in self._sums.items():
                if record[key] is not None:
                    total[0] += record[key]
                    total[1] += 1

    def as_dict(self):
        mean = None
        expression = None
        if self._expression_faces:
            values = self._probabilities / self._expression_faces
            mean = {n: float(p) for n, p in zip(self.class_names, values)}
            expression = self.class_names[int(np.argmax(values))]
        result = {
            "source": self.source,
            "frames": self.frames,
            "frames_with_face": self.frames_with_face,
            "faces": self.faces,
            "expression": expression,
            "mean_probabilities": mean,
        }
        for key, (total, count) in self._sums.items():
            result[f"mean_{key}"] = total / count if count else None
        return result


class RecordWriter:
    """Writes records as JSON lines (``.jsonl`` / ``.json`` / stdout) or CSV (``.csv``)."""

    def __init__(self, path, class_names):
        self.path = None if path in (None, "-") else os.fspath(path)
        self.class_names = tuple(class_names)
        self.csv = self.path is not None and self.path.lower().endswith(".csv")
        if self.path is not None and not self.path.lower().endswith((".csv", ".jsonl", ".json")):
            raise ValueError(
                f"`--output` must end in .jsonl, .json or .csv. Received: output={self.path!r}"
            )
        if self.path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self.stream = open(self.path, "w", newline="" if self.csv else None, encoding="utf-8")
        else:
            self.stream = sys.stdout
        self.count = 0
        if self.csv:
            self.fields = (
                ["source", "frame", "box_x", "box_y", "box_width", "box_height", "score"]
                + ["expression"]
                + [f"prob_{name}" for name in self.class_names]
                + ["valence", "arousal", "error"]
            )
            self.writer = csv.DictWriter(self.stream, fieldnames=self.fields)
            self.writer.writeheader()

    def write(self, record):
        self.count += 1
        if not self.csv:
            self.stream.write(json.dumps(record) + "\n")
            return
        row = {k: record.get(k) for k in ("source", "frame", "score", "expression")}
        row.update(valence=record.get("valence"), arousal=record.get("arousal"))
        row["error"] = record.get("error")
        box = record.get("box") or [None] * 4
        row.update(zip(("box_x", "box_y", "box_width", "box_height"), box))
        for name in self.class_names:
            probabilities = record.get("probabilities")
            row[f"prob_{name}"] = None if probabilities is None else probabilities[name]
        self.writer.writerow(row)

    def close(self):
        if self.path is not None:
            self.stream.close()
        else:
            self.stream.flush()

    def summary_path(self):
        if self.path is None:
            return None
        return os.path.splitext(self.path)[0] + "_clips.json"


class _Progress(keras.utils.Progbar):
    """``keras.utils.Progbar`` over a video's frames, on stderr (stdout may carry the records)."""

    def __init__(self, total, label):
        print(label, file=sys.stderr)
        super().__init__(total, width=30, interval=0.5, unit_name="frame")

    def update(self, current, values=None, finalize=None):
        with contextlib.redirect_stdout(sys.stderr):
            super().update(current, values, finalize)


def expand_inputs(inputs):
    """``[(path, kind)]`` with kind ``image``, ``video`` or ``unknown``; folders are walked in
    name order (files of other types in a folder are left out and counted by the caller)."""
    result = []
    for item in inputs:
        path = os.fspath(item)
        if os.path.isdir(path):
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    kind = _kind(name)
                    if kind != "unknown":
                        result.append((os.path.join(folder, name), kind))
        else:
            result.append((path, _kind(path)))
    return result


def _kind(path):
    lower = path.lower()
    if lower.endswith(IMAGE_EXTENSIONS):
        return "image"
    if lower.endswith(video_module.VIDEO_EXTENSIONS):
        return "video"
    return "unknown"


def _label(record):
    parts = []
    if record["expression"] is not None:
        parts.append(f"{record['expression']} {record['probabilities'][record['expression']]:.2f}")
    if record["valence"] is not None:
        parts.append(f"V{record['valence']:+.2f}")
    if record["arousal"] is not None:
        parts.append(f"A{record['arousal']:+.2f}")
    return " ".join(parts)


def draw_records(frame, records):
    """A BGR copy of an RGB frame with the records' boxes and labels drawn."""
    image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    thickness = max(1, int(round(max(image.shape[:2]) / 400)))
    for record in records:
        if record["box"] is None:
            continue
        x, y, w, h = (int(round(v)) for v in record["box"])
        cv2.rectangle(image, (x, y), (x + w, y + h), (0, 255, 0), thickness)
        text = _label(record)
        if text:
            scale = 0.4 * thickness
            cv2.putText(
                image,
                text,
                (x, max(10, y - 4)),
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                (0, 255, 0),
                thickness,
                cv2.LINE_AA,
            )
    return image


def _annotation_path(annotate_dir, source, suffix, used):
    stem = os.path.splitext(os.path.basename(source))[0]
    path = os.path.join(annotate_dir, f"{stem}{suffix}")
    number = 1
    while path in used:
        number += 1
        path = os.path.join(annotate_dir, f"{stem}_{number}{suffix}")
    used.add(path)
    return path


def _predict_image(predictor, path, emit, annotate_dir, used):
    try:
        image = load_image_file(path)
    except ValueError as error:
        emit(_empty_record(path, 0, error))
        return None
    faces = predictor.cropper.process([image])[0]
    records = predictor.records(path, 0, faces)
    for record in records:
        emit(record)
    if annotate_dir:
        out = _annotation_path(annotate_dir, path, "_annotated.png", used)
        cv2.imwrite(out, draw_records(image, records))
    return None


def _annotated_fps(sampler, stats):
    fps = stats.fps or 25.0
    if sampler.every_n:
        return max(1.0, fps / sampler.every_n)
    if sampler.fps:
        return max(1.0, min(fps, sampler.fps))
    return fps


def _predict_video(predictor, path, emit, sampler, cache, annotate_dir, used, progress_min):
    stats = video_module.VideoStats(name=path)
    summary = ClipSummary(path, predictor.class_names)
    writer = None
    progress = None
    try:
        frame_count = video_module.video_properties(path)[0]
        if progress_min is not None and frame_count >= progress_min:
            progress = _Progress(frame_count, os.path.basename(path))
        for frame_faces in video_module.iter_video_faces(
            path, predictor.cropper, sampler, cache, stats, keep_frames=bool(annotate_dir)
        ):
            records = predictor.records(path, frame_faces.index, frame_faces.faces)
            for record in records:
                emit(record)
            summary.add_frame(records)
            if annotate_dir:
                image = draw_records(frame_faces.frame, records)
                if writer is None:
                    out = _annotation_path(annotate_dir, path, "_annotated.avi", used)
                    height, width = image.shape[:2]
                    writer = cv2.VideoWriter(
                        out,
                        cv2.VideoWriter_fourcc(*"MJPG"),
                        _annotated_fps(sampler, stats),
                        (width, height),
                    )
                writer.write(image)
            if progress is not None:
                progress.update(stats.frames_read, finalize=False)
    except video_module.UnreadableVideoError as error:
        emit(_empty_record(path, 0, error))
        return None
    finally:
        if writer is not None:
            writer.release()
        if progress is not None:
            progress.update(stats.frames_read, finalize=True)
    result = summary.as_dict()
    result["frames_read"] = stats.frames_read
    result["frames_detected"] = stats.frames_detected
    return result


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

    Returns:
        ``(clip_summaries, problems)``: one summary dict per video read, and
        ``[(path, reason)]`` of inputs that were not found, not an image or video, or unreadable.
    """
    sampler = sampler or video_module.FrameSampler()
    if annotate_dir:
        os.makedirs(annotate_dir, exist_ok=True)
    summaries, problems, used = [], [], set()

    def emit_checked(record):
        if record.get("error"):
            problems.append((record["source"], record["error"]))
        emit(record)

    for path, kind in expand_inputs(inputs):
        if not os.path.exists(path):
            emit_checked(_empty_record(path, 0, f"input not found: {path}"))
        elif kind == "image":
            _predict_image(predictor, path, emit_checked, annotate_dir, used)
        elif kind == "video":
            summary = _predict_video(
                predictor,
                path,
                emit_checked,
                sampler,
                cache,
                annotate_dir,
                used,
                progress_min_frames,
            )
            if summary is not None:
                summaries.append(summary)
        else:
            emit_checked(
                _empty_record(
                    path,
                    0,
                    f"not an image ({', '.join(IMAGE_EXTENSIONS)}) or video "
                    f"({', '.join(video_module.VIDEO_EXTENSIONS)}) file name",
                )
            )
    return summaries, problems


def bounded_number(kind, minimum, strict=False, maximum=None):
    """An argparse type: ``kind`` values from ``minimum`` (excluded when ``strict``) up to
    ``maximum``."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be {minimum}..{maximum}, got {text}")
        if value < minimum or (strict and value == minimum):
            relation = ">" if strict else ">="
            raise argparse.ArgumentTypeError(f"must be {relation} {minimum}, got {text}")
        return value

    parse.__name__ = kind.__name__  # the name argparse and the flag tables show
    return parse


def add_face_arguments(parser, title="Faces"):
    """Adds the options of the face-crop stage (:class:`~affectnet_tf.inference.faces.FaceCropper`) to
    ``parser`` as a group ``title``; :func:`face_cropper` builds the cropper from them."""
    group = parser.add_argument_group(title)
    cropper = faces_module.FaceCropper  # its defaults
    group.add_argument(
        "--working-size",
        type=bounded_number(int, 0),
        default=cropper.working_size,
        help="MTCNN runs as on images downscaled to this longer side (its pyramid starts "
        f"there); 0: full size, plain MTCNN (default: {cropper.working_size})",
    )
    group.add_argument(
        "--min-face-size",
        type=bounded_number(int, 12),
        default=cropper.min_face_size,
        help=f"smallest face side, in working-image pixels (default: {cropper.min_face_size})",
    )
    group.add_argument(
        "--thresholds",
        type=float,
        nargs=3,
        default=cropper.thresholds,
        help="MTCNN PNet RNet ONet thresholds (default: "
        + " ".join(f"{t:g}" for t in cropper.thresholds)
        + ")",
    )
    group.add_argument(
        "--margin",
        type=bounded_number(float, 0.0),
        default=cropper.margin,
        help=f"crop margin on every side (default: {cropper.margin:g})",
    )
    group.add_argument(
        "--crop-size",
        type=bounded_number(int, 1),
        default=224,
        help="side of the face crops (default: 224)",
    )
    group.add_argument("--align", action="store_true", help="5-point aligned crops")
    group.add_argument(
        "--largest-only", action="store_true", help="only the largest face of each image"
    )
    group.add_argument("--device", default="CPU:0", help="MTCNN's device (default: CPU:0)")


def face_cropper(args):
    """The :class:`~affectnet_tf.inference.faces.FaceCropper` of the options of :func:`add_face_arguments`."""
    return faces_module.FaceCropper(
        working_size=args.working_size,
        min_face_size=args.min_face_size,
        thresholds=tuple(args.thresholds),
        margin=args.margin,
        crop_size=args.crop_size,
        align=args.align,
        mode=faces_module.LARGEST if args.largest_only else faces_module.ALL,
        device=args.device,
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.predict",
        description="Expression, valence and arousal of every face in images, folders and videos.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image, folder or video")
    group = parser.add_argument_group("Model")
    group.add_argument("--model-dir", required=True, help="run folder holding model.keras")
    group.add_argument(
        "--batch-size", type=int, default=32, help="faces per model call (default: 32)"
    )
    group = parser.add_argument_group("Output")
    group.add_argument(
        "--output", default=None, help="FILE.jsonl or FILE.csv (default: JSON lines on stdout)"
    )
    group.add_argument(
        "--annotate", default=None, metavar="OUT_DIR", help="write annotated images and videos"
    )
    group.add_argument(
        "--progress-min-frames",
        type=int,
        default=250,
        help="show a progress bar on videos with at least this many frames (default: 250)",
    )
    group = parser.add_argument_group("Video")
    sampling = group.add_mutually_exclusive_group()
    sampling.add_argument("--fps", type=float, default=None, help="frames per second to use")
    sampling.add_argument(
        "--every-n", type=int, default=None, help="use every n-th frame (default: every frame)"
    )
    group.add_argument(
        "--cache-dir", default=None, help="per-video box cache folder (default: none)"
    )
    add_face_arguments(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    predictor = Predictor(
        load_run_model(args.model_dir),
        face_cropper(args),
        batch_size=args.batch_size,
    )
    writer = RecordWriter(args.output, predictor.class_names)
    try:
        summaries, problems = predict_inputs(
            predictor,
            args.inputs,
            writer.write,
            sampler=video_module.FrameSampler(every_n=args.every_n, fps=args.fps),
            cache=video_module.BoxCache(args.cache_dir) if args.cache_dir else None,
            annotate_dir=args.annotate,
            progress_min_frames=args.progress_min_frames,
        )
    finally:
        writer.close()
    summary_path = writer.summary_path()
    if summary_path is not None:
        with open(summary_path, "w", encoding="utf-8") as stream:
            json.dump(summaries, stream, indent=2)
            stream.write("\n")
    for summary in summaries:
        print(json.dumps(summary), file=sys.stderr if summary_path is None else sys.stdout)
    where = f" to {args.output}" if args.output else ""
    message = f"{writer.count} records{where}; {len(summaries)} video summaries"
    if summary_path is not None:
        message += f" in {summary_path}"
    print(message + ".", file=sys.stderr)
    if problems:
        names = ", ".join(path for path, _ in problems[:10])
        more = f" and {len(problems) - 10} more" if len(problems) > 10 else ""
        print(
            f"{len(problems)} inputs could not be read (records with an 'error' key): "
            f"{names}{more}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
