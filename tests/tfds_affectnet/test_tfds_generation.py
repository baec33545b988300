"""Skip logs, reports, the error guard and the Beam branch's work items (without Beam)."""

import json

import make_dummy_data
import pandas as pd
import pytest
import tensorflow_datasets as tfds

from tfds_affectnet import AffectNetConfig, _generation, sources
from tfds_affectnet.affectnet import affectnet_dataset_builder


def _process(row):
    if row == "bad":
        return _generation.skipped("bad.jpg", "corrupt or truncated image", "truncated\tJPEG")
    if row == "none":
        return _generation.excluded("none.jpg", "expression 8 (none)")
    if row == "boom":
        raise TypeError("unexpected")
    return _generation.example(f"{row}.jpg", {"value": row}, note="")


def test_generate_yields_examples_and_writes_the_report(tmp_path, capsys):
    report = _generation.SplitReport("ds/config", "train", tmp_path)
    examples = list(_generation.generate(["a", "bad", "none", "b", "boom"], _process, report))
    assert examples == [("a.jpg", {"value": "a"}), ("b.jpg", {"value": "b"})]
    log = pd.read_csv(tmp_path / "skipped_train.tsv", sep="\t")
    assert log["file_name"].tolist() == ["bad.jpg", "boom"]
    assert log["detail"][0] == "truncated JPEG"  # tabs and newlines flattened
    assert log["reason"][1] == "unexpected error" and "TypeError" in log["detail"][1]
    counts = json.loads((tmp_path / "report_train.json").read_text())
    assert counts["examples"] == 2 and counts["rows"] == 5
    assert counts["excluded"] == {"expression 8 (none)": 1}
    assert counts["skipped"] == {"corrupt or truncated image": 1, "unexpected error": 1}
    out = capsys.readouterr().out
    assert "ds/config split 'train': 2 examples written from 5 rows." in out
    assert "skipped files: bad.jpg, boom" in out


def test_systematic_errors_stop_the_build(tmp_path):
    report = _generation.SplitReport("ds", "train", tmp_path)
    with pytest.raises(RuntimeError, match="unexpected errors"):
        list(_generation.generate(["boom"] * 200, _process, report))
    assert report.unexpected == _generation.MAX_UNEXPECTED_ERRORS
    assert (tmp_path / "skipped_train.tsv").exists()  # still written


def test_partial_generation_still_writes_the_report(tmp_path):
    report = _generation.SplitReport("ds", "train", tmp_path)
    generator = _generation.generate(["a", "b", "c"], _process, report)
    next(generator)
    generator.close()  # e.g. tfds build --max_examples_per_split
    assert json.loads((tmp_path / "report_train.json").read_text())["examples"] == 1


def test_final_data_dir_strips_the_temporary_name(tmp_path):
    assert _generation.final_data_dir(tmp_path / "incomplete.AB12CD_1.0.0") == tmp_path / "1.0.0"
    assert _generation.final_data_dir(tmp_path / "1.0.0") == tmp_path / "1.0.0"


def test_beam_is_detected_from_the_download_config():
    class Base:
        def _download_and_prepare(self, dl_manager, download_config=None):
            return self._use_beam

    class Stub(_generation.GenerationMixin, Base):
        pass

    assert Stub()._download_and_prepare(None, tfds.download.DownloadConfig()) is False
    config = tfds.download.DownloadConfig(beam_options=object())
    assert Stub()._download_and_prepare(None, config) is True


@pytest.mark.parametrize("release", ["full", "eight_label"])
def test_beam_branch_work_items_give_the_plain_rows(tmp_path, monkeypatch, release):
    """The Beam branch expands its work items into the rows the plain loop reads, and uses
    the same row function (Beam itself is not installed here)."""
    make_dummy_data.make_all(tmp_path, layouts=(release,))
    builder = affectnet_dataset_builder.Builder(
        config=AffectNetConfig(name="e8", image_size=16), data_dir=str(tmp_path / "data")
    )
    captured = {}

    def fake_beam_generate(work_items, expand, process, log_dir, dataset, split, extra=()):
        captured.update(items=work_items, expand=expand, process=process, extra=extra)
        return "a PTransform"

    monkeypatch.setattr(_generation, "beam_generate", fake_beam_generate)
    builder._use_beam = True
    result = builder._generate_examples(release=release, split="train", manual_dir=str(tmp_path))
    assert result == "a PTransform"
    beam_rows = [row for item in captured["items"] for row in captured["expand"](item)]
    if release == "full":
        plain_rows = list(
            sources.iter_full_rows(f"{tmp_path}/{sources.FULL_LISTS_DIR}/training.csv")
        )
    else:
        plain_rows, _ = sources.list_eight_label_rows(*sources.eight_label_paths(tmp_path)["train"])
        assert [o.reason for o in captured["extra"]] == ["annotation without image"]
    assert beam_rows == plain_rows
    outcomes = [captured["process"](row) for row in beam_rows]
    assert (
        sum(o.kind == _generation.EXAMPLE for o in outcomes)
        == {"full": 7, "eight_label": 8}[release]
    )


def _beam_build(tmp_path):
    """``affectnet/e8`` at 16 px built from ``tmp_path / "manual"`` by Beam's DirectRunner."""
    beam = pytest.importorskip("apache_beam")
    builder = affectnet_dataset_builder.Builder(
        config=AffectNetConfig(name="e8", image_size=16), data_dir=str(tmp_path / "data")
    )
    options = beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"])
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(tmp_path / "manual"), beam_options=options
        )
    )
    return builder


@pytest.mark.slow
def test_beam_generation_matches_the_plain_path(tmp_path):
    """apache-beam comes with the ``test`` extra (through ``beam``), so ``make test`` runs this;
    skipped only where the tests run without that extra."""
    make_dummy_data.make_all(tmp_path / "manual", layouts=("full",))
    builder = _beam_build(tmp_path)
    assert builder.info.splits["train"].num_examples == 7
    assert builder.info.splits["validation"].num_examples == 4
    log = pd.read_csv(builder.data_path / "skipped_train.tsv", sep="\t")
    assert log["reason"].tolist() == ["corrupt or truncated image"]
    report = json.loads((builder.data_path / "report_train.json").read_text())
    assert report["counts"]["excluded: expression 8 (none)"] == 1


def test_generation_threads_setting(monkeypatch):
    monkeypatch.setenv("TFDS_AFFECTNET_THREADS", "3")
    assert _generation.generation_threads() == 3
    monkeypatch.setenv("TFDS_AFFECTNET_THREADS", "")
    assert 1 <= _generation.generation_threads() <= 8


@pytest.mark.parametrize("threads", [1, 3])
def test_threaded_generation_keeps_row_order(tmp_path, threads):
    rows = [str(i) for i in range(50)]
    report = _generation.SplitReport("ds", "train", tmp_path)
    keys = [key for key, _ in _generation.generate(rows, _process, report, threads=threads)]
    assert keys == [f"{i}.jpg" for i in range(50)]


def test_make_dummy_data_command_line(tmp_path, capsys):
    assert make_dummy_data.main([str(tmp_path), "--layout", "eight_label", "--seed", "5"]) == 0
    assert (tmp_path / "train_set" / "annotations").is_dir()
    assert not (tmp_path / "Manually_Annotated_file_lists").exists()
    assert "eight_label" in capsys.readouterr().out


def _noted_process(row):
    if row == "two_notes":
        notes = [
            _generation.Note(
                "face box clipped to the image", "(-2, 0, 5, 5) clipped\tto (0, 0, 3, 5)"
            ),
            "landmarks unreadable, stored as NaN",
        ]
        return _generation.example("two.jpg", {"value": row}, notes)
    if row == "one_note":
        return _generation.example("one.jpg", {"value": row}, "landmarks unreadable, stored as NaN")
    return _process(row)


def test_notes_of_kept_examples_are_counted_and_listed(tmp_path, capsys):
    report = _generation.SplitReport("ds/config", "train", tmp_path)
    rows = ["two_notes", "a", "one_note", "bad"]
    keys = [key for key, _ in _generation.generate(rows, _noted_process, report, threads=1)]
    assert keys == ["two.jpg", "a.jpg", "one.jpg"]
    counts = json.loads((tmp_path / "report_train.json").read_text())
    assert counts["examples"] == 3
    assert counts["notes"] == {
        "face box clipped to the image": 1,
        "landmarks unreadable, stored as NaN": 2,
    }
    assert counts["notes_log"] == str(tmp_path / "notes_train.tsv")
    log = pd.read_csv(tmp_path / "notes_train.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert log.values.tolist() == [
        ["two.jpg", "face box clipped to the image", "(-2, 0, 5, 5) clipped to (0, 0, 3, 5)"],
        ["two.jpg", "landmarks unreadable, stored as NaN", ""],
        ["one.jpg", "landmarks unreadable, stored as NaN", ""],
    ]
    out = capsys.readouterr().out
    assert (
        "kept with a note: 3 (face box clipped to the image: 1, landmarks unreadable, stored as "
        "NaN: 2)" in out
    )
    assert "  noted files: two.jpg, one.jpg\n" in out
    assert f"  notes log: {tmp_path}/notes_train.tsv" in out
    example = _noted_process("two_notes")
    assert example.reason == "face box clipped to the image; landmarks unreadable, stored as NaN"


def test_no_notes_gives_an_empty_notes_log(tmp_path, capsys):
    report = _generation.SplitReport("ds", "train", tmp_path)
    list(_generation.generate(["a", "b"], _process, report, threads=1))
    assert (tmp_path / "notes_train.tsv").read_text() == "file_name\tnote\tdetail\n"
    assert "notes log" not in capsys.readouterr().out


@pytest.mark.slow
def test_beam_generation_reports_corrupt_jpegs_and_clipped_boxes(tmp_path):
    """The Beam branch writes the same skip and notes logs for make_dummy_data's damaged=True."""
    frames = make_dummy_data.make_all(tmp_path / "manual", layouts=("full",), damaged=True)
    names = frames["full"]["train"]["subDirectory_filePath"]
    builder = _beam_build(tmp_path)
    assert builder.info.splits["train"].num_examples == 4
    log = pd.read_csv(builder.data_path / "skipped_train.tsv", sep="\t", dtype=str)
    assert dict(zip(log["file_name"], log["reason"])) == {
        names[2]: "corrupt JPEG data mid-stream",
        names[4]: "face box empty or outside the image",
        names[6]: "face box empty or outside the image",
        names[7]: "corrupt or truncated image",
    }
    notes = pd.read_csv(builder.data_path / "notes_train.tsv", sep="\t", dtype=str)
    assert notes["file_name"].tolist() == [names[0]]
    assert notes["note"].tolist() == ["face box clipped to the image"]
    counts = json.loads((builder.data_path / "report_train.json").read_text())["counts"]
    assert counts["skipped: corrupt JPEG data mid-stream"] == 1
    assert counts["noted: face box clipped to the image"] == 1
    assert counts["example"] == 4
