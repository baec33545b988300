"""The size of an encoded image read from its header, before anything is decoded.

The server budgets pixels (of one image, of a whole request) from the images' headers: Pillow
reads the size of a JPEG, PNG, GIF, BMP or WebP image without decoding its pixels, and the
frames of a GIF are counted from its block structure (TensorFlow decodes every frame of a GIF).
An image whose size its header does not tell (another format, a header cut short) is refused,
never decoded. Pillow (the ``serve`` extra) is imported on first use, so that the module
imports without it.

Example:

```python
with open("photo.jpg", "rb") as stream:
    print(image_dimensions(stream.read()))  # (480, 640): height, width
```
"""

import io
import warnings

__all__ = ["SERVED_FORMATS", "pil_image", "gif_frames", "header_size", "image_dimensions"]

#: The formats whose size Pillow reads from the header (Pillow's names); what
#: :func:`affectnet_tf.data.images.decode_image` decodes. Other bytes are refused before decoding.
SERVED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")


def pil_image():
    """``PIL.Image``, imported where image headers are read (the ``serve`` extra).

    Raises:
        ImportError: Pillow is not installed, naming the extra that installs it.
    """
    try:
        import PIL.Image
    except ImportError as error:
        raise ImportError(
            "The server reads image sizes with Pillow, which the package's `serve` extra "
            f"installs: pip install 'affectnet-tf[serve]' ({error})"
        ) from error
    return PIL.Image


def _after_sub_blocks(view, position):
    """The position after the GIF data sub-blocks that start at ``position`` (``None`` when
    they are cut short)."""
    size = len(view)
    while position < size:
        length = view[position]
        position += 1 + length
        if length == 0:
            return position
    return None


def gif_frames(data, stop_after):
    """The frames of a GIF, counted from its block structure without decoding (TensorFlow
    decodes every frame of a GIF, even for its first one); counting stops at ``stop_after``.

    Returns:
        The number of frames, or ``None`` when not one frame is there in full.
    """
    view, size = memoryview(data), len(data)
    if size < 13:
        return None
    flags, position, frames = view[10], 13, 0
    if flags & 0x80:  # the global colour table
        position += 3 * (2 << (flags & 7))
    while position is not None and position < size and frames < stop_after:
        block = view[position]
        if block == 0x3B:  # the trailer
            break
        if block == 0x21:  # an extension: its label, then its sub-blocks
            position = _after_sub_blocks(view, position + 2)
        elif block == 0x2C:  # an image: its descriptor, colour table, code size, sub-blocks
            if position + 10 > size:
                break
            flags = view[position + 9]
            position += 10 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0) + 1
            position = _after_sub_blocks(view, position)
            if position is not None:
                frames += 1
        else:  # not GIF any more: what follows is not decoded either
            break
    return frames or None


def header_size(data, max_pixels=None):
    """``(height, width, frames)`` of an encoded image of :data:`SERVED_FORMATS` from its header
    (frames: of a GIF, counted up to the first that makes more than ``max_pixels``; else 1).

    Returns:
        The size, or ``None`` when the bytes are none of those formats or the header is cut
        short.

    Raises:
        ValueError: the header claims more pixels than Pillow opens at all (its
            decompression-bomb limit, twice ``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    image_module = pil_image()
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
        frames = gif_frames(data, max(1, stop_after))
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
    size = header_size(data, max_pixels=1)
    return None if size is None else size[:2]
