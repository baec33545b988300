"""Decoding by content, face crops and the landmark transform of tfds_affectnet._images."""

import cv2
import make_dummy_data
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
    decoded = _images.decode_source_image(_encode(picture, ".png"))
    np.testing.assert_array_equal(decoded, picture)


def test_decode_jpeg_is_rgb(picture):
    decoded = _images.decode_source_image(_encode(picture, ".jpg"))
    assert decoded.shape == picture.shape
    assert decoded[0, 0, 0] > 150 and decoded[0, 0, 2] < 60


def test_decode_grey_png_gives_three_channels():
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
    ok, buffer = cv2.imencode(".png", grey)
    decoded = _images.decode_source_image(buffer.tobytes())
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
        _images.decode_source_image(make_bytes(picture))


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
    _images.resize_for_storage(np.zeros((64, 64, 3), np.uint8), 32)
    _images.resize_for_storage(np.zeros((16, 16, 3), np.uint8), 32)
    assert calls == [cv2.INTER_AREA, cv2.INTER_CUBIC]


def test_encode_jpeg_round_trip(picture):
    decoded = _images.decode_source_image(_images.encode_jpeg(picture))
    assert decoded.shape == picture.shape
    assert np.abs(decoded.astype(int) - picture.astype(int)).mean() < 10


# --- JPEGs corrupt mid-stream (end marker intact) ---------------------------------------------


def _opencv_decodes(data):
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return image is not None and image.shape[2] == 3


@pytest.fixture
def textured_jpeg(rng):
    """JPEG bytes of a 64x64 noise picture (every byte of its scan data matters)."""
    return _encode(rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8), ".jpg")


@pytest.mark.parametrize(
    "kind, position, size",
    [
        ("flip", 0.25, 8),
        ("flip", 0.5, 8),
        ("flip", 0.75, 8),
        ("random", 0.3, 64),
        ("random", 0.6, 64),
        ("zero", 0.5, 64),
        ("truncate", 0.5, 0),
        ("truncate", 0.9, 0),
    ],
)
def test_decode_rejects_jpeg_corrupt_mid_stream(textured_jpeg, kind, position, size):
    damaged = make_dummy_data.corrupt_jpeg_mid_stream(textured_jpeg, kind, position, size)
    assert damaged.endswith(b"\xff\xd9") and damaged[:600] == textured_jpeg[:600]
    assert _opencv_decodes(damaged)  # OpenCV only warns on stderr and returns an image
    with pytest.raises(_images.CorruptImageError, match="Corrupt JPEG data") as error:
        _images.decode_source_image(damaged)
    assert error.type is _images.CorruptJpegDataError
    assert "mid-stream" in str(error.value)


def test_decode_keeps_clean_jpeg_bit_identical_to_opencv(textured_jpeg):
    """One decoder for JPEG (strict) and OpenCV for the rest: the pixels are OpenCV's."""
    opencv = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(textured_jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )
    decoded = _images.decode_source_image_checked(textured_jpeg)
    np.testing.assert_array_equal(decoded.image, opencv)
    assert (decoded.note, decoded.detail) == ("", "")


def _with_jfif_major(data, major):
    at = data.find(b"JFIF\x00")
    assert at > 0
    return data[: at + 5] + bytes([major]) + data[at + 6 :]


def _with_spectral_end(data, se):
    """A sequential JPEG whose SOS says the spectral selection ends at ``se`` (libjpeg warns
    "Invalid SOS parameters for sequential JPEG" and decodes 0..63 anyway)."""
    sos = data.find(b"\xff\xda")
    end = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    assert data[end - 3 : end] == b"\x00\x3f\x00"
    return data[: end - 2] + bytes([se]) + data[end - 1 :]


@pytest.mark.parametrize("damage", [_with_spectral_end, _with_jfif_major], ids=["sos", "jfif"])
def test_harmless_header_warnings_keep_the_image_and_the_check(textured_jpeg, damage):
    """Header fields libjpeg warns about and then ignores do not drop a clean image, and do not
    hide a corruption further on."""
    value = 62 if damage is _with_spectral_end else 2
    clean = _images.decode_source_image(textured_jpeg)
    decoded = _images.decode_source_image_checked(damage(textured_jpeg, value))
    np.testing.assert_array_equal(decoded.image, clean)
    assert decoded.note == ""
    corrupt = damage(make_dummy_data.corrupt_jpeg_mid_stream(textured_jpeg), value)
    assert _opencv_decodes(corrupt)
    with pytest.raises(_images.CorruptJpegDataError, match="Corrupt JPEG data"):
        _images.decode_source_image(corrupt)


def test_jpeg_the_strict_decoder_cannot_read_goes_to_opencv_with_a_note(textured_jpeg, monkeypatch):
    def refuse(data, **kwargs):
        raise ValueError("tjDecompressHeader3(): unsupported layout")

    monkeypatch.setattr(_images.simplejpeg, "decode_jpeg", refuse)
    decoded = _images.decode_source_image_checked(textured_jpeg)
    assert decoded.image.shape == (64, 64, 3)
    assert decoded.note == _images.JPEG_NOT_CHECKED
    assert "unsupported layout" in decoded.detail
    with pytest.raises(_images.CorruptImageError, match="not a decodable image"):
        _images.decode_source_image_checked(b"\xff\xd8" + b"\x00" * 50 + b"\xff\xd9")


@pytest.mark.parametrize("fix_crc", [False, True], ids=["bad_crc", "crc_recomputed"])
def test_decode_rejects_png_corrupt_mid_stream(rng, fix_crc):
    import struct
    import zlib

    data = bytearray(_encode(rng.integers(0, 255, size=(40, 30, 3), dtype=np.uint8), ".png"))
    idat = data.find(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    start = idat + 4
    data[start + length // 2 : start + length // 2 + 16] = bytes(16)
    if fix_crc:
        crc = zlib.crc32(bytes(data[idat : start + length]))
        data[start + length : start + length + 4] = struct.pack(">I", crc)
    assert data.endswith(b"IEND\xaeB`\x82")
    with pytest.raises(_images.CorruptImageError, match="not a decodable image"):
        _images.decode_source_image(bytes(data))


# --- face boxes bound by the image ------------------------------------------------------------


@pytest.mark.parametrize(
    "box, expected, clipped",
    [
        ((5, 6, 10, 8), (5, 6, 10, 8), False),  # inside
        ((0, 0, 40, 30), (0, 0, 40, 30), False),  # the whole image, touching every border
        ((-4, 20, 10, 15), (0, 20, 6, 10), True),  # past the left and bottom borders
        ((35, -2, 10, 5), (35, 0, 5, 3), True),  # past the right and top borders
        ((-10, -10, 60, 50), (0, 0, 40, 30), True),  # around the whole image
        ((2.5, 3.5, 40.0, 4.0), (2.5, 3.5, 37.5, 4.0), True),  # float boxes stay floats
    ],
)
def test_clip_box_bounds_the_box_by_the_image(box, expected, clipped):
    assert _images.clip_box(box, width=40, height=30) == (expected, clipped)


@pytest.mark.parametrize(
    "box, match",
    [
        ((40, 5, 10, 10), "lies outside the 40x30 image"),  # starts at the right border
        ((-12, 5, 12, 10), "lies outside the 40x30 image"),  # ends at the left border
        ((5, 31, 10, 10), "lies outside the 40x30 image"),
        ((5, 5, 0, 10), "positive width and height"),
        ((5, 5, 10, -3), "positive width and height"),
        ((np.nan, 5, 10, 10), "finite"),
        ((5, 5, np.inf, 10), "finite"),
    ],
)
def test_clip_box_refuses_empty_outside_and_non_finite_boxes(box, match):
    with pytest.raises(ValueError, match=match):
        _images.clip_box(box, width=40, height=30)


def test_crop_face_crops_around_the_clipped_box():
    """A box past the border: the square is centred on the part inside the image."""
    image = np.zeros((30, 40, 3), np.uint8)
    image[:, :, 1] = np.arange(40, dtype=np.uint8)[None, :] * 6  # x coded in green
    image[:, :, 2] = np.arange(30, dtype=np.uint8)[:, None] * 8  # y coded in blue
    box = (-6, 18, 16, 16)  # inside part: x 0..10, y 18..30 (10 x 12)
    points = np.array([[4.0, 24.0]])
    face, landmarks = _images.crop_face(image, box, 0.0, 12, points)
    # The clipped box (0, 18, 10, 12) has its square at x -1..11, y 18..30 (side 12).
    expected = np.zeros((12, 12, 3), np.uint8)
    expected[:, 1:] = image[18:30, 0:11]
    np.testing.assert_array_equal(face, expected)
    np.testing.assert_allclose(landmarks, [[4.0 + 1.0, 24.0 - 18.0]])
    # Not the square of the unclipped box (x -6..10, y 18..34), half black.
    x0, y0, side = _images.square_box(*box, 0.0)
    unclipped = _images.resize_for_storage(_images.crop_square(image, x0, y0, side), 12)
    assert np.abs(unclipped.astype(int) - face.astype(int)).mean() > 20


def test_crop_face_keeps_boxes_inside_the_image_as_they_were():
    image = np.random.default_rng(3).integers(0, 255, size=(50, 60, 3), dtype=np.uint8)
    face, _ = _images.crop_face(image, (20, 10, 20, 20), 0.1, 24)
    x0, y0, side = _images.square_box(20, 10, 20, 20, 0.1)
    np.testing.assert_array_equal(
        face, _images.resize_for_storage(_images.crop_square(image, x0, y0, side), 24)
    )
