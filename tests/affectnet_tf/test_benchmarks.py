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
        "truth,mv,ds,geocrowdnet,pooled,pooled_mv",
        "--json",
        output,
    )
    assert "40 training items, 5 annotators, 3 classes" in stdout
    assert re.search(r"pooled\s+test 0\.\d{4} ± 0\.\d{4} .*\(default\)", stdout)
    result = json.loads(output.read_text())
    assert result["default"] == "pooled" and result["seeds"] == 2
    assert set(result["methods"]) == {
        "truth", "mv", "ds", "geocrowdnet", "pooled", "pooled_mv"
    }  # fmt: skip
    for method, accuracy in result["methods"].items():
        assert 0.0 <= accuracy <= 1.0, method
        assert len(result["per_seed"][method]) == 2
        assert accuracy == pytest.approx(np.mean(result["per_seed"][method]))
    assert result["valid"] == {}  # no validation files


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
