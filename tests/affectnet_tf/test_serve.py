"""``python -m affectnet_tf.serve``: a real server on a free localhost port, driven over HTTP.

The answers are checked against the Keras model's own outputs on the same decoded and resized
images, in both TF Serving formats and both signatures; every bad input answers 400 and the
server answers correctly right after; 8 parallel clients x 25 requests; faces on the astronaut.
"""

import base64
import concurrent.futures
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import cv2
import make_face_clips
import numpy as np
import PIL.Image
import pytest

import affectnet_tf
from affectnet_tf import faces, predict, serve
from affectnet_tf.images import decode_image, resize_image

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
    "max_batch_size": 16,
    "batch_timeout_ms": 10.0,
}
ROOT = Path(__file__).resolve().parents[2]


def _encode(image, ext=".png", *params):
    ok, encoded = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), list(params))
    assert ok
    return encoded.tobytes()


def _b64(data):
    return {"b64": base64.b64encode(data).decode("ascii")}


def _request(url, payload=None, method=None):
    """``(status, JSON answer)``; ``payload`` is JSON-encoded unless it is bytes."""
    if payload is not None and not isinstance(payload, bytes):
        payload = json.dumps(payload, separators=(",", ":"))
    data = payload
    data = data.encode() if isinstance(data, str) else data
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


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
    return predict.load_run_model(run_dir)


@pytest.fixture(scope="module")
def server(model):
    app = serve.make_app(model, NAME, **LIMITS)
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
    ("unknown model", "other:predict", None, r"Servable not found for request: Latest\(other\)"),
    ("unknown version", f"{NAME}/versions/2:predict", None, r"Specific\(tiny_run, 2\).*version 1"),
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
        ("text", r"instances\[1\]: cannot decode the image: Unknown image file format"),
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


def test_too_large_bodies_answer_400(server, predict_url, model, images):
    limit = int(LIMITS["max_request_mb"] * 2**20)
    body = b'{"instances": ["' + b"A" * limit + b'"]}'
    status, answer = _request(predict_url, body)
    assert status == 400
    assert answer["error"] == (
        f"The request body of {len(body)} bytes is larger than the limit of {limit} bytes "
        "(--max-request-mb)"
    )
    # without a Content-Length (chunked), aiohttp's own limit stops the read
    chunks = iter([body[:1000], body[1000:]])
    request = urllib.request.Request(predict_url, data=chunks, method="POST")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=60)
    assert raised.value.code == 400
    assert "larger than the limit" in json.loads(raised.value.read())["error"]
    _check_still_serving(predict_url, model, images)
    status, answer = _request(f"{server.url}/v1/models/other")
    assert status == 400 and "Latest(other)" in answer["error"]
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


@pytest.fixture(scope="module")
def face_server(model):
    app = serve.make_app(model, NAME, detect_faces=True)
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
    assert list(record) == list(predict.RECORD_KEYS)
    assert record["source"] == "instances[0]" and record["frame"] == 0
    assert faces.box_iou(record["box"], make_face_clips.ASTRONAUT_FACE_BOX) > 0.85
    assert record["score"] > 0.99
    # the records of python -m affectnet_tf.predict on the same image
    predictor = predict.Predictor(model, faces.FaceCropper(mode="all"))
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


def test_command_line_errors(tmp_path, run_dir, capsys):
    missing = tmp_path / "no_run_here"
    with pytest.raises(SystemExit) as raised:
        serve.main(["--model-dir", str(missing)])
    assert raised.value.code == 2
    assert f"No model.keras in the run folder: {missing} does not exist" in capsys.readouterr().err
    for flags, message in [
        (["--port", "70000"], "must be 0..65535, got 70000"),
        (["--max-batch-size", "0"], "must be >= 1"),
        (["--max-request-mb", "0"], "must be > 0.0"),
        (["--batch-timeout-ms", "-1"], "must be >= 0.0"),
        (["--max-image-pixels", "many"], "not a number"),
        (["--model-name", "a/b"], "`model_name` must be a non-empty name without '/'"),
    ]:
        with pytest.raises(SystemExit) as raised:
            serve.main(["--model-dir", str(run_dir), *flags])
        assert raised.value.code == 2
        assert message in capsys.readouterr().err, flags
    with pytest.raises(SystemExit):
        serve.main([])
    assert "--model-dir" in capsys.readouterr().err
    with pytest.raises(
        ValueError, match=r"`max_instances` must be >= 1\. Received: max_instances=0"
    ):
        serve.ModelServer(predict.load_run_model(run_dir), "x", max_instances=0)


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
    stderr.close()
    assert process.returncode == 0, (tmp_path / "stderr.txt").read_text()
