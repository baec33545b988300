"""The page of ``python -m affectnet_tf.serve`` in headless Chromium: upload a photo, read the
rendered label.

Needs Debian's ``chromium`` and ``chromium-driver``: the fixture installs them with apt-get when
it can (as root), and skips with the reason where it cannot.
"""

import base64
import json
import os
import shutil
import subprocess
import urllib.request

import cv2
import make_face_clips
import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import affectnet_tf
from affectnet_tf.deploy import serve

pytest.importorskip("skimage", reason="scikit-image ships the astronaut test image")

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
NAME = "browser_run"
FIRST_FACE_COLOR = (0x2F, 0x9E, 0x44)  # COLORS[0] of the page


def _apt_install():
    """Installs chromium and chromium-driver with apt-get; the reason when it cannot."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "installing them needs root (apt-get install chromium chromium-driver)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
    error = None
    for commands in ([install], [["apt-get", "update"], install]):  # update only if needed
        try:
            for command in commands:
                subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
            return None
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as failure:
            output = getattr(failure, "stderr", b"") or b""
            error = f"{failure} {output.decode(errors='replace')[-300:]}"
    return f"apt-get could not install them: {error}"


@pytest.fixture(scope="session")
def chromium():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        reason = _apt_install()
        if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
            pytest.skip(
                f"No {CHROMIUM} and {CHROMEDRIVER} (Debian's chromium, chromium-driver): "
                f"{reason or 'apt-get ran but did not install them there'}"
            )
    return CHROMIUM, CHROMEDRIVER


@pytest.fixture(scope="module")
def model():
    built = affectnet_tf.build_model(
        "compact_cnn_small", task="all", weights=None, image_size=32, dropout=0.0
    )
    return built.prediction_model


@pytest.fixture(scope="module")
def face_server(model):
    with serve.ServerThread(serve.make_app(model, NAME, detect_faces=True)) as running:
        yield running


@pytest.fixture(scope="module")
def browser(chromium):
    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        # a synthetic webcam, given without asking
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _api_answer(url, data):
    body = json.dumps({"instances": [{"b64": base64.b64encode(data).decode()}]}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=60) as response:
        return json.loads(response.read())["predictions"][0]


def _open(browser, url):
    browser.get(url + "/")
    WebDriverWait(browser, 60).until(lambda d: NAME in d.find_element(By.ID, "model-info").text)


def _finished(browser):
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error")
    )
    return browser.find_element(By.ID, "status")


def _upload(browser, url, path):
    _open(browser, url)
    browser.find_element(By.ID, "file").send_keys(str(path))
    status = _finished(browser)
    assert status.get_attribute("data-state") == "done", status.text
    return status.text


def _pixel(browser, x, y):
    return browser.execute_script(
        "const c = document.getElementById('canvas');"
        "return Array.from(c.getContext('2d').getImageData(arguments[0], arguments[1], 1, 1).data);",
        x,
        y,
    )[:3]


def test_page_labels_the_uploaded_face(browser, face_server, tmp_path):
    image = make_face_clips.astronaut()
    _, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    path = tmp_path / "astronaut.png"
    path.write_bytes(encoded.tobytes())
    (expected,) = _api_answer(f"{face_server.url}/v1/models/{NAME}:predict", path.read_bytes())[
        "faces"
    ]

    text = _upload(browser, face_server.url, path)
    assert text.startswith("1 face found")
    assert not browser.find_element(By.ID, "video").is_displayed()  # no webcam asked for
    assert browser.find_element(By.ID, "face-count").text == "1"
    labels = browser.find_elements(By.CSS_SELECTOR, ".face-label")
    assert [label.text for label in labels] == [expected["expression"]]
    # the probability bars: one per class, the top one the label's
    rows = browser.find_elements(By.CSS_SELECTOR, ".face .bar-row.top .name")
    assert [row.text for row in rows] == [expected["expression"]]
    assert len(browser.find_elements(By.CSS_SELECTOR, ".face > .bar-row")) == 8
    fill = browser.find_element(By.CSS_SELECTOR, ".face .bar-row.top .fill").size["width"]
    bar = browser.find_element(By.CSS_SELECTOR, ".face .bar-row.top .bar").size["width"]
    top = expected["probabilities"][expected["expression"]]
    assert fill / bar == pytest.approx(top, abs=0.01)
    valence = browser.find_element(By.CSS_SELECTOR, ".face .value.valence").text
    assert float(valence) == pytest.approx(expected["valence"], abs=0.006)
    # the box is drawn on the canvas at the face, in the first face's colour
    x, y, width, height = expected["box"]
    canvas_size = browser.execute_script(
        "const c = document.getElementById('canvas'); return [c.width, c.height];"
    )
    assert canvas_size == [image.shape[1], image.shape[0]]
    left = int(round(x))
    edge = [_pixel(browser, left + dx, int(round(y + height / 2))) for dx in (-1, 0)]
    assert edge == [list(FIRST_FACE_COLOR)] * 2, edge
    inside = _pixel(browser, int(round(x + width / 2)), int(round(y + height / 2)))
    assert inside == image[int(round(y + height / 2)), int(round(x + width / 2))].tolist()
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe  # no script error, no blocked or missing resource


def test_page_without_a_face(browser, face_server, tmp_path):
    path = tmp_path / "blank.jpg"
    path.write_bytes(cv2.imencode(".jpg", np.full((120, 160, 3), 90, np.uint8))[1].tobytes())
    text = _upload(browser, face_server.url, path)
    assert text.startswith("No face found")
    assert browser.find_element(By.ID, "face-count").text == "0"
    assert browser.find_elements(By.CSS_SELECTOR, ".face-label") == []


def test_page_takes_a_photo_with_the_webcam(browser, face_server):
    _open(browser, face_server.url)
    browser.find_element(By.ID, "camera-start").click()
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("return document.getElementById('video').videoWidth") > 0
    )
    assert browser.find_element(By.ID, "video").is_displayed()
    browser.find_element(By.ID, "camera-shoot").click()
    status = _finished(browser)
    assert status.get_attribute("data-state") == "done", status.text
    assert status.text.startswith("No face found")  # Chromium's synthetic camera shows no face
    size = browser.execute_script(
        "const v = document.getElementById('video'), c = document.getElementById('canvas');"
        "return [v.videoWidth, v.videoHeight, c.width, c.height];"
    )
    assert size[:2] == size[2:]  # the photo is the camera's frame
    browser.find_element(By.ID, "camera-stop").click()
    assert not browser.find_element(By.ID, "video").is_displayed()


def test_page_without_face_detection_labels_the_whole_image(browser, model, tmp_path):
    path = tmp_path / "astronaut.png"
    path.write_bytes(cv2.imencode(".png", make_face_clips.astronaut()[:, :, ::-1])[1].tobytes())
    with serve.ServerThread(serve.make_app(model, NAME)) as running:
        expected = _api_answer(f"{running.url}/v1/models/{NAME}:predict", path.read_bytes())
        text = _upload(browser, running.url, path)
    assert text.startswith("Predicted on the whole image")
    assert browser.find_element(By.ID, "face-count").text == "1"
    label = browser.find_element(By.CSS_SELECTOR, ".face-label").text
    assert label == affectnet_tf.labels.EXPRESSION_NAMES[int(np.argmax(expected["expression"]))]
    arousal = browser.find_element(By.CSS_SELECTOR, ".face .value.arousal").text
    assert float(arousal) == pytest.approx(expected["arousal"], abs=0.006)
