"""The prediction server of ``python -m affectnet_tf.serve``: TF Serving's REST API and a page.

An HTTP server built on aiohttp (an asyncio server: request size limits, one event loop that
gathers concurrent requests into one model batch) that speaks TensorFlow Serving's REST predict
API, so that a client written for TF Serving works unchanged against it, and against the
SavedModel of :mod:`affectnet_tf.export` once that moves to TF Serving.

Its modules, one concept each:

* :mod:`~affectnet_tf.deploy.serve.protocol`: TF Serving's requests and answers, read and
  checked (signatures, formats, error messages, the pixel budget of a request);
* :mod:`~affectnet_tf.deploy.serve.image_headers`: an image's size from its header, before
  anything is decoded;
* :mod:`~affectnet_tf.deploy.serve.decoding`: the decoding thread pools, and each image made
  ready for the model (resized, or its faces cropped);
* :mod:`~affectnet_tf.deploy.serve.batcher`: the images of concurrent requests gathered into
  one model call;
* :mod:`~affectnet_tf.deploy.serve.model_server`: the model, its name, version and limits, and a
  request's way to its answer;
* :mod:`~affectnet_tf.deploy.serve.app`: the aiohttp application, its routes and errors;
* :mod:`~affectnet_tf.deploy.serve.page`: the page at ``/``;
* :mod:`~affectnet_tf.deploy.serve.runner`: listening, in a thread or until a signal.

aiohttp and Pillow (the ``serve`` extra) are imported on first use: the package imports without
them. The public names of the modules are importable from the package.

Example:

```python
from affectnet_tf.deploy import serve
from affectnet_tf.inference.predictor import load_run_model

app = serve.make_app(load_run_model("runs/exp"), "exp")
with serve.ServerThread(app, port=0) as server:
    print(server.url)  # http://127.0.0.1:<port>
```
"""

from affectnet_tf.deploy.serve.app import forget_frames, make_app, server_key
from affectnet_tf.deploy.serve.batcher import Batcher
from affectnet_tf.deploy.serve.decoding import SMALL_IMAGE_PIXELS, ImagePreparer, WorkPool
from affectnet_tf.deploy.serve.image_headers import SERVED_FORMATS, image_dimensions
from affectnet_tf.deploy.serve.model_server import ModelServer, default_model_name
from affectnet_tf.deploy.serve.protocol import (
    RETRY_AFTER_S,
    SIGNATURES,
    ImageInput,
    ParsedRequest,
    RequestError,
)
from affectnet_tf.deploy.serve.runner import DEFAULT_PORT, ServerThread, serve_forever

__all__ = [
    "DEFAULT_PORT",
    "SIGNATURES",
    "SERVED_FORMATS",
    "SMALL_IMAGE_PIXELS",
    "RETRY_AFTER_S",
    "SERVER",  # noqa: F822 (made on first use by the package's __getattr__)
    "RequestError",
    "ParsedRequest",
    "ImageInput",
    "Batcher",
    "WorkPool",
    "ImagePreparer",
    "ModelServer",
    "default_model_name",
    "ServerThread",
    "serve_forever",
    "image_dimensions",
    "make_app",
    "server_key",
    "forget_frames",
]


def __getattr__(name):
    # SERVER is an aiohttp.web.AppKey, made on first use (app.SERVER): the package imports
    # without aiohttp.
    if name == "SERVER":
        return server_key()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
