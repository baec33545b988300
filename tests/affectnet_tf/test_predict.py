"""``python -m affectnet_tf.predict`` on an image, a folder and videos (astronaut clips)."""

import csv
import json
import os

import cv2
import make_face_clips
import numpy as np
import pytest

import affectnet_tf
from affectnet_tf import predict
from affectnet_tf.inference import faces, video
from affectnet_tf.inference.inputs import expand_inputs, predict_inputs
from affectnet_tf.inference.predictor import RECORD_KEYS, Predictor, load_run_model

pytest.importorskip("skimage", reason="scikit-image ships the astronaut test image")

CLIP_FRAMES = 8
BLANK = (3, 4)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_face_clips.save_tiny_run(tmp_path_factory.mktemp("run_all"), "all")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    images = folder / "images"
    images.mkdir()
    cv2.imwrite(
        str(images / "astronaut.png"), cv2.cvtColor(make_face_clips.astronaut(), cv2.COLOR_RGB2BGR)
    )
    cv2.imwrite(str(images / "empty.jpg"), np.full((60, 80, 3), 90, np.uint8))
    (images / "notes.txt").write_text("not an image")  # left out of a folder
    (images / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    clip = str(folder / "clip.avi")
    make_face_clips.write_clip(clip, CLIP_FRAMES, blank_frames=BLANK)
    broken = str(folder / "broken.avi")
    make_face_clips.write_corrupt_clip(broken)
    return {"images": str(images), "clip": clip, "broken": broken}


@pytest.fixture(scope="module")
def astronaut_faces():
    """The astronaut's face, found and cropped (224) once for the tests of records."""
    return faces.FaceCropper(mode="all").process([make_face_clips.astronaut()])[0]


def _json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _read_jsonl(path):
    with open(path) as stream:
        return [json.loads(line) for line in stream]


@pytest.fixture(scope="module")
def jsonl_run(run_dir, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    argv = [
        "--model-dir",
        run_dir,
        inputs["images"],
        inputs["clip"],
        inputs["broken"],
        "--output",
        str(out / "predictions.jsonl"),
        "--annotate",
        str(out / "annotated"),
        "--cache-dir",
        str(out / "boxes"),
        "--progress-min-frames",
        "4",
    ]
    assert predict.main(argv) == 0
    return out


def test_records_of_every_frame_and_face(jsonl_run, inputs):
    records = _read_jsonl(jsonl_run / "predictions.jsonl")
    by_source = {}
    for record in records:
        by_source.setdefault(os.path.basename(record["source"]), []).append(record)
    assert set(by_source) == {
        "astronaut.png",
        "empty.jpg",
        "truncated.jpg",
        "clip.avi",
        "broken.avi",
    }
    (astronaut,) = by_source["astronaut.png"]
    assert set(astronaut) == set(RECORD_KEYS)
    assert astronaut["frame"] == 0 and astronaut["score"] > 0.99
    assert faces.box_iou(astronaut["box"], make_face_clips.ASTRONAUT_FACE_BOX) > 0.85
    probabilities = astronaut["probabilities"]
    assert list(probabilities) == list(affectnet_tf.labels.EXPRESSION_NAMES)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert astronaut["expression"] == max(probabilities, key=probabilities.get)
    assert -1 <= astronaut["valence"] <= 1 and -1 <= astronaut["arousal"] <= 1
    # A frame without a face: one record, box null, nothing predicted.
    (empty,) = by_source["empty.jpg"]
    assert empty["box"] is None and empty["expression"] is None and "error" not in empty
    # Unreadable files: one record with the reason.
    assert "Cannot decode" in by_source["truncated.jpg"][0]["error"]
    assert "cannot open" in by_source["broken.avi"][0]["error"]
    # Every frame of the clip, the blank ones with box null.
    clip = by_source["clip.avi"]
    assert [r["frame"] for r in clip] == list(range(CLIP_FRAMES))
    assert [r["box"] is None for r in clip] == [i in BLANK for i in range(CLIP_FRAMES)]


def test_predictions_match_the_model_on_training_resized_crops(run_dir, astronaut_faces):
    """A record's numbers are the model's on the crop resized by affectnet_tf.data.images."""
    model = load_run_model(run_dir)
    found = astronaut_faces
    (record,) = Predictor(model).records("x", 0, found)
    crop = np.asarray(affectnet_tf.resize_image(found.crops, 32))
    expected = model(crop, training=False)
    np.testing.assert_allclose(
        list(record["probabilities"].values()), np.asarray(expected["expression"])[0], rtol=1e-5
    )
    assert record["valence"] == pytest.approx(float(expected["valence"][0, 0]), rel=1e-5)
    assert record["arousal"] == pytest.approx(float(expected["arousal"][0, 0]), rel=1e-5)


def test_clip_summary(jsonl_run):
    records = [
        r for r in _read_jsonl(jsonl_run / "predictions.jsonl") if r["source"].endswith("clip.avi")
    ]
    (summary,) = json.loads((jsonl_run / "predictions_clips.json").read_text())
    with_face = [r for r in records if r["box"] is not None]
    assert summary["frames"] == CLIP_FRAMES and summary["frames_read"] == CLIP_FRAMES
    assert summary["frames_with_face"] == len(with_face) == CLIP_FRAMES - len(BLANK)
    names = list(affectnet_tf.labels.EXPRESSION_NAMES)
    mean = np.mean([[r["probabilities"][n] for n in names] for r in with_face], axis=0)
    np.testing.assert_allclose([summary["mean_probabilities"][n] for n in names], mean, rtol=1e-6)
    assert summary["expression"] == names[int(np.argmax(mean))]
    assert summary["mean_valence"] == pytest.approx(np.mean([r["valence"] for r in with_face]))
    assert summary["mean_arousal"] == pytest.approx(np.mean([r["arousal"] for r in with_face]))


def test_annotated_outputs(jsonl_run):
    annotated = jsonl_run / "annotated"
    assert sorted(os.listdir(annotated)) == [
        "astronaut_annotated.png",
        "clip_annotated.avi",
        "empty_annotated.png",
    ]
    image = cv2.imread(str(annotated / "astronaut_annotated.png"))
    assert image.shape == (512, 512, 3)
    original = cv2.cvtColor(make_face_clips.astronaut(), cv2.COLOR_RGB2BGR)
    assert np.any(image != original)  # a box and a label were drawn
    capture = cv2.VideoCapture(str(annotated / "clip_annotated.avi"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == CLIP_FRAMES
    capture.release()


def test_progress_logging_and_cache(run_dir, inputs, tmp_path, capsys):
    argv = ["--model-dir", run_dir, inputs["clip"], "--cache-dir", str(tmp_path / "boxes")]
    # --verbose: progress bars on any stderr, over the files and (4 frames or more) the frames.
    assert predict.main(argv + ["--progress-min-frames", "4", "--verbose"]) == 0
    captured = capsys.readouterr()
    assert f"clip.avi:   0%|          | 0/{CLIP_FRAMES} [" in captured.err
    assert "frame/s" in captured.err and "predicting:" in captured.err
    first = [json.loads(line) for line in captured.out.splitlines()]
    assert len(first) == CLIP_FRAMES
    (summary,) = _json_lines(captured.err)
    assert summary["frames_detected"] == CLIP_FRAMES
    # Second pass: boxes from the cache, the same records; no frame bar (a short video).
    assert predict.main(argv + ["--verbose"]) == 0
    captured = capsys.readouterr()
    assert "frame/s" not in captured.err and "predicting:" in captured.err
    assert [json.loads(line) for line in captured.out.splitlines()] == first
    assert _json_lines(captured.err)[0]["frames_detected"] == 0
    # Default verbosity: the status line, no bar (stderr is not a terminal).
    assert predict.main(argv + ["--progress-min-frames", "4"]) == 0
    captured = capsys.readouterr()
    assert f"{CLIP_FRAMES} records; 1 video summaries." in captured.err
    assert "frame/s" not in captured.err and "predicting:" not in captured.err
    # --quiet: no status line; the records and the clip summary still print.
    assert predict.main(argv + ["--quiet"]) == 0
    captured = capsys.readouterr()
    assert "records" not in captured.err
    assert [json.loads(line) for line in captured.out.splitlines()] == first
    assert len(_json_lines(captured.err)) == 1


def test_csv_output_and_sampling(run_dir, inputs, tmp_path):
    path = tmp_path / "out.csv"
    argv = ["--model-dir", run_dir, inputs["clip"], "--every-n", "3", "--output", str(path)]
    assert predict.main(argv) == 0
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    names = affectnet_tf.labels.EXPRESSION_NAMES
    assert [int(r["frame"]) for r in rows] == [0, 3, 6]
    assert rows[0].keys() >= {"box_x", "box_width", "score", "valence", "arousal"}
    assert rows[1]["box_x"] == "" and rows[1]["expression"] == ""  # frame 3 is blank
    assert sum(float(rows[0][f"prob_{n}"]) for n in names) == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["expression"] == max(names, key=lambda n: float(rows[0][f"prob_{n}"]))


@pytest.mark.parametrize("task", ["exp", "va"])
def test_single_task_models_have_null_outputs(task, astronaut_faces):
    """An expression-only model's records have null valence and arousal; a valence/arousal
    model's, null probabilities (models built in memory: loading is tested above)."""
    built = affectnet_tf.build_model(
        "compact_cnn", weights=None, task=task, image_size=32, dropout=0.0
    )
    (record,) = Predictor(built.prediction_model).records("x", 0, astronaut_faces)
    if task == "exp":
        assert record["expression"] is not None and sum(record["probabilities"].values()) > 0.99
        assert record["valence"] is None and record["arousal"] is None
    else:
        assert record["expression"] is None and record["probabilities"] is None
        assert -1 <= record["valence"] <= 1 and -1 <= record["arousal"] <= 1


def test_bad_arguments(tmp_path, run_dir, inputs):
    with pytest.raises(FileNotFoundError, match="No model.keras"):
        load_run_model(tmp_path)
    with pytest.raises(ValueError, match=r"\.jsonl, \.json or \.csv"):
        predict.main(["--model-dir", run_dir, inputs["clip"], "--output", str(tmp_path / "x.txt")])
    records = []
    predictor = Predictor(load_run_model(run_dir))
    _, problems = predict_inputs(
        predictor, [str(tmp_path / "missing.png"), str(tmp_path)], records.append
    )
    assert problems == [
        (str(tmp_path / "missing.png"), f"input not found: {tmp_path / 'missing.png'}")
    ]


def test_unreadable_inputs_are_a_warning_even_when_quiet(run_dir, tmp_path, capsys):
    missing = str(tmp_path / "missing.png")
    assert predict.main(["--model-dir", run_dir, missing, "--quiet"]) == 0
    captured = capsys.readouterr()
    (record,) = [json.loads(line) for line in captured.out.splitlines()]
    assert record["error"] == f"input not found: {missing}"
    assert f"1 inputs could not be read (records with an 'error' key): {missing}" in captured.err


def test_expand_inputs_walks_folders_in_order(tmp_path):
    for name in ("b.png", "a.avi", "c.txt", "sub/d.jpg"):
        os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [(os.path.relpath(p, tmp_path), kind) for p, kind in expand_inputs([tmp_path])]
    assert found == [("a.avi", "video"), ("b.png", "image"), ("sub/d.jpg", "image")]
    assert expand_inputs(["x.mkv"]) == [("x.mkv", "video")]
    assert video.VIDEO_EXTENSIONS  # the video kinds come from affectnet_tf.inference.video
