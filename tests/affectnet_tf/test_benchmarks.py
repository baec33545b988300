"""The benchmark scripts run end to end (their figures are not checked: no timed tests)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_benchmark_quick_runs():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_input_pipeline.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "256 records of 224x224 JPEG" in result.stdout
    for path in ("make_dataset (training, augmented)", "tf.io.decode_jpeg", "Python loop"):
        assert re.search(re.escape(path) + r".*\s\d+\n", result.stdout), path
    assert re.search(r"make_dataset / decode limit:\s+\d+%", result.stdout)


@pytest.mark.slow
def test_training_benchmark_quick_runs(tmp_path):
    output = tmp_path / "train.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_train.py"),
            "--quick",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "compact_cnn" in result.stdout and "crowd head cost" in result.stdout
    (row,) = json.loads(output.read_text())
    assert row["plain"] > 0 and row["crowd"] > 0


@pytest.mark.slow
def test_training_benchmark_gpu_mode_runs_unchanged_on_cpu(tmp_path):
    """The --gpu mode (mixed precision, XLA) is the same code: it runs on this CPU too."""
    output = tmp_path / "gpu.json"
    command = [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--quick", "--gpu"]
    result = subprocess.run(
        [*command, "--batch-size", "16", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "mixed precision + XLA" in result.stdout
    (row,) = json.loads(output.read_text())
    assert row["plain"] > 0 and row["crowd"] > 0 and 0 <= row["isolated_cost"] < 1
