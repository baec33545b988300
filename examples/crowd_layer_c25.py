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

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for folder in (HERE.parent, HERE):  # a checkout without installing; the shared _c25_runs
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from _c25_runs import parse_args, resnet50_config  # noqa: E402

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
        config = resnet50_config(args, task, "cv", f"resnet50_cv_{task}_{layer}")
        config["crowd_layer" if task == "exp" else "va_crowd_layer"] = layer
        config.update(args.extra or {})
        results[f"{task}_{layer}"] = train(config)["metrics"]
    return results


def main(argv=None):
    args = parse_args(argv, __doc__.split("\n\n")[0], "runs/crowd_layer_c25")
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
