"""Writes dummy data in the exact layouts of AffectNet's two releases and of AffectNetC25's CSVs.

Everything is generated (names, images, labels); nothing is copied from the real files. The
layouts are those the builders read:

* full release: ``Manually_Annotated_file_lists/{training,validation}.csv`` (header
  ``subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,
  valence,arousal``; 136 landmark numbers joined by ``;``) and
  ``Manually_Annotated_Images/<subdir>/<56 hex chars><ext>``, with extensions .jpg, .jpeg,
  .JPG, .png and .PNG, PNG files stored under .jpg names, whole (uncropped) images with the face
  box somewhere inside, expression codes 0-10, valence/arousal -2, a truncated JPEG and (in
  validation) a row whose image file is missing.
* 8-label release: ``{train_set,val_set}/images/<n>.jpg`` and
  ``annotations/<n>_{exp,val,aro,lnd}.npy`` holding NUMPY STRINGS (``np.array('1')``), as the
  real release does, with a truncated image, a valence of -2 and an annotation without image.
* AffectNetC25: ``AffectNetC25/{expression,valence,arousal}_set{1,2}_C25.csv`` with columns
  ``index, filename, participant0..participant24``, C25-order expression codes (0 happiness ...
  7 neutral), values -1..1 in 0.25 steps, and a few cleaned cases (an empty answer, the code 9,
  a valence of -2). Set 1 uses training rows 0-5, set 2 rows 6-11 (``index`` = row number).

With ``damaged=True`` (``--damaged``) the train splits of both releases also hold what a decoder
that only warns lets through: a JPEG corrupted mid-stream whose end marker is intact
(`corrupt_jpeg_mid_stream`), and (full release) face boxes that exceed the image, lie outside it
or have no width (`FULL_TRAIN_DAMAGED`, `EIGHT_TRAIN_DAMAGED`). The default outputs are unchanged.

Usage::

    python tests/make_dummy_data.py OUTPUT_DIR [--layout full|eight_label|c25|all] [--seed 0]
        [--damaged]
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

__all__ = [
    "FULL_TRAIN",
    "FULL_VALIDATION",
    "EIGHT_TRAIN",
    "EIGHT_VALIDATION",
    "FULL_TRAIN_DAMAGED",
    "EIGHT_TRAIN_DAMAGED",
    "C25_SETS",
    "RowSpec",
    "expected_counts",
    "corrupt_jpeg_mid_stream",
    "exceeding_box",
    "make_face_image",
    "make_full_release",
    "make_eight_label_release",
    "make_c25_csvs",
    "make_full_release_for_names",
    "make_all",
    "main",
]

FULL_COLUMNS = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
)
NUM_PARTICIPANTS = 25


@dataclasses.dataclass(frozen=True)
class RowSpec:
    """One dummy row: its labels and what is special about its file.

    ``file`` is "ok", "png_as_jpg" (PNG bytes under a .jpg name), "corrupt" (a truncated JPEG),
    "corrupt_midstream" (a JPEG with 64 bytes of its entropy-coded data overwritten and its end
    marker intact: OpenCV decodes it with only a warning) or "missing" (listed in the CSV, no
    file written). ``box`` (full release) is "inside", "exceeds" (the box of `exceeding_box`:
    past the left and bottom borders), "outside" (right of the image) or "empty" (width 0).
    """

    expression: int
    valence: float = 0.5
    arousal: float = -0.25
    extension: str = ".jpg"
    file: str = "ok"
    box: str = "inside"


# Full release, train: all eleven codes, a -2 valence, a truncated JPEG, every extension.
FULL_TRAIN = (
    RowSpec(0, 0.1, 0.2, ".jpg"),
    RowSpec(1, 0.8, 0.4, ".jpeg"),
    RowSpec(2, -0.6, -0.1, ".JPG"),
    RowSpec(3, 0.2, 0.9, ".png"),
    RowSpec(4, -0.4, 0.7, ".PNG"),
    RowSpec(5, -0.7, 0.3, ".jpg", "png_as_jpg"),
    RowSpec(6, -0.5, 0.6, ".jpg"),
    RowSpec(7, -0.2, 0.1, ".jpg", "corrupt"),
    RowSpec(8, -2.0, -2.0, ".jpg"),
    RowSpec(9, 0.0, 0.0, ".png"),
    RowSpec(10, -2.0, -2.0, ".jpg"),
    RowSpec(3, -2.0, 0.5, ".jpeg"),
)
# Full release, validation: a missing image and a code 8.
FULL_VALIDATION = (
    RowSpec(0, 0.0, -0.1, ".jpg"),
    RowSpec(1, 0.6, 0.5, ".png"),
    RowSpec(2, -0.3, 0.2, ".jpg", "missing"),
    RowSpec(7, -0.1, 0.3, ".JPG"),
    RowSpec(8, 0.1, 0.1, ".jpg"),
    RowSpec(4, -0.5, 0.8, ".jpg", "png_as_jpg"),
)
# 8-label release: every class, a -2 valence, a truncated image, a PNG under a .jpg name.
EIGHT_TRAIN = (
    RowSpec(0, 0.1, 0.2),
    RowSpec(1, 0.785714, 0.4),
    RowSpec(2, -0.6, -0.1),
    RowSpec(3, 0.2, 0.9, file="png_as_jpg"),
    RowSpec(4, -0.4, 0.7),
    RowSpec(5, -0.7, 0.3),
    RowSpec(6, -0.5, 0.6),
    RowSpec(7, -0.2, 0.1),
    RowSpec(1, -2.0, 0.3),
    RowSpec(3, 0.3, 0.3, file="corrupt"),
)
EIGHT_VALIDATION = (
    RowSpec(0, 0.0, -0.1),
    RowSpec(2, -0.3, 0.2),
    RowSpec(4, -0.5, 0.8),
    RowSpec(6, -0.6, 0.5),
    RowSpec(7, -0.1, 0.3),
)
# The same splits with what only a strict decoder and a box check catch (the default data keep
# none of it): full train row 0's box exceeds the image (clipped, kept), row 2 is a JPEG corrupt
# mid-stream, row 4's box has no width, row 6's lies outside the image; 8-label train row 2 is
# corrupt mid-stream.
FULL_TRAIN_DAMAGED = (
    dataclasses.replace(FULL_TRAIN[0], box="exceeds"),
    FULL_TRAIN[1],
    dataclasses.replace(FULL_TRAIN[2], file="corrupt_midstream"),
    FULL_TRAIN[3],
    dataclasses.replace(FULL_TRAIN[4], box="empty"),
    FULL_TRAIN[5],
    dataclasses.replace(FULL_TRAIN[6], box="outside"),
) + FULL_TRAIN[7:]
EIGHT_TRAIN_DAMAGED = (
    EIGHT_TRAIN[:2]
    + (dataclasses.replace(EIGHT_TRAIN[2], file="corrupt_midstream"),)
    + EIGHT_TRAIN[3:]
)
# AffectNetC25: the training rows each set annotates.
C25_SETS = {"set1": tuple(range(0, 6)), "set2": tuple(range(6, 12))}


def expected_counts(specs, label_set):
    """Examples a builder should write from these rows for "emotions8" or "all11"."""
    count = 0
    for spec in specs:
        if spec.file in ("corrupt", "corrupt_midstream", "missing"):
            continue
        if spec.box in ("outside", "empty"):
            continue
        if label_set == "emotions8" and (
            spec.expression >= 8 or spec.valence == -2 or spec.arousal == -2
        ):
            continue
        count += 1
    return count


def corrupt_jpeg_mid_stream(data, kind="random", position=0.5, size=64, seed=0):
    """Damages a JPEG inside its entropy-coded data and keeps its end-of-image marker.

    Args:
        data: JPEG bytes ending with the FFD9 marker (as ``cv2.imencode`` writes them).
        kind: "random" (``size`` seeded random bytes, none 0xFF), "zero" (``size`` zero bytes),
            "flip" (``size`` bytes XOR 0x5A, a result of 0xFF becomes 0xFE) or "truncate" (the
            data cut at ``position`` and FFD9 appended).
        position: where in the entropy-coded data (0..1, from the first scan's start to the
            end marker) the damage starts.
        size: how many bytes are overwritten (not for "truncate").
        seed: the random bytes' seed.

    Returns:
        The damaged bytes: the same length (except "truncate"), the same headers, FFD9 last.
    """
    data = bytes(data)
    if not data.endswith(b"\xff\xd9"):
        raise ValueError("`data` must be a JPEG that ends with its FFD9 marker.")
    sos = data.find(b"\xff\xda")
    if sos < 0:
        raise ValueError("`data` has no start-of-scan marker (FFDA).")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    end = len(data) - 2
    offset = start + int((end - start) * position)
    if kind == "truncate":
        return data[:offset] + b"\xff\xd9"
    size = min(size, end - offset)
    if kind == "random":
        block = np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8).tobytes()
    elif kind == "zero":
        block = bytes(size)
    elif kind == "flip":
        block = bytes(0xFE if b ^ 0x5A == 0xFF else b ^ 0x5A for b in data[offset : offset + size])
    else:
        raise ValueError(
            f"`kind` must be 'random', 'zero', 'flip' or 'truncate'. Received: kind={kind!r}"
        )
    return data[:offset] + block + data[offset + size :]


def exceeding_box(box, height, width):
    """The box moved so that it starts left of the image and ends below it (same size)."""
    _, _, w, h = box
    return (-(w // 2), height - h // 2, w, h)


def _placed_box(spec, box, height, width):
    """The box a spec asks for (the CSV's face box; the face is drawn there)."""
    x, y, w, h = box
    if spec.box == "inside":
        return box
    if spec.box == "exceeds":
        return exceeding_box(box, height, width)
    if spec.box == "outside":
        return (width + 5, y, w, h)
    if spec.box == "empty":
        return (x, y, 0, h)
    raise ValueError(f"Unknown box kind {spec.box!r}.")


def _hex_name(rng, extension):
    return "".join(rng.choice(list("0123456789abcdef"), size=56)) + extension


def make_face_image(rng, height, width, box):
    """A small RGB image with a light ellipse (the face) inside ``box`` = (x, y, w, h)."""
    image = rng.integers(0, 80, size=(height, width, 3), dtype=np.uint8)
    x, y, w, h = box
    center = (int(x + w / 2), int(y + h / 2))
    color = tuple(int(c) for c in rng.integers(150, 255, size=3))
    cv2.ellipse(image, center, (max(1, w // 2), max(1, h // 2)), 0, 0, 360, color, -1)
    cv2.circle(image, (int(x + w * 0.3), int(y + h * 0.4)), max(1, w // 10), (20, 20, 20), -1)
    cv2.circle(image, (int(x + w * 0.7), int(y + h * 0.4)), max(1, w // 10), (20, 20, 20), -1)
    return image


def _landmarks_in_box(rng, box):
    x, y, w, h = box
    xs = rng.uniform(x, x + w, size=68)
    ys = rng.uniform(y, y + h, size=68)
    return np.stack([xs, ys], axis=1).round(2)


def _encoded(image, fmt):
    ok, buffer = cv2.imencode(fmt, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return buffer.tobytes()


def _write_image(path, image, spec):
    """Writes the file as the spec says (content chosen by spec, not by the name)."""
    if spec.file == "missing":
        return
    if spec.file == "png_as_jpg" or spec.extension.lower() == ".png":
        data = _encoded(image, ".png")
    else:
        data = _encoded(image, ".jpg")
    if spec.file == "corrupt":
        data = _encoded(image, ".jpg")
        data = data[: len(data) // 2]
    if spec.file == "corrupt_midstream":
        data = corrupt_jpeg_mid_stream(_encoded(image, ".jpg"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _full_rows(folder, specs, rng, subdirs):
    rows = []
    for i, spec in enumerate(specs):
        height, width = (int(v) for v in rng.integers(48, 97, size=2))
        w = int(rng.integers(width // 3, width // 2 + 1))
        h = int(rng.integers(height // 3, height // 2 + 1))
        x = int(rng.integers(0, width - w))
        y = int(rng.integers(0, height - h))
        box = _placed_box(spec, (x, y, w, h), height, width)
        x, y, w, h = box
        subdir = str(subdirs[i % len(subdirs)])
        name = _hex_name(rng, spec.extension)
        _write_image(folder / subdir / name, make_face_image(rng, height, width, box), spec)
        landmarks = _landmarks_in_box(rng, box).reshape(-1)
        rows.append(
            {
                "subDirectory_filePath": f"{subdir}/{name}",
                "face_x": x,
                "face_y": y,
                "face_width": w,
                "face_height": h,
                "facial_landmarks": ";".join(f"{v:.2f}" for v in landmarks),
                "expression": spec.expression,
                "valence": spec.valence,
                "arousal": spec.arousal,
            }
        )
    return rows


def make_full_release(root, seed=0, train=FULL_TRAIN, validation=FULL_VALIDATION):
    """Writes the full release's layout into ``root``; returns {split: DataFrame of the CSV}."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    images = root / "Manually_Annotated_Images"
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True, exist_ok=True)
    frames = {}
    for split, specs, csv_name, subdirs in (
        ("train", train, "training.csv", (101, 2, 387)),
        ("validation", validation, "validation.csv", (55, 1001)),
    ):
        frame = pd.DataFrame(_full_rows(images, specs, rng, subdirs), columns=FULL_COLUMNS)
        frame.to_csv(lists / csv_name, index=False)
        frames[split] = frame
    return frames


def make_eight_label_release(root, seed=1, train=EIGHT_TRAIN, validation=EIGHT_VALIDATION):
    """Writes the 8-label release's layout (annotations as numpy strings) into ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    written = {}
    for split, specs, folder in (
        ("train", train, "train_set"),
        ("validation", validation, "val_set"),
    ):
        images = root / folder / "images"
        annotations = root / folder / "annotations"
        images.mkdir(parents=True, exist_ok=True)
        annotations.mkdir(parents=True, exist_ok=True)
        ids = sorted(rng.choice(np.arange(1, 5000), size=len(specs) + 1, replace=False).tolist())
        for number, spec in zip(ids, specs):
            size = int(rng.integers(56, 97))
            box = (size // 5, size // 5, 3 * size // 5, 3 * size // 5)
            image = make_face_image(rng, size, size, box)
            _write_image(images / f"{number}.jpg", image, spec)
            landmarks = _landmarks_in_box(rng, box).reshape(-1)
            np.save(annotations / f"{number}_exp.npy", np.array(str(spec.expression)))
            np.save(annotations / f"{number}_val.npy", np.array(f"{spec.valence:g}"))
            np.save(annotations / f"{number}_aro.npy", np.array(f"{spec.arousal:g}"))
            if number % 2:
                lnd = np.array(";".join(f"{v:.3f}" for v in landmarks))
            else:
                lnd = np.array([f"{v:.3f}" for v in landmarks])
            np.save(annotations / f"{number}_lnd.npy", lnd)
        orphan = ids[-1]  # annotations without an image
        for suffix, value in (("exp", "2"), ("val", "0.1"), ("aro", "0.2")):
            np.save(annotations / f"{orphan}_{suffix}.npy", np.array(value))
        written[split] = ids
    return written


def make_c25_csvs(folder, training, seed=2, sets=C25_SETS):
    """Writes the six C25 CSVs for rows of ``training`` (the training.csv DataFrame).

    Returns {(kind, set): DataFrame}.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    participants = [f"participant{i}" for i in range(NUM_PARTICIPANTS)]
    frames = {}
    for set_name, rows in sets.items():
        names = [training["subDirectory_filePath"][i].rsplit("/", 1)[-1] for i in rows]
        base = {"index": list(rows), "filename": names}
        expression = rng.integers(0, 8, size=(len(rows), NUM_PARTICIPANTS)).astype(object)
        valence = rng.integers(-4, 5, size=(len(rows), NUM_PARTICIPANTS)) / 4.0
        arousal = rng.integers(-4, 5, size=(len(rows), NUM_PARTICIPANTS)) / 4.0
        # Cleaned cases: an empty expression answer, an invalid code, an off-grid valence.
        expression[0, 3] = ""
        expression[1, 7] = 9
        valence = valence.astype(object)
        valence[2, 5] = -2.0
        valence[3, 0] = ""
        for kind, values in (
            ("expression", expression),
            ("valence", valence),
            ("arousal", arousal),
        ):
            frame = pd.DataFrame(base)
            frame[participants] = pd.DataFrame(values.tolist(), columns=participants)
            frame.to_csv(folder / f"{kind}_{set_name}_C25.csv", index=False)
            frames[(kind, set_name)] = frame
    return frames


def make_full_release_for_names(root, names, seed=3, size=24):
    """A full-release layout whose training.csv lists ``names`` (e.g. AffectNetC25's file names).

    Tiny generated images are written under those names (PNG bytes for .png/.PNG names and for
    every 25th .jpg name, JPEG otherwise); labels are random, codes 8-10 and -2 included. Row
    ``i`` of training.csv holds ``names[i]``. Returns the training.csv DataFrame.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    images = root / "Manually_Annotated_Images"
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, name in enumerate(names):
        box = (4, 4, size - 8, size - 8)
        image = make_face_image(rng, size, size, box)
        as_png = name.lower().endswith(".png") or i % 25 == 0
        subdir = str(int(rng.integers(1, 1200)))
        path = images / subdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_encoded(image, ".png" if as_png else ".jpg"))
        code = int(rng.integers(0, 11))
        valence, arousal = (-2.0, -2.0) if code == 10 else rng.uniform(-1, 1, 2).round(3)
        rows.append(
            {
                "subDirectory_filePath": f"{subdir}/{name}",
                "face_x": box[0],
                "face_y": box[1],
                "face_width": box[2],
                "face_height": box[3],
                "facial_landmarks": ";".join(
                    f"{v:.2f}" for v in _landmarks_in_box(rng, box).reshape(-1)
                ),
                "expression": code,
                "valence": valence,
                "arousal": arousal,
            }
        )
    frame = pd.DataFrame(rows, columns=FULL_COLUMNS)
    frame.to_csv(lists / "training.csv", index=False)
    frame.iloc[:0].to_csv(lists / "validation.csv", index=False)
    return frame


def make_all(root, seed=0, layouts=("full", "eight_label", "c25"), damaged=False):
    """Writes the requested layouts into ``root`` (C25 CSVs go to ``root/AffectNetC25``).

    ``damaged=True`` writes the train splits `FULL_TRAIN_DAMAGED` and `EIGHT_TRAIN_DAMAGED`.
    """
    root = Path(root)
    result = {}
    full_train = FULL_TRAIN_DAMAGED if damaged else FULL_TRAIN
    eight_train = EIGHT_TRAIN_DAMAGED if damaged else EIGHT_TRAIN
    if "full" in layouts or "c25" in layouts:
        result["full"] = make_full_release(root, seed, train=full_train)
    if "eight_label" in layouts:
        result["eight_label"] = make_eight_label_release(root, seed + 1, train=eight_train)
    if "c25" in layouts:
        result["c25"] = make_c25_csvs(root / "AffectNetC25", result["full"]["train"], seed + 2)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="folder to write into (created if absent)")
    parser.add_argument(
        "--layout",
        choices=("full", "eight_label", "c25", "all"),
        default="all",
        help="what to write; c25 also writes the full release it joins to (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--damaged",
        action="store_true",
        help="train splits with a JPEG corrupt mid-stream and bad face boxes (default: off)",
    )
    args = parser.parse_args(argv)
    layouts = ("full", "eight_label", "c25") if args.layout == "all" else (args.layout,)
    make_all(args.output_dir, args.seed, layouts, damaged=args.damaged)
    print(f"wrote {', '.join(layouts)} dummy data into {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
