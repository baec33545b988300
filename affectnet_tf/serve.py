"""The prediction server: ``python -m affectnet_tf.serve``, TF Serving's REST API and a page.

```bash
python -m affectnet_tf.serve --model-dir runs/exp [--port 8501] [--detect-faces]
```

Loads the run's model and serves it (:mod:`affectnet_tf.deploy.serve`, built on aiohttp) until
Ctrl+C or SIGTERM: ``POST /v1/models/<name>[/versions/<v>]:predict`` answers predictions in
TensorFlow Serving's formats (:mod:`affectnet_tf.deploy.serve.protocol`), ``GET
/v1/models/<name>`` and ``.../metadata`` the model's status and metadata, ``GET /`` a page to
upload a photo (or take one with the webcam) and see the faces boxed and labelled
(:mod:`affectnet_tf.deploy.serve.page`). The model's name is the run folder's name unless
``--model-name`` says otherwise; its version is ``--model-version`` (1). With
``--detect-faces`` an instance's answer is the list of its faces' records, as ``python -m
affectnet_tf.predict`` writes them.

It prints one line with its address on the standard output once it listens; its status lines
go to the standard error (``--quiet``: warnings only; ``--access-log``: a line per request).
Every limit has its flag (docs/serving.md has the defaults): the request body, the pixels of an
image and of a request (read from the images' headers before anything is decoded), the
instances of a request, the requests in progress at once, and the time a request may take.
"""

import argparse
import asyncio
import functools
import logging
import sys

from affectnet_tf.deploy.serve.app import aiohttp_web, make_app, server_key
from affectnet_tf.deploy.serve.decoding import SMALL_IMAGE_PIXELS
from affectnet_tf.deploy.serve.image_headers import pil_image
from affectnet_tf.deploy.serve.model_server import default_model_name
from affectnet_tf.deploy.serve.runner import DEFAULT_PORT, serve_forever
from affectnet_tf.inference.options import add_face_arguments, bounded_number, face_cropper
from affectnet_tf.inference.predictor import load_run_model
from affectnet_tf.progress import add_verbosity_flags, configure_logging

__all__ = ["build_parser", "main"]

# by name: run as `python -m affectnet_tf.serve`, __name__ is "__main__", outside the package's
# logger that --verbose / --quiet configure
logger = logging.getLogger("affectnet_tf.serve")

# the ModelServer settings that a flag of the same name sets
_SERVER_SETTINGS = (
    "model_version",
    "detect_faces",
    "max_batch_size",
    "batch_timeout_ms",
    "max_request_mb",
    "max_image_pixels",
    "max_request_pixels",
    "max_instances",
    "max_queued_requests",
    "read_timeout_s",
    "request_timeout_s",
    "decode_threads",
    "detect_max_side",
)


def _add_model_arguments(parser):
    """The Model group: the run, its name and version, face detection."""
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


def _add_server_arguments(parser):
    """The Server group: where it listens, and its request log."""
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
    add_verbosity_flags(group)


def _add_batching_arguments(parser):
    """The Batching group: model batches and decoding threads."""
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


def _add_size_limits(group):
    """The limits on what a request may hold: its body, its images' pixels, its instances."""
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


def _add_load_limits(group):
    """The limits on the server's load: requests at once, and the time each may take."""
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


def build_parser():
    """The parser of ``python -m affectnet_tf.serve`` (it needs neither aiohttp nor Pillow)."""
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.serve",
        description="An HTTP server speaking TF Serving's REST predict API, with a page at /.",
    )
    _add_model_arguments(parser)
    _add_server_arguments(parser)
    _add_batching_arguments(parser)
    limits = parser.add_argument_group("Limits")
    _add_size_limits(limits)
    _add_load_limits(limits)
    add_face_arguments(parser, "Faces (with --detect-faces)")
    return parser


def _announce(server, url):
    """The line the command prints once it listens: the page's and the predict API's URLs."""
    what = ", ".join(server.heads) + (" of every face" if server.detect_faces else "")
    print(
        f"Serving {server.model_name!r} ({what}): the page at {url}/, "
        f"predictions at POST {url}/v1/models/{server.model_name}:predict (Ctrl+C stops)",
        flush=True,
    )


def main(argv=None):
    """Runs ``python -m affectnet_tf.serve`` with ``argv`` (default: the command line) until
    SIGINT or SIGTERM; returns 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args)
    aiohttp_web()  # the `serve` extra: said before the model loads
    pil_image()
    logger.info("Loading the model of %s", args.model_dir)
    try:
        model = load_run_model(args.model_dir)
    except FileNotFoundError as error:
        parser.error(str(error))
    options = {name: getattr(args, name) for name in _SERVER_SETTINGS}
    cropper = face_cropper(args) if args.detect_faces else None
    try:
        name = args.model_name or default_model_name(args.model_dir)
        app = make_app(model, name, cropper=cropper, **options)
    except ValueError as error:
        parser.error(str(error))
    if args.access_log:  # aiohttp's access log, through the root logger
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    announce = functools.partial(_announce, app[server_key()])
    try:
        asyncio.run(serve_forever(app, args.host, args.port, announce))
    except OSError as error:
        raise SystemExit(f"Cannot listen on {args.host}:{args.port}: {error}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
