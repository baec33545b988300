"""The face-crop stage and the video reader on a real face (scikit-image's astronaut)."""

import os

import cv2
import make_face_clips
import numpy as np
import pytest

from affectnet_tf.data.images import resize_image
from affectnet_tf.inference import faces, video
from tfds_affectnet import _images

pytest.importorskip("skimage", reason="scikit-image ships the astronaut test image")


@pytest.fixture(scope="module")
def astronaut():
    return make_face_clips.astronaut()


@pytest.fixture(scope="module")
def cropper():
    return faces.FaceCropper(working_size=320, crop_size=64)


def _paste(canvas, image, x, y, side):
    canvas[y : y + side, x : x + side] = make_face_clips.face_patch(side)
    return canvas


def test_detects_the_astronaut(cropper, astronaut):
    (found,) = cropper.detect([astronaut])
    assert len(found) == 1
    assert found.boxes.shape == (1, 4) and found.landmarks.shape == (1, 5, 2)
    assert faces.box_iou(found.boxes[0], make_face_clips.ASTRONAUT_FACE_BOX) > 0.85
    assert found.scores[0] > 0.99
    (x, y, w, h), points = found.boxes[0], found.landmarks[0]
    assert np.all((points[:, 0] > x) & (points[:, 0] < x + w))
    assert np.all((points[:, 1] > y) & (points[:, 1] < y + h))
    left_eye, right_eye, nose, mouth_left, mouth_right = points
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_working_size_scales_boxes_back(astronaut):
    """Detected on a 320 working frame, the boxes of a 1024x1024 frame are in its pixels."""
    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    cropper = faces.FaceCropper(working_size=320)
    assert cropper.working_scale(1024, 1024) == pytest.approx(0.709**3)
    (found,) = cropper.detect([big])
    expected = np.asarray(make_face_clips.ASTRONAUT_FACE_BOX) * 2
    assert faces.box_iou(found.boxes[0], expected) > 0.8
    full = faces.FaceCropper(working_size=0).detect([big])[0]
    assert faces.box_iou(found.boxes[0], full.boxes[0]) > 0.85


def test_full_size_is_plain_mtcnn_box_for_box(astronaut):
    """With no working size the stage is mtcnn's own detect_faces, batched: the same numbers."""
    from mtcnn import MTCNN

    frames = [astronaut, cv2.resize(astronaut, (640, 480), interpolation=cv2.INTER_AREA)]
    found = faces.FaceCropper(working_size=None, mode="all", batch_size=2).detect(frames)
    detector = MTCNN()
    for frame, ours in zip(frames, found):
        plain = detector.detect_faces(frame, output_type="numpy")  # unrounded xywh rows
        plain = plain[np.argsort(-(plain[:, 3] * plain[:, 4]), kind="stable")]
        assert len(ours) == len(plain) >= 1
        np.testing.assert_allclose(ours.boxes, plain[:, 1:5], atol=1e-2)
        np.testing.assert_allclose(ours.scores, plain[:, 5], atol=1e-4)
        np.testing.assert_allclose(ours.landmarks[..., 0], plain[:, 6:11], atol=1e-2)
        np.testing.assert_allclose(ours.landmarks[..., 1], plain[:, 11:16], atol=1e-2)


def test_working_size_skips_the_finest_pyramid_levels():
    from mtcnn.utils.images import build_scale_pyramid

    full = build_scale_pyramid(640, 480, min_face_size=20, scale_factor=0.709)
    cropper = faces.FaceCropper(working_size=320)
    assert cropper.working_scale(480, 640) == pytest.approx(0.709**2)
    np.testing.assert_allclose(cropper.pyramid_scales(480, 640), full[2:])
    np.testing.assert_allclose(faces.FaceCropper(working_size=None).pyramid_scales(480, 640), full)
    # No level below PNet's 12x12 window, and none at all for a frame smaller than it.
    assert np.all(cropper.pyramid_scales(30, 40) * 30 >= 12)
    assert len(faces.FaceCropper().pyramid_scales(10, 10)) == 0
    (found,) = faces.FaceCropper().detect([np.zeros((10, 10, 3), np.uint8)])
    assert len(found) == 0


def test_rgb_and_bgr(cropper, astronaut):
    rgb = cropper.detect([astronaut])[0]
    bgr = cropper.detect([cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR)], channel_order="bgr")[0]
    np.testing.assert_allclose(rgb.boxes, bgr.boxes)
    with pytest.raises(ValueError, match="channel_order"):
        cropper.detect([astronaut], channel_order="bgra")


def test_square_crop_is_the_builders_crop(cropper, astronaut):
    (result,) = cropper.process([astronaut])
    assert result.crops.shape == (1, 64, 64, 3) and result.crops.dtype == np.uint8
    expected, _ = _images.crop_face(astronaut, result.boxes[0], cropper.margin, 64)
    np.testing.assert_array_equal(result.crops[0], expected)


def test_aligned_crop_puts_landmarks_on_the_template(astronaut):
    cropper = faces.FaceCropper(crop_size=112, align=True, margin=0.0)
    (result,) = cropper.process([astronaut])
    matrix = faces.similarity_transform(result.landmarks[0], cropper.canonical_landmarks())
    moved = result.landmarks[0] @ matrix[:, :2].T + matrix[:, 2]
    distances = np.linalg.norm(moved - faces.CANONICAL_LANDMARKS_112, axis=1)
    # A least-squares fit of 5 points: her smile is lower than the template mouth.
    assert distances.mean() < 5.0 and distances.max() < 7.0
    expected = cv2.warpAffine(astronaut, matrix, (112, 112), flags=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(result.crops[0], expected)
    # The aligned crop is a face: MTCNN finds one again, near the template's eyes.
    (again,) = faces.FaceCropper(working_size=0).detect([result.crops[0]])
    assert len(again) == 1
    np.testing.assert_allclose(again.landmarks[0][:2], faces.CANONICAL_LANDMARKS_112[:2], atol=6)


def test_similarity_transform_recovers_a_known_transform():
    angle, scale, shift = np.deg2rad(20.0), 1.7, np.array([5.0, -3.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0], [7.0, 9.0]])
    target = source @ rotation.T + shift
    matrix = faces.similarity_transform(source, target)
    np.testing.assert_allclose(matrix, np.hstack([rotation, shift[:, None]]), atol=1e-9)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        faces.similarity_transform(source, target[:3])


def test_modes_largest_and_all():
    canvas = np.full((240, 320, 3), 90, np.uint8)
    _paste(canvas, None, 10, 40, 150)
    _paste(canvas, None, 200, 80, 100)
    everything = faces.FaceCropper(mode="all", crop_size=32).process([canvas])[0]
    largest = faces.FaceCropper(mode="largest", crop_size=32).process([canvas])[0]
    assert len(everything) == 2 and len(largest) == 1
    areas = everything.boxes[:, 2] * everything.boxes[:, 3]
    assert areas[0] > areas[1]  # sorted by area
    np.testing.assert_allclose(largest.boxes[0], everything.boxes[0])
    assert everything.crops.shape == (2, 32, 32, 3)


def test_blank_frame_and_mixed_sizes_in_one_batch(astronaut, cropper):
    """No face: empty arrays. Frames of other sizes in one call: the boxes of each alone."""
    blank = np.full((120, 160, 3), 90, np.uint8)
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    together = cropper.process([astronaut, blank, small, blank])
    assert [len(r) for r in together] == [1, 0, 1, 0]
    assert together[1].crops.shape == (0, 64, 64, 3) and together[1].boxes.shape == (0, 4)
    for frame, result in ((astronaut, together[0]), (small, together[2])):
        alone = cropper.process([frame])[0]
        np.testing.assert_allclose(result.boxes, alone.boxes, atol=1e-3)
    np.testing.assert_allclose(together[2].boxes[0] * 2, together[0].boxes[0], rtol=0.1, atol=8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "first"}, "mode"),
        ({"min_face_size": 5}, "min_face_size"),
        ({"thresholds": (0.6, 0.7)}, "thresholds"),
        ({"working_size": 10}, "working_size"),
        ({"margin": -0.1}, "margin"),
        ({"scale_factor": 1.2}, "scale_factor"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        faces.FaceCropper(**kwargs)


def test_bad_frame(cropper):
    with pytest.raises(ValueError, match=r"uint8 RGB.*float32"):
        cropper.detect([np.zeros((32, 32, 3), np.float32)])
    with pytest.raises(ValueError, match=r"Received: dtype=uint8, shape=\(32, 32\)"):
        cropper.detect([np.zeros((32, 32), np.uint8)])


def test_crops_for_model_uses_the_training_resize():
    crops = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    resized = faces.crops_for_model(crops, 32)
    np.testing.assert_array_equal(resized, np.asarray(resize_image(crops, 32)))
    assert faces.crops_for_model(crops[:0], 32).shape == (0, 32, 32, 3)
    assert faces.crops_for_model(crops, 64) is not None


# -- video -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    path = str(folder / "moving.avi")
    pasted = make_face_clips.write_clip(path, frames=12, blank_frames=(4, 5), fps=10)
    return path, pasted


def test_sampling_and_faces_per_frame(clip):
    path, pasted = clip
    cropper = faces.FaceCropper(crop_size=32, batch_size=4)
    stats = video.VideoStats()
    frames = list(video.iter_video_faces(path, cropper, video.FrameSampler(every_n=2), stats=stats))
    assert [f.index for f in frames] == [0, 2, 4, 6, 8, 10]
    assert stats.frames_read == 12 and stats.frames_sampled == 6 and stats.frame_count == 12
    assert stats.frames_without_face == 1 and stats.faces == 5 and stats.frames_detected == 6
    for frame in frames:
        if pasted[frame.index] is None:
            assert len(frame.faces) == 0
            continue
        (x, y, w, h), (px, py, side, _) = frame.faces.boxes[0], pasted[frame.index]
        centre = (x + w / 2, y + h / 2)
        assert px < centre[0] < px + side and py < centre[1] < py + side
        assert frame.faces.crops.shape == (1, 32, 32, 3)


def test_fps_sampling(clip):
    path, _ = clip
    sampler = video.FrameSampler(fps=5)
    indices = [i for i, _ in video.iter_frames(path, sampler)]
    assert indices == [0, 2, 4, 6, 8, 10]  # a 10 fps clip at 5 fps
    assert [i for i, _ in video.iter_frames(path, video.FrameSampler(fps=30))] == list(range(12))
    with pytest.raises(ValueError, match="not both"):
        video.FrameSampler(every_n=2, fps=5)
    with pytest.raises(ValueError, match="every_n"):
        video.FrameSampler(every_n=0)


def test_frames_are_rgb(clip):
    path, _ = clip
    _, frame = next(iter(video.iter_frames(path)))
    expected, _ = make_face_clips.face_frame(0)
    # MJPG is lossy; channel order would be off by far more than this.
    assert np.abs(frame.astype(int) - expected.astype(int)).mean() < 6


def test_box_cache_second_pass_detects_nothing(clip, tmp_path):
    path, _ = clip
    cache = video.BoxCache(tmp_path / "boxes")
    cropper = faces.FaceCropper(crop_size=32, batch_size=4)
    first_stats, second_stats, all_stats = (
        video.VideoStats(),
        video.VideoStats(),
        video.VideoStats(),
    )
    first = list(video.iter_video_faces(path, cropper, cache=cache, stats=first_stats))
    assert first_stats.frames_detected == 12
    assert len(os.listdir(tmp_path / "boxes")) == 1
    second = list(video.iter_video_faces(path, cropper, cache=cache, stats=second_stats))
    assert second_stats.frames_detected == 0
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.faces.boxes, b.faces.boxes)
        np.testing.assert_array_equal(a.faces.crops, b.faces.crops)
    # Another mode and crop size reuse the boxes; other detector settings do not.
    other = faces.FaceCropper(crop_size=16, mode="all")
    list(video.iter_video_faces(path, other, cache=cache, stats=all_stats))
    assert all_stats.frames_detected == 0
    changed = video.VideoStats()
    stricter = faces.FaceCropper(crop_size=16, min_face_size=24)
    list(video.iter_video_faces(path, stricter, video.FrameSampler(every_n=3), cache, changed))
    assert changed.frames_detected == 4
    assert len(os.listdir(tmp_path / "boxes")) == 2


def test_cache_adds_frames_it_lacks(clip, tmp_path):
    path, _ = clip
    cache = video.BoxCache(tmp_path)
    cropper = faces.FaceCropper(crop_size=16)
    stats = video.VideoStats()
    list(video.iter_video_faces(path, cropper, video.FrameSampler(every_n=4), cache, stats))
    assert stats.frames_detected == 3
    stats = video.VideoStats()
    list(video.iter_video_faces(path, cropper, video.FrameSampler(every_n=2), cache, stats))
    assert stats.frames_detected == 3  # 2, 6, 10; 0, 4, 8 were cached
    assert sorted(cache.load(path, cropper.settings())) == [0, 2, 4, 6, 8, 10]


def test_unreadable_and_missing_videos(tmp_path):
    broken = tmp_path / "broken.avi"
    make_face_clips.write_corrupt_clip(broken)
    cropper = faces.FaceCropper()
    with pytest.raises(video.UnreadableVideoError, match="cannot open.*broken.avi"):
        list(video.iter_video_faces(broken, cropper))
    with pytest.raises(video.UnreadableVideoError, match="not found.*nothing.avi"):
        list(video.iter_frames(tmp_path / "nothing.avi"))


def test_face_report_counts_with_names():
    report = video.FaceReport()
    report.add(video.VideoStats(name="a", frames_sampled=5, frames_without_face=1, faces=4))
    report.add(video.VideoStats(name="b", frames_sampled=3, frames_without_face=3, faces=0))
    report.add(video.VideoStats(name="c", frames_read=2, frame_count=9, faces=2))
    report.add_unreadable("d", "cannot open")
    summary = report.as_dict()
    assert summary["videos"] == 4 and summary["frames_without_face"] == 4
    assert summary["without_face"] == ["b"] and summary["truncated_videos"] == ["c"]
    assert summary["unreadable"] == [{"name": "d", "reason": "cannot open"}]
    text = report.summary()
    assert "unreadable videos: 1: d" in text and "videos without any face: 1: b" in text
