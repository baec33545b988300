"""ResNet50 (ImageNet weights) fine-tuned on AffectNetC25 majority-vote targets: EXP, ARO, VAL.

Three runs of :func:`affectnet_tf.train.train`, one per task: expression with majority-vote
(``mv``) labels, arousal and valence with the mean crowd answer (the ``mv`` target's default
valence/arousal target). Each trains the head for ``--freeze-epochs`` epochs with the backbone
frozen, then fine-tunes the whole network at a tenth of the learning rate, on 90% of the set,
and reports ``metrics.json`` on the held-out 10%.

Usage::

    python examples/finetune_resnet50_c25.py --manual-dir ~/affectnet --output-dir runs/c25
    python examples/finetune_resnet50_c25.py --weights none --epochs 1   # offline smoke run
"""

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # running from a checkout without installing
    sys.path.insert(0, str(REPO_ROOT))

from affectnet_tf.train import train  # noqa: E402

TASKS = ("exp", "aro", "val")


def run(args, tasks=TASKS):
    results = {}
    for task in tasks:
        config = {
            "dataset": f"affectnet_c25/{args.set}",
            "data_dir": args.data_dir,
            "manual_dir": args.manual_dir,
            "model": "resnet50",
            "weights": args.weights,
            "task": task,
            "target": "mv",
            "epochs": args.epochs,
            "freeze_epochs": args.freeze_epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "output_dir": str(Path(args.output_dir) / f"resnet50_mv_{task}"),
        }
        config.update(args.extra or {})
        results[task] = train(config)["metrics"]
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="set1", help="AffectNetC25 set (default: set1)")
    parser.add_argument("--data-dir", default=None, help="TFDS data folder (default: None)")
    parser.add_argument("--manual-dir", default=None, help="AffectNet folder (default: None)")
    parser.add_argument("--weights", default="imagenet", help="imagenet|none (default: imagenet)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs (default: 15)")
    parser.add_argument("--freeze-epochs", type=int, default=3, help="(default: 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="(default: 0.001)")
    parser.add_argument("--output-dir", default="runs/finetune_resnet50_c25", help="run folders")
    args = parser.parse_args(argv)
    args.extra = None
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
