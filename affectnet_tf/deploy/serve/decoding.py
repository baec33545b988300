"""Decoding the images of requests off the event loop: the thread pools, and each image made
ready for the model (decoded, then resized or its faces cropped).

A request's body is parsed, and its images decoded (and their faces found) one image at a
time, in thread pools off the event loop: images of up to :data:`SMALL_IMAGE_PIXELS` pixels in
one pool, larger ones in another, each of ``--decode-threads`` threads, so that a small request
never waits behind the decoding of large images; in each pool the request with the fewest
pixels left goes first (:class:`WorkPool`). Images are decoded with
:func:`affectnet_tf.data.images.decode_image` and resized with
:func:`affectnet_tf.data.images.resize_image`, the path training images take
(:class:`ImagePreparer`).

An image larger than ``detect_max_side`` on its longer side is downscaled before MTCNN (the
boxes are mapped back to the image's pixels and the crops cut from the full image), and only its
face crops, at the model's size, are kept once it has been through the stage.
"""

import asyncio
import concurrent.futures
import heapq
import itertools
import threading

import cv2
import numpy as np
import tensorflow as tf

from affectnet_tf.data.images import decode_error_reason, decode_image, resize_image
from affectnet_tf.deploy.serve.protocol import RequestError, check_pixels
from affectnet_tf.inference import faces as faces_module

__all__ = ["SMALL_IMAGE_PIXELS", "SMALL_BODY_BYTES", "WorkPool", "ImagePreparer"]

#: Images of at most this many pixels (the page's largest upload, 1600 x 1600) are decoded in a
#: thread pool of their own, so that they never wait behind larger ones.
SMALL_IMAGE_PIXELS = 1600 * 1600
#: Request bodies up to this size are parsed in the pool of the small images.
SMALL_BODY_BYTES = 4 * 2**20


class WorkPool:
    """Threads that run the decoding work of requests, the smallest priority first (ties in
    the order of submission); :meth:`run` awaits one call from the event loop, and a call whose
    awaiting is cancelled before it starts never runs.

    Args:
        threads: how many threads work.
        name: the threads' name prefix.
    """

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
        """A ``concurrent.futures.Future`` of ``function(*args)``.

        Raises:
            RuntimeError: the pool is shut down.
        """
        future = concurrent.futures.Future()
        with self._condition:
            if self._closed:
                raise RuntimeError("The server is stopping")
            heapq.heappush(self._waiting, (priority, next(self._order), future, function, args))
            self._condition.notify()
        return future

    async def run(self, priority, function, *args):
        """``function(*args)``, run in the pool and awaited."""
        return await asyncio.wrap_future(self.submit(priority, function, *args))

    def _work(self):
        """One thread: the waiting call of the smallest priority, until the pool is shut."""
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


def _scaled(detections, x_factor, y_factor):
    """`Detections` of a downscaled frame in the full frame's pixels."""
    boxes = detections.boxes * np.asarray([x_factor, y_factor, x_factor, y_factor], np.float32)
    landmarks = detections.landmarks * np.asarray([x_factor, y_factor], np.float32)
    return faces_module.Detections(
        boxes.astype(np.float32), detections.scores, landmarks.astype(np.float32)
    )


class ImagePreparer:
    """Makes an instance of a request ready for the model: decoded, then resized to the
    model's input, or (with a ``cropper``) its faces found and cropped at the model's size.

    Args:
        image_size: the model's input side.
        max_image_pixels: the largest decoded image (one larger than its header said is
            refused).
        cropper: the :class:`~affectnet_tf.inference.faces.FaceCropper` that finds the faces
            (``None``: whole images).
        detect_max_side: MTCNN runs on the image downscaled to this longer side when it is
            larger.
    """

    def __init__(self, image_size, max_image_pixels, cropper=None, detect_max_side=1280):
        self.image_size = int(image_size)
        self.max_image_pixels = int(max_image_pixels)
        self.cropper = cropper
        self.detect_max_side = int(detect_max_side)

    def prepare(self, item):
        """An :class:`~affectnet_tf.deploy.serve.protocol.ImageInput` ready for the model:
        decoded, then resized to the model's input, or with a cropper its `Faces` (boxes in the
        image's pixels, crops at the model's size); the full image is not kept.

        Raises:
            RequestError: the image cannot be decoded or is larger than its header said.
        """
        image = self.decoded(item)
        if self.cropper is not None:
            return self.find_faces([image])[0]
        return np.asarray(resize_image(image, self.image_size))

    def decoded(self, item):
        """The uint8 RGB array of an :class:`~affectnet_tf.deploy.serve.protocol.ImageInput`.

        Raises:
            RequestError: the image cannot be decoded or is larger than its header said.
        """
        if item.data is None:
            return item.array
        return np.asarray(self.decode(item.data, item.source))

    def decode(self, data, where):
        """The image of encoded bytes, with :func:`affectnet_tf.data.images.decode_image`.

        Raises:
            RequestError: naming ``where``, when the bytes cannot be decoded or the image is
                over ``max_image_pixels``.
        """
        try:
            image = decode_image(data)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
            raise RequestError(
                f"{where}: cannot decode the image: {decode_error_reason(error)}"
            ) from None
        check_pixels(int(image.shape[0]), int(image.shape[1]), where, self.max_image_pixels)
        return image

    def find_faces(self, images):
        """The `Faces` of images: MTCNN on them (in batches of one shape) downscaled to
        ``detect_max_side`` where larger, the boxes mapped back, the crops cut from the full
        images and resized to the model's."""
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
        found = self.cropper.detect(seen)
        del seen
        detections = [d if f is None else _scaled(d, *f) for d, f in zip(found, factors)]
        results = []
        for faces in self.cropper.process(images, detections):
            crops = faces_module.crops_for_model(faces.crops, self.image_size)
            results.append(faces_module.Faces(faces.boxes, faces.scores, faces.landmarks, crops))
        return results
