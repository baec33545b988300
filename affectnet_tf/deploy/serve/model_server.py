"""The model behind the HTTP API: its name and version, its settings and limits, and a predict
request's way through the decoding pools and the batches to its answer.

The model's name is the run folder's name unless said otherwise (:func:`default_model_name`);
its version is ``model_version`` (1). With ``detect_faces`` each image goes through the MTCNN
face-crop stage (:class:`affectnet_tf.inference.faces.FaceCropper`) and
:class:`affectnet_tf.inference.predictor.Predictor`, and an instance's answer is the list of
its faces' records exactly as ``python -m affectnet_tf.predict`` writes them (``source`` is the
instance, ``instances[i]`` or ``inputs[i]``; ``frame`` is 0; ``box`` is x, y, width, height in
the image's pixels); an image without a face gives an empty list.

Work: images of up to ``small_image_pixels`` are decoded in one pool, larger ones in another
(:mod:`affectnet_tf.deploy.serve.decoding`). With ``detect_faces`` the faces of small images are
found in MTCNN batches gathered across requests (as the model's), those of large images one by
one in their pool. Each image prepared for the model is one item of a
:class:`~affectnet_tf.deploy.serve.batcher.Batcher`.
"""

import asyncio
import logging
import os
import re

import numpy as np

from affectnet_tf.deploy.serve import protocol
from affectnet_tf.deploy.serve.batcher import Batcher
from affectnet_tf.deploy.serve.decoding import (
    SMALL_BODY_BYTES,
    SMALL_IMAGE_PIXELS,
    ImagePreparer,
    WorkPool,
)
from affectnet_tf.inference import faces as faces_module
from affectnet_tf.inference.predictor import Predictor
from affectnet_tf.modeling.models import model_metadata

__all__ = ["ModelServer", "default_model_name"]

logger = logging.getLogger(__name__)


def default_model_name(model_dir):
    """The model name of ``--model-dir`` without ``--model-name``: the run folder's name, its
    spaces, ``/`` and ``:`` (which a URL path segment of TF Serving's API cannot hold)
    replaced by ``_`` (``runs/faces cv`` serves as ``faces_cv``)."""
    path = os.path.abspath(os.fspath(model_dir))
    if os.path.isfile(path):
        path = os.path.dirname(path)
    return re.sub(r"[/:\s]+", "_", os.path.basename(path)) or "model"


def _positive(name, value, kind=int, strict=True):
    """``kind(value)``, checked to be > 0 (``strict``) or >= 0."""
    number = kind(value)
    if not (number > 0 if strict else number >= 0):
        relation = ">" if strict else ">="
        raise ValueError(f"`{name}` must be {relation} 0. Received: {name}={value!r}")
    return number


def _check_settings(model_name, detect_max_side, counts):
    """Raises ``ValueError`` for a model name that cannot be in a URL, a ``detect_max_side``
    under 48, or a count (``{name: value}``) under 1."""
    if not re.fullmatch(r"[^/:\s]+", str(model_name)):
        raise ValueError(
            "`model_name` must be a non-empty name without '/', ':' or spaces (it is part of "
            f"the URL /v1/models/<name>:predict). Received: model_name={model_name!r}"
        )
    for name, value in counts.items():
        if int(value) < 1:
            raise ValueError(f"`{name}` must be >= 1. Received: {name}={value!r}")
    if int(detect_max_side) < 48:
        raise ValueError(
            "`detect_max_side` must be >= 48 (MTCNN's last network takes 48x48 patches). "
            f"Received: detect_max_side={detect_max_side!r}"
        )


class ModelServer:
    """The model behind the HTTP API: request parsing, decoding, batches, answers.

    Args:
        model: a prediction model of :func:`affectnet_tf.build_model` (metadata inside).
        model_name: the name clients use in ``/v1/models/<name>``.
        model_version: the version it answers as.
        detect_faces: run the MTCNN face-crop stage; answers are face records.
        cropper: the :class:`~affectnet_tf.inference.faces.FaceCropper` of ``detect_faces``
            (default: every face, 224 crops, as ``python -m affectnet_tf.predict``).
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

    Raises:
        ValueError: a setting out of its range, naming it.
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
        counts = dict(
            model_version=model_version,
            max_batch_size=max_batch_size,
            max_image_pixels=max_image_pixels,
            max_instances=max_instances,
            max_request_pixels=max_request_pixels,
            max_queued_requests=max_queued_requests,
            decode_threads=decode_threads,
            small_image_pixels=small_image_pixels,
        )
        _check_settings(model_name, detect_max_side, counts)
        self.model_name = str(model_name)
        self.model_version = str(int(model_version))
        self.detect_faces = bool(detect_faces)
        self.max_request_bytes = int(_positive("max_request_mb", max_request_mb, float) * 2**20)
        self.max_image_pixels = int(max_image_pixels)
        self.max_instances = int(max_instances)
        self.max_request_pixels = int(max_request_pixels)
        self.max_queued_requests = int(max_queued_requests)
        self.decode_threads = int(decode_threads)
        self.small_image_pixels = int(small_image_pixels)
        self.read_timeout = _positive("read_timeout_s", read_timeout_s, float)
        self.request_timeout = _positive("request_timeout_s", request_timeout_s, float)
        self.detect_max_side = int(detect_max_side)
        timeout = _positive("batch_timeout_ms", batch_timeout_ms, float, strict=False)
        self._start_model(model, cropper, int(max_batch_size), timeout)
        self.requests = 0  # predict requests answered 200
        self.pending = 0  # predict requests in progress
        self.small_pool = None
        self.large_pool = None
        self.first_requests = {}  # transport -> its header deadline, until its first request

    def _start_model(self, model, cropper, max_batch_size, timeout):
        """The predictor, the image preparer and the batchers of the model (and of MTCNN)."""
        if self.detect_faces and cropper is None:
            cropper = faces_module.FaceCropper(mode=faces_module.ALL)
        self.predictor = Predictor(model, cropper, batch_size=max_batch_size)
        self.metadata = model_metadata(model)
        self.heads = self.predictor.heads
        self.class_names = list(self.predictor.class_names)
        self.image_size = self.predictor.image_size
        self.preparer = ImagePreparer(
            self.image_size,
            self.max_image_pixels,
            self.predictor.cropper if self.detect_faces else None,
            self.detect_max_side,
        )
        self.batcher = Batcher(self._run_batch, max_batch_size, timeout)
        # MTCNN on the small images of concurrent requests, in batches (5 times faster on
        # 256x256 frames of one shape than one by one); large images are found one by one
        self.detector = None
        if self.detect_faces:
            batch_size = self.predictor.cropper.batch_size
            self.detector = Batcher(self.preparer.find_faces, batch_size, timeout)

    # -- the API's documents ------------------------------------------------------------------

    @property
    def output_names(self):
        """The outputs of an answer: the model's heads, or ``("faces",)``."""
        return ("faces",) if self.detect_faces else self.heads

    def limits(self):
        """The server's limits, as the metadata and the page's configuration tell them."""
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
        return protocol.status_document(self.model_version)

    def metadata_document(self):
        """TF Serving's metadata document, plus the model's own metadata under
        ``affectnet_tf`` (:func:`affectnet_tf.modeling.models.model_metadata`: ``class_names``,
        ``image_size``, ``preprocessing``, ...), ``detect_faces`` and the server's ``limits``."""
        extra = {**self.metadata, "detect_faces": self.detect_faces, "limits": self.limits()}
        return protocol.metadata_document(
            self.model_name,
            self.model_version,
            self.heads,
            len(self.class_names),
            self.detect_faces,
            extra,
        )

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

    def check_model(self, name, version, label):
        """Raises :class:`~affectnet_tf.deploy.serve.protocol.RequestError` (404, as TF Serving)
        unless ``name`` and ``version`` (``None``: any) are this model's; a version ``label``
        answers 400 (this server has no labels)."""
        if name != self.model_name:
            raise protocol.RequestError(
                f"Servable not found for request: Latest({name}); this server serves the model "
                f"{self.model_name!r}",
                status=404,
            )
        if label is not None:
            raise protocol.RequestError(
                f"Unrecognized servable version label: {label}; this server has no labels, ask "
                f"for /v1/models/{self.model_name} or /versions/{self.model_version}"
            )
        if version is not None and version != self.model_version:
            raise protocol.RequestError(
                f"Servable not found for request: Specific({name}, {version}); this server "
                f"serves version {self.model_version}",
                status=404,
            )

    # -- reading a request (in a thread) ------------------------------------------------------

    def parse(self, body):
        """A :class:`~affectnet_tf.deploy.serve.protocol.ParsedRequest` from a predict request's
        body, its images ready for the model: resized to the model's input, or with
        ``detect_faces`` the image's `Faces` (crops at the model's size). :meth:`read_request`,
        then :meth:`prepare` on each image.

        Raises:
            RequestError: naming the field, the instance or the limit.
        """
        parsed = self.read_request(body)
        return parsed._replace(images=[self.prepare(item) for item in parsed.images])

    def read_request(self, body):
        """:func:`affectnet_tf.deploy.serve.protocol.read_request` with this server's limits:
        the images not decoded yet, every limit that their headers tell already checked.

        Raises:
            RequestError: naming the field, the instance or the limit.
        """
        limits = protocol.RequestLimits(
            self.max_instances, self.max_image_pixels, self.max_request_pixels
        )
        return protocol.read_request(body, limits)

    def prepare(self, item):
        """An :class:`~affectnet_tf.deploy.serve.protocol.ImageInput` ready for the model
        (:meth:`affectnet_tf.deploy.serve.decoding.ImagePreparer.prepare`).

        Raises:
            RequestError: the image cannot be decoded or is larger than its header said.
        """
        return self.preparer.prepare(item)

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
        """One model call on the faces of several images: each image's list of records."""
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

    def answer(self, parsed, results):
        """TF Serving's answer to a request: ``predictions`` (row) or ``outputs`` (columnar)."""
        return protocol.answer_document(parsed, results, self.output_names, self.detect_faces)

    # -- on the event loop --------------------------------------------------------------------

    async def start(self, app=None):
        """``on_startup``: thread pools, the batch worker, the warm-up."""
        self.small_pool = WorkPool(self.decode_threads, "serve-decode-small")
        self.large_pool = WorkPool(self.decode_threads, "serve-decode-large")
        self.batcher.start()
        if self.detector is not None:
            self.detector.start()
        logger.info(
            "Warming up %r: one call of the model%s on a blank image",
            self.model_name,
            " and of MTCNN" if self.detect_faces else "",
        )
        await asyncio.get_running_loop().run_in_executor(self.batcher.executor, self.warm_up)

    async def stop(self, app=None):
        """``on_cleanup``: stops the worker, fails what is still waiting, ends the pools."""
        await self.batcher.stop()
        if self.detector is not None:
            await self.detector.stop()
        for pool in (self.small_pool, self.large_pool):
            if pool is not None:
                pool.shutdown()

    async def predict(self, body):
        """The answer document of a predict request's body: parsed in a pool, its images
        prepared one at a time (so that a request holds one decoded image at the most, the
        request with the fewest pixels left first) and run in the model's batches.

        Raises:
            RequestError: a bad request, naming the field, the instance or the limit.
        """
        pool = self.small_pool if len(body) <= SMALL_BODY_BYTES else self.large_pool
        parsed = await pool.run(len(body), self.read_request, body)
        del body
        results = [None] * len(parsed.images)
        remaining = sum(item.pixels for item in parsed.images)
        waiting = []
        try:
            for i in range(len(parsed.images)):
                pixels = parsed.images[i].pixels
                prepared = await self._prepared(parsed.images, i, remaining)
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
        return self.answer(parsed, results)

    async def _prepared(self, images, i, remaining):
        """``images[i]`` made ready for the model in the pool of its size (``remaining``: the
        pixels its request has left, its priority there); it leaves ``images``, so that nothing
        of an instance is kept once it is prepared."""
        item, images[i] = images[i], None
        if item.pixels > self.small_image_pixels:  # decoded, its faces found, alone
            return await self.large_pool.run(remaining, self.preparer.prepare, item)
        if self.detect_faces:  # decoded; its faces found in a batch of small images
            image = await self.small_pool.run(remaining, self.preparer.decoded, item)
            item = None
            return await self.detector.submit(image)
        return await self.small_pool.run(remaining, self.preparer.prepare, item)
