"""The benchmark scripts run end to end (their figures are not checked: no timed tests).

Each script runs once as users run it, in a fresh process; its other runs call its ``main(argv)``
in this process, which saves a TensorFlow start-up per run.
"""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _run_benchmark(script, *args):
    """Runs ``benchmarks/<script>`` with ``args``; its standard output (exit status 0 checked)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _load_benchmark(script):
    """``benchmarks/<script>`` imported as a module, for its ``main(argv)``."""
    spec = importlib.util.spec_from_file_location(Path(script).stem, REPO / "benchmarks" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_train():
    return _load_benchmark("bench_train.py")


@pytest.fixture(scope="module")
def bench_real_crowds():
    return _load_benchmark("bench_real_crowds.py")


@pytest.mark.slow
def test_benchmark_quick_runs():
    stdout = _run_benchmark("bench_input_pipeline.py", "--quick")
    assert "256 records of 224x224 JPEG" in stdout
    for path in ("make_dataset (training, augmented)", "tf.io.decode_jpeg", "Python loop"):
        assert re.search(re.escape(path) + r".*\s\d+\n", stdout), path
    assert re.search(r"make_dataset / decode limit:\s+\d+%", stdout)


@pytest.mark.slow
def test_training_benchmark_quick_runs(bench_train, tmp_path, capsys):
    output = tmp_path / "train.json"
    assert bench_train.main(["--quick", "--output", str(output)]) == 0
    stdout = capsys.readouterr().out
    assert "compact_cnn" in stdout and "crowd head cost" in stdout
    (row,) = json.loads(output.read_text())
    assert row["plain"] > 0 and row["crowd"] > 0


def test_training_command_against_bare_fit(bench_train, tmp_path, capsys):
    output = tmp_path / "command.json"
    argv = ["--command", "--quick", "--epochs", "2", "--data-dir", str(tmp_path / "tfds")]
    assert bench_train.main([*argv, "--output", str(output)]) == 0
    row = json.loads(output.read_text())
    assert row["dataset"] == "synthetic_faces/tiny" and row["training_images"] == 48
    assert row["ratio"] == pytest.approx(row["command_images_per_s"] / row["fit_images_per_s"])
    assert 0 < row["ratio"] < 10
    seconds = row["command_seconds"]
    assert seconds["training_steps"] + seconds["validation"] <= seconds["training"] + 1e-6
    assert "ratio" in capsys.readouterr().out


@pytest.mark.slow
def test_training_benchmark_gpu_mode_runs_unchanged_on_cpu(tmp_path):
    """The --gpu mode (mixed precision, XLA) is the same code: it runs on this CPU too.

    In its own process: it sets Keras's global mixed-precision policy."""
    output = tmp_path / "gpu.json"
    stdout = _run_benchmark(
        "bench_train.py", "--quick", "--gpu", "--batch-size", "16", "--output", output
    )
    assert "mixed precision + XLA" in stdout
    (row,) = json.loads(output.read_text())
    assert row["plain"] > 0 and row["crowd"] > 0 and 0 <= row["isolated_cost"] < 1


@pytest.mark.slow
def test_faces_benchmark_quick_runs(tmp_path):
    pytest.importorskip("skimage", reason="scikit-image ships the astronaut test image")
    output = tmp_path / "faces.json"
    stdout = _run_benchmark("bench_faces.py", "--quick", "--output", output)
    assert "speed-up:" in stdout and "IoU on the" in stdout
    figures = json.loads(output.read_text())
    assert figures["plain_fps"] > 0 and figures["stage_fps"] > 0
    assert figures["plain_faces"] > 0 and figures["iou_mean"] is not None


LABELME = REPO.parent / "shared" / "data" / "labelme"


def _plain_layout(folder, num_classes=3, annotators=5, items=40, features=6, seed=0):
    """A tiny crowd dataset in the plain layout, without validation files."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    truth = rng.integers(0, num_classes, items)
    right = rng.random((items, annotators)) < 0.7
    answers = np.where(right, truth[:, None], rng.integers(0, num_classes, (items, annotators)))
    answers[rng.random((items, annotators)) < 0.4] = -1
    answers[0] = -1  # an item nobody answered
    np.savetxt(folder / "answers.txt", answers, fmt="%d")
    np.savetxt(folder / "labels_train.txt", truth, fmt="%d")
    test = rng.integers(0, num_classes, 20)
    np.savetxt(folder / "labels_test.txt", test, fmt="%d")
    centers = rng.normal(size=(num_classes, features))
    for name, labels in (("train", truth), ("test", test)):
        x = centers[labels] + rng.normal(scale=0.5, size=(len(labels), features))
        np.save(folder / f"features_{name}.npy", x.astype("float32"))
    return folder


@pytest.mark.slow
def test_real_crowds_benchmark_on_a_tiny_plain_layout(tmp_path):
    data_dir = _plain_layout(tmp_path / "tiny")
    output = tmp_path / "crowds.json"
    stdout = _run_benchmark(
        "bench_real_crowds.py",
        "--data-dir",
        data_dir,
        "--seeds",
        "2",
        "--epochs",
        "2",
        "--methods",
        "truth,mv,ds,geocrowdnet,pooled,pooled_mv,conal,annot_mix",
        "--json",
        output,
    )
    assert "40 training items, 5 annotators, 3 classes" in stdout
    assert re.search(r"pooled\s+test 0\.\d{4} ± 0\.\d{4} .*\(default\)", stdout)
    result = json.loads(output.read_text())
    assert result["default"] == "pooled" and result["seeds"] == 2
    assert set(result["methods"]) == {
        "truth", "mv", "ds", "geocrowdnet", "pooled", "pooled_mv", "conal", "annot_mix"
    }  # fmt: skip
    for method, accuracy in result["methods"].items():
        assert 0.0 <= accuracy <= 1.0, method
        assert len(result["per_seed"][method]) == 2
        assert accuracy == pytest.approx(np.mean(result["per_seed"][method]))
    assert result["valid"] == {}  # no validation files
    assert result["task"] == "classification" and result["features"] == "standardize"


def _real_crowds_error(bench_real_crowds, data_dir, capsys):
    """The real-crowds benchmark on a broken folder: its standard error (exit status 2)."""
    assert bench_real_crowds.main(["--data-dir", str(data_dir)]) == 2
    return capsys.readouterr().err


def test_real_crowds_benchmark_names_the_missing_file(bench_real_crowds, tmp_path, capsys):
    data_dir = _plain_layout(tmp_path / "tiny")
    (data_dir / "labels_test.txt").unlink()
    assert "missing labels_test.txt" in _real_crowds_error(bench_real_crowds, data_dir, capsys)


def test_real_crowds_benchmark_names_a_bad_answer_file(bench_real_crowds, tmp_path, capsys):
    data_dir = _plain_layout(tmp_path / "tiny")
    (data_dir / "answers.txt").write_text("0 1 2\n1 -3 0\n")
    stderr = _real_crowds_error(bench_real_crowds, data_dir, capsys)
    assert "answers.txt" in stderr and "-3" in stderr


@pytest.mark.slow
def test_real_crowds_benchmark_on_labelme(bench_real_crowds, capsys):
    """The real LabelMe crowd: its layout reads, and a short pooled run beats majority vote."""
    if not (LABELME / "answers.txt").exists():
        pytest.skip(f"the real LabelMe crowd is not in {LABELME} (../shared is absent)")
    argv = ["--seeds", "1", "--epochs", "20", "--methods", "mv,pooled"]
    assert bench_real_crowds.main(argv) == 0
    stdout = capsys.readouterr().out
    assert "1000 training items, 59 annotators, 8 classes, 2547 answers" in stdout
    scores = dict(re.findall(r"^(\w+)\s+test (0\.\d+)", stdout, flags=re.M))
    assert float(scores["pooled"]) > float(scores["mv"])


def test_real_crowds_benchmark_hints_at_regression_for_float_answers(
    bench_real_crowds, tmp_path, capsys
):
    data_dir = _regression_layout(tmp_path / "floats")
    stderr = _real_crowds_error(bench_real_crowds, data_dir, capsys)
    assert "answers.txt" in stderr and "--task regression" in stderr


@pytest.mark.parametrize("rule", ["standardize", "standardize+l2", "l2", "none"])
def test_feature_rule_is_fitted_on_the_training_items(bench_real_crowds, rule):
    """Columns of scales 1e-3 .. 1e1 (and a constant one); the test items are transformed with
    the training statistics, never their own."""
    rng = np.random.default_rng(0)
    scales = np.array([1e-3, 1e-2, 1e-1, 1.0, 1e1])
    offsets = np.array([5e-3, -2.0, 0.0, 3.0, 40.0])
    train = np.c_[offsets + scales * rng.normal(size=(200, 5)), np.full(200, 7.0)]
    test = np.c_[offsets + 1 + scales * rng.normal(size=(50, 5)), np.full(50, 9.0)]
    transform = bench_real_crowds.fit_feature_rule(train, rule)
    train_out, test_out = transform(train), transform(test)
    assert train_out.dtype == np.float32 and test_out.shape == test.shape
    standardized = (test - np.r_[train[:, :5].mean(0), 7.0]) / np.r_[train[:, :5].std(0), 1.0]
    if rule == "standardize":
        np.testing.assert_allclose(train_out[:, :5].mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(train_out[:, :5].std(0), 1, rtol=1e-4)
        np.testing.assert_allclose(train_out[:, 5], 0)  # constant: centred, left unscaled
        np.testing.assert_allclose(test_out, standardized, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(test_out[:, 5], 2.0)  # 9 - the training mean 7
        assert abs(test_out[:, 0].mean()) > 100  # shifted by 1 = 1000 training s.d.
    elif rule == "standardize+l2":
        expected = standardized / np.linalg.norm(standardized, axis=1, keepdims=True)
        np.testing.assert_allclose(test_out, expected, rtol=1e-5, atol=1e-6)
    elif rule == "l2":
        np.testing.assert_allclose(np.linalg.norm(test_out, axis=1), 1, rtol=1e-5)
        np.testing.assert_allclose(
            test_out, bench_real_crowds.fit_feature_rule(test, rule)(test), rtol=1e-6
        )  # nothing fitted
    else:
        np.testing.assert_allclose(test_out, test, rtol=1e-6)


def test_feature_rule_rejects_an_unknown_rule(bench_real_crowds):
    with pytest.raises(ValueError, match="rule='zscore'"):
        bench_real_crowds.fit_feature_rule(np.ones((3, 2)), "zscore")


def test_real_crowds_majority_vote_ties_are_deterministic(bench_real_crowds, tmp_path):
    """Ties broken by the fixed keyed rule (the row number), not at random: two runs agree."""
    crowd_layers = bench_real_crowds.crowd_layers
    data_dir = _plain_layout(tmp_path / "tiny")
    with crowd_layers.quiet_aggregation():
        data = bench_real_crowds.load_plain_layout(data_dir)
        _, info = crowd_layers.majority_vote(data["answers"], return_info=True)
        first = bench_real_crowds.baseline_targets(data)["mv"]
        second = bench_real_crowds.baseline_targets(bench_real_crowds.load_plain_layout(data_dir))
        keys = np.arange(len(data["answers"]))
        expected = crowd_layers.majority_vote(
            data["answers"], num_classes=3, tie_break="keyed", keys=keys
        )
    assert info["n_ties"] > 0  # the tiny crowd has ties to break
    np.testing.assert_array_equal(first, second["mv"])
    answered = expected >= 0
    np.testing.assert_array_equal(first[answered].argmax(1), expected[answered])
    np.testing.assert_allclose(first[~answered], 1 / 3)  # no answer: uniform target


def _regression_layout(folder, items=48, annotators=6, seed=0):
    """A tiny regression crowd in the plain layout: annotators with strong scales, biases and
    noise levels of their own, half the answers missing, one item without answers."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    column_scales = np.array([1e-3, 1e-1, 1.0, 1e1])
    weights = rng.normal(size=4)

    def split(n):
        raw = rng.normal(size=(n, 4))
        return raw * column_scales, raw @ weights / 2

    x_train, truth = split(items)
    scale = np.linspace(0.3, 3.0, annotators)
    bias = np.linspace(-2.0, 2.0, annotators)[rng.permutation(annotators)]
    noise = rng.uniform(0.05, 0.3, annotators)
    answers = scale * truth[:, None] + bias + noise * rng.normal(size=(items, annotators))
    answers[rng.random(answers.shape) < 0.5] = np.nan
    answers[0] = np.nan
    np.savetxt(folder / "answers.txt", answers, fmt="%.6f")
    np.savetxt(folder / "labels_train.txt", truth, fmt="%.6f")
    np.save(folder / "features_train.npy", x_train.astype("float32"))
    for name, n in (("test", 24), ("valid", 12)):
        x, t = split(n)
        np.savetxt(folder / f"labels_{name}.txt", t, fmt="%.6f")
        np.save(folder / f"features_{name}.npy", x.astype("float32"))
    return folder


@pytest.mark.slow
def test_real_crowds_regression_mode_end_to_end(bench_real_crowds, tmp_path, capsys):
    data_dir = _regression_layout(tmp_path / "ratings")
    output = tmp_path / "regression.json"
    argv = ["--data-dir", str(data_dir), "--task", "regression", "--seeds", "2"]
    assert bench_real_crowds.main([*argv, "--epochs", "2", "--json", str(output)]) == 0
    stdout = capsys.readouterr().out
    assert "48 training items, 6 annotators, regression" in stdout
    methods = bench_real_crowds.regression.METHODS
    assert methods == (
        "truth", "mean", "median", "latent_target",
        "latent", "latent_cold", "gaussian", "gaussian_raw", "S+B",
    )  # fmt: skip
    number = r"(-?\d+\.\d{4}) ± (\d+\.\d{4})"
    for method in methods:
        row = re.search(rf"^{re.escape(method)}\s+{number}\s+{number}", stdout, flags=re.M)
        assert row and all(np.isfinite(float(v)) for v in row.groups()), method
    assert re.search(r"^latent\s.*\(default\)$", stdout, flags=re.M)
    assert "TRAINING truth of the 47 answered training items" in stdout
    result = json.loads(output.read_text())
    assert result["task"] == "regression" and result["default"] == "latent"
    assert set(result["methods"]) == set(methods) == set(result["valid"])
    for method in methods:
        for metric in ("pearson", "ccc"):
            assert -1 <= result["methods"][method][metric] <= 1, (method, metric)
            assert len(result["per_seed"][method][metric]) == 2
            assert np.isfinite(result["std"][method][metric])
    aggregators = result["aggregators_train"]
    assert set(aggregators) == {"mean", "median", "latent", "latent_no_prior"}
    assert all(np.isfinite([row["pearson"], row["ccc"]]).all() for row in aggregators.values())
    # strong per-annotator biases and scales: the latent model recovers the truth, the mean not
    # (its CCC stays below 1 as its truth is on the scale of the average annotator, 1.65 here)
    assert aggregators["latent"]["ccc"] > aggregators["mean"]["ccc"] + 0.1
    assert aggregators["latent"]["pearson"] > max(0.9, aggregators["mean"]["pearson"] + 0.1)


@pytest.mark.parametrize(
    ("file_name", "content", "expected"),
    [
        ("answers.txt", "0.5 abc\n0.1 0.2\n", "expected whitespace-separated floats"),
        ("answers.txt", "nan nan\nnan nan\n", "no answer at all"),
        ("answers.txt", "0.5 inf\n0.1 0.2\n", "infinite"),
        ("answers.txt", "0 -1\n1 2\n", "a classification crowd"),
        ("labels_train.txt", "0.5\n0.1\n", "2 lines, but answers.txt has 48 items"),
        ("labels_test.txt", "0.5\nhigh\n", "expected one float per line"),
        ("labels_test.txt", "0.5\nnan\n", "must be finite"),
        ("labels_valid.txt", "0.5\n0.2\n", "with 2 items (the lines of labels_valid.txt)"),
    ],
)
def test_real_crowds_regression_names_a_bad_file(
    bench_real_crowds, tmp_path, capsys, file_name, content, expected
):
    data_dir = _regression_layout(tmp_path / "ratings")
    (data_dir / file_name).write_text(content)
    argv = ["--data-dir", str(data_dir), "--task", "regression"]
    assert bench_real_crowds.main(argv) == 2
    stderr = capsys.readouterr().err
    culprit = "features_valid.npy" if file_name == "labels_valid.txt" else file_name
    assert culprit in stderr and expected in stderr


def test_real_crowds_regression_names_features_of_another_width(
    bench_real_crowds, tmp_path, capsys
):
    data_dir = _regression_layout(tmp_path / "ratings")
    np.save(data_dir / "features_test.npy", np.zeros((24, 3), "float32"))
    argv = ["--data-dir", str(data_dir), "--task", "regression"]
    assert bench_real_crowds.main(argv) == 2
    assert "features_test.npy: 3 features per item, but features_train.npy has 4" in (
        capsys.readouterr().err
    )


def test_real_crowds_regression_rejects_classification_methods(bench_real_crowds, tmp_path):
    with pytest.raises(SystemExit):
        bench_real_crowds.parse_args(["--task", "regression", "--methods", "pooled"])
    args = bench_real_crowds.parse_args(["--task", "regression"])
    assert args.methods == list(bench_real_crowds.regression.METHODS)
    assert bench_real_crowds.parse_args([]).methods == list(bench_real_crowds.METHODS)


C25_PARTICIPANTS = 25
C25_HEADER = "index,filename," + ",".join(f"participant{i}" for i in range(C25_PARTICIPANTS))


@pytest.fixture(scope="module")
def bench_c25_halves():
    return _load_benchmark("bench_c25_halves.py")


def _c25_layout(folder, images=24, seed=0):
    """The six AffectNetC25 CSVs with ``images`` rows per set, in the real files' format; per
    set one expression code 9 (not a label), one valence -2 (not a label) and one empty
    arousal cell; the real files' header when they are there."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    real = REPO.parent / "shared" / "data" / "affectnetc25" / "expression_set1_C25.csv"
    header = real.read_text().splitlines()[0] if real.exists() else C25_HEADER
    grid = np.arange(-1.0, 1.01, 0.25)
    for number in (1, 2):
        names = [f"{number}{k:03d}{'.jpg' if k % 2 else '.PNG'}" for k in range(images)]
        index = rng.choice(400_000, images, replace=False)
        truth = rng.integers(0, 8, images)
        right = rng.random((images, C25_PARTICIPANTS)) < 0.7
        noise = rng.integers(0, 8, (images, C25_PARTICIPANTS))
        cells = {"expression": np.where(right, truth[:, None], noise).astype(str)}
        cells["expression"][0, 3] = "9"
        for kind in ("valence", "arousal"):
            value = rng.uniform(-0.8, 0.8, images)[:, None]
            bias = rng.normal(scale=0.2, size=C25_PARTICIPANTS)
            answer = value + bias + rng.normal(scale=0.2, size=(images, C25_PARTICIPANTS))
            snapped = grid[np.abs(answer[..., None] - grid).argmin(-1)]
            cells[kind] = np.char.mod("%.2f", snapped).astype(object)
        cells["valence"][1, 0] = "-2"
        cells["arousal"][2, 4] = ""
        for kind, table in cells.items():
            rows = [header] + [
                ",".join([str(i), name, *row]) for i, name, row in zip(index, names, table)
            ]
            (folder / f"{kind}_set{number}_C25.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_c25_layout_header_is_the_real_one():
    real = REPO.parent / "shared" / "data" / "affectnetc25" / "valence_set2_C25.csv"
    if not real.exists():
        pytest.skip(f"the real AffectNetC25 CSVs are not in {real.parent} (../shared is absent)")
    assert real.read_text().splitlines()[0] == C25_HEADER


def test_c25_halves_benchmark_on_a_tiny_copy(bench_c25_halves, tmp_path, capsys):
    data_dir = _c25_layout(tmp_path / "c25")
    output = tmp_path / "halves.json"
    argv = ["--data-dir", str(data_dir), "--repetitions", "3", "--json", str(output)]
    assert bench_c25_halves.main(argv) == 0
    stdout = capsys.readouterr().out
    assert "set1: 24 images, 25 annotators" in stdout and "3 repetitions" in stdout
    result = json.loads(output.read_text())
    assert result["repetitions"] == 3 and set(result["results"]) == {"set1", "set2"}
    assert sorted(result["cleaned"].values()) == [2, 2]  # code 9 and valence -2, per set
    for set_name, tasks in result["results"].items():
        for task in ("valence", "arousal"):
            methods = {m: v for m, v in tasks[task].items() if m != "skipped_items"}
            assert set(methods) == {"mean", "median", "latent", "latent_no_prior"}
            for method, metrics in methods.items():
                for metric in ("ccc", "pearson"):
                    assert -1 <= metrics[metric]["mean"] <= 1, (set_name, task, method)
                    assert np.isfinite(metrics[metric]["sd"])
        expression = tasks["expression"]
        for method in ("mv", "ds"):
            assert 0 <= expression[method]["accuracy"]["mean"] <= 1
        assert 0 <= expression["skipped_items"]["mean"] <= 24
    for verdict in result["latent_vs_mean"].values():
        assert isinstance(verdict["met"], bool) and len(verdict["cases"]) == 4


def test_c25_halves_benchmark_names_the_missing_csvs(bench_c25_halves, tmp_path, capsys):
    assert bench_c25_halves.main(["--data-dir", str(tmp_path / "nowhere")]) == 2
    stderr = capsys.readouterr().err
    assert "nowhere" in stderr and "expression_set1_C25.csv" in stderr


@pytest.mark.shared_data
def test_c25_halves_benchmark_on_the_real_answers(bench_c25_halves, c25_csv_dir, capsys):
    """The real AffectNetC25 answers (skipped with a reason where ../shared is absent)."""
    assert bench_c25_halves.main(["--data-dir", str(c25_csv_dir), "--repetitions", "4"]) == 0
    stdout = capsys.readouterr().out
    assert "set1: 800 images, 25 annotators" in stdout
    assert "set2: 800 images, 25 annotators" in stdout
    scores = re.findall(r"ccc (-?\d\.\d{4})", stdout)
    assert len(scores) == 16 and all(0.5 < float(v) <= 1 for v in scores)


def test_export_benchmark_measures_every_format(tmp_path):
    bench_export = _load_benchmark("bench_export.py")
    output = tmp_path / "export.json"
    results = bench_export.main(["--quick", "--output", str(output)])
    formats = ["keras", "saved_model", "tflite_float32", "tflite_float16", "tflite_int8", "onnx"]
    assert [row["format"] for row in results] == formats
    sizes = {row["format"]: row["bytes"] for row in results}
    assert sizes["tflite_int8"] < sizes["tflite_float16"] < sizes["tflite_float32"]
    assert all(row["latency_ms"] > 0 and row["images_per_s"] > 0 for row in results)
    saved = json.loads(output.read_text())
    assert saved["image_size"] == 64 and saved["results"] == results
