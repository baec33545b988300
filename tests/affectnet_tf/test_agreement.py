"""Human agreement: leave-one-out references on a tiny hand-made crowd, the model on the same
references, the command line on hand-written C25 CSVs, and the real C25 CSVs against an
independent computation."""

import collections
import json
import logging
import re

import krippendorff
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk

from affectnet_tf import agreement as agreement_command
from affectnet_tf import progress
from affectnet_tf.evaluation import agreement, c25
from tfds_affectnet import labels

# 4 items, 3 annotators, 3 classes; -1 = no answer
ANSWERS = np.array([[0, 0, 1], [1, 1, 1], [2, 0, -1], [0, 2, 2]])
# majority of the two others, ties to the lowest class:
#   r=0: (0,1)->0, (1,1)->1, (0,-)->0, (2,2)->2
#   r=1: (0,1)->0, (1,1)->1, (2,-)->2, (0,2)->0
#   r=2: (0,0)->0, (1,1)->1, (2,0)->0, (0,2)->0
LOO = np.array([[0, 0, 0], [1, 1, 1], [0, 2, 0], [2, 0, 0]])
MODEL = np.array([0, 1, 0, 0])


def test_leave_one_out_majorities_by_hand():
    np.testing.assert_array_equal(
        agreement.leave_one_out_majorities(ANSWERS, 3, tie_break="lowest"), LOO
    )
    # nobody else answered: -1
    lonely = agreement.leave_one_out_majorities([[2, -1], [-1, -1]], 3, tie_break="lowest")
    np.testing.assert_array_equal(lonely, [[-1, 2], [-1, -1]])
    with pytest.raises(ValueError, match=r"answers.shape=\(3,\)"):
        agreement.leave_one_out_majorities([0, 1, 2], 3)


def test_keyed_majorities_are_the_package_majority_labels(c25_csv_dir):
    table, _ = c25.read_c25_csvs(c25_csv_dir, sets=("set1",))
    answers, names = table["set1"]["crowd_expression"], table["set1"]["file_name"]
    expected, tied = labels.majority_labels(answers, names, 8)
    assert tied.sum() == 40  # SOURCE.md: 40 tied images in set 1
    np.testing.assert_array_equal(agreement.crowd_majority(answers, 8, file_names=names), expected)
    # the leave-one-out votes break each image's ties with the same key
    loo = agreement.leave_one_out_majorities(answers, 8, file_names=names)
    for r in range(answers.shape[1]):
        others, _ = labels.majority_labels(np.delete(answers, r, axis=1), names, 8)
        np.testing.assert_array_equal(loo[:, r], others)
        silent = answers[:, r] < 0  # r did not answer: the others are the whole crowd
        np.testing.assert_array_equal(loo[silent, r], expected[silent])
    # the key decides: the rule of the lowest class differs on some tied images
    lowest = agreement.crowd_majority(answers, 8, tie_break="lowest")
    assert np.any(lowest[tied] != expected[tied]) and np.all(lowest[~tied] == expected[~tied])


def test_keyed_ties_need_file_names():
    with pytest.raises(ValueError, match="file_names"):
        agreement.leave_one_out_majorities(ANSWERS, 3)
    with pytest.raises(ValueError, match="file_names"):
        agreement.annotator_agreement(ANSWERS, num_classes=3)
    with pytest.raises(ValueError, match="one name per item"):
        agreement.crowd_majority(ANSWERS, 3, file_names=["a.jpg"])
    with pytest.raises(ValueError, match="tie_break"):
        agreement.crowd_majority(ANSWERS, 3, tie_break="random")


def test_leave_one_out_means_by_hand():
    values = np.array([[0.5, 0.0, np.nan], [-1.0, -0.5, -0.75], [0.25, np.nan, np.nan]])
    expected = np.array([[0.0, 0.5, 0.25], [-0.625, -0.875, -0.75], [np.nan, 0.25, 0.25]])
    np.testing.assert_allclose(agreement.leave_one_out_means(values), expected)


def test_annotators_and_model_against_the_same_references():
    original = np.array([0, 1, 2, 2])
    result = agreement.annotator_agreement(
        ANSWERS,
        model_expression=np.eye(3)[MODEL],
        original_expression=original,
        num_classes=3,
        tie_break="lowest",
    )
    rows = result["annotators"]
    assert result["n_items"] == 4 and result["n_annotators"] == 3
    assert [row["n"] for row in rows] == [4, 4, 3]
    # annotator 0 answers 0 1 2 0 against 0 1 0 2: accuracy 1/2; F1 per class 1/2, 1, 0
    assert rows[0]["accuracy"] == pytest.approx(0.5)
    assert rows[0]["f1_macro"] == pytest.approx(0.5)
    assert rows[1]["accuracy"] == pytest.approx(0.5)
    # annotator 2 answers 1 1 2 (item 2 unanswered) against 0 1 0: 1/3; F1 0, 2/3, 0
    assert rows[2]["accuracy"] == pytest.approx(1 / 3)
    assert rows[2]["f1_macro"] == pytest.approx(2 / 9)
    # the model (0 1 0 0) on the same items: 3/4, 3/4, and 3/3
    assert [row["model_accuracy"] for row in rows] == pytest.approx([0.75, 0.75, 1.0])
    summary = result["summary"]["accuracy"]
    assert summary["mean"] == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    assert summary["min"] == pytest.approx(1 / 3) and summary["max"] == pytest.approx(0.5)
    assert summary["model"] == pytest.approx((0.75 + 0.75 + 1.0) / 3)
    assert summary["model_above"] == 1.0
    # against AffectNet's label 0 1 2 2: annotators 3/4, 3/4, 2/3 (item 2 unanswered), the
    # model 2/4: below every annotator
    assert [row["original_accuracy"] for row in rows] == pytest.approx([0.75, 0.75, 2 / 3])
    assert result["model_vs_original"]["accuracy"] == pytest.approx(0.5)
    assert result["summary"]["original_accuracy"]["model"] == pytest.approx(0.5)
    assert result["summary"]["original_accuracy"]["model_above"] == 0.0
    # the crowd's alpha equals the krippendorff package's
    reliability = np.where(ANSWERS >= 0, ANSWERS, np.nan).T
    assert result["crowd"]["alpha"] == pytest.approx(
        krippendorff.alpha(reliability_data=reliability, level_of_measurement="nominal")
    )
    assert -1 <= result["crowd"]["fleiss_kappa"] <= 1
    json.dumps(result)  # JSON-able


def test_valence_ccc_of_annotators_and_model():
    rng = np.random.default_rng(0)
    truth = rng.uniform(-1, 1, 30)
    values = np.clip(truth[:, None] + rng.normal(0, 0.2, (30, 4)), -1, 1)
    values[3, 1] = np.nan
    result = agreement.annotator_agreement(crowd_valence=values, model_valence=truth, num_classes=8)
    reference = agreement.leave_one_out_means(values)
    row = result["annotators"][1]
    keep = np.isfinite(values[:, 1])
    assert row["n_valence"] == 29
    t, p = reference[keep, 1], values[keep, 1]
    expected = 2 * np.cov(t, p, bias=True)[0, 1] / (t.var() + p.var() + (t.mean() - p.mean()) ** 2)
    assert row["valence_ccc"] == pytest.approx(expected)
    # the model predicting the noise-free value agrees better than any annotator here
    assert result["summary"]["valence_ccc"]["model_above"] == 1.0
    assert "accuracy" not in result["summary"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least one crowd answer"):
        agreement.annotator_agreement()
    with pytest.raises(ValueError, match="outside -1..2"):
        agreement.annotator_agreement([[0, 3]], num_classes=3)
    with pytest.raises(ValueError, match="one prediction per item"):
        agreement.annotator_agreement(ANSWERS, model_expression=[0, 1], num_classes=3)
    with pytest.raises(ValueError, match="differ in shape"):
        agreement.annotator_agreement(ANSWERS, crowd_valence=np.zeros((4, 2)), num_classes=3)


def _write_c25_csvs(folder, sets=("set1", "set2")):
    """Hand-written C25 CSVs: 4 images, 25 participants, C25 codes (7 = neutral)."""
    participants = [f"participant{i}" for i in range(25)]
    rng = np.random.default_rng(3)
    names = {}
    for s, set_name in enumerate(sets):
        names[set_name] = [f"{set_name}_{k:02d}.jpg" for k in range(4)]
        expression = rng.integers(0, 8, (4, 25))
        expression[0] = 7  # everyone says neutral (C25 code 7)
        expression[1, 0] = -1  # one missing answer
        valence = rng.integers(-4, 5, (4, 25)) / 4
        for kind, values in (
            ("expression", expression),
            ("valence", valence),
            ("arousal", valence),
        ):
            frame = pd.DataFrame(values, columns=participants)
            frame.insert(0, "filename", names[set_name])
            frame.insert(0, "index", np.arange(4) + 10 * s)
            frame.to_csv(folder / f"{kind}_{set_name}_C25.csv", index=False)
    return names


def test_command_line_on_hand_written_csvs(tmp_path, capsys):
    names = _write_c25_csvs(tmp_path)
    training = pd.DataFrame(
        {
            "subDirectory_filePath": [f"1/{n}" for s in ("set1", "set2") for n in names[s]],
            "face_x": 0,
            "face_y": 0,
            "face_width": 10,
            "face_height": 10,
            "facial_landmarks": "",
            "expression": [0, 3, 3, 3, 0, 1, 2, 10],
            "valence": 0.0,
            "arousal": 0.0,
        }
    )
    training.to_csv(tmp_path / "training.csv", index=False)
    out = tmp_path / "agreement.json"
    argv = ["--csv-dir", str(tmp_path), "--training-csv", str(tmp_path / "training.csv")]
    assert agreement_command.main(argv + ["--json", str(out), "--per-annotator"]) == 0
    printed = capsys.readouterr().out
    for text in ("AffectNetC25 set1", "AffectNetC25 set2", "Krippendorff's alpha", "Fleiss' kappa"):
        assert text in printed
    assert re.search(r"expression accuracy vs leave-one-out majority\s+[-\d.]+\s+[-\d.]+", printed)
    saved = json.loads(out.read_text())
    assert set(saved) == {"set1", "set2"}
    results = c25.csv_agreement(tmp_path, training_csv=tmp_path / "training.csv")
    for set_name in ("set1", "set2"):
        assert saved[set_name] == json.loads(json.dumps(results[set_name]))
    # C25 code 7 is canonical neutral (0): item 0 is unanimous, so every annotator matches it
    table, _ = c25.read_c25_csvs(tmp_path)
    assert (table["set1"]["crowd_expression"][0] == 0).all()
    assert table["set1"]["crowd_expression"][1, 0] == -1
    # original labels: set2's last image is "no face" (10), counted out of the comparison
    assert results["set1"]["annotators"][0]["original_accuracy"] is not None
    set2 = results["set2"]
    answered = table["set2"]["crowd_expression"][:3, 5]
    assert set2["annotators"][5]["original_accuracy"] == pytest.approx(
        np.mean(answered == np.array([0, 1, 2]))
    )


@pytest.fixture
def command_logging():
    """Puts the package's logger back as it was after a command configured it (no bars)."""
    logger = logging.getLogger(progress.LOGGER_NAME)
    saved = list(logger.handlers), logger.level, logger.propagate
    yield
    progress.configure_logging(level=logging.WARNING)
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_quiet_removes_the_status_lines_and_verbose_shows_the_bars(
    tmp_path, capsys, command_logging
):
    _write_c25_csvs(tmp_path)
    out = tmp_path / "figures.json"
    assert agreement_command.main(["--csv-dir", str(tmp_path), "--json", str(out)]) == 0
    default = capsys.readouterr()
    assert f"Reading the AffectNetC25 CSVs in {tmp_path}" in default.err
    assert "Scoring set1: 4 images, 25 annotators" in default.err
    assert f"Wrote {out}" in default.err
    assert "AffectNetC25 set1" in default.out and "Reading" not in default.out
    assert agreement_command.main(["--csv-dir", str(tmp_path), "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert quiet.out == default.out
    assert "Reading" not in quiet.err and "Scoring" not in quiet.err
    # --verbose shows the progress bars over the annotators on any standard error
    assert agreement_command.main(["--csv-dir", str(tmp_path), "--verbose"]) == 0
    verbose = capsys.readouterr()
    assert verbose.out == default.out
    assert "leave-one-out votes" in verbose.err and "scoring annotators" in verbose.err


def test_command_line_errors_name_the_folder(tmp_path, capsys):
    assert agreement_command.main(["--csv-dir", str(tmp_path / "none")]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path / "none") in error and "expression_set1_C25.csv" in error
    with pytest.raises(ValueError, match="Unknown C25 sets"):
        _write_c25_csvs(tmp_path)
        c25.read_c25_csvs(tmp_path, sets=("set3",))


def _independent_figures(csv_dir, set_name):
    """Per-annotator accuracy / macro F1 against the leave-one-out majority (ties to the lowest
    class) and valence CCC against the leave-one-out mean, straight from the CSVs."""
    expression = pd.read_csv(csv_dir / f"expression_{set_name}_C25.csv")
    valence = pd.read_csv(csv_dir / f"valence_{set_name}_C25.csv").set_index("filename")
    participants = [f"participant{i}" for i in range(25)]
    codes = expression[participants].to_numpy()
    canonical = np.where(codes >= 0, (codes + 1) % 8, -1)  # C25 order -> AffectNet order
    values = valence.loc[expression["filename"], participants].to_numpy(np.float64)
    figures = []
    for r in range(25):
        truth, answer, t_val, a_val = [], [], [], []
        for i in range(len(canonical)):
            others = [c for j, c in enumerate(canonical[i]) if j != r and c >= 0]
            if canonical[i, r] >= 0 and others:
                counts = collections.Counter(others)
                top = max(counts.values())
                truth.append(min(c for c, n in counts.items() if n == top))
                answer.append(canonical[i, r])
            rest = [v for j, v in enumerate(values[i]) if j != r and np.isfinite(v)]
            if np.isfinite(values[i, r]) and rest:
                t_val.append(np.mean(rest))
                a_val.append(values[i, r])
        t_val, a_val = np.array(t_val), np.array(a_val)
        covariance = np.mean((t_val - t_val.mean()) * (a_val - a_val.mean()))
        figures.append(
            (
                sk.accuracy_score(truth, answer),
                sk.f1_score(truth, answer, average="macro"),
                2 * covariance / (t_val.var() + a_val.var() + (t_val.mean() - a_val.mean()) ** 2),
            )
        )
    return np.array(figures)


def test_real_c25_per_annotator_figures_match_an_independent_computation(c25_csv_dir):
    results = c25.csv_agreement(c25_csv_dir, tie_break="lowest")
    for set_name in ("set1", "set2"):
        result = results[set_name]
        assert result["n_items"] == 800 and result["n_annotators"] == 25
        ours = np.array(
            [[row["accuracy"], row["f1_macro"], row["valence_ccc"]] for row in result["annotators"]]
        )
        np.testing.assert_allclose(ours, _independent_figures(c25_csv_dir, set_name), atol=1e-10)
        assert 0 < result["crowd"]["alpha"] < 1 and 0 < result["crowd"]["fleiss_kappa"] < 1
    # the file-name rule (the default) changes only the 40 / 30 tied images' references
    default = c25.csv_agreement(c25_csv_dir, sets=("set1",))["set1"]
    difference = abs(
        default["summary"]["accuracy"]["mean"] - results["set1"]["summary"]["accuracy"]["mean"]
    )
    assert difference < 0.05
