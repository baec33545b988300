"""Where the AffectNet releases and the AffectNetC25 CSVs are, and how their rows are read.

Everything here streams: CSVs are read in pandas chunks and rows are small dicts of strings and
paths (picklable, so Apache Beam can ship them to workers). Images are not touched here.

File access goes through ``tf.io.gfile`` so that the manual folder may live on GCS.
"""

import re

import numpy as np
import pandas as pd
import tensorflow as tf

from tfds_affectnet import labels

__all__ = [
    "FULL",
    "EIGHT_LABEL",
    "RELEASES",
    "SPLITS",
    "FULL_COLUMNS",
    "full_release_paths",
    "eight_label_paths",
    "expected_layout_message",
    "detect_release",
    "iter_full_rows",
    "count_csv_rows",
    "row_chunks",
    "list_eight_label_rows",
    "eight_label_annotation_paths",
    "load_npy",
    "parse_number",
    "parse_landmarks",
    "C25_SETS",
    "C25_KINDS",
    "C25_DIR",
    "C25_URL",
    "C25_NUM_PARTICIPANTS",
    "c25_file_name",
    "c25_url",
    "find_c25_csvs",
    "read_c25_set",
    "lookup_training_rows",
    "read_full_chunk",
    "batches",
    "identity",
]

FULL = "full"
EIGHT_LABEL = "eight_label"
RELEASES = (FULL, EIGHT_LABEL)
SPLITS = ("train", "validation")

AFFECTNET_CITATION = """\
@article{mollahosseini2019affectnet,
  author  = {Mollahosseini, Ali and Hasani, Behzad and Mahoor, Mohammad H.},
  title   = {AffectNet: A Database for Facial Expression, Valence, and Arousal Computing in the
             Wild},
  journal = {IEEE Transactions on Affective Computing},
  volume  = {10},
  number  = {1},
  pages   = {18--31},
  year    = {2019},
  doi     = {10.1109/TAFFC.2017.2740923},
}
"""

FULL_LISTS_DIR = "Manually_Annotated_file_lists"
FULL_IMAGES_DIR = "Manually_Annotated_Images"
FULL_CSV_NAMES = {"train": "training.csv", "validation": "validation.csv"}
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
EIGHT_SPLIT_DIRS = {"train": "train_set", "validation": "val_set"}
EIGHT_ANNOTATION_SUFFIXES = ("exp", "val", "aro", "lnd")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
NUM_LANDMARKS = 68

C25_DIR = "AffectNetC25"
C25_SETS = ("set1", "set2")
C25_KINDS = ("expression", "valence", "arousal")
C25_NUM_PARTICIPANTS = 25
C25_URL = "https://raw.githubusercontent.com/kdoodoo/affectnetc25/main/AffectNetC25/{file_name}"
C25_VA_GRID = np.arange(-1.0, 1.0001, 0.25)


def _join(*parts):
    return "/".join([str(parts[0]).rstrip("/")] + [str(part).strip("/") for part in parts[1:]])


# ---------------------------------------------------------------------------------------------
# Release layouts and detection.


def full_release_paths(manual_dir):
    """The files of the full release: {"train": csv, "validation": csv, "images": folder}."""
    lists = _join(manual_dir, FULL_LISTS_DIR)
    paths = {split: _join(lists, name) for split, name in FULL_CSV_NAMES.items()}
    paths["images"] = _join(manual_dir, FULL_IMAGES_DIR)
    return paths


def eight_label_paths(manual_dir):
    """The folders of the 8-label release: {split: (images folder, annotations folder)}."""
    return {
        split: (_join(manual_dir, folder, "images"), _join(manual_dir, folder, "annotations"))
        for split, folder in EIGHT_SPLIT_DIRS.items()
    }


def _full_present(manual_dir):
    paths = full_release_paths(manual_dir)
    return {
        paths["train"]: tf.io.gfile.exists(paths["train"]),
        paths["validation"]: tf.io.gfile.exists(paths["validation"]),
        paths["images"] + "/": tf.io.gfile.isdir(paths["images"]),
    }


def _eight_present(manual_dir):
    present = {}
    for images, annotations in eight_label_paths(manual_dir).values():
        present[images + "/"] = tf.io.gfile.isdir(images)
        present[annotations + "/"] = tf.io.gfile.isdir(annotations)
    return present


def expected_layout_message(manual_dir):
    """Lists the exact paths both releases are expected at, each marked found or missing."""

    def mark(found):
        return "found" if found else "MISSING"

    full = full_release_paths(manual_dir)
    full_found = _full_present(manual_dir)
    eight_found = _eight_present(manual_dir)
    lines = [
        f"No complete AffectNet release was found in the manual folder {manual_dir}.",
        "Expected ONE of these two layouts:",
        "  (a) full release (Manually_Annotated, about 420,000 images):",
        f"      {full['train']}  [{mark(full_found[full['train']])}]",
        f"      {full['validation']}  [{mark(full_found[full['validation']])}]",
        f"      {full['images']}/<subDirectory>/<file name>  "
        f"[{mark(full_found[full['images'] + '/'])}]",
        "      (CSV columns: " + ", ".join(FULL_COLUMNS) + ")",
        "  (b) 8-label release:",
    ]
    for images, annotations in eight_label_paths(manual_dir).values():
        lines.append(f"      {images}/<n>.jpg  [{mark(eight_found[images + '/'])}]")
        lines.append(
            f"      {annotations}/<n>_exp.npy, <n>_val.npy, <n>_aro.npy, <n>_lnd.npy  "
            f"[{mark(eight_found[annotations + '/'])}]"
        )
    hints = _layouts_one_level_down(manual_dir)
    if hints:
        lines.append("A release was found one folder down; pass that folder as the manual folder:")
        lines.extend(f"      {hint}" for hint in hints)
    lines.append(
        "Set the folder with `tfds build --manual_dir=DIR` or "
        "`tfds.download.DownloadConfig(manual_dir=DIR)` "
        "(default: ~/tensorflow_datasets/downloads/manual/)."
    )
    return "\n".join(lines)


def _layouts_one_level_down(manual_dir):
    hints = []
    if not tf.io.gfile.isdir(str(manual_dir)):
        return hints
    for name in sorted(tf.io.gfile.listdir(str(manual_dir))):
        child = _join(manual_dir, name)
        if not tf.io.gfile.isdir(child):
            continue
        if all(_full_present(child).values()):
            hints.append(f"{child} (full release)")
        elif all(_eight_present(child).values()):
            hints.append(f"{child} (8-label release)")
    return hints


def detect_release(manual_dir, release="auto"):
    """Finds which AffectNet release the manual folder holds.

    Args:
        manual_dir: the manual download folder.
        release: "auto" (the full release when both are there), "full" or "eight_label".

    Returns:
        `FULL` or `EIGHT_LABEL`.

    Raises:
        FileNotFoundError: the requested release (or any, for "auto") is incomplete or absent;
            the message lists the exact paths expected for both releases.
    """
    if release not in ("auto",) + RELEASES:
        raise ValueError(
            f"`release` must be 'auto', 'full' or 'eight_label'. Received: release={release!r}"
        )
    has_full = all(_full_present(manual_dir).values())
    has_eight = all(_eight_present(manual_dir).values())
    if release in ("auto", FULL) and has_full:
        return FULL
    if release in ("auto", EIGHT_LABEL) and has_eight:
        return EIGHT_LABEL
    message = expected_layout_message(manual_dir)
    if release != "auto":
        message = f"The requested release={release!r} is not complete.\n" + message
    raise FileNotFoundError(message)


# ---------------------------------------------------------------------------------------------
# Full release: training.csv / validation.csv.


def _read_csv_chunks(csv_path, start, stop, chunksize):
    header = _peek_columns(csv_path)
    has_header = header[0] == FULL_COLUMNS[0]
    if has_header and header != list(FULL_COLUMNS):
        raise ValueError(f"{csv_path} has the columns {header}; expected {list(FULL_COLUMNS)}.")
    if stop is not None and stop <= start:
        return
    options = {
        "header": None,
        "names": list(FULL_COLUMNS),
        "dtype": str,
        "keep_default_na": False,
        "skiprows": start + (1 if has_header else 0),
        "chunksize": chunksize,
    }
    if stop is not None:
        options["nrows"] = stop - start
    with tf.io.gfile.GFile(csv_path, "r") as handle:
        yield from pd.read_csv(handle, **options)


def _peek_columns(csv_path):
    with tf.io.gfile.GFile(csv_path, "r") as handle:
        first = handle.readline()
    return [name.strip().strip('"') for name in first.rstrip("\r\n").split(",")]


def _has_header(csv_path):
    return _peek_columns(csv_path)[0] == FULL_COLUMNS[0]


def iter_full_rows(csv_path, start=0, stop=None, chunksize=20_000):
    """Streams rows of training.csv / validation.csv as dicts of strings.

    Args:
        csv_path: the CSV (with or without its header line).
        start: the first data row, counted from 0 (the AffectNetC25 ``index``).
        stop: the row after the last one (``[start, stop)``); ``None`` reads to the end.
        chunksize: rows per pandas chunk.

    Yields:
        dict with "index" (int), "file_name" (``subDirectory_filePath``) and the other columns
        as strings (``face_x`` ... ``arousal``).
    """
    index = start
    for chunk in _read_csv_chunks(csv_path, start, stop, chunksize):
        for values in chunk.itertuples(index=False, name=None):
            row = dict(zip(FULL_COLUMNS, values))
            row["file_name"] = row.pop("subDirectory_filePath").strip()
            row["index"] = index
            index += 1
            yield row


def count_csv_rows(csv_path):
    """Number of data rows of a full-release CSV (header excluded), read as a stream."""
    count = 0
    with tf.io.gfile.GFile(csv_path, "r") as handle:
        for line in handle:
            if line.strip():
                count += 1
    return count - (1 if _has_header(csv_path) else 0)


def row_chunks(num_rows, chunk_rows):
    """Splits ``range(num_rows)`` into ``(start, stop)`` pieces (work items for Beam)."""
    return [(start, min(start + chunk_rows, num_rows)) for start in range(0, num_rows, chunk_rows)]


# ---------------------------------------------------------------------------------------------
# 8-label release: <split>_set/images/<n>.jpg and annotations/<n>_{exp,val,aro,lnd}.npy.


def _natural_key(name):
    stem = name.rsplit(".", 1)[0]
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def list_eight_label_rows(images_dir, annotations_dir):
    """The rows of one split of the 8-label release, sorted by number.

    Returns:
        `(rows, orphans)`: rows are dicts ``{"file_name": "<n>.jpg"}`` (small: the folders are
        known to the row processor); orphans are the ids that have an ``_exp.npy`` file but no
        image.
    """
    images = [
        name for name in tf.io.gfile.listdir(images_dir) if name.lower().endswith(IMAGE_EXTENSIONS)
    ]
    image_ids = {name.rsplit(".", 1)[0] for name in images}
    orphans = sorted(
        (
            name[: -len("_exp.npy")]
            for name in tf.io.gfile.listdir(annotations_dir)
            if name.endswith("_exp.npy") and name[: -len("_exp.npy")] not in image_ids
        ),
        key=_natural_key,
    )
    rows = [{"file_name": name} for name in sorted(images, key=_natural_key)]
    return rows, orphans


def eight_label_annotation_paths(annotations_dir, file_name):
    """{"exp": ..., "val": ..., "aro": ..., "lnd": ...} paths of one image's .npy files."""
    stem = file_name.rsplit(".", 1)[0]
    return {
        suffix: _join(annotations_dir, f"{stem}_{suffix}.npy")
        for suffix in EIGHT_ANNOTATION_SUFFIXES
    }


def load_npy(path):
    """Loads a .npy file through tf.io.gfile (never unpickling)."""
    with tf.io.gfile.GFile(path, "rb") as handle:
        return np.load(handle, allow_pickle=False)


def _as_text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def parse_number(value):
    """A float from a number, a numeric string (``'0.785714'``) or a 0-d / size-1 array of them.

    The 8-label release stores its annotations as numpy strings (``np.array('1')``).
    """
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"Expected a single value. Received an array of shape {array.shape}.")
    item = array.reshape(()).item()
    if isinstance(item, (str, bytes)):
        return float(_as_text(item).strip())
    return float(item)


_SEPARATORS = re.compile(r"[;,\s]+")


def parse_landmarks(value):
    """68 (x, y) points from 136 numbers: a ``;``-joined string, or an array of numbers or strings.

    The numbers are interleaved ``x1, y1, x2, y2, ...`` (AffectNet's order).

    Returns:
        float32 array (68, 2).

    Raises:
        ValueError: not 136 numbers.
    """
    array = np.asarray(value)
    if array.dtype.kind in "USO" or isinstance(value, (str, bytes)):
        if array.size == 1:
            text = _as_text(array.reshape(()).item()).strip()
            parts = [part for part in _SEPARATORS.split(text) if part]
        else:
            parts = [_as_text(item).strip() for item in array.reshape(-1)]
        numbers = np.array([float(part) for part in parts], dtype=np.float64)
    else:
        numbers = array.astype(np.float64).reshape(-1)
    if numbers.size != 2 * NUM_LANDMARKS:
        raise ValueError(
            f"Expected {2 * NUM_LANDMARKS} landmark numbers. Received: {numbers.size} numbers."
        )
    return numbers.reshape(NUM_LANDMARKS, 2).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# AffectNetC25 CSVs.


def c25_file_name(kind, set_name):
    """``expression_set1_C25.csv`` etc."""
    return f"{kind}_{set_name}_C25.csv"


def c25_url(kind, set_name):
    return C25_URL.format(file_name=c25_file_name(kind, set_name))


def find_c25_csvs(manual_dir):
    """The six C25 CSVs from the manual folder (``AffectNetC25/`` or directly), or None.

    Returns:
        {(kind, set): path} when all six are in one of the two places, else None.
    """
    for folder in (_join(manual_dir, C25_DIR), str(manual_dir)):
        paths = {
            (kind, set_name): _join(folder, c25_file_name(kind, set_name))
            for kind in C25_KINDS
            for set_name in C25_SETS
        }
        if all(tf.io.gfile.exists(path) for path in paths.values()):
            return paths
    return None


def _read_c25_csv(path):
    with tf.io.gfile.GFile(path, "r") as handle:
        frame = pd.read_csv(handle)
    participants = [f"participant{i}" for i in range(C25_NUM_PARTICIPANTS)]
    expected = ["index", "filename"] + participants
    missing = [column for column in expected if column not in frame.columns]
    if missing:
        raise ValueError(
            f"{path} lacks the AffectNetC25 columns {missing}; expected {expected[:3]} ... "
            f"{expected[-1]}. Received columns: {list(frame.columns)}"
        )
    frame["filename"] = frame["filename"].astype(str).str.strip()
    return frame, participants


def _clean_expression(values, counts):
    """C25-order codes -> canonical order; no answer (-1, NaN, empty) -> -1; others counted."""
    values = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    missing = ~np.isfinite(values) | (values == -1)
    valid = ~missing & np.isin(values, np.arange(8))
    invalid = ~missing & ~valid
    if invalid.any():
        counts["crowd expression code outside 0..7 -> -1"] += int(invalid.sum())
    codes = np.where(valid, values, -1).astype(np.int64)
    return labels.c25_to_affectnet(codes).astype(np.int64)


def _clean_va(values, counts, kind):
    """Values on the -1..1 grid (0.25 steps) stay; NaN stays NaN; anything else -> NaN, counted."""
    values = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    on_grid = finite & (np.abs(values[:, None] - C25_VA_GRID[None, :]) < 1e-6).any(axis=1)
    off_grid = finite & ~on_grid
    if off_grid.any():
        counts[f"crowd {kind} outside -1..1 (0.25 steps) -> NaN"] += int(off_grid.sum())
    return np.where(on_grid, values, np.nan).astype(np.float32)


def read_c25_set(paths, counts):
    """Reads the three CSVs of one set and joins them by file name.

    Args:
        paths: {kind: path} for "expression", "valence", "arousal".
        counts: a `collections.Counter` that receives the number of cleaned values per reason.

    Returns:
        list of dicts (in the expression CSV's order) with "file_name", "affectnet_index",
        "crowd_expression" (int64 (25,), canonical order, -1 = no answer), "crowd_valence" and
        "crowd_arousal" (float32 (25,), NaN = no answer).
    """
    frames = {kind: _read_c25_csv(paths[kind]) for kind in C25_KINDS}
    order = []
    seen = set()
    for kind in C25_KINDS:
        for name in frames[kind][0]["filename"]:
            if name not in seen:
                seen.add(name)
                order.append(name)
    by_name = {}
    for kind in C25_KINDS:
        frame, participants = frames[kind]
        duplicated = frame["filename"].duplicated(keep="first")
        if duplicated.any():
            counts[f"duplicate file name in the {kind} CSV (first row kept)"] += int(
                duplicated.sum()
            )
        frame = frame[~duplicated]
        for name, index, values in zip(
            frame["filename"], frame["index"], frame[participants].to_numpy()
        ):
            by_name.setdefault(name, {})[kind] = (int(index), values)
    rows = []
    for name in order:
        entry = by_name[name]
        indices = {index for index, _ in entry.values()}
        if len(indices) > 1:
            counts["index differs between the expression/valence/arousal CSVs"] += 1
        reference = entry.get("expression", next(iter(entry.values())))
        row = {"file_name": name, "affectnet_index": reference[0]}
        for kind in C25_KINDS:
            if kind in entry:
                values = entry[kind][1]
            else:
                counts[f"image absent from the {kind} CSV (all answers missing)"] += 1
                values = np.full(C25_NUM_PARTICIPANTS, np.nan)
            if kind == "expression":
                row["crowd_expression"] = _clean_expression(values, counts)
            else:
                row[f"crowd_{kind}"] = _clean_va(values, counts, kind)
        rows.append(row)
    return rows


def lookup_training_rows(training_csv, names, chunksize=20_000):
    """Finds rows of training.csv by image file name (the last part of subDirectory_filePath).

    Streams the CSV and keeps only the rows asked for.

    Returns:
        `(found, duplicates)`: {name: row} (the first row with that name; rows as in
        `iter_full_rows`) and the number of further rows that had an already found name.
    """
    wanted = set(names)
    found = {}
    duplicates = 0
    for row in iter_full_rows(training_csv, chunksize=chunksize):
        name = row["file_name"].rsplit("/", 1)[-1]
        if name in wanted:
            if name in found:
                duplicates += 1
            else:
                found[name] = row
    return found, duplicates


def read_full_chunk(csv_path, chunk):
    """The rows ``[start, stop)`` of a full-release CSV as a list (one Beam work item)."""
    start, stop = chunk
    return list(iter_full_rows(csv_path, start, stop))


def batches(items, size):
    """Splits a list into lists of at most ``size`` items (Beam work items)."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def identity(items):
    """Returns its argument (expands a batch of rows into rows in ``beam.FlatMap``)."""
    return items
