"""Evaluation of a trained run: ``python -m affectnet_tf.evaluate``.

``python -m affectnet_tf.evaluate --model-dir RUN [--dataset NAME] [--split SPLIT]`` loads
``RUN/model.keras``, reads the run's ``config.yaml`` for every default (dataset, data folder,
image size, task, targets), writes ``metrics.json`` and ``report/`` (``report.html``, which
embeds its images and opens offline, ``report.md`` and the PNGs) and prints the metrics as
JSON. Status lines go to the standard error (``--quiet`` hides them, ``--verbose`` adds
details); the standard output holds the JSON only.

The work is done by :func:`affectnet_tf.evaluation.evaluate.evaluate_run` (the training command
calls :func:`affectnet_tf.evaluation.evaluate.evaluate_model` at the end of a run, so both write
the same files); this module is the command line only.
"""

import argparse
import json
import sys

from affectnet_tf.data.partition import SUBSETS
from affectnet_tf.evaluation.evaluate import evaluate_run
from affectnet_tf.files import json_ready
from affectnet_tf.progress import add_verbosity_flags, configure_logging

__all__ = ["build_parser", "main"]


def build_parser():
    """The command line's ``argparse`` parser."""
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.evaluate",
        description="Evaluate a trained run: metrics.json and a report folder (HTML, Markdown).",
    )
    parser.add_argument("--model-dir", required=True, help="run folder holding model.keras")
    parser.add_argument("--dataset", help="TFDS dataset (default: the run's)")
    parser.add_argument("--split", help="split (default: the run's test data)")
    parser.add_argument(
        "--subset",
        choices=SUBSETS + ("all",),
        help="subset of --split's cut (train, selection, test) or all of it (default: all)",
    )
    parser.add_argument(
        "--num-classes", type=int, choices=(8, 7), help="must match the model (default: model's)"
    )
    parser.add_argument(
        "--target",
        choices=("mv", "original", "true"),
        help="expression label to score against (default: as the training run)",
    )
    parser.add_argument(
        "--va-target",
        choices=("mean", "median", "original", "true"),
        help="valence/arousal label to score against (default: as the training run)",
    )
    parser.add_argument("--data-dir", help="TFDS data folder (default: the run's)")
    parser.add_argument("--batch-size", type=int, help="(default: the run's)")
    parser.add_argument("--output-dir", help="where metrics.json and report/ go (default: RUN)")
    parser.add_argument(
        "--no-report", action="store_true", help="write metrics.json only (default: report too)"
    )
    add_verbosity_flags(parser)
    return parser


def main(argv=None):
    """The command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args)
    try:
        result = evaluate_run(
            args.model_dir,
            dataset=args.dataset,
            split=args.split,
            subset=args.subset,
            num_classes=args.num_classes,
            target=args.target,
            va_target=args.va_target,
            data_dir=args.data_dir,
            batch_size=args.batch_size,
            output_dir=args.output_dir,
            report=not args.no_report,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(json_ready(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
