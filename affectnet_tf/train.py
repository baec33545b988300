"""The training command: ``python -m affectnet_tf.train`` (``affectnet-train``).

It parses the flags (:func:`affectnet_tf.training.config.build_parser`: every setting of
:class:`~affectnet_tf.training.config.RunConfig`, ``--config FILE.yaml``, ``--verbose`` /
``--quiet``), sets up the status output (:func:`affectnet_tf.progress.configure_logging`),
and runs :func:`affectnet_tf.training.run.train`, which does the work and is importable from
here too (``from affectnet_tf.train import train``). The run folder's path and the test
metrics are printed as JSON to the standard output; status lines and Keras' progress go to the
standard error.
"""

import json
import logging
import sys

from affectnet_tf.modeling.backbones import WeightsUnavailableError
from affectnet_tf.progress import configure_logging
from affectnet_tf.training.config import build_parser, config_from_args
from affectnet_tf.training.run import train

__all__ = ["build_parser", "train", "main"]

logger = logging.getLogger(__name__)


def main(argv=None):
    """The command line: parses the flags, calls :func:`affectnet_tf.training.run.train` and
    prints ``{"run_dir", "metrics"}`` as JSON; returns 2 on bad settings (the message on the
    standard error)."""
    args = build_parser().parse_args(argv)
    configure_logging(args)
    try:
        result = train(config_from_args(args))
    except (ValueError, WeightsUnavailableError) as error:
        logger.error("error: %s", error)
        return 2
    print(json.dumps({"run_dir": result["run_dir"], "metrics": result["metrics"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
