"""Convert published affect models into Keras: ``python -m affectnet_tf.convert``.

```bash
python -m affectnet_tf.convert --from hsemotion enet_b2_8.onnx --output hsemotion_b2_8.keras
python -m affectnet_tf.convert --from emonet emonet_8.pth --output emonet_8.keras
```

The weights are files the user downloaded from the authors (the package downloads and ships
none; see :data:`affectnet_tf.published.hsemotion.HSEMOTION_FILES` and
:data:`affectnet_tf.published.emonet.EMONET_URLS` for where): HSEmotion's ONNX files (read
with the ``onnx`` package) and EmoNet's ``.pth`` files (read by a restricted reader that
refuses anything but tensors). The result is a prediction
model in the package's structure: RGB ``uint8`` images of any size in, its own preprocessing
inside (HSEmotion: resize to 224 or 260, ImageNet mean and standard deviation; EmoNet: resize to
256, scaled to [0, 1]), its outputs named per head with the expression probabilities in the
package's class order (mapped by name), and its metadata (class names, source file, its SHA-256
and licence). It works wherever a trained run's ``model.keras`` does: ``predict`` (save it as
``RUN/model.keras``), ``video_train`` embeddings, ``export``, ``serve``; and the registry's
``emonet``, ``hsemotion_enet_b0`` and ``hsemotion_enet_b2`` backbones take the same files as
``--weights`` for fine-tuning.

EmoNet's code and weights are licensed CC BY-NC-ND 4.0: no commercial use, and a converted
model is a derivative that may not be redistributed. HSEmotion's are Apache-2.0.

The command only wires :mod:`affectnet_tf.published.conversion` to its flags: the same from
Python is :func:`affectnet_tf.published.conversion.convert_published`. What it wrote, and the
licence of the weights, are status lines on the standard error (``--quiet`` hides them).
"""

import argparse
import logging
import sys

from affectnet_tf.progress import add_verbosity_flags, configure_logging
from affectnet_tf.published.conversion import FAMILIES, convert_published, summary_lines

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def build_parser():
    """The command line's ``argparse`` parser."""
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.convert",
        description=(
            "Convert a published affect model (HSEmotion's ONNX files, EmoNet's .pth files) "
            "that you downloaded into a Keras model with its preprocessing and class names."
        ),
    )
    parser.add_argument(
        "--from",
        dest="family",
        required=True,
        choices=tuple(FAMILIES),
        help="the model family of the weights file",
    )
    parser.add_argument("weights", help="the downloaded weights file (.onnx or .pth)")
    parser.add_argument("--output", required=True, help="the Keras model to write (.keras)")
    add_verbosity_flags(parser)
    return parser


def main(argv=None):
    """Converts the weights file and saves the model; exits with 1 on a refused file."""
    args = build_parser().parse_args(argv)
    configure_logging(args)
    try:
        model = convert_published(args.family, args.weights, args.output)
    except ValueError as error:
        print(f"Error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    for line in summary_lines(model, args.output):
        logger.info(line)


if __name__ == "__main__":
    main()
