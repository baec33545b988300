"""TensorFlow Serving's REST predict protocol: reading a request, checking it, and the documents
the server answers (predictions, model status, metadata, errors).

The signatures mirror the SavedModel that :mod:`affectnet_tf.export` writes:

* ``serving_default``: input ``image_bytes``, a batch of encoded JPEG / PNG / GIF / BMP / WebP
  images, each sent as TF Serving encodes binary strings, ``{"b64": "<base64>"}``;
* ``images``: input ``images``, ``uint8`` RGB arrays ``[height, width, 3]`` (nested lists of
  integers 0..255; any size, one size per instance).

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
``{"outputs": [[p0, ...], ...]}``; with face detection an instance's answer is
``{"faces": [record, ...]}``.

Every bad input raises :class:`RequestError`, naming the instance, the field or the limit; the
server answers it with TF Serving's error shape ``{"error": "..."}``. Each image's size is read
from its header (:mod:`affectnet_tf.deploy.serve.image_headers`) and checked against the pixel
limits before anything is decoded.
"""

import base64
import binascii
import json
import re
from typing import NamedTuple

import numpy as np

from affectnet_tf.deploy.serve.image_headers import header_size

__all__ = [
    "SIGNATURES",
    "MAX_INT_DIGITS",
    "RETRY_AFTER_S",
    "MODEL_PATH",
    "RequestError",
    "RequestLimits",
    "ParsedRequest",
    "ImageInput",
    "json_body",
    "read_request",
    "check_pixels",
    "busy_error",
    "status_document",
    "metadata_document",
    "answer_document",
    "tensor_info",
]

#: signature name -> (input name, dtype, shape) of the SavedModel of :mod:`affectnet_tf.export`.
SIGNATURES = {
    "serving_default": ("image_bytes", "DT_STRING", (-1,)),
    "images": ("images", "DT_UINT8", (-1, -1, -1, 3)),
}

#: No integer of a request needs more digits (pixel values have 3): a longer one is refused
#: before Python converts it (a 4300-digit one, Python's own limit, takes 0.1 ms; a body of them
#: would hold the interpreter for as long as it takes to read).
MAX_INT_DIGITS = 20
_LONG_NUMBER = re.compile(rb"[0-9]{%d}" % (MAX_INT_DIGITS + 1))
_LONG_NUMBER_TEXT = re.compile(_LONG_NUMBER.pattern.decode())

#: The ``Retry-After`` of a 503 answer, in seconds.
RETRY_AFTER_S = 1

#: The part of a path after ``/v1/models/``: the name, a version or a label, and ``:predict``
#: (or another verb) or ``/metadata``.
MODEL_PATH = re.compile(
    r"^(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<tail>:[A-Za-z]+|/metadata)?$"
)


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


def busy_error(what):
    """The 503 :class:`RequestError` of a busy server, with its ``Retry-After`` header."""
    return RequestError(
        f"{what}; retry in {RETRY_AFTER_S} s",
        status=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


class RequestLimits(NamedTuple):
    """The limits a request is checked against before any image is decoded."""

    max_instances: int
    max_image_pixels: int
    max_request_pixels: int


class ParsedRequest(NamedTuple):
    """A predict request, read: ``columnar`` (``inputs``) or row (``instances``) format, the
    signature, where each instance came from (``instances[2]``) and its image: from
    :func:`read_request` an :class:`ImageInput` (not decoded yet), once prepared the image
    ready for the model."""

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
        """Height x width x frames: what decoding it costs."""
        return self.height * self.width * self.frames


# -- the JSON body ------------------------------------------------------------------------------


def _short_int(text):
    """``int(text)`` for at most :data:`MAX_INT_DIGITS` digits (``json.loads``' ``parse_int``)."""
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise ValueError(
            f"an integer of {digits} digits; a request's integers have at most {MAX_INT_DIGITS}"
        )
    return int(text)


def json_body(body):
    """The JSON document of a request body.

    Raises:
        RequestError: anything not JSON, or an integer of more than :data:`MAX_INT_DIGITS`
            digits; the error keeps no frame of the parser.
    """
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


def _kind(value):
    """What a JSON value is, in words, for the error messages."""
    if isinstance(value, dict):
        return "an object with keys " + ", ".join(repr(k) for k in value) if value else "{}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a plain string"
    return f"a JSON {type(value).__name__}"


# -- the request's fields -----------------------------------------------------------------------


def _request_object(body):
    """The request's JSON object, its keys checked: ``signature_name`` (optional) and exactly
    one of ``instances`` and ``inputs``."""
    request = json_body(body)
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
    return request


def _signature_name(request):
    """The request's ``signature_name``, checked; ``None`` without one."""
    signature = request.get("signature_name") or None
    if signature is not None and (not isinstance(signature, str) or signature not in SIGNATURES):
        raise RequestError(
            f"Serving signature name: {signature!r} not found in signature def; signatures: "
            + ", ".join(f"{s!r} (input {spec[0]!r})" for s, spec in SIGNATURES.items())
        )
    return signature


def _named_inputs(values, signature):
    """The columnar form ``{"inputs": {"<input>": [...]}}``: ``(values, signature, field)``."""
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
    return values, inferred, f"inputs.{name}"


def _check_batch(values, field, max_instances):
    """The batch is a list of 1 to ``max_instances`` instances."""
    if not isinstance(values, list):
        raise RequestError(f"{field}: expected a list (the batch); received {_kind(values)}")
    if not values:
        raise RequestError(f"{field}: an empty list, nothing to predict")
    if len(values) > max_instances:
        raise RequestError(
            f"{field}: {len(values)} instances; this server takes at most "
            f"{max_instances} instances in one request (--max-instances)"
        )


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


def read_request(body, limits):
    """A :class:`ParsedRequest` from a predict request's body, its images not decoded yet
    (:class:`ImageInput`), every limit that the images' headers tell already checked: the
    instances, the pixels of each image and those of the whole request.

    Args:
        body: the request's body (bytes or text).
        limits: the :class:`RequestLimits` to check.

    Raises:
        RequestError: naming the field, the instance or the limit.
    """
    request = _request_object(body)
    columnar = "inputs" in request
    field = "inputs" if columnar else "instances"
    signature = _signature_name(request)
    values = request[field]
    if columnar and isinstance(values, dict) and "b64" not in values:
        values, signature, field = _named_inputs(values, signature)
    _check_batch(values, field, limits.max_instances)
    signature = signature or _signature_of(values[0])
    sources, images, total = [], [], 0
    for i, value in enumerate(values):
        where = f"{field}[{i}]"
        if field in ("instances", "inputs"):  # not the named columnar form
            value = _unwrap(value, signature, where)
        item = _image_input(value, signature, where, limits.max_image_pixels)
        total += item.pixels
        if total > limits.max_request_pixels:
            raise RequestError(
                f"{where}: the images of the request add up to {total} pixels with this "
                f"one ({item.width}x{item.height}); the limit is {limits.max_request_pixels} "
                "pixels in one request (--max-request-pixels)"
            )
        sources.append(where)
        images.append(item)
        values[i] = None  # the base64 text is not needed any more
    return ParsedRequest(columnar, signature, sources, images)


# -- one instance -------------------------------------------------------------------------------


def check_pixels(height, width, where, max_image_pixels, frames=1):
    """Raises :class:`RequestError` when an image of ``height`` x ``width`` (x ``frames``) is
    over ``max_image_pixels``."""
    pixels = height * width * frames
    if pixels > max_image_pixels:
        size = f"{width}x{height}" + (f" in {frames} frames" if frames > 1 else "")
        raise RequestError(
            f"{where}: an image of {size} = {pixels} pixels; the limit is "
            f"{max_image_pixels} pixels (--max-image-pixels)"
        )


def _b64_bytes(value, where):
    """The bytes of TF Serving's ``{"b64": "<base64>"}``."""
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


def _image_input(value, signature, where, max_image_pixels):
    """The :class:`ImageInput` of one instance, its size from its header (or its array)."""
    if signature != "serving_default":
        array = _array(value, where, max_image_pixels)
        return ImageInput(where, None, array, int(array.shape[0]), int(array.shape[1]))
    data = _b64_bytes(value, where)
    if not data:
        raise RequestError(f"{where}: empty bytes, not an image")
    try:
        size = header_size(data, max_image_pixels)
    except ValueError as error:
        raise RequestError(
            f"{where}: {error}; the limit is {max_image_pixels} pixels (--max-image-pixels)"
        ) from None
    if size is None:
        raise RequestError(
            f"{where}: the image's size cannot be read from its header: not a JPEG, "
            "PNG, GIF, BMP or WebP image, or its header is cut short (an image is "
            "decoded only once its header has told its size)"
        )
    height, width, frames = size
    check_pixels(height, width, where, max_image_pixels, frames)
    return ImageInput(where, data, None, height, width, frames)


def _array(value, where, max_image_pixels):
    """The uint8 RGB array of an instance of signature ``images``, checked."""
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
    check_pixels(array.shape[0], array.shape[1], where, max_image_pixels)
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


# -- the documents answered ---------------------------------------------------------------------


def tensor_info(dtype, shape, name):
    """TF Serving's ``TensorInfo`` of a signature's input or output."""
    return {
        "dtype": dtype,
        "tensor_shape": {
            "dim": [{"size": str(size), "name": ""} for size in shape],
            "unknown_rank": False,
        },
        "name": name,
    }


def status_document(version):
    """TF Serving's model status document of a model that is ``AVAILABLE`` at ``version``."""
    return {
        "model_version_status": [
            {
                "version": str(version),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def _outputs_def(heads, num_classes, detect_faces):
    """The outputs of every signature: the model's heads, or ``faces`` (one JSON document per
    instance, not a tensor)."""
    if detect_faces:
        specs = {"faces": ("DT_STRING", (-1,))}
    else:
        shapes = {"expression": (-1, num_classes), "valence": (-1,), "arousal": (-1,)}
        specs = {head: ("DT_FLOAT", shapes[head]) for head in heads}
    return {
        name: tensor_info(dtype, shape, f"StatefulPartitionedCall:{i}")
        for i, (name, (dtype, shape)) in enumerate(sorted(specs.items()))
    }


def metadata_document(name, version, heads, num_classes, detect_faces, extra):
    """TF Serving's metadata document (``model_spec``, the signatures), plus ``extra`` (the
    model's own metadata) under ``affectnet_tf``."""
    outputs = _outputs_def(heads, num_classes, detect_faces)
    signatures = {
        signature: {
            "inputs": {input_name: tensor_info(dtype, shape, f"{signature}_{input_name}:0")},
            "outputs": outputs,
            "method_name": "tensorflow/serving/predict",
            "defaults": {},
        }
        for signature, (input_name, dtype, shape) in SIGNATURES.items()
    }
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(version)},
        "metadata": {"signature_def": {"signature_def": signatures}},
        "affectnet_tf": extra,
    }


def answer_document(parsed, results, output_names, detect_faces):
    """TF Serving's answer to a request: ``predictions`` (row) or ``outputs`` (columnar).

    Args:
        parsed: the request's :class:`ParsedRequest`.
        results: one per instance: ``{head: value}``, or with ``detect_faces`` its records.
        output_names: the outputs (the heads, or ``("faces",)``).
        detect_faces: each result is the list of an image's face records.
    """
    if detect_faces:
        results = [
            {"faces": [dict(record, source=source) for record in records]}
            for source, records in zip(parsed.sources, results)
        ]
    bare = len(output_names) == 1 and not detect_faces
    if not parsed.columnar:
        if bare:
            return {"predictions": [result[output_names[0]] for result in results]}
        return {"predictions": results}
    outputs = {name: [result[name] for result in results] for name in output_names}
    if bare:
        return {"outputs": outputs[output_names[0]]}
    return {"outputs": outputs}
