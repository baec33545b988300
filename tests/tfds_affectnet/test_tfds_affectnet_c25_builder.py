"""The ``affectnet_c25`` builder: the join, the remap, missing images and the CSV download."""

import collections
import shutil
from pathlib import Path

import make_dummy_data
import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds
from label_expectations import remap_by_name
from tensorflow_datasets.core.download import download_manager
from test_tfds_affectnet_builder import (
    BAD_BOX,
    CLIPPED,
    CORRUPT_MID_STREAM,
    DummyDataMixin,
    assert_mid_stream_corrupt,
    clipped_and_unclipped_crops,
    read_rgb,
)

from tfds_affectnet import AffectNetC25Config, sources
from tfds_affectnet.affectnet_c25 import affectnet_c25_dataset_builder

SIZE = 32
PARTICIPANTS = [f"participant{i}" for i in range(25)]
CSV_KEYS = [(kind, s) for kind in sources.C25_KINDS for s in sources.C25_SETS]


def _drop_two_images(root):
    """Removes the image of training row 1 (set 1) and the row 8 of training.csv (set 2)."""
    root = Path(root)
    training_csv = root / "Manually_Annotated_file_lists" / "training.csv"
    training = pd.read_csv(training_csv, dtype=str)
    (root / "Manually_Annotated_Images" / training["subDirectory_filePath"][1]).unlink()
    training.drop(index=8).to_csv(training_csv, index=False)
    names = training["subDirectory_filePath"].str.rsplit("/", n=1).str[-1]
    return names[1], names[8]


# Set 1 annotates training rows 0-5, set 2 rows 6-11; row 7 is a truncated JPEG.


class AffectNetC25Test(DummyDataMixin, tfds.testing.DatasetBuilderTestCase):
    """CSVs read from <manual_dir>/AffectNetC25/."""

    DATASET_CLASS = affectnet_c25_dataset_builder.Builder
    LAYOUTS = ("c25",)
    BUILDER_CONFIG_NAMES_TO_TEST = [AffectNetC25Config(name="default_32", image_size=SIZE)]
    SPLITS = {"set1": 6, "set2": 5}


class AffectNetC25DownloadTest(DummyDataMixin, tfds.testing.DatasetBuilderTestCase):
    """CSVs absent from the manual folder: dl_manager.download with the URLs of checksums.tsv."""

    DATASET_CLASS = affectnet_c25_dataset_builder.Builder
    LAYOUTS = ("c25",)
    BUILDER_CONFIG_NAMES_TO_TEST = [AffectNetC25Config(name="default_32", image_size=SIZE)]
    SPLITS = {"set1": 6, "set2": 5}
    DL_DOWNLOAD_RESULT = {f"{kind}_{s}": f"downloaded/{kind}_{s}_C25.csv" for kind, s in CSV_KEYS}

    @classmethod
    def make_dummy(cls, root):
        super().make_dummy(root)
        shutil.move(Path(root) / "AffectNetC25", Path(root) / "downloaded")

    def _download_and_prepare_as_dataset(self, builder):
        super()._download_and_prepare_as_dataset(builder)
        # The six URLs went through dl_manager.download (checked against checksums.tsv).
        assert self._download_urls == {sources.c25_url(kind, s) for kind, s in CSV_KEYS}


class AffectNetC25SubsetTest(DummyDataMixin, tfds.testing.DatasetBuilderTestCase):
    """allow_missing=True with one image file missing and one name absent from training.csv."""

    DATASET_CLASS = affectnet_c25_dataset_builder.Builder
    LAYOUTS = ("c25",)
    BUILDER_CONFIG_NAMES_TO_TEST = [
        AffectNetC25Config(name="subset_32", image_size=SIZE, allow_missing=True)
    ]
    SPLITS = {"set1": 5, "set2": 4}

    @classmethod
    def make_dummy(cls, root):
        super().make_dummy(root)
        _drop_two_images(root)


def test_checksums_cover_every_csv_url():
    url_infos = affectnet_c25_dataset_builder.Builder.url_infos
    for kind, s in CSV_KEYS:
        url = sources.c25_url(kind, s)
        assert url == (
            "https://raw.githubusercontent.com/kdoodoo/affectnetc25/main/AffectNetC25/"
            f"{kind}_{s}_C25.csv"
        )
        assert url in url_infos and url_infos[url].filename == f"{kind}_{s}_C25.csv"


# --- builds on generated data -------------------------------------------------------------------


def _build(config, manual_dir, data_dir):
    builder = affectnet_c25_dataset_builder.Builder(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def _examples(builder, split):
    return {ex["file_name"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def _top_classes(codes):
    counts = collections.Counter(int(c) for c in codes if c >= 0)
    top = max(counts.values())
    return {code for code, n in counts.items() if n == top}


@pytest.fixture(scope="module")
def dummy(tmp_path_factory):
    root = tmp_path_factory.mktemp("c25_dummy")
    return root, make_dummy_data.make_all(root, layouts=("c25",))


@pytest.fixture(scope="module")
def built(dummy, tmp_path_factory):
    root, _ = dummy
    data_dir = tmp_path_factory.mktemp("c25_data")
    return _build(AffectNetC25Config(name="c", image_size=SIZE), root, data_dir)


def test_join_and_labels(built, dummy):
    _, written = dummy
    training = written["full"]["train"]
    for s, rows in make_dummy_data.C25_SETS.items():
        examples = _examples(built, s)
        expression = written["c25"][("expression", s)]
        valence = written["c25"][("valence", s)]
        for i, (row, name) in enumerate(zip(rows, expression["filename"])):
            if row == 7:  # the truncated JPEG
                assert name not in examples
                continue
            ex = examples[name]
            assert ex["affectnet_index"] == row
            assert ex["affectnet_expression"] == training["expression"][row]
            assert ex["affectnet_valence"] == pytest.approx(training["valence"][row])
            assert ex["affectnet_arousal"] == pytest.approx(training["arousal"][row])
            assert ex["image"].shape == (SIZE, SIZE, 3)
            answers = pd.to_numeric(expression.loc[i, PARTICIPANTS], errors="coerce")
            for got, answer in zip(ex["crowd_expression"], answers):
                ok = np.isfinite(answer) and answer in range(8)
                assert got == (remap_by_name(answer) if ok else -1)
            values = pd.to_numeric(valence.loc[i, PARTICIPANTS], errors="coerce").to_numpy()
            values = np.where(np.isin(values, np.arange(-4, 5) / 4), values, np.nan)
            np.testing.assert_array_equal(ex["crowd_valence"], values.astype(np.float32))
    # AffectNet's own labels keep codes 8-10 and -2 (training rows 8 and 10 are in set 2).
    set2 = _examples(built, "set2")
    codes = {int(ex["affectnet_expression"]) for ex in set2.values()}
    assert {8, 9, 10} <= codes
    assert any(ex["affectnet_valence"] == -2 for ex in set2.values())


def test_mixed_extensions_and_png_under_jpg(built, dummy):
    _, written = dummy
    names = set(_examples(built, "set1")) | set(_examples(built, "set2"))
    assert {Path(n).suffix for n in names} == {".jpg", ".jpeg", ".JPG", ".png", ".PNG"}
    png_as_jpg = written["full"]["train"]["subDirectory_filePath"][5].rsplit("/", 1)[-1]
    assert png_as_jpg.endswith(".jpg") and png_as_jpg in names


def test_corrupt_image_is_in_the_skip_log(built, dummy):
    _, written = dummy
    corrupt = written["full"]["train"]["subDirectory_filePath"][7].rsplit("/", 1)[-1]
    log = pd.read_csv(built.data_path / "skipped_set2.tsv", sep="\t", dtype=str)
    assert log["file_name"].tolist() == [corrupt]
    assert log["reason"].tolist() == ["corrupt or truncated image"]
    assert pd.read_csv(built.data_path / "skipped_set1.tsv", sep="\t").empty


def test_missing_images_fail_with_count_and_names(tmp_path):
    make_dummy_data.make_all(tmp_path / "manual", layouts=("c25",))
    gone_image, gone_row = _drop_two_images(tmp_path / "manual")
    with pytest.raises(FileNotFoundError) as error:
        _build(AffectNetC25Config(name="c", image_size=SIZE), tmp_path / "manual", tmp_path)
    message = str(error.value)
    assert "2 of 12 AffectNetC25 images are not available" in message
    assert f"set1/{gone_image} (missing image)" in message
    assert f"set2/{gone_row} (not in training.csv)" in message
    assert "'subset'" in message and "allow_missing=True" in message


def test_subset_reports_what_was_left_out(tmp_path, capsys):
    make_dummy_data.make_all(tmp_path / "manual", layouts=("c25",))
    gone_image, gone_row = _drop_two_images(tmp_path / "manual")
    builder = _build(
        AffectNetC25Config(name="s", image_size=SIZE, allow_missing=True),
        tmp_path / "manual",
        tmp_path / "data",
    )
    out = capsys.readouterr().out
    assert "2 of 12 AffectNetC25 images are not available" in out and "left out" in out
    assert gone_image in out and gone_row in out
    log1 = pd.read_csv(builder.data_path / "skipped_set1.tsv", sep="\t", dtype=str)
    log2 = pd.read_csv(builder.data_path / "skipped_set2.tsv", sep="\t", dtype=str)
    assert dict(zip(log1["file_name"], log1["reason"])) == {gone_image: "missing image"}
    assert dict(zip(log2["file_name"], log2["reason"]))[gone_row] == "not in training.csv"
    assert builder.info.splits["set1"].num_examples == 5


def test_needs_the_full_release(tmp_path):
    make_dummy_data.make_eight_label_release(tmp_path / "manual")
    with pytest.raises(FileNotFoundError, match=r"(?s)needs the full AffectNet release.*training"):
        _build(AffectNetC25Config(name="c", image_size=SIZE), tmp_path / "manual", tmp_path)


# --- the real AffectNetC25 CSVs -----------------------------------------------------------------


def _serve_from(folder, monkeypatch, tamper=False):
    """Lets TFDS 'download' the CSVs from a local folder; sizes and sha256 are still checked."""
    from tensorflow_datasets.core.download import downloader

    def fake_sync_download(self, url, destination_path, verify=True):
        source = Path(folder) / url.rsplit("/", 1)[-1]
        if tamper:
            copy = Path(destination_path).parent / f"tampered_{source.name}"
            copy.write_bytes(source.read_bytes().replace(b",7,", b",6,", 1))
            source = copy
        return self._sync_file_copy(str(source), destination_path)

    monkeypatch.setattr(downloader._Downloader, "_sync_download", fake_sync_download)


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_csvs_downloaded_joined_and_remapped(c25_csv_dir, tmp_path, monkeypatch):
    """Builds from the real CSVs (through the checksummed download path) and tiny images.

    The images are generated under the real file names; the generated training.csv lists the
    names in another order, so ``affectnet_index`` comes from the C25 CSV (the join is by name).
    """
    frames = {key: pd.read_csv(c25_csv_dir / f"{key[0]}_{key[1]}_C25.csv") for key in CSV_KEYS}
    names = [n for s in sources.C25_SETS for n in frames[("expression", s)]["filename"]]
    manual = tmp_path / "manual"
    make_dummy_data.make_full_release_for_names(manual, sorted(names), size=20)
    _serve_from(c25_csv_dir, monkeypatch)
    builder = _build(AffectNetC25Config(name="real", image_size=16), manual, tmp_path / "data")
    ties = {}
    for s in sources.C25_SETS:
        examples = _examples(builder, s)
        expression = frames[("expression", s)]
        assert len(examples) == len(expression) == 800
        ties[s] = 0
        for i, name in enumerate(expression["filename"]):
            ex = examples[name]
            assert ex["affectnet_index"] == expression["index"][i]
            votes = [remap_by_name(v) for v in expression.loc[i, PARTICIPANTS]]
            assert _top_classes(ex["crowd_expression"]) == _top_classes(votes)
            ties[s] += len(_top_classes(votes)) > 1
            for kind in ("valence", "arousal"):
                frame = frames[(kind, s)].set_index("filename")
                np.testing.assert_array_equal(
                    ex[f"crowd_{kind}"], frame.loc[name, PARTICIPANTS].to_numpy(np.float32)
                )
    assert ties == {"set1": 40, "set2": 30}  # as stated in the data's SOURCE.md


@pytest.mark.shared_data
def test_tampered_csv_fails_the_checksum(c25_csv_dir, tmp_path, monkeypatch):
    make_dummy_data.make_full_release(tmp_path / "manual")
    _serve_from(c25_csv_dir, monkeypatch, tamper=True)
    with pytest.raises(download_manager.NonMatchingChecksumError):
        _build(AffectNetC25Config(name="t", image_size=SIZE), tmp_path / "manual", tmp_path)


def test_mid_stream_corrupt_jpeg_and_bad_boxes_share_the_affectnet_path(tmp_path, capsys):
    """The training rows of make_dummy_data's damaged=True: set 1 has the box past the border
    (row 0, clipped), the JPEG corrupt mid-stream (row 2) and the box without width (row 4);
    set 2 the box outside the image (row 6) and the truncated JPEG (row 7)."""
    written = make_dummy_data.make_all(tmp_path / "manual", layouts=("c25",), damaged=True)
    training = written["full"]["train"]
    paths = training["subDirectory_filePath"]
    names = paths.str.rsplit("/", n=1).str[-1]
    images = tmp_path / "manual" / "Manually_Annotated_Images"
    assert_mid_stream_corrupt(images / paths[2])
    builder = _build(AffectNetC25Config(name="d", image_size=SIZE), tmp_path / "manual", tmp_path)
    logs = {
        s: pd.read_csv(builder.data_path / f"skipped_{s}.tsv", sep="\t", dtype=str)
        for s in sources.C25_SETS
    }
    assert dict(zip(logs["set1"]["file_name"], logs["set1"]["reason"])) == {
        names[2]: CORRUPT_MID_STREAM,
        names[4]: BAD_BOX,
    }
    assert dict(zip(logs["set2"]["file_name"], logs["set2"]["reason"])) == {
        names[6]: BAD_BOX,
        names[7]: "corrupt or truncated image",
    }
    assert "Corrupt JPEG data" in logs["set1"]["detail"][0]
    assert builder.info.splits["set1"].num_examples == 4
    assert builder.info.splits["set2"].num_examples == 4
    out = capsys.readouterr().out
    set1 = out.split("split 'set1'")[1].split("split 'set2'")[0]
    assert f"skipped (bad or missing files): 2 ({CORRUPT_MID_STREAM}: 1, {BAD_BOX}: 1)" in set1
    assert f"{CLIPPED}: 1)" in set1 and f"noted files: {names[0]}\n" in set1
    notes = pd.read_csv(builder.data_path / "notes_set1.tsv", sep="\t", dtype=str)
    assert notes["file_name"].tolist() == [names[0]] and notes["note"].tolist() == [CLIPPED]
    box = tuple(float(training[c][0]) for c in ("face_x", "face_y", "face_width", "face_height"))
    _, expected, unclipped = clipped_and_unclipped_crops(read_rgb(images / paths[0]), box, SIZE)
    stored = _examples(builder, "set1")[names[0]]["image"]
    np.testing.assert_array_equal(stored, expected)
    assert np.abs(stored.astype(int) - unclipped.astype(int)).mean() > 40
