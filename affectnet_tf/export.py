"""Export a trained model to SavedModel, TFLite (LiteRT) and ONNX: ``python -m affectnet_tf.export``.

```bash
python -m affectnet_tf.export --model-dir RUN --format saved_model|tflite|onnx [--output PATH]
    [--quantization float32 float16 int8] [--check-data selection] [--calibration-data train]
    [--verbose | --quiet]
```

Every format is checked after it is written, by running the file in its own runtime on held-out
images and comparing with the Keras model (the check fails the command when a threshold is not
met; ``--no-check`` skips it). The formats, their files and their thresholds:
:mod:`affectnet_tf.deploy.export`; the work: :func:`affectnet_tf.deploy.export.run_export.export_run`.
Status lines (the images checked, each file written, each check's differences) go to the
standard error (``--quiet``: errors only); a failed check or an op a format cannot take ends
the command with exit status 1 and a message naming it.
"""

import argparse
import logging

from affectnet_tf.deploy.export.converters import ExportError
from affectnet_tf.deploy.export.onnx import ONNX_OPSET
from affectnet_tf.deploy.export.run_export import FORMATS, export_run
from affectnet_tf.deploy.export.tflite import QUANTIZATIONS
from affectnet_tf.progress import add_verbosity_flags, configure_logging

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def build_parser():
    """The command line of ``python -m affectnet_tf.export``."""
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.export",
        description=(
            "Export a trained run's model to SavedModel (TF Serving), TFLite (LiteRT) or ONNX, "
            "and check the file in its own runtime against the Keras model."
        ),
    )
    parser.add_argument(
        "--model-dir", required=True, help="run folder holding model.keras (or a .keras file)"
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="the file format")
    parser.add_argument(
        "--output",
        help=(
            "file or folder to write (default: RUN/export/saved_model/1, "
            "RUN/export/model_<quantization>.tflite, RUN/export/model.onnx)"
        ),
    )
    parser.add_argument(
        "--quantization",
        nargs="+",
        choices=QUANTIZATIONS,
        default=list(QUANTIZATIONS),
        help="TFLite variants to write (default: all three)",
    )
    parser.add_argument(
        "--check-data",
        default="selection",
        help=(
            "images the check runs on: a role of the run (train, selection, test), "
            "SPLIT[:SUBSET] of its dataset, or a folder of images (default: selection)"
        ),
    )
    parser.add_argument(
        "--calibration-data",
        default="train",
        help="int8 calibration images, given as --check-data is (default: train)",
    )
    parser.add_argument(
        "--check-count", type=int, default=200, help="images checked at most (default: 200)"
    )
    parser.add_argument(
        "--calibration-count",
        type=int,
        default=200,
        help="int8 calibration images at most (default: 200)",
    )
    parser.add_argument("--data-dir", help="TFDS data folder (default: the run's)")
    parser.add_argument(
        "--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default: {ONNX_OPSET})"
    )
    parser.add_argument(
        "--input-size",
        type=int,
        help=(
            "input side of the TFLite/ONNX model (default: the model's image size; another "
            "side puts the anti-aliased resize into the graph, which neither format takes)"
        ),
    )
    parser.add_argument("--no-check", action="store_true", help="write the file without checking")
    add_verbosity_flags(parser)
    return parser


def main(argv=None):
    """Runs the command; exits with status 1 and an ``Error:`` line on a failed export."""
    args = build_parser().parse_args(argv)
    configure_logging(args)
    try:
        export_run(
            args.model_dir,
            args.format,
            output=args.output,
            quantizations=args.quantization,
            check=not args.no_check,
            check_data=args.check_data,
            calibration_data=args.calibration_data,
            count=args.check_count,
            calibration_count=args.calibration_count,
            data_dir=args.data_dir,
            opset=args.opset,
            input_size=args.input_size,
        )
    except (ExportError, FileNotFoundError, ValueError) as error:
        logger.error("Error: %s", error)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
