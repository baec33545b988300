"""What the two AffectNetC25 ResNet50 examples share: their flags and the base run settings."""

import argparse
from pathlib import Path


def parse_args(argv, description, output_dir):
    """The examples' command line; ``args.extra`` holds settings that override the others."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--set", default="set1", help="AffectNetC25 set (default: set1)")
    parser.add_argument("--data-dir", default=None, help="TFDS data folder (default: None)")
    parser.add_argument("--manual-dir", default=None, help="AffectNet folder (default: None)")
    parser.add_argument("--weights", default="imagenet", help="imagenet|none (default: imagenet)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs (default: 15)")
    parser.add_argument("--freeze-epochs", type=int, default=3, help="(default: 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="(default: 0.001)")
    parser.add_argument(
        "--output-dir", default=output_dir, help=f"run folders (default: {output_dir})"
    )
    args = parser.parse_args(argv)
    args.extra = None
    return args


def resnet50_config(args, task, target, run_name):
    """The settings of one ResNet50 run on the chosen AffectNetC25 set."""
    config = {
        "dataset": f"affectnet_c25/{args.set}",
        "data_dir": args.data_dir,
        "manual_dir": args.manual_dir,
        "model": "resnet50",
        "weights": args.weights,
        "task": task,
        "target": target,
        "epochs": args.epochs,
        "freeze_epochs": args.freeze_epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "output_dir": str(Path(args.output_dir) / run_name),
    }
    return config
