"""Tiny crowd folders for the ``crowd_images`` tests: images drawn with PIL, answers in the long
or the wide format, optional truth and class list.

Each image ``img_<k>.png`` (``sub/`` holds every fourth) is a flat colour whose class ``k % K``
is the truth; annotator ``r`` answers the truth except on the items where ``(k + r) % 5 == 0``
(then the next class), and skips ``(k * 3 + r) % 7 == 0``. Valence and arousal are functions of
the class, on the 0.25 grid, shifted by ``0.25`` for annotator 0.
"""

import csv
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_crowd_folder", "crowd_values"]


def crowd_values(num_images=24, num_annotators=4, num_classes=8):
    """``(names, truth codes, answers (N, R) -1 = none, valence (N, R), arousal (N, R),
    true valence (N,), true arousal (N,))`` of the generated folder."""
    names = [("sub/" if k % 4 == 0 else "") + f"img_{k:02d}.png" for k in range(num_images)]
    truth = np.arange(num_images) % num_classes
    answers = np.repeat(truth[:, None], num_annotators, axis=1)
    k, r = np.meshgrid(np.arange(num_images), np.arange(num_annotators), indexing="ij")
    answers = np.where((k + r) % 5 == 0, (answers + 1) % num_classes, answers)
    answers = np.where((k * 3 + r) % 7 == 0, -1, answers)
    true_valence = np.round((truth / max(num_classes - 1, 1)) * 8 - 4) / 4
    true_arousal = -true_valence / 2
    shift = np.where(r == 0, 0.25, 0.0)
    valence = np.clip(true_valence[:, None] + shift, -1, 1)
    arousal = np.clip(true_arousal[:, None] - shift, -1, 1)
    valence = np.where(answers < 0, np.nan, valence)
    arousal = np.where(answers < 0, np.nan, arousal)
    return names, truth, answers, valence, arousal, true_valence, true_arousal


def _write_image(path, code, size=20):
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = ((code * 37) % 256, (code * 91) % 256, (code * 53 + 40) % 256)
    Image.new("RGB", (size, size + 4), colour).save(path)


def _cell(value):
    return "" if (isinstance(value, float) and np.isnan(value)) else f"{value:g}"


def make_crowd_folder(
    folder,
    *,
    layout="long",
    num_images=24,
    num_annotators=4,
    class_names=None,
    truth=True,
    by_name=True,
    tasks=("expression", "valence", "arousal"),
):
    """Writes a crowd folder; returns `crowd_values` of it.

    Args:
        folder: where to write (created).
        layout: "long" (answers.csv) or "wide" (answers_<task>.csv).
        class_names: written to classes.txt when given (default: AffectNet's 8, no file).
        truth: write truth.csv.
        by_name: expressions as class names (else as indices).
        tasks: the answered tasks.
    """
    from tfds_affectnet import labels

    folder = Path(folder)
    names_of_classes = tuple(class_names or labels.EXPRESSION_NAMES)
    values = crowd_values(num_images, num_annotators, len(names_of_classes))
    names, codes, answers, valence, arousal, true_valence, true_arousal = values
    for name, code in zip(names, codes):
        _write_image(folder / "images" / name, int(code))
    if class_names:
        (folder / "classes.txt").write_text("\n".join(class_names) + "\n", encoding="utf-8")

    def expression(code):
        if code < 0:
            return ""
        return names_of_classes[code] if by_name else str(int(code))

    cells = {
        "expression": lambda i, r: expression(int(answers[i, r])),
        "valence": lambda i, r: _cell(float(valence[i, r])),
        "arousal": lambda i, r: _cell(float(arousal[i, r])),
    }
    annotators = [f"worker_{r}" for r in range(num_annotators)]
    if layout == "long":
        with open(folder / "answers.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "annotator", *tasks])
            for i, name in enumerate(names):
                for r, annotator in enumerate(annotators):
                    if answers[i, r] >= 0:
                        writer.writerow([name, annotator, *(cells[t](i, r) for t in tasks)])
    else:
        for task in tasks:
            with open(folder / f"answers_{task}.csv", "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["image", *annotators])
                for i, name in enumerate(names):
                    writer.writerow([name, *(cells[task](i, r) for r in range(num_annotators))])
    if truth:
        with open(folder / "truth.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "expression", "valence", "arousal"])
            for i, name in enumerate(names):
                writer.writerow(
                    [
                        name,
                        names_of_classes[codes[i]],
                        f"{true_valence[i]:g}",
                        f"{true_arousal[i]:g}",
                    ]
                )
    return values
