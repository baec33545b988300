"""Command-line options of the face-crop stage, shared by ``python -m affectnet_tf.predict``
and ``python -m affectnet_tf.serve``: :func:`add_face_arguments` adds them to a parser,
:func:`face_cropper` builds the :class:`~affectnet_tf.inference.faces.FaceCropper` they describe,
and :func:`bounded_number` is the ``argparse`` type of their bounded numbers.

For example:

```python
parser = argparse.ArgumentParser()
add_face_arguments(parser)
cropper = face_cropper(parser.parse_args(["--crop-size", "112", "--largest-only"]))
```
"""

import argparse

from affectnet_tf.inference import faces as faces_module

__all__ = ["bounded_number", "add_face_arguments", "face_cropper"]


def bounded_number(kind, minimum, strict=False, maximum=None):
    """An argparse type: ``kind`` values from ``minimum`` (excluded when ``strict``) up to
    ``maximum``."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be {minimum}..{maximum}, got {text}")
        if value < minimum or (strict and value == minimum):
            relation = ">" if strict else ">="
            raise argparse.ArgumentTypeError(f"must be {relation} {minimum}, got {text}")
        return value

    parse.__name__ = kind.__name__  # the name argparse and the flag tables show
    return parse


def add_face_arguments(parser, title="Faces"):
    """Adds the options of the face-crop stage
    (:class:`~affectnet_tf.inference.faces.FaceCropper`) to ``parser`` as a group ``title``;
    :func:`face_cropper` builds the cropper from them."""
    group = parser.add_argument_group(title)
    cropper = faces_module.FaceCropper  # its defaults
    group.add_argument(
        "--working-size",
        type=bounded_number(int, 0),
        default=cropper.working_size,
        help="MTCNN runs as on images downscaled to this longer side (its pyramid starts "
        f"there); 0: full size, plain MTCNN (default: {cropper.working_size})",
    )
    group.add_argument(
        "--min-face-size",
        type=bounded_number(int, 12),
        default=cropper.min_face_size,
        help=f"smallest face side, in working-image pixels (default: {cropper.min_face_size})",
    )
    group.add_argument(
        "--thresholds",
        type=float,
        nargs=3,
        default=cropper.thresholds,
        help="MTCNN PNet RNet ONet thresholds (default: "
        + " ".join(f"{t:g}" for t in cropper.thresholds)
        + ")",
    )
    group.add_argument(
        "--margin",
        type=bounded_number(float, 0.0),
        default=cropper.margin,
        help=f"crop margin on every side (default: {cropper.margin:g})",
    )
    group.add_argument(
        "--crop-size",
        type=bounded_number(int, 1),
        default=224,
        help="side of the face crops (default: 224)",
    )
    group.add_argument("--align", action="store_true", help="5-point aligned crops")
    group.add_argument(
        "--largest-only", action="store_true", help="only the largest face of each image"
    )
    group.add_argument("--device", default="CPU:0", help="MTCNN's device (default: CPU:0)")


def face_cropper(args):
    """The :class:`~affectnet_tf.inference.faces.FaceCropper` of the options of
    :func:`add_face_arguments`."""
    return faces_module.FaceCropper(
        working_size=args.working_size,
        min_face_size=args.min_face_size,
        thresholds=tuple(args.thresholds),
        margin=args.margin,
        crop_size=args.crop_size,
        align=args.align,
        mode=faces_module.LARGEST if args.largest_only else faces_module.ALL,
        device=args.device,
    )
