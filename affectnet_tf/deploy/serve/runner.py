"""Running an application of :func:`~affectnet_tf.deploy.serve.app.make_app`: listening on a
port with a deadline on the headers of each connection's first request, in a background thread
(:class:`ServerThread`, for tests and notebooks) or until a signal (:func:`serve_forever`, what
``python -m affectnet_tf.serve`` runs).

A connection must send its first request's headers within the server's ``read_timeout_s`` (it is
closed otherwise; later requests and idle keep-alive connections get as long, through aiohttp's
keep-alive timeout).
"""

import asyncio
import contextlib
import logging
import signal
import threading

from affectnet_tf.deploy.serve.app import aiohttp_web, server_key

__all__ = ["DEFAULT_PORT", "HeaderDeadline", "start_site", "ServerThread", "serve_forever"]

DEFAULT_PORT = 8501  # TF Serving's REST port

logger = logging.getLogger(__name__)


class HeaderDeadline(asyncio.Protocol):
    """aiohttp's protocol of one connection, closed when its first request's headers have not
    all come within ``timeout`` seconds of the connection (aiohttp's keep-alive timeout covers
    the requests after the first; before 3.14 it did not cover the first)."""

    def __init__(self, inner, timeout, waiting):
        """``inner``: aiohttp's protocol; ``waiting``: the server's ``{transport: deadline}``
        of the connections whose first request has not come yet."""
        self._inner = inner
        self._timeout = timeout
        self._waiting = waiting
        self._handle = None
        self._transport = None

    def connection_made(self, transport):
        """Starts the deadline of the connection's first request."""
        self._transport = transport
        self._waiting[transport] = self
        self._handle = asyncio.get_running_loop().call_later(self._timeout, self._expire)
        self._inner.connection_made(transport)

    def cancel(self):
        """Ends the deadline: the first request's headers have come (or the connection
        is lost)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._waiting.pop(self._transport, None)

    def _expire(self):
        """The deadline passed: the connection is closed."""
        self._handle = None
        self._waiting.pop(self._transport, None)
        self._transport.close()

    def connection_lost(self, exc):
        """Ends the deadline and tells aiohttp's protocol."""
        self.cancel()
        self._inner.connection_lost(exc)

    def data_received(self, data):
        """Passed on to aiohttp's protocol (as the three methods below)."""
        self._inner.data_received(data)

    def eof_received(self):
        return self._inner.eof_received()

    def pause_writing(self):
        self._inner.pause_writing()

    def resume_writing(self):
        self._inner.resume_writing()


async def start_site(app, host, port):
    """Serves ``app`` on ``host:port``: ``(stop, url)``, ``await stop()`` to end it."""
    web = aiohttp_web()
    server = app[server_key()]
    runner = web.AppRunner(app, handler_cancellation=True, keepalive_timeout=server.read_timeout)
    await runner.setup()
    handlers = runner.server
    try:
        listener = await asyncio.get_running_loop().create_server(
            lambda: HeaderDeadline(handlers(), server.read_timeout, server.first_requests),
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
        app: an application of :func:`~affectnet_tf.deploy.serve.app.make_app`.
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
        """The thread: its own event loop, until :meth:`stop`."""
        asyncio.run(self._main())

    async def _main(self):
        """Listens, says it is ready (or the error that stopped it), waits for the stop."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            stop, self.url = await start_site(self.app, self.host, self.port)
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


async def serve_forever(app, host, port, announce):
    """Serves ``app`` on ``host:port`` until SIGINT or SIGTERM; ``announce(url)`` is called
    once it listens.

    Raises:
        OSError: ``host:port`` cannot be listened on.
    """
    stop_site, url = await start_site(app, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(number, stop.set)
    announce(url)
    try:
        await stop.wait()
        logger.info("Stopping the server")
    finally:
        await stop_site()
