"""Training augmentation: random resized crop, flip, rotation and colour jitter, per image.

The random parameters are drawn with TensorFlow's stateless ops from a seed, so a seed gives
the same batch every time (a resumed run sees the batches an uninterrupted run saw); the pixels
are moved by OpenCV (one warp and one colour map per image), which is faster than TensorFlow's
image ops on CPU and releases the GIL.
"""

import cv2
import numpy as np
import tensorflow as tf

__all__ = ["augment_batch", "augment_image"]


def _warp_transforms(seed, batch, input_size, output_size, max_rotation_degrees):
    """Per-image projective transforms combining random resized crop, flip and rotation.

    One bilinear warp per image replaces crop + resize + flip + rotate: for an output pixel
    ``(x, y)`` the input pixel is ``centre + S R F (x - c, y - c)`` with ``c`` the output centre,
    ``F`` an optional horizontal flip, ``R`` a rotation and ``S`` the crop's scale.
    """
    height = tf.cast(input_size[0], tf.float32)
    width = tf.cast(input_size[1], tf.float32)
    u = tf.random.stateless_uniform([batch, 6], seed)
    area = 0.7 + 0.3 * u[:, 0]
    aspect = tf.exp(np.log(0.9) + (np.log(1.1) - np.log(0.9)) * u[:, 1])
    crop_w = tf.minimum(width, width * tf.sqrt(area * aspect))
    crop_h = tf.minimum(height, height * tf.sqrt(area / aspect))
    centre_x = crop_w / 2 - 0.5 + (width - crop_w) * u[:, 2]
    centre_y = crop_h / 2 - 0.5 + (height - crop_h) * u[:, 3]
    flip = tf.where(u[:, 4] < 0.5, -1.0, 1.0)
    angle = (2.0 * u[:, 5] - 1.0) * (max_rotation_degrees * np.pi / 180.0)
    scale_x = crop_w / output_size
    scale_y = crop_h / output_size
    cos, sin = tf.cos(angle), tf.sin(angle)
    a0, a1 = scale_x * cos * flip, -scale_x * sin
    b0, b1 = scale_y * sin * flip, scale_y * cos
    c = (output_size - 1) / 2.0
    a2 = centre_x - (a0 + a1) * c
    b2 = centre_y - (b0 + b1) * c
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


# Luma and the YIQ basis, for saturation and hue as one linear colour map per image.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def _colour_matrices(seed, batch, saturation, hue_degrees):
    """Per-image 3x3 RGB maps: scale chroma (saturation) and rotate it in YIQ (hue)."""
    u = tf.random.stateless_uniform([batch, 2], seed)
    sat = 1.0 + saturation * (2.0 * u[:, 0] - 1.0)
    theta = (2.0 * u[:, 1] - 1.0) * (hue_degrees * np.pi / 180.0)
    cos, sin = sat * tf.cos(theta), sat * tf.sin(theta)
    ones, zeros = tf.ones_like(cos), tf.zeros_like(cos)
    yiq = tf.stack(
        [
            tf.stack([ones, zeros, zeros], axis=1),
            tf.stack([zeros, cos, -sin], axis=1),
            tf.stack([zeros, sin, cos], axis=1),
        ],
        axis=1,
    )
    return tf.einsum("ij,bjk,kl->bil", _YIQ_TO_RGB, yiq, _RGB_TO_YIQ)


def _augment_with_opencv(images, transforms, contrast, shift, colour, image_size):
    """NumPy side of :func:`augment_batch`: one ``warpAffine`` and one ``transform`` per image.

    OpenCV's kernels are faster than TensorFlow's ``ImageProjectiveTransformV3`` on CPU and
    release the GIL, so ``tf.data`` still runs several batches in parallel (figures on the
    Benchmarks page). The warp runs on RGBA: OpenCV's bilinear warp has a SIMD path for 4
    channels and not for 3, which outweighs the two channel conversions.
    """
    size = int(image_size)
    out = np.empty((len(images), size, size, 3), np.uint8)
    rgba = np.empty(images.shape[1:3] + (4,), np.uint8)
    warped = np.empty((size, size, 4), np.uint8)
    for k, image in enumerate(images):
        cv2.cvtColor(image, cv2.COLOR_RGB2RGBA, dst=rgba)
        cv2.warpAffine(
            rgba,
            transforms[k, :6].reshape(2, 3),
            (size, size),
            dst=warped,
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT_101,
        )
        cv2.cvtColor(warped, cv2.COLOR_RGBA2RGB, dst=out[k])
        # contrast around the image mean, brightness, then saturation and hue: one 3x4 map
        offset = (1.0 - contrast[k]) * np.mean(cv2.mean(out[k])[:3]) + shift[k]
        matrix = np.concatenate(
            [contrast[k] * colour[k], colour[k].sum(1, keepdims=True) * offset], 1
        )
        cv2.transform(out[k], matrix, dst=out[k])  # saturates to 0..255
    return out


def augment_batch(
    images,
    seed,
    image_size,
    max_rotation_degrees=10.0,
    brightness=0.1,
    contrast=0.2,
    saturation=0.2,
    hue_degrees=7.0,
):
    """Training augmentation of a batch: random resized crop, flip, rotation, colour jitter.

    Each image gets its own random crop (70-100% of the area, aspect 0.9-1.1), horizontal flip,
    rotation (up to ``max_rotation_degrees``, edges reflected), brightness (up to
    ``brightness`` x 255), contrast, saturation (factors 1 +/- ``contrast``/``saturation``) and
    hue (up to ``hue_degrees``, rotated in YIQ space). The random parameters are drawn with
    TensorFlow's stateless ops, so the same ``seed`` (a shape-[2] int tensor) gives the same
    batch; the geometry is one bilinear warp per image and the colour one affine 3x4 map per
    image, both applied with OpenCV.

    Args:
        images: ``uint8`` batch ``(N, H, W, 3)``.
        seed: shape-[2] integer seed.
        image_size: side of the square output.

    Returns:
        ``uint8`` batch ``(N, image_size, image_size, 3)``.
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    batch = tf.shape(images)[0]
    transforms = _warp_transforms(
        seeds[0], batch, tf.shape(images)[1:3], image_size, max_rotation_degrees
    )
    u = tf.random.stateless_uniform([batch, 2], seeds[1])
    contrast_factor = 1.0 + contrast * (2.0 * u[:, 0] - 1.0)
    shift = brightness * 255.0 * (2.0 * u[:, 1] - 1.0)
    colour = _colour_matrices(seeds[2], batch, saturation, hue_degrees)
    augmented = tf.numpy_function(
        _augment_with_opencv,
        [tf.cast(images, tf.uint8), transforms, contrast_factor, shift, colour, image_size],
        tf.uint8,
        stateful=False,
    )
    augmented.set_shape([None, image_size, image_size, 3])
    return augmented


def augment_image(image, seed, image_size, **kwargs):
    """:func:`augment_batch` for one image ``(H, W, 3)``."""
    return augment_batch(image[None], seed, image_size, **kwargs)[0]
