"""The front doors in folders named as users' folders are: dots (``mktemp -d``'s ``tmp.AbC12``,
``proj.v2``), spaces and non-ASCII letters in every parent, for the data, the run, the inputs
and the outputs. Training used to crash at the end of its first epoch there."""

import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import cv2
import make_face_clips
import pytest

from affectnet_tf import evaluate, export, predict
from affectnet_tf import train as train_module

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    folder = tmp_path_factory.mktemp("paths") / "tmp.AbC12" / "a.b c" / "ü"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="module")
def run(home):
    """A run trained by the training command with its data, run and outputs under ``home``."""
    output = home / "runs.v2" / "faces cv ü"
    code = train_module.main(
        [
            "--dataset",
            "synthetic_faces/tiny",
            "--data-dir",
            str(home / "tensorflow_datasets"),
            "--model",
            "compact_cnn_small",
            "--weights",
            "none",
            "--image-size",
            "32",
            "--task",
            "all",
            "--target",
            "cv",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--steps-per-epoch",
            "2",
            "--output-dir",
            str(output),
        ]
    )
    assert code == 0
    return output


def test_training_writes_its_run_folder(run):
    assert {"model.keras", "crowd_model.keras", "metrics.json", "history.csv"} <= {
        p.name for p in run.iterdir()
    }
    assert not (run / "backup").exists()
    assert not [p for p in run.rglob("*") if p.name.startswith(".partial-")]


def test_evaluate(run, home, capsys):
    output = home / "eval.out ü"
    assert evaluate.main(["--model-dir", str(run), "--output-dir", str(output)]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["expression"]["count"] == 48
    assert (output / "report" / "report.html").exists()


def test_predict(run, home):
    inputs = home / "photos.2026 ü"
    inputs.mkdir()
    image = cv2.cvtColor(make_face_clips.astronaut(), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(inputs / "face.v1 ü.png"), image)
    output = home / "out.d" / "faces.v1.jsonl"
    output.parent.mkdir()
    code = predict.main(["--model-dir", str(run), str(inputs), "--output", str(output)])
    assert code == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [Path(r["source"]).name for r in records] == ["face.v1 ü.png"]
    assert set(records[0]) >= {"expression", "valence", "arousal"}


def test_export_checks_on_the_runs_data(run, home):
    output = home / "export.d" / "model.v1.tflite"
    argv = ["--model-dir", str(run), "--format", "tflite", "--quantization", "float16"]
    export.main([*argv, "--output", str(output)])  # exits 1 when the check fails
    assert output.stat().st_size > 0
    check = json.loads(Path(f"{output}.check.json").read_text())
    assert check["check"]["met"]


@pytest.mark.slow
def test_serve(run, home):
    """``python -m affectnet_tf.serve`` on the run: its page and a prediction."""
    process = subprocess.Popen(
        [sys.executable, "-m", "affectnet_tf.serve", "--model-dir", str(run), "--port", "0"],
        cwd=home,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            found = re.search(r"POST (http://\S+?):predict", line)
            if found:
                break
        assert found, "".join(lines)[-3000:]
        url = found.group(1)
        base, name = url.rsplit("/", 1)
        assert name == "faces_cv_ü"  # the run folder's name, its spaces made URL-safe
        ok, png = cv2.imencode(".png", make_face_clips.astronaut())
        body = json.dumps({"instances": [{"b64": __import__("base64").b64encode(png).decode()}]})
        quoted = f"{base}/{urllib.parse.quote(name)}:predict"
        request = urllib.request.Request(quoted, data=body.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        assert len(answer["predictions"]) == 1
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()
