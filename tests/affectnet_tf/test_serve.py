"""``python -m affectnet_tf.serve``: a real server on a free localhost port, driven over HTTP.

The answers are checked against the Keras model's own outputs on the same decoded and resized
images, in both TF Serving formats and both signatures; every bad input answers 400 (an unknown
model 404, a body over the limit 413) and the server answers correctly right after; 8 parallel
clients x 25 requests; faces on the astronaut. Hostile clients meet a server with tiny limits
(``strict_server``: a 1 s read timeout, a 3 s request deadline, 2 requests at once), over raw
sockets on 127.0.0.1, every wait bounded.
"""

import ast
import asyncio
import base64
import concurrent.futures
import contextlib
import importlib.util
import io
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
import zlib
from pathlib import Path

import cv2
import make_face_clips
import numpy as np
import PIL.Image
import pytest

import affectnet_tf
from affectnet_tf import serve as serve_command
from affectnet_tf.data.images import decode_image, resize_image
from affectnet_tf.deploy import serve
from affectnet_tf.deploy.serve import decoding, image_headers, protocol
from affectnet_tf.inference import faces
from affectnet_tf.inference.predictor import RECORD_KEYS, Predictor, load_run_model

pytest.importorskip("skimage", reason="scikit-image ships the astronaut test image")

NAME = "tiny_run"
SIZE = 32
HEADS = ("expression", "valence", "arousal")
CLASS_NAMES = list(affectnet_tf.labels.EXPRESSION_NAMES)
# the limits of the test server: small, so that the bad inputs stay small
LIMITS = {
    "max_request_mb": 3.0,
    "max_image_pixels": 300_000,
    "max_instances": 24,
    "max_request_pixels": 1_200_000,
    "max_batch_size": 16,
    "batch_timeout_ms": 10.0,
}
# the server the hostile clients meet: tiny timeouts and queue, one decoding thread per pool,
# small images up to 10000 pixels, batches that wait 200 ms for more
STRICT = {
    **LIMITS,
    "read_timeout_s": 1.0,
    "request_timeout_s": 3.0,
    "max_queued_requests": 2,
    "batch_timeout_ms": 200.0,
    "decode_threads": 1,
    "small_image_pixels": 10_000,
}
ROOT = Path(__file__).resolve().parents[2]


def _encode(image, ext=".png", *params):
    ok, encoded = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), list(params))
    assert ok
    return encoded.tobytes()


def _b64(data):
    return {"b64": base64.b64encode(data).decode("ascii")}


def _request(url, payload=None, method=None, headers=False):
    """``(status, JSON answer)``, and the answer's headers when ``headers``; ``payload`` is
    JSON-encoded unless it is bytes."""
    if payload is not None and not isinstance(payload, bytes):
        payload = json.dumps(payload, separators=(",", ":"))
    data = payload
    data = data.encode() if isinstance(data, str) else data
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        answer = error.code, json.loads(error.read()), error.headers
    return answer if headers else answer[:2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    built = affectnet_tf.build_model(
        "compact_cnn_small", task="all", weights=None, image_size=SIZE, dropout=0.0
    )
    folder = tmp_path_factory.mktemp("serve") / NAME
    folder.mkdir()
    built.prediction_model.save(folder / "model.keras")
    return folder


@pytest.fixture(scope="module")
def model(run_dir):
    return load_run_model(run_dir)


@pytest.fixture(scope="module")
def server(model):
    app = serve.make_app(model, NAME, **LIMITS)
    with serve.ServerThread(app) as running:
        yield running


@pytest.fixture(scope="module")
def strict_server(model):
    app = serve.make_app(model, NAME, **STRICT)
    with serve.ServerThread(app) as running:
        yield running


@pytest.fixture(scope="module")
def predict_url(server):
    return f"{server.url}/v1/models/{NAME}:predict"


@pytest.fixture(scope="module")
def images():
    """Eight distinct RGB images of different sizes (the parallel clients send one each)."""
    rng = np.random.default_rng(0)
    astronaut = make_face_clips.astronaut()
    result = [astronaut, astronaut[100:260, 150:300]]
    for i in range(6):
        height, width = 24 + 9 * i, 40 + 5 * i
        result.append(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return result


def _expected(model, batch):
    """The Keras model's outputs on images already decoded: resized as the package resizes."""
    resized = np.stack([np.asarray(resize_image(image, SIZE)) for image in batch])
    outputs = model(resized, training=False)
    return {head: np.asarray(outputs[head]).reshape(len(batch), -1) for head in HEADS}


def _assert_rows(predictions, expected):
    assert len(predictions) == len(expected["expression"])
    for i, prediction in enumerate(predictions):
        assert list(prediction) == list(HEADS)
        assert len(prediction["expression"]) == len(CLASS_NAMES)
        np.testing.assert_allclose(
            prediction["expression"], expected["expression"][i], rtol=1e-5, atol=1e-6
        )
        for head in ("valence", "arousal"):
            assert isinstance(prediction[head], float)
            assert prediction[head] == pytest.approx(float(expected[head][i, 0]), abs=1e-6)


def test_b64_rows_match_the_model(predict_url, model, images):
    png, jpeg = _encode(images[0]), _encode(images[2], ".jpg")
    status, answer = _request(
        predict_url,
        {
            "signature_name": "serving_default",
            "instances": [_b64(png), {"image_bytes": _b64(jpeg)}],  # TF Serving's two spellings
        },
    )
    assert status == 200, answer
    decoded = [np.asarray(decode_image(data)) for data in (png, jpeg)]  # JPEG: lossy
    np.testing.assert_array_equal(decoded[0], images[0])
    _assert_rows(answer["predictions"], _expected(model, decoded))
    assert sum(answer["predictions"][0]["expression"]) == pytest.approx(1.0, abs=1e-5)


def test_columnar_and_the_images_signature(predict_url, model, images):
    arrays = [images[2], images[3]]  # two sizes: each is resized on its own
    expected = _expected(model, arrays)
    lists = [image.tolist() for image in arrays]
    for payload in (
        {"signature_name": "images", "instances": lists},
        {"instances": [{"images": image} for image in lists]},  # signature from the input
    ):
        status, answer = _request(predict_url, payload)
        assert status == 200, answer
        _assert_rows(answer["predictions"], expected)
    for payload in (
        {"signature_name": "images", "inputs": {"images": lists}},
        {"inputs": lists},
        {"inputs": {"image_bytes": [_b64(_encode(image)) for image in arrays]}},
    ):
        status, answer = _request(predict_url, payload)
        assert status == 200, answer
        outputs = answer["outputs"]
        assert list(outputs) == list(HEADS)
        np.testing.assert_allclose(outputs["expression"], expected["expression"], rtol=1e-5)
        np.testing.assert_allclose(outputs["valence"], expected["valence"][:, 0], atol=1e-6)
        np.testing.assert_allclose(outputs["arousal"], expected["arousal"][:, 0], atol=1e-6)


def test_versions_path_and_a_request_larger_than_a_batch(server, model, images):
    app_server = server.app[serve.SERVER]
    batches = app_server.batcher.batches
    batch = [images[i % len(images)] for i in range(20)]  # more than max_batch_size (16)
    status, answer = _request(
        f"{server.url}/v1/models/{NAME}/versions/1:predict",
        {"instances": [_b64(_encode(image)) for image in batch]},
    )
    assert status == 200, answer
    _assert_rows(answer["predictions"], _expected(model, batch))
    assert app_server.batcher.batches - batches >= 2  # in order across two model calls


def test_status_metadata_and_page(server):
    status, answer = _request(f"{server.url}/v1/models/{NAME}")
    assert status == 200
    assert answer == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert _request(f"{server.url}/v1/models/{NAME}/versions/1") == (200, answer)
    status, metadata = _request(f"{server.url}/v1/models/{NAME}/metadata")
    assert status == 200
    assert metadata["model_spec"] == {"name": NAME, "signature_name": "", "version": "1"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "images"}
    image_bytes = signatures["serving_default"]["inputs"]["image_bytes"]
    assert image_bytes["dtype"] == "DT_STRING"
    assert image_bytes["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    images_input = signatures["images"]["inputs"]["images"]
    assert images_input["dtype"] == "DT_UINT8"
    assert [d["size"] for d in images_input["tensor_shape"]["dim"]] == ["-1", "-1", "-1", "3"]
    outputs = signatures["images"]["outputs"]
    assert set(outputs) == set(HEADS)
    assert [d["size"] for d in outputs["expression"]["tensor_shape"]["dim"]] == ["-1", "8"]
    assert signatures["serving_default"]["method_name"] == "tensorflow/serving/predict"
    extra = metadata["affectnet_tf"]
    assert extra["class_names"] == CLASS_NAMES and extra["image_size"] == SIZE
    assert extra["preprocessing"] and extra["resize_method"] == "bilinear_antialias_uint8"
    assert extra["detect_faces"] is False
    assert extra["limits"]["max_image_pixels"] == LIMITS["max_image_pixels"]

    with urllib.request.urlopen(server.url + "/") as response:
        assert response.headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        page = response.read().decode()
    assert 'id="file"' in page and "face-label" in page and "config.json" in page
    # no external asset: nothing loaded from another origin
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//|@import", page)
    status, config = _request(server.url + "/config.json")
    assert status == 200
    assert config["predict_url"] == f"/v1/models/{NAME}:predict"
    assert config["detect_faces"] is False and config["outputs"] == list(HEADS)
    assert config["max_request_bytes"] == int(LIMITS["max_request_mb"] * 2**20)


def _truncated(data):
    return data[: len(data) // 2]


BAD_REQUESTS = [
    # (case, path after /v1/models/, payload (None: a good one), message pattern)
    ("not JSON", f"{NAME}:predict", b"{instances: oops", r"not valid JSON"),
    ("not an object", f"{NAME}:predict", [1, 2], r"must be a JSON object.*a list"),
    (
        "no instances",
        f"{NAME}:predict",
        {"signature_name": "images"},
        r"Missing 'instances' or 'inputs'",
    ),
    ("both formats", f"{NAME}:predict", {"instances": [], "inputs": []}, r"not both"),
    ("unknown key", f"{NAME}:predict", {"instance": []}, r"Unknown key 'instance'"),
    ("empty instance", f"{NAME}:predict", {"instances": [{}]}, r"\[0\]: no input 'image_bytes'"),
    ("empty batch", f"{NAME}:predict", {"instances": []}, r"instances: an empty list"),
    (
        "not a list",
        f"{NAME}:predict",
        {"instances": {"b64": "AAAA"}},
        r"instances: expected a list",
    ),
    (
        "too many",
        f"{NAME}:predict",
        {"instances": [[[[0, 0, 0]]]] * 25},
        r"25 instances.*at most 24",
    ),
    (
        "signature",
        f"{NAME}:predict",
        {"signature_name": "predict", "instances": []},
        r"'predict' not found",
    ),
    (
        "bad signature type",
        f"{NAME}:predict",
        {"signature_name": ["x"], "instances": []},
        r"not found",
    ),
    (
        "unknown input",
        f"{NAME}:predict",
        {"instances": [{"image": 1}]},
        r"instances\[0\]: unknown input 'image'",
    ),
    (
        "unknown columnar",
        f"{NAME}:predict",
        {"inputs": {"x": []}},
        r"inputs: unknown inputs \('x'\)",
    ),
    (
        "input of another signature",
        f"{NAME}:predict",
        {"signature_name": "images", "inputs": {"image_bytes": []}},
        r"'image_bytes' is not an input of signature 'images'",
    ),
    (
        "plain string",
        f"{NAME}:predict",
        {"instances": ["iVBORw0KGgo="]},
        r"instances\[0\]: .*\{\"b64\": .*base64-encoded",
    ),
    (
        "bad base64",
        f"{NAME}:predict",
        {"instances": [{"b64": "not base64!"}]},
        r"instances\[0\]: 'b64' is not valid base64",
    ),
    (
        "empty bytes",
        f"{NAME}:predict",
        {"instances": [{"b64": ""}]},
        r"instances\[0\]: empty bytes",
    ),
    (
        "list for bytes",
        f"{NAME}:predict",
        {"signature_name": "serving_default", "instances": [[[[1, 2, 3]]]]},
        r"instances\[0\]: signature 'serving_default' takes encoded images",
    ),
    (
        "not RGB",
        f"{NAME}:predict",
        {"instances": [[[1, 2], [3, 4]]]},
        r"instances\[0\]: .*\[height, width, 3\]; received shape \[2, 2\]",
    ),
    ("ragged", f"{NAME}:predict", {"instances": [[[[1, 2, 3]], [[1, 2]]]]}, r"ragged nested lists"),
    (
        "out of range",
        f"{NAME}:predict",
        {"instances": [[[[0, 300, 0]]]]},
        r"integers 0\.\.255.*from 0 to 300",
    ),
    ("floats", f"{NAME}:predict", {"instances": [[[[0.5, 1, 2]]]]}, r"integers 0\.\.255.*float64"),
    (
        "array too large",
        f"{NAME}:predict",
        {"instances": [np.zeros((600, 600, 3), np.uint8).tolist()]},
        r"instances\[0\]: an image of 600x600 = 360000 pixels; the limit is 300000",
    ),
    (
        "huge integer",
        f"{NAME}:predict",
        b'{"instances": [[[[1' + b"0" * 5000 + b", 0, 0]]]]}",
        r"not valid JSON: an integer of 5001 digits; a request's integers have at most 20$",
    ),
    (
        "huge integer elsewhere",
        f"{NAME}:predict",
        b'{"signature_name": ' + b"9" * 4301 + b', "instances": []}',
        r"not valid JSON: an integer of 4301 digits",
    ),
    ("not UTF-8", f"{NAME}:predict", b'{"instances": ["\xff\xfe"]}', r"not valid JSON"),
    ("nested too deeply", f"{NAME}:predict", b"[" * 100_000, r"not valid JSON"),
    ("version label", f"{NAME}/labels/stable:predict", None, r"version label: stable"),
    ("classify", f"{NAME}:classify", None, r"'classify' is not served here"),
]


def _png_claiming(png, width, height):
    """The PNG with its header (IHDR, and its CRC) saying ``width`` x ``height``."""
    data = bytearray(png)
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


@pytest.fixture(scope="module")
def bad_images(images):
    png, jpeg = _encode(images[0]), _encode(images[0], ".jpg")
    large = np.zeros((600, 600, 3), np.uint8)
    return {
        # headers that claim 12000 x 10000 and 20000 x 10000 (beyond Pillow's decompression-bomb
        # limit): refused before decoding
        "claims 120 megapixels": _png_claiming(png, 12000, 10000),
        "claims 200 megapixels": _png_claiming(png, 20000, 10000),
        "text": b"hello, not an image",
        "truncated JPEG": _truncated(jpeg),
        "truncated PNG": _truncated(png),
        "large PNG": _encode(large),
        "large JPEG": _encode(large, ".jpg"),
    }


def _check_still_serving(predict_url, model, images):
    status, answer = _request(predict_url, {"instances": [_b64(_encode(images[1]))]})
    assert status == 200, answer
    _assert_rows(answer["predictions"], _expected(model, [images[1]]))


@pytest.mark.parametrize(
    "case, path, payload, pattern", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_requests_answer_400_and_the_server_goes_on(
    server, predict_url, model, images, case, path, payload, pattern
):
    if payload is None:
        payload = {"instances": [_b64(_encode(images[1]))]}
    status, answer = _request(f"{server.url}/v1/models/{path}", payload)
    assert status == 400, answer
    assert list(answer) == ["error"]
    assert re.search(pattern, answer["error"]), answer["error"]
    _check_still_serving(predict_url, model, images)


@pytest.mark.parametrize(
    "name, pattern",
    [
        # refused from its header, never decoded (it was decoded before issue #21)
        ("text", r"instances\[1\]: the image's size cannot be read from its header: not a JPEG"),
        ("truncated JPEG", r"instances\[1\]: cannot decode the image: .*Invalid JPEG data"),
        ("truncated PNG", r"instances\[1\]: cannot decode the image: Invalid PNG data"),
        ("large PNG", r"instances\[1\]: an image of 600x600 = 360000 pixels; the limit is 300000"),
        ("large JPEG", r"instances\[1\]: an image of 600x600 = 360000 pixels"),
        ("claims 120 megapixels", r"instances\[1\]: an image of 12000x10000 = 120000000 pixels"),
        ("claims 200 megapixels", r"instances\[1\]: .*200000000 pixels.*the limit is 300000"),
    ],
)
def test_bad_images_answer_400_naming_the_instance(
    predict_url, model, images, bad_images, name, pattern
):
    good = _b64(_encode(images[1]))
    status, answer = _request(predict_url, {"instances": [good, _b64(bad_images[name])]})
    assert status == 400 and re.search(pattern, answer["error"]), answer
    _check_still_serving(predict_url, model, images)


def test_too_large_bodies_answer_413(server, predict_url, model, images):
    """413 (400 before issue #21), with and without a Content-Length."""
    limit = int(LIMITS["max_request_mb"] * 2**20)
    body = b'{"instances": ["' + b"A" * limit + b'"]}'
    status, answer = _request(predict_url, body)
    assert status == 413
    assert answer["error"] == (
        f"The request body of {len(body)} bytes is larger than the limit of {limit} bytes "
        "(--max-request-mb)"
    )
    # without a Content-Length (chunked), aiohttp's own limit stops the read
    chunks = iter([body[:1000], body[1000:]])
    request = urllib.request.Request(predict_url, data=chunks, method="POST")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=60)
    assert raised.value.code == 413
    assert "larger than the limit" in json.loads(raised.value.read())["error"]
    _check_still_serving(predict_url, model, images)
    status, answer = _request(f"{server.url}/v1/nothing/here")
    assert status == 404 and answer["error"].startswith("Not Found")
    status, answer = _request(f"{server.url}/v1/models/{NAME}:predict")  # GET
    assert status == 404 and "Malformed request: GET" in answer["error"]


def test_parallel_clients_are_batched_and_nothing_is_lost(server, predict_url, model, images):
    encoded = [_b64(_encode(image)) for image in images]
    expected = _expected(model, images)
    batcher = server.app[serve.SERVER].batcher
    batches, items = batcher.batches, batcher.items

    def client(k):
        answers = []
        for j in range(25):
            index = (k + j) % len(images)
            status, answer = _request(predict_url, {"instances": [encoded[index]]})
            answers.append((index, status, answer))
        return answers

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = [answer for answers in pool.map(client, range(8)) for answer in answers]
    assert len(results) == 200
    for index, status, answer in results:
        assert status == 200, answer
        (prediction,) = answer["predictions"]
        np.testing.assert_allclose(
            prediction["expression"], expected["expression"][index], rtol=1e-5, atol=1e-6
        )
        assert prediction["valence"] == pytest.approx(expected["valence"][index, 0], abs=1e-6)
    assert batcher.items - items == 200  # every request went through the model once
    assert batcher.batches - batches < 200  # and concurrent ones shared model calls
    assert batcher.largest_batch > 1


def test_one_head_models_answer_bare_values(tmp_path, images):
    built = affectnet_tf.build_model(
        "compact_cnn_small", task="exp", weights=None, image_size=SIZE, dropout=0.0
    )
    model = built.prediction_model
    expected = np.asarray(model(np.asarray(resize_image(images[2], SIZE))[None], training=False))
    with serve.ServerThread(serve.make_app(model, "exp_only")) as running:
        url = f"{running.url}/v1/models/exp_only:predict"
        status, answer = _request(url, {"instances": [_b64(_encode(images[2]))]})
        assert status == 200
        np.testing.assert_allclose(answer["predictions"], expected, rtol=1e-5, atol=1e-6)
        status, answer = _request(url, {"inputs": [images[2].tolist()]})
        assert status == 200
        np.testing.assert_allclose(answer["outputs"], expected, rtol=1e-5, atol=1e-6)
        status, metadata = _request(f"{running.url}/v1/models/exp_only/metadata")
        outputs = metadata["metadata"]["signature_def"]["signature_def"]["images"]["outputs"]
        assert list(outputs) == ["expression"]


def test_a_class_set_of_its_own_is_served_in_its_names(images):
    names = ["calme", "très tendu", "bored, tired"]
    built = affectnet_tf.build_model(
        "compact_cnn_small", class_names=names, weights=None, image_size=SIZE, dropout=0.0
    )
    with serve.ServerThread(serve.make_app(built.prediction_model, "own")) as running:
        url = f"{running.url}/v1/models/own:predict"
        status, answer = _request(url, {"instances": [_b64(_encode(images[2]))]})
        assert status == 200 and np.shape(answer["predictions"]) == (1, 3)
        status, metadata = _request(f"{running.url}/v1/models/own/metadata")
        assert status == 200 and metadata["affectnet_tf"]["class_names"] == names
        outputs = metadata["metadata"]["signature_def"]["signature_def"]["images"]["outputs"]
        assert outputs["expression"]["tensor_shape"]["dim"][-1]["size"] == "3"


@pytest.fixture(scope="module")
def face_server(model):
    # large images from 600000 pixels (the default: 1600 x 1600), seen by MTCNN at 640 (the
    # default: 1280): the large-image path runs on 1024 x 1024 images, 4 times faster than on
    # 2048 x 2048 ones
    app = serve.make_app(
        model, NAME, detect_faces=True, detect_max_side=640, small_image_pixels=600_000
    )
    with serve.ServerThread(app) as running:
        yield running


def test_detect_faces_answers_predict_records(face_server, model):
    astronaut = make_face_clips.astronaut()
    blank = np.full((120, 160, 3), 90, np.uint8)
    url = f"{face_server.url}/v1/models/{NAME}:predict"
    status, answer = _request(
        url, {"instances": [_b64(_encode(astronaut)), _b64(_encode(blank, ".jpg"))]}
    )
    assert status == 200, answer
    first, second = answer["predictions"]
    assert second == {"faces": []}  # no face: an empty list, not an error
    (record,) = first["faces"]
    assert list(record) == list(RECORD_KEYS)
    assert record["source"] == "instances[0]" and record["frame"] == 0
    assert faces.box_iou(record["box"], make_face_clips.ASTRONAUT_FACE_BOX) > 0.85
    assert record["score"] > 0.99
    # the records of python -m affectnet_tf.predict on the same image
    predictor = Predictor(model, faces.FaceCropper(mode="all"))
    (expected,) = predictor.records("instances[0]", 0, predictor.cropper.process([astronaut])[0])
    assert record["box"] == expected["box"] and record["expression"] == expected["expression"]
    np.testing.assert_allclose(
        [record["probabilities"][n] for n in CLASS_NAMES],
        [expected["probabilities"][n] for n in CLASS_NAMES],
        rtol=1e-5,
    )
    assert record["valence"] == pytest.approx(expected["valence"], abs=1e-6)
    assert record["arousal"] == pytest.approx(expected["arousal"], abs=1e-6)
    # columnar, uint8 arrays
    status, answer = _request(url, {"signature_name": "images", "inputs": [blank.tolist()]})
    assert status == 200 and answer == {"outputs": {"faces": [[]]}}
    status, config = _request(face_server.url + "/config.json")
    assert config["detect_faces"] is True
    status, metadata = _request(f"{face_server.url}/v1/models/{NAME}/metadata")
    outputs = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["outputs"]
    assert list(outputs) == ["faces"] and metadata["affectnet_tf"]["detect_faces"] is True


def test_the_documented_curl_commands(server, model, images, tmp_path):
    """The curl commands of docs/serving.md, pointed at the test server, answer as it says."""
    if shutil.which("curl") is None or shutil.which("base64") is None:
        pytest.skip("running the documented commands needs curl and base64 (coreutils)")
    page = (ROOT / "docs" / "serving.md").read_text()
    (script,) = [b for b in re.findall(r"^```sh\n(.*?)^```", page, re.M | re.S) if "curl" in b]
    script = script.replace("http://127.0.0.1:8501", server.url).replace("faces_cv", NAME)
    photo = _encode(images[0], ".jpg")
    (tmp_path / "photo.jpg").write_bytes(photo)
    result = subprocess.run(
        ["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    documents, position, decoder = [], 0, json.JSONDecoder()
    while position < len(result.stdout):
        document, position = decoder.raw_decode(result.stdout, position)
        documents.append(document)
        while position < len(result.stdout) and result.stdout[position].isspace():
            position += 1
    answer, status, metadata = documents
    _assert_rows(answer["predictions"], _expected(model, [np.asarray(decode_image(photo))]))
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    assert metadata["model_spec"]["name"] == NAME


def test_image_dimensions_from_headers():
    image = np.random.default_rng(1).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    for ext, params in [
        (".png", []),
        (".jpg", []),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        (".bmp", []),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),  # lossy: VP8
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),  # lossless: VP8L
    ]:
        data = _encode(image, ext, *params)
        assert serve.image_dimensions(data) == (30, 41), ext
        assert tuple(decode_image(data).shape[:2]) == (30, 41), ext
    gif = io.BytesIO()  # Pillow (matplotlib's dependency): OpenCV writes GIF from 4.11 only
    PIL.Image.fromarray(image).save(gif, format="GIF")
    assert serve.image_dimensions(gif.getvalue()) == (30, 41)
    assert tuple(decode_image(gif.getvalue()).shape[:2]) == (30, 41)
    # a header that claims 12000 x 10000 is read without decoding anything
    assert serve.image_dimensions(_png_claiming(_encode(image), 12000, 10000)) == (10000, 12000)
    # beyond Pillow's decompression-bomb limit, it does not even give the size
    with pytest.raises(ValueError, match="exceeds limit"):
        serve.image_dimensions(_png_claiming(_encode(image), 20000, 10000))
    assert serve.image_dimensions(b"hello") is None
    assert serve.image_dimensions(_encode(image, ".jpg")[:20]) is None


# -- issue #21: what a hostile client cannot do ------------------------------------------------


def _top_level_imports(node):
    """The modules a module's own statements import (those of its functions are left out:
    they run on first use)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(child, ast.Import):
            yield from (alias.name for alias in child.names)
        elif isinstance(child, ast.ImportFrom) and child.level == 0:
            yield child.module
        yield from _top_level_imports(child)


def test_the_modules_import_aiohttp_and_pillow_on_first_use_only():
    """``make docs`` builds the API pages and the flag tables with only the ``docs`` extra: no
    aiohttp there (tests/test_docs.py builds them so). No module of the server imports aiohttp
    or Pillow when it is imported."""
    paths = [ROOT / "affectnet_tf" / "serve.py"]
    paths += sorted((ROOT / "affectnet_tf" / "deploy" / "serve").glob("*.py"))
    assert len(paths) >= 9
    for path in paths:
        imported = set(_top_level_imports(ast.parse(path.read_text(encoding="utf-8"))))
        assert not {name.split(".")[0] for name in imported} & {"aiohttp", "PIL"}, path


def _fresh_module(name, path):
    """A new module object of ``path`` (its module-level state made anew)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_aiohttp_the_parser_works_and_serving_names_the_extra(monkeypatch, tmp_path):
    """Without aiohttp the flag tables build and the flags parse; making the app, its
    ``SERVER`` key and starting the command raise ImportError naming the ``serve`` extra (and
    without Pillow, reading an image's header does)."""
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # not installed
    flag_tables = _fresh_module("flag_tables", ROOT / "docs" / "tools" / "flag_tables.py")
    tables = flag_tables.flag_tables(flag_tables.build_parser("affectnet_tf.serve"))
    assert "`--max-request-pixels`" in tables and "`--read-timeout-s`" in tables, tables
    assert "`--quiet`" in tables
    args = serve_command.build_parser().parse_args(
        ["--model-dir", "run", "--max-queued-requests", "3"]
    )
    assert args.max_queued_requests == 3
    app_module = _fresh_module("fresh_app", ROOT / "affectnet_tf" / "deploy" / "serve" / "app.py")
    missing = tmp_path / "no_run"
    for call in (
        lambda: app_module.make_app(None, "x"),
        lambda: app_module.SERVER,
        lambda: serve_command.main(["--model-dir", str(missing), "--quiet"]),  # before the model
    ):
        with pytest.raises(ImportError, match=r"pip install 'affectnet-tf\[serve\]'"):
            call()
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"reads image sizes with Pillow.*affectnet-tf\[serve\]"):
        serve.image_dimensions(b"GIF89a")


@pytest.mark.parametrize(
    "path, method",
    [
        ("other:predict", "POST"),
        (f"{NAME}/versions/2:predict", "POST"),
        ("other", "GET"),
        (f"{NAME}/versions/2/metadata", "GET"),
    ],
)
def test_unknown_models_and_versions_answer_404(server, images, path, method):
    """As TF Serving (400 before issue #21)."""
    payload = {"instances": [_b64(_encode(images[1]))]} if method == "POST" else None
    status, answer = _request(f"{server.url}/v1/models/{path}", payload, method=method)
    assert status == 404, answer
    assert re.search(
        r"Servable not found for request: (Latest\(other\)|Specific\(tiny_run, 2\))",
        answer["error"],
    )


def test_answers_say_nosniff_and_the_page_cannot_be_framed(server):
    with urllib.request.urlopen(server.url + "/") as response:
        policy = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    for url, payload in [
        (f"{server.url}/v1/models/{NAME}", None),
        (f"{server.url}/config.json", None),
        (f"{server.url}/v1/models/{NAME}:predict", b"{oops"),  # 400
        (f"{server.url}/v1/nothing", None),  # aiohttp's 404
    ]:
        status, _, headers = _request(url, payload, headers=True)
        assert headers["X-Content-Type-Options"] == "nosniff", (url, status)
        assert headers["Content-Type"].startswith("application/json"), (url, status)


@pytest.fixture
def decode_calls(monkeypatch):
    """Every image the server decodes, as the call's bytes length."""
    calls = []
    real = decoding.decode_image

    def spy(data):
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(decoding, "decode_image", spy)
    return calls


def _tiff(image):
    stream = io.BytesIO()
    PIL.Image.fromarray(image).save(stream, format="TIFF")
    return stream.getvalue()


# a JPEG XL codestream's signature and size header, then plausible coded bytes: TensorFlow
# decodes JPEG XL, Pillow cannot read its header, so its size would only be known by decoding
JPEG_XL_LIKE = b"\xff\x0a" + bytes([0xFA, 0x7F, 0x39, 0x0D]) + bytes(range(256)) * 80


@pytest.mark.parametrize(
    "case", ["JPEG XL codestream", "JPEG XL container", "TIFF", "cut header", "text"]
)
def test_images_whose_header_says_no_size_are_refused_undecoded(
    predict_url, model, images, decode_calls, case
):
    data = {
        "JPEG XL codestream": JPEG_XL_LIKE,
        "JPEG XL container": b"\x00\x00\x00\x0cJXL \r\n\x87\n" + JPEG_XL_LIKE,
        "TIFF": _tiff(images[2]),
        "cut header": _encode(images[0], ".jpg")[:20],
        "text": b"GIF89a, or so it says",
    }[case]
    good = _b64(_encode(images[1]))
    status, answer = _request(predict_url, {"instances": [good, _b64(data)]})
    assert status == 400, answer
    assert answer["error"].startswith(
        "instances[1]: the image's size cannot be read from its header"
    ), answer
    assert decode_calls == []  # neither the bad image nor the good one before it
    _check_still_serving(predict_url, model, images)


def test_the_pixels_of_a_request_are_budgeted_before_decoding(predict_url, model, decode_calls):
    png = _encode(np.zeros((500, 500, 3), np.uint8))  # 250000 pixels, within the image limit
    status, answer = _request(predict_url, {"instances": [_b64(png)] * 5})
    assert status == 400, answer
    assert answer["error"] == (
        "instances[4]: the images of the request add up to 1250000 pixels with this one "
        "(500x500); the limit is 1200000 pixels in one request (--max-request-pixels)"
    )
    assert decode_calls == []
    status, answer = _request(predict_url, {"instances": [_b64(png)] * 4})  # 1000000: fine
    assert status == 200 and len(answer["predictions"]) == 4
    assert len(decode_calls) == 4


def test_every_frame_of_a_gif_counts(predict_url, decode_calls):
    """TensorFlow decodes every frame of a GIF: 40 frames of 100x100 are 400000 pixels."""
    frames = [PIL.Image.fromarray(np.full((100, 100, 3), 6 * i, np.uint8)) for i in range(40)]
    stream = io.BytesIO()
    frames[0].save(stream, format="GIF", save_all=True, append_images=frames[1:])
    status, answer = _request(predict_url, {"instances": [_b64(stream.getvalue())]})
    assert status == 400, answer
    assert re.search(
        r"instances\[0\]: an image of 100x100 in \d+ frames = \d+ pixels; the limit "
        r"is 300000 pixels \(--max-image-pixels\)",
        answer["error"],
    ), answer
    assert decode_calls == []
    assert image_headers.gif_frames(stream.getvalue(), 1000) == 40
    assert image_headers.gif_frames(stream.getvalue()[:20], 1000) is None


def _address(url):
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    return host, int(port)


def _read_until_closed(connection, limit_s):
    """What the server sends until it closes the connection: ``(bytes, seconds)``; fails the
    test when it is still open after ``limit_s``."""
    start, received = time.monotonic(), b""
    connection.settimeout(0.2)
    while time.monotonic() - start < limit_s:
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    else:
        pytest.fail(f"the connection is still open after {limit_s} s")
    return received, time.monotonic() - start


def test_a_partial_header_is_cut_off(strict_server):
    """Headers that never end, or that trickle in a byte at a time: closed after the read
    timeout (1 s here) from the connection, not minutes later."""
    with socket.create_connection(_address(strict_server.url), timeout=5) as connection:
        connection.sendall(b"POST /v1/models/tiny_run:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        received, seconds = _read_until_closed(connection, limit_s=5)
    assert received == b"" and seconds < 3
    header = b"GET /v1/models/tiny_run HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
    with socket.create_connection(_address(strict_server.url), timeout=5) as connection:
        start = time.monotonic()
        for byte in header:  # at most 100 x 0.1 s
            try:
                connection.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
        received, _ = _read_until_closed(connection, limit_s=5)
        assert time.monotonic() - start < 4 and received == b""


def test_a_stalled_body_answers_408_and_is_closed(strict_server):
    with socket.create_connection(_address(strict_server.url), timeout=5) as connection:
        connection.sendall(
            b"POST /v1/models/tiny_run:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            b'{"instances'
        )
        received, seconds = _read_until_closed(connection, limit_s=5)
    assert received.startswith(b"HTTP/1.1 408 "), received
    error = json.loads(received.split(b"\r\n\r\n", 1)[1])["error"]
    assert (
        error == "The request body stalled: nothing came for 1 s after 11 bytes (--read-timeout-s)"
    )
    assert seconds < 3


def test_a_body_that_trickles_past_the_request_deadline_answers_408(strict_server):
    """A byte every 0.4 s never stalls the read for 1 s, but the request's 3 s deadline ends
    it."""
    with socket.create_connection(_address(strict_server.url), timeout=5) as connection:
        connection.sendall(
            b"POST /v1/models/tiny_run:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        start = time.monotonic()
        for _ in range(25):  # 10 s at the most
            try:
                connection.sendall(b" ")
            except OSError:
                break
            time.sleep(0.4)
            connection.settimeout(0.01)
            with contextlib.suppress(TimeoutError):
                if connection.recv(1, socket.MSG_PEEK):
                    break
        received, _ = _read_until_closed(connection, limit_s=5)
        assert 2.5 < time.monotonic() - start < 6
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b"did not arrive within 3 s (--request-timeout-s)" in received


@contextlib.contextmanager
def _model_held(server, then=None):
    """The model's calls wait until the block ends (or 20 s); the model function is ``then``
    afterwards (default: what it was)."""
    batcher = server.app[serve.SERVER].batcher
    gate, function, calls = threading.Event(), batcher.function, []

    def held(items):
        calls.append(len(items))
        gate.wait(20)
        return function(items)

    batcher.function = held
    try:
        yield calls
    finally:
        batcher.function = then or function
        gate.set()


def _wait_until(condition, limit_s=10.0):
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < limit_s, "waited too long"
        time.sleep(0.02)


def test_a_full_queue_answers_503_with_retry_after(strict_server, model, images):
    app_server = strict_server.app[serve.SERVER]
    url = f"{strict_server.url}/v1/models/{NAME}:predict"
    payload = {"instances": [_b64(_encode(images[3]))]}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        with _model_held(strict_server):
            held = [pool.submit(_request, url, payload) for _ in range(2)]
            _wait_until(lambda: app_server.pending == 2)
            status, answer, headers = _request(url, payload, headers=True)
            assert status == 503 and headers["Retry-After"] == "1", answer
            assert answer["error"] == (
                "The server is busy: 2 predict requests in progress, the most it takes at once "
                "(--max-queued-requests 2); retry in 1 s"
            )
        for future in held:  # the two in progress are answered
            status, answer = future.result(timeout=30)
            assert status == 200, answer
            _assert_rows(answer["predictions"], _expected(model, [images[3]]))
    _wait_until(lambda: app_server.pending == 0)


def test_a_request_past_its_deadline_answers_503(strict_server, model, images):
    url = f"{strict_server.url}/v1/models/{NAME}:predict"
    payload = {"instances": [_b64(_encode(images[3]))]}
    with _model_held(strict_server):
        start = time.monotonic()
        status, answer, headers = _request(url, payload, headers=True)
        assert 2.5 < time.monotonic() - start < 6
    assert status == 503 and headers["Retry-After"] == "1", answer
    assert answer["error"].startswith("No answer within 3 s (--request-timeout-s)")
    status, answer = _request(url, payload)
    assert status == 200, answer
    _assert_rows(answer["predictions"], _expected(model, [images[3]]))


def test_a_model_error_fails_only_the_request_that_caused_it(
    strict_server, model, images, monkeypatch
):
    """A batch holding a poisoned image and a good one: the model raises on the batch, then
    each image runs alone; the good request gets its answer, the poisoned one a 500."""
    app_server = strict_server.app[serve.SERVER]
    monkeypatch.setattr(app_server, "max_queued_requests", 3)
    batcher = app_server.batcher
    url = f"{strict_server.url}/v1/models/{NAME}:predict"
    poison = np.full((20, 20, 3), 13, np.uint8)  # resized, still all 13
    function = batcher.function

    def fragile(items):
        if any(np.all(np.asarray(item) == 13) for item in items):
            raise ValueError("poisoned input")
        return function(items)

    good = {"instances": [_b64(_encode(images[4]))]}
    bad = {"instances": [_b64(_encode(poison))]}
    failures = batcher.failures
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        try:
            # a first request holds the model while the two others wait in its queue
            with _model_held(strict_server, then=fragile) as calls:
                first = pool.submit(_request, url, good)
                _wait_until(lambda: len(calls) == 1)
                answers = [pool.submit(_request, url, payload) for payload in (good, bad)]
                _wait_until(lambda: batcher.queued() == 2)
            (status, answer), (bad_status, bad_answer) = [f.result(timeout=30) for f in answers]
            assert first.result(timeout=30)[0] == 200
        finally:
            batcher.function = function
    assert status == 200, answer
    _assert_rows(answer["predictions"], _expected(model, [images[4]]))
    assert bad_status == 500 and "ValueError: poisoned input" in bad_answer["error"]
    assert batcher.failures == failures + 1
    _wait_until(lambda: app_server.pending == 0)


def test_answered_errors_keep_no_frames():
    """An answered error holds no frame (they hold the request's body): the garbage collector
    would free them seconds later, and a stream of bad 12 MB bodies made 1 GB of them."""

    def read(body):
        try:
            json.loads(body)
        except ValueError as error:
            raise serve.RequestError("bad") from error

    with pytest.raises(serve.RequestError) as raised:
        read(b"{" * 10)
    error = raised.value
    assert error.__traceback__ is not None and error.__cause__.__traceback__ is not None
    serve.forget_frames(error)
    assert error.__traceback__ is None and error.__cause__.__traceback__ is None
    with pytest.raises(serve.RequestError) as raised:
        protocol.json_body(b"[" + b"1" * 30 + b"]")
    assert raised.value.__context__ is None  # the parser's error (and its frames) not kept


def test_batcher_runs_the_items_of_a_failed_batch_one_by_one():
    def function(items):
        if "bad" in items:
            raise ValueError("bad item")
        return [item.upper() for item in items]

    async def run():
        batcher = serve.Batcher(function, max_batch_size=8, batch_timeout_ms=50)
        batcher.start()
        try:
            futures = [batcher.submit(item) for item in ("a", "bad", "c")]
            return await asyncio.gather(*futures, return_exceptions=True), batcher
        finally:
            await batcher.stop()

    (a, bad, c), batcher = asyncio.run(run())
    assert (a, c) == ("A", "C")
    assert isinstance(bad, ValueError) and str(bad) == "bad item"
    assert (batcher.batches, batcher.items, batcher.failures) == (2, 2, 1)


def test_a_small_request_does_not_wait_behind_large_ones(strict_server, model, images, monkeypatch):
    """Two requests of three large images (1 s of decoding each, here) keep the large-image
    pool busy for 6 s; a 64x64 request meanwhile is answered at once."""
    real, started = decoding.decode_image, threading.Event()

    def slow(data):
        image = real(data)
        if image.shape[0] * image.shape[1] > STRICT["small_image_pixels"]:
            started.set()
            time.sleep(1.0)
        return image

    monkeypatch.setattr(decoding, "decode_image", slow)
    monkeypatch.setattr(strict_server.app[serve.SERVER], "max_queued_requests", 3)
    url = f"{strict_server.url}/v1/models/{NAME}:predict"
    large = _b64(_encode(np.full((200, 200, 3), 90, np.uint8)))
    small = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        heavy = [pool.submit(_request, url, {"instances": [large] * 3}) for _ in range(2)]
        assert started.wait(10)
        start = time.monotonic()
        status, answer = _request(url, {"instances": [_b64(_encode(small))]})
        seconds = time.monotonic() - start
        assert not all(future.done() for future in heavy)
        for future in heavy:
            future.result(timeout=30)  # 200, or 503 past the 3 s deadline: either is fine
    assert status == 200, answer
    _assert_rows(answer["predictions"], _expected(model, [small]))
    assert seconds < 1.5
    _wait_until(lambda: strict_server.app[serve.SERVER].pending == 0)


def test_faces_of_large_images_are_found_downscaled_one_image_at_a_time(face_server, monkeypatch):
    """MTCNN sees a 1024x1024 image at 640 (--detect-max-side), the box comes back in the
    image's pixels, and the server holds one decoded image of a request at a time (and, for a
    moment, the one before it, while a worker thread lets go of it), not all five."""
    app_server = face_server.app[serve.SERVER]
    astronaut = make_face_clips.astronaut()
    large = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    real_decode, alive, most_alive = decoding.decode_image, set(), [0]

    def watched(data):
        image = np.array(real_decode(data))
        key = id(image)
        alive.add(key)
        weakref.finalize(image, alive.discard, key)
        most_alive[0] = max(most_alive[0], len(alive))
        return image

    cropper = app_server.predictor.cropper
    real_detect, seen = cropper.detect, []

    def detect(frames, *args, **kwargs):
        seen.extend(frame.shape[:2] for frame in frames)
        return real_detect(frames, *args, **kwargs)

    monkeypatch.setattr(decoding, "decode_image", watched)
    monkeypatch.setattr(cropper, "detect", detect)
    url = f"{face_server.url}/v1/models/{NAME}:predict"
    sent = (large, astronaut, large, astronaut, astronaut)
    status, answer = _request(url, {"instances": [_b64(_encode(i, ".jpg")) for i in sent]})
    assert status == 200, answer
    assert seen == [(640, 640), (512, 512), (640, 640), (512, 512), (512, 512)]
    assert most_alive[0] <= 2
    scaled_box = [v * 2 for v in make_face_clips.ASTRONAUT_FACE_BOX]
    for i, expected_box in ((0, scaled_box), (1, make_face_clips.ASTRONAUT_FACE_BOX)):
        record = answer["predictions"][i]["faces"][0]  # the largest
        assert record["source"] == f"instances[{i}]"
        assert faces.box_iou(record["box"], expected_box) > 0.8, record["box"]
    assert app_server.limits()["detect_max_side"] == 640


@pytest.mark.slow
def test_the_hostile_load_benchmark_runs(tmp_path, capsys):
    """``benchmarks/bench_serve_hostile.py --quick --in-process``: every load runs, bounded,
    and each kind of hostile request gets the answer its limit gives."""
    path = ROOT / "benchmarks" / "bench_serve_hostile.py"
    spec = importlib.util.spec_from_file_location("bench_serve_hostile", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--quick", "--in-process", "--output", str(tmp_path / "rows.json")])
    assert json.loads((tmp_path / "rows.json").read_text())["rows"] == rows
    loads = {row["load"].split(":")[0]: row for row in rows}
    answers = {name: set(row["hostile_answers"]) for name, row in loads.items()}
    assert answers == {
        "idle": set(),
        "huge PNGs over the pixel budget": {"400"},
        "huge PNGs within the budget": {"200"},
        "JPEG XL": {"400"},
        "slow headers": {"closed"},
        "stalled bodies": {"408"},
        "queue flood": answers["queue flood"] & {"200", "503"},
        "huge-int JSON": {"400"},
    }
    assert loads["slow headers"]["open_max_s"] < 3 and loads["stalled bodies"]["open_max_s"] < 3
    assert loads["idle"]["median_ms"] > 0 and loads["idle"]["peak_rss_mib"] > 0
    assert bench.TABLE_HEADER in capsys.readouterr().out


def test_command_line_errors(tmp_path, run_dir, capsys):
    missing = tmp_path / "no_run_here"
    with pytest.raises(SystemExit) as raised:
        serve_command.main(["--model-dir", str(missing)])
    assert raised.value.code == 2
    assert f"No model.keras in the run folder: {missing} does not exist" in capsys.readouterr().err
    for flags, message in [
        (["--port", "70000"], "must be 0..65535, got 70000"),
        (["--max-batch-size", "0"], "must be >= 1"),
        (["--max-request-mb", "0"], "must be > 0.0"),
        (["--batch-timeout-ms", "-1"], "must be >= 0.0"),
        (["--max-image-pixels", "many"], "not a number"),
        (["--model-name", "a/b"], "`model_name` must be a non-empty name without '/'"),
        (["--read-timeout-s", "0"], "must be > 0.0"),
        (["--request-timeout-s", "-1"], "must be > 0.0"),
        (["--max-queued-requests", "0"], "must be >= 1"),
        (["--max-request-pixels", "0"], "must be >= 1"),
        (["--decode-threads", "0"], "must be >= 1"),
        (["--detect-max-side", "40"], "must be >= 48"),
    ]:
        with pytest.raises(SystemExit) as raised:
            serve_command.main(["--model-dir", str(run_dir), *flags])
        assert raised.value.code == 2
        assert message in capsys.readouterr().err, flags
    defaults = serve_command.build_parser().parse_args(["--model-dir", str(run_dir)])
    assert (defaults.detect_max_side, defaults.port, defaults.quiet) == (1280, 8501, False)
    with pytest.raises(SystemExit):
        serve_command.main([])
    assert "--model-dir" in capsys.readouterr().err
    with pytest.raises(
        ValueError, match=r"`max_instances` must be >= 1\. Received: max_instances=0"
    ):
        serve.ModelServer(load_run_model(run_dir), "x", max_instances=0)


def test_quiet_drops_the_status_lines_and_keeps_the_url(run_dir, monkeypatch, capsys):
    """The command's status lines go to the standard error and ``--quiet`` drops them; the line
    with the URL is printed on the standard output either way. (The server listens, prints its
    line and stops at once instead of waiting for a signal.)"""

    async def once(app, host, port, announce):
        stop, url = await serve.runner.start_site(app, host, port)
        try:
            announce(url)
        finally:
            await stop()

    monkeypatch.setattr(serve_command, "serve_forever", once)
    url = r"http://127\.0\.0\.1:\d+"
    line = (
        rf"Serving '{NAME}' \(expression, valence, arousal\): the page at {url}/, "
        rf"predictions at POST {url}/v1/models/{NAME}:predict \(Ctrl\+C stops\)\n"
    )
    for flags, shown in (([], True), (["--quiet"], False)):
        assert serve_command.main(["--model-dir", str(run_dir), "--port", "0", *flags]) == 0
        out, err = capsys.readouterr()
        assert re.fullmatch(line, out), out
        assert (f"Loading the model of {run_dir}" in err) is shown, err
        assert (f"Warming up '{NAME}': one call of the model on a blank image" in err) is shown


@pytest.mark.slow
def test_python_m_serve_starts_and_answers(run_dir, images, tmp_path):
    """The command prints its URL on one line, answers, and stops on SIGTERM."""
    stderr = open(tmp_path / "stderr.txt", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "affectnet_tf.serve", "--model-dir", str(run_dir), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    try:
        line = process.stdout.readline()  # blocks until the server listens (or exits)
        match = re.search(
            r"predictions at POST (http://127\.0\.0\.1:\d+)/v1/models/(\w+):predict", line
        )
        assert match, (line, (tmp_path / "stderr.txt").read_text())
        url, name = match.groups()
        assert name == NAME and f"the page at {url}/" in line
        status, answer = _request(
            f"{url}/v1/models/{name}:predict", {"instances": [_b64(_encode(images[0]))]}
        )
        assert status == 200 and len(answer["predictions"][0]["expression"]) == len(CLASS_NAMES)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    process.stdout.close()
    stderr.close()
    status = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 0, status
    assert f"Loading the model of {run_dir}" in status and "Stopping the server" in status
