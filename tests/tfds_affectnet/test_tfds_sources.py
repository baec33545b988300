"""Release detection, CSV streaming, the .npy string format and the AffectNetC25 CSVs."""

import collections

import make_dummy_data
import numpy as np
import pandas as pd
import pytest
from label_expectations import remap_by_name

from tfds_affectnet import sources


@pytest.fixture(scope="module")
def dummy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("affectnet_dummy")
    make_dummy_data.make_all(root)
    return root


def _only(root, tmp_path, *entries):
    """A manual folder holding only some entries of the dummy root (symlinked)."""
    for entry in entries:
        (tmp_path / entry).symlink_to(root / entry)
    return tmp_path


# --- release detection --------------------------------------------------------------------


def test_detects_full_release(dummy_root, tmp_path):
    manual = _only(
        dummy_root, tmp_path, "Manually_Annotated_file_lists", "Manually_Annotated_Images"
    )
    assert sources.detect_release(manual) == sources.FULL


def test_detects_eight_label_release(dummy_root, tmp_path):
    manual = _only(dummy_root, tmp_path, "train_set", "val_set")
    assert sources.detect_release(manual) == sources.EIGHT_LABEL


def test_both_releases_prefer_full_unless_asked(dummy_root):
    assert sources.detect_release(dummy_root) == sources.FULL
    assert sources.detect_release(dummy_root, "eight_label") == sources.EIGHT_LABEL


def test_neither_release_lists_every_expected_path(tmp_path):
    (tmp_path / "something_else").mkdir()
    with pytest.raises(FileNotFoundError) as error:
        sources.detect_release(tmp_path)
    message = str(error.value)
    for expected in (
        f"{tmp_path}/Manually_Annotated_file_lists/training.csv",
        f"{tmp_path}/Manually_Annotated_file_lists/validation.csv",
        f"{tmp_path}/Manually_Annotated_Images/<subDirectory>/<file name>",
        f"{tmp_path}/train_set/images/<n>.jpg",
        f"{tmp_path}/train_set/annotations/<n>_exp.npy, <n>_val.npy, <n>_aro.npy, <n>_lnd.npy",
        f"{tmp_path}/val_set/images/<n>.jpg",
        f"{tmp_path}/val_set/annotations/<n>_exp.npy",
    ):
        assert expected in message
    assert "[MISSING]" in message and "[found]" not in message


def test_partial_full_release_is_reported_as_such(dummy_root, tmp_path):
    manual = _only(dummy_root, tmp_path, "Manually_Annotated_Images")
    with pytest.raises(FileNotFoundError, match=r"Manually_Annotated_Images/<subDirectory>/<file"):
        sources.detect_release(manual)
    message = sources.expected_layout_message(manual)
    assert "Manually_Annotated_Images/<subDirectory>/<file name>  [found]" in message
    assert "training.csv  [MISSING]" in message


def test_release_one_folder_down_is_suggested(dummy_root, tmp_path):
    (tmp_path / "AffectNet").symlink_to(dummy_root)
    with pytest.raises(FileNotFoundError, match=r"(?s)found one folder down.*AffectNet \(full"):
        sources.detect_release(tmp_path)


def test_unknown_release_value():
    with pytest.raises(ValueError, match="release="):
        sources.detect_release("/nowhere", "both")


# --- full release CSV -----------------------------------------------------------------------


def test_full_rows_stream_in_chunks_like_beam_work_items(dummy_root):
    csv = sources.full_release_paths(dummy_root)["train"]
    streamed = list(sources.iter_full_rows(csv, chunksize=5))
    frame = pd.read_csv(csv, dtype=str)
    assert [row["file_name"] for row in streamed] == list(frame["subDirectory_filePath"])
    assert [row["index"] for row in streamed] == list(range(len(frame)))
    chunks = sources.row_chunks(sources.count_csv_rows(csv), 5)
    assert chunks == [(0, 5), (5, 10), (10, 12)]
    pieces = [row for chunk in chunks for row in sources.read_full_chunk(csv, chunk)]
    assert pieces == streamed


def test_full_rows_without_header(dummy_root, tmp_path):
    csv = sources.full_release_paths(dummy_root)["validation"]
    lines = open(csv).read().splitlines()
    headerless = tmp_path / "validation.csv"
    headerless.write_text("\n".join(lines[1:]) + "\n")
    assert sources.count_csv_rows(str(headerless)) == len(lines) - 1
    rows = list(sources.iter_full_rows(str(headerless)))
    assert [row["file_name"] for row in rows] == [line.split(",")[0] for line in lines[1:]]
    assert sources.parse_landmarks(rows[0]["facial_landmarks"]).shape == (68, 2)


def test_full_csv_with_wrong_columns(tmp_path):
    bad = tmp_path / "training.csv"
    bad.write_text("subDirectory_filePath,x,y\n1/a.jpg,1,2\n")
    with pytest.raises(ValueError, match="expected"):
        list(sources.iter_full_rows(str(bad)))


# --- 8-label release: numpy strings -----------------------------------------------------------


def test_eight_label_npy_files_hold_numpy_strings(dummy_root):
    images_dir, annotations_dir = sources.eight_label_paths(dummy_root)["train"]
    rows, orphans = sources.list_eight_label_rows(images_dir, annotations_dir)
    assert len(rows) == len(make_dummy_data.EIGHT_TRAIN) and len(orphans) == 1
    numbers = [int(row["file_name"].split(".")[0]) for row in rows]
    assert numbers == sorted(numbers)  # numeric, not alphabetical, order
    paths = sources.eight_label_annotation_paths(annotations_dir, rows[1]["file_name"])
    raw = sources.load_npy(paths["val"])
    assert raw.dtype.kind == "U"  # the real release's format: np.array('0.785714')
    assert sources.parse_number(raw) == pytest.approx(0.785714)
    assert sources.parse_number(sources.load_npy(paths["exp"])) == 1.0
    for row in rows:
        lnd = sources.eight_label_annotation_paths(annotations_dir, row["file_name"])["lnd"]
        points = sources.parse_landmarks(sources.load_npy(lnd))
        assert points.shape == (68, 2) and points.dtype == np.float32


@pytest.mark.parametrize(
    "value, expected",
    [
        (np.array("1"), 1.0),
        (np.array("0.785714"), 0.785714),
        (np.array(b"-2"), -2.0),
        (np.array(3), 3.0),
        (np.array([0.25]), 0.25),
        ("7", 7.0),
    ],
)
def test_parse_number_accepts_strings_and_numbers(value, expected):
    assert sources.parse_number(value) == pytest.approx(expected)


def test_parse_number_rejects_arrays_and_text():
    with pytest.raises(ValueError, match="single value"):
        sources.parse_number(np.array(["1", "2"]))
    with pytest.raises(ValueError):
        sources.parse_number(np.array("happy"))


def test_parse_landmarks_formats():
    numbers = np.arange(136, dtype=np.float64) / 2
    expected = numbers.reshape(68, 2)
    for value in (
        ";".join(f"{v}" for v in numbers),
        np.array(";".join(f"{v}" for v in numbers)),
        np.array([f"{v}" for v in numbers]),
        numbers,
        expected,
    ):
        np.testing.assert_allclose(sources.parse_landmarks(value), expected)
    with pytest.raises(ValueError, match="136"):
        sources.parse_landmarks("1;2;3")


# --- AffectNetC25 CSVs ------------------------------------------------------------------------


def _c25_paths(folder, set_name):
    return {kind: str(folder / f"{kind}_{set_name}_C25.csv") for kind in sources.C25_KINDS}


def test_c25_set_is_remapped_and_cleaned(dummy_root):
    counts = collections.Counter()
    folder = dummy_root / "AffectNetC25"
    rows = sources.read_c25_set(_c25_paths(folder, "set1"), counts)
    frame = pd.read_csv(folder / "expression_set1_C25.csv")
    assert [row["file_name"] for row in rows] == list(frame["filename"])
    assert [row["affectnet_index"] for row in rows] == list(frame["index"])
    raw = frame[[f"participant{i}" for i in range(25)]].to_numpy()
    for row, answers in zip(rows, raw):
        assert row["crowd_expression"].shape == (25,) and row["crowd_expression"].dtype == np.int64
        for got, answer in zip(row["crowd_expression"], answers):
            if np.isnan(answer) or answer not in range(8):
                assert got == -1
            else:
                assert got == remap_by_name(int(answer))
    # The dummy CSVs hold one empty answer (no answer, not counted), a code 9 and a -2 valence.
    assert rows[0]["crowd_expression"][3] == -1
    assert rows[1]["crowd_expression"][7] == -1
    assert np.isnan(rows[2]["crowd_valence"][5]) and np.isnan(rows[3]["crowd_valence"][0])
    assert counts == {
        "crowd expression code outside 0..7 -> -1": 1,
        "crowd valence outside -1..1 (0.25 steps) -> NaN": 1,
    }


def test_c25_majority_vote_matches_the_csv_votes(dummy_root):
    folder = dummy_root / "AffectNetC25"
    rows = sources.read_c25_set(_c25_paths(folder, "set2"), collections.Counter())
    frame = pd.read_csv(folder / "expression_set2_C25.csv")
    for row, answers in zip(rows, frame[[f"participant{i}" for i in range(25)]].to_numpy()):
        valid = [int(a) for a in answers if not np.isnan(a) and int(a) in range(8)]
        csv_counts = collections.Counter(remap_by_name(a) for a in valid)
        top = max(csv_counts.values())
        expected = {code for code, n in csv_counts.items() if n == top}
        crowd = row["crowd_expression"][row["crowd_expression"] >= 0]
        got_counts = np.bincount(crowd, minlength=8)
        assert set(np.flatnonzero(got_counts == got_counts.max())) == expected


def test_c25_csv_without_participants_is_rejected(tmp_path):
    for kind in sources.C25_KINDS:
        (tmp_path / f"{kind}_set1_C25.csv").write_text("index,filename,participant0\n1,a.jpg,3\n")
    with pytest.raises(ValueError, match="participant1"):
        sources.read_c25_set(_c25_paths(tmp_path, "set1"), collections.Counter())


def test_find_c25_csvs_in_manual_dir(dummy_root, tmp_path):
    assert sources.find_c25_csvs(dummy_root)[("valence", "set2")].endswith(
        "AffectNetC25/valence_set2_C25.csv"
    )
    (tmp_path / "expression_set1_C25.csv").write_text("")
    assert sources.find_c25_csvs(tmp_path) is None  # incomplete: downloaded instead


def test_lookup_training_rows_by_file_name(dummy_root):
    csv = sources.full_release_paths(dummy_root)["train"]
    frame = pd.read_csv(csv)
    names = [frame["subDirectory_filePath"][i].split("/")[-1] for i in (3, 9)] + ["absent.jpg"]
    found, duplicates = sources.lookup_training_rows(csv, names, chunksize=4)
    assert set(found) == set(names[:2]) and duplicates == 0
    assert found[names[1]]["index"] == 9
    assert found[names[0]]["file_name"] == frame["subDirectory_filePath"][3]
