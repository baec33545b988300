"""The benchmark scripts run end to end (their figures are not checked: no timed tests)."""

import json
import re
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.slow
def test_benchmark_quick_runs():
    stdout = _run_benchmark("bench_input_pipeline.py", "--quick")
    assert "256 records of 224x224 JPEG" in stdout
    for path in ("make_dataset (training, augmented)", "tf.io.decode_jpeg", "Python loop"):
        assert re.search(re.escape(path) + r".*\s\d+\n", stdout), path
    assert re.search(r"make_dataset / decode limit:\s+\d+%", stdout)


@pytest.mark.slow
def test_training_benchmark_quick_runs(tmp_path):
    output = tmp_path / "train.json"
    stdout = _run_benchmark("bench_train.py", "--quick", "--output", output)
    assert "compact_cnn" in stdout and "crowd head cost" in stdout
    (row,) = json.loads(output.read_text())
    assert row["plain"] > 0 and row["crowd"] > 0


@pytest.mark.slow
def test_training_benchmark_gpu_mode_runs_unchanged_on_cpu(tmp_path):
    """The --gpu mode (mixed precision, XLA) is the same code: it runs on this CPU too."""
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
