"""ResNet50 with crowd layers on the raw AffectNetC25 answers: EXP with MW, VW and VW+B
(``CrowdsClassification``), ARO and VAL with ``CrowdsRegression`` S+B.

Five runs of :func:`affectnet_tf.train.train` with ``target="cv"`` (the 25 answers per image,
missing ones masked). Each run folder holds the prediction model (``model.keras``, without the
crowd layer), the crowd model, the learned annotator matrices (``annotators.npz``) and
``metrics.json`` on the held-out 10% (accuracy / macro F1 against the majority vote, RMSE / CCC
against the mean answer).

Usage::

    python examples/crowd_layer_c25.py --manual-dir ~/affectnet --output-dir runs/crowd
    python examples/crowd_layer_c25.py --weights none --epochs 1   # offline smoke run
"""

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # running from a checkout without installing
    sys.path.insert(0, str(REPO_ROOT))

from affectnet_tf.train import train  # noqa: E402

RUNS = (
    ("exp", "MW"),
    ("exp", "VW"),
    ("exp", "VW+B"),
    ("aro", "S+B"),
    ("val", "S+B"),
)


def run(args, runs=RUNS):
    results = {}
    for task, layer in runs:
        config = {
            "dataset": f"affectnet_c25/{args.set}",
            "data_dir": args.data_dir,
            "manual_dir": args.manual_dir,
            "model": "resnet50",
            "weights": args.weights,
            "task": task,
            "target": "cv",
            "epochs": args.epochs,
            "freeze_epochs": args.freeze_epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "output_dir": str(Path(args.output_dir) / f"resnet50_cv_{task}_{layer}"),
        }
        config["crowd_layer" if task == "exp" else "va_crowd_layer"] = layer
        config.update(args.extra or {})
        results[f"{task}_{layer}"] = train(config)["metrics"]
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
    parser.add_argument("--output-dir", default="runs/crowd_layer_c25", help="run folders")
    args = parser.parse_args(argv)
    args.extra = None
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
