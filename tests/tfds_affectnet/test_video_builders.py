"""The ``afew`` and ``vgaf`` builders on dummy layouts of tiny generated clips (real faces)."""

import io
import json
import os
import sys

import make_face_clips
import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_affectnet
from tfds_affectnet import AfewConfig, VgafConfig, _video_examples, labels, video_frames
from tfds_affectnet.afew import afew_dataset_builder
from tfds_affectnet.vgaf import read_vgaf_labels, vgaf_dataset_builder

pytest.importorskip("skimage", reason="scikit-image ships the astronaut test image")

SIZE = 24


def _config(cls, name="tiny", **kwargs):
    return cls(name=name, crop_size=SIZE, every_n=2, **kwargs)


def _build(name, config, manual_dir, data_dir):
    builder = tfds.builder(name, config=config, data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def _examples(builder, split):
    return {ex["clip_name"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


@pytest.fixture(scope="module")
def afew(tmp_path_factory):
    manual = tmp_path_factory.mktemp("afew_manual")
    make_face_clips.make_afew_layout(manual)
    data_dir = tmp_path_factory.mktemp("afew_tfds")
    return _build("afew", _config(AfewConfig), manual, data_dir), manual, data_dir


@pytest.fixture(scope="module")
def vgaf(tmp_path_factory):
    manual = tmp_path_factory.mktemp("vgaf_manual")
    make_face_clips.make_vgaf_layout(manual)
    data_dir = tmp_path_factory.mktemp("vgaf_tfds")
    return _build("vgaf", _config(VgafConfig), manual, data_dir), manual, data_dir


def test_builders_are_registered():
    assert {"afew", "vgaf"} <= set(tfds.list_builders())
    assert tfds_affectnet.Afew is afew_dataset_builder.Builder
    assert tfds_affectnet.Vgaf is vgaf_dataset_builder.Builder


def test_afew_examples(afew):
    builder, _, _ = afew
    assert builder.info.features["label"].names == list(labels.EXPRESSION_NAMES_7)
    train = _examples(builder, "train")
    assert sorted(train) == [
        "Happy/happy_1",
        "Happy/happy_2",
        "Neutral/blank_1",
        "Sad/sad_1",
        "Sad/sad_2",
    ]
    names = labels.EXPRESSION_NAMES_7
    assert names[train["Happy/happy_1"]["label"]] == "happy"
    assert names[train["Sad/sad_2"]["label"]] == "sad"
    assert names[train["Neutral/blank_1"]["label"]] == "neutral"
    happy = train["Happy/happy_1"]
    assert happy["has_face"] and happy["num_frames"] == 2  # 4 frames, every 2nd
    assert happy["faces"]["image"].shape == (2, SIZE, SIZE, 3)
    np.testing.assert_array_equal(happy["faces"]["frame"], [0, 2])
    assert happy["faces"]["box"].shape == (2, 4) and np.all(happy["faces"]["score"] > 0.9)
    # Boxes inside the pasted squares' frames (160x120).
    x, y, w, h = happy["faces"]["box"].T
    assert np.all((x >= 0) & (x + w <= 160) & (y >= 0) & (y + h <= 120))
    blank = train["Neutral/blank_1"]
    assert not blank["has_face"] and blank["num_frames"] == 2
    assert blank["faces"]["image"].shape == (0, SIZE, SIZE, 3)
    assert sorted(_examples(builder, "validation")) == [
        "Happy/happy_3",
        "Neutral/blank_2",
        "Sad/sad_3",
    ]


def test_afew_reports(afew):
    builder, _, _ = afew
    report = json.loads((builder.data_path / "report_train.json").read_text())
    assert report["examples"] == 5 and report["skipped"] == {"unreadable video": 1}
    assert report["notes"] == {"no face found in any sampled frame": 1}
    skip_log = (builder.data_path / "skipped_train.tsv").read_text().splitlines()
    assert skip_log[1].startswith("Angry/broken\tunreadable video\tOpenCV cannot open")
    faces = json.loads((builder.data_path / "faces_train.json").read_text())
    assert faces["without_face"] == ["Neutral/blank_1"]
    assert [u["name"] for u in faces["unreadable"]] == ["Angry/broken"]
    assert faces["frames_sampled"] == 10 and faces["frames_without_face"] == 2


def test_box_cache_makes_a_rebuild_detect_nothing(afew):
    builder, manual, data_dir = afew
    cache = os.path.join(data_dir, "downloads", "face_boxes", "afew")
    assert len(os.listdir(cache)) == 8  # one file per readable clip
    bigger = _build("afew", AfewConfig(name="bigger", crop_size=32, every_n=2), manual, data_dir)
    faces = json.loads((bigger.data_path / "faces_train.json").read_text())
    assert faces["frames_detected"] == 0 and faces["frames_sampled"] == 10
    a = _examples(builder, "train")["Sad/sad_1"]["faces"]["box"]
    b = _examples(bigger, "train")["Sad/sad_1"]["faces"]["box"]
    np.testing.assert_array_equal(a, b)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_clip_frames_bar_only_on_a_terminal(tmp_path, monkeypatch, capsys):
    """A bar over a clip's frames when the standard error is a terminal, none in a log."""
    clip = str(tmp_path / "clip.avi")
    make_face_clips.write_clip(clip, 4)
    config = _config(AfewConfig)
    processor = _video_examples.ClipProcessor(
        config.cropper("largest"), config.sampler(), None, video_frames.FaceReport()
    )
    row = {"file_name": "Happy/clip", "path": clip, "label": 1}
    assert processor(row).example["num_frames"] == 2
    assert "Happy/clip" not in capsys.readouterr().err
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert processor(row).example["num_frames"] == 2
    assert "Happy/clip: " in terminal.getvalue() and "frame" in terminal.getvalue()


def test_vgaf_examples_and_skips(vgaf):
    builder, _, _ = vgaf
    assert builder.info.features["label"].names == ["positive", "neutral", "negative"]
    train = _examples(builder, "train")
    assert sorted(train) == ["1_1", "2_1", "3_1", "4_1", "5_1"]
    assert [train[n]["label"] for n in ("1_1", "3_1", "5_1")] == [0, 2, 1]
    assert train["1_1"]["has_face"] and not train["5_1"]["has_face"]
    assert train["1_1"]["faces"]["image"].shape == (2, SIZE, SIZE, 3)
    report = json.loads((builder.data_path / "report_train.json").read_text())
    assert report["skipped"] == {
        "label without a video": 1,
        "unreadable video": 1,
        "video without a label": 1,
    }
    skipped = {
        line.split("\t")[0]
        for line in (builder.data_path / "skipped_train.tsv").read_text().splitlines()[1:]
    }
    assert skipped == {"9_1", "10_1", "unlabelled"}
    assert sorted(_examples(builder, "validation")) == ["6_1", "7_1", "8_1"]


def test_vgaf_keeps_every_face(tmp_path):
    """Two faces in each frame of a clip: both stored, with the same frame index."""
    import cv2

    os.makedirs(tmp_path / "Train")
    os.makedirs(tmp_path / "Val")
    frame = np.full((160, 320, 3), 90, np.uint8)
    frame[10:150, 10:150] = make_face_clips.face_patch(140)
    frame[30:140, 190:300] = make_face_clips.face_patch(110)
    for split in ("Train", "Val"):
        path = str(tmp_path / split / "group.avi")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 160))
        for _ in range(2):
            writer.write(np.ascontiguousarray(frame[..., ::-1]))
        writer.release()
        (tmp_path / f"{split}_labels.txt").write_text("Vid_name Label\ngroup.avi Positive\n")
    builder = _build("vgaf", _config(VgafConfig, "two"), tmp_path, tmp_path / "tfds")
    (example,) = _examples(builder, "train").values()
    np.testing.assert_array_equal(example["faces"]["frame"], [0, 0])
    assert example["label"] == 0


def test_read_vgaf_labels(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("Vid_name Label\n10_1 1\n\n11_2.mp4\t3\n12_3,Neutral\n13_1 negative\n")
    assert read_vgaf_labels(path) == {"10_1": 0, "11_2": 2, "12_3": 1, "13_1": 2}
    path.write_text("10_1 1\n11_2 4\n")
    with pytest.raises(ValueError, match=r"labels.txt, line 2: .*Received: '11_2 4'"):
        read_vgaf_labels(path)
    path.write_text("10_1 1\n10_1.mp4 2\n")
    with pytest.raises(ValueError, match="line 2: clip '10_1' is listed twice"):
        read_vgaf_labels(path)


def test_missing_layout_and_unknown_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)missing folder.*Train_AFEW/<Emotion>/<clip>"):
        _build("afew", _config(AfewConfig, "m1"), tmp_path, tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match="Train_labels.txt"):
        _build("vgaf", _config(VgafConfig, "m2"), tmp_path, tmp_path / "tfds")
    os.makedirs(tmp_path / "Train_AFEW" / "Joy")
    os.makedirs(tmp_path / "Val_AFEW")
    with pytest.raises(ValueError, match="unknown emotion folder .*Received: folder='Joy'"):
        _build("afew", _config(AfewConfig, "m3"), tmp_path, tmp_path / "tfds")


def test_manual_download_instructions_give_the_layouts():
    afew_text = afew_dataset_builder.Builder.MANUAL_DOWNLOAD_INSTRUCTIONS
    for part in ("<manual_dir>/Train_AFEW/<Emotion>/<clip>.avi", "Val_AFEW", "Surprise"):
        assert part in afew_text
    vgaf_text = vgaf_dataset_builder.Builder.MANUAL_DOWNLOAD_INSTRUCTIONS
    for part in ("<manual_dir>/Train/<Vid_name>.mp4", "Val_labels.txt", "1 (Positive)"):
        assert part in vgaf_text


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every_n": 2, "fps": 5.0}, "not both"),
        ({"crop_size": 1.5}, "crop_size"),
        ({"min_face_size": 4}, "min_face_size"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AfewConfig(name="bad", **kwargs)
