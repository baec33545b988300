"""Decoding by content, face crops and the landmark transform of tfds_affectnet._images."""

import cv2
import numpy as np
import pytest

from tfds_affectnet import _images


def _encode(image_rgb, fmt):
    ok, buffer = cv2.imencode(fmt, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buffer.tobytes()


@pytest.fixture
def picture(rng):
    image = np.zeros((40, 30, 3), np.uint8)
    image[:, :, 0] = 200  # red, so a BGR/RGB mix-up shows
    image[10:20, 5:15] = rng.integers(0, 255, size=(10, 10, 3), dtype=np.uint8)
    return image


def test_decode_png_bytes_whatever_the_name(picture):
    # A PNG stored under a .jpg name: only the bytes matter.
    decoded = _images.decode_image(_encode(picture, ".png"))
    np.testing.assert_array_equal(decoded, picture)


def test_decode_jpeg_is_rgb(picture):
    decoded = _images.decode_image(_encode(picture, ".jpg"))
    assert decoded.shape == picture.shape
    assert decoded[0, 0, 0] > 150 and decoded[0, 0, 2] < 60


def test_decode_grey_png_gives_three_channels():
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
    ok, buffer = cv2.imencode(".png", grey)
    decoded = _images.decode_image(buffer.tobytes())
    assert decoded.shape == (6, 8, 3)
    np.testing.assert_array_equal(decoded[..., 0], grey)


@pytest.mark.parametrize(
    "make_bytes, match",
    [
        (lambda img: _encode(img, ".jpg")[:-200], "truncated JPEG"),
        (lambda img: _encode(img, ".png")[:-30], "truncated PNG"),
        (lambda img: b"this is not an image" * 10, "not a decodable image"),
        (lambda img: b"", "empty file"),
    ],
)
def test_decode_rejects_corrupt_files(picture, make_bytes, match):
    with pytest.raises(_images.CorruptImageError, match=match):
        _images.decode_image(make_bytes(picture))


def test_square_box_centre_and_margin():
    x0, y0, side = _images.square_box(10, 20, 40, 20, margin=0.1)
    assert side == 48  # max(40, 20) * 1.2
    assert (x0 + side / 2, y0 + side / 2) == (30, 30)  # the box's centre


def test_square_box_rejects_empty_box():
    with pytest.raises(ValueError, match="positive width and height"):
        _images.square_box(0, 0, 0, 10, 0.1)


def test_crop_square_pads_outside_with_black():
    image = np.full((10, 10, 3), 255, np.uint8)
    crop = _images.crop_square(image, -2, 6, 6)
    assert crop.shape == (6, 6, 3)
    assert crop[:, :2].max() == 0  # left of the image
    assert crop[4:, :].max() == 0  # below the image
    assert crop[:4, 2:].min() == 255


def test_crop_face_rejects_box_outside_image():
    with pytest.raises(ValueError, match="outside"):
        _images.crop_face(np.zeros((20, 20, 3), np.uint8), (30, 30, 5, 5), 0.1, 8)


def _blob_image(height, width, center, sigma=2.0):
    ys, xs = np.mgrid[0:height, 0:width]
    blob = np.exp(-((xs - center[0]) ** 2 + (ys - center[1]) ** 2) / (2 * sigma**2))
    return np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _centroid(image):
    weight = image[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()


@pytest.mark.parametrize("size", [24, 96], ids=["shrink_area", "enlarge_cubic"])
def test_landmark_follows_the_pixels_through_crop_and_resize(size):
    """A blob drawn at a landmark lands where transform_landmarks puts the landmark."""
    point = (67.3, 41.6)
    image = _blob_image(100, 120, point)
    box = (50, 20, 40, 40)
    face, landmarks = _images.crop_face(image, box, 0.1, size, np.array([point]))
    assert face.shape == (size, size, 3)
    # The naive x * scale convention is off by 0.25 (shrink) or 0.5 (enlarge) pixels here.
    np.testing.assert_allclose(_centroid(face), landmarks[0], atol=0.05)


def test_transform_landmarks_formula_and_nan():
    points = np.array([[10.0, 20.0], [np.nan, np.nan]])
    out = _images.transform_landmarks(points, (4, 8), (0.5, 0.25))
    np.testing.assert_allclose(out[0], [(10 - 4 + 0.5) * 0.5 - 0.5, (20 - 8 + 0.5) * 0.25 - 0.5])
    assert np.isnan(out[1]).all()
    assert out.dtype == np.float32


def test_resize_face_scales_landmarks_per_axis():
    image = _blob_image(60, 80, (40.0, 30.0), sigma=3.0)
    face, landmarks = _images.resize_face(image, 20, np.array([[40.0, 30.0]]))
    assert face.shape == (20, 20, 3)
    np.testing.assert_allclose(_centroid(face), landmarks[0], atol=0.1)


def test_resize_uses_area_when_shrinking(monkeypatch):
    calls = []
    real_resize = cv2.resize

    def spy(image, dsize, interpolation):
        calls.append(interpolation)
        return real_resize(image, dsize, interpolation=interpolation)

    monkeypatch.setattr(_images.cv2, "resize", spy)
    _images.resize_image(np.zeros((64, 64, 3), np.uint8), 32)
    _images.resize_image(np.zeros((16, 16, 3), np.uint8), 32)
    assert calls == [cv2.INTER_AREA, cv2.INTER_CUBIC]


def test_encode_jpeg_round_trip(picture):
    decoded = _images.decode_image(_images.encode_jpeg(picture))
    assert decoded.shape == picture.shape
    assert np.abs(decoded.astype(int) - picture.astype(int)).mean() < 10
