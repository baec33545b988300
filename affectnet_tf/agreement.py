"""Human agreement on AffectNetC25 from the CSVs alone: ``python -m affectnet_tf.agreement``.

Each annotator is scored against the majority vote (the mean, for valence and arousal) of the
other annotators, and the crowd's Krippendorff's alpha and Fleiss' kappa are printed: the
figures of the real C25 CSVs alone (no images, no model) show the human ceiling before any
training:

```bash
python -m affectnet_tf.agreement --csv-dir DIR [--training-csv training.csv]
python -m affectnet_tf.agreement --crowd-dir DIR   # a crowd_images folder (docs/crowd-images.md)
```

The work is done by :func:`affectnet_tf.evaluation.c25.csv_agreement` (a crowd folder:
:func:`affectnet_tf.evaluation.crowd_agreement.folder_agreement`) and
:mod:`affectnet_tf.evaluation.agreement` (the method: leave-one-out references, the tie rule);
this module is the command line only.
"""

import argparse
import json
import logging
import sys

from affectnet_tf.evaluation.agreement import TIE_BREAKS, format_agreement
from affectnet_tf.evaluation.c25 import csv_agreement
from affectnet_tf.evaluation.crowd_agreement import folder_agreement
from affectnet_tf.progress import add_verbosity_flags, configure_logging
from tfds_affectnet import sources

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def build_parser():
    """The command line's ``argparse`` parser."""
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.agreement",
        description="Human agreement on AffectNetC25 from the CSVs alone: each annotator "
        "against the majority of the others, and the crowd's alpha and kappa.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv-dir", help="folder of the six C25 CSVs")
    source.add_argument(
        "--crowd-dir",
        help="a crowd_images folder (images/, answers.csv or answers_<task>.csv, optional "
        "truth.csv, classes.txt): its answers, its classes, annotators against truth.csv",
    )
    parser.add_argument(
        "--sets", nargs="+", default=list(sources.C25_SETS), help="sets (default: set1 set2)"
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        choices=(8, 7),
        default=8,
        help="C25 CSVs: 8 or 7 (a crowd folder has its own classes) (default: 8)",
    )
    parser.add_argument(
        "--training-csv", help="AffectNet's training.csv, for the original labels (default: none)"
    )
    parser.add_argument(
        "--tie-break",
        choices=TIE_BREAKS,
        default="keyed",
        help="majority-vote tie rule: keyed (by the image's file name, as training and "
        "evaluation), lowest (the lowest tied class) or prior (the tied class answered most "
        "often) (default: keyed)",
    )
    parser.add_argument(
        "--per-annotator", action="store_true", help="also print one line per annotator"
    )
    parser.add_argument("--json", help="also write the figures to this JSON file")
    add_verbosity_flags(parser)
    return parser


def main(argv=None):
    """Prints the agreement table of each set; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args)
    if args.crowd_dir:
        return _crowd_dir_main(args)
    try:
        results = csv_agreement(
            args.csv_dir,
            sets=args.sets,
            num_classes=args.num_classes,
            training_csv=args.training_csv,
            tie_break=args.tie_break,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for set_name, result in results.items():
        print(format_agreement(result, f"AffectNetC25 {set_name}", args.per_annotator))
        print()
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(results, stream, indent=2)
        logger.info("Wrote %s", args.json)
    return 0


def _crowd_dir_main(args):
    """``--crowd-dir``: the agreement table of a crowd folder (its own class set)."""
    try:
        result = folder_agreement(args.crowd_dir, tie_break=args.tie_break)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        format_agreement(result, f"Crowd folder {args.crowd_dir}", args.per_annotator, "the truth")
    )
    print("  annotators: " + ", ".join(f"{r}={n}" for r, n in enumerate(result["annotator_names"])))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(result, stream, indent=2)
        logger.info("Wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
