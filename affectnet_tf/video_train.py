"""The video-level emotion command: ``python -m affectnet_tf.video_train``.

```bash
python -m affectnet_tf.video_train --model-dir runs/exp --dataset afew \\
    --manual-dir ~/afew --output-dir runs/exp/afew [--classifier rbf]
```

It parses the flags and runs :func:`affectnet_tf.training.video.train_video_classifier`: the
pooled face embeddings of each clip (:mod:`affectnet_tf.inference.embeddings`) and an SVM,
trained on ``train`` and evaluated on ``validation``. The accuracy of each split is printed to
the standard output (on all clips, and on the clips with a face); status lines and progress
bars go to the standard error (``--verbose`` / ``--quiet``). The run folder gets
``video_metrics.json`` and ``video_classifier.joblib``.
"""

import argparse
import logging
import sys

from affectnet_tf.progress import add_verbosity_flags, configure_logging
from affectnet_tf.training.video import (
    CLASSIFIERS,
    train_video_classifier,
    video_builder_config,
)

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def build_parser():
    """The ``argparse`` parser of ``python -m affectnet_tf.video_train``."""
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.video_train",
        description="Video-level emotion: pooled frame embeddings of a trained model and an SVM.",
    )
    group = parser.add_argument_group("Model")
    group.add_argument("--model-dir", required=True, help="run folder holding model.keras")
    group.add_argument(
        "--batch-size", type=int, default=64, help="faces per model call (default: 64)"
    )
    group = parser.add_argument_group("Dataset")
    group.add_argument(
        "--dataset", default="afew", help="afew or vgaf, optionally /<config> (default: afew)"
    )
    group.add_argument("--data-dir", default=None, help="TFDS data folder (default: TFDS's)")
    group.add_argument("--manual-dir", default=None, help="folder of the downloaded videos")
    group.add_argument(
        "--crop-size", type=int, default=None, help="stored crop side (default: the config's)"
    )
    sampling = group.add_mutually_exclusive_group()
    sampling.add_argument("--every-n", type=int, default=None, help="use every n-th frame")
    sampling.add_argument("--fps", type=float, default=None, help="frames per second to use")
    group = parser.add_argument_group("Classifier")
    group.add_argument(
        "--classifier", choices=CLASSIFIERS, default="linear", help="(default: linear)"
    )
    group.add_argument("--C", type=float, default=1.0, help="SVM regularisation (default: 1.0)")
    group.add_argument("--seed", type=int, default=0, help="(default: 0)")
    group = parser.add_argument_group("Output")
    group.add_argument(
        "--output-dir", default=None, help="where the metrics go (default: the model's run folder)"
    )
    add_verbosity_flags(group)
    return parser


def _accuracy_line(result, split):
    """One split's result: accuracy on all clips and on those with a face."""
    metrics = result[split]
    with_face = metrics["accuracy_with_face"]
    return (
        f"{result['dataset']} {split}: accuracy {metrics['accuracy_all']:.4f} on all "
        f"{metrics['clips']} clips, "
        + (f"{with_face:.4f}" if with_face is not None else "n/a")
        + f" on the {metrics['clips_with_face']} clips with a face "
        f"({metrics['clips_without_face']} without a face get "
        f"'{result['fallback_label']}')."
    )


def main(argv=None):
    """The command line: trains and evaluates the video classifier and prints each split's
    accuracy; returns 2 on bad settings (the message on the standard error)."""
    args = build_parser().parse_args(argv)
    configure_logging(args)
    try:
        result = train_video_classifier(
            args.model_dir,
            args.dataset,
            builder_config=video_builder_config(
                args.dataset, args.crop_size, args.every_n, args.fps
            ),
            data_dir=args.data_dir,
            manual_dir=args.manual_dir,
            classifier=args.classifier,
            C=args.C,
            batch_size=args.batch_size,
            output_dir=args.output_dir,
            seed=args.seed,
        )
    except ValueError as error:
        logger.error("error: %s", error)
        return 2
    for split in ("train", "validation"):
        print(_accuracy_line(result, split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
