"""examples/demo.py (`make demo`) end to end in its quick mode: tiny config, one epoch."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_demo_runs_every_target_and_writes_the_summary(tmp_path):
    """The real command line, in a fresh process, as `make demo` runs it, into a folder whose
    parents hold dots, spaces and non-ASCII letters (as ``mktemp -d`` and users name them)."""
    tmp_path = tmp_path / "tmp.x y" / "dèmo.out"
    result = subprocess.run(
        [sys.executable, str(DEMO), "--quick", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SYNTHETIC" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [row["target"] for row in summary["rows"]] == ["true", "mv", "ds", "cv"]
    assert summary["splits"] == {"train": 48, "validation": 48, "test": 48}
    for row in summary["rows"]:
        run = Path(row["run_dir"])
        assert (run / "model.keras").exists() and (run / "metrics.json").exists()
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["expression"]["count"] == 48  # the whole test split, against the truth
        assert 0.0 <= row["accuracy"] <= 1.0 and np.isfinite(row["f1_macro"])
        assert row["label_accuracy"] == pytest.approx(1.0) if row["target"] == "true" else True
    assert (tmp_path / "runs" / "cv" / "annotators.npz").exists()
    table = (tmp_path / "summary.md").read_text()
    assert "| mv (majority vote) |" in table and "| cv (crowd layers) |" in table
    assert "valence CCC" in table


def test_label_quality_ranks_the_targets(demo, synthetic_faces_tiny):
    _, builder = synthetic_faces_tiny
    quality = demo.label_quality(builder)
    assert quality["true"] == 1.0
    # 25 answers per image: the aggregated labels beat a single answer
    assert quality["mv"] > quality["cv"] and quality["ds"] > quality["cv"]
    assert 0.3 < quality["cv"] < 0.8


def test_summary_table_formats_rows(demo):
    row = {
        "target": "ds",
        "label_accuracy": 0.9,
        "accuracy": 0.8,
        "f1_macro": 0.75,
        "valence_ccc": 0.6,
        "arousal_ccc": float("nan"),
        "seconds": 12.3,
    }
    lines = demo.summary_table([row]).splitlines()
    assert lines[0].startswith("| target |") and len(lines) == 3
    assert lines[2] == "| ds (Dawid-Skene) | 0.900 | 0.800 | 0.750 | 0.600 | nan | 12 s |"


def test_the_demo_model_is_the_half_width_compact_cnn():
    from affectnet_tf.modeling.backbones import build_backbone

    small, spec = build_backbone("compact_cnn_small", weights=None, image_size=32)
    full, _ = build_backbone("compact_cnn", weights=None, image_size=32)
    assert spec.width == 16 and small.name == "compact_cnn_small"
    assert small.output_shape == (None, 128) and full.output_shape == (None, 256)
    assert small.get_layer("conv0").filters == 16 and small.get_layer("conv3").filters == 128
    assert small.get_layer("bn0").momentum == 0.9 and full.get_layer("bn0").momentum == 0.99
    assert small.count_params() < full.count_params() / 3
