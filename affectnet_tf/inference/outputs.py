"""Where prediction records go: JSON lines or CSV (:class:`RecordWriter`), per-video summaries
(:class:`ClipSummary`, :func:`write_clip_summaries`), and annotated copies of images and videos
with boxes and labels drawn (:class:`Annotator`).

With an output file ``FILE.jsonl`` / ``FILE.csv``, the clip summaries go to
``FILE_clips.json`` (:meth:`RecordWriter.summary_path`) and are printed on the standard output;
without, records are printed on the standard output and summaries on the standard error.
"""

import csv
import json
import os
import sys

import cv2
import numpy as np

__all__ = [
    "RecordWriter",
    "ClipSummary",
    "write_clip_summaries",
    "Annotator",
    "draw_records",
    "record_label",
]

_OUTPUT_SUFFIXES = (".csv", ".jsonl", ".json")
_BOX_COLUMNS = ("box_x", "box_y", "box_width", "box_height")
_GREEN = (0, 255, 0)


class RecordWriter:
    """Writes records as JSON lines (``.jsonl`` / ``.json`` / stdout) or CSV (``.csv``).

    Args:
        path: the output file, or None / ``"-"`` for the standard output.
        class_names: the model's classes (one ``prob_<class>`` CSV column each).
    """

    def __init__(self, path, class_names):
        self.path = None if path in (None, "-") else os.fspath(path)
        self.class_names = tuple(class_names)
        self.csv = self.path is not None and self.path.lower().endswith(".csv")
        if self.path is not None and not self.path.lower().endswith(_OUTPUT_SUFFIXES):
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
                ["source", "frame", *_BOX_COLUMNS, "score", "expression"]
                + [f"prob_{name}" for name in self.class_names]
                + ["valence", "arousal", "error"]
            )
            self.writer = csv.DictWriter(self.stream, fieldnames=self.fields)
            self.writer.writeheader()

    def write(self, record):
        """Writes one record (a JSON line, or a CSV row with the box and probabilities spread)."""
        self.count += 1
        if not self.csv:
            self.stream.write(json.dumps(record) + "\n")
            return
        row = {k: record.get(k) for k in ("source", "frame", "score", "expression")}
        row.update(valence=record.get("valence"), arousal=record.get("arousal"))
        row["error"] = record.get("error")
        row.update(zip(_BOX_COLUMNS, record.get("box") or [None] * 4))
        probabilities = record.get("probabilities")
        for name in self.class_names:
            row[f"prob_{name}"] = None if probabilities is None else probabilities[name]
        self.writer.writerow(row)

    def close(self):
        """Closes the file (flushes the standard output)."""
        if self.path is not None:
            self.stream.close()
        else:
            self.stream.flush()

    def summary_path(self):
        """``<output stem>_clips.json``, or None when records go to the standard output."""
        if self.path is None:
            return None
        return os.path.splitext(self.path)[0] + "_clips.json"


class ClipSummary:
    """Running means over a video's face records.

    Args:
        source: the video's path.
        class_names: the model's classes.
    """

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
        """Adds the records of one frame."""
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
        """The summary: frame and face counts, mean probabilities, the most likely expression,
        mean valence and arousal (None where no face had them)."""
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


def write_clip_summaries(summaries, summary_path):
    """Writes the clip summaries to ``summary_path`` (a JSON list) and prints each as a JSON
    line: on the standard output with a file, on the standard error without (the standard
    output then carries the records)."""
    if summary_path is not None:
        with open(summary_path, "w", encoding="utf-8") as stream:
            json.dump(summaries, stream, indent=2)
            stream.write("\n")
    for summary in summaries:
        print(json.dumps(summary), file=sys.stderr if summary_path is None else sys.stdout)


def record_label(record):
    """The text drawn above a face: ``"<expression> <p> V<valence> A<arousal>"``, what the
    record has of it."""
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
        cv2.rectangle(image, (x, y), (x + w, y + h), _GREEN, thickness)
        text = record_label(record)
        if text:
            origin = (x, max(10, y - 4))
            font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness
            cv2.putText(image, text, origin, font, scale, _GREEN, thickness, cv2.LINE_AA)
    return image


class Annotator:
    """Writes annotated copies into a folder: ``<stem>_annotated.png`` per image and
    ``<stem>_annotated.avi`` (MJPG) per video; a stem met twice gets ``_2``, ``_3`` ...

    Args:
        folder: the output folder (created).
    """

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        os.makedirs(self.folder, exist_ok=True)
        self._used = set()

    def path(self, source, suffix):
        """A new output path for ``source`` ending in ``suffix``."""
        stem = os.path.splitext(os.path.basename(source))[0]
        path = os.path.join(self.folder, f"{stem}{suffix}")
        number = 1
        while path in self._used:
            number += 1
            path = os.path.join(self.folder, f"{stem}_{number}{suffix}")
        self._used.add(path)
        return path

    def write_image(self, source, image, records):
        """Writes the RGB ``image`` of ``source`` with its records drawn."""
        cv2.imwrite(self.path(source, "_annotated.png"), draw_records(image, records))

    def video_writer(self, source, fps, width, height):
        """A ``cv2.VideoWriter`` for the annotated copy of a video (release it when done)."""
        out = self.path(source, "_annotated.avi")
        return cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
