"""Benchmark: crowd methods against aggregating the answers first, on a real crowd.

Usage::

    python benchmarks/bench_real_crowds.py [--data-dir DIR] [--seeds N] [--epochs E]
        [--methods a,b,...] [--json FILE]

Data, in a plain layout (default ``--data-dir``: ``../shared/data/labelme``, the LabelMe crowd of
Rodrigues & Pereira, AAAI 2018):

- ``answers.txt``: items x annotators, whitespace-separated integers, ``-1`` = no answer;
- ``labels_train.txt``, ``labels_test.txt``: the true class of each item, one per line;
- ``features_train.npy``, ``features_test.npy``: float ``(items, features)``;
- optional ``labels_valid.txt`` + ``features_valid.npy``: reported, never used for training or
  model selection.

Every method trains the same base network on the training features: ``Dense(128, relu)``,
dropout 0.5, ``Dense(K, softmax)``, Adam (learning rate 1e-3), ``--epochs`` epochs (default 50)
with batch 64, and is scored on the test items after the last epoch: no true label of a
training or validation item is used for training or for model selection (there is none).
Features are L2-normalised item by item (a rule with nothing fitted, so nothing of the test set
leaks in; measured on LabelMe it beats per-feature standardisation, which cost the
truth-trained network about one point).

Methods:

- ``truth``: the true training labels (the ceiling); ``mv``: majority vote (ties broken at
  random, seed 0); ``ds``: Dawid-Skene posteriors as soft targets (what ``--target ds`` of the
  training command trains on);
- the reference crowd layers ``MW``, ``VW``, ``VB``, ``VW+B``, ``SW``
  (:class:`crowd_layers.CrowdsClassification`, per-answer cross-entropy);
- ``confusion``: :class:`crowd_layers.CrowdsConfusion` with its defaults (per-answer, trace
  regulariser);
- ``geocrowdnet``: GeoCrowdNet (W) of Ibrahim et al. (ICLR 2023): per-answer cross-entropy
  with per-annotator confusion matrices and the volume regulariser (weight 0.01);
- ``pooled``: :class:`crowd_layers.CrowdsPooled` with its defaults (the package's default);
  ``pooled_ds`` and ``pooled_mv``: the same started from Dawid-Skene's and from the majority
  vote's confusion matrices.

Prints a table of test accuracy (mean and s.d. over seeds 0..N-1); ``--json`` writes
``{"methods": {name: mean}, "std": {name: s.d.}, "default": "pooled", "seeds": N, ...}``.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402

import crowd_layers  # noqa: E402
from crowd_layers.checks import check_answers  # noqa: E402

DEFAULT_METHOD = crowd_layers.DEFAULT_CROWD_METHOD
REFERENCE_LAYERS = crowd_layers.layers.CLASSIFICATION_CONN_TYPES
METHODS = (
    "truth",
    "mv",
    "ds",
    *REFERENCE_LAYERS,
    "confusion",
    "geocrowdnet",
    "pooled",
    "pooled_ds",
    "pooled_mv",
)
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "labelme"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder in the plain layout (default: ../shared/data/labelme)",
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default: 5)")
    parser.add_argument("--epochs", type=int, default=50, help="training epochs (default: 50)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset of {', '.join(METHODS)} (default: all)",
    )
    parser.add_argument("--json", type=Path, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.seeds < 1 or args.epochs < 1:
        parser.error(f"--seeds and --epochs must be >= 1 (got {args.seeds}, {args.epochs})")
    return args


def _read_labels(path):
    try:
        labels = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except ValueError as error:
        raise ValueError(f"{path}: expected one integer class per line ({error})") from error
    if labels.size and labels.min() < 0:
        raise ValueError(f"{path}: true labels must be >= 0; found {labels.min()}")
    return labels


def _read_features(path, n_items):
    features = np.load(path)
    if features.ndim != 2 or features.shape[0] != n_items:
        raise ValueError(
            f"{path}: expected a float array (items, features) with {n_items} items; "
            f"found shape {features.shape}"
        )
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{path}: {int((~np.isfinite(features)).sum())} non-finite values")
    return features.astype(np.float32)


def l2_normalise(features):
    """Each item's feature vector divided by its Euclidean norm (zero vectors stay zero)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 0, norms, 1.0)


def load_plain_layout(data_dir):
    """Reads a crowd dataset in the plain layout; returns a dict of arrays (see the module doc)."""
    data_dir = Path(data_dir)
    required = [
        "answers.txt",
        "labels_train.txt",
        "labels_test.txt",
        "features_train.npy",
        "features_test.npy",
    ]
    missing = [name for name in required if not (data_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{data_dir}: missing {', '.join(missing)} (the plain layout needs "
            f"{', '.join(required)}; labels_valid.txt + features_valid.npy are optional)"
        )
    try:
        answers = np.loadtxt(data_dir / "answers.txt", dtype=np.int64, ndmin=2)
    except ValueError as error:
        raise ValueError(
            f"{data_dir / 'answers.txt'}: expected whitespace-separated integers ({error})"
        ) from error
    try:
        data = {"answers": check_answers(answers)}
    except ValueError as error:
        raise ValueError(f"{data_dir / 'answers.txt'}: {error}") from error
    for split in ("train", "test", "valid"):
        labels_path = data_dir / f"labels_{split}.txt"
        features_path = data_dir / f"features_{split}.npy"
        if split == "valid" and not (labels_path.is_file() and features_path.is_file()):
            continue
        labels = _read_labels(labels_path)
        data[f"y_{split}"] = labels
        data[f"x_{split}"] = l2_normalise(_read_features(features_path, len(labels)))
    if len(data["y_train"]) != answers.shape[0]:
        raise ValueError(
            f"{data_dir}: answers.txt has {answers.shape[0]} items but labels_train.txt has "
            f"{len(data['y_train'])}"
        )
    labels = np.concatenate([data[k] for k in data if k.startswith("y_")])
    data["num_classes"] = int(max(labels.max(), answers.max()) + 1)
    return data


def base_network(num_features, num_classes, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((num_features,))
    hidden = keras.layers.Dense(128, activation="relu")(inputs)
    hidden = keras.layers.Dropout(0.5)(hidden)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(hidden)
    return keras.Model(inputs, outputs)


def crowd_head(method, num_classes, answers):
    """The crowd layer and loss of a method, every setting at the package's defaults."""
    if method in crowd_layers.CROWD_METHODS:
        return crowd_layers.crowd_method(method, num_classes, answers.shape[1])
    if method == "pooled_ds":
        init = crowd_layers.DawidSkene(num_classes=num_classes).fit(answers).confusions_
    else:  # "pooled_mv"
        init = crowd_layers.majority_vote_confusions(answers, num_classes=num_classes)
    return crowd_layers.crowd_method("pooled", num_classes, answers.shape[1], init)


def run_method(method, data, seed, epochs, batch_size, targets):
    """Trains one method with one seed; returns the test (and validation) accuracy."""
    k = data["num_classes"]
    answers = data["answers"]
    model = base_network(data["x_train"].shape[1], k, seed)
    fit = {"epochs": epochs, "batch_size": batch_size, "verbose": 0}
    if method in ("truth", "mv", "ds"):
        model.compile(keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
        model.fit(data["x_train"], targets[method], **fit)
    else:
        layer, loss = crowd_head(method, k, answers)
        training = keras.Model(model.inputs, layer(model.outputs[0]))
        training.compile(keras.optimizers.Adam(1e-3), loss=loss)
        training.fit(data["x_train"], answers, **fit)
    scores = {}
    for split in ("test", "valid"):
        if f"x_{split}" in data:
            predicted = model.predict(data[f"x_{split}"], batch_size=1024, verbose=0).argmax(1)
            scores[split] = float(np.mean(predicted == data[f"y_{split}"]))
    return scores


def baseline_targets(data):
    """Soft targets of the baselines: truth and majority vote one-hot, Dawid-Skene posteriors."""
    k = data["num_classes"]
    eye = np.eye(k, dtype=np.float32)
    mv = crowd_layers.majority_vote(data["answers"], num_classes=k, tie_break="random", seed=0)
    ds = crowd_layers.DawidSkene(num_classes=k).fit(data["answers"])
    return {
        "truth": eye[data["y_train"]],
        # an item without answers has no majority (-1): uniform target
        "mv": np.where((mv >= 0)[:, None], eye[np.maximum(mv, 0)], 1.0 / k).astype(np.float32),
        "ds": ds.probas_.astype(np.float32),
    }


def describe(data):
    answers = data["answers"]
    observed = answers >= 0
    per_item = observed.sum(axis=1)
    per_annotator = observed.sum(axis=0)
    return (
        f"{answers.shape[0]} training items, {answers.shape[1]} annotators, "
        f"{data['num_classes']} classes, {int(observed.sum())} answers "
        f"({per_item.mean():.2f} per item, {per_item.min()}-{per_item.max()}; "
        f"{per_annotator.mean():.1f} per annotator), {len(data['y_test'])} test items, "
        f"{data['x_train'].shape[1]} features"
    )


def main(argv=None):
    args = parse_args(argv)
    try:
        data = load_plain_layout(args.data_dir)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"data: {args.data_dir.resolve()}: {describe(data)}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, Keras {keras.__version__}; seeds 0..{args.seeds - 1}, "
        f"{args.epochs} epochs, batch {args.batch_size}"
    )
    targets = baseline_targets(data)
    results = {}
    start = time.perf_counter()
    for method in args.methods:
        runs = [
            run_method(method, data, seed, args.epochs, args.batch_size, targets)
            for seed in range(args.seeds)
        ]
        results[method] = {
            split: [run[split] for run in runs] for split in runs[0]
        }  # split -> per-seed accuracies
        test = np.array(results[method]["test"])
        marker = "  (default)" if method == DEFAULT_METHOD else ""
        print(
            f"{method:<12} test {test.mean():.4f} ± {test.std(ddof=1) if len(test) > 1 else 0:.4f}"
            f"   [{' '.join(f'{a:.3f}' for a in test)}]{marker}",
            flush=True,
        )
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        summary = {
            "methods": {m: float(np.mean(r["test"])) for m, r in results.items()},
            "std": {
                m: float(np.std(r["test"], ddof=1)) if len(r["test"]) > 1 else 0.0
                for m, r in results.items()
            },
            "per_seed": {m: r["test"] for m, r in results.items()},
            "valid": {m: float(np.mean(r["valid"])) for m, r in results.items() if "valid" in r},
            "default": DEFAULT_METHOD,
            "seeds": args.seeds,
            "epochs": args.epochs,
            "data_dir": str(args.data_dir),
        }
        args.json.write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
