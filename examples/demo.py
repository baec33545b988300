"""`make demo`: crowd targets against a known truth on the built-in synthetic faces.

Builds ``synthetic_faces/c25_dense`` (drawn faces with a known expression, valence and arousal,
answered by 25 simulated annotators calibrated on the real AffectNetC25 crowd; nothing is
downloaded), trains the same small model (``compact_cnn_small``, from scratch, 64x64 inputs, no
augmentation: the faces carry their own nuisance variation) on expression + valence + arousal
with the training command ``python -m affectnet_tf.train`` (its ``main``, in this process) once
per target (``--target true``: the truth, an upper bound; ``mv``: majority vote; ``ds``:
Dawid-Skene posteriors; ``cv``: the raw answers through crowd layers), evaluates every model on
the test split against the truth, and prints one table. THE DATA ARE SYNTHETIC.

Usage::

    python examples/demo.py                          # about 6-9 minutes on 2 CPU cores
    python examples/demo.py --quick                  # the tiny config, 1 epoch: seconds (tests)
    python examples/demo.py --targets mv cv --epochs 4 --output-dir runs/demo
    python examples/demo.py --config sparse          # 3 answers per image from 50 annotators

Outputs (``--output-dir``, default ``demo_output``): ``tfds/`` (the built dataset),
``runs/<target>/`` (each run folder: ``model.keras``, ``metrics.json``, ``report/``,
``history.csv``, ...), ``summary.md`` and ``summary.json`` (the table and timings).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # running from a checkout without installing
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

import tfds_affectnet  # noqa: E402, F401  (registers synthetic_faces)
from affectnet_tf import train as train_module  # noqa: E402
from affectnet_tf.data.tables import load_label_table  # noqa: E402
from affectnet_tf.data.targets import build_targets  # noqa: E402

__all__ = ["TARGETS", "TARGET_NAMES", "parse_args", "label_quality", "summary_table", "main"]

TARGETS = ("true", "mv", "ds", "cv")
TARGET_NAMES = {
    "true": "truth, upper bound",
    "mv": "majority vote",
    "ds": "Dawid-Skene",
    "cv": "crowd layers",
    "soft": "vote distribution",
}
FULL = {
    "dataset": "synthetic_faces/c25_dense",
    "model": "compact_cnn_small",
    "image_size": 64,
    "epochs": 20,
    "batch_size": 32,
    "learning_rate": 3e-3,
}
QUICK = {
    "dataset": "synthetic_faces/tiny",
    "model": "compact_cnn_small",
    "image_size": 32,
    "epochs": 1,
    "batch_size": 16,
    "learning_rate": 3e-3,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="demo_output", help="(default: demo_output)")
    parser.add_argument(
        "--targets",
        nargs="+",
        default=list(TARGETS),
        choices=sorted(TARGET_NAMES),
        help=f"training targets, one run each (default: {' '.join(TARGETS)})",
    )
    parser.add_argument("--epochs", type=int, help="epochs per run (default: 20; --quick: 1)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    parser.add_argument(
        "--config",
        default="c25_dense",
        choices=("c25_dense", "sparse"),
        help="synthetic_faces config: 25 answers per image, or 3 of 50 annotators "
        "(default: c25_dense; --quick uses tiny)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the tiny config (32x32, 48 faces per split), 1 epoch"
    )
    return parser.parse_args(argv)


def label_quality(builder, split="train"):
    """How good each target's labels are on ``split``: accuracy against the truth of the
    majority vote, of the Dawid-Skene labels, and of a single crowd answer (mean)."""
    table = load_label_table(builder, split)
    truth = table["true_expression"]
    result = {"true": 1.0}
    for target in ("mv", "ds"):
        values = build_targets(table, task="exp", target=target)[0]
        labels = values if values.ndim == 1 else values.argmax(axis=1)
        result[target] = float(np.mean(labels == truth))
    answers = table["crowd_expression"]
    answered = answers >= 0
    result["cv"] = float(np.sum((answers == truth[:, None]) & answered) / answered.sum())
    result["soft"] = result["cv"]
    return result


def _metric(metrics, head, *keys):
    values = metrics.get(head, {})
    for key in keys:
        if key in values and values[key] is not None:
            return float(values[key])
    return float("nan")


def summary_table(rows):
    """The Markdown table of the demo (one row per target)."""
    lines = [
        "| target | train labels vs truth | expression accuracy | macro F1 | valence CCC "
        "| arousal CCC | training time |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['target']} ({TARGET_NAMES[row['target']]}) | {row['label_accuracy']:.3f} "
            f"| {row['accuracy']:.3f} | {row['f1_macro']:.3f} | {row['valence_ccc']:.3f} "
            f"| {row['arousal_ccc']:.3f} | {row['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    if not args.quick:
        settings["dataset"] = f"synthetic_faces/{args.config}"
    if args.epochs:
        settings["epochs"] = args.epochs
    output = Path(args.output_dir).resolve()
    data_dir = output / "tfds"
    print("The data are SYNTHETIC: drawn faces with a simulated AffectNetC25-like crowd.")
    start = time.time()
    builder = tfds.builder(settings["dataset"], data_dir=str(data_dir))
    builder.download_and_prepare()
    build_seconds = time.time() - start
    splits = {name: split.num_examples for name, split in builder.info.splits.items()}
    print(f"Dataset {settings['dataset']} in {data_dir} ({build_seconds:.0f} s): {splits}")
    quality = label_quality(builder)

    rows = []
    training_start = time.time()
    for target in args.targets:
        run_dir = output / "runs" / target
        argv_run = [
            "--dataset",
            settings["dataset"],
            "--data-dir",
            str(data_dir),
            "--model",
            settings["model"],
            "--weights",
            "none",
            "--image-size",
            str(settings["image_size"]),
            "--task",
            "all",
            "--no-augment",
            "--target",
            target,
            "--epochs",
            str(settings["epochs"]),
            "--batch-size",
            str(settings["batch_size"]),
            "--learning-rate",
            str(settings["learning_rate"]),
            "--seed",
            str(args.seed),
            "--strategy",
            "default",
            "--output-dir",
            str(run_dir),
            "--overwrite",
        ]
        print(f"\n=== --target {target}: python -m affectnet_tf.train {' '.join(argv_run)}")
        began = time.time()
        status = train_module.main(argv_run)
        seconds = time.time() - began
        if status != 0:
            print(f"error: training with --target {target} failed (exit status {status}).")
            return status
        with open(run_dir / "metrics.json") as stream:
            metrics = json.load(stream)
        rows.append(
            {
                "target": target,
                "label_accuracy": quality[target],
                "accuracy": _metric(metrics, "expression", "accuracy"),
                "f1_macro": _metric(metrics, "expression", "f1_macro", "macro_f1"),
                "valence_ccc": _metric(metrics, "valence", "ccc"),
                "arousal_ccc": _metric(metrics, "arousal", "ccc"),
                "seconds": seconds,
                "run_dir": str(run_dir),
                "metrics": metrics,
            }
        )
    training_seconds = time.time() - training_start

    table = summary_table(rows)
    test_size = splits.get("test", 0)
    text = "\n".join(
        [
            "# Demo: crowd targets against the truth (synthetic data)",
            "",
            f"Dataset `{settings['dataset']}` (SYNTHETIC faces; {splits}), model "
            f"`{settings['model']}` from scratch at {settings['image_size']}x"
            f"{settings['image_size']}, {settings['epochs']} epochs, task `all`. Metrics on the "
            f"{test_size} test images against the truth; 'train labels vs truth' is the "
            "accuracy of the training labels themselves (for `cv`: of one crowd answer).",
            "",
            table,
            "",
            f"Dataset build: {build_seconds:.0f} s; training and evaluation of the "
            f"{len(rows)} runs: {training_seconds:.0f} s.",
            "",
            "Run folders (model.keras, metrics.json, report/, history.csv):",
            *[f"- `{row['target']}`: {row['run_dir']}" for row in rows],
            "",
        ]
    )
    (output / "summary.md").write_text(text)
    (output / "summary.json").write_text(
        json.dumps(
            {
                "settings": settings,
                "splits": splits,
                "build_seconds": build_seconds,
                "training_seconds": training_seconds,
                "rows": rows,
            },
            indent=2,
        )
    )
    print("\n" + text)
    print(f"Summary: {output / 'summary.md'} (and summary.json)")
    print(f"Reports: {output / 'runs' / '<target>' / 'report'}; models: runs/<target>/model.keras")
    return 0


if __name__ == "__main__":
    sys.exit(main())
