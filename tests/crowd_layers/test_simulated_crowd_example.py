"""examples/simulated_crowd.py: the quick run prints a full table; the crowd simulator."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "simulated_crowd.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("simulated_crowd", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_simulate_answers_follows_the_confusions(example, rng):
    confusions = np.stack([np.eye(3), np.full((3, 3), 1 / 3), np.eye(3)[[1, 2, 0]]])
    labels = rng.integers(0, 3, size=3000)
    dense = example.simulate_answers(labels, confusions, 3, rng)
    assert dense.shape == (3000, 3)
    assert np.all(dense[:, 0] == labels)  # the perfect annotator
    assert np.all(dense[:, 2] == (labels + 1) % 3)  # the permuting one
    assert_allclose(np.bincount(dense[:, 1], minlength=3) / 3000, 1 / 3, atol=0.03)
    sparse = example.simulate_answers(labels, confusions, 1, rng)
    assert np.all((sparse >= 0).sum(axis=1) == 1)


def test_synthetic_confusions_are_row_stochastic_and_neutral_biased(example, rng):
    confusions = example.synthetic_confusions(10, rng)
    assert confusions.shape == (10, 8, 8)
    assert_allclose(confusions.sum(-1), 1.0)
    off_diagonal = confusions * (1 - np.eye(8))
    assert np.all(off_diagonal[:, 1:, 0] > off_diagonal[:, 1:, 1:].mean())


def test_missing_csv_dir_falls_back_to_built_in_annotators(example, tmp_path):
    assert example.load_c25_confusions(tmp_path) is None
    crowds, source = example.make_crowds(np.arange(40) % 8, tmp_path, np.random.default_rng(0))
    assert "built-in" in source
    assert crowds["dense"].shape == (40, 25) and np.all(crowds["dense"] >= 0)
    assert crowds["sparse"].shape == (40, 50)
    assert np.all((crowds["sparse"] >= 0).sum(axis=1) == 3)


def test_c25_confusions_from_the_real_csvs(example, c25_csv_dir):
    set1, set2 = example.load_c25_confusions(c25_csv_dir)
    assert set1.shape == set2.shape == (25, 8, 8)
    assert_allclose(set1.sum(-1), 1.0, atol=1e-6)
    # In AffectNet order: neutral (0) is the most common wrong answer for contempt (7).
    assert set1[:, 7].mean(0).argsort()[-2:].tolist() in ([0, 7], [7, 0])


@pytest.mark.slow
def test_quick_run_prints_every_row(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--quick", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "table.md").read_text()
    for method in ("truth", "majority vote", "Dawid-Skene", "MW", "VW", "VB", "VW+B", "SW"):
        assert f"| {method} |" in table
    assert "| confusion |" in table and "| geocrowdnet |" in table
    assert "| pooled (default) |" in table
    assert "| method | dense | sparse |" in result.stdout
    assert (tmp_path / "args.json").exists() and (tmp_path / "results.json").exists()
