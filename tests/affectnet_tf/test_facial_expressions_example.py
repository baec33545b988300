"""examples/facial_expressions*.py on a tiny copy of muxspace/facial_expressions' layout.

The copy has the real files' names, columns and oddities: ``legend.csv`` with a header and
labels in both cases (``HAPPINESS``, ``happiness``, ``SADNESS``), ``500_picts_satz.csv`` with
no header and old-Mac CR line ends (annotator 906, ``sad``), a photo labelled twice by two
annotators, one labelled twice differently by the same annotator, an exact duplicate row, a
label outside the 8 classes, a malformed row, a listed photo that is missing, an unreadable
one, a WebP photo under a ``.jpg`` name and a photo in no CSV.
"""

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

LEGEND_ROWS = [
    ("dwdii", "a_0001.jpg", "neutral"),
    ("dwdii", "b_0001.jpg", "HAPPINESS"),
    ("dwdii", "c_0001.jpg", "happiness"),
    ("dwdii", "d_0001.jpg", "SADNESS"),
    ("302", "e_0001.jpg", "surprise"),
    ("302", "f_0001.jpg", "anger"),
    ("302", "f_0001.jpg", "anger"),  # exact duplicate: merged
    ("JN721", "a_0001.jpg", "neutral"),  # a second annotator of a_0001
    ("jhamski", "g_30.jpg", "SURPRISE"),  # the same annotator, two labels: both skipped
    ("jhamski", "g_30.jpg", "SADNESS"),
    ("jhamski", "h_0001.jpg", "confused"),  # none of the 8
    ("628", "missing.jpg", "fear"),  # no such file
    ("628", "broken.jpg", "contempt"),  # not an image
    ("628", "webp_k.jpg", "anger"),  # a WebP under a .jpg name
    ("628", "", "fear"),  # malformed
]
SECOND_ROWS = [
    ("906", "a_0001.jpg", "happiness"),
    ("906", "b_0001.jpg", "happiness"),
    ("906", "c_0001.jpg", "anger"),
    ("906", "d_0001.jpg", "sad"),
    ("906", "i_0001.jpg", "fear"),  # in no legend row
]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return _load("facial_expressions")


def _fake_repo(root):
    images = root / "images"
    images.mkdir(parents=True)
    for k, name in enumerate("abcdefhi"):
        Image.new("L", (12, 12), 20 * k).save(images / f"{name}_0001.jpg", "JPEG")
    Image.new("L", (12, 12), 99).save(images / "g_30.jpg", "JPEG")
    Image.new("RGB", (10, 14), (1, 2, 3)).save(images / "webp_k.jpg", "WEBP")
    (images / "broken.jpg").write_bytes(b"not an image")
    Image.new("L", (12, 12), 7).save(images / "unlisted_0001.jpg", "JPEG")
    (root / "test").mkdir()
    Image.new("L", (12, 12), 5).save(root / "test" / "1a.jpg", "JPEG")
    (root / "data").mkdir()
    lines = ["user.id,image,emotion"] + [",".join(row) for row in LEGEND_ROWS] + ["1,2"]
    (root / "data" / "legend.csv").write_text("\n".join(lines) + "\n")
    second = "\r".join(",".join(row) for row in SECOND_ROWS)  # CR only, no header
    (root / "data" / "500_picts_satz.csv").write_bytes(second.encode())
    return root


@pytest.fixture
def converted(example, tmp_path):
    repo = _fake_repo(tmp_path / "repo")
    report = example.convert(repo, tmp_path / "out")
    return repo, tmp_path / "out", report


def test_answers_csv_holds_every_usable_answer_in_package_names(converted):
    _, out, report = converted
    with open(out / "answers.csv", newline="") as stream:
        rows = list(csv.reader(stream))
    assert rows[0] == ["image", "annotator", "expression"]
    assert rows[1:] == [
        ["a_0001.jpg", "906", "happy"],
        ["a_0001.jpg", "JN721", "neutral"],
        ["a_0001.jpg", "dwdii", "neutral"],
        ["b_0001.jpg", "906", "happy"],
        ["b_0001.jpg", "dwdii", "happy"],
        ["c_0001.jpg", "906", "anger"],
        ["c_0001.jpg", "dwdii", "happy"],
        ["d_0001.jpg", "906", "sad"],
        ["d_0001.jpg", "dwdii", "sad"],
        ["e_0001.jpg", "302", "surprise"],
        ["f_0001.jpg", "302", "anger"],
        ["i_0001.jpg", "906", "fear"],
        ["webp_k.jpg", "628", "anger"],
    ]
    assert (out / "classes.txt").read_text().split() == [
        "neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"
    ]  # fmt: skip
    assert report["photos"] == 8 and report["answers"] == 13
    assert report["photos_by_number_of_answers"] == {"1": 4, "2": 3, "3": 1}
    assert json.loads((out / "conversion.json").read_text()) == json.loads(json.dumps(report))


def test_every_skipped_row_and_photo_is_counted_with_its_reason(converted):
    _, out, report = converted
    assert report["rows_read"] == {"legend.csv": 16, "500_picts_satz.csv": 5}
    assert report["skipped_rows"] == {
        "legend.csv: label 'confused' is none of the 8": 1,
        "legend.csv: malformed (not 3 non-empty fields)": 2,
        "one annotator gave one photo different labels": 2,
        "photo listed but not in images/": 1,
        "photo unreadable (UnidentifiedImageError)": 1,
    }
    assert report["skipped_photos"] == {
        "listed but not in images/": 1,
        "unreadable (UnidentifiedImageError)": 1,
    }
    assert report["merged_duplicate_rows"] == 1
    assert report["conflicting_photos"] == ["g_30.jpg"]
    assert report["not_copied"] == {
        "in images/ but in neither CSV (not copied)": 1,
        "listed, but no usable answer left (not copied)": 2,  # g_30 and h
        "test/ (unlabelled, ignored)": 1,
    }
    assert report["label_spellings"]["HAPPINESS -> happy"] == 1
    assert report["label_spellings"]["sad -> sad"] == 1
    # answers kept + skipped + merged = rows read
    assert report["answers"] + sum(report["skipped_rows"].values()) + 1 == 21


def test_photos_are_linked_and_the_webp_one_reencoded(converted):
    repo, out, report = converted
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == sorted(f"{c}_0001.jpg" for c in "abcdefi") + ["webp_k.jpg"]
    assert (out / "images" / "a_0001.jpg").stat().st_ino == (
        repo / "images" / "a_0001.jpg"
    ).stat().st_ino
    assert report["reencoded_photos"] == ["webp_k.jpg"]
    with Image.open(out / "images" / "webp_k.jpg") as image:
        assert image.format == "JPEG" and image.size == (10, 14)


def test_copy_and_overwrite(example, converted, tmp_path):
    repo, out, _ = converted
    with pytest.raises(FileExistsError, match="--overwrite"):
        example.convert(repo, out)
    example.convert(repo, out, copy=True, overwrite=True)
    assert (out / "images" / "a_0001.jpg").stat().st_ino != (
        repo / "images" / "a_0001.jpg"
    ).stat().st_ino


def test_agreement_of_each_pair(converted):
    from sklearn.metrics import cohen_kappa_score

    agreement = converted[2]["agreement"]
    assert sorted(agreement) == ["906 vs JN721", "906 vs dwdii", "JN721 vs dwdii"]
    pair = agreement["906 vs dwdii"]  # a b c d: happy/neutral, happy/happy, anger/happy, sad/sad
    assert pair["photos"] == 4 and pair["agreement"] == 0.5
    # by hand: p_o = 1/2; 906 gives happy 2, anger 1, sad 1; dwdii neutral 1, happy 2, sad 1
    expected = (0.5 - (2 * 2 + 1 * 1) / 16) / (1 - 5 / 16)
    assert_allclose(pair["cohen_kappa"], expected)
    assert_allclose(expected, cohen_kappa_score([1, 1, 6, 2], [0, 1, 1, 2]))
    assert pair["confusion"][6][1] == 1 and np.sum(pair["confusion"]) == 4
    same = agreement["JN721 vs dwdii"]  # one photo, neutral twice: kappa undefined
    assert same == {**same, "photos": 1, "agreement": 1.0, "cohen_kappa": None}


def test_main_prints_the_report(example, tmp_path, capsys):
    repo = _fake_repo(tmp_path / "repo")
    example.main([str(repo), str(tmp_path / "out")])
    text = capsys.readouterr().out
    assert "8 photos, 13 answers" in text
    assert "agreement 906 vs dwdii: 0.500 on 4 photos" in text
    assert "1  legend.csv: label 'confused' is none of the 8" in text


def test_legend_without_its_header_is_refused(example, tmp_path):
    path = tmp_path / "legend.csv"
    path.write_text("dwdii,a.jpg,neutral\n")
    with pytest.raises(ValueError, match="expected the header"):
        example.read_source_rows(path, header=True)


def test_answer_matrix_and_roles_file(example, converted, tmp_path):
    _, out, _ = converted
    names, answers = example.answer_matrix(example.read_answers(out))
    assert names[0] == "a_0001.jpg" and answers.shape == (8, 5)  # 302 628 906 JN721 dwdii
    assert sorted(answers[0][answers[0] >= 0].tolist()) == [0, 0, 1]
    roles = {"train": ["a"], "selection": ["b"], "test": ["c"], "source": "x"}
    (tmp_path / "roles.json").write_text(json.dumps(roles))
    assert example.read_roles(tmp_path / "roles.json") == {
        "train": ["a"], "selection": ["b"], "test": ["c"]
    }  # fmt: skip


def test_scores_follow_the_package_metrics(example, rng):
    from affectnet_tf.modeling import metrics

    truth = rng.integers(0, 7, 200)  # contempt never true
    guess = np.where(rng.random(200) < 0.6, truth, rng.integers(0, 8, 200))
    result = example.scores(truth, guess)
    one_hot = np.eye(8)[guess]
    assert_allclose(result["accuracy"], metrics.accuracy(truth, guess))
    assert_allclose(result["f1_macro"], metrics.expression_metrics(truth, one_hot)["f1_macro"])
    assert_allclose(
        list(result["f1_per_class"].values()), metrics.per_class_report(truth, guess)["f1"]
    )
    assert result["confusion_matrix"] == metrics.confusion_matrix(truth, guess, 8).tolist()
    assert result["support"]["contempt"] == 0 and result["count"] == 200


def test_fer_random_test_set_leaves_tied_photos_out(example, converted):
    fer_example = _load("facial_expressions_fer")
    names, labels, ties = fer_example.random_test_set(converted[1], 1.0, 0)
    # b d: two equal answers; a: neutral twice against happy; c: happy against anger (tied)
    assert ties == 1 and "c_0001.jpg" not in names and len(names) == 7
    assert dict(zip(names, labels.tolist()))["a_0001.jpg"] == 0
    assert set(fer_example.FER_TO_PACKAGE.values()) == set(example.CLASS_NAMES) - {"contempt"}


def test_baseline_roles_match_the_training_command(example, converted, tmp_path):
    """The baseline's roles through the crowd_images builder equal the answers.csv cut and
    the roles of the package's own input pipeline."""
    baseline = _load("facial_expressions_baseline")
    from affectnet_tf.data.partition import subset_mask

    out = converted[1]
    config, recorded = baseline.run_settings(out, data_dir=str(tmp_path / "tfds"))
    assert recorded is None
    roles, source = baseline.data_roles(out, config)
    assert "builder" in source
    table = baseline.table_from_answers(out)
    for name in ("train", "selection", "test"):
        from_answers = table["file_name"][subset_mask(table, name, config.partition)]
        assert sorted(roles[name]) == sorted(from_answers.tolist())
    assert sum(len(v) for v in roles.values()) == 8


def test_baseline_checks_the_roles_against_a_run_record(example):
    from affectnet_tf.data.tables import names_digest

    baseline = _load("facial_expressions_baseline")
    roles = {"train": ["a", "b"], "selection": ["c"], "test": ["d"]}
    record = {name: {"file_names_sha256": names_digest(v)} for name, v in roles.items()}
    baseline.check_recorded(roles, record)  # the same photos pass
    record["test"] = {"file_names_sha256": names_digest(["e"]), "images": 1}
    with pytest.raises(ValueError, match="The test photos differ from the run's record"):
        baseline.check_recorded(roles, record)
