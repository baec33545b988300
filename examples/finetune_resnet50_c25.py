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

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for folder in (HERE.parent, HERE):  # a checkout without installing; the shared _c25_runs
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from _c25_runs import parse_args, resnet50_config  # noqa: E402

from affectnet_tf.train import train  # noqa: E402

TASKS = ("exp", "aro", "val")


def run(args, tasks=TASKS):
    results = {}
    for task in tasks:
        config = resnet50_config(args, task, "mv", f"resnet50_mv_{task}")
        config.update(args.extra or {})
        results[task] = train(config)["metrics"]
    return results


def main(argv=None):
    args = parse_args(argv, __doc__.split("\n\n")[0], "runs/finetune_resnet50_c25")
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
