"""The ``crowd_images`` builder on generated folders: both answer formats, truth present and
absent, another class set, every bad input (its message or its count), and one prepared
dataset per folder content."""

import json
import shutil

import make_crowd_folder
import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds

from tfds_affectnet import CrowdImagesConfig, crowd_folder, labels

SIZE = 16


def _build(folder, data_dir):
    builder = tfds.builder(
        "crowd_images", manual_dir=str(folder), image_size=SIZE, data_dir=data_dir
    )
    builder.download_and_prepare()
    return builder


def _examples(builder):
    return {
        ex["file_name"].decode(): ex
        for ex in tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False))
    }


def _expected_by_name(values, annotators):
    """{name: (answers, valence, arousal, truth, true valence, true arousal)} on the builder's
    annotator axis (the generator's annotator r is "worker_<r>")."""
    names, codes, answers, valence, arousal, true_valence, true_arousal = values
    order = [int(name.split("_")[1]) for name in annotators]
    return {
        name: (
            answers[i, order],
            valence[i, order],
            arousal[i, order],
            codes[i],
            true_valence[i],
            true_arousal[i],
        )
        for i, name in enumerate(names)
    }


@pytest.mark.parametrize("layout, truth, by_name", [("long", True, True), ("wide", False, False)])
def test_both_formats_store_every_answer_and_the_truth(tmp_path, layout, truth, by_name):
    values = make_crowd_folder.make_crowd_folder(
        tmp_path / "crowd", layout=layout, truth=truth, by_name=by_name
    )
    builder = _build(tmp_path / "crowd", str(tmp_path / "tfds"))
    meta = builder.info.metadata
    assert meta["class_names"] == list(labels.EXPRESSION_NAMES)
    assert sorted(meta["annotators"]) == [f"worker_{r}" for r in range(4)]
    assert meta["tasks"] == ["expression", "valence", "arousal"]
    assert meta["has_truth"] is truth
    assert builder.info.features["crowd_expression"].shape == (4,)
    examples = _examples(builder)
    expected = _expected_by_name(values, meta["annotators"])
    assert set(examples) == set(expected) and "sub/img_00.png" in examples
    for name, ex in examples.items():
        answers, valence, arousal, code, true_valence, true_arousal = expected[name]
        np.testing.assert_array_equal(ex["crowd_expression"], answers)
        np.testing.assert_allclose(ex["crowd_valence"], valence)
        np.testing.assert_allclose(ex["crowd_arousal"], arousal)
        assert ex["image"].shape == (SIZE, SIZE, 3)
        if truth:
            assert ex["true_expression"] == code
            np.testing.assert_allclose(
                [ex["true_valence"], ex["true_arousal"]], [true_valence, true_arousal]
            )
        else:  # the sentinels of "no truth"
            assert ex["true_expression"] == -1
            assert np.isnan(ex["true_valence"]) and np.isnan(ex["true_arousal"])
    report = json.loads((builder.data_path / "report_train.json").read_text())
    assert report["examples"] == 24 and report["skipped"] == {}
    # the image is the file's, resized: its flat colour survives
    colour = ((expected["img_01.png"][3] * 37) % 256, (expected["img_01.png"][3] * 91) % 256)
    np.testing.assert_allclose(examples["img_01.png"]["image"][8, 8, :2], colour, atol=3)


def test_long_and_wide_files_read_the_same_answers(tmp_path):
    make_crowd_folder.make_crowd_folder(tmp_path / "long", layout="long")
    make_crowd_folder.make_crowd_folder(tmp_path / "wide", layout="wide", by_name=False)
    long, wide = (crowd_folder.read_crowd_folder(tmp_path / k) for k in ("long", "wide"))
    assert (long.layout, wide.layout) == ("long", "wide")
    order = [wide.annotators.index(name) for name in long.annotators]
    assert long.answered == wide.answered
    for name in long.answered:
        for key in ("crowd_expression", "crowd_valence", "crowd_arousal"):
            np.testing.assert_array_equal(long.answers[name][key], wide.answers[name][key][order])


def test_another_class_set_from_classes_txt(tmp_path):
    classes = ["Calm", "tense", "joy"]
    values = make_crowd_folder.make_crowd_folder(
        tmp_path / "crowd",
        class_names=classes,
        num_images=12,
        num_annotators=3,
        tasks=("expression",),
    )
    builder = _build(tmp_path / "crowd", str(tmp_path / "tfds"))
    assert builder.info.metadata["class_names"] == classes
    assert builder.info.metadata["tasks"] == ["expression"]
    expected = _expected_by_name(values, builder.info.metadata["annotators"])
    for name, ex in _examples(builder).items():
        np.testing.assert_array_equal(ex["crowd_expression"], expected[name][0])
        assert 0 <= ex["true_expression"] < 3
        assert np.isnan(ex["crowd_valence"]).all()  # no valence column: no answers
    # an index of this class set, and a name in another case, are read too
    answers = tmp_path / "crowd" / "answers.csv"
    answers.write_text("image,annotator,expression\nimg_00.png,a,2\nimg_01.png,a,CALM\n")
    (tmp_path / "crowd" / "truth.csv").unlink()
    read = crowd_folder.read_crowd_folder(tmp_path / "crowd")
    assert read.answers["img_00.png"]["crowd_expression"].tolist() == [2]
    assert read.answers["img_01.png"]["crowd_expression"].tolist() == [0]


def _write(folder, name, text):
    (folder / name).write_text(text, encoding="utf-8")


BAD_LONG = {
    "unknown class name": (
        "image,annotator,expression\nimg_00.png,a,happy\nimg_01.png,a,joyful\n",
        r"answers\.csv, line 3: expression: unknown class name 'joyful'",
    ),
    "class index out of range": (
        "image,annotator,expression\nimg_00.png,a,8\n",
        r"answers\.csv, line 2: expression: class index '8' is outside 0\.\.7",
    ),
    "valence outside [-1, 1]": (
        "image,annotator,expression,valence\nimg_00.png,a,0,1.5\n",
        r"answers\.csv, line 2: valence: '1\.5' is outside \[-1, 1\]",
    ),
    "arousal not a number": (
        "image,annotator,arousal\nimg_00.png,a,high\n",
        r"answers\.csv, line 2: arousal: 'high' is not a number",
    ),
    "duplicate answer": (
        "image,annotator,expression\nimg_00.png,a,0\nimg_01.png,a,1\nimg_00.png,a,2\n",
        r"answers\.csv, line 4: duplicate answer of annotator 'a' for image 'img_00\.png' "
        r"\(first on line 2\)",
    ),
    "no label column": ("image,annotator,mood\nimg_00.png,a,0\n", r"no label column"),
    "missing annotator column": ("image,expression\nimg_00.png,0\n", r"missing column\(s\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_LONG))
def test_bad_long_answers_name_the_file_line_and_value(tmp_path, case):
    make_crowd_folder.make_crowd_folder(tmp_path, num_images=4, truth=False)
    text, message = BAD_LONG[case]
    _write(tmp_path, "answers.csv", text)
    with pytest.raises(ValueError, match=message):
        crowd_folder.read_crowd_folder(tmp_path)
    with pytest.raises(ValueError, match=message):  # the builder refuses the folder too
        CrowdImagesConfig.from_folder(tmp_path)


def test_every_problem_is_listed_with_a_count(tmp_path):
    make_crowd_folder.make_crowd_folder(tmp_path, num_images=4, truth=False)
    rows = "".join(f"img_00.png,w{k},bad{k}\n" for k in range(25))
    _write(tmp_path, "answers.csv", "image,annotator,expression\n" + rows)
    with pytest.raises(ValueError, match=r"(?s)25 problem\(s\).*line 21: .*bad19.*and 5 more"):
        crowd_folder.read_crowd_folder(tmp_path)


BAD_WIDE = {
    "repeated annotator column": (
        "answers_expression.csv",
        "image,a,a\nimg_00.png,0,1\n",
        r"answers_expression\.csv, line 1: column 'a' appears twice",
    ),
    "repeated image row": (
        "answers_valence.csv",
        "image,a\nimg_00.png,0.5\nimg_00.png,0.25\n",
        r"answers_valence\.csv, line 3: image 'img_00\.png' repeated \(first on line 2\)",
    ),
    "value outside the range": (
        "answers_arousal.csv",
        "image,a,b\nimg_00.png,0.5,-2\n",
        r"answers_arousal\.csv, line 2: annotator 'b': '-2' is outside \[-1, 1\]",
    ),
    "wrong number of cells": (
        "answers_expression.csv",
        "image,a,b\nimg_00.png,0\n",
        r"answers_expression\.csv, line 2: 2 cells for 3 columns",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_WIDE))
def test_bad_wide_answers_name_the_file_line_and_value(tmp_path, case):
    make_crowd_folder.make_crowd_folder(tmp_path, layout="wide", num_images=4, truth=False)
    name, text, message = BAD_WIDE[case]
    _write(tmp_path, name, text)
    with pytest.raises(ValueError, match=message):
        crowd_folder.read_crowd_folder(tmp_path)


def test_bad_truth_and_bad_layouts(tmp_path):
    make_crowd_folder.make_crowd_folder(tmp_path, num_images=4)
    _write(tmp_path, "truth.csv", "image,expression\nimg_01.png,happy\nghost.png,sad\n")
    with pytest.raises(ValueError, match=r"truth\.csv, line 3: image 'ghost\.png' is neither"):
        crowd_folder.read_crowd_folder(tmp_path)
    _write(tmp_path, "truth.csv", "image,expression\nimg_01.png,9\n")
    with pytest.raises(ValueError, match=r"truth\.csv, line 2: expression: class index '9'"):
        crowd_folder.read_crowd_folder(tmp_path)
    (tmp_path / "truth.csv").unlink()
    _write(tmp_path, "answers_valence.csv", "image,a\nimg_00.png,0\n")
    with pytest.raises(ValueError, match=r"both answers\.csv .* and answers_valence\.csv"):
        crowd_folder.read_crowd_folder(tmp_path)
    (tmp_path / "answers_valence.csv").unlink()
    (tmp_path / "answers.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no answers: expected .*answers\.csv"):
        crowd_folder.read_crowd_folder(tmp_path)
    _write(tmp_path, "classes.txt", "joy\nJoy\n")
    with pytest.raises(ValueError, match=r"classes\.txt must hold at least two distinct"):
        crowd_folder.read_crowd_folder(tmp_path)
    shutil.rmtree(tmp_path / "images")
    with pytest.raises(FileNotFoundError, match=r"images/ is missing"):
        crowd_folder.list_images(tmp_path)


def test_missing_unanswered_and_corrupt_images_are_skipped_and_counted(tmp_path):
    folder = tmp_path / "crowd"
    make_crowd_folder.make_crowd_folder(folder, num_images=12)
    (folder / "images" / "img_03.png").unlink()  # answered, missing
    (folder / "images" / "img_05.png").write_bytes(b"not an image")  # corrupt
    shutil.copy(folder / "images" / "img_01.png", folder / "images" / "extra.png")  # unanswered
    (folder / "images" / "notes.txt").write_text("not an image file")  # not read
    # truth of the missing image and of the unanswered one: allowed (they are known files)
    builder = _build(folder, str(tmp_path / "tfds"))
    examples = _examples(builder)
    assert len(examples) == 10 and not {"img_03.png", "img_05.png", "extra.png"} & set(examples)
    log = pd.read_csv(builder.data_path / "skipped_train.tsv", sep="\t", dtype=str)
    reasons = dict(zip(log["file_name"], log["reason"]))
    assert reasons == {
        "img_03.png": "answered image missing under images/",
        "img_05.png": "corrupt or truncated image",
        "extra.png": "image without answers",
    }
    report = json.loads((builder.data_path / "report_train.json").read_text())
    assert report["rows"] == 13 and report["examples"] == 10
    assert sum(report["skipped"].values()) == 3


def test_each_folder_content_gets_its_own_dataset(tmp_path):
    data_dir = str(tmp_path / "tfds")
    make_crowd_folder.make_crowd_folder(tmp_path / "a", num_images=8)
    make_crowd_folder.make_crowd_folder(tmp_path / "b", num_images=8, num_annotators=3)
    first = _build(tmp_path / "a", data_dir)
    second = tfds.builder(
        "crowd_images", manual_dir=str(tmp_path / "b"), image_size=SIZE, data_dir=data_dir
    )
    assert first.builder_config.name != second.builder_config.name
    assert not second.is_prepared()
    assert second.info.features["crowd_expression"].shape == (3,)
    again = tfds.builder(
        "crowd_images",
        config=CrowdImagesConfig.from_folder(tmp_path / "a", SIZE),
        data_dir=data_dir,
    )
    assert again.is_prepared() and again.data_path == first.data_path
    # an edited folder is another content: another configuration
    with open(tmp_path / "a" / "answers.csv", "a") as handle:
        handle.write("img_00.png,late_worker,happy,,\n")
    edited = CrowdImagesConfig.from_folder(tmp_path / "a", SIZE)
    assert edited.name != first.builder_config.name and len(edited.annotators) == 5
    # the builder made before the edit refuses to prepare the new content
    stale = tfds.builder("crowd_images", config=first.builder_config, data_dir=str(tmp_path / "t2"))
    with pytest.raises(ValueError, match="changed since the builder was made"):
        stale.download_and_prepare()
    # a download config naming another folder than the builder's
    other = tfds.builder("crowd_images", config=edited, data_dir=str(tmp_path / "t3"))
    with pytest.raises(ValueError, match="manual_dir is another folder"):
        other.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "b"))
        )
    with pytest.raises(ValueError, match="crowd_images needs its folder"):
        tfds.builder("crowd_images", data_dir=str(tmp_path / "empty"))
