"""The page at ``/``: upload a photo (or take one with the webcam) and see the faces boxed and
labelled, with the probabilities as bars.

The page is one file inside the package (:data:`PAGE`, ``static/index.html`` beside this module)
with its script and style inline, no external asset: it works offline, and its
Content-Security-Policy (:data:`PAGE_POLICY`) forbids any other origin and any framing. It asks
``GET /config.json`` (:meth:`affectnet_tf.deploy.serve.model_server.ModelServer.page_config`)
where to post, then sends the photo through the same predict API as any client.
"""

from pathlib import Path

__all__ = ["PAGE", "PAGE_POLICY", "PAGE_HEADERS", "add_page_routes"]

#: The page's file.
PAGE = Path(__file__).resolve().parent / "static" / "index.html"

#: What the page may load: itself, its inline script and style, images it makes, the webcam; and
#: no other site may frame it.
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' data: blob:; media-src 'self' blob: mediastream:; connect-src 'self'; "
    "frame-ancestors 'none'"
)

#: The headers the page is answered with.
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_POLICY,
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def add_page_routes(app, server, web):
    """Adds ``GET /`` (the page) and ``GET /config.json`` (what it needs to know) to an aiohttp
    application.

    Args:
        app: the ``aiohttp.web.Application``.
        server: its :class:`~affectnet_tf.deploy.serve.model_server.ModelServer`.
        web: the ``aiohttp.web`` module.
    """
    page = PAGE.read_bytes()

    async def index(request):
        """The page, with its policy."""
        return web.Response(
            body=page, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS
        )

    async def config(request):
        """What the page needs to know."""
        return web.json_response(server.page_config())

    app.router.add_get("/", index)
    app.router.add_get("/config.json", config)
