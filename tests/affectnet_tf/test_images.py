"""The one decode / resize path: by content, RGB, clear errors that name the file."""

import cv2
import numpy as np
import pytest

from affectnet_tf.data.images import load_image_file


@pytest.fixture
def picture():
    rng = np.random.default_rng(0)
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :30] = (255, 0, 0)  # red left half (RGB)
    image[:, 30:] = rng.integers(0, 256, (40, 30, 3))
    return image


def test_png_named_jpg_decodes_as_rgb_and_resizes(tmp_path, picture):
    path = tmp_path / "face.jpg"
    cv2.imwrite(str(tmp_path / "face.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    (tmp_path / "face.png").rename(path)
    image = load_image_file(path)
    np.testing.assert_array_equal(image, picture)  # lossless, RGB order kept
    resized = load_image_file(path, image_size=16)
    assert resized.shape == (16, 16, 3) and resized.dtype == np.uint8
    np.testing.assert_array_equal(resized[8, 2], [255, 0, 0])


def test_errors_name_the_file_and_the_reason(tmp_path, picture):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ValueError, match=f"Image file not found: {missing}"):
        load_image_file(missing)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError) as error:
        load_image_file(text)
    message = str(error.value)
    assert message.startswith(f"Cannot decode image file {text}: Unknown image file format")
    assert "function_node" not in message and "[Op:" not in message
    ok, encoded = cv2.imencode(".jpg", picture)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(encoded.tobytes()[: len(encoded) // 3])
    with pytest.raises(ValueError, match=f"Cannot decode image file {truncated}"):
        load_image_file(truncated)
