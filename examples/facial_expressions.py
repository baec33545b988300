"""Converts a checkout of muxspace/facial_expressions into the ``crowd_images`` layout.

The repository (github.com/muxspace/facial_expressions, Apache-2.0) holds about 13,700 face
photos (mostly Labeled Faces in the Wild, 350x350 greyscale JPEGs) in ``images/``, one
expression label each in ``data/legend.csv`` (``user.id,image,emotion``: the student who
labelled the photo, the file name, the label) and a second label of 500 of them in
``data/500_picts_satz.csv`` (no header, old-Mac CR line ends, ``906,<image>,<label>``).
This script writes:

- ``OUT_DIR/images/``: the labelled photos, hard-linked (copied across file systems, or with
  ``--copy``); a photo that is not a JPEG or PNG whatever its name says (one WebP) is
  re-encoded as a JPEG under the same name;
- ``OUT_DIR/answers.csv``: one row per answer, ``image,annotator,expression``: the legend's
  ``user.id`` as the annotator, ``906`` for the 500-photo file; labels in the package's class
  names (``HAPPINESS`` and ``happiness`` -> ``happy``, ``sadness`` and ``sad`` -> ``sad``);
- ``OUT_DIR/classes.txt``: the 8 classes in the package's order;
- ``OUT_DIR/conversion.json``: every count below, with the two annotators' agreement.

Nothing is dropped silently: the script counts and prints, with the reason, every row it
skipped (a label outside the 8 classes, a photo listed but missing or unreadable, one annotator
giving one photo two different labels), the duplicate rows it merged, and the photos it did not
copy (in ``images/`` but in neither CSV; ``test/`` holds 263 unlabelled photos and is ignored).
It then measures how often two annotators agree on the photos both labelled (raw agreement and
Cohen's kappa, per pair of annotators).

Usage::

    python examples/facial_expressions.py /path/to/facial_expressions /tmp/fe_crowd
    python -m affectnet_tf.train --dataset crowd_images --manual-dir /tmp/fe_crowd ...

The other two scripts of the tutorial (``facial_expressions_baseline.py`` and
``facial_expressions_fer.py``) import this file for :func:`read_answers`, :func:`read_roles`
and :func:`scores`; it needs only the standard library, NumPy and Pillow (scikit-learn for
kappa and the scores).
"""

import argparse
import collections
import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "CLASS_NAMES",
    "LABEL_MAP",
    "SECOND_ANNOTATOR",
    "read_source_rows",
    "convert",
    "pair_agreement",
    "read_answers",
    "answer_matrix",
    "read_roles",
    "scores",
]

# The package's order (tfds_affectnet.labels.EXPRESSION_NAMES), repeated so that this script
# runs without the package (the FER scorer runs in a virtual env of its own).
CLASS_NAMES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
# The repository's spellings, lower-cased, to the package's class names.
LABEL_MAP = {
    "neutral": "neutral",
    "happiness": "happy",
    "happy": "happy",
    "sadness": "sad",
    "sad": "sad",
    "surprise": "surprise",
    "fear": "fear",
    "disgust": "disgust",
    "anger": "anger",
    "angry": "anger",
    "contempt": "contempt",
}
# The annotator of data/500_picts_satz.csv (its rows say 906; the legend has no 906).
SECOND_ANNOTATOR = "906"
LEGEND = Path("data") / "legend.csv"
SECOND = Path("data") / "500_picts_satz.csv"
_LEGEND_HEADER = ["user.id", "image", "emotion"]


def read_source_rows(path, header):
    """The rows ``(annotator, image, label)`` of one of the repository's CSVs, and the count
    of malformed rows.

    Any line ending (CR, LF, CRLF) is accepted; surrounding spaces are removed. ``header``:
    whether the first row is ``user.id,image,emotion`` (checked when True).
    """
    text = Path(path).read_text(encoding="utf-8-sig")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    rows = [[field.strip() for field in row] for row in csv.reader(lines) if row]
    if header:
        if not rows or [name.lower() for name in rows[0]] != _LEGEND_HEADER:
            first = rows[0] if rows else None
            raise ValueError(f"{path}: expected the header {_LEGEND_HEADER}. Received: {first}")
        rows = rows[1:]
    elif rows and [name.lower() for name in rows[0]] == _LEGEND_HEADER:
        rows = rows[1:]
    good = [tuple(row) for row in rows if len(row) == 3 and all(row)]
    return good, len(rows) - len(good)


def _image_problem(path):
    """None for a readable JPEG or PNG, ``"reencode"`` for another readable format, else why
    the photo cannot be used."""
    if not path.is_file():
        return "listed but not in images/"
    try:
        with Image.open(path) as image:
            image.load()
            kind = image.format
    except Exception as error:  # PIL raises many types for a damaged file
        return f"unreadable ({type(error).__name__})"
    return None if kind in ("JPEG", "PNG") else "reencode"


def _collect_answers(repo, counts):
    """``{(image, annotator): label}`` from both CSVs, counting what is skipped or merged, the
    photos where one annotator gave two different labels, and every photo name read."""
    given, seen = collections.defaultdict(list), set()
    for source, header, fixed in ((LEGEND, True, None), (SECOND, False, SECOND_ANNOTATOR)):
        rows, malformed = read_source_rows(Path(repo) / source, header)
        counts["rows_read"][source.name] = len(rows) + malformed
        if malformed:
            counts["skipped_rows"][f"{source.name}: malformed (not 3 non-empty fields)"] += (
                malformed
            )
        for annotator, image, raw in rows:
            seen.add(image)
            label = LABEL_MAP.get(raw.lower())
            if label is None:
                counts["skipped_rows"][f"{source.name}: label {raw!r} is none of the 8"] += 1
                continue
            counts["label_spellings"][f"{raw} -> {label}"] += 1
            given[image, fixed or annotator].append(label)
    answers, conflicting = {}, set()
    for key, labels in given.items():
        if len(set(labels)) > 1:
            counts["skipped_rows"]["one annotator gave one photo different labels"] += len(labels)
            conflicting.add(key[0])
            continue
        counts["merged_duplicate_rows"] += len(labels) - 1
        answers[key] = labels[0]
    return answers, sorted(conflicting), seen


def _place_image(source, target, problem, copy):
    """Hard-links (or copies) one photo, re-encoding a non-JPEG/PNG one as a JPEG."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if problem == "reencode":
        with Image.open(source) as image:
            image.convert("RGB").save(target, "JPEG", quality=95)
        return
    if not copy:
        try:
            os.link(source, target)
            return
        except OSError:  # another file system
            pass
    shutil.copyfile(source, target)


def _new_counts():
    return {
        "rows_read": {},
        "skipped_rows": collections.Counter(),
        "merged_duplicate_rows": 0,
        "label_spellings": collections.Counter(),
        "skipped_photos": collections.Counter(),
        "reencoded_photos": [],
    }


def convert(repo, out_dir, copy=False, overwrite=False):
    """Writes the ``crowd_images`` folder of a repository checkout (module docstring).

    Args:
        repo: the checkout of muxspace/facial_expressions (with ``images/`` and ``data/``).
        out_dir: the folder to write; it must be absent or empty unless ``overwrite``.
        copy: copy the photos instead of hard-linking them.
        overwrite: delete ``out_dir`` first.

    Returns:
        The report written to ``out_dir/conversion.json`` (counts, reasons, agreement).
    """
    repo, out_dir = Path(repo), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; pass --overwrite to replace it.")
        shutil.rmtree(out_dir)
    counts = _new_counts()
    answers, conflicting, listed = _collect_answers(repo, counts)
    by_image = collections.defaultdict(dict)
    for (image, annotator), label in answers.items():
        by_image[image][annotator] = label
    kept = {}
    for image in sorted(by_image):
        problem = _image_problem(repo / "images" / image)
        if problem not in (None, "reencode"):
            counts["skipped_photos"][problem] += 1
            counts["skipped_rows"][f"photo {problem}"] += len(by_image[image])
            continue
        _place_image(repo / "images" / image, out_dir / "images" / image, problem, copy)
        if problem:
            counts["reencoded_photos"].append(image)
        kept[image] = by_image[image]
    on_disk = {p.name for p in (repo / "images").iterdir() if p.is_file()}
    left_alone = {
        "in images/ but in neither CSV (not copied)": len(on_disk - listed),
        "listed, but no usable answer left (not copied)": len(listed & on_disk - set(by_image)),
    }
    if (repo / "test").is_dir():
        left_alone["test/ (unlabelled, ignored)"] = sum(1 for _ in (repo / "test").iterdir())
    _write_outputs(out_dir, kept)
    report = _report(counts, kept, left_alone, conflicting)
    (out_dir / "conversion.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _write_outputs(out_dir, kept):
    """answers.csv (sorted by photo, then annotator) and classes.txt."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "answers.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["image", "annotator", "expression"])
        for image, by_annotator in sorted(kept.items()):
            for annotator, label in sorted(by_annotator.items()):
                writer.writerow([image, annotator, label])
    (out_dir / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")


def _report(counts, kept, left_alone, conflicting):
    """The JSON-able report of a conversion."""
    answers_per_photo = collections.Counter(len(a) for a in kept.values())
    per_annotator = collections.Counter(a for by in kept.values() for a in by)
    labels = collections.Counter(label for by in kept.values() for label in by.values())
    return {
        "photos": len(kept),
        "answers": sum(per_annotator.values()),
        "annotators": dict(sorted(per_annotator.items())),
        "photos_by_number_of_answers": {str(k): v for k, v in sorted(answers_per_photo.items())},
        "answers_by_class": {name: labels[name] for name in CLASS_NAMES},
        "rows_read": counts["rows_read"],
        "label_spellings": dict(sorted(counts["label_spellings"].items())),
        "skipped_rows": dict(sorted(counts["skipped_rows"].items())),
        "merged_duplicate_rows": counts["merged_duplicate_rows"],
        "conflicting_photos": conflicting,
        "skipped_photos": dict(sorted(counts["skipped_photos"].items())),
        "reencoded_photos": counts["reencoded_photos"],
        "not_copied": left_alone,
        "agreement": pair_agreement(kept),
    }


def pair_agreement(by_image, min_shared=1):
    """Agreement of every pair of annotators on the photos both labelled.

    Args:
        by_image: ``{image: {annotator: class name}}``.
        min_shared: the fewest shared photos for a pair to be listed.

    Returns:
        ``{"A vs B": {"photos", "agreement", "cohen_kappa", "confusion"}}``: the share of
        shared photos with the same label, Cohen's kappa (scikit-learn) and the counts of
        (A's label, B's label) over the 8 classes (rows A).
    """
    from sklearn.metrics import cohen_kappa_score

    pairs = collections.defaultdict(list)
    for by_annotator in by_image.values():
        names = sorted(by_annotator)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                pairs[first, second].append((by_annotator[first], by_annotator[second]))
    result = {}
    for (first, second), shared in sorted(pairs.items()):
        if len(shared) < min_shared:
            continue
        a = np.array([CLASS_NAMES.index(x) for x, _ in shared])
        b = np.array([CLASS_NAMES.index(y) for _, y in shared])
        confusion = np.zeros((len(CLASS_NAMES),) * 2, np.int64)
        np.add.at(confusion, (a, b), 1)
        same_single = len(np.unique(np.concatenate([a, b]))) == 1
        kappa = None if same_single else float(cohen_kappa_score(a, b, labels=range(8)))
        result[f"{first} vs {second}"] = {
            "photos": len(shared),
            "agreement": float(np.mean(a == b)),
            "cohen_kappa": kappa,  # None where both gave one and the same class throughout
            "confusion": confusion.tolist(),
        }
    return result


def read_answers(folder):
    """``{image: {annotator: class index}}`` of a crowd_images folder's ``answers.csv``."""
    by_image = collections.defaultdict(dict)
    with open(Path(folder) / "answers.csv", newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            by_image[row["image"]][row["annotator"]] = CLASS_NAMES.index(row["expression"])
    return dict(by_image)


def answer_matrix(by_image):
    """``(file_names, answers)``: sorted image names and an ``(N, A)`` int matrix of class
    indices, ``-1`` where an annotator gave no answer (annotators in sorted order)."""
    names = sorted(by_image)
    annotators = sorted({a for by in by_image.values() for a in by})
    column = {a: j for j, a in enumerate(annotators)}
    answers = np.full((len(names), len(annotators)), -1, np.int64)
    for i, name in enumerate(names):
        for annotator, label in by_image[name].items():
            answers[i, column[annotator]] = label
    return np.array(names), answers


def read_roles(path):
    """``{"train": [...], "selection": [...], "test": [...]}`` from a roles JSON file written
    by ``facial_expressions_baseline.py`` (the images of each data role)."""
    roles = json.loads(Path(path).read_text())
    return {role: list(roles[role]) for role in ("train", "selection", "test")}


def print_result(result, output=None):
    """Prints ``result`` as indented JSON, and writes it to ``output`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if output:
        Path(output).write_text(text + "\n")


def scores(y_true, y_pred, num_classes=8):
    """Accuracy, macro F1, per-class F1 and the confusion matrix of class indices.

    The package's conventions (``affectnet_tf.modeling.metrics``): macro F1 over the classes
    that are true or predicted at least once (scikit-learn's default), per-class F1 over all
    ``num_classes`` (0 for a class never true nor predicted), confusion rows = true classes.
    """
    from sklearn import metrics

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = np.arange(num_classes)
    per_class = metrics.f1_score(y_true, y_pred, labels=classes, average=None, zero_division=0)
    return {
        "count": len(y_true),
        "accuracy": float(metrics.accuracy_score(y_true, y_pred)),
        "f1_macro": float(metrics.f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "f1_per_class": {CLASS_NAMES[k]: float(per_class[k]) for k in classes},
        "support": {CLASS_NAMES[k]: int(np.sum(y_true == k)) for k in classes},
        "confusion_matrix": metrics.confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }


def _print_report(report, out_dir):
    print(f"wrote {out_dir}: {report['photos']} photos, {report['answers']} answers")
    for key in ("annotators", "photos_by_number_of_answers", "answers_by_class", "rows_read"):
        print(f"  {key}: {report[key]}")
    print(f"  label spellings: {report['label_spellings']}")
    print(
        f"  merged duplicate rows (same photo, annotator and label): "
        f"{report['merged_duplicate_rows']}"
    )
    for title in ("skipped_rows", "skipped_photos", "not_copied"):
        print(f"  {title.replace('_', ' ')}:" + ("" if report[title] else " none"))
        for reason, count in report[title].items():
            print(f"    {count:6d}  {reason}")
    if report["conflicting_photos"]:
        print(f"  photos with conflicting rows: {report['conflicting_photos']}")
    if report["reencoded_photos"]:
        print(f"  re-encoded as JPEG (not JPEG/PNG inside): {report['reencoded_photos']}")
    for pair, entry in report["agreement"].items():
        kappa = "n/a" if entry["cohen_kappa"] is None else f"{entry['cohen_kappa']:.3f}"
        print(
            f"  agreement {pair}: {entry['agreement']:.3f} on {entry['photos']} photos, "
            f"Cohen's kappa {kappa}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repo_dir", help="checkout of github.com/muxspace/facial_expressions")
    parser.add_argument("out_dir", help="the crowd_images folder to write")
    parser.add_argument("--copy", action="store_true", help="copy the photos, never hard-link")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty out_dir")
    args = parser.parse_args(argv)
    report = convert(args.repo_dir, args.out_dir, copy=args.copy, overwrite=args.overwrite)
    _print_report(report, args.out_dir)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
