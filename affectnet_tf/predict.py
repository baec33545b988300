"""Prediction on images, folders and videos: ``python -m affectnet_tf.predict``.

```bash
python -m affectnet_tf.predict --model-dir runs/exp INPUT... [--output FILE.jsonl|FILE.csv]
    [--annotate OUT_DIR] [--fps 5 | --every-n 2] [--cache-dir boxes/] [--verbose | --quiet]
```

Every face of every used frame becomes one record with the keys ``source``, ``frame`` (0 for an
image), ``box`` (x, y, width, height in the original frame), ``score`` (MTCNN's), ``expression``
(class name), ``probabilities`` (class name -> probability), ``valence`` and ``arousal``. A frame
where no face was found is one record with ``box`` null (and no prediction), so no frame
disappears; a file that cannot be read is one record with ``box`` null and an ``error`` key.
Outputs a model does not have (an expression-only or a valence/arousal-only model) are null.

For a video, a clip summary follows: mean probabilities over the faces, the most likely
expression, mean valence and arousal, and the frame counts. With ``--output``, records go to the
file (JSON lines, or CSV with one ``prob_<class>`` column per class) and summaries to
``<output stem>_clips.json`` and the standard output; without, records are printed as JSON lines
and summaries on the standard error. ``--annotate OUT_DIR`` writes each image or video with
boxes and labels drawn. Status lines go to the standard error through ``logging``
(``--quiet``: warnings only); progress bars count the files and the frames of videos of at
least ``--progress-min-frames`` frames.

The work is done by :mod:`affectnet_tf.inference`: :mod:`~affectnet_tf.inference.predictor`
(the model on face crops), :mod:`~affectnet_tf.inference.inputs` (images, folders, videos),
:mod:`~affectnet_tf.inference.outputs` (JSON lines, CSV, summaries, annotated copies) and
:mod:`~affectnet_tf.inference.options` (the face-crop flags).
"""

import argparse
import logging
import sys

from affectnet_tf.inference import video as video_module
from affectnet_tf.inference.inputs import log_problems, predict_inputs
from affectnet_tf.inference.options import add_face_arguments, face_cropper
from affectnet_tf.inference.outputs import RecordWriter, write_clip_summaries
from affectnet_tf.inference.predictor import Predictor, load_run_model
from affectnet_tf.progress import add_verbosity_flags, configure_logging

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def build_parser():
    """The parser of ``python -m affectnet_tf.predict``."""
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.predict",
        description="Expression, valence and arousal of every face in images, folders and videos.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image, folder or video")
    group = parser.add_argument_group("Model")
    group.add_argument("--model-dir", required=True, help="run folder holding model.keras")
    group.add_argument(
        "--batch-size", type=int, default=32, help="faces per model call (default: 32)"
    )
    group = parser.add_argument_group("Output")
    group.add_argument(
        "--output", default=None, help="FILE.jsonl or FILE.csv (default: JSON lines on stdout)"
    )
    group.add_argument(
        "--annotate", default=None, metavar="OUT_DIR", help="write annotated images and videos"
    )
    group.add_argument(
        "--progress-min-frames",
        type=int,
        default=250,
        help="show a progress bar on videos with at least this many frames (default: 250)",
    )
    add_verbosity_flags(group)
    group = parser.add_argument_group("Video")
    sampling = group.add_mutually_exclusive_group()
    sampling.add_argument("--fps", type=float, default=None, help="frames per second to use")
    sampling.add_argument(
        "--every-n", type=int, default=None, help="use every n-th frame (default: every frame)"
    )
    group.add_argument(
        "--cache-dir", default=None, help="per-video box cache folder (default: none)"
    )
    add_face_arguments(parser)
    return parser


def main(argv=None):
    """Runs the command; returns the exit status (0)."""
    args = build_parser().parse_args(argv)
    configure_logging(args)
    predictor = Predictor(load_run_model(args.model_dir), face_cropper(args), args.batch_size)
    logger.debug("Model %s: outputs %s", args.model_dir, ", ".join(predictor.heads))
    writer = RecordWriter(args.output, predictor.class_names)
    try:
        summaries, problems = predict_inputs(
            predictor,
            args.inputs,
            writer.write,
            sampler=video_module.FrameSampler(every_n=args.every_n, fps=args.fps),
            cache=video_module.BoxCache(args.cache_dir) if args.cache_dir else None,
            annotate_dir=args.annotate,
            progress_min_frames=args.progress_min_frames,
        )
    finally:
        writer.close()
    summary_path = writer.summary_path()
    write_clip_summaries(summaries, summary_path)
    where = f" to {args.output}" if args.output else ""
    in_file = f" in {summary_path}" if summary_path is not None else ""
    logger.info("%d records%s; %d video summaries%s.", writer.count, where, len(summaries), in_file)
    log_problems(problems)
    return 0


if __name__ == "__main__":
    sys.exit(main())
