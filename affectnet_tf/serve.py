"""The prediction server: ``python -m affectnet_tf.serve``, TF Serving's REST API and a page.

```bash
python -m affectnet_tf.serve --model-dir runs/exp [--port 8501] [--detect-faces]
```

An HTTP server built on aiohttp (an asyncio server: request size limits, one event loop that
gathers concurrent requests into one model batch) that speaks TensorFlow Serving's REST predict
API, so that a client written for TF Serving works unchanged against it, and against the
SavedModel of :mod:`affectnet_tf.export` once that moves to TF Serving. The model's name is the
run folder's name unless ``--model-name`` says otherwise; its version is ``--model-version`` (1).

Endpoints:

* ``POST /v1/models/<name>[/versions/<v>]:predict``: predictions (below).
* ``GET /v1/models/<name>[/versions/<v>]``: the model status, as TF Serving:
  ``{"model_version_status": [{"version": "1", "state": "AVAILABLE", "status":
  {"error_code": "OK", "error_message": ""}}]}``.
* ``GET /v1/models/<name>[/versions/<v>]/metadata``: TF Serving's ``{"model_spec": ...,
  "metadata": {"signature_def": {"signature_def": {...}}}}``, plus an ``affectnet_tf`` key
  with the model's own metadata (:func:`affectnet_tf.models.model_metadata`: ``class_names``,
  ``image_size``, ``preprocessing``, ...), ``detect_faces`` and the server's ``limits``.
* ``GET /``: a page to upload a photo (or take one with the webcam) and see the faces boxed and
  labelled, with the probabilities as bars (one file, ``affectnet_tf/static/index.html``, with
  no external asset); ``GET /config.json``: what the page needs to know.

The signatures mirror the SavedModel that :mod:`affectnet_tf.export` writes:

* ``serving_default``: input ``image_bytes``, a batch of encoded JPEG / PNG / GIF / BMP / WebP
  images, each sent as TF Serving encodes binary strings, ``{"b64": "<base64>"}``;
* ``images``: input ``images``, ``uint8`` RGB arrays ``[height, width, 3]`` (nested lists of
  integers 0..255; any size, one size per instance).

Both answer the outputs of the model's heads: ``expression`` (``K`` probabilities in
``class_names`` order), ``valence`` and ``arousal`` (one number each). Images are decoded with
:func:`affectnet_tf.images.decode_image` and resized with
:func:`affectnet_tf.images.resize_image`, the path training images take.

Requests, in TF Serving's two formats (``signature_name`` optional: without it the signature is
the one the first instance's type asks for):

    {"signature_name": "serving_default", "instances": [{"b64": "..."}, ...]}
    {"instances": [{"image_bytes": {"b64": "..."}}, ...]}
    {"signature_name": "images", "instances": [[[[r, g, b], ...], ...], ...]}
    {"instances": [{"images": [[[r, g, b], ...], ...]}, ...]}
    {"inputs": [{"b64": "..."}, ...]}            (columnar; or {"inputs": {"image_bytes": [...]}})

Answers, as TF Serving's (the row format answers ``predictions``, one per instance; the
columnar format answers ``outputs``, one list per output):

    {"predictions": [{"expression": [p0, ..., pK-1], "valence": v, "arousal": a}, ...]}
    {"outputs": {"expression": [[...], ...], "valence": [...], "arousal": [...]}}

A model with one head answers the bare value: ``{"predictions": [[p0, ...], ...]}``,
``{"outputs": [[p0, ...], ...]}``.

With ``--detect-faces`` each image goes through the MTCNN face-crop stage
(:class:`affectnet_tf.faces.FaceCropper`) and :class:`affectnet_tf.predict.Predictor`, and an
instance's answer is the list of its faces' records exactly as ``python -m
affectnet_tf.predict`` writes them (``source`` is the instance, ``instances[i]`` or
``inputs[i]``; ``frame`` is 0; ``box`` is x, y, width, height in the image's pixels); an image
without a face gives an empty list:

    {"predictions": [{"faces": [{"source": "instances[0]", "frame": 0,
                                 "box": [182.4, 64.1, 83.0, 107.2], "score": 0.9998,
                                 "expression": "happy", "probabilities": {"neutral": 0.1, ...},
                                 "valence": 0.41, "arousal": 0.12}, ...]}, ...]}
    {"outputs": {"faces": [[record, ...], ...]}}

Limits: the request body (``--max-request-mb``), the pixels of an image (``--max-image-pixels``,
read from the image's header by Pillow before decoding, else after) and the
instances of a request (``--max-instances``). Every bad input (not an image, a truncated image,
wrong JSON, a missing or unknown field, a body or an image too large, an unknown model name,
version or signature) answers HTTP 400 with TF Serving's error shape ``{"error": "..."}``
naming the instance, the field or the limit, and the server goes on serving.

Batching: each image is one item on an asyncio queue; one worker takes up to
``--max-batch-size`` waiting items, waiting at most ``--batch-timeout-ms`` for more after the
first, and runs them as one model call in a thread (the event loop goes on accepting
requests). Request bodies are parsed and images decoded in a thread pool.
"""

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import io
import json
import logging
import os
import re
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import PIL.Image
import tensorflow as tf

try:
    from aiohttp import web
except ImportError as _error:  # the `serve` extra
    raise ImportError(
        "The server needs aiohttp, which the package's `serve` extra installs: "
        f"pip install 'affectnet-tf[serve]' ({_error})"
    ) from _error

from affectnet_tf import faces as faces_module
from affectnet_tf.images import decode_error_reason, decode_image, resize_image
from affectnet_tf.models import model_metadata
from affectnet_tf.predict import (
    Predictor,
    add_face_arguments,
    bounded_number,
    face_cropper,
    load_run_model,
)

__all__ = [
    "DEFAULT_PORT",
    "SIGNATURES",
    "SERVER",
    "RequestError",
    "Batcher",
    "ModelServer",
    "ServerThread",
    "image_dimensions",
    "make_app",
    "build_parser",
    "main",
]

DEFAULT_PORT = 8501  # TF Serving's REST port

#: signature name -> (input name, dtype, shape) of the SavedModel of :mod:`affectnet_tf.export`.
SIGNATURES = {
    "serving_default": ("image_bytes", "DT_STRING", (-1,)),
    "images": ("images", "DT_UINT8", (-1, -1, -1, 3)),
}

PAGE = Path(__file__).resolve().parent / "static" / "index.html"
# What the page may load: itself, its inline script and style, images it makes, the webcam.
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' data: blob:; media-src 'self' blob: mediastream:; connect-src 'self'"
)
_MODEL_PATH = re.compile(
    r"^(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<tail>:[A-Za-z]+|/metadata)?$"
)

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """A bad request: answered HTTP 400 ``{"error": message}``."""


# -- image headers ------------------------------------------------------------------------------


def image_dimensions(data):
    """``(height, width)`` of an encoded image, read from its header by Pillow without decoding
    the pixels; ``None`` when Pillow does not recognise the bytes or the header is cut short.

    Raises:
        ValueError: the header claims more pixels than Pillow opens at all (its
            decompression-bomb limit, twice ``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(io.BytesIO(bytes(data))) as image:
                width, height = image.size
    except PIL.Image.DecompressionBombError as error:
        raise ValueError(str(error)) from None
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    return height, width


# -- requests -----------------------------------------------------------------------------------


class ParsedRequest(NamedTuple):
    """A predict request, decoded: ``columnar`` (``inputs``) or row (``instances``) format, the
    signature, where each instance came from (``instances[2]``) and its image."""

    columnar: bool
    signature: str
    sources: list
    images: list


def _kind(value):
    if isinstance(value, dict):
        return "an object with keys " + ", ".join(repr(k) for k in value) if value else "{}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a plain string"
    return f"a JSON {type(value).__name__}"


def _signature_of(value):
    """The signature an instance asks for by its type (used without ``signature_name``)."""
    if isinstance(value, list) or (isinstance(value, dict) and "images" in value):
        return "images"
    return "serving_default"


def _unwrap(value, signature, where):
    """The instance's value for the signature's input: ``{"<input>": value}`` or the bare value
    (TF Serving's two spellings of a one-input signature)."""
    name = SIGNATURES[signature][0]
    if isinstance(value, dict) and "b64" not in value:
        unknown = [key for key in value if key != name]
        if unknown or name not in value:
            what = f"unknown input {unknown[0]!r}" if unknown else f"no input {name!r}"
            raise RequestError(
                f"{where}: {what}; signature {signature!r} takes one input, {name!r}"
            )
        return value[name]
    return value


class ModelServer:
    """The model behind the HTTP API: request parsing, decoding, batches, answers.

    Args:
        model: a prediction model of :func:`affectnet_tf.build_model` (metadata inside).
        model_name: the name clients use in ``/v1/models/<name>``.
        model_version: the version it answers as.
        detect_faces: run the MTCNN face-crop stage; answers are face records.
        cropper: the :class:`~affectnet_tf.faces.FaceCropper` of ``detect_faces`` (default: every
            face, 224 crops, as ``python -m affectnet_tf.predict``).
        max_batch_size: images per model call.
        batch_timeout_ms: how long a batch waits for more images after its first.
        max_request_mb: largest request body, in MiB.
        max_image_pixels: largest image, in pixels (height x width).
        max_instances: most instances in one request.
    """

    def __init__(
        self,
        model,
        model_name,
        *,
        model_version=1,
        detect_faces=False,
        cropper=None,
        max_batch_size=32,
        batch_timeout_ms=5.0,
        max_request_mb=16.0,
        max_image_pixels=40_000_000,
        max_instances=64,
    ):
        if not re.fullmatch(r"[^/:\s]+", str(model_name)):
            raise ValueError(
                "`model_name` must be a non-empty name without '/', ':' or spaces (it is part of "
                f"the URL /v1/models/<name>:predict). Received: model_name={model_name!r}"
            )
        for name, value in (
            ("model_version", model_version),
            ("max_batch_size", max_batch_size),
            ("max_image_pixels", max_image_pixels),
            ("max_instances", max_instances),
        ):
            if int(value) < 1:
                raise ValueError(f"`{name}` must be >= 1. Received: {name}={value!r}")
        if not float(max_request_mb) > 0:
            raise ValueError(
                f"`max_request_mb` must be > 0. Received: max_request_mb={max_request_mb!r}"
            )
        if not float(batch_timeout_ms) >= 0:
            raise ValueError(
                f"`batch_timeout_ms` must be >= 0. Received: batch_timeout_ms={batch_timeout_ms!r}"
            )
        self.model_name = str(model_name)
        self.model_version = str(int(model_version))
        self.detect_faces = bool(detect_faces)
        if detect_faces and cropper is None:
            cropper = faces_module.FaceCropper(mode=faces_module.ALL)
        self.predictor = Predictor(model, cropper, batch_size=max_batch_size)
        self.metadata = model_metadata(model)
        self.heads = self.predictor.heads
        self.class_names = list(self.predictor.class_names)
        self.image_size = self.predictor.image_size
        self.max_request_bytes = int(float(max_request_mb) * 2**20)
        self.max_image_pixels = int(max_image_pixels)
        self.max_instances = int(max_instances)
        self.batcher = Batcher(self._run_batch, int(max_batch_size), float(batch_timeout_ms))
        self.requests = 0  # predict requests answered 200
        self._decode_pool = None

    # -- the API's documents ------------------------------------------------------------------

    @property
    def output_names(self):
        return ("faces",) if self.detect_faces else self.heads

    def limits(self):
        return {
            "max_request_bytes": self.max_request_bytes,
            "max_image_pixels": self.max_image_pixels,
            "max_instances": self.max_instances,
            "max_batch_size": self.batcher.max_batch_size,
        }

    def status(self):
        """TF Serving's model status document."""
        return {
            "model_version_status": [
                {
                    "version": self.model_version,
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }

    def _outputs_def(self):
        if self.detect_faces:  # one JSON document per instance, not a tensor
            specs = {"faces": ("DT_STRING", (-1,))}
        else:
            shapes = {"expression": (-1, len(self.class_names)), "valence": (-1,), "arousal": (-1,)}
            specs = {head: ("DT_FLOAT", shapes[head]) for head in self.heads}
        return {
            name: _tensor_info(dtype, shape, f"StatefulPartitionedCall:{i}")
            for i, (name, (dtype, shape)) in enumerate(sorted(specs.items()))
        }

    def metadata_document(self):
        """TF Serving's metadata document, plus the model's own metadata under
        ``affectnet_tf``."""
        signatures = {
            signature: {
                "inputs": {name: _tensor_info(dtype, shape, f"{signature}_{name}:0")},
                "outputs": self._outputs_def(),
                "method_name": "tensorflow/serving/predict",
                "defaults": {},
            }
            for signature, (name, dtype, shape) in SIGNATURES.items()
        }
        return {
            "model_spec": {
                "name": self.model_name,
                "signature_name": "",
                "version": self.model_version,
            },
            "metadata": {"signature_def": {"signature_def": signatures}},
            "affectnet_tf": {
                **self.metadata,
                "detect_faces": self.detect_faces,
                "limits": self.limits(),
            },
        }

    def page_config(self):
        """What the page at ``/`` needs: where to post, the outputs, faces or whole images."""
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "predict_url": f"/v1/models/{self.model_name}:predict",
            "metadata_url": f"/v1/models/{self.model_name}/metadata",
            "detect_faces": self.detect_faces,
            "outputs": list(self.heads),
            "class_names": self.class_names,
            "image_size": self.image_size,
            **self.limits(),
        }

    # -- parsing and decoding (in a thread) ---------------------------------------------------

    def parse(self, body):
        """A :class:`ParsedRequest` from a predict request's body (its images decoded, and
        resized to the model's input unless faces are detected).

        Raises:
            RequestError: naming the field, the instance or the limit.
        """
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(f"The request body is not valid JSON: {error}") from None
        except RecursionError:
            raise RequestError("The request body is not valid JSON: nested too deeply") from None
        if not isinstance(request, dict):
            raise RequestError(
                "The request body must be a JSON object with 'instances' (row format) or "
                f"'inputs' (columnar format). Received {_kind(request)}"
            )
        unknown = sorted(set(request) - {"signature_name", "instances", "inputs"})
        if unknown:
            raise RequestError(
                f"Unknown key {unknown[0]!r} in the request: a predict request has "
                "'signature_name' (optional) and 'instances' or 'inputs'"
            )
        if ("instances" in request) == ("inputs" in request):
            raise RequestError(
                "Missing 'instances' or 'inputs' key: a predict request has exactly one of them"
                if "instances" not in request
                else "A predict request has 'instances' or 'inputs', not both"
            )
        columnar = "inputs" in request
        field = "inputs" if columnar else "instances"
        signature = request.get("signature_name") or None
        if signature is not None and (
            not isinstance(signature, str) or signature not in SIGNATURES
        ):
            raise RequestError(
                f"Serving signature name: {signature!r} not found in signature def; signatures: "
                + ", ".join(f"{s!r} (input {spec[0]!r})" for s, spec in SIGNATURES.items())
            )
        values = request[field]
        if columnar and isinstance(values, dict) and "b64" not in values:
            if len(values) != 1 or next(iter(values)) not in ("image_bytes", "images"):
                keys = ", ".join(repr(k) for k in values) or "none"
                raise RequestError(
                    f"inputs: unknown inputs ({keys}); the inputs are 'image_bytes' "
                    "(signature 'serving_default') or 'images' (signature 'images')"
                )
            ((name, values),) = values.items()
            inferred = "serving_default" if name == "image_bytes" else "images"
            if signature is not None and signature != inferred:
                raise RequestError(
                    f"inputs: input {name!r} is not an input of signature {signature!r} "
                    f"(which takes {SIGNATURES[signature][0]!r})"
                )
            signature, field = inferred, f"inputs.{name}"
        if not isinstance(values, list):
            raise RequestError(f"{field}: expected a list (the batch); received {_kind(values)}")
        if not values:
            raise RequestError(f"{field}: an empty list, nothing to predict")
        if len(values) > self.max_instances:
            raise RequestError(
                f"{field}: {len(values)} instances; this server takes at most "
                f"{self.max_instances} instances in one request (--max-instances)"
            )
        signature = signature or _signature_of(values[0])
        sources, images = [], []
        for i, value in enumerate(values):
            where = f"{field}[{i}]"
            if field in ("instances", "inputs"):  # not the named columnar form
                value = _unwrap(value, signature, where)
            sources.append(where)
            images.append(self._image(value, signature, where))
        return ParsedRequest(columnar, signature, sources, images)

    def _image(self, value, signature, where):
        if signature == "serving_default":
            image = self._decode(_b64_bytes(value, where), where)
        else:
            image = self._array(value, where)
        if self.detect_faces:  # the face-crop stage takes the whole image
            return np.asarray(image)
        return np.asarray(resize_image(image, self.image_size))

    def _check_pixels(self, height, width, where):
        if height * width > self.max_image_pixels:
            raise RequestError(
                f"{where}: an image of {width}x{height} = {height * width} pixels; the limit is "
                f"{self.max_image_pixels} pixels (--max-image-pixels)"
            )

    def _decode(self, data, where):
        if not data:
            raise RequestError(f"{where}: empty bytes, not an image")
        try:
            dimensions = image_dimensions(data)
        except ValueError as error:
            raise RequestError(
                f"{where}: {error}; the limit is {self.max_image_pixels} pixels "
                "(--max-image-pixels)"
            ) from None
        if dimensions is not None:
            self._check_pixels(*dimensions, where)
        try:
            image = decode_image(data)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
            raise RequestError(
                f"{where}: cannot decode the image: {decode_error_reason(error)}"
            ) from None
        self._check_pixels(int(image.shape[0]), int(image.shape[1]), where)
        return image

    def _array(self, value, where):
        if not isinstance(value, list):
            raise RequestError(
                f"{where}: signature 'images' takes a uint8 RGB array [height, width, 3] as "
                f"nested lists; received {_kind(value)}"
            )
        try:
            array = np.asarray(value)
        except (ValueError, TypeError):
            array = None
        if array is None or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
            shape = "ragged nested lists" if array is None else f"shape {list(array.shape)}"
            raise RequestError(
                f"{where}: an image must be a uint8 RGB array [height, width, 3]; received {shape}"
            )
        self._check_pixels(array.shape[0], array.shape[1], where)
        if array.dtype.kind not in "iu":
            raise RequestError(
                f"{where}: an image must hold integers 0..255 (uint8 RGB); received values of "
                f"type {array.dtype.name}"
            )
        if array.min() < 0 or array.max() > 255:
            raise RequestError(
                f"{where}: an image must hold integers 0..255 (uint8 RGB); received values "
                f"from {array.min()} to {array.max()}"
            )
        return array.astype(np.uint8)

    # -- the model (in the model thread) ------------------------------------------------------

    def _run_batch(self, images):
        """One model call on a batch of images: one result per image."""
        if self.detect_faces:
            return self._faces_batch(images)
        arrays = self.predictor.predict_crops(np.stack(images))
        results = []
        for i in range(len(images)):
            result = {}
            for head in self.heads:
                value = arrays[head][i]
                result[head] = [float(v) for v in value] if head == "expression" else float(value)
            results.append(result)
        return results

    def _faces_batch(self, images):
        found = self.predictor.cropper.process(images)
        counts = [len(faces) for faces in found]
        if not sum(counts):
            return [[] for _ in images]
        combined = faces_module.Faces(*(np.concatenate(parts) for parts in zip(*found)))
        records = self.predictor.records(None, 0, combined)
        results, start = [], 0
        for count in counts:
            results.append(records[start : start + count])
            start += count
        return results

    def warm_up(self):
        """One call of every stage on a blank image, so that the first request does not pay for
        tracing and for loading MTCNN's weights."""
        if self.detect_faces:
            self.predictor.cropper.process([np.zeros((64, 64, 3), np.uint8)])
        self.predictor.predict_crops(np.zeros((1, self.image_size, self.image_size, 3), np.uint8))

    # -- the answer -------------------------------------------------------------------------

    def answer(self, parsed, results):
        """TF Serving's answer to a request: ``predictions`` (row) or ``outputs`` (columnar)."""
        if self.detect_faces:
            results = [
                {"faces": [dict(record, source=source) for record in records]}
                for source, records in zip(parsed.sources, results)
            ]
        names = self.output_names
        if not parsed.columnar:
            if len(names) == 1 and not self.detect_faces:
                return {"predictions": [result[names[0]] for result in results]}
            return {"predictions": results}
        outputs = {name: [result[name] for result in results] for name in names}
        if len(names) == 1 and not self.detect_faces:
            return {"outputs": outputs[names[0]]}
        return {"outputs": outputs}

    # -- HTTP ---------------------------------------------------------------------------------

    async def start(self, app):
        """``on_startup``: thread pools, the batch worker, the warm-up."""
        workers = max(2, min(8, os.cpu_count() or 2))
        self._decode_pool = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="serve-decode"
        )
        self.batcher.start()
        await asyncio.get_running_loop().run_in_executor(self.batcher.executor, self.warm_up)

    async def stop(self, app):
        """``on_cleanup``: stops the worker, fails what is still waiting, ends the pools."""
        await self.batcher.stop()
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=False, cancel_futures=True)

    def _check_model(self, name, version, label):
        if name != self.model_name:
            raise RequestError(
                f"Servable not found for request: Latest({name}); this server serves the model "
                f"{self.model_name!r}"
            )
        if label is not None:
            raise RequestError(
                f"Unrecognized servable version label: {label}; this server has no labels, ask "
                f"for /v1/models/{self.model_name} or /versions/{self.model_version}"
            )
        if version is not None and version != self.model_version:
            raise RequestError(
                f"Servable not found for request: Specific({name}, {version}); this server "
                f"serves version {self.model_version}"
            )

    async def handle_models(self, request):
        """``/v1/models/...``: status, metadata and predict, dispatched as TF Serving does."""
        match = _MODEL_PATH.match(request.match_info["tail"])
        malformed = f"Malformed request: {request.method} {request.path}"
        if match is None:
            return _error(404, malformed)
        tail = match.group("tail")
        if request.method == "POST" and tail is not None and tail.startswith(":"):
            self._check_model(match.group("name"), match.group("version"), match.group("label"))
            if tail != ":predict":
                raise RequestError(
                    f"{tail[1:]!r} is not served here: this server answers ':predict' only"
                )
            return await self._predict(request)
        if request.method == "GET" and (tail is None or tail == "/metadata"):
            self._check_model(match.group("name"), match.group("version"), match.group("label"))
            document = self.status() if tail is None else self.metadata_document()
            return web.json_response(document)
        return _error(404, malformed)

    async def _read_body(self, request):
        limit = self.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise RequestError(
                f"The request body of {request.content_length} bytes is larger than the limit "
                f"of {limit} bytes (--max-request-mb)"
            )
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RequestError(
                f"The request body is larger than the limit of {limit} bytes (--max-request-mb)"
            ) from None

    async def _predict(self, request):
        body = await self._read_body(request)
        loop = asyncio.get_running_loop()
        parsed = await loop.run_in_executor(self._decode_pool, self.parse, body)
        futures = [self.batcher.submit(image) for image in parsed.images]
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [result for result in results if isinstance(result, BaseException)]
        if failed:
            raise failed[0]
        self.requests += 1
        return web.json_response(self.answer(parsed, results))


#: The :class:`ModelServer` of an app of :func:`make_app`: ``app[serve.SERVER]``.
SERVER = web.AppKey("affectnet_tf_server", ModelServer)


def _tensor_info(dtype, shape, name):
    return {
        "dtype": dtype,
        "tensor_shape": {
            "dim": [{"size": str(size), "name": ""} for size in shape],
            "unknown_rank": False,
        },
        "name": name,
    }


def _b64_bytes(value, where):
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode("".join(value["b64"].split()), validate=True)
        except (binascii.Error, ValueError) as error:
            raise RequestError(f"{where}: 'b64' is not valid base64 ({error})") from None
    hint = " (binary data travels base64-encoded)" if isinstance(value, str) else ""
    raise RequestError(
        f"{where}: signature 'serving_default' takes encoded images as "
        f'{{"b64": "<base64 JPEG/PNG>"}}{hint}; received {_kind(value)}'
    )


def _error(status, message):
    return web.json_response({"error": message}, status=status)


# -- batching -----------------------------------------------------------------------------------


class Batcher:
    """Gathers items submitted by concurrent requests into batches for one function.

    ``await batcher.submit(item)`` puts the item on an asyncio queue and waits for its result.
    One worker task takes the first waiting item, then more until ``max_batch_size`` or until
    ``batch_timeout_ms`` have passed, and runs ``function(items)`` (one result per item) in a
    one-thread executor, so the event loop goes on accepting requests meanwhile.

    Attributes:
        batches: how many times ``function`` ran (model calls).
        items: how many items went through it.
        largest_batch: the largest batch so far.
    """

    def __init__(self, function, max_batch_size=32, batch_timeout_ms=5.0):
        self.function = function
        self.max_batch_size = int(max_batch_size)
        self.timeout = float(batch_timeout_ms) / 1000.0
        self.batches = 0
        self.items = 0
        self.largest_batch = 0
        self.executor = None
        self._queue = None
        self._task = None

    def start(self):
        """Starts the worker on the running event loop."""
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="serve-model")
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self):
        """Stops the worker; items still waiting fail with ``RuntimeError``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue is not None and not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("The server is stopping"))
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, item):
        """A future of ``item``'s result."""
        if self._task is None:
            raise RuntimeError("The batcher is not running: call start() on the event loop")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return future

    async def _gather(self):
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.timeout
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [(item, future) for item, future in batch if not future.done()]

    async def _work(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            items = [item for item, _ in batch]
            try:
                results = await loop.run_in_executor(self.executor, self.function, items)
            except Exception as error:  # every request of the batch answers 500
                logger.exception("The model failed on a batch of %d", len(items))
                results = [error] * len(items)
            else:
                self.batches += 1
                self.items += len(items)
                self.largest_batch = max(self.largest_batch, len(items))
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


# -- the app ------------------------------------------------------------------------------------


@web.middleware
async def _json_errors(request, handler):
    """Every error as TF Serving's ``{"error": message}``: 400 for a bad request."""
    try:
        return await handler(request)
    except RequestError as error:
        return _error(400, str(error))
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _error(error.status, f"{error.reason}: {request.method} {request.path}")
    except Exception as error:
        logger.exception("Internal error on %s %s", request.method, request.path)
        return _error(500, f"Internal error: {type(error).__name__}: {error}")


def make_app(model, model_name, **options):
    """The aiohttp application serving ``model`` (run it with :class:`ServerThread`,
    ``aiohttp.web.run_app`` or ``python -m affectnet_tf.serve``).

    Args:
        model: a prediction model of :func:`affectnet_tf.build_model`, e.g. from
            :func:`affectnet_tf.predict.load_run_model`.
        model_name: the name in ``/v1/models/<name>``.
        **options: the settings of :class:`ModelServer` (``detect_faces``, ``cropper``,
            ``max_batch_size``, ``batch_timeout_ms``, ``max_request_mb``, ``max_image_pixels``,
            ``max_instances``, ``model_version``).

    Returns:
        ``aiohttp.web.Application``; ``app[serve.SERVER]`` is its :class:`ModelServer`.

    Example:

    ```python
    from affectnet_tf import serve
    from affectnet_tf.predict import load_run_model

    app = serve.make_app(load_run_model("runs/exp"), "exp", detect_faces=True)
    with serve.ServerThread(app, port=0) as server:
        print(server.url)  # http://127.0.0.1:<port>
    ```
    """
    server = ModelServer(model, model_name, **options)
    app = web.Application(client_max_size=server.max_request_bytes, middlewares=[_json_errors])
    app[SERVER] = server
    page = PAGE.read_bytes()

    async def index(request):
        return web.Response(
            body=page,
            content_type="text/html",
            charset="utf-8",
            headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"},
        )

    async def config(request):
        return web.json_response(server.page_config())

    app.router.add_get("/", index)
    app.router.add_get("/config.json", config)
    app.router.add_route("*", "/v1/models/{tail:.+}", server.handle_models)
    app.on_startup.append(server.start)
    app.on_cleanup.append(server.stop)
    return app


async def _start_site(app, host, port):
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{bound}"


class ServerThread:
    """Runs an app on ``host:port`` in a background thread, with its own event loop (for tests
    and notebooks); ``port=0`` takes a free port. A context manager: ``with
    ServerThread(app) as server: server.url``.

    Args:
        app: an application of :func:`make_app`.
        host: the address to listen on.
        port: the port (0: a free one).
        startup_timeout: seconds to wait for the server to listen (the model's warm-up
            included).
    """

    def __init__(self, app, host="127.0.0.1", port=0, startup_timeout=300.0):
        self.app = app
        self.host = host
        self.port = port
        self.startup_timeout = float(startup_timeout)
        self.url = None
        self._thread = None
        self._loop = None
        self._stop_event = None
        self._ready = threading.Event()
        self._error = None

    def start(self):
        """Starts the server and waits until it listens; returns ``self``."""
        self._thread = threading.Thread(target=self._run, name="affectnet-serve", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.startup_timeout):
            raise RuntimeError(f"The server did not start in {self.startup_timeout:g} s")
        if self._error is not None:
            raise self._error
        return self

    def _run(self):
        asyncio.run(self._main())

    async def _main(self):
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            runner, self.url = await _start_site(self.app, self.host, self.port)
        except BaseException as error:
            self._error = error
            self._ready.set()
            return
        self.port = int(self.url.rsplit(":", 1)[1])
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await runner.cleanup()

    def stop(self, timeout=30.0):
        """Stops the server and waits for its thread."""
        if self._thread is None:
            return
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


async def _serve_forever(app, host, port, announce):
    runner, url = await _start_site(app, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(number, stop.set)
    announce(url)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


# -- the command line ---------------------------------------------------------------------------


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.serve",
        description="An HTTP server speaking TF Serving's REST predict API, with a page at /.",
    )
    group = parser.add_argument_group("Model")
    group.add_argument("--model-dir", required=True, help="run folder holding model.keras")
    group.add_argument(
        "--model-name",
        default=None,
        help="the name in /v1/models/<name> (default: the run folder's name)",
    )
    group.add_argument(
        "--model-version",
        type=bounded_number(int, 1),
        default=1,
        help="the version the model answers as (default: 1)",
    )
    group.add_argument(
        "--detect-faces",
        action="store_true",
        help="find the faces (MTCNN) and answer one record per face",
    )
    group = parser.add_argument_group("Server")
    group.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    group.add_argument(
        "--port",
        type=bounded_number(int, 0, maximum=65535),
        default=DEFAULT_PORT,
        help=f"the port; 0: a free one (default: {DEFAULT_PORT})",
    )
    group.add_argument(
        "--access-log", action="store_true", help="log every request to the standard error"
    )
    group = parser.add_argument_group("Batching")
    group.add_argument(
        "--max-batch-size",
        type=bounded_number(int, 1),
        default=32,
        help="images per model call (default: 32)",
    )
    group.add_argument(
        "--batch-timeout-ms",
        type=bounded_number(float, 0.0),
        default=5.0,
        help="how long a batch waits for more images after its first (default: 5)",
    )
    group = parser.add_argument_group("Limits")
    group.add_argument(
        "--max-request-mb",
        type=bounded_number(float, 0.0, strict=True),
        default=16.0,
        help="largest request body, in MiB (default: 16)",
    )
    group.add_argument(
        "--max-image-pixels",
        type=bounded_number(int, 1),
        default=40_000_000,
        help="largest image, height x width (default: 40000000)",
    )
    group.add_argument(
        "--max-instances",
        type=bounded_number(int, 1),
        default=64,
        help="most instances in one request (default: 64)",
    )
    add_face_arguments(parser, "Faces (with --detect-faces)")
    return parser


def _model_name(model_dir):
    path = os.path.abspath(os.fspath(model_dir))
    if os.path.isfile(path):
        path = os.path.dirname(path)
    return os.path.basename(path)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model = load_run_model(args.model_dir)
    except FileNotFoundError as error:
        parser.error(str(error))
    cropper = None
    if args.detect_faces:
        cropper = face_cropper(args)
    try:
        app = make_app(
            model,
            args.model_name or _model_name(args.model_dir),
            model_version=args.model_version,
            detect_faces=args.detect_faces,
            cropper=cropper,
            max_batch_size=args.max_batch_size,
            batch_timeout_ms=args.batch_timeout_ms,
            max_request_mb=args.max_request_mb,
            max_image_pixels=args.max_image_pixels,
            max_instances=args.max_instances,
        )
    except ValueError as error:
        parser.error(str(error))
    if args.access_log:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    server = app[SERVER]

    def announce(url):
        what = ", ".join(server.heads) + (" of every face" if server.detect_faces else "")
        print(
            f"Serving {server.model_name!r} ({what}): the page at {url}/, "
            f"predictions at POST {url}/v1/models/{server.model_name}:predict (Ctrl+C stops)",
            flush=True,
        )

    try:
        asyncio.run(_serve_forever(app, args.host, args.port, announce))
    except OSError as error:
        raise SystemExit(f"Cannot listen on {args.host}:{args.port}: {error}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
