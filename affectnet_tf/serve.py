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
  with the model's own metadata (:func:`affectnet_tf.modeling.models.model_metadata`: ``class_names``,
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
:func:`affectnet_tf.data.images.decode_image` and resized with
:func:`affectnet_tf.data.images.resize_image`, the path training images take.

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
(:class:`affectnet_tf.inference.faces.FaceCropper`) and :class:`affectnet_tf.predict.Predictor`, and an
instance's answer is the list of its faces' records exactly as ``python -m
affectnet_tf.predict`` writes them (``source`` is the instance, ``instances[i]`` or
``inputs[i]``; ``frame`` is 0; ``box`` is x, y, width, height in the image's pixels); an image
without a face gives an empty list:

    {"predictions": [{"faces": [{"source": "instances[0]", "frame": 0,
                                 "box": [182.4, 64.1, 83.0, 107.2], "score": 0.9998,
                                 "expression": "happy", "probabilities": {"neutral": 0.1, ...},
                                 "valence": 0.41, "arousal": 0.12}, ...]}, ...]}
    {"outputs": {"faces": [[record, ...], ...]}}

An image larger than ``--detect-max-side`` on its longer side is downscaled before MTCNN (the
boxes are mapped back to the image's pixels and the crops cut from the full image), and only its
face crops, at the model's size, are kept once it has been through the stage.

Limits, each with its flag (docs/serving.md has the defaults):

* the request body (``--max-request-mb``): larger answers 413;
* the pixels of an image (``--max-image-pixels``, frames of a GIF included) and of all the
  images of a request (``--max-request-pixels``), read from the images' headers by Pillow
  before anything is decoded: an image whose size its header does not tell (a format other
  than JPEG, PNG, GIF, BMP and WebP, or a header cut short) is refused, never decoded;
* the instances of a request (``--max-instances``);
* the predict requests in progress at once (``--max-queued-requests``): more answer 503 with a
  ``Retry-After`` header;
* time: a connection must send its first request's headers within ``--read-timeout-s`` (it is
  closed otherwise; later requests and idle keep-alive connections get as long), a body may
  stall no longer than that (408), and a request must be answered within
  ``--request-timeout-s`` of its headers (408 while its body is still arriving, 503 with
  ``Retry-After`` after).

Every bad input (not an image, a truncated image, wrong JSON, a missing or unknown field, an
image or a request over a pixel limit, a version label or an unknown signature) answers HTTP
400, an unknown model name or version 404 (as TF Serving), each with TF Serving's error shape
``{"error": "..."}`` naming the instance, the field or the limit, and the server goes on
serving. Every answer carries ``X-Content-Type-Options: nosniff``; the page's
Content-Security-Policy forbids framing it (``frame-ancestors 'none'``).

Work: a request's body is parsed, and its images decoded (and their faces found) one image at a
time, in thread pools off the event loop: images of up to :data:`SMALL_IMAGE_PIXELS` pixels in
one pool, larger ones in another, each of ``--decode-threads`` threads, so that a small request
never waits behind the decoding of large images; in each pool the request with the fewest pixels
left goes first. With ``--detect-faces`` the faces of small images are found in MTCNN batches
gathered across requests (as the model's), those of large images one by one in their pool. Each
image prepared for the model (resized, or its face crops) is one item on an asyncio queue; one
worker takes up to ``--max-batch-size`` waiting items, waiting at most ``--batch-timeout-ms``
for more after the first, and runs them as one model call in a thread of its own. When a batched
call raises, its items are run one by one, so that only the request whose image made it fail
answers 500.
"""

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import heapq
import io
import itertools
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

import cv2
import numpy as np
import tensorflow as tf

from affectnet_tf.data.images import decode_error_reason, decode_image, resize_image
from affectnet_tf.inference import faces as faces_module
from affectnet_tf.modeling.models import model_metadata
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
    "SERVED_FORMATS",
    "SMALL_IMAGE_PIXELS",
    "RETRY_AFTER_S",
    "SERVER",  # noqa: F822 (made on first use by the module's __getattr__)
    "RequestError",
    "Batcher",
    "ModelServer",
    "default_model_name",
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

#: The formats whose size Pillow reads from the header (Pillow's names); what
#: :func:`affectnet_tf.data.images.decode_image` decodes. Other bytes are refused before decoding.
SERVED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")

#: Images of at most this many pixels (the page's largest upload, 1600 x 1600) are decoded in a
#: thread pool of their own, so that they never wait behind larger ones.
SMALL_IMAGE_PIXELS = 1600 * 1600
# Request bodies up to this size are parsed in the pool of the small images.
_SMALL_BODY_BYTES = 4 * 2**20

#: The ``Retry-After`` of a 503 answer, in seconds.
RETRY_AFTER_S = 1

PAGE = Path(__file__).resolve().parent / "static" / "index.html"
# What the page may load: itself, its inline script and style, images it makes, the webcam; and
# no other site may frame it.
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' data: blob:; media-src 'self' blob: mediastream:; connect-src 'self'; "
    "frame-ancestors 'none'"
)
_MODEL_PATH = re.compile(
    r"^(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<tail>:[A-Za-z]+|/metadata)?$"
)

logger = logging.getLogger(__name__)


def _web():
    """``aiohttp.web``, imported where the server needs it (the ``serve`` extra), so that the
    module and its parser import without it (the documentation's flag tables)."""
    try:
        from aiohttp import web
    except ImportError as error:
        raise ImportError(
            "The server needs aiohttp, which the package's `serve` extra installs: "
            f"pip install 'affectnet-tf[serve]' ({error})"
        ) from error
    return web


def _pillow():
    """``PIL.Image``, imported where image headers are read (the ``serve`` extra)."""
    try:
        import PIL.Image
    except ImportError as error:
        raise ImportError(
            "The server reads image sizes with Pillow, which the package's `serve` extra "
            f"installs: pip install 'affectnet-tf[serve]' ({error})"
        ) from error
    return PIL.Image


_APP_KEY = []  # the aiohttp AppKey of SERVER, made on first use


def _server_key():
    if not _APP_KEY:
        _APP_KEY.append(_web().AppKey("affectnet_tf_server", ModelServer))
    return _APP_KEY[0]


def __getattr__(name):
    # SERVER is an aiohttp.web.AppKey: made when it is first asked for, so that importing this
    # module does not need aiohttp.
    if name == "SERVER":
        return _server_key()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class RequestError(ValueError):
    """A request the server refuses: answered HTTP ``status`` (400 unless said) with
    ``{"error": message}`` and ``headers``; ``close`` ends the connection after the answer.

    Args:
        message: what is wrong, naming the instance, the field or the limit.
        status: the HTTP status (400, 404, 408, 413, 503).
        headers: extra answer headers (``Retry-After`` with a 503).
        close: close the connection after answering (a stalled body).
    """

    def __init__(self, message, status=400, headers=None, close=False):
        super().__init__(message)
        self.status = int(status)
        self.headers = dict(headers or {})
        self.close = bool(close)


# -- image headers ------------------------------------------------------------------------------


def _gif_frames(data, stop_after):
    """The frames of a GIF, counted from its block structure without decoding (TensorFlow
    decodes every frame of a GIF, even for its first one); counting stops at ``stop_after``.
    ``None`` when not one frame is there in full."""
    view, size = memoryview(data), len(data)
    if size < 13:
        return None
    flags, position, frames = view[10], 13, 0
    if flags & 0x80:  # the global colour table
        position += 3 * (2 << (flags & 7))

    def after_sub_blocks(position):
        while position < size:
            length = view[position]
            position += 1 + length
            if length == 0:
                return position
        return None

    while position is not None and position < size and frames < stop_after:
        block = view[position]
        if block == 0x3B:  # the trailer
            break
        if block == 0x21:  # an extension: its label, then its sub-blocks
            position = after_sub_blocks(position + 2)
        elif block == 0x2C:  # an image: its descriptor, colour table, code size, sub-blocks
            if position + 10 > size:
                break
            flags = view[position + 9]
            position += 10 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0) + 1
            position = after_sub_blocks(position)
            if position is not None:
                frames += 1
        else:  # not GIF any more: what follows is not decoded either
            break
    return frames or None


def _header_size(data, max_pixels=None):
    """``(height, width, frames)`` of an encoded image of :data:`SERVED_FORMATS` from its header
    (frames: of a GIF, counted up to the first that makes more than ``max_pixels``; else 1);
    ``None`` when the bytes are none of those formats or the header is cut short.

    Raises:
        ValueError: the header claims more pixels than Pillow opens at all (its
            decompression-bomb limit, twice ``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    image_module = _pillow()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", image_module.DecompressionBombWarning)
            with image_module.open(io.BytesIO(bytes(data)), formats=SERVED_FORMATS) as image:
                width, height = image.size
                kind = image.format
    except image_module.DecompressionBombError as error:
        raise ValueError(str(error)) from None
    except (image_module.UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        return None
    if width < 1 or height < 1:
        return None
    frames = 1
    if kind == "GIF":
        stop_after = (max_pixels // (width * height) + 1) if max_pixels else 2**31
        frames = _gif_frames(data, max(1, stop_after))
        if frames is None:
            return None
    return height, width, frames


def image_dimensions(data):
    """``(height, width)`` of an encoded JPEG, PNG, GIF, BMP or WebP image, read from its header
    by Pillow without decoding the pixels; ``None`` when the bytes are none of those formats
    (JPEG XL, TIFF, ... included: Pillow cannot tell their size, or the server does not serve
    them) or the header is cut short.

    Raises:
        ValueError: the header claims more pixels than Pillow opens at all (its
            decompression-bomb limit, twice ``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    size = _header_size(data, max_pixels=1)
    return None if size is None else size[:2]


# -- requests -----------------------------------------------------------------------------------


class ParsedRequest(NamedTuple):
    """A predict request, read: ``columnar`` (``inputs``) or row (``instances``) format, the
    signature, where each instance came from (``instances[2]``) and its image: from
    :meth:`ModelServer.read_request` an :class:`ImageInput` (not decoded yet), from
    :meth:`ModelServer.parse` the image ready for the model."""

    columnar: bool
    signature: str
    sources: list
    images: list


class ImageInput(NamedTuple):
    """One instance of a request before decoding: its encoded bytes (``serving_default``) or its
    uint8 array (``images``), and its size as its header tells."""

    source: str
    data: bytes | None
    array: np.ndarray | None
    height: int
    width: int
    frames: int = 1

    @property
    def pixels(self):
        return self.height * self.width * self.frames


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


def _scaled(detections, x_factor, y_factor):
    """`Detections` of a downscaled frame in the full frame's pixels."""
    boxes = detections.boxes * np.asarray([x_factor, y_factor, x_factor, y_factor], np.float32)
    landmarks = detections.landmarks * np.asarray([x_factor, y_factor], np.float32)
    return faces_module.Detections(
        boxes.astype(np.float32), detections.scores, landmarks.astype(np.float32)
    )


def _positive(name, value, kind=int, strict=True):
    number = kind(value)
    if not (number > 0 if strict else number >= 0):
        relation = ">" if strict else ">="
        raise ValueError(f"`{name}` must be {relation} 0. Received: {name}={value!r}")
    return number


class ModelServer:
    """The model behind the HTTP API: request parsing, decoding, batches, answers.

    Args:
        model: a prediction model of :func:`affectnet_tf.build_model` (metadata inside).
        model_name: the name clients use in ``/v1/models/<name>``.
        model_version: the version it answers as.
        detect_faces: run the MTCNN face-crop stage; answers are face records.
        cropper: the :class:`~affectnet_tf.inference.faces.FaceCropper` of ``detect_faces`` (default: every
            face, 224 crops, as ``python -m affectnet_tf.predict``).
        max_batch_size: images per model call.
        batch_timeout_ms: how long a batch waits for more images after its first.
        max_request_mb: largest request body, in MiB (413 beyond).
        max_image_pixels: largest image, in pixels (height x width, times the frames of a GIF).
        max_instances: most instances in one request.
        max_request_pixels: most pixels of all the images of one request together.
        max_queued_requests: most predict requests in progress at once (503 beyond).
        read_timeout_s: longest wait for a request's headers and between two parts of its body.
        request_timeout_s: longest time from a request's headers to its answer.
        decode_threads: threads that decode images (and find their faces), in each of the two
            pools (small images, large images).
        detect_max_side: with ``detect_faces``, MTCNN runs on the image downscaled to this
            longer side when it is larger.
        small_image_pixels: images up to this many pixels go to the pool of small images.
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
        max_request_pixels=100_000_000,
        max_queued_requests=32,
        read_timeout_s=30.0,
        request_timeout_s=60.0,
        decode_threads=2,
        detect_max_side=1280,
        small_image_pixels=SMALL_IMAGE_PIXELS,
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
            ("max_request_pixels", max_request_pixels),
            ("max_queued_requests", max_queued_requests),
            ("decode_threads", decode_threads),
            ("small_image_pixels", small_image_pixels),
        ):
            if int(value) < 1:
                raise ValueError(f"`{name}` must be >= 1. Received: {name}={value!r}")
        if int(detect_max_side) < 48:
            raise ValueError(
                "`detect_max_side` must be >= 48 (MTCNN's last network takes 48x48 patches). "
                f"Received: detect_max_side={detect_max_side!r}"
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
        self.max_request_bytes = int(_positive("max_request_mb", max_request_mb, float) * 2**20)
        self.max_image_pixels = int(max_image_pixels)
        self.max_instances = int(max_instances)
        self.max_request_pixels = int(max_request_pixels)
        self.max_queued_requests = int(max_queued_requests)
        self.read_timeout = _positive("read_timeout_s", read_timeout_s, float)
        self.request_timeout = _positive("request_timeout_s", request_timeout_s, float)
        self.decode_threads = int(decode_threads)
        self.detect_max_side = int(detect_max_side)
        self.small_image_pixels = int(small_image_pixels)
        timeout = _positive("batch_timeout_ms", batch_timeout_ms, float, strict=False)
        self.batcher = Batcher(self._run_batch, int(max_batch_size), timeout)
        # MTCNN on the small images of concurrent requests, in batches (5 times faster on
        # 256x256 frames of one shape than one by one); large images are found one by one
        self.detector = None
        if self.detect_faces:
            self.detector = Batcher(self._find_faces, self.predictor.cropper.batch_size, timeout)
        self.requests = 0  # predict requests answered 200
        self.pending = 0  # predict requests in progress
        self._small_pool = None
        self._large_pool = None
        self._first_requests = {}  # transport -> _HeaderDeadline, until its first request

    # -- the API's documents ------------------------------------------------------------------

    @property
    def output_names(self):
        return ("faces",) if self.detect_faces else self.heads

    def limits(self):
        limits = {
            "max_request_bytes": self.max_request_bytes,
            "max_image_pixels": self.max_image_pixels,
            "max_request_pixels": self.max_request_pixels,
            "max_instances": self.max_instances,
            "max_batch_size": self.batcher.max_batch_size,
            "max_queued_requests": self.max_queued_requests,
            "read_timeout_s": self.read_timeout,
            "request_timeout_s": self.request_timeout,
        }
        if self.detect_faces:
            limits["detect_max_side"] = self.detect_max_side
        return limits

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

    # -- reading a request (in a thread) ------------------------------------------------------

    def parse(self, body):
        """A :class:`ParsedRequest` from a predict request's body, its images ready for the
        model: resized to the model's input, or with ``detect_faces`` the image's `Faces` (crops
        at the model's size). :meth:`read_request`, then :meth:`prepare` on each image.

        Raises:
            RequestError: naming the field, the instance or the limit.
        """
        parsed = self.read_request(body)
        return parsed._replace(images=[self.prepare(item) for item in parsed.images])

    def read_request(self, body):
        """A :class:`ParsedRequest` from a predict request's body, its images not decoded yet
        (:class:`ImageInput`), every limit that the images' headers tell already checked: the
        instances, the pixels of each image and those of the whole request.

        Raises:
            RequestError: naming the field, the instance or the limit.
        """
        request = _json_body(body)
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
        sources, images, total = [], [], 0
        for i, value in enumerate(values):
            where = f"{field}[{i}]"
            if field in ("instances", "inputs"):  # not the named columnar form
                value = _unwrap(value, signature, where)
            item = self._input(value, signature, where)
            total += item.pixels
            if total > self.max_request_pixels:
                raise RequestError(
                    f"{where}: the images of the request add up to {total} pixels with this "
                    f"one ({item.width}x{item.height}); the limit is {self.max_request_pixels} "
                    "pixels in one request (--max-request-pixels)"
                )
            sources.append(where)
            images.append(item)
            values[i] = None  # the base64 text is not needed any more
        return ParsedRequest(columnar, signature, sources, images)

    def _input(self, value, signature, where):
        if signature == "serving_default":
            data = _b64_bytes(value, where)
            if not data:
                raise RequestError(f"{where}: empty bytes, not an image")
            try:
                size = _header_size(data, self.max_image_pixels)
            except ValueError as error:
                raise RequestError(
                    f"{where}: {error}; the limit is {self.max_image_pixels} pixels "
                    "(--max-image-pixels)"
                ) from None
            if size is None:
                raise RequestError(
                    f"{where}: the image's size cannot be read from its header: not a JPEG, "
                    "PNG, GIF, BMP or WebP image, or its header is cut short (an image is "
                    "decoded only once its header has told its size)"
                )
            height, width, frames = size
            self._check_pixels(height, width, where, frames)
            return ImageInput(where, data, None, height, width, frames)
        array = self._array(value, where)
        return ImageInput(where, None, array, int(array.shape[0]), int(array.shape[1]))

    def _check_pixels(self, height, width, where, frames=1):
        pixels = height * width * frames
        if pixels > self.max_image_pixels:
            size = f"{width}x{height}" + (f" in {frames} frames" if frames > 1 else "")
            raise RequestError(
                f"{where}: an image of {size} = {pixels} pixels; the limit is "
                f"{self.max_image_pixels} pixels (--max-image-pixels)"
            )

    def _array(self, value, where):
        if not isinstance(value, list):
            raise RequestError(
                f"{where}: signature 'images' takes a uint8 RGB array [height, width, 3] as "
                f"nested lists; received {_kind(value)}"
            )
        try:
            array = np.asarray(value)
        except (ValueError, TypeError, OverflowError, RecursionError):
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

    # -- one image, decoded and prepared for the model (in a thread) --------------------------

    def prepare(self, item):
        """An :class:`ImageInput` ready for the model: decoded, then resized to the model's input,
        or with ``detect_faces`` its `Faces` (boxes in the image's pixels, crops at the model's
        size); the full image is not kept.

        Raises:
            RequestError: the image cannot be decoded or is larger than its header said.
        """
        image = self._decoded(item)
        if self.detect_faces:
            return self._find_faces([image])[0]
        return np.asarray(resize_image(image, self.image_size))

    def _decoded(self, item):
        if item.data is None:
            return item.array
        return np.asarray(self._decode(item.data, item.source))

    def _decode(self, data, where):
        try:
            image = decode_image(data)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
            raise RequestError(
                f"{where}: cannot decode the image: {decode_error_reason(error)}"
            ) from None
        self._check_pixels(int(image.shape[0]), int(image.shape[1]), where)
        return image

    def _find_faces(self, images):
        """The `Faces` of images: MTCNN on them (in batches of one shape) downscaled to
        ``detect_max_side`` where larger, the boxes mapped back, the crops cut from the full
        images and resized to the model's."""
        cropper = self.predictor.cropper
        seen, factors = [], []
        for image in images:
            height, width = image.shape[:2]
            scale = self.detect_max_side / max(height, width)
            if scale < 1.0:
                size = (max(1, round(width * scale)), max(1, round(height * scale)))
                seen.append(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
                factors.append((width / size[0], height / size[1]))
            else:
                seen.append(image)
                factors.append(None)
        found = cropper.detect(seen)
        del seen
        detections = [d if f is None else _scaled(d, *f) for d, f in zip(found, factors)]
        results = []
        for faces in cropper.process(images, detections):
            crops = faces_module.crops_for_model(faces.crops, self.image_size)
            results.append(faces_module.Faces(faces.boxes, faces.scores, faces.landmarks, crops))
        return results

    # -- the model (in the model thread) ------------------------------------------------------

    def _run_batch(self, items):
        """One model call on a batch of prepared images (or of `Faces`): one result per item."""
        if self.detect_faces:
            return self._faces_batch(items)
        arrays = self.predictor.predict_crops(np.stack(items))
        results = []
        for i in range(len(items)):
            result = {}
            for head in self.heads:
                value = arrays[head][i]
                result[head] = [float(v) for v in value] if head == "expression" else float(value)
            results.append(result)
        return results

    def _faces_batch(self, found):
        counts = [len(faces) for faces in found]
        if not sum(counts):
            return [[] for _ in found]
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
        self._small_pool = _WorkPool(self.decode_threads, "serve-decode-small")
        self._large_pool = _WorkPool(self.decode_threads, "serve-decode-large")
        self.batcher.start()
        if self.detector is not None:
            self.detector.start()
        await asyncio.get_running_loop().run_in_executor(self.batcher.executor, self.warm_up)

    async def stop(self, app):
        """``on_cleanup``: stops the worker, fails what is still waiting, ends the pools."""
        await self.batcher.stop()
        if self.detector is not None:
            await self.detector.stop()
        for pool in (self._small_pool, self._large_pool):
            if pool is not None:
                pool.shutdown()

    def _check_model(self, name, version, label):
        if name != self.model_name:
            raise RequestError(
                f"Servable not found for request: Latest({name}); this server serves the model "
                f"{self.model_name!r}",
                status=404,
            )
        if label is not None:
            raise RequestError(
                f"Unrecognized servable version label: {label}; this server has no labels, ask "
                f"for /v1/models/{self.model_name} or /versions/{self.model_version}"
            )
        if version is not None and version != self.model_version:
            raise RequestError(
                f"Servable not found for request: Specific({name}, {version}); this server "
                f"serves version {self.model_version}",
                status=404,
            )

    async def handle_models(self, request):
        """``/v1/models/...``: status, metadata and predict, dispatched as TF Serving does."""
        web = _web()
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

    def _busy(self, what):
        return RequestError(
            f"{what}; retry in {RETRY_AFTER_S} s", status=503, headers=_retry_after()
        )

    async def _predict(self, request):
        if self.pending >= self.max_queued_requests:
            raise self._busy(
                f"The server is busy: {self.pending} predict requests in progress, the most it "
                f"takes at once (--max-queued-requests {self.max_queued_requests})"
            )
        self.pending += 1
        reading = [True]
        try:
            return await asyncio.wait_for(self._answer(request, reading), self.request_timeout)
        except asyncio.TimeoutError:
            if reading[0]:
                raise RequestError(
                    f"The request body did not arrive within {self.request_timeout:g} s "
                    "(--request-timeout-s)",
                    status=408,
                    close=True,
                ) from None
            raise self._busy(
                f"No answer within {self.request_timeout:g} s (--request-timeout-s): the server "
                "is busy or the request large (send fewer or smaller images)"
            ) from None
        finally:
            self.pending -= 1

    async def _read_body(self, request):
        limit = self.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise RequestError(
                f"The request body of {request.content_length} bytes is larger than the limit "
                f"of {limit} bytes (--max-request-mb)",
                status=413,
            )
        body = bytearray()  # one buffer: no second copy to join the parts
        while True:
            try:
                chunk = await asyncio.wait_for(request.content.readany(), self.read_timeout)
            except asyncio.TimeoutError:
                raise RequestError(
                    f"The request body stalled: nothing came for {self.read_timeout:g} s after "
                    f"{len(body)} bytes (--read-timeout-s)",
                    status=408,
                    close=True,
                ) from None
            if not chunk:
                return body
            if len(body) + len(chunk) > limit:
                raise RequestError(
                    f"The request body is larger than the limit of {limit} bytes "
                    "(--max-request-mb)",
                    status=413,
                )
            body += chunk

    async def _answer(self, request, reading):
        body = await self._read_body(request)
        reading[0] = False
        pool = self._small_pool if len(body) <= _SMALL_BODY_BYTES else self._large_pool
        parsed = await pool.run(len(body), self.read_request, body)
        del body
        results = [None] * len(parsed.images)
        remaining = sum(item.pixels for item in parsed.images)
        waiting = []
        try:
            # One image at a time, so that a request holds one decoded image at the most; the
            # request with the fewest pixels left goes first, so that small requests are not
            # held up by large ones and the started ones finish.
            for i, item in enumerate(parsed.images):
                parsed.images[i] = None  # nothing of an instance is kept once it is prepared
                pixels = item.pixels
                if pixels > self.small_image_pixels:  # decoded, its faces found, alone
                    prepared = await self._large_pool.run(remaining, self.prepare, item)
                elif self.detect_faces:  # decoded; its faces found in a batch of small images
                    image = await self._small_pool.run(remaining, self._decoded, item)
                    item = None
                    prepared = await self.detector.submit(image)
                    image = None
                else:
                    prepared = await self._small_pool.run(remaining, self.prepare, item)
                item = None
                remaining -= pixels
                if self.detect_faces and len(prepared) == 0:
                    results[i] = []
                else:
                    waiting.append((i, self.batcher.submit(prepared)))
            answers = await asyncio.gather(*(future for _, future in waiting))
        finally:
            for _, future in waiting:  # a request that failed or timed out: not run any more
                future.cancel()
        for (i, _), result in zip(waiting, answers):
            results[i] = result
        self.requests += 1
        return _web().json_response(self.answer(parsed, results))


class _WorkPool:
    """Threads that run the decoding work of requests, the smallest priority first (ties in
    the order of submission); `run` awaits one call from the event loop, and a call whose
    awaiting is cancelled before it starts never runs."""

    def __init__(self, threads, name):
        self._waiting = []
        self._order = itertools.count()
        self._condition = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(int(threads))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, priority, function, *args):
        """A ``concurrent.futures.Future`` of ``function(*args)``."""
        future = concurrent.futures.Future()
        with self._condition:
            if self._closed:
                raise RuntimeError("The server is stopping")
            heapq.heappush(self._waiting, (priority, next(self._order), future, function, args))
            self._condition.notify()
        return future

    async def run(self, priority, function, *args):
        return await asyncio.wrap_future(self.submit(priority, function, *args))

    def _work(self):
        while True:
            with self._condition:
                while not self._waiting and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                _, _, future, function, args = heapq.heappop(self._waiting)
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function(*args))
                except BaseException as error:
                    future.set_exception(error)
            del future, function, args  # nothing of the call is kept while waiting

    def shutdown(self):
        """Cancels what waits; the running calls end on their own."""
        with self._condition:
            self._closed = True
            for _, _, future, _, _ in self._waiting:
                future.cancel()
            self._waiting.clear()
            self._condition.notify_all()


# No integer of a request needs more digits (pixel values have 3): a longer one is refused
# before Python converts it (a 4300-digit one, Python's own limit, takes 0.1 ms; a body of them
# would hold the interpreter for as long as it takes to read).
MAX_INT_DIGITS = 20
_LONG_NUMBER = re.compile(rb"[0-9]{%d}" % (MAX_INT_DIGITS + 1))
_LONG_NUMBER_TEXT = re.compile(_LONG_NUMBER.pattern.decode())


def _short_int(text):
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise ValueError(
            f"an integer of {digits} digits; a request's integers have at most {MAX_INT_DIGITS}"
        )
    return int(text)


def _json_body(body):
    """The JSON document of a request body; :class:`RequestError` for anything not JSON or for
    an integer of more than :data:`MAX_INT_DIGITS` digits."""
    long_number = _LONG_NUMBER_TEXT if isinstance(body, str) else _LONG_NUMBER
    try:
        if long_number.search(body):  # a run of digits (in a string, or an integer): check
            return json.loads(body, parse_int=_short_int)
        return json.loads(body)
    except RecursionError:
        reason = "nested too deeply"
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, too many digits
        reason = str(error)
    # raised here, not in the handler: the error keeps no frame of the parser (its text)
    raise RequestError(f"The request body is not valid JSON: {reason}")


def _retry_after():
    return {"Retry-After": str(RETRY_AFTER_S)}


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


def _error(status, message, headers=None):
    return _web().json_response({"error": message}, status=status, headers=headers)


# -- batching -----------------------------------------------------------------------------------


class Batcher:
    """Gathers items submitted by concurrent requests into batches for one function.

    ``await batcher.submit(item)`` puts the item on an asyncio queue and waits for its result.
    One worker task takes the first waiting item, then more until ``max_batch_size`` or until
    ``batch_timeout_ms`` have passed, and runs ``function(items)`` (one result per item) in a
    one-thread executor, so the event loop goes on accepting requests meanwhile. When a call on
    several items raises, each item runs alone, so that only the items that make ``function``
    fail get its exception and the others their results. The queue holds what the requests in
    progress submitted (the server bounds those with ``max_queued_requests``); an item whose
    future is cancelled (its request failed or timed out) is not run.

    Attributes:
        batches: how many times ``function`` ran successfully (model calls).
        items: how many items went through it.
        largest_batch: the largest batch so far.
        failures: how many items made ``function`` raise when run alone.
    """

    def __init__(self, function, max_batch_size=32, batch_timeout_ms=5.0):
        self.function = function
        self.max_batch_size = int(max_batch_size)
        self.timeout = float(batch_timeout_ms) / 1000.0
        self.batches = 0
        self.items = 0
        self.largest_batch = 0
        self.failures = 0
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

    def _name(self):
        return getattr(self.function, "__qualname__", repr(self.function))

    def queued(self):
        """How many items wait for the model."""
        return 0 if self._queue is None else self._queue.qsize()

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

    def _call(self, items, release=False):
        results = list(self.function(items))
        if len(results) != len(items):
            raise RuntimeError(
                f"The model function answered {len(results)} results for {len(items)} items"
            )
        if release:  # the thread lets go of the items (decoded images) before it answers
            items.clear()
        return results

    def _one_by_one(self, items):
        """Each item alone: its result, or the exception it raised; and the calls that ran."""
        results, calls = [], 0
        for item in items:
            try:
                (result,) = self._call([item])
            except Exception as error:
                logger.exception("%s failed on one item", self._name())
                results.append(error)
            else:
                results.append(result)
                calls += 1
        return results, calls

    async def _work(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            items = [item for item, _ in batch]
            futures = [future for _, future in batch]
            batch = None
            try:
                results = await loop.run_in_executor(self.executor, self._call, items, True)
                calls = 1
            except Exception as error:
                if len(items) == 1:
                    logger.exception("%s failed on a batch of 1", self._name())
                    results, calls = [error], 0
                else:  # find the items that fail: the others get their answers
                    logger.warning(
                        "%s failed on a batch of %d (%s: %s); running its items one by one",
                        self._name(),
                        len(items),
                        type(error).__name__,
                        error,
                    )
                    results, calls = await loop.run_in_executor(
                        self.executor, self._one_by_one, items
                    )
            items = None
            succeeded = sum(not isinstance(result, Exception) for result in results)
            self.failures += len(results) - succeeded
            self.batches += calls
            self.items += succeeded
            if calls:
                self.largest_batch = max(self.largest_batch, succeeded // calls)
            for future, result in zip(futures, results):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
            # nothing of the batch is kept while the next one is awaited
            items = futures = results = result = None


# -- the app ------------------------------------------------------------------------------------


def _forget_frames(error):
    """Drops the frames an answered error holds (and those of the errors it came from): they
    hold the request's body and images, and an asyncio task in them makes a cycle that only
    the garbage collector would free, seconds later."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__cause__ or error.__context__


async def _json_errors(request, handler):
    """Every error as TF Serving's ``{"error": message}``: :class:`RequestError`'s status (400
    for a bad request), aiohttp's own (404, 405, 413) and 500 for anything else."""
    web = _web()
    # the headers of the connection's first request have come: its deadline is over
    deadline = request.app[_server_key()]._first_requests.pop(request.transport, None)
    if deadline is not None:
        deadline.cancel()
    try:
        return await handler(request)
    except RequestError as error:
        _forget_frames(error)
        response = _error(error.status, str(error), error.headers)
        if error.close:  # answer, then close at once: no waiting for the rest of the body
            response.force_close()
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()
        return response
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _error(error.status, f"{error.reason}: {request.method} {request.path}")
    except Exception as error:
        logger.exception("Internal error on %s %s", request.method, request.path)
        _forget_frames(error)
        return _error(500, f"Internal error: {type(error).__name__}: {error}")


async def _nosniff(request, response):
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def make_app(model, model_name, **options):
    """The aiohttp application serving ``model`` (run it with :class:`ServerThread` or
    ``python -m affectnet_tf.serve``, which also apply ``read_timeout_s`` to the headers of a
    connection's first request; ``aiohttp.web.run_app`` does not).

    Args:
        model: a prediction model of :func:`affectnet_tf.build_model`, e.g. from
            :func:`affectnet_tf.predict.load_run_model`.
        model_name: the name in ``/v1/models/<name>``.
        **options: the settings of :class:`ModelServer` (``detect_faces``, ``cropper``,
            ``max_batch_size``, ``batch_timeout_ms``, ``max_request_mb``, ``max_image_pixels``,
            ``max_request_pixels``, ``max_instances``, ``max_queued_requests``,
            ``read_timeout_s``, ``request_timeout_s``, ``decode_threads``, ``detect_max_side``,
            ``model_version``).

    Returns:
        ``aiohttp.web.Application``; ``app[serve.SERVER]`` is its :class:`ModelServer`.

    Raises:
        ImportError: aiohttp is not installed (the ``serve`` extra).

    Example:

    ```python
    from affectnet_tf import serve
    from affectnet_tf.predict import load_run_model

    app = serve.make_app(load_run_model("runs/exp"), "exp", detect_faces=True)
    with serve.ServerThread(app, port=0) as server:
        print(server.url)  # http://127.0.0.1:<port>
    ```
    """
    web = _web()
    server = ModelServer(model, model_name, **options)
    app = web.Application(
        client_max_size=server.max_request_bytes, middlewares=[web.middleware(_json_errors)]
    )
    app[_server_key()] = server
    page = PAGE.read_bytes()

    async def index(request):
        return web.Response(
            body=page,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Content-Security-Policy": PAGE_POLICY,
                "X-Frame-Options": "DENY",
                "Cache-Control": "no-cache",
            },
        )

    async def config(request):
        return web.json_response(server.page_config())

    app.router.add_get("/", index)
    app.router.add_get("/config.json", config)
    app.router.add_route("*", "/v1/models/{tail:.+}", server.handle_models)
    app.on_response_prepare.append(_nosniff)
    app.on_startup.append(server.start)
    app.on_cleanup.append(server.stop)
    return app


class _HeaderDeadline(asyncio.Protocol):
    """aiohttp's protocol of one connection, closed when its first request's headers have not
    all come within ``timeout`` seconds of the connection (aiohttp's keep-alive timeout covers
    the requests after the first; before 3.14 it did not cover the first)."""

    def __init__(self, inner, timeout, waiting):
        self._inner = inner
        self._timeout = timeout
        self._waiting = waiting
        self._handle = None
        self._transport = None

    def connection_made(self, transport):
        self._transport = transport
        self._waiting[transport] = self
        self._handle = asyncio.get_running_loop().call_later(self._timeout, self._expire)
        self._inner.connection_made(transport)

    def cancel(self):
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._waiting.pop(self._transport, None)

    def _expire(self):
        self._handle = None
        self._waiting.pop(self._transport, None)
        self._transport.close()

    def connection_lost(self, exc):
        self.cancel()
        self._inner.connection_lost(exc)

    def data_received(self, data):
        self._inner.data_received(data)

    def eof_received(self):
        return self._inner.eof_received()

    def pause_writing(self):
        self._inner.pause_writing()

    def resume_writing(self):
        self._inner.resume_writing()


async def _start_site(app, host, port):
    """Serves ``app`` on ``host:port``: ``(stop, url)``, ``await stop()`` to end it."""
    web = _web()
    server = app[_server_key()]
    runner = web.AppRunner(app, handler_cancellation=True, keepalive_timeout=server.read_timeout)
    await runner.setup()
    handlers = runner.server
    try:
        listener = await asyncio.get_running_loop().create_server(
            lambda: _HeaderDeadline(handlers(), server.read_timeout, server._first_requests),
            host,
            port,
        )
    except BaseException:
        await runner.cleanup()
        raise

    async def stop():
        listener.close()
        await runner.cleanup()

    bound = listener.sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return stop, f"http://{shown}:{bound}"


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
            stop, self.url = await _start_site(self.app, self.host, self.port)
        except BaseException as error:
            self._error = error
            self._ready.set()
            return
        self.port = int(self.url.rsplit(":", 1)[1])
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await stop()

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
    stop_site, url = await _start_site(app, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(number, stop.set)
    announce(url)
    try:
        await stop.wait()
    finally:
        await stop_site()


# -- the command line ---------------------------------------------------------------------------


def build_parser():
    """The parser of ``python -m affectnet_tf.serve`` (it needs neither aiohttp nor Pillow)."""
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.serve",
        description="An HTTP server speaking TF Serving's REST predict API, with a page at /.",
    )
    group = parser.add_argument_group("Model")
    group.add_argument("--model-dir", required=True, help="run folder holding model.keras")
    group.add_argument(
        "--model-name",
        default=None,
        help="the name in /v1/models/<name> (default: the run folder's name, spaces as _)",
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
    group.add_argument(
        "--detect-max-side",
        type=bounded_number(int, 48),
        default=1280,
        help="with --detect-faces, MTCNN runs on a larger image downscaled to this longer side; "
        "boxes are mapped back and crops cut from the full image (default: 1280)",
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
    group.add_argument(
        "--decode-threads",
        type=bounded_number(int, 1),
        default=2,
        help="threads that decode images and find faces, in each of two pools: images up to "
        f"{SMALL_IMAGE_PIXELS} pixels, and larger ones (default: 2)",
    )
    group = parser.add_argument_group("Limits")
    group.add_argument(
        "--max-request-mb",
        type=bounded_number(float, 0.0, strict=True),
        default=16.0,
        help="largest request body, in MiB; larger answers 413 (default: 16)",
    )
    group.add_argument(
        "--max-image-pixels",
        type=bounded_number(int, 1),
        default=40_000_000,
        help="largest image, height x width (x frames of a GIF), read from its header "
        "(default: 40000000)",
    )
    group.add_argument(
        "--max-request-pixels",
        type=bounded_number(int, 1),
        default=100_000_000,
        help="most pixels of all the images of one request, read from their headers before "
        "any is decoded (default: 100000000)",
    )
    group.add_argument(
        "--max-instances",
        type=bounded_number(int, 1),
        default=64,
        help="most instances in one request (default: 64)",
    )
    group.add_argument(
        "--max-queued-requests",
        type=bounded_number(int, 1),
        default=32,
        help="most predict requests in progress at once; more answer 503 with Retry-After "
        "(default: 32)",
    )
    group.add_argument(
        "--read-timeout-s",
        type=bounded_number(float, 0.0, strict=True),
        default=30.0,
        help="longest wait for a request's headers (the connection is closed) and between two "
        "parts of its body (408) (default: 30)",
    )
    group.add_argument(
        "--request-timeout-s",
        type=bounded_number(float, 0.0, strict=True),
        default=60.0,
        help="longest time from a request's headers to its answer: 408 while its body is still "
        "arriving, 503 with Retry-After after (default: 60)",
    )
    add_face_arguments(parser, "Faces (with --detect-faces)")
    return parser


def default_model_name(model_dir):
    """The model name of ``--model-dir`` without ``--model-name``: the run folder's name, its
    spaces, ``/`` and ``:`` (which a URL path segment of TF Serving's API cannot hold)
    replaced by ``_`` (``runs/faces cv`` serves as ``faces_cv``)."""
    path = os.path.abspath(os.fspath(model_dir))
    if os.path.isfile(path):
        path = os.path.dirname(path)
    return re.sub(r"[/:\s]+", "_", os.path.basename(path)) or "model"


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    _web()  # the `serve` extra: said before the model loads
    _pillow()
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
            args.model_name or default_model_name(args.model_dir),
            model_version=args.model_version,
            detect_faces=args.detect_faces,
            cropper=cropper,
            max_batch_size=args.max_batch_size,
            batch_timeout_ms=args.batch_timeout_ms,
            max_request_mb=args.max_request_mb,
            max_image_pixels=args.max_image_pixels,
            max_request_pixels=args.max_request_pixels,
            max_instances=args.max_instances,
            max_queued_requests=args.max_queued_requests,
            read_timeout_s=args.read_timeout_s,
            request_timeout_s=args.request_timeout_s,
            decode_threads=args.decode_threads,
            detect_max_side=args.detect_max_side,
        )
    except ValueError as error:
        parser.error(str(error))
    if args.access_log:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    server = app[_server_key()]

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
