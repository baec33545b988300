"""The aiohttp application: TF Serving's REST endpoints, the page, the errors' shape, the body
and time limits of a predict request.

Endpoints:

* ``POST /v1/models/<name>[/versions/<v>]:predict``: predictions
  (:mod:`affectnet_tf.deploy.serve.protocol`).
* ``GET /v1/models/<name>[/versions/<v>]``: the model status, as TF Serving:
  ``{"model_version_status": [{"version": "1", "state": "AVAILABLE", "status":
  {"error_code": "OK", "error_message": ""}}]}``.
* ``GET /v1/models/<name>[/versions/<v>]/metadata``: TF Serving's ``{"model_spec": ...,
  "metadata": {"signature_def": {"signature_def": {...}}}}``, plus an ``affectnet_tf`` key
  with the model's own metadata, ``detect_faces`` and the server's ``limits``.
* ``GET /`` and ``GET /config.json``: the page (:mod:`affectnet_tf.deploy.serve.page`).

Limits of a request: the body (``max_request_mb``: larger answers 413); the predict requests in
progress at once (``max_queued_requests``: more answer 503 with a ``Retry-After`` header); a
body may stall no longer than ``read_timeout_s`` (408), and a request must be answered within
``request_timeout_s`` of its headers (408 while its body is still arriving, 503 with
``Retry-After`` after). The pixel limits are read from the images' headers
(:func:`affectnet_tf.deploy.serve.protocol.read_request`).

Every bad input answers HTTP 400, an unknown model name or version 404 (as TF Serving), each
with TF Serving's error shape ``{"error": "..."}``, and the server goes on serving. Every answer
carries ``X-Content-Type-Options: nosniff``. aiohttp (the ``serve`` extra) is imported where the
application is made, so that the module imports without it.
"""

import asyncio
import logging

from affectnet_tf.deploy.serve.model_server import ModelServer
from affectnet_tf.deploy.serve.page import add_page_routes
from affectnet_tf.deploy.serve.protocol import MODEL_PATH, RequestError, busy_error

__all__ = [
    "SERVER",  # noqa: F822 (made on first use by the module's __getattr__)
    "aiohttp_web",
    "server_key",
    "make_app",
    "forget_frames",
]

logger = logging.getLogger(__name__)

_APP_KEY = []  # the aiohttp AppKey of SERVER, made on first use


def aiohttp_web():
    """``aiohttp.web``, imported where the server needs it (the ``serve`` extra), so that the
    package and the command's parser import without it (the documentation's flag tables).

    Raises:
        ImportError: aiohttp is not installed, naming the extra that installs it.
    """
    try:
        from aiohttp import web
    except ImportError as error:
        raise ImportError(
            "The server needs aiohttp, which the package's `serve` extra installs: "
            f"pip install 'affectnet-tf[serve]' ({error})"
        ) from error
    return web


def server_key():
    """The ``aiohttp.web.AppKey`` under which an application of :func:`make_app` holds its
    :class:`~affectnet_tf.deploy.serve.model_server.ModelServer` (also ``SERVER``)."""
    if not _APP_KEY:
        _APP_KEY.append(aiohttp_web().AppKey("affectnet_tf_server", ModelServer))
    return _APP_KEY[0]


def __getattr__(name):
    # SERVER is an aiohttp.web.AppKey: made when it is first asked for, so that importing this
    # module does not need aiohttp.
    if name == "SERVER":
        return server_key()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _error(status, message, headers=None):
    """TF Serving's error answer, ``{"error": message}``."""
    return aiohttp_web().json_response({"error": message}, status=status, headers=headers)


def forget_frames(error):
    """Drops the frames an answered error holds (and those of the errors it came from): they
    hold the request's body and images, and an asyncio task in them makes a cycle that only
    the garbage collector would free, seconds later."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__cause__ or error.__context__


async def _closing_answer(request, response):
    """Sends ``response`` and closes the connection at once: no waiting for the rest of the
    body (a stalled or too slow one)."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


async def _json_errors(request, handler):
    """Every error as TF Serving's ``{"error": message}``: :class:`RequestError`'s status (400
    for a bad request), aiohttp's own (404, 405, 413) and 500 for anything else."""
    web = aiohttp_web()
    # the headers of the connection's first request have come: its deadline is over
    deadline = request.app[server_key()].first_requests.pop(request.transport, None)
    if deadline is not None:
        deadline.cancel()
    try:
        return await handler(request)
    except RequestError as error:
        forget_frames(error)
        response = _error(error.status, str(error), error.headers)
        if error.close:
            return await _closing_answer(request, response)
        return response
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _error(error.status, f"{error.reason}: {request.method} {request.path}")
    except Exception as error:
        logger.exception("Internal error on %s %s", request.method, request.path)
        forget_frames(error)
        return _error(500, f"Internal error: {type(error).__name__}: {error}")


async def _nosniff(request, response):
    """``on_response_prepare``: every answer says ``X-Content-Type-Options: nosniff``."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


async def _models(request):
    """``/v1/models/...``: status, metadata and predict, dispatched as TF Serving does."""
    server = request.app[server_key()]
    match = MODEL_PATH.match(request.match_info["tail"])
    malformed = f"Malformed request: {request.method} {request.path}"
    if match is None:
        return _error(404, malformed)
    tail = match.group("tail")
    if request.method == "POST" and tail is not None and tail.startswith(":"):
        server.check_model(match.group("name"), match.group("version"), match.group("label"))
        if tail != ":predict":
            raise RequestError(
                f"{tail[1:]!r} is not served here: this server answers ':predict' only"
            )
        return await _predict(server, request)
    if request.method == "GET" and (tail is None or tail == "/metadata"):
        server.check_model(match.group("name"), match.group("version"), match.group("label"))
        document = server.status() if tail is None else server.metadata_document()
        return aiohttp_web().json_response(document)
    return _error(404, malformed)


async def _predict(server, request):
    """A predict request within the server's limits: at most ``max_queued_requests`` at once,
    each answered within ``request_timeout``."""
    if server.pending >= server.max_queued_requests:
        raise busy_error(
            f"The server is busy: {server.pending} predict requests in progress, the most it "
            f"takes at once (--max-queued-requests {server.max_queued_requests})"
        )
    server.pending += 1
    reading = [True]
    try:
        answer = _answer(server, request, reading)
        return await asyncio.wait_for(answer, server.request_timeout)
    except asyncio.TimeoutError:
        if reading[0]:
            raise RequestError(
                f"The request body did not arrive within {server.request_timeout:g} s "
                "(--request-timeout-s)",
                status=408,
                close=True,
            ) from None
        raise busy_error(
            f"No answer within {server.request_timeout:g} s (--request-timeout-s): the server "
            "is busy or the request large (send fewer or smaller images)"
        ) from None
    finally:
        server.pending -= 1


async def _answer(server, request, reading):
    """The body read (``reading[0]`` is false once it has come), then its answer."""
    body = await _read_body(server, request)
    reading[0] = False
    return aiohttp_web().json_response(await server.predict(body))


async def _read_body(server, request):
    """The request's body, read within ``max_request_bytes`` (413 beyond) and without a stall
    of more than ``read_timeout`` (408)."""
    limit = server.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(
            f"The request body of {request.content_length} bytes is larger than the limit "
            f"of {limit} bytes (--max-request-mb)",
            status=413,
        )
    body = bytearray()  # one buffer: no second copy to join the parts
    while True:
        try:
            chunk = await asyncio.wait_for(request.content.readany(), server.read_timeout)
        except asyncio.TimeoutError:
            raise RequestError(
                f"The request body stalled: nothing came for {server.read_timeout:g} s after "
                f"{len(body)} bytes (--read-timeout-s)",
                status=408,
                close=True,
            ) from None
        if not chunk:
            return body
        if len(body) + len(chunk) > limit:
            raise RequestError(
                f"The request body is larger than the limit of {limit} bytes (--max-request-mb)",
                status=413,
            )
        body += chunk


def make_app(model, model_name, **options):
    """The aiohttp application serving ``model`` (run it with
    :class:`~affectnet_tf.deploy.serve.runner.ServerThread` or ``python -m affectnet_tf.serve``,
    which also apply ``read_timeout_s`` to the headers of a connection's first request;
    ``aiohttp.web.run_app`` does not).

    Args:
        model: a prediction model of :func:`affectnet_tf.build_model`, e.g. from
            :func:`affectnet_tf.inference.predictor.load_run_model`.
        model_name: the name in ``/v1/models/<name>``.
        **options: the settings of
            :class:`~affectnet_tf.deploy.serve.model_server.ModelServer` (``detect_faces``,
            ``cropper``, ``max_batch_size``, ``batch_timeout_ms``, ``max_request_mb``,
            ``max_image_pixels``, ``max_request_pixels``, ``max_instances``,
            ``max_queued_requests``, ``read_timeout_s``, ``request_timeout_s``,
            ``decode_threads``, ``detect_max_side``, ``model_version``).

    Returns:
        ``aiohttp.web.Application``; ``app[serve.SERVER]`` is its ``ModelServer``.

    Raises:
        ImportError: aiohttp is not installed (the ``serve`` extra).
        ValueError: a setting out of its range.

    Example:

    ```python
    from affectnet_tf.deploy import serve
    from affectnet_tf.inference.predictor import load_run_model

    app = serve.make_app(load_run_model("runs/exp"), "exp", detect_faces=True)
    with serve.ServerThread(app, port=0) as server:
        print(server.url)  # http://127.0.0.1:<port>
    ```
    """
    web = aiohttp_web()
    server = ModelServer(model, model_name, **options)
    app = web.Application(
        client_max_size=server.max_request_bytes, middlewares=[web.middleware(_json_errors)]
    )
    app[server_key()] = server
    add_page_routes(app, server, web)
    app.router.add_route("*", "/v1/models/{tail:.+}", _models)
    app.on_response_prepare.append(_nosniff)
    app.on_startup.append(server.start)
    app.on_cleanup.append(server.stop)
    return app
