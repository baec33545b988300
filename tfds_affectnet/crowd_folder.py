"""A folder of images and crowd answers (the ``crowd_images`` builder's input), read and checked.

Layout (``DIR`` is the folder the user points to)::

    DIR/images/...                 the images (subfolders allowed); named by their path below
                                   images/ with "/" separators, e.g. "day1/a.jpg"
    DIR/answers.csv                LONG answers: columns image, annotator and any of
                                   expression, valence, arousal (one row per answer)
      or DIR/answers_expression.csv, answers_valence.csv, answers_arousal.csv
                                   WIDE answers (any of the three): column image, then one
                                   column per annotator (its header is the annotator's name)
    DIR/truth.csv                  optional: image and any of expression, valence, arousal
    DIR/classes.txt                optional: one class name per line (default: AffectNet's 8
                                   in the package's order, `tfds_affectnet.labels`)

An expression is a class name (case-insensitive) or a class index (0 = the first class of
classes.txt); valence and arousal are numbers in [-1, 1]. An empty cell is no answer.

Every label problem (unknown class name, class index out of range, a value that is no number or
outside [-1, 1], a duplicate (image, annotator) answer, a repeated column or image row, a truth
row of an image that is nowhere) raises one ``ValueError`` that lists each problem with its
file, line and value. Image problems (listed but missing, present but unanswered, corrupt) are
not label errors: the builder skips those images and counts and lists them in its skip log.

The answers are stored on a fixed annotator axis: the annotators in the order they first
appear in the answer file(s).
"""

import csv
import dataclasses
import hashlib
import io
import re

import numpy as np
import tensorflow as tf

from tfds_affectnet import labels, sources

__all__ = [
    "TASKS",
    "IMAGES_DIR",
    "LONG_FILE",
    "WIDE_FILES",
    "TRUTH_FILE",
    "CLASSES_FILE",
    "CrowdFolder",
    "read_class_names",
    "list_images",
    "folder_digest",
    "read_crowd_folder",
]

TASKS = ("expression", "valence", "arousal")
IMAGES_DIR = "images"
LONG_FILE = "answers.csv"
WIDE_FILES = {task: f"answers_{task}.csv" for task in TASKS}
TRUTH_FILE = "truth.csv"
CLASSES_FILE = "classes.txt"
_PROBLEMS_SHOWN = 20
_INTEGER = re.compile(r"[+-]?\d+(\.0*)?")


def _join(folder, *parts):
    return "/".join([str(folder).rstrip("/")] + list(parts))


def _read_text(path):
    with tf.io.gfile.GFile(path, "rb") as handle:
        return handle.read().decode("utf-8-sig")


@dataclasses.dataclass
class CrowdFolder:
    """The checked content of a crowd folder.

    Attributes:
        folder: the folder.
        layout: "long" or "wide".
        class_names: the classes, in index order.
        annotators: the annotator axis.
        tasks: the tasks that have answers (of "expression", "valence", "arousal").
        images: the image files present under images/ (relative paths, sorted).
        answers: {image: {"crowd_expression": int64 (R,), "crowd_valence",
            "crowd_arousal": float32 (R,)}} of every image with an answer row.
        truth: {image: {"true_expression": int, "true_valence", "true_arousal": float}}, or
            None without truth.csv.
        ignored_columns: {file: [columns]} of columns that are not read.
    """

    folder: str
    layout: str
    class_names: tuple
    annotators: tuple
    tasks: tuple
    images: list
    answers: dict
    truth: dict | None
    ignored_columns: dict

    @property
    def answered(self):
        """The images with at least one answer."""
        return sorted(name for name, row in self.answers.items() if _has_answer(row))

    @property
    def truth_tasks(self):
        """The tasks with a truth for at least one image."""
        if not self.truth:
            return ()
        rows = self.truth.values()
        present = {
            "expression": any(row["true_expression"] >= 0 for row in rows),
            "valence": any(np.isfinite(row["true_valence"]) for row in rows),
            "arousal": any(np.isfinite(row["true_arousal"]) for row in rows),
        }
        return tuple(task for task in TASKS if present[task])


def _has_answer(row):
    return bool(
        (row["crowd_expression"] >= 0).any()
        or np.isfinite(row["crowd_valence"]).any()
        or np.isfinite(row["crowd_arousal"]).any()
    )


class _Problems:
    """Collects label problems and raises them together."""

    def __init__(self, folder):
        self.folder = folder
        self.lines = []

    def add(self, file, line, message):
        where = f"{file}, line {line}" if line else file
        self.lines.append(f"{where}: {message}")

    def raise_if_any(self):
        if not self.lines:
            return
        shown = "\n  ".join(self.lines[:_PROBLEMS_SHOWN])
        more = len(self.lines) - _PROBLEMS_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise ValueError(
            f"{len(self.lines)} problem(s) in the crowd folder {self.folder}:\n  {shown}{tail}"
        )


def read_class_names(folder):
    """The class names of ``classes.txt`` (one per line, blank lines ignored), or AffectNet's 8.

    Raises:
        ValueError: repeated names or fewer than two classes.
    """
    path = _join(folder, CLASSES_FILE)
    if not tf.io.gfile.exists(path):
        return tuple(labels.EXPRESSION_NAMES)
    names = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
    lowered = [name.lower() for name in names]
    if len(set(lowered)) != len(lowered) or len(names) < 2:
        raise ValueError(
            f"{path} must hold at least two distinct class names, one per line. Received: {names}"
        )
    return tuple(names)


def list_images(folder):
    """``(images, others)``: the image files under ``folder/images`` (relative paths, "/"
    separators, sorted) and the other files there (not read)."""
    root = _join(folder, IMAGES_DIR)
    if not tf.io.gfile.isdir(root):
        raise FileNotFoundError(f"The crowd folder has no images folder: {root}/ is missing.")
    images, others = [], []
    for directory, _, files in tf.io.gfile.walk(root):
        relative = str(directory)[len(root) :].strip("/")
        for name in files:
            path = f"{relative}/{name}" if relative else name
            (images if name.lower().endswith(sources.IMAGE_EXTENSIONS) else others).append(path)
    return sorted(images), sorted(others)


def _answer_files(folder):
    """``("long", {None: path})`` or ``("wide", {task: path})``."""
    long_path = _join(folder, LONG_FILE)
    wide = {
        task: _join(folder, name)
        for task, name in WIDE_FILES.items()
        if tf.io.gfile.exists(_join(folder, name))
    }
    has_long = tf.io.gfile.exists(long_path)
    if has_long and wide:
        raise ValueError(
            f"The crowd folder {folder} holds both {LONG_FILE} (long answers) and "
            f"{', '.join(sorted(WIDE_FILES[t] for t in wide))} (wide answers): keep one format."
        )
    if has_long:
        return "long", {None: long_path}
    if wide:
        return "wide", wide
    raise FileNotFoundError(
        f"The crowd folder {folder} has no answers: expected {long_path} (columns image, "
        f"annotator, and any of expression, valence, arousal) or any of "
        + ", ".join(_join(folder, name) for name in WIDE_FILES.values())
        + " (column image, then one column per annotator)."
    )


def folder_digest(folder):
    """SHA-256 of a folder's label files (bytes) and its image list (relative paths and sizes):
    two folders with another content get another digest, hence another dataset configuration."""
    digest = hashlib.sha256()
    names = [LONG_FILE, *WIDE_FILES.values(), TRUTH_FILE, CLASSES_FILE]
    for name in names:
        path = _join(folder, name)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path, "rb") as handle:
                digest.update(f"{name}\0".encode() + handle.read() + b"\0")
    images, _ = list_images(folder)
    root = _join(folder, IMAGES_DIR)
    for image in images:
        size = tf.io.gfile.stat(f"{root}/{image}").length
        digest.update(f"{image}\0{size}\0".encode())
    return digest.hexdigest()


def _read_rows(path, problems):
    """``(header, rows)`` of a CSV as strings; a repeated column is a problem."""
    reader = csv.reader(io.StringIO(_read_text(path)))
    rows = [row for row in reader]
    if not rows:
        problems.add(path, 0, "empty file (expected a header line)")
        return [], []
    header = [name.strip() for name in rows[0]]
    seen = set()
    for name in header:
        if name in seen:
            problems.add(path, 1, f"column {name!r} appears twice in the header")
        seen.add(name)
    data = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            problems.add(path, number, f"{len(row)} cells for {len(header)} columns: {row!r}")
            continue
        data.append((number, {name: cell.strip() for name, cell in zip(header, row)}))
    return header, data


class _Parser:
    """Turns cells into codes and values, reporting bad ones with file, line and value."""

    def __init__(self, class_names, problems):
        self.class_names = class_names
        self.by_name = {name.lower(): i for i, name in enumerate(class_names)}
        self.problems = problems

    def expression(self, text, path, line, column):
        if text == "":
            return -1
        code = self.by_name.get(text.lower())
        if code is not None:
            return code
        count = len(self.class_names)
        if _INTEGER.fullmatch(text):
            code = int(float(text))
            if 0 <= code < count:
                return code
            self.problems.add(
                path, line, f"{column}: class index {text!r} is outside 0..{count - 1}"
            )
            return -1
        self.problems.add(
            path,
            line,
            f"{column}: unknown class name {text!r} (classes: {', '.join(self.class_names)})",
        )
        return -1

    def value(self, text, path, line, column):
        if text == "":
            return np.nan
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is None or not np.isfinite(number):
            self.problems.add(path, line, f"{column}: {text!r} is not a number")
            return np.nan
        if abs(number) > 1.0:
            self.problems.add(path, line, f"{column}: {text!r} is outside [-1, 1]")
            return np.nan
        return number

    def cell(self, task, text, path, line, column):
        if task == "expression":
            return self.expression(text, path, line, column)
        return self.value(text, path, line, column)


def _require_image_column(path, header, problems, needed=("image",)):
    missing = [name for name in needed if name not in header]
    if missing:
        problems.add(path, 1, f"missing column(s) {missing}; the header is {header}")
    return not missing


def _read_long(path, parser, problems, ignored):
    """{(image, annotator): {task: value}}, the annotators in order, the tasks present."""
    header, rows = _read_rows(path, problems)
    if not _require_image_column(path, header, problems, ("image", "annotator")):
        return {}, [], ()
    tasks = tuple(task for task in TASKS if task in header)
    if not tasks:
        problems.add(path, 1, f"no label column: expected any of {list(TASKS)}; got {header}")
    extra = [name for name in header if name not in ("image", "annotator") + TASKS]
    if extra:
        ignored[path] = extra
    cells, first_line, annotators = {}, {}, {}
    for line, row in rows:
        image, annotator = row["image"], row["annotator"]
        if not image or not annotator:
            problems.add(path, line, f"empty image or annotator: {row!r}")
            continue
        key = (image, annotator)
        if key in first_line:
            problems.add(
                path,
                line,
                f"duplicate answer of annotator {annotator!r} for image {image!r} "
                f"(first on line {first_line[key]})",
            )
            continue
        first_line[key] = line
        annotators.setdefault(annotator, None)
        cells[key] = {t: parser.cell(t, row[t], path, line, t) for t in tasks}
    return cells, list(annotators), tasks


def _read_wide(paths, parser, problems, ignored):
    """The same as `_read_long` from one wide file per task."""
    cells, annotators = {}, {}
    for task, path in paths.items():
        header, rows = _read_rows(path, problems)
        if not _require_image_column(path, header, problems):
            continue
        columns = [name for name in header if name != "image"]
        empty = [i for i, name in enumerate(columns) if not name]
        if empty:
            problems.add(path, 1, "an annotator column has no name in the header")
        for name in columns:
            annotators.setdefault(name, None)
        first_line = {}
        for line, row in rows:
            image = row["image"]
            if not image:
                problems.add(path, line, f"empty image: {row!r}")
                continue
            if image in first_line:
                problems.add(
                    path, line, f"image {image!r} repeated (first on line {first_line[image]})"
                )
                continue
            first_line[image] = line
            for name in columns:
                cell = cells.setdefault((image, name), {})
                cell[task] = parser.cell(task, row[name], path, line, f"annotator {name!r}")
    tasks = tuple(task for task in TASKS if task in paths)
    return cells, list(annotators), tasks


def _answer_arrays(cells, annotators):
    """{image: crowd arrays} on the annotator axis."""
    axis = {name: r for r, name in enumerate(annotators)}
    count = len(annotators)
    answers = {}
    for (image, annotator), values in cells.items():
        row = answers.get(image)
        if row is None:
            row = answers[image] = {
                "crowd_expression": np.full(count, -1, np.int64),
                "crowd_valence": np.full(count, np.nan, np.float32),
                "crowd_arousal": np.full(count, np.nan, np.float32),
            }
        for task, value in values.items():
            row[f"crowd_{task}"][axis[annotator]] = value
    return answers


def _read_truth(folder, parser, problems, known, ignored):
    path = _join(folder, TRUTH_FILE)
    if not tf.io.gfile.exists(path):
        return None
    header, rows = _read_rows(path, problems)
    if not _require_image_column(path, header, problems):
        return {}
    tasks = [task for task in TASKS if task in header]
    if not tasks:
        problems.add(path, 1, f"no label column: expected any of {list(TASKS)}; got {header}")
    extra = [name for name in header if name not in ("image",) + TASKS]
    if extra:
        ignored[path] = extra
    truth, first_line = {}, {}
    for line, row in rows:
        image = row["image"]
        if image in first_line:
            problems.add(
                path, line, f"image {image!r} repeated (first on line {first_line[image]})"
            )
            continue
        first_line[image] = line
        if image not in known:
            problems.add(path, line, f"image {image!r} is neither under images/ nor answered")
            continue
        values = {t: parser.cell(t, row[t], path, line, t) for t in tasks}
        truth[image] = {
            "true_expression": int(values.get("expression", -1)),
            "true_valence": float(values.get("valence", np.nan)),
            "true_arousal": float(values.get("arousal", np.nan)),
        }
    return truth


def read_crowd_folder(folder):
    """Reads and checks a crowd folder (module docstring).

    Returns:
        A `CrowdFolder`.

    Raises:
        FileNotFoundError: no images/ folder or no answer file.
        ValueError: label problems, all listed with their file, line and value.
    """
    folder = str(folder).rstrip("/")
    class_names = read_class_names(folder)
    layout, paths = _answer_files(folder)
    images, _ = list_images(folder)
    problems = _Problems(folder)
    parser = _Parser(class_names, problems)
    ignored = {}
    if layout == "long":
        cells, annotators, tasks = _read_long(paths[None], parser, problems, ignored)
    else:
        cells, annotators, tasks = _read_wide(paths, parser, problems, ignored)
    answers = _answer_arrays(cells, annotators)
    truth = _read_truth(folder, parser, problems, set(images) | set(answers), ignored)
    if not annotators and not problems.lines:
        problems.add(paths[next(iter(paths))], 0, "no annotator and no answer")
    problems.raise_if_any()
    return CrowdFolder(
        folder=folder,
        layout=layout,
        class_names=class_names,
        annotators=tuple(annotators),
        tasks=tasks,
        images=images,
        answers=answers,
        truth=truth,
        ignored_columns=ignored,
    )
